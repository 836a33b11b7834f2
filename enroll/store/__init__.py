"""The store: every piece of Switch's state behind one interface (``Store``), on one of two
engines, chosen by ``[store]`` in the configuration: SQLite in ``state_dir`` (the default) or
PostgreSQL shared by any number of hosts. Only this package speaks SQL (import-linter enforces
it: nothing else may import ``sqlite3`` or ``psycopg``). See docs/store.md.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from config.model import SwitchConfig
from config.tls_material import read_password_file
from enroll.errors import StoreError, StoreMissing
from enroll.store import presence
from enroll.store.base import ChangeFeed, Store
from enroll.store.records import (
    SERVERKEYGEN,
    SIMPLEENROLL,
    AuditPage,
    AuditQuery,
    CertificateRecord,
    ConsoleSession,
    IssuerFactory,
    IssuerListing,
    PendingRequest,
    TenantTrustInputs,
    TrustInputs,
)
from enroll.store.schema import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION", "SERVERKEYGEN", "SIMPLEENROLL", "AuditPage", "AuditQuery",
    "CertificateRecord", "ChangeFeed", "ConsoleSession", "IssuerFactory", "IssuerListing", "PendingRequest",
    "Store", "TenantTrustInputs", "TrustInputs", "describe_store", "open_sqlite", "open_store",
]


def open_store(config: SwitchConfig, *, create: bool = False, migrate: bool = False) -> Store:
    """The store ``config`` names, opened. ``StoreError`` (or ``StoreUnavailable``) with one
    line saying what is wrong.

    A store that is not there is ``StoreMissing`` unless ``create`` (``switch init``, ``switch
    serve --create-store``), and even then when the deployment was initialised (its state
    directory's marker, ``enroll.store.presence``): a lost store is restored, never silently
    replaced by an empty one. SQLite is migrated to the current schema when opened; a
    PostgreSQL store older than this Switch only with ``migrate`` (``switch store migrate``:
    several hosts share it, so it changes when an operator says so). A store newer than this
    Switch is refused."""
    state_dir, where = config.state_dir, describe_store(config)
    may_create = create and presence.initialised(state_dir, where) is None
    try:
        store = _open(config, create=may_create, migrate=migrate)
    except StoreMissing as exc:
        raise StoreMissing(_missing(exc.message, config, where, create)) from None
    presence.mark(state_dir, where)
    return store


def describe_store(config: SwitchConfig) -> str:
    """Where ``config``'s store is, as the marker names it: the SQLite file's absolute path, or
    ``postgresql://user@host:port/database`` (never a password)."""
    if config.store.url is None:
        return str((config.state_dir / "switch.db").resolve())
    from enroll.store.postgres import describe_url

    return describe_url(config.store.url)


def _open(config: SwitchConfig, *, create: bool, migrate: bool) -> Store:
    settings = config.store
    if settings.url is None:
        return _open_sqlite(config.state_dir / "switch.db", create=create)
    from enroll.store.postgres import PostgresStore

    password = None
    if settings.password_file is not None:
        password = _secret(settings.password_file, "[store] password_file").decode()
    if settings.issuer_key_passphrase_file is None:
        raise StoreError("a PostgreSQL store needs [store] issuer_key_passphrase_file")
    passphrase = _secret(settings.issuer_key_passphrase_file,
                         "[store] issuer_key_passphrase_file")
    return PostgresStore.open(settings.url, password=password, passphrase=passphrase,
                              passphrase_source=f"the passphrase in "
                                                f"{settings.issuer_key_passphrase_file}",
                              create=create, migrate=migrate)


def _missing(problem: str, config: SwitchConfig, where: str, create: bool) -> str:
    """What to do about a store that is not there, after ``problem`` (one line)."""
    since = presence.initialised(config.state_dir, where)
    if since is not None:
        marker = presence.marker_path(config.state_dir)
        refused = "; --create-store never replaces it" if create else ""
        return (f"{problem}, but it was this deployment's store{f' since {since}' if since else ''}"
                f" ({marker}): restore it (switch restore FILE, or the database's backup)"
                f"{refused}; to start afresh with an empty store on purpose, remove {marker} "
                "and run switch serve --create-store")
    if config.store.url is None:
        return (f"{problem}: switch init makes a new deployment with its store, switch serve "
                "--create-store creates an empty store here, switch restore FILE restores one")
    return (f"{problem}: switch serve --create-store creates an empty one, switch store copy "
            "moves a SQLite deployment into it")


def open_sqlite(path: Path, *, create: bool = False) -> Store:
    """The SQLite store at ``path`` (``StoreMissing`` when there is none and not ``create``),
    owner-only whatever the umask: the directory 0700, ``switch.db`` and SQLite's ``-wal`` and
    ``-shm`` files 0600."""
    store = _open_sqlite(path, create=create)
    presence.mark(path.parent, str(path.resolve()))
    return store


def _open_sqlite(path: Path, *, create: bool) -> Store:
    from enroll.store.sqlite import SqliteStore, has_store

    if not has_store(path) and not create:
        raise StoreMissing(f"there is no store at {path}")
    _owner_only(path)
    store = SqliteStore.open(path)
    _owner_only(path)  # -wal and -shm made by an older Switch under a looser umask
    return store


def _secret(path: Path, what: str) -> bytes:
    try:
        data = read_password_file(path)
    except ValueError as exc:
        raise StoreError(f"{what}: {exc}") from exc
    if not data:
        raise StoreError(f"{what}: {path} is empty")
    return data


def _owner_only(path: Path) -> None:
    """Create the state directory (0700) and the database file (0600) if missing, and make the
    files SQLite keeps beside it 0600. SQLite creates ``-wal`` and ``-shm`` with the mode of the
    database file, so a database that is 0600 before SQLite first opens it keeps them private
    (opening alone would make it under the umask, 0644, and chmod it only after the WAL files
    exist)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            file.chmod(0o600)
