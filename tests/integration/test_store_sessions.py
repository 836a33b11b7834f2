"""Console sessions in the store, on both engines: kept under their hash, seen by every other
connection (process or host), ended by sign-out, by removing the operator or changing its
password, pruned once expired; never copied or backed up."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from enroll import operators
from enroll.audit import Action
from enroll.errors import UnknownOperator
from enroll.store import AuditQuery, ConsoleSession, Store

TS = int(dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC).timestamp())


def _operator(store: Store, name: str) -> None:
    token_id, token = operators.new_token()
    store.create_operator(name, role="security-admin", tenants=None, token_id=token_id,
                          token_hash=operators.hash_token(token),
                          password_hash=operators.hash_password("a long password"),
                          actor="local:test", ts=TS)


def _session(name: str, operator: str, ts: int = TS, idle: int = 1800,
             lifetime: int = 28800) -> ConsoleSession:
    id_hash = hashlib.sha256(name.encode()).hexdigest()
    return ConsoleSession(id_hash, operator, ts, ts, idle, ts + lifetime, "192.0.2.7")


def test_a_session_is_kept_under_its_hash_and_seen_by_every_connection(
        open_stores: Callable[[], Store]) -> None:
    one, two = open_stores(), open_stores()
    _operator(one, "alice")
    session = _session("s1", "alice")
    one.create_console_session(session, actor="operator:alice")
    found = two.console_session(session.id_hash)
    assert found is not None and found[0] == session and found[1].name == "alice"
    assert two.console_session(hashlib.sha256(b"another").hexdigest()) is None
    [entry] = two.audit_page(AuditQuery(action=Action.OPERATOR_SIGNED_IN)).entries
    assert (entry.actor, entry.target, entry.details) == \
        ("operator:alice", "alice", {"source": "192.0.2.7"})
    two.touch_console_session(session.id_hash, TS + 100)
    two.touch_console_session(session.id_hash, TS + 50)  # never moves back
    after = one.console_session(session.id_hash)
    assert after is not None and after[0].last_seen_at == TS + 100
    with pytest.raises(UnknownOperator):
        one.create_console_session(_session("s2", "nobody"), actor="operator:nobody")


def test_signing_out_removing_the_operator_or_changing_its_password_ends_its_sessions(
        open_stores: Callable[[], Store]) -> None:
    one, two = open_stores(), open_stores()
    for name in ("alice", "bob", "carol"):
        _operator(one, name)
    sessions = {n: _session(f"s-{n}-{i}", n) for i, n in enumerate(("alice", "bob", "carol"))}
    extra = _session("s-alice-2", "alice")
    for s in (*sessions.values(), extra):
        one.create_console_session(s, actor=f"operator:{s.operator}")
    assert two.end_console_session(sessions["alice"].id_hash, actor="operator:alice", ts=TS)
    assert not two.end_console_session(sessions["alice"].id_hash, actor="operator:alice", ts=TS)
    assert one.console_session(sessions["alice"].id_hash) is None
    assert one.console_session(extra.id_hash) is not None  # only that one session
    two.remove_operator("bob", actor="local:test", ts=TS)
    assert one.console_session(sessions["bob"].id_hash) is None
    assert one.count_console_sessions("bob") == 0
    two.set_operator_password("carol", operators.hash_password("another long one"),
                              actor="local:test", ts=TS)
    assert one.console_session(sessions["carol"].id_hash) is None
    two.set_operator_role("alice", "security-read", actor="local:test", ts=TS)
    found = one.console_session(extra.id_hash)  # a role change keeps the session: read anew
    assert found is not None and found[1].role == "security-read"
    [out] = one.audit_page(AuditQuery(action=Action.OPERATOR_SIGNED_OUT)).entries
    assert (out.actor, out.target) == ("operator:alice", "alice")


def test_sessions_that_ended_are_judged_expired_and_pruned_by_a_later_sign_in(
        store: Store) -> None:
    _operator(store, "alice")
    idle = _session("idle", "alice", idle=600)
    old = _session("old", "alice", lifetime=3600)
    store.create_console_session(idle, actor="operator:alice")
    store.create_console_session(old, actor="operator:alice")
    assert not idle.expired(TS + 599) and idle.expired(TS + 600)
    assert not old.expired(TS + 599) and old.expired(TS + 3600)
    store.create_console_session(_session("new", "alice", ts=TS + 4000),
                                 actor="operator:alice")
    assert store.console_session(idle.id_hash) is None
    assert store.console_session(old.id_hash) is None
    assert store.count_console_sessions("alice") == 1


def test_a_backup_holds_no_session(tmp_path: Path) -> None:
    from enroll.store import open_sqlite
    from enroll.store.backup import backup

    store = open_sqlite(tmp_path / "state" / "switch.db", create=True)
    try:
        _operator(store, "alice")
        store.create_console_session(_session("s", "alice"), actor="operator:alice")
    finally:
        store.close()
    manifest = backup(tmp_path / "state" / "switch.db", tmp_path / "b.tar.gz",
                      now=dt.datetime.now(dt.UTC))
    assert manifest.rows["console_sessions"] == 0 and manifest.rows["operators"] == 1
