"""The security admin console (docs/console.md): seed 000's Provisioning Service page and the
pages around it, server-rendered HTML on the API's listener at ``/``, signed in with an
operator's name and password.

Its modules: ``web`` (authentication of a page request, reading through the API's endpoints and
its one ``authorize``, rendering), ``pages`` (each page), ``signin`` (the sign-in and sign-out
forms; the session rules are ``gateway.api.session``'s), ``messages`` (reason codes and notices
in words), ``views`` (times, a tenant's organisation trust); ``templates/`` (Jinja2) and
``static/`` (the stylesheet and the one small script that sends changes to the JSON API).

Everything but the sign-in page and ``/static/`` needs a session: a request without one is sent
to the sign-in page, having read nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from config.model import ApiSettings
from gateway.api.app import NotFound
from gateway.api.metrics import ApiMetrics
from gateway.api.routes import ApiContext
from gateway.console import pages, signin
from gateway.console.web import Console, Page

STATIC = Path(__file__).with_name("static")


class _Static(StaticFiles):
    """The stylesheet, script and icon: public (the sign-in page uses them), revalidated."""

    def file_response(self, full_path: str | os.PathLike[str], stat_result: os.stat_result,
                      scope: Scope, status_code: int = 200) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = "no-cache"
        return response


def console_routes(api: ApiContext, settings: ApiSettings, metrics: ApiMetrics
                   ) -> tuple[list[BaseRoute], NotFound]:
    """The console's routes and what answers a path no route serves."""
    console = Console(api, settings, metrics)
    page = console.page

    async def not_found(page: Page) -> Response:
        return await page.error("not_found", "")

    missing = page("not_found", not_found)

    async def unknown(request: Request) -> Response:
        return await missing(request)

    async def form(request: Request) -> Response:
        return await signin.signin_form(request, console)

    async def sign_in(request: Request) -> Response:
        return await signin.signin(request, console)

    async def sign_out(request: Request) -> Response:
        return await signin.signout(request, console)

    tenant = "/tenants/{tenant}"
    routes: list[BaseRoute] = [
        Route("/", page("home", pages.home), methods=["GET"]),
        Route("/signin", form, methods=["GET"]),
        Route("/signin", sign_in, methods=["POST"]),
        Route("/signout", sign_out, methods=["POST"]),
        Route(f"{tenant}/provisioning", page("provisioning", pages.provisioning),
              methods=["GET"]),
        Route(f"{tenant}/keys/{{key}}", page("key", pages.key_details), methods=["GET"]),
        Route(f"{tenant}/certificates", page("certificates", pages.certificates),
              methods=["GET"]),
        Route(f"{tenant}/requests", page("requests", pages.requests), methods=["GET"]),
        Route(f"{tenant}/issuers", page("issuers", pages.issuers), methods=["GET"]),
        Route("/audit", page("audit", pages.audit), methods=["GET"]),
        Mount("/static", _Static(directory=STATIC), name="static"),
    ]
    return routes, unknown
