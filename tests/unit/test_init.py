"""`switch init`: a working deployment, never an overwrite."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID

from config.check import check_config
from config.load import load_config
from config.model import AdminSettings, EnrollSettings, GatewaySettings, Profile
from config.tls_material import load_server_credentials
from enroll.bootstrap import init_deployment

NOW = dt.datetime.now(dt.UTC)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def _files(directory: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def test_init_writes_a_deployment_that_loads_and_checks_clean(tmp_path: Path) -> None:
    path = init_deployment(tmp_path / "d", now=NOW)
    assert path == tmp_path / "d" / "switch.toml"
    cfg = load_config(path)
    assert check_config(cfg, NOW) == []
    demo = cfg.tenants["demo"]
    assert demo.hostnames == ("demo.switch.test", "localhost")
    assert demo.organisation_cas == (tmp_path / "d/pki/demo-org-ca.pem",)
    assert demo.upstream == "ws://127.0.0.1:8080/"
    assert "default" in cfg.profiles and cfg.tenant_for_hostname("localhost") is demo
    assert cfg.state_dir == tmp_path / "d/state"
    # the listeners and the profile are written out with the model's defaults, for operators to edit
    assert (cfg.gateway, cfg.enroll, cfg.admin) == (GatewaySettings(), EnrollSettings(), AdminSettings())
    assert cfg.profiles["default"] == Profile("default")
    assert (tmp_path / "d/state").stat().st_mode & 0o777 == 0o700


def test_the_server_certificate_names_localhost_loopback_and_tenant_hosts(tmp_path: Path) -> None:
    init_deployment(tmp_path / "d", now=NOW, hostnames=("a.example", "b.example"))
    chain = x509.load_pem_x509_certificates((tmp_path / "d/pki/server.pem").read_bytes())
    assert chain[1] == _cert(tmp_path / "d/pki/dev-root-ca.pem")  # served with its chain
    sans = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"localhost", "a.example", "b.example"}
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    chain[0].verify_directly_issued_by(chain[1])


def test_the_example_agent_certificate_is_issued_by_the_organisation_ca(tmp_path: Path) -> None:
    init_deployment(tmp_path / "d", now=NOW)
    agent = _cert(tmp_path / "d/pki/demo-agent.pem")
    org = _cert(tmp_path / "d/pki/demo-org-ca.pem")
    root = _cert(tmp_path / "d/pki/dev-root-ca.pem")
    agent.verify_directly_issued_by(org)
    assert org.subject != root.subject  # the organisation's PKI is not the server's
    sans = agent.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.RFC822Name) == ["agent1@demo.switch.test"]
    eku = agent.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku


def test_private_keys_are_owner_only(tmp_path: Path) -> None:
    init_deployment(tmp_path / "d", now=NOW)
    keys = sorted(p.name for p in (tmp_path / "d/pki").glob("*.key"))
    assert keys == ["demo-agent.key", "demo-org-ca.key", "dev-root-ca.key", "server.key"]
    assert all((tmp_path / "d/pki" / k).stat().st_mode & 0o777 == 0o600 for k in keys)


def test_init_refuses_to_overwrite_and_touches_nothing(tmp_path: Path) -> None:
    path = init_deployment(tmp_path / "d", now=NOW)
    before = _files(tmp_path / "d")
    with pytest.raises(FileExistsError, match="switch.toml already exists"):
        init_deployment(tmp_path / "d", now=NOW)
    assert _files(tmp_path / "d") == before
    path.unlink()  # even with only the PKI left, nothing is overwritten
    with pytest.raises(FileExistsError, match="pki already exists"):
        init_deployment(tmp_path / "d", now=NOW)
    assert _files(tmp_path / "d") == {p: b for p, b in before.items() if p != path}


def test_init_refuses_a_directory_holding_only_a_config(tmp_path: Path) -> None:
    (tmp_path / "switch.toml").write_text("# mine\n")
    with pytest.raises(FileExistsError):
        init_deployment(tmp_path, now=NOW)
    assert (tmp_path / "switch.toml").read_text() == "# mine\n"
    assert not (tmp_path / "pki").exists()


@pytest.mark.parametrize(("tenant", "hostnames"), [("Demo", ("d.example",)), ("demo", ()),
                                                   ("demo", ("not a host",))])
def test_init_refuses_names_the_config_would_not_load_with(tmp_path: Path, tenant: str,
                                                           hostnames: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        init_deployment(tmp_path / "d", now=NOW, tenant=tenant, hostnames=hostnames)
    assert not (tmp_path / "d").exists()


def test_localhost_is_not_listed_twice(tmp_path: Path) -> None:
    path = init_deployment(tmp_path / "d", now=NOW, tenant="lab", hostnames=("localhost", "lab.test"))
    cfg = load_config(path)
    assert cfg.tenants["lab"].hostnames == ("localhost", "lab.test")


def test_keystore_deployment_loads(tmp_path: Path) -> None:
    path = init_deployment(tmp_path / "d", now=NOW, keystore=True)
    cfg = load_config(path)
    assert cfg.tls.keystore == tmp_path / "d/pki/server.p12" and cfg.tls.cert_file is None
    assert check_config(cfg, NOW) == []
    for secret in ("server.pass", "server.p12"):
        assert (tmp_path / "d/pki" / secret).stat().st_mode & 0o777 == 0o600
    password = (tmp_path / "d/pki/server.pass").read_bytes()
    assert password.endswith(b"\n") and len(password.strip()) >= 24
    p12 = pkcs12.load_pkcs12((tmp_path / "d/pki/server.p12").read_bytes(), password.strip())
    assert p12.key is not None
    chain, _ = load_server_credentials(cfg.tls)
    assert len(chain) == 2 and not (tmp_path / "d/pki/server.pem").exists()
