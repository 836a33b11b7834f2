"""Whether a deployment's store has existed: the marker that makes a missing store an error.

Theory of operation. A store is created on purpose only (``switch init``, ``switch serve
--create-store``, ``switch restore``, ``switch store copy``); every other way of opening one finds
it or fails with ``StoreMissing``. On top of that, the state directory keeps a marker,
``STATE_DIR/initialised.json``, naming each store this deployment has had (the SQLite file, or a
PostgreSQL database by ``postgresql://user@host:port/database``), written when the store is
created or first opened from here (so deployments older than the marker get it on their next
start). A store the marker names that is gone (``switch.db`` moved away, a database emptied) is
never replaced by an empty one, not even with ``--create-store``: all its keys and certificate
records would be lost without a word. The operator restores it, or removes the marker to start
afresh on purpose. A store the marker does not name (the PostgreSQL database a deployment moves
to) may be created.

The marker is JSON for people (since when each store was seen).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import tempfile
from pathlib import Path

MARKER = "initialised.json"


def marker_path(state_dir: Path) -> Path:
    return state_dir / MARKER


def _stores(state_dir: Path) -> dict[str, str]:
    try:
        stores = json.loads(marker_path(state_dir).read_text()).get("stores", {})
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, AttributeError):
        # Unreadable: it is there, so something was initialised here; refuse to guess what.
        return {"*": ""}
    return {str(k): str(v) for k, v in stores.items()} if isinstance(stores, dict) else {"*": ""}


def initialised(state_dir: Path, where: str) -> str | None:
    """Since when the marker says ``where`` was this deployment's store ("" when it cannot say),
    or None when it never was."""
    stores = _stores(state_dir)
    return stores.get(where, stores.get("*"))


def mark(state_dir: Path, where: str, *, now: dt.datetime | None = None) -> None:
    """Record that ``where`` (no password) is a store of ``state_dir``'s deployment. Nothing is
    written where the state directory does not exist (a command run on a host that only reaches
    a shared store), or when the marker already names it."""
    if not state_dir.is_dir() or initialised(state_dir, where) is not None:
        return
    stores = _stores(state_dir)
    stores[where] = (now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds")
    text = json.dumps({"stores": stores}, indent=2, sort_keys=True) + "\n"
    path = marker_path(state_dir)
    # A file of this process's own, renamed into place: processes opening the store at the same
    # moment each write a whole marker, and one of them is the one that stays.
    fd, tmp = tempfile.mkstemp(prefix=f".{MARKER}.", dir=state_dir)  # mode 0600
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
