"""One serving process (``switch serve``, or one of its workers): its listeners, its trust state
and the store watcher that keeps it current, reload, and graceful shutdown.

Theory of operation: ``Switch.run`` opens the store, builds the trust state (config + store), and
starts the gateway, enroll and admin listeners and the store watcher. Connections run in a nursery
of their own, apart from the accept loops, so a shutdown can stop accepting and still let sessions
drain. The watcher reads the store's change generation whenever ``StoreWatch.next_change``
returns (a change notice pushed by PostgreSQL, or the store's poll interval: 0.1 s with SQLite,
0.5 s under PostgreSQL's notices): when it moves (a key or certificate revoked, the service
toggled, an issuer renewed, by this process or any other, on any host), a new trust state is built
and swapped in with one assignment, and every live session is re-checked against it
(``SessionRegistry.reevaluate``); sessions that lost their trust close at once. While the store
cannot be read, the last trust state stays in force (``StoreWatch`` shows it in /metrics and
/readyz). The state is also rebuilt every ``REBUILD_INTERVAL_S`` so that time alone (a retired issuer
whose certificates all expired, a session whose certificate expired) takes effect.

Shutdown (SIGTERM, SIGINT, or ``Switch.stop``): stop accepting, and close every session at once,
all of them concurrently: a relaying session sends 1001 (going away) to its agent and its upstream
and waits for their answers, a session still before its upgrade gets ``503 shutdown``. The whole
shutdown has one deadline, ``drain_timeout_s`` from the signal: what is still open then (an agent
that never answers its close) is cut (its sockets closed) and the process ends; ``switch serve``
exits 0 (agents' sessions never end by themselves: nothing waits for that). A second SIGTERM or
SIGINT cuts at once (``Switch.stop(now=True)``; a worker leaves that to its supervisor).
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import functools
import os
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar, TypeVarTuple

import attrs
import structlog
import trio

from config.errors import ConfigError
from config.model import SwitchConfig
from config.reload import restart_needed
from enroll.authority import Authority
from enroll.errors import StoreError
from enroll.est_service import EstReply
from enroll.issuance import Issuance
from enroll.ratelimit import SharedFailureLimiter
from enroll.trust_view import read_trust_view
from gateway import gc_tuning, heap_trim, runfiles, sdnotify
from gateway.admin import AdminListener
from gateway.api.metrics import ApiMetrics, WebhookMetrics
from gateway.enroll_listener import EnrollListener
from gateway.gateway_listener import GatewayListener
from gateway.loading import ConfigReader, ReloadResult, load_all, read_from_disk
from gateway.metrics import Metrics
from gateway.sessions import Session, SessionRegistry
from gateway.stopsignals import repeats_ignored_once_stopping
from gateway.store_watch import StoreWatch
from gateway.tenant_tls import (
    TrustState,
    build_trust_state,
)
from gateway.webhooks import Webhooks

log = structlog.get_logger("switch")
T = TypeVar("T")
Ts = TypeVarTuple("Ts")

#: /readyz waits this long for the store to answer before it says ``store_unreachable``.
READY_STORE_TIMEOUT_S = 2.0
#: The trust state is rebuilt this often even when the store did not change (time alone expires).
REBUILD_INTERVAL_S = 60.0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Switch:
    """``reload_config`` reads the configuration again for a reload: from disk (the default), or
    for a worker from the supervisor's snapshot, which also gives the generation it becomes
    (None: the next one). ``generation`` is the one the process starts at."""

    def __init__(self, config: SwitchConfig, *,
                 sockets: Mapping[str, list[socket.socket]] | None = None,
                 write_pid: bool = True, worker: int | None = None, generation: int = 1,
                 reload_config: ConfigReader = read_from_disk) -> None:
        #: The configuration the process started with: what restart-only settings stay at.
        self.started = config
        self.reload_config = reload_config
        self.sockets = dict(sockets or {})
        self.write_pid = write_pid
        self.status_name = runfiles.reload_status_name(worker)
        self.worker = worker
        self.metrics = Metrics()
        self.registry = SessionRegistry(on_evict=self._evicted)
        self.store_limiter = trio.CapacityLimiter(1)
        self.authority = Authority.open(config)
        self.store_watch = StoreWatch(self.authority.store, self.metrics.registry)
        # Wrong-key lockouts, counted in the store: shared by every process and host.
        self.est_limiter = SharedFailureLimiter(self.authority.store)
        self.issuance = Issuance(self.authority)
        self.api_metrics = ApiMetrics(self.metrics.registry)
        try:
            self.webhooks = Webhooks(config.webhooks, WebhookMetrics(self.metrics.registry))
            self.loaded = load_all(config, self.issuance, generation, self.est_limiter)
        except BaseException:
            self.authority.close()
            raise
        self._reload_lock = trio.Lock()
        # /metrics shows the load at start as the last load: its generation, result and time.
        self.last_reload = self._record(ReloadResult(generation, True, _now().isoformat()),
                                        reload=False)
        self.state: TrustState | None = None
        #: The trust state must be rebuilt (a rebuild failed: the store could not be read).
        self.trust_stale = False
        self.listeners: dict[str, list[trio.SocketListener]] = {}
        self._stop = trio.Event()
        #: The shutdown's drain: its deadline is set at the stop, ``stop(now=True)`` cancels it.
        self._drain = trio.CancelScope()
        self.upstream_ssl = ssl.create_default_context()

    @property
    def config(self) -> SwitchConfig:
        return self.loaded.config

    def current(self) -> TrustState:
        assert self.state is not None
        return self.state

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self, *, now: bool = False) -> None:
        """Begin the shutdown (module docstring); ``now``: do not wait for closing handshakes,
        cut every connection at once (a second signal)."""
        self._stop.set()
        if now:
            self._drain.cancel()

    def _evicted(self, session: Session, reason: str) -> None:
        # Counted here; logged once per change (``sessions_evicted`` in refresh_trust, reload)
        # and once per session by its own `session` / `upgrade_refused` line with the reason:
        # a line per eviction here would cost a revocation of thousands of sessions ~0.1 s.
        self.metrics.evicted(session.decision.tenant, reason)

    def _on_est_reply(self, reply: EstReply) -> None:
        self.metrics.enrollments.labels(reply.tenant or "-", reply.result).inc()
        if reply.filed:  # a request newly held for approval, committed with its batch
            self.webhooks.emit("request.pending", tenant=reply.tenant, actor="est", data={
                "request": {"id": reply.request_id, "subject": reply.subject,
                            "key_id": reply.key_id}})

    async def _serve_api(self, *, task_status: trio.TaskStatus[list[trio.SocketListener]]
                         = trio.TASK_STATUS_IGNORED) -> None:
        from gateway.api.server import api_context, serve_api
        from gateway.console import console_routes

        api = api_context(self.authority, self.issuance, self.est_limiter, self.store_limiter,
                          self.webhooks.emit)
        settings = self.started.api
        pages, not_found = console_routes(api, settings, self.api_metrics) if settings.console \
            else ([], None)
        await serve_api(api, settings, self.api_metrics,
                        lambda: (self.loaded.chain, self.loaded.key, self.loaded.config.tls.ciphers),
                        pages=pages, not_found=not_found,
                        sockets=self.sockets.get("api"), shutdown_trigger=self._stop.wait,
                        task_status=task_status)

    async def _in_store(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """Run a store call in a worker thread, one at a time (one SQLite connection)."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self.store_limiter)

    async def refresh_trust(self) -> None:
        started = trio.current_time()
        self.trust_stale = True  # until this succeeds: the watcher tries again
        view = await self._in_store(read_trust_view, self.authority, _now())
        self.trust_stale = False
        read = trio.current_time()
        loaded = self.loaded
        self.state = build_trust_state(loaded.config, view, loaded.organisation, loaded.chain,
                                       loaded.key)
        built = trio.current_time()
        self.metrics.trust_generation.set(view.generation)
        evicted = self.registry.reevaluate(self.state.tenants, _now())
        _log_evictions(evicted)
        log.info("trust_refreshed", generation=view.generation, evicted=len(evicted),
                 read_ms=round((read - started) * 1000, 1), build_ms=round((built - read) * 1000, 1),
                 evaluate_ms=round((trio.current_time() - built) * 1000, 1))

    async def watch_store(self) -> None:
        last_rebuild = trio.current_time()
        while True:
            await self.store_watch.next_change()
            try:
                generation = await self._in_store(self.authority.generation)
                due = trio.current_time() - last_rebuild >= REBUILD_INTERVAL_S
                if generation != self.current().generation or due or self.trust_stale:
                    await self.refresh_trust()
                    last_rebuild = trio.current_time()
            except StoreError as exc:  # keep enforcing the last known state
                self.store_watch.read_failed(exc.message)
                continue
            self.store_watch.read_ok()

    async def reload(self) -> ReloadResult:
        """Read the config files again and swap the new state in whole. On any error the running
        state stays, every error is logged and the result says why. Sessions whose trust the new
        state removes (a CA, a tenant, a CRL entry) are closed; the others stay."""
        async with self._reload_lock:
            old = self.loaded
            try:
                config, given = await trio.to_thread.run_sync(self.reload_config, old.config.path)
                generation = given if given is not None else old.generation + 1
                restart = restart_needed(self.started, config)
                # Restart-only settings stay as they started (config.reload); the state
                # directory is also where this process's store, pid and status files are.
                config = attrs.evolve(config, state_dir=self.started.state_dir)
                loaded = await trio.to_thread.run_sync(load_all, config, self.issuance, generation,
                                                       self.est_limiter)
                missing = await self._in_store(self.authority.checked_key_profiles, config)
                if missing:  # a key's enrollments would all be refused: keep the running config
                    raise ConfigError(missing)
            except ValueError as exc:  # ConfigError, with every problem's file and key
                problems = getattr(exc, "problems", None)
                errors = tuple(str(p) for p in problems) if problems else (str(exc),)
                for error in errors:
                    log.error("reload_refused", error=error)
                self.last_reload = self._record(
                    ReloadResult(old.generation, False, _now().isoformat(), errors))
                self._write_reload_status()
                return self.last_reload
            for key in restart:
                log.warning("reload_needs_restart", key=key,
                            detail="read once at start: the running value stays until a restart")
            self.loaded = loaded
            self.authority.config = config
            try:
                await self.refresh_trust()
            except StoreError as exc:  # the watcher builds the new state once the store answers
                self.store_watch.read_failed(exc.message)
            self.last_reload = self._record(ReloadResult(generation, True, _now().isoformat(),
                                                         restart_needed=restart))
            log.info("reloaded", generation=generation, tenants=len(config.tenants),
                     restart_needed=list(restart))
            self._write_reload_status()
            return self.last_reload

    def _record(self, result: ReloadResult, *, reload: bool = True) -> ReloadResult:
        """Show ``result`` in /metrics. The load at start sets the generation, the last result
        and its time, but is not counted as a reload."""
        self.metrics.config_generation.set(result.generation)
        self.metrics.config_last_reload_success.set(1 if result.ok else 0)
        self.metrics.config_last_reload_timestamp.set(dt.datetime.fromisoformat(result.at).timestamp())
        if reload:
            self.metrics.config_reloads.labels("success" if result.ok else "failure").inc()
        return result

    def _write_reload_status(self) -> None:
        runfiles.write_reload_status(self.config.state_dir, self.status_name,
                                     attrs.asdict(self.last_reload))

    async def ready(self) -> tuple[bool, str]:
        if not self.store_watch.up:
            return False, "store_unreachable"
        try:
            with trio.fail_after(READY_STORE_TIMEOUT_S):
                # Abandoned if it overruns: the probe must answer even while the store hangs.
                await trio.to_thread.run_sync(self.authority.generation,
                                              limiter=self.store_limiter, abandon_on_cancel=True)
        except (StoreError, trio.TooSlowError):
            return False, "store_unreachable"
        if self.state is None or not self.listeners:
            return False, "starting"
        last = self.last_reload
        detail = f"config generation {self.loaded.generation}"
        if not last.ok:
            detail += f"; last reload failed ({len(last.errors)} errors), the previous config runs"
        return True, f"ready; {detail}"

    async def run(self, *, task_status: trio.TaskStatus[dict[str, list[trio.SocketListener]]]
                  = trio.TASK_STATUS_IGNORED) -> None:
        """Run until ``stop()`` (or cancellation); reports the listening sockets by name."""
        cfg = self.config
        try:
            await self.refresh_trust()
            # Started anyway (every other agent is served): those keys' requests are refused
            # with unknown_profile until the profile is back or the key revoked.
            for problem in await self._in_store(self.authority.checked_key_profiles, cfg):
                log.error("key_profile_missing", error=problem.message)
            if self.write_pid:
                runfiles.write_pid(cfg.state_dir)
            async with trio.open_nursery() as connections:
                # Webhooks and the API outlive the accept loops: queued events go out and
                # requests in flight finish while sessions drain.
                connections.start_soon(self.webhooks.run)
                if cfg.api.listen.enabled and (self.worker is None or "api" in self.sockets):
                    self.listeners["api"] = await connections.start(self._serve_api)
                async with trio.open_nursery() as services:
                    if cfg.gateway.listen.enabled:
                        gateway = GatewayListener(self.current, self.registry, self.metrics,
                                                  upstream_ssl=self.upstream_ssl)
                        self.listeners["gateway"] = await services.start(
                            _serve, gateway.serve, cfg.gateway.listen.host, cfg.gateway.listen.port,
                            connections, self.sockets.get("gateway"))
                        services.start_soon(heap_trim.trim_after_handshakes,  # after bursts
                                            lambda: gateway.handshakes_ended)
                    if cfg.enroll.listen.enabled:
                        enroll = EnrollListener(
                            lambda: self.loaded.est, lambda: self.loaded.enroll_context,
                            request_timeout_s=cfg.enroll.request_timeout_s,
                            idle_timeout_s=cfg.enroll.idle_timeout_s,
                            max_body_bytes=cfg.enroll.max_body_bytes,
                            max_connections=cfg.enroll.max_connections,
                            max_handshakes_per_source=cfg.enroll.max_handshakes_per_source,
                            first_byte_timeout_s=cfg.enroll.first_byte_timeout_s,
                            on_reply=self._on_est_reply,
                            on_refusal=self.metrics.enroll_refused,
                            store_limiter=self.store_limiter)
                        self.listeners["enroll"] = await services.start(
                            _serve, enroll.serve, cfg.enroll.listen.host, cfg.enroll.listen.port,
                            connections, self.sockets.get("enroll"))
                    # A worker never binds a port itself: it serves the admin listener only if
                    # the supervisor handed it the sockets (worker 0 alone, see gateway.workers).
                    if cfg.admin.listen.enabled and (self.worker is None or "admin" in self.sockets):
                        admin = AdminListener(self.metrics, self.ready)
                        self.listeners["admin"] = await services.start(
                            _serve, admin.serve, cfg.admin.listen.host, cfg.admin.listen.port,
                            connections, self.sockets.get("admin"))
                    services.start_soon(self.watch_store)
                    services.start_soon(self.store_watch.run)
                    # The starting state is this process's first "reload": `switch reload` waits
                    # for every process whose status file exists, and the supervisor takes the
                    # workers' files as the sign that they serve.
                    self._write_reload_status()
                    task_status.started(self.listeners)
                    await self._stop.wait()
                    stopping = trio.current_time()
                    self._drain.deadline = stopping + cfg.gateway.drain_timeout_s
                    log.info("draining", sessions=len(self.registry),
                             deadline_s=cfg.gateway.drain_timeout_s)
                    services.cancel_scope.cancel()  # stop accepting
                sessions = len(self.registry)
                self.registry.close_all("shutdown")  # all at once: the round trips overlap
                with self._drain:
                    await self.registry.wait_empty()
                left = len(self.registry)
                connections.cancel_scope.cancel()  # the rest (and EST, API) cut at once
                log.info("drained", sessions=sessions, cut=left,
                         drain_s=round(trio.current_time() - stopping, 3))
        finally:
            if self.write_pid:
                with contextlib.suppress(OSError):
                    (cfg.state_dir / runfiles.PID_FILE).unlink()
            self.authority.close()


