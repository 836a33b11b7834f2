"""The queries every serving process runs on each store change and each minute (the trust read),
and the one each enrollment runs when subjects must be unique, go through indexes (schema
version 6) on a real SQLite file: with 60,000 certificates the trust read scanned them all and
took 1.1 to 2.5 s in each of six workers, which a revocation waited for. SQLite's own query plan
is the judge; the results are the other tests' (tests/integration/test_issuers.py and the EST
tests)."""

from __future__ import annotations

from pathlib import Path

from enroll.store.ops_certs import SUBJECT_HOLDER_SQL
from enroll.store.ops_keys import ISSUER_EXPIRY_SQL, REVOKED_CERTIFICATES_SQL
from enroll.store.sqlite import SqliteStore


def _plan(store: SqliteStore, sql: str, args: tuple[object, ...]) -> str:
    return "\n".join(row[-1] for row in store.conn.execute(f"EXPLAIN QUERY PLAN {sql}", args))


def test_the_trust_read_and_the_subject_check_use_indexes_not_a_scan(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path / "switch.db")
    try:
        revoked = _plan(store, REVOKED_CERTIFICATES_SQL, ())
        assert "certificates_revoked" in revoked and "SCAN certificates\n" not in revoked + "\n"
        expiry = _plan(store, ISSUER_EXPIRY_SQL, ("demo",))
        assert "certificates_issuer_expiry" in expiry, expiry
        subject = _plan(store, SUBJECT_HOLDER_SQL, ("demo", "CN=a", 0, None))
        assert "certificates_subject" in subject, subject
        for plan in (revoked, expiry, subject):
            assert "SCAN c\n" not in plan + "\n" and "SCAN certificates\n" not in plan + "\n", plan
    finally:
        store.close()
