"""The console's pure rules: the CSRF token and the same-origin check, where sign-in may send
the browser, the audit filter's times, and words for every refusal the API can answer."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest

from enroll.errors import error_classes
from gateway.api.errors import STATUS_BY_REASON, api_error_classes
from gateway.api.session import (
    COOKIE,
    CSRF_HEADER,
    SessionCookie,
    csrf_token,
    new_session_id,
    same_origin,
    session_hash,
)
from gateway.console import messages
from gateway.console.views import detail, parse_when, when
from gateway.console.web import local_path


def test_the_csrf_token_is_bound_to_its_session_and_is_not_its_stored_hash() -> None:
    one, two = new_session_id(), new_session_id()
    assert one != two and one.startswith("sws_") and len(one) == 47
    assert csrf_token(one) == csrf_token(one) != csrf_token(two)
    assert session_hash(one) == hashlib.sha256(one.encode()).hexdigest()
    assert csrf_token(one) not in (session_hash(one), one)


@pytest.mark.parametrize(("headers", "ok"), [
    ({"host": "switch.example:9444"}, True),  # no browser signal: not a browser
    ({"host": "switch.example:9444", "origin": "https://switch.example:9444",
      "sec-fetch-site": "same-origin"}, True),
    ({"host": "Switch.Example:9444", "origin": "https://switch.example:9444"}, True),
    ({"host": "switch.example:9444", "origin": "https://evil.example"}, False),
    ({"host": "switch.example:9444", "origin": "http://switch.example:9444"}, False),
    ({"host": "switch.example:9444", "origin": "null"}, False),
    ({"host": "switch.example:9444", "sec-fetch-site": "same-site"}, False),
    ({"host": "switch.example:9444", "sec-fetch-site": "cross-site"}, False),
    ({"origin": "https://switch.example:9444"}, False),
])
def test_same_origin_believes_what_the_browser_says_of_where_a_request_came_from(
        headers: dict[str, str], ok: bool) -> None:
    assert same_origin(headers) is ok


def test_a_session_proves_intent_only_with_its_own_token_and_from_its_own_origin() -> None:
    session = new_session_id()
    cookies = {COOKIE: session}
    page = {"host": "h:1", "origin": "https://h:1", "sec-fetch-site": "same-origin"}
    credential = SessionCookie()
    assert credential.proves_intent({**page, CSRF_HEADER: csrf_token(session)}, cookies)
    assert not credential.proves_intent(page, cookies)
    assert not credential.proves_intent({**page, CSRF_HEADER: csrf_token(new_session_id())},
                                        cookies)
    assert not credential.proves_intent({**page, CSRF_HEADER: csrf_token(session),
                                         "origin": "https://evil.example"}, cookies)
    assert not credential.proves_intent({**page, CSRF_HEADER: csrf_token("")}, {})


@pytest.mark.parametrize(("candidate", "sent_to"), [
    ("/tenants/demo/issuers", "/tenants/demo/issuers"),
    ("/audit?tenant=demo&since=2026-01-01", "/audit?tenant=demo&since=2026-01-01"),
    ("//evil.example/x", "/"), ("/\\evil.example", "/"), ("https://evil.example/", "/"),
    ("evil", "/"), ("", "/"), (None, "/"), ("/a b", "/"), ("/" + "a" * 600, "/"),
])
def test_sign_in_sends_the_browser_back_only_to_a_path_of_this_listener(
        candidate: str | None, sent_to: str) -> None:
    assert local_path(candidate) == sent_to


def test_audit_times_are_read_in_utc_and_a_range_end_takes_in_what_it_names() -> None:
    day = int(dt.datetime(2026, 3, 4, tzinfo=dt.UTC).timestamp())
    assert parse_when("2026-03-04", end=False) == day
    assert parse_when("2026-03-04", end=True) == day + 86400 - 1
    assert parse_when("2026-03-04 10:15", end=False) == day + 10 * 3600 + 15 * 60
    assert parse_when(" 2026-03-04T10:15 UTC ", end=True) == day + 10 * 3600 + 16 * 60 - 1
    assert parse_when("2026-03-04 10:15:30", end=True) == day + 10 * 3600 + 15 * 60 + 30
    for bad in ("yesterday", "2026-13-01", "2026-02-30", "04/03/2026", "2026-03-04 25:00"):
        with pytest.raises(ValueError, match="YYYY-MM-DD"):
            parse_when(bad, end=False)
    assert when(day) == "2026-03-04 00:00 UTC" and when(None) == "\u2014"


def test_every_refusal_an_operator_can_meet_in_the_console_has_words_and_a_place() -> None:
    api_reasons = set(api_error_classes()) - {"malformed_json", "unsupported_media_type"}
    admin_reasons = {r for r, status in STATUS_BY_REASON.items()
                     if status in (401, 403, 404, 409, 422, 429, 503)} - {
        # Enrollment's and store administration's: no console action meets them.
        "certificate_required", "key_suspended", "key_revoked", "certificate_untrusted",
        "certificate_expired", "certificate_unknown", "certificate_revoked",
        "request_rejected", "subject_taken", "store_exists", "backup_invalid",
        "store_missing", "invalid_operator", "operator_name_taken", "unknown_operator"}
    missing = sorted((api_reasons | admin_reasons) - messages.REASONS.keys())
    assert missing == []
    assert set(messages.REASONS) <= set(STATUS_BY_REASON) | {"unreachable"}
    for reason, entry in messages.REASONS.items():
        assert entry.text is None or entry.text.endswith((".", "\u201d.")), reason
    assert messages.field_of("confirmation_mismatch") == "confirm_name"
    assert messages.field_of("reason_required") == "reason"
    assert messages.said("invalid_key_name", "a key name must start with a letter") == \
        "a key name must start with a letter"
    assert messages.said("no_such_reason_code") == messages.REASONS["internal_error"].text
    assert set(error_classes()).isdisjoint(set(api_error_classes()))


def test_audit_details_show_times_as_dates_lists_joined_and_none_as_a_dash() -> None:
    at = int(dt.datetime(2031, 12, 2, 12, 34, tzinfo=dt.UTC).timestamp())
    assert detail(at, "not_after") == "2031-12-02 12:34 UTC"
    assert detail(at, "revoked_at") == "2031-12-02 12:34 UTC"
    assert detail(at, "count") == str(at)
    assert detail(True, "password") == "True"
    assert detail(["demo", "acme"], "tenants") == "demo, acme"
    assert detail(None, "tenants") == "\u2014"
