"""What a new operator meets in the first hour, as real processes: `switch --version`, a command
run without a configuration, a port already in use, and systemd's readiness notice."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.support.est import make_deployment
from tests.support.processes import NotifySocket

SWITCH = [sys.executable, "-m", "gateway.cli"]


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SWITCH, *args], capture_output=True, text=True, timeout=60, cwd=cwd,
                          env=env)


def test_version_prints_the_installed_version() -> None:
    from importlib.metadata import version

    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"switch {version('mtls-switch')}"


@pytest.mark.parametrize("command", [("config", "check"), ("keys", "list", "demo"), ("reload",),
                                     ("serve", "--workers", "1")])
def test_a_command_without_a_config_says_how_to_name_one(tmp_path: Path,
                                                         command: tuple[str, ...]) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SWITCH_CONFIG"}
    result = run(*command, cwd=tmp_path, env=env)
    assert result.returncode == 5
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith("switch: config_missing: no configuration at switch.toml")
    assert "-c" in line and "$SWITCH_CONFIG" in line and "switch init" in line

    named = run(*command, cwd=tmp_path, env={**env, "SWITCH_CONFIG": str(tmp_path / "x.toml")})
    assert named.returncode == 5
    assert f"no configuration at {tmp_path / 'x.toml'} ($SWITCH_CONFIG)" in named.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_is_one_line_naming_the_listener_and_the_port(tmp_path: Path,
                                                                   workers: str) -> None:
    config = make_deployment(tmp_path / "d")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        text = config.path.read_text()
        enroll = text.index("[enroll]")
        config.path.write_text(text[:enroll] + text[enroll:].replace(
            'listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"', 1))
        result = run("-c", str(config.path), "serve", "--workers", workers)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == (f"switch: listen_failed: the enroll listener cannot listen on "
                    f"127.0.0.1:{port}: address already in use")
    assert "Traceback" not in result.stderr
    # Nothing left behind: no pid file, no snapshot (it holds copies of private keys).
    assert not (config.state_dir / "switch.pid").exists()
    assert not (config.state_dir / "config-snapshots").exists()


async def test_a_single_process_tells_systemd_it_is_ready_once_it_serves(tmp_path: Path) -> None:
    config = make_deployment(tmp_path / "d")
    notify = NotifySocket()
    await notify.bind()
    log = tmp_path / "serve.log"
    proc = await trio.lowlevel.open_process(
        [*SWITCH, "-c", str(config.path), "serve", "--workers", "1"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
        env={**os.environ, "NOTIFY_SOCKET": notify.name})
    try:
        assert await notify.receive(60) == "READY=1", log.read_text()
        # Ready means serving: every listener accepts now.
        ports = {name: int(port) for port, name in re.findall(
            r"address=127\.0\.0\.1:(\d+) listener=(\w+)", log.read_text())}
        assert set(ports) == {"gateway", "enroll", "admin", "api"}
        for port in ports.values():
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.aclose()
        proc.send_signal(signal.SIGTERM)
        assert await notify.receive(10) == "STOPPING=1"
        with trio.fail_after(30):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
