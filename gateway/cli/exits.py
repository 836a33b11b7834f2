"""The command line's exit codes: one table from reason code to exit status, for the reasons of
``enroll.errors``, of the admin API (``gateway.api.errors``, met with ``--server``) and the
command line's own (``CliExit``); the codes are listed in the package's docstring and in
docs/operations.md.

Every reason code of ``enroll.errors`` is in the table (a unit test checks it). A code missing
from it exits ``EXIT_REFUSED`` (1).
"""

from __future__ import annotations

from collections.abc import Mapping

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_STORE = 4
EXIT_CONFIG = 5

EXIT_CODES: Mapping[str, int] = {
    # The command line's own.
    "usage": EXIT_USAGE,
    "config_invalid": EXIT_CONFIG,
    "config_missing": EXIT_CONFIG,
    "reload_refused": EXIT_CONFIG,
    "deployment_exists": EXIT_REFUSED,
    "not_running": EXIT_REFUSED,
    "listen_failed": EXIT_REFUSED,
    "reload_unconfirmed": EXIT_REFUSED,
    "audit_tampered": EXIT_REFUSED,
    "agent_failed": EXIT_REFUSED,
    "loadtest_stalled": EXIT_REFUSED,
    "already_running": EXIT_REFUSED,
    "unsupported_store": EXIT_REFUSED,
    # The admin API's own refusals (gateway.api.errors), met through --server.
    "server_unreachable": EXIT_STORE,
    "role_forbidden": EXIT_REFUSED,
    "csrf_failed": EXIT_REFUSED,
    "session_expired": EXIT_REFUSED,
    "acknowledgement_required": EXIT_REFUSED,
    "invalid_request": EXIT_REFUSED,
    "malformed_json": EXIT_REFUSED,
    "request_timeout": EXIT_REFUSED,
    # enroll: what does not exist.
    "unknown_tenant": EXIT_NOT_FOUND,
    "unknown_key": EXIT_NOT_FOUND,
    "unknown_certificate": EXIT_NOT_FOUND,
    "unknown_profile": EXIT_NOT_FOUND,
    "unknown_request": EXIT_NOT_FOUND,
    "unknown_operator": EXIT_NOT_FOUND,
    # enroll: the store.
    "store_error": EXIT_STORE,
    "store_unavailable": EXIT_STORE,
    "store_missing": EXIT_STORE,
    "store_exists": EXIT_REFUSED,
    "backup_invalid": EXIT_REFUSED,
    "wrong_passphrase": EXIT_STORE,
    # enroll: the authority's rules.
    "invalid_key_name": EXIT_REFUSED,
    "key_name_taken": EXIT_REFUSED,
    "invalid_operator": EXIT_REFUSED,
    "operator_name_taken": EXIT_REFUSED,
    "key_limit_reached": EXIT_REFUSED,
    "wrong_key_state": EXIT_REFUSED,
    "reason_required": EXIT_REFUSED,
    "confirmation_mismatch": EXIT_REFUSED,
    "service_disabled": EXIT_REFUSED,
    "no_issuer": EXIT_REFUSED,
    "issuer_expired": EXIT_REFUSED,
    "internal_error": EXIT_REFUSED,
    # enroll: refusals of an enrollment request (the EST service's; no command raises them
    # today, they are here so that any one that does exits as refused).
    "not_found": EXIT_REFUSED,
    "method_not_allowed": EXIT_REFUSED,
    "unsupported_media_type": EXIT_REFUSED,
    "body_too_large": EXIT_REFUSED,
    "bad_base64": EXIT_REFUSED,
    "tenant_mismatch": EXIT_REFUSED,
    "unauthorized": EXIT_REFUSED,
    "credentials_required": EXIT_REFUSED,
    "bad_credentials": EXIT_REFUSED,
    "certificate_required": EXIT_REFUSED,
    "rate_limited": EXIT_REFUSED,
    "key_suspended": EXIT_REFUSED,
    "key_revoked": EXIT_REFUSED,
    "certificate_untrusted": EXIT_REFUSED,
    "certificate_expired": EXIT_REFUSED,
    "certificate_unknown": EXIT_REFUSED,
    "certificate_revoked": EXIT_REFUSED,
    "request_rejected": EXIT_REFUSED,
    "bad_csr": EXIT_REFUSED,
    "bad_csr_signature": EXIT_REFUSED,
    "key_type_not_allowed": EXIT_REFUSED,
    "subject_not_allowed": EXIT_REFUSED,
    "subject_taken": EXIT_REFUSED,
    "empty_password": EXIT_REFUSED,
    "bad_password": EXIT_REFUSED,
}


def exit_code(reason: str) -> int:
    """The exit status of a command refused with ``reason``."""
    return EXIT_CODES.get(reason, EXIT_REFUSED)


class CliExit(Exception):
    """Stop the command: ``switch: REASON: DETAIL`` on stderr, exit with the reason's code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    @property
    def message(self) -> str:
        return f"{self.reason}: {self.detail}"
