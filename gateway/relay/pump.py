"""The frame pump of a relaying session: one direction's loop (``forward``), the writes to each
side under its lock (``Side``), what both directions and the keepalive sweep share
(``Relaying``), and the closing handshake owed to each side when the session ends (``outcome``,
``close_sides``).

Theory of operation: after the two opening handshakes the relay forwards WebSocket frames as
they are (``gateway.wsframes``): the agent's masked frames go to the upstream unchanged, the
upstream's to the agent, with no decoding, unmasking or re-encoding of messages and no
buffering of payloads. A ``FrameReader`` per direction finds the frame boundaries, enforces the
protocol rules an intermediary must and ``max_message_bytes`` (from each frame's header, before
a byte of that frame moves), and hands over the two things the relay acts on: a Close, and the
Pong answering its own liveness ping. Pings and other Pongs pass end to end. Per session only
two streams, two small readers and two tasks remain (one per direction), which is what lets one
process hold tens of thousands of idle sessions. Each direction awaits its write before reading
again (back-pressure). Writes to one stream come from both tasks (relayed bytes from one, the
relay's own pings and closes from the other) and are serialised by a lock; a frame of the
relay's own is written only where the relayed bytes end at a frame boundary.

Timers: neither direction waits for data under a timer. On sockets both wait for readability
first and read after (``readable_wait``): an idle session then keeps no read's frames alive. The
agent's direction notes when it last heard from the agent; pings and the idle limit are the
keepalive sweep's (``gateway.relay.keepalive``: one per process, not a timer per session). Each
write runs under its own ``write_timeout_s`` scope, set per chunk: a Trio scope stays cancelled
once its deadline has passed, so one scope over several writes would cut off a later write and
take it for a stall. A write that times out means that side stopped reading: the session ends
(``agent_write_timeout`` / ``upstream_write_timeout``), and a side whose write was cut off
mid-way gets no close frame, since its stream is no longer whole.

Closing: a close code on either side is passed to the other; an upstream that fails
mid-session closes the agent with 1011 (reason ``upstream_failed``); an eviction closes it with
1008 and the reason; shutdown with 1001; a message over ``max_message_bytes`` gets 1009; a side
that breaks the protocol gets 1002 (1007 for a bad close reason) and the other side 1001 (the
agent 1011 when it was the upstream). Closing waits at most ``close_timeout_s``; at shutdown every
session closes at once, all under the process's one drain deadline (``gateway.serve``).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable

import attrs
import trio
from prometheus_client import Counter

from config.model import GatewaySettings
from gateway import fdwait
from gateway.lightlock import LightLock
from gateway.relay.upgrade import RECV_BYTES
from gateway.sessions import Session
from gateway.tls import SocketTLSStream
from gateway.wsframes import Close, FrameReader, Violation, close_frame

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
#: 1014 ("bad gateway") would be the precise code, but wsproto-based clients (trio-websocket,
#: the reference agent) refuse it as reserved; 1011 is understood everywhere.
CLOSE_UPSTREAM_FAILED = 1011

@attrs.define(eq=False)
class Counters:
    """What one session relayed, for its log line."""

    bytes_in: int = 0
    bytes_out: int = 0
    messages_in: int = 0
    messages_out: int = 0


async def _cancelled_before_writing() -> None:
    """Raise ``Cancelled`` now if it is due, while nothing of the write has gone out: then the
    stream is whole and ``Side.cut`` need not be set. ``send_all`` of the gateway's streams
    (``SocketTLSStream``, trio's ``SocketStream``) has no schedule point before its first bytes
    go out, so after this check a cancellation can only come once they have. The race this
    closes: the agent's Close arrives while the upstream's last message is being relayed to it;
    ending the relay cancelled that write before it began, the side was taken for cut, and the
    agent's Close went unanswered (1006 instead of 1000, at the end of a load test's hold)."""
    await trio.lowlevel.checkpoint_if_cancelled()


@attrs.define(eq=False)
class Side:
    """One end of the relay: its stream, the reader of the frames it sends, and a lock over
    writes to it. ``mask``: frames of the relay's own to this side are masked (it is the
    upstream, a server). ``in_frame``: what was written to it so far ends inside a relayed frame,
    so no frame of the relay's own may go in now. ``cut`` is set while a write is under way and
    stays set if it was cancelled part-way: the stream then holds a partial frame (or TLS
    record) and must not be written to again. ``pending``: what arrived with the opening
    handshake, read before the stream."""

    stream: trio.abc.Stream
    reader: FrameReader
    mask: bool
    pending: bytes = b""
    lock: LightLock = attrs.field(factory=LightLock)
    cut: bool = False
    in_frame: bool = False
    close_received: bool = False
    #: Waits until the stream has bytes to read, or None (a stream with no such wait).
    readable: Callable[[], Awaitable[None]] | None = attrs.field(
        default=attrs.Factory(lambda side: readable_wait(side.stream), takes_self=True))

    @classmethod
    def agent(cls, stream: trio.abc.Stream, max_message_bytes: int, pending: bytes = b"") -> Side:
        return cls(stream, FrameReader(masked=True, max_message_bytes=max_message_bytes),
                   mask=False, pending=pending)

    @classmethod
    def upstream(cls, stream: trio.abc.Stream, max_message_bytes: int, pending: bytes = b""
                 ) -> Side:
        return cls(stream, FrameReader(masked=False, max_message_bytes=max_message_bytes),
                   mask=True, pending=pending)

    async def write(self, data: bytes | bytearray | memoryview, *, in_frame: bool) -> None:
        """Relayed bytes; ``in_frame``: they end inside a frame."""
        async with self.lock:
            if self.cut:  # a write before this one was cut off
                raise trio.BrokenResourceError("an earlier write to this side was cut off")
            await _cancelled_before_writing()
            self.cut = True
            await self.stream.send_all(data)
            self.cut = False
            self.in_frame = in_frame

    async def inject(self, frame: bytes) -> bool:
        """A frame of the relay's own (a ping, a close), between relayed frames only: False
        when the relayed bytes end inside a frame now."""
        async with self.lock:
            if self.cut:  # e.g. a ping that waited for the lock behind a write that timed out
                raise trio.BrokenResourceError("an earlier write to this side was cut off")
            if self.in_frame:
                return False
            await _cancelled_before_writing()
            self.cut = True
            await self.stream.send_all(frame)
            self.cut = False
            return True


class Ended(Exception):
    """One side ended the session: ``code``/``text`` as received (1006 when it vanished);
    ``too_big`` when it broke the message size limit; ``protocol_error`` when it broke the
    WebSocket protocol (``code`` is then the one it is owed); ``stalled`` when it stopped
    reading (a write to it made no progress for ``write_timeout_s``)."""

    def __init__(self, agent_side: bool, code: int, text: str | None, too_big: bool = False,
                 stalled: bool = False, protocol_error: bool = False) -> None:
        super().__init__(code, text)
        self.agent_side = agent_side
        self.code = code
        self.text = text
        self.too_big = too_big
        self.stalled = stalled
        self.protocol_error = protocol_error


def readable_wait(stream: trio.abc.Stream) -> Callable[[], Awaitable[None]] | None:
    """How ``forward`` waits for ``stream`` to have bytes before it reads (None: it just reads).

    Why: an idle session's two directions spend their life waiting to read, and what waits
    stays in memory. Waiting in ``receive_some`` keeps its whole call stack alive (for a trio
    socket: the stream's, the socket's and its non-blocking helper's frames; for TLS on a
    socket: ``receive_some``'s and the OpenSSL call's), 1.5 to 2 KiB per session; waiting for
    readability first keeps only Trio's wait, and the read that follows finds its bytes."""
    if isinstance(stream, SocketTLSStream):
        return stream.wait_readable
    if isinstance(stream, trio.SocketStream):
        return functools.partial(_socket_readable, stream.socket)
    return None


