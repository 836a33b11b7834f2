"""One WebSocket session over mTLS to the gateway, as an agent opens it (shared by ``switch agent``
and ``switch loadtest``): TCP, TLS, the server pin, the upgrade, and a contained reader task.

Theory of operation: TCP, TLS, the pin, then a WebSocket upgrade by trio-websocket, whose reader
task runs in the caller's nursery. trio-websocket lets two things escape that task into the
nursery, where they would end every other task in it (for the load test, a whole worker
process): a refused upgrade (``ConnectionRejected``) and wsproto's ``LocalProtocolError`` when
the reader answers a server Ping after this side started closing (trio-websocket issue #184, open
upstream). ``AgentConnection`` contains both: a refused upgrade is raised by ``open_session``
itself, a Ping during the close is not answered (the close handshake is under way; wsproto sends
nothing but a Close then), and any other wsproto protocol error in the reader ends that session
alone as an abnormal closure, recorded in ``AgentConnection.protocol_error``.
"""

from __future__ import annotations

import ssl

import structlog
import trio
import trio_websocket
import wsproto
import wsproto.events
import wsproto.utilities
from cryptography import x509
from wsproto.connection import ConnectionState

from gateway.client.agent_settings import AgentError, ServerNotTrusted, normalise_pin
from gateway.client.est_client import spki_sha256

log = structlog.get_logger("switch.agent")


class AgentConnection(trio_websocket.WebSocketConnection):
    """A client ``WebSocketConnection`` whose reader task cannot take its nursery down (see the
    module's theory of operation). Relies on trio-websocket internals (``_reader_task``,
    ``_open_handshake``, ``_wsproto``, ``_stream``, ``_abort_web_socket`` and two event handlers,
    as of 0.12); tests/integration/test_agent.py exercises each path against the installed version."""

    def __init__(self, stream: trio.abc.Stream, host: str, path: str) -> None:
        super().__init__(stream, wsproto.WSConnection(wsproto.ConnectionType.CLIENT),
                         host=host, path=path)
        #: the wsproto protocol error that ended the session, if one did
        self.protocol_error: str | None = None
        #: a refused upgrade, raised by open_session instead of from the reader task
        self.rejection: trio_websocket.ConnectionRejected | None = None
        #: server Pings that arrived after our Close and were not answered (issue #184)
        self.pings_while_closing = 0
        #: set by this side's code for an end it chose (``renewed``)
        self.ended_by: str | None = None
        #: this side's Close got no answer: the connection dropped (or could not carry it) first
        self.close_unanswered = False
        self.accepted = False
        self.reader_done = trio.Event()

    async def _handle_accept_connection_event(self, event: wsproto.events.AcceptConnection) -> None:
        self.accepted = True
        await super()._handle_accept_connection_event(event)

    async def _handle_ping_event(self, event: wsproto.events.Ping) -> None:
        if self._wsproto.state is not ConnectionState.OPEN:
            self.pings_while_closing += 1
            return
        await super()._handle_ping_event(event)

    async def _abort_web_socket(self) -> None:
        # trio-websocket keeps the code of the Close this side sent (1000) when the connection
        # then drops before the peer's Close arrives: the close handshake did not happen.
        if self._wsproto.state is ConnectionState.LOCAL_CLOSING:
            self.close_unanswered = True
        await super()._abort_web_socket()

    async def run_reader(self) -> None:
        """trio-websocket's reader task, contained: a refused upgrade is kept for open_session,
        a protocol error ends this session as an abnormal closure (1006)."""
        try:
            await self._reader_task()
        except trio_websocket.ConnectionRejected as exc:
            self.rejection = exc
        except wsproto.utilities.ProtocolError as exc:
            self.protocol_error = str(exc)
            log.info("session_protocol_error", error=str(exc))
            await self._abort_web_socket()  # wakes aclose() and get_message() with 1006
            await trio.aclose_forcefully(self._stream)
        finally:
            self.reader_done.set()
            self._open_handshake.set()  # wakes open_session, which checks how it ended

    def end_reason(self) -> str:
        """How the session ended, for logs and the load test's counts: ``protocol_error``,
        what this side chose (``renewed``), else ``closed_<code>`` (1006: the connection
        dropped without a close, or before the peer answered this side's Close)."""
        if self.protocol_error is not None:
            return "protocol_error"
        if self.ended_by is not None:
            return self.ended_by
        if self.close_unanswered:
            return "closed_1006"
        reason = self.closed
        return f"closed_{reason.code if reason else 1006}"


#: What opening a session raises when it does not work out (see ``open_session``).
SESSION_OPEN_ERRORS: tuple[type[BaseException], ...] = (
    OSError, trio.BrokenResourceError, trio.TooSlowError, ssl.SSLError, AgentError,
    trio_websocket.HandshakeError, trio_websocket.ConnectionClosed)


