"""The PostgreSQL engine: one database shared by every Switch process on every host.

Theory of operation. A ``psycopg_pool.ConnectionPool`` (sync API: the store runs in worker
threads, as SQLite does) hands each unit of work one connection for its whole life; each
connection is checked before it is handed out, and every wait is bounded: connecting
(``CONNECT_TIMEOUT_S``), waiting for a pooled connection (``POOL_TIMEOUT_S``), each statement
(``STATEMENT_TIMEOUT_MS``, which also bounds lock waits), and TCP keepalives notice a vanished
server. A lost connection or a database that cannot be reached is ``StoreUnavailable``.

Transactions are READ COMMITTED. Correctness under concurrent callers on any number of hosts
comes from one row lock: every audited write (which is every change an operator makes: keys,
toggles, issuers, revocations, decisions, operators) first locks the audit chain's head row
(``SELECT ... FOR UPDATE``), then reads and checks what it needs. The writes are thereby totally
ordered, in the chain's order, and each one's statements see everything committed before it: the
three-key limit, name uniqueness, one-way key transitions, issuer renewal and the chain itself
hold as they do under SQLite's single writer. Writes that are not audited (issuing, requests,
rate-limit counters) are single conditional statements (``UPDATE ... WHERE state = 'active'``,
``INSERT ... ON CONFLICT``), re-checked by PostgreSQL against the row as it is when they run.
Should the server still abort a transaction as a deadlock (40P01) or serialization failure
(40001), the operation is run again from the start (``enroll.store.sql``); nothing else is.

Every change a gateway enforces moves the generation and sends ``NOTIFY switch_changes`` in its
transaction (delivered on commit); servers listen with ``PostgresChangeFeed``.

Issuer private keys are sealed in the ``issuers`` table with the passphrase every host holds
(``enroll.keywrap``); ``store_meta`` holds a sealed check value, so a host with another
passphrase is refused when it opens the store, before it could create an issuer no other host
can use.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from typing import Any

import psycopg
import psycopg_pool
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from enroll import issuers, keywrap, pki
from enroll.errors import StoreError, StoreMissing, StoreUnavailable
from enroll.issuers import IssuerRecord
from enroll.store.base import ChangeFeed
from enroll.store.ops_audit import AuditOps
from enroll.store.ops_certs import PRUNE_BATCH, CertificateOps
from enroll.store.ops_keys import KeyOps
from enroll.store.ops_sessions import SessionOps
from enroll.store.postgres_feed import PostgresChangeFeed
from enroll.store.schema import (
    POSTGRES_BASELINE,
    POSTGRES_BASELINE_VERSION,
    POSTGRES_MIGRATIONS,
    SCHEMA_VERSION,
)
from enroll.store.sql import CHANGES_CHANNEL, Cursor, Tx

CONNECT_TIMEOUT_S = 5
POOL_TIMEOUT_S = 5.0
STATEMENT_TIMEOUT_MS = 15_000
POOL_SIZE = 4
#: ``pg_advisory_xact_lock`` key held while the schema is checked and migrated ("Swtc").
MIGRATION_LOCK = 0x53777463
#: The class (first key) of the advisory locks ``_lock_name`` takes ("Name").
NAME_LOCK_CLASS = 0x4E616D65
PASSPHRASE_CHECK = "issuer_key_check"
_CHECK_PLAINTEXT = b"switch issuer keys"
#: SQLSTATE classes meaning the server or the connection is gone: 08 connection exception,
#: 57P01-57P03 admin/crash shutdown, cannot connect now.
_UNAVAILABLE = ("08", "57P01", "57P02", "57P03")
_RETRYABLE = ("40001", "40P01")


@functools.lru_cache(maxsize=512)
def _dialect(sql: str) -> str:
    """The shared SQL's ``?`` placeholders as psycopg's ``%s`` (the SQL holds no ``%``)."""
    return sql.replace("?", "%s")


def connection_info(url: str, password: str | None = None) -> str:
    """The libpq connection string for ``url`` with Switch's timeouts and keepalives."""
    return make_conninfo(
        url, password=password, connect_timeout=CONNECT_TIMEOUT_S, application_name="switch",
        keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
        options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}")


def describe_url(conninfo: str) -> str:
    """``postgresql://user@host:port/db``, whatever the connection string held (no password)."""
    parts = conninfo_to_dict(conninfo)
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{parts.get('host', '')}{port}/{parts.get('dbname', '')}"


