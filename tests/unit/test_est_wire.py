"""EST wire formats (RFC 7030, RFC 8951): paths, base64 bodies, Authorization, PKCS#7, csrattrs,
the serverkeygen multipart reply, and the HTTP status of each refusal. Pure functions, no I/O
but openssl."""

from __future__ import annotations

import base64
import datetime as dt
import email
import email.policy
import re
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from enroll import errors, est_wire, pki
from enroll.csr import csr_attributes
from enroll.errors import (
    BadBase64,
    BodyTooLarge,
    EnrollError,
    MalformedCredentials,
    MethodNotAllowed,
    UnknownPath,
    error_classes,
)
from enroll.est_status import http_status

NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)


def _csr_der() -> bytes:
    key = pki.generate_key("ec-p256")
    csr = (x509.CertificateSigningRequestBuilder().subject_name(pki.name("agent-1"))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.DER)


# ---------------------------------------------------------------------------------------- paths

PATH_CASES = [
    ("ok/cacerts", "GET", "/.well-known/est/cacerts", None, "cacerts"),
    ("ok/csrattrs", "GET", "/.well-known/est/csrattrs", None, "csrattrs"),
    ("ok/simpleenroll", "POST", "/.well-known/est/simpleenroll", None, "simpleenroll"),
    ("ok/simplereenroll", "POST", "/.well-known/est/simplereenroll", None, "simplereenroll"),
    ("ok/serverkeygen", "POST", "/.well-known/est/serverkeygen", None, "serverkeygen"),
    ("ok/serverkeygen-pkcs12", "POST", "/.well-known/est/serverkeygen-pkcs12", None,
     "serverkeygen-pkcs12"),
    ("ok/label", "POST", "/.well-known/est/acme/simpleenroll", "acme", "simpleenroll"),
    ("ok/label-with-digits-and-dash", "GET", "/.well-known/est/0-acme-eu/cacerts", "0-acme-eu",
     "cacerts"),
    ("ok/label-63-chars", "GET", f"/.well-known/est/{'a' * 63}/cacerts", "a" * 63, "cacerts"),
    ("ok/query-ignored", "GET", "/.well-known/est/acme/cacerts?x=1&y=/..", "acme", "cacerts"),
]


@pytest.mark.parametrize(("method", "path", "label", "op"), [c[1:] for c in PATH_CASES],
                         ids=[c[0] for c in PATH_CASES])
def test_est_paths_are_parsed(method: str, path: str, label: str | None, op: str) -> None:
    assert est_wire.parse_est_path(method, path) == est_wire.EstRoute(label, op)


PATH_FAILURES: list[tuple[str, str, str, type[EnrollError]]] = [
    ("fail/not-est", "GET", "/cacerts", UnknownPath),
    ("fail/prefix-only", "GET", "/.well-known/est/", UnknownPath),
    ("fail/prefix-without-slash", "GET", "/.well-known/est", UnknownPath),
    ("fail/unknown-op", "POST", "/.well-known/est/fullcmc", UnknownPath),
    ("fail/trailing-slash", "GET", "/.well-known/est/cacerts/", UnknownPath),
    ("fail/label-trailing-slash", "GET", "/.well-known/est/acme/cacerts/", UnknownPath),
    ("fail/empty-label", "GET", "/.well-known/est//cacerts", UnknownPath),
    ("fail/uppercase-label", "GET", "/.well-known/est/Acme/cacerts", UnknownPath),
    ("fail/label-starts-with-dash", "GET", "/.well-known/est/-acme/cacerts", UnknownPath),
    ("fail/label-64-chars", "GET", f"/.well-known/est/{'a' * 64}/cacerts", UnknownPath),
    ("fail/label-dot-dot", "GET", "/.well-known/est/../cacerts", UnknownPath),
    ("fail/percent-encoded", "GET", "/.well-known/est/ac%6De/cacerts", UnknownPath),
    ("fail/two-labels", "GET", "/.well-known/est/acme/eu/cacerts", UnknownPath),
    ("fail/op-case", "GET", "/.well-known/est/CACERTS", UnknownPath),
    ("fail/get-simpleenroll", "GET", "/.well-known/est/simpleenroll", MethodNotAllowed),
    ("fail/post-cacerts", "POST", "/.well-known/est/acme/cacerts", MethodNotAllowed),
    ("fail/put-serverkeygen", "PUT", "/.well-known/est/serverkeygen", MethodNotAllowed),
]


@pytest.mark.parametrize(("method", "path", "error"), [c[1:] for c in PATH_FAILURES],
                         ids=[c[0] for c in PATH_FAILURES])
