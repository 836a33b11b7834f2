"""Signing in and out of the console: the sign-in page and its form, and the sign-out form. The
rules (rate limit, argon2id, the session, its audit entries, the CSRF check of signing out) are
``gateway.api.session``'s; this module reads the forms and answers the browser.

A form body is read as the API reads a JSON body: at most ``[api] max_body_size``, within
``request_timeout``, ``application/x-www-form-urlencoded`` only. Signing in is refused when the
browser says the form came from another site (``Origin``, ``Sec-Fetch-Site``: no one can be
signed in to an attacker's account by a page of another site). The sign-in page answers in the
same words whatever was wrong with the name or the password.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import parse_qsl

import structlog
import trio
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from enroll.errors import BadCredentials, EnrollError, RateLimited
from gateway.api.errors import ApiError, CsrfFailed
from gateway.api.session import (
    COOKIE,
    CSRF_FIELD,
    CSRF_HEADER,
    same_origin,
    session_hash,
    sign_in,
    sign_out,
)
from gateway.console import messages
from gateway.console.web import SIGNIN, Console, local_path, source_of

log = structlog.get_logger("switch.console")

_SIGNIN_NOTICES = {"expired": "Your session has ended. Sign in again to go on.",
                   "signed-out": "You have signed out."}
#: Fields a form of the console has at most.
_MAX_FIELDS = 8


class FormRefused(Exception):
    """A form body that is too large, too slow, or not a form."""


async def read_form(request: Request, console: Console) -> dict[str, str]:
    settings = console.settings
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise FormRefused("not a form")
    chunks: list[bytes] = []
    size = 0
    with trio.move_on_after(settings.request_timeout_s) as scope:
        async for chunk in request.stream():
            size += len(chunk)
            if size > settings.max_body_bytes:
                raise FormRefused("too large")
            chunks.append(chunk)
    if scope.cancelled_caught:
        raise FormRefused("too slow")
    try:
        pairs = parse_qsl(b"".join(chunks).decode(), keep_blank_values=True,
                          max_num_fields=_MAX_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise FormRefused("not a form") from None
    return dict(pairs)


def _signin_page(console: Console, *, status: int = 200, message: str | None = None,
                 notice: str | None = None, name: str = "", next_path: str = "/",
                 headers: Mapping[str, str] | None = None) -> Response:
    return console.render("signin.html", status, headers, page=None, nav="", message=message,
                          notice=notice, name=name, next_path=next_path)


async def signin_form(request: Request, console: Console) -> Response:
    return _signin_page(console, notice=_SIGNIN_NOTICES.get(request.query_params.get("notice",
                                                                                        "")),
                        next_path=local_path(request.query_params.get("next")))


async def signin(request: Request, console: Console) -> Response:
    source = source_of(request)
    result = "ok"
    try:
        form = await read_form(request, console)
    except FormRefused:
        return _signin_page(console, status=400, message="The sign-in form did not arrive "
                            "whole. Try again.")
    name, next_path = form.get("name", "").strip(), local_path(form.get("next"))
    try:
        if not same_origin(request.headers):
            raise CsrfFailed("the sign-in form came from another site")
        signed = await sign_in(console.api, console.settings, name, form.get("password", ""),
                               source, console.hashing)
    except (EnrollError, ApiError) as exc:
        result = exc.reason
        console.metrics.console_signins.labels(result).inc()
        log.info("console_signin", result=result, peer=source)
        headers = {}
        if isinstance(exc, RateLimited):
            headers["Retry-After"] = str(exc.retry_after)
        text = ("The operator name or the password is wrong." if isinstance(exc, BadCredentials)
                else messages.said(exc.reason, exc.message))
        status = {"bad_credentials": 401, "rate_limited": 429, "csrf_failed": 403}.get(
            exc.reason, 503)
        return _signin_page(console, status=status, message=text, name=name,
                            next_path=next_path, headers=headers)
    old = request.cookies.get(COOKIE)
    if old:  # a session this browser had before: it ends (quietly: a new one replaces it)
        await console.api.run(lambda: console.api.authority.store.end_console_session(
            session_hash(old), actor=None, ts=signed.session.created_at))
    console.metrics.console_signins.labels(result).inc()
    log.info("console_signin", result=result, operator=signed.principal.operator, peer=source)
    response = RedirectResponse(next_path, 303)
    # __Host-: Secure, Path=/ and no Domain, or the browser refuses it.
    response.set_cookie(COOKIE, signed.session_id, max_age=signed.max_age_s, path="/",
                        secure=True, httponly=True, samesite="strict")
    return response


async def signout(request: Request, console: Console) -> Response:
    source = source_of(request)
    try:
        form = await read_form(request, console)
    except FormRefused:
        form = {}
    # The form carries the CSRF token as a field; the check reads it where the script sends it.
    headers = {**dict(request.headers), CSRF_HEADER: form.get(CSRF_FIELD, "")}
    target = f"{SIGNIN}?notice=signed-out"
    try:
        principal = await sign_out(console.api, headers, request.cookies, source)
        log.info("console_signout", operator=principal.operator, peer=source)
    except CsrfFailed as exc:
        return console.render("error.html", 403, page=None, nav="", title="Not signed out",
                              message=messages.said(exc.reason))
    except (EnrollError, ApiError) as exc:  # no session (any more): signed out already
        log.info("console_signout", result=exc.reason, peer=source)
    response = RedirectResponse(target, 303)
    response.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return response
