"""The files a serving Switch keeps in its state directory for other processes to read: the pid
of the process ``switch reload`` signals, and each serving process's last reload result.

``switch serve`` (one process) and ``switch serve --workers N`` (the supervisor) write the pid
file; every process that serves (the single one, or each worker) writes its own reload status
file matching ``RELOAD_STATUS_GLOB``, and ``switch reload`` waits for all of them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

#: In the state directory: the serving process's pid (the supervisor's, with workers).
PID_FILE = "switch.pid"
#: The last reload result of a single serving process.
RELOAD_STATUS = "last-reload.json"
#: Every serving process's reload status file.
RELOAD_STATUS_GLOB = "last-reload*.json"


def reload_status_name(worker: int | None) -> str:
    """The reload status file of the single process (``worker`` None) or of worker ``worker``."""
    return RELOAD_STATUS if worker is None else f"last-reload-{worker}.json"


def write_pid(state_dir: Path) -> Path:
    """Record this process's pid; returns the file."""
    path = state_dir / PID_FILE
    path.write_text(f"{os.getpid()}\n")
    return path


def write_reload_status(state_dir: Path, name: str, status: Mapping[str, object]) -> None:
    """Replace the reload status file ``name`` with ``status`` as JSON, atomically (a reader
    never sees half a file)."""
    path = state_dir / name
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status, indent=2))
    tmp.replace(path)
