"""The admin API's refusals: its own (``ApiError``: who may do what, the form of a request), beside
enroll's (``enroll.errors``), and the one table from reason code to HTTP status for both, at
this edge (as ``enroll.est_status`` is for the enrollment port).

Every reason code of ``enroll.errors`` and of this module is in the table (a unit test checks
it); one missing still gets ``DEFAULT_STATUS``. The reply is ``{"error": reason, "message":
text}``: the message of a rule's refusal is for the operator (it names no secret); a store
failure or a bug gets a fixed message, never a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

DEFAULT_STATUS = 400


class ApiError(Exception):
    """Base class: a request to the admin API refused by the API itself."""

    reason: ClassVar[str] = "invalid_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(ApiError):
    """The body or a query parameter does not fit the endpoint (names the field)."""

    reason = "invalid_request"


class MalformedJson(ApiError):
    reason = "malformed_json"


class AcknowledgementRequired(ApiError):
    """A change seed 000 guards with "I understand the impact of this action and want to
    proceed" came without ``"acknowledge": true``."""

    reason = "acknowledgement_required"


class RequestTimeout(ApiError):
    """The body did not arrive within ``[api] request_timeout``."""

    reason = "request_timeout"


class RoleForbidden(ApiError):
    """A ``security-read`` operator asked for a change."""

    reason = "role_forbidden"


class CsrfFailed(ApiError):
    """A change made with a console session came without its CSRF token (or a wrong one), or
    its browser said it came from another site (``Origin``, ``Sec-Fetch-Site``)."""

    reason = "csrf_failed"


class SessionExpired(ApiError):
    """A console session that ended by itself (idle or absolute lifetime): sign in again."""

    reason = "session_expired"


def api_error_classes() -> dict[str, type[ApiError]]:
    """Every API error class by its reason code."""
    classes: list[type[ApiError]] = [ApiError, *ApiError.__subclasses__()]
    return {cls.reason: cls for cls in classes}


STATUS_BY_REASON: Mapping[str, int] = {
    # The request's form: the client must change it.
    "invalid_request": 422,
    "malformed_json": 400,
    "acknowledgement_required": 422,
    "invalid_key_name": 422,
    "invalid_operator": 422,
    "reason_required": 422,
    "confirmation_mismatch": 422,
    "unknown_profile": 422,
    "body_too_large": 413,
    "request_timeout": 408,
    "unsupported_media_type": 415,
    # Who is asking.
    "unauthorized": 401,
    "credentials_required": 401,
    "bad_credentials": 401,
    "session_expired": 401,
    "rate_limited": 429,
    "role_forbidden": 403,
    "csrf_failed": 403,
    # What does not exist, or is not this operator's to see (the same answer: 404).
    "not_found": 404,
    "unknown_tenant": 404,
    "unknown_key": 404,
    "unknown_certificate": 404,
    "unknown_request": 404,
    "unknown_operator": 404,
    "method_not_allowed": 405,
    # The state does not allow it now.
    "key_name_taken": 409,
    "key_limit_reached": 409,
    "wrong_key_state": 409,
    "operator_name_taken": 409,
    "service_disabled": 409,
    "no_issuer": 409,
    "issuer_expired": 409,
    "subject_taken": 409,
    # Store administration (the command line's; no endpoint raises them today).
    "store_exists": 409,
    "backup_invalid": 422,
    "store_missing": 503,
    # Switch's side.
    "internal_error": 500,
    "store_error": 503,
    "store_unavailable": 503,
    "wrong_passphrase": 503,
    # Enrollment's refusals: no admin endpoint raises them; listed so that one that did would
    # still be a client's error, never a 500.
    "bad_base64": 400,
    "bad_csr": 400,
    "bad_csr_signature": 400,
    "key_type_not_allowed": 400,
    "subject_not_allowed": 400,
    "tenant_mismatch": 400,
    "empty_password": 400,
    "bad_password": 400,
    "certificate_required": 401,
    "key_suspended": 409,
    "key_revoked": 409,
    "certificate_untrusted": 409,
    "certificate_expired": 409,
    "certificate_unknown": 409,
    "certificate_revoked": 409,
    "request_rejected": 409,
}

#: Reasons whose message is Switch's business, not the operator's: a fixed text is sent.
FIXED_MESSAGES: Mapping[str, str] = {
    "internal_error": "the request failed unexpectedly; nothing was changed (see the server's log)",
    "store_error": "the store could not be read or written; nothing was changed",
    "store_unavailable": "the store cannot be reached now; nothing was changed, try again",
    "wrong_passphrase": "the store's issuer keys cannot be opened; nothing was changed",
}


def http_status(reason: str) -> int:
    return STATUS_BY_REASON.get(reason, DEFAULT_STATUS)


def error_body(reason: str, message: str) -> dict[str, str]:
    """The JSON of a refusal."""
    return {"error": reason, "message": FIXED_MESSAGES.get(reason, message)}
