"""Reload: the new state is built whole and swapped in; live sessions stay unless the change
removed what trusted them; a broken config changes nothing."""

from __future__ import annotations

import datetime as dt
import json
import queue
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import trio
import trio_websocket
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from websockets.exceptions import ConnectionClosed, WebSocketException

from config.load import load_config
from enroll import pki
from enroll.bootstrap import init_deployment
from tests.support.est import make_deployment
from tests.support.gateway import (
    ACME_HOST,
    Agent,
    Echo,
    Gateway,
    LiveAgent,
    add_acme_tenant,
    org_agent,
    provisioning_key,
    start_gateway,
)


def _acme_section(directory: Path) -> str:
    text = (directory / "switch.toml").read_text()
    match = re.search(r"\n\[tenants\.acme\]\n.*?(?=\n\[|\Z)", text, re.DOTALL)
    assert match
    return match.group(0)


async def test_reload_adds_a_tenant_without_touching_other_sessions(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    make_deployment(directory)
    add_acme_tenant(directory)
    config = directory / "switch.toml"
    acme_section = _acme_section(directory)
    config.write_text(config.read_text().replace(acme_section, "\n"))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, directory)
            demo = Agent(directory / "pki/demo-agent.pem", directory / "pki/demo-agent.key", [])
            live = await trio.to_thread.run_sync(LiveAgent, gw, demo)
            acme = org_agent(directory, "acme-org-ca", "acme-agent", emails=["a@acme.test"])
            echo_port = gw.echo.port
            config.write_text(config.read_text() + acme_section.replace(
                'upstream = "ws://127.0.0.1:1/"', f'upstream = "ws://127.0.0.1:{echo_port}/"'))
            result = await gw.switch.reload()
            assert result.ok and result.generation == 2, result
            reply = await trio.to_thread.run_sync(
                lambda: _send(gw, acme, ACME_HOST))
            assert reply == "hello"
            assert await trio.to_thread.run_sync(live.still_works)
            assert not live.closed.is_set()
            nursery.cancel_scope.cancel()


def _send(gw, agent: Agent, host: str) -> str:  # type: ignore[no-untyped-def]
    with gw.connect(agent, host=host) as ws:
        ws.send("hello")
        return str(ws.recv(timeout=10))


async def test_a_broken_config_is_refused_and_the_running_one_stays(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, directory)
            demo = Agent(directory / "pki/demo-agent.pem", directory / "pki/demo-agent.key", [])
            live = await trio.to_thread.run_sync(LiveAgent, gw, demo)
            config = directory / "switch.toml"
            good = config.read_text()
            config.write_text(good.replace("[tenants.demo]", "[tenants.demo]\nbogus = 1")
                              .replace('state_dir = "state"', 'state_dir = 7'))
            result = await gw.switch.reload()
            assert not result.ok and result.generation == 1
            assert any("bogus" in e for e in result.errors) and any("state_dir" in e for e in result.errors)
            assert await trio.to_thread.run_sync(live.still_works)
            assert await trio.to_thread.run_sync(lambda: _send(gw, demo, "demo.switch.test")) == "hello"
            ok, detail = await gw.switch.ready()
            assert ok and "last reload failed" in detail
            config.write_text(good)
            assert (await gw.switch.reload()).generation == 2
            nursery.cancel_scope.cancel()


async def test_removing_an_organisation_ca_closes_exactly_the_sessions_it_trusted(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, directory)
            provisioned = await gw.enroll(provisioning_key(gw), "laptop-1", tmp_path)
            await gw.synced()
            demo = Agent(directory / "pki/demo-agent.pem", directory / "pki/demo-agent.key", [])
            org_live = await trio.to_thread.run_sync(LiveAgent, gw, demo)
            prov_live = await trio.to_thread.run_sync(LiveAgent, gw, provisioned)
            config = directory / "switch.toml"
            config.write_text(config.read_text().replace(
                'organisation_cas = ["pki/demo-org-ca.pem"]', "organisation_cas = []"))
            assert (await gw.switch.reload()).ok
            with trio.fail_after(3):
                await trio.to_thread.run_sync(org_live.closed.wait)
            assert org_live.close_code == 1008
            assert await trio.to_thread.run_sync(prov_live.still_works)
            nursery.cancel_scope.cancel()


