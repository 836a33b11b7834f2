"""Store operations on issued certificates, requests waiting for approval and the shared
wrong-key rate limit (SQL shared by both engines; see ``enroll.store.base``)."""

from __future__ import annotations

import secrets

import attrs

from enroll.audit import Action
from enroll.errors import SubjectTaken, UnknownCertificate, UnknownRequest, WrongKeyState
from enroll.store.records import SERVERKEYGEN, CertificateRecord, PendingRequest
from enroll.store.sql import SqlStore, Tx

CERT_COLUMNS = ("serial, issuer_id, tenant, key_id, subject, not_before, not_after, sha256, pem, "
                "state, revoked_at, revoke_reason, created_at")
REQUEST_COLUMNS = ("id, tenant, key_id, request_digest, subject, state, created_at, decided_at, "
                   "decided_by, reason, certificate_serial, operation")
#: Stale rate-limit rows removed by each failure recorded: more than one, so pruning outruns
#: insertion, and bounded, so a failure's cost is too.
PRUNE_BATCH = 16


def _count_use(tx: Tx, key_id: str, ts: int, *, issued: bool) -> None:
    """The key is still active (it may have changed since the caller authenticated it, on this
    host or another) and was used now; ``issued`` counts a certificate. One statement on the
    usual path, whose condition is checked against the row as it is when the statement runs;
    the key is read again only to say why it failed."""
    done = tx.execute("UPDATE provisioning_keys SET last_used_at = ?, certificates_issued ="
                      " certificates_issued + ? WHERE id = ? AND state = 'active'",
                      (ts, 1 if issued else 0, key_id))
    if done.rowcount != 1:
        state = tx.scalar("SELECT state FROM provisioning_keys WHERE id = ?", (key_id,))
        raise WrongKeyState(f"key {key_id} is {state or 'gone'}")


#: Through the (tenant, subject) index (schema version 6), not a scan of the certificates.
SUBJECT_HOLDER_SQL = (
    "SELECT c.serial FROM certificates c LEFT JOIN provisioning_keys k ON k.id = c.key_id"
    " WHERE c.tenant = ? AND c.subject = ? AND c.state = 'valid' AND c.not_after > ?"
    " AND COALESCE(c.key_id, '') <> COALESCE(?, '')"
    " AND (k.state IS NULL OR k.state <> 'revoked') LIMIT 1")


def _subject_holder(tx: Tx, record: CertificateRecord) -> str | None:
    """The serial of a live certificate of ``record``'s tenant with its subject, issued through
    another provisioning key (or none), or None. Live: valid, unexpired when ``record`` is
    made, and its key not revoked (such a certificate connects no more)."""
    return tx.scalar(  # type: ignore[no-any-return]
        SUBJECT_HOLDER_SQL, (record.tenant, record.subject, record.created_at, record.key_id))


def _request(tx: Tx, where: str, args: tuple[object, ...]) -> PendingRequest | None:
    row = tx.one(f"SELECT {REQUEST_COLUMNS} FROM pending_requests WHERE {where}", args)
    return None if row is None else PendingRequest(*row)


