"""One agent session: the WebSocket upgrade, the upstream connection and the relay.

Runs after the TLS handshake admitted the agent (``Decision``). Every wait is bounded: the upgrade
request by ``request_timeout_s``, the upstream connection by ``upstream_connect_timeout_s``, every
write to either side by ``write_timeout_s``, closing by ``close_timeout_s``; liveness by pings
every ``ping_interval_s`` (an agent that sends nothing, not even a pong, for ``idle_timeout_s`` is
closed too).

Theory of operation: HTTP is spoken with ``h11`` for the two opening handshakes; after them the
relay forwards WebSocket frames as they are (``gateway.wsframes``): the agent's masked frames
go to the upstream unchanged, the upstream's to the agent, with no decoding, unmasking or
re-encoding of messages and no buffering of payloads. A ``FrameReader`` per direction finds the
frame boundaries, enforces the protocol rules an intermediary must and ``max_message_bytes``
(from each frame's header, before a byte of that frame moves), and hands over the two things the
relay acts on: a Close, and the Pong answering its own liveness ping. Pings and other Pongs pass
end to end. Per session only two streams, two small readers and two tasks remain (one per
direction), which is what lets one process hold tens of thousands of idle sessions. Each
direction awaits its write before reading again (back-pressure). Writes to one stream come from
both tasks (relayed bytes from one, the relay's own pings and closes from the other) and are
serialised by a lock; a frame of the relay's own is written only where the relayed bytes end at
a frame boundary.

The session is registered (``SessionRegistry.admit``) with its cancel scope as soon as the
handshake is done, so an eviction reaches it while it waits for the upgrade or for the upstream
too (the upgrade is then refused with ``403`` and the reason), not only once it relays.

Timers: the agent's direction waits for data under a cancel scope whose deadline is the next
ping or the idle limit (the upstream's direction, with no timer, waits under none); each write
runs under its own ``write_timeout_s`` scope. The two are never one scope: a Trio scope stays
cancelled once its deadline has passed, so data that arrives as the ping timer fires would have
its write cut off and taken for a stall. A write that times out means that side stopped
reading: the session ends (``agent_write_timeout`` / ``upstream_write_timeout``), and a side
whose write was cut off mid-way gets no close frame, since its stream is no longer whole.

- The ``Host`` of the upgrade must name the tenant SNI chose, else ``421 Misdirected Request``.
- The upgrade is relayed to the tenant's ``upstream`` with the agent's path appended to the
  upstream's path (dot segments refused: ``400 bad_path``) and both queries kept, the agent's
  own headers (less hop-by-hop, WebSocket handshake and any ``X-Switch-*`` it sent, however
  spelled) and the verified identity in ``X-Switch-*`` headers. An unreachable upstream gets
  ``502``. Every refusal is counted and logged once (``upgrade_refused``).
- Messages flow both ways, one at a time per direction (back-pressure: a slow reader slows its
  writer), each bounded by ``max_message_bytes`` (1009 on overflow). A close code on either side
  is passed to the other; an upstream that fails mid-session closes the agent with 1011
  (reason ``upstream_failed``); an eviction closes it with 1008 and the reason; shutdown with 1001;
  a side that breaks the protocol gets 1002 (1007 for a bad close reason) and the other side 1001
  (the agent 1011 when it was the upstream).
  Relay metrics move as each message completes; the session's one log line comes at its end.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import functools
import os
import re
import ssl
import urllib.parse
from collections.abc import Mapping, Sequence
from http import HTTPStatus

import attrs
import h11
import structlog
import trio
from prometheus_client import Counter

from config.model import GatewaySettings, SwitchConfig, Tenant
from gateway.lightlock import LightLock
from gateway.metrics import Metrics
from gateway.peer import Decision, TenantTrust
from gateway.sessions import Session, SessionRegistry
from gateway.wsframes import (
    Close,
    FrameReader,
    Violation,
    accept_token,
    close_frame,
    ping_frame,
)

log = structlog.get_logger("switch.gateway")

IDENTITY_PREFIX = b"x-switch-"
_NOT_FORWARDED = {b"host", b"upgrade", b"connection", b"sec-websocket-key",
                  b"sec-websocket-version", b"sec-websocket-extensions", b"sec-websocket-protocol",
                  b"sec-websocket-accept", b"content-length", b"transfer-encoding", b"keep-alive",
                  b"te", b"trailer", b"proxy-authorization", b"proxy-connection"}
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
#: 1014 ("bad gateway") would be the precise code, but wsproto-based clients (trio-websocket,
#: the reference agent) refuse it as reserved; 1011 is understood everywhere.
CLOSE_UPSTREAM_FAILED = 1011


#: Bytes asked of a stream per read: one TLS record's plaintext.
RECV_BYTES = 16 * 1024
#: Largest opening handshake (request line and headers) accepted from an agent or an upstream.
MAX_HANDSHAKE_BYTES = 16 * 1024
_INFINITY = float("inf")


@attrs.define(eq=False)
class Counters:
    bytes_in: int = 0
    bytes_out: int = 0
    messages_in: int = 0
    messages_out: int = 0


def identity_headers(decision: Decision) -> list[tuple[bytes, bytes]]:
    values = {
        b"X-Switch-Tenant": decision.tenant, b"X-Switch-Identity": decision.identity,
        b"X-Switch-Trust": decision.trust, b"X-Switch-Key-Id": decision.key_id,
        b"X-Switch-Cert-Serial": decision.serial, b"X-Switch-Cert-Sha256": decision.sha256,
    }
    return [(k, v.encode("utf-8", "replace")) for k, v in values.items() if v]


def forwarded_headers(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The agent's headers that go upstream: never hop-by-hop, handshake or X-Switch-* ones.

    Names are compared lower-cased with ``_`` read as ``-``: many servers (CGI/WSGI-style
    frameworks) map both ``X-Switch-Identity`` and ``x_switch_identity`` to the same variable, so
    either spelling could pass for Switch's own header."""
    out = []
    for name, value in headers:
        normal = name.lower().replace(b"_", b"-")
        if normal in _NOT_FORWARDED or normal.startswith(IDENTITY_PREFIX):
            continue
        out.append((name, value))
    return out


