"""The gateway listener: accept, per-tenant mTLS handshake, then the agent's session.

The accept loop takes a connection only while this process has fewer than
``HANDSHAKES_IN_PROGRESS`` handshakes in progress (``gateway.listening.HandshakeCapacity``): in a
reconnection storm the rest wait in the kernel's listen queue, where no deadline runs, instead of
timing out behind each other here. Each connection runs in its own task. A source (an address, an IPv6 /64) with
``max_handshakes_per_source`` connections still in their handshake, or a listener with
``max_connections``, has a new connection closed at once (live sessions are untouched; see
``gateway.listening``). The first byte must arrive within ``first_byte_timeout_s``, the whole
handshake within ``handshake_timeout_s``, with the trust state current at accept time; its verify callback has already refused (as a TLS alert) any
certificate ``gateway.peer`` says no to, so after the handshake only the WebSocket upgrade remains.
The session registers then, and is re-checked against the trust state current at that moment
(``gateway.relay.run_session``), so a change made during the handshake is not missed.
Every refusal is counted by tenant and reason and logged once; a failed handshake's reason is
the callbacks' own decision, else what OpenSSL's codes say (``gateway.tls_refusals``).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import structlog
import trio

from gateway import relay
from gateway.listening import (
    HandshakeCapacity,
    HandshakeSlots,
    close_lingering,
    first_byte,
    has_data,
    peer_address,
    serve_tcp,
    source_of,
)
from gateway.metrics import Metrics
from gateway.sessions import SessionRegistry
from gateway.tenant_tls import HandshakeInfo, TrustState
from gateway.tls import TLSStream, socket_of, stream_for
from gateway.tls_refusals import handshake_reason, verify_result

log = structlog.get_logger("switch.gateway")

#: Handshakes one process works on at once; more connections wait in the kernel's listen queue
#: (``gateway.listening``, "handshakes in progress"). At 1 to 2 ms of CPU each, a new connection
#: waits a few tenths of a second behind the others at most, far inside its deadlines; enough
#: to keep the CPU busy while agents' flights are on their way.
HANDSHAKES_IN_PROGRESS = 128


class GatewayListener:
    def __init__(self, current: Callable[[], TrustState], registry: SessionRegistry,
                 metrics: Metrics, *, upstream_ssl: ssl.SSLContext | None = None) -> None:
        self.current = current
        self.registry = registry
        self.metrics = metrics
        self.upstream_tls = relay.UpstreamTLS(upstream_ssl)
        self.open_connections = 0
        #: Handshakes ended, whatever their outcome (``gateway.heap_trim`` trims after bursts).
        self.handshakes_ended = 0
        #: Connections of each source still in their handshake (``max_handshakes_per_source``).
        self.handshakes = HandshakeSlots()
        #: Handshakes this process works on at once (``gateway.listening.HandshakeCapacity``).
        self.capacity = HandshakeCapacity(HANDSHAKES_IN_PROGRESS)

    async def serve(self, host: str, port: int, *, handler_nursery: trio.Nursery | None = None,
                    sockets: Sequence[socket.socket] | None = None,
                    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
                    ) -> None:
        await serve_tcp("gateway", self.handle_connection, host, port,
                        handler_nursery=handler_nursery, sockets=sockets, backlog=4096,
                        capacity=self.capacity, task_status=task_status)

    async def handle_connection(self, stream: trio.SocketStream) -> None:
        """One connection, counted in ``capacity`` by the accept loop until its handshake is
        over (``_handshake`` gives the place back while it waits for the first byte)."""
        held = True
        try:
            deadline = trio.current_time()
            state = self.current()
            settings = state.config.gateway
            deadline += settings.handshake_timeout_s
            peer = peer_address(stream)
            source = source_of(peer)
            # Per source first: a source over its limit is refused even while the listener has
            # room (gateway.listening, "connections still in their handshake").
            if not self.handshakes.take(source, settings.max_handshakes_per_source):
                self.metrics.refused(None, "too_many_handshakes")
                await trio.aclose_forcefully(stream)
                return
            if self.open_connections >= settings.max_connections:
                self.handshakes.give_back(source)
                self.metrics.refused(None, "too_many_connections")
                await trio.aclose_forcefully(stream)
                return
            self.open_connections += 1
            try:
                try:
                    tls = await self._handshake(stream, state, peer, source, deadline)
                finally:
                    held = False
                    self.capacity.give_back()
                    self.handshakes_ended += 1
                if tls is not None:
                    # The session runs in this frame (one coroutine fewer per idle session).
                    session = self._session(tls, state, peer)
                    del state  # a session must not keep the trust state it opened under alive
                    if session is None:
                        await trio.aclose_forcefully(tls)
                    else:
                        try:
                            await session
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            pass
                        finally:
                            # Not shielded: close_notify goes out with the socket's close even
                            # when cancelled (the end of a shutdown's drain), which then closes
                            # the socket at once.
                            with trio.move_on_after(settings.close_timeout_s):
                                await tls.aclose()
            except Exception:  # noqa: BLE001 - one connection's failure must not end the others
                self.metrics.refused(None, "internal_error")
                log.exception("connection_failed", peer=peer)
                await trio.aclose_forcefully(stream)
            finally:
                self.open_connections -= 1
        finally:
            if held:
                self.capacity.give_back()

    async def _handshake(self, stream: trio.SocketStream, state: TrustState, peer: str,
                         source: str, deadline: float) -> TLSStream | None:
        """The handshake (its slot of ``source`` given back as soon as it is over): the TLS
        stream, or None when it was refused (counted, logged, the connection closed)."""
        settings = state.config.gateway
        failure: trio.TooSlowError | trio.BrokenResourceError | trio.ClosedResourceError | None
        failure = None
        reason = "handshake_timeout"
        try:
            conn = state.new_connection(socket_of(stream))
            info: HandshakeInfo = conn.get_app_data()
            tls = stream_for(stream, conn)
            try:
                if not has_data(stream):  # a silent connection holds no place (see listening)
                    self.capacity.give_back()
                    try:
                        arrived = await first_byte(stream, min(settings.first_byte_timeout_s,
                                                               deadline - trio.current_time()))
                    finally:
                        self.capacity.take()
                    if not arrived:
                        reason = "first_byte_timeout"
                        raise trio.TooSlowError
                with trio.CancelScope(deadline=deadline) as scope:
                    await tls.do_handshake()
                if scope.cancelled_caught:
                    raise trio.TooSlowError
            except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                failure = exc
        finally:
            self.handshakes.give_back(source)
        if failure is None:
            return tls
        # Switch's own decision first (the SNI or verify callback's), then OpenSSL's codes.
        if not isinstance(failure, trio.TooSlowError):
            reason = info.refusal or handshake_reason(failure.__cause__, verify_result(conn))
        self._refuse(info.tenant, reason, peer, info.server_name,
                     None if info.refusal else str(failure.__cause__ or failure))
        if isinstance(failure, trio.TooSlowError):
            await trio.aclose_forcefully(stream)
        else:  # the alert is written: let the agent read it before the socket closes
            await close_lingering(stream)
        return None

    def _session(self, tls: TLSStream, state: TrustState, peer: str
                 ) -> Coroutine[Any, Any, str] | None:
        """After the handshake: the session to run (``relay.run_session``, not started), under
        the decision the verify callback made; None for a connection to close (counted)."""
        info: HandshakeInfo = tls.connection.get_app_data()
        decision = info.decision
        info.state = None  # the decision holds what a session needs; let old trust states go
        tenant = state.config.tenants.get(info.tenant or "")
        if decision is None or not decision.allowed or tenant is None:
            # Cannot happen: the verify callback refuses first. Fail closed all the same.
            self._refuse(info.tenant, info.refusal or "not_admitted", peer, info.server_name)
            return None
        self.metrics.handshake(tenant.name, "ok")
        latest = self.current()  # the session is re-checked against the state in force now
        return relay.run_session(
            tls, decision, tenant, sni=info.server_name,
            config=state.config, settings=state.config.gateway,
            registry=self.registry, metrics=self.metrics, peer=peer,
            trust=latest.tenants, now=latest.clock(),
            upstream_ssl=self.upstream_tls.context(state.config, tenant))

    def _refuse(self, tenant: str | None, reason: str, peer: str, sni: str | None,
                detail: str | None = None) -> None:
        self.metrics.handshake(tenant, "refused")
        self.metrics.refused(tenant, reason)
        log.info("handshake_refused", tenant=tenant, reason=reason, peer=peer, sni=sni,
                 **({"detail": detail[:200]} if detail else {}))
