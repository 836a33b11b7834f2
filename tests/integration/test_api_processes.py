"""The admin API of ``switch serve`` as a real process: under ``--workers`` (served by worker 0
on the supervisor's socket), and its log, which never holds a token or a key's secret."""

from __future__ import annotations

import json
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support.cli import add_operator, loopback_ports, serving, switch_command

pytestmark = pytest.mark.slow


def _deployment(tmp_path: Path) -> Path:
    directory = tmp_path / "switch"
    made = subprocess.run(switch_command(None, "init", str(directory)), capture_output=True,
                          text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    config = directory / "switch.toml"
    loopback_ports(config)
    return config


def test_the_api_works_under_workers_and_logs_no_token_or_secret(tmp_path: Path) -> None:
    config = _deployment(tmp_path)
    token = add_operator(config, "admin", "security-admin", tmp_path).read_text().strip()
    ca = ssl.create_default_context(cafile=str(config.parent / "pki" / "dev-root-ca.pem"))
    with serving(config, workers=2) as server:
        base = f"https://127.0.0.1:{server.ports['api']}/api/v1"
        with httpx.Client(base_url=base, verify=ca, timeout=30,
                          headers={"Authorization": f"Bearer {token}"}) as client:
            assert client.get("/whoami").json()["operator"] == "admin"
            made = client.post("/tenants/demo/keys", json={"name": "Laptops"})
            assert made.status_code == 201, made.text
            secret = made.json()["secret"]
            wrong = client.get("/whoami", headers={"Authorization": f"Bearer {token[:-2]}xx"})
            assert wrong.status_code == 401
            listed = client.get("/tenants/demo/keys").json()
        assert [k["name"] for k in listed] == ["Laptops"]
        log = server.log
    assert log.count("event=api_request") == 4 and "worker=0" in log
    assert "worker=1" in log  # two workers ran; only worker 0 answered the API
    assert all("worker=0" in line for line in log.splitlines() if "event=api_request" in line)
    assert token not in log and token[:-2] not in log and secret not in log
    audit = subprocess.run(switch_command(config, "audit", "list", "--json"),
                           capture_output=True, text=True, timeout=60)
    assert [e["actor"] for e in json.loads(audit.stdout) if e["action"] == "key.created"] == \
        ["operator:admin"]
