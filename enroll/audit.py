"""The audit log: append-only and hash-chained.

Theory of operation: entry *n* stores ``hash_n = SHA-256(canonical JSON of its fields, its
sequence number n and hash_{n-1})``, with 64 zeros before the first entry. The store keeps the
rows by sequence number, so the sequence number *is* an entry's position, and the head row (last
sequence number and hash) is updated in the same transaction as each append (``enroll.store``,
which also orders concurrent appends). Database triggers refuse UPDATE and DELETE on the log, so
nothing in Switch can change history by mistake; the chain is what detects deliberate tampering by someone with write access to
the file. ``verify`` is pure over rows and names the entry at fault:

- an edited entry whose hash was left alone: its content does not match its hash;
- an edited entry whose hash was recomputed: the next entry's link (or, for the last entry, the
  head) no longer matches it. The chain cannot tell that from a forged link in the next entry,
  so the report names both ("entry 4 was edited or entry 5's link was altered");
- moved entries (two rows' contents swapped): an entry's content only matches its hash under
  another sequence number, which is the position it came from;
- a removed entry: a gap in the sequence numbers, or, when the later entries were renumbered to
  close it, an entry whose content matches a later position while no entry matches this one;
- a cut tail: the log ends before the entry the head records.
"""

from __future__ import annotations

import functools
import hashlib
import json
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
    ENROLLMENT_REFUSED = "enrollment.refused"
    OPERATOR_CREATED = "operator.created"
    OPERATOR_ROLE_SET = "operator.role_set"
    OPERATOR_TENANTS_SET = "operator.tenants_set"
    OPERATOR_TOKEN_REPLACED = "operator.token_replaced"
    OPERATOR_PASSWORD_SET = "operator.password_set"
    OPERATOR_REMOVED = "operator.removed"
    OPERATOR_SIGNED_IN = "operator.signed_in"
    OPERATOR_SIGNED_OUT = "operator.signed_out"
    OPERATOR_SIGNIN_FAILED = "operator.signin_failed"


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


def entry_from_row(row: tuple[Any, ...]) -> AuditEntry:
    seq, ts, actor, tenant, action, target, reason, details, prev_hash, digest = row
    try:
        parsed = json.loads(details) if details else {}
    except ValueError:
        parsed = {"unparseable": details}
    return AuditEntry(seq, ts, actor, tenant, action, target, reason, parsed, prev_hash, digest)


def _recompute(entry: AuditEntry, seq: int) -> str:
    return entry_hash(
        seq=seq, ts=entry.ts, actor=entry.actor, tenant=entry.tenant, action=entry.action,
        target=entry.target, reason=entry.reason, details=entry.details, prev_hash=entry.prev_hash,
    )


def _position_of(entry: AuditEntry, candidates: Iterable[int]) -> int | None:
    """The sequence number under which ``entry``'s content matches its stored hash, if any."""
    return next((seq for seq in candidates if _recompute(entry, seq) == entry.hash), None)


def _tampered(count: int, head_hash: str, seq: int, problem: str) -> AuditVerification:
    return AuditVerification(False, count, head_hash, seq, problem)


def verify(entries: Iterable[AuditEntry], head: tuple[int, str] | None) -> AuditVerification:
    """Walk the chain in sequence order; name the first entry that does not fit (see the module
    docstring for how each kind of tampering shows)."""
    log = list(entries)
    last_seq, last_hash = head if head else (0, GENESIS)
    prev = GENESIS
    expected_seq = 1
    for count, entry in enumerate(log, start=1):
        bad = functools.partial(_tampered, count, prev)
        if entry.seq < expected_seq:  # cannot happen with seq as the rowid; fail closed anyway
            return bad(entry.seq, f"entry {entry.seq} appears twice or out of order")
        if entry.seq > expected_seq:
            missing = f"{expected_seq}" if entry.seq == expected_seq + 1 else f"{expected_seq}-{entry.seq - 1}"
            return bad(expected_seq, f"entry {missing} is missing: it was removed")
        if _recompute(entry, entry.seq) != entry.hash:
            every_position = range(1, max(last_seq, log[-1].seq) + 2)
            origin = _position_of(entry, (s for s in every_position if s != entry.seq))
            if origin is None:
                return bad(entry.seq, f"entry {entry.seq} was edited: its content does not "
                                      "match its hash")
            if origin > entry.seq and all(_position_of(e, (entry.seq,)) is None for e in log):
                return bad(entry.seq, f"entry {entry.seq} is missing: it was removed and the "
                                      f"later entries renumbered (entry {origin} sits in its place)")
            return bad(entry.seq, f"entries were reordered: entry {entry.seq} holds the content "
                                  f"of entry {origin}")
        if entry.prev_hash != prev:
            if entry.seq == 1:
                return bad(1, "entry 1's link to the start of the log was altered")
            return bad(entry.seq - 1, f"entry {entry.seq - 1} was edited (and its hash "
                                      f"recomputed) or entry {entry.seq}'s link to it was altered")
        prev = entry.hash
        expected_seq += 1
    count, end = len(log), expected_seq - 1
    if last_seq > end:
        cut = f"entry {last_seq} was" if last_seq == end + 1 else f"entries {end + 1}-{last_seq} were"
        return _tampered(count, prev, end + 1, f"the log ends at entry {end} but its head "
                         f"records entry {last_seq}: {cut} removed from the end")
    if last_seq < end:
        return _tampered(count, prev, last_seq + 1, f"entries after {last_seq}, where the head "
                         "says the log ends, were added outside Switch, or the head was altered")
    if last_hash != prev:
        return _tampered(count, prev, end, f"entry {end} was edited (and its hash recomputed) "
                         "or the head was altered")
    return AuditVerification(True, count, prev)
