"""Trio streams over pyOpenSSL: on a socket's file descriptor, or over memory BIOs.

Why not ``trio.SSLStream``: Python's ``ssl`` module on 3.11 cannot hand over the client's chain,
cannot let Switch decide about a client certificate itself (the EST port accepts any certificate
in TLS and checks it per tenant, answering with an HTTP status), cannot turn TLS 1.3 tickets off,
and costs more CPU per handshake (DESIGN.md, Budgets).

Two transports, one behaviour. ``SocketTLSStream`` (the listeners' hot path: every accepted
connection is a socket) lets OpenSSL read and write the non-blocking socket itself: a call that
would block raises ``WantReadError``/``WantWriteError`` and the task waits for the descriptor
with ``trio.lowlevel.wait_readable``/``wait_writable``. No bytes pass through Python, no buffer
sits between OpenSSL and the kernel (with ``MODE_RELEASE_BUFFERS`` an idle connection holds no
record buffers at all), and a handshake costs a handful of Python calls. ``OpenSSLStream`` works
over any Trio stream (memory streams in unit tests, the reference agent's and EST client's
connections): OpenSSL reads from and writes to two memory buffers and the class moves bytes
between those buffers and the transport stream. ``tls_server``/``tls_client`` (and ``stream_for``)
pick the socket transport whenever they are given a ``trio.SocketStream``.

With memory BIOs every pyOpenSSL call is still synchronous, so calls from two tasks never
interleave; only the transport I/O awaits, each direction under its own lock:

* ``_flush`` moves everything OpenSSL wrote into the outgoing buffer to the transport, under the
  send lock; bytes leave in the order OpenSSL produced them because the buffer is FIFO.
* ``_fill`` reads one chunk from the transport into the incoming buffer, under the receive lock.
  A task that waited for the lock while another task filled returns without reading, and retries
  its OpenSSL call on the new data (the same idea as trio's ``SSLStream``).

On a socket the same holds with the descriptor's readiness in place of the two buffers: a task
that finds another already waiting for the same readiness waits for that wait to end, then
retries its call.

Both: one task may sit in ``receive_some`` while another calls ``send_all`` (a WebSocket relay
does). Two concurrent ``receive_some`` calls, or two concurrent ``send_all`` calls, are a bug in
the caller and raise ``trio.BusyResourceError``. TLS failures (bad bytes, a refused certificate,
EOF mid-handshake) raise ``trio.BrokenResourceError`` with the OpenSSL error as ``__cause__``,
after sending any alert OpenSSL queued so the peer learns why. A clean ``close_notify`` reads as
``b""``; EOF without it raises ``trio.BrokenResourceError`` (truncation).

Schedule points: the socket stream does not yield on every call that completes at once (a trio
socket yields twice per send or receive, which is most of a handshake's Python cost); it checks
for cancellation before every call and yields every ``MAX_UNYIELDED`` calls in a row, so a busy
connection cannot starve the others. A call that had to wait has yielded anyway. As with trio's
own sockets, a call that raises ``Cancelled`` had no effect: once OpenSSL has read or written,
the call returns (its yield is cancel-shielded).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio
from cryptography import x509
from OpenSSL import SSL
from OpenSSL._util import lib as _lib

from gateway import fdwait
from gateway.lightlock import LightLock

T = TypeVar("T")

#: Read size from the transport: one full TLS record plus header room.
READ_CHUNK = 16 * 1024 + 256
#: Largest plaintext handed to OpenSSL at once, so the outgoing buffer stays bounded (back-pressure
#: comes from awaiting the transport after each chunk).
WRITE_CHUNK = 64 * 1024


#: Calls completing without a wait that the socket stream allows before it yields anyway.
MAX_UNYIELDED = 8


class TLSStream(trio.abc.HalfCloseableStream):
    """What both transports share: the Stream methods, over one primitive each transport
    provides (``_call``: run an OpenSSL call, waiting for I/O as it asks), and the handshake's
    results, read from the ``SSL.Connection``."""

    def __init__(self, transport: trio.abc.Stream, connection: SSL.Connection) -> None:
        self.transport = transport
        self.connection = connection
        self._handshake_lock = LightLock()
        self._handshake_done = False
        self._sending = False
        self._receiving = False
        self._closed = False
        self._eof_sent = False

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        raise NotImplementedError

    async def _send_some(self, chunk: memoryview) -> int:
        """Hand OpenSSL (part of) ``chunk``; the bytes it took."""
        raise NotImplementedError

    async def do_handshake(self) -> None:
        """Run the handshake (idempotent; also run implicitly by the first send or receive)."""
        if self._handshake_done:
            await trio.lowlevel.checkpoint_if_cancelled()
            return
        async with self._handshake_lock:
            if not self._handshake_done:
                await self._call(self.connection.do_handshake)
                self._handshake_done = True

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        self._sending = True
        try:
            await self.do_handshake()
            view = memoryview(data)
            if not view:
                await trio.lowlevel.checkpoint_if_cancelled()
            sent = 0
            while sent < len(view):
                sent += await self._send_some(view[sent:sent + WRITE_CHUNK])
        finally:
            self._sending = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this stream")
        self._receiving = True
        try:
            await self.do_handshake()
            try:
                return await self._call(self.connection.recv, max_bytes or READ_CHUNK)
            except SSL.ZeroReturnError:
                return b""
        finally:
            self._receiving = False

    async def aclose(self) -> None:
        """Send close_notify (best effort, never waiting long) and close the transport. On a
        socket OpenSSL writes it at once if the socket takes it; over memory BIOs it is flushed
        for up to a second."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        try:
            if self._handshake_done and not self._eof_sent:
                with contextlib.suppress(SSL.Error):
                    self.connection.shutdown()
                await self._close_notify_sent()
        finally:
            self._closed = True
            await self.transport.aclose()

    async def _close_notify_sent(self) -> None:
        """After ``shutdown``: move the close_notify out if the transport needs it moved."""

    async def send_eof(self) -> None:
        """Half-close: send close_notify (best effort, as ``aclose``) and, when the transport
        can, end its sending side too (TCP FIN), so that the peer reads everything sent, then
        the end. Receiving goes on (TLS 1.3 half-close; OpenSSL reads after its close_notify
        under TLS 1.2 too) until the peer's close_notify or end of file. For a lingering close
        after an error reply (``gateway.listening.linger``)."""
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        if self._closed:
            raise trio.ClosedResourceError("the TLS stream is closed")
        if self._eof_sent:
            await trio.lowlevel.checkpoint()
            return
        self._eof_sent = True
        if self._handshake_done:
            with contextlib.suppress(SSL.Error):
                self.connection.shutdown()
            await self._close_notify_sent()
        if isinstance(self.transport, trio.abc.HalfCloseableStream):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.transport.send_eof()
        else:
            await trio.lowlevel.checkpoint()

    @property
    def server_name(self) -> str | None:
        name = self.connection.get_servername()
        return name.decode("ascii", "replace").lower() if name else None

    def peer_certificate(self) -> x509.Certificate | None:
        cert = self.connection.get_peer_certificate(as_cryptography=True)
        return cert

    def peer_chain(self) -> list[x509.Certificate]:
        """The chain the peer sent, leaf first (unverified: for the server's own checks)."""
        leaf = self.connection.get_peer_certificate(as_cryptography=True)
        if leaf is None:
            return []
        # A server's view of the chain leaves out the leaf (SSL_get_peer_cert_chain).
        rest = self.connection.get_peer_cert_chain(as_cryptography=True) or []
        return [leaf, *(c for c in rest if c != leaf)]

    def verified_chain(self) -> list[x509.Certificate] | None:
        """The chain OpenSSL verified, leaf first, or None."""
        chain = self.connection.get_verified_chain(as_cryptography=True)
        return list(chain) if chain else None

    @property
    def tls_version(self) -> str:
        return str(self.connection.get_protocol_version_name())

    @property
    def session_reused(self) -> bool:
        return bool(_lib.SSL_session_reused(self.connection._ssl))


