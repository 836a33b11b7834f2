"""The HTTP status the enrollment port answers for each refusal: one table from reason code to
status, at the edge that speaks HTTP (as h11's ``error_status_hint``), so that the rules raise
``enroll.errors`` without knowing HTTP.

Every reason code of ``enroll.errors`` is in the table (a unit test checks it). A code missing
from it still gets an answer, ``400`` (``DEFAULT_STATUS``), never a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping

from enroll.errors import EnrollError

#: A reason code the table does not know: refused as a bad request (fail closed).
DEFAULT_STATUS = 400

STATUS_BY_REASON: Mapping[str, int] = {
    # The request's form and content: the client must change it.
    "bad_base64": 400,
    "bad_csr": 400,
    "bad_csr_signature": 400,
    "key_type_not_allowed": 400,
    "subject_not_allowed": 400,
    "tenant_mismatch": 400,
    "empty_password": 400,
    "bad_password": 400,
    "issuer_expired": 400,
    # Who is asking: unknown or unproven (a 401 carries WWW-Authenticate).
    "unauthorized": 401,
    "credentials_required": 401,
    "bad_credentials": 401,
    "certificate_required": 401,
    # Known, and refused by a rule.
    "service_disabled": 403,
    "key_suspended": 403,
    "key_revoked": 403,
    "certificate_untrusted": 403,
    "certificate_expired": 403,
    "certificate_unknown": 403,
    "certificate_revoked": 403,
    "request_rejected": 403,
    # Where and how.
    "not_found": 404,
    # Held by someone else: another name, or the holder's certificate revoked first.
    "subject_taken": 409,
    "unknown_tenant": 404,
    "method_not_allowed": 405,
    "body_too_large": 413,
    "unsupported_media_type": 415,
    "rate_limited": 429,
    # Switch's side.
    "internal_error": 500,
    "store_unavailable": 503,
    "wrong_passphrase": 503,
    "store_error": 503,
    "store_missing": 503,
    "store_exists": 503,
    "backup_invalid": 503,
    # The authority's own refusals reach the enrollment port only through a change made
    # meanwhile by another process (a key suspended, a request issued, an issuer retired) or a
    # store problem: the client may try again.
    "wrong_key_state": 503,
    "no_issuer": 503,
    "unknown_key": 503,
    "unknown_certificate": 503,
    "unknown_request": 503,
    "unknown_profile": 503,
    "invalid_key_name": 503,
    "key_name_taken": 503,
    "invalid_operator": 503,
    "operator_name_taken": 503,
    "unknown_operator": 503,
    "key_limit_reached": 503,
    "reason_required": 503,
    "confirmation_mismatch": 503,
}


def http_status(error: EnrollError) -> int:
    """The status of the reply refusing a request with ``error``."""
    return STATUS_BY_REASON.get(error.reason, DEFAULT_STATUS)
