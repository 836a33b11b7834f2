"""What the enroll listener hands the EST service and what it answers (``EstRequest``,
``EstReply``), and the reply refusing a request (``refusal``)."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from enroll.errors import EnrollError, RateLimited, StoreError
from enroll.est_status import http_status

#: ``Retry-After`` on a 503 for a store that could not be read or written.
STORE_RETRY_AFTER_S = 5


@attrs.frozen
class EstRequest:
    method: str
    path: str
    headers: Mapping[str, bytes]  # lower-case names
    body: bytes
    server_name: str | None
    #: DER of the client's TLS certificate (unparsed, unverified), or None.
    client_cert_der: bytes | None
    source: str


@attrs.frozen
class EstReply:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    #: For logs and metrics: "ok", "pending", or the refusal's reason code.
    result: str = "ok"
    tenant: str | None = None
    key_id: str | None = None
    serial: str | None = None
    #: The issued certificate's subject, for the request's log line.
    subject: str | None = None
    #: A request held for approval: its id, and whether this reply's request filed it (what
    #: notifies ``request.pending``: once, not on every repeat).
    request_id: str | None = None
    filed: bool = False


def refusal(exc: EnrollError, tenant: str | None = None) -> EstReply:
    """The reply refusing a request: the status from ``est_status``'s table and a body naming
    only the reason code (the message stays in local logs)."""
    status = http_status(exc)
    headers: list[tuple[str, str]] = []
    if isinstance(exc, RateLimited):
        headers.append(("Retry-After", str(exc.retry_after)))
    elif isinstance(exc, StoreError):  # the store is down or busy: come back shortly
        headers.append(("Retry-After", str(STORE_RETRY_AFTER_S)))
    if status == 401:
        headers.append(("WWW-Authenticate", 'Basic realm="switch-est"'))
    return EstReply(status, f"{status} {exc.reason}\n".encode(),
                    "text/plain; charset=utf-8", tuple(headers), exc.reason, tenant)
