"""The TLS 1.2 cipher suites both agent-facing ports accept, read by ``openssl s_client``: ECDHE
with AES-GCM or ChaCha20-Poly1305 only by default, with an RSA and with an EC server certificate;
TLS 1.3 unaffected; ``[tls] ciphers`` widens the list."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from enroll import pki
from tests.support.est import HOST, make_deployment
from tests.support.gateway import ACME_HOST, Gateway, add_acme_tenant, start_gateway

NOW = dt.datetime.now(dt.UTC)
#: What each kind of server certificate can sign TLS 1.2 key exchanges with.
AUTH = {"ec-p256": "ECDSA", "rsa-2048": "RSA"}


def _server_certificate(directory: Path, key_type: str) -> None:
    """Issue the deployment's server certificate again, on a ``key_type`` key."""
    pkidir = directory / "pki"
    root = x509.load_pem_x509_certificate((pkidir / "dev-root-ca.pem").read_bytes())
    root_key = serialization.load_pem_private_key((pkidir / "dev-root-ca.key").read_bytes(), None)
    key = pki.generate_key(key_type)
    cert = pki.make_leaf(pki.name(HOST), key.public_key(), (root, root_key),  # type: ignore[arg-type]
                         now=NOW, validity=dt.timedelta(days=30),
                         dns_names=[HOST, "localhost", ACME_HOST], server=True, client=False)
    (pkidir / "server.pem").write_bytes(pki.cert_pem(cert) + pki.cert_pem(root))
    pki.write_private(pkidir / "server.key", pki.key_pem(key))


def _deploy(directory: Path, key_type: str, tls_extra: str = "") -> None:
    make_deployment(directory)
    add_acme_tenant(directory)
    _server_certificate(directory, key_type)
    if tls_extra:
        config = directory / "switch.toml"
        config.write_text(config.read_text().replace("[tls]\n", f"[tls]\n{tls_extra}\n", 1))


def _s_client(gw: Gateway, port: str, *options: str) -> str | None:
    """The suite ``openssl s_client`` agreed on with ``port`` (the demo organisation agent's
    certificate presented), or None when the handshake failed."""
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{gw.ports[port]}", "-servername", HOST,
         "-CAfile", str(gw.ca_file), "-verify_return_error",
         "-cert", str(gw.directory / "pki/demo-agent.pem"),
         "-key", str(gw.directory / "pki/demo-agent.key"), *options],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20, check=False)
    found = re.search(r"Cipher is (\S+)", done.stdout)
    if done.returncode != 0 or found is None or found.group(1) == "(NONE)":
        return None
    return found.group(1)


def _refused_and_accepted(gw: Gateway, key_type: str) -> dict[str, dict[str, str | None]]:
    auth = AUTH[key_type]
    offers = {
        "static RSA, AES-GCM": ("-tls1_2", "-cipher", "AES128-GCM-SHA256"),
        "static RSA, CBC": ("-tls1_2", "-cipher", "AES256-SHA"),
        "ECDHE, CBC with SHA-1": ("-tls1_2", "-cipher", f"ECDHE-{auth}-AES128-SHA"),
        "ECDHE, CBC with SHA-256": ("-tls1_2", "-cipher", f"ECDHE-{auth}-AES128-SHA256"),
        "ECDHE, AES-GCM": ("-tls1_2", "-cipher", f"ECDHE-{auth}-AES128-GCM-SHA256"),
        "ECDHE, ChaCha20": ("-tls1_2", "-cipher", f"ECDHE-{auth}-CHACHA20-POLY1305"),
        "TLS 1.3": ("-tls1_3",),
    }
    return {port: {name: _s_client(gw, port, *args) for name, args in offers.items()}
            for port in ("gateway", "enroll", "api")}


@pytest.mark.parametrize("key_type", ["rsa-2048", "ec-p256"])
async def test_tls12_offers_only_forward_secret_aead_suites_on_every_port(
        tmp_path: Path, key_type: str) -> None:
    _deploy(tmp_path / "d", key_type)
    auth = AUTH[key_type]
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, tmp_path / "d")
            seen = await trio.to_thread.run_sync(_refused_and_accepted, gw, key_type)
            nursery.cancel_scope.cancel()
    expected = {
        "static RSA, AES-GCM": None, "static RSA, CBC": None,
        "ECDHE, CBC with SHA-1": None, "ECDHE, CBC with SHA-256": None,
        "ECDHE, AES-GCM": f"ECDHE-{auth}-AES128-GCM-SHA256",
        "ECDHE, ChaCha20": f"ECDHE-{auth}-CHACHA20-POLY1305",
        "TLS 1.3": "TLS_AES_256_GCM_SHA384",
    }
    assert seen == {"gateway": expected, "enroll": expected, "api": expected}


async def test_tls_ciphers_setting_widens_tls12_for_operators_who_must(tmp_path: Path) -> None:
    _deploy(tmp_path / "d", "rsa-2048", 'ciphers = "ECDHE+AESGCM:AES128-GCM-SHA256"')
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, tmp_path / "d")
            seen = await trio.to_thread.run_sync(lambda: {
                port: _s_client(gw, port, "-tls1_2", "-cipher", "AES128-GCM-SHA256")
                for port in ("gateway", "enroll", "api")})
            nursery.cancel_scope.cancel()
    assert seen == {"gateway": "AES128-GCM-SHA256", "enroll": "AES128-GCM-SHA256",
                    "api": "AES128-GCM-SHA256"}
