"""`switch config check`: warnings for risky settings in a config that loads."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import attrs

from config.check import check_config
from config.load import load_config
from config.model import AdminSettings, Listener, SwitchConfig
from tests.pkihelp import NOW, write_ca, write_server

CONFIG = """
state_dir = "state"
[tls]
cert_file = "pki/server.pem"
key_file = "pki/server.key"
[tenants.acme]
hostnames = ["acme.example"]
organisation_cas = ["pki/org.pem"]
upstream = "ws://127.0.0.1:9/"
"""


def _deploy(tmp_path: Path, *, server_days: int = 365, org_key: str = "ec-p256") -> SwitchConfig:
    d = tmp_path / "pki"
    d.mkdir()
    root, root_key, _ = write_ca(d, "root")
    write_server(d, (root, root_key), validity=dt.timedelta(days=server_days))
    write_ca(d, "org", key_type=org_key)
    (tmp_path / "switch.toml").write_text(CONFIG)
    return load_config(tmp_path / "switch.toml")


def test_a_clean_config_has_no_problems(tmp_path: Path) -> None:
    assert check_config(_deploy(tmp_path), NOW) == []


def test_admin_listener_off_loopback_is_a_warning(tmp_path: Path) -> None:
    cfg = attrs.evolve(_deploy(tmp_path), admin=AdminSettings(Listener("0.0.0.0", 9090)))
    [problem] = check_config(cfg, NOW)
    assert (problem.key, problem.severity) == ("admin.listen", "warning")


def test_server_certificate_expiring_within_30_days_is_a_warning(tmp_path: Path) -> None:
    cfg = _deploy(tmp_path, server_days=10)
    problems = check_config(cfg, NOW)
    assert [(p.key, p.severity) for p in problems] == [("tls.cert_file", "warning")]
    assert "expires in" in problems[0].message


def test_an_expired_server_certificate_is_an_error(tmp_path: Path) -> None:
    cfg = _deploy(tmp_path, server_days=10)
    problems = check_config(cfg, NOW + dt.timedelta(days=11))
    assert any(p.severity == "error" and "expired" in p.message for p in problems)


def test_rsa_under_2048_bits_is_a_warning(tmp_path: Path) -> None:
    cfg = _deploy(tmp_path, org_key="rsa-1024")
    [problem] = check_config(cfg, NOW)
    assert problem.key == "tenants.acme.organisation_cas[0]" and "1024-bit RSA" in problem.message


def test_identity_rule_any_and_missing_upstream_are_warnings(tmp_path: Path) -> None:
    d = _deploy(tmp_path)
    (tmp_path / "switch.toml").write_text(
        CONFIG.replace('upstream = "ws://127.0.0.1:9/"', 'identity = { rule = "any" }'))
    cfg = load_config(tmp_path / "switch.toml")
    assert d.tenants["acme"].upstream is not None
    keys = {(p.key, p.severity) for p in check_config(cfg, NOW)}
    assert keys == {("tenants.acme.identity.rule", "warning"), ("tenants.acme.upstream", "warning")}
