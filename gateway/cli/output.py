"""How the command line prints: ``--json`` or text, plain tables, times in UTC."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs


def emit(args: argparse.Namespace, payload: Any, text: Callable[[], str]) -> None:
    """Print ``payload`` as JSON with ``--json``, else the ``text`` it renders to."""
    if getattr(args, "json", False):
        print(json.dumps(payload, indent=2, sort_keys=True, default=_json_default))
    else:
        print(text())


def _json_default(value: object) -> object:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "value"):  # enums
        return value.value
    raise TypeError(f"cannot encode {type(value).__name__}")


def as_dict(record: object) -> dict[str, Any]:
    """An attrs record's fields (not recursed), datetimes and enums made plain."""
    return {k: plain(v) for k, v in attrs.asdict(record, recurse=False).items()}  # type: ignore[arg-type]


def plain(value: object) -> object:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if hasattr(value, "value") and not isinstance(value, int | str):
        return value.value
    return value


def when(value: object) -> str:
    """A time (datetime or Unix seconds) as ``YYYY-MM-DD HH:MM:SSZ``; ``-`` for none."""
    if value is None:
        return "-"
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, int | float):
        return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return str(value)


def state(value: object) -> str:
    return str(getattr(value, "value", value))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, no trailing spaces; ``(none)`` for no rows."""
    if not rows:
        return "(none)"
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)
