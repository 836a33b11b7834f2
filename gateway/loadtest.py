"""``switch loadtest``: thousands of simulated agents against a running Switch, from one command.

Theory of operation. The parent process starts ``processes`` worker processes (``spawn``, so each
is a fresh interpreter on its own core) and gives each an equal share of the agents. Every worker
runs Trio and goes through the phases; the parent keeps them in step with two events and watches
their progress over a queue:

1. **enroll** — each simulated agent makes its own key pair and enrolls over EST with the
   provisioning key, over keep-alive connections (``enroll_concurrency`` requests in flight in
   all); the certificate and key become the agent's TLS client context, nothing is kept on disk.
2. **connect** — once every worker has finished enrolling, the parent releases them together;
   agents open their sessions (TCP, TLS with the client certificate, WebSocket upgrade) at
   ``connect_rate`` per second in all, each worker taking its turn in the schedule.
3. **hold** — every session sends a message every ``message_interval_s`` (with jitter) and waits
   for the upstream's echo; the server's pings are answered by the WebSocket library. Sessions the
   server closes are counted with their close code and are not reopened: a load test reports what
   happened instead of hiding it.
4. **report** — on ``stop`` the sessions close normally (1000) and each worker sends its raw
   samples; the parent summarises them (``loadtest_report``).

When the server runs on this machine (its pid file, or ``server_pids``), the parent reads its
process tree's resident memory before the connect phase and during the hold, and its CPU time
over the connect phase: memory per session and CPU per handshake.

The load generator is bounded like everything else: every network wait has ``timeout_s``, every
phase has ``phase_timeout_s``, and a worker that dies is reported, not waited for.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.synchronize
import os
import queue as queue_module
import random
import secrets
import ssl
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import trio
import trio_websocket

from enroll import pki
from gateway import procstat
from gateway.agent import AgentError, open_session
from gateway.est_client import EstClient, EstClientError, EstServer, make_csr

PROGRESS_INTERVAL_S = 0.25
#: How long after the last session opened the server's memory is read (lets buffers settle).
MEMORY_SETTLE_S = 2.0


@attrs.frozen
class LoadSettings:
    agents: int
    gateway: tuple[str, int]
    enroll: tuple[str, int]
    server_name: str
    key_secret: str = attrs.field(repr=False)
    processes: int = attrs.field(factory=lambda: os.cpu_count() or 1)
    ca_file: Path | None = None
    pin_sha256: str | None = None
    path: str = "/"
    #: New sessions per second, all workers together; 0 opens them as fast as possible.
    connect_rate: float = 200.0
    #: EST requests in flight, all workers together.
    enroll_concurrency: int = 16
    hold_s: float = 10.0
    message_interval_s: float = 5.0
    message_size: int = 64
    timeout_s: float = 30.0
    key_type: str = "ec-p256"
    #: "1.2" or "1.3" to pin the TLS version of the sessions; None lets them negotiate.
    tls_version: str | None = None
    #: Roots of the server's process tree, for memory and CPU figures; empty: not measured.
    server_pids: tuple[int, ...] = ()
    phase_timeout_s: float = 900.0
    #: End the hold early once the server has closed every session (for revocation benches).
    until_all_closed: bool = False

    def public(self) -> dict[str, Any]:
        """The settings for the report (never the provisioning key)."""
        out = attrs.asdict(self, filter=lambda a, _: a.name != "key_secret")
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in out.items()}


# --- one worker process ----------------------------------------------------------------------


@attrs.define
class _Agent:
    index: int
    context: ssl.SSLContext


@attrs.define
class _WorkerState:
    enrolled: int = 0
    enroll_failed: int = 0
    connected: int = 0
    connect_failed: int = 0
    open: int = 0
    messages: int = 0
    samples: dict[str, list[float]] = attrs.field(
        factory=lambda: {"enroll": [], "handshake": [], "session": [], "message_rtt": []})
    failures: Counter[str] = attrs.field(factory=Counter)
    #: Wall-clock times (``time.time()``) at which the server closed a session.
    closed_at: list[float] = attrs.field(factory=list)

    def counts(self) -> tuple[int, int, int, int, int, int]:
        return (self.enrolled, self.enroll_failed, self.connected, self.connect_failed,
                self.open, self.messages)


def classify(exc: BaseException) -> str:
    """A short, stable reason for a failure, for the report's "failures by reason"."""
    if isinstance(exc, EstClientError):
        return f"{exc.status} {exc.reason}" if exc.status else exc.reason
    if isinstance(exc, trio.TooSlowError):
        return "timeout"
    if isinstance(exc, trio_websocket.ConnectionRejected):
        return f"http_{exc.status_code}"
    if isinstance(exc, trio_websocket.ConnectionClosed):
        code = exc.reason.code if exc.reason else None
        return f"closed_{code}"
    if isinstance(exc, ssl.SSLError):
        return f"tls:{(getattr(exc, 'reason', None) or type(exc).__name__).lower()}"
    if isinstance(exc, trio.BrokenResourceError):
        cause = exc.__cause__
        if isinstance(cause, ssl.SSLError):
            return classify(cause)
        return "refused"
    if isinstance(exc, AgentError):
        return "server_pin_mismatch"
    if isinstance(exc, OSError):
        import errno

        return errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    return type(exc).__name__


