"""Process-tree figures of the load test and the bench (gateway/client/procstat.py, psutil) on
real processes: the tree, its resident memory in KiB as Linux reports VmRSS, its CPU time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.client import procstat

#: A parent that starts two children, each holding 32 MiB it has written to, after some work.
CHILD = ("import sys, time\n"
         "block = bytearray(32 << 20)\n"
         "block[::4096] = b'x' * len(block[::4096])\n"
         "sum(range(2_000_000))\n"
         "print('ready', flush=True)\n"
         "time.sleep(60)\n")
PARENT = ("import subprocess, sys, time\n"
          f"kids = [subprocess.Popen([sys.executable, '-c', {CHILD!r}], stdout=subprocess.PIPE)"
          " for _ in range(2)]\n"
          "for k in kids: k.stdout.readline()\n"
          "print(' '.join(str(k.pid) for k in kids), flush=True)\n"
          "time.sleep(60)\n")


@pytest.fixture
def process_tree() -> Iterator[tuple[int, list[int]]]:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        children = [int(p) for p in parent.stdout.readline().split()]
        yield parent.pid, children
    finally:
        for pid in procstat.tree(parent.pid)[1:]:
            os.kill(pid, signal.SIGKILL)
        parent.kill()
        parent.wait(timeout=10)


def _vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def test_the_tree_is_the_root_and_every_descendant(process_tree: tuple[int, list[int]]) -> None:
    root, children = process_tree
    pids = procstat.tree(root)
    assert pids[0] == root
    assert sorted(pids[1:]) == sorted(children)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmRSS is Linux's")
def test_resident_memory_is_the_sum_of_vmrss_in_kib(process_tree: tuple[int, list[int]]) -> None:
    root, _ = process_tree
    pids = procstat.tree(root)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)  # nothing moves while both are read
    try:
        assert procstat.rss_kib(pids) == sum(_vm_rss_kib(pid) for pid in pids)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    assert procstat.rss_kib(pids) >= 2 * 32 * 1024  # the two blocks written to


def test_cpu_time_is_summed_over_the_tree(process_tree: tuple[int, list[int]]) -> None:
    root, children = process_tree
    each = [procstat.cpu_seconds([pid]) for pid in children]
    assert all(s is not None and s > 0 for s in each)
    total = procstat.cpu_seconds(procstat.tree(root))
    assert total is not None and total >= sum(s for s in each if s is not None)


def test_a_vanished_process_counts_as_nothing(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=10)
    assert procstat.tree(gone.pid) == []
    assert procstat.rss_kib([gone.pid]) is None
    assert procstat.cpu_seconds([gone.pid]) is None
    me = os.getpid()
    assert procstat.rss_kib([gone.pid, me]) == procstat.rss_kib([me])
    pid_file = tmp_path / "switch.pid"
    pid_file.write_text(f"{gone.pid}\n")
    assert procstat.read_pid_file(pid_file) is None
    pid_file.write_text(f"{me}\n")
    assert procstat.read_pid_file(pid_file) == me
    pid_file.write_text("not a pid\n")
    assert procstat.read_pid_file(pid_file) is None
    assert procstat.read_pid_file(tmp_path / "missing.pid") is None


def test_the_machine_busy_time_is_part_of_its_total_and_grows_with_work() -> None:
    busy_before, total_before = procstat.machine_cpu()
    sum(range(3_000_000))
    busy_after, total_after = procstat.machine_cpu()
    assert 0 <= busy_before <= total_before
    assert busy_after > busy_before and total_after > total_before
    assert 0 <= (busy_after - busy_before) / (total_after - total_before) <= 1
