"""The live-session registry: which sessions a new trust state closes, and why."""

from __future__ import annotations

import datetime as dt

import attrs
import trio
import trio.lowlevel
from cryptography import x509
from cryptography.x509.oid import NameOID

from config.model import IdentityRule
from gateway.peer import Decision, TenantTrust, still_allowed
from gateway.sessions import Session, SessionRegistry

NOW = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
ORG, ISSUER = b"o" * 32, b"i" * 32
NAME = (x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "org CA")]), b"k" * 32)


def _tenant(**kw: object) -> TenantTrust:
    base = TenantTrust(name="acme", identity=IdentityRule(), organisation_cas={ORG: None},  # type: ignore[dict-item]
                       provisioning_issuers={ISSUER: None}, revoked_serials={},  # type: ignore[dict-item]
                       revoked_keys=frozenset(), revoked_certificates=frozenset())
    return attrs.evolve(base, **kw)


def _decision(trust: str, **kw: object) -> Decision:
    anchor = ORG if trust == "organisation" else ISSUER
    base = Decision(True, "ok", "acme", trust, "agent", "pk_1" if trust == "provisioned" else None,  # type: ignore[arg-type]
                    "1f", "ab" * 32, anchor, NOW + dt.timedelta(days=1))
    return attrs.evolve(base, **kw)


def test_still_allowed_names_what_changed() -> None:
    prov, org = _decision("provisioned"), _decision("organisation")
    assert still_allowed(prov, _tenant(), NOW) is None
    assert still_allowed(org, _tenant(), NOW) is None
    assert still_allowed(prov, _tenant(revoked_keys=frozenset({"pk_1"})), NOW) == "key_revoked"
    assert still_allowed(prov, _tenant(revoked_certificates=frozenset({"ab" * 32})), NOW) == \
        "certificate_revoked"
    assert still_allowed(prov, _tenant(provisioning_issuers={}), NOW) == "provisioning_disabled"
    assert still_allowed(org, _tenant(organisation_cas={}), NOW) == "ca_removed"
    listed = attrs.evolve(org, chain_serials=((NAME, 31),))
    assert still_allowed(listed, _tenant(), NOW) is None
    assert still_allowed(listed, _tenant(revoked_serials={NAME: frozenset({31})}), NOW) == \
        "certificate_revoked"
    assert still_allowed(org, None, NOW) == "tenant_removed"
    assert still_allowed(org, _tenant(), NOW + dt.timedelta(days=2)) == "certificate_expired"
    # a suspended key is not in revoked_keys: nothing closes
    assert still_allowed(prov, _tenant(revoked_keys=frozenset({"pk_2"})), NOW) is None


async def test_reevaluate_evicts_exactly_the_sessions_that_lost_trust() -> None:
    evicted: list[tuple[int, str]] = []
    registry = SessionRegistry(on_evict=lambda s, r: evicted.append((s.id, r)))
    org = Session(_decision("organisation"), trio.CancelScope(), "10.0.0.1")
    prov = Session(_decision("provisioned"), trio.CancelScope(), "10.0.0.2")
    other_key = Session(_decision("provisioned", key_id="pk_2"), trio.CancelScope(), "10.0.0.3")
    for session in (org, prov, other_key):
        registry.add(session)
    registry.reevaluate({"acme": _tenant(revoked_keys=frozenset({"pk_1"}))}, NOW)
    assert evicted == [(prov.id, "key_revoked")]
    assert prov.cancel_scope.cancel_called and prov.close_reason == "key_revoked"
    assert not org.cancel_scope.cancel_called and not other_key.cancel_scope.cancel_called
    registry.reevaluate({"acme": _tenant(organisation_cas={})}, NOW)
    assert evicted[-1] == (org.id, "ca_removed")
    registry.reevaluate({}, NOW)
    assert evicted[-1] == (other_key.id, "tenant_removed")
    assert len(evicted) == 3  # an evicted session is not evicted twice


async def test_wait_empty_returns_when_the_last_session_leaves() -> None:
    registry = SessionRegistry()
    session = Session(_decision("organisation"), trio.CancelScope(), "x")
    registry.add(session)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(registry.wait_empty)
        await trio.lowlevel.checkpoint()
        registry.remove(session)
    assert len(registry) == 0


