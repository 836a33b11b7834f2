"""Issuance policy: the server decides every field of a certificate.

Pure: ``now`` is passed in. A certificate issued from a CSR carries, in a fixed order:

* subject ``CN=<checked common name>, OU=<tenant>``; nothing else from the CSR;
* basicConstraints CA:false (critical); keyUsage digitalSignature (+ keyEncipherment for RSA),
  critical; extendedKeyUsage clientAuth only;
* subjectAltName ``URI:urn:switch:<tenant>:<common name>`` (the identity the gateway forwards);
* validity from ``now - 5 min`` to ``now + profile.validity``, never beyond the issuer's notAfter;
* a random 159-bit serial; SKI and AKI;
* the **provisioning-key binding**: a non-critical extension ``KEY_BINDING_OID`` whose value is the
  DER UTF8String of the provisioning key id that authorised the certificate, so the gateway can
  check the key's state from the certificate alone.
"""

from __future__ import annotations

import datetime as dt
import secrets

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from config.model import Profile
from enroll import pki
from enroll.csr import CsrRequest
from enroll.errors import (
    BadPassword,
    CertificateExpired,
    EmptyPassword,
    IssuerExpired,
    SubjectNotAllowed,
)

#: Switch's provisioning-key binding. An OID under 2.25 (ITU-T X.667: an OID derived from a UUID,
#: which needs no registration) so it can never collide with anyone else's.
KEY_BINDING_OID = ObjectIdentifier("2.25.171807425169875740036974846453463467381")
MAX_KEY_ID_BYTES = 64


def identity_uri(tenant: str, common_name: str) -> str:
    return f"urn:switch:{tenant}:{common_name}"


def _utf8string(text: str) -> bytes:
    raw = text.encode()
    if not raw or len(raw) > MAX_KEY_ID_BYTES:
        # The reader (``key_id_of``) refuses the same lengths: never issue what it cannot read.
        raise ValueError(f"a key id must be 1..{MAX_KEY_ID_BYTES} bytes of UTF-8")
    return b"\x0c" + bytes([len(raw)]) + raw


def key_binding_extension(key_id: str) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(KEY_BINDING_OID, _utf8string(key_id))


def key_id_of(cert: x509.Certificate) -> str | None:
    """The provisioning key id bound into ``cert``, or None (strict: a malformed value is None)."""
    try:
        ext = cert.extensions.get_extension_for_oid(KEY_BINDING_OID)
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        return None
    raw = value.value
    if len(raw) < 3 or raw[0] != 0x0C or raw[1] != len(raw) - 2 or raw[1] > MAX_KEY_ID_BYTES:
        return None
    try:
        return raw[2:].decode()
    except UnicodeDecodeError:
        return None


#: The extensions every certificate from a CSR carries whoever it is for (made once).
_CLIENT_BASIC = x509.BasicConstraints(ca=False, path_length=None)
_CLIENT_EKU = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])


def _key_usage(rsa_key: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False,
                         key_encipherment=rsa_key, data_encipherment=False, key_agreement=False,
                         key_cert_sign=False, crl_sign=False, encipher_only=False,
                         decipher_only=False)


_KEY_USAGE = {False: _key_usage(False), True: _key_usage(True)}


@attrs.frozen
class Signer:
    """What an issuer puts in every certificate it signs, worked out once per issuer: its name,
    its key and signature hash, its notAfter and the AuthorityKeyIdentifier (a hash of its
    public key)."""

    name: x509.Name
    key: pki.PrivateKey
    hash: hashes.HashAlgorithm | None
    not_after: dt.datetime
    authority_key_id: x509.AuthorityKeyIdentifier

    @classmethod
    def of(cls, cert: x509.Certificate, key: pki.PrivateKey) -> Signer:
        return cls(cert.subject, key, pki.hash_for(key), cert.not_valid_after_utc,
                   x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       cert.public_key()))  # type: ignore[arg-type]


@attrs.frozen
class Issued:
    """A certificate just signed, with what its record holds, taken from what went into it
    rather than parsed back out of it."""

    certificate: x509.Certificate
    der: bytes
    serial: int
    subject: x509.Name
    not_before: dt.datetime
    not_after: dt.datetime


