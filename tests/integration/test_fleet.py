"""A small fleet, as ``scripts/bench`` sections (f), (g), (h) run a large one: a few hundred
agents through `switch serve --workers 2` to two `switch echo --reuse-port` processes, all
connected; Switch restarted (SIGTERM, then start) and every agent back through the load test's
reconnect; then one provisioning key revoked, closing exactly that key's sessions in both
workers. One run of the load test holds the three; each test asserts one of them."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

from gateway.client.loadtest import HoldContext, LoadSettings, run_loadtest
from tests.support.est import HOST
from tests.support.hosts import Host, echo_upstream, make_host
from tests.support.processes import connection_holders, worker_pids

pytestmark = pytest.mark.slow

AGENTS = 300
REVOKED = 100
WORKERS = 2
#: Bounds on waits (not on speed): a loaded machine takes a while to reconnect 300 agents.
BACK_TIMEOUT_S = 180.0
#: The stop's own bound is drain_timeout (10 s) + 5 s, after which the supervisor kills; with room.
STOP_BOUND_S = 60.0


@attrs.define
class Fleet:
    report: dict[str, Any]
    open_at_hold: int = 0
    holders: set[int] = attrs.field(factory=set)
    workers: set[int] = attrs.field(factory=set)
    echo_holders: int = 0
    restart_at: float = 0.0
    #: The supervisor's exit status after SIGTERM (None: still running at STOP_BOUND_S) and the
    #: log lines of that stop.
    stop_code: int | None = None
    stop_log: str = ""
    back: bool = False
    revoke_at: float = 0.0
    closed: bool = False


def _sessions(host: Host) -> float | None:
    try:
        url = f"http://127.0.0.1:{host.ports['admin']}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError:
        return None
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("switch_sessions{"))


def _until(host: Host, done: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = _sessions(host)
        if value is not None and done(value):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("fleet")
    with echo_upstream(tmp, processes=2) as echo_port:
        host = make_host(tmp / "host", "fleet", upstream=echo_port)
        try:
            host.start(workers=WORKERS)
            host.cli("service", "enable", "demo")
            main = host.cli("keys", "generate", "demo", "Main", "--json").stdout
            doomed = host.cli("keys", "generate", "demo", "Doomed", "--json").stdout
            secrets = [json.loads(text)["secret"] for text in (main, doomed)]
            result = Fleet({})

            def during_hold(ctx: HoldContext) -> None:
                result.open_at_hold = ctx.open_sessions
                pids = set(worker_pids(host.log.read_text()).values())
                result.workers = pids
                result.holders = connection_holders(host.ports["gateway"], pids)
                result.restart_at = time.time()
                assert host.proc is not None
                logged = len(host.log.read_text())
                host.proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    result.stop_code = host.proc.wait(timeout=STOP_BOUND_S)
                result.stop_log = host.log.read_text()[logged:]
                host.stop()  # kills it, should it still run
                host.start(workers=WORKERS)
                result.back = _until(host, lambda n: n >= AGENTS, BACK_TIMEOUT_S)
                result.revoke_at = time.time()
                host.cli("keys", "revoke", "demo", "Doomed", "--reason", "test",
                         "--confirm", "Doomed")
                result.closed = _until(host, lambda n: n <= AGENTS - REVOKED, 60)
                time.sleep(1)  # would another session close?

            settings = LoadSettings(
                agents=AGENTS, processes=2, gateway=("127.0.0.1", host.ports["gateway"]),
                enroll=("127.0.0.1", host.ports["enroll"]), server_name=HOST,
                key_secret=secrets[0], key_groups=(("revoked", secrets[1], REVOKED),),
                ca_file=host.ca_file, connect_rate=0, connect_concurrency=32, hold_s=0.5,
                message_interval_s=0, timeout_s=30.0, reconnect=True)
            result.report, _ = run_loadtest(settings, during_hold=during_hold)
            yield result
        finally:
            host.stop()


def test_every_agent_of_a_fleet_connects_through_several_workers(fleet: Fleet) -> None:
    report = fleet.report
    assert (report["enrolled"], report["connected"], fleet.open_at_hold) == (AGENTS,) * 3
    assert not [k for k in report["failures"] if not k.startswith("session: ")], report["failures"]
    # Both workers held sessions (the kernel spreads the shared socket's connections).
    assert len(fleet.workers) == WORKERS and fleet.holders == fleet.workers


def test_after_a_restart_every_agent_comes_back_with_its_back_off(fleet: Fleet) -> None:
    report = fleet.report
    assert fleet.back, "not every session came back after the restart"
    closed = report["sessions_closed"]
    # The restart closed every session with 1001 (going away): no failure, each reopened.
    assert closed["server: closed_1001"] == AGENTS
    assert "session: closed_1001" not in report["failures"]
    back = [t for t in report["reconnected_at"] if fleet.restart_at <= t <= fleet.revoke_at]
    assert len(back) == AGENTS
    assert report["reconnects"]["time_to_reopen"]["count"] >= AGENTS


def test_a_stop_closes_every_session_with_going_away_and_every_process_exits_0(
        fleet: Fleet) -> None:
    # Every agent was sent 1001 (test above); the supervisor and both workers exited 0 within the
    # drain deadline's bound, each worker's sessions all closed by it.
    assert fleet.stop_code == 0, fleet.stop_log
    assert fleet.stop_log.count("event=worker_stopped exit_code=0") == WORKERS, fleet.stop_log
    assert "event=worker_killed" not in fleet.stop_log
    drained = re.findall(r"event=drained cut=\d+ drain_s=\S+ sessions=(\d+)", fleet.stop_log)
    assert len(drained) == WORKERS and sum(map(int, drained)) == AGENTS, fleet.stop_log


def test_a_revoked_key_closes_exactly_its_sessions_in_every_worker(fleet: Fleet) -> None:
    assert fleet.closed
    groups = fleet.report["groups"]
    assert (groups["revoked"]["enrolled"], groups["main"]["enrolled"]) == (REVOKED, AGENTS - REVOKED)
    revoked = [t for t in groups["revoked"]["closed_by_server_at"] if t >= fleet.revoke_at]
    others = [t for t in groups["main"]["closed_by_server_at"] if t >= fleet.revoke_at]
    assert (len(revoked), len(others)) == (REVOKED, 0)
    assert groups["revoked"]["sessions_closed"]["server: closed_1008"] == REVOKED
    assert "server: closed_1008" not in groups["main"]["sessions_closed"]
    # The revoked agents were not reopened: their sessions end the run closed, the others open.
    assert fleet.report["connected_at_end"] == AGENTS - REVOKED
