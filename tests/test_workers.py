"""`switch serve --workers N`: shared ports, revocation in force in every worker, restarts,
signals reaching all."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from enroll import pki
from enroll.authority import Authority
from gateway.est_client import EstClient, EstServer, make_csr
from tests.est_harness import HOST, make_deployment
from tests.gateway_harness import Echo, Gateway, write_agent
from tests.test_gateway_revocation import LiveAgent

pytestmark = pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")


def _log_ports(text: str) -> dict[str, int]:
    return {name: int(port) for port, name in re.findall(
        r"address=127\.0\.0\.1:(\d+) listener=(\w+)", text)}


def _worker_pids(text: str) -> dict[int, int]:
    pids: dict[int, int] = {}
    for match in re.finditer(r"worker_started\s+(.*)", text):
        fields = dict(re.findall(r"(\w+)=(\d+)", match.group(1)))
        pids[int(fields["worker"])] = int(fields["pid"])
    return pids


def _holders(port: int) -> set[int]:
    """The pids holding established connections on the gateway port."""
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    return {int(pid) for pid in re.findall(r"pid=(\d+)", out)}


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
                while len(_worker_pids(log.read_text())) < 2 or \
                        log.read_text().count("listener=gateway") < 3:  # noqa: ASYNC110
                    await trio.sleep(0.05)
                ports = _log_ports(log.read_text())
                pids = _worker_pids(log.read_text())
                key = pki.generate_key()
                async with EstClient(EstServer("127.0.0.1", ports["enroll"], HOST,
                                               ca_file=directory / "pki/dev-root-ca.pem")) as est:
                    cert = await est.simpleenroll(make_csr("laptop-1", key), secret)
                agent = write_agent(tmp_path, "laptop-1", cert, key)
                gw = Gateway(None, config, directory, echo, ports)  # type: ignore[arg-type]
                sessions: list[LiveAgent] = []
                for _ in range(40):  # until both workers hold sessions of this agent
                    sessions.append(await trio.to_thread.run_sync(LiveAgent, gw, agent))
                    if len(_holders(ports["gateway"]) & set(pids.values())) == 2:
                        break
                assert _holders(ports["gateway"]) >= set(pids.values()), "one worker took all"
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
                while _worker_pids(log.read_text()).get(1) == pids[1]:  # noqa: ASYNC110
                    await trio.sleep(0.05)
                assert "worker_exited" in log.read_text()
                new_pid = _worker_pids(log.read_text())[1]
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
