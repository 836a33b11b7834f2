"""One ``switch loadtest`` worker process: its share of the simulated agents enrolls, connects,
holds its sessions and reports its raw samples, counts and CPU time per phase to the parent
(``gateway.client.loadtest``) over a queue.

Every simulated agent makes its own key pair and enrolls over EST (keep-alive connections,
``enroll_concurrency`` in flight across all workers); its certificate and key become its TLS
client context, nothing is kept on disk. Sessions are opened by
``gateway.client.session.open_session``, whose reader task never raises into this process's
nursery: one session's trouble is counted by reason, never a crash of the worker and the sessions
it holds. With ``reconnect`` a session the server ends is opened again with the reference agent's
back-off (``gateway.client.backoff``).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import os
import random
import secrets
import ssl
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio
import trio_websocket

from gateway.client import pki
from gateway.client.backoff import Reconnects
from gateway.client.est_client import EstClient, EstClientError, EstServer, make_csr
from gateway.client.loadtest_reasons import classify
from gateway.client.loadtest_settings import MAIN_GROUP, LoadSettings
from gateway.client.session import SESSION_OPEN_ERRORS, AgentConnection, open_session

PROGRESS_INTERVAL_S = 0.25


@attrs.define
class SimulatedAgent:
    index: int
    context: ssl.SSLContext
    #: The provisioning key's group (``LoadSettings.key_groups``) it enrolled with.
    group: str = MAIN_GROUP
    #: The local address its sessions are opened from (``LoadSettings.source_for``).
    source: str | None = None


@attrs.define
class WorkerState:
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
    #: With ``reconnect``: sessions opened again after the server ended them, the attempts that
    #: did not open (by reason: ``reconnect: ECONNREFUSED``, ...), and the wall-clock times
    #: (``time.time()``) at which sessions were open again.
    reconnected: int = 0
    reconnect_failures: Counter[str] = attrs.field(factory=Counter)
    reconnected_at: list[float] = attrs.field(factory=list)
    #: With ``key_groups``: per group, how its sessions ended and when the server closed them.
    group_closes: dict[str, Counter[str]] = attrs.field(factory=dict)
    group_closed_at: dict[str, list[float]] = attrs.field(factory=dict)

    def counts(self) -> tuple[int, int, int, int, int, int, int]:
        return (self.enrolled, self.enroll_failed, self.connected, self.connect_failed,
                self.open, self.messages, self.reconnected)


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
    with tempfile.NamedTemporaryFile(dir=scratch, suffix=".pem") as f:
        f.write(cert_pem + key_pem)
        f.flush()
        ctx.load_cert_chain(f.name)
    return ctx


async def _enroll_all(settings: LoadSettings, worker: int, share: int, concurrency: int,
                      state: WorkerState, run_id: str, scratch: Path) -> list[SimulatedAgent]:
    host, port = settings.enroll
    server = EstServer(host, port, settings.server_name, settings.ca_file, settings.pin_sha256)
    todo = iter(range(share))
    groups = [settings.group_of(worker, index) for index in range(share)]
    agents: list[SimulatedAgent] = []

    async def slot() -> None:
        async with EstClient(server, timeout_s=settings.timeout_s) as client:
            for index in todo:
                key = pki.generate_key(settings.key_type)
                csr = make_csr(f"lt-{run_id}-{worker}-{index}", key)
                group, secret = groups[index]
                started = time.perf_counter()
                try:
                    with trio.fail_after(settings.timeout_s):
                        cert = await client.simpleenroll(csr, secret)
                except (EstClientError, OSError, trio.TooSlowError, trio.BrokenResourceError,
                        ssl.SSLError) as exc:
                    state.enroll_failed += 1
                    state.failures[f"enroll: {classify(exc)}"] += 1
                    await client.aclose()  # the next request starts on a new connection
                    continue
                state.samples["enroll"].append(time.perf_counter() - started)
                state.enrolled += 1
                agents.append(SimulatedAgent(index, _client_context(
                    settings, pki.cert_pem(cert), pki.key_pem(key), scratch), group,
                    settings.source_for(worker, index)))

    async with trio.open_nursery() as nursery:
        for _ in range(max(1, min(concurrency, share))):
            nursery.start_soon(slot)
    return agents


#: Close codes of a server that is going away or restarting (RFC 6455 7.4.1, IANA's registry):
#: with ``reconnect`` such a close is part of a restart, not a failure, when the session is
#: opened again.
RESTART_CLOSE_CODES = frozenset({1001, 1012})
#: The close code of an eviction (a revoked key or certificate, ...): the agent's credential
#: no longer holds, so it is not reopened (the reference agent would re-enroll).
POLICY_CLOSE = 1008


async def run_session(settings: LoadSettings, agent: SimulatedAgent, state: WorkerState,
                      stop: trio.Event, attempted: Callable[[], None],
                      rng: random.Random | None = None,
                      opening: trio.Semaphore | None = None) -> None:
    """One agent: open its session, exchange messages until ``stop``, close it. ``attempted``
    is called once the first attempt has opened the session or failed to. Nothing a session
    meets ends other sessions: every failure is counted by reason (``open_session`` keeps
    trio-websocket's reader task from raising into this nursery).

    Without ``settings.reconnect`` a session the server ends is not opened again (the report says
    what happened). With it, the agent behaves as the reference agent does: a session that ended
    or could not be opened before ``stop`` is tried again after the back-off of
    ``gateway.client.backoff.Reconnects`` (full jitter, the first wait random too), so a fleet
    the server dropped at once comes back spread out; the time from losing the session to having
    it again is sampled as ``reconnect``. A server close with 1001 or 1012 (going away,
    restarting) is then not a failure; a close with 1008 (evicted: its credential was revoked)
    is, and that session is not reopened. ``opening`` (``connect_concurrency``) bounds the
    attempts this process makes at once, reconnections included: on a machine the server and
    the load generator share, a generator that opened thousands at once would starve its own
    attempts of CPU and see the server time them out (real agents each have a CPU of their
    own); an attempt waiting for a slot waits as a device that is slow to retry would."""
    reconnects = Reconnects(rng)
    held, code = await _attempt(settings, agent, state, stop, attempted)
    down_since = time.perf_counter()
    while settings.reconnect and not stop.is_set() and code != POLICY_CLOSE:
        delay = reconnects.after_failure() if held is None else reconnects.after_session(held)
        with trio.move_on_after(delay):
            await stop.wait()
        if stop.is_set():
            return
        if opening is not None:
            await opening.acquire()  # released by _attempt once the attempt opened or failed
        held, code = await _attempt(settings, agent, state, stop,
                                    opening.release if opening is not None else None, down_since)
        if held is not None:
            down_since = time.perf_counter()


async def _attempt(settings: LoadSettings, agent: SimulatedAgent, state: WorkerState,
                   stop: trio.Event, attempted: Callable[[], None] | None,
                   down_since: float | None = None) -> tuple[float | None, int | None]:
    """Open the session and hold it until ``stop`` or the server ends it; the seconds it was
    open (None when it did not open) and the code the server closed it with (None: it did not).
    ``attempted`` is given for the first attempt (counted as ``connected``/``connect_failed``),
    ``down_since`` for the following ones (``reconnected``, ``reconnect_failures``)."""
    first = down_since is None
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        try:
            with trio.fail_after(settings.timeout_s):
                ws, tls_s = await open_session(nursery, agent.context,
                                               settings.gateway_for(agent.index),
                                               settings.server_name, settings.path,
                                               settings.pin_sha256, agent.source)
        except SESSION_OPEN_ERRORS as exc:
            if first:
                state.connect_failed += 1
                state.failures[f"connect: {classify(exc)}"] += 1
            else:
                state.reconnect_failures[f"reconnect: {classify(exc)}"] += 1
            nursery.cancel_scope.cancel()
            if attempted is not None:
                attempted()
            return None, None
        opened = time.perf_counter()
        if down_since is None:
            state.samples["handshake"].append(tls_s)
            state.samples["session"].append(opened - started)
            state.connected += 1
        else:
            state.samples.setdefault("reconnect", []).append(opened - down_since)
            state.reconnected_at.append(time.time())
            state.reconnected += 1
        state.open += 1
        if attempted is not None:
            attempted()
        code = None
        try:
            code = await _exchange(settings, ws, state, stop, agent.group)
        finally:
            state.open -= 1
            state.pings_while_closing += ws.pings_while_closing
            nursery.cancel_scope.cancel()
        return time.perf_counter() - opened, code


async def _exchange(settings: LoadSettings, ws: AgentConnection, state: WorkerState,
                    stop: trio.Event, group: str = MAIN_GROUP) -> int | None:
    """Messages until ``stop`` or the server ends the session; the code the server closed it
    with (1006 when the connection dropped), or None when this side closed it."""
    payload = secrets.token_bytes(settings.message_size)
    replied = trio.Event()
    closed_by_server: int | None = None

    async def reader() -> None:
        nonlocal replied, closed_by_server
        try:
            while True:
                await ws.get_message()
                replied.set()
        except trio_websocket.ConnectionClosed as exc:
            if not stop.is_set():
                now = time.time()
                closed_by_server = exc.reason.code if exc.reason else 1006
                how = f"server: {ws.end_reason()}"
                state.closed_at.append(now)
                if not (settings.reconnect and closed_by_server in RESTART_CLOSE_CODES):
                    state.failures[f"session: {classify(exc)}"] += 1
                state.closes[how] += 1
                if settings.key_groups:
                    state.group_closes.setdefault(group, Counter())[how] += 1
                    state.group_closed_at.setdefault(group, []).append(now)
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
    if closed_by_server is None:
        # Bounded by timeout_s like every network wait. Every session closes at once, so this
        # bounds the whole wave of closes, not one: with a fixed 2 s, a busy machine counted
        # up to 725 of 1,000 as close_timeout (they took up to ~3 s there, all answered).
        how = "close_timeout"
        with trio.move_on_after(settings.timeout_s):
            await ws.aclose(1000, "load test done")
            how = ws.end_reason()
        state.closes[f"load test: {how}"] += 1
        if settings.key_groups:
            state.group_closes.setdefault(group, Counter())[f"load test: {how}"] += 1
    return closed_by_server


async def _wait_mp_event(event: multiprocessing.synchronize.Event, deadline_s: float) -> bool:
    with trio.move_on_after(deadline_s):
        while not event.is_set():  # noqa: ASYNC110 - a flag from another process wakes no Trio task
            await trio.sleep(0.05)
        return True
    return False


async def _worker_async(settings: LoadSettings, worker: int, workers: int, share: int,
                        queue: multiprocessing.Queue[Any], go_connect: multiprocessing.synchronize.Event,
                        stop_event: multiprocessing.synchronize.Event, run_id: str) -> None:
    state = WorkerState()
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

                # connect_concurrency: this worker's share of the sessions opening at once.
                opening = trio.Semaphore(max(1, -(-settings.connect_concurrency // workers))
                                         if settings.connect_concurrency > 0 else len(agents) or 1)

                def attempted() -> None:
                    opening.release()
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
                        await opening.acquire()
                        sessions.start_soon(run_session, settings, agent, state, stop, attempted,
                                            None, opening if settings.connect_concurrency > 0
                                            else None)
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
                "cpu": state.cpu, "reconnect_failures": dict(state.reconnect_failures),
                "reconnected_at": state.reconnected_at,
                "group_closes": {g: dict(c) for g, c in state.group_closes.items()},
                "group_closed_at": state.group_closed_at,
                "groups": dict(Counter(agent.group for agent in agents))}))
            nursery.cancel_scope.cancel()


def worker_main(settings: LoadSettings, worker: int, workers: int, share: int,
                 queue: multiprocessing.Queue[Any], go_connect: multiprocessing.synchronize.Event,
                 stop_event: multiprocessing.synchronize.Event, run_id: str) -> None:
    try:
        trio.run(_worker_async, settings, worker, workers, share, queue, go_connect, stop_event, run_id)
    except KeyboardInterrupt:
        pass
    except BaseException as exc:
        queue.put(("crashed", worker, f"{type(exc).__name__}: {exc}"))
        raise
