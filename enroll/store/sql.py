"""Units of work over a SQL connection, the same for both engines: transactions, savepoints,
group commit, retries, the audit chain's append and the change generation.

Theory of operation: an engine (``sqlite.py``, ``postgres.py``) supplies connections and a few
dialect hooks; everything else lives here once. The current unit of work is per thread: its
connection is pinned for the unit's whole life, every nested ``transaction()`` or operation in it
is a savepoint on that connection, and nothing is durable before the outermost unit commits.

An operation is a function of a ``Tx``, run by ``_write`` or ``_read``. ``_write`` outside any
unit begins a write transaction, runs the function, commits; when the engine says the failure is
one the database asks to retry (PostgreSQL's serialization failure 40001 or deadlock 40P01),
it rolls back and runs the whole function again, up to ``RETRIES`` times. Inside a unit it runs
in a savepoint and never retries (the caller's unit is what would have to be run again).

An audited write (``audited=True``) locks the audit chain's head first, before it reads anything:
every change an operator makes is audited, so this one lock orders them all, in the order of the
chain, and each one's checks see every change committed before it (docs/store.md, "Locking").
"""

from __future__ import annotations

import abc
import contextlib
import json
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn, Protocol, TypeVar

import attrs

from enroll import audit
from enroll.audit import AuditEntry
from enroll.errors import StoreError
from enroll.store.base import Store

T = TypeVar("T")
#: Runs of one operation when the database asks for a retry (40001, 40P01).
RETRIES = 5
#: Seconds before a retry: a random share of this, doubled each time.
RETRY_BACKOFF_S = 0.01
#: The channel a committed change is announced on (PostgreSQL).
CHANGES_CHANNEL = "switch_changes"


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


@attrs.define(eq=False)
class _Unit:
    """The current thread's unit of work."""

    conn: Any = None
    #: A write transaction is open on ``conn``.
    begun: bool = False
    #: Inside ``batch()``: begun lazily by the first write.
    batch: bool = False
    #: Open ``transaction()`` contexts and operations (savepoints included).
    depth: int = 0
    savepoints: int = 0

    @property
    def active(self) -> bool:
        return self.batch or self.depth > 0


class Tx:
    """What an operation sees: the unit's connection, with the dialect applied."""

    def __init__(self, store: SqlStore, conn: Any) -> None:
        self.store = store
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return self.store._execute(self.conn, sql, params)

    def one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.execute(sql, params).fetchone()

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self.execute(sql, params).fetchall()

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self.one(sql, params)
        return None if row is None else row[0]

    def audit(self, *, ts: int, actor: str, tenant: str | None, action: str,
              target: str | None = None, reason: str | None = None,
              details: Mapping[str, Any] | None = None) -> AuditEntry:
        """Append one entry to the chain, in this transaction (whose audited write locked the
        head first)."""
        seq, prev = self.one(self.store._audit_head_sql)
        seq += 1
        fields = dict(details or {})
        digest = audit.entry_hash(seq=seq, ts=ts, actor=actor, tenant=tenant, action=action,
                                  target=target, reason=reason, details=fields, prev_hash=prev)
        self.execute(
            "INSERT INTO audit_log (seq, ts, actor, tenant, action, target, reason, details,"
            " prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, ts, actor, tenant, action, target, reason, json.dumps(fields, sort_keys=True),
             prev, digest))
        self.execute("UPDATE audit_head SET last_seq = ?, last_hash = ?", (seq, digest))
        return AuditEntry(seq, ts, actor, tenant, action, target, reason, fields, prev, digest)

    def changed(self) -> None:
        """What a gateway enforces changed: move the generation (and announce it on commit)."""
        self.execute("UPDATE changes SET generation = generation + 1")
        self.store._announce(self)


