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
import secrets
import sqlite3
from collections.abc import Sequence
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from config.model import Profile
from enroll import audit, pki
from enroll.audit import Action
from enroll.authority import Authority
from enroll.csr import CsrRequest
from enroll.errors import ReasonRequired, UnknownCertificate, UnknownRequest, WrongKeyState
from enroll.issuers import IssuerRecord, load_issuer_key
from enroll.keys import MAX_REASON_CHARS, KeyRecord
from enroll.policy import build_certificate
from enroll.store import bump_generation

_CERT_COLUMNS = ("serial, issuer_id, tenant, key_id, subject, not_before, not_after, sha256, pem, "
                 "state, revoked_at, revoke_reason, created_at")
_REQUEST_COLUMNS = ("id, tenant, key_id, request_digest, subject, state, created_at, decided_at, "
                    "decided_by, reason, certificate_serial, operation")
SIMPLEENROLL = "simpleenroll"
SERVERKEYGEN = "serverkeygen"


@attrs.frozen
class CertificateRecord:
    serial: str
    issuer_id: str
    tenant: str
    key_id: str | None
    subject: str
    not_before: int
    not_after: int
    sha256: str
    pem: str
    state: str
    revoked_at: int | None
    revoke_reason: str | None
    created_at: int

    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.pem.encode())


@attrs.frozen
class PendingRequest:
    id: str
    tenant: str
    key_id: str | None
    request_digest: str
    subject: str
    state: str
    created_at: int
    decided_at: int | None
    decided_by: str | None
    reason: str | None
    certificate_serial: str | None
    #: ``simpleenroll`` (the client's key) or ``serverkeygen`` (the server makes the key).
    operation: str = SIMPLEENROLL


def _ts(when: dt.datetime) -> int:
    return int(when.timestamp())


def _count_use(conn: sqlite3.Connection, key_id: str, now: dt.datetime, *, issued: bool) -> None:
    """In the caller's transaction: the key is still active (it may have changed since the
    caller authenticated it, in this process or another) and was used now; ``issued`` counts a
    certificate. One statement on the usual path; the key is read only to say why it failed."""
    done = conn.execute(
        "UPDATE provisioning_keys SET last_used_at = ?, certificates_issued ="
        " certificates_issued + ? WHERE id = ? AND state = 'active'",
        (_ts(now), 1 if issued else 0, key_id))
    if done.rowcount != 1:
        row = conn.execute("SELECT state FROM provisioning_keys WHERE id = ?", (key_id,)).fetchone()
        raise WrongKeyState(f"key {key_id} is {row[0] if row else 'gone'}")


