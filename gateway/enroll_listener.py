"""The enroll listener: TLS + HTTP/1.1 in front of ``enroll.est_service``.

Each connection runs in its own task (never in the accept loop): the TLS handshake under
``request_timeout_s``; then ``serve_http`` with its idle, request and body bounds. The client
certificate is requested and accepted whatever it is (``client_auth="any"``): the EST service
judges it per tenant and answers with an HTTP status an agent can act on, where a TLS alert would
say nothing. The service runs in a worker thread, one at a time (``store_limiter``): the store is
SQLite and signing is CPU work that would otherwise stall the event loop. Connections over
``max_connections`` are closed at once.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import socket
import time
from collections.abc import Callable, Sequence

import structlog
import trio
from OpenSSL import SSL, crypto

from enroll.est_service import EstReply, EstRequest, EstService
from gateway.http11 import Request, Response, serve_http
from gateway.listening import peer_address, serve_tcp
from gateway.tls import TLSStream, tls_server

log = structlog.get_logger("switch.enroll")
_conn_ids = itertools.count(1)


def _peer_certificate_der(connection: SSL.Connection) -> bytes | None:
    """The DER of the client's certificate, as OpenSSL holds it, or None. Not parsed here: the
    EST service parses it only for the operations that use it (see ``enroll.est_service``)."""
    cert = connection.get_peer_certificate()
    return None if cert is None else crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)


class EnrollListener:
    def __init__(self, service: Callable[[], EstService], context_provider: Callable[[], SSL.Context], *,
                 request_timeout_s: float, max_body_bytes: int, max_connections: int,
                 idle_timeout_s: float = 30.0,
                 on_reply: Callable[[EstReply], None] | None = None,
                 store_limiter: trio.CapacityLimiter | None = None) -> None:
        self.service = service
        self.context_provider = context_provider
        self.request_timeout_s = request_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_body_bytes = max_body_bytes
        self.connections = trio.Semaphore(max_connections)
        self.store_limiter = store_limiter or trio.CapacityLimiter(1)
        self.on_reply = on_reply

    async def serve(self, host: str, port: int, *, handler_nursery: trio.Nursery | None = None,
                    sockets: Sequence[socket.socket] | None = None,
                    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
                    ) -> None:
        await serve_tcp("enroll", self.handle_connection, host, port,
                        handler_nursery=handler_nursery, sockets=sockets, task_status=task_status)

    async def handle_connection(self, stream: trio.abc.Stream) -> None:
        conn_id = next(_conn_ids)
        source = peer_address(stream)
        try:
            self.connections.acquire_nowait()
        except trio.WouldBlock:
            log.warning("enroll_connection_refused", reason="too_many_connections", peer=source)
            await stream.aclose()
            return
        try:
            tls = tls_server(stream, self.context_provider())
            try:
                with trio.fail_after(self.request_timeout_s):
                    await tls.do_handshake()
            except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                reason = "handshake_timeout" if isinstance(exc, trio.TooSlowError) else "handshake_failed"
                log.info("enroll_handshake_refused", conn_id=conn_id, peer=source, reason=reason,
                         error=str(exc))
                await tls.transport.aclose()
                return
            handler = functools.partial(self._handle_request, tls=tls, source=source, conn_id=conn_id)
            try:
                await serve_http(tls, handler, idle_timeout_s=self.idle_timeout_s,
                                 request_timeout_s=self.request_timeout_s,
                                 max_body_bytes=self.max_body_bytes,
                                 on_refusal=functools.partial(self._log_refusal, source, conn_id))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            except Exception:  # noqa: BLE001 - one request's failure must not end the others
                log.exception("enroll_connection_failed", conn_id=conn_id, peer=source)
            finally:
                with trio.move_on_after(1):
                    await tls.aclose()
        finally:
            self.connections.release()

    def _log_refusal(self, source: str, conn_id: int, status: int, reason: str) -> None:
        log.info("est_request", conn_id=conn_id, peer=source, status=status, result=reason)

    async def _handle_request(self, request: Request, *, tls: TLSStream, source: str,
                              conn_id: int) -> Response:
        est_request = EstRequest(
            method=request.method, path=request.path,
            headers={k: v for k, v in request.headers},
            body=request.body, server_name=tls.server_name,
            client_cert_der=_peer_certificate_der(tls.connection), source=source,
        )
        started = time.monotonic()
        reply = await trio.to_thread.run_sync(
            self.service().handle, est_request, dt.datetime.now(dt.UTC), time.monotonic(),
            limiter=self.store_limiter,
        )
        log.info("est_request", conn_id=conn_id, peer=source, method=request.method,
                 path=request.path, status=reply.status, result=reply.result, tenant=reply.tenant,
                 key_id=reply.key_id, serial=reply.serial, subject=reply.subject,
                 ms=round((time.monotonic() - started) * 1000, 1))
        if self.on_reply is not None:
            self.on_reply(reply)
        return Response(reply.status, reply.body, reply.headers, reply.content_type)
