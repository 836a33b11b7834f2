"""The reference agent against a real Switch: enroll, renew, fall back across certificates."""

from __future__ import annotations

import datetime as dt
import functools
import json
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from cryptography import x509

from enroll import pki
from gateway.client.agent import Agent
from gateway.client.agent_settings import AgentError, AgentSettings, AgentStopped, ServerNotTrusted
from gateway.client.credentials import Credential
from gateway.client.est_client import Issued, spki_sha256
from gateway.client.session import open_session
from tests.support.agent import PING_FRAME, MisbehavingServer, RecordingRandom, oversized_frame
from tests.support.est import HOST, make_deployment
from tests.support.gateway import (
    Echo,
    Gateway,
    add_acme_tenant,
    org_agent,
    provisioning_key,
    start_gateway,
)
from tests.support.pki import write_ca


def _settings(gw: Gateway, directory: Path, **kw: Any) -> AgentSettings:
    base = AgentSettings(directory=directory, server_name=HOST,
                         gateway=("127.0.0.1", gw.ports["gateway"]),
                         enroll=("127.0.0.1", gw.ports["enroll"]), ca_file=gw.ca_file,
                         common_name="laptop-7", path="/agent")
    return attrs.evolve(base, **kw)


async def test_agent_enrolls_keeps_its_key_private_and_reaches_the_upstream(gw: Gateway, tmp_path: Path) -> None:
    with trio.fail_after(60):
        secret = provisioning_key(gw)
        await gw.synced()
        agent_dir = tmp_path / "agent"
        agent = Agent(_settings(gw, agent_dir, key_secret=secret))
        assert await agent.once("hello") == "hello"
        key_file = agent_dir / "certs" / "provisioned.key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert gw.echo.requests[-1][1]["x-switch-identity"] == "laptop-7"
        assert (agent_dir / "preferred").read_text().strip() == "provisioned"


async def test_agent_renews_when_the_window_opens(gw: Gateway, tmp_path: Path) -> None:
    with trio.fail_after(60):
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
            agent = Agent(_settings(gw, agent_dir, enroll=None, timeout_s=20.0))
            assert [c.name for c in agent.credentials()] == ["a-wrong-tenant", "b-right"]
            with trio.fail_after(10):  # a refusal is seen at once, not at the 20 s timeout
                assert await agent.once("hi") == "hi"
            assert gw.refusals("untrusted_issuer", "demo") == 1
            assert (agent_dir / "preferred").read_text().strip() == "b-right"
            # The next run (a new process in real life) goes straight to it.
            again = Agent(_settings(gw, agent_dir, enroll=None))
            assert [c.name for c in again.credentials()] == ["b-right", "a-wrong-tenant"]
            assert await again.once("again") == "again"
            assert gw.refusals("untrusted_issuer", "demo") == 1
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


async def test_switch_agent_command_enrolls_and_answers_once(gw: Gateway, tmp_path: Path) -> None:
    with trio.fail_after(90):
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
        assert result.stdout.decode() == "ping\n"


# --- the renew-before window the enrollment port names -------------------------------------------


def _deployment_with_profile(directory: Path) -> None:
    """A deployment with a profile ``wide`` (30 days, renew 12 days before expiry): a window
    that neither the old 7-day default nor the fallback (a third of 30 days) would give."""
    make_deployment(directory)
    add_acme_tenant(directory)
    path = directory / "switch.toml"
    path.write_text(path.read_text() + '\n[profiles.wide]\nvalidity = "30d"\nrenew_before = "12d"\n')


def _key_with_profile(gw: Gateway, profile: str) -> str:
    authority = gw.authority()
    try:
        authority.enable_service("demo", actor="test")
        return authority.generate_key("demo", "Wide", actor="test", profile=profile)[1]
    finally:
        authority.close()


