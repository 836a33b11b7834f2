"""x509-limbo path-validation vectors against Switch's client-certificate decision.

Each applicable case is verified the way the gateway's handshake does it: OpenSSL builds and
verifies the chain against the case's trust anchors at the case's validation time (as the tenant's
TLS context does), then ``gateway.peer.check_peer`` decides, with the case's CRLs as the tenant's
organisation CRLs and identity rule ``any`` (name rules are exercised by the gateway tests).

Applicable: CLIENT cases, and the structural SERVER cases (basic constraints, path length,
validity, key identifiers, serials, EKU, critical extensions, CRLs, policy constraints,
pathological chains); hostname matching cases do not apply to client certificates.
Where Switch is deliberately stricter or looser, ``EXCEPTIONS`` says why, one line each.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from OpenSSL import crypto

from config.model import IdentityRule
from gateway.peer import CrlIssuer, TenantTrust, check_peer, crl_issuer, fingerprint

#: Vendored from ../shared/testdata (C2SP x509-limbo, Apache-2.0; see tests/data/x509-limbo/README.md)
#: so that a clean clone runs every vector wherever it is checked out.
LIMBO = Path(__file__).resolve().parent.parent / "data" / "x509-limbo" / "limbo.json"
APPLICABLE_PREFIXES = ("crl::", "pathlen::", "rfc5280::validity::", "rfc5280::aki::",
                       "rfc5280::ski::", "rfc5280::serial::", "rfc5280::eku::", "webpki::eku::",
                       "webpki::aki::", "rfc5280::pc::", "pathological::", "cve::", "invalid::",
                       "rfc5280::nc::")

#: Cases where Switch's answer differs from the vector's, with the reason.
EXCEPTIONS: dict[str, str] = {
    "pathlen::validation-ignores-pathlen-in-leaf": "stricter: a CA certificate is never accepted as an agent's leaf",
    "rfc5280::ca-as-leaf": "stricter: a CA certificate is never accepted as an agent's leaf",
    "rfc5280::eku::ee-wrong-eku": "a SERVER vector wanting serverAuth; the gateway wants clientAuth, which this leaf has",
    "webpki::eku::ee-without-eku": "looser by design (DESIGN.md): clientAuth is required only where an EKU extension is present",
    "rfc5280::nc::nc-permits-invalid-email-san": "OpenSSL accepts it and rule `any` takes no name; the email-san rule with allow patterns would not match it",
    "rfc5280::nc::nc-forbids-alternate-chain-ica": "OpenSSL builds one path only; it refuses where another path would succeed (fails closed)",
    "rfc5280::nc::nc-forbids-same-chain-ica": "OpenSSL builds one path only; it refuses where another path would succeed (fails closed)",
    "rfc5280::root-and-intermediate-swapped": "OpenSSL builds one path only; it refuses where another path would succeed (fails closed)",
    "cve::cve-2024-0567": "OpenSSL builds one path only; it refuses where another path would succeed (fails closed)",
}


def _cases() -> list[dict[str, Any]]:
    if not LIMBO.exists():
        return []
    cases = json.loads(LIMBO.read_text())["testcases"]
    return [c for c in cases if c["validation_kind"] == "CLIENT"
            or c["id"].startswith(APPLICABLE_PREFIXES)
            or (c["id"].startswith("rfc5280::") and c["id"].count("::") == 1)]


def _decide(case: dict[str, Any]) -> tuple[bool, str]:
    when = dt.datetime.fromisoformat(case["validation_time"]).astimezone(dt.UTC) \
        if case["validation_time"] else dt.datetime.now(dt.UTC)
    trusted = [x509.load_pem_x509_certificate(p.encode()) for p in case["trusted_certs"]]
    intermediates = [x509.load_pem_x509_certificate(p.encode())
                     for p in case["untrusted_intermediates"]]
    leaf = x509.load_pem_x509_certificate(case["peer_certificate"].encode())
    store = crypto.X509Store()
    for cert in trusted:
        store.add_cert(crypto.X509.from_cryptography(cert))
    store.set_time(when.replace(tzinfo=None))
    try:
        context = crypto.X509StoreContext(
            store, crypto.X509.from_cryptography(leaf),
            [crypto.X509.from_cryptography(c) for c in intermediates])
        chain = [c.to_cryptography() for c in context.get_verified_chain()]
    except crypto.X509StoreContextError as exc:
        return False, f"openssl: {exc}"
    except Exception as exc:  # noqa: BLE001 - an unparsable vector is a refusal too
        return False, f"error: {exc}"
    revoked: dict[CrlIssuer, set[int]] = {}
    for pem in case.get("crls") or []:
        crl = x509.load_pem_x509_crl(pem.encode())
        signer = next((c for c in [*trusted, *intermediates] if c.subject == crl.issuer
                       and crl.is_signature_valid(c.public_key())), None)  # type: ignore[arg-type]
        if signer is None:
            continue
        revoked.setdefault(crl_issuer(signer), set()).update(r.serial_number for r in crl)
    tenant = TenantTrust(
        name="limbo", identity=IdentityRule("any"),
        organisation_cas={fingerprint(c): c for c in trusted}, provisioning_issuers={},
        revoked_serials={k: frozenset(v) for k, v in revoked.items()},
        revoked_keys=frozenset(), revoked_certificates=frozenset())
    decision = check_peer(tenant, chain, when)
    return decision.allowed, decision.reason


@pytest.mark.skipif(not LIMBO.exists(), reason="x509-limbo vectors not present")
@pytest.mark.parametrize("case", _cases(), ids=lambda c: c["id"])
def test_limbo_vector(case: dict[str, Any]) -> None:
    allowed, reason = _decide(case)
    expected = case["expected_result"] == "SUCCESS"
    if case["id"] in EXCEPTIONS:
        assert allowed != expected, f"exception no longer needed: {case['id']}"
        return
    if case["validation_kind"] == "SERVER" and expected and reason == "no_client_auth":
        return  # a server certificate: the gateway admits client certificates only
    assert allowed == expected, f"{case['id']}: Switch says {reason}; {case['description'][:300]}"
