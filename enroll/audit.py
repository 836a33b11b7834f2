"""The audit log: append-only and hash-chained.

Theory of operation: entry *n* stores ``hash_n = SHA-256(canonical JSON of its fields and
hash_{n-1})``, with 64 zeros before the first entry. Editing an entry breaks its own hash; removing
or reordering entries breaks the sequence or the link to the previous hash; cutting off the tail is
caught by the head row (last sequence number and hash) that the store updates in the same
transaction as each append. SQLite triggers refuse UPDATE and DELETE on the log, so nothing in
Switch can change history by mistake; the chain is what detects deliberate tampering by someone
with write access to the file. ``verify`` is pure over rows.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

GENESIS = "0" * 64


class Action:
    """Stable action names, as they appear in the log."""

    ISSUER_CREATED = "issuer.created"
    ISSUER_RENEWED = "issuer.renewed"
    SERVICE_ENABLED = "service.enabled"
    SERVICE_DISABLED = "service.disabled"
    KEY_CREATED = "key.created"
    KEY_SUSPENDED = "key.suspended"
    KEY_REACTIVATED = "key.reactivated"
    KEY_REVOKED = "key.revoked"
    KEY_RENAMED = "key.renamed"
    CERTIFICATE_REVOKED = "certificate.revoked"
    REQUEST_APPROVED = "request.approved"
    REQUEST_REJECTED = "request.rejected"


@attrs.frozen
class AuditEntry:
    seq: int
    ts: int
    actor: str
    tenant: str | None
    action: str
    target: str | None
    reason: str | None
    details: Mapping[str, Any]
    prev_hash: str
    hash: str


@attrs.frozen
class AuditVerification:
    ok: bool
    entries_checked: int
    head_hash: str
    first_bad_seq: int | None = None
    problem: str | None = None


def entry_hash(
    *, seq: int, ts: int, actor: str, tenant: str | None, action: str, target: str | None,
    reason: str | None, details: Mapping[str, Any], prev_hash: str,
) -> str:
    canonical = json.dumps(
        {
            "seq": seq, "ts": ts, "actor": actor, "tenant": tenant, "action": action,
            "target": target, "reason": reason, "details": details, "prev_hash": prev_hash,
        },
        sort_keys=True, separators=(",", ":"), ensure_ascii=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def append(
    conn: sqlite3.Connection, *, ts: int, actor: str, tenant: str | None, action: str,
    target: str | None = None, reason: str | None = None, details: Mapping[str, Any] | None = None,
) -> AuditEntry:
    """Append one entry inside the caller's (already open) transaction."""
    head = conn.execute("SELECT last_seq, last_hash FROM audit_head").fetchone()
    seq, prev = (head[0] + 1, head[1]) if head else (1, GENESIS)
    details = dict(details or {})
    digest = entry_hash(seq=seq, ts=ts, actor=actor, tenant=tenant, action=action, target=target,
                        reason=reason, details=details, prev_hash=prev)
    conn.execute(
        "INSERT INTO audit_log (seq, ts, actor, tenant, action, target, reason, details, prev_hash, hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (seq, ts, actor, tenant, action, target, reason,
         json.dumps(details, sort_keys=True), prev, digest),
    )
    conn.execute("UPDATE audit_head SET last_seq = ?, last_hash = ?", (seq, digest))
    return AuditEntry(seq, ts, actor, tenant, action, target, reason, details, prev, digest)


def entry_from_row(row: tuple[Any, ...]) -> AuditEntry:
    seq, ts, actor, tenant, action, target, reason, details, prev_hash, digest = row
    try:
        parsed = json.loads(details) if details else {}
    except ValueError:
        parsed = {"unparseable": details}
    return AuditEntry(seq, ts, actor, tenant, action, target, reason, parsed, prev_hash, digest)


def verify(entries: Iterable[AuditEntry], head: tuple[int, str] | None) -> AuditVerification:
    """Walk the chain in stored order; name the first entry that does not fit."""
    prev = GENESIS
    expected_seq = 1
    count = 0
    for entry in entries:
        count += 1
        if entry.seq > expected_seq:
            missing = f"{expected_seq}" if entry.seq == expected_seq + 1 else f"{expected_seq}-{entry.seq - 1}"
            return AuditVerification(False, count, prev, expected_seq,
                                     f"entry {missing} is missing: it was removed")
        if entry.seq != expected_seq:
            return AuditVerification(False, count, prev, entry.seq,
                                     f"found entry {entry.seq} where {expected_seq} belongs: "
                                     "entries were reordered")
        if entry.prev_hash != prev:
            return AuditVerification(
                False, count, prev, entry.seq,
                "does not link to the previous entry: an earlier entry was removed or altered",
            )
        recomputed = entry_hash(
            seq=entry.seq, ts=entry.ts, actor=entry.actor, tenant=entry.tenant,
            action=entry.action, target=entry.target, reason=entry.reason,
            details=entry.details, prev_hash=entry.prev_hash,
        )
        if recomputed != entry.hash:
            return AuditVerification(False, count, prev, entry.seq,
                                     "its content does not match its hash: it was edited")
        prev = entry.hash
        expected_seq += 1
    last_seq, last_hash = head if head else (0, GENESIS)
    if (last_seq, last_hash) != (expected_seq - 1, prev):
        return AuditVerification(
            False, count, prev, expected_seq,
            f"the log ends at entry {expected_seq - 1} but its head records entry {last_seq}: "
            "entries were removed from the end",
        )
    return AuditVerification(True, count, prev)
