"""`switch init`: a working deployment, never an overwrite."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509

from config.check import check_config
from config.load import load_config
from enroll.bootstrap import init_deployment

NOW = dt.datetime.now(dt.UTC)


def test_init_writes_a_deployment_that_loads_and_checks_clean(tmp_path: Path) -> None:
    path = init_deployment(tmp_path / "d", now=NOW)
    cfg = load_config(path)
    assert [p for p in check_config(cfg, NOW) if p.severity == "error"] == []
    demo = cfg.tenants["demo"]
    assert "localhost" in demo.hostnames and "demo.switch.test" in demo.hostnames
    assert "default" in cfg.profiles and cfg.tenant_for_hostname("localhost") is demo
    server = x509.load_pem_x509_certificates((tmp_path / "d/pki/server.pem").read_bytes())[0]
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "demo.switch.test"} <= set(sans.get_values_for_type(x509.DNSName))
    assert (tmp_path / "d/state").stat().st_mode & 0o777 == 0o700


def test_private_keys_are_owner_only(tmp_path: Path) -> None:
    init_deployment(tmp_path / "d", now=NOW)
    keys = list((tmp_path / "d/pki").glob("*.key"))
    assert len(keys) == 4
    assert all(k.stat().st_mode & 0o777 == 0o600 for k in keys)


def test_init_refuses_to_overwrite_and_touches_nothing(tmp_path: Path) -> None:
    path = init_deployment(tmp_path / "d", now=NOW)
    before = {p: p.read_bytes() for p in (tmp_path / "d").rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError):
        init_deployment(tmp_path / "d", now=NOW)
    path.unlink()  # even with only the PKI left, nothing is overwritten
    with pytest.raises(FileExistsError):
        init_deployment(tmp_path / "d", now=NOW)
    after = {p: p.read_bytes() for p in (tmp_path / "d").rglob("*") if p.is_file()}
    assert after == {p: b for p, b in before.items() if p != path}


def test_keystore_deployment_loads(tmp_path: Path) -> None:
    path = init_deployment(tmp_path / "d", now=NOW, keystore=True)
    cfg = load_config(path)
    assert cfg.tls.keystore is not None and cfg.tls.cert_file is None
    assert (tmp_path / "d/pki/server.pass").stat().st_mode & 0o777 == 0o600
