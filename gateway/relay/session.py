"""The life of one agent session after its TLS handshake: register, read the upgrade, dial the
upstream, accept, relay until either side ends, close, and count and log it all.

Every wait is bounded: the upgrade request by ``request_timeout_s``, the upstream connection by
``upstream_connect_timeout_s``, the ``101`` to the agent by ``write_timeout_s``, closing by
``close_timeout_s`` (the relay's own timers are ``gateway.relay.pump``'s).

The session is registered (``SessionRegistry.admit``) with its cancel scope as soon as the
handshake is done, so an eviction reaches it while it waits for the upgrade or for the upstream
too (the upgrade is then refused with ``403`` and the reason, ``503`` at shutdown), not only once
it relays. Every refusal is counted and logged once (``upgrade_refused``); an unreachable
upstream gets ``502``. Relay metrics move as each message completes; the session's one log line
(``session``) comes at its end.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ssl
from collections.abc import Mapping

import h11
import structlog
import trio

from config.model import GatewaySettings, SwitchConfig, Tenant
from gateway.listening import linger
from gateway.metrics import Metrics
from gateway.peer import Decision, TenantTrust
from gateway.relay.keepalive import Keepalive
from gateway.relay.pump import Counters, Relaying, Side, close_sides, forward, outcome
from gateway.relay.upgrade import (
    RECV_BYTES,
    Upgrade,
    UpgradeRefused,
    accept_response,
    forwarded_headers,
    host_matches,
    identity_headers,
    new_request_reader,
    parse_upgrade,
    refusal_response,
    upstream_url,
)
from gateway.relay.upstream import UpstreamUnavailable, open_upstream, source_address
from gateway.sessions import Session, SessionRegistry

log = structlog.get_logger("switch.gateway")


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
    or not the request was read whole: RFC 9112 9.6) after a lingering close
    (``gateway.listening.linger``: a reset would destroy the answer if the agent is still
    sending). The agent may already be gone."""
    if status == 0:
        return
    with trio.move_on_after(close_timeout_s), contextlib.suppress(
            trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
        await stream.send_all(refusal_response(status, reason))
    await linger(stream)


async def _accept_upgrade(stream: trio.abc.Stream, http: h11.Connection, upgrade: Upgrade,
                          subprotocol: str | None) -> bytes:
    """Send the 101; return what the agent sent right after its request (frames already)."""
    data, trailing = accept_response(http, upgrade, subprotocol)
    await stream.send_all(data)
    return trailing


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
    del trust  # not kept alive by a session: reloads and store changes replace it
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
                        up_stream, up_trailing, subprotocol = await open_upstream(
                            url, upgrade, extra, upstream_ssl,
                            source_address(settings.upstream_source_addresses))
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
                # A relaying session keeps only what it needs (not the config it opened under).
                del http, upgrade, extra, url, config
                relaying = True
        if relaying:
            # Outside the upgrade's scope: the relay's own scope becomes the session's (one
            # cancel scope fewer per idle session); an eviction meanwhile is seen by _relay.
            assert up_stream is not None
            limit = settings.max_message_bytes
            return await _relay(Side.agent(stream, limit, agent_trailing),
                                Side.upstream(up_stream, limit, up_trailing), session,
                                settings, metrics)
        if refusal is None:
            # Evicted (or shut down) before the relay began: refuse the upgrade with the reason.
            reason = session.close_reason or "evicted"
            refusal = UpgradeRefused(503 if reason == "shutdown" else 403, reason)
            _upgrade_refused(metrics, tenant.name, peer, refusal)
            await _refuse_upgrade(stream, refusal.status, reason, settings.close_timeout_s)
        return refusal.reason
    finally:
        # Only now, after the closing handshakes: a shutdown waits for the registry to empty.
        registry.remove(session)
        if up_stream is not None and not relaying:
            await trio.aclose_forcefully(up_stream)
        elif up_stream is not None:  # not shielded: a shutdown's drain deadline cuts it
            with trio.move_on_after(settings.close_timeout_s), contextlib.suppress(
                    trio.BrokenResourceError, trio.ClosedResourceError):
                await up_stream.aclose()


def metric_reason(reason: str) -> str:
    """A session's close reason as a metric label: close codes chosen by a peer are folded
    (``agent_closed_4001`` -> ``agent_closed``) so the label set stays small."""
    for prefix in ("agent_closed_", "upstream_closed_"):
        if reason.startswith(prefix):
            return prefix[:-1]
    return reason


#: The upstream direction's task name (a constant: trio would format one per task).
UPSTREAM_TASK = "gateway.relay.session.upstream_to_agent"


async def _relay(agent: Side, upstream: Side, session: Session, settings: GatewaySettings,
                 metrics: Metrics) -> str:
    """Relay both ways until one side ends or the session is evicted; returns the close reason.
    The relay's nursery scope becomes the session's ``cancel_scope``: an eviction cancels it,
    both directions end, and the closing below (in ``finally``, outside that scope, so an
    eviction cannot cut it but a shutdown's drain deadline can) sends the reason. An
    eviction that came before (the session's scope already cancelled) ends the relay at once.

    The agent's direction runs in this task and the upstream's in one more, ``forward`` being
    its whole body (it ends the relay itself); neither keeps a closure or a wrapper frame per
    session (memory per idle session, docs/performance.md). The process's keepalive sweep
    (``gateway.relay.keepalive``) watches the session for pings and the idle limit."""
    decision = session.decision
    counters = Counters()
    tenant = decision.tenant
    metrics.sessions.labels(tenant).inc()
    state: Relaying | None = None
    keepalive = Keepalive.current()
    try:
        async with trio.open_nursery() as relay:
            state = Relaying(relay, session, settings, agent)
            evicted = session.cancel_scope.cancel_called
            session.cancel_scope = relay.cancel_scope
            if evicted:
                relay.cancel_scope.cancel()
            keepalive.watch(state)
            write_timeout = settings.write_timeout_s
            relay.start_soon(forward, upstream, agent, False, write_timeout, counters,
                             metrics.relay_bytes.labels(tenant, "out"),
                             metrics.relay_messages.labels(tenant, "out"), state,
                             name=UPSTREAM_TASK)
            await forward(agent, upstream, True, write_timeout, counters,
                          metrics.relay_bytes.labels(tenant, "in"),
                          metrics.relay_messages.labels(tenant, "in"), state)
    finally:
        ended = state.ended if state is not None else None
        if state is not None:
            keepalive.forget(state)
        reason, agent_close, upstream_close = outcome(session.close_reason, ended)
        owed = [(side, close) for side, close in ((agent, agent_close),
                                                  (upstream, upstream_close))
                if close is not None]
        try:
            await close_sides(owed, settings.close_timeout_s)
        finally:  # also when a shutdown's drain deadline cuts the closes short
            metrics.sessions.labels(tenant).dec()
            metrics.session_ends.labels(tenant, metric_reason(reason)).inc()
            log.info("session", tenant=tenant, identity=decision.identity,
                     trust=decision.trust, key_id=decision.key_id, serial=decision.serial,
                     peer=session.peer,
                     duration_s=round(trio.current_time() - session.opened_at, 3),
                     bytes_in=counters.bytes_in, bytes_out=counters.bytes_out,
                     messages_in=counters.messages_in, messages_out=counters.messages_out,
                     close_reason=reason)
    return reason

