"""Certificate signing requests: parse, prove possession, and check against a profile.

Pure: no clock, no store. From a CSR Switch takes only the public key (after the signature proves
the requester holds its private key) and the requested common name (which must fit the profile).
Everything else a CSR asks for (extensions such as CA:true, SANs, key usages; other subject
attributes) is ignored: the profile decides the certificate.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID

from config.model import Profile
from enroll.errors import BadCsr, BadCsrSignature, KeyTypeNotAllowed, SubjectNotAllowed

#: Far above any real CSR (an RSA-4096 CSR is about 1.7 KB of DER).
MAX_CSR_BYTES = 16 * 1024

#: id-ecPublicKey (RFC 5480): the algorithm of every EC key; the curve is its parameter.
EC_PUBLIC_KEY_OID = "1.2.840.10045.2.1"
#: Named curves of the config's EC key types (RFC 5480).
EC_CURVE_OIDS = {
    "ec-p256": "1.2.840.10045.3.1.7",
    "ec-p384": "1.3.132.0.34",
    "ec-p521": "1.3.132.0.35",
}
#: Algorithm OIDs of the other key types: rsaEncryption (RFC 8017), id-Ed25519 (RFC 8410).
ALGORITHM_OIDS = {
    "rsa-2048": "1.2.840.113549.1.1.1",
    "rsa-3072": "1.2.840.113549.1.1.1",
    "rsa-4096": "1.2.840.113549.1.1.1",
    "ed25519": "1.3.101.112",
}


def csr_attributes(key_types: Sequence[str]) -> list[str | tuple[str, list[str]]]:
    """What csrattrs lists for a profile's key types (RFC 7030 4.5.2): the allowed EC curves as
    one ``ecPublicKey`` attribute whose values are the curve OIDs (the RFC's own example), then
    the other algorithms as bare OIDs, each once, in the profile's order."""
    curves = [EC_CURVE_OIDS[k] for k in key_types if k in EC_CURVE_OIDS]
    items: list[str | tuple[str, list[str]]] = []
    if curves:
        items.append((EC_PUBLIC_KEY_OID, list(dict.fromkeys(curves))))
    items.extend(dict.fromkeys(ALGORITHM_OIDS[k] for k in key_types if k in ALGORITHM_OIDS))
    return items


@attrs.frozen
class CsrRequest:
    """What Switch takes from a CSR, after the checks."""

    public_key: CertificatePublicKeyTypes
    key_type: str
    common_name: str


def parse_csr(der: bytes, *, max_bytes: int = MAX_CSR_BYTES) -> x509.CertificateSigningRequest:
    if len(der) > max_bytes:
        raise BadCsr(f"CSR of {len(der)} bytes is over {max_bytes}")
    try:
        csr = x509.load_der_x509_csr(der)
        csr.subject  # noqa: B018 - force parsing of the subject now, not later
    except ValueError as exc:
        raise BadCsr(f"not a DER PKCS#10 request: {exc}") from exc
    return csr


def key_type_of(public_key: object) -> str:
    """The config key type of a public key (e.g. ``ec-p256``); unusual keys get a descriptive
    string that no profile allows (``rsa-1024``, ``ec-secp256k1``, ``dsa-2048``)."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return {"secp256r1": "ec-p256", "secp384r1": "ec-p384", "secp521r1": "ec-p521"}.get(
            public_key.curve.name, f"ec-{public_key.curve.name}")
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"rsa-{public_key.key_size}"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(public_key, ed448.Ed448PublicKey):
        return "ed448"
    if isinstance(public_key, dsa.DSAPublicKey):
        return f"dsa-{public_key.key_size}"
    return type(public_key).__name__


def verify_proof_of_possession(csr: x509.CertificateSigningRequest) -> None:
    try:
        valid = csr.is_signature_valid
    except Exception as exc:  # unsupported algorithms surface here
        raise BadCsrSignature(f"the CSR signature cannot be checked: {exc}") from exc
    if not valid:
        raise BadCsrSignature("the CSR signature does not verify (no proof of possession)")


def requested_common_name(csr: x509.CertificateSigningRequest) -> str:
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        raise SubjectNotAllowed(f"the CSR subject must hold exactly one CN, not {len(names)}")
    value = names[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def check_csr(csr: x509.CertificateSigningRequest, profile: Profile) -> CsrRequest:
    """Signature first (proof of possession), then the key type, then the subject."""
    verify_proof_of_possession(csr)
    public_key = csr.public_key()
    key_type = key_type_of(public_key)
    if key_type not in profile.key_types:
        raise KeyTypeNotAllowed(
            f"key type {key_type} is not allowed by profile {profile.name} "
            f"({', '.join(profile.key_types)})")
    common_name = requested_common_name(csr)
    if not re.fullmatch(profile.subject_pattern, common_name):
        raise SubjectNotAllowed(
            f"CN {common_name[:80]!r} does not match profile {profile.name}'s subject pattern")
    return CsrRequest(public_key, key_type, common_name)
