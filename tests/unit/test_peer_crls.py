"""Organisation CRLs from their files to the decision: ``load_organisation_material`` files each
CRL under its verified signer (name and key, ``peer.crl_issuer``), and ``check_peer`` and the
live re-check look each certificate of a verified chain up under its *parent* (the chain
OpenSSL built), never under a name the certificate itself carries."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from OpenSSL import crypto

from config.model import IdentityRule, ServerTLS, SwitchConfig, Tenant
from enroll import pki
from gateway.peer import TenantTrust, check_peer, fingerprint, still_allowed
from gateway.sessions import Session, SessionRegistry
from gateway.tenant_tls import load_organisation_material

NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
Issuer = tuple[x509.Certificate, pki.PrivateKey]
ORG_NAME = "demo organisation CA"


def _ca(name: str, issuer: Issuer | None = None) -> Issuer:
    key = pki.generate_key()
    return pki.make_ca(pki.name(name), key, now=NOW - DAY, validity=365 * DAY, issuer=issuer,
                       path_length=None), key


def _leaf(issuer: Issuer, serial: int, *, issuer_name: x509.Name | None = None) -> x509.Certificate:
    """An organisation client certificate with ``serial``, signed by ``issuer``'s key; its issuer
    field is ``issuer_name`` when given (the same name to OpenSSL, which compares names
    case-insensitively), else the CA's subject as it is."""
    ca, key = issuer
    return (x509.CertificateBuilder()
            .subject_name(pki.name(f"agent-{serial}"))
            .issuer_name(issuer_name or ca.subject)
            .public_key(pki.generate_key().public_key())
            .serial_number(serial)
            .not_valid_before(NOW - DAY).not_valid_after(NOW + 30 * DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name("a@example.com")]),
                           critical=False)
            .sign(key, hashes.SHA256()))  # type: ignore[arg-type]


def _crl(signer: Issuer, *serials: int, next_update: dt.datetime = NOW + 7 * DAY,
         issuer_name: x509.Name | None = None) -> x509.CertificateRevocationList:
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(issuer_name or signer[0].subject)
               .last_update(NOW - DAY).next_update(next_update))
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(NOW - DAY)
            .build())
    return builder.sign(signer[1], hashes.SHA256())  # type: ignore[arg-type]


def _trust(tmp: Path, cas: list[x509.Certificate],
           crls: list[x509.CertificateRevocationList]) -> TenantTrust:
    """The tenant's trust state as the gateway builds it: CA and CRL files written, read by
    ``load_organisation_material``."""
    tmp.mkdir(parents=True, exist_ok=True)
    ca_file = tmp / "cas.pem"
    ca_file.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in cas))
    crl_files = []
    for i, crl in enumerate(crls):
        crl_files.append(tmp / f"{i}.crl")
        crl_files[-1].write_bytes(crl.public_bytes(serialization.Encoding.DER))
    tenant = Tenant("demo", ("demo.test",), organisation_cas=(ca_file,),
                    organisation_crls=tuple(crl_files),
                    identity=IdentityRule("email-san", ("*@example.com",)))
    config = SwitchConfig(tmp / "switch.toml", tmp, ServerTLS(), tenants={"demo": tenant})
    org = load_organisation_material(config)["demo"]
    return TenantTrust(name="demo", identity=tenant.identity,
                       organisation_cas={fingerprint(c): c for c in org.cas},
                       provisioning_issuers={}, revoked_serials=org.revoked_serials,
                       crl_next_update=org.crl_next_update, revoked_keys=frozenset(),
                       revoked_certificates=frozenset())


def _openssl_chain(leaf: x509.Certificate, anchor: x509.Certificate) -> list[x509.Certificate]:
    """The chain OpenSSL verifies for ``leaf`` with ``anchor`` trusted (at ``NOW``)."""
    store = crypto.X509Store()
    store.add_cert(crypto.X509.from_cryptography(anchor))
    store.set_time(NOW.replace(tzinfo=None))
    context = crypto.X509StoreContext(store, crypto.X509.from_cryptography(leaf))
    return [c.to_cryptography() for c in context.get_verified_chain()]


def _reason(trust: TenantTrust, chain: list[x509.Certificate]) -> str:
    return check_peer(trust, chain, NOW).reason


def test_a_leaf_on_its_cas_crl_is_refused_and_one_not_on_it_is_admitted(tmp_path: Path) -> None:
    org = _ca(ORG_NAME)
    trust = _trust(tmp_path, [org[0]], [_crl(org, 7)])
    assert _reason(trust, [_leaf(org, 7), org[0]]) == "certificate_revoked"
    assert _reason(trust, [_leaf(org, 8), org[0]]) == "ok"


