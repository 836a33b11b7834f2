"""Loading switch.toml: every error reported at once, with its file and key."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from config.errors import ConfigError, Problem, format_problems
from config.load import load_config
from enroll import pki
from tests.support.pki import NOW, write_ca, write_server


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
idle_timeout = "1h30m"
max_message_size = "512KiB"
[enroll]
listen = "[::1]:9443"
max_body_size = 4096
[admin]
enabled = false
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


def _by_key(problems: list[Problem]) -> dict[str, str]:
    return {p.key: p.message for p in problems}


def test_a_good_config_loads_into_the_model(tmp_path: Path, pkidir: Path) -> None:
    (tmp_path / "switch.toml").write_text(GOOD)
    cfg = load_config(tmp_path / "switch.toml")
    assert cfg.state_dir == tmp_path / "state"
    assert cfg.gateway.listen.host == "127.0.0.1" and cfg.gateway.handshake_timeout_s == 5
    assert cfg.gateway.idle_timeout_s == 5400
    assert cfg.gateway.max_message_bytes == 512 * 1024
    assert (cfg.enroll.listen.host, cfg.enroll.listen.port) == ("::1", 9443)
    assert cfg.enroll.max_body_bytes == 4096
    assert cfg.admin.listen.port == 9090 and not cfg.admin.listen.enabled
    assert cfg.profiles["kiosk"].approval == "manual" and cfg.profiles["kiosk"].validity_s == 86400
    assert cfg.profiles["default"].validity_s == 30 * 86400  # exists with defaults when unwritten
    assert not cfg.profiles["kiosk"].unique_subject
    acme = cfg.tenants["acme"]
    assert acme.hostnames == ("acme.example", "agents.acme.example")
    assert acme.organisation_cas == (tmp_path / "pki" / "org.pem",)
    assert acme.identity.allow == ("*@acme.example",)
    assert acme.source == tmp_path / "switch.toml"
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
max_message_size = "huge"
[profiles.default]
renew_before = "60d"
key_types = ["ec-p256", "dsa-1024"]
approval = "sometimes"
subject_pattern = "[unclosed"
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
        "gateway.max_message_size", "profiles.default.renew_before",
        "profiles.default.key_types[1]", "profiles.default.approval",
        "profiles.default.subject_pattern", "tenants.acme.organisation_cas[0]",
        "tenants.acme.organisation_cas[1]", "tenants.acme.upstream", "tenants.acme.profile",
        "tenants.Bad_Name", "tenants.Bad_Name.hostnames[0]",
    } == keys, keys
    assert all(p.file == tmp_path / "switch.toml" and p.severity == "error" for p in problems)
    messages = format_problems(problems)
    assert "not a CA certificate" in messages and "missing.pem" in messages
    assert "claimed by two tenants: 'Bad_Name' and 'acme'" in messages
    assert "unknown key" in _by_key(problems)["colour"]
    assert "65535" in _by_key(problems)["gateway.listen"]


def test_unknown_keys_are_reported_in_nested_tables(tmp_path: Path, pkidir: Path) -> None:
    problems = _load(tmp_path, GOOD.replace('profile = "kiosk"', 'profile = "kiosk"\nprofiel = 1')
                     .replace('[enroll]', '[enroll]\nlisten_port = 9443')
                     .replace('allow = ["*@acme.example"]', 'allow = ["*@acme.example"], rul = "x"')
                     .replace('approval = "manual"', 'approval = "manual"\nvaldity = "2d"')
                     + '[metrics]\npath = "/m"\n')
    assert {p.key for p in problems} == {"tenants.acme.profiel", "enroll.listen_port",
                                         "tenants.acme.identity.rul", "profiles.kiosk.valdity",
                                         "metrics"}
    assert all(p.message == "unknown key" for p in problems)


def test_wrong_types_name_what_was_expected(tmp_path: Path, pkidir: Path) -> None:
    problems = _load(tmp_path, GOOD.replace('hostnames = ["acme.example", "Agents.Acme.Example."]',
                                            'hostnames = "acme.example"')
                     .replace('state_dir = "state"', "state_dir = 7")
                     .replace('[admin]\nenabled = false', '[admin]\nenabled = "no"')
                     .replace('organisation_cas = ["pki/org.pem"]', 'organisation_cas = ["pki/org.pem", 3]')
                     .replace('identity = {', 'identity = "email-san"\nx = {'))
    found = _by_key(problems)
    assert "expected a list of strings, got a string" in found["tenants.acme.hostnames"]
    assert "expected a string, got an integer" in found["state_dir"]
    assert "expected true or false, got a string" in found["admin.enabled"]
    assert "expected a string, got an integer" in found["tenants.acme.organisation_cas[1]"]
    assert "expected a table" in found["tenants.acme.identity"]


def test_missing_required_keys_are_named(tmp_path: Path) -> None:
    problems = _load(tmp_path, '[tenants.acme]\nupstream = "ws://x/"\n')
    assert {(p.key, p.message) for p in problems} == {
        ("state_dir", "is required"), ("tls", "is required"),
        ("tenants.acme.hostnames", "is required"),
    }


def test_an_empty_path_or_hostname_list_is_an_error(tmp_path: Path, pkidir: Path) -> None:
    problems = _load(tmp_path, GOOD.replace('state_dir = "state"', 'state_dir = ""')
                     .replace('hostnames = ["acme.example", "Agents.Acme.Example."]', "hostnames = []")
                     .replace('key_types = ["ec-p256"]', "key_types = []"))
    assert {p.key for p in problems} == {"state_dir", "tenants.acme.hostnames",
                                         "profiles.kiosk.key_types"}


@pytest.mark.parametrize(("listen", "ok"), [
    ("0.0.0.0:4000", True), ("[::1]:4000", True), ("localhost:0", True), ("host:65535", True),
    ("0.0.0.0:65536", False), ("4000", False), ("::1:4000", False), (":4000", False),
    ("[::1]", False), ("host:port", False), ("a b:1", False),
])
def test_listen_addresses_are_host_colon_port(tmp_path: Path, pkidir: Path, listen: str,
                                               ok: bool) -> None:
    text = GOOD.replace('listen = "127.0.0.1:4000"', f'listen = "{listen}"')
    (tmp_path / "switch.toml").write_text(text)
    if ok:
        load_config(tmp_path / "switch.toml")
    else:
        assert [p.key for p in _load(tmp_path, text)] == ["gateway.listen"]


def test_bad_durations_and_sizes_name_their_key(tmp_path: Path, pkidir: Path) -> None:
    problems = _load(tmp_path, GOOD.replace('handshake_timeout = "5s"', 'handshake_timeout = "5 sec"')
                     .replace('idle_timeout = "1h30m"', 'idle_timeout = -3')
                     .replace('max_body_size = 4096', 'max_body_size = "4 pages"')
                     .replace('validity = "1d"', 'validity = "1y"')
                     .replace('default_tenant = "acme"', 'issuer_validity = "1h"'))
    found = _by_key(problems)
    assert set(found) == {"gateway.handshake_timeout", "gateway.idle_timeout",
                          "enroll.max_body_size", "profiles.kiosk.validity", "issuer_validity"}
    assert "bad duration '5 sec'" in found["gateway.handshake_timeout"]
    assert "negative" in found["gateway.idle_timeout"]
    assert "bad size" in found["enroll.max_body_size"]


def test_toml_syntax_errors_give_the_file_and_line(tmp_path: Path) -> None:
    problems = _load(tmp_path, 'state_dir = "state"\n[tls\n')
    assert len(problems) == 1 and "line 2" in problems[0].message
    assert problems[0].file == tmp_path / "switch.toml"


def test_a_hostname_claimed_in_a_tenant_file_names_both_tenants(tmp_path: Path, pkidir: Path) -> None:
    tdir = tmp_path / "tenants.d"
    tdir.mkdir()
    (tdir / "beta.toml").write_text('hostnames = ["ACME.example"]\nbogus = true\n')
    (tdir / "gamma.toml").write_text('hostnames = ["gamma.example"]\n')
    problems = _load(tmp_path, GOOD.replace('default_tenant = "acme"',
                                            'default_tenant = "acme"\ntenants_dir = "tenants.d"'))
    assert all(p.file == tdir / "beta.toml" for p in problems)
    found = _by_key(problems)
    assert set(found) == {"hostnames[0]", "bogus"}
    claim = found["hostnames[0]"]
    assert "'beta'" in claim and "'acme'" in claim
    assert f"{tmp_path / 'switch.toml'}: tenants.acme.hostnames[0]" in claim


def test_a_hostname_listed_twice_in_one_tenant_is_an_error(tmp_path: Path, pkidir: Path) -> None:
    problems = _load(tmp_path, GOOD.replace('"Agents.Acme.Example."', '"acme.example."'))
    assert [(p.key, p.message) for p in problems] == [
        ("tenants.acme.hostnames[1]", "'acme.example' is listed twice (also hostnames[0])")]


def test_tenants_from_a_directory_load_with_paths_relative_to_their_file(
        tmp_path: Path, pkidir: Path) -> None:
    tdir = tmp_path / "tenants.d"
    tdir.mkdir()
    (tdir / "gamma.toml").write_text('hostnames = ["gamma.example"]\nupstream = "ws://127.0.0.1:1/"\n'
                                     'organisation_cas = ["../pki/org.pem"]\n')
    (tdir / "README").write_text("not a tenant")
    (tmp_path / "switch.toml").write_text(GOOD.replace('default_tenant = "acme"',
                                                       'tenants_dir = "tenants.d"'))
    cfg = load_config(tmp_path / "switch.toml")
    assert set(cfg.tenants) == {"acme", "gamma"}
    gamma = cfg.tenants["gamma"]
    assert gamma.source == tdir / "gamma.toml"
    assert gamma.organisation_cas == (pkidir / "org.pem",)
    assert cfg.tenant_for_hostname("gamma.example") is gamma
    assert cfg.tenant_for_hostname("nobody.example") is None  # no default: refuse


def test_errors_in_tenant_files_carry_that_file(tmp_path: Path, pkidir: Path) -> None:
    tdir = tmp_path / "tenants.d"
    tdir.mkdir()
    (tdir / "Bad_Name.toml").write_text('hostnames = ["bad.example"]\n')
    (tdir / "broken.toml").write_text('hostnames = ["x.example"\n')
    (tdir / "nocas.toml").write_text('hostnames = ["n.example"]\norganisation_cas = ["nope.pem"]\n')
    problems = _load(tmp_path, GOOD.replace('default_tenant = "acme"', 'tenants_dir = "tenants.d"'))
    where = {(p.file.name, p.key) for p in problems}
    assert where == {("Bad_Name.toml", ""), ("broken.toml", ""), ("nocas.toml", "organisation_cas[0]")}
    assert any("line" in p.message for p in problems if p.file.name == "broken.toml")


def test_a_missing_tenants_dir_is_an_error(tmp_path: Path, pkidir: Path) -> None:
    problems = _load(tmp_path, GOOD.replace('default_tenant = "acme"', 'tenants_dir = "nowhere"'))
    assert [p.key for p in problems] == ["tenants_dir"]


def test_a_tenant_in_both_places_is_an_error(tmp_path: Path, pkidir: Path) -> None:
    tdir = tmp_path / "tenants.d"
    tdir.mkdir()
    (tdir / "acme.toml").write_text('hostnames = ["other.example"]\n')
    problems = _load(tmp_path, GOOD.replace('default_tenant = "acme"', 'tenants_dir = "tenants.d"'))
    [problem] = problems
    assert problem.file == tdir / "acme.toml" and "also defined" in problem.message


def test_a_non_ca_certificate_in_organisation_cas_is_refused(tmp_path: Path, pkidir: Path) -> None:
    problems = _load(tmp_path, GOOD.replace('organisation_cas = ["pki/org.pem"]',
                                            'organisation_cas = ["pki/org.pem", "pki/leaf.pem"]'))
    [problem] = problems
    assert problem.key == "tenants.acme.organisation_cas[1]"
    assert "CN=not a ca is not a CA certificate" in problem.message


def test_a_file_without_pem_certificates_in_organisation_cas_is_refused(
        tmp_path: Path, pkidir: Path) -> None:
    (pkidir / "junk.pem").write_text("hello\n")
    problems = _load(tmp_path, GOOD.replace('"pki/org.pem"', '"pki/junk.pem"'))
    assert [p.key for p in problems] == ["tenants.acme.organisation_cas[0]"]
    assert "no" in problems[0].message and "PEM certificate" in problems[0].message


def test_an_unreadable_file_is_reported_with_its_key(tmp_path: Path, pkidir: Path) -> None:
    (pkidir / "adir.pem").mkdir()
    problems = _load(tmp_path, GOOD.replace('"pki/org.pem"', '"pki/adir.pem"'))
    assert [p.key for p in problems] == ["tenants.acme.organisation_cas[0]"]
    assert "cannot read" in problems[0].message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_a_file_without_read_permission_is_reported(tmp_path: Path, pkidir: Path) -> None:
    (pkidir / "server.key").chmod(0)
    problems = _load(tmp_path, GOOD)
    assert [p.key for p in problems] == ["tls.key_file"]
    assert "Permission denied" in problems[0].message


def test_tls_needs_exactly_one_form(tmp_path: Path, pkidir: Path) -> None:
    both = GOOD.replace('key_file = "pki/server.key"',
                        'key_file = "pki/server.key"\nkeystore = "pki/x.p12"\nkeystore_password_file = "p"')
    assert [(p.key, "not both" in p.message) for p in _load(tmp_path, both)] == [("tls", True)]
    neither = GOOD.replace('cert_file = "pki/server.pem"\nkey_file = "pki/server.key"\n', "")
    assert [p.key for p in _load(tmp_path, neither)] == ["tls"]
    half = GOOD.replace('key_file = "pki/server.key"\n', "")
    assert [p.key for p in _load(tmp_path, half)] == ["tls.key_file"]


def test_missing_pem_files_are_both_reported(tmp_path: Path, pkidir: Path) -> None:
    problems = _load(tmp_path, GOOD.replace("pki/server.pem", "pki/none.pem")
                     .replace("pki/server.key", "pki/none.key"))
    assert {p.key for p in problems} == {"tls.cert_file", "tls.key_file"}
    assert all(p.file == tmp_path / "switch.toml" for p in problems)


def test_a_key_that_does_not_parse_is_reported_at_key_file(tmp_path: Path, pkidir: Path) -> None:
    (pkidir / "server.key").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    problems = _load(tmp_path, GOOD)
    assert [p.key for p in problems] == ["tls.key_file"]
    assert "not an unencrypted PEM private key" in problems[0].message


def test_a_key_that_does_not_match_the_certificate_is_refused(tmp_path: Path, pkidir: Path) -> None:
    pki.write_private(pkidir / "server.key", pki.key_pem(pki.generate_key()))
    problems = _load(tmp_path, GOOD)
    assert [p.key for p in problems] == ["tls.key_file"]
    assert "does not match the certificate CN=localhost" in problems[0].message


def _keystore(pkidir: Path, password: bytes, with_key: bool = True) -> None:
    cert = x509.load_pem_x509_certificates((pkidir / "server.pem").read_bytes())[0]
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
    (pkidir / "pass").write_text("s3cret\n")  # one trailing newline is not part of the password
    (tmp_path / "switch.toml").write_text(KEYSTORE)
    assert load_config(tmp_path / "switch.toml").tls.keystore == pkidir / "server.p12"


def test_keystore_with_a_wrong_password_is_a_clear_error(tmp_path: Path, pkidir: Path) -> None:
    _keystore(pkidir, b"s3cret")
    (pkidir / "pass").write_text("s3cret\n\n")  # only one newline is stripped
    problems = _load(tmp_path, KEYSTORE)
    assert [p.key for p in problems] == ["tls.keystore"]
    assert "does not open with the password in" in problems[0].message


def test_keystore_without_a_private_key_is_a_clear_error(tmp_path: Path, pkidir: Path) -> None:
    _keystore(pkidir, b"s3cret", with_key=False)
    (pkidir / "pass").write_text("s3cret")
    problems = _load(tmp_path, KEYSTORE)
    assert [p.key for p in problems] == ["tls.keystore"]
    assert "no private key" in problems[0].message


def test_a_missing_keystore_password_file_is_reported_at_its_key(tmp_path: Path, pkidir: Path) -> None:
    _keystore(pkidir, b"s3cret")
    problems = _load(tmp_path, KEYSTORE)
    assert [p.key for p in problems] == ["tls.keystore_password_file"]


def test_unreadable_crl_and_unknown_identity_rule_are_reported(tmp_path: Path, pkidir: Path) -> None:
    (pkidir / "bad.crl").write_text("not a crl")
    problems = _load(tmp_path, GOOD.replace('upstream =', 'organisation_crls = ["pki/bad.crl"]\nupstream =')
                     .replace('rule = "email-san"', 'rule = "telepathy"'))
    found = _by_key(problems)
    assert set(found) == {"tenants.acme.organisation_crls[0]", "tenants.acme.identity.rule"}
    assert "not a readable CRL" in found["tenants.acme.organisation_crls[0]"]
    assert "unknown identity rule 'telepathy'" in found["tenants.acme.identity.rule"]


@pytest.mark.parametrize("upstream", ["http://backend/", "ws:///path", "wss://[::1/", "ws://h:99999/",
                                      "backend:8080"])
def test_an_upstream_must_be_a_websocket_url_with_a_host(tmp_path: Path, pkidir: Path,
                                                         upstream: str) -> None:
    problems = _load(tmp_path, GOOD.replace("wss://backend.acme.example/agents", upstream))
    assert [p.key for p in problems] == ["tenants.acme.upstream"]


def test_renew_before_must_be_shorter_than_validity(tmp_path: Path, pkidir: Path) -> None:
    problems = _load(tmp_path, GOOD.replace('renew_before = "6h"', 'renew_before = "24h"'))
    assert [(p.key, p.message) for p in problems] == [
        ("profiles.kiosk.renew_before", "must be shorter than validity")]


def test_an_unknown_default_tenant_is_an_error(tmp_path: Path, pkidir: Path) -> None:
    problems = _load(tmp_path, GOOD.replace('default_tenant = "acme"', 'default_tenant = "zeta"'))
    assert [p.key for p in problems] == ["default_tenant"]


def test_a_missing_config_file_is_one_clear_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    [problem] = info.value.problems
    assert problem.file == tmp_path / "nope.toml" and "cannot read" in problem.message


def _write_crl(path: Path, issuer: x509.Certificate, key: object) -> None:
    from cryptography.hazmat.primitives import hashes

    crl = (x509.CertificateRevocationListBuilder().issuer_name(issuer.subject)
           .last_update(NOW).next_update(NOW + dt.timedelta(days=7))
           .add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(42)
                                    .revocation_date(NOW).build())
           .sign(key, hashes.SHA256()))  # type: ignore[arg-type]
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))


def _pem(path: Path) -> tuple[x509.Certificate, object]:
    return (x509.load_pem_x509_certificate(path.with_suffix(".pem").read_bytes()),
            serialization.load_pem_private_key(path.with_suffix(".key").read_bytes(), None))


WITH_CRL = GOOD.replace('upstream =', 'organisation_crls = ["pki/org.crl"]\nupstream =')


def test_a_crl_signed_by_an_organisation_ca_of_the_tenant_loads(tmp_path: Path, pkidir: Path) -> None:
    _write_crl(pkidir / "org.crl", *_pem(pkidir / "org"))
    (tmp_path / "switch.toml").write_text(WITH_CRL)
    assert load_config(tmp_path / "switch.toml").tenants["acme"].organisation_crls


def test_a_crl_from_a_ca_the_tenant_does_not_trust_is_an_error_at_its_key(
        tmp_path: Path, pkidir: Path) -> None:
    _write_crl(pkidir / "org.crl", *_pem(pkidir / "root"))  # a real CA, not the tenant's
    found = _by_key(_load(tmp_path, WITH_CRL))
    assert set(found) == {"tenants.acme.organisation_crls[0]"}
    assert "not signed by an organisation CA of tenant acme" in found["tenants.acme.organisation_crls[0]"]


def test_a_crl_naming_the_organisation_ca_but_signed_by_another_key_is_an_error(
        tmp_path: Path, pkidir: Path) -> None:
    org, _ = _pem(pkidir / "org")
    _write_crl(pkidir / "org.crl", org, pki.generate_key())  # forged: right issuer name, wrong key
    found = _by_key(_load(tmp_path, WITH_CRL))
    assert set(found) == {"tenants.acme.organisation_crls[0]"}


def test_a_crl_in_a_tenant_file_is_reported_in_that_file(tmp_path: Path, pkidir: Path) -> None:
    _write_crl(pkidir / "org.crl", *_pem(pkidir / "root"))
    tdir = tmp_path / "tenants.d"
    tdir.mkdir()
    (tdir / "beta.toml").write_text('hostnames = ["beta.example"]\n'
                                    'organisation_cas = ["../pki/org.pem"]\n'
                                    'organisation_crls = ["../pki/org.crl"]\n')
    [problem] = _load(tmp_path, 'tenants_dir = "tenants.d"\n' + GOOD)
    assert (problem.file, problem.key) == (tdir / "beta.toml", "organisation_crls[0]")


# --- [store] -----------------------------------------------------------------------------------


def _secret_files(tmp_path: Path) -> None:
    (tmp_path / "pg.pass").write_text("pw\n")
    (tmp_path / "kek.pass").write_text("a passphrase long enough\n")


def test_without_a_store_table_the_store_is_sqlite_in_state_dir(tmp_path: Path, pkidir: Path) -> None:
    (tmp_path / "switch.toml").write_text(GOOD)
    store = load_config(tmp_path / "switch.toml").store
    assert (store.engine, store.url, store.password_file) == ("sqlite", None, None)


def test_a_postgresql_store_loads_with_its_files(tmp_path: Path, pkidir: Path) -> None:
    _secret_files(tmp_path)
    (tmp_path / "switch.toml").write_text(GOOD + """
