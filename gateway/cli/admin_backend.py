"""What the security-admin commands ask of the authority: the ``AdminBackend`` interface, and
its local implementation over the store named by the config (``Authority`` and ``Issuance``).

The commands (``gateway.cli.admin_commands``) call a backend and print what it returns; they
never open the store themselves. A backend answers with enroll's records (``KeyRecord``,
``IssuerRecord``, ``CertificateRecord``, ``PendingRequest``, ``AuditEntry``,
``AuditVerification``) and refuses with enroll's errors (``enroll.errors``: the reason code
decides the exit code), so that another backend, one speaking to a server's admin API, can take
this one's place without the commands or their output changing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from gateway.cli.common import load

if TYPE_CHECKING:
    from enroll.audit import AuditEntry, AuditVerification
    from enroll.authority import Authority
    from enroll.issuance import CertificateRecord, PendingRequest
    from enroll.issuers import IssuerRecord
    from enroll.keys import KeyRecord


class AdminBackend(Protocol):
    """The security admin's actions. ``actor`` names who acts, for the audit log."""

    # --- provisioning keys
    def generate_key(self, tenant: str, name: str, *, actor: str, profile: str | None
                     ) -> tuple[KeyRecord, str]:
        """A new active key and its secret (returned this once, never again)."""
        ...

    def list_keys(self, tenant: str) -> list[KeyRecord]: ...

    def rename_key(self, tenant: str, name: str, new_name: str, *, actor: str) -> KeyRecord: ...

    def suspend_key(self, tenant: str, name: str, *, reason: str | None, actor: str
                    ) -> KeyRecord: ...

    def reactivate_key(self, tenant: str, name: str, *, actor: str) -> KeyRecord: ...

    def revoke_key(self, tenant: str, name: str, *, reason: str | None, confirm: str | None,
                   actor: str) -> KeyRecord: ...

    # --- the provisioning service and its issuers
    def service_enabled(self, tenant: str) -> bool: ...

    def enable_service(self, tenant: str, *, actor: str) -> None: ...

    def disable_service(self, tenant: str, *, actor: str) -> None: ...

    def list_issuers(self, tenant: str) -> list[IssuerRecord]:
        """Oldest first, each marked ``trusted`` (while the service is enabled) or not, now."""
        ...

    def renew_issuer(self, tenant: str, *, actor: str) -> IssuerRecord: ...

    # --- issued certificates and requests waiting for approval
    def list_certificates(self, tenant: str, *, key: str | None) -> list[CertificateRecord]: ...

    def revoke_certificate(self, serial: str, *, reason: str | None, actor: str,
                           tenant: str | None) -> CertificateRecord: ...

    def list_requests(self, tenant: str | None, *, state: str | None) -> list[PendingRequest]: ...

    def approve_request(self, request_id: str, *, actor: str) -> PendingRequest: ...

    def reject_request(self, request_id: str, *, reason: str | None, actor: str
                       ) -> PendingRequest: ...

    # --- the audit log
    def audit_entries(self, tenant: str | None) -> list[AuditEntry]: ...

    def verify_audit(self) -> AuditVerification: ...


class LocalBackend:
    """The backend over this machine's store: each action is the authority's own, one
    transaction each (the store serialises concurrent commands)."""

    def __init__(self, authority: Authority) -> None:
        from enroll.issuance import Issuance

        self.authority = authority
        self.issuance = Issuance(authority)

    def generate_key(self, tenant: str, name: str, *, actor: str, profile: str | None
                     ) -> tuple[KeyRecord, str]:
        return self.authority.generate_key(tenant, name, actor=actor, profile=profile)

    def list_keys(self, tenant: str) -> list[KeyRecord]:
        return self.authority.list_keys(tenant)

    def rename_key(self, tenant: str, name: str, new_name: str, *, actor: str) -> KeyRecord:
        return self.authority.rename_key(tenant, name, new_name, actor=actor)

    def suspend_key(self, tenant: str, name: str, *, reason: str | None, actor: str
                    ) -> KeyRecord:
        return self.authority.suspend_key(tenant, name, reason=reason, actor=actor)

    def reactivate_key(self, tenant: str, name: str, *, actor: str) -> KeyRecord:
        return self.authority.reactivate_key(tenant, name, actor=actor)

    def revoke_key(self, tenant: str, name: str, *, reason: str | None, confirm: str | None,
                   actor: str) -> KeyRecord:
        return self.authority.revoke_key(tenant, name, reason=reason, confirm=confirm,
                                         actor=actor)

    def service_enabled(self, tenant: str) -> bool:
        return self.authority.service_enabled(tenant)

    def enable_service(self, tenant: str, *, actor: str) -> None:
        self.authority.enable_service(tenant, actor=actor)

    def disable_service(self, tenant: str, *, actor: str) -> None:
        self.authority.disable_service(tenant, actor=actor)

    def list_issuers(self, tenant: str) -> list[IssuerRecord]:
        return self.authority.list_issuers(tenant)

    def renew_issuer(self, tenant: str, *, actor: str) -> IssuerRecord:
        return self.authority.renew_issuer(tenant, actor=actor)

    def list_certificates(self, tenant: str, *, key: str | None) -> list[CertificateRecord]:
        return self.issuance.list_certificates(tenant, key=key)

    def revoke_certificate(self, serial: str, *, reason: str | None, actor: str,
                           tenant: str | None) -> CertificateRecord:
        return self.issuance.revoke_certificate(serial, reason=reason, actor=actor, tenant=tenant)

    def list_requests(self, tenant: str | None, *, state: str | None) -> list[PendingRequest]:
        return self.issuance.list_requests(tenant, state)

    def approve_request(self, request_id: str, *, actor: str) -> PendingRequest:
        return self.issuance.approve(request_id, actor=actor)

    def reject_request(self, request_id: str, *, reason: str | None, actor: str
                       ) -> PendingRequest:
        return self.issuance.reject(request_id, reason=reason, actor=actor)

    def audit_entries(self, tenant: str | None) -> list[AuditEntry]:
        return self.authority.audit_entries(tenant)

    def verify_audit(self) -> AuditVerification:
        return self.authority.verify_audit()


#: Where ``--server`` comes from when it is not given (as in ``gateway.cli.remote_backend``).
SERVER_ENV = "SWITCH_SERVER"


@contextlib.contextmanager
def open_backend(args: argparse.Namespace) -> Iterator[AdminBackend]:
    """The backend for a command's options, closed when the command is done: with ``--server``
    (or ``$SWITCH_SERVER``), the admin API of that server (``remote_backend``: the operator of
    ``--token-file`` acts); else the store of the config ``-c`` names (a config that does not
    load is ``config_invalid``, a store that does not open ``store_error``), where the OS user
    acts (``local:<user>``)."""
    server = getattr(args, "server", None) or os.environ.get(SERVER_ENV)
    if server:
        from gateway.cli.remote_backend import RemoteBackend

        remote = RemoteBackend.from_options(server, getattr(args, "token_file", None),
                                            getattr(args, "ca_file", None))
        try:
            yield remote
        finally:
            remote.close()
        return
    from enroll.authority import Authority

    authority = Authority.open(load(args))
    try:
        yield LocalBackend(authority)
    finally:
        authority.close()
