"""The audit log: every action recorded, append-only, tampering detected."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import attrs
import pytest

from config.model import SwitchConfig
from enroll.audit import entry_from_row, entry_hash
from enroll.authority import Authority


def _all_actions(authority: Authority) -> None:
    authority.enable_service("acme", actor="alice")
    authority.renew_issuer("acme", actor="alice")
    authority.generate_key("acme", "Laptops", actor="bob")
    authority.rename_key("acme", "Laptops", "Notebooks", actor="bob")
    authority.suspend_key("acme", "Notebooks", reason="rollout paused", actor="carol")
    authority.reactivate_key("acme", "Notebooks", actor="carol")
    authority.revoke_key("acme", "Notebooks", reason="leaked", confirm="Notebooks", actor="dave")
    authority.disable_service("acme", actor="alice")


def _raw(config: SwitchConfig) -> sqlite3.Connection:
    conn = sqlite3.connect(config.state_dir / "switch.db", isolation_level=None)
    conn.execute("DROP TRIGGER audit_log_no_update")
    conn.execute("DROP TRIGGER audit_log_no_delete")
    return conn


def test_every_action_is_recorded_with_actor_tenant_target_and_reason(authority: Authority) -> None:
    _all_actions(authority)
    entries = authority.audit_entries("acme")
    assert [e.action for e in entries] == [
        "issuer.created", "service.enabled", "issuer.renewed", "key.created", "key.renamed",
        "key.suspended", "key.reactivated", "key.revoked", "service.disabled",
    ]
    assert all(e.tenant == "acme" and e.ts > 0 for e in entries)
    by_action = {e.action: e for e in entries}
    assert by_action["key.suspended"].reason == "rollout paused"
    assert by_action["key.suspended"].actor == "carol"
    assert by_action["key.revoked"].reason == "leaked"
    assert by_action["key.renamed"].details == {"old_name": "Laptops", "new_name": "Notebooks"}
    assert by_action["key.created"].target == by_action["key.revoked"].target
    assert authority.audit_entries("other") == []
    assert authority.verify_audit().ok


def test_enabling_an_enabled_service_writes_no_entry(authority: Authority) -> None:
    authority.enable_service("acme", actor="a")
    count = len(authority.audit_entries())
    authority.enable_service("acme", actor="a")
    authority.disable_service("other", actor="a")  # already off
    assert len(authority.audit_entries()) == count


def test_updates_and_deletes_are_refused_by_the_store(authority: Authority,
                                                      switch_config: SwitchConfig) -> None:
    _all_actions(authority)
    conn = sqlite3.connect(switch_config.state_dir / "switch.db")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE audit_log SET reason = 'x' WHERE seq = 1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM audit_log WHERE seq = 1")
    conn.close()


_COLUMNS = "seq, ts, actor, tenant, action, target, reason, details, prev_hash, hash"


def _rows(conn: sqlite3.Connection) -> dict[int, tuple[object, ...]]:
    return {r[0]: r[1:] for r in conn.execute(f"SELECT {_COLUMNS} FROM audit_log")}


def _put(conn: sqlite3.Connection, seq: int, row: tuple[object, ...]) -> None:
    conn.execute("UPDATE audit_log SET ts=?, actor=?, tenant=?, action=?, target=?, reason=?,"
                 " details=?, prev_hash=?, hash=? WHERE seq=?", (*row, seq))


def test_an_edited_entry_is_named(authority: Authority, switch_config: SwitchConfig) -> None:
    _all_actions(authority)
    _raw(switch_config).execute("UPDATE audit_log SET reason = 'routine' WHERE seq = 8")
    result = authority.verify_audit()
    assert not result.ok and result.first_bad_seq == 8
    assert result.problem == "entry 8 was edited: its content does not match its hash"


def test_an_edit_with_its_hash_recomputed_names_the_edited_entry(
        authority: Authority, switch_config: SwitchConfig) -> None:
    _all_actions(authority)
    conn = _raw(switch_config)
    entry = entry_from_row(tuple(conn.execute(
        f"SELECT {_COLUMNS} FROM audit_log WHERE seq = 4").fetchone()))
    forged = attrs.evolve(entry, actor="mallory")
    digest = entry_hash(seq=4, ts=forged.ts, actor=forged.actor, tenant=forged.tenant,
                        action=forged.action, target=forged.target, reason=forged.reason,
                        details=forged.details, prev_hash=forged.prev_hash)
    conn.execute("UPDATE audit_log SET actor = 'mallory', hash = ? WHERE seq = 4", (digest,))
    result = authority.verify_audit()
    assert not result.ok and result.first_bad_seq == 4
    assert result.problem == ("entry 4 was edited (and its hash recomputed) or entry 5's link "
                              "to it was altered")


def test_the_last_entry_edited_with_its_hash_recomputed_is_named(
        authority: Authority, switch_config: SwitchConfig) -> None:
    _all_actions(authority)
    conn = _raw(switch_config)
    entry = entry_from_row(tuple(conn.execute(
        f"SELECT {_COLUMNS} FROM audit_log WHERE seq = 9").fetchone()))
    digest = entry_hash(seq=9, ts=entry.ts, actor="mallory", tenant=entry.tenant,
                        action=entry.action, target=entry.target, reason=entry.reason,
                        details=entry.details, prev_hash=entry.prev_hash)
    conn.execute("UPDATE audit_log SET actor = 'mallory', hash = ? WHERE seq = 9", (digest,))
    result = authority.verify_audit()
    assert not result.ok and result.first_bad_seq == 9
    assert result.problem == "entry 9 was edited (and its hash recomputed) or the head was altered"


def test_a_removed_entry_is_named(authority: Authority, switch_config: SwitchConfig) -> None:
    _all_actions(authority)
    _raw(switch_config).execute("DELETE FROM audit_log WHERE seq = 4")
    result = authority.verify_audit()
    assert not result.ok and result.first_bad_seq == 4
    assert result.problem == "entry 4 is missing: it was removed"


def test_a_removed_entry_is_named_when_the_rest_were_renumbered(
        authority: Authority, switch_config: SwitchConfig) -> None:
    _all_actions(authority)
    conn = _raw(switch_config)
    rows = _rows(conn)
    for seq in range(4, 9):
        _put(conn, seq, rows[seq + 1])
    conn.execute("DELETE FROM audit_log WHERE seq = 9")
    conn.execute("UPDATE audit_head SET last_seq = 8, last_hash = ?", (rows[9][-1],))
    result = authority.verify_audit()
    assert not result.ok and result.first_bad_seq == 4
    assert result.problem is not None and result.problem.startswith("entry 4 is missing")


def test_swapped_entries_are_named_as_reordered(authority: Authority,
                                                switch_config: SwitchConfig) -> None:
    _all_actions(authority)
    conn = _raw(switch_config)
    rows = _rows(conn)
    _put(conn, 3, rows[4])
    _put(conn, 4, rows[3])
    result = authority.verify_audit()
    assert not result.ok and result.first_bad_seq == 3
    assert result.problem == "entries were reordered: entry 3 holds the content of entry 4"


def test_a_cut_tail_is_detected(authority: Authority, switch_config: SwitchConfig) -> None:
    _all_actions(authority)
    _raw(switch_config).execute("DELETE FROM audit_log WHERE seq >= 8")
    result = authority.verify_audit()
    assert not result.ok and result.first_bad_seq == 8
    assert result.problem == ("the log ends at entry 7 but its head records entry 9: "
                              "entries 8-9 were removed from the end")


def test_an_intact_log_verifies_and_reports_its_head(authority: Authority) -> None:
    _all_actions(authority)
    result = authority.verify_audit()
    assert result.ok and result.entries_checked == 9 and len(result.head_hash) == 64


def test_log_survives_reopening(switch_config: SwitchConfig, tmp_path: Path) -> None:
    first = Authority.open(switch_config, create=True)
    first.generate_key("acme", "Key", actor="a")
    first.close()
    second = Authority.open(switch_config)
    second.suspend_key("acme", "Key", reason="r", actor="a")
    assert second.verify_audit().ok and len(second.audit_entries()) == 2
    second.close()
