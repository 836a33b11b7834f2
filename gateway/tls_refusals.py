"""The reason code of a refused TLS handshake, decided from OpenSSL's codes, never its messages;
and the TLS alert each of Switch's own refusals is sent as (``verify_error_for``, below).

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

#: ``X509_V_ERR_*`` numbers (OpenSSL's x509_vfy.h, as the linked OpenSSL numbers them: OpenSSL 4
#: renumbered ``INVALID_CA``) -> reason codes.
X509_REASONS: dict[int, str] = {
    _lib.X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT: "untrusted_issuer",
    _lib.X509_V_ERR_UNABLE_TO_GET_CRL: "crl_unavailable",
    _lib.X509_V_ERR_CERT_SIGNATURE_FAILURE: "bad_signature",
    _lib.X509_V_ERR_CERT_NOT_YET_VALID: "certificate_not_yet_valid",
    _lib.X509_V_ERR_CERT_HAS_EXPIRED: "certificate_expired",
    _lib.X509_V_ERR_CRL_HAS_EXPIRED: "crl_expired",
    _lib.X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT: "untrusted_issuer",
    _lib.X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN: "untrusted_issuer",
    _lib.X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY: "untrusted_issuer",
    _lib.X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE: "untrusted_issuer",
    _lib.X509_V_ERR_CERT_REVOKED: "certificate_revoked",
    _lib.X509_V_ERR_INVALID_CA: "invalid_ca",
    _lib.X509_V_ERR_PATH_LENGTH_EXCEEDED: "path_too_long",
    _lib.X509_V_ERR_INVALID_PURPOSE: "no_client_auth",
}

# --- the alert a refusal is sent as -------------------------------------------------------------
#
# A refused certificate must reach the agent as the TLS alert that names the problem (RFC 8446
# 6.2), never ``internal_error``, which the RFC keeps for errors unrelated to the peer. OpenSSL
# chooses the alert from the ``X509_V_ERR_*`` left on the verify context when the verify callback
# fails (``ssl_x509err2alert``, ssl/statem/statem_lib.c, the same table in OpenSSL 3.0 to 4); a
# callback that fails without setting one leaves ``X509_V_OK``, which ``X509_verify_cert`` turns
# into ``X509_V_ERR_UNSPECIFIED``: internal_error. So the gateway's verify callback sets, for each
# of Switch's own refusals, an error OpenSSL maps to the right alert (``verify_error_for``):
#
# ======================================  ===============================  ========================
# reasons                                 X509_V_ERR_ set                  alert sent
# ======================================  ===============================  ========================
# key_revoked, certificate_revoked        CERT_REVOKED                     certificate_revoked (44)
# certificate_expired,                    CERT_HAS_EXPIRED                 certificate_expired (45)
# certificate_not_yet_valid
# crl_expired                             CRL_HAS_EXPIRED                  certificate_expired (45)
# leaf_is_ca, no_client_auth              INVALID_PURPOSE                  unsupported_certificate
#                                                                          (43)
# issuer_not_tenant, untrusted_issuer,    UNABLE_TO_GET_ISSUER_CERT_       unknown_ca (48)
# issuer_untrusted, provisioning_         LOCALLY
# disabled, ca_removed, no_server_name
# internal_error (an exception in the     UNSPECIFIED                      internal_error (80)
# check: a bug, the one refusal that is
# Switch's fault)
# every other reason (identity_*,         CERT_REJECTED                    bad_certificate (42)
# key_binding_missing, chain_unexpected,
# malformed_certificate, ...)
# ======================================  ===============================  ========================
#
# 43 for usage: RFC 8446 names unsupported_certificate for "a certificate of an unsupported
# type", and a CA certificate or one without clientAuth is of the wrong kind for a client, not
# corrupt (OpenSSL sends 43 for its own purpose check, ``INVALID_PURPOSE``). 42 for the rest: the
# certificate is well formed and trusted, but what it says is not acceptable (RFC 8446:
# "contained signatures that did not verify correctly, etc."; certificate_unknown would say
# less). 45 for a stale CRL, as OpenSSL sends for its own CRL check. A certificate OpenSSL found
# not yet valid is sent as 45 too (RFC 8446: "has expired or is not currently valid"), where
# OpenSSL would say bad_certificate.

#: ``X509_V_ERR_UNSPECIFIED`` (x509_vfy.h: 1; cryptography's bindings do not export it).
X509_V_ERR_UNSPECIFIED = 1

_VERIFY_ERRORS: dict[str, int] = {
    "key_revoked": _lib.X509_V_ERR_CERT_REVOKED,
    "certificate_revoked": _lib.X509_V_ERR_CERT_REVOKED,
    "certificate_expired": _lib.X509_V_ERR_CERT_HAS_EXPIRED,
    "certificate_not_yet_valid": _lib.X509_V_ERR_CERT_HAS_EXPIRED,
    "crl_expired": _lib.X509_V_ERR_CRL_HAS_EXPIRED,
    "leaf_is_ca": _lib.X509_V_ERR_INVALID_PURPOSE,
    "no_client_auth": _lib.X509_V_ERR_INVALID_PURPOSE,
    "issuer_not_tenant": _lib.X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
    "untrusted_issuer": _lib.X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
    "issuer_untrusted": _lib.X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
    "provisioning_disabled": _lib.X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
    "ca_removed": _lib.X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
    "no_server_name": _lib.X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
    "unknown_server_name": _lib.X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
    "internal_error": X509_V_ERR_UNSPECIFIED,
}

#: OpenSSL's own verification errors sent as another alert than OpenSSL would choose.
_VERIFY_ERRORS_SENT_AS: dict[int, int] = {
    _lib.X509_V_ERR_CERT_NOT_YET_VALID: _lib.X509_V_ERR_CERT_HAS_EXPIRED,
}


def verify_error_for(reason: str) -> int:
    """The ``X509_V_ERR_*`` a verify callback refusing for ``reason`` (one of Switch's reason
    codes) leaves on the verify context, so that OpenSSL sends the alert naming it (the table
    above): ``CERT_REJECTED`` (bad_certificate) for any reason without one of its own."""
    return int(_VERIFY_ERRORS.get(reason, _lib.X509_V_ERR_CERT_REJECTED))


def verify_error_sent_for(errnum: int) -> int:
    """The ``X509_V_ERR_*`` to leave on the verify context when OpenSSL's own check failed with
    ``errnum``: itself, except where the table above sends another alert."""
    return _VERIFY_ERRORS_SENT_AS.get(errnum, errnum)


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
