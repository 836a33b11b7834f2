"""The API listener: the Starlette application served by hypercorn's Trio worker inside
``switch serve``'s nursery, over TLS with the server certificate.

Why hypercorn's public ``serve`` with a ``Config`` of our own (``_Config``): it accepts on the
sockets we give it (opened here, or by the supervisor and inherited, like every listener's),
uses the ``ssl.SSLContext`` we build, bounds what a client may send (``h11_max_incomplete_size``
for the request line and headers; ``read_timeout`` on every read; ``keep_alive_timeout``
between requests; ``ssl_handshake_timeout``) and stops gracefully on our ``shutdown_trigger``.

TLS policy (as on the other ports, ``gateway.tls_context``): TLS 1.2 and 1.3 only, no session
tickets of either version (``OP_NO_TICKET``, ``num_tickets = 0``), no compression, no
renegotiation, the server's cipher order; HTTP/1.1 only (ALPN). No client certificate is asked
for (operators authenticate with tokens; a browser would otherwise prompt). A plaintext request
fails the handshake and the connection is closed. Python's ``ssl`` loads a certificate from
files only: the chain and the key (encrypted under a one-time password, so the key is never on
disk in clear) are written to a private temporary directory, loaded, and removed at once. A
reload's new certificate is used from the next handshake on (the SNI callback hands each
handshake the context of the current certificate).
"""

from __future__ import annotations

import logging
import secrets
import socket
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import structlog
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypercorn.config import Config, Sockets
from hypercorn.trio import serve
from starlette.routing import BaseRoute

from config.ciphers import DEFAULT_TLS12_CIPHERS
from config.model import ApiSettings
from config.tls_material import PrivateKey
from enroll.authority import Authority
from enroll.issuance import Issuance
from enroll.operator_admin import OperatorAdmin
from enroll.ratelimit import Limiter
from gateway.api.app import NotFound, build_app
from gateway.api.auth import Authenticator, BearerToken, Credential
from gateway.api.metrics import ApiMetrics
from gateway.api.routes import ApiContext, Emit
from gateway.api.session import SessionCookie
from gateway.listening import format_address, open_listening_sockets

log = structlog.get_logger("switch.api")

#: The server certificate chain, its key and the TLS 1.2 cipher string (``[tls] ciphers``).
Credentials = tuple[Sequence[x509.Certificate], PrivateKey, str | None]
#: The kinds of credential the API accepts, in the order they are tried
#: (``gateway.api.auth.Credential``): operators' tokens, and the console's session cookie.
CREDENTIALS: tuple[Credential, ...] = (BearerToken(), SessionCookie())


def api_context(authority: Authority, issuance: Issuance, limiter: Limiter,
                store_limiter: trio.CapacityLimiter, emit: Emit) -> ApiContext:
    """What the API's handlers work with, over the serving process's authority and store."""
    authenticator = Authenticator(CREDENTIALS, OperatorAdmin(authority), limiter)
    return ApiContext(authority, issuance, authenticator, store_limiter, emit)


def server_ssl_context(chain: Sequence[x509.Certificate], key: PrivateKey,
                       ciphers: str | None = None) -> ssl.SSLContext:
    """A server context with the policy of the module docstring, serving ``chain`` and ``key``;
    TLS 1.2 with the suites of the other ports (forward-secret AEAD only unless ``[tls] ciphers``
    widens them)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(ciphers or DEFAULT_TLS12_CIPHERS)
    ctx.options |= (ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
                    | ssl.OP_CIPHER_SERVER_PREFERENCE)
    ctx.num_tickets = 0
    ctx.set_alpn_protocols(["http/1.1"])
    password = secrets.token_bytes(32)
    with tempfile.TemporaryDirectory(prefix="switch-api-") as directory:
        cert_file, key_file = Path(directory, "chain.pem"), Path(directory, "key.pem")
        cert_file.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
        key_file.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password)))
        ctx.load_cert_chain(cert_file, key_file, password)
    return ctx


class TlsContexts:
    """The context of the current server certificate, built again when it changes."""

    def __init__(self, credentials: Callable[[], Credentials]) -> None:
        self.credentials = credentials
        self._for: Credentials | None = None
        self._context: ssl.SSLContext | None = None

    def current(self) -> ssl.SSLContext:
        credentials = self.credentials()
        if self._context is None or self._for is None or credentials[1] is not self._for[1] \
                or list(credentials[0]) != list(self._for[0]) or credentials[2] != self._for[2]:
            self._context = server_ssl_context(*credentials)
            self._context.sni_callback = self._swap
            self._for = credentials
        return self._context

    def _swap(self, connection: ssl.SSLObject, server_name: str | None,
              context: ssl.SSLContext) -> None:
        del server_name
        current = self.current()
        if current is not context:
            connection.context = current


class _Config(Config):
    """hypercorn's configuration, with our sockets and our TLS context."""

    def __init__(self, sockets: list[socket.socket], contexts: TlsContexts,
                 settings: ApiSettings) -> None:
        self._sockets = sockets
        self._contexts = contexts
        self.bind = [format_address(s.getsockname()) for s in sockets]
        self.alpn_protocols = ["http/1.1"]
        self.h11_max_incomplete_size = settings.max_header_bytes
        self.read_timeout = max(1, round(settings.request_timeout_s))
        self.ssl_handshake_timeout = settings.request_timeout_s
        self.keep_alive_timeout = settings.idle_timeout_s
        self.graceful_timeout = settings.request_timeout_s
        self.accesslog = None  # our one line per request is gateway.api.app's (no secrets)
        self.errorlog = logging.getLogger("switch.api.hypercorn")
        self.loglevel = "WARNING"
        self.include_server_header = False

    def create_sockets(self) -> Sockets:
        return Sockets(self._sockets, [], [])

    def create_ssl_context(self) -> ssl.SSLContext:
        return self._contexts.current()


async def serve_api(api: ApiContext, settings: ApiSettings, metrics: ApiMetrics,
                    credentials: Callable[[], Credentials], *,
                    pages: Sequence[BaseRoute] = (), not_found: NotFound | None = None,
                    sockets: Sequence[socket.socket] | None = None,
                    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
                    task_status: trio.TaskStatus[list[trio.SocketListener]]
                    = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the API on ``sockets`` (the supervisor's) or on ``[api] listen``, until
    ``shutdown_trigger`` returns (then in-flight requests get ``request_timeout`` to finish) or
    the task is cancelled. Reports the listening sockets. ``pages`` and ``not_found``: the
    console's (``gateway.api.app.build_app``)."""
    listen = settings.listen
    own = list(sockets) if sockets else await trio.to_thread.run_sync(
        open_listening_sockets, "api", listen.host, listen.port)
    config = _Config(own, TlsContexts(credentials), settings)
    app = build_app(api, settings, metrics, pages=pages, not_found=not_found)
    for sock in own:
        log.info("listening", listener="api", address=format_address(sock.getsockname()))

    async def started(*, task_status: trio.TaskStatus[list[str]]) -> None:
        await serve(app, config, shutdown_trigger=shutdown_trigger,  # type: ignore[arg-type]
                    task_status=task_status)

    async with trio.open_nursery() as nursery:
        await nursery.start(started)
        task_status.started([trio.SocketListener(trio.socket.from_stdlib_socket(s))
                             for s in own])