[store]
url = "postgresql://switch@db.example:5432/switch"
password_file = "pg.pass"
issuer_key_passphrase_file = "kek.pass"
""")
    store = load_config(tmp_path / "switch.toml").store
    assert store.engine == "postgresql" and store.url == "postgresql://switch@db.example:5432/switch"
    assert store.password_file == tmp_path / "pg.pass"
    assert store.issuer_key_passphrase_file == tmp_path / "kek.pass"


def test_a_password_in_the_store_url_is_refused(tmp_path: Path, pkidir: Path) -> None:
    _secret_files(tmp_path)
    for url in ("postgresql://switch:hunter2@db.example/switch",
                "postgresql://switch@db.example/switch?password=hunter2"):
        problems = _by_key(_load(tmp_path, GOOD + f"""
[store]
url = "{url}"
issuer_key_passphrase_file = "kek.pass"
"""))
        assert "must not hold a password" in problems["store.url"]
        assert "hunter2" not in problems["store.url"]


def test_store_mistakes_are_reported_at_their_keys(tmp_path: Path, pkidir: Path) -> None:
    (tmp_path / "empty.pass").write_text("\n")
    problems = _by_key(_load(tmp_path, GOOD + """
[store]
url = "mysql://db.example/switch"
password_file = "missing.pass"
issuer_key_passphrase_file = "empty.pass"
colour = "blue"
"""))
    assert "postgresql://" in problems["store.url"]
    assert "cannot read" in problems["store.password_file"]
    assert "is empty" in problems["store.issuer_key_passphrase_file"]
    assert problems["store.colour"] == "unknown key"


def test_a_postgresql_store_needs_the_passphrase_file(tmp_path: Path, pkidir: Path) -> None:
    problems = _by_key(_load(tmp_path, GOOD + """
