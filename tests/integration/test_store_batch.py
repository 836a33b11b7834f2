"""Group commit: the EST service's batch entry point and the enroll listener's batcher (the
store's own batches are in test_store_contract, on both engines)."""

from __future__ import annotations

import base64
import sqlite3
from typing import Any

import pytest
import trio
import trio.testing

from enroll.authority import Authority
from enroll.errors import StoreError
from enroll.est_service import EstReply, EstRequest
from gateway.enroll_listener import Batcher
from tests.support.est_service import NOW, Env, csr

# --- the EST service ---------------------------------------------------------------------------


def _enroll_request(rig: Env, cn: str) -> EstRequest:
    body, _ = csr(cn)
    return EstRequest("POST", "/.well-known/est/simpleenroll", {
        "content-type": b"application/pkcs10",
        "authorization": b"Basic " + base64.b64encode(f"agent:{rig.secret}".encode())},
        body, "acme.test", None, "10.0.0.1")


def test_a_batch_issues_each_certificate_with_one_commit(env: Env) -> None:  # noqa: F811
    commits = []
    original = env.authority.store._commit
    env.authority.store._commit = lambda: (commits.append(1), original())[1]  # type: ignore[method-assign]
    batch = [(_enroll_request(env, f"agent-{i}"), NOW, float(i)) for i in range(5)]
    replies = env.service.handle_batch(batch)
    assert [r.status for r in replies] == [200] * 5
    assert len({r.serial for r in replies}) == 5
    assert len(env.issuance.list_certificates("acme")) == 5
    assert commits == [1]


