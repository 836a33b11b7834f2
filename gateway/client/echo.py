"""A WebSocket echo upstream, for trying Switch out, load tests and benchmarks.

Every message an agent sends through the gateway comes back unchanged; the upgrade's identity
headers are counted, not stored. ``switch echo`` runs it (the dev config's tenant points at
``ws://127.0.0.1:8080/``); ``switch loadtest --echo`` starts one beside the load generator.
Not a product feature: it has no TLS and trusts whatever connects, so bind it to loopback.

One process holds as many sessions as its open-file limit allows (one descriptor each) and
uses one core. For a fleet (``scripts/bench`` section f: 50,000 sessions), several processes
serve one port with ``reuse_port`` (``SO_REUSEPORT``: the kernel spreads new connections over
every socket bound to the port with it, each process accepting on its own).
"""

from __future__ import annotations

import socket

import attrs
import trio
import trio_websocket

MAX_MESSAGE = 16 * 1024 * 1024


@attrs.define
class EchoStats:
    sessions: int = 0
    messages: int = 0
    bytes: int = 0


async def _handler(stats: EchoStats, request: trio_websocket.WebSocketRequest) -> None:
    ws = await request.accept()
    stats.sessions += 1
    try:
        while True:
            message = await ws.get_message()
            stats.messages += 1
            stats.bytes += len(message)
            await ws.send_message(message)
    except trio_websocket.ConnectionClosed:
        pass


def reuse_port_listener(host: str, port: int, backlog: int = 4096) -> trio.SocketListener:
    """A listener on ``host:port`` with ``SO_REUSEPORT`` set, so that other processes (each
    with such a listener) serve the same port. ``port`` 0 picks one; the others then bind the
    port this one got."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


async def serve_echo(host: str, port: int, *, stats: EchoStats | None = None,
                     reuse_port: bool = False,
                     task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until cancelled; ``task_status.started`` receives the bound port (``port`` may be 0).
    ``reuse_port``: share the port with other processes doing the same (``SO_REUSEPORT``)."""
    stats = stats if stats is not None else EchoStats()

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        await _handler(stats, request)

    async with trio.open_nursery() as nursery:
        if reuse_port:
            server = trio_websocket.WebSocketServer(
                handler, [reuse_port_listener(host, port)], message_queue_size=16,
                max_message_size=MAX_MESSAGE, connect_timeout=10, disconnect_timeout=5)
            await nursery.start(server.run)
        else:
            server = await nursery.start(
                lambda task_status: trio_websocket.serve_websocket(
                    handler, host, port, None, message_queue_size=16,
                    max_message_size=MAX_MESSAGE, connect_timeout=10, disconnect_timeout=5,
                    task_status=task_status))
        task_status.started(server.port)
