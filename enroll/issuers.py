"""Tenants' provisioning issuers: creation, renewal and which of them are trusted.

An issuer is a self-signed ECDSA CA (path length 0: it signs agent certificates only). The store
keeps its private key (``enroll.store``): with SQLite a file under ``STATE_DIR/issuers/TENANT/``
with mode 0600, written (and fsynced) before the issuer's row is committed, so the store never
names a key that is not on disk; with PostgreSQL sealed in the database (``enroll.keywrap``).

Trust across renewals: the current issuer (newest, not retired) is trusted while it is valid. A
retired issuer stays trusted while it is valid and at least one certificate it issued is still
unexpired, so renewing never cuts agents off; once what it issued has expired it is dropped.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from enroll import pki
from enroll.errors import StoreError


@attrs.frozen
class IssuerRecord:
    id: str
    tenant: str
    seq: int
    cert_pem: str
    key_path: str
    sha256: str
    not_before: int
    not_after: int
    created_at: int
    retired_at: int | None
    #: Computed when listed: whether agents' certificates from this issuer are trusted now.
    trusted: bool = False

    @property
    def subject(self) -> str:
        return self.certificate().subject.rfc4514_string()

    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem.encode())


#: An issuer's certificate and private key.
Material = tuple[x509.Certificate, pki.PrivateKey]


def make_issuer(tenant: str, seq: int, *, key_type: str, validity_s: int, now: dt.datetime
                ) -> Material:
    """The CA certificate and private key of the tenant's issuer number ``seq`` (CPU work only:
    the store keeps the key)."""
    key = pki.generate_key(key_type)
    cert = pki.make_ca(
        pki.name(f"Switch provisioning CA {tenant} {seq}", "Switch"),
        key,
        now=now,
        validity=dt.timedelta(seconds=validity_s),
        path_length=0,
    )
    return cert, key


def write_issuer_key(key_path: Path, key: pki.PrivateKey) -> None:
    """Write an issuer's key file (0600, its directory and the one above 0700, whatever the
    umask; fsynced before this returns)."""
    for directory in (key_path.parent.parent, key_path.parent):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)
    pki.write_private(key_path, pki.key_pem(key))


def load_issuer_key(record: IssuerRecord) -> pki.PrivateKey:
    """The issuer's private key from its file; StoreError when it is missing or unusable."""
    try:
        data = Path(record.key_path).read_bytes()
    except OSError as exc:
        raise StoreError(
            f"cannot load the key of issuer {record.id} from {record.key_path}: {exc}"
        ) from exc
    return issuer_key_from_pem(record.id, data, where=record.key_path)


def issuer_key_from_pem(issuer_id: str, data: bytes, *, where: str) -> pki.PrivateKey:
    """An issuer's private key from its (unencrypted) PEM; StoreError when it is unusable."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise StoreError(f"cannot load the key of issuer {issuer_id} from {where}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise StoreError(f"the key of issuer {issuer_id} is a {type(key).__name__}, not a CA key")
    return key


def trusted_issuer_ids(
    issuers: Sequence[IssuerRecord], latest_cert_expiry: Mapping[str, int], now: int
) -> set[str]:
    """Which issuers are trusted at ``now`` (unix seconds); see the module docstring.

    ``latest_cert_expiry`` maps an issuer id to the latest ``not_after`` (unix seconds) of the
    certificates it issued; an issuer absent from it has issued nothing.
    """
    trusted: set[str] = set()
    for issuer in issuers:
        # Both ends of a validity window are included (RFC 5280 4.1.2.5), as in pki.validity_problem.
        if not issuer.not_before <= now <= issuer.not_after:
            continue
        if issuer.retired_at is None or latest_cert_expiry.get(issuer.id, -1) >= now:
            trusted.add(issuer.id)
    return trusted

