"""Every reason a TLS handshake on the gateway port is refused for, produced over real loopback
sockets by clients that are not Switch's (Python's ``ssl``, ``openssl s_client``, raw sockets)
and read from the server's refusal counter: the reasons come from OpenSSL's codes and Switch's
own decision (``gateway.tls_refusals``), never from OpenSSL's message text."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from tests.support.est import HOST
from tests.support.gateway import Gateway, org_agent

HELLO_TIMEOUT_S = 10


def _client_hello() -> bytes:
    """The first flight of a TLS client (a ClientHello with SNI), made by Python's ``ssl``."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=HOST)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def _raw(port: int, send: bytes, then: str = "read") -> None:
    """Send ``send`` on a plain TCP connection, then ``read`` until the server closes, ``close``
    at once, or ``reset`` the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=HELLO_TIMEOUT_S) as sock:
        sock.sendall(send)
        if then == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif then == "read":
            try:
                while sock.recv(4096):
                    pass
            except ConnectionResetError:
                pass


def _python_tls(gw: Gateway, *, cert: Path | None = None, key: Path | None = None,
                max_version: ssl.TLSVersion | None = None) -> None:
    """A handshake (and a request, where TLS 1.3 tells a client of its refusal) with ``ssl``."""
    ctx = gw.ssl_context(None, max_version)
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    with socket.create_connection(("127.0.0.1", gw.ports["gateway"]), timeout=10) as sock, \
            pytest.raises((ssl.SSLError, OSError)), \
            ctx.wrap_socket(sock, server_hostname=HOST) as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\n\r\n")
        while tls.recv(4096):
            pass
        raise ConnectionAbortedError("closed without an alert")


def _s_client(gw: Gateway, *options: str) -> None:
    """``openssl s_client`` with ``options``, the demo organisation agent's certificate."""
    subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{gw.ports['gateway']}",
         "-servername", HOST, "-CAfile", str(gw.ca_file),
         "-cert", str(gw.directory / "pki/demo-agent.pem"),
         "-key", str(gw.directory / "pki/demo-agent.key"), *options],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        timeout=20, check=False)


Client = Callable[[Gateway], None]

CLIENTS: dict[str, tuple[Client, str]] = {
    "no-certificate-tls1.2": (lambda gw: _python_tls(gw, max_version=ssl.TLSVersion.TLSv1_2),
                              "no_client_certificate"),
    "no-certificate-tls1.3": (lambda gw: _python_tls(gw), "no_client_certificate"),
    "plain-http": (lambda gw: _raw(gw.ports["gateway"], b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
                   "not_tls"),
    "proxy-connect": (lambda gw: _raw(gw.ports["gateway"], b"CONNECT x:443 HTTP/1.1\r\n\r\n"),
                      "not_tls"),
    "ssh-banner": (lambda gw: _raw(gw.ports["gateway"], b"SSH-2.0-OpenSSH_9.2\r\n"), "not_tls"),
    "connect-and-close": (lambda gw: _raw(gw.ports["gateway"], b"", "close"),
                          "handshake_aborted"),
    "half-a-hello-then-close": (lambda gw: _raw(gw.ports["gateway"], _client_hello()[:20], "close"),
                                "handshake_aborted"),
    "hello-then-reset": (lambda gw: _raw(gw.ports["gateway"], _client_hello(), "reset"),
                         "handshake_aborted"),
    "tls1.1-only": (lambda gw: _s_client(gw, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"),
                    "tls_version_or_cipher"),
    "no-shared-cipher": (lambda gw: _s_client(gw, "-tls1_2", "-cipher", "AES128-SHA"),
                         "tls_version_or_cipher"),
    "another-tenants-ca": (lambda gw: _python_tls(
        gw, **_org(gw, "acme-org-ca", "acme-agent", ["a@acme.test"])), "untrusted_issuer"),
    "expired": (lambda gw: _python_tls(gw, **_org(
        gw, "demo-org-ca", "expired", ["e@demo.switch.test"],
        now=dt.datetime.now(dt.UTC) - dt.timedelta(days=60))), "certificate_expired"),
}


def _org(gw: Gateway, ca: str, name: str, emails: list[str], **kw: dt.datetime) -> dict[str, Path]:
    agent = org_agent(gw.directory, ca, name, emails=emails, **kw)
    return {"cert": agent.cert, "key": agent.key}


async def test_each_failed_handshake_is_refused_with_its_own_reason(gw: Gateway, tmp_path: Path) -> None:
    """One gateway, every client in turn: each refusal is counted under its reason, and no
    other reason moves."""
    with trio.fail_after(180):
        reasons = {reason for _, reason in CLIENTS.values()} | {"handshake_failed"}
        for name, (client, reason) in CLIENTS.items():
            before = {r: gw.refusals(r) for r in reasons}
            await trio.to_thread.run_sync(client, gw)
            with trio.fail_after(10):
                while gw.refusals(reason) == before[reason]:  # noqa: ASYNC110 - the server's count
                    await trio.sleep(0.02)
            after = {r: gw.refusals(r) for r in reasons}
            moved = {r: after[r] - before[r] for r in reasons if after[r] != before[r]}
            assert moved == {reason: 1}, name
