"""`switch store copy`: a SQLite deployment moved into an empty PostgreSQL database, everything in
it (issuer keys sealed under the passphrase, the audit chain intact) and nothing merged."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import attrs
import pytest

from config.load import load_config
from enroll import audit, pki
from enroll.authority import Authority
from enroll.store import CertificateRecord, Store, open_store
from tests.support.hosts import Host, make_host, store_table
from tests.support.postgres import PostgresServer

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
TS = int(NOW.timestamp())


def _issue(store: Store, key_id: str | None, cn: str) -> None:
    issuer = store.current_issuer("demo")
    assert issuer is not None
    cert = pki.make_leaf(pki.name(cn), pki.generate_key().public_key(),
                         (issuer.certificate(), store.load_issuer_key(issuer)), now=NOW,
                         validity=dt.timedelta(days=30))
    store.record_certificate(CertificateRecord(
        format(cert.serial_number, "x"), issuer.id, "demo", key_id, f"CN={cn}", TS,
        int(cert.not_valid_after_utc.timestamp()), pki.sha256_fingerprint(cert),
        pki.cert_pem(cert).decode(), "valid", None, None, TS))


def _populate(host: Host) -> None:
    """Everything a deployment holds, several rows of each made in the same second."""
    authority = Authority.open(load_config(host.config))
    try:
        authority.enable_service("demo", actor="t")
        authority.renew_issuer("demo", actor="t")
        keys = {n: authority.generate_key("demo", n, actor="t")[0].id for n in ("A", "B", "C")}
        authority.suspend_key("demo", "B", reason="paused", actor="t")
        store = authority.store
        for n in range(5):
            _issue(store, keys["A"], f"agent-{n}")
        _issue(store, None, "approved-by-hand")
        authority.revoke_key("demo", "C", reason="leaked", confirm="C", actor="t")
        for n in range(3):
            store.submit_request("demo", key_id=keys["A"], csr_der=b"c", digest=f"d{n}",
                                 subject=f"waiting-{n}", operation="simpleenroll", ts=TS)
        store.create_operator("alice", role="security-admin", tenants=None, token_id="tok_1",
                              token_hash=b"h" * 32, password_hash=None, actor="t", ts=TS)
        serial = store.list_certificates("demo")[0].serial
        store.revoke_certificate(serial, tenant="demo", reason="stolen", actor="t", ts=TS)
        store.record_auth_failure("192.0.2.1", TS, forget_before=TS - 60)
    finally:
        authority.close()


def _everything(store: Store) -> dict[str, object]:
    listing = store.list_issuers("demo")
    entries, head = store.audit_chain()
    return {
        "keys": store.list_keys("demo"), "certificates": store.list_certificates("demo"),
        "requests": store.list_requests(), "operators": store.list_operators(),
        "issuers": [attrs.evolve(i, key_path="") for i in listing.issuers],
        "expiry": listing.latest_cert_expiry, "enabled": store.service_enabled("demo"),
        "audit": list(entries), "head": head, "generation": store.generation(),
        "trust": {name: attrs.evolve(t, issuers=attrs.evolve(t.issuers, issuers=tuple(
            attrs.evolve(i, key_path="") for i in t.issuers.issuers)))
            for name, t in store.trust_inputs(["demo"]).tenants.items()},
    }


def test_store_copy_moves_everything_into_an_empty_database(
        tmp_path: Path, postgres: PostgresServer) -> None:
    host = make_host(tmp_path / "d", "d", upstream=1)
    _populate(host)
    database = postgres.create_database(template="template0")  # no schema at all
    try:
        target = make_host(tmp_path / "pg", "pg", upstream=1, like=host,
                           store=(postgres, database))
        secrets = target.directory / "secrets"
        done = host.cli("store", "copy", "--to", postgres.url(database), "--password-file",
                        str(secrets / "pg.pass"), "--passphrase-file",
                        str(secrets / "issuer-keys.pass"))
        assert "3 keys, 6 certificates, 3 requests, 2 issuers" in done.stdout
        assert "1 operators" in done.stdout and "chain verified" in done.stdout
        source = open_store(load_config(host.config))
        copied = open_store(load_config(target.config))
        try:
            assert copied.engine == "postgresql"
            expected = _everything(source)
            assert _everything(copied) == expected
            assert audit.verify(*copied.audit_chain()).ok
            for issuer in copied.list_issuers("demo").issuers:  # sealed, and they open
                key = copied.load_issuer_key(issuer)
                assert key.public_key() == issuer.certificate().public_key()
            assert copied.auth_failures("192.0.2.1", 0) == []  # a minute's memory: not copied
            # New rows are listed after the copied ones.
            copied.create_key("demo", key_id="key_0", name="D", secret_hash=b"h" * 32,
                              profile=None, actor="t", ts=TS)
            assert [k.name for k in copied.list_keys("demo")] == ["A", "B", "C", "D"]
        finally:
            source.close()
            copied.close()
        again = host.cli("store", "copy", "--to", postgres.url(database), "--password-file",
                         str(secrets / "pg.pass"), "--passphrase-file",
                         str(secrets / "issuer-keys.pass"), check=False)
        assert again.returncode == 1 and again.stderr.startswith("switch: store_exists: ")
        assert "is not empty" in again.stderr
    finally:
        postgres.drop_database(database)


@pytest.mark.parametrize("url", ["postgresql://switch:secret@127.0.0.1/db",
                                 "postgresql://switch@127.0.0.1/db?password=secret",
                                 "mysql://switch@127.0.0.1/db"])
def test_store_copy_refuses_a_password_in_the_url_and_other_engines(tmp_path: Path,
                                                                   url: str) -> None:
    host = make_host(tmp_path / "d", "d", upstream=1)
    (tmp_path / "kek").write_text("passphrase\n")
    done = host.cli("store", "copy", "--to", url, "--passphrase-file", str(tmp_path / "kek"),
                    check=False)
    assert done.returncode == 2 and done.stderr.startswith("switch: usage: --to must")
    assert "secret" not in done.stderr  # a password given by mistake is not echoed


def test_store_copy_needs_a_sqlite_source(tmp_path: Path, postgres: PostgresServer) -> None:
    database = postgres.create_database()
    try:
        host = make_host(tmp_path / "d", "d", upstream=1)
        host.config.write_text(host.config.read_text()
                               + store_table(host.directory, postgres, database))
        done = host.cli("store", "copy", "--to", postgres.url(database), "--passphrase-file",
                        str(host.directory / "secrets" / "issuer-keys.pass"), check=False)
        assert done.returncode == 1 and "unsupported_store" in done.stderr
    finally:
        postgres.drop_database(database)
