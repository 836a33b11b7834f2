"""The admin API's records as JSON, and back: one module for both directions, so that what the
server sends is what the command line's remote backend rebuilds (the same records, the same
output as a local command). Pure: no server module, no I/O.

Times are Unix seconds (UTC) as the store keeps them; states and roles are their lower-case
names. What a record holds that is the server's own business is left out: an issuer's key path,
an operator's hashes; a provisioning key's secret appears once, in the reply that created it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from enroll.audit import AuditEntry, AuditVerification
from enroll.issuers import IssuerRecord
from enroll.keys import KeyRecord, KeyState
from enroll.store import CertificateRecord, PendingRequest

Json = dict[str, Any]


def key_json(k: KeyRecord) -> Json:
    return {"id": k.id, "tenant": k.tenant, "name": k.name, "state": k.state.value,
            "profile": k.profile, "created_at": k.created_at, "updated_at": k.updated_at,
            "last_used_at": k.last_used_at, "certificates_issued": k.certificates_issued,
            "state_reason": k.state_reason}


def key_from_json(d: Mapping[str, Any]) -> KeyRecord:
    return KeyRecord(id=d["id"], tenant=d["tenant"], name=d["name"], state=KeyState(d["state"]),
                     created_at=d["created_at"], updated_at=d["updated_at"],
                     last_used_at=d["last_used_at"], certificates_issued=d["certificates_issued"],
                     profile=d["profile"], state_reason=d["state_reason"])


def issuer_json(i: IssuerRecord, enabled: bool) -> Json:
    """``trusted``: the gateway trusts it now (never while the service is disabled);
    ``trusted_when_enabled``: it would be, with the service on."""
    return {"id": i.id, "tenant": i.tenant, "seq": i.seq, "subject": i.subject,
            "sha256": i.sha256, "not_before": i.not_before, "not_after": i.not_after,
            "created_at": i.created_at, "retired_at": i.retired_at,
            "trusted": bool(i.trusted and enabled), "trusted_when_enabled": i.trusted,
            "cert_pem": i.cert_pem}


def issuer_from_json(d: Mapping[str, Any]) -> IssuerRecord:
    return IssuerRecord(id=d["id"], tenant=d["tenant"], seq=d["seq"], cert_pem=d["cert_pem"],
                        key_path="", sha256=d["sha256"], not_before=d["not_before"],
                        not_after=d["not_after"], created_at=d["created_at"],
                        retired_at=d["retired_at"], trusted=d["trusted_when_enabled"])


_CERT_FIELDS = ("serial", "issuer_id", "tenant", "key_id", "subject", "not_before", "not_after",
                "sha256", "state", "revoked_at", "revoke_reason", "created_at")


def certificate_json(c: CertificateRecord) -> Json:
    """Without the PEM (lists stay small; the fingerprint names the certificate)."""
    return {name: getattr(c, name) for name in _CERT_FIELDS}


def certificate_from_json(d: Mapping[str, Any]) -> CertificateRecord:
    return CertificateRecord(pem="", **{name: d[name] for name in _CERT_FIELDS})


_REQUEST_FIELDS = ("id", "tenant", "key_id", "request_digest", "subject", "state", "created_at",
                   "decided_at", "decided_by", "reason", "certificate_serial", "operation")


def request_json(r: PendingRequest) -> Json:
    return {name: getattr(r, name) for name in _REQUEST_FIELDS}


def request_from_json(d: Mapping[str, Any]) -> PendingRequest:
    return PendingRequest(**{name: d[name] for name in _REQUEST_FIELDS})


_AUDIT_FIELDS = ("seq", "ts", "actor", "tenant", "action", "target", "reason", "details",
                 "prev_hash", "hash")


def audit_json(e: AuditEntry) -> Json:
    return {name: getattr(e, name) for name in _AUDIT_FIELDS}


def audit_from_json(d: Mapping[str, Any]) -> AuditEntry:
    return AuditEntry(**{name: d[name] for name in _AUDIT_FIELDS})


def verification_json(v: AuditVerification) -> Json:
    return {"ok": v.ok, "entries_checked": v.entries_checked, "head_hash": v.head_hash,
            "first_bad_seq": v.first_bad_seq, "problem": v.problem}


def verification_from_json(d: Mapping[str, Any]) -> AuditVerification:
    return AuditVerification(d["ok"], d["entries_checked"], d["head_hash"], d["first_bad_seq"],
                             d["problem"])