class SqlStore(Store):
    """The engine-neutral half of a store; ``SqliteStore`` and ``PostgresStore`` finish it."""

    #: The head of the audit chain, read under the engine's lock for an audited write.
    _audit_head_sql = "SELECT last_seq, last_hash FROM audit_head"

    def __init__(self) -> None:
        self._local = threading.local()

    # --- engine hooks --------------------------------------------------------------------------

    @abc.abstractmethod
    def _acquire(self) -> Any:
        """A connection for a unit of work or a read."""

    @abc.abstractmethod
    def _release(self, conn: Any) -> None: ...

    @abc.abstractmethod
    def _execute(self, conn: Any, sql: str, params: Sequence[Any]) -> Cursor: ...

    @abc.abstractmethod
    def _begin_write(self, conn: Any) -> None: ...

    @abc.abstractmethod
    def _begin_read(self, conn: Any, snapshot: bool) -> None: ...

    @abc.abstractmethod
    def _end(self, conn: Any, commit: bool) -> None:
        """Commit or roll back whatever ``conn`` has open (nothing, after an autocommit read)."""

    @abc.abstractmethod
    def _in_transaction(self, conn: Any) -> bool: ...

    @abc.abstractmethod
    def _translate(self, exc: BaseException) -> StoreError | None:
        """The store error a driver exception means, or None when it is not the driver's."""

    def _retryable(self, exc: BaseException) -> bool:
        del exc
        return False

    def _lock_audit(self, tx: Tx) -> None:
        tx.one(self._audit_head_sql)

    def _announce(self, tx: Tx) -> None:
        """Called after the generation moved in ``tx``."""
        del tx

    def _lock_name(self, tx: Tx, name: str) -> None:
        """Hold a lock on ``name`` until ``tx``'s unit ends, so that a check and the write it
        allows are not interleaved with another writer's on another connection. None needed
        where writers are serialised anyway (SQLite's one writer)."""
        del tx, name

    # --- units of work -------------------------------------------------------------------------

    @property
    def _unit(self) -> _Unit:
        unit: _Unit | None = getattr(self._local, "unit", None)
        if unit is None:
            unit = self._local.unit = _Unit()
        return unit

    def _reraise(self, exc: BaseException, what: str) -> NoReturn:
        """Raise ``exc`` as the store error it means (``what`` failed), or as it is."""
        translated = self._translate(exc)
        if translated is None:
            raise exc
        if type(translated) is StoreError:
            translated = StoreError(f"{what}: {translated.message}")
        raise translated from exc

    def _commit(self) -> None:
        unit = self._unit
        try:
            self._end(unit.conn, commit=True)
        except BaseException as exc:
            self._rollback()
            self._reraise(exc, "the store could not commit")

    def _rollback(self) -> None:
        # The engine may already have rolled back on its own (SQLite on SQLITE_FULL, a lost
        # PostgreSQL connection): a second rollback would raise and hide the error that matters.
        unit = self._unit
        try:
            if self._in_transaction(unit.conn):
                self._end(unit.conn, commit=False)
        except Exception as exc:  # noqa: BLE001 - keep the error that caused the rollback
            if self._translate(exc) is None:
                raise

    def _connection(self) -> Any:
        try:
            return self._acquire()
        except BaseException as exc:
            self._reraise(exc, "the store is unavailable")

    def _begin_unit(self, unit: _Unit) -> None:
        """Open the real write transaction of ``unit`` (pinning a connection)."""
        conn = self._connection()
        try:
            self._begin_write(conn)
        except BaseException as exc:
            self._release(conn)
            self._reraise(exc, "the store is unavailable")
        unit.conn, unit.begun = conn, True

    def _close_unit(self, unit: _Unit) -> None:
        conn, unit.conn, unit.begun, unit.savepoints = unit.conn, None, False, 0
        if conn is not None:
            self._release(conn)

    @contextmanager
    def _savepoint(self, unit: _Unit) -> Iterator[Tx]:
        if not unit.begun:
            self._begin_unit(unit)
        elif not self._in_transaction(unit.conn):
            # The engine rolled the whole unit back on its own (disk full, I/O error, lost
            # connection): go on and these statements would commit one by one, outside it.
            raise StoreError("the store rolled back this batch (see the error before this one)")
        name = f"s{unit.savepoints}"
        unit.savepoints += 1
        unit.depth += 1
        try:
            self._execute(unit.conn, f"SAVEPOINT {name}", ())
            try:
                yield Tx(self, unit.conn)
            except BaseException as exc:
                try:
                    if self._in_transaction(unit.conn):
                        self._execute(unit.conn, f"ROLLBACK TO {name}", ())
                        self._execute(unit.conn, f"RELEASE {name}", ())
                except Exception as again:  # noqa: BLE001 - report the first failure
                    if self._translate(again) is None:
                        raise
                self._reraise(exc, "the store could not be written")
            self._execute(unit.conn, f"RELEASE {name}", ())
        finally:
            unit.depth -= 1

    @contextmanager
    def _outermost(self, unit: _Unit) -> Iterator[Tx]:
        self._begin_unit(unit)
        unit.depth = 1
        try:
            try:
                yield Tx(self, unit.conn)
            except BaseException as exc:
                self._rollback()
                self._reraise(exc, "the store could not be written")
            self._commit()
        finally:
            unit.depth = 0
            self._close_unit(unit)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        unit = self._unit
        with (self._savepoint(unit) if unit.active else self._outermost(unit)):
            yield

    @contextmanager
    def batch(self) -> Iterator[None]:
        """See ``Store.batch``: if the commit fails, every change of the batch is lost and
        ``StoreError`` is raised."""
        unit = self._unit
        if unit.batch:
            raise RuntimeError("store batches do not nest")
        if unit.active:
            raise RuntimeError("a batch cannot begin inside a transaction")
        unit.batch = True
        try:
            yield
        except BaseException:
            if unit.begun:
                self._rollback()
            raise
        else:
            if unit.begun:
                self._commit()
        finally:
            unit.batch = False
            self._close_unit(unit)

    def _write(self, fn: Callable[[Tx], T], *, audited: bool = False) -> T:
        unit = self._unit
        if unit.active:
            with self._savepoint(unit) as tx:
                if audited:
                    self._lock_audit(tx)
                return fn(tx)
        for attempt in range(RETRIES):
            try:
                with self._outermost(unit) as tx:
                    if audited:
                        self._lock_audit(tx)
                    return fn(tx)
            except StoreError as exc:
                cause = exc.__cause__
                if cause is None or not self._retryable(cause) or attempt == RETRIES - 1:
                    raise
            time.sleep(random.uniform(0, RETRY_BACKOFF_S * 2**attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def _read(self, fn: Callable[[Tx], T], *, snapshot: bool = False) -> T:
        unit = self._unit
        if unit.begun:  # inside a unit: read what it wrote
            try:
                return fn(Tx(self, unit.conn))
            except BaseException as exc:
                self._reraise(exc, "the store could not be read")
        conn = self._connection()
        try:
            self._begin_read(conn, snapshot)
            result = fn(Tx(self, conn))
            self._end(conn, commit=True)
            return result
        except BaseException as exc:
            with contextlib.suppress(Exception):  # the first failure is the one to report
                self._end(conn, commit=False)
            self._reraise(exc, "the store could not be read")
        finally:
            self._release(conn)

    # --- the change generation -----------------------------------------------------------------

    def generation(self) -> int:
        return int(self._read(lambda tx: tx.scalar("SELECT generation FROM changes")))
