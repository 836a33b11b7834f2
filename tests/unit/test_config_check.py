"""`switch config check`: warnings for risky settings in a config that loads."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import attrs
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from config.check import ProfileUse, check_config, missing_profiles
from config.errors import ConfigError, Problem, format_problems
from config.load import load_config
from config.model import AdminSettings, Listener, SwitchConfig
from tests.support.pki import NOW, write_ca, write_server

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


def _deploy(tmp_path: Path, *, server_days: int = 365, org_key: str = "ec-p256",
            org_days: int = 3650, server_key: str = "ec-p256",
            server_names: tuple[str, ...] = ("localhost", "*.example"),
            config: str = CONFIG) -> SwitchConfig:
    d = tmp_path / "pki"
    d.mkdir(exist_ok=True)
    root, root_key, _ = write_ca(d, "root")
    write_server(d, (root, root_key), validity=dt.timedelta(days=server_days),
                 dns_names=server_names, key_type=server_key)
    write_ca(d, "org", key_type=org_key, validity=dt.timedelta(days=org_days))
    (tmp_path / "switch.toml").write_text(config)
    return load_config(tmp_path / "switch.toml")


def _where(problems: list[Problem]) -> set[tuple[str, str]]:
    return {(p.key, p.severity) for p in problems}


def test_a_clean_config_has_no_problems(tmp_path: Path) -> None:
    assert check_config(_deploy(tmp_path), NOW) == []


def test_admin_listener_off_loopback_is_a_warning(tmp_path: Path) -> None:
    cfg = attrs.evolve(_deploy(tmp_path), admin=AdminSettings(Listener("0.0.0.0", 9090)))
    [problem] = check_config(cfg, NOW)
    assert (problem.key, problem.severity) == ("admin.listen", "warning")
    assert "keep it on loopback" in problem.message


def test_a_disabled_admin_listener_off_loopback_is_fine(tmp_path: Path) -> None:
    cfg = attrs.evolve(_deploy(tmp_path), admin=AdminSettings(Listener("0.0.0.0", 9090, False)))
    assert check_config(cfg, NOW) == []


def test_server_certificate_expiring_within_30_days_is_a_warning(tmp_path: Path) -> None:
    cfg = _deploy(tmp_path, server_days=10)
    problems = check_config(cfg, NOW)
    assert [(p.key, p.severity) for p in problems] == [("tls.cert_file", "warning")]
    assert "expires in 10 day(s)" in problems[0].message


def test_an_expired_server_certificate_is_an_error(tmp_path: Path) -> None:
    cfg = _deploy(tmp_path, server_days=10)
    problems = check_config(cfg, NOW + dt.timedelta(days=11))
    assert _where(problems) == {("tls.cert_file", "error")}
    assert "expired on" in problems[0].message


def test_an_expiring_keystore_certificate_is_reported_at_the_keystore(tmp_path: Path) -> None:
    from enroll.bootstrap import init_deployment

    path = init_deployment(tmp_path / "d", now=NOW - dt.timedelta(days=380), keystore=True)
    problems = check_config(load_config(path), NOW)
    assert _where(problems) == {("tls.keystore", "warning")}


def test_an_organisation_ca_expiring_or_expired_is_reported(tmp_path: Path) -> None:
    cfg = _deploy(tmp_path, org_days=20)
    assert _where(check_config(cfg, NOW)) == {("tenants.acme.organisation_cas[0]", "warning")}
    assert _where(check_config(cfg, NOW + dt.timedelta(days=21))) == {
        ("tenants.acme.organisation_cas[0]", "error")}


def test_rsa_under_2048_bits_is_a_warning(tmp_path: Path) -> None:
    cfg = _deploy(tmp_path, org_key="rsa-1024")
    [problem] = check_config(cfg, NOW)
    assert problem.key == "tenants.acme.organisation_cas[0]" and "1024-bit RSA" in problem.message
    assert problem.severity == "warning"


def test_a_server_key_openssl_refuses_is_an_error(tmp_path: Path) -> None:
    # OpenSSL's default security level (2) refuses RSA under 2048 bits: serve could not start.
    with pytest.raises(ConfigError) as info:
        _deploy(tmp_path, server_key="rsa-1024")
    [problem] = info.value.problems
    assert (problem.key, problem.severity) == ("tls.cert_file", "error")
    assert "OpenSSL refuses to serve with this certificate and key (ee key too small)" in problem.message


def test_identity_rule_any_and_missing_upstream_are_warnings(tmp_path: Path) -> None:
    cfg = _deploy(tmp_path, config=CONFIG.replace('upstream = "ws://127.0.0.1:9/"',
                                                  'identity = { rule = "any" }'))
    assert _where(check_config(cfg, NOW)) == {("tenants.acme.identity.rule", "warning"),
                                              ("tenants.acme.upstream", "warning")}


def test_a_tenant_without_organisation_cas_is_a_warning(tmp_path: Path) -> None:
    cfg = _deploy(tmp_path, config=CONFIG.replace('organisation_cas = ["pki/org.pem"]\n', ""))
    [problem] = check_config(cfg, NOW)
    assert (problem.key, problem.severity) == ("tenants.acme.organisation_cas", "warning")
    assert "only provisioned certificates can connect" in problem.message


def test_a_gateway_without_tenants_is_a_warning(tmp_path: Path) -> None:
    cfg = _deploy(tmp_path, config=CONFIG.split("[tenants.acme]")[0])
    assert _where(check_config(cfg, NOW)) == {("tenants", "warning")}


def test_a_tenant_hostname_the_server_certificate_does_not_name_is_a_warning(tmp_path: Path) -> None:
    cfg = _deploy(tmp_path, server_names=("localhost", "*.other.example"))
    [problem] = check_config(cfg, NOW)
    assert (problem.key, problem.severity) == ("tenants.acme.hostnames[0]", "warning")
    assert "'acme.example'" in problem.message


def test_secret_files_and_state_dir_open_to_others_are_warnings(tmp_path: Path) -> None:
    cfg = _deploy(tmp_path)
    (tmp_path / "pki" / "server.key").chmod(0o644)
    (tmp_path / "state").mkdir(mode=0o755)
    (tmp_path / "state").chmod(0o755)
    assert _where(check_config(cfg, NOW)) == {("tls.key_file", "warning"), ("state_dir", "warning")}


def test_a_stale_crl_is_a_warning(tmp_path: Path) -> None:
    _deploy(tmp_path)
    org_cert = x509.load_pem_x509_certificate((tmp_path / "pki/org.pem").read_bytes())
    org_key = serialization.load_pem_private_key((tmp_path / "pki/org.key").read_bytes(), None)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(org_cert.subject)
           .last_update(NOW - dt.timedelta(days=10)).next_update(NOW - dt.timedelta(days=3))
           .sign(org_key, hashes.SHA256()))  # type: ignore[arg-type]
    (tmp_path / "pki/org.crl").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "switch.toml").write_text(CONFIG.replace(
        'upstream =', 'organisation_crls = ["pki/org.crl"]\nupstream ='))
    cfg = load_config(tmp_path / "switch.toml")
    [problem] = check_config(cfg, NOW)
    assert (problem.key, problem.severity) == ("tenants.acme.organisation_crls[0]", "warning")
    assert "stale" in problem.message


def test_problems_in_a_tenant_file_name_that_file(tmp_path: Path) -> None:
    tdir = tmp_path / "tenants.d"
    tdir.mkdir()
    (tdir / "beta.toml").write_text('hostnames = ["beta.example"]\nidentity = { rule = "any" }\n'
                                    'organisation_cas = ["../pki/org.pem"]\nupstream = "ws://b/"\n')
    cfg = _deploy(tmp_path, config='tenants_dir = "tenants.d"\n' + CONFIG)
    [problem] = check_config(cfg, NOW)
    assert (problem.file, problem.key) == (tdir / "beta.toml", "identity.rule")


def test_problems_format_as_file_key_severity_message(tmp_path: Path) -> None:
    problems = [
        Problem(tmp_path / "switch.toml", "tenants.demo.hostnames[0]", "bad name"),
        Problem(tmp_path / "tenants.d" / "b.toml", "", "not valid TOML", "warning"),
        Problem(Path("/elsewhere/x.toml"), "tls", "m"),
    ]
    assert format_problems(problems, tmp_path).splitlines() == [
        "switch.toml: tenants.demo.hostnames[0]: error: bad name",
        "tenants.d/b.toml: warning: not valid TOML",
        "/elsewhere/x.toml: tls: error: m",
    ]
    assert str(problems[0]) == f"{tmp_path}/switch.toml: tenants.demo.hostnames[0]: error: bad name"


def test_store_secrets_readable_by_others_and_a_short_passphrase_are_warnings(
        tmp_path: Path) -> None:
    (tmp_path / "pg.pass").write_text("pw\n")
    (tmp_path / "kek.pass").write_text("short\n")
    (tmp_path / "pg.pass").chmod(0o644)
    (tmp_path / "kek.pass").chmod(0o600)
    cfg = _deploy(tmp_path, config=CONFIG + """
