"""Memory and CPU figures of a local process tree and of the machine, read with psutil (for the
load test's server figures and the bench).

A Switch with ``--workers N`` is a supervisor with N worker children, so figures are summed over
the tree rooted at the given pid. Processes that vanish or cannot be read count as nothing; a
figure none of the processes gave is ``None``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import psutil


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants that exist now (``pid`` first); empty when it does not."""
    try:
        root = psutil.Process(pid)
        return [pid, *(child.pid for child in root.children(recursive=True))]
    except psutil.Error:
        return []


def _each(pids: Iterable[int]) -> Iterable[psutil.Process]:
    for pid in pids:
        try:
            yield psutil.Process(pid)
        except psutil.Error:
            continue


def rss_kib(pids: Iterable[int]) -> int | None:
    """Resident memory summed over ``pids``, in KiB (Linux's ``VmRSS``); None when none is
    readable."""
    total, found = 0, False
    for process in _each(pids):
        try:
            total += process.memory_info().rss // 1024
        except psutil.Error:
            continue
        found = True
    return total if found else None


def cpu_seconds(pids: Iterable[int]) -> float | None:
    """User + system CPU time summed over ``pids`` (not their reaped children), in seconds;
    None when none is readable."""
    total, found = 0.0, False
    for process in _each(pids):
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
        found = True
    return total if found else None


def machine_cpu() -> tuple[float, float]:
    """The whole machine's (busy, total) CPU seconds since boot, over all cores: the busy share
    of an interval is the difference of busy over the difference of total. Idle and I/O wait are
    not busy; guest time is already inside user and nice."""
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    total = sum(getattr(times, name, 0.0) for name in (
        "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"))
    return total - idle, total


def read_pid_file(path: Path) -> int | None:
    """The pid in a pid file when that process exists; None otherwise."""
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if psutil.pid_exists(pid) else None
