"""The client tools' own key and certificate helpers: make a key pair, write it and its
certificate as PEM, keep a secret file private, and tell whether a certificate is in its validity
window.

The client tools import no server module (``pyproject.toml``'s import contracts), so they do not
use the authority's ``enroll.pki``; what they need is small and is done here with ``cryptography``
directly. Nothing here reads the clock: ``validity_problem`` takes ``now``.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

#: The key types an agent can make (the names Switch's profiles use in ``key_types``).
_CURVES: dict[str, ec.EllipticCurve] = {
    "ec-p256": ec.SECP256R1(), "ec-p384": ec.SECP384R1(), "ec-p521": ec.SECP521R1()}


def generate_key(key_type: str = "ec-p256") -> PrivateKey:
    """A new private key: ``ec-p256``, ``ec-p384``, ``ec-p521``, ``rsa-BITS`` or ``ed25519``.
    Raises ``ValueError`` for any other name."""
    if key_type in _CURVES:
        return ec.generate_private_key(_CURVES[key_type])
    if key_type.startswith("rsa-") and key_type[4:].isdigit():
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown key type {key_type!r}")


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: PrivateKey) -> bytes:
    """The key as unencrypted PKCS#8 PEM (the agent protects it by the file's mode, 0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only (mode 0600, from its creation on),
    atomically: a crash leaves no file or the whole file, never part of a key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)  # a stale temporary file keeps its mode through O_TRUNC
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def validity_problem(cert: x509.Certificate, now: dt.datetime) -> str | None:
    """``certificate_not_yet_valid``, ``certificate_expired`` or None. Both ends are included
    (RFC 5280 4.1.2.5) and ``now`` is compared at the one-second granularity certificates encode,
    as the server does."""
    at = now.replace(microsecond=0)
    if at < cert.not_valid_before_utc:
        return "certificate_not_yet_valid"
    if at > cert.not_valid_after_utc:
        return "certificate_expired"
    return None
