"""``gateway.peer.check_peer``, table-driven: every reason it can return, and what it admits.

Each case is a chain (leaf first, anchor last) as OpenSSL would hand it over after verifying it,
and the tenant's trust state; the decision is a pure function of both and ``NOW``.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Sequence

import attrs
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtensionOID, NameOID

from config.model import IdentityRule
from enroll import pki
from enroll.policy import key_binding_extension
from gateway.peer import (
    TenantTrust,
    allow_matches,
    check_peer,
    crl_issuer,
    fingerprint,
    revocation_reason,
    still_allowed,
)

NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
Issuer = tuple[x509.Certificate, pki.PrivateKey]


@attrs.frozen
class Pki:
    org: Issuer
    provisioning: Issuer
    other_tenants_provisioning: Issuer
    intermediate: Issuer  # under the provisioning issuer: provisioned chains have no intermediate
    org_intermediate: Issuer  # under the organisation CA


@functools.cache
def _pki() -> Pki:
    def ca(name: str, issuer: Issuer | None = None) -> Issuer:
        key = pki.generate_key()
        return pki.make_ca(pki.name(name), key, now=NOW - DAY, validity=365 * DAY,
                           issuer=issuer, path_length=None), key

    provisioning, org = ca("demo provisioning CA"), ca("demo organisation CA")
    return Pki(org, provisioning, ca("acme provisioning CA"), ca("an intermediate", provisioning),
               ca("an organisation intermediate", org))


def _leaf(issuer: Issuer, subject: x509.Name | str = "agent", *, emails: Sequence[str] = (),
          key_id: str | None = None, client: bool = True, server: bool | None = None,
          not_before: dt.datetime = NOW - DAY,
          validity: dt.timedelta = 30 * DAY,
          extensions: Sequence[tuple[x509.ExtensionType, bool]] = ()) -> x509.Certificate:
    extra = list(extensions)
    if key_id is not None:
        extra.append((key_binding_extension(key_id), False))
    return pki.make_leaf(pki.name(subject) if isinstance(subject, str) else subject,
                         pki.generate_key().public_key(), issuer,
                         now=not_before + pki.CLOCK_SKEW, validity=validity - pki.CLOCK_SKEW,
                         emails=emails, client=client,
                         server=not client if server is None else server, extra_extensions=extra)


def _tenant(p: Pki, **kw: object) -> TenantTrust:
    base = TenantTrust(
        name="demo", identity=IdentityRule("email-san", ("*@example.com",)),
        organisation_cas={fingerprint(p.org[0]): p.org[0]},
        provisioning_issuers={fingerprint(p.provisioning[0]): p.provisioning[0]},
        revoked_serials={}, revoked_keys=frozenset(), revoked_certificates=frozenset())
    return attrs.evolve(base, **kw)


@attrs.frozen
class Case:
    """A chain built from the test PKI and the tenant state it is judged against."""

    chain: Callable[[Pki], list[x509.Certificate]]
    tenant: Callable[[Pki, list[x509.Certificate]], TenantTrust] = lambda p, chain: _tenant(p)
    identity: str | None = None


def _prov(**kw: object) -> Callable[[Pki], list[x509.Certificate]]:
    return lambda p: [_leaf(p.provisioning, key_id="pk_1", **kw), p.provisioning[0]]  # type: ignore[arg-type]


def _org(**kw: object) -> Callable[[Pki], list[x509.Certificate]]:
    return lambda p: [_leaf(p.org, **kw), p.org[0]]  # type: ignore[arg-type]


def _rule(kind: str, *allow: str) -> Callable[[Pki, list[x509.Certificate]], TenantTrust]:
    return lambda p, chain: _tenant(p, identity=IdentityRule(kind, allow))  # type: ignore[arg-type]


TWO_CNS = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a"),
                     x509.NameAttribute(NameOID.COMMON_NAME, "b")])
BAD_EKU = (x509.UnrecognizedExtension(ExtensionOID.EXTENDED_KEY_USAGE, b"\x05\x00"), False)

CASES: dict[str, tuple[Case, str]] = {
    # --- admitted ---------------------------------------------------------------------------
    "ok/provisioned": (Case(_prov(subject="laptop-1"), identity="laptop-1"), "ok"),
    "ok/provisioned-with-a-suspended-key": (Case(_prov(subject="laptop-1")), "ok"),
    "ok/organisation-email-san": (Case(_org(emails=["a@example.com"]), identity="a@example.com"), "ok"),
    "ok/organisation-email-san-upper-case": (Case(_org(emails=["A@Example.COM"])), "ok"),
    "ok/organisation-email-san-without-allow": (
        Case(_org(emails=["a@elsewhere.test"]), _rule("email-san"), "a@elsewhere.test"), "ok"),
    "ok/organisation-common-name": (
        Case(_org(subject="host-7"), _rule("common-name", "host-*"), "host-7"), "ok"),
    "ok/organisation-any": (Case(_org(subject="whoever"), _rule("any"), "CN=whoever"), "ok"),
    "ok/organisation-crl-still-fresh": (Case(_org(emails=["a@example.com"]), lambda p, chain: _tenant(
        p, crl_next_update={crl_issuer(p.org[0]): NOW + DAY})), "ok"),
    "ok/organisation-not-on-the-crl": (Case(_org(emails=["a@example.com"]), lambda p, chain: _tenant(
        p, revoked_serials={crl_issuer(p.org[0]): frozenset({chain[0].serial_number + 1})})), "ok"),
    # --- refused ----------------------------------------------------------------------------
    "fail/no-chain": (Case(lambda p: []), "no_client_certificate"),
    "fail/another-tenants-provisioning-issuer": (Case(
        lambda p: [_leaf(p.other_tenants_provisioning, key_id="pk_1"),
                   p.other_tenants_provisioning[0]]), "issuer_not_tenant"),
    "fail/provisioning-service-off": (Case(
        _prov(), lambda p, chain: _tenant(p, provisioning_issuers={})), "issuer_not_tenant"),
    "fail/organisation-source-off": (Case(
        _org(emails=["a@example.com"]), lambda p, chain: _tenant(p, organisation_cas={})),
        "issuer_not_tenant"),
    "fail/leaf-is-a-ca": (Case(lambda p: [p.intermediate[0], p.provisioning[0]]), "leaf_is_ca"),
    "fail/expired": (Case(_org(emails=["a@example.com"], not_before=NOW - 10 * DAY,
                               validity=5 * DAY)), "certificate_expired"),
    "fail/not-yet-valid": (Case(_org(emails=["a@example.com"], not_before=NOW + DAY)),
                           "certificate_not_yet_valid"),
    "fail/no-client-auth": (Case(_org(emails=["a@example.com"], client=False)), "no_client_auth"),
    "fail/malformed-extension": (Case(_org(emails=["a@example.com"], client=False, server=False,
                                           extensions=[BAD_EKU])), "malformed_certificate"),
    "fail/provisioned-through-an-intermediate": (Case(
        lambda p: [_leaf(p.intermediate, key_id="pk_1"), p.intermediate[0], p.provisioning[0]]),
        "chain_unexpected"),
    "fail/provisioned-without-key-binding": (Case(
        lambda p: [_leaf(p.provisioning), p.provisioning[0]]), "key_binding_missing"),
    "fail/provisioned-key-revoked": (Case(
        _prov(), lambda p, chain: _tenant(p, revoked_keys=frozenset({"pk_1"}))), "key_revoked"),
    "fail/provisioned-certificate-revoked": (Case(_prov(), lambda p, chain: _tenant(
        p, revoked_certificates=frozenset({pki.sha256_fingerprint(chain[0])}))),
        "certificate_revoked"),
    "fail/provisioned-identity-with-a-line-break": (Case(_prov(subject="laptop\r\nX-Evil: 1")),
                                                    "identity_invalid"),
    "fail/organisation-on-the-crl": (Case(_org(emails=["a@example.com"]), lambda p, chain: _tenant(
        p, revoked_serials={crl_issuer(p.org[0]): frozenset({chain[0].serial_number})})),
        "certificate_revoked"),
    "fail/organisation-crl-past-next-update": (Case(
        _org(emails=["a@example.com"]), lambda p, chain: _tenant(
            p, crl_next_update={crl_issuer(p.org[0]): NOW - dt.timedelta(seconds=1)})),
        "crl_expired"),
    "fail/organisation-no-email-san": (Case(_org()), "identity_email_count"),
    "fail/organisation-two-email-sans": (Case(_org(emails=["a@example.com", "b@example.com"])),
                                         "identity_email_count"),
    "fail/organisation-email-not-allowed": (Case(_org(emails=["a@evil.example"])),
                                            "identity_not_allowed"),
    "fail/organisation-email-with-a-line-break": (Case(
        _org(emails=["x\r\nX-Switch-Identity: admin@example.com"])), "identity_invalid"),
    "fail/organisation-email-with-a-nul": (Case(_org(emails=["a\x00@example.com"])),
                                           "identity_invalid"),
    "fail/organisation-common-name-missing": (Case(_org(emails=["a@example.com"],
                                                        subject=x509.Name([])),
                                                   _rule("common-name")), "identity_common_name"),
    "fail/organisation-two-common-names": (Case(_org(subject=TWO_CNS), _rule("common-name")),
                                           "identity_common_name"),
    "fail/organisation-common-name-not-allowed": (Case(_org(subject="db-1"),
                                                       _rule("common-name", "host-*")),
                                                  "identity_not_allowed"),
    "fail/organisation-common-name-with-a-tab": (Case(_org(subject="host\t1"),
                                                      _rule("common-name")), "identity_invalid"),
    "fail/organisation-any-subject-with-a-line-break": (Case(_org(subject="a\nb"), _rule("any")),
                                                        "identity_invalid"),
}


@pytest.mark.parametrize(("case", "reason"), list(CASES.values()), ids=list(CASES))
def test_check_peer(case: Case, reason: str) -> None:
    p = _pki()
    chain = case.chain(p)
    decision = check_peer(case.tenant(p, chain), chain, NOW)
    assert (decision.allowed, decision.reason) == (reason == "ok", reason)
    assert decision.tenant == "demo"
    if case.identity is not None:
        assert decision.identity == case.identity
    if decision.allowed:
        assert decision.anchor == fingerprint(chain[-1])
        assert decision.serial == format(chain[0].serial_number, "x")
        assert still_allowed(decision, case.tenant(p, chain), NOW) is None


def test_the_table_covers_every_reason_check_peer_returns() -> None:
    """Every reason code in gateway/peer.py's decision path has a case above."""
    covered = {reason for _, reason in CASES.values()}
    assert covered >= {
        "ok", "no_client_certificate", "issuer_not_tenant", "leaf_is_ca", "certificate_expired",
        "certificate_not_yet_valid", "no_client_auth", "malformed_certificate",
        "chain_unexpected", "key_binding_missing", "key_revoked", "certificate_revoked",
        "crl_expired", "identity_email_count", "identity_not_allowed", "identity_common_name",
        "identity_invalid"}