def _current(agent_dir: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((agent_dir / "certs/provisioned.pem").read_bytes())


def _state(agent_dir: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((agent_dir / "certs/provisioned.json").read_text())
    return state


async def test_agent_renews_when_the_window_the_server_named_opens(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    _deployment_with_profile(directory)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, directory)
            secret = _key_with_profile(gw, "wide")
            await gw.synced()
            agent_dir = tmp_path / "agent"
            await Agent(_settings(gw, agent_dir, key_secret=secret)).once("first")
            first = _current(agent_dir)
            # Stored next to the certificate, bound to it by its serial; not a secret.
            assert _state(agent_dir) == {"serial": format(first.serial_number, "x"),
                                         "renew_before_s": 12 * 86400}
            assert (agent_dir / "certs/provisioned.json").stat().st_mode & 0o777 == 0o644
            [credential] = Agent(_settings(gw, agent_dir)).credentials()
            assert credential.renew_before == dt.timedelta(days=12)

            before = first.not_valid_after_utc - dt.timedelta(days=13)
            assert await Agent(_settings(gw, agent_dir), clock=lambda: before).once("a") == "a"
            assert _current(agent_dir).serial_number == first.serial_number  # not yet

            inside = first.not_valid_after_utc - dt.timedelta(days=11)
            assert await Agent(_settings(gw, agent_dir), clock=lambda: inside).once("b") == "b"
            second = _current(agent_dir)
            assert second.serial_number != first.serial_number
            assert _state(agent_dir) == {"serial": format(second.serial_number, "x"),
                                         "renew_before_s": 12 * 86400}
            nursery.cancel_scope.cancel()


async def test_renew_before_overrides_the_server_and_a_third_of_the_lifetime_is_the_fallback(
        tmp_path: Path) -> None:
    directory = tmp_path / "d"
    _deployment_with_profile(directory)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, directory)
            secret = _key_with_profile(gw, "wide")
            await gw.synced()
            agent_dir = tmp_path / "agent"
            await Agent(_settings(gw, agent_dir, key_secret=secret)).once("first")
            first = _current(agent_dir)
            inside = first.not_valid_after_utc - dt.timedelta(days=11)  # the server's window
            overridden = Agent(_settings(gw, agent_dir, renew_before=dt.timedelta(days=1)),
                               clock=lambda: inside)
            assert await overridden.once("a") == "a"
            assert _current(agent_dir).serial_number == first.serial_number

            # A certificate from before the server said (or from a server that does not): a
            # third of its 30 days, so not at 11 days before expiry, but at 9.
            (agent_dir / "certs/provisioned.json").unlink()
            assert await Agent(_settings(gw, agent_dir), clock=lambda: inside).once("b") == "b"
            assert _current(agent_dir).serial_number == first.serial_number
            later = first.not_valid_after_utc - dt.timedelta(days=9)
            assert await Agent(_settings(gw, agent_dir), clock=lambda: later).once("c") == "c"
            renewed = _current(agent_dir)
            assert renewed.serial_number != first.serial_number
            # The renewal's reply named the window again: it is stored for the new certificate.
            assert _state(agent_dir)["serial"] == format(renewed.serial_number, "x")
            nursery.cancel_scope.cancel()


def test_renewal_window_sources_in_order_and_at_most_half_the_lifetime(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    key = pki.generate_key()
    cert = pki.make_ca(pki.name("laptop-1"), key, now=now, validity=dt.timedelta(days=30))
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    settings = AgentSettings(directory=tmp_path, server_name=HOST, gateway=("127.0.0.1", 1))
    agent = Agent(settings)
    state_file = tmp_path / "certs/provisioned.json"

    saved = agent.store.save("provisioned", Issued(cert, dt.timedelta(days=12)), key)
    assert agent.renewal_window(saved) == (dt.timedelta(days=12), "server")
    [loaded] = agent.credentials()
    assert loaded.renew_before == dt.timedelta(days=12)
    assert agent.renewal_time(loaded) == cert.not_valid_after_utc - dt.timedelta(days=12)
    overriding = Agent(attrs.evolve(settings, renew_before=dt.timedelta(hours=6)))
    assert overriding.renewal_window(loaded) == (dt.timedelta(hours=6), "command_line")

    # A window over half the lifetime (a certificate cut short by its issuer) is halved, so a
    # renewal never follows its issuance at once.
    wide = agent.store.save("provisioned", Issued(cert, dt.timedelta(days=29)), key)
    assert agent.renewal_window(wide) == (lifetime / 2, "server")

    # No window from the server: the file goes, and a third of the lifetime applies.
    plain = agent.store.save("provisioned", Issued(cert), key)
    assert not state_file.exists()
    assert agent.renewal_window(plain) == (lifetime / 3, "lifetime")

    # A state file of another certificate, or one that does not parse, is not applied.
    for text in (json.dumps({"serial": "abc", "renew_before_s": 3600}), "{not json",
                 json.dumps({"serial": format(cert.serial_number, "x"), "renew_before_s": "1"})):
        state_file.write_text(text)
        [credential] = agent.credentials()
        assert credential.renew_before is None
        assert agent.renewal_window(credential) == (lifetime / 3, "lifetime")


# --- sessions: what trio-websocket lets escape is contained --------------------------------------


def _fake_agent(server: MisbehavingServer, directory: Path, **kw: Any) -> Agent:
    cert, key = server.client_files()
    certs = directory / "certs"
    certs.mkdir(parents=True)
    (certs / "fake.pem").write_bytes(cert.read_bytes())
    pki.write_private(certs / "fake.key", key.read_bytes())
    return Agent(attrs.evolve(AgentSettings(
        directory=directory, server_name="localhost", gateway=("127.0.0.1", server.port),
        ca_file=server.ca_file, timeout_s=10.0), **kw))


async def test_a_server_ping_after_the_agents_close_is_just_a_closed_session(tmp_path: Path) -> None:
    # trio-websocket #184: its reader answered the Ping with a Pong in LOCAL_CLOSING and the
    # LocalProtocolError escaped into the nursery (it crashed a load test worker).
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            server = MisbehavingServer(tmp_path, after_close=PING_FRAME)
            await server.start(nursery)
            agent = _fake_agent(server, tmp_path / "agent")
            assert await agent.once("hello") == "hello"
            assert server.client_closes == [1000]
            ctx = agent._ssl_context(agent.credentials()[0])
            async with trio.open_nursery() as sessions:
                ws, _ = await open_session(sessions, ctx, ("127.0.0.1", server.port), "localhost", "/")
                await ws.aclose()
            assert ws.pings_while_closing == 1 and ws.end_reason() == "closed_1000"
            nursery.cancel_scope.cancel()


async def test_a_protocol_error_in_the_reader_ends_that_session_only(tmp_path: Path) -> None:
    # A message over the size limit after the client's Close: trio-websocket tries to send a
    # 1009 Close in LOCAL_CLOSING, another LocalProtocolError from its reader task.
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            server = MisbehavingServer(tmp_path, after_close=oversized_frame())
            await server.start(nursery)
            agent = _fake_agent(server, tmp_path / "agent")
            ctx = agent._ssl_context(agent.credentials()[0])
            async with trio.open_nursery() as sessions:
                ws, _ = await open_session(sessions, ctx, ("127.0.0.1", server.port), "localhost", "/")
                await ws.send_message("x")
                assert await ws.get_message() == "x"
                await ws.aclose()
            assert ws.end_reason() == "protocol_error"
            assert ws.protocol_error is not None and "LOCAL_CLOSING" in ws.protocol_error
            assert await agent.once("still fine") == "still fine"
            nursery.cancel_scope.cancel()


async def test_an_upgrade_the_gateway_refuses_is_a_clear_error_not_a_crash(tmp_path: Path) -> None:
    # trio-websocket raises ConnectionRejected from its reader task, into the caller's nursery.
    directory = tmp_path / "d"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            with trio.socket.socket() as unused:
                await unused.bind(("127.0.0.1", 0))
                closed_port = unused.getsockname()[1]
            gw = await start_gateway(nursery, directory, echo=Echo(port=closed_port))
            right = org_agent(directory, "demo-org-ca", "b-right", emails=["b@demo.switch.test"])
            certs = tmp_path / "agent" / "certs"
            certs.mkdir(parents=True)
            (certs / "b-right.pem").write_bytes(right.cert.read_bytes())
            pki.write_private(certs / "b-right.key", right.key.read_bytes())
            agent = Agent(_settings(gw, tmp_path / "agent", enroll=None))
            with pytest.raises(AgentError, match="HTTP 502"):
                await agent.once("hi")
            nursery.cancel_scope.cancel()


# --- reconnecting -------------------------------------------------------------------------------


async def test_reconnects_back_off_exponentially_while_the_gateway_is_down(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    server = MisbehavingServer(tmp_path)  # only for a certificate and a CA
    with trio.socket.socket() as unused:
        await unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    agent = _fake_agent(server, tmp_path / "agent", gateway=("127.0.0.1", closed_port))
    rng = RecordingRandom()
    with trio.move_on_after(200):
        await agent.run_forever(rng=rng)
    assert rng.caps[:8] == [1, 2, 4, 8, 16, 32, 60, 60]


async def test_only_a_session_that_held_resets_the_backoff(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    server = MisbehavingServer(tmp_path)
    agent = _fake_agent(server, tmp_path / "agent")
    held = iter([1.0, 1.0, 1.0, 120.0, 1.0])

    async def hold(credentials: list[Credential]) -> str:
        await trio.sleep(next(held))
        return "closed_1011"

    agent._hold = hold  # type: ignore[method-assign]
    rng = RecordingRandom()
    await agent.run_forever(max_sessions=5, rng=rng)
    # Sessions the upstream ends at once keep backing off; one held two minutes starts over.
    assert rng.caps == [1, 2, 4, 1]


async def test_a_gateway_going_away_with_1001_is_reconnected_to_after_a_jittered_wait(
        gw: Gateway, tmp_path: Path) -> None:
    with trio.fail_after(60):
        secret = provisioning_key(gw)
        await gw.synced()
        agent = Agent(_settings(gw, tmp_path / "agent", key_secret=secret))
        rng = RecordingRandom()
        seen = len(gw.echo.requests)
        async with trio.open_nursery() as running:
            running.start_soon(functools.partial(agent.run_forever, rng=rng))
            # Relaying (the upgrade answered): an eviction before it would refuse the upgrade.
            while not gw.switch.metrics.registry.get_sample_value(  # noqa: ASYNC110 - a gauge
                    "switch_sessions", {"tenant": "demo"}):
                await trio.sleep(0.02)
            gw.switch.registry.close_all("shutdown")  # what a stopping gateway does
            while len(gw.echo.requests) < seen + 2:  # noqa: ASYNC110 - back at the upstream
                await trio.sleep(0.02)
            running.cancel_scope.cancel()
        # The session ended with 1001, no reason to give up: the agent waited a draw from
        # [0, 1 s] (full jitter; the recording draw returns the cap) and came back.
        assert agent.last_session_end == "closed_1001"
        assert rng.caps == [1.0]


# --- renewal, fallback, pinning, files ----------------------------------------------------------


async def test_agent_renews_during_a_live_session_and_reconnects_with_the_new_certificate(gw: Gateway, nursery: trio.Nursery,
        tmp_path: Path) -> None:
    with trio.fail_after(60):
        secret = provisioning_key(gw)
        await gw.synced()
        agent_dir = tmp_path / "agent"
        await Agent(_settings(gw, agent_dir, key_secret=secret)).once("first")
        cert_file = agent_dir / "certs/provisioned.pem"
        first = x509.load_pem_x509_certificate(cert_file.read_bytes())
        # The window of the first certificate opens half a second into the session.
        offset = first.not_valid_after_utc - dt.timedelta(days=7) - dt.datetime.now(dt.UTC) \
            - dt.timedelta(seconds=0.5)

        def clock() -> dt.datetime:
            current = x509.load_pem_x509_certificate(cert_file.read_bytes())
            shift = offset if current.serial_number == first.serial_number else dt.timedelta(0)
            return dt.datetime.now(dt.UTC) + shift

        agent = Agent(_settings(gw, agent_dir), clock=clock)
        seen = len(gw.echo.requests)
        async with trio.open_nursery() as running:
            running.start_soon(agent.run_forever)
            while len(gw.echo.requests) < seen + 2:  # noqa: ASYNC110 - polls the upstream
                await trio.sleep(0.02)
            running.cancel_scope.cancel()
        serials = [h["x-switch-cert-serial"] for _, h in gw.echo.requests[seen:seen + 2]]
        second = x509.load_pem_x509_certificate(cert_file.read_bytes())
        assert second.serial_number != first.serial_number
        assert int(serials[0], 16) == first.serial_number
        assert int(serials[1], 16) == second.serial_number
        assert agent.last_session_end == "renewed"
        assert (agent_dir / "certs/provisioned.key").stat().st_mode & 0o777 == 0o600


async def test_a_server_outside_the_ca_file_is_refused_without_trying_other_certificates(
        tmp_path: Path) -> None:
    directory = tmp_path / "d"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, directory)
            other_ca = write_ca(tmp_path, "elsewhere", now=dt.datetime.now(dt.UTC))[2]
            certs = tmp_path / "agent" / "certs"
            certs.mkdir(parents=True)
            for name in ("a", "b"):
                cred = org_agent(directory, "demo-org-ca", name, emails=[f"{name}@demo.switch.test"])
                (certs / f"{name}.pem").write_bytes(cred.cert.read_bytes())
                pki.write_private(certs / f"{name}.key", cred.key.read_bytes())
            agent = Agent(_settings(gw, tmp_path / "agent", enroll=None, ca_file=other_ca))
            with pytest.raises(ServerNotTrusted, match="not trusted"):
                await agent.once("never")
            assert not (tmp_path / "agent" / "preferred").exists()
            nursery.cancel_scope.cancel()


async def test_a_wrong_pin_keeps_the_provisioning_key_from_the_server(gw: Gateway, tmp_path: Path) -> None:
    with trio.fail_after(60):
        secret = provisioning_key(gw)
        await gw.synced()
        agent = Agent(_settings(gw, tmp_path / "agent", ca_file=None, key_secret=secret,
                                pin_sha256="ab:" * 31 + "ab"))
        with pytest.raises(AgentError, match="server_pin_mismatch"):
            await agent.once("never")
        authority = gw.authority()
        try:
            assert authority.get_key("demo", "Fleet").last_used_at is None
        finally:
            authority.close()
        with pytest.raises(AgentError, match="64 hex digits"):
            await Agent(_settings(gw, tmp_path / "a2", pin_sha256="sha256/abc")).once("x")


async def test_unusable_certificates_are_skipped_and_an_expired_one_is_replaced_by_enrolling(
        tmp_path: Path) -> None:
    directory = tmp_path / "d"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, directory)
            agent_dir = tmp_path / "agent"
            certs = agent_dir / "certs"
            certs.mkdir(parents=True)
            expired = org_agent(directory, "demo-org-ca", "old", emails=["o@demo.switch.test"],
                                now=dt.datetime.now(dt.UTC) - dt.timedelta(days=60))
            (certs / "old.pem").write_bytes(expired.cert.read_bytes())
            (certs / "old.key").write_bytes(expired.key.read_bytes())
            (certs / "old.key").chmod(0o644)
            (certs / "junk.pem").write_text("not a certificate")
            (certs / "junk.key").write_text("not a key")
            agent = Agent(_settings(gw, agent_dir, enroll=None))
            assert [c.name for c in agent.credentials()] == ["old"]
            assert (certs / "old.key").stat().st_mode & 0o777 == 0o600  # tightened
            with pytest.raises(AgentError, match="old: certificate_expired"):
                await agent.once("x")
            secret = provisioning_key(gw)
            await gw.synced()
            assert await Agent(_settings(gw, agent_dir, key_secret=secret)).once("y") == "y"
            assert (agent_dir / "preferred").read_text().strip() == "provisioned"
            nursery.cancel_scope.cancel()


async def test_switch_agent_once_exit_codes_and_errors(gw: Gateway, tmp_path: Path) -> None:
    with trio.fail_after(90):
        key_file = tmp_path / "key"
        key_file.write_text(provisioning_key(gw) + "\n")
        await gw.synced()
        base = [sys.executable, "-m", "gateway.cli", "agent", "--dir", str(tmp_path / "agent"),
                "--server-name", HOST, "--gateway", f"127.0.0.1:{gw.ports['gateway']}",
                "--enroll", f"127.0.0.1:{gw.ports['enroll']}", "--name", "cli-agent"]
        wrong_pin = await trio.run_process(
            [*base, "--pin", "00" * 32, "--key-file", str(key_file), "--once", "x"],
            capture_stdout=True, capture_stderr=True, check=False)
        assert wrong_pin.returncode == 1 and wrong_pin.stdout == b""
        assert b"agent_failed:" in wrong_pin.stderr and b"server_pin_mismatch" in wrong_pin.stderr
        assert b"Traceback" not in wrong_pin.stderr
        no_key = await trio.run_process(
            [*base, "--ca-file", str(gw.ca_file), "--key-file", str(tmp_path / "missing"),
             "--once", "x"], capture_stdout=True, capture_stderr=True, check=False)
        assert no_key.returncode == 2 and b"--key-file" in no_key.stderr
        assert b"Traceback" not in no_key.stderr


# --- revocation ---------------------------------------------------------------------------------


class _NoWait(RecordingRandom):
    """Back-off draws of zero: the agent reconnects at once (the waits are not under test)."""

    def uniform(self, a: float, b: float) -> float:
        super().uniform(a, b)
        return a


async def test_a_revoked_certificate_is_not_tried_again_the_agent_reenrolls_and_stops_when_its_key_is_revoked(
        tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, tmp_path / "d", organisation=False)
            secret = provisioning_key(gw)
            await gw.synced()
            agent_dir = tmp_path / "agent"
            agent = Agent(_settings(gw, agent_dir, key_secret=secret))
            stopped: list[BaseException] = []

            async def run() -> None:
                try:
                    await agent.run_forever(rng=_NoWait())
                except AgentError as exc:
                    stopped.append(exc)

            async def session_with_a_new_serial(seen: set[str]) -> str:
                while True:
                    serials = {h["x-switch-cert-serial"] for _, h in gw.echo.requests}
                    if serials - seen:
                        return (serials - seen).pop()
                    await trio.sleep(0.02)

            async with trio.open_nursery() as running:
                running.start_soon(run)
                first = await session_with_a_new_serial(set())
                # The certificate is revoked: the session closes, the next handshake is refused
                # with certificate_revoked, and the agent enrolls with its key and reconnects.
                gw.switch.issuance.revoke_certificate(first, reason="stolen", actor="t")
                second = await session_with_a_new_serial({first})
                assert gw.refusals("certificate_revoked", "demo") == 1
                assert not stopped
                # Now the key: the agent's certificate is refused again, enrolling is refused
                # (403 key_revoked), and the agent stops instead of retrying for ever.
                authority = gw.authority()
                try:
                    authority.revoke_key("demo", "Fleet", reason="leaked", confirm="Fleet",
                                         actor="t")
                finally:
                    authority.close()
                while not stopped:  # noqa: ASYNC110 - the agent's task ends by itself
                    await trio.sleep(0.02)
            [error] = stopped
            assert isinstance(error, AgentStopped)
            assert "key_revoked" in str(error)
            assert gw.refusals("key_revoked", "demo") == 1
            cert = x509.load_pem_x509_certificate((agent_dir / "certs/provisioned.pem").read_bytes())
            assert format(cert.serial_number, "x") == second
            assert (agent_dir / "certs/provisioned.revoked").read_text().strip() == second
            assert agent.credentials() == []
            # A later run does not try it either: without a key it stops at once.
            with pytest.raises(AgentStopped, match="revoked"):
                await Agent(_settings(gw, agent_dir)).once("never")
            assert gw.refusals("key_revoked", "demo") == 1
            nursery.cancel_scope.cancel()