def test_a_request_that_fails_unexpectedly_gets_500_and_the_others_are_issued(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    real = env.service.handle

    def handle(request: EstRequest, now: object, monotonic: float) -> EstReply:
        reply = real(request, now, monotonic)  # type: ignore[arg-type]
        if request.body == doomed.body:
            raise KeyError("a bug")  # after its certificate was recorded in its savepoint
        return reply

    monkeypatch.setattr(env.service, "handle", handle)
    good, doomed = _enroll_request(env, "good"), _enroll_request(env, "doomed")
    replies = env.service.handle_batch([(good, NOW, 1.0), (doomed, NOW, 2.0)])
    assert [(r.status, r.result) for r in replies] == [(200, "ok"), (500, "internal_error")]
    [record] = env.issuance.list_certificates("acme")  # the doomed one's was rolled back
    assert record.serial == replies[0].serial
    assert env.authority.get_key("acme", "Fleet").certificates_issued == 1


def test_when_the_commit_fails_every_request_of_the_batch_gets_503_and_nothing_is_stored(
        env: Env) -> None:  # noqa: F811
    def fail() -> None:
        env.authority.store._rollback()
        raise StoreError("disk full")

    env.authority.store._commit = fail  # type: ignore[method-assign]
    replies = env.service.handle_batch([(_enroll_request(env, f"a{i}"), NOW, float(i)) for i in range(3)])
    assert {(r.status, r.result) for r in replies} == {(503, "store_unavailable")}
    assert env.issuance.list_certificates("acme") == []


def _write_lock_is_free(rig: Env) -> bool:
    """Whether another connection (another worker process) could take the store's write lock now."""
    other = sqlite3.connect(rig.authority.store.path, isolation_level=None, timeout=0)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        other.close()


def test_a_batch_signs_with_the_write_lock_free_and_records_its_certificates_after(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Another worker can write while this one signs: the batch holds SQLite's one writer lock
    only to record and commit, and every certificate is in the store once it has returned."""
    free_while_signing: list[bool] = []
    sign = env.issuance.sign

    def watched(*args: Any, **kwargs: Any) -> Any:
        free_while_signing.append(_write_lock_is_free(env))
        return sign(*args, **kwargs)

    monkeypatch.setattr(env.issuance, "sign", watched)
    replies = env.service.handle_batch(
        [(_enroll_request(env, f"agent-{i}"), NOW, float(i)) for i in range(4)])
    assert free_while_signing == [True] * 4
    assert [r.status for r in replies] == [200] * 4
    stored = {c.serial for c in env.issuance.list_certificates("acme")}
    assert stored == {r.serial for r in replies}
    assert env.authority.get_key("acme", "Fleet").certificates_issued == 4


def test_certificates_signed_before_their_key_is_revoked_elsewhere_are_never_sent(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The key is revoked by another process after the batch authenticated it and while it
    signs: recording re-checks the key, so no certificate is stored and none is sent."""
    sign = env.issuance.sign
    signed: list[str] = []

    def revoked_meanwhile(*args: Any, **kwargs: Any) -> Any:
        issued, record = sign(*args, **kwargs)
        signed.append(record.serial)
        if len(signed) == 2:
            other = Authority.open(env.authority.config)
            try:
                other.revoke_key("acme", "Fleet", reason="leaked", confirm="Fleet", actor="t")
            finally:
                other.close()
        return issued, record

    monkeypatch.setattr(env.issuance, "sign", revoked_meanwhile)
    replies = env.service.handle_batch(
        [(_enroll_request(env, f"agent-{i}"), NOW, float(i)) for i in range(2)])
    assert len(signed) == 2
    assert [(r.status, r.result, r.serial) for r in replies] == [(503, "wrong_key_state", None)] * 2
    assert all(b"BEGIN" not in r.body for r in replies)
    assert env.issuance.list_certificates("acme") == []


def test_two_requests_of_one_batch_for_a_unique_subject_one_is_issued_the_other_refused(
        env: Env) -> None:  # noqa: F811
    """Recorded together, the checks at recording still see the batch's earlier certificates."""
    env.authority.revoke_key("acme", "Fleet", reason="unused", confirm="Fleet", actor="t")
    _, first = env.authority.generate_key("acme", "First", actor="t", profile="unique")
    _, second = env.authority.generate_key("acme", "Second", actor="t", profile="unique")
    requests = []
    for secret in (first, second):
        env.secret = secret
        requests.append((_enroll_request(env, "agent-7"), NOW, 1.0))
    replies = env.service.handle_batch(requests)
    assert [(r.status, r.result) for r in replies] == [(200, "ok"), (409, "subject_taken")]
    [record] = env.issuance.list_certificates("acme")
    assert record.serial == replies[0].serial


# --- the listener's batcher --------------------------------------------------------------------


class _Service:
    def __init__(self) -> None:
        self.batches: list[int] = []

    def handle_batch(self, batch: list[tuple[EstRequest, object, float]]) -> list[EstReply]:
        self.batches.append(len(batch))
        return [EstReply(200, request.body) for request, _, _ in batch]


def _request(n: int) -> EstRequest:
    return EstRequest("GET", "/.well-known/est/cacerts", {}, str(n).encode(), None, None, "x")


async def test_requests_waiting_together_go_to_the_service_together() -> None:
    service = _Service()
    batcher = Batcher(lambda: service, trio.CapacityLimiter(1), max_batch=8)  # type: ignore[arg-type, return-value]
    replies: dict[int, bytes] = {}

    async def one(n: int) -> None:
        replies[n] = (await batcher.submit(_request(n))).body

    async with trio.open_nursery() as nursery:
        nursery.start_soon(batcher.run)
        async with trio.open_nursery() as clients:
            for n in range(20):
                clients.start_soon(one, n)
        nursery.cancel_scope.cancel()
    assert replies == {n: str(n).encode() for n in range(20)}
    assert sum(service.batches) == 20 and max(service.batches) <= 8 and len(service.batches) < 20


async def test_requests_left_when_the_batcher_stops_get_503() -> None:
    service = _Service()
    batcher = Batcher(lambda: service, trio.CapacityLimiter(1))  # type: ignore[arg-type, return-value]
    with trio.CancelScope() as scope:
        scope.cancel()
        await batcher.run()
    assert (await batcher.submit(_request(1))).status == 503
