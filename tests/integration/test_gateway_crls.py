"""Organisation CRLs over real handshakes: a leaf under an organisation intermediate, whose issuer
field spells the intermediate's name in another case (OpenSSL chains it all the same), is
covered by the intermediate's CRL once a reload adds it: its live session closes, its new
handshakes are refused, its sibling's session stays."""

from __future__ import annotations

import datetime as dt
import ssl
import threading
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from websockets.exceptions import ConnectionClosed, WebSocketException

from enroll import pki
from tests.support.est import make_deployment
from tests.support.gateway import Agent, Gateway, start_gateway, write_agent

NOW = dt.datetime.now(dt.UTC)
ISSUING = "demo organisation issuing CA"


def _issuing_ca(directory: Path) -> tuple[x509.Certificate, pki.PrivateKey]:
    """The demo tenant's organisation CAs: a root and an issuing intermediate under it, both
    configured (an intermediate's CRL must verify against a configured CA)."""
    pkidir = directory / "pki"
    root_key, key = pki.generate_key(), pki.generate_key()
    root = pki.make_ca(pki.name("demo organisation root"), root_key,
                       now=NOW - dt.timedelta(hours=1), validity=dt.timedelta(days=30),
                       path_length=None)
    ca = pki.make_ca(pki.name(ISSUING), key, now=NOW - dt.timedelta(hours=1),
                     validity=dt.timedelta(days=30), issuer=(root, root_key), path_length=0)
    (pkidir / "demo-org-root.pem").write_bytes(pki.cert_pem(root))
    (pkidir / "demo-issuing-ca.pem").write_bytes(pki.cert_pem(ca))
    config = directory / "switch.toml"
    config.write_text(config.read_text().replace(
        'organisation_cas = ["pki/demo-org-ca.pem"]',
        'organisation_cas = ["pki/demo-org-root.pem", "pki/demo-issuing-ca.pem"]', 1))
    return ca, key


def _agent(directory: Path, issuing: tuple[x509.Certificate, pki.PrivateKey], name: str) -> Agent:
    ca, ca_key = issuing
    key = pki.generate_key()
    cert = (x509.CertificateBuilder()
            .subject_name(pki.name(name))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUING.upper())]))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(hours=1))
            .not_valid_after(NOW + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(
                [x509.RFC822Name(f"{name}@demo.switch.test")]), critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    assert cert.issuer != ca.subject
    return write_agent(directory, name, cert, key, [ca])


def _write_crl(directory: Path, issuing: tuple[x509.Certificate, pki.PrivateKey],
               revoked: x509.Certificate) -> None:
    ca, key = issuing
    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
           .last_update(NOW - dt.timedelta(minutes=1)).next_update(NOW + dt.timedelta(days=7))
           .add_revoked_certificate(x509.RevokedCertificateBuilder()
                                    .serial_number(revoked.serial_number)
                                    .revocation_date(NOW - dt.timedelta(minutes=1)).build())
           .sign(key, hashes.SHA256()))  # type: ignore[arg-type]
    (directory / "pki/demo-issuing.crl").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    config = directory / "switch.toml"
    config.write_text(config.read_text().replace(
        "organisation_crls = []", 'organisation_crls = ["pki/demo-issuing.crl"]', 1))


class Held:
    """A session held open in a thread; the server's close code and reason once it closes."""

    def __init__(self, gw: Gateway, agent: Agent) -> None:
        self.ws = gw.connect(agent)
        self.ws.send("hello")
        assert self.ws.recv(timeout=10) == "hello"
        self.closed = threading.Event()
        self.close: tuple[int, str] | None = None
        threading.Thread(target=self._wait, daemon=True).start()

    def _wait(self) -> None:
        try:
            while True:
                self.ws.recv()
        except ConnectionClosed as exc:
            self.close = (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else None
        finally:
            self.closed.set()


async def test_a_reload_adding_an_intermediates_crl_closes_the_session_of_the_leaf_it_lists(
        tmp_path: Path) -> None:
    directory = tmp_path / "d"
    make_deployment(directory)
    issuing = _issuing_ca(directory)
    lost, kept = _agent(directory, issuing, "lost"), _agent(directory, issuing, "kept")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, directory)
            lost_session = await trio.to_thread.run_sync(Held, gw, lost)
            kept_session = await trio.to_thread.run_sync(Held, gw, kept)
            _write_crl(directory, issuing, lost.chain[0])
            assert (await gw.switch.reload()).ok
            with trio.fail_after(5):
                await trio.to_thread.run_sync(lost_session.closed.wait)
            assert lost_session.close == (1008, "certificate_revoked")
            assert not kept_session.closed.is_set()
            again = await trio.to_thread.run_sync(Held, gw, kept)  # the sibling still connects
            assert not again.closed.is_set()
            with pytest.raises((ssl.SSLError, OSError, WebSocketException, EOFError)):
                await trio.to_thread.run_sync(Held, gw, lost)  # and the listed leaf cannot
            nursery.cancel_scope.cancel()
