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
4. **report** — on ``stop`` the sessions close normally (1000; how each ended is counted) and
   each worker sends its raw samples and its CPU time per phase; the parent summarises them
   (``loadtest_report``). Sessions are opened by ``gateway.client.session.open_session``, whose reader
   task never raises into a worker's nursery: one session's trouble is counted, never a crash
   of the worker and the sessions it holds.

The load generator measures itself too: each worker's CPU time over each phase's wall time (its
share of one core) and the machine's busy share, so that a report says whether the generator,
not the server, set the pace.

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
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio
import trio_websocket

from gateway.client import pki, procstat
from gateway.client.agent_settings import ServerNotTrusted
from gateway.client.est_client import EstClient, EstClientError, EstServer, make_csr
from gateway.client.session import SESSION_OPEN_ERRORS, AgentConnection, open_session

PROGRESS_INTERVAL_S = 0.25
#: How long after the last session opened the server's memory is read (lets buffers settle).
MEMORY_SETTLE_S = 2.0
#: A load generator process busier than this share of one core during a phase was (close to)
#: the bottleneck of that phase.
GENERATOR_SATURATED = 0.9


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
    #: How each session that opened ended, by who ended it and how (``load test: closed_1000``,
    #: ``server: closed_1008``, ``load test: protocol_error``, ...).
    closes: Counter[str] = attrs.field(factory=Counter)
    #: Server Pings that arrived after a session's Close and were left unanswered.
    pings_while_closing: int = 0
    #: This process's CPU use per phase: phase -> (wall seconds, CPU seconds).
    cpu: dict[str, tuple[float, float]] = attrs.field(factory=dict)

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
    if isinstance(exc, ServerNotTrusted):
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
    ``attempted`` is called once the session is open or has failed to open. Nothing a session
    meets ends other sessions: every failure is counted by reason (``open_session`` keeps
    trio-websocket's reader task from raising into this nursery)."""
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        try:
            with trio.fail_after(settings.timeout_s):
                ws, tls_s = await open_session(nursery, agent.context, settings.gateway,
                                               settings.server_name, settings.path,
                                               settings.pin_sha256)
        except SESSION_OPEN_ERRORS as exc:
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
            state.pings_while_closing += ws.pings_while_closing
            nursery.cancel_scope.cancel()


async def _exchange(settings: LoadSettings, ws: AgentConnection, state: _WorkerState,
                    stop: trio.Event) -> None:
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
                state.closes[f"server: {ws.end_reason()}"] += 1
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
            deadline = trio.current_time() + settings.timeout_s
            try:
                # The send is shielded from ``stop`` and from the reader ending the exchange: a
                # send cut short leaves the TLS stream broken (trio's SSLStream cannot resume a
                # write), so the session could no longer send its Close and would just drop.
                # It keeps its own deadline.
                with trio.fail_at(deadline, shield=True):
                    await ws.send_message(payload)
                with trio.fail_at(deadline):
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
        # Bounded by timeout_s like every network wait. Every session closes at once, so this
        # bounds the whole wave of closes, not one: with a fixed 2 s, a busy machine counted
        # up to 725 of 1,000 as close_timeout (they took up to ~3 s there, all answered).
        how = "close_timeout"
        with trio.move_on_after(settings.timeout_s):
            await ws.aclose(1000, "load test done")
            how = ws.end_reason()
        state.closes[f"load test: {how}"] += 1


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

            marks: dict[str, tuple[float, float]] = {}

            def mark(phase: str, ending: str | None = None) -> None:
                """Note the wall and CPU clocks as ``phase`` begins (and ``ending`` ends)."""
                now = (time.monotonic(), time.process_time())
                if ending is not None and ending in marks:
                    wall, cpu = marks[ending]
                    state.cpu[ending] = (now[0] - wall, now[1] - cpu)
                marks[phase] = now

            nursery.start_soon(progress)
            nursery.start_soon(watch_stop)
            concurrency = max(1, round(settings.enroll_concurrency / workers))
            queue.put(("phase", worker, "enrolling"))
            mark("enroll")
            agents = await _enroll_all(settings, worker, share, concurrency, state, run_id, Path(tmp))
            mark("wait", ending="enroll")
            queue.put(("phase", worker, "enrolled"))
            if await _wait_mp_event(go_connect, settings.phase_timeout_s) and not stop.is_set():
                mark("connect")
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
                    mark("hold", ending="connect")
                    queue.put(("progress", worker, state.counts()))
                    queue.put(("phase", worker, "connected"))
                    await stop.wait()
                    mark("close", ending="hold")
                mark("done", ending="close")
            queue.put(("progress", worker, state.counts()))
            queue.put(("result", worker, {
                "samples": state.samples, "failures": dict(state.failures),
                "closed_at": state.closed_at, "counts": state.counts(),
                "closes": dict(state.closes), "pings_while_closing": state.pings_while_closing,
                "cpu": state.cpu}))
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
    from gateway.client.loadtest_report import build_report

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
    parent_cpu = time.process_time()
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

    machine: dict[str, tuple[int, int] | None] = {}
    try:
        # Start-up (a fresh interpreter per worker) is not part of the enroll phase's rate.
        pump(lambda: any("enrolling" in p for p in fleet.phases.values()) or fleet.all_reached("enrolled"),
             settings.phase_timeout_s, "startup")
        phases["startup_s"] = time.monotonic() - start
        machine["enroll"] = _machine_cpu()
        pump(lambda: fleet.all_reached("enrolled"), settings.phase_timeout_s, "enroll")
        phases["enroll_s"] = time.monotonic() - start - phases["startup_s"]
        before = _server_sample(settings.server_pids) if settings.server_pids else None
        connect_start = time.monotonic()
        machine["connect"] = _machine_cpu()
        go_connect.set()
        pump(lambda: fleet.all_reached("connected"), settings.phase_timeout_s, "connect")
        phases["connect_s"] = time.monotonic() - connect_start
        after_connect = _server_sample(settings.server_pids) if settings.server_pids else None
        machine["hold"] = _machine_cpu()
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
        machine["end"] = _machine_cpu()
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
    closes: Counter[str] = Counter()
    closed_at: list[float] = []
    pings_while_closing = 0
    for result in fleet.results.values():
        for kind, values in result["samples"].items():
            samples.setdefault(kind, []).extend(values)
        failures.update(result["failures"])
        closes.update(result["closes"])
        closed_at.extend(result["closed_at"])
        pings_while_closing += result["pings_while_closing"]
    for worker, why in fleet.crashed.items():
        failures[f"worker {worker} crashed: {why}"] += 1
    counts = {
        "agents": settings.agents, "enrolled": fleet.total(0), "connected": fleet.total(2),
        "connected_at_end": connected_at_end, "messages": fleet.total(5),
    }
    generator = _generator_figures([r["cpu"] for r in fleet.results.values()], machine,
                                   workers, time.process_time() - parent_cpu)
    report = build_report(settings=settings.public(), samples=samples, counts=counts,
                          failures=failures, phases=phases, timeline=timeline, server=server,
                          closes=closes, pings_while_closing=pings_while_closing,
                          generator=generator)
    report["closed_by_server_at"] = sorted(closed_at)
    return report, samples


def _machine_cpu() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine from ``/proc/stat``; None off Linux."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user and nice
    return total - idle, total


def _generator_figures(per_worker: Sequence[Mapping[str, tuple[float, float]]],
                       machine: Mapping[str, tuple[int, int] | None], processes: int,
                       parent_cpu_s: float) -> dict[str, Any]:
    """The load generator's own CPU use per phase, so that a reader can tell whether it (and
    not the server) set the pace: each worker process's CPU time over the phase's wall time is
    its share of one core (a process runs on one core at a time). ``machine_busy`` is the whole
    machine's share of all its cores, which includes the server when it runs here."""
    phases: dict[str, dict[str, float]] = {}
    for phase in ("enroll", "connect", "hold"):
        used = [cpu[phase] for cpu in per_worker if phase in cpu]
        shares = [c / w for w, c in used if w > 0]
        if not used or not shares:
            continue
        phases[phase] = {"cpu_s": round(sum(c for _, c in used), 3),
                         "busiest_process_share": round(max(shares), 3),
                         "mean_process_share": round(sum(shares) / len(shares), 3)}
    busy: dict[str, float] = {}
    order = ["enroll", "connect", "hold", "end"]
    for phase, following in zip(order, order[1:], strict=False):
        a, b = machine.get(phase), machine.get(following)
        if a is not None and b is not None and b[1] > a[1]:
            busy[phase] = round((b[0] - a[0]) / (b[1] - a[1]), 3)
    return {
        "processes": processes, "cpus": os.cpu_count(), "parent_cpu_s": round(parent_cpu_s, 3),
        "phases": phases, "machine_busy": busy or None,
        "saturated": [p for p, f in phases.items() if f["busiest_process_share"] >= GENERATOR_SATURATED],
    }


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
