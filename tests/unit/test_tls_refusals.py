"""``gateway.tls_refusals``: a failed handshake's reason from OpenSSL's codes — the verify result,
the kind of error, the exact (library, reason) pairs of its queue — never from searching its text.
The same over a real handshake on memory streams: the verify result OpenSSL leaves behind."""

from __future__ import annotations

import datetime as dt

import pytest
import trio
import trio.testing
from OpenSSL import SSL
from OpenSSL._util import lib as _lib

from enroll import pki
from gateway.tls import OpenSSLStream
from gateway.tls_context import client_context, server_context
from gateway.tls_refusals import (
    SSL_REASONS,
    X509_V_OK,
    error_codes,
    handshake_reason,
    verify_result,
    x509_error_reason,
)

SSL_LIB = "SSL routines"


def _error(*reasons: str, lib: str = SSL_LIB) -> SSL.Error:
    """An ``SSL.Error`` as pyOpenSSL raises it: OpenSSL's queue as (library, function, reason)."""
    return SSL.Error([(lib, "", reason) for reason in reasons])


@pytest.mark.parametrize(("error", "reason"), [
    (_error("peer did not return a certificate"), "no_client_certificate"),
    (_error("http request"), "not_tls"),
    (_error("https proxy request"), "not_tls"),
    (_error("wrong version number"), "not_tls"),
    (_error("unsupported protocol"), "tls_version_or_cipher"),
    (_error("no shared cipher"), "tls_version_or_cipher"),
    (_error("no shared groups"), "tls_version_or_cipher"),
    (_error("unexpected eof while reading"), "handshake_aborted"),
    (SSL.SysCallError(-1, "Unexpected EOF"), "handshake_aborted"),
    (SSL.SysCallError(104, "ECONNRESET"), "handshake_aborted"),
    # the first entry of the queue that the table knows decides
    (_error("record layer failure", "no shared cipher", "http request"), "tls_version_or_cipher"),
])
def test_openssl_reason_codes_name_the_refusal(error: BaseException, reason: str) -> None:
    assert handshake_reason(error) == reason


@pytest.mark.parametrize("error", [
    _error("data length too long", "record layer failure"),
    _error("unexpected message"),
    # Text that merely contains a known reason, or a known reason from another library, is not it:
    _error("bad protocol version number"),
    _error("no certificate assigned"),
    _error("http request", lib="BIO routines"),
    _error("HTTP request"),
    SSL.Error("peer did not return a certificate"),  # no queue at all
    SSL.Error(),
    ValueError("no shared cipher"),
    None,
])
def test_anything_else_is_handshake_failed(error: BaseException | None) -> None:
    assert handshake_reason(error) == "handshake_failed"


def test_a_failed_verification_outranks_the_error_it_caused() -> None:
    assert handshake_reason(_error("certificate verify failed"), 10) == "certificate_expired"
    assert handshake_reason(SSL.SysCallError(-1, "Unexpected EOF"), 20) == "untrusted_issuer"
    assert handshake_reason(_error("certificate verify failed"), X509_V_OK) == "handshake_failed"


@pytest.mark.parametrize(("errnum", "reason"), [
    (2, "untrusted_issuer"), (20, "untrusted_issuer"), (21, "untrusted_issuer"),
    (9, "certificate_not_yet_valid"), (10, "certificate_expired"), (7, "bad_signature"),
    # X509_V_ERR_INVALID_CA is 24 up to OpenSSL 3 and 79 in OpenSSL 4: the linked one's number.
    (23, "certificate_revoked"), (_lib.X509_V_ERR_INVALID_CA, "invalid_ca"), (25, "path_too_long"),
    (26, "no_client_auth"), (3, "crl_unavailable"), (12, "crl_expired"), (65, "verify_error_65"),
])
def test_verify_errors_have_stable_reasons(errnum: int, reason: str) -> None:
    assert x509_error_reason(errnum) == reason


def test_the_table_names_only_openssls_ssl_library_and_known_reasons() -> None:
    assert {lib for lib, _ in SSL_REASONS} == {SSL_LIB}
    assert set(SSL_REASONS.values()) == {
        "no_client_certificate", "handshake_aborted", "not_tls", "tls_version_or_cipher"}
    assert error_codes(_error("a", "b")) == [(SSL_LIB, "a"), (SSL_LIB, "b")]


NOW = dt.datetime.now(dt.UTC)


async def test_the_verify_result_names_what_openssls_own_check_refused() -> None:
    """A server with OpenSSL's own verification (no callback of Switch's) refuses an expired
    client certificate: the connection's verify result says why."""
    ca_key = pki.generate_key()
    ca = pki.make_ca(pki.name("test CA"), ca_key, now=NOW - dt.timedelta(days=400),
                     validity=dt.timedelta(days=800))
    server_key, client_key = pki.generate_key(), pki.generate_key()
    server = pki.make_leaf(pki.name("server"), server_key.public_key(), (ca, ca_key), now=NOW,
                           validity=dt.timedelta(days=30), dns_names=["server.test"],
                           server=True, client=False)
    expired = pki.make_leaf(pki.name("agent"), client_key.public_key(), (ca, ca_key),
                            now=NOW - dt.timedelta(days=60), validity=dt.timedelta(days=30))
    server_end, client_end = trio.testing.memory_stream_pair()
    tls_server = OpenSSLStream.server(server_end, server_context(
        [server], server_key, client_auth="required", trust=[ca]))
    tls_client = OpenSSLStream.client(client_end, client_context(
        trust=[ca], chain=[expired], key=client_key, max_version=SSL.TLS1_2_VERSION),
        "server.test")
    failures: list[BaseException | None] = []

    async def serve() -> None:
        try:
            await tls_server.do_handshake()
        except trio.BrokenResourceError as exc:
            failures.append(exc.__cause__)
        await trio.aclose_forcefully(tls_server)

    async def connect() -> None:
        with pytest.raises(trio.BrokenResourceError):
            await tls_client.do_handshake()
        await trio.aclose_forcefully(tls_client)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            nursery.start_soon(connect)
    assert verify_result(tls_server.connection) == 10  # X509_V_ERR_CERT_HAS_EXPIRED
    assert handshake_reason(failures[0], verify_result(tls_server.connection)) == \
        "certificate_expired"