@pytest.mark.parametrize(("candidate", "patterns", "matches"), [
    ("a@example.com", ["*@example.com"], True),
    ("A@EXAMPLE.com", ["*@example.com"], True),
    ("a@example.com.evil", ["*@example.com"], False),
    ("x\n@example.com", ["*@example.com"], False),
    ("x@example.com\n", ["*@example.com"], False),
    ("x\r\n@example.com", ["?*@example.com"], False),
    ("x\n@example.com", ["?\n@example.com"], True),  # a pattern may spell one out itself
    ("b@example.com", ["[a-c]@example.com"], True),
    ("d@example.com", ["[!a-c]@example.com"], True),
    ("\n@example.com", ["[!a-c]@example.com"], False),
    ("host-[1]", ["host-[[]1]"], True),
    ("a+b@example.com", ["a+b@*"], True),
    ("ab@example.com", ["a+b@*"], False),
])
def test_allow_patterns_are_globs_whose_wildcards_never_match_control_characters(
        candidate: str, patterns: list[str], matches: bool) -> None:
    assert allow_matches(candidate, patterns) is matches


#: Revocations, as (chain, the tenant's trust state once they are made): what a live session
#: re-check and a new handshake both decide from ``revocation_reason``.
Revocation = Callable[[Pki, list[x509.Certificate]], TenantTrust]


