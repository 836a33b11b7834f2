"""The store's rules hold when callers on separate connections act at the same moment, on both
engines: each thread has a store of its own (its own connection, as another process or host
has), and a barrier releases them together."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from enroll import audit, issuers, secrets
from enroll.errors import EnrollError
from enroll.keys import MAX_LIVE_KEYS, KeyAction, KeyState
from enroll.store import AuditQuery, Store

T = TypeVar("T")
NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
TS = int(NOW.timestamp())
THREADS = 10
#: Generous: ten connections on a busy 2-core machine.
BARRIER_TIMEOUT_S = 60.0


def _at_once(open_stores: Callable[[], Store], action: Callable[[Store, int], T],
             count: int = THREADS) -> list[T | str]:
    """Run ``action(store, i)`` in ``count`` threads, each on its own store, released together;
    an ``EnrollError`` is returned as its reason."""
    stores = [open_stores() for _ in range(count)]
    barrier = threading.Barrier(count)

    def run(i: int) -> T | str:
        barrier.wait(timeout=BARRIER_TIMEOUT_S)
        try:
            return action(stores[i], i)
        except EnrollError as exc:
            return exc.reason

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


def _create(store: Store, i: int, name: str | None = None) -> str:
    key_id = secrets.new_key_id()
    store.create_key("acme", key_id=key_id, name=name or f"Key {i}", secret_hash=b"h" * 32,
                     profile=None, actor=f"worker-{i}", ts=TS)
    return "ok"


def _verified(store: Store) -> audit.AuditVerification:
    entries, head = store.audit_chain()
    return audit.verify(entries, head)


def test_ten_concurrent_key_creations_make_exactly_three_live_keys(
        open_stores: Callable[[], Store]) -> None:
    outcomes = _at_once(open_stores, _create)
    assert sorted(outcomes) == sorted(["ok"] * MAX_LIVE_KEYS
                                      + ["key_limit_reached"] * (THREADS - MAX_LIVE_KEYS))
    check = open_stores()
    live = check.list_keys("acme")
    assert len(live) == MAX_LIVE_KEYS
    created = check.audit_page(AuditQuery(action="key.created")).entries
    assert sorted(e.target or "" for e in created) == sorted(k.id for k in live)
    assert _verified(check).ok


def test_concurrent_creations_of_one_name_make_one_key(open_stores: Callable[[], Store]) -> None:
    outcomes = _at_once(open_stores, lambda s, i: _create(s, i, "Fleet" if i % 2 else "FLEET"),
                        count=4)
    assert sorted(outcomes) == ["key_name_taken"] * 3 + ["ok"]


def test_concurrent_renames_to_one_name_leave_names_unique(
        open_stores: Callable[[], Store]) -> None:
    setup = open_stores()
    for name in ("A", "B", "C"):
        _create(setup, 0, name)
    outcomes = _at_once(open_stores, lambda s, i: s.rename_key(
        "acme", "ABC"[i], "Shared", actor=f"w{i}", ts=TS).name, count=3)
    assert sorted(outcomes) == ["Shared", "key_name_taken", "key_name_taken"]
    names = [k.name.casefold() for k in setup.list_keys("acme")]
    assert len(names) == len(set(names)) == 3


def test_concurrent_transitions_of_one_key_apply_once_and_stay_one_way(
        open_stores: Callable[[], Store]) -> None:
    setup = open_stores()
    _create(setup, 0, "K")
    suspends = _at_once(open_stores, lambda s, i: s.transition_key(
        "acme", "K", KeyAction.SUSPEND, reason="r", confirm=None, actor=f"w{i}", ts=TS).state)
    assert sorted(map(str, suspends)) == ["suspended"] + ["wrong_key_state"] * (THREADS - 1)

    # Revoke and reactivate racing: whatever the order, a revoked key is never active again.
    def race(store: Store, i: int) -> str:
        action = KeyAction.REVOKE if i % 2 else KeyAction.REACTIVATE
        return str(store.transition_key("acme", "K", action, reason="r", confirm="K",
                                        actor=f"w{i}", ts=TS).state)

    _at_once(open_stores, race)
    assert setup.find_key("acme", "K").state is KeyState.REVOKED  # type: ignore[union-attr]
    log = list(reversed(setup.audit_page(AuditQuery(tenant="acme")).entries))
    states = [e.details["to"] for e in log if e.action != "key.created"]
    assert states[0] == "suspended" and states[-1] == "revoked" and states.count("revoked") == 1
    for before, after in zip(log[1:], log[2:], strict=False):  # each starts where the last ended
        assert after.details["from"] == before.details["to"]
    assert _verified(setup).ok


def test_concurrent_audit_appends_leave_one_verifiable_chain(
        open_stores: Callable[[], Store]) -> None:
    per_thread = 20

    def append(store: Store, i: int) -> int:
        for n in range(per_thread):
            store.append_audit(actor=f"w{i}", tenant="acme", action="x", ts=TS, target=str(n))
        return i

    _at_once(open_stores, append)
    check = open_stores()
    result = _verified(check)
    assert result.ok and result.entries_checked == THREADS * per_thread


def test_concurrent_renewals_each_make_one_current_issuer(open_stores: Callable[[], Store]) -> None:
    def make(seq: int) -> issuers.Material:
        return issuers.make_issuer("acme", seq, key_type="ec-p256", validity_s=86400, now=NOW)

    setup = open_stores()
    setup.set_service("acme", True, actor="t", ts=TS, make_issuer=make)
    _at_once(open_stores, lambda s, i: s.renew_issuer("acme", actor=f"w{i}", ts=TS + i,
                                                      make_issuer=make).id, count=5)
    listing = setup.list_issuers("acme").issuers
    assert [i.seq for i in listing] == [1, 2, 3, 4, 5, 6]
    assert [i.retired_at is None for i in listing] == [False] * 5 + [True]
    assert _verified(setup).ok


def test_failures_counted_from_many_connections_add_up(open_stores: Callable[[], Store]) -> None:
    _at_once(open_stores, lambda s, i: s.record_auth_failure("10.9.9.9", 1000.0 + i,
                                                             forget_before=900.0))
    assert len(open_stores().auth_failures("10.9.9.9", 900.0)) == THREADS