def _client_context(settings: LoadSettings, cert_pem: bytes, key_pem: bytes, scratch: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if settings.ca_file is not None:
        ctx.load_verify_locations(cafile=str(settings.ca_file))
    else:  # the pin, checked by open_session, authenticates the server
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if settings.tls_version is not None:
        version = ssl.TLSVersion.TLSv1_3 if settings.tls_version == "1.3" else ssl.TLSVersion.TLSv1_2
        ctx.minimum_version = ctx.maximum_version = version
    # The ssl module loads a client certificate only from a file: write it (mode 0600, in memory
    # where /dev/shm exists), load it, delete it.
    fd, name = tempfile.mkstemp(dir=scratch, suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(cert_pem + key_pem)
        ctx.load_cert_chain(name)
    finally:
        os.unlink(name)
    return ctx


async def _enroll_all(settings: LoadSettings, worker: int, share: int, concurrency: int,
                      state: _WorkerState, run_id: str, scratch: Path) -> list[_Agent]:
    host, port = settings.enroll
    server = EstServer(host, port, settings.server_name, settings.ca_file, settings.pin_sha256)
    todo = iter(range(share))
    agents: list[_Agent] = []

    async def slot() -> None:
        client = EstClient(server, timeout_s=settings.timeout_s)
        try:
            for index in todo:
                key = pki.generate_key(settings.key_type)
                csr = make_csr(f"lt-{run_id}-{worker}-{index}", key)
                started = time.perf_counter()
                try:
                    with trio.fail_after(settings.timeout_s):
                        cert = await client.simpleenroll(csr, settings.key_secret)
                except (EstClientError, OSError, trio.TooSlowError, trio.BrokenResourceError,
                        ssl.SSLError) as exc:
                    state.enroll_failed += 1
                    state.failures[f"enroll: {classify(exc)}"] += 1
                    await client.aclose()
                    client = EstClient(server, timeout_s=settings.timeout_s)
                    continue
                state.samples["enroll"].append(time.perf_counter() - started)
                state.enrolled += 1
                agents.append(_Agent(index, _client_context(
                    settings, pki.cert_pem(cert), pki.key_pem(key), scratch)))
        finally:
            await client.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(max(1, min(concurrency, share))):
            nursery.start_soon(slot)
    return agents


async def _session(settings: LoadSettings, agent: _Agent, state: _WorkerState,
                   stop: trio.Event, attempted: Callable[[], None]) -> None:
    """One agent's session: open it, exchange messages until ``stop``, close it.
    ``attempted`` is called once the session is open or has failed to open."""
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        try:
            with trio.fail_after(settings.timeout_s):
                ws, tls_s = await open_session(nursery, agent.context, settings.gateway,
                                               settings.server_name, settings.path,
                                               settings.pin_sha256)
        except (OSError, trio.BrokenResourceError, trio.TooSlowError, ssl.SSLError, AgentError,
                trio_websocket.HandshakeError, trio_websocket.ConnectionClosed) as exc:
            state.connect_failed += 1
            state.failures[f"connect: {classify(exc)}"] += 1
            nursery.cancel_scope.cancel()
            attempted()
            return
        state.samples["handshake"].append(tls_s)
        state.samples["session"].append(time.perf_counter() - started)
        state.connected += 1
        state.open += 1
        attempted()
        try:
            await _exchange(settings, ws, state, stop)
        finally:
            state.open -= 1
            nursery.cancel_scope.cancel()


async def _exchange(settings: LoadSettings, ws: trio_websocket.WebSocketConnection,
                    state: _WorkerState, stop: trio.Event) -> None:
    payload = secrets.token_bytes(settings.message_size)
    replied = trio.Event()
    closed_by_server = False

    async def reader() -> None:
        nonlocal replied, closed_by_server
        try:
            while True:
                await ws.get_message()
                replied.set()
        except trio_websocket.ConnectionClosed as exc:
            if not stop.is_set():
                closed_by_server = True
                state.closed_at.append(time.time())
                state.failures[f"session: {classify(exc)}"] += 1
            replied.set()
            sessions.cancel_scope.cancel()

    async def writer() -> None:
        nonlocal replied
        # The first message at a random point of the first interval spreads the load evenly.
        delay = random.uniform(0, settings.message_interval_s)
        while True:
            await trio.sleep(delay)
            delay = settings.message_interval_s * random.uniform(0.9, 1.1)
            replied = trio.Event()
            sent = time.perf_counter()
            try:
                await ws.send_message(payload)
                with trio.fail_after(settings.timeout_s):
                    await replied.wait()
            except trio.TooSlowError:
                state.failures["message: timeout"] += 1
                continue
            except trio_websocket.ConnectionClosed:
                return  # the reader records why
            if ws.closed is None:
                state.samples["message_rtt"].append(time.perf_counter() - sent)
                state.messages += 1

    async def until_stop() -> None:
        await stop.wait()
        sessions.cancel_scope.cancel()

    async with trio.open_nursery() as sessions:
        sessions.start_soon(reader)
        if settings.message_interval_s > 0:
            sessions.start_soon(writer)
        sessions.start_soon(until_stop)
    if not closed_by_server:
        with trio.move_on_after(2):
            await ws.aclose(1000, "load test done")


async def _wait_mp_event(event: multiprocessing.synchronize.Event, deadline_s: float) -> bool:
    with trio.move_on_after(deadline_s):
        while not event.is_set():  # noqa: ASYNC110 - a flag from another process wakes no Trio task
            await trio.sleep(0.05)
        return True
    return False


async def _worker_async(settings: LoadSettings, worker: int, workers: int, share: int,
                        queue: multiprocessing.Queue[Any], go_connect: multiprocessing.synchronize.Event,
                        stop_event: multiprocessing.synchronize.Event, run_id: str) -> None:
    state = _WorkerState()
    stop = trio.Event()
    shm = "/dev/shm"
    with tempfile.TemporaryDirectory(prefix="switch-loadtest-",
                                     dir=shm if os.access(shm, os.W_OK) else None) as tmp:
        async with trio.open_nursery() as nursery:

            async def progress() -> None:
                while True:
                    queue.put(("progress", worker, state.counts()))
                    await trio.sleep(PROGRESS_INTERVAL_S)

            async def watch_stop() -> None:
                await _wait_mp_event(stop_event, float("inf"))
                stop.set()

            nursery.start_soon(progress)
            nursery.start_soon(watch_stop)
            concurrency = max(1, round(settings.enroll_concurrency / workers))
            agents = await _enroll_all(settings, worker, share, concurrency, state, run_id, Path(tmp))
            queue.put(("phase", worker, "enrolled"))
            if await _wait_mp_event(go_connect, settings.phase_timeout_s) and not stop.is_set():
                all_attempted = trio.Event()

                def attempted() -> None:
                    if state.connected + state.connect_failed >= len(agents):
                        all_attempted.set()

                if not agents:
                    all_attempted.set()
                async with trio.open_nursery() as sessions:
                    interval = workers / settings.connect_rate if settings.connect_rate > 0 else 0.0
                    next_at = trio.current_time() + (worker / settings.connect_rate
                                                     if settings.connect_rate > 0 else 0.0)
                    for agent in agents:
                        if stop.is_set():
                            break
                        await trio.sleep_until(next_at)
                        next_at += interval
                        sessions.start_soon(_session, settings, agent, state, stop, attempted)
                    # Every attempt ends (opened or failed) within its timeout.
                    with trio.move_on_after(settings.timeout_s + 1):
                        await all_attempted.wait()
                    queue.put(("progress", worker, state.counts()))
                    queue.put(("phase", worker, "connected"))
                    await stop.wait()
            queue.put(("progress", worker, state.counts()))
            queue.put(("result", worker, {
                "samples": state.samples, "failures": dict(state.failures),
                "closed_at": state.closed_at, "counts": state.counts()}))
            nursery.cancel_scope.cancel()


def _worker_main(settings: LoadSettings, worker: int, workers: int, share: int,
                 queue: multiprocessing.Queue[Any], go_connect: multiprocessing.synchronize.Event,
                 stop_event: multiprocessing.synchronize.Event, run_id: str) -> None:
    try:
        trio.run(_worker_async, settings, worker, workers, share, queue, go_connect, stop_event, run_id)
    except KeyboardInterrupt:
        pass
    except BaseException as exc:
        queue.put(("crashed", worker, f"{type(exc).__name__}: {exc}"))
        raise


# --- the parent ------------------------------------------------------------------------------


@attrs.define
class _Fleet:
    """What the parent knows of its workers."""

    shares: list[int]
    counts: dict[int, tuple[int, int, int, int, int, int]] = attrs.field(factory=dict)
    phases: dict[int, set[str]] = attrs.field(factory=dict)
    results: dict[int, dict[str, Any]] = attrs.field(factory=dict)
    crashed: dict[int, str] = attrs.field(factory=dict)

    def total(self, field: int) -> int:
        return sum(c[field] for c in self.counts.values())

    def all_reached(self, phase: str) -> bool:
        return all(w in self.crashed or phase in self.phases.get(w, set())
                   for w in range(len(self.shares)))

    def all_reported(self) -> bool:
        return all(w in self.crashed or w in self.results for w in range(len(self.shares)))


@attrs.frozen
class HoldContext:
    """Given to ``during_hold``: the number of sessions open when it is called."""

    open_sessions: int


def _shares(agents: int, processes: int) -> list[int]:
    processes = max(1, min(processes, agents))
    return [agents // processes + (1 if i < agents % processes else 0) for i in range(processes)]


def _server_sample(pids: tuple[int, ...]) -> tuple[list[int], int | None, float | None]:
    tree = sorted({p for root in pids for p in procstat.tree(root)})
    return tree, procstat.rss_kib(tree), procstat.cpu_seconds(tree)


def run_loadtest(settings: LoadSettings, *, progress: Callable[[str, _Fleet, float], None] | None = None,
                 during_hold: Callable[[HoldContext], None] | None = None) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Run the load test; returns the report (``loadtest_report.build_report``) and the raw
    latency samples (for the chart). ``during_hold`` runs once, in this process, after the
    server's memory was read in the hold phase (a bench revokes a key there)."""
    from gateway.loadtest_report import build_report

    if settings.agents < 1:
        raise ValueError("at least one agent")
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[Any] = ctx.Queue()
    go_connect, stop_event = ctx.Event(), ctx.Event()
    run_id = secrets.token_hex(4)
    fleet = _Fleet(_shares(settings.agents, settings.processes))
    workers = len(fleet.shares)
    processes = [ctx.Process(target=_worker_main, name=f"switch-loadtest-{i}", daemon=True,
                             args=(settings, i, workers, share, queue, go_connect, stop_event, run_id))
                 for i, share in enumerate(fleet.shares)]
    timeline: list[tuple[float, int]] = []
    phases: dict[str, float] = {}
    server: dict[str, Any] | None = None
    start = time.monotonic()
    for process in processes:
        process.start()

    def pump(until: Callable[[], bool], deadline_s: float, phase: str) -> None:
        deadline = time.monotonic() + deadline_s
        last_point = 0.0
        while not until():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {phase} phase did not end within {deadline_s:.0f}s")
            with contextlib.suppress(queue_module.Empty):
                _handle(fleet, queue.get(timeout=0.1))
            for i, process in enumerate(processes):
                if process.exitcode is not None and i not in fleet.results and i not in fleet.crashed:
                    _drain(fleet, queue)
                    if i not in fleet.results:
                        fleet.crashed[i] = f"exit code {process.exitcode}"
            now = time.monotonic() - start
            if now - last_point >= 0.5:
                timeline.append((now, fleet.total(4)))
                last_point = now
            if progress is not None:
                progress(phase, fleet, now)

    try:
        pump(lambda: fleet.all_reached("enrolled"), settings.phase_timeout_s, "enroll")
        phases["enroll_s"] = time.monotonic() - start
        before = _server_sample(settings.server_pids) if settings.server_pids else None
        connect_start = time.monotonic()
        go_connect.set()
        pump(lambda: fleet.all_reached("connected"), settings.phase_timeout_s, "connect")
        phases["connect_s"] = time.monotonic() - connect_start
        after_connect = _server_sample(settings.server_pids) if settings.server_pids else None
        hold_start = time.monotonic()
        hold_end = hold_start + settings.hold_s
        sample_at = hold_start + min(MEMORY_SETTLE_S, settings.hold_s / 2)
        pump(lambda: time.monotonic() >= sample_at, settings.hold_s + 1, "hold")
        during = _server_sample(settings.server_pids) if settings.server_pids else None
        sessions_at_sample = fleet.total(4)
        if during_hold is not None:
            during_hold(HoldContext(sessions_at_sample))

        def hold_over() -> bool:
            if settings.until_all_closed and fleet.total(4) == 0:
                return True
            return time.monotonic() >= hold_end

        pump(hold_over, max(0.0, hold_end - time.monotonic()) + settings.phase_timeout_s, "hold")
        phases["hold_s"] = time.monotonic() - hold_start
        connected_at_end = fleet.total(4)
        stop_event.set()
        pump(fleet.all_reported, settings.timeout_s + 30, "report")
        if before is not None and during is not None and after_connect is not None:
            server = _server_figures(before, after_connect, during, sessions_at_sample,
                                     fleet.total(2))
    finally:
        stop_event.set()
        go_connect.set()
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
    samples: dict[str, list[float]] = {}
    failures: Counter[str] = Counter()
    closed_at: list[float] = []
    for result in fleet.results.values():
        for kind, values in result["samples"].items():
            samples.setdefault(kind, []).extend(values)
        failures.update(result["failures"])
        closed_at.extend(result["closed_at"])
    for worker, why in fleet.crashed.items():
        failures[f"worker {worker} crashed: {why}"] += 1
    counts = {
        "agents": settings.agents, "enrolled": fleet.total(0), "connected": fleet.total(2),
        "connected_at_end": connected_at_end, "messages": fleet.total(5),
    }
    report = build_report(settings=settings.public(), samples=samples, counts=counts,
                          failures=failures, phases=phases, timeline=timeline, server=server)
    report["closed_by_server_at"] = sorted(closed_at)
    return report, samples


def _server_figures(before: tuple[list[int], int | None, float | None],
                    after_connect: tuple[list[int], int | None, float | None],
                    during: tuple[list[int], int | None, float | None],
                    sessions: int, handshakes: int) -> dict[str, Any]:
    pids, rss_before, cpu_before = before
    _, _, cpu_after = after_connect
    _, rss_hold, _ = during
    per_session = (round((rss_hold - rss_before) / sessions, 2)
                   if rss_hold is not None and rss_before is not None and sessions else None)
    cpu_ms = (round((cpu_after - cpu_before) * 1000 / handshakes, 3)
              if cpu_after is not None and cpu_before is not None and handshakes else None)
    return {"pids": pids, "rss_before_kib": rss_before, "rss_hold_kib": rss_hold,
            "sessions_at_sample": sessions, "memory_per_session_kib": per_session,
            "cpu_ms_per_handshake": cpu_ms}


def _handle(fleet: _Fleet, message: tuple[str, int, Any]) -> None:
    kind, worker, body = message
    if kind == "progress":
        fleet.counts[worker] = tuple(body)
    elif kind == "phase":
        fleet.phases.setdefault(worker, set()).add(body)
    elif kind == "result":
        fleet.results[worker] = body
        fleet.counts[worker] = tuple(body["counts"])
    elif kind == "crashed":
        fleet.crashed[worker] = body


def _drain(fleet: _Fleet, queue: multiprocessing.Queue[Any]) -> None:
    for message in _iter_queue(queue):
        _handle(fleet, message)


def _iter_queue(queue: multiprocessing.Queue[Any]) -> Iterator[Any]:
    while True:
        try:
            yield queue.get(timeout=0.2)
        except queue_module.Empty:
            return
