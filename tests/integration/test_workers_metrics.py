"""`switch serve --workers N` as an operator watches it: /metrics counts every worker's sessions
(prometheus-client's multiprocess mode), a dead worker's sessions leave the count, and systemd
hears READY=1 once every worker serves and STOPPING=1 when it stops (``Type=notify``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio_websocket
from prometheus_client.parser import text_string_to_metric_families

from enroll.authority import Authority
from tests.support.est import make_deployment
from tests.support.gateway import Echo, Gateway, LiveAgent
from tests.support.processes import NotifySocket, connection_holders, log_ports, worker_pids


async def http_get(port: int, path: str) -> tuple[int, str]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    reply = b""
    while chunk := await stream.receive_some(65536):
        reply += chunk
    await stream.aclose()
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def sample(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when there are none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


@pytest.mark.slow
async def test_metrics_count_the_sessions_of_every_worker_and_systemd_hears_ready(
        tmp_path: Path) -> None:
    directory = tmp_path / "d"
    config = make_deployment(directory)
    echo = Echo()
    notify = NotifySocket()
    await notify.bind()
    log = tmp_path / "serve.log"
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(trio_websocket.serve_websocket, echo.handler,
                                         "127.0.0.1", 0, None)
            echo.port = server.port
            path = config.path
            path.write_text(path.read_text().replace(
                'upstream = "ws://127.0.0.1:8080/"', f'upstream = "ws://127.0.0.1:{echo.port}/"'))
            stale = config.state_dir / "metrics"
            stale.mkdir()
            (stale / "counter_999999.db").write_bytes(b"left by an earlier run")
            authority = Authority.open(config)
            authority.enable_service("demo", actor="t")
            _, secret = authority.generate_key("demo", "Fleet", actor="t")
            authority.close()
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "gateway.cli", "-c", str(path), "serve", "--workers", "2"],
                stdout=log.open("wb"), stderr=subprocess.STDOUT,
                env={**os.environ, "NOTIFY_SOCKET": notify.name})
            try:
                # READY=1 comes once, from the supervisor, once both workers serve.
                assert await notify.receive(60) == "READY=1", log.read_text()
                pids = worker_pids(log.read_text())
                assert len(pids) == 2
                ports = log_ports(log.read_text())
                gw = Gateway(None, config, directory, echo, ports)  # type: ignore[arg-type]
                agent = await gw.enroll(secret, "laptop-1", tmp_path)
                sessions: list[LiveAgent] = []
                while len(sessions) < 6 or \
                        len(connection_holders(ports["gateway"], set(pids.values()))) < 2:
                    assert len(sessions) < 60, "one worker took every session"
                    sessions.append(await trio.to_thread.run_sync(LiveAgent, gw, agent))
                by_worker = {w: connection_holders(ports["gateway"], {pid})
                             for w, pid in pids.items()}
                assert all(by_worker.values())  # both workers hold sessions

                status, text = await http_get(ports["admin"], "/metrics")
                assert status == 200
                assert sample(text, "switch_sessions", tenant="demo") == len(sessions)
                assert sample(text, "switch_handshakes_total", result="ok") == len(sessions)
                assert sample(text, "switch_trust_generation") >= 1
                assert sample(text, "switch_config_last_reload_success") == 1
                assert "pid=" not in text  # no per-process series

                # A worker dies: its sessions end, and leave the count; counters keep its share.
                os.kill(pids[1], signal.SIGKILL)
                with trio.fail_after(20):  # its agents see their connections end
                    while not any(live.closed.is_set() for live in sessions):  # noqa: ASYNC110
                        await trio.sleep(0.05)
                # Until the count is exactly the sessions still open (those of worker 0: the
                # dead worker's gauge leaves the sum at once, when the supervisor forgets it).
                with trio.fail_after(20):
                    while True:
                        left = sum(1 for live in sessions if not live.closed.is_set())
                        _, text = await http_get(ports["admin"], "/metrics")
                        if sample(text, "switch_sessions", tenant="demo") == left:
                            break
                        await trio.sleep(0.1)
                assert 0 < left < len(sessions)
                assert sample(text, "switch_handshakes_total", result="ok") >= len(sessions)

                proc.send_signal(signal.SIGTERM)
                assert await notify.receive(10) == "STOPPING=1"
                with trio.fail_after(30):
                    assert await proc.wait() == 0
                assert not (stale / "counter_999999.db").exists()  # emptied at start
            finally:
                if proc.returncode is None:
                    proc.kill()
            nursery.cancel_scope.cancel()