#: Separators an upstream may split a decoded path on.
_SEGMENT_SEPARATORS = re.compile(r"[/\\]")


def upstream_url(base: str, target: str) -> str:
    """The tenant's upstream URL with the agent's request target joined on: the agent's path
    appended to the upstream's path, the upstream's own query first and the agent's after it.

    Raises ``UpgradeRefused`` (400, ``bad_path``) for a target that is not a path (origin-form),
    or that holds a dot segment — ``.`` or ``..``, also percent-encoded (once or more) or next to
    an encoded slash or a backslash — which would climb out of the upstream's base path wherever
    the path is normalised."""
    path, _, query = target.partition("?")
    if not path.startswith("/") or "#" in target:
        raise UpgradeRefused(400, "bad_path")
    decoded, previous = path, ""
    for _ in range(4):  # undo nested percent-encoding (%252e -> %2e -> .), within reason
        if decoded == previous:
            break
        previous, decoded = decoded, urllib.parse.unquote(decoded)
    if any(segment in (".", "..") for segment in _SEGMENT_SEPARATORS.split(decoded)):
        raise UpgradeRefused(400, "bad_path")
    parts = urllib.parse.urlsplit(base)
    joined_query = "&".join(q for q in (parts.query, query) if q)
    return urllib.parse.urlunsplit(
        (parts.scheme, parts.netloc, parts.path.rstrip("/") + path, joined_query, ""))


def host_matches(host: bytes | None, tenant: Tenant, sni: str | None, config: SwitchConfig
                 ) -> bool:
    """Whether the upgrade's ``Host`` names ``tenant``, the tenant SNI chose (looked up as SNI
    names are: ``SwitchConfig.tenant_for_name``, a port allowed). No ``Host``: no."""
    if host is None:
        return False
    named = config.tenant_for_name(host, port_allowed=True)
    if named is not None and named.name == tenant.name:
        return True
    # An agent that sent no SNI was given the default tenant; any Host is its business.
    return sni is None and config.default_tenant == tenant.name


