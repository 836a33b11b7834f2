"""Issuance policy: the server, not the CSR, decides every field of the certificate; the
provisioning-key binding; re-enrollment rules; the encrypted PKCS#12 of serverkeygen."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from config.model import Profile
from enroll import pki
from enroll.csr import CsrRequest, check_csr
from enroll.errors import (
    BadPassword,
    CertificateExpired,
    EmptyPassword,
    IssuerExpired,
    SubjectNotAllowed,
)
from enroll.est_status import http_status
from enroll.policy import (
    KEY_BINDING_OID,
    Signer,
    build_certificate,
    check_renewal,
    identity_uri,
    issue_certificate,
    issued_for_client_auth,
    key_id_of,
    pkcs12_bundle,
)

NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
PROFILE = Profile("default", validity_s=30 * 86400)
KEY_ID = "pk_0123456789abcdef"

Issuer = tuple[x509.Certificate, pki.PrivateKey]


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    key = pki.generate_key("ec-p256")
    return pki.make_ca(pki.name("acme provisioning CA", "Switch"), key, now=NOW,
                       validity=dt.timedelta(days=365)), key


def request_for(private: pki.PrivateKey, cn: str = "agent-1",
                extensions: tuple[x509.ExtensionType, ...] = ()) -> CsrRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Evil Corp"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "other"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ]))
    for ext in extensions:
        builder = builder.add_extension(ext, critical=True)
    csr = builder.sign(private, hashes.SHA256())
    return check_csr(csr, PROFILE)


def issue(issuer: Issuer, request: CsrRequest | None = None, *, key_id: str | None = KEY_ID,
          now: dt.datetime = NOW, profile: Profile = PROFILE, serial: int | None = None,
          ) -> x509.Certificate:
    request = request or request_for(pki.generate_key())
    return build_certificate(request, profile=profile, tenant="acme", key_id=key_id,
                             issuer=issuer, now=now, serial=serial)


# ------------------------------------------------------------------------- certificate content

def test_csr_asking_for_ca_true_gets_ca_false(issuer: Issuer) -> None:
    request = request_for(pki.generate_key(), extensions=(
        x509.BasicConstraints(ca=True, path_length=None),))
    cert = issue(issuer, request)
    ext = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert ext.critical and ext.value.ca is False and ext.value.path_length is None


def test_extra_sans_and_ekus_in_csr_are_ignored(issuer: Issuer) -> None:
    request = request_for(pki.generate_key(), extensions=(
        x509.SubjectAlternativeName([x509.DNSName("bank.example"), x509.RFC822Name("ceo@x.y"),
                                     x509.UniformResourceIdentifier("urn:switch:other:boss")]),
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CODE_SIGNING]),
        x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=True,
                      data_encipherment=True, key_agreement=True, key_cert_sign=True,
                      crl_sign=True, encipher_only=False, decipher_only=False),
    ))
    cert = issue(issuer, request)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(identity_uri("acme", "agent-1"))]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(eku.value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value == x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
        encipher_only=False, decipher_only=False)


def test_subject_is_the_checked_cn_under_the_tenant(issuer: Issuer) -> None:
    cert = issue(issuer)
    assert cert.subject == x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "acme"),
        x509.NameAttribute(NameOID.COMMON_NAME, "agent-1"),
    ])
    assert cert.issuer == issuer[0].subject


def test_only_the_public_key_is_taken_from_the_csr(issuer: Issuer) -> None:
    private = pki.generate_key()
    assert issue(issuer, request_for(private)).public_key() == private.public_key()


def test_rsa_certificates_also_allow_key_encipherment(issuer: Issuer) -> None:
    cert = issue(issuer, request_for(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment and not usage.key_cert_sign


def test_extensions_are_exactly_the_profiles(issuer: Issuer) -> None:
    cert = issue(issuer)
    assert {e.oid: e.critical for e in cert.extensions} == {
        x509.BasicConstraints.oid: True, x509.KeyUsage.oid: True,
        x509.ExtendedKeyUsage.oid: False, x509.SubjectAlternativeName.oid: False,
        x509.SubjectKeyIdentifier.oid: False, x509.AuthorityKeyIdentifier.oid: False,
        KEY_BINDING_OID: False,
    }


def test_key_identifiers_link_leaf_and_issuer(issuer: Issuer) -> None:
    cert = issue(issuer)
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    issuer_ski = issuer[0].extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == issuer_ski.digest


def test_validity_is_backdated_five_minutes_and_lasts_the_profile(issuer: Issuer) -> None:
    cert = issue(issuer, profile=Profile("short", validity_s=86400))
    assert cert.not_valid_before_utc == NOW - dt.timedelta(minutes=5)
    assert cert.not_valid_after_utc == NOW + dt.timedelta(days=1)


def test_notafter_never_exceeds_issuer(issuer: Issuer) -> None:
    late = issuer[0].not_valid_after_utc - dt.timedelta(days=10)
    cert = issue(issuer, now=late)  # 30 days asked, 10 left
    assert cert.not_valid_after_utc == issuer[0].not_valid_after_utc


def test_expired_issuer_issues_nothing(issuer: Issuer) -> None:
    with pytest.raises(IssuerExpired) as info:
        issue(issuer, now=issuer[0].not_valid_after_utc)
    assert (http_status(info.value), info.value.reason) == (400, "issuer_expired")


def test_serial_is_random_and_positive_unless_given(issuer: Issuer) -> None:
    serials = {issue(issuer).serial_number for _ in range(3)}
    assert len(serials) == 3 and all(0 < s < 2**159 for s in serials)
    assert issue(issuer, serial=0x1234).serial_number == 0x1234


def test_issued_certificate_verifies_with_openssl(issuer: Issuer, tmp_path: Path) -> None:
    cert = issue(issuer)
    (tmp_path / "ca.pem").write_bytes(pki.cert_pem(issuer[0]))
    (tmp_path / "leaf.pem").write_bytes(pki.cert_pem(cert))
    result = subprocess.run(
        ["openssl", "verify", "-attime", str(int(NOW.timestamp())), "-purpose", "sslclient",
         "-x509_strict", "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "leaf.pem")],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(": OK")
    cert.verify_directly_issued_by(issuer[0])


def test_issued_certificate_is_refused_by_openssl_as_a_server(issuer: Issuer, tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_bytes(pki.cert_pem(issuer[0]))
    (tmp_path / "leaf.pem").write_bytes(pki.cert_pem(issue(issuer)))
    result = subprocess.run(
        ["openssl", "verify", "-attime", str(int(NOW.timestamp())), "-purpose", "sslserver",
         "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "leaf.pem")],
        capture_output=True, text=True)
    assert result.returncode != 0  # clientAuth only


# ------------------------------------------------------------------------ provisioning-key binding

def test_key_id_extension_round_trips(issuer: Issuer) -> None:
    cert = issue(issuer, key_id=KEY_ID)
    ext = cert.extensions.get_extension_for_oid(KEY_BINDING_OID)
    assert not ext.critical
    assert isinstance(ext.value, x509.UnrecognizedExtension)
    assert ext.value.value == b"\x0c" + bytes([len(KEY_ID)]) + KEY_ID.encode()  # UTF8String
    assert key_id_of(cert) == KEY_ID
    reparsed = x509.load_der_x509_certificate(cert.public_bytes(serialization.Encoding.DER))
    assert key_id_of(reparsed) == KEY_ID


def test_certificate_without_a_key_has_no_binding(issuer: Issuer) -> None:
    cert = issue(issuer, key_id=None)
    assert key_id_of(cert) is None
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_oid(KEY_BINDING_OID)


@pytest.mark.parametrize("value", [
    b"\x13\x13pk_0123456789abcdef",   # PrintableString, not UTF8String
    b"\x0c\x14pk_0123456789abcdef",   # length says one more byte than there is
    b"\x0c\x12pk_0123456789abcdef",   # trailing byte
    b"\x0c\x00",                      # empty
    b"\x0c",                          # truncated
    b"",
    b"\x0c\x02\xff\xfe",              # not UTF-8
    b"\x0c\x41" + b"a" * 65,          # longer than any key id
], ids=["printable-string", "short", "trailing", "empty", "truncated", "nothing", "not-utf8",
        "too-long"])
def test_malformed_key_binding_reads_as_none(issuer: Issuer, value: bytes) -> None:
    cert = pki.make_leaf(pki.name("agent-1"), pki.generate_key().public_key(), issuer, now=NOW,
                         validity=dt.timedelta(days=1),
                         extra_extensions=[(x509.UnrecognizedExtension(KEY_BINDING_OID, value), False)])
    assert key_id_of(cert) is None


def test_key_id_that_could_not_be_read_back_is_never_written(issuer: Issuer) -> None:
    with pytest.raises(ValueError):
        issue(issuer, key_id="k" * 65)
    with pytest.raises(ValueError):
        issue(issuer, key_id="")
    assert key_id_of(issue(issuer, key_id="k" * 64)) == "k" * 64


# ---------------------------------------------------------------------------------- re-enrollment

@pytest.mark.parametrize("when", [
    NOW + dt.timedelta(days=20),
    NOW - dt.timedelta(minutes=5),                          # notBefore itself
    NOW + dt.timedelta(days=30, microseconds=999_999),      # notAfter is inclusive (RFC 5280)
], ids=["middle", "at-not-before", "at-not-after"])
def test_renewal_with_the_same_cn_is_allowed(issuer: Issuer, when: dt.datetime) -> None:
    current = issue(issuer)
    check_renewal(current, request_for(pki.generate_key()).common_name, when)


def test_renewal_asking_for_another_cn_is_refused(issuer: Issuer) -> None:
    current = issue(issuer)
    with pytest.raises(SubjectNotAllowed):
        check_renewal(current, request_for(pki.generate_key(), cn="agent-2").common_name, NOW)


@pytest.mark.parametrize("when", [
    NOW + dt.timedelta(days=30, seconds=1),
    NOW + dt.timedelta(days=31),
    NOW - dt.timedelta(minutes=5, seconds=1),
], ids=["just-after", "after", "before"])
def test_renewal_with_a_certificate_not_valid_now_is_forbidden(issuer: Issuer, when: dt.datetime) -> None:
    current = issue(issuer)
    with pytest.raises(CertificateExpired) as info:
        check_renewal(current, request_for(pki.generate_key()).common_name, when)
    assert (http_status(info.value), info.value.reason) == (403, "certificate_expired")


# ----------------------------------------------------------------------------------------- PKCS#12

@pytest.fixture(scope="module")
def bundle_parts(issuer: Issuer) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    return key, issue(issuer, request_for(key))


def test_pkcs12_empty_password_refused(
        issuer: Issuer, bundle_parts: tuple[ec.EllipticCurvePrivateKey, x509.Certificate]) -> None:
    key, cert = bundle_parts
    with pytest.raises(EmptyPassword) as info:
        pkcs12_bundle(key, cert, [issuer[0]], b"")
    assert (http_status(info.value), info.value.reason) == (400, "empty_password")


def test_pkcs12_overlong_password_refused(
        issuer: Issuer, bundle_parts: tuple[ec.EllipticCurvePrivateKey, x509.Certificate]) -> None:
    key, cert = bundle_parts
    with pytest.raises(BadPassword) as info:
        pkcs12_bundle(key, cert, [issuer[0]], b"p" * 1025)
    assert (http_status(info.value), info.value.reason) == (400, "bad_password")


def test_pkcs12_random_password_opens_the_file(
        issuer: Issuer, bundle_parts: tuple[ec.EllipticCurvePrivateKey, x509.Certificate]) -> None:
    key, cert = bundle_parts
    data, password = pkcs12_bundle(key, cert, [issuer[0]], None)
    assert len(password) == 24 and password.decode().replace("-", "").replace("_", "").isalnum()
    loaded = pkcs12.load_pkcs12(data, password)
    assert loaded.key is not None and loaded.key.private_numbers() == key.private_numbers()  # type: ignore[union-attr]
    assert loaded.cert is not None and loaded.cert.certificate == cert
    assert [c.certificate for c in loaded.additional_certs] == [issuer[0]]
    with pytest.raises(ValueError):
        pkcs12.load_pkcs12(data, b"wrong")
    with pytest.raises(ValueError):
        pkcs12.load_pkcs12(data, None)
    assert pkcs12_bundle(key, cert, [], None)[1] != password  # a new one each time


def test_pkcs12_with_the_clients_password_opens_with_openssl(
        issuer: Issuer, bundle_parts: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
        tmp_path: Path) -> None:
    key, cert = bundle_parts
    data, password = pkcs12_bundle(key, cert, [issuer[0]], b"correct horse")
    assert password == b"correct horse"
    path = tmp_path / "agent.p12"
    path.write_bytes(data)
    result = subprocess.run(
        ["openssl", "pkcs12", "-in", str(path), "-passin", "pass:correct horse", "-info",
         "-nodes"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "AES-256-CBC" in result.stderr  # what -info reports about the encryption
    assert "PRIVATE KEY" in result.stdout and "CN = agent-1" in result.stdout
    wrong = subprocess.run(["openssl", "pkcs12", "-in", str(path), "-passin", "pass:nope",
                            "-nodes"], capture_output=True, text=True)
    assert wrong.returncode != 0


# ------------------------------------------------------------ what a record is made from

@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "rsa-2048", "ed25519"])
def test_what_the_record_takes_from_issuing_is_what_the_certificate_says(
        issuer: Issuer, key_type: str) -> None:
    """The record's fields come from what went into the certificate (not parsed back out of
    it, see ``Issued``): they must be exactly what parsing the certificate gives."""
    request = CsrRequest(pki.generate_key(key_type).public_key(), key_type, "agent,+7=#x")
    at = NOW.replace(microsecond=654321)
    issued = issue_certificate(request, profile=PROFILE, tenant="acme", key_id=KEY_ID,
                               signer=Signer.of(*issuer), now=at)
    cert = x509.load_der_x509_certificate(issued.der)
    assert issued.certificate.public_bytes(serialization.Encoding.DER) == issued.der
    assert issued.serial == cert.serial_number
    assert issued.subject.rfc4514_string() == cert.subject.rfc4514_string()
    assert int(issued.not_before.timestamp()) == int(cert.not_valid_before_utc.timestamp())
    assert int(issued.not_after.timestamp()) == int(cert.not_valid_after_utc.timestamp())
    assert pki.der_to_pem(issued.der, "CERTIFICATE") == pki.cert_pem(cert).decode()


def test_a_signer_made_once_signs_as_the_issuer_itself(issuer: Issuer) -> None:
    signer = Signer.of(*issuer)
    first, second = (issue_certificate(request_for(pki.generate_key()), profile=PROFILE,
                                       tenant="acme", key_id=KEY_ID, signer=signer, now=NOW)
                     for _ in range(2))
    for issued in (first, second):
        issued.certificate.verify_directly_issued_by(issuer[0])
    assert first.serial != second.serial


def test_a_renewals_certificate_counts_only_when_signed_by_the_issuer_for_client_auth(
        issuer: Issuer) -> None:
    agent = issue(issuer)
    assert issued_for_client_auth(agent, issuer[0])
    lookalike_key = pki.generate_key("ec-p256")  # the same name, another key
    lookalike = pki.make_ca(issuer[0].subject, lookalike_key, now=NOW,
                            validity=dt.timedelta(days=365))
    forged = pki.make_leaf(agent.subject, pki.generate_key().public_key(),
                           (lookalike, lookalike_key), now=NOW, validity=dt.timedelta(days=1))
    assert not issued_for_client_auth(forged, issuer[0])
    server_only = pki.make_leaf(agent.subject, pki.generate_key().public_key(), issuer,
                                now=NOW, validity=dt.timedelta(days=1), server=True,
                                client=False)
    assert not issued_for_client_auth(server_only, issuer[0])
    other = pki.make_ca(pki.name("another CA"), lookalike_key, now=NOW,
                        validity=dt.timedelta(days=365))
    assert not issued_for_client_auth(agent, other)
