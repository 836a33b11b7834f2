"""What every listener shares: opening the sockets, the accept loop, the peer's address."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
import trio

log = structlog.get_logger("switch")


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
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port`` and accept until cancelled. Connections run in ``handler_nursery``
    (so that cancelling the accept loop stops accepting without touching live connections); each
    in its own task, never in the accept loop. Trio's accept loop backs off when file
    descriptors run out instead of failing."""
    listeners = await trio.open_tcp_listeners(port, host=host, backlog=backlog)
    for listener in listeners:
        log.info("listening", listener=name, address=listener.socket.getsockname()[:2])
    task_status.started(listeners)
    await trio.serve_listeners(handler, listeners, handler_nursery=handler_nursery)
