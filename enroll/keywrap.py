"""Sealing issuer private keys under a passphrase, for a store every host shares.

With PostgreSQL the provisioning issuers' private keys live in the database, so every host can
sign; they are never there in clear. Each key is sealed with AES-256-GCM under a key derived from
the passphrase in ``[store] issuer_key_passphrase_file`` with scrypt (N = 2**15, r = 8, p = 1:
RFC 7914's interactive figure, about 32 MiB and a few tens of milliseconds, paid once per issuer
and process). AES-GCM rather than PKCS#8's ``BestAvailableEncryption`` (PBES2, AES-CBC): GCM
authenticates, and the issuer's id is bound in as associated data, so a sealed key copied onto
another issuer's row does not open there; a wrong passphrase and a damaged blob are told apart
from nothing else and both refused.

Layout: ``b"SWK1"`` | 16-byte salt | 12-byte nonce | ciphertext with its 16-byte tag. Pure: no
store, no files.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from enroll.errors import EnrollError

MAGIC = b"SWK1"
SALT_BYTES = 16
NONCE_BYTES = 12
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1


class WrongPassphrase(EnrollError):
    """The blob does not open with this passphrase (or was altered, or belongs elsewhere)."""

    reason = "wrong_passphrase"


def _derive(passphrase: bytes, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(passphrase)


def seal(plaintext: bytes, passphrase: bytes, *, context: str) -> bytes:
    """``plaintext`` sealed under ``passphrase``; ``context`` (e.g. the issuer id) must be given
    again to open it."""
    if not passphrase:
        raise ValueError("an empty passphrase seals nothing")
    salt, nonce = os.urandom(SALT_BYTES), os.urandom(NONCE_BYTES)
    sealed = AESGCM(_derive(passphrase, salt)).encrypt(nonce, plaintext, context.encode())
    return MAGIC + salt + nonce + sealed


def unseal(blob: bytes, passphrase: bytes, *, context: str) -> bytes:
    """The plaintext, or ``WrongPassphrase``."""
    head = len(MAGIC) + SALT_BYTES + NONCE_BYTES
    if not blob.startswith(MAGIC) or len(blob) < head + 16:
        raise WrongPassphrase("not a sealed key (unknown format)")
    salt = blob[len(MAGIC):len(MAGIC) + SALT_BYTES]
    nonce = blob[len(MAGIC) + SALT_BYTES:head]
    try:
        return AESGCM(_derive(passphrase, salt)).decrypt(nonce, blob[head:], context.encode())
    except InvalidTag:
        raise WrongPassphrase("the passphrase does not open this sealed key") from None
