"""The admin API's pure rules: the one authorisation check, authentication over a real store,
request bodies, the reason tables, webhook signatures, queues and back-off."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from config.model import Webhook
from enroll.authority import Authority
from enroll.errors import (
    BadCredentials,
    CredentialsRequired,
    MalformedCredentials,
    RateLimited,
    UnknownTenant,
    error_classes,
)
from enroll.operator_admin import OperatorAdmin
from enroll.ratelimit import FailureLimiter
from gateway.api.auth import Access, Authenticator, BearerToken, Principal, authorize
from gateway.api.errors import (
    STATUS_BY_REASON,
    CsrfFailed,
    InvalidRequest,
    MalformedJson,
    RoleForbidden,
    api_error_classes,
)
from gateway.api.metrics import WebhookMetrics
from gateway.api.schema import ACKNOWLEDGE, Body, Field
from gateway.cli.exits import EXIT_CODES
from gateway.webhook_events import WebhookEvent, headers, signature_matches
from gateway.webhooks import Webhooks, retry_delay, retryable, where
from tests.support.errors import all_error_classes

TENANTS = ("acme", "other")
ADMIN = Principal("a", "security-admin", None, "token", csrf_ok=True)
READER = Principal("r", "security-read", None, "token", csrf_ok=True)
ACME_ADMIN = Principal("s", "security-admin", ("acme",), "token", csrf_ok=True)
#: Console sessions whose request came without its CSRF token (or from another site).
FORGED_ADMIN = Principal("a", "security-admin", None, "session")
FORGED_READER = Principal("r", "security-read", None, "session")
FORGED_ACME_ADMIN = Principal("s", "security-admin", ("acme",), "session")


@pytest.mark.parametrize(("principal", "access", "tenant", "refused"), [
    (ADMIN, Access.CHANGE, "acme", None),
    (ADMIN, Access.READ, None, None),
    (READER, Access.READ, "other", None),
    (READER, Access.CHANGE, "acme", RoleForbidden),
    (READER, Access.CHANGE, None, RoleForbidden),
    (READER, Access.SESSION, None, None),
    (ACME_ADMIN, Access.CHANGE, "acme", None),
    (ACME_ADMIN, Access.READ, "other", UnknownTenant),
    (ACME_ADMIN, Access.CHANGE, "other", UnknownTenant),
    (ADMIN, Access.READ, "nosuch", UnknownTenant),
    (FORGED_ADMIN, Access.READ, "acme", None),
    (FORGED_ADMIN, Access.CHANGE, "acme", CsrfFailed),
    (FORGED_ADMIN, Access.SESSION, None, CsrfFailed),
    (FORGED_READER, Access.CHANGE, "acme", CsrfFailed),
    (FORGED_ACME_ADMIN, Access.CHANGE, "other", UnknownTenant),
])
def test_authorize_checks_the_tenant_then_the_forgery_proof_then_the_role(
        principal: Principal, access: Access, tenant: str | None, refused: type | None) -> None:
    if refused is None:
        authorize(principal, access, tenant, TENANTS)
    else:
        with pytest.raises(refused):
            authorize(principal, access, tenant, TENANTS)


def test_the_actor_is_the_operator_never_the_request() -> None:
    assert ADMIN.actor == "operator:a" and ACME_ADMIN.visible(TENANTS) == ["acme"]


def test_authentication_reads_the_operator_from_the_store_each_time(authority: Authority) -> None:
    operators = OperatorAdmin(authority)
    _, token = operators.add("alice", role="security-read", tenants=["acme"], actor="local:t")
    auth = Authenticator((BearerToken(),), operators, FailureLimiter(max_failures=3))
    ok = auth.authenticate({"authorization": f"Bearer {token}"}, {}, "10.0.0.1", 1000.0)
    assert ok == Principal("alice", "security-read", ("acme",), "token", csrf_ok=True)
    operators.set_role("alice", "security-admin", actor="local:t")
    assert auth.authenticate({"authorization": f"bearer {token}"}, {}, "10.0.0.1", 1000.0).role \
        == "security-admin"
    with pytest.raises(CredentialsRequired):
        auth.authenticate({}, {}, "10.0.0.2", 1000.0)
    with pytest.raises(MalformedCredentials):
        auth.authenticate({"authorization": "Basic eDp5"}, {}, "10.0.0.2", 1000.0)
    operators.remove("alice", actor="local:t")
    for _ in range(2):
        with pytest.raises(BadCredentials):
            auth.authenticate({"authorization": f"Bearer {token}"}, {}, "10.0.0.2", 1000.0)
    with pytest.raises(RateLimited):  # three failures from 10.0.0.2; 10.0.0.1 is not affected
        auth.authenticate({"authorization": f"Bearer {token}"}, {}, "10.0.0.2", 1001.0)
    with pytest.raises(BadCredentials):
        auth.authenticate({"authorization": f"Bearer {token}"}, {}, "10.0.0.1", 1001.0)


def test_bodies_are_strict_json_objects() -> None:
    body = Body((Field("name", str, required=True), ACKNOWLEDGE))
    assert body.parse(b'{"name": "x", "acknowledge": true}') == {"name": "x", "acknowledge": True}
    for raw, error in ((b"{", MalformedJson), (b"[]", InvalidRequest),
                       (b'{"name": "x", "acknowledged": true}', InvalidRequest),
                       (b'{"name": "x", "acknowledge": 1}', InvalidRequest),
                       (b'{"acknowledge": true}', InvalidRequest),
                       (b'{"name": "' + b"x" * 1001 + b'"}', InvalidRequest)):
        with pytest.raises(error):
            body.parse(raw)
    assert Body(()).parse(b"") == {}


def test_every_reason_has_an_api_status_and_an_exit_code() -> None:
    enroll_reasons = {cls.reason for cls in all_error_classes()}
    api_reasons = set(api_error_classes())
    assert sorted((enroll_reasons | api_reasons) - STATUS_BY_REASON.keys()) == []
    assert sorted(api_reasons - EXIT_CODES.keys()) == []
    assert not api_reasons & set(error_classes())  # one meaning per code
    assert {STATUS_BY_REASON[r] for r in ("role_forbidden", "unknown_tenant", "key_limit_reached",
                                          "acknowledgement_required", "bad_credentials")} == \
        {403, 404, 409, 422, 401}


def test_a_webhook_event_is_signed_over_its_exact_body() -> None:
    event = WebhookEvent("evt_1", "key.revoked", 1700000000, "acme", "operator:a", {"k": 1})
    body = event.body()
    assert json.loads(body) == {"id": "evt_1", "type": "key.revoked", "created_at": 1700000000,
                                "tenant": "acme", "actor": "operator:a", "data": {"k": 1}}
    sent = headers(event, body, b"secret", 2)
    assert sent["Switch-Signature"] == "sha256=" + hmac.new(b"secret", body,
                                                            hashlib.sha256).hexdigest()
    assert signature_matches(b"secret", body, sent["Switch-Signature"])
    assert not signature_matches(b"secret", body.replace(b"acme", b"evil"),
                                 sent["Switch-Signature"])
    assert (sent["Switch-Event-Id"], sent["Switch-Timestamp"], sent["Switch-Delivery-Attempt"]) \
        == ("evt_1", "1700000000", "2")


def test_retries_back_off_with_full_jitter_and_only_for_what_may_pass_later() -> None:
    for attempt, cap in ((1, 1.0), (3, 4.0), (10, 30.0)):
        assert all(0 <= retry_delay(attempt) <= cap for _ in range(200))
    assert [retryable(s) for s in (500, 503, 408, 429, 400, 401, 404)] == \
        [True, True, True, True, False, False, False]
    assert where("https://user:pw@hooks.example:8443/T0/B0/secret?x=1") == \
        "https://hooks.example:8443"


async def test_a_full_queue_drops_the_event_and_counts_it(tmp_path: Path) -> None:
    secret = tmp_path / "s"
    secret.write_text("0123456789abcdef")
    metrics = WebhookMetrics(CollectorRegistry())
    hooks = Webhooks([Webhook("w", "http://127.0.0.1:9/", secret, ("key.created",))], metrics,
                     max_queue=2)
    for _ in range(3):
        hooks.emit("key.created", tenant=None, actor="operator:a", data={})
    hooks.emit("key.revoked", tenant=None, actor="operator:a", data={})  # not subscribed
    assert metrics.dropped.labels("w", "queue_full")._value.get() == 1
    assert metrics.queued.labels("w")._value.get() == 2
