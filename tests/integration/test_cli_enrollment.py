"""`switch certs` and `switch requests` against a real deployment and store."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import ssl
import subprocess
import sys
from pathlib import Path

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from config.load import load_config
from enroll import pki
from enroll.authority import Authority
from enroll.est_service import EstRequest, EstService
from enroll.issuance import Issuance
from tests.support.cli import cli_for
from tests.support.est import enable_with_key, make_deployment, start


def _switch(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "-c", str(config), *args],
                          capture_output=True, text=True, timeout=60)


_KEYS: dict[str, pki.PrivateKey] = {}


def _enroll(config_path: Path, secret: str, cn: str, op: str = "simpleenroll") -> int:
    """Enroll through the EST service in-process; the same CN repeats the same CSR."""
    config = load_config(config_path)
    authority = Authority.open(config)
    try:
        key = _KEYS.setdefault(cn, pki.generate_key())
        csr = x509.CertificateSigningRequestBuilder().subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])).sign(
            key, hashes.SHA256())  # type: ignore[arg-type]
        body = base64.encodebytes(csr.public_bytes(serialization.Encoding.DER))
        auth = b"Bearer " + secret.encode()
        reply = EstService(config, Issuance(authority)).handle(
            EstRequest("POST", f"/.well-known/est/{op}",
                       {"content-type": b"application/pkcs10", "authorization": auth}, body,
                       "demo.switch.test", None, "127.0.0.1"), dt.datetime.now(dt.UTC), 0.0)
        return reply.status
    finally:
        authority.close()


def test_certs_list_and_revoke(tmp_path: Path, cli_mode: str) -> None:
    config = make_deployment(tmp_path / "d")
    with cli_for(cli_mode, config.path) as switch:
        secret = enable_with_key(config)
        assert _enroll(config.path, secret, "agent-1") == 200
        listed = json.loads(switch("certs", "list", "demo", "--json").stdout)
        assert len(listed) == 1 and listed[0]["state"] == "valid" and "pem" not in listed[0]
        serial = listed[0]["serial"]
        no_reason = switch("certs", "revoke", serial)
        assert no_reason.returncode == 1 and "reason_required" in no_reason.stderr
        done = switch("certs", "revoke", serial.upper(), "--reason", "stolen")
        assert done.returncode == 0, done.stderr
        assert json.loads(switch("certs", "list", "demo", "--json").stdout)[0]["state"] \
            == "revoked"
        unknown = switch("certs", "revoke", "abc", "--reason", "x")
        assert unknown.returncode == 3 and "unknown_certificate" in unknown.stderr
        audit = json.loads(switch("audit", "list", "--json").stdout)
        assert any(e["action"] == "certificate.revoked" and e["reason"] == "stolen" for e in audit)


def test_requests_list_approve_reject(tmp_path: Path, cli_mode: str) -> None:
    config = make_deployment(tmp_path / "d")
    with cli_for(cli_mode, config.path) as switch:
        secret = enable_with_key(config, profile="manual")
        assert _enroll(config.path, secret, "agent-1") == 202
        assert _enroll(config.path, secret, "agent-2") == 202
        # Filed in the same second, they are listed in either order.
        pending = sorted(json.loads(switch("requests", "list", "--json").stdout),
                         key=lambda r: str(r["subject"]))
        assert [r["subject"] for r in pending] == ["agent-1", "agent-2"]
        assert switch("requests", "approve", pending[0]["id"]).returncode == 0
        rejected = switch("requests", "reject", pending[1]["id"], "--reason", "who?")
        assert rejected.returncode == 0, rejected.stderr
        again = switch("requests", "approve", pending[1]["id"])
        assert again.returncode == 1 and "wrong_key_state" in again.stderr
        assert _enroll(config.path, secret, "agent-1") == 200
        assert switch("requests", "list", "--json").stdout.strip() == "[]"


def test_certs_list_by_key_shows_only_the_certificates_that_key_authorised(tmp_path: Path, cli_mode: str) -> None:
    config = make_deployment(tmp_path / "d")
    with cli_for(cli_mode, config.path) as switch:
        fleet = enable_with_key(config, "Fleet")
        authority = Authority.open(config)
        kiosks_key, kiosks = authority.generate_key("demo", "Kiosks", actor="t")
        fleet_id = authority.get_key("demo", "Fleet").id
        authority.close()
        assert _enroll(config.path, fleet, "agent-1") == 200
        assert _enroll(config.path, kiosks, "kiosk-1") == 200
        assert _enroll(config.path, kiosks, "kiosk-2") == 200

        def listed(*args: str) -> list[str]:
            done = switch("certs", "list", "demo", *args, "--json")
            assert done.returncode == 0, done.stderr
            return sorted(r["subject"] for r in json.loads(done.stdout))  # same second: any order

        assert listed() == ["CN=agent-1,OU=demo", "CN=kiosk-1,OU=demo", "CN=kiosk-2,OU=demo"]
        assert listed("--key", "Kiosks") == ["CN=kiosk-1,OU=demo", "CN=kiosk-2,OU=demo"]
        assert listed("--key", kiosks_key.id) == listed("--key", "Kiosks")  # by id as by name
        assert listed("--key", fleet_id) == ["CN=agent-1,OU=demo"]
        table = switch("certs", "list", "demo", "--key", "Fleet").stdout
        assert "CN=agent-1,OU=demo" in table and "kiosk" not in table
        unknown = switch("certs", "list", "demo", "--key", "Nobody")
        assert unknown.returncode == 3 and "unknown_key" in unknown.stderr


def test_requests_list_says_which_requests_are_for_a_server_made_key(tmp_path: Path, cli_mode: str) -> None:
    config = make_deployment(tmp_path / "d")
    with cli_for(cli_mode, config.path) as switch:
        secret = enable_with_key(config, profile="manual")
        assert _enroll(config.path, secret, "agent-1") == 202
        assert _enroll(config.path, secret, "kiosk-1", op="serverkeygen") == 202
        pending = sorted(json.loads(switch("requests", "list", "--json").stdout),
                         key=lambda r: str(r["subject"]))
        assert [(r["subject"], r["operation"]) for r in pending] == [("agent-1", "simpleenroll"),
                                                                     ("kiosk-1", "serverkeygen")]
        table = switch("requests", "list").stdout
        assert "OPERATION" in table and "serverkeygen" in table
        assert switch("requests", "approve", pending[1]["id"]).returncode == 0
        assert _enroll(config.path, secret, "kiosk-1", op="serverkeygen") == 200
        assert _enroll(config.path, secret, "kiosk-1", op="serverkeygen") == 202  # a new request
        assert len(json.loads(switch("requests", "list", "--all", "--json").stdout)) == 3


async def test_a_stalled_handshake_is_cut_at_the_deadline(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    path = make_deployment(directory).path
    path.write_text(path.read_text().replace('request_timeout = "10s"', 'request_timeout = "1s"'))
    config = load_config(path)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            switch = await start(nursery, config, directory)
            stream = await trio.open_tcp_stream("127.0.0.1", switch.enroll_port)
            started = trio.current_time()
            assert await stream.receive_some(100) == b""  # closed by the server, nothing sent
            assert 0.9 < trio.current_time() - started < 5
            nursery.cancel_scope.cancel()


async def test_an_idle_connection_after_the_handshake_is_closed_at_enroll_idle_timeout(
        tmp_path: Path) -> None:
    directory = tmp_path / "d"
    path = make_deployment(directory).path
    text = path.read_text()
    enroll = text.index("[enroll]")
    assert 'idle_timeout = "30s"' in text[enroll:]  # switch init writes the default
    path.write_text(text[:enroll] + text[enroll:].replace('idle_timeout = "30s"',
                                                          'idle_timeout = "1s"', 1))
    config = load_config(path)
    assert config.enroll.idle_timeout_s == 1.0 and config.gateway.idle_timeout_s == 300.0
    context = ssl.create_default_context(cafile=str(directory / "pki/dev-root-ca.pem"))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            switch = await start(nursery, config, directory)
            tcp = await trio.open_tcp_stream("127.0.0.1", switch.enroll_port)
            stream = trio.SSLStream(tcp, context, server_hostname="demo.switch.test")
            await stream.do_handshake()
            started = trio.current_time()
            with contextlib.suppress(trio.BrokenResourceError):  # closed without close_notify
                assert await stream.receive_some(100) == b""  # closed, nothing sent
            assert 0.9 < trio.current_time() - started < 5
            await stream.aclose()
            nursery.cancel_scope.cancel()


def test_enroll_idle_timeout_must_be_a_duration(tmp_path: Path) -> None:
    path = make_deployment(tmp_path / "d").path
    text = path.read_text()
    enroll = text.index("[enroll]")
    path.write_text(text[:enroll] + text[enroll:].replace('idle_timeout = "30s"',
                                                          'idle_timeout = "soon"', 1))
    check = _switch(path, "config", "check")
    assert check.returncode == 1 and "enroll.idle_timeout" in check.stderr, check.stderr
