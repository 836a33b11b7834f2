"""Issuing certificates and keeping their records: issued certificates, revocations, requests
waiting for approval.

Issuing signs outside the store's write lock (CPU work), then records the certificate, counts it
on its provisioning key and, for an approved request, marks the request issued, all in one
transaction that commits before the caller may send the certificate: nothing handed out is ever
missing from the store.

A request waiting for approval is identified by what it asks for, not by its bytes (a CSR signed
again differs): for ``simpleenroll``, the public key and the CN; for ``serverkeygen``, which has
no client key, the provisioning key and the CN. An approved ``simpleenroll`` request yields one
certificate, which the same request repeated gets again (the client holds the key). An approved
``serverkeygen`` request yields one server-made key pair, sent once: the same request repeated
after that opens a new pending request.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from config.model import Profile
from enroll import pki
from enroll.audit import Action
from enroll.authority import Authority
from enroll.csr import CsrRequest
from enroll.errors import ReasonRequired, UnknownCertificate, UnknownRequest
from enroll.issuers import IssuerRecord
from enroll.keys import MAX_REASON_CHARS, KeyRecord
from enroll.policy import Issued, Signer, issue_certificate
from enroll.store import SERVERKEYGEN, SIMPLEENROLL, CertificateRecord, PendingRequest

__all__ = ["SERVERKEYGEN", "SIMPLEENROLL", "CertificateRecord", "Issuance", "PendingRequest",
           "UnknownRequest", "certificate_chain_pem"]


def _ts(when: dt.datetime) -> int:
    return int(when.timestamp())


class Issuance:
    """Certificates and requests of every tenant. Wraps an ``Authority`` (and its store)."""

    def __init__(self, authority: Authority) -> None:
        self.authority = authority
        self._signers: dict[str, Signer] = {}

    # --- issuing -------------------------------------------------------------------------------

    def _signer(self, tenant: str) -> tuple[IssuerRecord, Signer]:
        """The tenant's current issuer (read from the store: a renewal takes effect at once) and
        its ``Signer``, made once per issuer (its certificate parsed, its key loaded)."""
        record = self.authority.current_issuer(tenant)
        signer = self._signers.get(record.id)
        if signer is None:
            key = self.authority.store.load_issuer_key(record)
            signer = self._signers[record.id] = Signer.of(record.certificate(), key)
        return record, signer

    def sign(
        self, tenant: str, request: CsrRequest, *, profile: Profile, key: KeyRecord | None,
        now: dt.datetime,
    ) -> tuple[Issued, CertificateRecord]:
        """Sign per the profile and make the record, storing nothing: the caller must
        ``record`` it (and see it committed) before it sends the certificate."""
        issuer, signer = self._signer(tenant)
        issued = issue_certificate(request, profile=profile, tenant=tenant,
                                   key_id=key.id if key else None, signer=signer, now=now)
        record = CertificateRecord(
            serial=format(issued.serial, "x"), issuer_id=issuer.id, tenant=tenant,
            key_id=key.id if key else None, subject=issued.subject.rfc4514_string(),
            not_before=_ts(issued.not_before), not_after=_ts(issued.not_after),
            sha256=hashlib.sha256(issued.der).hexdigest(),
            pem=pki.der_to_pem(issued.der, "CERTIFICATE"), state="valid",
            revoked_at=None, revoke_reason=None, created_at=_ts(now),
        )
        return issued, record

    def record(self, record: CertificateRecord, *, profile: Profile,
               pending_id: str | None = None) -> None:
        """Store a certificate ``sign`` made: counted on its key (still active), its subject
        still free when the profile wants unique subjects, an approved request marked issued."""
        self.authority.store.record_certificate(record, pending_id=pending_id,
                                                unique_subject=profile.unique_subject)

    def issue(
        self, tenant: str, request: CsrRequest, *, profile: Profile, key: KeyRecord | None,
        now: dt.datetime, pending_id: str | None = None,
    ) -> tuple[Issued, CertificateRecord]:
        """Sign per the profile and record it; committed before this returns (or with the
        caller's unit of work)."""
        cert, record = self.sign(tenant, request, profile=profile, key=key, now=now)
        self.record(record, profile=profile, pending_id=pending_id)
        return cert, record

    # --- certificates --------------------------------------------------------------------------

    def find(self, tenant: str, cert: x509.Certificate) -> CertificateRecord | None:
        """The record of a certificate Switch issued for ``tenant`` (by fingerprint), or None."""
        return self.authority.store.find_certificate(tenant, pki.sha256_fingerprint(cert))

    def certificate(self, tenant: str, serial: str) -> CertificateRecord | None:
        """The record of the certificate ``serial`` (as stored: lower-case hex) of ``tenant``."""
        return self.authority.store.certificate_by_serial(tenant, serial)

    def list_certificates(self, tenant: str, key: str | None = None,
                          state: str | None = None) -> list[CertificateRecord]:
        self.authority._tenant(tenant)
        key_id = None if key is None else self.authority.get_key(tenant, key).id
        return self.authority.store.list_certificates(tenant, key_id=key_id, state=state)

    def revoke_certificate(self, serial: str, *, reason: str | None, actor: str,
                           tenant: str | None = None, now: dt.datetime | None = None
                           ) -> CertificateRecord:
        """Revoke one certificate by serial (hex, case-insensitive, ``:`` allowed)."""
        text = (reason or "").strip()
        if not text:
            raise ReasonRequired("a reason is required to revoke a certificate (--reason)")
        if len(text) > MAX_REASON_CHARS:
            raise ReasonRequired(f"a reason has at most {MAX_REASON_CHARS} characters")
        wanted = serial.lower().replace(":", "").lstrip("0") or "0"
        if not all(c in "0123456789abcdef" for c in wanted):
            raise UnknownCertificate(f"no certificate with serial {serial}")
        ts = _ts(now or self.authority.clock())
        return self.authority.store.revoke_certificate(wanted, tenant=tenant, reason=text,
                                                       actor=actor, ts=ts)

    def trusted_issuer_certificates(self, tenant: str, now: dt.datetime) -> list[x509.Certificate]:
        """The tenant's issuers trusted at ``now``, the current one first."""
        issuers = [i for i in self.authority.list_issuers(tenant, now=now) if i.trusted]
        issuers.sort(key=lambda i: (i.retired_at is not None, -i.seq))
        return [i.certificate() for i in issuers]

    # --- requests waiting for approval ---------------------------------------------------------

    def submit(self, tenant: str, key: KeyRecord | None, csr_der: bytes,
               request: CsrRequest, now: dt.datetime) -> PendingRequest:
        """The request for this public key and subject: the existing one if it came before
        (whatever the CSR's bytes: signatures such as ECDSA differ on every signing), else a new
        pending one."""
        spki = request.public_key.public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        digest = hashlib.sha256(spki + b"\0" + request.common_name.encode()).hexdigest()
        return self.authority.store.submit_request(
            tenant, key_id=key.id if key else None, csr_der=csr_der, digest=digest,
            subject=request.common_name, operation=SIMPLEENROLL, ts=_ts(now))

    def submit_serverkeygen(self, tenant: str, key: KeyRecord | None, csr_der: bytes,
                            common_name: str, now: dt.datetime) -> PendingRequest:
        """The server-side key generation request of this provisioning key for this CN (there is
        no client key to tell requests apart). Once one was issued, its key pair has been sent
        and cannot be sent again: the same request repeated opens a new pending one, and the
        issued one stays in the list, its identity suffixed with its id."""
        # An SPKI (the simpleenroll digest) is DER starting with 0x30: never this prefix.
        seed = f"serverkeygen\0{key.id if key else ''}\0{common_name}".encode()
        digest = hashlib.sha256(seed).hexdigest()
        return self.authority.store.submit_request(
            tenant, key_id=key.id if key else None, csr_der=csr_der, digest=digest,
            subject=common_name, operation=SERVERKEYGEN, ts=_ts(now))

    def list_requests(self, tenant: str | None = None, state: str | None = None
                      ) -> list[PendingRequest]:
        if tenant is not None:
            self.authority._tenant(tenant)
        return self.authority.store.list_requests(tenant, state)

    def approve(self, request_id: str, *, actor: str, now: dt.datetime | None = None
                ) -> PendingRequest:
        ts = _ts(now or self.authority.clock())
        return self.authority.store.decide_request(request_id, "approved",
                                                   action=Action.REQUEST_APPROVED, actor=actor,
                                                   reason=None, ts=ts)

    def reject(self, request_id: str, *, reason: str | None, actor: str,
               now: dt.datetime | None = None) -> PendingRequest:
        text = (reason or "").strip()
        if not text:
            raise ReasonRequired("a reason is required to reject a request (--reason)")
        ts = _ts(now or self.authority.clock())
        return self.authority.store.decide_request(request_id, "rejected",
                                                   action=Action.REQUEST_REJECTED, actor=actor,
                                                   reason=text[:MAX_REASON_CHARS], ts=ts)


def certificate_chain_pem(certs: Sequence[x509.Certificate]) -> str:
    return "".join(pki.cert_pem(c).decode() for c in certs)
