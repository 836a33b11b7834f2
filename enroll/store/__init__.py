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
from enroll.errors import StoreError
from enroll.store.base import ChangeFeed, Store
from enroll.store.records import (
    SERVERKEYGEN,
    SIMPLEENROLL,
    AuditPage,
    AuditQuery,
    CertificateRecord,
    IssuerFactory,
    IssuerListing,
    PendingRequest,
    TenantTrustInputs,
    TrustInputs,
)
from enroll.store.schema import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION", "SERVERKEYGEN", "SIMPLEENROLL", "AuditPage", "AuditQuery",
    "CertificateRecord", "ChangeFeed", "IssuerFactory", "IssuerListing", "PendingRequest",
    "Store", "TenantTrustInputs", "TrustInputs", "open_sqlite", "open_store",
]


def open_store(config: SwitchConfig) -> Store:
    """The store ``config`` names, opened and migrated to the current schema. ``StoreError`` (or
    ``StoreUnavailable``) with one line saying what is wrong."""
    settings = config.store
    if settings.url is None:
        return open_sqlite(config.state_dir / "switch.db")
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
                                                f"{settings.issuer_key_passphrase_file}")


def open_sqlite(path: Path) -> Store:
    """The SQLite store at ``path``, owner-only whatever the umask: the directory 0700,
    ``switch.db`` and SQLite's ``-wal`` and ``-shm`` files 0600."""
    from enroll.store.sqlite import SqliteStore

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
