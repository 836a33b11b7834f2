"""Provisioning issuers: creation on first enable, renewal, trust across renewals, the schema."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import stat
from pathlib import Path

import attrs
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from config.model import SwitchConfig
from enroll import pki
from enroll.authority import Authority
from enroll.errors import NoIssuer, StoreError
from enroll.issuers import load_issuer_key
from enroll.store import SCHEMA_VERSION, CertificateRecord
from enroll.store.sqlite import SqliteStore
from tests.support.est_service import NOW


def test_first_enable_creates_a_p256_issuer_with_a_private_key_file(
    authority: Authority, switch_config: SwitchConfig
) -> None:
    assert not authority.service_enabled("acme")
    authority.enable_service("acme", actor="a")
    assert authority.service_enabled("acme")
    [issuer] = authority.list_issuers("acme")
    cert = issuer.certificate()
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key_path = Path(issuer.key_path)
    assert key_path.is_relative_to(switch_config.state_dir)
    assert key_path.stat().st_mode & 0o777 == 0o600
    assert key_path.parent.stat().st_mode & 0o777 == 0o700
    assert load_issuer_key(issuer).public_key() == cert.public_key()
    assert issuer.trusted


def test_the_state_directory_is_owner_only_whatever_the_umask(switch_config: SwitchConfig) -> None:
    old = os.umask(0o022)
    try:
        auth = Authority.open(switch_config, create=True)
        auth.enable_service("acme", actor="a")
        auth.generate_key("acme", "Laptops", actor="a")
        state = switch_config.state_dir
        modes = {p.relative_to(state).as_posix(): stat.S_IMODE(p.stat().st_mode)
                 for p in (state, *state.rglob("*"))}
        auth.close()
    finally:
        os.umask(old)
    assert {"switch.db", "switch.db-wal", "switch.db-shm", "issuers", "issuers/acme"} <= set(modes)
    assert {p: m for p, m in modes.items() if m not in (0o600, 0o700)} == {}
    assert modes["issuers"] == modes["issuers/acme"] == modes["."] == 0o700
    assert modes["switch.db"] == modes["switch.db-wal"] == modes["switch.db-shm"] == 0o600


def test_a_store_made_under_a_loose_umask_is_tightened_when_opened(switch_config: SwitchConfig) -> None:
    old = os.umask(0o022)
    try:
        SqliteStore.open(switch_config.state_dir / "switch.db").close()  # as an older Switch did
        (switch_config.state_dir / "issuers").mkdir(mode=0o755)
        auth = Authority.open(switch_config)
        auth.enable_service("acme", actor="a")
        auth.close()
    finally:
        os.umask(old)
    for name in ("switch.db", "switch.db-wal", "switch.db-shm"):
        path = switch_config.state_dir / name
        assert not path.exists() or stat.S_IMODE(path.stat().st_mode) == 0o600, name
    assert stat.S_IMODE((switch_config.state_dir / "issuers").stat().st_mode) == 0o700


def test_p384_issuers_when_configured(switch_config: SwitchConfig) -> None:
    auth = Authority.open(attrs.evolve(switch_config, issuer_key_type="ec-p384"), create=True)
    auth.enable_service("acme", actor="a")
    cert = auth.list_issuers("acme")[0].certificate()
    assert cert.public_key().curve.name == "secp384r1"  # type: ignore[union-attr]
    auth.close()


def test_disable_then_enable_keeps_the_same_issuer(authority: Authority) -> None:
    authority.enable_service("acme", actor="a")
    first = authority.list_issuers("acme")
    authority.disable_service("acme", actor="a")
    assert not authority.service_enabled("acme")
    authority.enable_service("acme", actor="a")
    assert authority.list_issuers("acme") == first


def test_renew_needs_an_issuer(authority: Authority) -> None:
    with pytest.raises(NoIssuer):
        authority.renew_issuer("acme", actor="a")


def _record_certificate(authority: Authority, issuer_id: str, not_after: dt.datetime) -> None:
    """Stand-in for enrollment: record a certificate issued by ``issuer_id``."""
    issuer = next(i for i in authority.list_issuers("acme") if i.id == issuer_id)
    key = pki.generate_key()
    cert = pki.make_leaf(pki.name("agent"), key.public_key(),
                         (issuer.certificate(), load_issuer_key(issuer)),
                         now=NOW, validity=not_after - NOW)
    authority.store.record_certificate(CertificateRecord(
        format(cert.serial_number, "x"), issuer_id, "acme", None, "CN=agent", int(NOW.timestamp()),
        int(not_after.timestamp()), pki.sha256_fingerprint(cert), pki.cert_pem(cert).decode(),
        "valid", None, None, int(NOW.timestamp())))


def test_renewed_issuer_keeps_the_old_one_trusted_until_what_it_issued_expires(
    authority: Authority,
) -> None:
    authority.enable_service("acme", actor="a")
    [old] = authority.list_issuers("acme")
    _record_certificate(authority, old.id, NOW + dt.timedelta(days=30))
    new = authority.renew_issuer("acme", actor="a")
    issuers = {i.id: i for i in authority.list_issuers("acme", now=NOW + dt.timedelta(days=1))}
    assert issuers[old.id].retired_at is not None and issuers[old.id].trusted
    assert issuers[new.id].retired_at is None and issuers[new.id].trusted
    assert authority.current_issuer("acme").id == new.id
    later = {i.id: i for i in authority.list_issuers("acme", now=NOW + dt.timedelta(days=31))}
    assert not later[old.id].trusted and later[new.id].trusted


def test_retired_issuer_with_nothing_issued_is_dropped_at_once(authority: Authority) -> None:
    authority.enable_service("acme", actor="a")
    [old] = authority.list_issuers("acme")
    authority.renew_issuer("acme", actor="a")
    trusted = {i.id: i.trusted for i in authority.list_issuers("acme")}
    assert trusted[old.id] is False


def test_an_empty_database_is_migrated_to_the_current_schema(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path / "s" / "switch.db")
    assert store.schema_version() == SCHEMA_VERSION
    tables = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"tenant_state", "provisioning_keys", "issuers", "certificates", "pending_requests",
            "audit_log", "audit_head", "changes"} <= tables
    store.close()
    again = SqliteStore.open(tmp_path / "s" / "switch.db")  # reopening applies nothing twice
    assert again.schema_version() == SCHEMA_VERSION
    again.close()


def test_a_store_from_a_newer_switch_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "switch.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        SqliteStore.open(path)
