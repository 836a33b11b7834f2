"""The admin listener: ``/healthz``, ``/readyz`` and ``/metrics`` (every worker's, see
``gateway.metrics``) over plain HTTP on loopback."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Sequence

import structlog
import trio
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.http11 import Request, Response, serve_http
from gateway.listening import serve_tcp
from gateway.metrics import Metrics

log = structlog.get_logger("switch.admin")


class AdminListener:
    def __init__(self, metrics: Metrics, ready: Callable[[], Awaitable[tuple[bool, str]]]) -> None:
        self.metrics = metrics
        self.ready = ready

    async def serve(self, host: str, port: int, *, handler_nursery: trio.Nursery | None = None,
                    sockets: Sequence[socket.socket] | None = None,
                    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
                    ) -> None:
        await serve_tcp("admin", self.handle_connection, host, port,
                        handler_nursery=handler_nursery, sockets=sockets, task_status=task_status)

    async def handle_connection(self, stream: trio.abc.Stream) -> None:
        try:
            await serve_http(stream, self.handle, idle_timeout_s=10, request_timeout_s=5,
                             max_body_bytes=0, max_requests=100)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:  # noqa: BLE001 - an admin request's failure must not end the server
            log.exception("admin_request_failed")
        finally:
            await trio.aclose_forcefully(stream)

    async def handle(self, request: Request) -> Response:
        if request.method != "GET":
            return Response.text(405, "method_not_allowed")
        if request.path == "/healthz":
            return Response.text(200, "ok")
        if request.path == "/readyz":
            ok, detail = await self.ready()
            return Response.text(200 if ok else 503, detail)
        if request.path == "/metrics":
            return Response(200, self.metrics.exposition(),
                            content_type=CONTENT_TYPE_LATEST)
        return Response.text(404, "not_found")
