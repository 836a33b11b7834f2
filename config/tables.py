"""Reading one TOML table of the configuration: typed getters that collect problems (with file
and dotted key) instead of raising, the listen-address form, and where the files a configuration
names are read from (``FileSource``: in place, or from a snapshot)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs

from config.durations import parse_duration, parse_size
from config.errors import Problem
from config.model import Listener

T = TypeVar("T")
#: What ``Table.raw`` returns for a key the table does not hold.
MISSING: Any = object()


@attrs.frozen
class FileSource:
    """Where the loader reads the files a configuration names.

    By default, where they are. ``copies`` (original absolute path -> copy) makes the loader read
    every file, the config file itself and the tenant files included, from a snapshot instead
    (``config.snapshot``): the model then names the copies, except ``SwitchConfig.path``,
    ``Tenant.source``, ``state_dir``, ``tenants_dir`` and the ``[store]`` files (read once, when a
    process starts, like the store itself), which keep naming the originals. Any other file the
    snapshot does not hold is a problem, never read from its original place.
    """

    copies: Mapping[Path, Path] | None = None

    def has(self, path: Path) -> bool:
        return self.copies is None or path in self.copies

    def locate(self, path: Path) -> Path:
        if self.copies is None:
            return path
        return self.copies.get(path, path)

    def tenant_files(self, directory: Path) -> list[Path]:
        if self.copies is None:
            return sorted(directory.glob("*.toml"))
        return sorted(p for p in self.copies if p.parent == directory and p.suffix == ".toml")


#: Files read where they are (no snapshot).
IN_PLACE = FileSource()


class Table:
    """One TOML table being read: typed getters that record problems instead of raising, and
    ``finish()`` that reports keys nobody asked for."""

    def __init__(self, data: Mapping[str, Any], file: Path, prefix: str, problems: list[Problem],
                 source: FileSource = FileSource()) -> None:
        self.data = data
        self.file = file
        self.prefix = prefix
        self.problems = problems
        self.source = source
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        if not name:
            return self.prefix
        if name.startswith("["):
            return f"{self.prefix}{name}"
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, message: str) -> None:
        self.problems.append(Problem(self.file, self.key(name), message))

    def raw(self, name: str, required: bool = False) -> Any:
        self.seen.add(name)
        if name not in self.data:
            if required:
                self.error(name, "is required")
            return MISSING
        return self.data[name]

    def typed(self, name: str, kind: type[T] | tuple[type, ...], what: str, default: T,
              required: bool = False) -> T:
        value = self.raw(name, required)
        if value is MISSING:
            return default
        if isinstance(value, bool) and kind is not bool:
            self.error(name, f"expected {what}, got a boolean")
            return default
        if not isinstance(value, kind):
            self.error(name, f"expected {what}, got {tname(value)}")
            return default
        return value  # type: ignore[return-value]

    def string(self, name: str, default: str | None = None, required: bool = False) -> str | None:
        return self.typed(name, str, "a string", default, required)

    def boolean(self, name: str, default: bool) -> bool:
        return self.typed(name, bool, "true or false", default)

    def integer(self, name: str, default: int, minimum: int = 0) -> int:
        value = self.typed(name, int, "an integer", default)
        if value < minimum:
            self.error(name, f"must be at least {minimum}")
            return default
        return value

    def strings(self, name: str, required: bool = False) -> tuple[str, ...]:
        value = self.raw(name, required)
        if value is MISSING:
            return ()
        if not isinstance(value, list):
            self.error(name, f"expected a list of strings, got {tname(value)}")
            return ()
        out: list[str] = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                out.append(item)
            else:
                self.error(f"{name}[{i}]", f"expected a string, got {tname(item)}")
        return tuple(out)

    def convert(self, name: str, parse: Callable[[Any], T], default: T) -> T:
        value = self.raw(name)
        if value is MISSING:
            return default
        try:
            return parse(value)
        except ValueError as exc:
            self.error(name, str(exc))
            return default

    def duration(self, name: str, default: float) -> float:
        return self.convert(name, parse_duration, default)

    def size(self, name: str, default: int) -> int:
        return self.convert(name, parse_size, default)

    def path(self, name: str, required: bool = False) -> Path | None:
        value = self.string(name, required=required)
        if value is not None and not value.strip():
            self.error(name, "must name a file or directory, not an empty string")
            return None
        return self.resolve(value) if value else None

    def resolve(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.file.parent / path).resolve()

    def located(self, name: str, path: Path) -> Path:
        """``path`` (a file the config names, at ``name``) where the source holds it."""
        if not self.source.has(path):
            self.error(name, f"{path} is not in the configuration snapshot (the configuration "
                       "changed while the snapshot was taken)")
            return path
        return self.source.locate(path)

    def table(self, name: str, required: bool = False) -> Table | None:
        value = self.raw(name, required)
        if value is MISSING:
            return None
        if not isinstance(value, dict):
            self.error(name, f"expected a table, got {tname(value)}")
            return None
        return Table(value, self.file, self.key(name), self.problems, self.source)

    def finish(self) -> None:
        for name in self.data:
            if name not in self.seen:
                self.error(name, "unknown key")


def tname(value: object) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def parse_listen(value: object) -> tuple[str, int]:
    if not isinstance(value, str):
        raise ValueError(f"expected \"host:port\", got {tname(value)}")
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\s\[\]]+):(\d{1,5})", value)
    if not match:
        raise ValueError(f"bad listen address {value!r}: use \"host:port\" or \"[v6-address]:port\"")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if port > 65535:
        raise ValueError(f"bad port {port} in {value!r}: ports go from 0 to 65535")
    return host, port


def listener(table: Table | None, default: Listener) -> Listener:
    if table is None:
        return default
    host, port = table.convert("listen", parse_listen, (default.host, default.port))
    return Listener(host, port, table.boolean("enabled", default.enabled))


def positive(t: Table, name: str, default: float) -> float:
    """A duration that must be longer than zero."""
    value = t.duration(name, default)
    if value <= 0:
        t.error(name, "must be longer than zero")
        return default
    return value