class Issuance:
    """Certificates and requests of every tenant. Wraps an ``Authority`` (and its store)."""

    def __init__(self, authority: Authority) -> None:
        self.authority = authority
        self._issuer_keys: dict[str, pki.PrivateKey] = {}

    @property
    def _conn(self) -> Any:
        return self.authority.store.conn

    # --- issuing -------------------------------------------------------------------------------

    def _issuer(self, tenant: str) -> tuple[IssuerRecord, x509.Certificate, pki.PrivateKey]:
        record = self.authority.current_issuer(tenant)
        key = self._issuer_keys.get(record.id)
        if key is None:
            key = self._issuer_keys[record.id] = load_issuer_key(record)
        return record, record.certificate(), key

    def issue(
        self, tenant: str, request: CsrRequest, *, profile: Profile, key: KeyRecord | None,
        now: dt.datetime, pending_id: str | None = None,
    ) -> tuple[x509.Certificate, CertificateRecord]:
        """Sign per the profile and record it; committed before this returns."""
        issuer, issuer_cert, issuer_key = self._issuer(tenant)
        cert = build_certificate(request, profile=profile, tenant=tenant,
                                 key_id=key.id if key else None,
                                 issuer=(issuer_cert, issuer_key), now=now)
        record = CertificateRecord(
            serial=format(cert.serial_number, "x"), issuer_id=issuer.id, tenant=tenant,
            key_id=key.id if key else None, subject=cert.subject.rfc4514_string(),
            not_before=_ts(cert.not_valid_before_utc), not_after=_ts(cert.not_valid_after_utc),
            sha256=pki.sha256_fingerprint(cert), pem=pki.cert_pem(cert).decode(), state="valid",
            revoked_at=None, revoke_reason=None, created_at=_ts(now),
        )
        with self.authority.store.transaction() as conn:
            if key is not None:
                _count_use(conn, key.id, now, issued=True)
            conn.execute(f"INSERT INTO certificates ({_CERT_COLUMNS}) VALUES"
                         " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", attrs.astuple(record))
            if pending_id is not None:
                done = conn.execute("UPDATE pending_requests SET state = 'issued',"
                                    " certificate_serial = ? WHERE id = ? AND state = 'approved'",
                                    (record.serial, pending_id))
                if done.rowcount != 1:  # issued meanwhile (another process): one approval, one
                    raise WrongKeyState(f"request {pending_id} is no longer approved")
        return cert, record

    # --- certificates --------------------------------------------------------------------------

    def find(self, tenant: str, cert: x509.Certificate) -> CertificateRecord | None:
        """The record of a certificate Switch issued for ``tenant`` (by fingerprint), or None."""
        row = self._conn.execute(
            f"SELECT {_CERT_COLUMNS} FROM certificates WHERE sha256 = ? AND tenant = ?",
            (pki.sha256_fingerprint(cert), tenant)).fetchone()
        return CertificateRecord(*row) if row else None

    def certificate(self, tenant: str, serial: str) -> CertificateRecord | None:
        """The record of the certificate ``serial`` (as stored: lower-case hex) of ``tenant``."""
        row = self._conn.execute(
            f"SELECT {_CERT_COLUMNS} FROM certificates WHERE serial = ? AND tenant = ?",
            (serial, tenant)).fetchone()
        return CertificateRecord(*row) if row else None

    def list_certificates(self, tenant: str, key: str | None = None) -> list[CertificateRecord]:
        self.authority._tenant(tenant)
        if key is None:
            rows = self._conn.execute(
                f"SELECT {_CERT_COLUMNS} FROM certificates WHERE tenant = ? ORDER BY created_at",
                (tenant,))
        else:
            key_id = self.authority.get_key(tenant, key).id
            rows = self._conn.execute(
                f"SELECT {_CERT_COLUMNS} FROM certificates WHERE tenant = ? AND key_id = ?"
                " ORDER BY created_at", (tenant, key_id))
        return [CertificateRecord(*r) for r in rows.fetchall()]

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
        ts = _ts(now or self.authority.clock())
        with self.authority.store.transaction() as conn:
            query = f"SELECT {_CERT_COLUMNS} FROM certificates WHERE serial = ?"
            args: tuple[str, ...] = (wanted,)
            if tenant is not None:
                query += " AND tenant = ?"
                args += (tenant,)
            rows = conn.execute(query, args).fetchall()
            if not rows:
                raise UnknownCertificate(f"no certificate with serial {serial}")
            if len(rows) > 1:
                raise UnknownCertificate(f"serial {serial} is ambiguous: name the tenant")
            record = CertificateRecord(*rows[0])
            if record.state == "revoked":
                raise WrongKeyState(f"certificate {serial} is already revoked")
            conn.execute("UPDATE certificates SET state = 'revoked', revoked_at = ?,"
                         " revoke_reason = ? WHERE issuer_id = ? AND serial = ?",
                         (ts, text, record.issuer_id, record.serial))
            audit.append(conn, ts=ts, actor=actor, tenant=record.tenant,
                         action=Action.CERTIFICATE_REVOKED, target=record.serial, reason=text,
                         details={"subject": record.subject, "sha256": record.sha256,
                                  "key_id": record.key_id})
            bump_generation(conn)
        return attrs.evolve(record, state="revoked", revoked_at=ts, revoke_reason=text)

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
        return self._submit(tenant, key, csr_der, digest, request.common_name, SIMPLEENROLL, now)

    def submit_serverkeygen(self, tenant: str, key: KeyRecord | None, csr_der: bytes,
                            common_name: str, now: dt.datetime) -> PendingRequest:
        """The server-side key generation request of this provisioning key for this CN (there is
        no client key to tell requests apart). Once one was issued, its key pair has been sent
        and cannot be sent again: the same request repeated opens a new pending one, and the
        issued one stays in the list, its identity suffixed with its id."""
        # An SPKI (the simpleenroll digest) is DER starting with 0x30: never this prefix.
        seed = f"serverkeygen\0{key.id if key else ''}\0{common_name}".encode()
        digest = hashlib.sha256(seed).hexdigest()
        return self._submit(tenant, key, csr_der, digest, common_name, SERVERKEYGEN, now)

    def _submit(self, tenant: str, key: KeyRecord | None, csr_der: bytes, digest: str,
                subject: str, operation: str, now: dt.datetime) -> PendingRequest:
        with self.authority.store.transaction() as conn:
            if key is not None:
                _count_use(conn, key.id, now, issued=False)
            row = conn.execute(f"SELECT {_REQUEST_COLUMNS} FROM pending_requests"
                               " WHERE tenant = ? AND request_digest = ?", (tenant, digest)).fetchone()
            if row is not None and operation == SERVERKEYGEN and PendingRequest(*row).state == "issued":
                conn.execute("UPDATE pending_requests SET request_digest = request_digest || ':' || id"
                             " WHERE id = ?", (row[0],))
                row = None
            if row is None:
                request_id = "req_" + secrets.token_hex(8)
                conn.execute(
                    "INSERT INTO pending_requests (id, tenant, key_id, csr_der, request_digest,"
                    " subject, state, created_at, operation)"
                    " VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
                    (request_id, tenant, key.id if key else None, csr_der, digest, subject,
                     _ts(now), operation))
                row = conn.execute(f"SELECT {_REQUEST_COLUMNS} FROM pending_requests WHERE id = ?",
                                   (request_id,)).fetchone()
        return PendingRequest(*row)

    def list_requests(self, tenant: str | None = None, state: str | None = None
                      ) -> list[PendingRequest]:
        clauses, args = [], []
        if tenant is not None:
            self.authority._tenant(tenant)
            clauses.append("tenant = ?")
            args.append(tenant)
        if state is not None:
            clauses.append("state = ?")
            args.append(state)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._conn.execute(
            f"SELECT {_REQUEST_COLUMNS} FROM pending_requests{where} ORDER BY created_at", args)
        return [PendingRequest(*r) for r in rows.fetchall()]

    def _decide(self, request_id: str, state: str, action: str, *, actor: str,
                reason: str | None, now: dt.datetime | None) -> PendingRequest:
        ts = _ts(now or self.authority.clock())
        with self.authority.store.transaction() as conn:
            row = conn.execute(f"SELECT {_REQUEST_COLUMNS} FROM pending_requests WHERE id = ?",
                               (request_id,)).fetchone()
            if row is None:
                raise UnknownRequest(f"no request {request_id}")
            request = PendingRequest(*row)
            if request.state != "pending":
                raise WrongKeyState(f"request {request_id} is {request.state}, not pending")
            conn.execute("UPDATE pending_requests SET state = ?, decided_at = ?, decided_by = ?,"
                         " reason = ? WHERE id = ?", (state, ts, actor, reason, request_id))
            audit.append(conn, ts=ts, actor=actor, tenant=request.tenant, action=action,
                         target=request_id, reason=reason,
                         details={"subject": request.subject, "key_id": request.key_id})
        return attrs.evolve(request, state=state, decided_at=ts, decided_by=actor, reason=reason)

    def approve(self, request_id: str, *, actor: str, now: dt.datetime | None = None
                ) -> PendingRequest:
        return self._decide(request_id, "approved", Action.REQUEST_APPROVED, actor=actor,
                            reason=None, now=now)

    def reject(self, request_id: str, *, reason: str | None, actor: str,
               now: dt.datetime | None = None) -> PendingRequest:
        text = (reason or "").strip()
        if not text:
            raise ReasonRequired("a reason is required to reject a request (--reason)")
        return self._decide(request_id, "rejected", Action.REQUEST_REJECTED, actor=actor,
                            reason=text[:MAX_REASON_CHARS], now=now)


def certificate_chain_pem(certs: Sequence[x509.Certificate]) -> str:
    return "".join(pki.cert_pem(c).decode() for c in certs)