def socket_of(transport: trio.abc.Stream) -> trio.socket.SocketType | None:
    """The socket to run TLS on directly, or None (any other stream: memory BIOs)."""
    return transport.socket if isinstance(transport, trio.SocketStream) else None


def stream_for(transport: trio.abc.Stream, connection: SSL.Connection) -> TLSStream:
    """The TLS stream for a connection made with ``SSL.Connection(context, socket_of(transport))``."""
    if isinstance(transport, trio.SocketStream):
        return SocketTLSStream(transport, connection)
    return OpenSSLStream(transport, connection)


def new_connection(context: SSL.Context, sock: trio.socket.SocketType | None) -> SSL.Connection:
    """``SSL.Connection`` on ``sock`` (pyOpenSSL needs only its ``fileno()``), or on memory BIOs."""
    return SSL.Connection(context, sock)  # type: ignore[arg-type]


def tls_server(transport: trio.abc.Stream, context: SSL.Context) -> TLSStream:
    conn = new_connection(context, socket_of(transport))
    conn.set_accept_state()
    return stream_for(transport, conn)


def tls_client(transport: trio.abc.Stream, context: SSL.Context,
               server_name: str | None = None) -> TLSStream:
    conn = new_connection(context, socket_of(transport))
    if server_name:
        conn.set_tlsext_host_name(server_name.encode("idna"))
    conn.set_connect_state()
    return stream_for(transport, conn)