def _org_via_intermediate(p: Pki) -> list[x509.Certificate]:
    return [_leaf(p.org_intermediate, emails=["a@example.com"]), p.org_intermediate[0], p.org[0]]


REVOCATIONS: dict[str, tuple[Callable[[Pki], list[x509.Certificate]], Revocation]] = {
    "provisioned/key-revoked": (_prov(), lambda p, chain: _tenant(
        p, revoked_keys=frozenset({"pk_1"}))),
    "provisioned/certificate-revoked": (_prov(), lambda p, chain: _tenant(
        p, revoked_certificates=frozenset({pki.sha256_fingerprint(chain[0])}))),
    "provisioned/another-key-revoked": (_prov(), lambda p, chain: _tenant(
        p, revoked_keys=frozenset({"pk_2"}))),
    "provisioned/another-certificate-revoked": (_prov(), lambda p, chain: _tenant(
        p, revoked_certificates=frozenset({"00" * 32}))),
    "organisation/leaf-on-the-crl": (_org(emails=["a@example.com"]), lambda p, chain: _tenant(
        p, revoked_serials={crl_issuer(p.org[0]): frozenset({chain[0].serial_number})})),
    "organisation/intermediate-on-the-crl": (_org_via_intermediate, lambda p, chain: _tenant(
        p, revoked_serials={crl_issuer(p.org[0]): frozenset({chain[1].serial_number})})),
    "organisation/leaf-on-the-intermediates-crl": (_org_via_intermediate, lambda p, chain: _tenant(
        p, revoked_serials={crl_issuer(p.org_intermediate[0]): frozenset({chain[0].serial_number})})),
    "organisation/another-serial-on-the-crl": (_org(emails=["a@example.com"]), lambda p, chain:
        _tenant(p, revoked_serials={crl_issuer(p.org[0]): frozenset({chain[0].serial_number + 1})})),
}