def test_other_paths_are_refused(method: str, path: str, error: type[EnrollError]) -> None:
    with pytest.raises(error):
        est_wire.parse_est_path(method, path)


# ----------------------------------------------------------------------------------- base64 body

def test_base64_with_crlf_folding_is_accepted() -> None:
    der = _csr_der()
    body = est_wire.encode_base64_body(der, newline=b"\r\n")
    assert b"\r\n" in body
    assert est_wire.decode_base64_body(body, max_bytes=65536) == der


@pytest.mark.parametrize("fold", [b"\n", b"\r\n", b" ", b"\t", b"\r\n  "],
                         ids=["lf", "crlf", "space", "tab", "crlf-indent"])
def test_base64_line_breaks_anywhere_are_accepted(fold: bytes) -> None:
    der = _csr_der()
    encoded = base64.b64encode(der)
    body = fold.join(encoded[i:i + 7] for i in range(0, len(encoded), 7)) + fold
    assert est_wire.decode_base64_body(body, max_bytes=65536) == der


def test_pem_certificate_request_body_is_accepted() -> None:
    der = _csr_der()
    csr = x509.load_der_x509_csr(der)
    pem = csr.public_bytes(serialization.Encoding.PEM)
    assert pem.startswith(b"-----BEGIN CERTIFICATE REQUEST-----")
    assert est_wire.decode_base64_body(pem, max_bytes=65536) == der


GARBAGE = [
    ("fail/empty", b""),
    ("fail/only-whitespace", b" \r\n\t"),
    ("fail/bang", b"!!!!"),
    ("fail/bad-length", b"QUJD" + b"RA"),
    ("fail/url-safe-alphabet", b"ab-_"),
    ("fail/padding-in-the-middle", b"QQ==QUJD"),
    ("fail/too-much-padding", b"Q==="),
    ("fail/nul-byte", b"QUJD\x00RA=="),
    ("fail/non-ascii", "QUJDé===".encode()),
    ("fail/pem-with-headers", b"-----BEGIN CERTIFICATE REQUEST-----\nProc-Type: 4,ENCRYPTED\n"
                              b"QUJD\n-----END CERTIFICATE REQUEST-----\n"),
]


@pytest.mark.parametrize("body", [c[1] for c in GARBAGE], ids=[c[0] for c in GARBAGE])
def test_garbage_base64_is_refused(body: bytes) -> None:
    with pytest.raises(BadBase64) as info:
        est_wire.decode_base64_body(body, max_bytes=65536)
    assert (http_status(info.value), info.value.reason) == (400, "bad_base64")


def test_oversized_body_is_refused_before_decoding() -> None:
    body = est_wire.encode_base64_body(b"\x00" * 3000)
    assert est_wire.decode_base64_body(body, max_bytes=len(body)) == b"\x00" * 3000
    with pytest.raises(BodyTooLarge) as info:
        est_wire.decode_base64_body(body, max_bytes=len(body) - 1)
    assert (http_status(info.value), info.value.reason) == (413, "body_too_large")


def test_encoded_body_has_64_character_lf_lines_that_gnu_base64_decodes() -> None:
    data = bytes(range(256)) * 3
    body = est_wire.encode_base64_body(data)
    assert b"\r" not in body
    lines = body.split(b"\n")
    assert lines[-1] == b""
    assert all(len(line) == 64 for line in lines[:-2]) and 0 < len(lines[-2]) <= 64
    assert est_wire.encode_base64_body(b"") == b""
    # What docs/enrollment.md does with every reply: pipe it into coreutils' base64 -d.
    decoded = subprocess.run(["base64", "-d"], input=body, capture_output=True, check=True)
    assert decoded.stdout == data


# --------------------------------------------------------------------------------- Authorization

def _basic(user_password: bytes) -> bytes:
    return b"Basic " + base64.b64encode(user_password)


AUTH_CASES = [
    ("ok/none", None, None),
    ("ok/basic", _basic(b"agent:swk_0123_secret"), "swk_0123_secret"),
    ("ok/basic-user-ignored", _basic(b"anything at all:s3cret"), "s3cret"),
    ("ok/basic-empty-user", _basic(b":s3cret"), "s3cret"),
    ("ok/basic-password-with-colon", _basic(b"agent:a:b"), "a:b"),
    ("ok/basic-scheme-case", b"bAsIc " + base64.b64encode(b"u:p"), "p"),
    ("ok/bearer", b"Bearer swk_0123abcd_AbC-_9", "swk_0123abcd_AbC-_9"),
    ("ok/bearer-scheme-case", b"bearer tok", "tok"),
    ("ok/bearer-padding", b"Bearer dG9r==", "dG9r=="),
]


