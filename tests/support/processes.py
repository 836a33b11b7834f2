"""Reading what `switch serve --workers` logged (the ports each listener got, each worker's pid),
which of its processes hold a connection, and what it tells systemd."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
from pathlib import Path

import trio


def free_ports(count: int) -> list[int]:
    """``count`` different loopback ports nothing listens on now, for what cannot take port 0
    (a server told its port, a documented block): all bound at once, so that none is handed out
    twice (one at a time, the kernel may give a port just released again)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


def log_ports(text: str) -> dict[str, int]:
    return {name: int(port) for port, name in re.findall(
        r"address=127\.0\.0\.1:(\d+) listener=(\w+)", text)}


def worker_pids(text: str) -> dict[int, int]:
    pids: dict[int, int] = {}
    for match in re.finditer(r"worker_started\s+(.*)", text):
        fields = dict(re.findall(r"(\w+)=(\d+)", match.group(1)))
        pids[int(fields["worker"])] = int(fields["pid"])
    return pids


def connection_holders(port: int, pids: set[int]) -> set[int]:
    """Which of ``pids`` hold an established connection on local ``port``: the sockets from
    /proc/net/tcp{,6} (state 01, ESTABLISHED), matched to the processes' fds by inode."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    held = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) in inodes for fd in Path(f"/proc/{pid}/fd").iterdir()):
                held.add(pid)
    return held


class NotifySocket:
    """A stand-in for systemd's notify socket (abstract namespace: no path length limit)."""

    def __init__(self) -> None:
        self.name = f"@switch-test-{secrets.token_hex(6)}"
        self.sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_DGRAM)

    async def bind(self) -> None:
        await self.sock.bind("\0" + self.name[1:])

    async def receive(self, timeout_s: float) -> str:
        with trio.fail_after(timeout_s):
            return (await self.sock.recv(4096)).decode()
