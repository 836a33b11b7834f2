"""Configuration problems: every one found is reported together, with file and key."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import attrs

Severity = Literal["error", "warning"]


@attrs.frozen
class Problem:
    file: Path
    key: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}" if self.key else str(self.file)
        return f"{where}: {self.severity}: {self.message}"


class ConfigError(Exception):
    """The configuration does not load. ``problems`` holds every error (and warning) found."""

    reason = "config_invalid"

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


def format_problems(problems: list[Problem]) -> str:
    return "\n".join(str(p) for p in problems)
