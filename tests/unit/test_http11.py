"""The HTTP/1.1 server loop over memory streams, with the autojump clock for every deadline."""

from __future__ import annotations

import trio
import trio.testing

from gateway.http11 import Handler, Request, Response, serve_http


async def echo_handler(request: Request) -> Response:
    return Response(200, request.method.encode() + b" " + request.target.encode() + b" " + request.body)


async def _read_all(stream: trio.abc.Stream) -> bytes:
    chunks = []
    while chunk := await stream.receive_some(65536):
        chunks.append(chunk)
    return b"".join(chunks)


async def _run(client_bytes: bytes, *, close_after: bool = True, max_body_bytes: int = 1024,
               handler: Handler = echo_handler) -> bytes:
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:

        async def serve() -> None:
            await serve_http(server, handler, idle_timeout_s=30, request_timeout_s=5,
                             max_body_bytes=max_body_bytes)
            await server.aclose()

        nursery.start_soon(serve)
        await client.send_all(client_bytes)
        if close_after:
            await client.send_eof()
        with trio.fail_after(60):
            reply = await _read_all(client)
        await client.aclose()  # ends the server's lingering close at once
        return reply


async def test_keep_alive_serves_two_requests_on_one_connection(autojump_clock: trio.abc.Clock) -> None:
    raw = (b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
           b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
    reply = await _run(raw)
    assert reply.count(b"HTTP/1.1 200") == 2
    assert b"GET /a " in reply and b"POST /b abc" in reply


async def test_body_over_the_limit_gets_413_and_close(autojump_clock: trio.abc.Clock) -> None:
    raw = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + b"a" * 5000
    reply = await _run(raw)
    assert reply.startswith(b"HTTP/1.1 413")
    assert reply.endswith(b"\r\n\r\n413 body_too_large\n")
    assert b"connection: close" in reply.lower()


async def test_chunked_body_over_the_limit_gets_413(autojump_clock: trio.abc.Clock) -> None:
    raw = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    raw += b"800\r\n" + b"a" * 2048 + b"\r\n0\r\n\r\n"
    reply = await _run(raw)
    assert reply.startswith(b"HTTP/1.1 413")


async def test_stalled_request_gets_408_at_the_deadline(autojump_clock: trio.abc.Clock) -> None:
    raw = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc"  # 7 bytes never come
    start = trio.current_time()
    reply = await _run(raw, close_after=False)
    assert reply.startswith(b"HTTP/1.1 408")
    assert 5 <= trio.current_time() - start < 6


async def test_idle_connection_is_closed_silently(autojump_clock: trio.abc.Clock) -> None:
    reply = await _run(b"", close_after=False)
    assert reply == b""


async def test_malformed_request_gets_400(autojump_clock: trio.abc.Clock) -> None:
    reply = await _run(b"NOT HTTP AT ALL\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400")


async def test_oversized_head_is_refused(autojump_clock: trio.abc.Clock) -> None:
    raw = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n"
    reply = await _run(raw)
    assert reply.startswith(b"HTTP/1.1 431")
    assert reply.endswith(b"\r\n\r\n431 request_header_too_large\n")


async def test_every_error_body_is_status_and_reason(autojump_clock: trio.abc.Clock) -> None:
    for raw, close_after, body in [
        (b"NOT HTTP AT ALL\r\n\r\n", True, b"400 bad_request\n"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc", False,
         b"408 request_timeout\n"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n", True,
         b"413 body_too_large\n"),
    ]:
        reply = await _run(raw, close_after=close_after)
        assert reply.split(b"\r\n\r\n", 1)[1] == body


async def test_after_an_error_reply_the_server_half_closes_and_reads_what_the_client_still_sends(
        autojump_clock: trio.abc.Clock) -> None:
    """A lingering close: the reply, then the end, while the rest of the refused request is
    still read (a close over unread bytes would reset the connection and could destroy the
    reply before the client read it)."""
    client, server = trio.testing.memory_stream_pair()
    rest = b"a" * 100_000
    async with trio.open_nursery() as nursery:

        async def serve() -> None:
            await serve_http(server, echo_handler, idle_timeout_s=30, request_timeout_s=5,
                             max_body_bytes=1024)
            await server.aclose()

        nursery.start_soon(serve)
        await client.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n")
        reply = await _read_all(client)  # ends with the server's end of file: a half-close
        assert reply.startswith(b"HTTP/1.1 413")
        await client.send_all(rest)  # still read: no reset
        await client.aclose()


async def test_handler_error_answers_500_without_exception_text(autojump_clock: trio.abc.Clock) -> None:
    async def broken(request: Request) -> Response:
        raise RuntimeError("secret internal detail")

    client, server = trio.testing.memory_stream_pair()
    caught: list[BaseException] = []

    async def serve() -> None:
        try:
            await serve_http(server, broken, idle_timeout_s=30, request_timeout_s=5,
                             max_body_bytes=10)
        except RuntimeError as exc:
            caught.append(exc)
        await server.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = await _read_all(client)
    assert reply.startswith(b"HTTP/1.1 500")
    assert b"secret" not in reply
    assert caught
