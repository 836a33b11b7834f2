"""Webhook events as bytes on the wire: the JSON body, its headers and its signature. Pure:
the time and the id are passed in (``WebhookEvent.new`` draws them).

The body is ``{"id", "type", "created_at", "tenant", "actor", "data"}`` (compact JSON, keys
sorted). ``Switch-Signature: sha256=<hex>`` is HMAC-SHA256 of the exact body bytes under the
webhook's secret. The id and the time are inside the signed body (and repeated in the
``Switch-Event-Id`` and ``Switch-Timestamp`` headers for routing): a receiver that checks the
signature, refuses an event older than its tolerance and remembers the ids it saw within that
tolerance cannot be fed a replay. Retries send the same body (the same id): a receiver may see
an event more than once, never a changed one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from typing import Any

import attrs

SIGNATURE_HEADER = "Switch-Signature"
EVENT_HEADER = "Switch-Event"
ID_HEADER = "Switch-Event-Id"
TIMESTAMP_HEADER = "Switch-Timestamp"
ATTEMPT_HEADER = "Switch-Delivery-Attempt"


@attrs.frozen
class WebhookEvent:
    id: str
    type: str
    created_at: int
    tenant: str | None
    actor: str
    data: Mapping[str, Any]

    @classmethod
    def new(cls, type_: str, *, tenant: str | None, actor: str, data: Mapping[str, Any]
            ) -> WebhookEvent:
        return cls("evt_" + secrets.token_hex(12), type_, int(time.time()), tenant, actor,
                   dict(data))

    def body(self) -> bytes:
        return json.dumps({"id": self.id, "type": self.type, "created_at": self.created_at,
                           "tenant": self.tenant, "actor": self.actor, "data": self.data},
                          sort_keys=True, separators=(",", ":")).encode()


def signature(secret: bytes, body: bytes) -> str:
    """The ``Switch-Signature`` value of ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def signature_matches(secret: bytes, body: bytes, header: str) -> bool:
    """What a receiver checks (constant-time)."""
    return hmac.compare_digest(signature(secret, body), header)


def headers(event: WebhookEvent, body: bytes, secret: bytes, attempt: int) -> dict[str, str]:
    return {"Content-Type": "application/json", EVENT_HEADER: event.type, ID_HEADER: event.id,
            TIMESTAMP_HEADER: str(event.created_at), SIGNATURE_HEADER: signature(secret, body),
            ATTEMPT_HEADER: str(attempt)}
