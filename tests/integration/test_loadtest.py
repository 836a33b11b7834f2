"""`switch loadtest` against a real `switch serve` process: enrollment, connect, hold, report
(text, JSON, PNG), failures by reason, and revocation closing every session while it holds."""

from __future__ import annotations

import json
import random
import re
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from rich.console import Console

from config.load import load_config
from enroll.authority import Authority
from gateway.client.loadtest import HoldContext, _generator_figures, run_loadtest
from gateway.client.loadtest_reasons import classify
from gateway.client.loadtest_report import (
    build_report,
    percentile,
    print_report,
    reconnect_figures,
    summarise,
)
from gateway.client.loadtest_settings import LoadSettings
from gateway.client.loadtest_worker import SimulatedAgent, WorkerState, run_session
from tests.support.agent import PING_FRAME, MisbehavingServer, oversized_frame
from tests.support.est import HOST, make_deployment
from tests.support.gateway import Echo, org_agent, start_gateway

CLI = [sys.executable, "-m", "gateway.cli"]


@attrs.frozen
class LocalSwitch:
    directory: Path
    config_path: Path
    gateway: int
    enroll: int
    secret: str
    pid: int

    @property
    def ca_file(self) -> Path:
        return self.directory / "pki" / "dev-root-ca.pem"

    def settings(self, agents: int, **changes: Any) -> LoadSettings:
        base = LoadSettings(
            agents=agents, processes=2, gateway=("127.0.0.1", self.gateway),
            enroll=("127.0.0.1", self.enroll), server_name=HOST, key_secret=self.secret,
            ca_file=self.ca_file, hold_s=2.0, message_interval_s=0.5, timeout_s=20.0,
            connect_rate=0, server_pids=(self.pid,))
        return attrs.evolve(base, **changes)


def _wait_for(path: Path, pattern: str, count: int = 1, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if len(re.findall(pattern, text)) >= count:
            return text
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} not seen in {path}:\n{path.read_text()}")


@pytest.fixture(scope="module")
def local_switch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSwitch]:
    tmp = tmp_path_factory.mktemp("loadtest")
    directory = tmp / "d"
    config = make_deployment(directory)
    echo_log, serve_log = tmp / "echo.log", tmp / "serve.log"
    echo = subprocess.Popen([*CLI, "echo", "--listen", "127.0.0.1:0"],
                            stdout=echo_log.open("wb"), stderr=subprocess.STDOUT)
    serve = None
    try:
        echo_port = int(re.findall(r"ws://127\.0\.0\.1:(\d+)/", _wait_for(echo_log, r"ws://"))[0])
        config.path.write_text(config.path.read_text().replace(
            "ws://127.0.0.1:8080/", f"ws://127.0.0.1:{echo_port}/"))
        authority = Authority.open(config)
        authority.enable_service("demo", actor="test")
        _, secret = authority.generate_key("demo", "Load", actor="test")
        authority.close()
        serve = subprocess.Popen([*CLI, "-c", str(config.path), "serve", "--workers", "1"],
                                 stdout=serve_log.open("wb"), stderr=subprocess.STDOUT)
        text = _wait_for(serve_log, r"listener=(gateway|enroll)", 2)
        ports = {name: int(port) for port, name in re.findall(
            r"address=127\.0\.0\.1:(\d+) listener=(\w+)", text)}
        yield LocalSwitch(directory, config.path, ports["gateway"], ports["enroll"], secret, serve.pid)
    finally:
        for proc in (serve, echo):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.mark.slow