def _server_cert_seen(port: int, ca: Path) -> x509.Certificate:
    import socket
    import ssl

    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock, \
            ctx.wrap_socket(sock, server_hostname="demo.switch.test") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


async def test_a_rotated_keystore_serves_new_handshakes(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    init_deployment(directory, now=dt.datetime.now(dt.UTC), keystore=True)
    config = directory / "switch.toml"
    config.write_text(re.sub(r'listen = "[^"]+"', 'listen = "127.0.0.1:0"', config.read_text()))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, directory)
            ca = directory / "pki/dev-root-ca.pem"
            before = await trio.to_thread.run_sync(_server_cert_seen, gw.ports["enroll"], ca)
            root = x509.load_pem_x509_certificate(ca.read_bytes())
            root_key = serialization.load_pem_private_key(
                (directory / "pki/dev-root-ca.key").read_bytes(), None)
            key = pki.generate_key()
            cert = pki.make_leaf(pki.name("demo.switch.test"), key.public_key(), (root, root_key),  # type: ignore[arg-type]
                                 now=dt.datetime.now(dt.UTC), validity=dt.timedelta(days=90),
                                 dns_names=["demo.switch.test", "localhost"], server=True,
                                 client=False)
            password = (directory / "pki/server.pass").read_text().strip().encode()
            (directory / "pki/server.p12").write_bytes(pkcs12.serialize_key_and_certificates(
                b"rotated", key, cert, [root], serialization.BestAvailableEncryption(password)))  # type: ignore[arg-type]
            assert (await gw.switch.reload()).ok
            after = await trio.to_thread.run_sync(_server_cert_seen, gw.ports["enroll"], ca)
            assert before.serial_number != after.serial_number == cert.serial_number
            gw_after = await trio.to_thread.run_sync(_server_cert_seen, gw.ports["gateway"], ca)
            assert gw_after.serial_number == cert.serial_number
            nursery.cancel_scope.cancel()


