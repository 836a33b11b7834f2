"""Provisioning keys through the authority, on a real SQLite file."""

from __future__ import annotations

import base64
import sqlite3

import pytest

from config.model import SwitchConfig
from enroll.authority import Authority
from enroll.errors import (
    ConfirmationMismatch,
    InvalidKeyName,
    KeyLimitReached,
    KeyNameTaken,
    ReasonRequired,
    UnknownKey,
    UnknownTenant,
    WrongKeyState,
)
from enroll.keys import KeyState


def test_generate_returns_the_secret_once_and_stores_only_its_hash(
    authority: Authority, switch_config: SwitchConfig
) -> None:
    record, secret = authority.generate_key("acme", "Laptops", actor="alice")
    assert record.state is KeyState.ACTIVE and record.name == "Laptops"
    assert all(secret not in repr(k) for k in authority.list_keys("acme"))
    body = secret[len("swk_") + 16 + 1:]  # the random part may itself contain "_"
    assert len(body) == 43
    raw = base64.urlsafe_b64decode(body + "=")
    authority.close()
    for path in switch_config.state_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert secret.encode() not in data and body.encode() not in data and raw not in data


def test_authenticate_accepts_the_secret_and_refuses_anything_else(authority: Authority) -> None:
    record, secret = authority.generate_key("acme", "Laptops", actor="alice")
    found = authority.authenticate_key("acme", secret)
    assert found is not None and found.id == record.id
    # A read: what the key is then used for records its use (Issuance), not the lookup.
    assert authority.get_key("acme", "Laptops").last_used_at is None
    assert authority.authenticate_key("other", secret) is None
    assert authority.authenticate_key("acme", secret[:-2] + "xx") is None
    assert authority.authenticate_key("acme", "garbage") is None
    assert authority.authenticate_key("acme", "") is None


def test_names_are_unique_per_tenant_whatever_their_case_including_revoked(
    authority: Authority,
) -> None:
    authority.generate_key("acme", "Laptops", actor="a")
    with pytest.raises(KeyNameTaken):
        authority.generate_key("acme", "LAPTOPS", actor="a")
    authority.revoke_key("acme", "Laptops", reason="r", confirm="Laptops", actor="a")
    with pytest.raises(KeyNameTaken):
        authority.generate_key("acme", "laptops", actor="a")
    authority.generate_key("other", "Laptops", actor="a")  # another tenant: fine


def test_invalid_name_is_refused(authority: Authority) -> None:
    with pytest.raises(InvalidKeyName):
        authority.generate_key("acme", "1st", actor="a")


def test_limit_counts_active_and_suspended_but_not_revoked(authority: Authority) -> None:
    authority.generate_key("acme", "One", actor="a")
    authority.generate_key("acme", "Two", actor="a")
    authority.generate_key("acme", "Three", actor="a")
    authority.suspend_key("acme", "Two", reason="pause", actor="a")
    with pytest.raises(KeyLimitReached):
        authority.generate_key("acme", "Four", actor="a")
    authority.revoke_key("acme", "Two", reason="gone", confirm="Two", actor="a")
    authority.generate_key("acme", "Four", actor="a")
    with pytest.raises(KeyLimitReached):
        authority.generate_key("acme", "Five", actor="a")
    authority.generate_key("other", "One", actor="a")  # the limit is per tenant