class CertificateOps(SqlStore):
    #: Prunes stale rate-limit rows (``?``: the cut-off time): engines differ in how to do it
    #: without waiting on rows another host is pruning.
    _prune_failures_sql = (f"DELETE FROM auth_failures WHERE id IN (SELECT id FROM auth_failures"
                           f" WHERE at < ? LIMIT {PRUNE_BATCH})")

    # --- certificates --------------------------------------------------------------------------

    def record_certificate(self, record: CertificateRecord, *, pending_id: str | None = None,
                           unique_subject: bool = False) -> None:
        def insert(tx: Tx) -> None:
            if record.key_id is not None:
                _count_use(tx, record.key_id, record.created_at, issued=True)
            if unique_subject:
                # Two hosts issuing the same subject at once: one waits for the other's commit.
                self._lock_name(tx, f"subject:{record.tenant}:{record.subject}")
                held = _subject_holder(tx, record)
                if held is not None:
                    raise SubjectTaken(f"{record.subject} is held by certificate {held} of "
                                       "another provisioning key")
            tx.execute(f"INSERT INTO certificates ({CERT_COLUMNS}) VALUES"
                       " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", attrs.astuple(record))
            if pending_id is not None:
                done = tx.execute("UPDATE pending_requests SET state = 'issued',"
                                  " certificate_serial = ? WHERE id = ? AND state = 'approved'",
                                  (record.serial, pending_id))
                if done.rowcount != 1:  # issued meanwhile (another process): one approval, one
                    raise WrongKeyState(f"request {pending_id} is no longer approved")
        self._write(insert)

    def _certificate(self, where: str, args: tuple[object, ...]) -> CertificateRecord | None:
        row = self._read(lambda tx: tx.one(
            f"SELECT {CERT_COLUMNS} FROM certificates WHERE {where}", args))
        return None if row is None else CertificateRecord(*row)

    def find_certificate(self, tenant: str, sha256: str) -> CertificateRecord | None:
        return self._certificate("sha256 = ? AND tenant = ?", (sha256, tenant))

    def certificate_by_serial(self, tenant: str, serial: str) -> CertificateRecord | None:
        return self._certificate("serial = ? AND tenant = ?", (serial, tenant))

    def list_certificates(self, tenant: str, *, key_id: str | None = None,
                          state: str | None = None) -> list[CertificateRecord]:
        where, args = "tenant = ?", [tenant]
        if key_id is not None:
            where += " AND key_id = ?"
            args.append(key_id)
        if state is not None:
            where += " AND state = ?"
            args.append(state)
        rows = self._read(lambda tx: tx.all(
            f"SELECT {CERT_COLUMNS} FROM certificates WHERE {where} ORDER BY insert_seq",
            args))
        return [CertificateRecord(*r) for r in rows]

    def revoke_certificate(self, serial: str, *, tenant: str | None, reason: str, actor: str,
                           ts: int) -> CertificateRecord:
        def revoke(tx: Tx) -> CertificateRecord:
            query, args = f"SELECT {CERT_COLUMNS} FROM certificates WHERE serial = ?", [serial]
            if tenant is not None:
                query += " AND tenant = ?"
                args.append(tenant)
            rows = tx.all(query, args)
            if not rows:
                raise UnknownCertificate(f"no certificate with serial {serial}")
            if len(rows) > 1:
                raise UnknownCertificate(f"serial {serial} is ambiguous: name the tenant")
            record = CertificateRecord(*rows[0])
            if record.state == "revoked":
                raise WrongKeyState(f"certificate {serial} is already revoked")
            tx.execute("UPDATE certificates SET state = 'revoked', revoked_at = ?,"
                       " revoke_reason = ? WHERE issuer_id = ? AND serial = ?",
                       (ts, reason, record.issuer_id, record.serial))
            tx.audit(ts=ts, actor=actor, tenant=record.tenant, action=Action.CERTIFICATE_REVOKED,
                     target=record.serial, reason=reason,
                     details={"subject": record.subject, "sha256": record.sha256,
                              "key_id": record.key_id})
            tx.changed()
            return attrs.evolve(record, state="revoked", revoked_at=ts, revoke_reason=reason)
        return self._write(revoke, audited=True)

    # --- requests waiting for approval ---------------------------------------------------------

    def submit_request(self, tenant: str, *, key_id: str | None, csr_der: bytes, digest: str,
                       subject: str, operation: str, ts: int) -> PendingRequest:
        def submit(tx: Tx) -> PendingRequest:
            if key_id is not None:
                _count_use(tx, key_id, ts, issued=False)
            existing = _request(tx, "tenant = ? AND request_digest = ?", (tenant, digest))
            if existing is not None and operation == SERVERKEYGEN and existing.state == "issued":
                tx.execute("UPDATE pending_requests SET request_digest = request_digest || ':'"
                           " || id WHERE id = ?", (existing.id,))
                existing = None
            if existing is not None:
                return existing
            request_id = "req_" + secrets.token_hex(8)
            # The same request arriving at two hosts at once: one row wins, both get it.
            tx.execute("INSERT INTO pending_requests (id, tenant, key_id, csr_der, request_digest,"
                       " subject, state, created_at, operation) VALUES"
                       " (?, ?, ?, ?, ?, ?, 'pending', ?, ?)"
                       " ON CONFLICT (tenant, request_digest) DO NOTHING",
                       (request_id, tenant, key_id, csr_der, digest, subject, ts, operation))
            made = _request(tx, "tenant = ? AND request_digest = ?", (tenant, digest))
            assert made is not None
            return attrs.evolve(made, filed=made.id == request_id)
        return self._write(submit)

    def list_requests(self, tenant: str | None = None, state: str | None = None
                      ) -> list[PendingRequest]:
        clauses: list[str] = []
        args: list[object] = []
        if tenant is not None:
            clauses.append("tenant = ?")
            args.append(tenant)
        if state is not None:
            clauses.append("state = ?")
            args.append(state)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._read(lambda tx: tx.all(
            f"SELECT {REQUEST_COLUMNS} FROM pending_requests{where} ORDER BY insert_seq", args))
        return [PendingRequest(*r) for r in rows]

    def decide_request(self, request_id: str, state: str, *, action: str, actor: str,
                       reason: str | None, ts: int) -> PendingRequest:
        def decide(tx: Tx) -> PendingRequest:
            request = _request(tx, "id = ?", (request_id,))
            if request is None:
                raise UnknownRequest(f"no request {request_id}")
            if request.state != "pending":
                raise WrongKeyState(f"request {request_id} is {request.state}, not pending")
            tx.execute("UPDATE pending_requests SET state = ?, decided_at = ?, decided_by = ?,"
                       " reason = ? WHERE id = ?", (state, ts, actor, reason, request_id))
            tx.audit(ts=ts, actor=actor, tenant=request.tenant, action=action, target=request_id,
                     reason=reason, details={"subject": request.subject, "key_id": request.key_id})
            return attrs.evolve(request, state=state, decided_at=ts, decided_by=actor,
                                reason=reason)
        return self._write(decide, audited=True)

    # --- the wrong-key rate limit --------------------------------------------------------------

    def auth_failures(self, source: str, since: float) -> list[float]:
        rows = self._read(lambda tx: tx.all(
            "SELECT at FROM auth_failures WHERE source = ? AND at > ? ORDER BY at",
            (source, since)))
        return [float(at) for (at,) in rows]

    def record_auth_failure(self, source: str, at: float, *, forget_before: float) -> None:
        def record(tx: Tx) -> None:
            tx.execute("INSERT INTO auth_failures (source, at) VALUES (?, ?)", (source, at))
            tx.execute(self._prune_failures_sql, (forget_before,))
        self._write(record)
