"""Operators (the people behind the admin API and console): their rules, as pure functions.

An operator has a unique name, one role (``security-read`` sees everything and changes nothing,
``security-admin`` does what seed 000 describes), the tenants it may act on (a list, or all of
them: ``None``), one API token and optionally a console password.

The API token is ``swo_<token id>_<43 characters>``, made and checked exactly like a provisioning
key's secret (``enroll.secrets``): 256 random bits, the id in clear so the store finds the one
row, SHA-256 stored, compared in constant time. Passwords are chosen by people, so they are
hashed with argon2id (argon2-cffi's ``PasswordHasher``, RFC 9106's low-memory profile), never
SHA-256. The store keeps only the hashes (``enroll.store``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable

import argon2
import attrs

from enroll.errors import InvalidOperator

SECURITY_READ = "security-read"
SECURITY_ADMIN = "security-admin"
ROLES: tuple[str, ...] = (SECURITY_READ, SECURITY_ADMIN)
MAX_NAME_CHARS = 64
#: Names are what people type to sign in and what the audit log shows: a letter first, then
#: letters, digits and ``. _ - @`` (e-mail addresses fit), nothing that needs quoting.
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9._@-]*")

TOKEN_ID_PREFIX = "op_"
TOKEN_PREFIX = "swo_"
_TOKEN_RE = re.compile(r"swo_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_DUMMY_HASH = hashlib.sha256(b"switch-dummy-operator-token").digest()
_HASHER = argon2.PasswordHasher.from_parameters(argon2.profiles.RFC_9106_LOW_MEMORY)
#: Verified against when an operator has no password, so that path costs the same work. A
#: constant (an argon2id hash of "switch-dummy-password" with the profile's parameters, checked
#: by tests/unit/test_operators.py): hashing it at import cost every process, each CLI command
#: included, ~0.2 s of CPU.
_DUMMY_PASSWORD_HASH = ("$argon2id$v=19$m=65536,t=3,p=4$zW1vSyFS4BPDeihqnY4iUQ$"
                        "c7CZxIIN/KIHi49n1kag/phkBoT7IrsD+IOshn4YYfE")
MIN_PASSWORD_CHARS = 12


@attrs.frozen
class OperatorRecord:
    name: str
    role: str
    #: The tenants this operator may act on; None: every tenant.
    tenants: tuple[str, ...] | None
    token_id: str
    token_hash: bytes = attrs.field(repr=False)
    password_hash: str | None = attrs.field(repr=False)
    created_at: int
    updated_at: int

    def may_act_on(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants

    @property
    def can_change(self) -> bool:
        """``security-read`` changes nothing."""
        return self.role == SECURITY_ADMIN


def validate_name(name: str) -> str:
    if not name:
        raise InvalidOperator("an operator name must not be empty")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidOperator(f"an operator name has at most {MAX_NAME_CHARS} characters")
    if not _NAME_RE.fullmatch(name):
        raise InvalidOperator("an operator name starts with a letter and holds only letters, "
                              "digits and . _ - @")
    return name


def validate_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidOperator(f"unknown role {role!r} (roles: {', '.join(ROLES)})")
    return role


def validate_tenants(tenants: Iterable[str] | None, known: Iterable[str]) -> tuple[str, ...] | None:
    """The tenant list, sorted and without repeats (None: all tenants); every name must be a
    tenant of the configuration (fail closed: a typo must not grant nothing silently)."""
    if tenants is None:
        return None
    wanted = tuple(sorted(set(tenants)))
    if not wanted:
        raise InvalidOperator("an operator needs at least one tenant, or all of them")
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        raise InvalidOperator(f"no tenant {', '.join(map(repr, unknown))} in the configuration")
    return wanted


def new_token() -> tuple[str, str]:
    """A new (token id, token). The token is shown once; only ``hash_token(token)`` is kept."""
    token_id = TOKEN_ID_PREFIX + secrets.token_hex(8)
    token = f"{TOKEN_PREFIX}{token_id.removeprefix(TOKEN_ID_PREFIX)}_{secrets.token_urlsafe(32)}"
    return token_id, token


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def parse_token_id(token: str) -> str | None:
    match = _TOKEN_RE.fullmatch(token)
    return TOKEN_ID_PREFIX + match.group(1) if match else None


def token_matches(token: str, stored_hash: bytes | None) -> bool:
    """Constant-time; ``stored_hash`` None (unknown id) does the same work and is False."""
    expected = stored_hash if stored_hash is not None else _DUMMY_HASH
    ok = hmac.compare_digest(hash_token(token), expected)
    return ok and stored_hash is not None


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_CHARS:
        raise InvalidOperator(f"a password has at least {MIN_PASSWORD_CHARS} characters")
    return _HASHER.hash(password)


def password_matches(password: str, stored_hash: str | None) -> bool:
    """argon2id verification; no stored hash (no console password) does the same work and is
    False, as does a hash that is not argon2's."""
    try:
        ok = _HASHER.verify(stored_hash or _DUMMY_PASSWORD_HASH, password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False
    return ok and stored_hash is not None


def password_needs_rehash(stored_hash: str) -> bool:
    """True when the hash was made with weaker parameters than today's."""
    return _HASHER.check_needs_rehash(stored_hash)