def _socket_readable(sock: trio.socket.SocketType) -> Awaitable[None]:
    """Trio's wait itself (no frame of ours while it waits); a closed socket is left to the
    read, which raises ``ClosedResourceError``."""
    # Returned, not awaited here: a coroutine of ours would stay alive for the whole wait.
    if sock.fileno() == -1:
        return trio.lowlevel.checkpoint()  # noqa: ASYNC105 - awaited by the caller
    return fdwait.wait_readable(sock)


@attrs.define(eq=False)
class Relaying:
    """What both directions of one relaying session share, and what its liveness needs
    (``gateway.relay.keepalive``): the relay's nursery (its scope ends the other direction when
    one ends), the first side to end, and when the agent was last heard from and pinged."""

    nursery: trio.Nursery
    session: Session
    settings: GatewaySettings
    #: The agent's side, for the pings (None once the session is over).
    agent: Side | None
    ended: Ended | None = None
    #: When the agent last sent anything, and the ping out since then (``trio.current_time()``).
    last_heard: float = 0.0
    pinged_at: float | None = None
    #: When the keepalive sweep looks at this session next (its heap entry of that time), and
    #: whether it found the session past its time when it last looked.
    due: float = 0.0
    warned: bool = False

    def end(self, inbound: bool, exc: BaseException | None = None) -> None:
        """One direction is over (``exc``: how, if it raised): stop the other."""
        if isinstance(exc, Ended):
            self.ended = self.ended or exc
        elif exc is not None:  # its stream broke or was closed
            self.ended = self.ended or Ended(inbound, 1006, None)
        self.nursery.cancel_scope.cancel()


