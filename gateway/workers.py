"""``switch serve --workers N``: a supervisor and N worker processes sharing the listening sockets.

Theory of operation: the supervisor opens the listening sockets once (so port 0 resolves once and
a restarted worker accepts on the same sockets), then starts N workers (``switch serve --worker
I``), each inheriting the sockets' file descriptors (named in ``SWITCH_WORKER_FDS``) and running a
whole Switch: its own event loop, its own store connection and store watcher. A key revoked
through any worker, or the CLI, is in the store, and every worker's watcher enforces it within a
second. The kernel spreads new connections over the workers accepting on a shared socket. The
admin listener and the admin API run in worker 0 only (operators' traffic is light, and the
API's webhooks for operators' actions are then sent by that one process); its /metrics shows
every worker's, written by each to ``STATE_DIR/metrics`` (``gateway.metrics``: the supervisor
empties it at start and forgets a dead worker's gauges). Once every worker serves, the supervisor
tells systemd (``READY=1``, ``gateway.sdnotify``).

The supervisor owns the configuration in force (``config.snapshot``): it snapshots the config
files at start and on each SIGHUP, and its workers run the snapshot, never the files on disk. On
SIGHUP it takes a new snapshot (or records why the files do not load) and then forwards the signal;
each worker reloads from the snapshot, so a reload applies to all of them or to none. SIGTERM and
SIGINT (stop: every session closed with 1001 at once, within ``drain_timeout``) are forwarded as
they are; a worker still running ``STOP_GRACE_S`` after its drain deadline is killed, and a second
SIGTERM or SIGINT kills the workers at once. Workers ignore a repeated stop signal (they get two
when a signal goes to the whole process group and the supervisor forwards it too), so the second
one's meaning is the supervisor's alone.

A worker that exits while the supervisor is not stopping is logged and started again on the
last good snapshot, so it serves what its siblings serve even if the files were edited since or
no longer load. Before each restart the snapshot is loaded once more; should that fail (the
snapshot was damaged), the worker is not started: ``worker_restart_config_invalid`` is logged
with every problem and the supervisor tries again later (the next SIGHUP with a good config makes
a new snapshot). Restarts wait a delay that doubles up to 30 s while the worker keeps failing
quickly. A worker whose supervisor disappears (even by SIGKILL) notices within a second and stops,
so none is left orphaned.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import structlog
import trio

from config import snapshot
from config.errors import ConfigError, Problem
from config.model import SwitchConfig
from gateway import metrics, sdnotify
from gateway.listening import format_address, open_listening_sockets
from gateway.runfiles import RELOAD_STATUS_GLOB, reload_status_name, write_pid
from gateway.stopsignals import repeats_ignored_once_stopping

log = structlog.get_logger("switch.supervisor")

WORKER_FDS_ENV = "SWITCH_WORKER_FDS"
#: The snapshot a worker runs and its generation (read by ``switch serve --worker``).
SNAPSHOT_ENV = "SWITCH_CONFIG_SNAPSHOT"
GENERATION_ENV = "SWITCH_CONFIG_GENERATION"
RESTART_DELAY_S = 0.5
MAX_RESTART_DELAY_S = 30.0
#: A worker that ran this long before dying was healthy: restart it at once.
HEALTHY_RUN_S = 60.0
#: After its drain deadline a worker still closes its sockets and its store and exits (about
#: 0.3 s with 5,000 sessions, docs/performance.md); one that overstays this is killed.
STOP_GRACE_S = 5.0


def encode_fds(sockets: dict[str, list[socket.socket]]) -> str:
    return ";".join(f"{name}:{','.join(str(s.fileno()) for s in socks)}"
                    for name, socks in sockets.items() if socks)


def decode_fds(spec: str) -> dict[str, list[socket.socket]]:
    """The sockets a worker inherited, by listener name."""
    out: dict[str, list[socket.socket]] = {}
    for part in filter(None, spec.split(";")):
        name, _, fds = part.partition(":")
        out[name] = [socket.socket(fileno=int(fd)) for fd in fds.split(",") if fd]
    return out


def _key_profile_problems(config: SwitchConfig) -> list[Problem]:
    """Live keys in the store naming a profile ``config`` lacks; none when the store cannot be
    read (each worker's reload looks again, and logs it)."""
    from enroll.authority import stored_key_profile_problems
    from enroll.errors import StoreError

    try:
        return stored_key_profile_problems(config)
    except StoreError:
        return []


async def watch_parent(on_orphaned: trio.Event, parent: int) -> None:
    """Set ``on_orphaned`` when the supervisor that started this worker is gone."""
    while os.getppid() == parent:  # noqa: ASYNC110 - nothing to wait on but polling the parent
        await trio.sleep(1)
    log.warning("supervisor_gone", parent=parent)
    on_orphaned.set()


class Supervisor:
    def __init__(self, config: SwitchConfig, workers: int) -> None:
        self.config = config
        self.workers = workers
        self.sockets: dict[str, list[socket.socket]] = {}
        self.processes: dict[int, trio.Process] = {}
        self.stopping = trio.Event()
        #: The last good snapshot (its directory) and its generation.
        self.snapshot: Path | None = None
        self.generation = 0
        #: Set (and replaced) when a new snapshot is taken: wakes workers waiting for one.
        self.new_snapshot = trio.Event()
        #: Where the workers write their metrics, summed by worker 0's /metrics.
        self.metrics_dir = config.state_dir / metrics.METRICS_DIR

    def take_snapshot(self) -> list[str]:
        """Snapshot the config files as the new configuration in force; on failure keep the
        last good one, and record (for the workers' reloads) and return the problems."""
        state_dir = self.config.state_dir
        try:
            config, directory = snapshot.take_snapshot(self.config.path, state_dir,
                                                       self.generation + 1)
            if self.snapshot is not None:  # a reload: the workers would refuse it, and a
                missing = _key_profile_problems(config)  # worker restarted later must not run it
                if missing:
                    shutil.rmtree(directory, ignore_errors=True)
                    raise ConfigError(missing)
        except ConfigError as exc:
            if self.snapshot is None:
                raise
            snapshot.write_current(state_dir, snapshot.Current(
                self.generation, self.snapshot.name, False, tuple(exc.problems)))
            errors = [str(p) for p in exc.problems]
            log.error("snapshot_refused", generation=self.generation, errors=errors,
                      detail="the workers keep the running config")
            return errors
        if self.snapshot is None:  # at start: run on exactly what the workers will run
            self.config = config
        self.snapshot, self.generation = directory, self.generation + 1
        snapshot.write_current(state_dir, snapshot.Current(self.generation, directory.name, True))
        log.info("snapshot_taken", generation=self.generation, snapshot=str(directory))
        return []

    async def check_snapshot(self, index: int) -> bool:
        """Whether the snapshot a worker is about to run still loads; logs why not."""
        assert self.snapshot is not None
        try:
            await trio.to_thread.run_sync(snapshot.load_snapshot, self.config.path, self.snapshot)
        except ConfigError as exc:
            log.error("worker_restart_config_invalid", worker=index, snapshot=str(self.snapshot),
                      errors=[str(p) for p in exc.problems])
            return False
        return True

    def open_sockets(self) -> None:
        for name in ("gateway", "enroll", "admin", "api"):
            listen = getattr(self.config, name).listen
            if listen.enabled:
                self.sockets[name] = open_listening_sockets(name, listen.host, listen.port)
                for sock in self.sockets[name]:
                    log.info("listening", listener=name, address=format_address(sock.getsockname()))

    def _worker_sockets(self, index: int) -> dict[str, list[socket.socket]]:
        return {name: socks for name, socks in self.sockets.items()
                if name not in ("admin", "api") or index == 0}

    async def run_worker(self, index: int) -> None:
        delay = RESTART_DELAY_S
        own = self._worker_sockets(index)
        fds = [s.fileno() for socks in own.values() for s in socks]
        restarting = False
        while not self.stopping.is_set():
            if restarting and not await self.check_snapshot(index):
                log.error("worker_not_restarted", worker=index, retry_in_s=delay,
                          detail="retrying, or at once when a SIGHUP makes a new snapshot")
                with trio.move_on_after(delay):
                    await self.new_snapshot.wait()
                delay = min(delay * 2, MAX_RESTART_DELAY_S)
                continue
            restarting = True
            env = {**sdnotify.without_notify_socket(os.environ), WORKER_FDS_ENV: encode_fds(own),
                   SNAPSHOT_ENV: str(self.snapshot), GENERATION_ENV: str(self.generation),
                   metrics.MULTIPROC_DIR_ENV: str(self.metrics_dir)}
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "gateway.cli", "-c", str(self.config.path), "serve",
                 "--worker", str(index)], pass_fds=fds, env=env)
            self.processes[index] = proc
            started = trio.current_time()
            log.info("worker_started", worker=index, pid=proc.pid)
            code = await proc.wait()
            self.processes.pop(index, None)
            metrics.worker_exited(proc.pid, self.metrics_dir)
            if self.stopping.is_set():
                log.info("worker_stopped", worker=index, pid=proc.pid, exit_code=code)
                return
            log.error("worker_exited", worker=index, pid=proc.pid, exit_code=code,
                      restart_in_s=delay)
            if trio.current_time() - started >= HEALTHY_RUN_S:
                delay = RESTART_DELAY_S
            with trio.move_on_after(delay):
                await self.stopping.wait()
            delay = min(delay * 2, MAX_RESTART_DELAY_S)

    async def announce_ready(self) -> None:
        """Tell systemd (``READY=1``) once every worker serves: each writes its reload status
        file when its listeners are up (the files of an earlier run were removed at start)."""
        names = [reload_status_name(i) for i in range(self.workers)]
        while not all((self.config.state_dir / n).exists() for n in names):
            with trio.move_on_after(0.1):  # a file another process writes wakes no Trio task
                await self.stopping.wait()
            if self.stopping.is_set():
                return
        log.info("serving", workers=self.workers)
        sdnotify.notify("READY=1")

    def signal_all(self, signum: int) -> None:
        for proc in list(self.processes.values()):
            if proc.returncode is None:
                proc.send_signal(signum)

    def kill_all(self, why: str) -> None:
        for index, proc in list(self.processes.items()):
            if proc.returncode is None:
                log.warning("worker_killed", worker=index, pid=proc.pid, reason=why)
                proc.kill()

    async def take_signals(self, signals: AsyncIterator[int], workers: trio.CancelScope) -> None:
        """SIGHUP: a new snapshot, then every worker reloads. The first SIGTERM or SIGINT is
        forwarded (every worker drains and stops) and bounds the workers' nursery by the drain
        deadline plus ``STOP_GRACE_S``; a second one kills them now."""
        settings = self.config.gateway
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                if self.stopping.is_set():
                    continue
                # The workers reload from a new snapshot, taken first.
                if not await trio.to_thread.run_sync(self.take_snapshot):
                    self.new_snapshot.set()
                    self.new_snapshot = trio.Event()
                log.info("forwarding", signal=name, workers=len(self.processes))
                self.signal_all(signum)
            elif not self.stopping.is_set():
                log.info("forwarding", signal=name, workers=len(self.processes))
                self.signal_all(signum)
                sdnotify.notify("STOPPING=1")
                self.stopping.set()
                self.new_snapshot.set()
                workers.deadline = trio.current_time() + settings.drain_timeout_s + STOP_GRACE_S
            else:
                log.warning("stopping_now", signal=name)
                self.kill_all("second_signal")

    async def run(self) -> int:
        """Raises ``ConfigError`` when the configuration does not load (into a snapshot)."""
        self.take_snapshot()
        try:
            self.open_sockets()
        except BaseException:  # a port in use: leave no copy of the config's private keys
            snapshot.remove_all(self.config.state_dir)
            raise
        # Reload results of an earlier run (perhaps with more workers) would make `switch reload`
        # wait for processes that no longer exist.
        for stale in self.config.state_dir.glob(RELOAD_STATUS_GLOB):
            with contextlib.suppress(OSError):
                stale.unlink()
        self.metrics_dir = metrics.prepare_multiprocess_dir(self.config.state_dir)
        pid_file = write_pid(self.config.state_dir)
        try:
            with repeats_ignored_once_stopping(self.stopping.is_set), \
                    trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
                async with trio.open_nursery() as nursery:
                    # Until a stop, then until every worker has exited (or was killed at the
                    # deadline ``take_signals`` sets).
                    async with trio.open_nursery() as workers:
                        for index in range(self.workers):
                            workers.start_soon(self.run_worker, index)
                        workers.start_soon(self.announce_ready)
                        nursery.start_soon(self.take_signals, signals, workers.cancel_scope)
                    nursery.cancel_scope.cancel()
        finally:
            # None is left when every worker stopped in time.
            self.kill_all("stop_deadline" if self.stopping.is_set() else "supervisor_exiting")
            with contextlib.suppress(OSError):
                pid_file.unlink()
            snapshot.remove_all(self.config.state_dir)  # copies of private keys: do not leave them
            for socks in self.sockets.values():
                for sock in socks:
                    sock.close()
        return 0
