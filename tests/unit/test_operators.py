"""Operators' rules: names, roles, tenant lists, API tokens and console passwords."""

from __future__ import annotations

import argon2
import pytest

from enroll import operators
from enroll.errors import InvalidOperator


@pytest.mark.parametrize("name", ["alice", "Alice.Smith", "a", "ops-1", "bob@example.com", "x" * 64])
def test_good_operator_names(name: str) -> None:
    assert operators.validate_name(name) == name


@pytest.mark.parametrize("name", ["", "1alice", "-x", "al ice", "x" * 65, "a/b", "ä"])
def test_bad_operator_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidOperator):
        operators.validate_name(name)


def test_roles_are_the_two_of_the_design() -> None:
    assert operators.validate_role("security-read") == operators.SECURITY_READ
    with pytest.raises(InvalidOperator, match="security-read, security-admin"):
        operators.validate_role("admin")


def test_tenant_lists_are_sorted_known_and_not_empty() -> None:
    known = ["acme", "other"]
    assert operators.validate_tenants(["other", "acme", "acme"], known) == ("acme", "other")
    assert operators.validate_tenants(None, known) is None
    with pytest.raises(InvalidOperator, match="'nope'"):
        operators.validate_tenants(["acme", "nope"], known)
    with pytest.raises(InvalidOperator, match="at least one"):
        operators.validate_tenants([], known)


def test_a_token_names_its_id_and_matches_only_its_hash() -> None:
    token_id, token = operators.new_token()
    assert token.startswith("swo_") and token_id.startswith("op_")
    assert operators.parse_token_id(token) == token_id
    stored = operators.hash_token(token)
    assert operators.token_matches(token, stored)
    assert not operators.token_matches(token[:-1] + ("A" if token[-1] != "A" else "B"), stored)
    assert not operators.token_matches(token, None)  # an unknown id
    assert operators.parse_token_id("swk_" + token[4:]) is None  # a provisioning key is not one
    assert operators.new_token()[1] != token


def test_passwords_are_argon2id_and_verified() -> None:
    hashed = operators.hash_password("correct horse battery")
    assert hashed.startswith("$argon2id$")
    assert operators.password_matches("correct horse battery", hashed)
    assert not operators.password_matches("correct horse batterY", hashed)
    assert not operators.password_matches("correct horse battery", None)
    assert not operators.password_matches("x", "not a hash")
    assert not operators.password_needs_rehash(hashed)
    with pytest.raises(InvalidOperator, match="at least 12"):
        operators.hash_password("short")


def test_the_dummy_password_hash_costs_what_a_real_one_does() -> None:
    # The constant verified when an operator has no password: argon2id with the parameters
    # real hashes get, and a hash of the dummy password (so verifying it is a real verification).
    dummy = operators._DUMMY_PASSWORD_HASH
    assert argon2.extract_parameters(dummy) == argon2.profiles.RFC_9106_LOW_MEMORY
    assert operators._HASHER.verify(dummy, "switch-dummy-password")
    assert not operators.password_needs_rehash(dummy)
