"""The admin API's OpenAPI 3.1 document, written from the endpoint table
(``gateway.api.routes.ENDPOINTS``: paths, methods, bodies, query parameters) and the reply
schemas below, so that it cannot drift from what is served. Served at
``/api/v1/openapi.json`` (to an authenticated operator, like every route); a test validates it
with openapi-spec-validator.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from gateway.api.auth import Access
from gateway.api.errors import STATUS_BY_REASON
from gateway.api.routes import Call, Endpoint, Reply

_S, _I, _B = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}


def _null(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _obj(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties)}


def _list(name: str) -> dict[str, Any]:
    return {"type": "array", "items": {"$ref": f"#/components/schemas/{name}"}}


_KEY = _obj(id=_S, tenant=_S, name=_S, state={"enum": ["active", "suspended", "revoked"]},
            profile=_null(_S), created_at=_I, updated_at=_I, last_used_at=_null(_I),
            certificates_issued=_I, state_reason=_null(_S))
_TIME = "Unix seconds (UTC)"

SCHEMAS: dict[str, Any] = {
    "Error": {**_obj(error={**_S, "description": "stable reason code"}, message=_S)},
    "Object": {"type": "object"},
    "Whoami": _obj(operator=_S, role={"enum": ["security-read", "security-admin"]},
                   tenants=_null({"type": "array", "items": _S}), can_change=_B, credential=_S),
    "Tenant": _obj(name=_S, hostnames={"type": "array", "items": _S}, provisioning_enabled=_B,
                   organisation_trust=_B),
    "TenantList": _list("Tenant"),
    "Service": {"type": "object", "properties": {"tenant": _S, "provisioning_enabled": _B,
                                                 "changed": _B},
                "required": ["tenant", "provisioning_enabled"]},
    "Key": {**_KEY, "description": f"A provisioning key; times in {_TIME}"},
    "KeyList": _list("Key"),
    "NewKey": {**_KEY, "properties": {**_KEY["properties"], "secret": {
        **_S, "description": "the key's secret: shown in this reply only"}},
        "required": [*_KEY["required"], "secret"]},
    "Issuer": _obj(id=_S, tenant=_S, seq=_I, subject=_S, sha256=_S, not_before=_I, not_after=_I,
                   created_at=_I, retired_at=_null(_I), trusted=_B, trusted_when_enabled=_B,
                   cert_pem=_S),
    "IssuerList": _list("Issuer"),
    "Certificate": _obj(serial=_S, issuer_id=_S, tenant=_S, key_id=_null(_S), subject=_S,
                        not_before=_I, not_after=_I, sha256=_S,
                        state={"enum": ["valid", "revoked"]}, revoked_at=_null(_I),
                        revoke_reason=_null(_S), created_at=_I),
    "CertificateList": _list("Certificate"),
    "Request": _obj(id=_S, tenant=_S, key_id=_null(_S), request_digest=_S, subject=_S,
                    state={"enum": ["pending", "approved", "rejected", "issued"]},
                    created_at=_I, decided_at=_null(_I), decided_by=_null(_S),
                    reason=_null(_S), certificate_serial=_null(_S),
                    operation={"enum": ["simpleenroll", "serverkeygen"]}),
    "RequestList": _list("Request"),
    "AuditEntry": _obj(seq=_I, ts=_I, actor=_S, tenant=_null(_S), action=_S, target=_null(_S),
                       reason=_null(_S), details={"type": "object"}, prev_hash=_S, hash=_S),
    "AuditPage": _obj(entries=_list("AuditEntry"), next_cursor=_null(_I)),
    "AuditVerification": _obj(ok=_B, entries_checked=_I, head_hash=_S,
                              first_bad_seq=_null(_I), problem=_null(_S)),
}

_ERROR_STATUSES = sorted({s for s in STATUS_BY_REASON.values()} | {404, 405})


def _operation(e: Endpoint, prefix: str) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": _S}
        for name in re.findall(r"\{(\w+)\}", e.path)]
    parameters += [{"name": f.name, "in": "query", "required": False, "schema": f.schema()}
                   for f in e.query]
    responses: dict[str, Any] = {str(e.status): {
        "description": "done" if e.access is Access.CHANGE else "found",
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{e.response}"}}}}}
    for status in _ERROR_STATUSES:
        responses[str(status)] = {"$ref": "#/components/responses/Error"}
    op: dict[str, Any] = {
        "operationId": re.sub(r"\W+", "_", f"{e.method.lower()}{e.path}").strip("_"),
        "summary": e.summary,
        "description": ("Changes state: role security-admin." if e.access is Access.CHANGE
                        else "Reads: every role."),
        "parameters": parameters, "responses": responses,
    }
    if e.body is not None:
        op["requestBody"] = {"required": False, "content": {
            "application/json": {"schema": e.body.schema()}}}
    return op


def document(endpoints: Sequence[Endpoint], prefix: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for e in endpoints:
        paths.setdefault(prefix + e.path, {})[e.method.lower()] = _operation(e, prefix)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Switch admin API", "version": "1",
                 "description": "Operators' actions on provisioning keys, the provisioning "
                                "service, issuers, certificates, requests and the audit log. "
                                "Errors are {\"error\": reason, \"message\": text}. See "
                                "docs/api.md."},
        "security": [{"bearer": []}, {"session": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "an operator token (swo_...)"},
                "session": {"type": "apiKey", "in": "cookie", "name": "__Host-switch-session",
                            "description": "the console's session (docs/console.md); a change "
                                           "also needs the X-CSRF-Token header"}},
            "schemas": SCHEMAS,
            "responses": {"Error": {"description": "refused", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Error"}}}}},
        },
    }


def openapi_endpoint(endpoints: Sequence[Endpoint], prefix: str) -> Endpoint:
    """``GET /openapi.json``: the document of ``endpoints`` and of itself."""
    async def openapi(call: Call) -> Reply:
        return Reply(doc)

    this = Endpoint("GET", "/openapi.json", Access.READ, openapi, "This document")
    doc = document((*endpoints, this), prefix)
    return this
