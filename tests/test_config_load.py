"""Loading switch.toml: every error reported at once, with its file and key."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from config.errors import ConfigError, Problem
from config.load import load_config
from enroll import pki
from tests.pkihelp import NOW, write_ca, write_server


@pytest.fixture
def pkidir(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    d.mkdir()
    root, root_key, _ = write_ca(d, "root")
    write_server(d, (root, root_key))
    write_ca(d, "org")
    leaf_key = pki.generate_key()
    leaf = pki.make_leaf(pki.name("not a ca"), leaf_key.public_key(), (root, root_key), now=NOW,
                         validity=dt.timedelta(days=30))
    (d / "leaf.pem").write_bytes(pki.cert_pem(leaf))
    return d


GOOD = """
state_dir = "state"
default_tenant = "acme"
[tls]
cert_file = "pki/server.pem"
key_file = "pki/server.key"
[gateway]
listen = "127.0.0.1:4000"
handshake_timeout = "5s"
max_message_size = "512KiB"
[enroll]
listen = "[::1]:9443"
[profiles.kiosk]
validity = "1d"
renew_before = "6h"
key_types = ["ec-p256"]
approval = "manual"
[tenants.acme]
hostnames = ["acme.example", "Agents.Acme.Example."]
organisation_cas = ["pki/org.pem"]
upstream = "wss://backend.acme.example/agents"
profile = "kiosk"
identity = { rule = "email-san", allow = ["*@acme.example"] }
"""


def _load(tmp_path: Path, text: str) -> list[Problem]:
    path = tmp_path / "switch.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def test_a_good_config_loads_into_the_model(tmp_path: Path, pkidir: Path) -> None:
    (tmp_path / "switch.toml").write_text(GOOD)
    cfg = load_config(tmp_path / "switch.toml")
    assert cfg.state_dir == tmp_path / "state"
    assert cfg.gateway.listen.host == "127.0.0.1" and cfg.gateway.handshake_timeout_s == 5
    assert cfg.gateway.max_message_bytes == 512 * 1024
    assert (cfg.enroll.listen.host, cfg.enroll.listen.port) == ("::1", 9443)
    assert cfg.admin.listen.port == 9090
    assert cfg.profiles["kiosk"].approval == "manual" and cfg.profiles["kiosk"].validity_s == 86400
    assert "default" in cfg.profiles
    acme = cfg.tenants["acme"]
    assert acme.hostnames == ("acme.example", "agents.acme.example")
    assert acme.organisation_cas == (tmp_path / "pki" / "org.pem",)
    assert acme.identity.allow == ("*@acme.example",)
    assert cfg.tenant_for_hostname("AGENTS.acme.example") is acme
    assert cfg.tenant_for_hostname("unknown.example") is acme  # default_tenant


def test_every_error_is_reported_at_once_with_file_and_key(tmp_path: Path, pkidir: Path) -> None:
    problems = _load(tmp_path, """