@attrs.frozen
class Upgrade:
    """The agent's WebSocket upgrade request, checked."""

    target: str
    host: bytes | None
    headers: list[tuple[bytes, bytes]]
    subprotocols: list[str]
    key: bytes


class UpgradeRefused(Exception):
    """The upgrade is refused with HTTP ``status`` (0: no answer, the agent is gone or too slow)
    and a stable ``reason``; ``detail`` is for the log only."""

    def __init__(self, status: int, reason: str, detail: str | None = None) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.detail = detail


def parse_upgrade(request: h11.Request) -> Upgrade:
    """Check an HTTP request is a WebSocket upgrade (RFC 6455 4.2.1); raise ``UpgradeRefused``."""
    headers = [(bytes(n).lower(), bytes(v)) for n, v in request.headers]
    single: dict[bytes, bytes] = {}
    protocols: list[str] = []
    connection_tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"sec-websocket-protocol":
            protocols.extend(p.strip().decode("ascii", "replace") for p in value.split(b",") if p.strip())
        elif name == b"connection":
            connection_tokens.update(t.strip().lower() for t in value.split(b","))
        else:
            single.setdefault(name, value)
    if request.method != b"GET":
        raise UpgradeRefused(405, "not_an_upgrade")
    if single.get(b"upgrade", b"").lower() != b"websocket" or b"upgrade" not in connection_tokens:
        raise UpgradeRefused(426, "not_an_upgrade")
    if single.get(b"sec-websocket-version") != b"13":
        raise UpgradeRefused(426, "unsupported_websocket_version")
    key = single.get(b"sec-websocket-key", b"")
    try:
        valid_key = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid_key = False
    if not valid_key:
        raise UpgradeRefused(400, "bad_websocket_key")
    return Upgrade(target=request.target.decode("ascii", "replace"), host=single.get(b"host"),
                   headers=[(bytes(n), bytes(v)) for n, v in request.headers],
                   subprotocols=protocols, key=key)


def new_request_reader() -> h11.Connection:
    return h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HANDSHAKE_BYTES)


