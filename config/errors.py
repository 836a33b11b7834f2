"""Configuration problems: every one found is reported together, with file and key.

A ``Problem`` is a value (file, dotted key, message, severity); ``ConfigError`` carries all the
problems of one load. ``ConfigError`` is a ``ValueError`` so that callers written against the
file readers' ``ValueError`` keep working.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import attrs

if TYPE_CHECKING:
    from config.model import SwitchConfig

Severity = Literal["error", "warning"]


@attrs.frozen
class Problem:
    """One thing wrong with the configuration: ``key`` is dotted (``tenants.demo.hostnames[1]``),
    empty when the problem is with the whole file."""

    file: Path
    key: str
    message: str
    severity: Severity = "error"

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def describe(self, base: Path | None = None) -> str:
        """``file: key: severity: message``, the file shown relative to ``base`` when under it."""
        file = _display(self.file, base)
        where = f"{file}: {self.key}" if self.key else file
        return f"{where}: {self.severity}: {self.message}"

    def __str__(self) -> str:
        return self.describe()


def _display(file: Path, base: Path | None) -> str:
    if base is not None:
        try:
            return os.fspath(file.relative_to(base))
        except ValueError:
            pass
    return os.fspath(file)


class ConfigError(ValueError):
    """The configuration does not load. ``problems`` holds every error (and warning) found;
    ``partial``, when the loader could build one, is the configuration as far as it could be
    read (defaults where a value was wrong), for ``config check`` to warn about: never run it."""

    reason = "config_invalid"

    def __init__(self, problems: list[Problem], *, partial: SwitchConfig | None = None) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems
        self.partial = partial

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.is_error]


def format_problems(problems: Iterable[Problem], base: Path | None = None) -> str:
    """One line per problem, ``switch.toml: tenants.demo.hostnames[0]: error: ...``; file names
    are shown relative to ``base`` (for example the config's directory) when under it."""
    return "\n".join(p.describe(base) for p in problems)
