"""`switch serve --workers N`: shared ports, revocation in force in every worker, restarts,
signals reaching all; a restarted worker runs the supervisor's snapshot of the config."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from enroll import pki
from enroll.authority import Authority
from gateway.client.est_client import EstClient, EstServer, make_csr
from tests.support.est import HOST, make_deployment
from tests.support.gateway import Agent, Echo, Gateway, LiveAgent, write_agent
from tests.support.processes import connection_holders, log_ports, worker_pids


async def test_workers_share_the_ports_enforce_revocation_everywhere_and_restart(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    config = make_deployment(directory)
    echo = Echo()
    log = tmp_path / "serve.log"
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            import trio_websocket

            server = await nursery.start(trio_websocket.serve_websocket, echo.handler, "127.0.0.1", 0, None)
            echo.port = server.port
            path = config.path
            path.write_text(path.read_text().replace(
                'upstream = "ws://127.0.0.1:8080/"', f'upstream = "ws://127.0.0.1:{echo.port}/"'))
            authority = Authority.open(config)
            authority.enable_service("demo", actor="t")
            _, secret = authority.generate_key("demo", "Fleet", actor="t")
            authority.close()
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "gateway.cli", "-c", str(path), "serve", "--workers", "2"],
                stdout=log.open("wb"), stderr=subprocess.STDOUT)
            try:
                while len(worker_pids(log.read_text())) < 2 or \
                        log.read_text().count("listener=gateway") < 3:  # noqa: ASYNC110
                    await trio.sleep(0.05)
                ports = log_ports(log.read_text())
                pids = worker_pids(log.read_text())
                key = pki.generate_key()
                async with EstClient(EstServer("127.0.0.1", ports["enroll"], HOST,
                                               ca_file=directory / "pki/dev-root-ca.pem")) as est:
                    cert = await est.simpleenroll(make_csr("laptop-1", key), secret)
                agent = write_agent(tmp_path, "laptop-1", cert, key)
                gw = Gateway(None, config, directory, echo, ports)  # type: ignore[arg-type]
                sessions: list[LiveAgent] = []
                for _ in range(40):  # until both workers hold sessions of this agent
                    sessions.append(await trio.to_thread.run_sync(LiveAgent, gw, agent))
                    if len(connection_holders(ports["gateway"], set(pids.values()))) == 2:
                        break
                assert connection_holders(ports["gateway"], set(pids.values())) == set(pids.values()), \
                    "one worker took all"
                result = await trio.run_process(
                    [sys.executable, "-m", "gateway.cli", "-c", str(path), "keys", "revoke", "demo",
                     "Fleet", "--reason", "leaked", "--confirm", "Fleet"], capture_stdout=True)
                assert result.returncode == 0
                started = time.monotonic()
                for live in sessions:
                    await trio.to_thread.run_sync(live.closed.wait, 5)
                assert time.monotonic() - started < 1.0
                assert all(live.close_code == 1008 for live in sessions)

                os.kill(pids[1], signal.SIGKILL)  # a worker dies: it is restarted, and logged
                while worker_pids(log.read_text()).get(1) == pids[1]:  # noqa: ASYNC110
                    await trio.sleep(0.05)
                assert "worker_exited" in log.read_text()
                new_pid = worker_pids(log.read_text())[1]
                proc.send_signal(signal.SIGTERM)  # reaches every worker; all drain and stop
                with trio.fail_after(30):
                    assert await proc.wait() == 0
                for pid in (pids[0], new_pid):
                    with pytest.raises(ProcessLookupError):
                        os.kill(pid, 0)
                assert not (config.state_dir / "switch.pid").exists()
            finally:
                if proc.returncode is None:
                    proc.kill()
            nursery.cancel_scope.cancel()


def _status(state_dir: Path, worker: int) -> dict[str, object] | None:
    """Worker ``worker``'s last reload result (written at start and after each reload)."""
    try:
        return json.loads((state_dir / f"last-reload-{worker}.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


async def _wait_for(predicate: Callable[[], object], timeout_s: float = 20) -> None:
    with trio.fail_after(timeout_s):
        while not predicate():  # noqa: ASYNC110 - polls child processes' files
            await trio.sleep(0.05)


@pytest.mark.slow
async def test_a_restarted_worker_runs_the_config_its_siblings_run(tmp_path: Path) -> None:
    """An edit that was not reloaded, or a file that no longer loads, does not reach a worker
    the supervisor restarts: it runs the supervisor's last good snapshot. The next SIGHUP
    applies the edit to every worker."""
    directory = tmp_path / "d"
    config = make_deployment(directory)
    state = config.state_dir
    echo = Echo()
    log = tmp_path / "serve.log"

    def started(worker: int) -> float:
        """When worker ``worker`` last wrote its status (at start, after each reload)."""
        with contextlib.suppress(OSError):
            return (state / f"last-reload-{worker}.json").stat().st_mtime
        return 0.0

    async def kill_and_wait_for_restart(pid: int) -> int:
        before = started(1)
        os.kill(pid, signal.SIGKILL)
        await _wait_for(lambda: worker_pids(log.read_text())[1] != pid and started(1) != before)
        return worker_pids(log.read_text())[1]

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            import trio_websocket

            server = await nursery.start(trio_websocket.serve_websocket, echo.handler, "127.0.0.1", 0, None)
            echo.port = server.port
            path = config.path
            good = path.read_text().replace('upstream = "ws://127.0.0.1:8080/"',
                                            f'upstream = "ws://127.0.0.1:{echo.port}/"')
            edited = good.replace('organisation_cas = ["pki/demo-org-ca.pem"]', "organisation_cas = []")
            path.write_text(good)
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "gateway.cli", "-c", str(path), "serve", "--workers", "2"],
                stdout=log.open("wb"), stderr=subprocess.STDOUT)
            try:
                await _wait_for(lambda: started(0) and started(1))
                ports = log_ports(log.read_text())
                pids = worker_pids(log.read_text())
                gw = Gateway(None, config, directory, echo, ports)  # type: ignore[arg-type]
                demo = Agent(directory / "pki/demo-agent.pem", directory / "pki/demo-agent.key", [])

                # 1. A valid edit, not reloaded (the demo organisation CA removed on disk), does
                # not reach a restarted worker: it still lets the demo agent in.
                path.write_text(edited)
                restarted = await kill_and_wait_for_restart(pids[1])
                for _ in range(60):  # until the restarted worker holds a session
                    # LiveAgent raises if the handshake is refused.
                    await trio.to_thread.run_sync(LiveAgent, gw, demo)
                    if connection_holders(ports["gateway"], {restarted}):
                        break
                assert connection_holders(ports["gateway"], {restarted}) == {restarted}
                assert _status(state, 1) == {**(_status(state, 1) or {}), "ok": True, "generation": 1}

                # 2. A file that does not load: a restarted worker starts all the same, once.
                path.write_text(good + "\nnonsense = [\n")
                again = await kill_and_wait_for_restart(restarted)
                await trio.sleep(1)  # a crash loop would show as more exits by now
                assert log.read_text().count("worker_exited") == 2
                assert "worker_restart_config_invalid" not in log.read_text()

                # 3. A damaged snapshot: the worker is not started, and the log says why, until a
                # SIGHUP with a config that loads makes a new snapshot.
                current = json.loads((state / "config-snapshots/current.json").read_text())
                for copy in (state / "config-snapshots" / current["snapshot"] / "files").iterdir():
                    copy.unlink()
                os.kill(again, signal.SIGKILL)
                await _wait_for(lambda: "worker_restart_config_invalid" in log.read_text())
                assert worker_pids(log.read_text())[1] == again  # not started
                held = [await trio.to_thread.run_sync(LiveAgent, gw, demo) for _ in range(2)]

                # 4. SIGHUP with the edit in place applies it to every worker: the sessions the
                # removed CA trusted close, and the waiting worker starts on the new snapshot.
                path.write_text(edited)
                proc.send_signal(signal.SIGHUP)
                for live in held:
                    await trio.to_thread.run_sync(live.closed.wait, 10)
                    assert live.close_code == 1008
                await _wait_for(lambda: (_status(state, 0) or {}).get("generation") == 2
                                and (_status(state, 1) or {}).get("generation") == 2)
                assert worker_pids(log.read_text())[1] != again
                proc.send_signal(signal.SIGTERM)
                with trio.fail_after(30):
                    assert await proc.wait() == 0
                assert not (state / "config-snapshots").exists()  # they hold private keys
            finally:
                if proc.returncode is None:
                    proc.kill()
            nursery.cancel_scope.cancel()