def issue_certificate(
    request: CsrRequest, *, profile: Profile, tenant: str, key_id: str | None, signer: Signer,
    now: dt.datetime, serial: int | None = None,
) -> Issued:
    """Sign the certificate for ``request`` (see the module docstring for its fields)."""
    not_after = min(now + dt.timedelta(seconds=profile.validity_s), signer.not_after)
    if not_after <= now:
        raise IssuerExpired("the issuer has expired; renew it with `switch ca renew`")
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, tenant),
        x509.NameAttribute(NameOID.COMMON_NAME, request.common_name),
    ])
    serial = serial if serial is not None else pki.random_serial()
    not_before = now - pki.CLOCK_SKEW
    public_key = request.public_key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer.name)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(_CLIENT_BASIC, critical=True)
        .add_extension(_KEY_USAGE[isinstance(public_key, rsa.RSAPublicKey)], critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(signer.authority_key_id, critical=False)
        .add_extension(_CLIENT_EKU, critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(
            identity_uri(tenant, request.common_name))]), critical=False)
    )
    if key_id is not None:
        builder = builder.add_extension(key_binding_extension(key_id), critical=False)
    cert = builder.sign(signer.key, signer.hash)  # type: ignore[arg-type]
    return Issued(cert, cert.public_bytes(serialization.Encoding.DER), serial, subject,
                  not_before, not_after)


def build_certificate(
    request: CsrRequest, *, profile: Profile, tenant: str, key_id: str | None,
    issuer: tuple[x509.Certificate, pki.PrivateKey], now: dt.datetime, serial: int | None = None,
) -> x509.Certificate:
    """``issue_certificate`` by ``issuer`` (its certificate and key), the certificate alone."""
    return issue_certificate(request, profile=profile, tenant=tenant, key_id=key_id,
                             signer=Signer.of(*issuer), now=now, serial=serial).certificate


def common_name_of(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        return None
    value = names[0].value
    return value if isinstance(value, str) else None


def check_renewal(current: x509.Certificate, common_name: str, now: dt.datetime) -> None:
    """A request authenticated by the current certificate (simplereenroll, or serverkeygen with
    TLS client auth): that certificate is within its validity and the request asks for the same
    common name, so a certificate for one CN can never obtain another's."""
    if pki.validity_problem(current, now) is not None:
        raise CertificateExpired("the current certificate is not valid now")
    if common_name_of(current) != common_name:
        raise SubjectNotAllowed("a request authenticated by a certificate must ask for that "
                                "certificate's CN")


#: Far above any passphrase a person or a device would use; bounds the KDF's input.
MAX_PKCS12_PASSWORD_BYTES = 1024


def check_pkcs12_password(password: bytes | None) -> None:
    """A PKCS#12 password a client supplied (None: Switch makes one). An empty one is refused (an
    unencrypted private key never leaves the server), and so is one over
    ``MAX_PKCS12_PASSWORD_BYTES``. Called before anything is issued or stored."""
    if password is not None and not password:
        raise EmptyPassword("an empty PKCS#12 password is not allowed")
    if password is not None and len(password) > MAX_PKCS12_PASSWORD_BYTES:
        raise BadPassword("the PKCS#12 password is too long")


def pkcs12_bundle(
    key: pki.PrivateKey, cert: x509.Certificate, chain: list[x509.Certificate], password: bytes | None,
) -> tuple[bytes, bytes]:
    """An encrypted PKCS#12 (AES-256-CBC, PBKDF2-SHA256) with the key, certificate and chain. With
    no password, a random one is made and returned (to be shown once). The password is checked
    by ``check_pkcs12_password`` (again: callers check it before issuing)."""
    check_pkcs12_password(password)
    password = password or secrets.token_urlsafe(18).encode()
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(200_000)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(password)
    )
    data = pkcs12.serialize_key_and_certificates(b"switch-agent", key, cert, chain or None, encryption)
    return data, password


def issued_for_client_auth(leaf: x509.Certificate, issuer: x509.Certificate) -> bool:
    """``leaf`` (a renewal's current certificate) is signed by ``issuer`` and fit for client
    auth. False for anything that does not parse (cryptography parses names and extensions
    lazily: a ValueError can come from any of them)."""
    try:
        if leaf.issuer != issuer.subject:
            return False
        leaf.verify_directly_issued_by(issuer)
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False
    return ExtendedKeyUsageOID.CLIENT_AUTH in eku
