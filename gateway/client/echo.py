"""A WebSocket echo upstream, for trying Switch out, load tests and benchmarks.

Every message an agent sends through the gateway comes back unchanged; the upgrade's identity
headers are counted, not stored. ``switch echo`` runs it (the dev config's tenant points at
``ws://127.0.0.1:8080/``); ``switch loadtest --echo`` starts one beside the load generator.
Not a product feature: it has no TLS and trusts whatever connects, so bind it to loopback.
"""

from __future__ import annotations

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


async def serve_echo(host: str, port: int, *, stats: EchoStats | None = None,
                     task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until cancelled; ``task_status.started`` receives the bound port (``port`` may be 0)."""
    stats = stats if stats is not None else EchoStats()

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        await _handler(stats, request)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            lambda task_status: trio_websocket.serve_websocket(
                handler, host, port, None, message_queue_size=16, max_message_size=MAX_MESSAGE,
                connect_timeout=10, disconnect_timeout=5, task_status=task_status))
        task_status.started(server.port)