@pytest.mark.slow
async def test_switch_reload_signals_the_server_and_reports_the_result(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    make_deployment(directory)
    config = directory / "switch.toml"
    log = tmp_path / "serve.log"
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "gateway.cli", "-c", str(config), "serve", "--workers", "2"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        with trio.fail_after(60):
            # the supervisor and both workers are listening
            while log.read_text().count("listener=gateway") < 3:  # noqa: ASYNC110 - a child's log
                await trio.sleep(0.05)

            async def reload() -> subprocess.CompletedProcess[bytes]:
                return await trio.run_process(
                    [sys.executable, "-m", "gateway.cli", "-c", str(config), "reload"],
                    capture_stdout=True, capture_stderr=True, check=False)

            ok = await reload()
            assert ok.returncode == 0 and b"config generation 2" in ok.stdout, ok
            good = config.read_text()
            config.write_text(good + "\nnonsense = [\n")
            bad = await reload()  # checked by the CLI first: the server is not even signalled
            assert bad.returncode == 5 and b"config_invalid" in bad.stderr, bad
            assert b"nothing was signalled" in bad.stderr and b"not valid TOML" in bad.stderr
            proc.send_signal(signal.SIGHUP)  # a plain SIGHUP with the broken file: refused
            # Both workers refuse it (each logs every error: here, one each).
            while log.read_text().count("reload_refused") < 2:  # noqa: ASYNC110
                await trio.sleep(0.05)
            assert "snapshot_refused" in log.read_text()  # the supervisor refused it first
            config.write_text(good)
            again = await reload()
            assert again.returncode == 0 and b"config generation 3" in again.stdout, again
            config.write_text(good.replace("max_connections = 1000", "max_connections = 10"))
            restart = await reload()
            assert restart.returncode == 0 and b"config generation 4" in restart.stdout, restart
            assert b"enroll.max_connections changed: it is read at start only, restart to " \
                b"apply it" in restart.stdout
    finally:
        proc.terminate()
        with trio.fail_after(30):
            assert await proc.wait() == 0
    assert "reload_refused" in log.read_text()


def _write_weak_server_certificate(directory: Path) -> None:
    """A server certificate with a 1024-bit RSA key, which OpenSSL refuses to serve with at its
    default security level ("ee key too small")."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    pkidir = directory / "pki"
    root = x509.load_pem_x509_certificate((pkidir / "dev-root-ca.pem").read_bytes())
    root_key = serialization.load_pem_private_key((pkidir / "dev-root-ca.key").read_bytes(), None)
    key = rsa.generate_private_key(65537, 1024)
    cert = pki.make_leaf(pki.name("demo.switch.test"), key.public_key(), (root, root_key),  # type: ignore[arg-type]
                         now=dt.datetime.now(dt.UTC), validity=dt.timedelta(days=90),
                         dns_names=["demo.switch.test", "localhost"], server=True, client=False)
    (pkidir / "server.pem").write_bytes(pki.cert_pem(cert) + pki.cert_pem(root))
    pki.write_private(pkidir / "server.key", pki.key_pem(key))


async def test_a_reload_to_a_server_key_openssl_refuses_keeps_serving_and_reports_it(
        tmp_path: Path) -> None:
    directory = tmp_path / "d"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, directory)
            demo = Agent(directory / "pki/demo-agent.pem", directory / "pki/demo-agent.key", [])
            live = await trio.to_thread.run_sync(LiveAgent, gw, demo)
            ca = directory / "pki/dev-root-ca.pem"
            served = await trio.to_thread.run_sync(_server_cert_seen, gw.ports["gateway"], ca)
            _write_weak_server_certificate(directory)
            result = await gw.switch.reload()
            assert not result.ok and result.generation == 1, result
            assert any("tls.cert_file" in e and "ee key too small" in e for e in result.errors)
            assert gw.switch.last_reload == result
            ok, detail = await gw.switch.ready()
            assert ok and "last reload failed" in detail
            assert await trio.to_thread.run_sync(live.still_works)
            # New handshakes still get the certificate in force.
            again = await trio.to_thread.run_sync(_server_cert_seen, gw.ports["gateway"], ca)
            assert again.serial_number == served.serial_number
            assert await trio.to_thread.run_sync(lambda: _send(gw, demo, "demo.switch.test")) == "hello"
            nursery.cancel_scope.cancel()


def test_load_all_reports_a_server_key_openssl_refuses_as_a_config_error(tmp_path: Path) -> None:
    import attrs

    from config.errors import ConfigError
    from config.model import ServerTLS
    from gateway.loading import load_all

    config = make_deployment(tmp_path / "d")
    weak = tmp_path / "weak"
    (weak / "pki").mkdir(parents=True)
    for name in ("dev-root-ca.pem", "dev-root-ca.key"):
        (weak / "pki" / name).write_bytes((tmp_path / "d/pki" / name).read_bytes())
    _write_weak_server_certificate(weak)
    config = attrs.evolve(config, tls=ServerTLS(cert_file=weak / "pki/server.pem",
                                                key_file=weak / "pki/server.key"))
    with pytest.raises(ConfigError) as info:
        load_all(config, None, 1)  # type: ignore[arg-type]
    [problem] = info.value.problems
    assert problem.key == "tls.cert_file" and "ee key too small" in problem.message


def test_config_check_and_serve_both_refuse_a_server_key_openssl_refuses(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    config = make_deployment(directory).path
    _write_weak_server_certificate(directory)

    def switch(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway.cli", "-c", str(config), *args],
                              capture_output=True, text=True, timeout=60)

    check = switch("config", "check")
    assert check.returncode == 1, check
    assert "tls.cert_file: error:" in check.stderr and "ee key too small" in check.stderr
    serve = switch("serve", "--workers", "1")
    assert serve.returncode == 5, serve
    assert "config_invalid" in serve.stderr and "ee key too small" in serve.stderr
    assert "Traceback" not in serve.stderr


class HeldSession:
    """An agent's session held open in a thread, recording the server's close code and reason."""

    def __init__(self, gw: Gateway, agent: Agent, host: str = "demo.switch.test") -> None:
        self.ws = gw.connect(agent, host=host)
        self.ws.send("hello")
        assert self.ws.recv(timeout=10) == "hello"
        self.closed = threading.Event()
        self.close: tuple[int, str] | None = None
        self.received: queue.Queue[str | bytes] = queue.Queue()
        threading.Thread(target=self._wait, daemon=True).start()

    def _wait(self) -> None:
        try:
            while True:
                self.received.put(self.ws.recv())
        except ConnectionClosed as exc:
            self.close = (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else None
        finally:
            self.closed.set()

    def still_works(self) -> bool:
        self.ws.send("still there?")
        return self.received.get(timeout=10) == "still there?" and not self.closed.is_set()


async def _hold(gw: Gateway, agent: Agent, host: str = "demo.switch.test") -> HeldSession:
    return await trio.to_thread.run_sync(HeldSession, gw, agent, host)


async def _closed(session: HeldSession) -> tuple[int, str] | None:
    with trio.fail_after(5):
        await trio.to_thread.run_sync(session.closed.wait)
    return session.close


def _evictions(gw: Gateway) -> dict[tuple[str, str], float]:
    return {(s.labels["tenant"], s.labels["reason"]): s.value
            for metric in gw.switch.metrics.evictions.collect() for s in metric.samples
            if s.name.endswith("_total")}


def _two_tenant_deployment(directory: Path) -> None:
    """demo and acme, both relayed to the test's echo upstream."""
    make_deployment(directory)
    add_acme_tenant(directory)
    config = directory / "switch.toml"
    config.write_text(config.read_text().replace('upstream = "ws://127.0.0.1:1/"',
                                                 'upstream = "ws://127.0.0.1:8080/"'))


async def test_a_reload_removing_a_tenant_closes_exactly_its_sessions_with_the_reason(
        tmp_path: Path) -> None:
    directory = tmp_path / "d"
    _two_tenant_deployment(directory)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, directory)
            demo = await _hold(gw, Agent(directory / "pki/demo-agent.pem",
                                         directory / "pki/demo-agent.key", []))
            acme_agent = org_agent(directory, "acme-org-ca", "acme-agent", emails=["a@acme.test"])
            acme = [await _hold(gw, acme_agent, ACME_HOST) for _ in range(2)]
            config = directory / "switch.toml"
            config.write_text(config.read_text().replace(_acme_section(directory), "\n"))
            result = await gw.switch.reload()
            assert result.ok, result
            for session in acme:
                assert await _closed(session) == (1008, "tenant_removed")
            assert await trio.to_thread.run_sync(demo.still_works)
            assert _evictions(gw) == {("acme", "tenant_removed"): 2.0}
            nursery.cancel_scope.cancel()


