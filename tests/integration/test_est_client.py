"""The reference EST client against a real Switch on loopback; crash consistency of the store."""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
from cryptography import x509

from config.load import load_config
from enroll import pki
from enroll.authority import Authority
from enroll.issuance import Issuance
from gateway.client.est_client import (
    EstClient,
    EstClientError,
    EstServer,
    make_csr,
    renew_before_of,
    spki_sha256,
)
from tests.support.est import HOST, enable_with_key, make_deployment, start


def _server(switch_dir: Path, port: int, pin: str | None = None, ca: bool = True) -> EstServer:
    return EstServer("127.0.0.1", port, HOST,
                     ca_file=switch_dir / "pki" / "dev-root-ca.pem" if ca else None, pin_sha256=pin)


async def test_reference_client_enrolls_renews_and_pins_the_server(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    config = make_deployment(directory)
    secret = enable_with_key(config)
    server_cert = x509.load_pem_x509_certificates((directory / "pki/server.pem").read_bytes())[0]
    pin = spki_sha256(server_cert)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            switch = await start(nursery, config, directory)
            key = pki.generate_key()
            async with EstClient(_server(directory, switch.enroll_port, pin=pin, ca=False)) as client:
                [ca] = await client.cacerts()
                cert = await client.simpleenroll(make_csr("agent-9", key), secret)
                cert.verify_directly_issued_by(ca)
                # keep-alive: several requests on one connection
                await client.cacerts()
            cert_file, key_file = tmp_path / "c.pem", tmp_path / "c.key"
            cert_file.write_bytes(pki.cert_pem(cert))
            key_file.write_bytes(pki.key_pem(key))
            async with EstClient(_server(directory, switch.enroll_port),
                                 client_cert=(cert_file, key_file)) as renewer:
                renewed = await renewer.simplereenroll(make_csr("agent-9", pki.generate_key()))
            assert renewed.subject == cert.subject and renewed.serial_number != cert.serial_number
            async with EstClient(_server(directory, switch.enroll_port, pin="00" * 32, ca=False)) as bad:
                with pytest.raises(EstClientError, match="server_pin_mismatch"):
                    await bad.cacerts()
            async with EstClient(_server(directory, switch.enroll_port)) as wrong:
                with pytest.raises(EstClientError) as info:
                    await wrong.simpleenroll(make_csr("agent-10", key), "swk_nope")
                assert (info.value.status, info.value.reason) == (401, "bad_credentials")
            nursery.cancel_scope.cancel()


async def test_reference_client_returns_the_renew_before_window_of_the_keys_profile(
        tmp_path: Path) -> None:
    directory = tmp_path / "d"
    make_deployment(directory)
    path = directory / "switch.toml"
    path.write_text(path.read_text()
                    + '\n[profiles.kiosk]\nvalidity = "2d"\nrenew_before = "90m"\n')
    config = load_config(path)
    fleet = enable_with_key(config)
    kiosks = enable_with_key(config, "Kiosks", profile="kiosk")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            switch = await start(nursery, config, directory)
            key = pki.generate_key()
            async with EstClient(_server(directory, switch.enroll_port)) as client:
                tenant_default = await client.simpleenroll_issued(
                    make_csr("laptop-1", pki.generate_key()), fleet)
                issued = await client.simpleenroll_issued(make_csr("kiosk-1", key), kiosks)
            assert tenant_default.renew_before == dt.timedelta(days=7)
            assert issued.renew_before == dt.timedelta(minutes=90)
            cert = issued.certificate
            # the kiosk profile's 2 days issued it (not_before is backdated a little for skew)
            assert cert.not_valid_after_utc - cert.not_valid_before_utc < dt.timedelta(days=3)
            cert_file, key_file = tmp_path / "c.pem", tmp_path / "c.key"
            cert_file.write_bytes(pki.cert_pem(cert))
            pki.write_private(key_file, pki.key_pem(key))
            async with EstClient(_server(directory, switch.enroll_port),
                                 client_cert=(cert_file, key_file)) as renewer:
                renewed = await renewer.simplereenroll_issued(make_csr("kiosk-1", pki.generate_key()))
            assert renewed.renew_before == dt.timedelta(minutes=90)
            assert renewed.certificate.subject == cert.subject
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("headers", "window"), [
    ({"switch-renew-before": "3600"}, dt.timedelta(hours=1)),
    ({"switch-renew-before": " 0 "}, dt.timedelta(0)),
    ({}, None),  # another EST server, an older Switch
    ({"switch-renew-before": "-5"}, None),
    ({"switch-renew-before": "1.5"}, None),
    ({"switch-renew-before": "\u0663"}, None),  # a digit, but not an ASCII one
    ({"switch-renew-before": "9" * 11}, None),  # beyond any certificate's lifetime
])
def test_a_missing_or_malformed_window_is_none(headers: dict[str, str],
                                                window: dt.timedelta | None) -> None:
    assert renew_before_of(headers) == window


