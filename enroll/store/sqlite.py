"""The SQLite engine: one file, ``STATE_DIR/switch.db``, shared by the processes of one host.

Theory of operation: WAL mode with ``synchronous=FULL`` (a committed change survives a power
cut). Every write runs in one ``BEGIN IMMEDIATE`` transaction: the write lock is taken at the
start, so a check-then-write (the three-key limit, a unique name, the audit chain's head) cannot
interleave with another writer, whether that writer is a thread, a ``switch`` command or another
Switch process. ``busy_timeout`` makes a second writer wait instead of failing. The schema is
versioned with ``PRAGMA user_version`` (``enroll.store.schema``); pending migrations run in one
transaction when the store is opened, and a store written by a newer Switch is refused.

Issuer private keys are files under ``STATE_DIR/issuers/TENANT/``, mode 0600 in a 0700 directory,
written and fsynced before the issuer's row commits, so the store never names a key that is not
on disk. There is no pushed change feed: servers poll the change generation.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from enroll import issuers, pki
from enroll.errors import StoreError, StoreUnavailable
from enroll.issuers import IssuerRecord
from enroll.store.base import ChangeFeed
from enroll.store.ops_audit import AuditOps
from enroll.store.ops_certs import CertificateOps
from enroll.store.ops_keys import KeyOps
from enroll.store.ops_sessions import SessionOps
from enroll.store.schema import SCHEMA_VERSION, SQLITE_MIGRATIONS
from enroll.store.sql import Cursor, Tx

BUSY_TIMEOUT_MS = 10_000
DB_FILE = "switch.db"


def _enable_wal(conn: sqlite3.Connection) -> str:
    """Switch the file to WAL and return the journal mode now in force.

    Changing the journal mode needs an exclusive lock and SQLite does not apply ``busy_timeout``
    to it: when several processes create the store at once, all but one get "database is locked"
    at once. WAL is persistent, so the others only have to retry until the first has switched it.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def has_store(path: Path) -> bool:
    """Whether ``path`` holds a store: a database with Switch's schema, at any version. An
    absent or empty file, or a database without the schema, holds none; a file SQLite cannot
    read is left for ``SqliteStore.open`` to say what is wrong with it."""
    try:
        if path.stat().st_size == 0:
            return False
    except FileNotFoundError:
        return False
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                               timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            return int(conn.execute("PRAGMA user_version").fetchone()[0]) > 0
        finally:
            conn.close()
    except sqlite3.Error:
        return True


class SqliteStore(KeyOps, CertificateOps, AuditOps, SessionOps):
    """One connection to the file. Used by one thread at a time (see ``enroll.store.base``)."""

    engine = "sqlite"
    #: No pushed notices: this poll is how servers see changes (revocations within 0.1 s).
    poll_interval_s = 0.1

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        super().__init__()
        self.conn = conn
        self.path = path

    @classmethod
    def open(cls, path: Path) -> SqliteStore:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            # check_same_thread=False: the server calls the store from worker threads, one at a
            # time (a CapacityLimiter of 1 in the shell); the CLI from its only thread.
            conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store {path}: {exc}") from exc
        store = cls(conn, path)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = _enable_wal(conn)
            if mode.lower() != "wal":
                # WAL is what lets readers (the gateway) and writers (the CLI) work at once;
                # it is unavailable on some network file systems.
                raise StoreError(f"the store {path} cannot use WAL journaling (got {mode!r})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            os.chmod(path, 0o600)
            store._migrate()
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot open the store {path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return store

    def close(self) -> None:
        self.conn.close()

    def describe(self) -> str:
        return str(self.path)

    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def change_feed(self) -> ChangeFeed | None:
        return None

    def _migrate(self) -> None:
        """Apply every pending migration, in order, in one transaction (all or none)."""
        def migrate(tx: Tx) -> None:
            version = self.opened_at_version = int(tx.scalar("PRAGMA user_version"))
            if version > SCHEMA_VERSION:
                raise StoreError(f"the store {self.path} has schema version {version}, newer "
                                 f"than this Switch understands ({SCHEMA_VERSION}): upgrade Switch")
            for index in range(version, SCHEMA_VERSION):
                try:
                    for statement in _split_sql(SQLITE_MIGRATIONS[index]):
                        tx.execute(statement)
                except sqlite3.Error as exc:
                    raise StoreError(f"cannot migrate the store {self.path} from schema version "
                                     f"{index} to {index + 1}: {exc}") from exc
                tx.execute(f"PRAGMA user_version = {index + 1}")
        self._write(migrate)

    # --- engine hooks --------------------------------------------------------------------------

    def _acquire(self) -> sqlite3.Connection:
        return self.conn

    def _release(self, conn: Any) -> None:
        pass

    def _execute(self, conn: Any, sql: str, params: Sequence[Any]) -> Cursor:
        return conn.execute(sql, params)  # type: ignore[no-any-return]

    def _begin_write(self, conn: Any) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def _begin_read(self, conn: Any, snapshot: bool) -> None:
        if snapshot:
            conn.execute("BEGIN")  # deferred: a consistent read that takes no write lock

    def _end(self, conn: Any, commit: bool) -> None:
        if conn.in_transaction:
            conn.execute("COMMIT" if commit else "ROLLBACK")

    def _in_transaction(self, conn: Any) -> bool:
        return bool(conn.in_transaction)

    def _translate(self, exc: BaseException) -> StoreError | None:
        if isinstance(exc, sqlite3.ProgrammingError) and "closed" in str(exc):
            return StoreUnavailable(f"the store {self.path} is closed: {exc}")
        if isinstance(exc, sqlite3.Error):
            return StoreError(str(exc))
        return None

    def _keep_issuer_key(self, tx: Tx, issuer_id: str, tenant: str, key: pki.PrivateKey
                         ) -> tuple[str, bytes | None]:
        del tx
        key_path = self.path.parent / "issuers" / tenant / f"{issuer_id}.key"
        issuers.write_issuer_key(key_path, key)
        return str(key_path), None

    def load_issuer_key(self, issuer: IssuerRecord) -> pki.PrivateKey:
        return issuers.load_issuer_key(issuer)


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements, keeping trigger bodies (BEGIN ... END;) whole."""
    statements: list[str] = []
    current: list[str] = []
    for line in script.strip().splitlines():
        current.append(line)
        joined = "\n".join(current).strip()
        if joined.endswith(";") and sqlite3.complete_statement(joined):
            statements.append(joined)
            current = []
    if "\n".join(current).strip():
        statements.append("\n".join(current).strip())
    return statements