[store]
url = "postgresql://switch@db.example/switch"
password_file = "pg.pass"
issuer_key_passphrase_file = "kek.pass"
""")
    problems = {p.key: p for p in check_config(cfg, NOW)}
    assert problems["store.password_file"].severity == "warning"
    assert "chmod 600" in problems["store.password_file"].message
    assert "5 characters" in problems["store.issuer_key_passphrase_file"].message
    (tmp_path / "kek.pass").write_text("x" * 16 + "\n")
    (tmp_path / "pg.pass").chmod(0o600)
    assert check_config(cfg, NOW) == []


def test_a_passphrase_with_sqlite_is_reported_unused(tmp_path: Path) -> None:
    (tmp_path / "kek.pass").write_text("x" * 20 + "\n")
    (tmp_path / "kek.pass").chmod(0o600)
    cfg = _deploy(tmp_path, config=CONFIG + '[store]\nissuer_key_passphrase_file = "kek.pass"\n')
    [problem] = check_config(cfg, NOW)
    assert (problem.key, problem.severity) == ("store.issuer_key_passphrase_file", "warning")
    assert "unused" in problem.message


def test_the_default_subject_rule_has_no_at_sign_and_is_not_flagged(tmp_path: Path) -> None:
    cfg = _deploy(tmp_path)
    assert "@" not in cfg.profiles["default"].subject_pattern
    assert not [p for p in check_config(cfg, NOW) if p.key.startswith("profiles.")]


@pytest.mark.parametrize("pattern", [r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}", r".+", r"\S{1,64}",
                                     r"[^/]+"])
def test_a_subject_rule_that_lets_a_cn_hold_an_at_sign_is_a_warning(tmp_path: Path,
                                                                   pattern: str) -> None:
    config = CONFIG + f'[profiles.laptops]\nsubject_pattern = "{pattern}"\n'.replace("\\", "\\\\")
    problems = check_config(_deploy(tmp_path, config=config), NOW)
    [problem] = [p for p in problems if p.key.startswith("profiles.")]
    assert (problem.key, problem.severity) == ("profiles.laptops.subject_pattern", "warning")
    assert "organisation identity" in problem.message and "X-Switch-Trust" in problem.message


def test_a_live_key_naming_a_profile_the_config_lacks_is_an_error_naming_both(
        tmp_path: Path) -> None:
    cfg = _deploy(tmp_path, config=CONFIG + "[profiles.kiosk]\nvalidity = \"1d\"\nrenew_before = \"1h\"\n")
    uses = [ProfileUse("acme", "Kiosks", "pk_1", "kiosk"), ProfileUse("acme", "Old", "pk_2", "gone")]
    [problem] = missing_profiles(cfg, uses)
    assert (problem.key, problem.severity) == ("profiles.gone", "error")
    assert "'Old' (pk_2) of tenant acme" in problem.message and "'gone'" in problem.message
    assert "switch keys revoke acme 'Old'" in problem.message
    assert missing_profiles(cfg, uses[:1]) == []

@pytest.mark.parametrize("ciphers", ["AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA",
                                     "ECDHE+AESGCM:AES256-SHA"])
def test_tls_ciphers_without_forward_secrecy_or_aead_are_a_warning(tmp_path: Path,
                                                                    ciphers: str) -> None:
    config = CONFIG.replace('[tls]\n', f'[tls]\nciphers = "{ciphers}"\n')
    [problem] = check_config(_deploy(tmp_path, config=config), NOW)
    assert (problem.key, problem.severity) == ("tls.ciphers", "warning")
    assert "without forward secrecy or without AEAD" in problem.message


def test_tls_ciphers_of_forward_secret_aead_suites_only_are_fine(tmp_path: Path) -> None:
    config = CONFIG.replace('[tls]\n', '[tls]\nciphers = "ECDHE+AESGCM:ECDHE+CHACHA20"\n')
    cfg = _deploy(tmp_path, config=config)
    assert cfg.tls.ciphers == "ECDHE+AESGCM:ECDHE+CHACHA20"
    assert check_config(cfg, NOW) == []


@pytest.mark.parametrize("ciphers", ["NO-SUCH-SUITE", "TLS_AES_128_GCM_SHA256", ""])
def test_tls_ciphers_that_select_no_tls12_suite_do_not_load(tmp_path: Path, ciphers: str) -> None:
    config = CONFIG.replace('[tls]\n', f'[tls]\nciphers = "{ciphers}"\n')
    with pytest.raises(ConfigError) as caught:
        _deploy(tmp_path, config=config)
    assert [p.key for p in caught.value.problems] == ["tls.ciphers"]


def test_listener_limits_that_cannot_protect_other_sources_are_warnings(tmp_path: Path) -> None:
    config = CONFIG + """
