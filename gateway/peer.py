"""The access decision for a client certificate, as pure functions (no I/O, ``now`` passed in).

OpenSSL has already verified the chain against the SNI tenant's trust store (organisation CAs and,
while the provisioning service is on, the tenant's provisioning issuers) and the validity window.
A leaf the organisation pinned (``organisation_certs``: exactly that certificate, by its SHA-256)
needs no chain: OpenSSL's verdict on its chain is set aside when ``pinned`` says so, and the leaf
alone is judged, as its own anchor. ``check_peer`` then decides, failing closed at every step, in
this order:

1. the chain's anchor belongs to the SNI tenant (STYLE.md pitfall: never trust that the context
   switch alone did it), or the chain is one pinned leaf — this also says whether the certificate
   is *provisioned* or from the *organisation* (a pinned leaf is);
2. the leaf is not a CA, is inside its validity at ``now``, and allows clientAuth when it has an
   EKU extension;
3. provisioned: it carries the provisioning-key binding, its key is not revoked (suspended is
   fine) and the certificate itself is not revoked (``revocation_reason``, which the re-check of
   live sessions, ``still_allowed``, asks too);
4. organisation: no certificate of the chain is on a configured CRL of its issuer
   (``revocation_reason``), no CRL of a CA in its chain is past its ``nextUpdate`` (a stale list
   can no longer say what was revoked: ``crl_expired``), and the tenant's identity rule holds (default: exactly one RFC 822 SAN, matching an allow
   pattern when there are any);
5. the identity (whatever the source) is printable text: a control character (CR, LF, NUL, ...)
   or another non-printable one would forge a header line upstream or a log line, so it is
   refused (``identity_invalid``), never cleaned up.

The result is a ``Decision`` with a stable reason code on refusal, and the identity on success.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Literal

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from config.model import IdentityRule
from enroll.pki import validity_problem
from enroll.policy import key_id_of

TrustSource = Literal["provisioned", "organisation"]

#: A CA as its CRLs name it and as a certificate's verified parent is matched against them: its
#: subject and the SHA-256 of its SubjectPublicKeyInfo. A CRL speaks for the certificates its
#: signer issued (RFC 5280 6.3.3: the CRL's issuer is the certificate's, and the CRL verifies
#: with that issuer's key), so the name alone is not enough: two CAs of one name (a CA renewed
#: with a new key, both configured) would each have the other's list applied to them.
CrlIssuer = tuple[x509.Name, bytes]


@functools.lru_cache(maxsize=4096)
def crl_issuer(ca: x509.Certificate) -> CrlIssuer:
    """``ca``'s ``CrlIssuer``: for a CRL's verified signer when the CRLs are loaded, and for each
    parent of a verified chain at a handshake. Cached per certificate (the parents are the trust
    anchors and intermediates the gateway keeps parsed; one tuple shared by all the sessions
    under that CA): a lookup costs a hash of the DER, about 1 us."""
    spki = ca.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return ca.subject, hashlib.sha256(spki).digest()


@attrs.frozen
class TenantTrust:
    """Everything the decision needs about one tenant, built on each reload or store change."""

    name: str
    identity: IdentityRule
    #: SHA-256 of organisation CA certificates -> the certificate.
    organisation_cas: Mapping[bytes, x509.Certificate]
    #: SHA-256 of trusted provisioning issuers (empty when the service is off).
    provisioning_issuers: Mapping[bytes, x509.Certificate]
    #: Organisation CRLs by their verified signer (``CrlIssuer``): the revoked serial numbers.
    revoked_serials: Mapping[CrlIssuer, frozenset[int]]
    revoked_keys: frozenset[str]
    revoked_certificates: frozenset[str]
    #: Organisation CRLs by their verified signer (``CrlIssuer``): their ``nextUpdate`` (a CRL
    #: without one never goes stale).
    crl_next_update: Mapping[CrlIssuer, dt.datetime] = attrs.field(factory=dict)
    #: SHA-256 of the client certificates the organisation supplied one by one
    #: (``organisation_certs``): each trusted as it is, as its own anchor, and nothing it signs.
    organisation_leaves: frozenset[bytes] = frozenset()


@attrs.frozen
class Decision:
    allowed: bool
    reason: str
    tenant: str
    trust: TrustSource | None = None
    identity: str | None = None
    key_id: str | None = None
    serial: str | None = None
    sha256: str | None = None
    #: SHA-256 of the trust anchor the chain ended at (a removed CA closes its sessions).
    anchor: bytes | None = None
    not_after: dt.datetime | None = None
    #: (issuer, serial) of every certificate below the anchor, the issuer as its verified parent
    #: (``CrlIssuer``), to re-check CRLs after a reload.
    chain_serials: tuple[tuple[CrlIssuer, int], ...] = ()


def fingerprint(cert: x509.Certificate) -> bytes:
    return cert.fingerprint(hashes.SHA256())


def pinned(tenant: TenantTrust, leaf_sha256: bytes) -> bool:
    """Whether ``tenant``'s organisation pinned the leaf with this SHA-256: then a chain that
    OpenSSL could not build or verify does not matter (the verify callback sets its verdict
    aside), and ``check_peer`` judges the leaf alone."""
    return leaf_sha256 in tenant.organisation_leaves


def _refuse(tenant: TenantTrust, reason: str, **kw: object) -> Decision:
    return Decision(False, reason, tenant.name, **kw)  # type: ignore[arg-type]


def _leaf_problem(leaf: x509.Certificate, now: dt.datetime) -> str | None:
    """Why the leaf cannot be a client certificate now, or None. Validity includes both ends
    (RFC 5280 4.1.2.5), compared at the one-second granularity certificates encode. An EKU extension must list clientAuth itself: anyExtendedKeyUsage does not
    stand in for it (as in webpki). A malformed extension refuses (fail closed)."""
    try:
        try:
            if leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
                return "leaf_is_ca"
        except x509.ExtensionNotFound:
            pass
        problem = validity_problem(leaf, now)
        if problem is not None:
            return problem
        try:
            eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            return None
    except ValueError:
        return "malformed_certificate"
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        return "no_client_auth"
    return None


def identity_is_printable(identity: str) -> bool:
    """True when ``identity`` is non-empty printable text: no control character (C0, DEL, C1),
    no line or paragraph separator, no other character Python deems non-printable."""
    return bool(identity) and identity.isprintable()


#: What a glob's ``*`` and ``?`` may stand for: any character but a control character, so a
#: pattern can never match across a line break (``fnmatch``'s ``*`` matches newlines).
_GLOB_CHAR = r"[^\x00-\x1f\x7f-\x9f]"


@functools.lru_cache(maxsize=256)
def _glob(pattern: str) -> re.Pattern[str]:
    """An allow pattern as a regular expression, case-insensitive: ``*`` is any run of
    characters, ``?`` one character, ``[abc]``/``[!abc]`` a set (as ``fnmatch``), none of them
    matching a control character; everything else is literal."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            out.append(_GLOB_CHAR + "*")
        elif c == "?":
            out.append(_GLOB_CHAR)
        elif c == "[" and (end := _set_end(pattern, i)) != -1:
            body, i = pattern[i:end], end + 1
            negate = body.startswith("!")
            members = re.escape(body[1:] if negate else body).replace(r"\-", "-")  # keep ranges
            out.append(f"(?={_GLOB_CHAR})[{'^' if negate else ''}{members}]")
        else:
            out.append(re.escape(c))
    return re.compile("".join(out), re.IGNORECASE)


