"""The bench's one PKI and its processes: a Switch deployment, nginx with the same certificates,
the echo upstream, and the server CPU and memory (gateway/client/procstat.py, with psutil)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import attrs

from gateway.client import procstat
from tests.support.processes import free_port, free_ports

SWITCH = [sys.executable, "-m", "gateway.cli"]
HOST = "demo.switch.test"


def wait_until(predicate: object, timeout: float, what: str,
               gone: object = lambda: None) -> None:
    """Poll ``predicate`` until it holds; TimeoutError after ``timeout`` seconds, or as soon as
    ``gone()`` says why it never will (a process that exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if predicate():  # type: ignore[operator]
                return
        reason = gone()  # type: ignore[operator]
        if reason:
            raise RuntimeError(f"{what} not ready: {reason}")
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready within {timeout}s")


def _log_tail(log: Path, lines: int = 3) -> str:
    """The last lines of a process's log, for the error that says it did not start."""
    with contextlib.suppress(OSError):
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])
    return ""


@attrs.define
class Deployment:
    """One `switch init` deployment: its PKI is the bench's PKI, for Switch and nginx alike."""

    directory: Path
    gateway: int
    enroll: int
    admin: int
    echo: int
    secret: str = ""
    #: The admin API's port (``[api] listen``).
    api: int = 0

    @property
    def config(self) -> Path:
        return self.directory / "switch.toml"

    @property
    def pki(self) -> Path:
        return self.directory / "pki"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*SWITCH, "-c", str(self.config), *args], capture_output=True,
                              text=True, check=check, timeout=120)

    @classmethod
    def create(cls, directory: Path) -> Deployment:
        subprocess.run([*SWITCH, "init", str(directory)], check=True, capture_output=True, timeout=120)
        gateway, enroll, admin, echo, api = free_ports(5)
        deploy = cls(directory, gateway, enroll, admin, echo, api=api)
        text = deploy.config.read_text()
        text = text.replace('"0.0.0.0:4000"', f'"127.0.0.1:{deploy.gateway}"')
        text = text.replace('"0.0.0.0:9443"', f'"127.0.0.1:{deploy.enroll}"')
        text = text.replace('"127.0.0.1:9090"', f'"127.0.0.1:{deploy.admin}"')
        # The admin API's port too: a fixed port may be taken on a shared machine.
        text = text.replace('listen = "127.0.0.1:9444"', f'listen = "127.0.0.1:{deploy.api}"')
        text = text.replace("ws://127.0.0.1:8080/", f"ws://127.0.0.1:{deploy.echo}/")
        # Pings every 5 s so that idle sessions really are pinged during a short hold; no SNI
        # (openssl s_time sends none) lands in the demo tenant.
        text = text.replace('ping_interval = "30s"', 'ping_interval = "5s"')
        text = text.replace('max_connections = 1000', 'max_connections = 5000')
        # The load generator is one source address opening thousands of connections at once:
        # the per-source handshake limits (500, 50) are for hostile sources, not for it.
        text = text.replace('max_handshakes_per_source = 500', 'max_handshakes_per_source = 50000')
        text = text.replace('max_handshakes_per_source = 50\n', 'max_handshakes_per_source = 4000\n')
        text = text.replace("state_dir = ", 'default_tenant = "demo"\nstate_dir = ', 1)
        deploy.config.write_text(text)
        deploy.cli("service", "enable", "demo")
        deploy.secret = json.loads(deploy.cli("keys", "generate", "demo", "bench", "--json").stdout)["secret"]
        (deploy.pki / "provisioning-ca.pem").write_text(deploy.cli("ca", "show", "demo", "--pem").stdout)
        # Both trust sources in one file, for nginx: organisation agents and enrolled agents.
        (deploy.pki / "client-cas.pem").write_text(
            (deploy.pki / "demo-org-ca.pem").read_text() + (deploy.pki / "provisioning-ca.pem").read_text())
        return deploy

    def metric(self, name: str, **labels: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=5).read().decode()
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total


@attrs.define
class Server:
    """A server process tree (Switch or nginx) and its CPU and memory figures."""

    name: str
    proc: subprocess.Popen[bytes]
    root_pid: int

    def pids(self) -> list[int]:
        return procstat.tree(self.root_pid)

    def cpu(self) -> float:
        return procstat.cpu_seconds(self.pids()) or 0.0

    def rss_kib(self) -> int:
        return procstat.rss_kib(self.pids()) or 0


@contextlib.contextmanager
def running(args: list[str], log: Path, ready: object, what: str, *,
            pid_file: Path | None = None, cwd: Path | None = None) -> Iterator[Server]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=cwd)
    try:
        # A process that exits (a port taken, a bad config) fails at once, with its log's end.
        wait_until(ready, 60, what, lambda: proc.poll() is not None
                   and f"exited with {proc.returncode} ({log}: {_log_tail(log)})")
        root = proc.pid
        if pid_file is not None:
            wait_until(lambda: procstat.read_pid_file(pid_file) is not None, 30, f"{what} pid file")
            root = procstat.read_pid_file(pid_file) or proc.pid
        yield Server(what, proc, root)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as reply:
        return bool(reply.status == 200)


def _port_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def _fresh(log: Path) -> Path:
    """``log``, or ``name-2.log``, ``name-3.log``, ... if it exists: a server started again (the
    fleet's restart, a later section) keeps the earlier one's log (its stop, kept by
    ``--keep-logs``) and is told ready by its own lines only."""
    n = 1
    path = log
    while path.exists():
        n += 1
        path = log.with_name(f"{log.stem}-{n}{log.suffix}")
    return path


