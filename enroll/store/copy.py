"""Outgrowing one host: ``switch store copy`` moves a SQLite deployment into an empty PostgreSQL
database, so that several hosts can share it without one agent enrolling again.

Theory of operation. The target database is opened as a store (its schema created when it has
none, the passphrase check recorded) and must hold no data: a copy never merges two deployments.
Then, in one PostgreSQL transaction, every table is copied from one consistent snapshot of the
SQLite store (a read transaction), with ``COPY``: keys, issuers, certificates, requests, the
audit log and its head, the change generation, operators. Rows keep their values, so the audit
chain's hashes still link and verify, and lists keep their order (``insert_seq``, after which each
table's sequence is set to go on from the copied rows). Issuers' private keys move from their
0600 files into the database sealed under the target's passphrase (``enroll.keywrap``), with no
file path. The wrong-key counts are not copied: they are a minute's memory; nor are console sessions.

After the commit the copy is checked against the source through the store interface: rows per
table, the audit chain verified and ending at the source's head, and every issuer's key opened
from the database and matched to its certificate. Any difference is an error (the database then
holds a copy that must not be used: drop it and copy again). A copy that fails before its commit
leaves the target as it was, its schema aside.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from config.model import SwitchConfig
from enroll import audit, keywrap
from enroll.errors import StoreError, StoreExists
from enroll.store.postgres import PostgresStore
from enroll.store.schema import INSERT_ORDERED, TABLES
from enroll.store.sql import Tx
from enroll.store.sqlite import SqliteStore

#: Copied as they are (``issuers`` is copied with its keys sealed; singletons are updated).
_ROWS = ("tenant_state", "provisioning_keys", "certificates", "pending_requests", "audit_log",
         "operators")
#: One row each, there in every store: updated, not inserted.
_SINGLETONS = {"audit_head": ("last_seq", "last_hash"), "changes": ("generation",)}
#: Not copied: rate-limit rows (failed guesses of the last minute) and console sessions (the
#: operators sign in again on the new store).
_SKIPPED = ("auth_failures", "console_sessions")
#: The tables whose row counts must match after the copy.
COUNTED = tuple(t for t in TABLES if t not in _SKIPPED)


@attrs.frozen
class CopyReport:
    rows: Mapping[str, int]
    audit_entries: int
    audit_head: str
    issuers: int


def _count(tx: Tx, table: str) -> int:
    return int(tx.scalar(f"SELECT COUNT(*) FROM {table}"))


def _empty(target: PostgresStore) -> None:
    """Refuse a target that holds anything of a deployment."""
    def read(tx: Tx) -> dict[str, int]:
        held = {t: _count(tx, t) for t in (*_ROWS, "issuers")}
        held["audit_head"] = int(tx.scalar("SELECT last_seq FROM audit_head"))
        return {t: n for t, n in held.items() if n}
    held = target._read(read, snapshot=True)
    if held:
        what = ", ".join(f"{t} {n}" for t, n in sorted(held.items()))
        raise StoreExists(f"the database {target.describe()} is not empty ({what}): a store "
                          "is copied into an empty database only")


def _columns(source: Tx, table: str) -> list[str]:
    cursor: Any = source.execute(f"SELECT * FROM {table} LIMIT 0")
    return [d[0] for d in cursor.description]


def _copy_rows(source: Tx, target: Tx, table: str, columns: list[str],
               transform: Callable[[Any], tuple[Any, ...]] | None = None,
               written: list[str] | None = None) -> int:
    """Stream ``table``'s ``columns`` from the snapshot into PostgreSQL's ``COPY`` (of the
    ``written`` columns, when ``transform`` makes others)."""
    rows = source.execute(f"SELECT {', '.join(columns)} FROM {table}")
    copied = 0
    with target.conn.cursor() as cursor, cursor.copy(
            f"COPY {table} ({', '.join(written or columns)}) FROM STDIN") as copy:
        while True:
            batch = rows.fetchmany(1000)  # type: ignore[attr-defined]
            if not batch:
                break
            for row in batch:
                copy.write_row(transform(row) if transform else row)
                copied += 1
    return copied


def _copy(source: Tx, target: Tx, passphrase: bytes) -> None:
    for table in _ROWS[:2]:
        _copy_rows(source, target, table, _columns(source, table))
    # Issuers: the private key leaves its file for the database, sealed; no path is kept.
    columns = [c for c in _columns(source, "issuers") if c not in ("key_path", "key_sealed")]
    key_at = columns.index("id")
    paths = dict(source.all("SELECT id, key_path FROM issuers"))

    def seal(row: Any) -> tuple[Any, ...]:
        issuer_id = row[key_at]
        try:
            with open(paths[issuer_id], "rb") as key_file:
                pem = key_file.read()
        except OSError as exc:
            raise StoreError(f"cannot read the key of issuer {issuer_id} "
                             f"({paths[issuer_id]}): {exc.strerror}") from exc
        return (*row, "", keywrap.seal(pem, passphrase, context=issuer_id))

    # The rows read carry ``columns`` only; seal() appends key_path and key_sealed.
    _copy_rows(source, target, "issuers", columns, seal, [*columns, "key_path", "key_sealed"])
    for table in _ROWS[2:]:
        _copy_rows(source, target, table, _columns(source, table))
    for table, fields in _SINGLETONS.items():
        values = source.one(f"SELECT {', '.join(fields)} FROM {table}")
        target.execute(f"UPDATE {table} SET {', '.join(f'{c} = ?' for c in fields)}",
                       tuple(values))
    for table in INSERT_ORDERED:  # new rows are numbered after the copied ones
        target.execute(f"SELECT setval('{table}_insert_seq',"
                       f" (SELECT COALESCE(MAX(insert_seq), 0) + 1 FROM {table}), false)")


def _verify(source: SqliteStore, target: PostgresStore) -> CopyReport:
    def counts(tx: Tx) -> dict[str, int]:
        return {t: _count(tx, t) for t in COUNTED}
    expected = source._read(counts, snapshot=True)
    copied = target._read(counts, snapshot=True)
    if copied != expected:
        differ = {t: (expected[t], copied[t]) for t in COUNTED if expected[t] != copied[t]}
        raise StoreError(f"the copy in {target.describe()} differs from {source.describe()} "
                         f"(rows, source and copy: {differ}): drop that database and copy again")
    entries, head = target.audit_chain()
    verdict = audit.verify(entries, head)
    _, source_head = source.audit_chain()
    if not verdict.ok or head != source_head:
        raise StoreError(f"the audit log copied to {target.describe()} does not verify "
                         f"({verdict.problem or 'its head differs from the source'}): drop that "
                         "database and copy again")
    issuers = 0
    for tenant in target._read(lambda tx: [t for (t,) in tx.all(
            "SELECT DISTINCT tenant FROM issuers")]):
        for issuer in target.list_issuers(tenant).issuers:
            if target.load_issuer_key(issuer).public_key() != issuer.certificate().public_key():
                raise StoreError(f"the key of issuer {issuer.id} copied to "
                                 f"{target.describe()} does not belong to its certificate")
            issuers += 1
    return CopyReport(copied, verdict.entries_checked, verdict.head_hash, issuers)


def copy_store(source: SqliteStore, target: PostgresStore, passphrase: bytes) -> CopyReport:
    """Copy everything ``source`` holds into the empty store ``target``, whose issuer keys are
    sealed under ``passphrase`` (the one ``target`` was opened with), then check the copy."""
    _empty(target)
    target._write(lambda out: source._read(lambda src: _copy(src, out, passphrase),
                                           snapshot=True))
    return _verify(source, target)


def copy_deployment(config: SwitchConfig, url: str, *, password: str | None, passphrase: bytes,
                    passphrase_source: str) -> tuple[str, str, CopyReport]:
    """Copy the SQLite store ``config`` names into the PostgreSQL database at ``url`` (created
    there when the database is empty); the source's and target's descriptions and the report."""
    from enroll.store import open_store

    source = open_store(config)
    try:
        assert isinstance(source, SqliteStore)
        target = PostgresStore.open(url, password=password, passphrase=passphrase,
                                    passphrase_source=passphrase_source, create=True)
        try:
            return source.describe(), target.describe(), copy_store(source, target, passphrase)
        finally:
            target.close()
    finally:
        source.close()
