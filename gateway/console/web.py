"""The console's plumbing: who is asking (the API's own ``Authenticator``: the session cookie),
reading through the API's own endpoints after the API's own ``authorize`` (``Page.get``), and
answering with pages rendered by Jinja2.

Theory of operation, per page request: authenticate (a request that proves no operator is sent
to the sign-in page, its cookie cleared; nothing of the page is read) → the page's handler, which
reads what it shows with ``Page.get(path, ...)``: the API endpoint of that path, authorised by
``gateway.api.auth.authorize`` for the route's access and tenant, its query checked by the
API's own schema, its handler run in-process, its JSON reply rendered. So a page shows exactly
what the API would answer this operator, and there is one authorisation check for both. Changes
are not made here: the page's script sends them to the JSON API with the session cookie and
the CSRF token (``gateway.api.session``), through the API's guard.

Templates: autoescape on for every template, an undefined name an error (``StrictUndefined``);
no inline script or style (the Content-Security-Policy forbids them): data for the script is in
``data-`` attributes and one ``application/json`` block. Every page is ``Cache-Control:
no-store``. One ``console_request`` log line per request (page, status, operator, peer, time;
never a cookie, a query string or a form field).
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlencode

import attrs
import jinja2
import structlog
import trio
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from config.model import ApiSettings
from enroll.errors import (
    BadCredentials,
    CredentialsRequired,
    EnrollError,
    MalformedCredentials,
    RateLimited,
)
from gateway.api.auth import Principal, authorize
from gateway.api.errors import ApiError, SessionExpired, http_status
from gateway.api.metrics import ApiMetrics
from gateway.api.routes import ENDPOINTS, ApiContext, Call
from gateway.api.schema import parse_query
from gateway.api.session import COOKIE, HASHING_AT_ONCE, csrf_token
from gateway.console import messages, views

log = structlog.get_logger("switch.console")

SIGNIN = "/signin"
_ENDPOINTS = {e.name: e for e in ENDPOINTS}
#: Where sign-in may send the browser afterwards: a path of this listener, nothing else.
_LOCAL_PATH = re.compile(r"/(?![/\\])[^\s\\]{0,500}")
#: What a notice may name: a key's name, a serial, a request's id.
_NOTICE_NAME = re.compile(r"[A-Za-z0-9 :_-]{1,64}")
_SIGNED_OUT = (CredentialsRequired, BadCredentials, MalformedCredentials, SessionExpired)


def source_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def local_path(candidate: str | None) -> str:
    """``candidate`` when it is a path of this listener (no other host, no scheme), else ``/``."""
    if candidate and _LOCAL_PATH.fullmatch(candidate):
        return candidate
    return "/"


class Console:
    """What every page shares: the API context, the templates, the metrics."""

    def __init__(self, api: ApiContext, settings: ApiSettings, metrics: ApiMetrics) -> None:
        self.api = api
        self.settings = settings
        self.metrics = metrics
        #: Sign-in's password checks (``gateway.api.session.sign_in``).
        self.hashing = trio.CapacityLimiter(HASHING_AT_ONCE)
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("gateway.console", "templates"), autoescape=True,
            undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.env.filters.update(when=views.when, short=views.short, detail=views.detail,
                                action=lambda a: messages.ACTIONS.get(a, a))
        self.env.globals.update(messages_table=messages.script_table(), said=messages.said)

    def render(self, template: str, status: int = 200, headers: Mapping[str, str] | None = None,
               **context: Any) -> HTMLResponse:
        html = self.env.get_template(template).render(**context)
        response = HTMLResponse(html, status, headers=dict(headers or {}))
        response.headers["Cache-Control"] = "no-store"
        return response

    def to_signin(self, request: Request, *, expired: bool = False) -> Response:
        """Off to the sign-in page, coming back here afterwards; the cookie (if any) cleared."""
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        query: dict[str, str] = {}
        if here != "/":
            query["next"] = local_path(here)
        if expired:
            query["notice"] = "expired"
        response = RedirectResponse(SIGNIN + (f"?{urlencode(query)}" if query else ""), 303)
        if COOKIE in request.cookies:
            response.delete_cookie(COOKIE, path="/", secure=True, httponly=True,
                                   samesite="strict")
        return response

    async def authenticate(self, request: Request) -> Principal | Response:
        """The operator of the request, or the response that sends it away."""
        try:
            return await self.api.run(self.api.authenticator.authenticate, request.headers,
                                      request.cookies, source_of(request), time.time())
        except RateLimited as exc:
            return self.render("error.html", 429, {"Retry-After": str(exc.retry_after)},
                               page=None, nav="", title="Too many attempts",
                               message=messages.said(exc.reason))
        except _SIGNED_OUT as exc:
            return self.to_signin(request, expired=isinstance(exc, SessionExpired))

    def page(self, name: str, handler: Callable[[Page], Awaitable[Response]]
             ) -> Callable[[Request], Awaitable[Response]]:
        """The endpoint of page ``name``: authenticated, then ``handler``; a refusal while it
        reads is the error page, in words."""

        async def endpoint(request: Request) -> Response:
            started = time.monotonic()
            principal = await self.authenticate(request)
            operator = None
            if isinstance(principal, Response):
                response = principal
            else:
                operator = principal.operator
                page = Page(self, request, principal, request.path_params.get("tenant"))
                try:
                    response = await handler(page)
                except (EnrollError, ApiError) as exc:
                    response = await page.error(exc.reason, exc.message)
                except Exception:  # noqa: BLE001 - a bug in one page must not reach the browser
                    log.exception("console_request_failed", page=name, operator=operator,
                                  peer=source_of(request))
                    response = await page.error("internal_error", "")
            self.metrics.console_pages.labels(name, str(response.status_code)).inc()
            log.info("console_request", method=request.method, page=name,
                     status=response.status_code, operator=operator, peer=source_of(request),
                     ms=round((time.monotonic() - started) * 1000, 1))
            return response

        endpoint.__name__ = f"console_{name}"
        return endpoint


@attrs.define(eq=False)
class Page:
    """One page request of a signed-in operator, on one tenant (``tenant``; None: the page has
    none in its path and shows the operator's first)."""

    console: Console
    request: Request
    principal: Principal
    tenant: str | None

    @property
    def api(self) -> ApiContext:
        return self.console.api

    @property
    def csrf(self) -> str:
        """For the page's script: the CSRF token of the request's session."""
        return csrf_token(self.request.cookies.get(COOKIE, ""))

    @property
    def tenants(self) -> list[str]:
        return self.principal.visible(self.api.authority.config.tenants)

    @property
    def current_tenant(self) -> str | None:
        """The tenant the navigation links go to."""
        if self.tenant is not None and self.tenant in self.tenants:
            return self.tenant
        wanted = self.request.query_params.get("tenant")
        if wanted in self.tenants:
            return wanted
        return self.tenants[0] if self.tenants else None

    async def get(self, path: str, params: Mapping[str, str] | None = None,
                  **query: str | int | None) -> Any:
        """What ``GET /api/v1{path}`` answers this operator (``params`` fill the path's
        placeholders; ``tenant`` defaults to the page's), checked and authorised as the API
        checks and authorises it."""
        endpoint = _ENDPOINTS[f"GET {path}"]
        values = dict(params or {})
        if "{tenant}" in path:
            values.setdefault("tenant", self.tenant or "")
        authorize(self.principal, endpoint.access, values.get("tenant"),
                  self.api.authority.config.tenants)
        checked = parse_query(endpoint.query, {k: str(v) for k, v in query.items()
                                               if v is not None and v != ""})
        reply = await endpoint.handler(Call(self.principal, values, checked, {}, self.api))
        return reply.body

    async def pending(self) -> int | None:
        """Requests waiting for approval in the current tenant (every page shows it)."""
        tenant = self.current_tenant
        if tenant is None:
            return None
        return len(await self.get("/tenants/{tenant}/requests", {"tenant": tenant},
                                  state="pending"))

    def notice(self) -> str | None:
        """What the change that reloaded this page did (``?notice=CODE&name=NAME``)."""
        template = messages.NOTICES.get(self.request.query_params.get("notice", ""))
        if template is None:
            return None
        name = self.request.query_params.get("name", "")
        return template.format(name=name if _NOTICE_NAME.fullmatch(name) else "")

    async def render(self, template: str, nav: str, status: int = 200, **context: Any
                     ) -> Response:
        return self.console.render(template, status, page=self, nav=nav,
                                   pending=await self.pending(), notice=self.notice(),
                                   can_change=self.principal.can_change, **context)

    async def error(self, reason: str, message: str) -> Response:
        if reason == "unknown_tenant":
            self.tenant = None
        try:
            pending = await self.pending()
        except (EnrollError, ApiError):
            pending = None
        return self.console.render("error.html", http_status(reason), page=self, nav="",
                                   pending=pending, notice=None, can_change=False,
                                   title="Not possible", message=messages.said(reason, message))
