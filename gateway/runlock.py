"""One serving Switch per state directory: a lock file held for the serving process's lifetime.

Theory of operation. ``switch serve`` (the single process, or the supervisor of ``--workers``)
takes an exclusive ``flock`` on ``STATE_DIR/switch.lock`` before it touches anything else in the
state directory, and writes its pid into the file. The kernel releases the lock when the process
ends, however it ends (``kill -9`` included), so a stale lock cannot exist and a stale pid file
never matters. A second ``switch serve`` on the same state directory fails to take the lock and
stops at once, naming the holder's pid from the file, before it could overwrite the running one's
pid file, snapshots or reload status. ``switch restore`` and ``switch store copy`` take the same
lock: a store is never replaced or moved under a running Switch, and none starts meanwhile.

The descriptor is not inherited by child processes (Python's default), so workers never hold the
lock and one orphaned by a killed supervisor cannot keep a new supervisor out.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

import attrs

LOCK_FILE = "switch.lock"


class AlreadyRunning(Exception):
    """Another process holds the state directory's lock."""

    def __init__(self, state_dir: Path, pid: int | None) -> None:
        holder = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(f"Switch is already running on {state_dir} ({holder})")
        self.pid = pid


@attrs.define(eq=False)
class RunLock:
    """The held lock; ``release`` (or the process's end) lets the next one take it."""

    path: Path
    fd: int | None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None


def holder(state_dir: Path) -> int | None:
    """The pid written in the lock file (whoever holds or last held it), or None."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((state_dir / LOCK_FILE).read_text().split()[0])
    return None


def acquire(state_dir: Path) -> RunLock:
    """Take the state directory's lock without waiting (creating the directory, 0700, if it is
    missing) and record this process's pid in it; ``AlreadyRunning`` when another process has
    it."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyRunning(state_dir, holder(state_dir)) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return RunLock(path, fd)