def test_a_thousand_agents_enroll_connect_hold_and_report(local_switch: LocalSwitch, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(local_switch.secret + "\n")
    report_file, chart = tmp_path / "report.json", tmp_path / "chart.png"
    result = subprocess.run(
        [*CLI, "-c", str(local_switch.config_path), "loadtest", "--agents", "1000",
         "--processes", "2", "--server-name", HOST, "--gateway", f"127.0.0.1:{local_switch.gateway}",
         "--enroll", f"127.0.0.1:{local_switch.enroll}", "--ca-file", str(local_switch.ca_file),
         "--key-file", str(key_file), "--connect-rate", "0", "--enroll-concurrency", "16",
         "--hold", "3s", "--message-interval", "1s", "--server-pid", str(local_switch.pid),
         "--json", str(report_file), "--png", str(chart), "--quiet"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_file.read_text())
    assert (report["agents"], report["enrolled"], report["connected"]) == (1000, 1000, 1000)
    assert report["connected_at_end"] == 1000
    assert report["failures"] == {} and report["failures_total"] == 0
    assert report["rates"]["enrollments_per_s"] > 0 and report["rates"]["handshakes_per_s"] > 0
    for kind in ("enroll", "handshake", "session"):
        assert report["latency"][kind]["count"] == 1000
        summary = report["latency"][kind]
        assert 0 < summary["p50_ms"] <= summary["p90_ms"] <= summary["p99_ms"] <= summary["max_ms"]
    assert report["latency"]["message_rtt"]["count"] >= 1000  # every agent sent at least one
    assert max(n for _, n in report["timeline"]) == 1000
    server = report["server"]
    assert server["pids"] == [local_switch.pid]
    assert server["sessions_at_sample"] == 1000
    assert server["memory_per_session_kib"] > 0 and server["cpu_ms_per_handshake"] > 0
    assert report["sessions_closed"] == {"load test: closed_1000": 1000}
    # The load generator's own CPU, per phase, so a reader can tell whether it set the pace.
    generator = report["generator"]
    assert generator["processes"] == 2
    for phase in ("enroll", "connect", "hold"):
        figures = generator["phases"][phase]
        assert figures["cpu_s"] > 0 and 0 < figures["busiest_process_share"] <= 1.5
    assert set(generator["machine_busy"]) == {"enroll", "connect", "hold"}
    assert "load generator CPU: enroll" in result.stdout
    assert report["phases_s"]["startup_s"] > 0  # not counted in the enroll phase's rate
    assert "secret" not in json.dumps(report["settings"]) and local_switch.secret not in report_file.read_text()
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "enrollments/s" in result.stdout and "message_rtt" in result.stdout
    # Every certificate is on record against the provisioning key.
    listed = subprocess.run([*CLI, "-c", str(local_switch.config_path), "keys", "list", "demo", "--json"],
                            capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(listed.stdout)[0]["certificates_issued"] >= 1000


def test_a_wrong_provisioning_key_is_reported_by_reason_and_fails_the_run(
        local_switch: LocalSwitch, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(local_switch.secret[:-4] + "AAAA\n")
    report_file = tmp_path / "report.json"
    result = subprocess.run(
        [*CLI, "-c", str(local_switch.config_path), "loadtest", "--agents", "3",
         "--processes", "1", "--server-name", HOST, "--gateway", f"127.0.0.1:{local_switch.gateway}",
         "--enroll", f"127.0.0.1:{local_switch.enroll}", "--ca-file", str(local_switch.ca_file),
         "--key-file", str(key_file), "--hold", "0s", "--no-server-stats", "--json", str(report_file)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    # The progress bar (on stderr, its last state when stderr is not a terminal).
    assert re.search(r"enrolled .* 3/3 .*3 failed", result.stderr), result.stderr
    report = json.loads(report_file.read_text())
    assert report["enrolled"] == 0 and report["connected"] == 0
    assert report["failures"] == {"enroll: 401 bad_credentials": 3}, report["failures"]
    assert report["server"] is None


@pytest.mark.slow
def test_revoking_the_key_during_the_hold_closes_every_session_within_a_second(
        local_switch: LocalSwitch, tmp_path: Path) -> None:
    authority = Authority.open(load_config(local_switch.config_path))
    _, secret = authority.generate_key("demo", "Doomed", actor="test")
    authority.close()
    revoked_at: list[float] = []

    def revoke(ctx: HoldContext) -> None:
        assert ctx.open_sessions == 60
        revoked_at.append(time.time())
        subprocess.run([*CLI, "-c", str(local_switch.config_path), "keys", "revoke", "demo", "Doomed",
                        "--reason", "bench", "--confirm", "Doomed"], check=True, timeout=60,
                       capture_output=True)

    settings = local_switch.settings(60, key_secret=secret, hold_s=30.0, until_all_closed=True,
                                     message_interval_s=0)
    report, _ = run_loadtest(settings, during_hold=revoke)
    assert report["connected"] == 60 and report["connected_at_end"] == 0
    closed = report["closed_by_server_at"]
    assert len(closed) == 60
    # The CLI's own start-up is inside the measured time: the bound is generous for that only.
    assert max(closed) - revoked_at[0] < 3.0
    assert report["phases_s"]["hold_s"] < 10
    assert set(report["failures"]) == {"session: closed_1008"}, report["failures"]


def test_percentiles_are_nearest_rank_and_observed() -> None:
    samples = sorted([0.001 * i for i in range(1, 101)])
    assert percentile(samples, 0.5) == pytest.approx(0.050)
    assert percentile(samples, 0.99) == pytest.approx(0.099)
    assert percentile(samples, 1.0) == pytest.approx(0.100)
    assert percentile([0.2], 0.9) == 0.2
    summary = summarise([0.003, 0.001, 0.002])
    assert summary == {"count": 3, "p50_ms": 2.0, "p90_ms": 3.0, "p99_ms": 3.0, "max_ms": 3.0}
    assert summarise([]) is None
    with pytest.raises(ValueError):
        percentile([], 0.5)


def _fleet(agents: int, processes: int, **changes: Any) -> LoadSettings:
    return LoadSettings(agents=agents, processes=processes, gateway=("127.0.0.1", 1),
                        enroll=("127.0.0.1", 2), server_name=HOST, key_secret="main-secret",
                        **changes)


def test_agents_are_shared_evenly_and_never_to_an_idle_process() -> None:
    assert _fleet(1000, 2).shares() == [500, 500]
    assert _fleet(7, 3).shares() == [3, 2, 2]
    assert _fleet(2, 8).shares() == [1, 1]


def test_key_groups_take_their_share_of_agents_spread_over_every_worker() -> None:
    settings = _fleet(10, 3, key_groups=(("revoked", "other-secret", 4),))
    groups = [settings.group_of(w, i) for w, share in enumerate(settings.shares())
              for i in range(share)]
    assert sorted(groups).count(("revoked", "other-secret")) == 4
    assert groups.count(("main", "main-secret")) == 6
    # Round robin over the workers: each of the three holds some of the group.
    assert {w for w, share in enumerate(settings.shares()) for i in range(share)
            if settings.group_of(w, i)[0] == "revoked"} == {0, 1, 2}
    public = settings.public()
    assert public["key_groups"] == [["revoked", 4]] and "other-secret" not in json.dumps(public)


def test_failures_have_short_stable_reasons() -> None:
    from gateway.client.est_client import EstClientError

    assert classify(EstClientError(429, "too_many_failures", 30)) == "429 too_many_failures"
    assert classify(trio.TooSlowError()) == "timeout"
    assert classify(ConnectionRefusedError(111, "refused")) == "ECONNREFUSED"
    broken = trio.BrokenResourceError("x")
    broken.__cause__ = ssl.SSLError(1, "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca")
    assert classify(broken).startswith("tls:")
    reset = trio.BrokenResourceError("x")
    reset.__cause__ = ConnectionResetError(104, "reset")
    assert classify(reset) == "ECONNRESET"
    assert classify(trio.BrokenResourceError("x")) == "refused"
    # trio.open_tcp_stream's "all attempts failed" keeps the reasons in a group.
    group = OSError("all attempts to connect to 127.0.0.1:1 failed")
    group.__cause__ = ExceptionGroup("x", [ConnectionRefusedError(111, "refused")])
    assert classify(group) == "ECONNREFUSED"


# --- one session: nothing it meets ends the others ---------------------------------------------


def _one_session_settings(port: int, ca_file: Path, server_name: str) -> LoadSettings:
    return LoadSettings(agents=1, gateway=("127.0.0.1", port), enroll=("127.0.0.1", 1),
                        server_name=server_name, key_secret="unused", ca_file=ca_file,
                        message_interval_s=0.05, timeout_s=10.0)


async def _run_sessions(settings: LoadSettings, context: ssl.SSLContext, n: int) -> WorkerState:
    """``n`` sessions of one worker: open, exchange messages a moment, stop, close."""
    state = WorkerState()
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(run_session, settings, SimulatedAgent(i, context), state, stop, lambda: None)
        while state.connected + state.connect_failed < n:  # noqa: ASYNC110 - polls the sessions
            await trio.sleep(0.01)
        await trio.sleep(0.2)
        stop.set()
    return state


@pytest.mark.parametrize(("after_close", "how"), [
    (PING_FRAME, "load test: closed_1000"),        # trio-websocket #184: crashed the worker
    (oversized_frame(), "load test: protocol_error"),  # another LocalProtocolError in its reader
])
async def test_a_server_that_misbehaves_during_the_close_ends_only_those_sessions(
        tmp_path: Path, after_close: bytes, how: str) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            server = MisbehavingServer(tmp_path, after_close=after_close)
            await server.start(nursery)
            context = server.client_context()
            settings = _one_session_settings(server.port, server.ca_file, "localhost")
            state = await _run_sessions(settings, context, 5)
            assert (state.connected, state.open) == (5, 0)
            assert state.messages >= 5 and dict(state.failures) == {}
            assert dict(state.closes) == {how: 5}
            assert state.pings_while_closing == (5 if after_close == PING_FRAME else 0)
            assert server.client_closes == [1000] * 5
            nursery.cancel_scope.cancel()


async def test_a_stop_during_a_message_send_lets_the_send_finish_and_the_session_close_with_1000(
        tmp_path: Path) -> None:
    # Cancelling the send part way broke the TLS stream: the Close was never sent and the
    # session, dropped, was counted as closed with 1000 (flaky under load in the tests above).
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            server = MisbehavingServer(tmp_path, after_close=b"", echo=False)
            await server.start(nursery)
            context = server.client_context()
            # Far more than the socket buffers hold: the send is still going when stop comes.
            settings = attrs.evolve(_one_session_settings(server.port, server.ca_file, "localhost"),
                                    message_size=32 << 20, message_interval_s=1e-6)
            state, stop = WorkerState(), trio.Event()
            async with trio.open_nursery() as sessions:
                sessions.start_soon(run_session, settings, SimulatedAgent(0, context), state, stop, lambda: None)
                await server.message_started.wait()
                stop.set()
            assert dict(state.closes) == {"load test: closed_1000": 1}
            assert server.client_closes == [1000]
            nursery.cancel_scope.cancel()


async def test_a_close_the_server_never_answers_is_counted_as_dropped(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            server = MisbehavingServer(tmp_path, after_close=b"", reply_to_close=False)
            await server.start(nursery)
            context = server.client_context()
            settings = _one_session_settings(server.port, server.ca_file, "localhost")
            state = await _run_sessions(settings, context, 2)
            assert server.client_closes == [1000, 1000]
            assert dict(state.closes) == {"load test: closed_1006": 2}
            nursery.cancel_scope.cancel()


class _ShortWaits(random.Random):
    """Records each back-off drawn (its interval) and waits a tenth of the longest."""

    def __init__(self) -> None:
        super().__init__(0)
        self.intervals: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.intervals.append((a, b))
        return b / 10


async def _storm(tmp_path: Path, n: int, reconnect: bool, rng: random.Random | None
                 ) -> tuple[WorkerState, MisbehavingServer]:
    """``n`` sessions that the server closes (1012) as soon as they open, as a restart does."""
    async with trio.open_nursery() as nursery:
        server = MisbehavingServer(tmp_path, close_first=n)
        await server.start(nursery)
        context = server.client_context()
        settings = attrs.evolve(_one_session_settings(server.port, server.ca_file, "localhost"),
                                message_interval_s=0, reconnect=reconnect)
        state, stop = WorkerState(), trio.Event()
        async with trio.open_nursery() as sessions:
            for i in range(n):
                sessions.start_soon(run_session, settings, SimulatedAgent(i, context), state,
                                    stop, lambda: None, rng)
            while sum(state.closes.values()) < n or (reconnect and state.open < n):  # noqa: ASYNC110
                await trio.sleep(0.01)
            stop.set()
        nursery.cancel_scope.cancel()
    return state, server


async def test_with_reconnect_the_sessions_a_restart_closed_come_back_after_a_jittered_wait(
        tmp_path: Path) -> None:
    rng = _ShortWaits()
    with trio.fail_after(60):
        state, server = await _storm(tmp_path, 5, reconnect=True, rng=rng)
    assert (state.connected, state.reconnected, state.open) == (5, 5, 0)
    assert state.closes == {"server: closed_1012": 5, "load test: closed_1000": 5}
    assert server.client_closes == [1000] * 5
    # Each first wait after the server's close is drawn from the whole of [0, 1 s]: full
    # jitter, so agents the server dropped together do not come back together.
    assert rng.intervals == [(0, 1.0)] * 5
    assert len(state.samples["reconnect"]) == 5 and len(state.reconnected_at) == 5
    assert dict(state.reconnect_failures) == {}


async def test_without_reconnect_a_session_the_server_closed_stays_closed(tmp_path: Path) -> None:
    rng = _ShortWaits()
    with trio.fail_after(60):
        state, server = await _storm(tmp_path, 3, reconnect=False, rng=rng)
    assert (state.connected, state.reconnected, state.open) == (3, 0, 0)
    assert state.closes == {"server: closed_1012": 3}
    assert server.accepted == 3 and rng.intervals == []


async def test_a_refused_upgrade_is_a_connect_failure_by_reason(tmp_path: Path) -> None:
    # trio-websocket raised the 502 from its reader task into the session's nursery.
    directory = tmp_path / "d"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            with trio.socket.socket() as unused:
                await unused.bind(("127.0.0.1", 0))
                closed_port = unused.getsockname()[1]
            gw = await start_gateway(nursery, directory, echo=Echo(port=closed_port))
            agent = org_agent(directory, "demo-org-ca", "lt", emails=["lt@demo.switch.test"])
            settings = _one_session_settings(gw.ports["gateway"], gw.ca_file, HOST)
            state = await _run_sessions(settings, gw.ssl_context(agent), 3)
            assert (state.connected, state.connect_failed) == (0, 3)
            assert dict(state.failures) == {"connect: http_502": 3}
            nursery.cancel_scope.cancel()


# --- the load generator's own CPU --------------------------------------------------------------


def test_the_generator_reports_its_cpu_and_warns_when_it_was_the_bottleneck() -> None:
    per_worker = [{"enroll": (2.0, 1.96), "connect": (1.0, 0.5), "hold": (3.0, 0.06)},
                  {"enroll": (2.0, 1.80), "connect": (1.0, 0.4), "hold": (3.0, 0.03)}]
    machine = {"enroll": (1000, 10000), "connect": (1400, 10400), "hold": (1600, 10600),
               "end": (1630, 11200)}
    generator = _generator_figures(per_worker, machine, 2, 0.4)
    assert generator["phases"]["enroll"] == {"cpu_s": 3.76, "busiest_process_share": 0.98,
                                             "mean_process_share": 0.94}
    assert generator["phases"]["connect"]["busiest_process_share"] == 0.5
    assert generator["machine_busy"] == {"enroll": 1.0, "connect": 1.0, "hold": 0.05}
    assert generator["saturated"] == ["enroll"]
    report = build_report(settings={}, samples={}, counts={"agents": 2}, failures={},
                          phases={"enroll_s": 2.0}, timeline=[], server=None,
                          closes={"load test: closed_1000": 2}, pings_while_closing=1,
                          generator=generator)
    console = Console(record=True, width=200)
    print_report(report, console)
    text = console.export_text()
    assert "load generator CPU: enroll 98% of a core (busiest of 2), machine 100% busy" in text
    assert "warning: a load generator process was 98% busy in the enroll phase" in text
    assert "sessions closed: 2 (1 server pings during a close left unanswered)" in text
    assert "        2  load test: closed_1000" in text


def test_a_reconnecting_run_reports_sessions_reopened_failed_attempts_and_time_to_come_back() -> None:
    report = build_report(settings={}, samples={}, counts={"agents": 3}, failures={},
                          phases={}, timeline=[], server=None)
    report["reconnects"] = reconnect_figures(3, {"reconnect: ECONNREFUSED": 4,
                                                 "reconnect: timeout": 1}, [0.4, 1.5, 2.5])
    assert report["reconnects"]["time_to_reopen"]["p50_ms"] == 1500.0
    assert list(report["reconnects"]["failed_attempts"]) == ["reconnect: ECONNREFUSED",
                                                             "reconnect: timeout"]
    console = Console(record=True, width=200)
    print_report(report, console)
    text = console.export_text()
    assert "sessions reopened: 3 (time to reopen p50 1.5s, p99 2.5s, max 2.5s)" in text
    assert "        4  reconnect: ECONNREFUSED" in text


def _peers_of(port: int) -> list[str]:
    """The remote IPv4 addresses of the established connections whose local port is ``port``."""
    found = []
    with open("/proc/net/tcp") as lines:
        next(lines)
        for line in lines:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                raw = bytes.fromhex(remote.split(":")[0])[::-1]  # little-endian on x86 and arm
                found.append(".".join(str(b) for b in raw))
    return found


def test_source_addresses_spread_the_agents_over_them(local_switch: LocalSwitch,
                                                      tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(local_switch.secret + "\n")
    base = [*CLI, "loadtest", "--agents", "12", "--processes", "2", "--server-name", HOST,
            "--gateway", f"127.0.0.1:{local_switch.gateway}", "--enroll",
            f"127.0.0.1:{local_switch.enroll}", "--ca-file", str(local_switch.ca_file),
            "--key-file", str(key_file), "--connect-rate", "0", "--message-interval", "0s",
            "--no-server-stats", "--quiet"]
    refused = subprocess.run([*base, "--source-address", "192.0.2.1"], capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "--source-address: source address 192.0.2.1 is not an address of this host" in refused.stderr
    run = subprocess.Popen([*base, "--hold", "30s", "--source-address", "127.0.0.2",
                            "--source-address", "127.0.0.3"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        peers = _peers_of(local_switch.gateway)
        while len(peers) < 12 and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.1)
            peers = _peers_of(local_switch.gateway)
        # The gateway sees the sessions from both addresses, half each (never 127.0.0.1).
        assert sorted(peers) == ["127.0.0.2"] * 6 + ["127.0.0.3"] * 6, \
            run.stdout.read().decode() if run.poll() is not None and run.stdout else peers
    finally:
        run.terminate()
        run.wait(timeout=60)
