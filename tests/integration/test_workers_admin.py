"""`switch serve --workers N` with the admin port fixed, as in every real deployment: only the
worker the supervisor handed the admin socket serves it, and no worker binds a port itself."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.support.est import make_deployment
from tests.support.processes import free_port


def worker_pids(text: str) -> dict[int, int]:
    pids: dict[int, int] = {}
    for line in text.splitlines():
        if "worker_started" in line:
            fields = dict(re.findall(r"(\w+)=(\d+)", line))
            pids[int(fields["worker"])] = int(fields["pid"])
    return pids


@pytest.mark.slow
async def test_two_workers_with_a_fixed_admin_port_all_stay_up(tmp_path: Path) -> None:
    config = make_deployment(tmp_path / "d")
    admin_port = free_port()
    text = config.path.read_text()
    admin = text.index("[admin]")
    config.path.write_text(text[:admin] + text[admin:].replace(
        'listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{admin_port}"', 1))
    log = tmp_path / "serve.log"
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "gateway.cli", "-c", str(config.path), "serve", "--workers", "2"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        with trio.fail_after(60):
            while len(worker_pids(log.read_text())) < 2 or \
                    log.read_text().count("listener=gateway") < 3:  # noqa: ASYNC110 - a child's log
                assert proc.returncode is None, log.read_text()
                await trio.sleep(0.05)
            pids = worker_pids(log.read_text())
            await trio.sleep(3)  # a worker that binds the admin port itself dies within this
            text = log.read_text()
            assert "worker_exited" not in text and "Address already in use" not in text, text
            assert worker_pids(text) == pids  # none was restarted
            for pid in pids.values():
                os.kill(pid, 0)  # alive
            # The admin port is served (by worker 0, the one handed its socket), once.
            assert text.count(f"address=127.0.0.1:{admin_port} listener=admin") == 2  # sup + w0
            stream = await trio.open_tcp_stream("127.0.0.1", admin_port)
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := await stream.receive_some(4096):
                reply += chunk
            await stream.aclose()
            assert reply.startswith(b"HTTP/1.1 200"), reply
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
