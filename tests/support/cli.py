"""Running ``switch`` admin commands the two ways an operator can: on the store of a deployment
(``local``), or through the admin API of a ``switch serve`` running that deployment
(``remote``: ``--server``, ``--token-file``, ``--ca-file``, as a security admin named ``admin``).
The CLI's command tests take the ``cli_mode`` fixture and pass in both."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import attrs

from tests.support.processes import log_ports

ADMIN = "admin"


def switch_command(config: Path | None, *args: str) -> list[str]:
    cmd = [sys.executable, "-m", "gateway.cli"]
    if config is not None:
        cmd += ["-c", str(config)]
    return cmd + list(args)


def local_actor() -> str:
    return f"local:{pwd.getpwuid(os.geteuid()).pw_name}"


def loopback_ports(config: Path) -> None:
    """Every listener of a ``switch init`` deployment on 127.0.0.1, port 0."""
    config.write_text(re.sub(r'listen = "[^"]+"', 'listen = "127.0.0.1:0"', config.read_text()))


@attrs.define(eq=False)
class ServeProcess:
    """``switch serve`` in a process of its own; its log collected (``log``)."""

    process: subprocess.Popen[str]
    ports: dict[str, int]
    lines: list[str]

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@contextlib.contextmanager
def serving(config: Path, *, workers: int = 1, wait_for: str = "api") -> Iterator[ServeProcess]:
    """``switch -c CONFIG serve --workers N`` until it listens on ``wait_for``."""
    process = subprocess.Popen(switch_command(config, "serve", "--workers", str(workers)),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "SWITCH_LOG_FORMAT": "logfmt"})
    lines: list[str] = []

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    server = ServeProcess(process, {}, lines)
    try:
        deadline = time.monotonic() + 60
        while wait_for not in server.ports:
            assert process.poll() is None, f"switch serve exited:\n{server.log}"
            assert time.monotonic() < deadline, f"switch serve did not listen:\n{server.log}"
            time.sleep(0.05)
            server.ports = log_ports(server.log)
        yield server
    finally:
        server.stop()
        reader.join(timeout=10)


def add_operator(config: Path, name: str, role: str, directory: Path, *tenants: str) -> Path:
    """``switch operators add``; the token in an owner-only file, which is returned."""
    args = ["operators", "add", name, "--role", role, "--json"]
    for tenant in tenants:
        args += ["--tenant", tenant]
    made = subprocess.run(switch_command(config, *args), capture_output=True, text=True,
                          timeout=60)
    assert made.returncode == 0, made.stderr
    token_file = directory / f"{name}.token"
    token_file.write_text(json.loads(made.stdout)["token"] + "\n")
    token_file.chmod(0o600)
    return token_file


@attrs.define(eq=False)
class Cli:
    """``switch`` admin commands against one deployment, in one mode."""

    mode: str
    config: Path
    server: ServeProcess | None = None
    token_file: Path | None = None

    @property
    def actor(self) -> str:
        """What the audit log records for the commands this runs."""
        return f"operator:{ADMIN}" if self.mode == "remote" else local_actor()

    def command(self, *args: str) -> list[str]:
        cmd = switch_command(self.config, *args)
        if self.server is not None:
            assert self.token_file is not None
            cmd += ["--server", f"https://127.0.0.1:{self.server.ports['api']}",
                    "--token-file", str(self.token_file),
                    "--ca-file", str(self.config.parent / "pki" / "dev-root-ca.pem")]
        return cmd

    def __call__(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*args), capture_output=True, text=True,
                              timeout=timeout)


@contextlib.contextmanager
def cli_for(mode: str, config: Path) -> Iterator[Cli]:
    """A ``Cli`` for ``config`` (a ``switch init`` deployment; remote mode moves its listeners to
    loopback port 0 and serves it while the context lasts)."""
    if mode == "local":
        yield Cli(mode, config)
        return
    loopback_ports(config)
    token_file = add_operator(config, ADMIN, "security-admin", config.parent)
    with serving(config) as server:
        yield Cli(mode, config, server, token_file)