@pytest.mark.parametrize(("header", "secret"), [c[1:] for c in AUTH_CASES],
                         ids=[c[0] for c in AUTH_CASES])
def test_basic_and_bearer_credentials_are_parsed(header: bytes | None, secret: str | None) -> None:
    assert est_wire.parse_authorization(header) == secret


AUTH_FAILURES = [
    ("fail/too-long", b"Bearer " + b"a" * 1100),
    ("fail/basic-too-long", _basic(b"u:" + b"p" * 800)),
    ("fail/empty", b""),
    ("fail/scheme-only", b"Basic"),
    ("fail/basic-no-colon", _basic(b"just-a-secret")),
    ("fail/basic-empty-password", _basic(b"agent:")),
    ("fail/basic-not-base64", b"Basic !!!notbase64"),
    ("fail/basic-not-utf8", _basic(b"agent:\xff\xfe")),
    ("fail/bearer-empty", b"Bearer "),
    ("fail/bearer-with-space", b"Bearer abc def"),
    ("fail/bearer-non-ascii", "Bearer tök".encode()),
    ("fail/bearer-control-char", b"Bearer abc\x01"),
    ("fail/digest", b'Digest username="a"'),
    ("fail/no-scheme", b"swk_0123_secret"),
]


@pytest.mark.parametrize("header", [c[1] for c in AUTH_FAILURES], ids=[c[0] for c in AUTH_FAILURES])
def test_malformed_authorization_is_unauthorized(header: bytes) -> None:
    with pytest.raises(MalformedCredentials) as info:
        est_wire.parse_authorization(header)
    assert (http_status(info.value), info.value.reason) == (401, "unauthorized")


# ----------------------------------------------------------------------------- certs-only PKCS#7

def _two_certs() -> list[x509.Certificate]:
    root_key = pki.generate_key()
    root = pki.make_ca(pki.name("Test Root"), root_key, now=NOW, validity=dt.timedelta(days=365),
                       path_length=1)
    sub_key = pki.generate_key()
    sub = pki.make_ca(pki.name("Test Issuer", "acme"), sub_key, now=NOW,
                      validity=dt.timedelta(days=90), issuer=(root, root_key))
    return [sub, root]


def test_certs_only_pkcs7_holds_the_certificates_for_openssl(tmp_path: Path) -> None:
    certs = _two_certs()
    der = est_wire.certs_only(certs)
    # certificates is a SET OF in CMS: DER sorts it, so compare without order.
    assert set(pkcs7.load_der_pkcs7_certificates(der)) == set(certs)
    path = tmp_path / "cacerts.p7"
    path.write_bytes(der)
    out = subprocess.run(["openssl", "pkcs7", "-inform", "DER", "-in", str(path), "-print_certs"],
                         check=True, capture_output=True, text=True).stdout
    assert "subject=CN = Test Root" in out
    assert "subject=O = acme, CN = Test Issuer" in out
    assert {x509.load_pem_x509_certificate(b) for b in _pem_blocks(out)} == set(certs)


def test_one_certificates_pkcs7_from_its_der_is_the_same_bytes_as_from_cryptography(
        tmp_path: Path) -> None:
    """The enrollment reply is encoded here from the DER the certificate was signed to; it must
    be exactly what ``cryptography`` (OpenSSL's encoder) writes, for short and long lengths."""
    for cert in _two_certs():
        der = cert.public_bytes(serialization.Encoding.DER)
        assert est_wire.certs_only_der(der) == est_wire.certs_only([cert])
    # A certificate over 64 KiB (a three-byte length) still encodes as the library's does.
    big = pki.make_ca(pki.name("Big"), pki.generate_key(), now=NOW, validity=dt.timedelta(days=1))
    padded = x509.CertificateBuilder().subject_name(big.subject).issuer_name(big.subject) \
        .public_key(big.public_key()).serial_number(1).not_valid_before(NOW) \
        .not_valid_after(NOW + dt.timedelta(days=1)).add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"),
                                       b"\x04\x83\x01\x00\x00" + b"x" * 65536), critical=False) \
        .sign(pki.generate_key(), hashes.SHA256())
    der = padded.public_bytes(serialization.Encoding.DER)
    assert len(der) > 65536
    assert est_wire.certs_only_der(der) == est_wire.certs_only([padded])


def _pem_blocks(text: str) -> list[bytes]:
    end = "-----END CERTIFICATE-----"
    blocks = text.split(end)[:-1]
    return [(b[b.index("-----BEGIN CERTIFICATE-----"):] + end).encode() for b in blocks]


