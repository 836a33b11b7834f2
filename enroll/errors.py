"""The enroll package's one error family: every refusal of the authority or of an enrollment
request is an ``EnrollError`` whose class names a stable reason code.

The reason code is what logs, metrics, CLI output and EST replies carry; the message is for the
local operator and local logs only, never sent to a peer. One class per reason code, so the set
of codes is the set of classes (``error_classes``). An error carries no number: the edges map the
code to theirs, each with one table: the EST service to an HTTP status (``enroll.est_status``),
the command line to an exit code (``gateway.cli.exits``). Raising one changes nothing: a
refused request or command has stored nothing.
"""

from __future__ import annotations

from typing import ClassVar


class EnrollError(Exception):
    """Base class: a request to the authority or to the enrollment port was refused."""

    reason: ClassVar[str] = "refused"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def error_classes() -> dict[str, type[EnrollError]]:
    """Every concrete error by its reason code (what a client of a remote authority raises for a
    code it receives; what the tests check both edge tables against)."""
    found: dict[str, type[EnrollError]] = {}
    pending = list(EnrollError.__subclasses__())
    while pending:
        cls = pending.pop()
        found.setdefault(cls.reason, cls)
        pending.extend(cls.__subclasses__())
    return found


# --- records that do not exist -----------------------------------------------------------------


class UnknownTenant(EnrollError):
    """No such tenant in the configuration, or none for the EST path's label or SNI name."""

    reason = "unknown_tenant"


class UnknownKey(EnrollError):
    reason = "unknown_key"


class UnknownCertificate(EnrollError):
    """No certificate with that serial (or more than one, in several tenants)."""

    reason = "unknown_certificate"


class UnknownProfile(EnrollError):
    """A per-key profile override names no profile in the configuration."""

    reason = "unknown_profile"


class UnknownRequest(EnrollError):
    """No enrollment request with that id."""

    reason = "unknown_request"


# --- the authority's rules ---------------------------------------------------------------------


class InvalidKeyName(EnrollError):
    reason = "invalid_key_name"


class KeyNameTaken(EnrollError):
    reason = "key_name_taken"


class KeyLimitReached(EnrollError):
    reason = "key_limit_reached"


class WrongKeyState(EnrollError):
    """The key, certificate or request is not in a state the action applies to (it may have
    changed since it was read, in this process or another)."""

    reason = "wrong_key_state"


class ReasonRequired(EnrollError):
    reason = "reason_required"


class ConfirmationMismatch(EnrollError):
    reason = "confirmation_mismatch"


class ServiceDisabled(EnrollError):
    """The tenant's provisioning service is disabled."""

    reason = "service_disabled"


class NoIssuer(EnrollError):
    reason = "no_issuer"


class IssuerExpired(EnrollError):
    """The current issuer can sign nothing valid now (renew it: ``switch ca renew``)."""

    reason = "issuer_expired"


# --- the store ---------------------------------------------------------------------------------


class StoreError(EnrollError):
    """The store could not be opened, migrated, read or written."""

    reason = "store_error"


class StoreUnavailable(StoreError):
    """The store cannot be reached now (the database is down, its connection was lost, no pooled
    connection came within the timeout), or a batch of enrollment requests could not be
    committed. Nothing was changed; the caller may try again later."""

    reason = "store_unavailable"


class StoreMissing(StoreError):
    """There is no store where the configuration says (no ``switch.db``, or a database without
    Switch's schema) and none may be created here: only ``switch init`` and ``switch serve
    --create-store`` create one, and never for a deployment that was initialised (its store
    was lost or moved: restore it)."""

    reason = "store_missing"


class StoreExists(StoreError):
    """A store is already where one would be created, restored or copied to (a restore that
    would replace it without ``--replace``, a copy into a database that holds data)."""

    reason = "store_exists"


class BackupInvalid(StoreError):
    """A backup could not be made, or an archive is not one ``switch restore`` accepts (it is
    incomplete, damaged, altered, or from a newer Switch). Nothing was changed."""

    reason = "backup_invalid"


class InternalError(EnrollError):
    """A request failed unexpectedly (a bug); what it changed was rolled back."""

    reason = "internal_error"


# --- an enrollment request: its form ------------------------------------------------------------


class UnknownPath(EnrollError):
    """Not an EST path, or an operation EST does not define."""

    reason = "not_found"


class MethodNotAllowed(EnrollError):
    reason = "method_not_allowed"


class UnsupportedMediaType(EnrollError):
    reason = "unsupported_media_type"


class BodyTooLarge(EnrollError):
    reason = "body_too_large"


class BadBase64(EnrollError):
    reason = "bad_base64"


class TenantMismatch(EnrollError):
    """The EST path's label and the SNI name name different tenants."""

    reason = "tenant_mismatch"


# --- an enrollment request: who sent it ---------------------------------------------------------


class MalformedCredentials(EnrollError):
    """An Authorization header that does not parse (scheme, encoding, length)."""

    reason = "unauthorized"


class CredentialsRequired(EnrollError):
    reason = "credentials_required"


class BadCredentials(EnrollError):
    """A provisioning key that is not one of the tenant's."""

    reason = "bad_credentials"


class CertificateRequired(EnrollError):
    """Re-enrollment without the current certificate (TLS client auth)."""

    reason = "certificate_required"


class RateLimited(EnrollError):
    """Too many failed attempts from this source; ``retry_after`` says for how many seconds."""

    reason = "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class KeySuspended(EnrollError):
    reason = "key_suspended"


class KeyRevoked(EnrollError):
    reason = "key_revoked"


class CertificateUntrusted(EnrollError):
    """The client certificate is not from the tenant's provisioning issuers (or does not parse)."""

    reason = "certificate_untrusted"


class CertificateExpired(EnrollError):
    """The certificate that authenticates the request is not valid now."""

    reason = "certificate_expired"


class CertificateUnknown(EnrollError):
    """Switch has no record of the client certificate."""

    reason = "certificate_unknown"


class CertificateRevoked(EnrollError):
    reason = "certificate_revoked"


class RequestRejected(EnrollError):
    """A security admin rejected the request waiting for approval."""

    reason = "request_rejected"


# --- an enrollment request: what it asks for ----------------------------------------------------


class BadCsr(EnrollError):
    reason = "bad_csr"


class BadCsrSignature(EnrollError):
    """The CSR's signature does not verify: no proof of possession of the private key."""

    reason = "bad_csr_signature"


class KeyTypeNotAllowed(EnrollError):
    reason = "key_type_not_allowed"


class SubjectNotAllowed(EnrollError):
    """The CN does not fit the profile, or a renewal asks for another CN than its certificate's."""

    reason = "subject_not_allowed"


class SubjectTaken(EnrollError):
    """The profile asks for unique subjects and a live certificate of another provisioning key
    holds the CN (valid, unexpired, its key not revoked)."""

    reason = "subject_taken"


class EmptyPassword(EnrollError):
    """An empty PKCS#12 password: an unencrypted private key never leaves the server."""

    reason = "empty_password"


class BadPassword(EnrollError):
    """A PKCS#12 password over the limit."""

    reason = "bad_password"


# --- operators -------------------------------------------------------------------------------


class UnknownOperator(EnrollError):
    reason = "unknown_operator"


class InvalidOperator(EnrollError):
    """An operator's name, role or tenant list breaks a rule (``enroll.operators``)."""

    reason = "invalid_operator"


class OperatorNameTaken(EnrollError):
    reason = "operator_name_taken"
