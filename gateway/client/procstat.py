"""Memory and CPU of a local process tree, from Linux's ``/proc`` (for the load test and benches).

A Switch with ``--workers N`` is a supervisor with N worker children, so figures are summed over
the tree rooted at the given pid. Unreadable or vanished processes count as nothing; off Linux
every figure is ``None``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

PROC = Path("/proc")
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in (PROC / str(pid) / "task").iterdir():
            text = (task / "children").read_text()
            out.extend(int(p) for p in text.split())
    except OSError:
        pass
    return out


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants that exist now."""
    seen: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        if current in seen or not (PROC / str(current)).exists():
            continue
        seen.append(current)
        todo.extend(_children(current))
    return seen


def rss_kib(pids: Iterable[int]) -> int | None:
    """Resident memory (``VmRSS``) summed over ``pids``, in KiB; None when none is readable."""
    total, found = 0, False
    for pid in pids:
        try:
            for line in (PROC / str(pid) / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    found = True
                    break
        except (OSError, ValueError, IndexError):
            continue
    return total if found else None


def cpu_seconds(pids: Iterable[int]) -> float | None:
    """User + system CPU time summed over ``pids`` (not their reaped children), in seconds."""
    total, found = 0.0, False
    for pid in pids:
        try:
            stat = (PROC / str(pid) / "stat").read_text()
        except OSError:
            continue
        # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
        fields = stat[stat.rindex(")") + 2:].split()
        total += (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
        found = True
    return total if found else None


def read_pid_file(path: Path) -> int | None:
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if (PROC / str(pid)).exists() else None
