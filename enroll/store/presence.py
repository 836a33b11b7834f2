"""Whether a deployment has been initialised: the marker that makes a missing store an error.

Theory of operation. A store is created on purpose only (``switch init``, ``switch serve
--create-store``, ``switch restore``); every other way of opening one finds it or fails with
``StoreMissing``. On top of that, a deployment that once had a store keeps a marker in its state
directory, ``STATE_DIR/initialised.json``, written when a store is created there or first opened
from there (so deployments older than the marker get it on their next start). While the marker
is there, a store that is gone (``switch.db`` moved away, a PostgreSQL database emptied) is never
replaced by an empty one, not even with ``--create-store``: all its keys and certificate records
would be lost without a word. The operator restores it, or removes the marker to start afresh on
purpose.

The marker is JSON (when it was written, which store it saw) for people; only its presence
counts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from pathlib import Path

MARKER = "initialised.json"


def marker_path(state_dir: Path) -> Path:
    return state_dir / MARKER


def initialised(state_dir: Path) -> bool:
    return marker_path(state_dir).exists()


def mark(state_dir: Path, where: str, *, now: dt.datetime | None = None) -> None:
    """Record that ``state_dir``'s deployment has its store at ``where`` (no password). Written
    once; a marker already there is kept (it says since when). Nothing is written where the
    state directory does not exist (a command run on a host that only reaches a shared store)."""
    if not state_dir.is_dir():
        return
    path = marker_path(state_dir)
    if path.exists():
        return
    when = (now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds")
    text = json.dumps({"initialised_at": when, "store": where}, indent=2) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)


def since(state_dir: Path) -> str:
    """When the marker says the deployment was initialised ("" when unreadable)."""
    try:
        return str(json.loads(marker_path(state_dir).read_text()).get("initialised_at", ""))
    except (OSError, ValueError, AttributeError):
        return ""
