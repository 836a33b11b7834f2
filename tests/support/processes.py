"""Reading what `switch serve --workers` logged: the ports each listener got, each worker's pid."""

from __future__ import annotations

import re


def log_ports(text: str) -> dict[str, int]:
    return {name: int(port) for port, name in re.findall(
        r"address=127\.0\.0\.1:(\d+) listener=(\w+)", text)}


def worker_pids(text: str) -> dict[int, int]:
    pids: dict[int, int] = {}
    for match in re.finditer(r"worker_started\s+(.*)", text):
        fields = dict(re.findall(r"(\w+)=(\d+)", match.group(1)))
        pids[int(fields["worker"])] = int(fields["pid"])
    return pids
