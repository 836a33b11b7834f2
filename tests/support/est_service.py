"""The EST service driven in-process on a real SQLite store: ``Env`` (a service, its authority
and a provisioning key) and CSRs to send it."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from config.model import Profile, ServerTLS, SwitchConfig, Tenant
from enroll import pki
from enroll.authority import Authority
from enroll.est_service import EstReply, EstRequest, EstService
from enroll.issuance import Issuance

NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)


@attrs.define
class Env:
    service: EstService
    authority: Authority
    issuance: Issuance
    secret: str
    mono: float = 0.0

    def call(self, op: str, body: bytes = b"", *, auth: str | None = "key", label: str | None = None,
             sni: str | None = "acme.test", chain: list[x509.Certificate] | None = None,
             content_type: bytes = b"application/pkcs10", source: str = "10.0.0.1",
             headers: dict[str, bytes] | None = None, now: dt.datetime = NOW) -> EstReply:
        all_headers: dict[str, bytes] = {"content-type": content_type, **(headers or {})}
        if auth == "key":
            all_headers["authorization"] = b"Basic " + base64.b64encode(f"agent:{self.secret}".encode())
        elif auth is not None:
            all_headers["authorization"] = auth.encode()
        path = f"/.well-known/est/{label + '/' if label else ''}{op}"
        self.mono += 0.01
        return self.service.handle(
            EstRequest("GET" if op in ("cacerts", "csrattrs") else "POST", path, all_headers, body,
                       sni, chain[0].public_bytes(serialization.Encoding.DER) if chain else None,
                       source), now, self.mono)


def make_env(tmp_path: Path) -> Iterator[Env]:
    config = SwitchConfig(
        path=tmp_path / "switch.toml", state_dir=tmp_path / "state",
        tls=ServerTLS(cert_file=tmp_path / "x", key_file=tmp_path / "y"),
        profiles={"default": Profile("default"),
                  "manual": Profile("manual", approval="manual"),
                  "strict": Profile("strict", key_types=("ec-p384",), subject_pattern=r"dev-\d+"),
                  "kiosk": Profile("kiosk", validity_s=86400, renew_before_s=3600),
                  "gated": Profile("gated", approval="manual", renew_before_s=2 * 86400),
                  "unique": Profile("unique", unique_subject=True),
                  "gated-unique": Profile("gated-unique", approval="manual", unique_subject=True)},
        tenants={"acme": Tenant("acme", ("acme.test",)), "other": Tenant("other", ("other.test",))},
    )
    authority = Authority.open(config, clock=lambda: NOW, create=True)
    authority.enable_service("acme", actor="t")
    authority.enable_service("other", actor="t")
    _, secret = authority.generate_key("acme", "Fleet", actor="t")
    issuance = Issuance(authority)
    yield Env(EstService(config, issuance), authority, issuance, secret)
    authority.close()


def csr(cn: str = "agent-1", key: pki.PrivateKey | None = None, *, extensions: bool = False,
        extra_subject: bool = False) -> tuple[bytes, pki.PrivateKey]:
    key = key or pki.generate_key()
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if extra_subject:
        subject.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Evil Corp"))
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(subject))
    if extensions:
        builder = (builder
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName("bank.example"),
                                                               x509.RFC822Name("ceo@acme.test")]),
                                  critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                         ExtendedKeyUsageOID.CODE_SIGNING]),
                                  critical=False))
    request = builder.sign(key, hashes.SHA256())  # type: ignore[arg-type]
    return base64.encodebytes(request.public_bytes(serialization.Encoding.DER)), key


def issued(reply: EstReply) -> x509.Certificate:
    """The certificate of a 200 reply (certs-only PKCS#7, base64)."""
    from cryptography.hazmat.primitives.serialization import pkcs7

    assert reply.status == 200, reply
    [cert] = pkcs7.load_der_pkcs7_certificates(base64.b64decode(b"".join(reply.body.split())))
    return cert
