"""What every listener shares: opening the sockets, the accept loop, the peer's address."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
import trio

log = structlog.get_logger("switch")


class ListenError(Exception):
    """A listener could not open its port (in use, not permitted, an address this host does not
    have): one line naming the listener and the address, for ``switch serve`` to print."""

    def __init__(self, name: str, host: str, port: int, cause: OSError) -> None:
        why = (cause.strerror or str(cause)).lower() if cause.errno else str(cause)
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        super().__init__(f"the {name} listener cannot listen on {where}: {why}")
        self.name, self.host, self.port = name, host, port


def format_address(sockname: tuple[Any, ...]) -> str:
    """``host:port`` (``[host]:port`` for IPv6), as config writes a listen address: one bare
    logfmt value."""
    host, port = sockname[0], sockname[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


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
        try:
            listeners = await trio.open_tcp_listeners(port, host=host, backlog=backlog)
        except OSError as exc:
            raise ListenError(name, host, port, exc) from exc
    for listener in listeners:
        log.info("listening", listener=name, address=format_address(listener.socket.getsockname()))
    task_status.started(listeners)
    await trio.serve_listeners(handler, listeners, handler_nursery=handler_nursery)


def open_listening_sockets(name: str, host: str, port: int, backlog: int = 4096
                           ) -> list[socket.socket]:
    """Listening sockets for ``host:port`` (every address it resolves to), inheritable so that
    worker processes can accept on them. Port 0 is resolved once, here, for all workers.
    ``ListenError`` (naming listener ``name``) when one cannot be opened."""
    out: list[socket.socket] = []
    try:
        _open_sockets(out, host, port, backlog)
    except OSError as exc:
        for sock in out:
            sock.close()
        raise ListenError(name, host, port, exc) from exc
    return out


def _open_sockets(out: list[socket.socket], host: str, port: int, backlog: int) -> None:
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    seen: set[tuple[int, object]] = set()
    for family, kind, proto, _, address in infos:
        if (family, address) in seen:
            continue
        seen.add((family, address))
        sock = socket.socket(family, kind, proto)
        out.append(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        first = out[0] if len(out) > 1 else None
        sock.bind(address if port or first is None
                  else (address[0], first.getsockname()[1], *address[2:]))
        sock.listen(backlog)
        sock.set_inheritable(True)
