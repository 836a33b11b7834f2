"""The provisioning-key rules of seed 000, as pure functions."""

from __future__ import annotations

import pytest

from enroll import secrets
from enroll.errors import ConfirmationMismatch, InvalidKeyName, ReasonRequired, WrongKeyState
from enroll.keys import (
    KeyAction,
    KeyState,
    check_revoke_confirmation,
    next_state,
    require_reason,
    validate_key_name,
)


@pytest.mark.parametrize("name", ["a", "Laptops", "Berlin office-2", "x" * 64, "Z9 - 9"])
def test_ok_names_follow_the_rules(name: str) -> None:
    assert validate_key_name(name) == name


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("", "empty"),
        ("x" * 65, "at most 64"),
        ("9lives", "start with a letter"),
        ("-dash", "start with a letter"),
        (" space", "start with a letter"),
        ("under_score", "letters, digits, spaces"),
        ("dot.name", "letters, digits, spaces"),
        ("émile", "start with a letter"),
        ("tab\tname", "letters, digits, spaces"),
        ("trailing ", "end with a space"),
    ],
)
def test_fail_names_name_the_broken_rule(name: str, rule: str) -> None:
    with pytest.raises(InvalidKeyName, match=rule):
        validate_key_name(name)


@pytest.mark.parametrize(
    ("current", "action", "expected"),
    [
        (KeyState.ACTIVE, KeyAction.SUSPEND, KeyState.SUSPENDED),
        (KeyState.SUSPENDED, KeyAction.REACTIVATE, KeyState.ACTIVE),
        (KeyState.ACTIVE, KeyAction.REVOKE, KeyState.REVOKED),
        (KeyState.SUSPENDED, KeyAction.REVOKE, KeyState.REVOKED),
    ],
)
def test_allowed_transitions(current: KeyState, action: KeyAction, expected: KeyState) -> None:
    assert next_state(current, action) is expected


@pytest.mark.parametrize(
    ("current", "action"),
    [
        (KeyState.SUSPENDED, KeyAction.SUSPEND),
        (KeyState.ACTIVE, KeyAction.REACTIVATE),
        (KeyState.REVOKED, KeyAction.SUSPEND),
        (KeyState.REVOKED, KeyAction.REACTIVATE),
        (KeyState.REVOKED, KeyAction.REVOKE),
    ],
)
def test_refused_transitions(current: KeyState, action: KeyAction) -> None:
    with pytest.raises(WrongKeyState):
        next_state(current, action)


@pytest.mark.parametrize(("current", "action", "message"), [
    (KeyState.ACTIVE, KeyAction.REACTIVATE, "cannot reactivate an active key (only from: suspended)"),
    (KeyState.SUSPENDED, KeyAction.SUSPEND, "cannot suspend a suspended key (only from: active)"),
])
def test_a_refused_transition_reads_as_english(current: KeyState, action: KeyAction,
                                               message: str) -> None:
    with pytest.raises(WrongKeyState) as info:
        next_state(current, action)
    assert info.value.message == message


def test_reason_is_required_and_bounded() -> None:
    assert require_reason("  leaked  ", KeyAction.REVOKE) == "leaked"
    for bad in (None, "", "   "):
        with pytest.raises(ReasonRequired):
            require_reason(bad, KeyAction.SUSPEND)
    with pytest.raises(ReasonRequired):
        require_reason("x" * 501, KeyAction.SUSPEND)


def test_revoke_confirmation_is_case_sensitive() -> None:
    check_revoke_confirmation("Laptops", "Laptops")
    for bad in ("laptops", "Laptops ", "", None):
        with pytest.raises(ConfirmationMismatch):
            check_revoke_confirmation("Laptops", bad)


def test_secret_carries_its_key_id_and_matches_only_its_hash() -> None:
    key_id = secrets.new_key_id()
    secret = secrets.new_key_secret(key_id)
    assert secrets.parse_key_id(secret) == key_id
    stored = secrets.hash_secret(secret)
    assert secrets.secret_matches(secret, stored)
    assert not secrets.secret_matches(secret[:-1] + ("A" if secret[-1] != "A" else "B"), stored)
    assert not secrets.secret_matches(secret, None)
    assert secrets.parse_key_id("swk_nothex_" + "a" * 43) is None
    assert secrets.parse_key_id("") is None
