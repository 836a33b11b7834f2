"""The reason code of a refused TLS handshake, decided from OpenSSL's codes, never its messages.

Theory of operation: a handshake fails for one of three kinds of cause, looked at in this order
(``gateway.gateway_listener`` first takes Switch's own decision, when the SNI or verify callback
made one, and its own ``handshake_timeout``):

1. OpenSSL's verification of the chain failed: its ``X509_V_ERR_*`` number, given to the verify
   callback as ``errnum`` or left on the connection (``SSL_get_verify_result``), names it
   (``x509_error_reason``);
2. the peer's connection failed under the handshake: pyOpenSSL raises ``SSL.SysCallError``
   (end of file, reset) — ``handshake_aborted``;
3. OpenSSL refused what the peer sent: pyOpenSSL hands over OpenSSL's error queue in
   ``SSL.Error.args[0]`` as ``(library, function, reason)`` tuples, the strings OpenSSL keeps for
   its numeric codes (``ERR_lib_error_string``, ``ERR_reason_error_string``; the function is
   empty since OpenSSL 3). ``(library, reason)`` is looked up exactly in ``SSL_REASONS``;
   the first entry of the queue that is there decides. Anything else is ``handshake_failed``.

pyOpenSSL passes the numeric codes on only as these strings, and gives no count of the bytes
OpenSSL read from a socket it drives itself; a peer that left before or during its hello is
``handshake_aborted`` either way (end of file), and one whose bytes were not TLS at all is named
by OpenSSL's reason (``not_tls``).
"""

from __future__ import annotations

from OpenSSL import SSL
from OpenSSL._util import lib as _lib

#: ``X509_V_OK``: nothing went wrong in verification.
X509_V_OK = 0

#: ``X509_V_ERR_*`` numbers (OpenSSL's x509_vfy.h) -> reason codes.
X509_REASONS: dict[int, str] = {
    2: "untrusted_issuer",  # UNABLE_TO_GET_ISSUER_CERT
    3: "crl_unavailable",  # UNABLE_TO_GET_CRL
    7: "bad_signature",  # CERT_SIGNATURE_FAILURE
    9: "certificate_not_yet_valid",  # CERT_NOT_YET_VALID
    10: "certificate_expired",  # CERT_HAS_EXPIRED
    12: "crl_expired",  # CRL_HAS_EXPIRED
    18: "untrusted_issuer",  # DEPTH_ZERO_SELF_SIGNED_CERT
    19: "untrusted_issuer",  # SELF_SIGNED_CERT_IN_CHAIN
    20: "untrusted_issuer",  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: "untrusted_issuer",  # UNABLE_TO_VERIFY_LEAF_SIGNATURE
    23: "certificate_revoked",  # CERT_REVOKED
    24: "invalid_ca",  # INVALID_CA
    25: "path_too_long",  # PATH_LENGTH_EXCEEDED
    26: "no_client_auth",  # INVALID_PURPOSE
}

_SSL = "SSL routines"

#: (library, reason) of an OpenSSL error (the strings of ``ERR_LIB_SSL`` and its ``SSL_R_*``
#: codes) -> reason code. Where OpenSSL renamed a reason between versions both spellings are
#: listed.
SSL_REASONS: dict[tuple[str, str], str] = {
    # The client sent no certificate though one is required (SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE).
    (_SSL, "peer did not return a certificate"): "no_client_certificate",
    # End of file inside the handshake, as OpenSSL 3 reports it (SSL_R_UNEXPECTED_EOF_WHILE_READING).
    (_SSL, "unexpected eof while reading"): "handshake_aborted",
    # The client gave up on its side and said so (SSL_AD_USER_CANCELLED).
    (_SSL, "tlsv1 alert user cancelled"): "handshake_aborted",
    # The bytes are not a TLS record: plain HTTP, a proxy's CONNECT, anything else.
    (_SSL, "http request"): "not_tls",  # SSL_R_HTTP_REQUEST
    (_SSL, "https proxy request"): "not_tls",  # SSL_R_HTTPS_PROXY_REQUEST
    (_SSL, "wrong version number"): "not_tls",  # SSL_R_WRONG_VERSION_NUMBER
    (_SSL, "unknown protocol"): "not_tls",  # SSL_R_UNKNOWN_PROTOCOL
    # No protocol version, cipher suite, group or signature algorithm in common.
    (_SSL, "unsupported protocol"): "tls_version_or_cipher",  # SSL_R_UNSUPPORTED_PROTOCOL
    (_SSL, "version too low"): "tls_version_or_cipher",  # SSL_R_VERSION_TOO_LOW
    (_SSL, "version too high"): "tls_version_or_cipher",  # SSL_R_VERSION_TOO_HIGH
    (_SSL, "unsupported ssl version"): "tls_version_or_cipher",  # SSL_R_UNSUPPORTED_SSL_VERSION
    (_SSL, "inappropriate fallback"): "tls_version_or_cipher",  # SSL_R_INAPPROPRIATE_FALLBACK
    (_SSL, "tlsv1 alert protocol version"): "tls_version_or_cipher",  # the client's alert
    (_SSL, "no shared cipher"): "tls_version_or_cipher",  # SSL_R_NO_SHARED_CIPHER
    (_SSL, "no shared groups"): "tls_version_or_cipher",  # SSL_R_NO_SHARED_GROUPS
    (_SSL, "no suitable key share"): "tls_version_or_cipher",  # SSL_R_NO_SUITABLE_KEY_SHARE
    (_SSL, "no suitable groups"): "tls_version_or_cipher",  # SSL_R_NO_SUITABLE_GROUPS
    (_SSL, "no shared signature algorithms"): "tls_version_or_cipher",
    (_SSL, "no suitable signature algorithm"): "tls_version_or_cipher",
}


def x509_error_reason(errnum: int) -> str:
    """A stable reason code for an OpenSSL verification error (``X509_V_ERR_*``); any number
    without one of its own is ``verify_error_N``."""
    return X509_REASONS.get(errnum, f"verify_error_{errnum}")


def verify_result(conn: SSL.Connection) -> int:
    """The connection's ``X509_V_ERR_*`` result (``SSL_get_verify_result``; pyOpenSSL has no
    method for it): ``X509_V_OK`` unless verifying the peer's chain failed."""
    return int(_lib.SSL_get_verify_result(conn._ssl))


def error_codes(error: BaseException) -> list[tuple[str, str]]:
    """The (library, reason) pairs of an ``SSL.Error``'s queue, oldest first (none for
    another exception, or an ``SSL.Error`` without a queue)."""
    queue = error.args[0] if isinstance(error, SSL.Error) and error.args else None
    if not isinstance(queue, list):
        return []
    return [(str(item[0]), str(item[2])) for item in queue
            if isinstance(item, tuple) and len(item) == 3]


def handshake_reason(error: BaseException | None, verify: int = X509_V_OK) -> str:
    """The reason code of a handshake that failed with ``error`` (what the TLS layer raised,
    e.g. ``SSL.Error``, or None), the connection's verify result being ``verify``: see the
    module docstring."""
    if verify != X509_V_OK:
        return x509_error_reason(verify)
    if isinstance(error, SSL.SysCallError):
        return "handshake_aborted"
    for code in error_codes(error) if error is not None else []:
        reason = SSL_REASONS.get(code)
        if reason is not None:
            return reason
    return "handshake_failed"
