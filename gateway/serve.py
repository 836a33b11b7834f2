"""``switch serve``: one process, one Trio event loop, three listeners.

Theory of operation: ``Switch.run`` opens the store, builds the trust state (config + store), and
starts the gateway, enroll and admin listeners and the store watcher. Connections run in a nursery
of their own, apart from the accept loops, so a shutdown can stop accepting and still let sessions
drain. The watcher polls the store's change generation every ``WATCH_INTERVAL_S``: when it moves
(a key or certificate revoked, the service toggled, an issuer renewed, by this process or any
other), a new trust state is built and swapped in with one assignment, and every live session is
re-checked against it (``SessionRegistry.reevaluate``); sessions that lost their trust close at
once. The state is also rebuilt every ``REBUILD_INTERVAL_S`` so that time alone (a retired issuer
whose certificates all expired, a session whose certificate expired) takes effect.

Shutdown (SIGTERM, SIGINT, or ``Switch.stop``): stop accepting, wait up to ``drain_timeout_s`` for
sessions to end, close the rest with 1001 (going away), then end; ``switch serve`` exits 0.
"""

from __future__ import annotations

import datetime as dt
import signal
import ssl
from collections.abc import Awaitable, Callable
from typing import TypeVar, TypeVarTuple

import structlog
import trio

from config.model import SwitchConfig
from config.tls_material import load_server_credentials
from enroll.authority import Authority
from enroll.est_service import EstReply, EstService
from enroll.issuance import Issuance
from enroll.trust_view import read_trust_view
from gateway.admin import AdminListener
from gateway.enroll_listener import EnrollListener
from gateway.gateway_listener import GatewayListener
from gateway.metrics import Metrics
from gateway.sessions import Session, SessionRegistry
from gateway.tenant_tls import TrustState, build_trust_state, load_organisation_material
from gateway.tls import server_context

log = structlog.get_logger("switch")
T = TypeVar("T")
Ts = TypeVarTuple("Ts")

#: How often the store's change generation is read: revocations take effect within this.
WATCH_INTERVAL_S = 0.25
REBUILD_INTERVAL_S = 60.0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Switch:
    def __init__(self, config: SwitchConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.registry = SessionRegistry(on_evict=self._evicted)
        self.store_limiter = trio.CapacityLimiter(1)
        self.chain, self.key = load_server_credentials(config.tls)
        self.organisation = load_organisation_material(config)
        self.authority = Authority.open(config)
        self.issuance = Issuance(self.authority)
        self.est = EstService(config, self.issuance)
        self.state: TrustState | None = None
        self.listeners: dict[str, list[trio.SocketListener]] = {}
        self._stop = trio.Event()
        self.upstream_ssl = ssl.create_default_context()

    def current(self) -> TrustState:
        assert self.state is not None
        return self.state

    def stop(self) -> None:
        self._stop.set()

    def _evicted(self, session: Session, reason: str) -> None:
        self.metrics.evictions.labels(session.decision.tenant, reason).inc()
        log.info("session_evicted", tenant=session.decision.tenant, identity=session.decision.identity,
                 key_id=session.decision.key_id, reason=reason)

    def _on_est_reply(self, reply: EstReply) -> None:
        self.metrics.enrollments.labels(reply.tenant or "-", reply.result).inc()

    async def _in_store(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """Run a store call in a worker thread, one at a time (one SQLite connection)."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self.store_limiter)

    async def refresh_trust(self) -> None:
        view = await self._in_store(read_trust_view, self.authority, _now())
        self.state = build_trust_state(self.config, view, self.organisation, self.chain, self.key)
        self.metrics.trust_generation.set(view.generation)
        self.registry.reevaluate(self.state.tenants, _now())

    async def watch_store(self) -> None:
        last_rebuild = trio.current_time()
        while True:
            await trio.sleep(WATCH_INTERVAL_S)
            try:
                generation = await self._in_store(self.authority.generation)
            except Exception as exc:  # noqa: BLE001 - keep enforcing the last known state
                log.error("store_unreachable", error=str(exc))
                continue
            due = trio.current_time() - last_rebuild >= REBUILD_INTERVAL_S
            if generation != self.current().generation or due:
                await self.refresh_trust()
                last_rebuild = trio.current_time()

    async def ready(self) -> tuple[bool, str]:
        try:
            await self._in_store(self.authority.generation)
        except Exception:  # noqa: BLE001
            return False, "store_unreachable"
        if self.state is None or not self.listeners:
            return False, "starting"
        return True, "ready"

    async def run(self, *, task_status: trio.TaskStatus[dict[str, list[trio.SocketListener]]]
                  = trio.TASK_STATUS_IGNORED) -> None:
        """Run until ``stop()`` (or cancellation); reports the listening sockets by name."""
        cfg = self.config
        try:
            await self.refresh_trust()
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as services:
                    if cfg.gateway.listen.enabled:
                        gateway = GatewayListener(self.current, self.registry, self.metrics,
                                                  upstream_ssl=self.upstream_ssl)
                        self.listeners["gateway"] = await services.start(
                            _serve, gateway.serve, cfg.gateway.listen.host, cfg.gateway.listen.port,
                            connections)
                    if cfg.enroll.listen.enabled:
                        enroll_ctx = server_context(self.chain, self.key, client_auth="any")
                        enroll = EnrollListener(
                            self.est, lambda: enroll_ctx, request_timeout_s=cfg.enroll.request_timeout_s,
                            max_body_bytes=cfg.enroll.max_body_bytes,
                            max_connections=cfg.enroll.max_connections, on_reply=self._on_est_reply,
                            store_limiter=self.store_limiter)
                        self.listeners["enroll"] = await services.start(
                            _serve, enroll.serve, cfg.enroll.listen.host, cfg.enroll.listen.port,
                            connections)
                    if cfg.admin.listen.enabled:
                        admin = AdminListener(self.metrics, self.ready)
                        self.listeners["admin"] = await services.start(
                            _serve, admin.serve, cfg.admin.listen.host, cfg.admin.listen.port,
                            connections)
                    services.start_soon(self.watch_store)
                    task_status.started(self.listeners)
                    await self._stop.wait()
                    log.info("draining", sessions=len(self.registry),
                             deadline_s=cfg.gateway.drain_timeout_s)
                    services.cancel_scope.cancel()  # stop accepting
                with trio.move_on_after(cfg.gateway.drain_timeout_s):
                    await self.registry.wait_empty()
                self.registry.close_all("shutdown")
                with trio.move_on_after(cfg.gateway.close_timeout_s + 1):
                    await self.registry.wait_empty()
                connections.cancel_scope.cancel()
        finally:
            self.authority.close()


async def _serve(serve: Callable[..., Awaitable[None]], host: str, port: int,
                 handler_nursery: trio.Nursery, *,
                 task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
                 ) -> None:
    await serve(host, port, handler_nursery=handler_nursery, task_status=task_status)


async def run(config: SwitchConfig, *, task_status: trio.TaskStatus[dict[str, list[trio.SocketListener]]]
              = trio.TASK_STATUS_IGNORED) -> None:
    """Run a Switch until cancelled (for tests and embedding)."""
    await Switch(config).run(task_status=task_status)


async def main(config: SwitchConfig) -> None:
    """Run until SIGTERM or SIGINT, then drain and return."""
    switch = Switch(config)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def on_signal() -> None:
                async for signum in signals:
                    log.info("stopping", signal=signal.Signals(signum).name)
                    switch.stop()
                    return

            nursery.start_soon(on_signal)
            await switch.run()
            nursery.cancel_scope.cancel()
