"""Parsing of durations ("500ms", "10s", "1h30m", "30d") and sizes ("64KiB", "1MiB").

Pure functions from a TOML value to float seconds or int bytes; ``ValueError`` with a message fit
for an operator otherwise. A bare TOML number is seconds (durations) or bytes (sizes).
"""

from __future__ import annotations

import math
import re

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_SIZE = re.compile(r"(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3,
               "KB": 1000, "MB": 1000**2, "GB": 1000**3}
_DURATION_HINT = 'use a number with a unit (ms, s, m, h, d), e.g. "10s", "1h30m", or a bare number of seconds'


def parse_duration(value: object) -> float:
    """Seconds from a duration string or a bare non-negative number of seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a duration such as \"10s\" or \"30d\", not {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"a duration must be a finite number, not {value!r}")
        if value < 0:
            raise ValueError(f"a duration cannot be negative: {value!r}")
        return float(value)
    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f"a duration cannot be negative: {value!r}")
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError(f"bad duration {value!r}: {_DURATION_HINT}")
    return total


def parse_size(value: object) -> int:
    """Bytes from a size string ("64KiB", "1MiB") or a bare non-negative integer."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as \"64KiB\", not {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative: {value!r}")
        return value
    if isinstance(value, str) and (match := _SIZE.fullmatch(value.strip())):
        return int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    if isinstance(value, str) and value.strip().startswith("-"):
        raise ValueError(f"a size cannot be negative: {value!r}")
    raise ValueError(f"bad size {value!r}: use whole bytes or a unit (KiB, MiB, GiB), e.g. \"64KiB\"")
