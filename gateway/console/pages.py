"""The console's pages, each a handler of a ``Page``: the Provisioning Service page (seed 000's:
the two toggles and the keys table), a key's details, issued certificates, requests held for
approval, the tenant's issuers and the audit information log. Each reads through the API
(``Page.get``) and renders its template; what an operator may change is offered only to a
``security-admin`` (``can_change``), and refused by the API anyway."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import trio
from starlette.responses import RedirectResponse, Response

from enroll.errors import EnrollError
from enroll.keys import MAX_LIVE_KEYS, MAX_NAME_CHARS
from gateway.api.errors import ApiError
from gateway.console import messages, views
from gateway.console.web import Page

#: The pages a tenant has, by the name the tenant picker sends (``page``).
TENANT_PAGES = ("provisioning", "certificates", "requests", "issuers")
#: Certificates listed at most (the newest); a search narrows them.
MAX_CERTIFICATES = 500
AUDIT_PAGE_SIZE = 50


async def home(page: Page) -> Response:
    """``/``: the chosen tenant's page (the tenant picker), or the first tenant's."""
    tenant = page.current_tenant
    if tenant is None:
        return await page.render("error.html", "", 404, title="No tenant",
                                 message="You may act on no tenant of this configuration. Ask "
                                         "the operator who runs Switch.")
    kind = page.request.query_params.get("page", "provisioning")
    if kind == "audit":
        return RedirectResponse(f"/audit?{urlencode({'tenant': tenant})}", 303)
    if kind not in TENANT_PAGES:
        kind = "provisioning"
    return RedirectResponse(f"/tenants/{tenant}/{kind}", 303)


async def provisioning(page: Page) -> Response:
    tenant = await page.get("/tenants/{tenant}")
    keys = await page.get("/tenants/{tenant}/keys")
    config = page.api.authority.config.tenants[tenant["name"]]
    trust = await trio.to_thread.run_sync(views.organisation_trust, config)
    live = sum(1 for k in keys if k["state"] != "revoked")
    return await page.render("provisioning.html", "provisioning", tenant=tenant, keys=keys,
                             trust=trust, live=live, max_live=MAX_LIVE_KEYS,
                             max_name=MAX_NAME_CHARS, names=[k["name"] for k in keys])


async def key_details(page: Page) -> Response:
    key = await page.get("/tenants/{tenant}/keys/{key}",
                         {"key": page.request.path_params["key"]})
    keys = await page.get("/tenants/{tenant}/keys")
    certificates = await page.get("/tenants/{tenant}/certificates", key=key["id"])
    entries = await page.get("/audit", tenant=page.tenant, target=key["id"], limit=100)
    return await page.render("key.html", "provisioning", key=key, certificates=certificates,
                             entries=entries["entries"], max_name=MAX_NAME_CHARS,
                             names=[k["name"] for k in keys])


async def certificates(page: Page) -> Response:
    q = page.request.query_params
    search = {"name": q.get("name", "").strip(), "serial": q.get("serial", "").strip(),
              "key": q.get("key", ""), "state": q.get("state", "")}
    keys = await page.get("/tenants/{tenant}/keys")
    errors: dict[str, str] = {}
    found: list[dict[str, Any]] = []
    try:
        found = await page.get("/tenants/{tenant}/certificates", key=search["key"],
                               serial=search["serial"], state=search["state"])
    except (EnrollError, ApiError) as exc:
        field = messages.field_of(exc.reason) or "form"
        errors[field if field in search else "form"] = messages.said(exc.reason, exc.message)
    if search["name"]:
        wanted = search["name"].casefold()
        found = [c for c in found if wanted in c["subject"].casefold()]
    found.reverse()  # newest first
    return await page.render("certificates.html", "certificates", search=search, errors=errors,
                             certificates=found[:MAX_CERTIFICATES], total=len(found),
                             limit=MAX_CERTIFICATES, keys=keys,
                             key_names={k["id"]: k["name"] for k in keys})


async def requests(page: Page) -> Response:
    state = page.request.query_params.get("state", "pending")
    shown = await page.get("/tenants/{tenant}/requests",
                           state=None if state == "all" else state)
    keys = await page.get("/tenants/{tenant}/keys")
    shown.reverse()  # newest first
    return await page.render("requests.html", "requests", state=state, requests=shown,
                             key_names={k["id"]: k["name"] for k in keys})


async def issuers(page: Page) -> Response:
    tenant = await page.get("/tenants/{tenant}")
    listed = await page.get("/tenants/{tenant}/issuers")
    listed.reverse()  # the current one first
    return await page.render("issuers.html", "issuers", tenant=tenant, issuers=listed)


async def audit(page: Page) -> Response:
    q = page.request.query_params
    filters = {name: q.get(name, "").strip()
               for name in ("tenant", "actor", "action", "since", "until")}
    errors: dict[str, str] = {}
    times: dict[str, int | None] = {"since": None, "until": None}
    for name in times:
        if filters[name]:
            try:
                times[name] = views.parse_when(filters[name], end=name == "until")
            except ValueError as exc:
                errors[name] = str(exc)
    since, until = times["since"], times["until"]
    if since is not None and until is not None and since > until:
        errors["until"] = "The end of the range is before its start."
    entries: list[dict[str, Any]] = []
    next_cursor = None
    if not errors:
        try:
            found = await page.get("/audit", tenant=filters["tenant"] or None,
                                   actor=filters["actor"], action=filters["action"],
                                   since=since, until=until, limit=AUDIT_PAGE_SIZE,
                                   cursor=q.get("cursor"))
            entries, next_cursor = found["entries"], found["next_cursor"]
        except (EnrollError, ApiError) as exc:
            field = "tenant" if exc.reason == "unknown_tenant" else "form"
            errors[field] = messages.said(exc.reason, exc.message)
    verification = await page.get("/audit/verify")
    older = None
    if next_cursor is not None:
        older = "/audit?" + urlencode({**{k: v for k, v in filters.items() if v},
                                       "cursor": next_cursor})
    return await page.render("audit.html", "audit", filters=filters, errors=errors,
                             entries=entries, older=older, verification=verification,
                             actions=messages.ACTIONS, hint=views.WHEN_HINT)