async def _read_upgrade(stream: trio.abc.Stream, http: h11.Connection | None = None) -> Upgrade:
    """Read the agent's upgrade request into ``http``; ``UpgradeRefused`` for anything else."""
    http = http or new_request_reader()
    while True:
        try:
            event = http.next_event()
        except h11.RemoteProtocolError as exc:
            raise UpgradeRefused(exc.error_status_hint, "bad_request") from exc
        if event is h11.NEED_DATA:
            try:
                data = await stream.receive_some(RECV_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise UpgradeRefused(0, "upgrade_aborted") from exc
            http.receive_data(bytes(data))
            continue
        if isinstance(event, h11.Request):
            return parse_upgrade(event)
        raise UpgradeRefused(400, "bad_request")  # ConnectionClosed before a request


async def _refuse_upgrade(stream: trio.abc.Stream, status: int, reason: str,
                          close_timeout_s: float) -> None:
    """Answer the upgrade with ``status`` and the reason, then the connection closes (whether
    or not the request was read whole: RFC 9112 9.6). The agent may already be gone."""
    if status == 0:
        return
    with trio.move_on_after(close_timeout_s), contextlib.suppress(
            trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
        await stream.send_all(refusal_response(status, reason))


@functools.lru_cache(maxsize=256)
def refusal_response(status: int, reason: str) -> bytes:
    """The whole HTTP/1.1 reply refusing an upgrade: the standard reason phrase, and the stable
    reason code in the body (a few dozen such replies exist; each is made once)."""
    body = f"{status} {reason}\n".encode()
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return (f"HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain; charset=utf-8\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


async def _accept_upgrade(stream: trio.abc.Stream, http: h11.Connection, upgrade: Upgrade,
                          subprotocol: str | None) -> bytes:
    """Send the 101; return what the agent sent right after its request (frames already)."""
    headers = [(b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
               (b"sec-websocket-accept", accept_token(upgrade.key))]
    if subprotocol:
        headers.append((b"sec-websocket-protocol", subprotocol.encode("ascii")))
    data = http.send(h11.InformationalResponse(status_code=101, headers=headers,
                                               reason=b"Switching Protocols")) or b""
    trailing, _ = http.trailing_data
    await stream.send_all(data)
    return bytes(trailing)


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


async def _open_upstream(url: str, upgrade: Upgrade, extra_headers: list[tuple[bytes, bytes]],
                         upstream_ssl: ssl.SSLContext | None
                         ) -> tuple[trio.abc.Stream, bytes, str | None]:
    """Connect to the upstream and complete its WebSocket handshake (the caller sets the
    deadline); returns the stream, what the upstream sent after its 101 (frames already) and the
    chosen subprotocol. Raises ``UpstreamUnavailable`` with the reason: ``upstream_unavailable``
    (cannot connect, closed, broke the protocol, refused the upgrade), ``upstream_tls_error`` (its
    certificate did not verify, or TLS failed)."""
    parts = urllib.parse.urlsplit(url)
    secure = parts.scheme == "wss"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    try:
        tcp = await trio.open_tcp_stream(host, port)
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
                subprotocol = _check_acceptance(event.headers, key, upgrade.subprotocols)
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


def _check_acceptance(headers: Sequence[tuple[bytes, bytes]], key: bytes,
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
    elif fields.get(b"sec-websocket-accept") != accept_token(key):
        problem = "its Sec-WebSocket-Accept is wrong"
    elif b"sec-websocket-extensions" in fields:
        problem = "it accepted an extension that was not offered"
    subprotocol = fields.get(b"sec-websocket-protocol", b"").decode("ascii", "replace").strip() or None
    if problem is None and subprotocol is not None and subprotocol not in offered:
        problem = f"it chose a subprotocol that was not offered ({subprotocol!r})"
    if problem is not None:
        raise UpstreamUnavailable("upstream_unavailable", f"the upstream broke the handshake: {problem}")
    return subprotocol


def _upgrade_refused(metrics: Metrics, tenant: str, peer: str, refusal: UpgradeRefused) -> None:
    """Count and log a refused upgrade, once."""
    metrics.refused(tenant, refusal.reason)
    log.info("upgrade_refused", tenant=tenant, reason=refusal.reason, peer=peer,
             status=refusal.status or None,
             **({"detail": refusal.detail[:200]} if refusal.detail else {}))


async def run_session(
    stream: trio.abc.Stream, decision: Decision, tenant: Tenant, *, sni: str | None,
    config: SwitchConfig, settings: GatewaySettings, registry: SessionRegistry,
    metrics: Metrics, peer: str, trust: Mapping[str, TenantTrust], now: dt.datetime,
    upstream_ssl: ssl.SSLContext | None = None,
) -> str:
    """Serve one admitted agent until either side closes; returns the close reason.

    ``config`` is the configuration the handshake ran under (its tenants and default tenant for
    the ``Host`` check); ``trust`` is the trust state in force now and ``now`` the time: the
    session registers at once and is re-checked against them (``SessionRegistry.admit``)."""
    session = Session(decision, trio.CancelScope(), peer)
    registry.admit(session, trust, now)
    http = new_request_reader()
    up_stream: trio.abc.Stream | None = None
    refusal: UpgradeRefused | None = None
    relaying = False
    try:
        with session.cancel_scope:
            try:
                try:
                    with trio.fail_after(settings.request_timeout_s):
                        upgrade = await _read_upgrade(stream, http)
                except trio.TooSlowError as exc:
                    raise UpgradeRefused(0, "upgrade_timeout") from exc
                if not host_matches(upgrade.host, tenant, sni, config):
                    raise UpgradeRefused(421, "host_mismatch")
                if not tenant.upstream:
                    raise UpgradeRefused(502, "no_upstream")
                url = upstream_url(tenant.upstream, upgrade.target)
                extra = forwarded_headers(upgrade.headers) + identity_headers(decision)
                try:
                    with trio.fail_after(settings.upstream_connect_timeout_s):
                        up_stream, up_trailing, subprotocol = await _open_upstream(
                            url, upgrade, extra, upstream_ssl)
                except trio.TooSlowError as exc:
                    raise UpgradeRefused(502, "upstream_unavailable",
                                         f"{url}: no WebSocket handshake within "
                                         f"{settings.upstream_connect_timeout_s} s") from exc
                except UpstreamUnavailable as exc:
                    raise UpgradeRefused(502, exc.reason, f"{url}: {exc}") from exc
                try:
                    with trio.fail_after(settings.write_timeout_s):
                        agent_trailing = await _accept_upgrade(stream, http, upgrade,
                                                               subprotocol)
                except trio.TooSlowError as exc:
                    raise UpgradeRefused(0, "agent_write_timeout") from exc
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    raise UpgradeRefused(0, "upgrade_aborted") from exc
            except UpgradeRefused as exc:
                refusal = exc
                _upgrade_refused(metrics, tenant.name, peer, exc)  # counted before it is sent
                await _refuse_upgrade(stream, exc.status, exc.reason, settings.close_timeout_s)
            else:
                del http, upgrade, extra, url  # a relaying session keeps only what it needs
                relaying = True
                limit = settings.max_message_bytes
                return await _relay(_Side.agent(stream, limit, agent_trailing),
                                    _Side.upstream(up_stream, limit, up_trailing), session,
                                    settings, metrics)
        if relaying:  # evicted while relaying: _relay closed both sides with the reason
            return session.close_reason or "evicted"
        if refusal is None:
            # Evicted (or shut down) before the relay began: refuse the upgrade with the reason.
            reason = session.close_reason or "evicted"
            refusal = UpgradeRefused(503 if reason == "shutdown" else 403, reason)
            _upgrade_refused(metrics, tenant.name, peer, refusal)
            await _refuse_upgrade(stream, refusal.status, reason, settings.close_timeout_s)
        return refusal.reason
    finally:
        registry.remove(session)
        if up_stream is not None and not relaying:
            await trio.aclose_forcefully(up_stream)
        elif up_stream is not None:
            with trio.move_on_after(settings.close_timeout_s) as cs:
                cs.shield = True
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await up_stream.aclose()


async def _cancelled_before_writing() -> None:
    """Raise ``Cancelled`` now if it is due, while nothing of the write has gone out: then the
    stream is whole and ``_Side.cut`` need not be set. ``send_all`` of the gateway's streams
    (``SocketTLSStream``, trio's ``SocketStream``) has no schedule point before its first bytes
    go out, so after this check a cancellation can only come once they have. The race this
    closes: the agent's Close arrives while the upstream's last message is being relayed to it;
    ending the relay cancelled that write before it began, the side was taken for cut, and the
    agent's Close went unanswered (1006 instead of 1000, at the end of a load test's hold)."""
    await trio.lowlevel.checkpoint_if_cancelled()


@attrs.define(eq=False)
class _Side:
    """One end of the relay: its stream, the reader of the frames it sends, and a lock over
    writes to it. ``mask``: frames of the relay's own to this side are masked (it is the
    upstream, a server). ``in_frame``: what was written to it so far ends inside a relayed frame,
    so no frame of the relay's own may go in now. ``cut`` is set while a write is under way and
    stays set if it was cancelled part-way: the stream then holds a partial frame (or TLS
    record) and must not be written to again. ``pending``: what arrived with the opening
    handshake, read before the stream."""

    stream: trio.abc.Stream
    reader: FrameReader
    mask: bool
    pending: bytes = b""
    lock: LightLock = attrs.field(factory=LightLock)
    cut: bool = False
    in_frame: bool = False
    close_received: bool = False

    @classmethod
    def agent(cls, stream: trio.abc.Stream, max_message_bytes: int, pending: bytes = b"") -> _Side:
        return cls(stream, FrameReader(masked=True, max_message_bytes=max_message_bytes),
                   mask=False, pending=pending)

    @classmethod
    def upstream(cls, stream: trio.abc.Stream, max_message_bytes: int, pending: bytes = b""
                 ) -> _Side:
        return cls(stream, FrameReader(masked=False, max_message_bytes=max_message_bytes),
                   mask=True, pending=pending)

    async def write(self, data: bytes | bytearray | memoryview, *, in_frame: bool) -> None:
        """Relayed bytes; ``in_frame``: they end inside a frame."""
        async with self.lock:
            if self.cut:  # a write before this one was cut off
                raise trio.BrokenResourceError("an earlier write to this side was cut off")
            await _cancelled_before_writing()
            self.cut = True
            await self.stream.send_all(data)
            self.cut = False
            self.in_frame = in_frame

    async def inject(self, frame: bytes) -> bool:
        """A frame of the relay's own (a ping, a close), between relayed frames only: False
        when the relayed bytes end inside a frame now."""
        async with self.lock:
            if self.cut:  # e.g. a ping that waited for the lock behind a write that timed out
                raise trio.BrokenResourceError("an earlier write to this side was cut off")
            if self.in_frame:
                return False
            await _cancelled_before_writing()
            self.cut = True
            await self.stream.send_all(frame)
            self.cut = False
            return True


class _Ended(Exception):
    """One side ended the session: ``code``/``text`` as received (1006 when it vanished);
    ``too_big`` when it broke the message size limit; ``protocol_error`` when it broke the
    WebSocket protocol (``code`` is then the one it is owed); ``stalled`` when it stopped
    reading (a write to it made no progress for ``write_timeout_s``)."""

    def __init__(self, agent_side: bool, code: int, text: str | None, too_big: bool = False,
                 stalled: bool = False, protocol_error: bool = False) -> None:
        super().__init__(code, text)
        self.agent_side = agent_side
        self.code = code
        self.text = text
        self.too_big = too_big
        self.stalled = stalled
        self.protocol_error = protocol_error


#: After a ping could not be sent (the agent's stream was inside a relayed frame): try again.
PING_RETRY_S = 1.0


async def _forward(src: _Side, dst: _Side, inbound: bool, settings: GatewaySettings,
                   counters: Counters, session: Session, bytes_metric: Counter,
                   messages_metric: Counter) -> None:
    """Relay ``src`` to ``dst`` until ``src`` ends (raises ``_Ended``). On the agent's side
    (``inbound``) it also keeps the session alive: a ping when the agent has been silent for
    ``ping_interval_s``, and eviction when it stays silent (no pong) for another interval, or
    for ``idle_timeout_s``. Every write, to either side, must finish within ``write_timeout_s``
    (one timer per chunk read: see the module docstring). The relay metrics are added to as
    each message completes (and for a message cut short, when the direction ends)."""
    reader = src.reader
    unreported = 0  # payload bytes relayed and not yet added to bytes_metric
    interval = settings.ping_interval_s if inbound else 0.0
    idle_limit = settings.idle_timeout_s if inbound else 0.0
    write_timeout = settings.write_timeout_s
    last_heard = trio.current_time()
    next_ping = last_heard + interval if interval > 0 else _INFINITY
    pinged_at: float | None = None
    try:
        while True:
            deadline = next_ping if pinged_at is None else pinged_at + interval
            if idle_limit > 0:
                deadline = min(deadline, last_heard + idle_limit)
            data: bytes | bytearray | None = None
            if src.pending:
                data, src.pending = src.pending, b""
            elif deadline == _INFINITY:  # no timer: no cancel scope while this direction idles
                data = await src.stream.receive_some(RECV_BYTES)
            else:
                # The timer covers the wait only. A scope stays cancelled once its deadline has
                # passed, so data that arrives as it passes must be relayed outside it.
                with trio.CancelScope(deadline=deadline):
                    data = await src.stream.receive_some(RECV_BYTES)
            if data is None:  # the agent was silent until the deadline
                now = trio.current_time()
                if idle_limit > 0 and now >= last_heard + idle_limit:
                    session.evict("idle_timeout")
                    await trio.lowlevel.checkpoint()
                if pinged_at is not None:  # and no answer for an interval
                    session.evict("ping_timeout")
                    await trio.lowlevel.checkpoint()
                payload = os.urandom(4)
                with trio.move_on_after(write_timeout) as ping_timer:
                    sent = await src.inject(ping_frame(payload, mask=src.mask))
                if ping_timer.cancelled_caught:
                    raise _Ended(inbound, 1006, None, stalled=True)
                if sent:
                    reader.expect_pong = payload
                    pinged_at = now
                else:  # the agent's stream is inside a frame the upstream is still sending
                    next_ping = now + min(interval, PING_RETRY_S)
                continue
            if not data:
                raise _Ended(inbound, 1006, None)
            if interval > 0 or idle_limit > 0:
                last_heard = trio.current_time()
                pinged_at = None
                next_ping = last_heard + interval if interval > 0 else _INFINITY
            payload_before, messages_before = reader.payload_bytes, reader.messages
            items = reader.feed(data)
            last = len(items) - 1
            for index, item in enumerate(items):
                if isinstance(item, Close):
                    src.close_received = True
                    raise _Ended(inbound, item.code, item.reason)
                if isinstance(item, Violation):
                    too_big = item.code == CLOSE_TOO_BIG
                    raise _Ended(inbound, item.code, item.reason, too_big=too_big,
                                 protocol_error=not too_big)
                with trio.move_on_after(write_timeout) as write_timer:
                    await dst.write(item, in_frame=reader.in_frame and index == last)
                if write_timer.cancelled_caught:  # that side stopped reading
                    raise _Ended(not inbound, 1006, None, stalled=True)
            relayed = reader.payload_bytes - payload_before
            if relayed:
                unreported += relayed
                if inbound:
                    counters.bytes_in += relayed
                else:
                    counters.bytes_out += relayed
            completed = reader.messages - messages_before
            if completed:
                if inbound:
                    counters.messages_in += completed
                else:
                    counters.messages_out += completed
                messages_metric.inc(completed)
                bytes_metric.inc(unreported)
                unreported = 0
    finally:
        if unreported:
            bytes_metric.inc(unreported)


async def _close_side(side: _Side, code: int, reason: str | None, close_timeout_s: float) -> None:
    """Finish one side's closing handshake: answer its close, or send ours and wait (bounded)
    for the answer. Never raises for a peer that is gone; writes nothing to a side whose last
    write was cut off or whose stream is inside a relayed frame (the stream is just closed)."""
    if side.cut or side.in_frame:
        return
    with trio.move_on_after(close_timeout_s) as cs:
        cs.shield = True
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError,
                                 trio.BusyResourceError):
            await side.inject(close_frame(code, reason, mask=side.mask))
            while not side.close_received:  # their answer; anything else they send is dropped
                data = side.pending or await side.stream.receive_some(RECV_BYTES)
                side.pending = b""
                if not data:
                    return
                items = side.reader.feed(data)
                if items and isinstance(items[-1], Violation):
                    return  # no answer will make sense: just close
                side.close_received = bool(items) and isinstance(items[-1], Close)


def _passable(code: int) -> int:
    """A received close code that may be sent on (1005, 1006 and 1015 never go on the wire)."""
    return CLOSE_NORMAL if code in (1005, 1006, 1015) or not 1000 <= code <= 4999 else code


def metric_reason(reason: str) -> str:
    """A session's close reason as a metric label: close codes chosen by a peer are folded
    (``agent_closed_4001`` -> ``agent_closed``) so the label set stays small."""
    for prefix in ("agent_closed_", "upstream_closed_"):
        if reason.startswith(prefix):
            return prefix[:-1]
    return reason


async def _relay(agent: _Side, upstream: _Side, session: Session, settings: GatewaySettings,
                 metrics: Metrics) -> str:
    """Relay both ways until one side ends or the session is evicted (its cancel scope, which
    the caller has entered, is cancelled: then the relay ends by raising ``Cancelled`` out of
    this function's body — the closing below runs shielded in ``finally``)."""
    decision = session.decision
    counters = Counters()
    tenant = decision.tenant
    metrics.sessions.labels(tenant).inc()
    ended: _Ended | None = None
    try:
        async with trio.open_nursery() as relay:

            async def one_way(src: _Side, dst: _Side, inbound: bool) -> None:
                nonlocal ended
                direction = "in" if inbound else "out"
                try:
                    await _forward(src, dst, inbound, settings, counters, session,
                                   metrics.relay_bytes.labels(tenant, direction),
                                   metrics.relay_messages.labels(tenant, direction))
                except _Ended as exc:
                    ended = ended or exc
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    ended = ended or _Ended(inbound, 1006, None)
                relay.cancel_scope.cancel()

            # The agent's direction runs in this task: one task fewer per session.
            relay.start_soon(one_way, upstream, agent, False)
            await one_way(agent, upstream, True)
    finally:
        reason, agent_close, upstream_close = _outcome(session.close_reason, ended)
        with trio.CancelScope(shield=True):
            if agent_close is not None:
                await _close_side(agent, *agent_close, settings.close_timeout_s)
            if upstream_close is not None:
                await _close_side(upstream, *upstream_close, settings.close_timeout_s)
        metrics.sessions.labels(tenant).dec()
        metrics.session_ends.labels(tenant, metric_reason(reason)).inc()
        log.info("session", tenant=tenant, identity=decision.identity,
                 trust=decision.trust, key_id=decision.key_id, serial=decision.serial,
                 peer=session.peer, duration_s=round(trio.current_time() - session.opened_at, 3),
                 bytes_in=counters.bytes_in, bytes_out=counters.bytes_out,
                 messages_in=counters.messages_in, messages_out=counters.messages_out,
                 close_reason=reason)
    return reason


CloseOwed = tuple[int, str | None]


def _outcome(eviction: str | None, ended: _Ended | None
             ) -> tuple[str, CloseOwed | None, CloseOwed | None]:
    """Pure: the session's close reason and the close (code, reason) owed to the agent and to the
    upstream, from an eviction or from whichever side ended first."""
    if eviction is not None:
        code = CLOSE_GOING_AWAY if eviction == "shutdown" else CLOSE_POLICY
        return eviction, (code, eviction), (CLOSE_GOING_AWAY, "agent_evicted")
    if ended is None:  # cannot happen: a relay ends only through one of the two
        return "closed", (CLOSE_INTERNAL, None), (CLOSE_GOING_AWAY, None)
    if ended.stalled:  # the stalled side is not reading: it gets no close frame
        if ended.agent_side:
            return "agent_write_timeout", None, (CLOSE_GOING_AWAY, "agent_write_timeout")
        return "upstream_write_timeout", (CLOSE_UPSTREAM_FAILED, "upstream_write_timeout"), None
    if ended.protocol_error:  # the side that broke the protocol is told so, with the code
        owed = (ended.code, ended.text)
        if ended.agent_side:
            return "agent_protocol_error", owed, (CLOSE_GOING_AWAY, "agent_protocol_error")
        return "upstream_protocol_error", (CLOSE_UPSTREAM_FAILED, "upstream_protocol_error"), owed
    # A side that vanished (1006) gets no close: nobody is there to answer it.
    vanished = ended.code == 1006
    if ended.agent_side:
        if ended.too_big:
            return "agent_message_too_big", (CLOSE_TOO_BIG, "message_too_big"), \
                (CLOSE_GOING_AWAY, "agent_message_too_big")
        return f"agent_closed_{ended.code}", \
            None if vanished else (_passable(ended.code), ended.text), \
            (_passable(ended.code), ended.text)
    if ended.too_big:
        return "upstream_message_too_big", (CLOSE_UPSTREAM_FAILED, "upstream_message_too_big"), \
            (CLOSE_TOO_BIG, "message_too_big")
    if ended.code in (1005, 1006, 1015):
        return "upstream_failed", (CLOSE_UPSTREAM_FAILED, "upstream_failed"), \
            None if vanished else (CLOSE_NORMAL, None)
    return f"upstream_closed_{ended.code}", (_passable(ended.code), ended.text), \
        (_passable(ended.code), ended.text)