[store]
url = "postgresql://switch@db.example/switch"
"""))
    assert problems["store.issuer_key_passphrase_file"] == "is required"


def test_a_password_file_without_a_url_is_an_error(tmp_path: Path, pkidir: Path) -> None:
    _secret_files(tmp_path)
    problems = _by_key(_load(tmp_path, GOOD + '[store]\npassword_file = "pg.pass"\n'))
    assert "set [store] url too" in problems["store.password_file"]


def test_a_profile_may_keep_each_cn_to_one_key(tmp_path: Path, pkidir: Path) -> None:
    (tmp_path / "switch.toml").write_text(GOOD + "[profiles.fleet]\nunique_subject = true\n")
    assert load_config(tmp_path / "switch.toml").profiles["fleet"].unique_subject
    problems = _load(tmp_path, GOOD + '[profiles.fleet]\nunique_subject = "yes"\n')
    assert _by_key(problems) == {"profiles.fleet.unique_subject": "expected true or false, got a string"}


def test_organisation_certs_take_pem_files_of_leaves_and_sha256_fingerprints(
        tmp_path: Path, pkidir: Path) -> None:
    pin = "AB:" * 31 + "CD"
    (tmp_path / "switch.toml").write_text(GOOD.replace(
        'organisation_cas = ["pki/org.pem"]',
        f'organisation_cas = []\norganisation_certs = ["pki/leaf.pem", "sha256:{pin}", '
        f'"{"0" * 64}"]'))
    acme = load_config(tmp_path / "switch.toml").tenants["acme"]
    assert acme.organisation_certs == (pkidir / "leaf.pem",)
    assert acme.organisation_cert_sha256 == ("ab" * 31 + "cd", "0" * 64)
    assert acme.uses_organisation_cas  # "use certificates provisioned by my organisation": on


def test_bad_organisation_certs_are_reported_at_their_key(tmp_path: Path, pkidir: Path) -> None:
    (pkidir / "junk.pem").write_text("not a certificate")
    problems = _load(tmp_path, GOOD.replace(
        'organisation_cas = ["pki/org.pem"]',
        'organisation_certs = ["pki/missing.pem", "pki/junk.pem", "pki/org.pem", "ab:cd:ef:01",'
        ' "sha256:' + "a" * 63 + '", ""]'))
    found = _by_key(problems)
    assert "cannot read" in found["tenants.acme.organisation_certs[0]"]
    assert "no readable PEM certificate" in found["tenants.acme.organisation_certs[1]"]
    assert "is a CA certificate: list CAs in organisation_cas" in \
        found["tenants.acme.organisation_certs[2]"]
    assert "not a SHA-256 fingerprint" in found["tenants.acme.organisation_certs[4]"]
    assert "not an empty string" in found["tenants.acme.organisation_certs[5]"]
    # A short run of hex digits and colons is a file name, which is not there.
    assert "cannot read" in found["tenants.acme.organisation_certs[3]"]
