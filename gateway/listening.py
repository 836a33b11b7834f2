"""What every listener shares: opening the sockets, the accept loop (optionally gated on the
handshakes a process has in progress), the peer's address, the per-source limit on connections
still in their handshake with the first-byte deadline, and the lingering close after a refusal."""

from __future__ import annotations

import array
import errno
import fcntl
import ipaddress
import os
import socket
import termios
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


# --- connections still in their handshake ------------------------------------------------------
#
# One source must not lock others out by opening connections and sending nothing: every listener
# caps the connections it holds (``max_connections``), and without more, 2,000 idle sockets from
# one address, each held for the whole handshake deadline, fill that cap and others are refused.
# So each agent-facing listener also counts, per source, the connections that have not finished
# their TLS handshake (``HandshakeSlots``), and closes a new one at once over
# ``max_handshakes_per_source``; and a connection must send its first byte (the ClientHello)
# within ``first_byte_timeout``, well before the handshake deadline. Established sessions never
# count: the limit is on handshakes, not on sessions.
#
# Over the limit the *new* connection is refused, rather than the oldest of that source evicted:
# refusing costs nothing (no handshake was started), whereas evicting would throw away work in
# progress, and under a legitimate burst from one address (a large NAT, a load generator) would
# evict handshakes about to complete in favour of ones just begun. A refused agent retries with
# back-off; the source's idle sockets free their slots at the first-byte deadline. A source is an
# IPv4 address or an IPv6 /64 (one host commonly holds a whole /64).


def source_of(address: str) -> str:
    """The source ``address`` (``peer_address``) is counted under: an IPv4 address as it is, an
    IPv6 address as its /64 (an IPv4-mapped one as its IPv4 address)."""
    if ":" not in address:
        return address
    try:
        ip = ipaddress.IPv6Address(address.split("%", 1)[0])
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))


class HandshakeSlots:
    """The connections of each source that have not finished their handshake: a count per
    source, kept only while it is above zero (O(1) per connection, memory bounded by the
    connections held)."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def take(self, source: str, limit: int) -> bool:
        """Count one more handshake of ``source``; False (not counted) when it holds ``limit``."""
        held = self._counts.get(source, 0)
        if held >= limit:
            return False
        self._counts[source] = held + 1
        return True

    def give_back(self, source: str) -> None:
        """The handshake ``take`` counted is over (done, failed or refused)."""
        held = self._counts.get(source, 0) - 1
        if held > 0:
            self._counts[source] = held
        else:
            self._counts.pop(source, None)

    def held(self, source: str) -> int:
        return self._counts.get(source, 0)


def has_data(stream: trio.abc.Stream) -> bool:
    """Whether the peer of a socket ``stream`` has bytes waiting to be read now (``FIONREAD``:
    one system call, no wait). True for another stream (memory streams in tests)."""
    if not isinstance(stream, trio.SocketStream):
        return True
    waiting = array.array("i", [0])
    try:
        fcntl.ioctl(stream.socket.fileno(), termios.FIONREAD, waiting, True)
    except OSError:
        return False
    return waiting[0] > 0


async def first_byte(stream: trio.abc.Stream, timeout_s: float) -> bool:
    """Wait until the peer of a socket ``stream`` has sent something (or closed) within
    ``timeout_s`` of now; False when it has not. Another stream (memory streams in tests): True."""
    if not isinstance(stream, trio.SocketStream):
        await trio.lowlevel.checkpoint()
        return True
    with trio.move_on_after(timeout_s):
        await trio.lowlevel.wait_readable(stream.socket)
        return True
    return False


def peer_address(stream: trio.abc.Stream) -> str:
    """The remote IP of a socket stream, or ``unknown``."""
    sock = getattr(stream, "socket", None)
    try:
        return str(sock.getpeername()[0]) if sock is not None else "unknown"
    except OSError:
        return "unknown"


# --- handshakes in progress in one process ---------------------------------------------------
#
# A process that accepts every connection the kernel has queued takes on more handshakes than it
# can do before their deadlines: after a restart thousands of agents reconnect within seconds, a
# handshake costs a millisecond or two of this process's CPU, and each accepted connection's
# first-byte and handshake deadlines run from its accept while it waits its turn behind all the
# others. So the gateway's accept loop takes a connection only while the process has fewer than
# ``HandshakeCapacity.limit`` handshakes in progress; the others wait in the kernel's listen
# queue, where no deadline runs (and another worker process sharing the socket may take them).
# A connection holds its place from accept to the end of its handshake, except while it waits for
# its first byte: a silent connection costs no CPU, is bounded by the per-source limit and the
# first-byte deadline, and so cannot hold the accept loop back (slowloris).


class HandshakeCapacity:
    """The handshakes one process is working on, and the accept loops waiting for room."""

    __slots__ = ("limit", "busy", "_room")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.busy = 0
        self._room = trio.lowlevel.ParkingLot()

    def take(self) -> None:
        """One more handshake in progress (never refused: the accept loop is what waits)."""
        self.busy += 1

    def give_back(self) -> None:
        self.busy -= 1
        if self.busy < self.limit and self._room:
            self._room.unpark_all()

    async def room(self) -> None:
        """Return once fewer than ``limit`` handshakes are in progress."""
        while self.busy >= self.limit:
            await self._room.park()


#: ``accept`` errors that mean "out of descriptors or memory for now" (as trio's own loop).
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


#: The name of every connection's task (a constant: trio would format one per task, and an idle
#: session keeps it).
HANDLER_TASK = "gateway.listening.connection"


async def _accept_gated(listener: trio.SocketListener, nursery: trio.Nursery,
                        handler: Callable[[trio.SocketStream], Awaitable[None]],
                        capacity: HandshakeCapacity) -> None:
    """Accept while ``capacity`` has room; each connection is counted in it before its handler
    starts (the handler gives it back)."""
    async with listener:
        while True:
            await capacity.room()
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                log.error("accept_failed", errno=errno.errorcode.get(exc.errno or 0, exc.errno),
                          error=os.strerror(exc.errno or 0), retry_s=0.1)
                await trio.sleep(0.1)
                continue
            capacity.take()
            nursery.start_soon(_run_handler, handler, stream, name=HANDLER_TASK)


async def _run_handler(handler: Callable[[trio.SocketStream], Awaitable[None]],
                       stream: trio.SocketStream) -> None:
    try:
        await handler(stream)
    finally:
        if stream.socket.fileno() != -1:  # the handler closes it on every path it knows
            await trio.aclose_forcefully(stream)


async def serve_tcp(
    name: str, handler: Callable[[trio.SocketStream], Awaitable[None]], host: str, port: int, *,
    handler_nursery: trio.Nursery | None = None, backlog: int | None = None,
    sockets: Sequence[socket.socket] | None = None,
    capacity: HandshakeCapacity | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port`` and accept until cancelled. Connections run in ``handler_nursery``
    (so that cancelling the accept loop stops accepting without touching live connections); each
    in its own task, never in the accept loop. Trio's accept loop backs off when file
    descriptors run out instead of failing. ``sockets``: already listening sockets to accept on
    instead (several worker processes share them). ``capacity``: accept only while it has room,
    counting each connection in it (``HandshakeCapacity``; the handler must give it back).

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
    if capacity is None:
        await trio.serve_listeners(handler, listeners, handler_nursery=handler_nursery)
    async with trio.open_nursery() as nursery:  # (serve_listeners never returns)
        for listener in listeners:
            nursery.start_soon(_accept_gated, listener, handler_nursery or nursery, handler,
                               capacity)


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
