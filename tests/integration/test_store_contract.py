"""The store interface's contract, on both engines: a SQLite file and a database of the
session's real PostgreSQL server (``store_config`` runs each test once per engine)."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable

import psycopg
import pytest

from config.model import SwitchConfig
from enroll import audit, issuers, operators, pki, secrets
from enroll.audit import Action
from enroll.errors import (
    KeyLimitReached,
    KeyNameTaken,
    NoIssuer,
    OperatorNameTaken,
    StoreError,
    UnknownCertificate,
    UnknownKey,
    UnknownOperator,
    UnknownRequest,
    WrongKeyState,
)
from enroll.keys import KeyAction, KeyState
from enroll.store import AuditQuery, CertificateRecord, Store
from enroll.store.schema import SCHEMA_VERSION

NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
TS = int(NOW.timestamp())


def _make(tenant: str) -> Callable[[int], issuers.Material]:
    return lambda seq: issuers.make_issuer(tenant, seq, key_type="ec-p256",
                                           validity_s=365 * 86400, now=NOW)


def _key(store: Store, name: str, tenant: str = "acme") -> str:
    key_id = secrets.new_key_id()
    store.create_key(tenant, key_id=key_id, name=name, secret_hash=b"h" * 32, profile=None,
                     actor="t", ts=TS)
    return key_id


def _issue(store: Store, key_id: str | None, *, tenant: str = "acme",
           pending_id: str | None = None) -> CertificateRecord:
    issuer = store.current_issuer(tenant)
    assert issuer is not None
    cert = pki.make_leaf(pki.name("agent"), pki.generate_key().public_key(),
                         (issuer.certificate(), store.load_issuer_key(issuer)),
                         now=NOW, validity=dt.timedelta(days=30))
    record = CertificateRecord(
        format(cert.serial_number, "x"), issuer.id, tenant, key_id, "CN=agent", TS,
        int(cert.not_valid_after_utc.timestamp()), pki.sha256_fingerprint(cert),
        pki.cert_pem(cert).decode(), "valid", None, None, TS)
    store.record_certificate(record, pending_id=pending_id)
    return record


def _chain_ok(store: Store) -> audit.AuditVerification:
    entries, head = store.audit_chain()
    return audit.verify(entries, head)


# --- keys --------------------------------------------------------------------------------------


def test_a_created_key_is_active_listed_and_audited(store: Store) -> None:
    key_id = _key(store, "Laptops")
    [record] = store.list_keys("acme")
    assert (record.id, record.name, record.state) == (key_id, "Laptops", KeyState.ACTIVE)
    assert store.find_key("acme", "Laptops") == store.find_key("acme", key_id) == record
    assert store.list_keys("other") == [] and store.find_key("other", "Laptops") is None
    found = store.key_for_authentication("acme", key_id)
    assert found is not None and found[0] == b"h" * 32 and found[1] == record
    [entry] = store.audit_page(AuditQuery()).entries
    assert (entry.action, entry.target, entry.actor) == (Action.KEY_CREATED, key_id, "t")


def test_names_are_unique_per_tenant_whatever_their_case_and_revoked_keys_keep_theirs(
        store: Store) -> None:
    _key(store, "Laptops")
    with pytest.raises(KeyNameTaken):
        _key(store, "LAPTOPS")
    store.transition_key("acme", "Laptops", KeyAction.REVOKE, reason="r", confirm="Laptops",
                         actor="t", ts=TS)
    with pytest.raises(KeyNameTaken):
        _key(store, "laptops")
    _key(store, "Laptops", tenant="other")  # another tenant's names are its own


def test_the_fourth_live_key_is_refused_and_a_revoked_one_frees_a_place(store: Store) -> None:
    for name in ("A", "B", "C"):
        _key(store, name)
    store.transition_key("acme", "B", KeyAction.SUSPEND, reason="r", confirm=None, actor="t",
                         ts=TS)
    with pytest.raises(KeyLimitReached):  # suspended keys count
        _key(store, "D")
    assert store.count_live_keys("acme") == 3
    store.transition_key("acme", "C", KeyAction.REVOKE, reason="r", confirm="C", actor="t", ts=TS)
    _key(store, "D")
    assert store.count_live_keys("acme") == 3
    assert [e.action for e in store.audit_page(AuditQuery()).entries].count(Action.KEY_CREATED) == 4


def test_transitions_are_one_way_and_move_the_generation(store: Store) -> None:
    _key(store, "K")
    start = store.generation()
    suspended = store.transition_key("acme", "K", KeyAction.SUSPEND, reason=" lost ",
                                     confirm=None, actor="t", ts=TS)
    assert (suspended.state, suspended.state_reason) == (KeyState.SUSPENDED, "lost")
    with pytest.raises(WrongKeyState):
        store.transition_key("acme", "K", KeyAction.SUSPEND, reason="r", confirm=None, actor="t",
                             ts=TS)
    store.transition_key("acme", "K", KeyAction.REVOKE, reason="r", confirm="K", actor="t", ts=TS)
    with pytest.raises(WrongKeyState):
        store.transition_key("acme", "K", KeyAction.REACTIVATE, reason=None, confirm=None,
                             actor="t", ts=TS)
    with pytest.raises(UnknownKey):
        store.transition_key("acme", "nope", KeyAction.SUSPEND, reason="r", confirm=None,
                             actor="t", ts=TS)
    assert store.generation() == start + 2
    actions = [e.action for e in store.audit_page(AuditQuery()).entries]
    assert actions == [Action.KEY_REVOKED, Action.KEY_SUSPENDED, Action.KEY_CREATED]


def test_rename_keeps_names_unique_and_refuses_revoked_keys(store: Store) -> None:
    _key(store, "A")
    _key(store, "B")
    with pytest.raises(KeyNameTaken):
        store.rename_key("acme", "A", "b", actor="t", ts=TS)
    assert store.rename_key("acme", "A", "a", actor="t", ts=TS).name == "a"  # its own name
    store.transition_key("acme", "B", KeyAction.REVOKE, reason="r", confirm="B", actor="t", ts=TS)
    with pytest.raises(WrongKeyState):
        store.rename_key("acme", "B", "C", actor="t", ts=TS)


# --- the service, issuers and the trust view ---------------------------------------------------


def test_enabling_creates_one_issuer_whose_key_the_store_gives_back(store: Store) -> None:
    assert store.set_service("acme", True, actor="t", ts=TS, make_issuer=_make("acme"))
    assert not store.set_service("acme", True, actor="t", ts=TS, make_issuer=_make("acme"))
    assert store.service_enabled("acme") and not store.service_enabled("other")
    [issuer] = store.list_issuers("acme").issuers
    assert store.current_issuer("acme") == issuer
    key = store.load_issuer_key(issuer)
    assert key.public_key() == issuer.certificate().public_key()
    actions = [e.action for e in store.audit_page(AuditQuery()).entries]
    assert actions == [Action.SERVICE_ENABLED, Action.ISSUER_CREATED]


def test_renewal_retires_the_current_issuer_and_needs_one(store: Store) -> None:
    with pytest.raises(NoIssuer):
        store.renew_issuer("acme", actor="t", ts=TS, make_issuer=_make("acme"))
    store.set_service("acme", True, actor="t", ts=TS, make_issuer=_make("acme"))
    first = store.current_issuer("acme")
    assert first is not None
    record = _issue(store, None)
    generation = store.generation()
    second = store.renew_issuer("acme", actor="t", ts=TS + 1, make_issuer=_make("acme"))
    assert store.generation() == generation + 1
    listing = store.list_issuers("acme")
    assert [i.id for i in listing.issuers] == [first.id, second.id]
    assert listing.issuers[0].retired_at == TS + 1 and listing.issuers[1].retired_at is None
    assert listing.latest_cert_expiry == {first.id: record.not_after}
    assert store.current_issuer("acme") == listing.issuers[1]


def test_trust_inputs_hold_toggles_issuers_and_revocations_with_the_generation(
        store: Store) -> None:
    store.set_service("acme", True, actor="t", ts=TS, make_issuer=_make("acme"))
    key_id = _key(store, "K")
    record = _issue(store, key_id)
    store.revoke_certificate(record.serial, tenant="acme", reason="stolen", actor="t", ts=TS)
    store.transition_key("acme", "K", KeyAction.REVOKE, reason="r", confirm="K", actor="t", ts=TS)
    inputs = store.trust_inputs(["acme", "other"])
    assert inputs.generation == store.generation()
    acme, other = inputs.tenants["acme"], inputs.tenants["other"]
    assert acme.enabled and len(acme.issuers.issuers) == 1
    assert acme.revoked_keys == {key_id} and acme.revoked_certificates == {record.sha256}
    assert not other.enabled and other.issuers.issuers == () and not other.revoked_keys


# --- certificates ------------------------------------------------------------------------------


def test_recorded_certificates_count_on_their_key_and_are_found(store: Store) -> None:
    store.set_service("acme", True, actor="t", ts=TS, make_issuer=_make("acme"))
    key_id = _key(store, "K")
    first, second = _issue(store, key_id), _issue(store, None)
    assert store.find_key("acme", "K").certificates_issued == 1  # type: ignore[union-attr]
    assert store.find_certificate("acme", first.sha256) == first
    assert store.find_certificate("other", first.sha256) is None
    assert store.certificate_by_serial("acme", second.serial) == second
    # In the order they were recorded, though in the same second.
    assert store.list_certificates("acme") == [first, second]
    assert store.list_certificates("acme", key_id=key_id) == [first]
    revoked = store.revoke_certificate(first.serial, tenant=None, reason="r", actor="t", ts=TS)
    assert store.list_certificates("acme", state="revoked") == [revoked]
    assert store.list_certificates("acme", state="valid") == [second]


def test_a_key_that_is_no_longer_active_records_nothing(store: Store) -> None:
    store.set_service("acme", True, actor="t", ts=TS, make_issuer=_make("acme"))
    key_id = _key(store, "K")
    store.transition_key("acme", "K", KeyAction.SUSPEND, reason="r", confirm=None, actor="t",
                         ts=TS)
    with pytest.raises(WrongKeyState, match="suspended"):
        _issue(store, key_id)
    assert store.list_certificates("acme") == []


def test_revocation_refuses_unknown_and_repeated_serials(store: Store) -> None:
    store.set_service("acme", True, actor="t", ts=TS, make_issuer=_make("acme"))
    record = _issue(store, None)
    with pytest.raises(UnknownCertificate):
        store.revoke_certificate("abc", tenant=None, reason="r", actor="t", ts=TS)
    with pytest.raises(UnknownCertificate):
        store.revoke_certificate(record.serial, tenant="other", reason="r", actor="t", ts=TS)
    store.revoke_certificate(record.serial, tenant="acme", reason="r", actor="t", ts=TS)
    with pytest.raises(WrongKeyState):
        store.revoke_certificate(record.serial, tenant="acme", reason="r", actor="t", ts=TS)


# --- requests ----------------------------------------------------------------------------------


def test_a_request_is_filed_once_decided_once_and_issued_once(store: Store) -> None:
    store.set_service("acme", True, actor="t", ts=TS, make_issuer=_make("acme"))
    key_id = _key(store, "K")
    first = store.submit_request("acme", key_id=key_id, csr_der=b"csr", digest="d1",
                                 subject="agent", operation="simpleenroll", ts=TS)
    again = store.submit_request("acme", key_id=key_id, csr_der=b"other bytes", digest="d1",
                                 subject="agent", operation="simpleenroll", ts=TS + 5)
    assert again == first and first.state == "pending"
    assert store.list_requests("acme", "pending") == [first]
    assert store.list_requests("other") == []
    with pytest.raises(UnknownRequest):
        store.decide_request("req_nope", "approved", action=Action.REQUEST_APPROVED, actor="a",
                             reason=None, ts=TS)
    approved = store.decide_request(first.id, "approved", action=Action.REQUEST_APPROVED,
                                    actor="a", reason=None, ts=TS)
    assert (approved.state, approved.decided_by) == ("approved", "a")
    with pytest.raises(WrongKeyState):
        store.decide_request(first.id, "rejected", action=Action.REQUEST_REJECTED, actor="a",
                             reason="no", ts=TS)
    record = _issue(store, key_id, pending_id=first.id)
    [issued] = store.list_requests("acme", "issued")
    assert issued.certificate_serial == record.serial
    with pytest.raises(WrongKeyState):  # one approval, one certificate
        _issue(store, key_id, pending_id=first.id)


def test_an_issued_serverkeygen_request_is_set_aside_for_a_new_one(store: Store) -> None:
    store.set_service("acme", True, actor="t", ts=TS, make_issuer=_make("acme"))
    first = store.submit_request("acme", key_id=None, csr_der=b"c", digest="skg",
                                 subject="agent", operation="serverkeygen", ts=TS)
    store.decide_request(first.id, "approved", action=Action.REQUEST_APPROVED, actor="a",
                         reason=None, ts=TS)
    _issue(store, None, pending_id=first.id)
    second = store.submit_request("acme", key_id=None, csr_der=b"c", digest="skg",
                                  subject="agent", operation="serverkeygen", ts=TS)
    assert second.id != first.id and second.state == "pending"
    assert {r.state for r in store.list_requests("acme")} == {"issued", "pending"}


# --- lists -------------------------------------------------------------------------------------


def test_lists_come_in_the_order_rows_were_inserted_even_within_one_second(store: Store) -> None:
    """Keys, certificates and requests made in the same second are listed as they were made,
    whatever their ids (random: ordering ties by id would shuffle them)."""
    store.set_service("acme", True, actor="t", ts=TS, make_issuer=_make("acme"))
    key_ids = ["key_zz", "key_mm", "key_aa"]  # ids that sort against the order they are made in
    for n, key_id in enumerate(key_ids):
        store.create_key("acme", key_id=key_id, name=f"K{n}", secret_hash=b"h" * 32,
                         profile=None, actor="t", ts=TS)
    assert [k.id for k in store.list_keys("acme")] == key_ids
    serials = [_issue(store, "key_mm").serial for _ in range(12)]
    assert [c.serial for c in store.list_certificates("acme")] == serials
    assert [c.serial for c in store.list_certificates("acme", key_id="key_mm")] == serials
    digests = [f"digest-{n}" for n in range(12)]
    filed = [store.submit_request("acme", key_id="key_aa", csr_der=b"c", digest=d,
                                  subject=f"agent-{n}", operation="simpleenroll", ts=TS).id
             for n, d in enumerate(digests)]
    assert [r.id for r in store.list_requests()] == filed
    assert [r.id for r in store.list_requests("acme", "pending")] == filed


# --- audit -------------------------------------------------------------------------------------


def test_a_refused_change_leaves_no_audit_entry(store: Store) -> None:
    _key(store, "K")
    with pytest.raises(KeyNameTaken):
        _key(store, "k")
    assert len(store.audit_page(AuditQuery()).entries) == 1
    assert _chain_ok(store).ok


def test_audit_pages_filter_and_page_newest_first(store: Store) -> None:
    for i in range(5):
        store.append_audit(actor="alice" if i % 2 else "bob", tenant="acme", action="x.done",
                           ts=TS + i, target=str(i))
    store.append_audit(actor="bob", tenant="other", action="y.done", ts=TS + 10)
    page = store.audit_page(AuditQuery(tenant="acme", limit=2))
    assert [e.target for e in page.entries] == ["4", "3"] and page.next_cursor is not None
    page = store.audit_page(AuditQuery(tenant="acme", limit=2, before_seq=page.next_cursor))
    assert [e.target for e in page.entries] == ["2", "1"]
    page = store.audit_page(AuditQuery(tenant="acme", limit=2, before_seq=page.next_cursor))
    assert [e.target for e in page.entries] == ["0"] and page.next_cursor is None
    assert [e.target for e in store.audit_page(AuditQuery(actor="alice")).entries] == ["3", "1"]
    assert [e.action for e in store.audit_page(AuditQuery(action="y.done")).entries] == ["y.done"]
    window = store.audit_page(AuditQuery(since=TS + 1, until=TS + 3)).entries
    assert [e.target for e in window] == ["3", "2", "1"]
    assert _chain_ok(store).ok and _chain_ok(store).entries_checked == 6


def test_the_database_itself_refuses_to_change_the_audit_log(store_config: SwitchConfig,
                                                             store: Store) -> None:
    store.append_audit(actor="a", tenant=None, action="x", ts=TS)
    if store.engine == "sqlite":
        raw = sqlite3.connect(store_config.state_dir / "switch.db")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            raw.execute("UPDATE audit_log SET actor = 'mallory'")
        raw.close()
        return
    from tests.support.postgres import PASSWORD

    with psycopg.connect(store_config.store.url or "", password=PASSWORD) as raw:
        for statement in ("UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log",
                          "TRUNCATE audit_log"):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                raw.execute(statement)
            raw.rollback()


# --- the wrong-key rate limit ------------------------------------------------------------------


def test_failures_are_counted_in_the_store_across_connections_and_pruned(
        open_stores: Callable[[], Store]) -> None:
    one, two = open_stores(), open_stores()
    one.record_auth_failure("10.0.0.1", 100.0, forget_before=40.0)
    two.record_auth_failure("10.0.0.1", 101.0, forget_before=41.0)
    two.record_auth_failure("10.0.0.2", 102.0, forget_before=42.0)
    assert one.auth_failures("10.0.0.1", 0.0) == two.auth_failures("10.0.0.1", 0.0) == [100.0, 101.0]
    assert one.auth_failures("10.0.0.1", 100.0) == [101.0]
    one.record_auth_failure("10.0.0.3", 200.0, forget_before=150.0)  # prunes the old ones
    assert two.auth_failures("10.0.0.1", 0.0) == [] and two.auth_failures("10.0.0.2", 0.0) == []


# --- operators ---------------------------------------------------------------------------------


def _operator(store: Store, name: str, role: str = operators.SECURITY_ADMIN,
              tenants: tuple[str, ...] | None = None) -> str:
    token_id, token = operators.new_token()
    store.create_operator(name, role=role, tenants=tenants, token_id=token_id,
                          token_hash=operators.hash_token(token), password_hash=None, actor="t",
                          ts=TS)
    return token


def test_operators_are_created_found_changed_and_removed_each_change_audited(
        store: Store) -> None:
    token = _operator(store, "alice", tenants=("acme",))
    with pytest.raises(OperatorNameTaken):
        _operator(store, "Alice")
    alice = store.get_operator("alice")
    assert alice is not None and alice.tenants == ("acme",) and alice.password_hash is None
    token_id = operators.parse_token_id(token)
    assert token_id is not None and store.operator_by_token_id(token_id) == alice
    assert operators.token_matches(token, alice.token_hash)
    _operator(store, "bob", role=operators.SECURITY_READ)
    assert [o.name for o in store.list_operators()] == ["alice", "bob"]
    assert store.set_operator_role("bob", operators.SECURITY_ADMIN, actor="t", ts=TS).can_change
    assert store.set_operator_tenants("alice", None, actor="t", ts=TS).tenants is None
    new_id, new_token = operators.new_token()
    store.replace_operator_token("alice", token_id=new_id, token_hash=operators.hash_token(new_token),
                                 actor="t", ts=TS)
    assert store.operator_by_token_id(token_id) is None
    assert store.operator_by_token_id(new_id) is not None
    hashed = operators.hash_password("correct horse battery")
    changed = store.set_operator_password("alice", hashed, actor="t", ts=TS)
    assert operators.password_matches("correct horse battery", changed.password_hash)
    store.remove_operator("bob", actor="t", ts=TS)
    with pytest.raises(UnknownOperator):
        store.remove_operator("bob", actor="t", ts=TS)
    with pytest.raises(UnknownOperator):
        store.set_operator_role("bob", operators.SECURITY_READ, actor="t", ts=TS)
    assert store.get_operator("bob") is None
    actions = [e.action for e in reversed(store.audit_page(AuditQuery()).entries)]
    assert actions == [Action.OPERATOR_CREATED, Action.OPERATOR_CREATED, Action.OPERATOR_ROLE_SET,
                       Action.OPERATOR_TENANTS_SET, Action.OPERATOR_TOKEN_REPLACED,
                       Action.OPERATOR_PASSWORD_SET, Action.OPERATOR_REMOVED]
    assert all("hash" not in str(e.details) for e in store.audit_page(AuditQuery()).entries)


# --- units of work -----------------------------------------------------------------------------


def test_a_batch_commits_its_transactions_together_and_a_failed_one_alone_rolls_back(
        open_stores: Callable[[], Store]) -> None:
    store, other = open_stores(), open_stores()
    with store.batch():
        store.record_auth_failure("one", 1.0, forget_before=0.0)
        with pytest.raises(ZeroDivisionError), store.transaction():
            store.record_auth_failure("two", 2.0, forget_before=0.0)
            raise ZeroDivisionError
        with store.transaction():
            store.record_auth_failure("three", 3.0, forget_before=0.0)
        # Nothing is durable (or visible to another connection) before the batch commits.
        assert other.auth_failures("one", 0.0) == []
    assert [other.auth_failures(s, 0.0) for s in ("one", "two", "three")] == [[1.0], [], [3.0]]


def test_an_error_out_of_the_batch_rolls_everything_back(open_stores: Callable[[], Store]) -> None:
    store, other = open_stores(), open_stores()
    with pytest.raises(RuntimeError), store.batch():
        store.record_auth_failure("one", 1.0, forget_before=0.0)
        raise RuntimeError
    assert other.auth_failures("one", 0.0) == []
    store.record_auth_failure("one", 2.0, forget_before=0.0)  # the store is usable after
    assert other.auth_failures("one", 0.0) == [2.0]


def test_batches_do_not_nest(store: Store) -> None:
    with store.batch(), pytest.raises(RuntimeError), store.batch():
        pass


def test_a_database_error_in_a_savepoint_is_a_store_error_and_the_batch_goes_on(
        open_stores: Callable[[], Store]) -> None:
    store, other = open_stores(), open_stores()
    bogus = CertificateRecord("1", "no-such-issuer", "acme", None, "CN=x", TS, TS, "ab", "pem",
                              "valid", None, None, TS)
    with store.batch():
        with pytest.raises(StoreError):
            store.record_certificate(bogus)  # the issuer does not exist: a foreign key fails
        store.record_auth_failure("seven", 7.0, forget_before=0.0)
    assert other.auth_failures("seven", 0.0) == [7.0]


def test_a_change_and_its_audit_entry_commit_together_in_a_transaction(
        open_stores: Callable[[], Store]) -> None:
    store, other = open_stores(), open_stores()
    with pytest.raises(RuntimeError), store.transaction():
        _key(store, "K")
        assert store.find_key("acme", "K") is not None  # the unit reads its own writes
        raise RuntimeError
    assert other.list_keys("acme") == [] and other.audit_page(AuditQuery()).entries == ()


def test_the_schema_is_current_and_reopening_changes_nothing(
        open_stores: Callable[[], Store]) -> None:
    first = open_stores()
    assert first.schema_version() == SCHEMA_VERSION
    first.append_audit(actor="a", tenant=None, action="x", ts=TS)
    again = open_stores()
    assert again.schema_version() == SCHEMA_VERSION
    assert len(again.audit_page(AuditQuery()).entries) == 1


def test_both_engines_hold_the_tables_a_copy_moves(store_config: SwitchConfig,
                                                   store: Store) -> None:
    from enroll.store.schema import TABLES

    if store.engine == "sqlite":
        raw = sqlite3.connect(store_config.state_dir / "switch.db")
        names = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        raw.close()
    else:
        from tests.support.postgres import PASSWORD

        with psycopg.connect(store_config.store.url or "", password=PASSWORD) as conn:
            names = {r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert set(TABLES) <= names
