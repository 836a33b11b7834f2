"""One agent session: the WebSocket upgrade, the upstream connection and the relay.

Runs after the TLS handshake admitted the agent (``Decision``). Every wait is bounded: the upgrade
request by ``request_timeout_s``, the upstream connection by ``upstream_connect_timeout_s``,
closing by ``close_timeout_s``; liveness by pings every ``ping_interval_s`` (an agent that sends
nothing, not even a pong, for ``idle_timeout_s`` is closed too).

Theory of operation: the relay speaks WebSocket with ``wsproto``'s sans-I/O ``Connection`` on
both sides, and HTTP with ``h11`` for the two opening handshakes; after the upgrade only the two
``Connection`` objects, two streams and two tasks remain per session (one per direction), which
is what lets one process hold tens of thousands of idle sessions. Frames are forwarded as they
arrive, not reassembled: a message is relayed fragment by fragment (RFC 6455 5.4 lets an
intermediary re-fragment when no extension is negotiated; none is), so memory per session stays
bounded by one read, and a message is still limited to ``max_message_bytes`` in all. Each
direction awaits its write before reading again (back-pressure). Writes to one stream come from
both tasks (relayed data from one, pongs and closes from the other) and are serialised by a lock.

- The ``Host`` of the upgrade must name the tenant SNI chose, else ``421 Misdirected Request``.
- The upgrade is relayed to the tenant's ``upstream`` with the path and query kept, the agent's
  own headers (less hop-by-hop, WebSocket handshake and any ``X-Switch-*`` it sent) and the
  verified identity in ``X-Switch-*`` headers. An unreachable upstream gets ``502``.
- Messages flow both ways, one at a time per direction (back-pressure: a slow reader slows its
  writer), each bounded by ``max_message_bytes`` (1009 on overflow). A close code on either side
  is passed to the other; an upstream that fails mid-session closes the agent with 1011
  (reason ``upstream_failed``); an eviction closes it with 1008 and the reason; shutdown with 1001.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import ssl
import urllib.parse
from collections.abc import Sequence

import attrs
import h11
import structlog
import trio
from wsproto import ConnectionType
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.handshake import H11Handshake
from wsproto.utilities import LocalProtocolError, RemoteProtocolError, generate_accept_token

from config.model import GatewaySettings, Tenant
from gateway.lightlock import LightLock
from gateway.metrics import Metrics
from gateway.peer import Decision
from gateway.sessions import Session, SessionRegistry

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
    """The agent's headers that go upstream: never hop-by-hop, handshake or X-Switch-* ones."""
    out = []
    for name, value in headers:
        lower = name.lower()
        if lower in _NOT_FORWARDED or lower.startswith(IDENTITY_PREFIX):
            continue
        out.append((name, value))
    return out


def upstream_url(base: str, path: str) -> str:
    """The tenant's upstream with the agent's path and query appended."""
    return base.rstrip("/") + (path if path.startswith("/") else "/" + path)


def host_matches(host: bytes | None, tenant: Tenant, sni: str | None, default_tenant: str | None
                 ) -> bool:
    if host is None:
        return False
    name = host.decode("ascii", "replace").strip().lower()
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    else:
        name = name.rpartition(":")[0] if name.count(":") == 1 else name
    if name.rstrip(".") in tenant.hostnames:
        return True
    # An agent that sent no SNI was given the default tenant; any Host is its business.
    return sni is None and default_tenant == tenant.name


@attrs.frozen
class Upgrade:
    """The agent's WebSocket upgrade request, checked."""

    target: str
    host: bytes | None
    headers: list[tuple[bytes, bytes]]
    subprotocols: list[str]
    key: bytes


class UpgradeRefused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


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


async def _read_upgrade(stream: trio.abc.Stream) -> tuple[h11.Connection, Upgrade]:
    """Read the agent's upgrade request; ``UpgradeRefused`` for anything else."""
    http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HANDSHAKE_BYTES)
    while True:
        try:
            event = http.next_event()
        except h11.RemoteProtocolError as exc:
            raise UpgradeRefused(exc.error_status_hint, "bad_request") from exc
        if event is h11.NEED_DATA:
            data = await stream.receive_some(RECV_BYTES)
            http.receive_data(bytes(data))
            continue
        if isinstance(event, h11.Request):
            return http, parse_upgrade(event)
        raise UpgradeRefused(400, "bad_request")  # ConnectionClosed before a request


