"""A small HTTP/1.1 server loop over any Trio stream, with h11.

Theory of operation: ``serve_http`` owns one connection. It waits for the first bytes of a request
under ``idle_timeout_s`` (expiry closes the connection silently: an idle keep-alive connection is
not an error), then reads the rest of the request head and body under ``request_timeout_s``
(expiry answers ``408`` and closes: a slow or stalled client). Bodies are bounded by
``max_body_bytes`` (``413``, close) and heads by ``max_head_bytes`` (h11 raises; ``431``/``400``).
The whole request is buffered before the handler runs, so handlers are plain
``async (Request) -> Response`` functions that never see the socket. Malformed HTTP gets ``400``
with a reason; a handler that raises gets ``500`` and the exception is re-raised to the caller's
nursery after the reply, never sent to the peer. Every error reply's body is ``STATUS reason``
(``413 body_too_large``), as the EST service's own refusals.

After an error reply the connection ends with a lingering close (``gateway.listening.linger``):
the peer may still be sending the request it was refused for (the rest of an oversized head or
body), and closing over unread bytes resets the connection, which can destroy the reply before
the peer reads it: half-close, drain briefly (bounded in time and bytes), then return.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence

import attrs
import h11
import trio

from gateway.listening import linger

#: Enough for an EST request's headers (Authorization with a provisioning key, content type).
DEFAULT_MAX_HEAD_BYTES = 16 * 1024
READ_CHUNK = 16 * 1024


@attrs.frozen
class Request:
    method: str
    target: str
    headers: tuple[tuple[str, bytes], ...]  # names lower-cased
    body: bytes
    http_version: str

    def header(self, name: str) -> bytes | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        for key, value in self.headers:
            if key == wanted:
                return value
        return None

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


@attrs.frozen
class Response:
    status: int
    body: bytes = b""
    headers: Sequence[tuple[str, str]] = ()
    content_type: str | None = None
    close: bool = False

    @classmethod
    def text(cls, status: int, text: str, **kw: object) -> Response:
        return cls(status, (text + "\n").encode(), content_type="text/plain; charset=utf-8", **kw)  # type: ignore[arg-type]


Handler = Callable[[Request], Awaitable[Response]]


class _Timeout(Exception):
    pass


class _TooLarge(Exception):
    pass


def _response_event(response: Response, *, must_close: bool) -> h11.Response:
    headers: list[tuple[str, str]] = list(response.headers)
    if response.content_type:
        headers.append(("Content-Type", response.content_type))
    headers.append(("Content-Length", str(len(response.body))))
    if response.close or must_close:
        headers.append(("Connection", "close"))
    return h11.Response(status_code=response.status, headers=headers)


async def _send(stream: trio.abc.Stream, conn: h11.Connection, response: Response, *, must_close: bool = False) -> None:
    data = conn.send(_response_event(response, must_close=must_close)) or b""
    data += conn.send(h11.Data(data=response.body)) if response.body else b""
    data += conn.send(h11.EndOfMessage()) or b""
    await stream.send_all(data)


async def _next_event(stream: trio.abc.Stream, conn: h11.Connection) -> h11.Event | type[h11.PAUSED] | type[h11.NEED_DATA]:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        data = await stream.receive_some(READ_CHUNK)
        conn.receive_data(bytes(data))


async def _read_request(
    stream: trio.abc.Stream, conn: h11.Connection, first: h11.Request, max_body_bytes: int
) -> Request:
    length = dict(first.headers).get(b"content-length")
    if length is not None and (not length.isdigit() or int(length) > max_body_bytes):
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        event = await _next_event(stream, conn)
        if isinstance(event, h11.Data):
            size += len(event.data)
            if size > max_body_bytes:
                raise _TooLarge
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            break
        elif isinstance(event, h11.ConnectionClosed):
            raise h11.RemoteProtocolError("connection closed inside a request")
    return Request(
        method=first.method.decode("ascii", "replace"),
        target=first.target.decode("ascii", "replace"),
        headers=tuple((k.decode("latin-1").lower(), bytes(v)) for k, v in first.headers),
        body=b"".join(chunks),
        http_version=first.http_version.decode("ascii", "replace"),
    )


async def serve_http(
    stream: trio.abc.Stream,
    handler: Handler,
    *,
    idle_timeout_s: float,
    request_timeout_s: float,
    max_body_bytes: int,
    max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
    max_requests: int = 10_000,
    on_refusal: Callable[[int, str], None] | None = None,
) -> None:
    """Serve HTTP/1.1 requests on ``stream`` until the peer closes, a deadline passes, an error
    forces a close, or ``max_requests`` were answered. Does not close ``stream``."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head_bytes)

    async def refuse(status: int, reason: str) -> None:
        if on_refusal is not None:
            on_refusal(status, reason)
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            with trio.move_on_after(request_timeout_s):
                with contextlib.suppress(
                    trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError
                ):
                    await _send(stream, conn, Response.text(status, f"{status} {reason}"),
                                must_close=True)
        await linger(stream)

    for _ in range(max_requests):
        if not conn.trailing_data[0]:
            # Wait for the start of the next request: expiry is an idle close, not an error.
            with trio.move_on_after(idle_timeout_s) as idle:
                try:
                    first = await stream.receive_some(READ_CHUNK)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
            if idle.cancelled_caught:
                return
            conn.receive_data(bytes(first))
        try:
            with trio.fail_after(request_timeout_s):
                event = await _next_event(stream, conn)
                if isinstance(event, h11.ConnectionClosed):
                    return
                if not isinstance(event, h11.Request):
                    raise h11.RemoteProtocolError("expected a request")
                request = await _read_request(stream, conn, event, max_body_bytes)
        except trio.TooSlowError:
            await refuse(408, "request_timeout")
            return
        except _TooLarge:
            await refuse(413, "body_too_large")
            return
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            await refuse(status, "request_header_too_large" if status == 431 else "bad_request")
            return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

        try:
            response = await handler(request)
        except Exception:
            await refuse(500, "internal_error")
            raise
        try:
            with trio.fail_after(request_timeout_s):
                await _send(stream, conn, response, must_close=response.close)
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            return
        try:
            conn.start_next_cycle()
        except h11.LocalProtocolError:
            return