def test_each_allowed_transition_and_each_refusal(authority: Authority) -> None:
    authority.generate_key("acme", "Kiosks", actor="a")
    with pytest.raises(WrongKeyState):
        authority.reactivate_key("acme", "Kiosks", actor="a")
    with pytest.raises(ReasonRequired):
        authority.suspend_key("acme", "Kiosks", reason="  ", actor="a")
    assert authority.suspend_key("acme", "Kiosks", reason="pause", actor="a").state is KeyState.SUSPENDED
    with pytest.raises(WrongKeyState):
        authority.suspend_key("acme", "Kiosks", reason="again", actor="a")
    assert authority.reactivate_key("acme", "Kiosks", actor="a").state is KeyState.ACTIVE
    with pytest.raises(ReasonRequired):
        authority.revoke_key("acme", "Kiosks", reason=None, confirm="Kiosks", actor="a")
    with pytest.raises(ConfirmationMismatch):
        authority.revoke_key("acme", "Kiosks", reason="r", confirm="kiosks", actor="a")
    with pytest.raises(ConfirmationMismatch):
        authority.revoke_key("acme", "Kiosks", reason="r", confirm=None, actor="a")
    revoked = authority.revoke_key("acme", "Kiosks", reason="leaked", confirm="Kiosks", actor="a")
    assert revoked.state is KeyState.REVOKED and revoked.state_reason == "leaked"
    for refused in (
        lambda: authority.suspend_key("acme", "Kiosks", reason="x", actor="a"),
        lambda: authority.reactivate_key("acme", "Kiosks", actor="a"),
        lambda: authority.revoke_key("acme", "Kiosks", reason="x", confirm="Kiosks", actor="a"),
        lambda: authority.rename_key("acme", "Kiosks", "Other", actor="a"),
    ):
        with pytest.raises(WrongKeyState):
            refused()


def test_suspended_key_can_be_revoked(authority: Authority) -> None:
    authority.generate_key("acme", "Kiosks", actor="a")
    authority.suspend_key("acme", "Kiosks", reason="pause", actor="a")
    assert authority.revoke_key("acme", "Kiosks", reason="r", confirm="Kiosks", actor="a").state \
        is KeyState.REVOKED


def test_rename_keeps_the_id_and_checks_the_new_name(authority: Authority) -> None:
    record, _ = authority.generate_key("acme", "Old", actor="a")
    authority.generate_key("acme", "Taken", actor="a")
    renamed = authority.rename_key("acme", "Old", "New name", actor="a")
    assert renamed.id == record.id and renamed.name == "New name"
    with pytest.raises(KeyNameTaken):
        authority.rename_key("acme", "New name", "taken", actor="a")
    with pytest.raises(InvalidKeyName):
        authority.rename_key("acme", "New name", "", actor="a")
    assert authority.rename_key("acme", "New name", "NEW NAME", actor="a").name == "NEW NAME"


def test_unknown_tenant_and_unknown_key_are_refused(authority: Authority) -> None:
    with pytest.raises(UnknownTenant):
        authority.generate_key("nope", "Key", actor="a")
    with pytest.raises(UnknownTenant):
        authority.list_keys("nope")
    with pytest.raises(UnknownKey):
        authority.suspend_key("acme", "Missing", reason="r", actor="a")
    authority.generate_key("other", "Theirs", actor="a")
    with pytest.raises(UnknownKey):  # another tenant's key is not visible
        authority.suspend_key("acme", "Theirs", reason="r", actor="a")


def test_a_refused_change_writes_nothing(authority: Authority, switch_config: SwitchConfig) -> None:
    authority.generate_key("acme", "Key", actor="a")
    before = authority.audit_entries()
    generation = authority.generation()
    with pytest.raises(ConfirmationMismatch):
        authority.revoke_key("acme", "Key", reason="r", confirm="key", actor="a")
    assert authority.audit_entries() == before
    assert authority.generation() == generation
    assert authority.get_key("acme", "Key").state is KeyState.ACTIVE


def test_state_changes_bump_the_generation_for_running_servers(authority: Authority) -> None:
    authority.generate_key("acme", "Key", actor="a")
    g0 = authority.generation()
    authority.suspend_key("acme", "Key", reason="r", actor="a")
    assert authority.generation() == g0 + 1


def test_store_is_wal_with_full_sync_and_private(switch_config: SwitchConfig, authority: Authority) -> None:
    conn = authority.store.conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    db = switch_config.state_dir / "switch.db"
    assert db.stat().st_mode & 0o777 == 0o600
    assert switch_config.state_dir.stat().st_mode & 0o777 == 0o700
    raw = sqlite3.connect(db)
    assert raw.execute("PRAGMA user_version").fetchone()[0] >= 1
    raw.close()
