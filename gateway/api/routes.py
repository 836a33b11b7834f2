"""The admin API's endpoints: each declared with its method, path, access (read or change), body
and query, and a small handler that asks the authority and answers with ``gateway.api.wire``'s
JSON. Handlers run after ``gateway.api.app.guard`` authenticated the operator and authorised the
route for the tenant in its path: they check only what the request asks for.

Every change is committed by the store before its handler returns; the handler then emits the
change's event for the webhooks (``Emit``: non-blocking, after the commit). The actor is always
``call.principal.actor``. Keys are named in paths by id (``pk_...``) or by exact name: both are
unique in a tenant and cannot be confused (a name has no ``_``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar, TypeVarTuple

import attrs
import trio

from enroll.authority import Authority
from enroll.errors import UnknownRequest
from enroll.issuance import Issuance
from enroll.store import AuditQuery
from gateway.api import wire
from gateway.api.auth import Access, Authenticator, Principal, authorize
from gateway.api.errors import AcknowledgementRequired, InvalidRequest
from gateway.api.schema import ACKNOWLEDGE, REASON, Body, Field

T = TypeVar("T")
Ts = TypeVarTuple("Ts")
#: The most audit entries one page holds.
MAX_AUDIT_PAGE = 1000


class Emit(Protocol):
    """Hands an event to the webhooks (never blocks, never fails: see ``gateway.webhooks``)."""

    def __call__(self, event: str, *, tenant: str | None, actor: str,
                 data: Mapping[str, Any]) -> None: ...


@attrs.define(eq=False)
class ApiContext:
    """What the handlers use: the authority (its store one call at a time in a worker thread,
    shared with the rest of the process through ``store_limiter``) and the event sink."""

    authority: Authority
    issuance: Issuance
    authenticator: Authenticator
    store_limiter: trio.CapacityLimiter
    emit: Emit

    async def run(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.store_limiter)


@attrs.frozen
class Call:
    principal: Principal
    params: Mapping[str, str]
    query: Mapping[str, Any]
    body: Mapping[str, Any]
    api: ApiContext

    @property
    def tenant(self) -> str:
        return self.params["tenant"]

    @property
    def actor(self) -> str:
        return self.principal.actor


@attrs.frozen
class Reply:
    body: Any
    status: int = 200


Handler = Callable[[Call], Awaitable[Reply]]


@attrs.frozen
class Endpoint:
    method: str
    #: Under /api/v1; ``{tenant}`` makes the route tenant-scoped (authorised per tenant).
    path: str
    access: Access
    handler: Handler
    summary: str
    body: Body | None = None
    query: tuple[Field, ...] = ()
    status: int = 200
    #: The OpenAPI schema name of the reply (``gateway.api.openapi``).
    response: str = "Object"

    @property
    def name(self) -> str:
        return f"{self.method} {self.path}"


def _acknowledged(call: Call) -> None:
    if call.body.get("acknowledge") is not True:
        raise AcknowledgementRequired('this action needs "acknowledge": true ("I understand '
                                      'the impact of this action and want to proceed")')


def _emit(call: Call, event: str, **data: Any) -> None:
    call.api.emit(event, tenant=call.params.get("tenant"), actor=call.actor, data=data)


# --- who is asking, and the tenants --------------------------------------------------------------


async def whoami(call: Call) -> Reply:
    p = call.principal
    return Reply({"operator": p.operator, "role": p.role, "tenants": p.tenants,
                  "can_change": p.can_change, "credential": p.credential})


def _tenant_json(api: ApiContext, name: str) -> dict[str, Any]:
    tenant = api.authority.config.tenants[name]
    return {"name": name, "hostnames": list(tenant.hostnames),
            "provisioning_enabled": api.authority.service_enabled(name),
            "organisation_trust": tenant.uses_organisation_cas}


async def list_tenants(call: Call) -> Reply:
    api = call.api
    names = call.principal.visible(api.authority.config.tenants)
    return Reply([await api.run(_tenant_json, api, name) for name in names])


async def get_tenant(call: Call) -> Reply:
    return Reply(await call.api.run(_tenant_json, call.api, call.tenant))


# --- the provisioning service ---------------------------------------------------------------------


async def get_service(call: Call) -> Reply:
    enabled = await call.api.run(call.api.authority.service_enabled, call.tenant)
    return Reply({"tenant": call.tenant, "provisioning_enabled": enabled})


async def put_service(call: Call) -> Reply:
    enabled = call.body["enabled"]
    if not enabled:
        _acknowledged(call)
    authority = call.api.authority
    change = authority.enable_service if enabled else authority.disable_service
    changed = await call.api.run(lambda: change(call.tenant, actor=call.actor))
    if changed:
        _emit(call, "service.enabled" if enabled else "service.disabled")
    return Reply({"tenant": call.tenant, "provisioning_enabled": enabled, "changed": changed})


# --- provisioning keys ------------------------------------------------------------------------------


async def list_keys(call: Call) -> Reply:
    keys = await call.api.run(call.api.authority.list_keys, call.tenant)
    return Reply([wire.key_json(k) for k in keys])


async def create_key(call: Call) -> Reply:
    name, profile = call.body["name"], call.body.get("profile")
    record, secret = await call.api.run(lambda: call.api.authority.generate_key(
        call.tenant, name, actor=call.actor, profile=profile))
    _emit(call, "key.created", key=wire.key_json(record))
    return Reply({**wire.key_json(record), "secret": secret}, 201)


async def get_key(call: Call) -> Reply:
    record = await call.api.run(call.api.authority.get_key, call.tenant, call.params["key"])
    return Reply(wire.key_json(record))


async def rename_key(call: Call) -> Reply:
    authority, key = call.api.authority, call.params["key"]

    def rename() -> tuple[str, Any]:
        before = authority.get_key(call.tenant, key).name
        return before, authority.rename_key(call.tenant, key, call.body["name"], actor=call.actor)
    before, record = await call.api.run(rename)
    _emit(call, "key.renamed", key=wire.key_json(record), previous_name=before)
    return Reply(wire.key_json(record))


_KEY_EVENTS = {"suspend": "key.suspended", "reactivate": "key.reactivated",
               "revoke": "key.revoked"}


def _transition(action: str) -> Handler:
    async def handler(call: Call) -> Reply:
        _acknowledged(call)
        authority, key, reason = call.api.authority, call.params["key"], call.body.get("reason")
        if action == "suspend":
            record = await call.api.run(lambda: authority.suspend_key(
                call.tenant, key, reason=reason or "", actor=call.actor))
        elif action == "reactivate":
            record = await call.api.run(lambda: authority.reactivate_key(
                call.tenant, key, actor=call.actor))
        else:
            confirm = call.body.get("confirm_name") or ""
            record = await call.api.run(lambda: authority.revoke_key(
                call.tenant, key, reason=reason or "", confirm=confirm, actor=call.actor))
        _emit(call, _KEY_EVENTS[action], key=wire.key_json(record), reason=record.state_reason)
        return Reply(wire.key_json(record))
    handler.__name__ = f"{action}_key"
    return handler


# --- issuers -----------------------------------------------------------------------------------------


async def list_issuers(call: Call) -> Reply:
    authority = call.api.authority

    def read() -> tuple[bool, list[Any]]:
        return authority.service_enabled(call.tenant), authority.list_issuers(call.tenant)
    enabled, issuers = await call.api.run(read)
    return Reply([wire.issuer_json(i, enabled) for i in issuers])


async def renew_issuer(call: Call) -> Reply:
    authority = call.api.authority

    def renew() -> tuple[bool, Any]:
        issuer = authority.renew_issuer(call.tenant, actor=call.actor)
        return authority.service_enabled(call.tenant), issuer
    enabled, issuer = await call.api.run(renew)
    body = wire.issuer_json(issuer, enabled)
    _emit(call, "issuer.renewed", issuer={k: body[k] for k in ("id", "sha256", "not_after")})
    return Reply(body, 201)


# --- certificates --------------------------------------------------------------------------------------


async def list_certificates(call: Call) -> Reply:
    q = call.query
    records = await call.api.run(lambda: call.api.issuance.list_certificates(
        call.tenant, key=q.get("key"), state=q.get("state")))
    serial = q.get("serial")
    if serial is not None:
        wanted = serial.lower().replace(":", "").lstrip("0") or "0"
        records = [r for r in records if r.serial == wanted]
    return Reply([wire.certificate_json(r) for r in records])


async def revoke_certificate(call: Call) -> Reply:
    record = await call.api.run(lambda: call.api.issuance.revoke_certificate(
        call.params["serial"], reason=call.body.get("reason"), actor=call.actor,
        tenant=call.tenant))
    _emit(call, "certificate.revoked", certificate=wire.certificate_json(record))
    return Reply(wire.certificate_json(record))


# --- requests waiting for approval ----------------------------------------------------------------------


async def list_requests(call: Call) -> Reply:
    requests = await call.api.run(call.api.issuance.list_requests, call.tenant,
                                  call.query.get("state"))
    return Reply([wire.request_json(r) for r in requests])


def _decide(approve: bool) -> Handler:
    async def handler(call: Call) -> Reply:
        issuance, request_id = call.api.issuance, call.params["request"]

        def decide() -> Any:
            # The id must be one of this tenant's requests: another tenant's is not found.
            if not any(r.id == request_id for r in issuance.list_requests(call.tenant)):
                raise UnknownRequest(f"tenant {call.tenant} has no request {request_id!r}")
            if approve:
                return issuance.approve(request_id, actor=call.actor)
            return issuance.reject(request_id, reason=call.body.get("reason"), actor=call.actor)
        request = await call.api.run(decide)
        _emit(call, "request.approved" if approve else "request.rejected",
              request=wire.request_json(request))
        return Reply(wire.request_json(request))
    handler.__name__ = "approve_request" if approve else "reject_request"
    return handler


# --- the audit log ---------------------------------------------------------------------------------------


async def audit_list(call: Call) -> Reply:
    q, p = call.query, call.principal
    tenant = q.get("tenant")
    if tenant is not None:  # a filter on a tenant the operator cannot see finds nothing: 404
        authorize(p, Access.READ, tenant, call.api.authority.config.tenants)
    query = AuditQuery(tenant=tenant, actor=q.get("actor"), action=q.get("action"),
                       target=q.get("target"), since=q.get("since"), until=q.get("until"),
                       limit=q.get("limit", 100), before_seq=q.get("cursor"),
                       tenants=None if p.tenants is None else p.tenants)
    if query.since is not None and query.until is not None and query.since > query.until:
        raise InvalidRequest("query parameter 'since' is after 'until'")
    page = await call.api.run(call.api.authority.audit_page, query)
    return Reply({"entries": [wire.audit_json(e) for e in page.entries],
                  "next_cursor": page.next_cursor})


async def audit_verify(call: Call) -> Reply:
    result = await call.api.run(call.api.authority.verify_audit)
    return Reply(wire.verification_json(result))


# --- the table ----------------------------------------------------------------------------------------------

R, C = Access.READ, Access.CHANGE
T_ = "/tenants/{tenant}"

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/whoami", R, whoami, "The operator the credential belongs to",
             response="Whoami"),
    Endpoint("GET", "/tenants", R, list_tenants, "The tenants this operator may see",
             response="TenantList"),
    Endpoint("GET", T_, R, get_tenant, "One tenant", response="Tenant"),
    Endpoint("GET", f"{T_}/service", R, get_service, "Whether provisioning is enabled",
             response="Service"),
    Endpoint("PUT", f"{T_}/service", C, put_service, "Enable or disable the provisioning "
             "service (disabling needs the acknowledgement)",
             body=Body((Field("enabled", bool, required=True), ACKNOWLEDGE)), response="Service"),
    Endpoint("GET", f"{T_}/keys", R, list_keys, "The tenant's provisioning keys (never their "
             "secrets)", response="KeyList"),
    Endpoint("POST", f"{T_}/keys", C, create_key, "Generate a key: the reply holds its secret, "
             "once", body=Body((Field("name", str, required=True),
                                Field("profile", str, description="certificate profile"))),
             status=201, response="NewKey"),
    Endpoint("GET", f"{T_}/keys/{{key}}", R, get_key, "One key, by id or exact name",
             response="Key"),
    Endpoint("PATCH", f"{T_}/keys/{{key}}", C, rename_key, "Rename a key",
             body=Body((Field("name", str, required=True),)), response="Key"),
    Endpoint("POST", f"{T_}/keys/{{key}}/suspend", C, _transition("suspend"),
             "Suspend a key: it issues nothing; its certificates still connect",
             body=Body((REASON, ACKNOWLEDGE)), response="Key"),
    Endpoint("POST", f"{T_}/keys/{{key}}/reactivate", C, _transition("reactivate"),
             "Reactivate a suspended key", body=Body((ACKNOWLEDGE,)), response="Key"),
    Endpoint("POST", f"{T_}/keys/{{key}}/revoke", C, _transition("revoke"),
             "Revoke a key for good: its certificates stop connecting",
             body=Body((REASON, Field("confirm_name", str, description="the key's name typed "
                                      "again, case-sensitive"), ACKNOWLEDGE)), response="Key"),
    Endpoint("GET", f"{T_}/issuers", R, list_issuers, "The tenant's provisioning issuers, "
             "oldest first", response="IssuerList"),
    Endpoint("POST", f"{T_}/issuers/renew", C, renew_issuer, "Add a new issuer; older ones "
             "stay trusted while what they issued is valid", body=Body(()), status=201,
             response="Issuer"),
    Endpoint("GET", f"{T_}/certificates", R, list_certificates, "Issued certificates, oldest "
             "first", query=(Field("key", str, description="a key's id or name"),
                             Field("state", str, choices=("valid", "revoked")),
                             Field("serial", str, description="hex, any case, ':' allowed")),
             response="CertificateList"),
    Endpoint("POST", f"{T_}/certificates/{{serial}}/revoke", C, revoke_certificate,
             "Revoke one certificate", body=Body((REASON,)), response="Certificate"),
    Endpoint("GET", f"{T_}/requests", R, list_requests, "Enrollment requests held for "
             "approval", query=(Field("state", str, choices=("pending", "approved", "rejected",
                                                              "issued")),),
             response="RequestList"),
    Endpoint("POST", f"{T_}/requests/{{request}}/approve", C, _decide(True),
             "Approve a pending request", body=Body(()), response="Request"),
    Endpoint("POST", f"{T_}/requests/{{request}}/reject", C, _decide(False),
             "Reject a pending request", body=Body((REASON,)), response="Request"),
    Endpoint("GET", "/audit", R, audit_list, "Audit entries, newest first, a page at a time "
             "(of the operator's tenants only, for a tenant-scoped operator)",
             query=(Field("tenant", str), Field("actor", str), Field("action", str),
                    Field("target", str, description="a key's id, a certificate's serial, "
                          "a request's id, an operator's name"),
                    Field("since", int, description="Unix seconds", minimum=0),
                    Field("until", int, description="Unix seconds", minimum=0),
                    Field("limit", int, minimum=1, maximum=MAX_AUDIT_PAGE),
                    Field("cursor", int, description="next_cursor of the previous page",
                          minimum=1)),
             response="AuditPage"),
    Endpoint("GET", "/audit/verify", R, audit_verify, "Check the audit log's hash chain",
             response="AuditVerification"),
)
del R, C, T_
