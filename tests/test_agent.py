"""The reference agent against a real Switch: enroll, renew, fall back across certificates."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from cryptography import x509

from enroll import pki
from gateway.agent import Agent, AgentError, AgentSettings
from gateway.est_client import spki_sha256
from tests.est_harness import HOST
from tests.gateway_harness import Gateway, org_agent, provisioning_key, start_gateway


def _settings(gw: Gateway, directory: Path, **kw: object) -> AgentSettings:
    base = AgentSettings(directory=directory, server_name=HOST,
                         gateway=("127.0.0.1", gw.ports["gateway"]),
                         enroll=("127.0.0.1", gw.ports["enroll"]), ca_file=gw.ca_file,
                         common_name="laptop-7", path="/agent")
    import attrs

    return attrs.evolve(base, **kw)


async def test_agent_enrolls_keeps_its_key_private_and_reaches_the_upstream(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, tmp_path / "d")
            secret = provisioning_key(gw)
            await gw.synced()
            agent_dir = tmp_path / "agent"
            agent = Agent(_settings(gw, agent_dir, key_secret=secret))
            assert await agent.once("hello") == "hello"
            key_file = agent_dir / "certs" / "provisioned.key"
            assert key_file.stat().st_mode & 0o777 == 0o600
            assert gw.echo.requests[-1][1]["x-switch-identity"] == "laptop-7"
            assert (agent_dir / "preferred").read_text().strip() == "provisioned"
            nursery.cancel_scope.cancel()


async def test_agent_renews_when_the_window_opens(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, tmp_path / "d")
            secret = provisioning_key(gw)
            await gw.synced()
            agent_dir = tmp_path / "agent"
            await Agent(_settings(gw, agent_dir, key_secret=secret)).once("first")
            first = x509.load_pem_x509_certificate((agent_dir / "certs/provisioned.pem").read_bytes())
            later = first.not_valid_after_utc - dt.timedelta(days=3)  # inside the 7-day window
            renewing = Agent(_settings(gw, agent_dir), clock=lambda: later)
            assert await renewing.once("second") == "second"
            second = x509.load_pem_x509_certificate((agent_dir / "certs/provisioned.pem").read_bytes())
            assert second.serial_number != first.serial_number and second.subject == first.subject
            assert second.public_key() != first.public_key()  # a new key pair as well
            nursery.cancel_scope.cancel()


async def test_agent_tries_its_certificates_in_turn_and_remembers_the_one_that_worked(
        tmp_path: Path) -> None:
    directory = tmp_path / "d"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, directory)
            agent_dir = tmp_path / "agent"
            certs = agent_dir / "certs"
            certs.mkdir(parents=True)
            wrong = org_agent(directory, "acme-org-ca", "a-wrong-tenant", emails=["x@acme.test"])
            right = org_agent(directory, "demo-org-ca", "b-right", emails=["b@demo.switch.test"])
            for name, cred in (("a-wrong-tenant", wrong), ("b-right", right)):
                (certs / f"{name}.pem").write_bytes(cred.cert.read_bytes())
                (certs / f"{name}.key").write_bytes(cred.key.read_bytes())
            agent = Agent(_settings(gw, agent_dir, enroll=None))
            assert [c.name for c in agent.credentials()] == ["a-wrong-tenant", "b-right"]
            assert await agent.once("hi") == "hi"
            assert (agent_dir / "preferred").read_text().strip() == "b-right"
            assert [c.name for c in agent.credentials()] == ["b-right", "a-wrong-tenant"]
            refusals = gw.refusals("untrusted_issuer", "demo")
            assert await agent.once("again") == "again"
            assert gw.refusals("untrusted_issuer", "demo") == refusals  # went straight to it
            nursery.cancel_scope.cancel()


async def test_agent_pins_the_server_key(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, directory)
            secret = provisioning_key(gw)
            await gw.synced()
            server = x509.load_pem_x509_certificates((directory / "pki/server.pem").read_bytes())[0]
            pinned = Agent(_settings(gw, tmp_path / "a1", ca_file=None, key_secret=secret,
                                     pin_sha256=spki_sha256(server)))
            assert await pinned.once("pinned") == "pinned"
            wrong = Agent(_settings(gw, tmp_path / "a1", ca_file=None, pin_sha256="00" * 32))
            with pytest.raises(AgentError):
                await wrong.once("never")
            nursery.cancel_scope.cancel()


async def test_switch_agent_command_enrolls_and_answers_once(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, tmp_path / "d")
            key_file = tmp_path / "key"
            key_file.write_text(provisioning_key(gw) + "\n")
            await gw.synced()
            result = await trio.run_process(
                [sys.executable, "-m", "gateway.cli", "-c", str(gw.config.path), "agent",
                 "--dir", str(tmp_path / "agent"), "--server-name", HOST,
                 "--gateway", f"127.0.0.1:{gw.ports['gateway']}",
                 "--enroll", f"127.0.0.1:{gw.ports['enroll']}", "--ca-file", str(gw.ca_file),
                 "--key-file", str(key_file), "--name", "cli-agent", "--once", "ping"],
                capture_stdout=True, capture_stderr=True, check=False)
            assert result.returncode == 0, result.stderr
            assert result.stdout.decode().strip().endswith("ping")
            nursery.cancel_scope.cancel()
    assert pki  # noqa: B018 - keeps the import for readers
    assert subprocess  # noqa: B018