async def forward(src: Side, dst: Side, inbound: bool, write_timeout: float,
                   counters: Counters, bytes_metric: Counter, messages_metric: Counter,
                   relaying: Relaying) -> None:
    """Relay ``src`` to ``dst`` until ``src`` ends, then end the relay (``relaying.end``, with
    the ``Ended`` or the broken stream that ended it). It is a task's whole body, with no
    wrapper frame (memory per idle session). It waits for data with no timer: on the agent's
    side (``inbound``) it notes when it last heard from the agent, and the keepalive sweep
    (``gateway.relay.keepalive``) pings and evicts. Every write, to either side, must finish
    within ``write_timeout`` (one timer per chunk read: see the module docstring). The relay
    metrics are added to as each message completes (and for a message cut short, when the
    direction ends)."""
    reader = src.reader
    unreported = 0  # payload bytes relayed and not yet added to bytes_metric
    try:
        while True:
            data: bytes | bytearray
            if src.pending:
                data, src.pending = src.pending, b""
            else:
                if src.readable is not None:
                    await src.readable()
                data = await src.stream.receive_some(RECV_BYTES)
            if not data:
                raise Ended(inbound, 1006, None)
            if inbound:
                relaying.last_heard = trio.current_time()
                relaying.pinged_at = None
            payload_before, messages_before = reader.payload_bytes, reader.messages
            items = reader.feed(data)
            last = len(items) - 1
            for index, item in enumerate(items):
                if isinstance(item, Close):
                    src.close_received = True
                    raise Ended(inbound, item.code, item.reason)
                if isinstance(item, Violation):
                    too_big = item.code == CLOSE_TOO_BIG
                    raise Ended(inbound, item.code, item.reason, too_big=too_big,
                                 protocol_error=not too_big)
                with trio.move_on_after(write_timeout) as write_timer:
                    await dst.write(item, in_frame=reader.in_frame and index == last)
                if write_timer.cancelled_caught:  # that side stopped reading
                    raise Ended(not inbound, 1006, None, stalled=True)
            relayed = reader.payload_bytes - payload_before
            if relayed:
                unreported += relayed
                if inbound:
                    counters.bytes_in += relayed
                else:
                    counters.bytes_out += relayed
            completed = reader.messages - messages_before
            if completed:
                if inbound:
                    counters.messages_in += completed
                else:
                    counters.messages_out += completed
                messages_metric.inc(completed)
                bytes_metric.inc(unreported)
                unreported = 0
    except (Ended, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        relaying.end(inbound, exc)
    finally:
        if unreported:
            bytes_metric.inc(unreported)


async def close_sides(owed: list[tuple[Side, CloseOwed]], close_timeout_s: float) -> None:
    """Finish each side's closing handshake: answer its close, or send ours and wait for the
    answer; the closes go out first (the agent's first), then the answers are read, so the two
    round trips overlap and the whole waits at most ``close_timeout_s``. Never raises for a peer
    that is gone; writes nothing to a side whose last write was cut off or whose stream is inside
    a relayed frame (the stream is just closed). Not shielded: the caller runs it outside the
    session's cancel scope, so an eviction cannot cut it, and a cancellation from outside (the
    end of a shutdown's drain) ends it at once."""
    with trio.move_on_after(close_timeout_s):
        waiting = []
        for side, (code, reason) in owed:
            if side.cut or side.in_frame:
                continue
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError,
                                     trio.BusyResourceError):
                await side.inject(close_frame(code, reason, mask=side.mask))
                waiting.append(side)
        for side in waiting:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError,
                                     trio.BusyResourceError):
                await _close_answer(side)


