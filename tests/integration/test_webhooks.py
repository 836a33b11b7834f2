"""Webhooks from a running Switch to a receiver on loopback: a correctly signed
``request.pending`` for a request held for approval (once, not on every repeat), and a receiver
that never answers delays neither an enrollment nor a revocation. Retries against a real
receiver."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import trio
from prometheus_client import CollectorRegistry

from config.model import Webhook
from enroll import pki
from gateway.api.metrics import WebhookMetrics
from gateway.webhooks import Webhooks
from tests.support.api import running_api, sample
from tests.support.webhook import Receiver

SECRET = "3f1c0a9be8d74c2a915e6b0d7c4f2a11"


def _hook(receiver: Receiver, tmp_path: Path, events: str, timeout: str = "5s") -> str:
    secret = tmp_path / "hook.secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    return (f'\n[[webhooks]]\nname = "audit-bot"\nurl = "{receiver.url}"\n'
            f'secret_file = "{secret}"\nevents = {events}\ntimeout = "{timeout}"\n')


async def test_a_request_held_for_approval_sends_one_correctly_signed_request_pending(
        tmp_path: Path) -> None:
    receiver = Receiver()
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.run)
        extra = _hook(receiver, tmp_path, '["request.pending", "request.approved"]')
        async with running_api(tmp_path, extra) as api:
            await api.ok("admin", "PUT", "/tenants/demo/service", {"enabled": True})
            held = await api.ok("admin", "POST", "/tenants/demo/keys",
                                {"name": "Held", "profile": "manual"})
            key = pki.generate_key()
            assert await api.enroll(held["secret"], "agent-7", key) == 202
            assert await api.enroll(held["secret"], "agent-7", key) == 202  # the same request
            [pending] = await api.ok("admin", "GET", "/tenants/demo/requests")
            await api.ok("admin", "POST", f"/tenants/demo/requests/{pending['id']}/approve")
            deliveries = api.switch.webhooks.metrics.deliveries
            with trio.fail_after(20):  # in order: a second request.pending would come first
                first, second = await receiver.wait_for(2)
                while sample(deliveries, webhook="audit-bot", result="delivered") < 2:  # noqa: ASYNC110
                    await trio.sleep(0.01)  # counted once the receiver's answer is read
        nursery.cancel_scope.cancel()
    expected = "sha256=" + hmac.new(SECRET.encode(), first.body, hashlib.sha256).hexdigest()
    assert first.headers["switch-signature"] == expected
    event = json.loads(first.body)
    assert event["type"] == first.headers["switch-event"] == "request.pending"
    assert event["id"] == first.headers["switch-event-id"] and event["id"].startswith("evt_")
    assert str(event["created_at"]) == first.headers["switch-timestamp"]
    assert (event["tenant"], event["actor"]) == ("demo", "est")
    assert event["data"]["request"] == {"id": pending["id"], "subject": "agent-7",
                                        "key_id": held["id"]}
    assert first.headers["content-type"] == "application/json" and first.path == "/hook"
    approved = json.loads(second.body)
    assert (approved["type"], approved["actor"]) == ("request.approved", "operator:admin")
    assert approved["data"]["request"]["state"] == "approved"


async def test_a_receiver_that_never_answers_delays_no_enrollment_and_no_revocation(
        tmp_path: Path) -> None:
    receiver = Receiver(silent=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.run)
        async with running_api(tmp_path, _hook(receiver, tmp_path, '["*"]', "60s")) as api:
            with trio.fail_after(30):
                await api.ok("admin", "PUT", "/tenants/demo/service", {"enabled": True})
                while not receiver.connections:  # the first event is on its way, unanswered
                    await receiver.arrived.wait()
                held = await api.ok("admin", "POST", "/tenants/demo/keys",
                                    {"name": "Held", "profile": "manual"})
                fleet = await api.ok("admin", "POST", "/tenants/demo/keys", {"name": "Fleet"})
                assert await api.enroll(held["secret"], "agent-1") == 202
                assert await api.enroll(fleet["secret"], "agent-2") == 200
                revoked = await api.ok("admin", "POST", f"/tenants/demo/keys/{fleet['id']}/revoke",
                                       {"reason": "lost", "confirm_name": "Fleet",
                                        "acknowledge": True})
                assert revoked["state"] == "revoked"
            assert receiver.received == []
            metrics = api.switch.webhooks.metrics
            assert sample(metrics.deliveries) == 0 and sample(metrics.dropped) == 0
        nursery.cancel_scope.cancel()


async def _deliver(receiver: Receiver, tmp_path: Path) -> tuple[WebhookMetrics, Webhooks]:
    secret = tmp_path / "s"
    secret.write_text(SECRET)
    metrics = WebhookMetrics(CollectorRegistry())
    hooks = Webhooks([Webhook("r", receiver.url, secret, ("key.created",), 5.0)], metrics,
                     first_retry_s=0.01)
    return metrics, hooks


async def test_a_failing_receiver_is_retried_and_a_refusing_one_is_not(tmp_path: Path) -> None:
    for statuses, attempts, result in (([503, 500, 204], 3, "delivered"), ([400], 1, "failed")):
        receiver = Receiver(statuses=list(statuses))
        async with trio.open_nursery() as nursery:
            await nursery.start(receiver.run)
            metrics, hooks = await _deliver(receiver, tmp_path)
            nursery.start_soon(hooks.run)
            hooks.emit("key.created", tenant="demo", actor="operator:a", data={"k": 1})
            hooks.emit("key.revoked", tenant="demo", actor="operator:a", data={})  # unsubscribed
            with trio.fail_after(20):
                await receiver.wait_for(attempts)
                while not sample(metrics.deliveries, result=result):  # noqa: ASYNC110 - a counter
                    await trio.sleep(0.01)
            assert [r.headers["switch-delivery-attempt"] for r in receiver.received] == \
                [str(n) for n in range(1, attempts + 1)]
            assert len({r.headers["switch-event-id"] for r in receiver.received}) == 1
            assert len({r.body for r in receiver.received}) == 1  # a retry sends the same bytes
            nursery.cancel_scope.cancel()
