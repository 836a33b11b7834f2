"""EST refusals: each with an HTTP status and a stable reason code.

The reason code is what the peer sees (``status reason`` in a short text body), and what logs and
metrics count; the message is for local logs only and never sent.
"""

from __future__ import annotations

from typing import ClassVar


class EstError(Exception):
    status: ClassVar[int] = 400
    reason: str = "bad_request"

    def __init__(self, message: str, *, reason: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.retry_after = retry_after


class BadRequest(EstError):
    status = 400


class BadBase64(BadRequest):
    reason = "bad_base64"


class BadCsr(BadRequest):
    reason = "bad_csr"


class BadCsrSignature(BadRequest):
    reason = "bad_csr_signature"


class KeyTypeNotAllowed(BadRequest):
    reason = "key_type_not_allowed"


class SubjectNotAllowed(BadRequest):
    reason = "subject_not_allowed"


class Unauthorized(EstError):
    status = 401
    reason = "unauthorized"


class Forbidden(EstError):
    """403; ``reason`` says which: key_suspended, key_revoked, service_disabled,
    certificate_revoked, certificate_expired, request_rejected, ..."""

    status = 403
    reason = "forbidden"


class NotFound(EstError):
    status = 404
    reason = "not_found"


class MethodNotAllowed(EstError):
    status = 405
    reason = "method_not_allowed"


class RequestTimeout(EstError):
    status = 408
    reason = "request_timeout"


class BodyTooLarge(EstError):
    status = 413
    reason = "body_too_large"


class UnsupportedMediaType(EstError):
    status = 415
    reason = "unsupported_media_type"


class TooManyRequests(EstError):
    status = 429
    reason = "rate_limited"


class Unavailable(EstError):
    status = 503
    reason = "unavailable"
