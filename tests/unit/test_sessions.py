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
NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "org CA")])


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
