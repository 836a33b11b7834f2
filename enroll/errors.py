"""The authority's error hierarchy.

Every refusal carries a stable ``reason`` code (used in logs, metrics, CLI output and, later, EST
replies) and a process ``exit_code`` for the CLI. The message is for the local operator; a remote
peer only ever sees the reason code.
"""

from __future__ import annotations

from typing import ClassVar


class AuthorityError(Exception):
    """Base class: a request to the authority was refused. Nothing was changed."""

    reason: ClassVar[str] = "refused"
    #: CLI exit code: 1 = refused by a rule, 3 = not found, 4 = store failure.
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnknownTenant(AuthorityError):
    reason = "unknown_tenant"
    exit_code = 3


class UnknownKey(AuthorityError):
    reason = "unknown_key"
    exit_code = 3


class UnknownCertificate(AuthorityError):
    reason = "unknown_certificate"
    exit_code = 3


class UnknownProfile(AuthorityError):
    """A per-key profile override names no profile in the configuration."""

    reason = "unknown_profile"
    exit_code = 3


class InvalidKeyName(AuthorityError):
    reason = "invalid_key_name"


class KeyNameTaken(AuthorityError):
    reason = "key_name_taken"


class KeyLimitReached(AuthorityError):
    reason = "key_limit_reached"


class WrongKeyState(AuthorityError):
    reason = "wrong_key_state"


class ReasonRequired(AuthorityError):
    reason = "reason_required"


class ConfirmationMismatch(AuthorityError):
    reason = "confirmation_mismatch"


class ServiceDisabled(AuthorityError):
    reason = "service_disabled"


class NoIssuer(AuthorityError):
    reason = "no_issuer"


class StoreError(AuthorityError):
    """The store could not be opened, migrated or written."""

    reason = "store_error"
    exit_code = 4


class StoreUnavailable(StoreError):
    """The store cannot be reached now (the database is down, its connection was lost, no pooled
    connection came within the timeout). Nothing was changed; the caller may try again later."""

    reason = "store_unavailable"


class UnknownOperator(AuthorityError):
    reason = "unknown_operator"
    exit_code = 3


class InvalidOperator(AuthorityError):
    """An operator's name, role or tenant list breaks a rule (``enroll.operators``)."""

    reason = "invalid_operator"


class OperatorNameTaken(AuthorityError):
    reason = "operator_name_taken"


class UnknownRequest(AuthorityError):
    reason = "unknown_request"
    exit_code = 3
