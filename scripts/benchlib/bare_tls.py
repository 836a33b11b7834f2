"""The floor for the handshake bench: Trio and pyOpenSSL with Switch's own TLS stream and server
context, and nothing of Switch around them — accept, full mTLS handshake (client certificate
required, chain verified by OpenSSL), read one request, answer 426, close. No SNI routing, no
peer check, no session, no HTTP parsing, no log line.

``python -m scripts.benchlib.bare_tls PORT PKI_DIR``
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.tls import tls_server
from gateway.tls_context import server_context

REPLY = b"HTTP/1.1 426 Upgrade Required\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def main() -> None:
    port, pki = int(sys.argv[1]), Path(sys.argv[2])
    chain = x509.load_pem_x509_certificates((pki / "server.pem").read_bytes())
    key = serialization.load_pem_private_key((pki / "server.key").read_bytes(), None)
    cas = x509.load_pem_x509_certificates((pki / "client-cas.pem").read_bytes())
    ctx = server_context(chain, key, client_auth="required", trust=cas)  # type: ignore[arg-type]

    async def handler(stream: trio.SocketStream) -> None:
        tls = tls_server(stream, ctx)
        try:
            await tls.do_handshake()
            await tls.receive_some()
            await tls.send_all(REPLY)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await tls.aclose()

    trio.run(trio.serve_tcp, handler, port)


if __name__ == "__main__":
    main()
