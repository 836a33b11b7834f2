"""The TLS 1.2 cipher suites Switch's servers offer: forward-secret AEAD suites only, unless an
operator widens them with ``[tls] ciphers``.

TLS 1.3 suites are all forward-secret AEAD and are not affected. For TLS 1.2 OpenSSL's default
list would also accept static-RSA key exchange (``AES128-GCM-SHA256``, ``AES256-SHA``: no forward
secrecy, a stolen server key decrypts recorded sessions) and CBC suites with SHA-1 MACs. The
default here is Mozilla's "intermediate" TLS 1.2 list without finite-field DHE: ECDHE with
AES-GCM or ChaCha20-Poly1305, for ECDSA and RSA server certificates, in server order.
"""

from __future__ import annotations

from OpenSSL import SSL

#: The TLS 1.2 suites offered by default (OpenSSL cipher string, in the server's order).
DEFAULT_TLS12_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
))

#: OpenSSL's names of TLS 1.2 suites with an ephemeral (forward-secret) key exchange begin so;
#: anonymous ones (``AECDH-``, ``ADH-``) do not, and are not authenticated either.
_FORWARD_SECRET = ("ECDHE-", "DHE-")
#: ... and those with an AEAD cipher name one of these.
_AEAD = ("-GCM-", "-CCM", "CHACHA20-POLY1305")


def expand(spec: str) -> list[str]:
    """The TLS 1.2 suites an OpenSSL cipher string selects, in order (TLS 1.3 suites left out);
    ``ValueError`` when it selects none or is not a cipher string."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    try:
        ctx.set_cipher_list(spec.encode("ascii"))
    except (SSL.Error, UnicodeEncodeError) as exc:
        raise ValueError(f"{spec!r} selects no TLS 1.2 cipher suite OpenSSL knows") from exc
    names = [n for n in SSL.Connection(ctx, None).get_cipher_list() if not n.startswith("TLS_")]
    if not names:
        raise ValueError(f"{spec!r} selects no TLS 1.2 cipher suite")
    return names


def weak(names: list[str]) -> list[str]:
    """The suites of ``names`` without forward secrecy or without an AEAD cipher."""
    return [n for n in names if not n.startswith(_FORWARD_SECRET) or not any(a in n for a in _AEAD)]