def _set_end(pattern: str, start: int) -> int:
    """The index of the ``]`` closing a set opened just before ``start``, or -1 (then the ``[``
    is literal). As in ``fnmatch``, a ``]`` first in the set (after an optional ``!``) is a
    member."""
    j = start + (pattern[start:start + 1] == "!")
    j += pattern[j:j + 1] == "]"
    return pattern.find("]", j)


def allow_matches(candidate: str, patterns: Sequence[str]) -> bool:
    """Whether ``candidate`` matches one of the allow ``patterns`` (``_glob``), in full."""
    return any(_glob(p).fullmatch(candidate) is not None for p in patterns)


def organisation_identity(leaf: x509.Certificate, rule: IdentityRule) -> tuple[str | None, str]:
    """(identity, "ok") or (None, reason) under the tenant's identity rule. An identity that is
    not printable text is refused (``identity_invalid``) before any pattern sees it."""
    if rule.kind == "any":
        subject = leaf.subject.rfc4514_string()
        return (subject, "ok") if identity_is_printable(subject) else (None, "identity_invalid")
    if rule.kind == "common-name":
        names = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if len(names) != 1 or not isinstance(names[0].value, str):
            return None, "identity_common_name"
        candidate = names[0].value
    else:
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            emails = san.get_values_for_type(x509.RFC822Name)
        except x509.ExtensionNotFound:
            emails = []
        if len(emails) != 1:
            return None, "identity_email_count"
        candidate = emails[0]
    if not identity_is_printable(candidate):
        return None, "identity_invalid"
    if rule.allow and not allow_matches(candidate, rule.allow):
        return None, "identity_not_allowed"
    return candidate, "ok"


