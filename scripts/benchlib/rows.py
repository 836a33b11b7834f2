"""What every bench section returns (``Row``) and is given (``Options``)."""

from __future__ import annotations

from pathlib import Path

import attrs


@attrs.frozen
class Row:
    measure: str
    switch: str
    reference: str
    ratio: float | None = None
    budget: str = ""
    met: bool | None = None
    note: str = ""


@attrs.frozen
class Options:
    quick: bool
    work: Path
    #: Sessions of the fleet sections (f, g, h); 0: their default (50,000; --quick 1,500).
    fleet: int = 0


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None
