"""Seed 000's "upload your CA certificates or specific client certificates": a tenant's
``organisation_certs`` trusts exactly those leaves (PEM files, or SHA-256 fingerprints), under the
tenant's identity rule, as organisation certificates; nothing they sign, and no other certificate
of their CA while the CA itself is not configured. Removing a pin on reload closes its sessions.
Real handshakes, TLS 1.2 and 1.3."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives import serialization
from websockets.exceptions import WebSocketException

from enroll import pki
from tests.support.est import make_deployment
from tests.support.gateway import (
    NOW,
    Agent,
    Gateway,
    LiveAgent,
    add_acme_tenant,
    org_agent,
    start_gateway,
    write_agent,
)

DOMAIN = "demo.switch.test"
TLS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


def self_signed(directory: Path, name: str, *, email: str) -> Agent:
    """A self-signed client certificate (CA:false), as a device might make for itself."""
    key = pki.generate_key()
    subject = pki.name(name)
    signer = pki.make_ca(subject, key, now=NOW, validity=dt.timedelta(days=30))
    cert = pki.make_leaf(subject, key.public_key(), (signer, key), now=NOW,
                         validity=dt.timedelta(days=30), emails=[email])
    return write_agent(directory, name, cert, key)


def colons(sha256_hex: str) -> str:
    return ":".join(sha256_hex[i:i + 2] for i in range(0, len(sha256_hex), 2)).upper()


class Fleet:
    """A demo tenant that trusts two pinned leaves and no organisation CA: one issued by the
    demo organisation CA (pinned as a PEM file), one self-signed (pinned by fingerprint)."""

    def __init__(self, directory: Path) -> None:
        make_deployment(directory)
        add_acme_tenant(directory)
        self.pinned = org_agent(directory, "demo-org-ca", "pinned-1",
                                emails=[f"pinned-1@{DOMAIN}"])
        self.unpinned = org_agent(directory, "demo-org-ca", "unpinned-1",
                                  emails=[f"unpinned-1@{DOMAIN}"])
        self.kiosk = self_signed(directory, "kiosk-7", email=f"kiosk-7@{DOMAIN}")
        self.kiosk_pin = colons(pki.sha256_fingerprint(self.kiosk.chain[0]))
        config = directory / "switch.toml"
        self.before = config.read_text()
        config.write_text(self.before.replace(
            'organisation_cas = ["pki/demo-org-ca.pem"]', 'organisation_cas = []').replace(
            'organisation_certs = []',
            f'organisation_certs = ["pinned-1.pem", "sha256:{self.kiosk_pin}"]'))


async def _refused(gw: Gateway, agent: Agent, tls: ssl.TLSVersion) -> None:
    with pytest.raises((WebSocketException, OSError, ssl.SSLError)):
        ws = await trio.to_thread.run_sync(lambda: gw.connect(agent, max_version=tls))
        await trio.to_thread.run_sync(ws.recv, 5)  # TLS 1.3: the refusal comes on a read


@pytest.mark.parametrize("tls", TLS, ids=["tls1.2", "tls1.3"])
async def test_a_pinned_client_certificate_connects_and_an_unpinned_one_from_the_same_ca_does_not(
        tmp_path: Path, tls: ssl.TLSVersion) -> None:
    fleet = Fleet(tmp_path / "d")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, tmp_path / "d")
            for agent, identity in ((fleet.pinned, f"pinned-1@{DOMAIN}"),
                                    (fleet.kiosk, f"kiosk-7@{DOMAIN}")):
                live = await trio.to_thread.run_sync(LiveAgent, gw, agent, tls)
                _, headers = gw.echo.requests[-1]
                assert (headers["x-switch-identity"], headers["x-switch-trust"]) == \
                    (identity, "organisation")
                assert headers["x-switch-cert-sha256"] == pki.sha256_fingerprint(agent.chain[0])
                assert "x-switch-key-id" not in headers
                await trio.to_thread.run_sync(live.ws.close)
            before = gw.refusals("untrusted_issuer", "demo")
            await _refused(gw, fleet.unpinned, tls)
            assert gw.refusals("untrusted_issuer", "demo") == before + 1
            # The pinned leaf with its CA sent along: still the pin that admits it, alone.
            ca = (tmp_path / "d/pki/demo-org-ca.pem").read_bytes()
            with_ca = Agent(tmp_path / "with-ca.pem", fleet.pinned.key, [])
            with_ca.cert.write_bytes(fleet.pinned.cert.read_bytes() + ca)
            live = await trio.to_thread.run_sync(LiveAgent, gw, with_ca, tls)
            await trio.to_thread.run_sync(live.ws.close)
            unpinned_with_ca = Agent(tmp_path / "unpinned-with-ca.pem", fleet.unpinned.key, [])
            unpinned_with_ca.cert.write_bytes(fleet.unpinned.cert.read_bytes() + ca)
            await _refused(gw, unpinned_with_ca, tls)
            nursery.cancel_scope.cancel()


async def test_a_pinned_leaf_vouches_for_nothing_it_signs_and_still_meets_the_leaf_rules(
        tmp_path: Path) -> None:
    directory = tmp_path / "d"
    fleet = Fleet(directory)
    key = pki.generate_key()
    kiosk_key = serialization.load_pem_private_key(fleet.kiosk.key.read_bytes(), None)
    child = pki.make_leaf(pki.name("child"), key.public_key(), (fleet.kiosk.chain[0], kiosk_key),  # type: ignore[arg-type]
                          now=NOW, validity=dt.timedelta(days=1), emails=[f"child@{DOMAIN}"])
    signed_by_pin = write_agent(directory, "child", child, key, [fleet.kiosk.chain[0]])
    no_client_auth = org_agent(directory, "demo-org-ca", "server-only",
                               emails=[f"server-only@{DOMAIN}"], client=False)
    no_email = org_agent(directory, "demo-org-ca", "no-email")
    other_domain = org_agent(directory, "demo-org-ca", "elsewhere", emails=["x@elsewhere.test"])
    config = directory / "switch.toml"
    pins = ", ".join(f'"{a.cert.name}"' for a in (no_client_auth, no_email, other_domain))
    config.write_text(config.read_text().replace(
        'organisation_certs = ["pinned-1.pem", ', f"organisation_certs = [{pins}, "))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, directory)
            for agent, reason in ((signed_by_pin, "untrusted_issuer"),
                                  (no_client_auth, "no_client_auth"),
                                  (no_email, "identity_email_count"),
                                  (other_domain, "identity_not_allowed")):
                before = gw.refusals(reason, "demo")
                await _refused(gw, agent, ssl.TLSVersion.TLSv1_3)
                assert gw.refusals(reason, "demo") == before + 1, reason
            nursery.cancel_scope.cancel()


async def test_a_reload_removing_a_pin_closes_its_sessions_and_no_other(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    fleet = Fleet(directory)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, directory)
            pinned = await trio.to_thread.run_sync(LiveAgent, gw, fleet.pinned)
            kiosk = await trio.to_thread.run_sync(LiveAgent, gw, fleet.kiosk)
            config = directory / "switch.toml"
            config.write_text(config.read_text().replace(f'"sha256:{fleet.kiosk_pin}"', ""))
            result = await gw.switch.reload()
            assert result.ok, result.errors
            await trio.to_thread.run_sync(kiosk.closed.wait, 5)
            assert kiosk.close_code == 1008
            assert await trio.to_thread.run_sync(pinned.still_works)
            evicted = [s for m in gw.switch.metrics.evictions.collect() for s in m.samples
                       if s.name.endswith("_total") and s.labels["reason"] == "pin_removed"]
            assert [s.value for s in evicted] == [1.0]
            await _refused(gw, fleet.kiosk, ssl.TLSVersion.TLSv1_2)
            nursery.cancel_scope.cancel()
