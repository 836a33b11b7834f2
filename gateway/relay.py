"""One agent session: the WebSocket upgrade, the upstream connection and the relay.

Runs after the TLS handshake admitted the agent (``Decision``). Every wait is bounded: the upgrade
request by ``request_timeout_s``, the upstream connection by ``upstream_connect_timeout_s``,
closing by ``close_timeout_s``; liveness by pings every ``ping_interval_s``.

- The ``Host`` of the upgrade must name the tenant SNI chose, else ``421 Misdirected Request``.
- The upgrade is relayed to the tenant's ``upstream`` with the path and query kept, the agent's
  own headers (less hop-by-hop, WebSocket handshake and any ``X-Switch-*`` it sent) and the
  verified identity in ``X-Switch-*`` headers. An unreachable upstream gets ``502``.
- Messages flow both ways, one at a time per direction (back-pressure: a slow reader slows its
  writer), each bounded by ``max_message_bytes`` (1009 on overflow). A close code on either side
  is passed to the other; an upstream that fails mid-session closes the agent with 1014 (bad
  gateway); an eviction closes it with 1008 and the reason; shutdown with 1001.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Sequence

import attrs
import structlog
import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    WebSocketRequest,
    open_websocket_url,
    wrap_server_stream,
)

from config.model import GatewaySettings, Tenant
from gateway.metrics import Metrics
from gateway.peer import Decision
from gateway.sessions import Session, SessionRegistry

log = structlog.get_logger("switch.gateway")

IDENTITY_PREFIX = b"x-switch-"
_NOT_FORWARDED = {b"host", b"upgrade", b"connection", b"sec-websocket-key",
                  b"sec-websocket-version", b"sec-websocket-extensions", b"sec-websocket-protocol",
                  b"sec-websocket-accept", b"content-length", b"transfer-encoding", b"keep-alive",
                  b"te", b"trailer", b"proxy-authorization", b"proxy-connection"}
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
CLOSE_BAD_GATEWAY = 1014


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


async def _reject(request: WebSocketRequest, status: int, reason: str) -> None:
    """Answer the upgrade with ``status`` and the reason; the agent may already be gone."""
    with contextlib.suppress(ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
        await request.reject(status, body=f"{status} {reason}\n".encode())


async def _pinger(ws: WebSocketConnection, interval: float, session: Session) -> None:
    while True:
        await trio.sleep(interval)
        with trio.move_on_after(interval) as cs:
            await ws.ping()
        if cs.cancelled_caught:
            session.evict("ping_timeout")
            return


async def _pump(src: WebSocketConnection, dst: WebSocketConnection, counters: Counters,
                inbound: bool) -> None:
    while True:
        message = await src.get_message()
        await dst.send_message(message)
        size = len(message)
        if inbound:
            counters.bytes_in += size
            counters.messages_in += 1
        else:
            counters.bytes_out += size
            counters.messages_out += 1


async def _close(ws: WebSocketConnection, code: int, reason: str | None,
                 close_timeout_s: float) -> None:
    with trio.move_on_after(close_timeout_s) as cs:
        cs.shield = True
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError,
                                 ConnectionClosed):
            await ws.aclose(code, reason)


async def run_session(
    stream: trio.abc.Stream, decision: Decision, tenant: Tenant, *, sni: str | None,
    default_tenant: str | None, settings: GatewaySettings, registry: SessionRegistry,
    metrics: Metrics, peer: str, upstream_ssl: ssl.SSLContext | None = None,
) -> str:
    """Serve one admitted agent until either side closes; returns the close reason."""
    async with trio.open_nursery() as nursery:
        try:
            with trio.fail_after(settings.request_timeout_s):
                request: WebSocketRequest = await wrap_server_stream(
                    nursery, stream, max_message_size=settings.max_message_bytes)
        except (trio.TooSlowError, ConnectionClosed, trio.BrokenResourceError):
            metrics.refused(tenant.name, "upgrade_timeout")
            nursery.cancel_scope.cancel()
            return "upgrade_timeout"
        headers = list(request.headers)
        # wsproto keeps Host apart from the other headers; trio-websocket exposes only those.
        raw_host = getattr(getattr(request, "_event", None), "host", None)
        host = raw_host.encode("latin-1", "replace") if isinstance(raw_host, str) else None
        if not host_matches(host, tenant, sni, default_tenant):
            metrics.refused(tenant.name, "host_mismatch")
            await _reject(request, 421, "host_mismatch")
            nursery.cancel_scope.cancel()
            return "host_mismatch"
        if not tenant.upstream:
            metrics.refused(tenant.name, "no_upstream")
            await _reject(request, 502, "no_upstream")
            nursery.cancel_scope.cancel()
            return "no_upstream"
        url = upstream_url(tenant.upstream, request.path)
        extra = forwarded_headers(headers) + identity_headers(decision)
        try:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    upstream = await stack.enter_async_context(open_websocket_url(
                        url, ssl_context=upstream_ssl if url.startswith("wss:") else None,
                        subprotocols=request.proposed_subprotocols or None, extra_headers=extra,
                        max_message_size=settings.max_message_bytes,
                        connect_timeout=settings.upstream_connect_timeout_s,
                        disconnect_timeout=settings.close_timeout_s,
                    ))
                except (HandshakeError, OSError, trio.TooSlowError, ConnectionClosed) as exc:
                    metrics.refused(tenant.name, "upstream_unavailable")
                    log.warning("upstream_unavailable", tenant=tenant.name, upstream=url,
                                error=f"{type(exc).__name__}: {exc}")
                    await _reject(request, 502, "upstream_unavailable")
                    return "upstream_unavailable"
                agent = await request.accept(subprotocol=upstream.subprotocol)
                return await _relay(agent, upstream, decision, settings, registry, metrics, peer)
        finally:
            nursery.cancel_scope.cancel()


async def _relay(agent: WebSocketConnection, upstream: WebSocketConnection, decision: Decision,
                 settings: GatewaySettings, registry: SessionRegistry, metrics: Metrics,
                 peer: str) -> str:
    counters = Counters()
    cancel_scope = trio.CancelScope()
    session = Session(decision, cancel_scope, peer)
    registry.add(session)
    metrics.sessions.labels(decision.tenant).inc()
    reason = "closed"
    agent_code: int | None = None
    agent_reason: str | None = None
    decided = False
    try:
        with cancel_scope:
            async with trio.open_nursery() as relay:

                async def one_way(src: WebSocketConnection, dst: WebSocketConnection,
                                  inbound: bool) -> None:
                    nonlocal reason, agent_code, agent_reason, decided
                    try:
                        await _pump(src, dst, counters, inbound)
                    except ConnectionClosed as exc:
                        code = exc.reason.code if exc.reason else 1006
                        text = exc.reason.reason if exc.reason else None
                        if decided:  # the other direction ended first and closes this one
                            return
                        decided = True
                        if inbound:  # the agent closed (or vanished): pass it upstream
                            reason = f"agent_closed_{code}"
                            relay.cancel_scope.cancel()
                            await _close(upstream, code if code not in (1005, 1006) else 1000,
                                         text, settings.close_timeout_s)
                            return
                        if code in (1005, 1006):
                            reason = "upstream_failed"
                            agent_code, agent_reason = CLOSE_BAD_GATEWAY, "upstream_failed"
                        else:
                            reason = f"upstream_closed_{code}"
                            agent_code, agent_reason = code, text
                    relay.cancel_scope.cancel()

                relay.start_soon(one_way, agent, upstream, True)
                relay.start_soon(one_way, upstream, agent, False)
                if settings.ping_interval_s > 0:
                    relay.start_soon(_pinger, agent, settings.ping_interval_s, session)
        if session.close_reason is not None:
            reason = session.close_reason
            code = CLOSE_GOING_AWAY if reason == "shutdown" else CLOSE_POLICY
            await _close(agent, code, reason, settings.close_timeout_s)
            await _close(upstream, CLOSE_GOING_AWAY, "agent_evicted", settings.close_timeout_s)
        elif agent_code is not None:
            await _close(agent, agent_code, agent_reason, settings.close_timeout_s)
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
                 close_reason=reason)
