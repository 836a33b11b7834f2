"""The wrong-key rate limit is counted in the store: EST services on separate store connections
(as separate workers or hosts have) allow five wrong guesses from a source in total. On both
engines."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable, Iterator

import pytest

from config.model import SwitchConfig
from enroll.authority import Authority
from enroll.est_service import EstRequest, EstService
from enroll.issuance import Issuance
from tests.support.est_service import csr

NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
WRONG = b"Bearer swk_0123456789abcdef_" + b"A" * 43


@pytest.fixture
def services(store_config: SwitchConfig) -> Iterator[Callable[[], EstService]]:
    opened: list[Authority] = []

    def service() -> EstService:
        opened.append(Authority.open(store_config, clock=lambda: NOW, create=True))
        return EstService(store_config, Issuance(opened[-1]))

    yield service
    for authority in opened:
        authority.close()


def _enroll(service: EstService, authorization: bytes, source: str,
            now: dt.datetime = NOW) -> tuple[int, str]:
    body, _ = csr()
    reply = service.handle(EstRequest(
        "POST", "/.well-known/est/simpleenroll",
        {"content-type": b"application/pkcs10", "authorization": authorization}, body,
        "acme.test", None, source), now, 0.0)
    return reply.status, reply.result


def test_five_wrong_guesses_in_total_over_two_services_then_429(
        services: Callable[[], EstService]) -> None:
    one, two = services(), services()
    one.authority.enable_service("acme", actor="t")
    _, secret = one.authority.generate_key("acme", "Fleet", actor="t")
    right = b"Basic " + base64.b64encode(f"agent:{secret}".encode())
    results = [_enroll((one, two)[i % 2], WRONG, "10.0.0.1") for i in range(5)]
    assert results == [(401, "bad_credentials")] * 5
    assert _enroll(two, WRONG, "10.0.0.1") == (429, "rate_limited")
    assert _enroll(one, right, "10.0.0.1") == (429, "rate_limited")
    # Another source is not affected, and its success writes nothing to the counts.
    assert _enroll(two, right, "10.0.0.2") == (200, "ok")
    assert one.authority.store.auth_failures("10.0.0.2", 0.0) == []
    # A minute after the first failure, the source may try again.
    later = NOW + dt.timedelta(seconds=61)
    assert _enroll(one, right, "10.0.0.1", later) == (200, "ok")
