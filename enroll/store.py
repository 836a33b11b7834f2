"""The SQLite store: schema, migrations, connections and transactions.

Theory of operation: one database file, ``STATE_DIR/switch.db``, in WAL mode with
``synchronous=FULL`` (a committed change survives a power cut). Every change runs in one
``BEGIN IMMEDIATE`` transaction: the write lock is taken at the start, so a check-then-write (the
three-key limit, a unique name) cannot interleave with another writer, whether that writer is a
thread, a ``switch`` command or another Switch process. ``busy_timeout`` makes a second writer wait
instead of failing. The schema is versioned with ``PRAGMA user_version``; ``MIGRATIONS[i]`` takes
version ``i`` to ``i + 1`` and all pending ones run in one transaction when the store is opened. A
store written by a newer Switch is refused rather than guessed at.

``changes.generation`` is bumped by every transaction that changes what a running server must
enforce (key states, the service toggle, issuers, certificate revocations), so a server can poll
one integer to notice changes made by another process.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from enroll.errors import StoreError

BUSY_TIMEOUT_MS = 10_000

MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1: the initial schema.
    """
    CREATE TABLE tenant_state (
        tenant TEXT PRIMARY KEY,
        provisioning_enabled INTEGER NOT NULL DEFAULT 0,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE provisioning_keys (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        name TEXT NOT NULL,
        name_folded TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('active', 'suspended', 'revoked')),
        secret_hash BLOB NOT NULL,
        profile TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        last_used_at INTEGER,
        certificates_issued INTEGER NOT NULL DEFAULT 0,
        state_reason TEXT,
        UNIQUE (tenant, name_folded)
    );
    CREATE INDEX provisioning_keys_tenant_state ON provisioning_keys (tenant, state);
    CREATE TABLE issuers (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        seq INTEGER NOT NULL,
        cert_pem TEXT NOT NULL,
        key_path TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        not_before INTEGER NOT NULL,
        not_after INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        retired_at INTEGER,
        UNIQUE (tenant, seq)
    );
    CREATE TABLE certificates (
        serial TEXT NOT NULL,
        issuer_id TEXT NOT NULL REFERENCES issuers (id),
        tenant TEXT NOT NULL,
        key_id TEXT REFERENCES provisioning_keys (id),
        subject TEXT NOT NULL,
        not_before INTEGER NOT NULL,
        not_after INTEGER NOT NULL,
        sha256 TEXT NOT NULL UNIQUE,
        pem TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'valid' CHECK (state IN ('valid', 'revoked')),
        revoked_at INTEGER,
        revoke_reason TEXT,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (issuer_id, serial)
    );
    CREATE INDEX certificates_tenant_key ON certificates (tenant, key_id);
    CREATE INDEX certificates_serial ON certificates (serial);
    CREATE TABLE pending_requests (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        key_id TEXT REFERENCES provisioning_keys (id),
        csr_der BLOB NOT NULL,
        request_digest TEXT NOT NULL,
        subject TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'rejected', 'issued')),
        created_at INTEGER NOT NULL,
        decided_at INTEGER,
        decided_by TEXT,
        reason TEXT,
        certificate_serial TEXT,
        UNIQUE (tenant, request_digest)
    );
    CREATE TABLE audit_log (
        seq INTEGER PRIMARY KEY,
        ts INTEGER NOT NULL,
        actor TEXT NOT NULL,
        tenant TEXT,
        action TEXT NOT NULL,
        target TEXT,
        reason TEXT,
        details TEXT NOT NULL DEFAULT '{}',
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX audit_log_tenant ON audit_log (tenant, seq);
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TABLE audit_head (last_seq INTEGER NOT NULL, last_hash TEXT NOT NULL);
    INSERT INTO audit_head VALUES (0, '0000000000000000000000000000000000000000000000000000000000000000');
    CREATE TABLE changes (generation INTEGER NOT NULL);
    INSERT INTO changes VALUES (0);
    """,
    # 1 -> 2: which operation a pending request is for. A serverkeygen request has no client
    # key: approving it lets the server make one key pair for that provisioning key and CN.
    """
    ALTER TABLE pending_requests ADD COLUMN operation TEXT NOT NULL DEFAULT 'simpleenroll';
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


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


class Store:
    """One connection to the store. Not shared between threads: open one per thread or process."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path
        #: Inside ``batch``: None until its first transaction began the real one.
        self._batch: list[int] | None = None

    @classmethod
    def open(cls, path: Path) -> Store:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            # check_same_thread=False: the server calls the store from worker threads, one at a
            # time (a CapacityLimiter of 1 in the shell); the CLI from its only thread.
            conn = sqlite3.connect(
                path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store {path}: {exc}") from exc
        store = cls(conn, path)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = _enable_wal(conn)
            if str(mode).lower() != "wal":
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

    @property
    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        """Apply every pending migration, in order, in one transaction (all or none)."""
        with self.transaction() as conn:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the store {self.path} has schema version {version}, newer than this "
                    f"Switch understands ({SCHEMA_VERSION}): upgrade Switch"
                )
            for index in range(version, SCHEMA_VERSION):
                try:
                    for statement in _split_sql(MIGRATIONS[index]):
                        conn.execute(statement)
                except sqlite3.Error as exc:
                    raise StoreError(
                        f"cannot migrate the store {self.path} from schema version {index} to "
                        f"{index + 1}: {exc}"
                    ) from exc
                conn.execute(f"PRAGMA user_version = {index + 1}")

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group commit: every ``transaction`` inside is a savepoint of one real transaction,
        begun by the first of them (a batch that only reads takes no lock) and committed, with
        one fsync, when the batch ends. Each savepoint still commits or rolls back on its own
        terms; but nothing is durable before the batch commits, so the caller must not act on
        any of them (send a certificate) before this returns. If the commit fails, every change
        of the batch is lost and ``StoreError`` is raised."""
        if self._batch is not None:
            raise RuntimeError("store batches do not nest")
        self._batch = []
        try:
            yield
        except BaseException:
            if self._batch:
                self._rollback()
            raise
        else:
            if self._batch:
                self._commit()
        finally:
            self._batch = None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on any error
        (inside ``batch``: a savepoint, released or rolled back to)."""
        if self._batch is not None:
            with self._savepoint() as conn:
                yield conn
            return
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"the store is unavailable: {exc}") from exc
        try:
            yield self.conn
        except sqlite3.Error as exc:
            self._rollback()
            raise StoreError(f"the store could not be written: {exc}") from exc
        except BaseException:
            self._rollback()
            raise
        self._commit()

    @contextmanager
    def _savepoint(self) -> Iterator[sqlite3.Connection]:
        assert self._batch is not None
        if not self._batch:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"the store is unavailable: {exc}") from exc
        elif not self.conn.in_transaction:
            # SQLite rolled the whole batch back on its own (disk full, I/O error): go on and
            # these statements would commit one by one, outside the batch.
            raise StoreError("the store rolled back this batch (see the error before this one)")
        name = f"s{len(self._batch)}"
        self._batch.append(0)
        self.conn.execute(f"SAVEPOINT {name}")
        try:
            yield self.conn
        except BaseException as exc:
            if self.conn.in_transaction:
                self.conn.execute(f"ROLLBACK TO {name}")
                self.conn.execute(f"RELEASE {name}")
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"the store could not be written: {exc}") from exc
            raise
        self.conn.execute(f"RELEASE {name}")

    def _commit(self) -> None:
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise StoreError(f"the store could not commit: {exc}") from exc

    def _rollback(self) -> None:
        # SQLite may already have rolled back on its own (SQLITE_FULL, SQLITE_IOERR, ...); a
        # second ROLLBACK would raise and hide the error that matters.
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def generation(self) -> int:
        return int(self.conn.execute("SELECT generation FROM changes").fetchone()[0])


def bump_generation(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE changes SET generation = generation + 1")


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