def check_peer(tenant: TenantTrust, chain: Sequence[x509.Certificate], now: dt.datetime, *,
               anchor_fingerprint: bytes | None = None,
               leaf_fingerprint: bytes | None = None) -> Decision:
    """Decide about a chain OpenSSL verified for ``tenant`` (leaf first, anchor last). A
    certificate whose extensions do not parse is refused, never an exception.
    ``anchor_fingerprint``, ``leaf_fingerprint``: their SHA-256 when the caller knows them
    already (the gateway hashes the DER it has, and looks trust anchors up by their DER), saving
    their computation per handshake."""
    try:
        return _check_peer(tenant, chain, now, anchor_fingerprint, leaf_fingerprint)
    except ValueError:
        return _refuse(tenant, "malformed_certificate")


def _check_peer(tenant: TenantTrust, chain: Sequence[x509.Certificate], now: dt.datetime,
                anchor_fingerprint: bytes | None, leaf_fingerprint: bytes | None) -> Decision:
    if not chain:
        return _refuse(tenant, "no_client_certificate")
    leaf, anchor = chain[0], chain[-1]
    anchor_fp = anchor_fingerprint or fingerprint(anchor)
    sha = (leaf_fingerprint or fingerprint(leaf)).hex()
    serial = format(leaf.serial_number, "x")
    common = {"sha256": sha, "serial": serial, "anchor": anchor_fp}
    if anchor_fp in tenant.provisioning_issuers:
        source: TrustSource = "provisioned"
    elif anchor_fp in tenant.organisation_cas or (len(chain) == 1 and pinned(tenant, anchor_fp)):
        source = "organisation"
    else:
        return _refuse(tenant, "issuer_not_tenant", **common)
    problem = _leaf_problem(leaf, now)
    if problem is not None:
        return _refuse(tenant, problem, trust=source, **common)
    if source == "provisioned":
        if len(chain) != 2:
            return _refuse(tenant, "chain_unexpected", trust=source, **common)
        key_id = key_id_of(leaf)
        if key_id is None:
            return _refuse(tenant, "key_binding_missing", trust=source, **common)
        revoked = revocation_reason(tenant, source, key_id, sha, anchor_fp, ())
        if revoked is not None:
            return _refuse(tenant, revoked, trust=source, key_id=key_id, **common)
        names = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        identity = str(names[0].value) if len(names) == 1 else leaf.subject.rfc4514_string()
        if not identity_is_printable(identity):
            return _refuse(tenant, "identity_invalid", trust=source, key_id=key_id, **common)
        return Decision(True, "ok", tenant.name, source, identity, key_id, serial, sha, anchor_fp,
                        leaf.not_valid_after_utc)
    # Organisation certificates: CRLs of any CA in the chain, then the identity rule. Each
    # certificate is named by its verified parent: the parent's subject (the CRL's issuer; the
    # leaf's own issuer field may differ from it in case or spacing, which OpenSSL's name match
    # ignores) and key (the one the CRL verified with). The parents are the anchors and
    # intermediates the gateway keeps parsed, so nothing of the leaf's own is parsed here.
    chain_serials = tuple((crl_issuer(parent), child.serial_number)
                          for child, parent in zip(chain, chain[1:], strict=False))
    revoked = revocation_reason(tenant, source, None, sha, anchor_fp, chain_serials)
    if revoked is not None:
        return _refuse(tenant, revoked, trust=source, **common)
    if _stale_crl(tenant, chain_serials, now):
        return _refuse(tenant, "crl_expired", trust=source, **common)
    org_identity, reason = organisation_identity(leaf, tenant.identity)
    if org_identity is None:
        return _refuse(tenant, reason, trust=source, **common)
    return Decision(True, "ok", tenant.name, source, org_identity, None, serial, sha, anchor_fp,
                    leaf.not_valid_after_utc, chain_serials)


