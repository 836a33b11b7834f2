"""Small, pure helpers for building X.509 objects with ``cryptography``.

Used by ``switch init`` (the dev PKI), the provisioning issuers and the tests. Nothing here reads
the clock: every function that needs a time takes ``now``.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

#: Backdating of notBefore, to tolerate clients whose clocks are slightly behind.
CLOCK_SKEW = dt.timedelta(minutes=5)


def generate_key(key_type: str = "ec-p256") -> PrivateKey:
    """A new private key of a config key type (``ec-p256``, ``rsa-2048``, ...)."""
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "ec-p521":
        return ec.generate_private_key(ec.SECP521R1())
    if key_type.startswith("rsa-"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown key type {key_type!r}")


def hash_for(key: PrivateKey) -> hashes.HashAlgorithm | None:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def random_serial() -> int:
    """A positive 159-bit random serial (RFC 5280 allows 20 octets; CA/B asks for 64+ random bits)."""
    return int.from_bytes(os.urandom(20), "big") >> 1 or 1


def name(common_name: str, organisation: str | None = None) -> x509.Name:
    attrs_ = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organisation:
        attrs_.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation))
    return x509.Name(attrs_)


def make_ca(
    subject: x509.Name,
    key: PrivateKey,
    *,
    now: dt.datetime,
    validity: dt.timedelta,
    issuer: tuple[x509.Certificate, PrivateKey] | None = None,
    path_length: int | None = 0,
) -> x509.Certificate:
    """A CA certificate: self-signed, or signed by ``issuer`` (certificate, key) for an intermediate."""
    signer_cert, signer_key = issuer if issuer else (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer_cert.subject if signer_cert else subject)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if signer_cert is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    return builder.sign(signer_key, hash_for(signer_key))  # type: ignore[arg-type]


def make_leaf(
    subject: x509.Name,
    public_key: CertificatePublicKeyTypes,
    issuer: tuple[x509.Certificate, PrivateKey],
    *,
    now: dt.datetime,
    validity: dt.timedelta,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    emails: Sequence[str] = (),
    server: bool = False,
    client: bool = True,
    serial: int | None = None,
    extra_extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> x509.Certificate:
    """An end-entity certificate (CA:false) for a server and/or a client."""
    issuer_cert, issuer_key = issuer
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject)
        .public_key(public_key)
        .serial_number(serial if serial is not None else random_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False,
                key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ip_addresses]
    sans += [x509.RFC822Name(e) for e in emails]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    for ext, critical in extra_extensions:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(issuer_key, hash_for(issuer_key))  # type: ignore[arg-type]


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def der_to_pem(der: bytes, label: str) -> str:
    """PEM of ``der`` as OpenSSL and ``cryptography`` write it: base64 in lines of 64."""
    encoded = base64.b64encode(der).decode("ascii")
    lines = "".join(encoded[i:i + 64] + "\n" for i in range(0, len(encoded), 64))
    return f"-----BEGIN {label}-----\n{lines}-----END {label}-----\n"


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only (mode 0600), atomically: a crash leaves either
    no file or the whole file, never a partial key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def sha256_fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def validity_problem(cert: x509.Certificate, now: dt.datetime) -> str | None:
    """``certificate_not_yet_valid``, ``certificate_expired`` or None. Both ends are included
    (RFC 5280 4.1.2.5) and ``now`` is compared at the one-second granularity certificates encode
    (the Web PKI reading)."""
    at = now.replace(microsecond=0)
    if at < cert.not_valid_before_utc:
        return "certificate_not_yet_valid"
    if at > cert.not_valid_after_utc:
        return "certificate_expired"
    return None
