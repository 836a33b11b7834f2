"""What the console says in words: each reason code of a refusal as a sentence for a person and
the form field it is about (so the page shows it next to what caused it), the notices after a
change, and the audit log's actions as labels. Pure data; the page's script receives the reason
table as JSON (``script_table``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs


@attrs.frozen
class Said:
    #: None: the server's own message is the better one (it names the rule that was broken).
    text: str | None
    #: The form field it is about (the ``name`` of the input); None: the form as a whole.
    field: str | None = None


_SESSION_ENDED = Said("Your session has ended. Sign in again to go on.")
_CHANGED = Said("This is no longer possible: it changed meanwhile (perhaps another operator "
                "acted). Reload the page to see it as it is now.")
_FAILED = Said("Switch could not do this now, and nothing was changed. Try again; if it keeps "
               "failing, the server's log says why.")

REASONS: Mapping[str, Said] = {
    # The request's form.
    "invalid_key_name": Said(None, "name"),
    "key_name_taken": Said("Another key of this tenant already has this name (names are unique "
                           "whatever their case, revoked keys included).", "name"),
    "unknown_profile": Said("There is no such certificate profile in the configuration.",
                            "profile"),
    "reason_required": Said("Give a reason: the audit log records it with your name.",
                            "reason"),
    "confirmation_mismatch": Said("Type the key's name exactly as shown, with the same capital "
                                  "and small letters.", "confirm_name"),
    "acknowledgement_required": Said("Tick \u201cI understand the impact of this action and "
                                     "want to proceed\u201d to go on.", "acknowledge"),
    "invalid_request": Said(None),
    "malformed_json": _FAILED,
    "body_too_large": Said("What you typed is too long."),
    "unsupported_media_type": _FAILED,
    "request_timeout": Said("The request took too long to arrive; nothing was changed. Try "
                            "again."),
    # Who is asking.
    "role_forbidden": Said("Your role (security-read) can see everything but change nothing. "
                           "Ask a security admin."),
    "csrf_failed": Said("This page is out of date, or the request did not come from it. Reload "
                        "the page and try again."),
    "credentials_required": _SESSION_ENDED,
    "bad_credentials": _SESSION_ENDED,
    "unauthorized": _SESSION_ENDED,
    "session_expired": _SESSION_ENDED,
    "rate_limited": Said("Too many failed attempts came from your address. Wait a minute, then "
                         "try again."),
    # What does not exist.
    "unknown_tenant": Said("There is no such tenant, or it is not one of yours."),
    "unknown_key": Said("This tenant has no such provisioning key.", "key"),
    "unknown_certificate": Said("This tenant has no certificate with that serial.", "serial"),
    "unknown_request": Said("This tenant has no such request."),
    "not_found": Said("There is no such page."),
    # The state does not allow it now.
    "key_limit_reached": Said("This tenant already has three active or suspended keys. Revoke "
                              "one before you generate another."),
    "wrong_key_state": _CHANGED,
    "service_disabled": Said("The provisioning service is disabled for this tenant: enable it "
                             "first."),
    "no_issuer": Said("This tenant has no provisioning issuer yet: enable the provisioning "
                      "service first, which creates it."),
    "issuer_expired": Said("The tenant's current issuer has expired: renew it on the Issuers "
                           "page."),
    # Switch's side.
    "internal_error": _FAILED,
    "store_error": _FAILED,
    "store_unavailable": Said("Switch cannot reach its store right now, and nothing was "
                              "changed. Try again in a moment."),
    "wrong_passphrase": _FAILED,
    # The browser could not reach Switch at all (the page's script says so).
    "unreachable": Said("Switch did not answer: check your connection, then try again."),
}


def said(reason: str, message: str = "") -> str:
    """The words for a refusal: the table's, or the server's message where the table defers to
    it, or the generic failure."""
    entry = REASONS.get(reason)
    if entry is not None and entry.text is not None:
        return entry.text
    return message or _FAILED.text or ""


def field_of(reason: str) -> str | None:
    entry = REASONS.get(reason)
    return entry.field if entry is not None else None


def script_table() -> dict[str, Any]:
    """The table as the page's script reads it."""
    return {"reasons": {r: {"text": s.text, "field": s.field} for r, s in REASONS.items()},
            "fallback": _FAILED.text}


#: After a change, the page reloads with ``?notice=CODE&name=NAME``: what it then says.
NOTICES: Mapping[str, str] = {
    "service-enabled": "The provisioning service is enabled.",
    "service-disabled": "The provisioning service is disabled.",
    "key-created": "Key \u201c{name}\u201d was generated.",
    "key-renamed": "The key is now named \u201c{name}\u201d.",
    "key-suspended": "Key \u201c{name}\u201d was suspended. Its state is now Suspended.",
    "key-reactivated": "Key \u201c{name}\u201d was reactivated. Its state is now Active.",
    "key-revoked": "Key \u201c{name}\u201d was revoked. Its state is now Revoked.",
    "certificate-revoked": "Certificate {name} was revoked.",
    "request-approved": "The request was approved: the agent gets its certificate when it asks "
                        "again.",
    "request-rejected": "The request was rejected.",
    "issuer-renewed": "A new provisioning issuer was created.",
    "signed-out": "You have signed out.",
}

ACTIONS: Mapping[str, str] = {
    "issuer.created": "Issuer created",
    "issuer.renewed": "Issuer renewed",
    "service.enabled": "Provisioning service enabled",
    "service.disabled": "Provisioning service disabled",
    "key.created": "Key created",
    "key.suspended": "Key suspended",
    "key.reactivated": "Key reactivated",
    "key.revoked": "Key revoked",
    "key.renamed": "Key renamed",
    "certificate.revoked": "Certificate revoked",
    "request.approved": "Request approved",
    "request.rejected": "Request rejected",
    "enrollment.refused": "Enrollment refused",
    "operator.created": "Operator added",
    "operator.role_set": "Operator's role changed",
    "operator.tenants_set": "Operator's tenants changed",
    "operator.token_replaced": "Operator's token replaced",
    "operator.password_set": "Operator's password changed",
    "operator.removed": "Operator removed",
    "operator.signed_in": "Signed in",
    "operator.signed_out": "Signed out",
    "operator.signin_failed": "Sign-in failed",
}
