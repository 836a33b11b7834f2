"""The console over real TLS without a browser (httpx, a real Switch on a real SQLite store):
what a request without the session cookie or its CSRF token can do (nothing), the cookie's
flags, the security headers, sign-in limits and audit, session expiry and revocation, sign-out,
and that nothing but the sign-in page shows before sign-in."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import sqlite3
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio

from enroll.authority import Authority
from enroll.operator_admin import OperatorAdmin
from gateway.api.app import CONTENT_SECURITY_POLICY
from gateway.api.session import COOKIE, TOUCH_INTERVAL_S, csrf_token
from tests.support.api import OPERATORS, Api, running_api

pytestmark = pytest.mark.slow

PASSWORD = "correct horse battery staple"


def _operators(api: Api) -> Any:
    """A change to operators made as ``switch operators`` makes it: on the store, in another
    connection (the serving process sees it on its next read)."""
    authority = Authority.open(api.config)
    return authority, OperatorAdmin(authority)


async def _passwords(api: Api) -> None:
    def set_all() -> None:
        authority, admin = _operators(api)
        try:
            for name, _, _ in OPERATORS:
                admin.set_password(name, PASSWORD, actor="local:test")
        finally:
            authority.close()
    await trio.to_thread.run_sync(set_all)


async def _on_store(api: Api, change: Any) -> Any:
    def run() -> Any:
        authority, admin = _operators(api)
        try:
            return change(admin)
        finally:
            authority.close()
    return await trio.to_thread.run_sync(run)


def _origin(api: Api) -> str:
    return f"https://127.0.0.1:{api.port}"


def _browser(api: Api) -> httpx.AsyncClient:
    """A client that keeps cookies and follows no redirect (to see each one)."""
    return httpx.AsyncClient(base_url=_origin(api), timeout=30,
                             verify=ssl.create_default_context(cafile=str(api.ca_file)))


async def _sign_in(client: httpx.AsyncClient, api: Api, name: str,
                   password: str = PASSWORD, **headers: str) -> httpx.Response:
    return await client.post("/signin", data={"name": name, "password": password},
                             headers={"Origin": _origin(api), **headers})


@asynccontextmanager
async def _signed_in(api: Api, name: str) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    async with _browser(api) as client:
        response = await _sign_in(client, api, name)
        assert response.status_code == 303, response.text
        yield client, csrf_token(client.cookies[COOKIE])


def _same_origin(api: Api, csrf: str | None = None, **more: str) -> dict[str, str]:
    headers = {"Origin": _origin(api), "Sec-Fetch-Site": "same-origin", **more}
    if csrf is not None:
        headers["X-CSRF-Token"] = csrf
    return headers


async def test_a_change_without_the_session_cookie_or_without_its_csrf_token_changes_nothing(
        tmp_path: Any) -> None:
    async with running_api(tmp_path) as api:
        await _passwords(api)
        before = await api.ok("admin", "GET", "/audit", limit=1000)
        async with _signed_in(api, "admin") as (client, csrf):
            signed_in = await api.ok("admin", "GET", "/audit", limit=1000)
            refused = [
                (_same_origin(api), 403, "csrf_failed"),                       # no token
                (_same_origin(api, "x" + csrf[1:]), 403, "csrf_failed"),       # a wrong one
                ({"X-CSRF-Token": csrf, "Origin": "https://evil.example"}, 403, "csrf_failed"),
                (_same_origin(api, csrf, **{"Sec-Fetch-Site": "cross-site"}), 403,
                 "csrf_failed"),
            ]
            for headers, status, reason in refused:
                for method, path, body in (("PUT", "/api/v1/tenants/demo/service",
                                            {"enabled": True}),
                                           ("POST", "/api/v1/tenants/demo/keys",
                                            {"name": "Forged"})):
                    response = await client.request(method, path, json=body, headers=headers)
                    assert (response.status_code, response.json()["error"]) == (status, reason)
            # The token without the cookie: no session at all.
            async with _browser(api) as stranger:
                response = await stranger.post("/api/v1/tenants/demo/keys", json={"name": "X"},
                                                headers=_same_origin(api, csrf))
                assert (response.status_code, response.json()["error"]) == \
                    (401, "credentials_required")
            # Signing out without the token is refused too, and the session lives on.
            response = await client.post("/signout", data={}, headers=_same_origin(api))
            assert response.status_code == 403 and "out of date" in response.text
            assert (await client.get("/tenants/demo/provisioning")).status_code == 200
            assert await api.ok("admin", "GET", "/audit", limit=1000) == signed_in
            assert await api.ok("admin", "GET", "/tenants/demo/keys") == []
            # With both, from the page: done, as the API's guard does it.
            response = await client.post("/api/v1/tenants/demo/keys", json={"name": "Real"},
                                          headers=_same_origin(api, csrf))
            assert response.status_code == 201, response.text
            whoami = await client.get("/api/v1/whoami")
            assert whoami.json()["credential"] == "session"
        [created] = [e for e in (await api.ok("admin", "GET", "/audit"))["entries"]
                     if e["action"] == "key.created"]
        assert created["actor"] == "operator:admin" and len(before["entries"]) < \
            len(signed_in["entries"])


async def test_the_session_cookie_is_host_only_secure_httponly_strict_and_expiring(
        tmp_path: Any) -> None:
    async with running_api(tmp_path) as api:
        await _passwords(api)
        async with _browser(api) as client:
            response = await _sign_in(client, api, "reader")
        assert response.status_code == 303 and response.headers["location"] == "/"
        cookie = response.headers["set-cookie"]
        name, value = cookie.split(";")[0].split("=", 1)
        flags = {part.strip().split("=")[0].lower(): part.strip().partition("=")[2]
                 for part in cookie.split(";")[1:]}
        assert name == "__Host-switch-session" and re.fullmatch(r"sws_[A-Za-z0-9_-]{43}", value)
        assert {"secure", "httponly"} <= flags.keys() and "domain" not in flags
        assert flags["path"] == "/" and flags["samesite"].lower() == "strict"
        assert flags["max-age"] == str(8 * 3600)


async def test_every_response_carries_the_security_headers_and_pages_hold_no_inline_code(
        tmp_path: Any) -> None:
    async with running_api(tmp_path) as api:
        await _passwords(api)
        async with _signed_in(api, "admin") as (client, _):
            responses = {path: await client.get(path) for path in (
                "/signin", "/tenants/demo/provisioning", "/tenants/demo/certificates",
                "/tenants/demo/requests", "/tenants/demo/issuers", "/audit",
                "/static/console.css", "/static/console.js", "/api/v1/whoami", "/")}
        for path, response in responses.items():
            headers = response.headers
            assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY, path
            assert headers["x-content-type-options"] == "nosniff", path
            assert headers["referrer-policy"] == "same-origin", path
            assert headers["strict-transport-security"].startswith("max-age="), path
            assert headers["x-frame-options"] == "DENY", path
            expected = "no-cache" if path.startswith("/static/") else "no-store"
            assert headers["cache-control"] == expected, path
        for path in ("/signin", "/tenants/demo/provisioning", "/audit"):
            html = responses[path].text
            assert responses[path].status_code == 200, (path, html)
            assert not re.search(r"<script(?![^>]*\b(src|type=\"application/json\"))", html)
            assert not re.search(r"\sstyle=|\son[a-z]+=", html), path
            assert not re.search(r"(src|href)=\"(https?:)?//", html), path  # nothing from outside
        assert "default-src 'none'" in CONTENT_SECURITY_POLICY
        assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY


async def test_nothing_but_the_signin_page_and_its_assets_shows_before_sign_in(
        tmp_path: Any) -> None:
    async with running_api(tmp_path) as api, _browser(api) as client:
        for path in ("/", "/tenants/demo/provisioning", "/tenants/demo/keys/pk_0123",
                     "/tenants/nosuch/issuers", "/audit?tenant=demo", "/no/such/page"):
            response = await client.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"].startswith("/signin"), path
            assert "demo" not in response.text
        assert (await client.get("/tenants/demo/audit")).headers["location"] == \
            "/signin?next=%2Ftenants%2Fdemo%2Faudit"
        assert (await client.get("/signin")).status_code == 200
        assert (await client.get("/static/console.css")).status_code == 200
        api_reply = await client.get("/api/v1/no-such-endpoint")
        assert (api_reply.status_code, api_reply.json()["error"]) == (404, "not_found")
        # A page of another site cannot sign anyone in, and sign-in sends nowhere else.
        response = await _sign_in(client, api, "admin", Origin="https://evil.example")
        assert response.status_code == 403 and COOKIE not in response.headers.get("set-cookie",
                                                                                  "")
        await _passwords(api)
        response = await client.post("/signin", data={"name": "admin", "password": PASSWORD,
                                                      "next": "//evil.example/x"},
                                     headers={"Origin": _origin(api)})
        assert response.status_code == 303 and response.headers["location"] == "/"


async def test_failed_sign_ins_say_the_same_whatever_was_wrong_are_audited_and_limited(
        tmp_path: Any) -> None:
    async with running_api(tmp_path) as api, _browser(api) as client:
        await _passwords(api)
        assert (await _sign_in(client, api, "admin")).status_code == 303
        client.cookies.clear()
        answers = [await _sign_in(client, api, name, password) for name, password in (
            ("admin", "not the password at all"), ("nobody", PASSWORD),
            ("admin", ""), ("Admin", PASSWORD), ("x" * 300, PASSWORD))]
        texts = {re.search(r'id="signin-error"[^>]*>([^<]+)<', r.text).group(1)  # type: ignore[union-attr]
                 for r in answers}
        assert {r.status_code for r in answers} == {401} and texts == \
            {"The operator name or the password is wrong."}
        assert all(COOKIE not in r.headers.get("set-cookie", "") for r in answers)
        # Five failures from this address: the right password is not even checked now.
        limited = await _sign_in(client, api, "admin")
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0
        assert "Too many failed attempts" in limited.text
        audit = (await api.ok("admin", "GET", "/audit", limit=100))["entries"]
        failed = [e for e in audit if e["action"] == "operator.signin_failed"]
        assert len(failed) == 5 and {e["actor"] for e in failed} == {"anonymous"}
        assert {e["details"]["source"] for e in failed} == {"127.0.0.1"}
        assert sorted(str(e["target"]) for e in failed) == \
            ["Admin", "None", "admin", "admin", "nobody"]
        [ok] = [e for e in audit if e["action"] == "operator.signed_in"]
        assert (ok["actor"], ok["details"]) == ("operator:admin", {"source": "127.0.0.1"})
        assert PASSWORD not in str(audit)


async def test_a_session_ends_when_idle_or_too_old(tmp_path: Any) -> None:
    async with running_api(tmp_path) as api:
        await _passwords(api)
        authority = api.switch.authority
        start = authority.clock()
        async with _signed_in(api, "reader") as (client, _):
            authority.clock = lambda: start + dt.timedelta(minutes=29)
            assert (await client.get("/tenants/demo/provisioning")).status_code == 200
            authority.clock = lambda: start + dt.timedelta(minutes=29 + 30)
            response = await client.get("/tenants/demo/provisioning")
            assert response.status_code == 303
            assert response.headers["location"].endswith("notice=expired")
            assert (await client.get("/api/v1/whoami")).status_code == 401
        authority.clock = lambda: start
        async with _signed_in(api, "reader") as (client, _):
            minutes = 0
            while minutes < 8 * 60 - 20:  # kept busy: only the absolute lifetime ends it
                minutes += 20
                authority.clock = lambda m=minutes: start + dt.timedelta(minutes=m)
                assert (await client.get("/api/v1/whoami")).status_code == 200, minutes
            authority.clock = lambda: start + dt.timedelta(hours=8)
            response = await client.get("/api/v1/whoami")
            assert (response.status_code, response.json()["error"]) == (401, "session_expired")
        assert TOUCH_INTERVAL_S < 20 * 60


async def test_removing_an_operator_or_its_password_ends_its_sessions_at_once(
        tmp_path: Any) -> None:
    async with running_api(tmp_path) as api:
        await _passwords(api)
        async with _signed_in(api, "demo-admin") as (gone, gone_csrf), \
                _signed_in(api, "reader") as (reader, _), \
                _signed_in(api, "admin") as (admin, admin_csrf):
            assert (await gone.get("/api/v1/whoami")).status_code == 200
            await _on_store(api, lambda ops: ops.remove("demo-admin", actor="local:test"))
            response = await gone.post("/api/v1/tenants/demo/keys", json={"name": "Late"},
                                       headers=_same_origin(api, gone_csrf))
            assert (response.status_code, response.json()["error"]) == (401, "bad_credentials")
            assert (await gone.get("/tenants/demo/provisioning")).status_code == 303
            await _on_store(api, lambda ops: ops.set_password("reader", "a brand new one!",
                                                              actor="local:test"))
            assert (await reader.get("/api/v1/whoami")).status_code == 401
            # A role change applies to the very next request of a live session.
            await _on_store(api, lambda ops: ops.set_role("admin", "security-read",
                                                          actor="local:test"))
            response = await admin.post("/api/v1/tenants/demo/keys", json={"name": "Now"},
                                        headers=_same_origin(api, admin_csrf))
            assert (response.status_code, response.json()["error"]) == (403, "role_forbidden")
            page = await admin.get("/tenants/demo/provisioning")
            assert 'id="generate-key"' not in page.text and "security-read" in page.text


async def test_signing_out_ends_the_session_and_the_store_keeps_only_its_hash(
        tmp_path: Any) -> None:
    async with running_api(tmp_path) as api:
        await _passwords(api)
        async with _signed_in(api, "admin") as (client, csrf):
            session_id = client.cookies[COOKIE]
            db = sqlite3.connect(api.config.state_dir / "switch.db")
            try:
                rows = db.execute("SELECT * FROM console_sessions").fetchall()
            finally:
                db.close()
            assert [r[0] for r in rows] == [hashlib.sha256(session_id.encode()).hexdigest()]
            assert session_id not in str(rows) and csrf not in str(rows)
            response = await client.post("/signout", data={"csrf_token": csrf},
                                         headers=_same_origin(api))
            assert response.status_code == 303
            assert response.headers["location"] == "/signin?notice=signed-out"
            assert 'Max-Age=0' in response.headers["set-cookie"] or \
                "expires=" in response.headers["set-cookie"].lower()
        async with _browser(api) as replay:
            replay.cookies.set(COOKIE, session_id)
            response = await replay.get("/api/v1/whoami")
            assert (response.status_code, response.json()["error"]) == (401, "bad_credentials")
        audit = (await api.ok("reader", "GET", "/audit", action="operator.signed_out"))["entries"]
        assert [(e["actor"], e["target"]) for e in audit] == [("operator:admin", "admin")]


async def test_refusals_are_shown_in_words_next_to_what_caused_them(tmp_path: Any) -> None:
    async with running_api(tmp_path) as api:
        await _passwords(api)
        async with _signed_in(api, "demo-admin") as (client, _):
            other = await client.get("/tenants/acme/provisioning")
            assert other.status_code == 404
            assert "There is no such tenant, or it is not one of yours." in other.text
            audit = await client.get("/audit", params={"since": "yesterday", "until": ""})
            assert audit.status_code == 200
            assert re.search(r'id="filter-since-error">write a time as YYYY-MM-DD', audit.text)
            order = await client.get("/audit", params={"since": "2026-02-02",
                                                       "until": "2026-02-01"})
            assert "The end of the range is before its start." in order.text
            search = await client.get("/tenants/demo/certificates", params={"key": "pk_nosuch"})
            assert 'id="search-key-error"' in search.text
            assert "This tenant has no such provisioning key." in search.text