def _write_crl(directory: Path, revoked: x509.Certificate) -> None:
    from cryptography.hazmat.primitives import hashes

    ca = x509.load_pem_x509_certificate((directory / "pki/demo-org-ca.pem").read_bytes())
    key = serialization.load_pem_private_key((directory / "pki/demo-org-ca.key").read_bytes(), None)
    now = dt.datetime.now(dt.UTC)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
           .last_update(now - dt.timedelta(minutes=1)).next_update(now + dt.timedelta(days=7))
           .add_revoked_certificate(x509.RevokedCertificateBuilder()
                                    .serial_number(revoked.serial_number)
                                    .revocation_date(now - dt.timedelta(minutes=1)).build())
           .sign(key, hashes.SHA256()))  # type: ignore[arg-type]
    (directory / "pki/demo.crl").write_bytes(crl.public_bytes(serialization.Encoding.PEM))


async def test_a_reload_adding_a_crl_entry_closes_exactly_the_session_it_covers_with_the_reason(
        tmp_path: Path) -> None:
    directory = tmp_path / "d"
    _two_tenant_deployment(directory)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, directory)
            lost = org_agent(directory, "demo-org-ca", "lost", emails=["lost@demo.switch.test"])
            kept = org_agent(directory, "demo-org-ca", "kept", emails=["kept@demo.switch.test"])
            acme_agent = org_agent(directory, "acme-org-ca", "acme-agent", emails=["a@acme.test"])
            lost_session, kept_session = await _hold(gw, lost), await _hold(gw, kept)
            acme = await _hold(gw, acme_agent, ACME_HOST)
            _write_crl(directory, lost.chain[0])
            config = directory / "switch.toml"
            config.write_text(config.read_text().replace(
                "organisation_crls = []", 'organisation_crls = ["pki/demo.crl"]'))
            assert (await gw.switch.reload()).ok
            assert await _closed(lost_session) == (1008, "certificate_revoked")
            assert await trio.to_thread.run_sync(kept_session.still_works)
            assert await trio.to_thread.run_sync(acme.still_works)
            assert _evictions(gw) == {("demo", "certificate_revoked"): 1.0}
            with pytest.raises((ssl.SSLError, OSError, WebSocketException, EOFError)):
                await _hold(gw, lost)  # and new handshakes are refused
            nursery.cancel_scope.cancel()