async def test_concurrent_enrollments_all_get_distinct_serials(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    config = make_deployment(directory)
    secret = enable_with_key(config)
    certs: list[x509.Certificate] = []
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            switch = await start(nursery, config, directory)

            async def agent(i: int) -> None:
                async with EstClient(_server(directory, switch.enroll_port)) as client:
                    certs.append(await client.simpleenroll(make_csr(f"agent-{i}", pki.generate_key()),
                                                           secret))

            async with trio.open_nursery() as agents:
                for i in range(40):
                    agents.start_soon(agent, i)
            nursery.cancel_scope.cancel()
    assert len({c.serial_number for c in certs}) == 40
    authority = Authority.open(config)
    assert len(Issuance(authority).list_certificates("demo")) == 40
    assert authority.get_key("demo", "Fleet").certificates_issued == 40
    authority.close()


def _start_server(config_path: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    out = log.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "-c", str(config_path), "serve",
                             "--workers", "1"],
                            stdout=out, stderr=subprocess.STDOUT)
    for _ in range(200):
        match = re.search(r"address=127\.0\.0\.1:(\d+) listener=enroll", log.read_text())
        if match:
            return proc, int(match.group(1))
        if proc.poll() is not None:
            raise AssertionError(log.read_text())
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("server did not start: " + log.read_text())


async def test_a_server_killed_mid_enrollment_restarts_with_a_consistent_store(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    config = make_deployment(directory)
    secret = enable_with_key(config)
    proc, port = _start_server(config.path, tmp_path / "server1.log")
    received: list[x509.Certificate] = []
    enough = trio.Event()

    async def agent(i: int) -> None:
        try:
            async with EstClient(_server(directory, port), timeout_s=10) as client:
                for j in range(50):
                    received.append(await client.simpleenroll(
                        make_csr(f"agent-{i}-{j}", pki.generate_key()), secret))
                    if len(received) >= 20:
                        enough.set()
        except EstClientError:
            return  # the server died under us

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(agent, i)
            await enough.wait()
            os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    db = sqlite3.connect(config.state_dir / "switch.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = {r[0] for r in db.execute("SELECT sha256 FROM certificates")}
    count = db.execute("SELECT certificates_issued FROM provisioning_keys").fetchone()[0]
    db.close()
    # Nothing accepted is lost: every certificate an agent received is recorded.
    assert {pki.sha256_fingerprint(c) for c in received} <= stored
    assert count == len(stored)

    proc2, port2 = _start_server(config.path, tmp_path / "server2.log")
    try:
        with trio.fail_after(30):
            async with EstClient(_server(directory, port2)) as client:
                await client.simpleenroll(make_csr("after-restart", pki.generate_key()), secret)
    finally:
        proc2.send_signal(signal.SIGTERM)
        assert proc2.wait(timeout=20) == 0
    authority = Authority.open(config)
    assert authority.verify_audit().ok
    authority.close()