def _on_crl(tenant: TenantTrust, chain_serials: Sequence[tuple[CrlIssuer, int]]) -> bool:
    for issuer, serial in chain_serials:
        revoked = tenant.revoked_serials.get(issuer)
        if revoked is not None and serial in revoked:
            return True
    return False


def _stale_crl(tenant: TenantTrust, chain_serials: Sequence[tuple[CrlIssuer, int]],
               now: dt.datetime) -> bool:
    """Whether a CRL configured for a CA of the chain is past its ``nextUpdate`` at ``now``: its
    issuer may have revoked certificates since, which Switch cannot know (fail closed)."""
    for issuer, _ in chain_serials:
        next_update = tenant.crl_next_update.get(issuer)
        if next_update is not None and now > next_update:
            return True
    return False


def revocation_reason(tenant: TenantTrust, trust: TrustSource, key_id: str | None,
                      sha256: str | None, anchor: bytes,
                      chain_serials: Sequence[tuple[CrlIssuer, int]]) -> str | None:
    """Why ``tenant``'s trust state no longer covers a certificate, or None: the one home of the
    revocation rules, asked by the handshake check (``check_peer``) and by the re-check of live
    sessions (``still_allowed``), so the two can never disagree.

    Provisioned (``key_id``, ``sha256``: the leaf's key binding and fingerprint): the issuer
    (``anchor``) is still trusted (``provisioning_disabled`` when the service is off,
    ``issuer_untrusted`` when that issuer alone went), its key is not revoked (``key_revoked``;
    a suspended key is not) and the certificate is not (``certificate_revoked``). Organisation:
    the CA is still configured (``ca_removed``) and no certificate of the chain below it
    (``chain_serials``: issuer and serial) is on a configured CRL of that issuer, its name and
    key (``certificate_revoked``); a
    pinned leaf (its own anchor) is still pinned (``pin_removed``).
    ``check_peer`` chose ``trust`` by finding ``anchor``, so the anchor rules speak only to live
    sessions."""
    if trust == "provisioned":
        if anchor not in tenant.provisioning_issuers:
            return "provisioning_disabled" if not tenant.provisioning_issuers else "issuer_untrusted"
        if key_id in tenant.revoked_keys:
            return "key_revoked"
        if sha256 in tenant.revoked_certificates:
            return "certificate_revoked"
        return None
    if sha256 is not None and anchor.hex() == sha256:  # a pinned leaf, its own anchor
        return None if pinned(tenant, anchor) else "pin_removed"
    if anchor not in tenant.organisation_cas:
        return "ca_removed"
    if _on_crl(tenant, chain_serials):
        return "certificate_revoked"
    return None


def still_allowed(decision: Decision, tenant: TenantTrust | None, now: dt.datetime) -> str | None:
    """For a live session admitted by ``decision``: None if it may stay under the new trust
    state, else the reason it must close (``revocation_reason``, then the leaf's expiry)."""
    if tenant is None:
        return "tenant_removed"
    if decision.anchor is None:
        return "trust_changed"
    trust: TrustSource = "provisioned" if decision.trust == "provisioned" else "organisation"
    revoked = revocation_reason(tenant, trust, decision.key_id, decision.sha256, decision.anchor,
                                decision.chain_serials)
    if revoked is not None:
        return revoked
    if decision.not_after is not None and now.replace(microsecond=0) > decision.not_after:  # as validity_problem
        return "certificate_expired"
    return None
