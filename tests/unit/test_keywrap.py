"""Issuer keys sealed under a passphrase (AES-256-GCM, scrypt)."""

from __future__ import annotations

import pytest

from enroll import keywrap


def test_a_sealed_key_opens_with_its_passphrase_and_context_only() -> None:
    blob = keywrap.seal(b"-----BEGIN PRIVATE KEY-----", b"passphrase", context="iss_acme_1")
    assert blob.startswith(keywrap.MAGIC) and b"PRIVATE KEY" not in blob
    assert keywrap.unseal(blob, b"passphrase", context="iss_acme_1") == b"-----BEGIN PRIVATE KEY-----"
    with pytest.raises(keywrap.WrongPassphrase):
        keywrap.unseal(blob, b"another", context="iss_acme_1")
    with pytest.raises(keywrap.WrongPassphrase):  # moved onto another issuer's row
        keywrap.unseal(blob, b"passphrase", context="iss_acme_2")


def test_sealing_twice_gives_different_blobs_and_damage_is_refused() -> None:
    one = keywrap.seal(b"key", b"p", context="c")
    assert one != keywrap.seal(b"key", b"p", context="c")  # fresh salt and nonce
    damaged = one[:-1] + bytes([one[-1] ^ 1])
    with pytest.raises(keywrap.WrongPassphrase):
        keywrap.unseal(damaged, b"p", context="c")
    with pytest.raises(keywrap.WrongPassphrase, match="format"):
        keywrap.unseal(b"PEM?", b"p", context="c")
    with pytest.raises(ValueError):
        keywrap.seal(b"key", b"", context="c")