@pytest.mark.parametrize(("chain", "revoked"), list(REVOCATIONS.values()), ids=list(REVOCATIONS))
def test_the_handshake_check_and_the_live_recheck_agree_on_every_revocation(
        chain: Callable[[Pki], list[x509.Certificate]], revoked: Revocation) -> None:
    p = _pki()
    certs = chain(p)
    admitted = check_peer(_tenant(p), certs, NOW)
    assert admitted.allowed, admitted.reason
    after = revoked(p, certs)
    live = still_allowed(admitted, after, NOW)
    handshake = check_peer(after, certs, NOW)
    assert (live or "ok") == handshake.reason
    assert live == revocation_reason(after, admitted.trust or "organisation", admitted.key_id,
                                     admitted.sha256, admitted.anchor or b"",
                                     admitted.chain_serials)


def test_the_revocation_cases_cover_both_sources_and_both_outcomes() -> None:
    p = _pki()
    reasons = set()
    for chain, revoked in REVOCATIONS.values():
        certs = chain(p)
        reasons.add(check_peer(revoked(p, certs), certs, NOW).reason)
    assert reasons == {"ok", "key_revoked", "certificate_revoked"}


@pytest.mark.parametrize(("chain", "off", "live_reason"), [
    (_prov(), {"provisioning_issuers": {}}, "provisioning_disabled"),
    (_org(emails=["a@example.com"]), {"organisation_cas": {}}, "ca_removed"),
])
def test_a_trust_source_turned_off_closes_live_sessions_and_refuses_new_handshakes(
        chain: Callable[[Pki], list[x509.Certificate]], off: dict[str, object],
        live_reason: str) -> None:
    p = _pki()
    certs = chain(p)
    admitted = check_peer(_tenant(p), certs, NOW)
    after = _tenant(p, **off)
    assert still_allowed(admitted, after, NOW) == live_reason
    assert check_peer(after, certs, NOW).reason == "issuer_not_tenant"


