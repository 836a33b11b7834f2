"""The client tools' own key and certificate helpers (gateway/client/pki.py)."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from config.model import KEY_TYPES
from enroll import pki as authority_pki
from enroll.csr import key_type_of
from gateway.client import pki

NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_every_key_type_a_profile_can_allow_is_made_as_the_authority_names_it(key_type: str) -> None:
    key = pki.generate_key(key_type)
    assert key_type_of(key.public_key()) == key_type


@pytest.mark.parametrize("key_type", ["ec-p224", "rsa-", "rsa-big", "dsa-2048", "ED25519", ""])
def test_an_unknown_key_type_is_refused(key_type: str) -> None:
    with pytest.raises(ValueError, match="unknown key type"):
        pki.generate_key(key_type)


def test_key_pem_is_unencrypted_pkcs8_that_loads_back_to_the_same_key() -> None:
    key = pki.generate_key()
    pem = pki.key_pem(key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = serialization.load_pem_private_key(pem, password=None)
    assert loaded.public_key() == key.public_key()


def _certificate(not_before: dt.datetime, not_after: dt.datetime) -> x509.Certificate:
    key = pki.generate_key()
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "agent-1")])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(not_before).not_valid_after(not_after)
            .sign(key, hashes.SHA256()))


def test_cert_pem_loads_back_to_the_same_certificate() -> None:
    cert = _certificate(NOW, NOW + dt.timedelta(days=1))
    assert x509.load_pem_x509_certificate(pki.cert_pem(cert)) == cert


def test_a_private_file_is_written_whole_for_its_owner_only(tmp_path: Path) -> None:
    target = tmp_path / "certs" / "agent.key"
    pki.write_private(target, b"first")
    assert target.read_bytes() == b"first"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    pki.write_private(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["agent.key"]  # no temporary left


def test_a_stale_readable_temporary_file_does_not_leak_its_mode(tmp_path: Path) -> None:
    stale = tmp_path / ".agent.key.tmp"
    stale.write_bytes(b"left over from a crash")
    stale.chmod(0o644)
    pki.write_private(tmp_path / "agent.key", b"secret")
    assert stat.S_IMODE((tmp_path / "agent.key").stat().st_mode) == 0o600


@pytest.mark.parametrize(("offset", "problem"), [
    (dt.timedelta(seconds=-1), "certificate_not_yet_valid"),
    (dt.timedelta(0), None),                                  # notBefore itself is inside
    (dt.timedelta(days=1), None),                             # notAfter itself is inside
    (dt.timedelta(days=1, microseconds=999_999), None),       # within notAfter's second
    (dt.timedelta(days=1, seconds=1), "certificate_expired"),
])
def test_the_validity_window_includes_both_ends_to_the_second(
        offset: dt.timedelta, problem: str | None) -> None:
    cert = _certificate(NOW, NOW + dt.timedelta(days=1))
    assert pki.validity_problem(cert, NOW + offset) == problem
    # the same reading as the authority's, which refuses or accepts the certificate
    assert authority_pki.validity_problem(cert, NOW + offset) == problem