async def test_admit_registers_and_evicts_at_once_what_the_current_state_refuses() -> None:
    """A session is judged at its handshake against the state of its accept time; a revocation
    applied since (before it registered, so ``reevaluate`` could not see it) must still apply."""
    evicted: list[tuple[int, str]] = []
    registry = SessionRegistry(on_evict=lambda s, r: evicted.append((s.id, r)))
    fine = Session(_decision("provisioned", key_id="pk_2"), trio.CancelScope(), "10.0.0.1")
    stale = Session(_decision("provisioned"), trio.CancelScope(), "10.0.0.2")
    state = {"acme": _tenant(revoked_keys=frozenset({"pk_1"}))}
    assert registry.admit(fine, state, NOW) is None
    assert registry.admit(stale, state, NOW) == "key_revoked"
    assert len(registry) == 2  # registered all the same: its task removes it as it ends
    assert stale.cancel_scope.cancel_called and stale.close_reason == "key_revoked"
    assert not fine.cancel_scope.cancel_called
    assert evicted == [(stale.id, "key_revoked")]


def test_key_delta_names_only_keys_newly_revoked_when_nothing_else_changed() -> None:
    from gateway.sessions import key_delta

    before = {"acme": _tenant(revoked_keys=frozenset({"pk_0"}))}
    assert key_delta(before, {"acme": _tenant(revoked_keys=frozenset({"pk_0", "pk_1"}))}) == \
        frozenset({"pk_1"})
    assert key_delta(None, before) is None  # nothing checked yet
    assert key_delta(before, {"acme": _tenant(revoked_keys=frozenset({"pk_0"}))}) is None  # equal
    assert key_delta(before, {"acme": _tenant()}) is None  # a key un-revoked (none are, but safe)
    assert key_delta(before, {"acme": _tenant(revoked_keys=frozenset({"pk_0", "pk_1"}),
                                              organisation_cas={})}) is None
    assert key_delta(before, {"acme": _tenant(revoked_keys=frozenset({"pk_0", "pk_1"}),
                                              revoked_certificates=frozenset({"ab"}))}) is None
    assert key_delta(before, {}) is None  # a tenant removed


async def test_a_key_revoked_alone_closes_exactly_its_sessions_through_the_key_index() -> None:
    evicted: list[tuple[int, str]] = []
    registry = SessionRegistry(on_evict=lambda s, r: evicted.append((s.id, r)))
    state = {"acme": _tenant()}
    registry.reevaluate(state, NOW)  # the full pass the index's narrow passes follow
    of_key = [Session(_decision("provisioned"), trio.CancelScope(), f"10.0.0.{i}")
              for i in range(3)]
    other = Session(_decision("provisioned", key_id="pk_2"), trio.CancelScope(), "10.0.1.1")
    org = Session(_decision("organisation"), trio.CancelScope(), "10.0.1.2")
    # expired by now + 2 days, but a narrow pass asks only the revoked key's sessions
    expiring = Session(_decision("provisioned", key_id="pk_3", not_after=NOW),
                       trio.CancelScope(), "10.0.1.3")
    for session in (*of_key, other, org, expiring):
        registry.admit(session, state, NOW)
    registry.remove(of_key[2])  # a session that ended leaves the index
    assert registry.sessions_of_key("pk_1") == 2
    later = NOW + dt.timedelta(seconds=1)
    registry.reevaluate({"acme": _tenant(revoked_keys=frozenset({"pk_1"}))}, later)
    assert sorted(evicted) == sorted((s.id, "key_revoked") for s in of_key[:2])
    assert not any(s.cancel_scope.cancel_called for s in (of_key[2], other, org, expiring))
    # the same state again (a rebuild for time's sake) is a full pass: the expiry is seen
    registry.reevaluate({"acme": _tenant(revoked_keys=frozenset({"pk_1"}))}, later)
    assert evicted[-1] == (expiring.id, "certificate_expired")
    for session in (*of_key, other, org, expiring):
        registry.remove(session)
    assert registry.sessions_of_key("pk_1") == 0 and len(registry) == 0


async def test_a_narrow_pass_waits_for_no_longer_than_the_full_pass_interval() -> None:
    from gateway.sessions import FULL_PASS_INTERVAL

    evicted: list[tuple[int, str]] = []
    registry = SessionRegistry(on_evict=lambda s, r: evicted.append((s.id, r)))
    registry.reevaluate({"acme": _tenant()}, NOW)
    expiring = Session(_decision("provisioned", key_id="pk_3", not_after=NOW),
                       trio.CancelScope(), "10.0.1.3")
    registry.admit(expiring, {"acme": _tenant()}, NOW)
    registry.reevaluate({"acme": _tenant(revoked_keys=frozenset({"pk_1"}))},
                        NOW + FULL_PASS_INTERVAL)
    assert evicted == [(expiring.id, "certificate_expired")]
