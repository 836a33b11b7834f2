"""The upstream dialler: a TCP (or TLS, for ``wss://``) connection to the tenant's upstream and
its WebSocket opening handshake, spoken with h11, under the caller's deadline.

The upstream must accept exactly what was offered (RFC 6455 4.2.2): the accept token for our
key (``wsproto.utilities.generate_accept_token``), no extension, a subprotocol only from the
agent's list. Anything else, an unreachable host or a failed TLS handshake is
``UpstreamUnavailable`` with a stable reason (``upstream_unavailable``, ``upstream_tls_error``),
which the session answers with ``502``. ``wss://`` upstreams are verified against the tenant's
``upstream_ca`` or the system trust store (``UpstreamTLS``).
"""

from __future__ import annotations

import base64
import itertools
import os
import ssl
import urllib.parse
from collections.abc import Sequence

import h11
import structlog
import trio
from wsproto.utilities import generate_accept_token

from config.model import SwitchConfig, Tenant
from gateway.relay.upgrade import MAX_HANDSHAKE_BYTES, RECV_BYTES, Upgrade

log = structlog.get_logger("switch.gateway")


class UpstreamUnavailable(Exception):
    """The upstream cannot be used for this session; ``reason`` is the stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class UpstreamTLS:
    """Client TLS contexts for ``wss://`` upstreams: a tenant with ``upstream_ca`` trusts exactly
    the certificates in that PEM file; the others use ``default`` (the system trust store).

    Contexts are made on first use under each configuration and kept until it is replaced (a
    reload re-reads the files), never per connection. A file that cannot be read then (it was
    checked when the configuration loaded) gives a context that trusts nothing: that tenant's
    sessions fail with ``upstream_tls_error`` (fail closed) and the error is logged."""

    def __init__(self, default: ssl.SSLContext | None = None) -> None:
        self.default = default or ssl.create_default_context()
        self._config: SwitchConfig | None = None
        self._contexts: dict[str, ssl.SSLContext] = {}

    def context(self, config: SwitchConfig, tenant: Tenant) -> ssl.SSLContext:
        if tenant.upstream_ca is None:
            return self.default
        if config is not self._config:
            self._config, self._contexts = config, {}
        ctx = self._contexts.get(tenant.name)
        if ctx is None:
            try:
                ctx = ssl.create_default_context(cafile=str(tenant.upstream_ca))
            except (OSError, ValueError, ssl.SSLError) as exc:
                log.error("upstream_ca_unusable", tenant=tenant.name, file=str(tenant.upstream_ca),
                          error=f"{type(exc).__name__}: {exc}")
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # trusts nothing
            self._contexts[tenant.name] = ctx
        return ctx


#: Upstream connections this process opened, for ``source_address``'s round robin.
_dialled = itertools.count()


def source_address(addresses: Sequence[str]) -> str | None:
    """The local address the next upstream connection is opened from: ``[gateway]
    upstream_source_addresses`` in turn (each process its own turn), None (the kernel chooses)
    when there are none. One source address opens at most the ephemeral port range's
    connections to one upstream address and port (28,232 by default on Linux)."""
    if not addresses:
        return None
    return addresses[next(_dialled) % len(addresses)]


async def open_upstream(url: str, upgrade: Upgrade, extra_headers: list[tuple[bytes, bytes]],
                         upstream_ssl: ssl.SSLContext | None, local_address: str | None = None,
                         ) -> tuple[trio.abc.Stream, bytes, str | None]:
    """Connect to the upstream and complete its WebSocket handshake (the caller sets the
    deadline); returns the stream, what the upstream sent after its 101 (frames already) and the
    chosen subprotocol. Raises ``UpstreamUnavailable`` with the reason: ``upstream_unavailable``
    (cannot connect, closed, broke the protocol, refused the upgrade), ``upstream_tls_error`` (its
    certificate did not verify, or TLS failed). ``local_address``: the local IP address to
    connect from (``source_address``; trio binds it with ``IP_BIND_ADDRESS_NO_PORT``, the port
    chosen per destination at connect time); a bind that fails is ``upstream_unavailable``."""
    parts = urllib.parse.urlsplit(url)
    secure = parts.scheme == "wss"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    try:
        tcp = await trio.open_tcp_stream(host, port, local_address=local_address)
    except OSError as exc:
        raise UpstreamUnavailable("upstream_unavailable", f"{type(exc).__name__}: {exc}") from exc
    stream: trio.abc.Stream = tcp
    try:
        if secure:
            stream = trio.SSLStream(tcp, upstream_ssl or ssl.create_default_context(),
                                    server_hostname=host)
            try:
                await stream.do_handshake()
            except trio.BrokenResourceError as exc:
                cause = exc.__cause__
                reason = "upstream_tls_error" if isinstance(cause, ssl.SSLError) else "upstream_unavailable"
                raise UpstreamUnavailable(reason, f"{type(cause or exc).__name__}: {cause or exc}") from exc
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        default_port = port == (443 if secure else 80)
        host_header = (f"[{host}]" if ":" in host else host) + ("" if default_port else f":{port}")
        key = base64.b64encode(os.urandom(16))
        headers = [(b"host", host_header.encode("idna")), (b"upgrade", b"websocket"),
                   (b"connection", b"Upgrade"), (b"sec-websocket-key", key),
                   (b"sec-websocket-version", b"13")]
        if upgrade.subprotocols:
            headers.append((b"sec-websocket-protocol", ", ".join(upgrade.subprotocols).encode()))
        http = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HANDSHAKE_BYTES)
        await stream.send_all(http.send(h11.Request(method=b"GET", target=target.encode(),
                                                    headers=headers + extra_headers)) or b"")
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(RECV_BYTES)
                if not data:
                    raise UpstreamUnavailable("upstream_unavailable",
                                              "the upstream closed during the handshake")
                http.receive_data(bytes(data))
            elif isinstance(event, h11.InformationalResponse) and event.status_code == 101:
                subprotocol = check_acceptance(event.headers, key, upgrade.subprotocols)
                trailing, _ = http.trailing_data
                return stream, bytes(trailing), subprotocol
            elif isinstance(event, h11.Response):
                raise UpstreamUnavailable("upstream_unavailable",
                                          f"the upstream answered {event.status_code}")
            elif not isinstance(event, h11.InformationalResponse):  # 100 and such: read on
                raise UpstreamUnavailable("upstream_unavailable", "the upstream closed")
    except (OSError, trio.BrokenResourceError, h11.LocalProtocolError, h11.RemoteProtocolError,
            ssl.SSLError) as exc:
        # h11's LocalProtocolError: a header value h11 will not write; RemoteProtocolError: the
        # upstream's answer is not HTTP, or its head is over MAX_HANDSHAKE_BYTES.
        await trio.aclose_forcefully(stream)
        raise UpstreamUnavailable("upstream_unavailable", f"{type(exc).__name__}: {exc}") from exc
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


def check_acceptance(headers: Sequence[tuple[bytes, bytes]], key: bytes,
                      offered: Sequence[str]) -> str | None:
    """The upstream's 101 accepts our upgrade as RFC 6455 4.2.2 says (the accept token, no
    extension since none was offered, a subprotocol only from those offered); returns the
    subprotocol. Raises ``UpstreamUnavailable``."""
    fields: dict[bytes, bytes] = {}
    connection: set[bytes] = set()
    for name, value in headers:
        lower = bytes(name).lower()
        if lower == b"connection":
            connection.update(t.strip().lower() for t in bytes(value).split(b","))
        else:
            fields[lower] = bytes(value)
    problem = None
    if fields.get(b"upgrade", b"").lower() != b"websocket" or b"upgrade" not in connection:
        problem = "its 101 is not a WebSocket upgrade"
    elif fields.get(b"sec-websocket-accept") != generate_accept_token(key):
        problem = "its Sec-WebSocket-Accept is wrong"
    elif b"sec-websocket-extensions" in fields:
        problem = "it accepted an extension that was not offered"
    subprotocol = fields.get(b"sec-websocket-protocol", b"").decode("ascii", "replace").strip() or None
    if problem is None and subprotocol is not None and subprotocol not in offered:
        problem = f"it chose a subprotocol that was not offered ({subprotocol!r})"
    if problem is not None:
        raise UpstreamUnavailable("upstream_unavailable", f"the upstream broke the handshake: {problem}")
    return subprotocol