async def _close_answer(side: Side) -> None:
    """Read until the side's close (anything else it sends is dropped), its EOF, or a frame that
    makes no sense."""
    while not side.close_received:
        data = side.pending or await side.stream.receive_some(RECV_BYTES)
        side.pending = b""
        if not data:
            return
        items = side.reader.feed(data)
        if items and isinstance(items[-1], Violation):
            return  # no answer will make sense: just close
        side.close_received = bool(items) and isinstance(items[-1], Close)


def _passable(code: int) -> int:
    """A received close code that may be sent on (1005, 1006 and 1015 never go on the wire)."""
    return CLOSE_NORMAL if code in (1005, 1006, 1015) or not 1000 <= code <= 4999 else code


CloseOwed = tuple[int, str | None]


def outcome(eviction: str | None, ended: Ended | None
             ) -> tuple[str, CloseOwed | None, CloseOwed | None]:
    """Pure: the session's close reason and the close (code, reason) owed to the agent and to the
    upstream, from an eviction or from whichever side ended first."""
    if eviction is not None:
        code = CLOSE_GOING_AWAY if eviction == "shutdown" else CLOSE_POLICY
        return eviction, (code, eviction), (CLOSE_GOING_AWAY, "agent_evicted")
    if ended is None:  # cannot happen: a relay ends only through one of the two
        return "closed", (CLOSE_INTERNAL, None), (CLOSE_GOING_AWAY, None)
    if ended.stalled:  # the stalled side is not reading: it gets no close frame
        if ended.agent_side:
            return "agent_write_timeout", None, (CLOSE_GOING_AWAY, "agent_write_timeout")
        return "upstream_write_timeout", (CLOSE_UPSTREAM_FAILED, "upstream_write_timeout"), None
    if ended.protocol_error:  # the side that broke the protocol is told so, with the code
        owed = (ended.code, ended.text)
        if ended.agent_side:
            return "agent_protocol_error", owed, (CLOSE_GOING_AWAY, "agent_protocol_error")
        return "upstream_protocol_error", (CLOSE_UPSTREAM_FAILED, "upstream_protocol_error"), owed
    # A side that vanished (1006) gets no close: nobody is there to answer it.
    vanished = ended.code == 1006
    if ended.agent_side:
        if ended.too_big:
            return "agent_message_too_big", (CLOSE_TOO_BIG, "message_too_big"), \
                (CLOSE_GOING_AWAY, "agent_message_too_big")
        return f"agent_closed_{ended.code}", \
            None if vanished else (_passable(ended.code), ended.text), \
            (_passable(ended.code), ended.text)
    if ended.too_big:
        return "upstream_message_too_big", (CLOSE_UPSTREAM_FAILED, "upstream_message_too_big"), \
            (CLOSE_TOO_BIG, "message_too_big")
    if ended.code in (1005, 1006, 1015):
        return "upstream_failed", (CLOSE_UPSTREAM_FAILED, "upstream_failed"), \
            None if vanished else (CLOSE_NORMAL, None)
    return f"upstream_closed_{ended.code}", (_passable(ended.code), ended.text), \
        (_passable(ended.code), ended.text)
