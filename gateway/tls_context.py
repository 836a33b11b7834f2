"""The OpenSSL contexts Switch serves and connects with: TLS 1.2 and 1.3, no session resumption,
exactly the trust given, and the client-certificate policy of each listener.

Why pyOpenSSL and not Python's ``ssl``: see ``gateway.tls``, which runs connections made on these
contexts as Trio streams.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal

import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from OpenSSL import SSL, crypto
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from config.ciphers import DEFAULT_TLS12_CIPHERS
from gateway.tls_tickets import disable_tls13_tickets

__all__ = ["DEFAULT_TLS12_CIPHERS", "VERIFY_CALLBACK", "ClientAuth", "client_context",
           "connection_of", "server_context", "set_verify_callback"]


@functools.cache
def _warn_tickets_once() -> None:
    structlog.get_logger("switch").warning(
        "tls13_tickets_not_disabled",
        detail="this cryptography build does not let Switch turn TLS 1.3 session tickets off; "
               "OpenSSL sends stateful tickets that can never resume (no session cache)")


ClientAuth = Literal["required", "optional", "any"]


def server_context(
    chain: Sequence[x509.Certificate],
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey,
    *,
    client_auth: ClientAuth,
    trust: Sequence[x509.Certificate] = (),
    crls: Sequence[x509.CertificateRevocationList] = (),
    ciphers: str | None = None,
) -> SSL.Context:
    """A server context for TLS 1.2 and 1.3 with no session resumption, offering the TLS 1.2
    suites ``ciphers`` (an OpenSSL cipher string: ``[tls] ciphers``; None: forward-secret AEAD
    suites only, ``DEFAULT_TLS12_CIPHERS``). Every server port of Switch is made here.

    ``client_auth``: ``required`` (the handshake fails without a certificate that chains to
    ``trust``), ``optional`` (a certificate, if sent, must chain to ``trust``), or ``any`` (a
    certificate is requested and accepted whatever it is, for the caller to judge: OpenSSL still
    checks that the client holds its private key). Only ``trust`` is trusted, never the system
    store; its subjects are sent as the acceptable CA names.

    Resumption is impossible: no stateless tickets (``OP_NO_TICKET``) and no session cache, so a
    session set up under one SNI name can never skip the trust check of another; and no TLS 1.3
    tickets are sent at all (``gateway.tls_tickets``).
    """
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(
        SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION
        | SSL.OP_CIPHER_SERVER_PREFERENCE
    )
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_cipher_list((ciphers or DEFAULT_TLS12_CIPHERS).encode("ascii"))
    if not disable_tls13_tickets(ctx):
        _warn_tickets_once()
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    ctx.use_certificate(chain[0])
    for extra in chain[1:]:
        ctx.add_extra_chain_cert(extra)
    ctx.use_privatekey(key)
    ctx.check_privatekey()
    store = ctx.get_cert_store()
    assert store is not None
    for cert in trust:
        store.add_cert(crypto.X509.from_cryptography(cert))
    for crl in crls:
        store.add_crl(crl)
    if crls:
        store.set_flags(crypto.X509StoreFlags.CRL_CHECK)
    for cert in trust:
        ctx.add_client_ca(cert)
    if client_auth == "any":
        set_verify_callback(ctx, SSL.VERIFY_PEER, _accept_any)
    elif client_auth == "optional":
        set_verify_callback(ctx, SSL.VERIFY_PEER, _openssl_decides)
    else:
        set_verify_callback(ctx, SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
                            _openssl_decides)
    return ctx


def client_context(
    *, trust: Sequence[x509.Certificate] = (), chain: Sequence[x509.Certificate] = (),
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | None = None,
    max_version: int | None = None,
) -> SSL.Context:
    """A client context that verifies the server against ``trust`` (for the reference agent and
    tests), presenting ``chain``/``key`` when given."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    if max_version is not None:
        ctx.set_max_proto_version(max_version)
    store = ctx.get_cert_store()
    assert store is not None
    for cert in trust:
        store.add_cert(crypto.X509.from_cryptography(cert))
    set_verify_callback(ctx, SSL.VERIFY_PEER, _openssl_decides)
    if chain and key is not None:
        ctx.use_certificate(chain[0])
        for extra in chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(key)
    return ctx


# --- verify callbacks --------------------------------------------------------------------------
#
# Switch installs its verify callbacks with OpenSSL's ``SSL_CTX_set_verify`` itself, not with
# pyOpenSSL's ``Context.set_verify``: pyOpenSSL's wrapper hides the ``X509_STORE_CTX``, so a
# callback that refuses cannot set the verification error OpenSSL derives the TLS alert from (it
# would always be internal_error, ``gateway.tls_refusals``), and it builds a Python certificate
# object for every certificate of every chain. A callback here is a cffi callback of type
# ``VERIFY_CALLBACK``, ``(preverify_ok, store_ctx) -> ok``, made once at module level: OpenSSL
# copies the pointer into every connection, so it must live as long as any connection can.

#: The C type of a verify callback (``SSL_verify_cb``).
VERIFY_CALLBACK = "int (*)(int, X509_STORE_CTX *)"
#: Where OpenSSL keeps the ``SSL *`` of the handshake in a verify context's ex-data.
_SSL_INDEX = _lib.SSL_get_ex_data_X509_STORE_CTX_idx()


def set_verify_callback(ctx: SSL.Context, mode: int, callback: Any) -> None:
    """Require (``mode``) and judge peer certificates on ``ctx`` with ``callback``, a cffi
    callback of type ``VERIFY_CALLBACK`` that outlives every connection made on ``ctx`` (or
    ``ffi.NULL``: OpenSSL's verification alone decides)."""
    _lib.SSL_CTX_set_verify(ctx._context, mode, callback)


def connection_of(store_ctx: Any) -> SSL.Connection:
    """The ``SSL.Connection`` whose handshake a verify callback was called for (KeyError when
    pyOpenSSL does not know it: fail closed)."""
    ssl = _lib.X509_STORE_CTX_get_ex_data(store_ctx, _SSL_INDEX)
    return SSL.Connection._reverse_mapping[ssl]


#: No callback: OpenSSL's verification decides alone.
_openssl_decides = _ffi.NULL


def _accept(ok: int, store_ctx: Any) -> int:
    if not ok:  # overridden: leave no error behind on the connection (SSL_get_verify_result)
        _lib.X509_STORE_CTX_set_error(store_ctx, _lib.X509_V_OK)
    return 1


#: Accepts any certificate (the caller judges it after the handshake; OpenSSL still checks that
#: the peer holds its private key).
_accept_any = _ffi.callback(VERIFY_CALLBACK)(_accept)
