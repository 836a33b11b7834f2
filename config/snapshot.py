"""Snapshots of the configuration in force, for ``switch serve --workers N``.

Theory of operation: the supervisor owns the configuration its workers run, as nginx's master
does. At start, and on every SIGHUP before it forwards the signal, it loads the configuration
from disk and copies every file it names (the config file, tenant files, the server certificate,
key or keystore and its password file, organisation CAs and CRLs, upstream CAs) into a new
snapshot directory under ``STATE_DIR/config-snapshots/``, then loads the copies (``FileSource``)
to prove they hold a whole, valid configuration. ``current.json`` there names the last good
snapshot, its generation and the result of the last attempt.

Workers load the snapshot ``current.json`` names, at start and on reload; they never read the
operator's files themselves. So a worker the supervisor restarts runs exactly what its siblings
run, even when the files on disk were edited since (and not reloaded) or no longer load; and a
reload either applies to every worker or to none. Snapshots hold private keys: the directory is
mode 0700 and every copy 0600.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

import attrs

from config.errors import ConfigError, Problem
from config.load import FileSource, load_config
from config.model import SwitchConfig

SNAPSHOTS_DIR = "config-snapshots"
CURRENT = "current.json"
MANIFEST = "manifest.json"


@attrs.frozen
class Current:
    """What ``current.json`` says: the last good snapshot and the last attempt's result."""

    generation: int
    snapshot: str
    ok: bool
    problems: tuple[Problem, ...] = ()


def referenced_files(config: SwitchConfig) -> list[Path]:
    """Every file ``config`` was read from or names, each once."""
    tls = config.tls
    files = [config.path, *(t.source for t in config.tenants.values() if t.source is not None),
             *(p for p in (tls.cert_file, tls.key_file, tls.keystore, tls.keystore_password_file)
               if p is not None),
             *(p for t in config.tenants.values() for p in (*t.organisation_cas,
                                                             *t.organisation_crls,
                                                             *t.organisation_certs)),
             *(t.upstream_ca for t in config.tenants.values() if t.upstream_ca is not None)]
    return list(dict.fromkeys(files))


def snapshots_dir(state_dir: Path) -> Path:
    return state_dir / SNAPSHOTS_DIR


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)


def load_snapshot(path: Path, snapshot: Path) -> SwitchConfig:
    """The configuration at ``path`` as the snapshot directory ``snapshot`` holds it."""
    try:
        manifest = json.loads((snapshot / MANIFEST).read_text())
        copies = {Path(original): snapshot / copy for original, copy in manifest["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError([Problem(snapshot / MANIFEST, "", f"cannot read the configuration "
                                   f"snapshot: {exc}")]) from exc
    return load_config(path, source=FileSource(copies))


def take_snapshot(path: Path, state_dir: Path, generation: int) -> tuple[SwitchConfig, Path]:
    """Copy the configuration at ``path`` into a new snapshot directory and load it from there;
    the configuration and the directory. Raises ``ConfigError`` (and leaves no snapshot) when it
    does not load, from disk or from the copies (a file edited while it was copied)."""
    config = load_config(path)
    root = snapshots_dir(state_dir)
    _private_dir(root)
    name = f"gen-{generation}-{secrets.token_hex(4)}"
    tmp, final = root / f".{name}.tmp", root / name
    try:
        _private_dir(tmp)
        _private_dir(tmp / "files")
        files: dict[str, str] = {}
        for index, original in enumerate(referenced_files(config)):
            copy = Path("files") / f"{index}-{original.name}"
            fd = os.open(tmp / copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(original.read_bytes())
            files[str(original)] = str(copy)
        (tmp / MANIFEST).write_text(json.dumps({"config": str(config.path), "files": files},
                                               indent=2))
        tmp.rename(final)
        return load_snapshot(config.path, final), final
    except OSError as exc:
        _discard(tmp, final)
        raise ConfigError([Problem(path, "", f"cannot snapshot the configuration: {exc}")]) from exc
    except BaseException:
        _discard(tmp, final)
        raise


def _discard(*directories: Path) -> None:
    for directory in directories:
        shutil.rmtree(directory, ignore_errors=True)


def write_current(state_dir: Path, current: Current) -> None:
    """Record ``current`` (atomically), then drop snapshots other than it and the one before."""
    root = snapshots_dir(state_dir)
    _private_dir(root)
    try:
        before = read_current(state_dir).snapshot
    except ConfigError:
        before = ""
    tmp = root / f".{CURRENT}.tmp"
    tmp.write_text(json.dumps({
        "generation": current.generation, "snapshot": current.snapshot, "ok": current.ok,
        "problems": [attrs.asdict(p) | {"file": str(p.file)} for p in current.problems],
    }, indent=2))
    tmp.replace(root / CURRENT)
    for old in root.glob("gen-*"):
        if old.name not in (current.snapshot, before):
            shutil.rmtree(old, ignore_errors=True)


def read_current(state_dir: Path) -> Current:
    path = snapshots_dir(state_dir) / CURRENT
    try:
        data = json.loads(path.read_text())
        problems = tuple(Problem(Path(p["file"]), p["key"], p["message"], p["severity"])
                         for p in data["problems"])
        return Current(int(data["generation"]), str(data["snapshot"]), bool(data["ok"]), problems)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError([Problem(path, "", f"cannot read the configuration snapshot "
                                   f"record: {exc}")]) from exc


def load_current(path: Path, state_dir: Path) -> tuple[SwitchConfig, int]:
    """For a worker's reload: the configuration in the supervisor's current snapshot and its
    generation, or ``ConfigError`` with the problems that made the supervisor's last attempt
    fail."""
    current = read_current(state_dir)
    if not current.ok:
        raise ConfigError(list(current.problems))
    return load_snapshot(path, snapshots_dir(state_dir) / current.snapshot), current.generation


def remove_all(state_dir: Path) -> None:
    """Drop every snapshot (the supervisor, stopping; they hold private keys)."""
    shutil.rmtree(snapshots_dir(state_dir), ignore_errors=True)