state_dir = "state"
colour = "blue"
[tls]
cert_file = "pki/server.pem"
key_file = "pki/server.key"
[gateway]
listen = "0.0.0.0:99999"
handshake_timeout = "ten seconds"
max_connections = "many"
[profiles.default]
renew_before = "60d"
key_types = ["ec-p256", "dsa-1024"]
approval = "sometimes"
[tenants.acme]
hostnames = ["acme.example"]
organisation_cas = ["pki/leaf.pem", "pki/missing.pem"]
upstream = "http://backend"
profile = "nosuch"
[tenants.Bad_Name]
hostnames = ["ACME.example"]
""")
    keys = {p.key for p in problems}
    assert {
        "colour", "gateway.listen", "gateway.handshake_timeout", "gateway.max_connections",
        "profiles.default.renew_before", "profiles.default.key_types[1]",
        "profiles.default.approval", "tenants.acme.organisation_cas[0]",
        "tenants.acme.organisation_cas[1]", "tenants.acme.upstream", "tenants.acme.profile",
        "tenants.Bad_Name", "tenants.Bad_Name.hostnames[0]",
    } <= keys, keys
    assert all(p.file == tmp_path / "switch.toml" for p in problems)
    messages = " | ".join(str(p) for p in problems)
    assert "not a CA certificate" in messages and "missing.pem" in messages
    assert "also claimed by tenant 'acme'" in messages


def test_unknown_keys_are_reported_in_nested_tables(tmp_path: Path, pkidir: Path) -> None:
    problems = _load(tmp_path, GOOD.replace('profile = "kiosk"', 'profile = "kiosk"\nprofiel = 1')
                     .replace('[enroll]', '[enroll]\nlisten_port = 9443')
                     .replace('allow = ["*@acme.example"]', 'allow = ["*@acme.example"], rul = "x"'))
    assert {p.key for p in problems} == {"tenants.acme.profiel", "enroll.listen_port",
                                         "tenants.acme.identity.rul"}


def test_wrong_types_name_what_was_expected(tmp_path: Path, pkidir: Path) -> None:
    problems = _load(tmp_path, GOOD.replace('hostnames = ["acme.example", "Agents.Acme.Example."]',
                                            'hostnames = "acme.example"')
                     .replace('state_dir = "state"', "state_dir = 7"))
    found = {p.key: p.message for p in problems}
    assert "expected a list of strings, got a string" in found["tenants.acme.hostnames"]
    assert "expected a string, got an integer" in found["state_dir"]


def test_toml_syntax_errors_give_the_line(tmp_path: Path) -> None:
    problems = _load(tmp_path, 'state_dir = "state"\n[tls\n')
    assert len(problems) == 1 and "line 2" in problems[0].message


def test_a_hostname_claimed_in_a_tenant_file_names_both_tenants(tmp_path: Path, pkidir: Path) -> None:
    tdir = tmp_path / "tenants.d"
    tdir.mkdir()
    (tdir / "beta.toml").write_text('hostnames = ["acme.example"]\nbogus = true\n')
    (tdir / "gamma.toml").write_text('hostnames = ["gamma.example"]\n')
    problems = _load(tmp_path, GOOD.replace('default_tenant = "acme"',
                                            'default_tenant = "acme"\ntenants_dir = "tenants.d"'))
    beta = [p for p in problems if p.file == tdir / "beta.toml"]
    assert {p.key for p in beta} == {"hostnames[0]", "bogus"}
    assert any("tenant 'acme'" in p.message for p in beta)


def test_tenants_from_a_directory_are_loaded(tmp_path: Path, pkidir: Path) -> None:
    tdir = tmp_path / "tenants.d"
    tdir.mkdir()
    (tdir / "gamma.toml").write_text('hostnames = ["gamma.example"]\nupstream = "ws://127.0.0.1:1/"\n')
    (tmp_path / "switch.toml").write_text(GOOD.replace('default_tenant = "acme"',
                                                       'tenants_dir = "tenants.d"'))
    cfg = load_config(tmp_path / "switch.toml")
    assert cfg.tenants["gamma"].source == tdir / "gamma.toml"
    assert cfg.tenant_for_hostname("gamma.example") is cfg.tenants["gamma"]
    assert cfg.tenant_for_hostname("nobody.example") is None  # no default: refuse


def test_a_tenant_in_both_places_is_an_error(tmp_path: Path, pkidir: Path) -> None:
    tdir = tmp_path / "tenants.d"
    tdir.mkdir()
    (tdir / "acme.toml").write_text('hostnames = ["other.example"]\n')
    problems = _load(tmp_path, GOOD.replace('default_tenant = "acme"', 'tenants_dir = "tenants.d"'))
    assert any(p.file == tdir / "acme.toml" and "also defined" in p.message for p in problems)


def test_tls_needs_exactly_one_form(tmp_path: Path, pkidir: Path) -> None:
    both = GOOD.replace('key_file = "pki/server.key"',
                        'key_file = "pki/server.key"\nkeystore = "pki/x.p12"\nkeystore_password_file = "p"')
    assert any(p.key.startswith("tls") and "not both" in p.message for p in _load(tmp_path, both))
    neither = GOOD.replace('cert_file = "pki/server.pem"\nkey_file = "pki/server.key"\n', "")
    assert any(p.key.startswith("tls") for p in _load(tmp_path, neither))


def test_a_key_that_does_not_match_the_certificate_is_refused(tmp_path: Path, pkidir: Path) -> None:
    pki.write_private(pkidir / "server.key", pki.key_pem(pki.generate_key()))
    problems = _load(tmp_path, GOOD)
    assert any(p.key == "tls.cert_file" and "does not match" in p.message for p in problems)


def _keystore(pkidir: Path, password: bytes, with_key: bool = True) -> None:
    cert = pki.x509.load_pem_x509_certificates((pkidir / "server.pem").read_bytes())[0]
    key = serialization.load_pem_private_key((pkidir / "server.key").read_bytes(), None)
    data = pkcs12.serialize_key_and_certificates(
        b"server", key if with_key else None, cert if with_key else None,  # type: ignore[arg-type]
        None if with_key else [cert],  # type: ignore[arg-type]
        serialization.BestAvailableEncryption(password))
    (pkidir / "server.p12").write_bytes(data)


KEYSTORE = GOOD.replace('cert_file = "pki/server.pem"\nkey_file = "pki/server.key"',
                        'keystore = "pki/server.p12"\nkeystore_password_file = "pki/pass"')


def test_keystore_with_its_password_loads(tmp_path: Path, pkidir: Path) -> None:
    _keystore(pkidir, b"s3cret")
    (pkidir / "pass").write_text("s3cret\n")
    (tmp_path / "switch.toml").write_text(KEYSTORE)
    assert load_config(tmp_path / "switch.toml").tls.keystore == pkidir / "server.p12"


def test_keystore_with_a_wrong_password_is_a_clear_error(tmp_path: Path, pkidir: Path) -> None:
    _keystore(pkidir, b"s3cret")
    (pkidir / "pass").write_text("wrong\n")
    problems = _load(tmp_path, KEYSTORE)
    assert any(p.key == "tls.keystore" and "password" in p.message for p in problems)


def test_keystore_without_a_private_key_is_a_clear_error(tmp_path: Path, pkidir: Path) -> None:
    _keystore(pkidir, b"s3cret", with_key=False)
    (pkidir / "pass").write_text("s3cret")
    problems = _load(tmp_path, KEYSTORE)
    assert any(p.key == "tls.keystore" and "no private key" in p.message for p in problems)


def test_unreadable_crl_and_bad_identity_rule(tmp_path: Path, pkidir: Path) -> None:
    (pkidir / "bad.crl").write_text("not a crl")
    problems = _load(tmp_path, GOOD.replace('upstream =', 'organisation_crls = ["pki/bad.crl"]\nupstream =')
                     .replace('rule = "email-san"', 'rule = "telepathy"'))
    keys = {p.key for p in problems}
    assert {"tenants.acme.organisation_crls[0]", "tenants.acme.identity.rule"} <= keys


def test_unknown_default_tenant(tmp_path: Path, pkidir: Path) -> None:
    problems = _load(tmp_path, GOOD.replace('default_tenant = "acme"', 'default_tenant = "zeta"'))
    assert [p.key for p in problems] == ["default_tenant"]
