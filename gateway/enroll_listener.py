"""The enroll listener: TLS + HTTP/1.1 in front of ``enroll.est_service``.

Each connection runs in its own task (never in the accept loop): the first byte within
``first_byte_timeout_s`` and the TLS handshake under ``request_timeout_s``, at most
``max_handshakes_per_source`` at a time from one source (``gateway.listening``); then
``serve_http`` with its idle, request and body bounds. The client
certificate is requested and accepted whatever it is (``client_auth="any"``): the EST service
judges it per tenant and answers with an HTTP status an agent can act on, where a TLS alert would
say nothing. Connections over ``max_connections`` are closed at once. Refused connections are
counted by reason (``on_refusal``: ``switch_refusals_total`` with tenant ``-``).

Requests reach the EST service through one ``Batcher``: the requests waiting when the service is
free go to it together, in one worker thread call (``store_limiter``: the store is SQLite, and
signing is CPU work that would stall the event loop) and one store commit — group commit, the
way databases amortise their fsync: under load, one thread hand-over and one fsync serve many
certificates, and each reply is sent only after the commit that recorded it. A lone request is
a batch of one and waits for nothing.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import math
import socket
import time
from collections.abc import Callable, Sequence

import attrs
import structlog
import trio
from OpenSSL import SSL, crypto

from enroll.est_service import EstReply, EstRequest, EstService
from gateway.http11 import Request, Response, serve_http
from gateway.listening import (
    HandshakeSlots,
    close_lingering,
    first_byte,
    peer_address,
    serve_tcp,
    source_of,
)
from gateway.tls import tls_server
from gateway.tls_refusals import handshake_reason, verify_result

log = structlog.get_logger("switch.enroll")
_conn_ids = itertools.count(1)


def _peer_certificate_der(connection: SSL.Connection) -> bytes | None:
    """The DER of the client's certificate, as OpenSSL holds it, or None. Not parsed here: the
    EST service parses it only for the operations that use it (see ``enroll.est_service``)."""
    cert = connection.get_peer_certificate()
    return None if cert is None else crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)


#: The most requests handed to the service at once (bounds a batch's hold on the store's lock).
MAX_BATCH = 32


@attrs.define(eq=False)
class _Job:
    request: EstRequest
    now: dt.datetime
    monotonic: float
    done: trio.Event = attrs.field(factory=trio.Event)
    reply: EstReply | None = None


#: The answer to requests left waiting when the batcher stops (shutdown).
_STOPPED = EstReply(503, b"503 shutting_down\n", "text/plain; charset=utf-8", (("Retry-After", "5"),),
                    "shutting_down")


class Batcher:
    """Feeds the EST service batches of the requests that are waiting (see the module
    docstring). ``run`` is its one task; ``submit`` waits for a request's reply."""

    def __init__(self, service: Callable[[], EstService], limiter: trio.CapacityLimiter,
                 max_batch: int = MAX_BATCH) -> None:
        self.service = service
        self.limiter = limiter
        self.max_batch = max_batch
        self._send, self._receive = trio.open_memory_channel[_Job](math.inf)
        self._stopped = False

    async def submit(self, request: EstRequest) -> EstReply:
        if self._stopped:
            await trio.lowlevel.checkpoint()
            return _STOPPED
        job = _Job(request, dt.datetime.now(dt.UTC), time.monotonic())
        self._send.send_nowait(job)
        await job.done.wait()
        assert job.reply is not None
        return job.reply

    async def run(self) -> None:
        try:
            async for first in self._receive:
                jobs = [first]
                while len(jobs) < self.max_batch:
                    try:
                        jobs.append(self._receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                service = self.service()
                replies = await trio.to_thread.run_sync(
                    service.handle_batch, [(j.request, j.now, j.monotonic) for j in jobs],
                    limiter=self.limiter)
                for job, reply in zip(jobs, replies, strict=True):
                    job.reply = reply
                    job.done.set()
        finally:
            self._stopped = True
            while True:
                try:
                    job = self._receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                job.reply = _STOPPED
                job.done.set()


class EnrollListener:
    def __init__(self, service: Callable[[], EstService], context_provider: Callable[[], SSL.Context], *,
                 request_timeout_s: float, max_body_bytes: int, max_connections: int,
                 idle_timeout_s: float = 30.0,
                 max_handshakes_per_source: int = 50, first_byte_timeout_s: float = 5.0,
                 on_reply: Callable[[EstReply], None] | None = None,
                 on_refusal: Callable[[str], None] | None = None,
                 store_limiter: trio.CapacityLimiter | None = None) -> None:
        self.service = service
        self.context_provider = context_provider
        self.request_timeout_s = request_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_body_bytes = max_body_bytes
        self.max_handshakes_per_source = max_handshakes_per_source
        self.first_byte_timeout_s = first_byte_timeout_s
        #: Counts a connection refused before any HTTP (by its reason).
        self.on_refusal = on_refusal
        self.handshakes = HandshakeSlots()
        self.connections = trio.Semaphore(max_connections)
        self.store_limiter = store_limiter or trio.CapacityLimiter(1)
        self.on_reply = on_reply
        self.batcher = Batcher(service, self.store_limiter)

    async def serve(self, host: str, port: int, *, handler_nursery: trio.Nursery | None = None,
                    sockets: Sequence[socket.socket] | None = None,
                    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
                    ) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.batcher.run)
            await serve_tcp("enroll", self.handle_connection, host, port,
                            handler_nursery=handler_nursery, sockets=sockets,
                            task_status=task_status)

    def _refused(self, reason: str) -> None:
        if self.on_refusal is not None:
            self.on_refusal(reason)

    async def handle_connection(self, stream: trio.abc.Stream) -> None:
        conn_id = next(_conn_ids)
        source = peer_address(stream)
        counted_as = source_of(source)
        # Per source first, as on the gateway port (gateway.listening).
        if not self.handshakes.take(counted_as, self.max_handshakes_per_source):
            self._refused("too_many_handshakes")
            await trio.aclose_forcefully(stream)
            return
        try:
            self.connections.acquire_nowait()
        except trio.WouldBlock:
            self.handshakes.give_back(counted_as)
            self._refused("too_many_connections")
            log.warning("enroll_connection_refused", reason="too_many_connections", peer=source)
            await trio.aclose_forcefully(stream)
            return
        try:
            failure: trio.TooSlowError | trio.BrokenResourceError | trio.ClosedResourceError | None
            failure = None
            reason = "handshake_timeout"
            try:
                tls = tls_server(stream, self.context_provider())
                try:
                    with trio.fail_after(self.request_timeout_s):
                        if not await first_byte(stream, self.first_byte_timeout_s):
                            reason = "first_byte_timeout"
                            raise trio.TooSlowError
                        await tls.do_handshake()
                except (trio.TooSlowError, trio.BrokenResourceError,
                        trio.ClosedResourceError) as exc:
                    failure = exc
            finally:
                self.handshakes.give_back(counted_as)
            if failure is not None:
                if not isinstance(failure, trio.TooSlowError):
                    reason = handshake_reason(failure.__cause__, verify_result(tls.connection))
                self._refused(reason)
                log.info("enroll_handshake_refused", conn_id=conn_id, peer=source, reason=reason,
                         error=str(failure.__cause__ or failure))
                if isinstance(failure, trio.TooSlowError):
                    await trio.aclose_forcefully(stream)
                else:  # an alert was written: let the client read it before the socket closes
                    await close_lingering(stream)
                return
            # Read once per connection: neither changes on it (renegotiation is off).
            handler = functools.partial(self._handle_request, server_name=tls.server_name,
                                        client_cert_der=_peer_certificate_der(tls.connection),
                                        source=source, conn_id=conn_id)
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

    async def _handle_request(self, request: Request, *, server_name: str | None,
                              client_cert_der: bytes | None, source: str, conn_id: int
                              ) -> Response:
        est_request = EstRequest(
            method=request.method, path=request.path, headers=dict(request.headers),
            body=request.body, server_name=server_name, client_cert_der=client_cert_der,
            source=source,
        )
        started = time.monotonic()
        reply = await self.batcher.submit(est_request)
        log.info("est_request", conn_id=conn_id, peer=source, method=request.method,
                 path=request.path, status=reply.status, result=reply.result, tenant=reply.tenant,
                 key_id=reply.key_id, serial=reply.serial, subject=reply.subject,
                 ms=round((time.monotonic() - started) * 1000, 1))
        if self.on_reply is not None:
            self.on_reply(reply)
        return Response(reply.status, reply.body, reply.headers, reply.content_type)
