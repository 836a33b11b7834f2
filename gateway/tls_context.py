"""The OpenSSL contexts Switch serves and connects with: TLS 1.2 and 1.3, no session resumption,
exactly the trust given, and the client-certificate policy of each listener.

Why pyOpenSSL and not Python's ``ssl``: see ``gateway.tls``, which runs connections made on these
contexts as Trio streams.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from OpenSSL import SSL, crypto

from config.ciphers import DEFAULT_TLS12_CIPHERS
from gateway.tls_tickets import disable_tls13_tickets

__all__ = ["DEFAULT_TLS12_CIPHERS", "ClientAuth", "client_context", "server_context"]


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
        ctx.set_verify(SSL.VERIFY_PEER, _accept_any)
    elif client_auth == "optional":
        ctx.set_verify(SSL.VERIFY_PEER, _openssl_decides)
    else:
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _openssl_decides)
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
    ctx.set_verify(SSL.VERIFY_PEER, _openssl_decides)
    if chain and key is not None:
        ctx.use_certificate(chain[0])
        for extra in chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(key)
    return ctx


def _openssl_decides(conn: SSL.Connection, cert: crypto.X509, errnum: int, depth: int, ok: int) -> bool:
    return bool(ok)


def _accept_any(conn: SSL.Connection, cert: crypto.X509, errnum: int, depth: int, ok: int) -> bool:
    return True
