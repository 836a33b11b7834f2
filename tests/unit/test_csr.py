"""CSR checks: parse, proof of possession, key type and subject against a profile."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence

import attrs
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from config.model import Profile
from enroll import pki
from enroll.csr import (
    CsrRequest,
    check_csr,
    key_type_of,
    parse_csr,
    verify_proof_of_possession,
)
from enroll.errors import BadCsr, BadCsrSignature, KeyTypeNotAllowed, SubjectNotAllowed
from enroll.est_status import http_status

PROFILE = Profile("default")


@functools.cache
def key(kind: str) -> CertificateIssuerPrivateKeyTypes:
    """One key per kind for the whole module (RSA and DSA generation is slow)."""
    if kind == "rsa-1024":
        return rsa.generate_private_key(public_exponent=65537, key_size=1024)
    if kind == "rsa-2040":
        return rsa.generate_private_key(public_exponent=65537, key_size=2040)
    if kind == "ec-secp256k1":
        return ec.generate_private_key(ec.SECP256K1())
    if kind == "dsa-2048":
        return dsa.generate_private_key(2048)
    if kind == "ed448":
        return ed448.Ed448PrivateKey.generate()
    return pki.generate_key(kind)


def make_csr(kind: str = "ec-p256", *, subject: list[tuple[x509.ObjectIdentifier, str]] | None = None,
             extensions: Sequence[x509.ExtensionType] = ()) -> x509.CertificateSigningRequest:
    private = key(kind)
    names = subject if subject is not None else [(NameOID.COMMON_NAME, "agent-1")]
    # _validate=False: a peer is not bound by cryptography's X.520 length checks, so neither are we.
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(oid, value, _validate=False) for oid, value in names]))
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    algorithm = None if isinstance(private, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey) \
        else hashes.SHA256()
    return builder.sign(private, algorithm)


def der(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(serialization.Encoding.DER)


def broken_signature(csr: x509.CertificateSigningRequest) -> x509.CertificateSigningRequest:
    """The same CSR with one byte of its signature flipped (the signature is the DER's tail)."""
    raw = bytearray(der(csr))
    raw[-1] ^= 0x01
    return parse_csr(bytes(raw))


# ------------------------------------------------------------------------------------ parsing

def test_a_der_csr_parses() -> None:
    csr = make_csr()
    assert parse_csr(der(csr)) == csr


@pytest.mark.parametrize("body", [
    b"", b"\x00", b"not a csr at all", b"\x30\x03\x02\x01\x01", b"\x30\x82\xff\xff",
], ids=["empty", "nul", "text", "wrong-sequence", "truncated-length"])
def test_unparsable_csr_is_refused(body: bytes) -> None:
    with pytest.raises(BadCsr) as info:
        parse_csr(body)
    assert (http_status(info.value), info.value.reason) == (400, "bad_csr")


def test_truncated_csr_is_refused() -> None:
    with pytest.raises(BadCsr):
        parse_csr(der(make_csr())[:-10])


def test_a_certificate_is_not_a_csr() -> None:
    now = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    ca_key = pki.generate_key()
    ca = pki.make_ca(pki.name("CA"), ca_key, now=now, validity=dt.timedelta(days=1))
    with pytest.raises(BadCsr):
        parse_csr(ca.public_bytes(serialization.Encoding.DER))


def test_oversized_csr_is_refused() -> None:
    body = der(make_csr())
    assert parse_csr(body, max_bytes=len(body))
    with pytest.raises(BadCsr):
        parse_csr(body, max_bytes=len(body) - 1)
    with pytest.raises(BadCsr):
        parse_csr(body + b"\x00" * 16384)


# -------------------------------------------------------------------------- proof of possession

def test_csr_with_valid_signature_proves_possession() -> None:
    verify_proof_of_possession(make_csr())


@pytest.mark.parametrize("kind", ["ec-p256", "rsa-2048", "ed25519"])
def test_csr_with_broken_signature_is_refused(kind: str) -> None:
    csr = broken_signature(make_csr(kind))
    with pytest.raises(BadCsrSignature) as info:
        check_csr(csr, Profile("p", key_types=("ec-p256", "rsa-2048", "ed25519")))
    assert (http_status(info.value), info.value.reason) == (400, "bad_csr_signature")


def test_csr_signed_by_another_key_is_refused() -> None:
    """A CSR whose public key is swapped for someone else's: the signature no longer verifies."""
    mine, theirs = make_csr(), x509.CertificateSigningRequestBuilder().subject_name(
        pki.name("agent-1")).sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    mine_der = der(mine)
    mine_spki = mine.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    theirs_spki = theirs.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    forged = parse_csr(mine_der.replace(mine_spki, theirs_spki))
    with pytest.raises(BadCsrSignature):
        verify_proof_of_possession(forged)


def test_signature_is_checked_before_the_key_type() -> None:
    with pytest.raises(BadCsrSignature):
        check_csr(broken_signature(make_csr("rsa-1024")), PROFILE)


# -------------------------------------------------------------------------------------- key type

@pytest.mark.parametrize(("kind", "expected"), [
    ("ec-p256", "ec-p256"), ("ec-p384", "ec-p384"), ("ec-p521", "ec-p521"),
    ("rsa-2048", "rsa-2048"), ("rsa-3072", "rsa-3072"), ("ed25519", "ed25519"),
    ("rsa-1024", "rsa-1024"), ("rsa-2040", "rsa-2040"), ("ec-secp256k1", "ec-secp256k1"),
    ("dsa-2048", "dsa-2048"), ("ed448", "ed448"),
])
def test_key_type_names_match_the_config(kind: str, expected: str) -> None:
    assert key_type_of(key(kind).public_key()) == expected


def test_unknown_key_objects_never_get_a_config_name() -> None:
    class NotAKey:
        pass

    assert key_type_of(NotAKey()) == "NotAKey"


@pytest.mark.parametrize("kind", ["rsa-1024", "rsa-2040", "ec-secp256k1", "dsa-2048", "ed448"])
def test_unusual_keys_are_refused_by_every_profile(kind: str) -> None:
    everything = Profile("all", key_types=("ec-p256", "ec-p384", "ec-p521", "rsa-2048",
                                           "rsa-3072", "rsa-4096", "ed25519"))
    with pytest.raises(KeyTypeNotAllowed):
        check_csr(make_csr(kind), everything)


def test_rsa_1024_is_refused() -> None:
    with pytest.raises(KeyTypeNotAllowed) as info:
        check_csr(make_csr("rsa-1024"), PROFILE)
    assert (http_status(info.value), info.value.reason) == (400, "key_type_not_allowed")


def test_key_type_outside_the_profile_is_refused() -> None:
    with pytest.raises(KeyTypeNotAllowed):
        check_csr(make_csr("ed25519"), PROFILE)  # the default profile leaves ed25519 out
    with pytest.raises(KeyTypeNotAllowed):
        check_csr(make_csr("ec-p256"), Profile("strict", key_types=("ec-p384",)))
    assert check_csr(make_csr("ed25519"), Profile("ed", key_types=("ed25519",))).key_type == "ed25519"


# --------------------------------------------------------------------------------------- subject

def test_a_good_csr_gives_its_public_key_key_type_and_common_name() -> None:
    csr = make_csr("ec-p384")
    request = check_csr(csr, PROFILE)
    assert request == CsrRequest(csr.public_key(), "ec-p384", "agent-1")


def test_other_subject_attributes_are_ignored() -> None:
    csr = make_csr(subject=[(NameOID.COUNTRY_NAME, "FR"), (NameOID.ORGANIZATION_NAME, "Evil Corp"),
                            (NameOID.ORGANIZATIONAL_UNIT_NAME, "other-tenant"),
                            (NameOID.COMMON_NAME, "agent-7"), (NameOID.EMAIL_ADDRESS, "x@y.z")])
    assert check_csr(csr, PROFILE).common_name == "agent-7"


@pytest.mark.parametrize("subject", [
    [],
    [(NameOID.ORGANIZATION_NAME, "acme")],
    [(NameOID.COMMON_NAME, "agent-1"), (NameOID.COMMON_NAME, "agent-2")],
], ids=["empty", "no-cn", "two-cns"])
def test_subject_without_exactly_one_cn_is_refused(
        subject: list[tuple[x509.ObjectIdentifier, str]]) -> None:
    with pytest.raises(SubjectNotAllowed) as info:
        check_csr(make_csr(subject=subject), PROFILE)
    assert (http_status(info.value), info.value.reason) == (400, "subject_not_allowed")


TOO_LONG = pytest.param("a" * 65, id="65-chars",  # cryptography warns about the X.520 bound
                        marks=pytest.mark.filterwarnings("ignore:Attribute's length:UserWarning"))


@pytest.mark.parametrize("cn", ["-agent", "agent 1", TOO_LONG, "agent/1", "agent\n", "agént", "*"])
def test_cn_outside_the_subject_pattern_is_refused(cn: str) -> None:
    with pytest.raises(SubjectNotAllowed):
        check_csr(make_csr(subject=[(NameOID.COMMON_NAME, cn)]), PROFILE)


def test_subject_pattern_must_match_in_full() -> None:
    profile = Profile("strict", subject_pattern=r"dev-\d+")
    assert check_csr(make_csr(subject=[(NameOID.COMMON_NAME, "dev-42")]), profile).common_name == "dev-42"
    for cn in ("dev-42x", "xdev-42", "dev-"):
        with pytest.raises(SubjectNotAllowed):
            check_csr(make_csr(subject=[(NameOID.COMMON_NAME, cn)]), profile)


def test_extra_sans_and_ekus_in_csr_are_ignored() -> None:
    """What a CSR asks for beyond its key and CN never reaches the checked request."""
    csr = make_csr(extensions=[
        x509.BasicConstraints(ca=True, path_length=None),
        x509.SubjectAlternativeName([x509.DNSName("bank.example"), x509.RFC822Name("ceo@x.y")]),
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CODE_SIGNING]),
    ])
    request = check_csr(csr, PROFILE)
    assert request == CsrRequest(csr.public_key(), "ec-p256", "agent-1")
    assert [a.name for a in attrs.fields(CsrRequest)] == ["public_key", "key_type", "common_name"]