class SocketTLSStream(TLSStream):
    """TLS run by OpenSSL on the socket's descriptor (see the module docstring)."""

    def __init__(self, transport: trio.SocketStream, connection: SSL.Connection) -> None:
        super().__init__(transport, connection)
        self._socket = transport.socket
        self._readable = LightLock()
        self._writable = LightLock()
        self._unyielded = 0

    async def _wait(self, lock: LightLock, wait: Callable[[trio.socket.SocketType], Awaitable[None]]
                    ) -> None:
        if lock.locked():
            async with lock:  # another task waited for this readiness: retry on what it saw
                return
        async with lock:
            await wait(self._socket)

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        # Trio's rule: a call that raises Cancelled had no effect. So cancellation is checked
        # before OpenSSL is called, never after a call that completed (bytes read or written):
        # that call returns what it did, and its periodic yield is cancel-shielded. A Cancelled
        # raised after the call dropped the bytes it had read, or reported bytes that had gone
        # out as not sent (the relay then took a whole stream for one cut off mid-frame).
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while True:
            if self._closed:
                # Never touch the descriptor after close: its number may belong to another socket.
                raise trio.ClosedResourceError("the TLS stream is closed")
            # The waits happen outside the ``except`` blocks: awaiting inside one would keep the
            # exception alive, and with its traceback the frame of ``Connection.recv`` and the
            # 16 KiB buffer it allocated, for as long as an idle session waits.
            want_read = False
            try:
                result = fn(*args)
            except SSL.WantReadError:
                want_read = True
            except SSL.WantWriteError:
                pass
            except SSL.ZeroReturnError:
                raise
            except SSL.Error as exc:
                raise trio.BrokenResourceError(f"TLS failed: {_describe(exc)}") from exc
            else:
                break
            waited = True
            if want_read:
                await self._wait(self._readable, fdwait.wait_readable)
            else:
                await self._wait(self._writable, trio.lowlevel.wait_writable)
        if waited:
            self._unyielded = 0
            return result
        self._unyielded += 1
        if self._unyielded >= MAX_UNYIELDED:
            self._unyielded = 0
            await trio.lowlevel.cancel_shielded_checkpoint()
        return result

    async def _send_some(self, chunk: memoryview) -> int:
        # Partial writes are on (pyOpenSSL's default): ``send`` says how much it took.
        return await self._call(self.connection.send, chunk)

    async def wait_readable(self) -> None:
        """Wait until ``receive_some`` may find bytes (OpenSSL holds decrypted ones, or the
        socket is readable), without starting a read: an idle reader waiting here keeps only
        this call and Trio's wait alive, not the frames of ``receive_some`` (memory per idle
        session, ``gateway.relay.pump``). Readable may mean part of a record, so the
        ``receive_some`` after it can still wait; cancelling this wait has no effect."""
        if self._closed:
            raise trio.ClosedResourceError("the TLS stream is closed")
        if self.connection.pending() or self._readable.locked():
            # Bytes already here, or another task waits for readability (a send that needs a
            # read): receive_some takes it from there.
            await trio.lowlevel.checkpoint()
            return
        async with self._readable:
            await fdwait.wait_readable(self._socket)

    async def wait_send_all_might_not_block(self) -> None:
        await self._wait(self._writable, trio.lowlevel.wait_writable)