async def open_session(
    nursery: trio.Nursery, context: ssl.SSLContext, gateway: tuple[str, int], server_name: str,
    path: str, pin_sha256: str | None = None, local_address: str | None = None,
) -> tuple[AgentConnection, float]:
    """Open one WebSocket session over mTLS to the gateway: TCP, TLS (server checked by
    ``context`` and/or the public-key pin), then the upgrade, whose reader task runs in
    ``nursery`` and never raises into it. Returns the session and the seconds the TCP + TLS part
    took. Failures raise one of ``SESSION_OPEN_ERRORS``: ``OSError`` (no connection),
    ``trio.BrokenResourceError`` (TLS refused, or the connection dropped; ``__cause__`` says how
    when known), ``ServerNotTrusted`` (the pin), ``trio_websocket.ConnectionRejected`` (an HTTP
    refusal of the upgrade). The caller bounds the whole with a deadline. ``local_address``:
    the local IP address to connect from (trio binds it with ``IP_BIND_ADDRESS_NO_PORT``, so
    the port is chosen per destination at connect time); None lets the kernel choose."""
    started = trio.current_time()
    host, port = gateway
    tcp = await trio.open_tcp_stream(host, port, local_address=local_address)
    stream = trio.SSLStream(tcp, context, server_hostname=server_name)
    try:
        await stream.do_handshake()
        tls_s = trio.current_time() - started
        if pin_sha256:
            der = stream.getpeercert(binary_form=True)
            if not der or spki_sha256(x509.load_der_x509_certificate(der)) != normalise_pin(pin_sha256):
                raise ServerNotTrusted("the server's public key does not match the pin")
        watched = RecordedStream(stream)
        ws = AgentConnection(watched, server_name, path)
        nursery.start_soon(ws.run_reader)
        await ws._open_handshake.wait()
        if ws.rejection is not None:
            raise ws.rejection
        if not ws.accepted:
            # Under TLS 1.3 a refused certificate shows only on the first read or write.
            raise trio.BrokenResourceError(
                "the gateway closed the connection before the upgrade") from watched.error
        return ws, tls_s
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


def describe_error(exc: BaseException) -> str:
    """A short, specific text for a failure to open or hold a session."""
    if isinstance(exc, trio_websocket.ConnectionRejected):
        body = (exc.body or b"").decode("utf-8", "replace").strip()
        return f"upgrade refused with HTTP {exc.status_code}" + (f": {body[:100]}" if body else "")
    if isinstance(exc, trio_websocket.ConnectionClosed):
        reason = exc.reason
        if reason is None:
            return "closed"
        return f"closed with {reason.code}" + (f" {reason.reason}" if reason.reason else "")
    cause = exc.__cause__ if exc.__cause__ is not None else exc.__context__
    if isinstance(exc, trio.BrokenResourceError) and cause is not None:
        return f"{exc}: {type(cause).__name__}: {cause}" if str(exc) else f"{type(cause).__name__}: {cause}"
    return f"{type(exc).__name__}: {exc}"



#: The prefixes OpenSSL's reason names give a TLS alert received from the peer
#: (``SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED``, ``SSL_R_TLSV1_ALERT_UNKNOWN_CA``, ...).
_ALERT_PREFIXES = ("SSLV3_ALERT_", "TLSV1_ALERT_", "TLSV13_ALERT_", "TLSV1_")


def tls_alert(exc: BaseException) -> str | None:
    """The TLS alert the gateway sent, as RFC 8446 names it (``certificate_revoked``,
    ``unknown_ca``, ...), when the failure (or one of its causes) is one; else None. Python's
    ``ssl`` gives OpenSSL's reason name (``SSLV3_ALERT_CERTIFICATE_REVOKED``) in ``reason``."""
    current: BaseException | None = exc
    seen = 0
    while current is not None and seen < 8:
        if isinstance(current, ssl.SSLError):
            reason = current.reason or ""
            for prefix in _ALERT_PREFIXES:
                if reason.startswith(prefix):
                    return reason[len(prefix):].lower()
            return None
        current = current.__cause__ if current.__cause__ is not None else current.__context__
        seen += 1
    return None


def server_not_trusted(exc: BaseException) -> bool:
    """Whether the failure (or one of its causes) is the server failing the CA file or the pin."""
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, ServerNotTrusted | ssl.SSLCertVerificationError):
            return True
        current = current.__cause__
    return False



class RecordedStream(trio.abc.Stream):
    """Passes a stream through and keeps the first error reading or writing raised:
    trio-websocket swallows it, and a refused certificate is only told apart from a dropped
    connection by it."""

    def __init__(self, inner: trio.SSLStream[trio.SocketStream]) -> None:
        self.inner = inner
        self.error: BaseException | None = None

    def _keep(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc.__cause__ if exc.__cause__ is not None else exc

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self.inner.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._keep(exc)
            raise

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            return await self.inner.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._keep(exc)
            raise

    async def send_eof(self) -> None:
        raise NotImplementedError("TLS has no half-close")

    async def aclose(self) -> None:
        await self.inner.aclose()

