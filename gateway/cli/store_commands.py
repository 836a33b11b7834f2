"""Commands on the store as a whole: ``backup`` and ``restore`` (SQLite), ``store migrate`` and
``store copy`` (SQLite to PostgreSQL), and what ``serve`` checks before it starts: that no other
Switch serves this state directory (``gateway.runlock``) and that the store is there.

A store is created on purpose only (``init``, ``serve --create-store``, ``restore``); ``restore``
and ``store copy`` need the deployment stopped, and hold its run lock meanwhile so none starts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from urllib.parse import urlsplit

from config.model import SwitchConfig
from config.tls_material import read_password_file
from gateway.cli.common import load, now
from gateway.cli.exits import EXIT_OK, CliExit
from gateway.runlock import AlreadyRunning, RunLock, acquire

#: Where docs/operations.md says how to back up and restore PostgreSQL.
POSTGRES_BACKUPS = 'docs/operations.md, "Backups"'


def hold_state_dir(cfg: SwitchConfig) -> RunLock:
    """The state directory's run lock, or ``already_running`` naming the pid that holds it."""
    try:
        return acquire(cfg.state_dir)
    except AlreadyRunning as exc:
        raise CliExit("already_running", str(exc)) from exc


def check_store(cfg: SwitchConfig, *, create: bool) -> None:
    """The store is there (or is created, with ``create``), opens, and its schema is one this
    Switch runs: otherwise the store's one-line error (``store_missing``, ``store_error``, ...)
    stops ``serve`` before any listener or worker starts."""
    from enroll.store import open_store

    open_store(cfg, create=create).close()


def _sqlite_only(cfg: SwitchConfig, command: str, instead: str) -> None:
    if cfg.store.url is not None:
        raise CliExit("unsupported_store", f"{command} is for a SQLite store; this deployment's "
                      f"store is PostgreSQL: {instead} ({POSTGRES_BACKUPS})")


def cmd_backup(args: argparse.Namespace) -> int:
    from enroll.store import backup

    cfg = load(args)
    _sqlite_only(cfg, "switch backup", "back it up with pg_dump, and keep the issuer key "
                 "passphrase file apart from the dump")
    manifest = backup.backup(cfg.state_dir / "switch.db", Path(args.file), now=now())
    return _report(args, "backed up", Path(args.file), backup.summary(manifest))


def cmd_restore(args: argparse.Namespace) -> int:
    from enroll.store import backup, open_store

    cfg = load(args)
    _sqlite_only(cfg, "switch restore", "restore it with pg_restore into an empty database")
    lock = hold_state_dir(cfg)  # refused while a Switch serves this state directory
    try:
        manifest, aside = backup.restore(Path(args.file), cfg.state_dir / "switch.db",
                                         replace=args.replace, now=now())
        open_store(cfg).close()  # migrates a backup of an older schema; marks the deployment
    finally:
        lock.release()
    summary = backup.summary(manifest)
    if aside is not None:
        summary["replaced_store_moved_to"] = str(aside)
    return _report(args, "restored", Path(args.file), summary)


def _report(args: argparse.Namespace, done: str, file: Path, summary: dict[str, object]) -> int:
    if getattr(args, "json", False):
        print(json.dumps({"file": str(file), **summary}, indent=2))
        return EXIT_OK
    print(f"{done} {file}: {summary['certificates']} certificates, {summary['keys']} keys, "
          f"{summary['issuers']} issuers, {summary['audit_entries']} audit entries "
          f"(schema version {summary['schema_version']}, taken {summary['created_at']})")
    if "replaced_store_moved_to" in summary:
        print(f"  what was there (store, issuer keys) is in {summary['replaced_store_moved_to']}")
    return EXIT_OK


def cmd_store_migrate(args: argparse.Namespace) -> int:
    from enroll.store import open_store

    cfg = load(args)
    store = open_store(cfg, migrate=True)
    try:
        before, after, where = store.opened_at_version, store.schema_version(), store.describe()
    finally:
        store.close()
    if before == after:
        print(f"{where}: schema version {after}, current; nothing to do")
    else:
        print(f"{where}: migrated from schema version {before} to {after}")
    return EXIT_OK


def _secret_file(path: str, option: str) -> bytes:
    try:
        data = read_password_file(Path(path))
    except ValueError as exc:
        raise CliExit("usage", f"{option}: {exc}") from exc
    if not data:
        raise CliExit("usage", f"{option}: {path} is empty")
    return data


def cmd_store_copy(args: argparse.Namespace) -> int:
    from enroll.store.copy import copy_deployment

    cfg = load(args)
    if cfg.store.url is not None:
        raise CliExit("unsupported_store", "this deployment's store is PostgreSQL already: "
                      "store copy moves a SQLite deployment into PostgreSQL")
    parts = urlsplit(args.to)
    if parts.scheme not in ("postgresql", "postgres"):
        raise CliExit("usage", f"--to must be a postgresql:// URL, not {args.to!r}")
    if parts.password is not None or "password=" in parts.query:
        raise CliExit("usage", "--to must not hold a password (it would show in the process "
                      "list and the shell's history): use --password-file")
    password = (_secret_file(args.password_file, "--password-file").decode()
                if args.password_file else None)
    passphrase = _secret_file(args.passphrase_file, "--passphrase-file")
    lock = hold_state_dir(cfg)  # the source is stopped and stays so while it is copied
    try:
        source, target, report = copy_deployment(
            cfg, args.to, password=password, passphrase=passphrase,
            passphrase_source=f"the passphrase in {args.passphrase_file}")
    finally:
        lock.release()
    rows = report.rows
    print(f"copied {source} to {target}: {rows['provisioning_keys']} keys, "
          f"{rows['certificates']} certificates, {rows['pending_requests']} requests, "
          f"{report.issuers} issuers (keys sealed under the passphrase), {rows['operators']} "
          f"operators, {report.audit_entries} audit entries (chain verified, head "
          f"{report.audit_head[:16]}...)")
    print("Next, on every host: in the config's [store] set url, password_file and "
          "issuer_key_passphrase_file (docs/operations.md, \"Several hosts\"), then switch serve")
    return EXIT_OK
