"""End-to-end tests of the ``switch`` command: real processes, a real deployment from
``switch init``, a real SQLite file. The admin commands' tests run twice (``cli_mode``): on the
store, and through the admin API of a running ``switch serve`` (``--server``), with the same
output and exit codes."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.cli import Cli, cli_for, local_actor, switch_command

Run = Callable[..., subprocess.CompletedProcess[str]]
_switch = switch_command


def _init_deployment(directory: Path) -> Path:
    result = subprocess.run(_switch(None, "init", str(directory)), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return directory / "switch.toml"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _init_deployment(tmp_path_factory.mktemp("deploy") / "switch")


@pytest.fixture
def run(deployment: Path) -> Run:
    def _run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(_switch(deployment, *args), capture_output=True, text=True,
                              timeout=60)

    return _run


@pytest.fixture(scope="module", params=["local", "remote"])
def admin(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Cli]:
    """The admin commands against one deployment shared by the module's tests, in each mode."""
    config = _init_deployment(tmp_path_factory.mktemp(f"deploy-{request.param}") / "switch")
    with cli_for(str(request.param), config) as cli:
        yield cli


def test_init_writes_a_deployment_that_passes_config_check(run: Run) -> None:
    result = run("config", "check")
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_init_refuses_to_overwrite_an_existing_deployment(deployment: Path) -> None:
    before = deployment.read_bytes()
    result = subprocess.run(
        _switch(None, "init", str(deployment.parent)), capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "deployment_exists" in result.stderr
    assert deployment.read_bytes() == before


def test_generated_secret_is_printed_once_and_never_listed_or_stored(admin: Cli) -> None:
    run, deployment = admin, admin.config
    result = run("keys", "generate", "demo", "Secret Shown Once", "--json")
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    secret = created["secret"]
    assert secret.startswith("swk_")
    listed = run("keys", "list", "demo", "--json")
    assert listed.returncode == 0
    assert secret not in listed.stdout
    names = [k["name"] for k in json.loads(listed.stdout)]
    assert "Secret Shown Once" in names
    text = run("keys", "list", "demo")
    assert "Secret Shown Once" in text.stdout and secret not in text.stdout
    state = deployment.parent / "state"
    for path in state.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    if admin.server is not None:  # the server logged neither the key's secret nor the token
        assert admin.token_file is not None
        token = admin.token_file.read_text().strip()
        assert "api_request" in admin.server.log
        assert secret not in admin.server.log and token not in admin.server.log
    # clean up so the limit does not affect other tests
    revoked = run(
        "keys", "revoke", "demo", "Secret Shown Once", "--reason", "test done",
        "--confirm", "Secret Shown Once",
    )
    assert revoked.returncode == 0, revoked.stderr


@pytest.mark.slow
def test_key_lifecycle_refusals_have_reason_codes_and_exit_codes(admin: Cli) -> None:
    run = admin
    assert run("keys", "generate", "demo", "Lifecycle").returncode == 0

    taken = run("keys", "generate", "demo", "lifecycle")
    assert (taken.returncode, taken.stderr.split(":")[1].strip()) == (1, "key_name_taken")

    bad_name = run("keys", "generate", "demo", "9lives")
    assert bad_name.returncode == 1 and "invalid_key_name" in bad_name.stderr

    no_reason = run("keys", "suspend", "demo", "Lifecycle")
    assert no_reason.returncode == 1 and "reason_required" in no_reason.stderr

    not_suspended = run("keys", "reactivate", "demo", "Lifecycle")
    assert not_suspended.returncode == 1 and "wrong_key_state" in not_suspended.stderr

    assert run("keys", "suspend", "demo", "Lifecycle", "--reason", "paused").returncode == 0
    assert run("keys", "reactivate", "demo", "Lifecycle").returncode == 0

    wrong_case = run("keys", "revoke", "demo", "Lifecycle", "--reason", "x", "--confirm", "lifecycle")
    assert wrong_case.returncode == 1 and "confirmation_mismatch" in wrong_case.stderr

    unknown_tenant = run("keys", "list", "nosuchtenant")
    assert unknown_tenant.returncode == 3 and "unknown_tenant" in unknown_tenant.stderr

    unknown_key = run("keys", "suspend", "demo", "Nobody", "--reason", "x")
    assert unknown_key.returncode == 3 and "unknown_key" in unknown_key.stderr

    done = run("keys", "revoke", "demo", "Lifecycle", "--reason", "done", "--confirm", "Lifecycle")
    assert done.returncode == 0, done.stderr
    again = run("keys", "reactivate", "demo", "Lifecycle")
    assert again.returncode == 1 and "wrong_key_state" in again.stderr


@pytest.mark.slow
def test_ten_concurrent_generate_commands_create_at_most_three_live_keys(
    tmp_path: Path, cli_mode: str,
) -> None:
    config = _init_deployment(tmp_path / "switch")
    with cli_for(cli_mode, config) as switch:
        procs = [
            subprocess.Popen(switch.command("keys", "generate", "demo", f"Racer {i}", "--json"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(10)
        ]
        results = [(p.wait(timeout=120), p.stdout.read() if p.stdout else "",
                    p.stderr.read() if p.stderr else "") for p in procs]
        ok = [r for r in results if r[0] == 0]
        refused = [r for r in results if r[0] == 1]
        assert len(ok) == 3, results
        assert len(refused) == 7 and all("key_limit_reached" in r[2] for r in refused), results
        listed = switch("keys", "list", "demo", "--json")
        assert len(json.loads(listed.stdout)) == 3


@pytest.mark.slow
def test_service_enable_creates_issuer_and_everything_is_audited(admin: Cli) -> None:
    run = admin
    assert run("service", "status", "demo", "--json").stdout.count("false") == 1
    enabled = run("service", "enable", "demo")
    assert enabled.returncode == 0, enabled.stderr
    shown = json.loads(run("ca", "show", "demo", "--json").stdout)
    assert shown["provisioning_enabled"] is True
    assert len(shown["issuers"]) == 1 and shown["issuers"][0]["trusted"] is True
    pem = run("ca", "show", "demo", "--pem").stdout
    assert pem.startswith("-----BEGIN CERTIFICATE-----")
    renewed = run("ca", "renew", "demo")
    assert renewed.returncode == 0, renewed.stderr
    assert len(json.loads(run("ca", "show", "demo", "--json").stdout)["issuers"]) == 2
    unacknowledged = run("service", "disable", "demo")
    assert unacknowledged.returncode == 1 and "acknowledgement_required" in unacknowledged.stderr
    assert json.loads(run("service", "status", "demo", "--json").stdout)["provisioning_enabled"]
    assert run("service", "disable", "demo", "--yes").returncode == 0
    entries = json.loads(run("audit", "list", "--tenant", "demo", "--json").stdout)
    actions = [(e["action"], e["actor"]) for e in entries]
    assert ("issuer.created", admin.actor) in actions
    assert ("service.enabled", admin.actor) in actions
    assert ("issuer.renewed", admin.actor) in actions
    assert ("service.disabled", admin.actor) in actions
    assert run("service", "enable", "demo").returncode == 0  # as the module's other tests expect


def test_audit_verify_detects_an_edited_entry(tmp_path: Path, cli_mode: str) -> None:
    config = _init_deployment(tmp_path / "switch")
    with cli_for(cli_mode, config) as switch:
        for name in ("One", "Two", "Three"):
            assert switch("keys", "generate", "demo", name).returncode == 0
        ok = switch("audit", "verify")
        assert ok.returncode == 0, ok.stderr
        assert "hash chain verified" in ok.stdout
        db = sqlite3.connect(config.parent / "state" / "switch.db")
        with db:
            triggers = [r[0] for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type='trigger' AND tbl_name='audit_log'")]
            for trigger in triggers:
                db.execute(f"DROP TRIGGER {trigger}")
            seq = db.execute("SELECT MIN(seq) FROM audit_log WHERE action='key.created'"
                             ).fetchone()[0]
            db.execute("UPDATE audit_log SET actor='mallory' WHERE seq=?", (seq,))
        db.close()
        bad = switch("audit", "verify")
        assert bad.returncode == 1
        assert "audit_tampered" in bad.stderr and f"entry {seq}" in bad.stderr


def test_broken_config_is_reported_and_commands_refuse_to_run(tmp_path: Path) -> None:
    config = tmp_path / "switch.toml"
    config.write_text(
        'state_dir = "state"\nbogus_key = 1\n[tls]\ncert_file = "missing.pem"\n'
        'key_file = "missing.key"\n[tenants.demo]\nhostnames = "not-a-list"\n'
    )
    check = subprocess.run(_switch(config, "config", "check"), capture_output=True, text=True)
    assert check.returncode == 1
    assert "bogus_key" in check.stderr and "hostnames" in check.stderr
    assert "missing.pem" in check.stderr
    keys = subprocess.run(_switch(config, "keys", "list", "demo"), capture_output=True, text=True)
    assert keys.returncode == 5 and "config_invalid" in keys.stderr


def _init(tmp_path: Path, *extra: str) -> Path:
    directory = tmp_path / "switch"
    result = subprocess.run(_switch(None, "init", str(directory), *extra),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return directory / "switch.toml"


def test_the_actor_is_the_os_user_locally_and_the_operator_through_the_api(
        tmp_path: Path, cli_mode: str) -> None:
    config = _init(tmp_path)
    with cli_for(cli_mode, config) as switch:
        made = switch("keys", "generate", "demo", "Laptops")
        assert made.returncode == 0, made.stderr
        entries = json.loads(switch("audit", "list", "--json").stdout)
    assert [(e["action"], e["actor"]) for e in entries if e["action"] == "key.created"] == \
        [("key.created", local_actor() if cli_mode == "local" else "operator:admin")]


def test_no_option_lets_a_command_choose_its_audit_actor(deployment: Path) -> None:
    chosen = subprocess.run(_switch(deployment, "keys", "list", "demo", "--actor", "mallory"),
                            capture_output=True, text=True, timeout=60)
    assert chosen.returncode == 2 and "--actor" in chosen.stderr


def test_init_with_keystore_through_the_cli_writes_a_deployment_that_checks_clean(
        tmp_path: Path) -> None:
    config = _init(tmp_path, "--keystore")
    text = config.read_text()
    assert 'keystore = "pki/server.p12"' in text and "cert_file" not in text.split("[gateway]")[0]
    assert (config.parent / "pki/server.p12").stat().st_mode & 0o777 == 0o600
    check = subprocess.run(_switch(config, "config", "check"), capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0 and "OK" in check.stdout, check.stderr


def test_ca_show_says_no_issuer_is_trusted_while_the_service_is_disabled(
        tmp_path: Path, cli_mode: str) -> None:
    with cli_for(cli_mode, _init(tmp_path)) as switch:
        _ca_show_while_disabled(switch)


def _ca_show_while_disabled(switch: Cli) -> None:
    assert switch("service", "enable", "demo").returncode == 0
    assert "yes" in switch("ca", "show", "demo").stdout.splitlines()[-1]
    assert switch("service", "disable", "demo", "--yes").returncode == 0
    text = switch("ca", "show", "demo").stdout
    assert "provisioning service disabled: the gateway trusts none" in text
    assert text.splitlines()[-1].endswith("no (service disabled)")
    shown = json.loads(switch("ca", "show", "demo", "--json").stdout)
    assert shown["provisioning_enabled"] is False
    assert [(i["trusted"], i["trusted_when_enabled"]) for i in shown["issuers"]] == [(False, True)]
    pem = switch("ca", "show", "demo", "--pem")
    assert pem.returncode == 0 and pem.stdout == "" and "trusts none" in pem.stderr


def test_config_check_prints_the_warnings_it_can_when_the_config_does_not_load(
        tmp_path: Path) -> None:
    config = _init(tmp_path)
    config.write_text("bogus = 1\n" + config.read_text()
                      .replace('listen = "127.0.0.1:9090"', 'listen = "0.0.0.0:9090"')
                      .replace('identity = { rule = "email-san", allow = ["*@demo.switch.test"] }',
                               'identity = { rule = "any" }'))
    check = subprocess.run(_switch(config, "config", "check"), capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 1
    lines = check.stderr.splitlines()
    assert any(": bogus: error: unknown key" in line for line in lines), lines
    assert any(": admin.listen: warning:" in line for line in lines), lines
    assert any(": tenants.demo.identity.rule: warning:" in line for line in lines), lines
    assert lines[-1].endswith("1 error(s), 2 warning(s); the configuration does not load")
