"""What every listener shares: opening the sockets, the accept loop, the peer's address, and the
lingering close after a refusal."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
import trio

log = structlog.get_logger("switch")


def format_address(sockname: tuple[Any, ...]) -> str:
    """``host:port`` (``[host]:port`` for IPv6), as config writes a listen address: one bare
    logfmt value."""
    host, port = sockname[0], sockname[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


#: After a refusal (a TLS alert, an HTTP error reply): how long, and how many bytes, the peer's
#: unread data is drained before the connection closes. Closing a socket with unread data in its
#: receive buffer makes the kernel answer with a reset, and a reset makes the peer's kernel drop
#: what it had not yet handed to the peer, the refusal included: the peer sees "connection
#: reset" where it should have read why (RFC 9112 9.6 calls the cure a lingering close, as
#: nginx's ``lingering_close`` does). Bounded, so a peer that keeps sending cannot hold a socket.
LINGER_S = 1.0
LINGER_MAX_BYTES = 256 * 1024
_DRAIN_CHUNK = 16 * 1024


async def linger(stream: trio.abc.Stream, *, timeout_s: float = LINGER_S,
                 max_bytes: int = LINGER_MAX_BYTES) -> None:
    """After the last reply: half-close ``stream`` (``send_eof``, when it can: the peer reads
    everything sent, then the end) and read and discard what the peer still sends, until it
    closes, ``timeout_s`` passes or ``max_bytes`` arrived. Does not close ``stream``; never
    raises for a broken or closed stream."""
    with trio.move_on_after(timeout_s):
        try:
            if isinstance(stream, trio.abc.HalfCloseableStream):
                await stream.send_eof()
            drained = 0
            while drained < max_bytes:
                data = await stream.receive_some(_DRAIN_CHUNK)
                if not data:
                    return
                drained += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError,
                OSError):
            return


async def close_lingering(stream: trio.abc.Stream, *, timeout_s: float = LINGER_S,
                          max_bytes: int = LINGER_MAX_BYTES) -> None:
    """``linger``, then close ``stream`` at once."""
    try:
        await linger(stream, timeout_s=timeout_s, max_bytes=max_bytes)
    finally:
        await trio.aclose_forcefully(stream)


def peer_address(stream: trio.abc.Stream) -> str:
    """The remote IP of a socket stream, or ``unknown``."""
    sock = getattr(stream, "socket", None)
    try:
        return str(sock.getpeername()[0]) if sock is not None else "unknown"
    except OSError:
        return "unknown"


async def serve_tcp(
    name: str, handler: Callable[[trio.SocketStream], Awaitable[None]], host: str, port: int, *,
    handler_nursery: trio.Nursery | None = None, backlog: int | None = None,
    sockets: Sequence[socket.socket] | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port`` and accept until cancelled. Connections run in ``handler_nursery``
    (so that cancelling the accept loop stops accepting without touching live connections); each
    in its own task, never in the accept loop. Trio's accept loop backs off when file
    descriptors run out instead of failing. ``sockets``: already listening sockets to accept on
    instead (several worker processes share them).

    ``open_listening_sockets`` below is the blocking counterpart for the supervisor."""
    if sockets:  # opened by the supervisor and shared by its workers
        listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(sock)) for sock in sockets]
        await trio.lowlevel.checkpoint()
    else:
        listeners = await trio.open_tcp_listeners(port, host=host, backlog=backlog)
    for listener in listeners:
        log.info("listening", listener=name, address=format_address(listener.socket.getsockname()))
    task_status.started(listeners)
    await trio.serve_listeners(handler, listeners, handler_nursery=handler_nursery)


def open_listening_sockets(host: str, port: int, backlog: int = 4096) -> list[socket.socket]:
    """Listening sockets for ``host:port`` (every address it resolves to), inheritable so that
    worker processes can accept on them. Port 0 is resolved once, here, for all workers."""
    out: list[socket.socket] = []
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    seen: set[tuple[int, object]] = set()
    for family, kind, proto, _, address in infos:
        if (family, address) in seen:
            continue
        seen.add((family, address))
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address if port or not out else (address[0], out[0].getsockname()[1], *address[2:]))
        sock.listen(backlog)
        sock.set_inheritable(True)
        out.append(sock)
    return out
