"""Provisioning-key secrets: generated once, stored only as a hash, compared in constant time.

A secret is ``swk_<key id>_<43 characters>``: 256 random bits (``secrets.token_urlsafe(32)``) with
the key id in clear, so the store finds the one candidate row by id instead of comparing against
every hash. SHA-256 (not a slow password hash) is the right hash here: the secret is a
uniformly random 256-bit token, so there is nothing to brute-force offline that a slow hash would
protect; the same reasoning as GitHub's and Stripe's API tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

KEY_ID_PREFIX = "pk_"
SECRET_PREFIX = "swk_"
_SECRET_RE = re.compile(r"swk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
#: Compared against when the id is unknown, so that path costs the same work.
_DUMMY_HASH = hashlib.sha256(b"switch-dummy-secret").digest()


def new_key_id() -> str:
    return KEY_ID_PREFIX + secrets.token_hex(8)


def new_key_secret(key_id: str) -> str:
    return f"{SECRET_PREFIX}{key_id.removeprefix(KEY_ID_PREFIX)}_{secrets.token_urlsafe(32)}"


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


def parse_key_id(secret: str) -> str | None:
    """The key id a well-formed secret names, else None."""
    match = _SECRET_RE.fullmatch(secret)
    return KEY_ID_PREFIX + match.group(1) if match else None


def secret_matches(secret: str, stored_hash: bytes | None) -> bool:
    """Constant-time comparison; ``stored_hash`` None (unknown id) does the same work."""
    expected = stored_hash if stored_hash is not None else _DUMMY_HASH
    ok = hmac.compare_digest(hash_secret(secret), expected)
    return ok and stored_hash is not None
