"""A profile removed while a provisioning key still names it: `switch config check` and every
reload refuse the configuration (the keys' profiles are read from the store), and the enrollment
port answers such a key ``503 unknown_profile``, never 500."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
import structlog
import trio

from enroll.est_service import EstService
from tests.support.est import make_deployment
from tests.support.est_service import Env, csr, issued
from tests.support.processes import worker_pids

SWITCH = [sys.executable, "-m", "gateway.cli"]
KIOSK = '\n[profiles.kiosk]\nvalidity = "1d"\nrenew_before = "1h"\n'


def test_the_enrollment_port_answers_503_unknown_profile_for_a_key_whose_profile_is_gone(
        env: Env) -> None:
    _, env.secret = env.authority.generate_key("acme", "Kiosks", actor="t", profile="kiosk")
    body, key = csr("kiosk-1")
    cert = issued(env.call("simpleenroll", body))
    config = env.service.config
    env.service = EstService(attrs.evolve(config, profiles={
        n: p for n, p in config.profiles.items() if n != "kiosk"}), env.issuance)
    with structlog.testing.capture_logs() as logs:
        replies = [env.call("simpleenroll", csr("kiosk-2")[0]),
                   env.call("serverkeygen", csr("kiosk-2")[0]),
                   env.call("simplereenroll", csr("kiosk-1", key=key)[0], auth=None,
                            chain=[cert])]
    for reply in replies:
        assert (reply.status, reply.result, reply.body) == \
            (503, "unknown_profile", b"503 unknown_profile\n")
    missing = [e for e in logs if e["event"] == "est_unknown_profile"]
    assert len(missing) == 3 and missing[0]["profile"] == "kiosk"
    assert missing[0]["log_level"] == "error"
    assert len(env.issuance.list_certificates("acme")) == 1  # nothing issued meanwhile


def test_a_tenant_whose_profile_is_gone_gets_503_for_csrattrs_too(env: Env) -> None:
    config = env.service.config
    tenants = {**config.tenants, "acme": attrs.evolve(config.tenants["acme"], profile="gone")}
    env.service = EstService(attrs.evolve(config, tenants=tenants), env.issuance)
    for op in ("csrattrs", "simpleenroll"):
        reply = env.call(op, csr()[0])
        assert (reply.status, reply.result) == (503, "unknown_profile"), op


def _deployment_with_a_kiosk_key(tmp_path: Path) -> Path:
    config = make_deployment(tmp_path / "d")
    config.path.write_text(config.path.read_text() + KIOSK)
    result = subprocess.run([*SWITCH, "-c", str(config.path), "service", "enable", "demo"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    result = subprocess.run([*SWITCH, "-c", str(config.path), "keys", "generate", "demo",
                             "Kiosks", "--profile", "kiosk"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return config.path


def test_config_check_refuses_a_config_without_a_profile_a_live_key_names(tmp_path: Path) -> None:
    path = _deployment_with_a_kiosk_key(tmp_path)
    ok = subprocess.run([*SWITCH, "-c", str(path), "config", "check"], capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    path.write_text(path.read_text().replace(KIOSK, "\n"))
    refused = subprocess.run([*SWITCH, "-c", str(path), "config", "check"], capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode == 1
    assert re.search(r"profiles\.kiosk: error: provisioning key 'Kiosks' \(pk_[0-9a-f]+\) of "
                     r"tenant demo names profile 'kiosk'", refused.stderr), refused.stderr
    # A profile a key may not name is still refused at generation.
    generate = subprocess.run([*SWITCH, "-c", str(path), "keys", "generate", "demo", "More",
                               "--profile", "kiosk"], capture_output=True, text=True, timeout=60)
    assert generate.returncode == 3 and "unknown_profile" in generate.stderr
    # Revoking the key makes the configuration good again.
    subprocess.run([*SWITCH, "-c", str(path), "keys", "revoke", "demo", "Kiosks", "--reason",
                    "gone", "--confirm", "Kiosks"], check=True, capture_output=True, timeout=60)
    again = subprocess.run([*SWITCH, "-c", str(path), "config", "check"], capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 0, again.stderr


def test_config_check_does_not_create_a_store_it_does_not_find(tmp_path: Path) -> None:
    config = make_deployment(tmp_path / "d")
    for made_by_init in config.state_dir.iterdir():  # a deployment written by hand: no store yet
        made_by_init.unlink()
    result = subprocess.run([*SWITCH, "-c", str(config.path), "config", "check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert not (config.state_dir / "switch.db").exists()


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
async def test_reload_refuses_a_config_without_a_profile_a_live_key_names(
        tmp_path: Path, workers: str) -> None:
    path = _deployment_with_a_kiosk_key(tmp_path)
    log = tmp_path / "serve.log"
    proc = await trio.lowlevel.open_process(
        [*SWITCH, "-c", str(path), "serve", "--workers", workers],
        stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        status = path.parent / "state" / ("last-reload.json" if workers == "1"
                                          else "last-reload-1.json")
        with trio.fail_after(60):
            while not status.exists():  # noqa: ASYNC110 - a child's file
                await trio.sleep(0.05)
        path.write_text(path.read_text().replace(KIOSK, "\n"))
        result = await trio.run_process([*SWITCH, "-c", str(path), "reload"],
                                        capture_stdout=True, capture_stderr=True, check=False)
        stderr = result.stderr.decode()
        assert result.returncode == 5, stderr
        assert stderr.startswith("switch: reload_refused:")
        assert "provisioning key 'Kiosks'" in stderr and "profile 'kiosk'" in stderr
        if workers == "2":  # a worker restarted now runs the config in force, not the refused one
            pids = worker_pids(log.read_text())
            assert "snapshot_refused" in log.read_text()
            before = status.stat().st_mtime_ns
            os.kill(pids[1], signal.SIGKILL)
            with trio.fail_after(30):  # until the new worker 1 serves (it checked by then)
                while worker_pids(log.read_text())[1] == pids[1] or \
                        status.stat().st_mtime_ns == before:  # noqa: ASYNC110
                    await trio.sleep(0.05)
            assert "key_profile_missing" not in log.read_text()
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
