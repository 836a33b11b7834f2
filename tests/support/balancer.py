"""A real TCP load balancer in front of Switch hosts: Debian's HAProxy (``./scripts/test`` installs
it when missing) in TCP mode, started on a free loopback port, with the configuration
docs/operations.md shows ("Several hosts"): TLS passes through untouched, so each agent's SNI
reaches Switch, which chooses the tenant by it; each host's health is its own ``/readyz``."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.support.hosts import Host, free_port

CONFIG = """\
global
    maxconn 4000

defaults
    mode tcp
    timeout connect 2s
    timeout client 10m
    timeout server 10m
    # A host that refuses the connection (it just died): try again, on another host.
    retries 3
    option redispatch 1

listen switch_gateway
    bind 127.0.0.1:{port}
    balance roundrobin
    # Wait for the TLS ClientHello (SNI and all) before choosing a host; it is passed on as
    # it came: TLS ends at Switch.
    tcp-request inspect-delay 5s
    tcp-request content accept if {{ req.ssl_hello_type 1 }}
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 500ms fall 1 rise 1
{servers}
"""


def haproxy_config(port: int, hosts: Sequence[Host]) -> str:
    servers = "\n".join(f"    server {h.name} 127.0.0.1:{h.ports['gateway']} check port "
                        f"{h.ports['admin']}" for h in hosts)
    return CONFIG.format(port=port, servers=servers)


@contextlib.contextmanager
def haproxy(hosts: Sequence[Host], directory: Path) -> Iterator[int]:
    """HAProxy in front of ``hosts``' gateway ports for as long as the block runs; its port."""
    binary = shutil.which("haproxy")
    assert binary, "haproxy is not installed: run ./scripts/test (it installs Debian's haproxy)"
    port = free_port()
    config = directory / "haproxy.cfg"
    config.write_text(haproxy_config(port, hosts))
    check = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    with (directory / "haproxy.log").open("wb") as out:
        proc = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, \
                    (directory / "haproxy.log").read_text()
                time.sleep(0.05)
        _wait_routed(port, hosts[0], len(hosts) * 2)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _wait_routed(port: int, host: Host, count: int) -> None:
    """Until ``count`` TLS handshakes in a row through the balancer reach a Switch (servers are
    checked before HAProxy sends them anything)."""
    from tests.support.est import HOST

    context = ssl.create_default_context(cafile=str(host.ca_file))
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    deadline = time.monotonic() + 30
    done = 0
    while done < count:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, \
                    context.wrap_socket(sock, server_hostname=HOST):
                done += 1  # the handshake completed: a Switch answered (it refuses later)
        except (OSError, ssl.SSLError):
            done = 0
            assert time.monotonic() < deadline, "no Switch answered through HAProxy"
            time.sleep(0.1)