async def _refuse_upgrade(stream: trio.abc.Stream, http: h11.Connection | None, status: int,
                          reason: str, close_timeout_s: float) -> None:
    """Answer the upgrade with ``status`` and the reason; the agent may already be gone."""
    body = f"{status} {reason}\n".encode()
    http = http if http is not None and http.our_state is h11.SEND_RESPONSE else None
    try:
        if http is not None:
            data = http.send(h11.Response(status_code=status, headers=[
                (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                (b"connection", b"close")])) or b""
            data += http.send(h11.Data(data=body)) or b""
            data += http.send(h11.EndOfMessage()) or b""
        else:
            data = (f"HTTP/1.1 {status} {reason}\r\ncontent-length: {len(body)}\r\n"
                    "connection: close\r\n\r\n").encode() + body
    except h11.LocalProtocolError:
        return
    with trio.move_on_after(close_timeout_s), contextlib.suppress(
            trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(data)


async def _accept_upgrade(stream: trio.abc.Stream, http: h11.Connection, upgrade: Upgrade,
                          subprotocol: str | None) -> Connection:
    headers = [(b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
               (b"sec-websocket-accept", generate_accept_token(upgrade.key))]
    if subprotocol:
        headers.append((b"sec-websocket-protocol", subprotocol.encode("ascii")))
    data = http.send(h11.InformationalResponse(status_code=101, headers=headers,
                                               reason=b"Switching Protocols")) or b""
    trailing, _ = http.trailing_data  # anything the agent sent right after its request
    await stream.send_all(data)
    return Connection(ConnectionType.SERVER, None, bytes(trailing))


class UpstreamUnavailable(Exception):
    pass


async def _open_upstream(url: str, upgrade: Upgrade, extra_headers: list[tuple[bytes, bytes]],
                         upstream_ssl: ssl.SSLContext | None
                         ) -> tuple[trio.abc.Stream, Connection, str | None]:
    """Connect to the upstream and complete its WebSocket handshake (the caller sets the
    deadline); returns the stream, the open ``Connection`` and the chosen subprotocol."""
    parts = urllib.parse.urlsplit(url)
    secure = parts.scheme == "wss"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    tcp = await trio.open_tcp_stream(host, port)
    stream: trio.abc.Stream = tcp
    try:
        if secure:
            stream = trio.SSLStream(tcp, upstream_ssl or ssl.create_default_context(),
                                    server_hostname=host)
            await stream.do_handshake()
        handshake = H11Handshake(ConnectionType.CLIENT)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        default_port = port == (443 if secure else 80)
        host_header = (f"[{host}]" if ":" in host else host) + ("" if default_port else f":{port}")
        await stream.send_all(handshake.send(Request(
            host=host_header, target=target, extra_headers=extra_headers,
            subprotocols=upgrade.subprotocols)))
        received = 0
        while True:
            for event in handshake.events():
                if isinstance(event, AcceptConnection):
                    connection = handshake.connection
                    assert connection is not None
                    return stream, connection, event.subprotocol
                if isinstance(event, RejectConnection):
                    raise UpstreamUnavailable(f"the upstream answered {event.status_code}")
            data = await stream.receive_some(RECV_BYTES)
            received += len(data)
            if received > MAX_HANDSHAKE_BYTES:
                raise UpstreamUnavailable("the upstream's handshake is too large")
            handshake.receive_data(bytes(data) if data else None)
            if not data:
                raise UpstreamUnavailable("the upstream closed during the handshake")
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


async def run_session(
    stream: trio.abc.Stream, decision: Decision, tenant: Tenant, *, sni: str | None,
    default_tenant: str | None, settings: GatewaySettings, registry: SessionRegistry,
    metrics: Metrics, peer: str, upstream_ssl: ssl.SSLContext | None = None,
) -> str:
    """Serve one admitted agent until either side closes; returns the close reason."""
    http: h11.Connection | None = None
    try:
        with trio.fail_after(settings.request_timeout_s):
            http, upgrade = await _read_upgrade(stream)
    except trio.TooSlowError:
        metrics.refused(tenant.name, "upgrade_timeout")
        return "upgrade_timeout"
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        metrics.refused(tenant.name, "upgrade_aborted")
        return "upgrade_aborted"
    except UpgradeRefused as exc:
        metrics.refused(tenant.name, exc.reason)
        await _refuse_upgrade(stream, http, exc.status, exc.reason, settings.close_timeout_s)
        return exc.reason
    refusal: tuple[int, str] | None = None
    if not host_matches(upgrade.host, tenant, sni, default_tenant):
        refusal = (421, "host_mismatch")
    elif not tenant.upstream:
        refusal = (502, "no_upstream")
    if refusal is not None:
        metrics.refused(tenant.name, refusal[1])
        await _refuse_upgrade(stream, http, *refusal, settings.close_timeout_s)
        return refusal[1]
    assert tenant.upstream is not None
    url = upstream_url(tenant.upstream, upgrade.target)
    extra = forwarded_headers(upgrade.headers) + identity_headers(decision)
    try:
        with trio.fail_after(settings.upstream_connect_timeout_s):
            up_stream, up_ws, subprotocol = await _open_upstream(url, upgrade, extra, upstream_ssl)
    except (UpstreamUnavailable, OSError, trio.TooSlowError, trio.BrokenResourceError,
            RemoteProtocolError, LocalProtocolError, ssl.SSLError) as exc:
        metrics.refused(tenant.name, "upstream_unavailable")
        log.warning("upstream_unavailable", tenant=tenant.name, upstream=url,
                    error=f"{type(exc).__name__}: {exc}")
        await _refuse_upgrade(stream, http, 502, "upstream_unavailable", settings.close_timeout_s)
        return "upstream_unavailable"
    try:
        agent_ws = await _accept_upgrade(stream, http, upgrade, subprotocol)
        del http, upgrade, extra
        agent = _Side(stream, agent_ws)
        upstream = _Side(up_stream, up_ws)
        return await _relay(agent, upstream, decision, settings, registry, metrics, peer)
    finally:
        with trio.move_on_after(settings.close_timeout_s) as cs:
            cs.shield = True
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await up_stream.aclose()


@attrs.define(eq=False)
class _Side:
    """One end of the relay: its stream, its WebSocket state and a lock over writes to it."""

    stream: trio.abc.Stream
    ws: Connection
    lock: LightLock = attrs.field(factory=LightLock)

    async def send(self, event: TextMessage | BytesMessage | Ping | Pong | CloseConnection) -> None:
        async with self.lock:
            await self.stream.send_all(self.ws.send(event))


class _Ended(Exception):
    """One side ended the session: ``code``/``text`` as received (1006 when it vanished);
    ``too_big`` when it broke the message size limit."""

    def __init__(self, agent_side: bool, code: int, text: str | None, too_big: bool = False) -> None:
        super().__init__(code, text)
        self.agent_side = agent_side
        self.code = code
        self.text = text
        self.too_big = too_big


async def _forward(src: _Side, dst: _Side, inbound: bool, settings: GatewaySettings,
                   counters: Counters, session: Session) -> None:
    """Relay ``src`` to ``dst`` until ``src`` ends (raises ``_Ended``). On the agent's side
    (``inbound``) it also keeps the session alive: a ping when the agent has been silent for
    ``ping_interval_s``, and eviction when it stays silent (no pong) for another interval, or
    for ``idle_timeout_s``."""
    size = 0
    interval = settings.ping_interval_s if inbound else 0.0
    idle_limit = settings.idle_timeout_s if inbound else 0.0
    last_heard = trio.current_time()
    pinged = False
    while True:
        deadline = float("inf")
        if interval > 0:
            deadline = last_heard + interval * (2 if pinged else 1)
        if idle_limit > 0:
            deadline = min(deadline, last_heard + idle_limit)
        if deadline == float("inf"):  # no timer: saves a cancel scope per idle session
            data = await src.stream.receive_some(RECV_BYTES)
            timed_out = False
        else:
            with trio.move_on_at(deadline) as timer:
                data = await src.stream.receive_some(RECV_BYTES)
            timed_out = timer.cancelled_caught
        if timed_out:
            now = trio.current_time()
            if idle_limit > 0 and now >= last_heard + idle_limit:
                session.evict("idle_timeout")
                await trio.lowlevel.checkpoint()
            if pinged:
                session.evict("ping_timeout")
                await trio.lowlevel.checkpoint()
            pinged = True
            await src.send(Ping(os.urandom(4)))
            continue
        if not data:
            raise _Ended(inbound, 1006, None)
        last_heard = trio.current_time()
        pinged = False
        src.ws.receive_data(bytes(data))
        for event in src.ws.events():
            if isinstance(event, Message):
                chunk = event.data
                n = len(chunk.encode("utf-8")) if isinstance(chunk, str) else len(chunk)
                size += n
                if size > settings.max_message_bytes:
                    raise _Ended(inbound, CLOSE_TOO_BIG, "message_too_big", too_big=True)
                out: TextMessage | BytesMessage = (
                    TextMessage(data=chunk, message_finished=event.message_finished)
                    if isinstance(chunk, str) else
                    BytesMessage(data=chunk, message_finished=event.message_finished))
                await dst.send(out)
                if inbound:
                    counters.bytes_in += n
                else:
                    counters.bytes_out += n
                if event.message_finished:
                    size = 0
                    if inbound:
                        counters.messages_in += 1
                    else:
                        counters.messages_out += 1
            elif isinstance(event, Ping):
                await src.send(event.response())
            elif isinstance(event, CloseConnection):
                raise _Ended(inbound, event.code, event.reason or None)
            # Pong: hearing anything already counted as a sign of life.


async def _close_side(side: _Side, code: int, reason: str | None, close_timeout_s: float) -> None:
    """Finish one side's closing handshake: answer its close, or send ours and wait (bounded)
    for the answer. Never raises for a peer that is gone."""
    with trio.move_on_after(close_timeout_s) as cs:
        cs.shield = True
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError,
                                 trio.BusyResourceError, LocalProtocolError):
            if side.ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
                await side.send(CloseConnection(code=code, reason=reason))
            while side.ws.state is ConnectionState.LOCAL_CLOSING:
                data = await side.stream.receive_some(RECV_BYTES)
                side.ws.receive_data(bytes(data) if data else None)
                for _ in side.ws.events():
                    pass


def _passable(code: int) -> int:
    """A received close code that may be sent on (1005, 1006 and 1015 never go on the wire)."""
    return CLOSE_NORMAL if code in (1005, 1006, 1015) or not 1000 <= code <= 4999 else code


async def _relay(agent: _Side, upstream: _Side, decision: Decision, settings: GatewaySettings,
                 registry: SessionRegistry, metrics: Metrics, peer: str) -> str:
    counters = Counters()
    cancel_scope = trio.CancelScope()
    session = Session(decision, cancel_scope, peer)
    registry.add(session)
    metrics.sessions.labels(decision.tenant).inc()
    ended: _Ended | None = None
    try:
        with cancel_scope:
            async with trio.open_nursery() as relay:

                async def one_way(src: _Side, dst: _Side, inbound: bool) -> None:
                    nonlocal ended
                    try:
                        await _forward(src, dst, inbound, settings, counters, session)
                    except _Ended as exc:
                        ended = ended or exc
                    except (trio.BrokenResourceError, trio.ClosedResourceError, RemoteProtocolError):
                        ended = ended or _Ended(inbound, 1006, None)
                    relay.cancel_scope.cancel()

                # The agent's direction runs in this task: one task fewer per session.
                relay.start_soon(one_way, upstream, agent, False)
                await one_way(agent, upstream, True)
        reason, agent_close, upstream_close = _outcome(session.close_reason, ended)
        if agent_close is not None:
            await _close_side(agent, *agent_close, settings.close_timeout_s)
        if upstream_close is not None:
            await _close_side(upstream, *upstream_close, settings.close_timeout_s)
        return reason
    finally:
        registry.remove(session)
        metrics.sessions.labels(decision.tenant).dec()
        for direction, count, size in (("in", counters.messages_in, counters.bytes_in),
                                       ("out", counters.messages_out, counters.bytes_out)):
            metrics.relay_messages.labels(decision.tenant, direction).inc(count)
            metrics.relay_bytes.labels(decision.tenant, direction).inc(size)
        log.info("session", tenant=decision.tenant, identity=decision.identity,
                 trust=decision.trust, key_id=decision.key_id, serial=decision.serial, peer=peer,
                 duration_s=round(trio.current_time() - session.opened_at, 3),
                 bytes_in=counters.bytes_in, bytes_out=counters.bytes_out,
                 messages_in=counters.messages_in, messages_out=counters.messages_out,
                 close_reason=session.close_reason or _outcome(None, ended)[0])


Close = tuple[int, str | None]


def _outcome(eviction: str | None, ended: _Ended | None) -> tuple[str, Close | None, Close | None]:
    """Pure: the session's close reason and the close (code, reason) owed to the agent and to the
    upstream, from an eviction or from whichever side ended first."""
    if eviction is not None:
        code = CLOSE_GOING_AWAY if eviction == "shutdown" else CLOSE_POLICY
        return eviction, (code, eviction), (CLOSE_GOING_AWAY, "agent_evicted")
    if ended is None:  # cannot happen: a relay ends only through one of the two
        return "closed", (CLOSE_INTERNAL, None), (CLOSE_GOING_AWAY, None)
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
