"""A small test PKI on disk, built with enroll.pki."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509

from enroll import pki

NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)


def write_ca(directory: Path, stem: str, *, key_type: str = "ec-p256",
             validity: dt.timedelta = dt.timedelta(days=3650), now: dt.datetime = NOW,
             ) -> tuple[x509.Certificate, pki.PrivateKey, Path]:
    key = pki.generate_key(key_type)
    cert = pki.make_ca(pki.name(f"{stem} CA"), key, now=now, validity=validity)
    path = directory / f"{stem}.pem"
    path.write_bytes(pki.cert_pem(cert))
    pki.write_private(directory / f"{stem}.key", pki.key_pem(key))
    return cert, key, path


def write_server(directory: Path, issuer: tuple[x509.Certificate, pki.PrivateKey], *,
                 validity: dt.timedelta = dt.timedelta(days=365), now: dt.datetime = NOW,
                 dns_names: tuple[str, ...] = ("localhost",), key_type: str = "ec-p256",
                 ) -> tuple[Path, Path]:
    key = pki.generate_key(key_type)
    cert = pki.make_leaf(pki.name("localhost"), key.public_key(), issuer, now=now,
                         validity=validity, dns_names=dns_names, server=True, client=False)
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(pki.cert_pem(cert) + pki.cert_pem(issuer[0]))
    pki.write_private(key_path, pki.key_pem(key))
    return cert_path, key_path
