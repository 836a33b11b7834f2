"""How the security-admin commands print what the backend returned: for each result, its JSON
(``--json``) and its text. Pure: records in, strings and plain data out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

from gateway.cli.output import as_dict, plain, state, table, when

if TYPE_CHECKING:
    from enroll.audit import AuditEntry, AuditVerification
    from enroll.issuance import CertificateRecord, PendingRequest
    from enroll.issuers import IssuerRecord
    from enroll.keys import KeyRecord


# --- provisioning keys -------------------------------------------------------------------------


def key_json(k: KeyRecord) -> dict[str, Any]:
    return {
        "id": k.id,
        "tenant": k.tenant,
        "name": k.name,
        "state": state(k.state),
        "profile": k.profile,
        "created_at": plain(k.created_at),
        "last_used_at": plain(k.last_used_at),
        "certificates_issued": k.certificates_issued,
    }


def generated_key_json(record: KeyRecord, secret: str) -> dict[str, Any]:
    return {**key_json(record), "secret": secret}


def generated_key_text(record: KeyRecord, secret: str) -> str:
    return (
        f'Created provisioning key "{record.name}" ({record.id}) for tenant {record.tenant}.\n'
        "Secret — shown once, it cannot be shown again; store it now:\n\n"
        f"    {secret}\n"
    )


def keys_text(keys: Sequence[KeyRecord]) -> str:
    return table(
        ["NAME", "ID", "STATE", "CREATED", "LAST USED", "CERTS", "PROFILE"],
        [[k.name, k.id, state(k.state), when(k.created_at), when(k.last_used_at),
          str(k.certificates_issued), k.profile or "-"] for k in keys],
    )


def renamed_text(tenant: str, name: str, new_name: str) -> str:
    return f'Renamed key "{name}" to "{new_name}" in tenant {tenant}.'


def suspended_text(tenant: str, name: str) -> str:
    return (f'Suspended key "{name}" in tenant {tenant}: it issues no certificates; '
            "certificates it issued still connect.")


def reactivated_text(tenant: str, name: str) -> str:
    return f'Reactivated key "{name}" in tenant {tenant}.'


def key_revoked_text(tenant: str, name: str) -> str:
    return (f'Revoked key "{name}" in tenant {tenant}. This is permanent: certificates it '
            "issued no longer connect.")


# --- the provisioning service and its issuers -------------------------------------------------


def service_enabled_text(tenant: str) -> str:
    return f"Provisioning service enabled for tenant {tenant}."


def service_disabled_text(tenant: str) -> str:
    return (f"Provisioning service disabled for tenant {tenant}: enrollment stops and "
            "provisioned certificates are no longer trusted.")


def service_status_json(tenant: str, enabled: bool) -> dict[str, Any]:
    return {"tenant": tenant, "provisioning_enabled": enabled}


def service_status_text(tenant: str, enabled: bool) -> str:
    return f"{tenant}: provisioning service {'enabled' if enabled else 'disabled'}"


def _issuer_json(i: IssuerRecord, enabled: bool) -> dict[str, Any]:
    return {
        "id": i.id,
        "tenant": i.tenant,
        "subject": getattr(i, "subject", None),
        "not_before": plain(i.not_before),
        "not_after": plain(i.not_after),
        "retired_at": plain(i.retired_at),
        # What the gateway trusts now: nothing while the service is disabled.
        "trusted": bool(i.trusted and enabled),
        "trusted_when_enabled": i.trusted,
        "sha256": getattr(i, "sha256", None),
    }


def _trusted_cell(i: IssuerRecord, enabled: bool) -> str:
    if not i.trusted:
        return "no"
    return "yes" if enabled else "no (service disabled)"


def ca_json(tenant: str, enabled: bool, issuers: Sequence[IssuerRecord]) -> dict[str, Any]:
    return {"tenant": tenant, "provisioning_enabled": enabled,
            "issuers": [_issuer_json(i, enabled) for i in issuers]}


def ca_text(tenant: str, enabled: bool, issuers: Sequence[IssuerRecord]) -> str:
    status = "enabled" if enabled else "disabled: the gateway trusts none of these issuers"
    return f"tenant {tenant}: provisioning service {status}\n" + table(
        ["ID", "NOT BEFORE", "NOT AFTER", "STATUS", "TRUSTED"],
        [[i.id, when(i.not_before), when(i.not_after),
          "retired " + when(i.retired_at) if i.retired_at else "current", _trusted_cell(i, enabled)]
         for i in issuers],
    )


def trusted_pem(enabled: bool, issuers: Sequence[IssuerRecord]) -> str:
    """The certificates of the issuers the gateway trusts now, concatenated."""
    return "".join(i.cert_pem for i in issuers if i.trusted and enabled)


def ca_pem_warning(tenant: str, enabled: bool, issuers: Sequence[IssuerRecord]) -> str | None:
    if enabled or not issuers:
        return None
    return (f"switch: provisioning service disabled for tenant {tenant}: the gateway trusts "
            "none of its issuers (switch service enable)")


def issuer_renewed_text(tenant: str, issuer: IssuerRecord) -> str:
    return (f"New provisioning issuer {issuer.id} for tenant {tenant}, valid until "
            f"{when(issuer.not_after)}; older issuers stay trusted until what they issued expires.")


# --- issued certificates and requests waiting for approval ------------------------------------


def certificates_json(records: Sequence[CertificateRecord]) -> list[dict[str, Any]]:
    return [{k: v for k, v in attrs.asdict(r).items() if k != "pem"} for r in records]


def certificates_text(records: Sequence[CertificateRecord]) -> str:
    return table(
        ["SERIAL", "SUBJECT", "KEY", "NOT AFTER", "STATE", "SHA256"],
        [[r.serial, r.subject, r.key_id or "-", when(r.not_after), r.state, r.sha256[:16] + "…"]
         for r in records])


def certificate_revoked_text(record: CertificateRecord) -> str:
    return f"Revoked certificate {record.serial} ({record.subject}) of tenant {record.tenant}."


def requests_json(requests: Sequence[PendingRequest]) -> list[dict[str, Any]]:
    return [attrs.asdict(r) for r in requests]


def requests_text(requests: Sequence[PendingRequest]) -> str:
    return table(
        ["ID", "TENANT", "SUBJECT", "KEY", "OPERATION", "STATE", "CREATED"],
        [[r.id, r.tenant, r.subject, r.key_id or "-", r.operation, r.state, when(r.created_at)]
         for r in requests])


def approved_text(request: PendingRequest) -> str:
    return (f"Approved {request.id} ({request.subject}): the agent gets its certificate "
            "when it repeats the request.")


def rejected_text(request: PendingRequest) -> str:
    return f"Rejected {request.id} ({request.subject})."


# --- the audit log -----------------------------------------------------------------------------


def audit_json(entries: Sequence[AuditEntry]) -> list[dict[str, Any]]:
    return [as_dict(e) for e in entries]


def audit_text(entries: Sequence[AuditEntry]) -> str:
    return table(
        ["SEQ", "TIME", "ACTOR", "TENANT", "ACTION", "TARGET", "REASON"],
        [[str(e.seq), when(e.ts), e.actor, e.tenant or "-", e.action, e.target or "-",
          e.reason or "-"] for e in entries],
    )


def audit_intact_text(result: AuditVerification) -> str:
    return (f"audit log intact: {result.entries_checked} entries, hash chain verified; "
            f"head {result.head_hash}")