class PostgresStore(KeyOps, CertificateOps, AuditOps, SessionOps):
    engine = "postgresql"
    #: The safety net under NOTIFY: a change whose notice was lost is still seen within this.
    poll_interval_s = 0.5
    _audit_head_sql = "SELECT last_seq, last_hash FROM audit_head FOR UPDATE"
    #: SKIP LOCKED: two hosts pruning at once take different rows instead of waiting (and
    #: possibly deadlocking) on each other's.
    _prune_failures_sql = ("DELETE FROM auth_failures WHERE id IN (SELECT id FROM auth_failures"
                           f" WHERE at < ? LIMIT {PRUNE_BATCH} FOR UPDATE SKIP LOCKED)")

    def __init__(self, pool: psycopg_pool.ConnectionPool, conninfo: str, passphrase: bytes,
                 pool_timeout_s: float = POOL_TIMEOUT_S) -> None:
        super().__init__()
        self._pool = pool
        self._pool_timeout_s = pool_timeout_s
        self._conninfo = conninfo
        self._passphrase = passphrase
        self._where = describe_url(conninfo)
        #: Connections made outside the pool by ``_acquire`` (their ids), closed on release.
        self._own: set[int] = set()

    @classmethod
    def open(cls, url: str, *, password: str | None = None, passphrase: bytes,
             passphrase_source: str = "the passphrase", pool_size: int = POOL_SIZE,
             pool_timeout_s: float = POOL_TIMEOUT_S, create: bool = False,
             migrate: bool = False) -> PostgresStore:
        """Connect, check the schema (creating it in an empty database with ``create``,
        migrating an older one with ``migrate``; one host at a time), check the passphrase,
        open the pool. ``StoreMissing`` for a database without Switch's schema (and not
        ``create``), ``StoreUnavailable`` when the server cannot be reached, ``StoreError``
        otherwise (an older schema without ``migrate``, a newer one, a wrong passphrase)."""
        if not passphrase:
            raise StoreError("a PostgreSQL store needs an issuer key passphrase "
                             "([store] issuer_key_passphrase_file)")
        conninfo = connection_info(url, password)
        where = describe_url(conninfo)
        try:
            with psycopg.connect(conninfo) as conn:
                version = _migrate(conn, where, create=create, migrate=migrate)
                _check_passphrase(conn, passphrase, where, passphrase_source)
                conn.commit()
        except psycopg.Error as exc:
            error = _translate(exc)
            raise type(error)(f"cannot open the store {where}: {error.message}") from exc
        pool = psycopg_pool.ConnectionPool(
            conninfo, min_size=1, max_size=pool_size, open=False, timeout=pool_timeout_s,
            check=psycopg_pool.ConnectionPool.check_connection, name="switch-store")
        try:
            pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        except psycopg_pool.PoolTimeout as exc:
            pool.close()
            raise StoreUnavailable(f"cannot open the store {where}: no connection within "
                                   f"{CONNECT_TIMEOUT_S} s") from exc
        store = cls(pool, conninfo, passphrase, pool_timeout_s)
        store.opened_at_version = version
        return store

    def close(self) -> None:
        self._pool.close(timeout=self._pool_timeout_s)

    def describe(self) -> str:
        return self._where

    def schema_version(self) -> int:
        return int(self._read(lambda tx: tx.scalar("SELECT version FROM switch_schema")))

    def change_feed(self) -> ChangeFeed | None:
        return PostgresChangeFeed(self._conninfo, CHANGES_CHANNEL)

    # --- engine hooks --------------------------------------------------------------------------

    def _acquire(self) -> psycopg.Connection[Any]:
        """A pooled connection; when none comes within half the wait, one connection of its own.

        The pool replaces connections lost with the server in the background, with its own
        back-off (1 s doubling for as long as the server stays away: ``psycopg_pool``'s
        ``AttemptWithBackoff``), so after an outage its next attempt may be many seconds after
        the server is back. An operation does not wait for it: once half of ``pool_timeout_s``
        has passed it connects by itself (in the other half, ``connect_timeout``), and that
        connection serves this one unit of work and is closed after it. So the first operation
        after the server is back succeeds, and a server that stays away costs an operation
        ``pool_timeout_s``, as before."""
        started = time.monotonic()
        try:
            return self._pool.getconn(timeout=self._pool_timeout_s / 2)
        except psycopg_pool.PoolTimeout:
            left = self._pool_timeout_s - (time.monotonic() - started)
            # libpq takes whole seconds and treats less than 2 as 2.
            conn = psycopg.connect(make_conninfo(self._conninfo,
                                                 connect_timeout=max(2, math.ceil(left))))
            self._own.add(id(conn))
            return conn

    def _release(self, conn: Any) -> None:
        if id(conn) in self._own:
            self._own.discard(id(conn))
            conn.close()
            return
        self._pool.putconn(conn)

    def _execute(self, conn: Any, sql: str, params: Sequence[Any]) -> Cursor:
        cursor: Cursor = conn.execute(_dialect(sql) if params else sql, params or None)
        return cursor

    def _begin_write(self, conn: Any) -> None:
        # Begins the transaction (psycopg sends BEGIN before it) and says which isolation the
        # locking rules above rely on, whatever the server's default_transaction_isolation.
        conn.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")

    def _begin_read(self, conn: Any, snapshot: bool) -> None:
        if snapshot:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")

    def _end(self, conn: Any, commit: bool) -> None:
        if commit:
            conn.commit()
        else:
            conn.rollback()

    def _in_transaction(self, conn: Any) -> bool:
        status = conn.info.transaction_status
        return status in (pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR)

    def _translate(self, exc: BaseException) -> StoreError | None:
        if isinstance(exc, psycopg.Error | psycopg_pool.PoolTimeout | psycopg_pool.PoolClosed):
            return _translate(exc)
        return None

    def _retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.Error) and exc.sqlstate in _RETRYABLE

    def _announce(self, tx: Tx) -> None:
        # Delivered when the transaction commits, to every session listening, on every host.
        tx.execute("SELECT pg_notify(?, (SELECT generation FROM changes)::text)",
                   (CHANGES_CHANNEL,))

    def _lock_name(self, tx: Tx, name: str) -> None:
        # Transaction-scoped advisory lock; the two-key space never meets MIGRATION_LOCK's.
        tx.execute("SELECT pg_advisory_xact_lock(?, hashtext(?))", (NAME_LOCK_CLASS, name))

    def _keep_issuer_key(self, tx: Tx, issuer_id: str, tenant: str, key: pki.PrivateKey
                         ) -> tuple[str, bytes | None]:
        del tx, tenant
        return "", keywrap.seal(pki.key_pem(key), self._passphrase, context=issuer_id)

    def load_issuer_key(self, issuer: IssuerRecord) -> pki.PrivateKey:
        sealed = self._read(lambda tx: tx.scalar("SELECT key_sealed FROM issuers WHERE id = ?",
                                                 (issuer.id,)))
        if sealed is None:
            raise StoreError(f"issuer {issuer.id} has no key in the store {self._where}")
        try:
            pem = keywrap.unseal(bytes(sealed), self._passphrase, context=issuer.id)
        except keywrap.WrongPassphrase as exc:
            raise StoreError(f"cannot open the key of issuer {issuer.id}: {exc}") from exc
        return issuers.issuer_key_from_pem(issuer.id, pem, where=self._where)