def _log_evictions(evicted: list[Session]) -> None:
    """One line per tenant and reason for the sessions one change closed."""
    counts = collections.Counter((s.decision.tenant, s.close_reason) for s in evicted)
    for (tenant, reason), sessions in sorted(counts.items(), key=str):
        log.info("sessions_evicted", tenant=tenant, reason=reason, sessions=sessions)


async def _serve(serve: Callable[..., Awaitable[None]], host: str, port: int,
                 handler_nursery: trio.Nursery, sockets: list[socket.socket] | None = None, *,
                 task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
                 ) -> None:
    await serve(host, port, handler_nursery=handler_nursery, sockets=sockets,
                task_status=task_status)


async def run(config: SwitchConfig, *, task_status: trio.TaskStatus[dict[str, list[trio.SocketListener]]]
              = trio.TASK_STATUS_IGNORED) -> None:
    """Run a Switch until cancelled (for tests and embedding)."""
    await Switch(config).run(task_status=task_status)


async def main(config: SwitchConfig, *, worker: int | None = None, generation: int = 1) -> None:
    """Run until SIGTERM or SIGINT, then drain and return; SIGHUP reloads the config. As a
    worker (``worker`` set), ``config`` is the supervisor's snapshot of generation
    ``generation``: accept on the sockets the supervisor passed down, reload from its current
    snapshot (``config.snapshot``), and stop when the supervisor is gone."""
    sockets = None
    reload_config: ConfigReader = read_from_disk
    if worker is not None:
        from config import snapshot
        from gateway.workers import WORKER_FDS_ENV, decode_fds, watch_parent

        sockets = decode_fds(os.environ.get(WORKER_FDS_ENV, ""))
        structlog.contextvars.bind_contextvars(worker=worker)
        reload_config = functools.partial(snapshot.load_current, state_dir=config.state_dir)
    switch = Switch(config, sockets=sockets, write_pid=worker is None, worker=worker,
                    generation=generation, reload_config=reload_config)
    gc_tuning.tune()  # everything loaded at start out of the collector's way
    with repeats_ignored_once_stopping(lambda: switch.stopping), \
            trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            if worker is not None:
                # A SIGHUP sent before this receiver existed was lost: catch up on the snapshot.
                with contextlib.suppress(ValueError):
                    current = snapshot.read_current(config.state_dir)
                    if (current.generation, current.ok) != (generation, True):
                        nursery.start_soon(switch.reload)

            async def on_signal() -> None:
                stopping = False
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        if not stopping:
                            log.info("reloading", signal="SIGHUP")
                            nursery.start_soon(switch.reload)
                        continue
                    name = signal.Signals(signum).name
                    if not stopping:
                        log.info("stopping", signal=name)
                        if worker is None:
                            sdnotify.notify("STOPPING=1")
                        stopping = True
                        gc_tuning.stop_collecting()  # the process ends after this: gc_tuning
                        switch.stop()
                    elif worker is None:  # a second signal: cut every connection now
                        log.warning("stopping_now", signal=name)
                        switch.stop(now=True)
                    # (a worker gets a group's signal and its supervisor's: gateway.workers)

            nursery.start_soon(on_signal)
            if worker is not None:
                orphaned = trio.Event()
                nursery.start_soon(watch_parent, orphaned, os.getppid())

                async def stop_when_orphaned() -> None:
                    await orphaned.wait()
                    gc_tuning.stop_collecting()
                    switch.stop()

                nursery.start_soon(stop_when_orphaned)

            async def serve(task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED
                            ) -> None:
                await switch.run(task_status=task_status)
                nursery.cancel_scope.cancel()

            await nursery.start(serve)
            if worker is None:  # the supervisor tells systemd once every worker serves
                sdnotify.notify("READY=1")
