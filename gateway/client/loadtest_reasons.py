"""Why a simulated agent's enrollment, session or message failed, as the load test's report
counts it: one short, stable reason per failure (``classify``)."""

from __future__ import annotations

import errno
import ssl

import trio
import trio_websocket

from gateway.client.agent_settings import ServerNotTrusted
from gateway.client.est_client import EstClientError


def classify(exc: BaseException) -> str:
    """A short, stable reason for a failure, for the report's "failures by reason"."""
    if isinstance(exc, EstClientError):
        return f"{exc.status} {exc.reason}" if exc.status else exc.reason
    if isinstance(exc, trio.TooSlowError):
        return "timeout"
    if isinstance(exc, trio_websocket.ConnectionRejected):
        return f"http_{exc.status_code}"
    if isinstance(exc, trio_websocket.ConnectionClosed):
        code = exc.reason.code if exc.reason else None
        return f"closed_{code}"
    if isinstance(exc, ssl.SSLError):
        return f"tls:{(getattr(exc, 'reason', None) or type(exc).__name__).lower()}"
    if isinstance(exc, trio.BrokenResourceError):
        cause = exc.__cause__
        if isinstance(cause, ssl.SSLError):
            return classify(cause)
        if isinstance(cause, OSError) and cause.errno:  # e.g. ECONNRESET: a server going away
            return classify(cause)
        return "refused"
    if isinstance(exc, ServerNotTrusted):
        return "server_pin_mismatch"
    if isinstance(exc, OSError):
        if not exc.errno and isinstance(exc.__cause__, ExceptionGroup):
            # trio.open_tcp_stream: "all attempts to connect failed", the reasons in a group.
            return classify(exc.__cause__.exceptions[0])
        return errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    return type(exc).__name__
