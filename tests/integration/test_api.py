"""The admin API over real TLS on loopback, served by a real Switch on a real SQLite store (and the
key limit race on PostgreSQL too): every endpoint with each role, tenant scoping, tokens that stop
working, authentication failures, acknowledgements, plaintext, the OpenAPI document, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from openapi_spec_validator import validate

from enroll.authority import Authority
from enroll.operator_admin import OperatorAdmin
from gateway.api.routes import ENDPOINTS, Endpoint
from tests.support.api import Api, running_api, sample

pytestmark = pytest.mark.slow


@attrs.frozen
class World:
    key: str
    key_name: str
    serial: str
    request: str
    held_secret: str


async def populate(api: Api) -> World:
    """As admin: the service on for demo, a key that issues at once and one that holds requests
    for approval, one certificate issued and one request pending."""
    await api.ok("admin", "PUT", "/tenants/demo/service", {"enabled": True})
    fleet = await api.ok("admin", "POST", "/tenants/demo/keys", {"name": "Fleet"})
    held = await api.ok("admin", "POST", "/tenants/demo/keys", {"name": "Held",
                                                               "profile": "manual"})
    assert await api.enroll(fleet["secret"], "agent-1") == 200
    assert await api.enroll(held["secret"], "agent-2") == 202
    [cert] = await api.ok("admin", "GET", "/tenants/demo/certificates")
    [request] = await api.ok("admin", "GET", "/tenants/demo/requests", state="pending")
    return World(fleet["id"], fleet["name"], cert["serial"], request["id"], held["secret"])


def _path(endpoint: Endpoint, world: World, tenant: str = "demo") -> str:
    return endpoint.path.format(tenant=tenant, key=world.key, serial=world.serial,
                                request=world.request)


def _body(endpoint: Endpoint, world: World) -> Any:
    """A body the endpoint accepts from an admin."""
    name = endpoint.path.rsplit("/", 1)[-1]
    if endpoint.path.startswith("/tenants/{tenant}/certificates/"):
        return {"reason": "stolen"}
    return {
        "service": {"enabled": False, "acknowledge": True},
        "keys": {"name": "Another"},
        "{key}": {"name": "Renamed"},
        "suspend": {"reason": "paused", "acknowledge": True},
        "reactivate": {"acknowledge": True},
        "revoke": {"reason": "done", "confirm_name": world.key_name, "acknowledge": True},
        "reject": {"reason": "unknown agent"},
    }.get(name, {}) if endpoint.method != "GET" else None


async def state(api: Api) -> list[Any]:
    """Everything a change could touch, read as admin."""
    return [await api.ok("admin", "GET", path) for path in (
        "/audit", "/tenants", "/tenants/demo/keys", "/tenants/demo/certificates",
        "/tenants/demo/requests", "/tenants/demo/issuers", "/tenants/acme/keys")]


async def test_a_reader_gets_every_read_and_a_403_on_every_change_with_nothing_changed(
        tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        world = await populate(api)
        before = await state(api)
        for endpoint in ENDPOINTS:
            response = await api.call("reader", endpoint.method, _path(endpoint, world),
                                      _body(endpoint, world))
            if endpoint.method == "GET":
                assert response.status_code == 200, (endpoint.name, response.text)
            else:
                assert (response.status_code, response.json()["error"]) == \
                    (403, "role_forbidden"), endpoint.name
        assert await state(api) == before
        whoami = await api.ok("reader", "GET", "/whoami")
        assert whoami == {"operator": "reader", "role": "security-read", "tenants": None,
                          "can_change": False, "credential": "token"}


async def test_an_admin_does_every_change_and_switch_audit_list_names_the_operator(
        tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        world = await populate(api)
        assert await api.enroll(world.held_secret, "agent-3") == 202
        pending = await api.ok("admin", "GET", "/tenants/demo/requests", state="pending")
        second = next(r["id"] for r in pending if r["id"] != world.request)
        done: set[str] = set()
        for endpoint in ENDPOINTS:
            if endpoint.method == "GET":
                continue
            path = _path(endpoint, world)
            body = _body(endpoint, world)
            if endpoint.path.endswith("/reject"):
                path = path.replace(world.request, second)
            if endpoint.path.endswith("/revoke") and "keys" in endpoint.path:
                body["confirm_name"] = "Renamed"  # renamed by PATCH, earlier in the table
            response = await api.call("admin", endpoint.method, path, body)
            assert response.status_code == endpoint.status, (endpoint.name, response.text)
            done.add(endpoint.name)
        assert done == {e.name for e in ENDPOINTS if e.method != "GET"}
        assert (await api.ok("admin", "GET", "/tenants/demo/service"))["provisioning_enabled"] \
            is False
        listed = await trio.to_thread.run_sync(lambda: subprocess.run(
            [sys.executable, "-m", "gateway.cli", "-c", str(api.config.path), "audit", "list",
             "--tenant", "demo", "--json"], capture_output=True, text=True, timeout=60))
        assert listed.returncode == 0, listed.stderr
        actors = {e["action"]: e["actor"] for e in json.loads(listed.stdout)}
        for action in ("key.created", "key.renamed", "key.suspended", "key.reactivated",
                       "key.revoked", "issuer.renewed", "certificate.revoked",
                       "request.approved", "request.rejected", "service.disabled"):
            assert actors[action] == "operator:admin", action


async def test_a_tenant_scoped_operator_cannot_see_another_tenant(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        world = await populate(api)
        await api.ok("admin", "PUT", "/tenants/acme/service", {"enabled": True})
        await api.ok("admin", "POST", "/tenants/acme/keys", {"name": "Acme Fleet"})
        tenants = await api.ok("demo-admin", "GET", "/tenants")
        assert [t["name"] for t in tenants] == ["demo"]
        assert len(await api.ok("demo-admin", "GET", "/tenants/demo/keys")) == 2
        for endpoint in ENDPOINTS:
            if "{tenant}" not in endpoint.path:
                continue
            for tenant in ("acme", "nosuchtenant"):  # another tenant looks like no tenant
                response = await api.call("demo-admin", endpoint.method,
                                          _path(endpoint, world, tenant), _body(endpoint, world))
                assert (response.status_code, response.json()) == (404, {
                    "error": "unknown_tenant", "message": f"no tenant {tenant!r}"}), endpoint.name
        audit = await api.ok("demo-admin", "GET", "/audit")
        assert audit["entries"] and {e["tenant"] for e in audit["entries"]} == {"demo"}
        everything = await api.ok("admin", "GET", "/audit")
        assert {e["tenant"] for e in everything["entries"]} == {"demo", "acme", None}
        refused = await api.call("demo-admin", "GET", "/audit", tenant="acme")
        assert refused.status_code == 404
        assert [k["name"] for k in await api.ok("admin", "GET", "/tenants/acme/keys")] == \
            ["Acme Fleet"]


async def test_a_removed_operator_and_a_replaced_token_are_refused_on_the_next_request(
        tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        assert (await api.call("reader", "GET", "/whoami")).status_code == 200
        assert (await api.call("admin", "GET", "/whoami")).status_code == 200
        authority = Authority.open(api.config)
        try:
            operators = OperatorAdmin(authority)
            operators.remove("reader", actor="local:test")
            _, new_token = operators.reset_token("admin", actor="local:test")
        finally:
            authority.close()
        for operator in ("reader", "admin"):
            refused = await api.call(operator, "GET", "/whoami")
            assert (refused.status_code, refused.json()["error"]) == (401, "bad_credentials")
        async with api.client(token=new_token) as client:
            assert (await client.get("/whoami")).json()["operator"] == "admin"


async def test_missing_wrong_and_malformed_tokens_get_401_and_repeated_failures_429(
        tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        metrics = api.switch.api_metrics.auth_failures
        wrong = api.tokens["admin"][:-4] + "AAAA"
        for token, reason in ((None, "credentials_required"), (wrong, "bad_credentials"),
                              ("swo_0123456789abcdef_" + "A" * 43, "bad_credentials"),
                              ("", "unauthorized")):
            async with api.client(token=token) as client:
                if token == "":
                    client.headers["Authorization"] = "Basic YWRtaW46YWRtaW4="
                response = await client.get("/tenants")
            assert response.status_code == 401, token
            assert response.json()["error"] == reason
            assert response.headers["WWW-Authenticate"] == 'Bearer realm="switch-api"'
            assert not token or token not in response.text
        assert sample(metrics, reason="bad_credentials") == 2
        assert sample(metrics, reason="unauthorized") == 1
        # Three failures counted (a missing credential is not a guess); two more lock the
        # address out, good token or not, until the window passes.
        for _ in range(2):
            async with api.client(token=wrong) as client:
                assert (await client.get("/tenants")).status_code == 401
        locked = await api.call("admin", "GET", "/tenants")
        assert (locked.status_code, locked.json()["error"]) == (429, "rate_limited")
        assert int(locked.headers["Retry-After"]) > 0
        assert sample(metrics, reason="rate_limited") == 1


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
async def test_ten_concurrent_posts_create_at_most_three_keys(
        tmp_path: Path, engine: str, request: pytest.FixtureRequest) -> None:
    from tests.support.api import deployment

    config = deployment(tmp_path)
    if engine == "postgresql":
        from tests.conftest import postgres_config

        server = request.getfixturevalue("postgres")
        config = postgres_config(config, server, server.create_database(), tmp_path / "secrets")
    async with running_api(tmp_path, config=config) as api:
        statuses: list[tuple[int, str]] = []

        async def post(i: int) -> None:
            response = await api.call("admin", "POST", "/tenants/demo/keys", {"name": f"Racer {i}"})
            statuses.append((response.status_code, response.json().get("error", "")))

        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(post, i)
        assert sorted(statuses) == [(201, "")] * 3 + [(409, "key_limit_reached")] * 7
        assert len(await api.ok("admin", "GET", "/tenants/demo/keys")) == 3


async def test_a_revoke_without_acknowledgement_or_with_the_name_in_the_wrong_case_changes_nothing(
        tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        key = await api.ok("admin", "POST", "/tenants/demo/keys", {"name": "Laptops"})
        before = await state(api)
        path = f"/tenants/demo/keys/{key['id']}/revoke"
        for body, reason in (
                ({"reason": "leaked", "confirm_name": "Laptops"}, "acknowledgement_required"),
                ({"reason": "leaked", "confirm_name": "Laptops", "acknowledge": False},
                 "acknowledgement_required"),
                ({"reason": "leaked", "confirm_name": "laptops", "acknowledge": True},
                 "confirmation_mismatch"),
                ({"confirm_name": "Laptops", "acknowledge": True}, "reason_required"),
                ({"reason": "x", "confirm_name": "Laptops", "acknowledge": "yes"},
                 "invalid_request"),
                ({"reason": "x", "confirm_name": "Laptops", "acknowledged": True},
                 "invalid_request")):
            response = await api.call("admin", "POST", path, body)
            assert (response.status_code, response.json()["error"]) == (422, reason), body
        disable = await api.call("admin", "PUT", "/tenants/demo/service", {"enabled": False})
        assert disable.json()["error"] == "acknowledgement_required"
        assert await state(api) == before
        by_name = await api.ok("admin", "POST", "/tenants/demo/keys/Laptops/revoke", {
            "reason": "leaked", "confirm_name": "Laptops", "acknowledge": True})
        assert by_name["state"] == "revoked"


async def test_plaintext_http_to_the_api_port_gets_no_answer(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        stream = await trio.open_tcp_stream("127.0.0.1", api.port)
        await stream.send_all(b"GET /api/v1/whoami HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: "
                              b"Bearer " + api.tokens["admin"].encode() + b"\r\n\r\n")
        received = b""
        with trio.fail_after(20):
            try:
                while chunk := await stream.receive_some(4096):
                    received += chunk
            except trio.BrokenResourceError:
                pass
        assert not received.startswith(b"HTTP/")
        await stream.aclose()


async def test_the_openapi_document_validates_and_lists_every_endpoint(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        document = await api.ok("reader", "GET", "/openapi.json")
        validate(document)
        listed = {(m.upper(), p.removeprefix("/api/v1")) for p, ops in document["paths"].items()
                  for m in ops}
        assert {(e.method, e.path) for e in ENDPOINTS} | {("GET", "/openapi.json")} == listed
        assert (await api.call(None, "GET", "/openapi.json")).status_code == 401


async def test_refusals_are_json_with_a_reason_never_a_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_api(tmp_path) as api:
        async with api.client("admin") as client:
            for response, status, reason in (
                    (await client.post("/tenants/demo/keys", content=b"{not json",
                                       headers={"Content-Type": "application/json"}),
                     400, "malformed_json"),
                    (await client.post("/tenants/demo/keys", content=b'{"name": "A"}',
                                       headers={"Content-Type": "text/plain"}),
                     415, "unsupported_media_type"),
                    (await client.post("/tenants/demo/keys", content=b"x" * 70_000,
                                       headers={"Content-Type": "application/json"}),
                     413, "body_too_large"),
                    (await client.post("/tenants/demo/keys", json={"name": "9lives"}),
                     422, "invalid_key_name"),
                    (await client.post("/tenants/demo/keys", json={"name": 7}),
                     422, "invalid_request"),
                    (await client.get("/tenants/demo/keys/pk_0000000000000000"),
                     404, "unknown_key"),
                    (await client.get("/tenants/demo/certificates", params={"state": "odd"}),
                     422, "invalid_request"),
                    (await client.get("/no/such/route"), 404, "not_found"),
                    (await client.delete("/tenants/demo/keys"), 405, "method_not_allowed")):
                assert (response.status_code, response.json()["error"]) == (status, reason)
                assert set(response.json()) == {"error", "message"}

        def broken(tenant: str) -> list[Any]:
            raise RuntimeError("secret internals swo_leak")

        monkeypatch.setattr(api.switch.authority, "list_keys", broken)
        crashed = await api.call("admin", "GET", "/tenants/demo/keys")
        assert (crashed.status_code, crashed.json()["error"]) == (500, "internal_error")
        assert "swo_leak" not in crashed.text and "Traceback" not in crashed.text


async def test_curl_lists_tenants_and_generates_a_key(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        token_header = tmp_path / "auth.header"  # curl reads the header from a file: no token
        token_header.write_text(f"Authorization: Bearer {api.tokens['admin']}\n")  # in ps

        def curl(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(["curl", "-sS", "--fail-with-body", "--max-time", "20",
                                   "--cacert", str(api.ca_file), "-H", f"@{token_header}",
                                   *args], capture_output=True, text=True, timeout=60)

        listed = await trio.to_thread.run_sync(curl, f"{api.base}/tenants")
        assert listed.returncode == 0, listed.stderr
        assert [t["name"] for t in json.loads(listed.stdout)] == ["acme", "demo"]
        made = await trio.to_thread.run_sync(
            curl, "-X", "POST", "-H", "Content-Type: application/json",
            "--data", '{"name": "Curl Key"}', f"{api.base}/tenants/demo/keys")
        assert made.returncode == 0, made.stderr
        assert json.loads(made.stdout)["secret"].startswith("swk_")
        refused = await trio.to_thread.run_sync(
            curl, "-X", "POST", "-H", "Content-Type: application/json", "--data", "{}",
            f"{api.base}/tenants/demo/keys/Curl%20Key/suspend")
        assert refused.returncode == 22 and json.loads(refused.stdout)["error"] == \
            "acknowledgement_required"