async def test_settings_read_only_at_start_are_reported_as_needing_a_restart(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, directory)
            demo = Agent(directory / "pki/demo-agent.pem", directory / "pki/demo-agent.key", [])
            config = directory / "switch.toml"
            text = config.read_text()
            gateway_listen = re.search(r'\[gateway\][^\[]*?listen = "([^"]+)"', text, re.DOTALL)
            assert gateway_listen
            edited = (text.replace(f'listen = "{gateway_listen.group(1)}"\nenabled = true\n'
                                   'handshake_timeout', 'listen = "127.0.0.1:1"\nenabled = true\n'
                                   'handshake_timeout', 1)
                      .replace('max_body_size = "64KiB"', 'max_body_size = "32KiB"')
                      .replace('drain_timeout = "10s"', 'drain_timeout = "3s"')
                      .replace('idle_timeout = "300s"', 'idle_timeout = "200s"'))
            assert edited.count('"127.0.0.1:1"') == 1
            config.write_text(edited)
            result = await gw.switch.reload()
            assert result.ok
            assert result.restart_needed == ("gateway.listen", "gateway.drain_timeout",
                                             "enroll.max_body_size")
            # Reloadable settings apply; the gateway still listens where it started.
            assert gw.switch.config.gateway.idle_timeout_s == 200
            assert await trio.to_thread.run_sync(lambda: _send(gw, demo, "demo.switch.test")) == "hello"
            status = json.loads((gw.config.state_dir / "last-reload.json").read_text())
            assert status["restart_needed"] == list(result.restart_needed)
            # Still reported by the next reload: the running values are still the old ones.
            assert (await gw.switch.reload()).restart_needed == result.restart_needed
            nursery.cancel_scope.cancel()


def _metrics(port: int) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {name: float(value) for name, value in
            re.findall(r"^(switch_config_\S+) (\S+)$", text, re.MULTILINE)}