[gateway]
max_connections = 100
max_handshakes_per_source = 100
[enroll]
request_timeout = "4s"
first_byte_timeout = "4s"
"""
    problems = check_config(_deploy(tmp_path, config=config), NOW)
    assert _where(problems) == {("gateway.max_handshakes_per_source", "warning"),
                                ("enroll.first_byte_timeout", "warning")}


def test_listener_limits_load_with_their_defaults_and_refuse_nonsense(tmp_path: Path) -> None:
    cfg = _deploy(tmp_path)
    assert (cfg.gateway.max_handshakes_per_source, cfg.gateway.first_byte_timeout_s) == (500, 5.0)
    assert (cfg.enroll.max_handshakes_per_source, cfg.enroll.first_byte_timeout_s) == (50, 5.0)
    config = CONFIG + """
[gateway]
max_handshakes_per_source = 0
first_byte_timeout = "0s"
[enroll]
max_handshakes_per_source = 25
first_byte_timeout = "1s"
"""
    with pytest.raises(ConfigError) as caught:
        _deploy(tmp_path, config=config)
    assert sorted(p.key for p in caught.value.problems) == [
        "gateway.first_byte_timeout", "gateway.max_handshakes_per_source"]
    cfg = _deploy(tmp_path, config=config.replace("max_handshakes_per_source = 0\n", "")
                  .replace('first_byte_timeout = "0s"\n', ""))
    assert (cfg.enroll.max_handshakes_per_source, cfg.enroll.first_byte_timeout_s) == (25, 1.0)
