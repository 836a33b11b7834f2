"""The admin API as a Starlette application: every endpoint of ``gateway.api.routes`` (and the
OpenAPI document) behind one guard, ``guard``, which is where each request is authenticated,
authorised for the route's access and tenant, checked, handled, answered and logged.

Theory of operation, per request: authenticate (``Authenticator``, in the store's thread: one
indexed read, and the shared failure count) → authorise (``authorize``: tenant, then role) →
check the query and the body (a bounded read under a deadline; ``application/json`` only) → the
handler → JSON. Any refusal on the way is an ``EnrollError`` or an ``ApiError`` whose reason code
the one table of ``gateway.api.errors`` turns into a status; anything else is a bug, logged
here with its traceback and answered 500 ``internal_error`` with a fixed message. Nothing is
changed before every check passed. One ``api_request`` log line per request: method, route,
status, operator, peer, time; never a header, a body or a query string (a secret may be in
any of them).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
import trio
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from config.model import ApiSettings
from enroll.errors import (
    BodyTooLarge,
    EnrollError,
    InternalError,
    RateLimited,
    UnsupportedMediaType,
)
from gateway.api.auth import Principal, authorize
from gateway.api.errors import ApiError, RequestTimeout, error_body, http_status
from gateway.api.metrics import ApiMetrics
from gateway.api.openapi import openapi_endpoint
from gateway.api.routes import ENDPOINTS, ApiContext, Call, Endpoint
from gateway.api.schema import parse_query

log = structlog.get_logger("switch.api")

PREFIX = "/api/v1"
#: Reasons of a request refused before its operator was known (counted in /metrics).
_AUTH_REASONS = frozenset({"unauthorized", "credentials_required", "bad_credentials",
                           "session_expired", "rate_limited"})
_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
#: Nothing but this listener's own scripts, styles and images, in no frame, posting to itself.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; "
                           "img-src 'self'; connect-src 'self'; form-action 'self'; "
                           "frame-ancestors 'none'; base-uri 'none'")
#: On every response of the listener, API and console alike (a response may set its own
#: ``Cache-Control``; one that does not is ``no-store``).
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    # Not "no-referrer": with it, browsers send "Origin: null" on the console's own form posts
    # (sign-in, sign-out), whose Origin the CSRF check reads. Nothing goes to other sites.
    "Referrer-Policy": "same-origin",
    # The listener is TLS only: a browser that met it once never tries plain HTTP (a year).
    "Strict-Transport-Security": "max-age=31536000",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}
NotFound = Callable[[Request], Awaitable[Response]]


class SecurityHeaders:
    """ASGI middleware: ``SECURITY_HEADERS`` on every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, sending)


def refusal(reason: str, message: str, *, retry_after: int | None = None) -> JSONResponse:
    status = http_status(reason)
    headers = dict(_HEADERS)
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="switch-api"'
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse(error_body(reason, message), status, headers)


async def read_body(request: Request, settings: ApiSettings) -> bytes:
    """The body, at most ``max_body_bytes``, within ``request_timeout_s``."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > settings.max_body_bytes:
        raise BodyTooLarge(f"the body is over {settings.max_body_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    with trio.move_on_after(settings.request_timeout_s) as scope:
        async for chunk in request.stream():
            size += len(chunk)
            if size > settings.max_body_bytes:
                raise BodyTooLarge(f"the body is over {settings.max_body_bytes} bytes")
            chunks.append(chunk)
    if scope.cancelled_caught:
        raise RequestTimeout(f"the body did not arrive within {settings.request_timeout_s:g} s")
    body = b"".join(chunks)
    if body.strip() and content_type != "application/json":
        raise UnsupportedMediaType("send the body as Content-Type: application/json")
    return body


def guard(endpoint: Endpoint, api: ApiContext, settings: ApiSettings, metrics: ApiMetrics
          ) -> Callable[[Request], Awaitable[Response]]:
    """The one path of every request to ``endpoint`` (see the module docstring)."""

    async def serve(request: Request) -> Response:
        started = time.monotonic()
        source = request.client.host if request.client else "unknown"
        principal: Principal | None = None
        reason = "ok"
        try:
            principal = await api.run(api.authenticator.authenticate, request.headers,
                                      request.cookies, source, time.time())
            authorize(principal, endpoint.access, request.path_params.get("tenant"),
                      api.authority.config.tenants)
            query = parse_query(endpoint.query, request.query_params)
            body: dict[str, Any] = {}
            if endpoint.body is not None:
                body = endpoint.body.parse(await read_body(request, settings))
            reply = await endpoint.handler(Call(principal, request.path_params, query, body, api))
            response: Response = JSONResponse(reply.body, reply.status, _HEADERS)
        except (EnrollError, ApiError) as exc:
            reason = exc.reason
            response = refusal(exc.reason, exc.message, retry_after=exc.retry_after
                               if isinstance(exc, RateLimited) else None)
            if principal is None and reason in _AUTH_REASONS:
                metrics.auth_failures.labels(reason).inc()
        except Exception:  # noqa: BLE001 - a bug in one request must not reach the peer
            reason = InternalError.reason
            log.exception("api_request_failed", method=request.method, route=endpoint.path,
                          operator=principal.operator if principal else None, peer=source)
            response = refusal(reason, "")
        metrics.requests.labels(request.method, endpoint.path, str(response.status_code)).inc()
        log.info("api_request", method=request.method, route=endpoint.path,
                 status=response.status_code, result=reason, peer=source,
                 operator=principal.operator if principal else None,
                 tenant=request.path_params.get("tenant"),
                 ms=round((time.monotonic() - started) * 1000, 1))
        return response

    serve.__name__ = endpoint.handler.__name__
    return serve


async def _http_exception(request: Request, exc: Exception) -> Response:
    """What the router answers itself: no such route (404) or method (405)."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    reason = {404: "not_found", 405: "method_not_allowed"}.get(status, "invalid_request")
    message = {404: "no such endpoint (see /api/v1/openapi.json)",
               405: "this endpoint does not take that method"}.get(status, "bad request")
    response = refusal(reason, message)
    if isinstance(exc, HTTPException) and exc.headers and "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response


def build_app(api: ApiContext, settings: ApiSettings, metrics: ApiMetrics, *,
              pages: Sequence[BaseRoute] = (), not_found: NotFound | None = None) -> Starlette:
    """The API's routes, then ``pages`` (the console's, ``gateway.console``); a path that no
    route serves is the API's JSON 404 under ``/api/``, else ``not_found``'s answer."""
    endpoints = (*ENDPOINTS, openapi_endpoint(ENDPOINTS, PREFIX))
    routes: list[BaseRoute] = [
        Route(PREFIX + e.path, guard(e, api, settings, metrics), methods=[e.method], name=e.name)
        for e in endpoints]
    routes.extend(pages)

    async def unrouted(request: Request, exc: Exception) -> Response:
        if (not_found is not None and not request.url.path.startswith("/api/")
                and isinstance(exc, HTTPException) and exc.status_code == 404):
            return await not_found(request)
        return await _http_exception(request, exc)

    return Starlette(routes=routes, exception_handlers={HTTPException: unrouted},
                     middleware=[Middleware(SecurityHeaders)])