def test_a_provisioning_issuer_removed_alone_is_named_as_such() -> None:
    p = _pki()
    certs = _prov()(p)
    admitted = check_peer(_tenant(p), certs, NOW)
    other = {fingerprint(p.other_tenants_provisioning[0]): p.other_tenants_provisioning[0]}
    assert still_allowed(admitted, _tenant(p, provisioning_issuers=other), NOW) == \
        "issuer_untrusted"


def _self_signed(emails: Sequence[str] = ("kiosk@example.com",), **kw: object) -> x509.Certificate:
    key = pki.generate_key()
    signer = pki.make_ca(pki.name("kiosk"), key, now=NOW - DAY, validity=365 * DAY)
    return _leaf((signer, key), "kiosk", emails=emails, **kw)  # type: ignore[arg-type]


def test_a_pinned_leaf_alone_is_an_organisation_certificate_under_the_identity_rule() -> None:
    p = _pki()
    kiosk, issued = _self_signed(), _leaf(p.org, emails=["b@example.com"])
    tenant = _tenant(p, organisation_cas={},
                     organisation_leaves=frozenset({fingerprint(kiosk), fingerprint(issued)}))
    for leaf in (kiosk, issued):
        decision = check_peer(tenant, [leaf], NOW)
        assert (decision.allowed, decision.trust, decision.anchor) == \
            (True, "organisation", fingerprint(leaf))
    assert check_peer(tenant, [kiosk], NOW).identity == "kiosk@example.com"
    # Not pinned, or pinned but not the anchor of a one-certificate chain: no.
    assert check_peer(tenant, [_self_signed()], NOW).reason == "issuer_not_tenant"
    assert check_peer(tenant, [issued, p.org[0]], NOW).reason == "issuer_not_tenant"
    # The leaf rules and the identity rule still apply to a pinned leaf.
    for leaf, reason in ((_self_signed(client=False), "no_client_auth"),
                         (_self_signed(emails=()), "identity_email_count"),
                         (_self_signed(emails=("x@elsewhere.test",)), "identity_not_allowed"),
                         (_self_signed(not_before=NOW - 10 * DAY, validity=5 * DAY),
                          "certificate_expired")):
        pinned_tenant = attrs.evolve(tenant, organisation_leaves=frozenset({fingerprint(leaf)}))
        assert check_peer(pinned_tenant, [leaf], NOW).reason == reason


def test_a_session_admitted_by_a_pin_closes_when_the_pin_goes_and_only_then() -> None:
    p = _pki()
    kiosk = _self_signed()
    tenant = _tenant(p, organisation_leaves=frozenset({fingerprint(kiosk)}))
    decision = check_peer(tenant, [kiosk], NOW)
    assert decision.allowed
    assert still_allowed(decision, tenant, NOW) is None
    assert still_allowed(decision, attrs.evolve(tenant, organisation_cas={}), NOW) is None
    assert still_allowed(decision, attrs.evolve(tenant, organisation_leaves=frozenset()),
                         NOW) == "pin_removed"
    assert revocation_reason(attrs.evolve(tenant, organisation_leaves=frozenset()),
                             "organisation", None, decision.sha256, fingerprint(kiosk),
                             ()) == "pin_removed"