@contextlib.contextmanager
def switch(deploy: Deployment, workers: int, log_dir: Path, *, config: Path | None = None,
           tag: str = "") -> Iterator[Server]:
    """``switch serve --workers N`` on the deployment (or on another ``config`` of it), until
    every worker serves; stopped with SIGTERM (1001 to every session at once) when the block ends."""
    log = _fresh(log_dir / f"switch-w{workers}{tag}.log")
    with running([*SWITCH, "-c", str(config or deploy.config), "serve", "--workers", str(workers)],
                 log, lambda: http_ok(f"http://127.0.0.1:{deploy.admin}/readyz")
                 and (workers == 1 or log.read_text().count("listener=gateway") > workers),
                 "switch") as server:
        yield server


@contextlib.contextmanager
def echo(deploy: Deployment, log_dir: Path, processes: int = 1) -> Iterator[Server]:
    """The echo upstream on the deployment's upstream port: one ``switch echo``, or several
    sharing the port (``--reuse-port``); the figures are the first process's."""
    with contextlib.ExitStack() as stack:
        reuse = ["--reuse-port"] if processes > 1 else []
        servers = [stack.enter_context(running(
            [*SWITCH, "echo", "--listen", f"127.0.0.1:{deploy.echo}", *reuse],
            log_dir / f"echo-{n}.log", lambda: _port_open(deploy.echo), "echo"))
            for n in range(processes)]
        yield servers[0]


NGINX_CONF = """
worker_processes {workers};
worker_rlimit_nofile 19000;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 19000; }}
http {{
    # One line per request, as nginx ships (Switch writes one per connection too: its
    # `session` or `upgrade_refused` event); nginx(access_log=False) turns it off.
    {access_log}
    client_body_temp_path {dir}/tmp;
    proxy_temp_path {dir}/tmp;
    fastcgi_temp_path {dir}/tmp;
    uwsgi_temp_path {dir}/tmp;
    scgi_temp_path {dir}/tmp;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    {split_sources}
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name {host} localhost;
        ssl_certificate {pki}/server.pem;
        ssl_certificate_key {pki}/server.key;
        ssl_client_certificate {pki}/client-cas.pem;
        ssl_verify_client on;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets off;
        ssl_session_cache off;
        client_header_timeout 600s;
        keepalive_timeout 600s;
        # What Switch answers a plain GET on its gateway port: so that each s_time connection of
        # the handshake bench costs both servers the same request and reply.
        location = /bench {{ return 426; }}
        location / {{
            proxy_pass http://127.0.0.1:{echo};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header X-Client-Subject $ssl_client_s_dn;
            proxy_read_timeout 600s;
            proxy_send_timeout 600s;
            proxy_buffering off;
            {proxy_bind}
        }}
    }}
}}
"""


def nginx_source_split(addresses: tuple[str, ...]) -> tuple[str, str]:
    """nginx's ``proxy_bind`` over several source addresses (Switch's ``[gateway]
    upstream_source_addresses``): ``split_clients`` hashes each client's address and port into
    one of them, evenly (shares to two decimals, the last one taking the rest). Returns the
    ``http`` block's directive and the ``location``'s; empty with no address."""
    if not addresses:
        return "", ""
    share = int(10_000 / len(addresses)) / 100
    lines = [f"{share:.2f}% {a};" for a in addresses[:-1]] + [f"* {addresses[-1]};"]
    split = ('split_clients "$remote_addr$remote_port" $upstream_source {{ {} }}'
             .format(" ".join(lines)))
    return split, "proxy_bind $upstream_source;"


@contextlib.contextmanager
def nginx(deploy: Deployment, workers: int, log_dir: Path, *, access_log: bool = True,
          port: int | None = None, source_addresses: tuple[str, ...] = ()
          ) -> Iterator[tuple[Server, int]]:
    if shutil.which("nginx") is None:
        raise RuntimeError("nginx is not installed (scripts/bench installs it from Debian)")
    directory = log_dir / f"nginx-w{workers}"
    (directory / "tmp").mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    conf = directory / "nginx.conf"
    log_line = f"access_log {directory}/access.log combined;" if access_log else "access_log off;"
    split, bind = nginx_source_split(source_addresses)
    conf.write_text(NGINX_CONF.format(workers=workers, dir=directory, port=port, host=HOST,
                                      pki=deploy.pki, echo=deploy.echo, access_log=log_line,
                                      split_sources=split, proxy_bind=bind))
    with running(["nginx", "-c", str(conf), "-p", str(directory)], directory / "stdout.log",
                 lambda: _port_open(port), "nginx") as server:
        yield server, port


@contextlib.contextmanager
def bare_tls(deploy: Deployment, log_dir: Path) -> Iterator[tuple[Server, int]]:
    """``scripts/benchlib/bare_tls.py``: Switch's TLS layer with nothing of Switch around it."""
    port = free_port()
    root = Path(__file__).resolve().parents[2]
    with running([sys.executable, "-m", "scripts.benchlib.bare_tls", str(port), str(deploy.pki)],
                 log_dir / "bare-tls.log", lambda: _port_open(port), "bare-tls",
                 cwd=root) as server:
        yield server, port


def nginx_version() -> str:
    if shutil.which("nginx") is None:
        return "not installed"
    out = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr
    return out.strip().removeprefix("nginx version: ")


def machine() -> dict[str, str]:
    from OpenSSL import SSL

    cpu = "unknown"
    with contextlib.suppress(OSError):
        match = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = match.group(1).strip() if match else cpu
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "system OpenSSL (nginx, openssl, ssl module)": subprocess.run(
            ["openssl", "version"], capture_output=True, text=True).stdout.strip(),
        "pyOpenSSL's OpenSSL (Switch)": SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode(),
        "nginx": nginx_version(),
    }
