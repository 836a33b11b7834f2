"""Switch hosts as real processes: deployments on fixed loopback ports (so a host that is killed
comes back where a load balancer expects it), sharing one PostgreSQL store or each with its own
SQLite store, and the commands run against each (`switch -c HOST/switch.toml ...`)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import attrs

from tests.support.est import make_deployment
from tests.support.postgres import PASSPHRASE, PASSWORD, PostgresServer
from tests.support.processes import free_port

SWITCH = [sys.executable, "-m", "gateway.cli"]
#: Starting a host (a new Python process, the store opened, listeners bound) takes about a second
#: alone; this bounds it on a loaded machine.
START_TIMEOUT_S = 60.0


def store_table(directory: Path, server: PostgresServer, database: str) -> str:
    """``[store]`` naming ``database``, with this host's own password and passphrase files."""
    secrets = directory / "secrets"
    secrets.mkdir(mode=0o700, exist_ok=True)
    (secrets / "pg.pass").write_text(PASSWORD + "\n")
    (secrets / "issuer-keys.pass").write_bytes(PASSPHRASE + b"\n")
    (secrets / "pg.pass").chmod(0o600)
    (secrets / "issuer-keys.pass").chmod(0o600)
    return (f'\n[store]\nurl = "{server.url(database)}"\npassword_file = "secrets/pg.pass"\n'
            'issuer_key_passphrase_file = "secrets/issuer-keys.pass"\n')


@attrs.define(eq=False)
class Host:
    """One ``switch serve`` (one process: ``--workers 1``) and its deployment directory."""

    name: str
    directory: Path
    ports: dict[str, int]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config(self) -> Path:
        return self.directory / "switch.toml"

    @property
    def log(self) -> Path:
        return self.directory / "serve.log"

    @property
    def ca_file(self) -> Path:
        return self.directory / "pki" / "dev-root-ca.pem"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*SWITCH, "-c", str(self.config), *args], capture_output=True,
                              text=True, timeout=120)
        if check:
            assert done.returncode == 0, f"{self.name}: switch {' '.join(args)}: {done.stderr}"
        return done

    def start(self, *extra: str, workers: int = 1) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([*SWITCH, "-c", str(self.config), "serve", "--workers",
                                          str(workers), *extra], stdout=out,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.ready():
            code = self.proc.poll()
            assert code is None, f"{self.name} exited ({code}): {self.log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"{self.name} not ready: {self.log.read_text()}"
            time.sleep(0.05)

    def ready(self) -> bool:
        with contextlib.suppress(OSError):
            url = f"http://127.0.0.1:{self.ports['admin']}/readyz"
            with urllib.request.urlopen(url, timeout=2) as reply:
                return bool(reply.status == 200)
        return False

    def kill(self) -> None:
        """``kill -9``: no drain, no clean close, nothing flushed."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def certificates(self) -> list[dict[str, object]]:
        listed: list[dict[str, object]] = json.loads(
            self.cli("certs", "list", "demo", "--json").stdout)
        return listed


def _ports(text: str, ports: dict[str, int], upstream: int) -> str:
    """The deployment's listeners on ``ports`` (gateway, enroll, admin: the order
    ``switch init`` writes them in) and its upstream on ``upstream``."""
    for name in ("gateway", "enroll", "admin"):
        text = text.replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{ports[name]}"', 1)
    return re.sub(r'upstream = "ws://127\.0\.0\.1:\d+/"', f'upstream = "ws://127.0.0.1:{upstream}/"',
                  text)


def make_host(directory: Path, name: str, *, upstream: int, like: Host | None = None,
              store: tuple[PostgresServer, str] | None = None) -> Host:
    """A deployment in ``directory``: its own (``switch init``), or ``like`` another host's (the
    same configuration and PKI, so the same server certificate, with a state directory, ports
    and secret files of its own), on the PostgreSQL database ``store`` or on SQLite."""
    if like is None:
        make_deployment(directory)
    else:
        shutil.copytree(like.directory, directory, ignore=shutil.ignore_patterns(
            "state", "secrets", "*.log"))
        (directory / "state").mkdir(mode=0o700)
        text = like.config.read_text()
        for port in like.ports.values():
            text = text.replace(f'listen = "127.0.0.1:{port}"', 'listen = "127.0.0.1:0"')
        text = text.split("\n[store]\n")[0]
        like_config = directory / "switch.toml"
        like_config.write_text(text)
    ports = {n: free_port() for n in ("gateway", "enroll", "admin")}
    text = _ports((directory / "switch.toml").read_text(), ports, upstream)
    text = text.replace('drain_timeout = "10s"', 'drain_timeout = "1s"')  # tests stop hosts
    if store is not None:
        text += store_table(directory, *store)
    (directory / "switch.toml").write_text(text)
    return Host(name, directory, ports)


@contextlib.contextmanager
def echo_upstream(log_dir: Path, processes: int = 1) -> Iterator[int]:
    """``switch echo`` on a free port (``processes`` of them sharing it with ``--reuse-port``),
    for as long as the block runs."""
    port = free_port()
    procs = []
    try:
        for n in range(processes):
            with (log_dir / f"echo-{n}.log").open("wb") as out:
                procs.append(subprocess.Popen(
                    [*SWITCH, "echo", "--listen", f"127.0.0.1:{port}",
                     *(["--reuse-port"] if processes > 1 else [])],
                    stdout=out, stderr=subprocess.STDOUT))
            deadline = time.monotonic() + START_TIMEOUT_S
            while f"127.0.0.1:{port}" not in (log_dir / f"echo-{n}.log").read_text():
                assert procs[-1].poll() is None and time.monotonic() < deadline, \
                    "echo did not start"
                time.sleep(0.05)
        yield port
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)


def stop_all(hosts: list[Host]) -> None:
    for host in hosts:
        with contextlib.suppress(Exception):
            host.stop()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def enroll_burst(host: Host, secret: str, names: list[str], *, concurrency: int,
                       received: dict[str, str], stop: object = None) -> list[str]:
    """Enroll an agent for each of ``names`` at ``host``'s enrollment port, ``concurrency`` at
    a time; each certificate a client receives goes into ``received`` (name: serial, lower-case
    hex) as it arrives. A request that fails (the host went away) is returned, not retried.
    ``stop`` (a ``trio.Event``) ends the burst early."""
    import trio

    from enroll import pki
    from gateway.client.est_client import EstClient, EstClientError, EstServer, make_csr
    from tests.support.est import HOST

    failed: list[str] = []
    todo = iter(names)

    async def slot() -> None:
        async with EstClient(EstServer("127.0.0.1", host.ports["enroll"], HOST,
                                       ca_file=host.ca_file), timeout_s=30) as client:
            for name in todo:
                if stop is not None and stop.is_set():  # type: ignore[attr-defined]
                    return
                try:
                    cert = await client.simpleenroll(make_csr(name, pki.generate_key()), secret)
                except (EstClientError, OSError, trio.BrokenResourceError):
                    failed.append(name)
                    continue
                received[name] = format(cert.serial_number, "x")

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(slot)
    return failed