# ------------------------------------------------------------------------------------ csrattrs

def test_csrattrs_is_a_der_sequence_of_oids(tmp_path: Path) -> None:
    oids = ["1.2.840.10045.3.1.7", "1.2.840.113549.1.1.1", "1.3.101.112"]
    der = est_wire.csrattrs(oids)
    assert der[:2] == bytes([0x30, len(der) - 2])
    assert bytes.fromhex("06082a8648ce3d030107") in der  # prime256v1, X.690 example-checked
    path = tmp_path / "attrs.der"
    path.write_bytes(der)
    out = subprocess.run(["openssl", "asn1parse", "-inform", "DER", "-in", str(path)],
                         check=True, capture_output=True, text=True).stdout
    assert "prime256v1" in out and "rsaEncryption" in out and "ED25519" in out


#: RFC 7030 4.5.2's example CsrAttrs, base64 as printed in the RFC: challengePassword, an EC key
#: on secp384r1 (id-ecPublicKey with the curve as its value), a macAddress extension request and
#: ecdsa-with-SHA384.
RFC7030_CSRATTRS_EXAMPLE = ("MEEGCSqGSIb3DQEJBzASBgcqhkjOPQIBMQcGBSuBBAAiMBYGCSqGSIb3DQEJDjEJBgcrBgEB"
                            "AQEWBggqhkjOPQQDAw==")


def test_csrattrs_encodes_the_rfc_example_byte_for_byte() -> None:
    der = est_wire.csrattrs(["1.2.840.113549.1.9.7", ("1.2.840.10045.2.1", ["1.3.132.0.34"]),
                             ("1.2.840.113549.1.9.14", ["1.3.6.1.1.1.1.22"]),
                             "1.2.840.10045.4.3.3"])
    assert der == base64.b64decode(RFC7030_CSRATTRS_EXAMPLE)


def _asn1parse(tmp_path: Path, der: bytes) -> list[tuple[int, str, str]]:
    """``openssl asn1parse`` as (depth, type, value) rows."""
    path = tmp_path / "attrs.der"
    path.write_bytes(der)
    out = subprocess.run(["openssl", "asn1parse", "-inform", "DER", "-in", str(path)],
                         check=True, capture_output=True, text=True).stdout
    rows = re.findall(r"d=(\d+) +hl=\d+ +l= *\d+ +(?:prim|cons): +(\w+) *:?(\S*)", out)
    return [(int(d), kind, value) for d, kind, value in rows]


def test_csrattrs_of_a_profile_names_ec_curves_as_the_value_of_id_ec_public_key(
        tmp_path: Path) -> None:
    items = csr_attributes(["ec-p256", "ec-p384", "rsa-2048", "rsa-4096", "ed25519"])
    assert _asn1parse(tmp_path, est_wire.csrattrs(items)) == [
        (0, "SEQUENCE", ""),
        (1, "SEQUENCE", ""),
        (2, "OBJECT", "id-ecPublicKey"),
        (2, "SET", ""),
        (3, "OBJECT", "secp384r1"),  # DER sorts a SET OF by encoding: 06 05 ... before 06 08 ...
        (3, "OBJECT", "prime256v1"),
        (1, "OBJECT", "rsaEncryption"),
        (1, "OBJECT", "ED25519"),
    ]
    assert csr_attributes(["rsa-3072"]) == ["1.2.840.113549.1.1.1"]
    assert csr_attributes([]) == []


def test_csrattrs_set_of_values_is_sorted_and_an_empty_attribute_is_refused() -> None:
    der = est_wire.csrattrs([("1.2.840.10045.2.1", ["1.3.132.0.35", "1.2.840.10045.3.1.7"])])
    p256, p521 = bytes.fromhex("06082a8648ce3d030107"), bytes.fromhex("06052b81040023")
    assert der.index(p521) < der.index(p256)  # DER: a SET OF in the order of its encodings
    with pytest.raises(ValueError):
        est_wire.csrattrs([("1.2.840.10045.2.1", [])])


def test_csrattrs_with_nothing_to_ask_is_an_empty_sequence() -> None:
    assert est_wire.csrattrs([]) == b"\x30\x00"


def test_csrattrs_encodes_large_arcs_and_long_lengths(tmp_path: Path) -> None:
    big = "2.25.171807425169875740036974846453463467381"
    der = est_wire.csrattrs([big] * 10)
    assert der[1] == 0x81  # long-form length: the content is over 127 bytes
    path = tmp_path / "attrs.der"
    path.write_bytes(der)
    out = subprocess.run(["openssl", "asn1parse", "-inform", "DER", "-in", str(path)],
                         check=True, capture_output=True, text=True).stdout
    assert out.count(big) == 10
    assert est_wire.csrattrs(["2.999.3"]) == bytes.fromhex("3005" "0603883703")  # X.690 8.19.5


