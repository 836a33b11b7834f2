"""The TLS alert a refused agent receives on the gateway port names the problem (RFC 8446 6.2),
under TLS 1.2 and 1.3, read by ``openssl s_client``: certificate_revoked (44) for a revoked key
or certificate, unsupported_certificate (43) for a CA leaf or a certificate without clientAuth,
bad_certificate (42) for an identity rule, unknown_ca (48) for another tenant's issuer,
certificate_expired (45) for a certificate outside its validity, unrecognized_name (112) for an
SNI no tenant claims; never internal_error (80). The reason stays in the metrics and the log."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
from pathlib import Path

import pytest
import structlog
import trio

from enroll import pki
from tests.support.est import HOST
from tests.support.gateway import (
    Agent,
    Gateway,
    org_agent,
    provisioning_key,
    start_gateway,
    write_agent,
)

ALERT = re.compile(r"SSL alert number (\d+)")


def _alert(gw: Gateway, agent: Agent, tls: str, server_name: str = HOST) -> int | None:
    """The alert number ``openssl s_client`` received presenting ``agent`` (None: none). With
    ``-ign_eof`` it keeps reading after the handshake: under TLS 1.3 a refusal of the client's
    certificate arrives after the client's side of the handshake is done."""
    done = subprocess.run(
        ["openssl", "s_client", tls, "-ign_eof", "-connect", f"127.0.0.1:{gw.ports['gateway']}",
         "-servername", server_name, "-CAfile", str(gw.ca_file),
         "-cert", str(agent.cert), "-key", str(agent.key)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30, check=False)
    found = ALERT.search(done.stderr + done.stdout)
    return int(found.group(1)) if found else None


def _ca_leaf(directory: Path) -> Agent:
    """A CA certificate (CA:true) from the demo organisation CA, used as a client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    ca = x509.load_pem_x509_certificate((directory / "pki/demo-org-ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((directory / "pki/demo-org-ca.key").read_bytes(), None)
    key = pki.generate_key()
    cert = pki.make_ca(pki.name("sub CA"), key, now=dt.datetime.now(dt.UTC),
                       validity=dt.timedelta(days=30), issuer=(ca, ca_key))  # type: ignore[arg-type]
    return write_agent(directory, "ca-leaf", cert, key)


@pytest.mark.parametrize("tls", ["-tls1_2", "-tls1_3"])
async def test_each_refusal_reaches_the_agent_as_the_alert_that_names_it(
        tmp_path: Path, tls: str) -> None:
    directory = tmp_path / "d"
    now = dt.datetime.now(dt.UTC)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, directory)
            secret = provisioning_key(gw, "Fleet")
            revoked_key = await gw.enroll(secret, "laptop-1", tmp_path)
            other_secret = provisioning_key(gw, "Other")
            revoked_cert = await gw.enroll(other_secret, "laptop-2", tmp_path)
            authority = gw.authority()
            try:
                authority.revoke_key("demo", "Fleet", reason="leaked", confirm="Fleet", actor="t")
            finally:
                authority.close()
            gw.switch.issuance.revoke_certificate(
                format(revoked_cert.chain[0].serial_number, "x"), reason="stolen", actor="t")
            await gw.synced()
            demo = Agent(directory / "pki/demo-agent.pem", directory / "pki/demo-agent.key", [])
            cases: dict[str, tuple[Agent, str, int, str]] = {
                "revoked key": (revoked_key, HOST, 44, "key_revoked"),
                "revoked certificate": (revoked_cert, HOST, 44, "certificate_revoked"),
                "CA certificate as leaf": (_ca_leaf(directory), HOST, 43, "leaf_is_ca"),
                "no clientAuth": (org_agent(directory, "demo-org-ca", "server-only",
                                            emails=["s@demo.switch.test"], client=False),
                                  HOST, 43, "no_client_auth"),
                "identity rule": (org_agent(directory, "demo-org-ca", "two-emails",
                                            emails=["a@demo.switch.test", "b@demo.switch.test"]),
                                  HOST, 42, "identity_email_count"),
                "identity not allowed": (org_agent(directory, "demo-org-ca", "outsider",
                                                   emails=["x@evil.example"]),
                                         HOST, 42, "identity_not_allowed"),
                "another tenant's CA": (org_agent(directory, "acme-org-ca", "acme-agent",
                                                  emails=["a@acme.test"]),
                                        HOST, 48, "untrusted_issuer"),
                "expired": (org_agent(directory, "demo-org-ca", "expired",
                                      emails=["e@demo.switch.test"], now=now - dt.timedelta(days=60)),
                            HOST, 45, "certificate_expired"),
                "not yet valid": (org_agent(directory, "demo-org-ca", "early",
                                            emails=["f@demo.switch.test"],
                                            now=now + dt.timedelta(days=2)),
                                  HOST, 45, "certificate_not_yet_valid"),
                "unknown server name": (demo, "nobody.switch.test", 112, "unknown_server_name"),
            }
            seen: dict[str, tuple[int | None, float]] = {}
            with structlog.testing.capture_logs() as logged:
                for name, (agent, server_name, _, reason) in cases.items():
                    before = gw.refusals(reason)
                    alert = await trio.to_thread.run_sync(_alert, gw, agent, tls, server_name)
                    with trio.move_on_after(5):
                        while gw.refusals(reason) == before:  # noqa: ASYNC110 - the server's count
                            await trio.sleep(0.02)
                    seen[name] = (alert, gw.refusals(reason) - before)
            nursery.cancel_scope.cancel()
    assert seen == {name: (alert, 1) for name, (_, _, alert, _) in cases.items()}
    refused = [entry["reason"] for entry in logged if entry["event"] == "handshake_refused"]
    assert refused == [reason for _, _, _, reason in cases.values()]