class OpenSSLStream(TLSStream):
    """TLS over memory BIOs on any Trio stream (see the module docstring)."""

    def __init__(self, transport: trio.abc.Stream, connection: SSL.Connection) -> None:
        super().__init__(transport, connection)
        self._send_lock = LightLock()
        self._recv_lock = LightLock()
        self._fill_generation = 0

    @classmethod
    def server(cls, transport: trio.abc.Stream, context: SSL.Context) -> OpenSSLStream:
        conn = SSL.Connection(context, None)
        conn.set_accept_state()
        return cls(transport, conn)

    @classmethod
    def client(cls, transport: trio.abc.Stream, context: SSL.Context,
               server_name: str | None = None) -> OpenSSLStream:
        conn = SSL.Connection(context, None)
        if server_name:
            conn.set_tlsext_host_name(server_name.encode("idna"))
        conn.set_connect_state()
        return cls(transport, conn)

    # --- moving bytes ------------------------------------------------------------------------

    async def _flush(self) -> None:
        async with self._send_lock:
            while True:
                try:
                    data = self.connection.bio_read(READ_CHUNK * 4)
                except SSL.WantReadError:
                    return
                await self.transport.send_all(data)

    async def _flush_quietly(self) -> None:
        with trio.move_on_after(1):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
                await self._flush()

    async def _fill(self) -> None:
        seen = self._fill_generation
        async with self._recv_lock:
            if self._fill_generation != seen:
                return  # another task read while we waited: retry on its data
            data = await self.transport.receive_some(READ_CHUNK)
            if data:
                self.connection.bio_write(bytes(data))
            else:
                self.connection.bio_shutdown()
            self._fill_generation += 1

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        if self._closed:
            raise trio.ClosedResourceError("the TLS stream is closed")
        while True:
            try:
                result = fn(*args)
            except SSL.WantReadError:
                pass  # wait below, outside the except block (see SocketTLSStream._call)
            except SSL.ZeroReturnError:
                raise
            except SSL.Error as exc:
                failure = exc
                break
            else:
                await self._flush()
                return result
            await self._flush()
            await self._fill()
        await self._flush_quietly()
        raise trio.BrokenResourceError(f"TLS failed: {_describe(failure)}") from failure

    # --- the Stream interface ------------------------------------------------------------------

    async def _send_some(self, chunk: memoryview) -> int:
        await self._call(self.connection.sendall, bytes(chunk))
        return len(chunk)

    async def wait_send_all_might_not_block(self) -> None:
        async with self._send_lock:
            await self.transport.wait_send_all_might_not_block()

    async def _close_notify_sent(self) -> None:
        await self._flush_quietly()


def _describe(exc: SSL.Error) -> str:
    parts = []
    for item in exc.args[0] if exc.args and isinstance(exc.args[0], list) else []:
        if isinstance(item, tuple) and len(item) == 3:
            parts.append(str(item[2]))
    return ", ".join(parts) or repr(exc)
