"""The ``AdminBackend`` over a running Switch's admin API (``--server URL``): each action is one
or a few HTTPS requests with the operator's token, and the answers are rebuilt into the same
records the local backend returns (``gateway.api.wire``), so the commands print the same.

Refusals come back as ``{"error": reason, "message": ...}``; a reason of enroll's error family is
raised as that error, the API's own (``role_forbidden``, ...) as ``CliExit``: either way the exit
code is the reason's, as for a local command. A server that cannot be reached, or whose
certificate does not verify against ``--ca-file`` (else the system's CAs), is
``server_unreachable`` (exit 4, as a store that cannot be opened).

The ``actor`` arguments are ignored: the server records the operator the token belongs to.
Commands that take no tenant (``requests approve ID``, ``certs revoke SERIAL`` without
``--tenant``, ``requests list`` without ``--tenant``) look through the tenants the operator may
see.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from config.tls_material import read_password_file
from enroll.audit import AuditEntry, AuditVerification
from enroll.errors import RateLimited, UnknownCertificate, UnknownRequest, error_classes
from enroll.issuers import IssuerRecord
from enroll.keys import KeyRecord
from enroll.store import CertificateRecord, PendingRequest
from gateway.api import wire
from gateway.cli.exits import CliExit

SERVER_ENV = "SWITCH_SERVER"
TOKEN_FILE_ENV = "SWITCH_TOKEN_FILE"
TIMEOUT_S = 30.0
AUDIT_PAGE = 1000


def _segment(value: str) -> str:
    return quote(value, safe="")


class RemoteBackend:
    def __init__(self, server: str, token: str, *, ca_file: str | None = None,
                 timeout_s: float = TIMEOUT_S) -> None:
        self.server = server.rstrip("/")
        # The system's CAs unless --ca-file names others (not httpx's bundled certifi list).
        verify = ssl.create_default_context(cafile=ca_file)
        self.client = httpx.Client(
            base_url=f"{self.server}/api/v1", verify=verify,
            timeout=timeout_s, trust_env=False, follow_redirects=False,
            headers={"Authorization": f"Bearer {token}", "User-Agent": "switch-cli"})

    @classmethod
    def from_options(cls, server: str, token_file: str | None, ca_file: str | None
                     ) -> RemoteBackend:
        path = token_file or os.environ.get(TOKEN_FILE_ENV)
        if not path:
            raise CliExit("usage", f"--server needs --token-file (or ${TOKEN_FILE_ENV}): the "
                          "operator token, never on the command line")
        try:
            token = read_password_file(Path(path)).decode().strip()
        except (ValueError, UnicodeDecodeError) as exc:
            raise CliExit("usage", f"cannot read the token file: {exc}") from exc
        if ca_file is not None and not Path(ca_file).is_file():
            raise CliExit("usage", f"--ca-file {ca_file}: no such file")
        return cls(server, token, ca_file=ca_file)

    def close(self) -> None:
        self.client.close()

    # --- one request ---------------------------------------------------------------------------

    def _call(self, method: str, path: str, *, body: Mapping[str, Any] | None = None,
              params: Mapping[str, Any] | None = None) -> Any:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self.client.request(method, path, json=body, params=query)
        except httpx.HTTPError as exc:
            raise CliExit("server_unreachable", f"{self.server}: {exc}") from exc
        if response.is_success:
            return response.json()
        try:
            refusal = response.json()
            reason, message = str(refusal["error"]), str(refusal.get("message", ""))
        except (ValueError, KeyError, TypeError):
            raise CliExit("server_unreachable", f"{self.server} answered {response.status_code} "
                          "without a Switch refusal: is it a Switch admin API?") from None
        if reason == RateLimited.reason:
            raise RateLimited(message, retry_after=int(response.headers.get("Retry-After", "60")))
        error = error_classes().get(reason)
        if error is not None:
            raise error(message)
        raise CliExit(reason, message)

    def _tenants(self) -> list[str]:
        return [t["name"] for t in self._call("GET", "/tenants")]

    def _key(self, tenant: str, name: str, action: str = "") -> str:
        return f"/tenants/{_segment(tenant)}/keys/{_segment(name)}{action}"

    # --- provisioning keys ---------------------------------------------------------------------

    def generate_key(self, tenant: str, name: str, *, actor: str, profile: str | None
                     ) -> tuple[KeyRecord, str]:
        body: dict[str, Any] = {"name": name}
        if profile is not None:
            body["profile"] = profile
        made = self._call("POST", f"/tenants/{_segment(tenant)}/keys", body=body)
        return wire.key_from_json(made), str(made["secret"])

    def list_keys(self, tenant: str) -> list[KeyRecord]:
        return [wire.key_from_json(k) for k in self._call("GET", f"/tenants/{_segment(tenant)}/keys")]

    def rename_key(self, tenant: str, name: str, new_name: str, *, actor: str) -> KeyRecord:
        return wire.key_from_json(self._call("PATCH", self._key(tenant, name),
                                             body={"name": new_name}))

    def suspend_key(self, tenant: str, name: str, *, reason: str | None, actor: str
                    ) -> KeyRecord:
        return wire.key_from_json(self._call("POST", self._key(tenant, name, "/suspend"), body={
            "reason": reason or "", "acknowledge": True}))

    def reactivate_key(self, tenant: str, name: str, *, actor: str) -> KeyRecord:
        return wire.key_from_json(self._call("POST", self._key(tenant, name, "/reactivate"),
                                             body={"acknowledge": True}))

    def revoke_key(self, tenant: str, name: str, *, reason: str | None, confirm: str | None,
                   actor: str) -> KeyRecord:
        return wire.key_from_json(self._call("POST", self._key(tenant, name, "/revoke"), body={
            "reason": reason or "", "confirm_name": confirm or "", "acknowledge": True}))

    # --- the provisioning service and its issuers ----------------------------------------------

    def service_enabled(self, tenant: str) -> bool:
        return bool(self._call("GET", f"/tenants/{_segment(tenant)}/service")
                    ["provisioning_enabled"])

    def _set_service(self, tenant: str, enabled: bool) -> None:
        self._call("PUT", f"/tenants/{_segment(tenant)}/service",
                   body={"enabled": enabled, "acknowledge": True})

    def enable_service(self, tenant: str, *, actor: str) -> None:
        self._set_service(tenant, True)

    def disable_service(self, tenant: str, *, actor: str) -> None:
        """The command asked for ``--yes`` before calling this: the acknowledgement."""
        self._set_service(tenant, False)

    def list_issuers(self, tenant: str) -> list[IssuerRecord]:
        return [wire.issuer_from_json(i)
                for i in self._call("GET", f"/tenants/{_segment(tenant)}/issuers")]

    def renew_issuer(self, tenant: str, *, actor: str) -> IssuerRecord:
        return wire.issuer_from_json(self._call("POST", f"/tenants/{_segment(tenant)}/issuers/renew"))

    # --- issued certificates and requests waiting for approval ---------------------------------

    def list_certificates(self, tenant: str, *, key: str | None) -> list[CertificateRecord]:
        return [wire.certificate_from_json(c) for c in self._call(
            "GET", f"/tenants/{_segment(tenant)}/certificates", params={"key": key})]

    def revoke_certificate(self, serial: str, *, reason: str | None, actor: str,
                           tenant: str | None) -> CertificateRecord:
        if tenant is None:  # the tenant whose certificate this is, if exactly one has it
            holders = [t for t in self._tenants() if self._call(
                "GET", f"/tenants/{_segment(t)}/certificates", params={"serial": serial})]
            if len(holders) != 1:
                raise UnknownCertificate(f"no certificate with serial {serial}" if not holders
                                         else f"serial {serial} is in several tenants "
                                              f"({', '.join(holders)}): name one with --tenant")
            tenant = holders[0]
        return wire.certificate_from_json(self._call(
            "POST", f"/tenants/{_segment(tenant)}/certificates/{_segment(serial)}/revoke",
            body={"reason": reason or ""}))

    def list_requests(self, tenant: str | None, *, state: str | None) -> list[PendingRequest]:
        tenants = [tenant] if tenant is not None else self._tenants()
        found = [wire.request_from_json(r) for t in tenants for r in self._call(
            "GET", f"/tenants/{_segment(t)}/requests", params={"state": state})]
        return sorted(found, key=lambda r: (r.created_at, r.id))  # the store's order

    def _request_tenant(self, request_id: str) -> str:
        for request in self.list_requests(None, state=None):
            if request.id == request_id:
                return request.tenant
        raise UnknownRequest(f"no request {request_id!r}")

    def approve_request(self, request_id: str, *, actor: str) -> PendingRequest:
        tenant = self._request_tenant(request_id)
        return wire.request_from_json(self._call(
            "POST", f"/tenants/{_segment(tenant)}/requests/{_segment(request_id)}/approve"))

    def reject_request(self, request_id: str, *, reason: str | None, actor: str
                       ) -> PendingRequest:
        tenant = self._request_tenant(request_id)
        body = {"reason": reason} if reason is not None else {}
        return wire.request_from_json(self._call(
            "POST", f"/tenants/{_segment(tenant)}/requests/{_segment(request_id)}/reject",
            body=body))

    # --- the audit log -------------------------------------------------------------------------

    def _audit_pages(self, tenant: str | None) -> Iterator[AuditEntry]:
        cursor: int | None = None
        while True:
            page = self._call("GET", "/audit", params={"tenant": tenant, "limit": AUDIT_PAGE,
                                                       "cursor": cursor})
            yield from (wire.audit_from_json(e) for e in page["entries"])
            cursor = page["next_cursor"]
            if cursor is None:
                return

    def audit_entries(self, tenant: str | None) -> list[AuditEntry]:
        """Oldest first, as the local backend."""
        return list(reversed(list(self._audit_pages(tenant))))

    def verify_audit(self) -> AuditVerification:
        return wire.verification_from_json(self._call("GET", "/audit/verify"))