async def test_metrics_show_the_config_generation_and_the_last_reload(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            started = time.time()
            gw = await start_gateway(nursery, directory)
            port = gw.ports["admin"]
            first = await trio.to_thread.run_sync(_metrics, port)
            assert first["switch_config_generation"] == 1
            assert first["switch_config_last_reload_success"] == 1
            assert started - 1 <= first["switch_config_last_reload_timestamp_seconds"] <= time.time()
            assert "switch_config_reloads_total{result=\"success\"}" not in first

            assert (await gw.switch.reload()).ok
            good = await trio.to_thread.run_sync(_metrics, port)
            assert good["switch_config_generation"] == 2
            assert good['switch_config_reloads_total{result="success"}'] == 1
            assert good["switch_config_last_reload_success"] == 1

            config = directory / "switch.toml"
            config.write_text("bogus = 1\n" + config.read_text())
            assert not (await gw.switch.reload()).ok
            bad = await trio.to_thread.run_sync(_metrics, port)
            assert bad["switch_config_generation"] == 2  # the one still in force
            assert bad['switch_config_reloads_total{result="failure"}'] == 1
            assert bad['switch_config_reloads_total{result="success"}'] == 1
            assert bad["switch_config_last_reload_success"] == 0
            assert bad["switch_config_last_reload_timestamp_seconds"] >= \
                good["switch_config_last_reload_timestamp_seconds"]
            nursery.cancel_scope.cancel()


@pytest.mark.slow
async def test_a_sighup_to_switch_serve_adds_a_tenant_and_leaves_other_sessions_alone(
        tmp_path: Path) -> None:
    """A real `switch serve` (a supervisor and two workers), a real SIGHUP."""
    from tests.support.processes import log_ports

    directory = tmp_path / "d"
    make_deployment(directory)
    add_acme_tenant(directory)
    config = directory / "switch.toml"
    acme_section = _acme_section(directory)
    echo = Echo()
    log = tmp_path / "serve.log"
    state = directory / "state"

    def generations() -> list[object]:
        out = []
        for worker in (0, 1):
            try:
                status = json.loads((state / f"last-reload-{worker}.json").read_text())
            except (OSError, ValueError):
                return []
            out.append(status["generation"] if status["ok"] else None)
        return out

    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(trio_websocket.serve_websocket, echo.handler, "127.0.0.1", 0, None)
            echo.port = server.port
            config.write_text(config.read_text().replace(acme_section, "\n").replace(
                'upstream = "ws://127.0.0.1:8080/"', f'upstream = "ws://127.0.0.1:{echo.port}/"')
                .replace('drain_timeout = "10s"', 'drain_timeout = "1s"'))
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "gateway.cli", "-c", str(config), "serve", "--workers", "2"],
                stdout=log.open("wb"), stderr=subprocess.STDOUT)
            try:
                while generations() != [1, 1]:  # noqa: ASYNC110 - the workers' status files
                    await trio.sleep(0.05)
                loaded = load_config(config)
                gw = Gateway(None, loaded, directory, echo, log_ports(log.read_text()))  # type: ignore[arg-type]
                demo = await _hold(gw, Agent(directory / "pki/demo-agent.pem",
                                             directory / "pki/demo-agent.key", []))
                acme = org_agent(directory, "acme-org-ca", "acme-agent", emails=["a@acme.test"])
                with pytest.raises((ssl.SSLError, OSError, WebSocketException, EOFError)):
                    await _hold(gw, acme, ACME_HOST)  # no such tenant yet
                config.write_text(config.read_text() + acme_section.replace(
                    'upstream = "ws://127.0.0.1:1/"', f'upstream = "ws://127.0.0.1:{echo.port}/"'))
                proc.send_signal(signal.SIGHUP)
                while generations() != [2, 2]:  # noqa: ASYNC110
                    await trio.sleep(0.05)
                for _ in range(4):  # whichever worker takes it
                    session = await _hold(gw, acme, ACME_HOST)
                    assert await trio.to_thread.run_sync(session.still_works)
                assert await trio.to_thread.run_sync(demo.still_works)
                assert not demo.closed.is_set()
            finally:
                proc.terminate()
                with trio.fail_after(30):
                    assert await proc.wait() == 0
            nursery.cancel_scope.cancel()