@pytest.mark.parametrize("oid", ["1", "3.1", "1.40", "1.2.-3", "x.y"])
def test_csrattrs_refuses_what_is_not_an_oid(oid: str) -> None:
    with pytest.raises(ValueError):
        est_wire.csrattrs([oid])


# -------------------------------------------------------------------------- serverkeygen reply

def test_serverkeygen_reply_is_multipart_with_key_and_certificate() -> None:
    key = pki.generate_key()
    key_der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    p7 = est_wire.certs_only(_two_certs()[:1])
    content_type, body = est_wire.multipart_serverkeygen(key_der, p7)
    assert content_type.startswith("multipart/mixed; boundary=")
    message = email.message_from_bytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body, policy=email.policy.HTTP)
    assert message.is_multipart() and not message.defects
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["application/pkcs8", "application/pkcs7-mime"]
    assert parts[1].get_param("smime-type") == "certs-only"
    assert [p["Content-Transfer-Encoding"] for p in parts] == ["base64", "base64"]
    assert parts[0].get_payload(decode=True) == key_der
    assert parts[1].get_payload(decode=True) == p7
    assert body.endswith(f"--{message.get_boundary()}--\r\n".encode())
    # MIME's canonical form: every line of the multipart body ends with CRLF, none with a bare LF.
    assert b"\n" not in body.replace(b"\r\n", b"")


# ------------------------------------------------------------------------------------- errors

ERRORS = [
    (errors.BadBase64, 400, "bad_base64"),
    (errors.BadCsr, 400, "bad_csr"),
    (errors.BadCsrSignature, 400, "bad_csr_signature"),
    (errors.KeyTypeNotAllowed, 400, "key_type_not_allowed"),
    (errors.SubjectNotAllowed, 400, "subject_not_allowed"),
    (errors.TenantMismatch, 400, "tenant_mismatch"),
    (errors.EmptyPassword, 400, "empty_password"),
    (errors.BadPassword, 400, "bad_password"),
    (errors.IssuerExpired, 400, "issuer_expired"),
    (errors.MalformedCredentials, 401, "unauthorized"),
    (errors.CredentialsRequired, 401, "credentials_required"),
    (errors.BadCredentials, 401, "bad_credentials"),
    (errors.CertificateRequired, 401, "certificate_required"),
    (errors.CertificateUntrusted, 403, "certificate_untrusted"),
    (errors.CertificateExpired, 403, "certificate_expired"),
    (errors.CertificateUnknown, 403, "certificate_unknown"),
    (errors.RequestRejected, 403, "request_rejected"),
    (errors.UnknownPath, 404, "not_found"),
    (errors.UnknownTenant, 404, "unknown_tenant"),
    (errors.MethodNotAllowed, 405, "method_not_allowed"),
    (errors.BodyTooLarge, 413, "body_too_large"),
    (errors.UnsupportedMediaType, 415, "unsupported_media_type"),
    (errors.InternalError, 500, "internal_error"),
    (errors.StoreUnavailable, 503, "store_unavailable"),
    (errors.StoreError, 503, "store_error"),
    (errors.WrongKeyState, 503, "wrong_key_state"),
    (errors.NoIssuer, 503, "no_issuer"),
    (errors.UnknownKey, 503, "unknown_key"),
]


@pytest.mark.parametrize(("cls", "status", "reason"), ERRORS, ids=[e[2] for e in ERRORS])
def test_every_est_error_has_a_status_and_a_stable_reason(
        cls: type[EnrollError], status: int, reason: str) -> None:
    error = cls("local detail")
    assert isinstance(error, EnrollError)
    assert (http_status(error), error.reason, error.message) == (status, reason, "local detail")


def test_rate_limiting_is_429_and_says_when_to_retry() -> None:
    error = errors.RateLimited("local detail", retry_after=17)
    assert (http_status(error), error.reason, error.retry_after) == (429, "rate_limited", 17)


@pytest.mark.parametrize("cls", [errors.KeySuspended, errors.KeyRevoked, errors.ServiceDisabled,
                                 errors.CertificateRevoked], ids=lambda c: c.reason)
def test_forbidden_says_which_rule_refused(cls: type[EnrollError]) -> None:
    error = cls("detail")
    assert (http_status(error), error.reason) == (403, cls.reason)
    assert error_classes()[cls.reason] is cls  # one class per reason: the code is the class's
