"""Parsing of durations ("500ms", "10s", "1h30m", "30d") and sizes ("64KiB", "1MiB")."""

from __future__ import annotations

import re

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_SIZE = re.compile(r"(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3,
               "KB": 1000, "MB": 1000**2, "GB": 1000**3}


def parse_duration(value: object) -> float:
    """Seconds from a duration string or a bare non-negative number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as \"10s\" or \"30d\", not {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a duration cannot be negative: {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as \"10s\" or \"30d\", not {value!r}")
    text = value.strip()
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError(
            f"bad duration {value!r}: use a number with a unit (ms, s, m, h, d), e.g. \"10s\", \"1h30m\""
        )
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
    raise ValueError(f"bad size {value!r}: use bytes or a unit (KiB, MiB, GiB), e.g. \"64KiB\"")