def test_the_crl_is_found_by_the_parents_subject_not_by_the_leafs_issuer_field(
        tmp_path: Path) -> None:
    """A leaf whose issuer field spells the CA's name in another case chains all the same
    (OpenSSL compares names case-insensitively): its CA's CRL still covers it."""
    org = _ca(ORG_NAME)
    spelled = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ORG_NAME.upper())])
    leaf = _leaf(org, 7, issuer_name=spelled)
    assert leaf.issuer != org[0].subject  # cryptography's names do compare case
    assert _openssl_chain(leaf, org[0]) == [leaf, org[0]]
    trust = _trust(tmp_path, [org[0]], [_crl(org, 7)])
    assert _reason(trust, [leaf, org[0]]) == "certificate_revoked"
    stale = _trust(tmp_path / "stale", [org[0]], [_crl(org, next_update=NOW - DAY)])
    assert _reason(stale, [_leaf(org, 8, issuer_name=spelled), org[0]]) == "crl_expired"


def test_a_crl_of_another_ca_of_the_same_name_does_not_apply(tmp_path: Path) -> None:
    """Two CAs of one name (a CA renewed with a new key, both trusted): each one's CRL revokes
    what that CA issued, and its staleness refuses only that CA's certificates."""
    old, new = _ca(ORG_NAME), _ca(ORG_NAME)
    assert old[0].subject == new[0].subject
    trust = _trust(tmp_path, [old[0], new[0]], [_crl(old, 7)])
    assert _reason(trust, [_leaf(old, 7), old[0]]) == "certificate_revoked"
    assert _reason(trust, [_leaf(new, 7), new[0]]) == "ok"
    stale = _trust(tmp_path / "stale", [old[0], new[0]], [_crl(old, next_update=NOW - DAY)])
    assert _reason(stale, [_leaf(old, 8), old[0]]) == "crl_expired"
    assert _reason(stale, [_leaf(new, 8), new[0]]) == "ok"
    both = _trust(tmp_path / "both", [old[0], new[0]], [_crl(old, 7), _crl(new, 9)])
    assert [_reason(both, [_leaf(ca, serial), ca[0]]) for ca in (old, new) for serial in (7, 9)] \
        == ["certificate_revoked", "ok", "ok", "certificate_revoked"]


def test_a_crl_under_a_trusted_name_that_no_trusted_key_signed_is_refused_at_load(
        tmp_path: Path) -> None:
    org, impostor = _ca(ORG_NAME), _ca(ORG_NAME)
    with pytest.raises(ValueError, match="not signed by an organisation CA"):
        _trust(tmp_path, [org[0]], [_crl(impostor, 7)])


def test_an_intermediates_crl_covers_its_leaves_and_the_roots_covers_the_intermediate(
        tmp_path: Path) -> None:
    root = _ca("demo organisation root")
    intermediate = _ca("demo organisation issuing CA", root)
    leaf = _leaf(intermediate, 7)
    chain = [leaf, intermediate[0], root[0]]
    cas = [root[0], intermediate[0]]
    assert _reason(_trust(tmp_path / "none", cas, []), chain) == "ok"
    assert _reason(_trust(tmp_path / "leaf", cas, [_crl(intermediate, 7)]), chain) == \
        "certificate_revoked"
    assert _reason(_trust(tmp_path / "ca", cas, [_crl(root, intermediate[0].serial_number)]),
                   chain) == "certificate_revoked"
    # The leaf's serial on the root's list says nothing about the leaf: the root did not issue it.
    assert _reason(_trust(tmp_path / "other", cas, [_crl(root, 7)]), chain) == "ok"
    assert _reason(_trust(tmp_path / "stale", cas, [_crl(intermediate, next_update=NOW - DAY)]),
                   chain) == "crl_expired"


async def test_a_crl_updated_on_reload_evicts_exactly_the_session_it_now_covers(
        tmp_path: Path) -> None:
    root = _ca("demo organisation root")
    intermediate = _ca("demo organisation issuing CA", root)
    cas = [root[0], intermediate[0]]
    before = _trust(tmp_path / "before", cas, [_crl(intermediate, 1)])
    chains = {serial: [_leaf(intermediate, serial), intermediate[0], root[0]] for serial in (7, 8)}
    evicted: list[tuple[int, str]] = []
    registry = SessionRegistry(on_evict=lambda s, r: evicted.append((s.id, r)))
    sessions = {}
    for serial, chain in chains.items():
        decision = check_peer(before, chain, NOW)
        assert decision.allowed, decision.reason
        sessions[serial] = Session(decision, trio.CancelScope(), f"10.0.0.{serial}")
        registry.add(sessions[serial])
    after = _trust(tmp_path / "after", cas, [_crl(intermediate, 1, 7)])
    registry.reevaluate({"demo": after}, NOW)
    assert evicted == [(sessions[7].id, "certificate_revoked")]
    assert not sessions[8].cancel_scope.cancel_called
    # The same list from another CA of the intermediate's name evicts nothing more.
    twin = _ca("demo organisation issuing CA", root)
    other = _trust(tmp_path / "twin", [*cas, twin[0]], [_crl(intermediate, 1, 7), _crl(twin, 8)])
    registry.reevaluate({"demo": other}, NOW)
    assert evicted == [(sessions[7].id, "certificate_revoked")]
    assert still_allowed(sessions[8].decision, other, NOW) is None