def _translate(exc: BaseException) -> StoreError:
    if isinstance(exc, psycopg_pool.PoolTimeout | psycopg_pool.PoolClosed):
        return StoreUnavailable(f"no database connection: {exc}")
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(exc, psycopg.InterfaceError) or (
            isinstance(exc, psycopg.OperationalError)
            and (sqlstate is None or sqlstate.startswith(_UNAVAILABLE))):
        return StoreUnavailable(f"the database cannot be reached: {message}")
    return StoreError(f"{message} (SQLSTATE {sqlstate})" if sqlstate else message)


def _migrate(conn: psycopg.Connection[Any], where: str, *, create: bool, migrate: bool) -> int:
    """Check the schema and bring it to ``SCHEMA_VERSION`` when allowed, in the caller's
    transaction, holding an advisory lock so that hosts starting together do it one after
    another: an empty database gets the whole schema (``create``), an older schema its pending
    migrations (``migrate``). Returns the version it had (0: created now)."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
    row = conn.execute("SELECT to_regclass('switch_schema')").fetchone()
    created = row is None or row[0] is None
    if created:
        if not create:
            raise StoreMissing(f"the database {where} holds no Switch store")
        conn.execute(POSTGRES_BASELINE)
        conn.execute("CREATE TABLE switch_schema (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO switch_schema VALUES (%s)", (POSTGRES_BASELINE_VERSION,))
    version_row = conn.execute("SELECT version FROM switch_schema").fetchone()
    version = int(version_row[0]) if version_row else 0
    if version > SCHEMA_VERSION:
        raise StoreError(f"the store {where} has schema version {version}, newer than this "
                         f"Switch understands ({SCHEMA_VERSION}): upgrade Switch")
    if version < SCHEMA_VERSION and not (created or migrate):
        raise StoreError(f"the store {where} has schema version {version}, older than this "
                         f"Switch's ({SCHEMA_VERSION}): run switch store migrate (once, from "
                         "one host)")
    for target in range(version + 1, SCHEMA_VERSION + 1):
        conn.execute(POSTGRES_MIGRATIONS[target - 1 - POSTGRES_BASELINE_VERSION])
        conn.execute("UPDATE switch_schema SET version = %s", (target,))
    return 0 if created else version


def _check_passphrase(conn: psycopg.Connection[Any], passphrase: bytes, where: str,
                      source: str) -> None:
    """The first host to open the store records a value sealed with its passphrase; every
    later one must open it, or is refused."""
    row = conn.execute("SELECT value FROM store_meta WHERE name = %s",
                       (PASSPHRASE_CHECK,)).fetchone()
    if row is None:
        sealed = keywrap.seal(_CHECK_PLAINTEXT, passphrase, context=PASSPHRASE_CHECK)
        conn.execute("INSERT INTO store_meta (name, value) VALUES (%s, %s)"
                     " ON CONFLICT (name) DO NOTHING", (PASSPHRASE_CHECK, sealed))
        return
    try:
        keywrap.unseal(bytes(row[0]), passphrase, context=PASSPHRASE_CHECK)
    except keywrap.WrongPassphrase:
        raise StoreError(f"{source} does not open the issuer keys in {where}: every host needs "
                         "the same issuer key passphrase file") from None
