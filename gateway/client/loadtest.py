"""``switch loadtest``'s parent process: it runs the fleet of worker processes through the phases
and turns what they report into the report's figures (thousands of simulated agents against a
running Switch, from one command).

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
   happened instead of hiding it. With ``reconnect`` (reconnection storms) they are reopened with
   the reference agent's jittered back-off, and counted again when they are.
4. **report** — on ``stop`` the sessions close normally (1000; how each ended is counted) and
   each worker sends its raw samples and its CPU time per phase; the parent summarises them
   (``loadtest_report``). What a worker does is in ``loadtest_worker``: one session's trouble
   is counted there, never a crash of the worker and the sessions it holds.

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
import os
import queue as queue_module
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import attrs

from gateway.client import procstat
from gateway.client.loadtest_report import build_report, reconnect_figures
from gateway.client.loadtest_settings import LoadSettings, check_source_addresses
from gateway.client.loadtest_worker import worker_main

#: What the command line and the bench import from here.
__all__ = ["HoldContext", "LoadSettings", "run_loadtest"]

#: How long after the last session opened the server's memory is read (lets buffers settle).
MEMORY_SETTLE_S = 2.0
#: A load generator process busier than this share of one core during a phase was (close to)
#: the bottleneck of that phase.
GENERATOR_SATURATED = 0.9


@attrs.define
class _Fleet:
    """What the parent knows of its workers."""

    shares: list[int]
    counts: dict[int, tuple[int, ...]] = attrs.field(factory=dict)
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
    """Given to ``during_hold``: the number of sessions open when it is called, and the load
    generator's worker processes (to count their CPU: a bench that times the agents must know
    whether the generator kept up)."""

    open_sessions: int
    generator_pids: tuple[int, ...] = ()


def _server_sample(pids: tuple[int, ...]) -> tuple[list[int], int | None, float | None]:
    tree = sorted({p for root in pids for p in procstat.tree(root)})
    return tree, procstat.rss_kib(tree), procstat.cpu_seconds(tree)


def run_loadtest(settings: LoadSettings, *, progress: Callable[[str, _Fleet, float], None] | None = None,
                 during_hold: Callable[[HoldContext], None] | None = None) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Run the load test; returns the report (``loadtest_report.build_report``) and the raw
    latency samples (for the chart). ``during_hold`` runs once, in this process, after the
    server's memory was read in the hold phase (a bench revokes a key there)."""
    if settings.agents < 1:
        raise ValueError("at least one agent")
    check_source_addresses(settings.source_addresses, (settings.gateway, *settings.more_gateways))
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[Any] = ctx.Queue()
    go_connect, stop_event = ctx.Event(), ctx.Event()
    run_id = secrets.token_hex(4)
    fleet = _Fleet(settings.shares())
    workers = len(fleet.shares)
    processes = [ctx.Process(target=worker_main, name=f"switch-loadtest-{i}", daemon=True,
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

    machine: dict[str, tuple[float, float] | None] = {}
    try:
        # Start-up (a fresh interpreter per worker) is not part of the enroll phase's rate.
        pump(lambda: any("enrolling" in p for p in fleet.phases.values()) or fleet.all_reached("enrolled"),
             settings.phase_timeout_s, "startup")
        phases["startup_s"] = time.monotonic() - start
        machine["enroll"] = procstat.machine_cpu()
        pump(lambda: fleet.all_reached("enrolled"), settings.phase_timeout_s, "enroll")
        phases["enroll_s"] = time.monotonic() - start - phases["startup_s"]
        before = _server_sample(settings.server_pids) if settings.server_pids else None
        connect_start = time.monotonic()
        machine["connect"] = procstat.machine_cpu()
        go_connect.set()
        pump(lambda: fleet.all_reached("connected"), settings.phase_timeout_s, "connect")
        phases["connect_s"] = time.monotonic() - connect_start
        after_connect = _server_sample(settings.server_pids) if settings.server_pids else None
        machine["hold"] = procstat.machine_cpu()
        hold_start = time.monotonic()
        hold_end = hold_start + settings.hold_s
        sample_at = hold_start + min(MEMORY_SETTLE_S, settings.hold_s / 2)
        pump(lambda: time.monotonic() >= sample_at, settings.hold_s + 1, "hold")
        during = _server_sample(settings.server_pids) if settings.server_pids else None
        sessions_at_sample = fleet.total(4)
        if during_hold is not None:
            during_hold(HoldContext(sessions_at_sample,
                                    tuple(p.pid for p in processes if p.pid is not None)))
            _catch_up(fleet, queue)  # what the workers said meanwhile: the counts are current

        def hold_over() -> bool:
            if settings.until_all_closed and fleet.total(4) == 0:
                return True
            return time.monotonic() >= hold_end

        pump(hold_over, max(0.0, hold_end - time.monotonic()) + settings.phase_timeout_s, "hold")
        phases["hold_s"] = time.monotonic() - hold_start
        machine["end"] = procstat.machine_cpu()
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
    reconnect_failures: Counter[str] = Counter()
    reconnected_at: list[float] = []
    groups: dict[str, dict[str, Any]] = {}
    for result in fleet.results.values():
        for kind, values in result["samples"].items():
            samples.setdefault(kind, []).extend(values)
        failures.update(result["failures"])
        closes.update(result["closes"])
        closed_at.extend(result["closed_at"])
        pings_while_closing += result["pings_while_closing"]
        reconnect_failures.update(result["reconnect_failures"])
        reconnected_at.extend(result["reconnected_at"])
        for group, enrolled in result["groups"].items():
            figures = groups.setdefault(group, {"enrolled": 0, "sessions_closed": Counter(),
                                                "closed_by_server_at": []})
            figures["enrolled"] += enrolled
        for group, ends in result["group_closes"].items():
            groups[group]["sessions_closed"].update(ends)
        for group, at in result["group_closed_at"].items():
            groups[group]["closed_by_server_at"].extend(at)
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
    if settings.key_groups:
        report["groups"] = {g: {"enrolled": f["enrolled"],
                                "sessions_closed": dict(sorted(f["sessions_closed"].items())),
                                "closed_by_server_at": sorted(f["closed_by_server_at"])}
                            for g, f in sorted(groups.items())}
    if settings.reconnect:
        report["reconnects"] = reconnect_figures(fleet.total(6), reconnect_failures,
                                                 samples.get("reconnect", []))
        report["reconnected_at"] = sorted(reconnected_at)
    return report, samples


def _generator_figures(per_worker: Sequence[Mapping[str, tuple[float, float]]],
                       machine: Mapping[str, tuple[float, float] | None], processes: int,
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


def _catch_up(fleet: _Fleet, queue: multiprocessing.Queue[Any]) -> None:
    """Handle every message already queued, without waiting for more."""
    while True:
        try:
            _handle(fleet, queue.get_nowait())
        except queue_module.Empty:
            return


def _drain(fleet: _Fleet, queue: multiprocessing.Queue[Any]) -> None:
    for message in _iter_queue(queue):
        _handle(fleet, message)


def _iter_queue(queue: multiprocessing.Queue[Any]) -> Iterator[Any]:
    while True:
        try:
            yield queue.get(timeout=0.2)
        except queue_module.Empty:
            return
