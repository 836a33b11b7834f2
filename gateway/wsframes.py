"""WebSocket frames for a relay that forwards them as they are (RFC 6455 section 5): pure code.

Theory of operation: after both opening handshakes the relay does not decode and re-encode
messages. Frames from the agent (masked, as a client's must be) go to the upstream unchanged —
the relay is the upstream's client, and the agent's masking serves as its own — and frames from
the upstream (unmasked, as a server's) go to the agent unchanged. ``FrameReader`` splits one
direction's byte stream into runs of bytes to forward as they are and the few frames the relay
acts on itself:

* a Close frame ends the direction (``Close``, with its code and reason): the relay's close
  logic decides what each side is told;
* a Pong carrying the payload of the relay's own liveness ping (``expect_pong``) is consumed;
* everything else — data frames, Pings, other Pongs — is forwarded, so pings between the agent
  and its upstream work end to end.

It checks what an intermediary must, with no extension negotiated (sections 5.2 to 5.5): RSV bits
clear, known opcodes, masking as the direction requires, control frames final and at most 125
bytes, continuation frames only inside a fragmented message and new messages only outside one,
and the message size limit — from each frame's header, before any byte of that frame is
forwarded. A violation ends the reader's output with a ``Violation``: the close code owed (1002
protocol error, 1007 bad close reason, 1009 message too big) and a reason; the frames before it
are forwarded, whatever the chunks the bytes came in. Text is not checked for UTF-8 on the way:
the endpoint that reads it does that.

Memory and work: a header is held back until complete (at most 14 bytes) and a control frame
until whole (at most 131); data payloads are never buffered or copied — a chunk that lies inside
one frame is forwarded as the very object that was read. ``in_frame`` says the bytes forwarded
so far end inside a frame: the relay must not inject a frame of its own into that stream then.
"""

from __future__ import annotations

import os

import attrs

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

CLOSE_PROTOCOL_ERROR = 1002
CLOSE_BAD_DATA = 1007
CLOSE_TOO_BIG = 1009
#: A Close frame without a code reads as 1005 (never sent on the wire, RFC 6455 7.1.5).
CLOSE_NO_CODE = 1005
#: Close codes a peer may not send (RFC 6455 7.4.1; 1012-1014 are registered since).
_FORBIDDEN_CODES = frozenset({1004, 1005, 1006, 1015})
_MAX_CONTROL_PAYLOAD = 125


@attrs.frozen
class Close:
    """A Close frame received: the code (1005 when it carried none) and the reason."""

    code: int
    reason: str | None


@attrs.frozen
class Violation:
    """The peer broke the protocol or the size limit: ``code`` is the close code it is owed,
    ``reason`` a stable code for logs and metrics."""

    code: int
    reason: str


class FrameError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.violation = Violation(code, reason)


Item = bytes | bytearray | memoryview | Close | Violation


class FrameReader:
    """One direction's frames (see the module docstring). ``masked``: frames from this peer must
    be masked (it is a client: the agent) or must not be (a server: the upstream)."""

    __slots__ = ("_masked", "_max_message", "_held", "_remaining", "_fin", "_in_message",
                 "_message_size", "expect_pong", "payload_bytes", "messages")

    def __init__(self, *, masked: bool, max_message_bytes: int) -> None:
        self._masked = masked
        self._max_message = max_message_bytes
        self._held = b""  # an incomplete header or control frame
        self._remaining = 0  # payload bytes of the current data frame not yet seen
        self._fin = False
        self._in_message = False
        self._message_size = 0
        #: The payload of the relay's outstanding ping to this peer; its Pong is consumed.
        self.expect_pong: bytes | None = None
        #: Data payload bytes and complete messages seen so far (for counters).
        self.payload_bytes = 0
        self.messages = 0

    @property
    def in_frame(self) -> bool:
        return self._remaining > 0

    def feed(self, data: bytes | bytearray) -> list[Item]:
        """The runs to forward, in order, ending with a ``Close`` or a ``Violation`` if one
        came: what came before it is still forwarded, nothing after it is read (the reader is
        done then)."""
        if self._held:
            data = self._held + data
            self._held = b""
        out: list[Item] = []
        size = len(data)
        at = 0  # where the frame (or the rest of the current payload) starts
        run = 0  # where the current forwarded run starts
        try:
            return self._scan(data, size, at, run, out)
        except FrameError as exc:
            return out + [exc.violation]

    def _scan(self, data: bytes | bytearray, size: int, at: int, run: int, out: list[Item]
              ) -> list[Item]:
        while at < size:
            if self._remaining:
                take = min(self._remaining, size - at)
                at += take
                self._remaining -= take
                self.payload_bytes += take
                if not self._remaining and self._fin:
                    self.messages += 1
                continue
            try:
                header = self._header(data, at, size)
            except FrameError:
                if run < at:
                    out.append(memoryview(data)[run:at])
                raise
            if header is None:  # incomplete: hold it back
                self._held = bytes(data[at:])
                break
            opcode, fin, length, header_size = header
            if opcode >= OP_CLOSE:
                total = header_size + length
                if size - at < total:
                    self._held = bytes(data[at:])
                    break
                if opcode == OP_CLOSE or (opcode == OP_PONG and self.expect_pong is not None
                                          and self._payload(data, at, header_size, length)
                                          == self.expect_pong):
                    if run < at:
                        out.append(memoryview(data)[run:at])
                    if opcode == OP_CLOSE:
                        out.append(self._close(self._payload(data, at, header_size, length)))
                        return out
                    self.expect_pong = None
                    at += total
                    run = at
                    continue
                at += total  # a Ping or another Pong: forwarded with the run
                continue
            try:
                self._data_frame(opcode, fin, length)
            except FrameError:
                if run < at:
                    out.append(memoryview(data)[run:at])
                raise
            at += header_size
            self._remaining = length
            if not length and fin:
                self.messages += 1
        if run == 0 and at >= size and not self._held:
            out.append(data)  # the whole chunk, as it was read
        else:
            end = size - len(self._held)
            if run < end:
                out.append(memoryview(data)[run:end])
        return out

    def _header(self, data: bytes | bytearray, at: int, size: int
                ) -> tuple[int, bool, int, int] | None:
        """(opcode, fin, payload length, header size) of the frame at ``at``, or None when the
        header is not all there. Checks what can be checked from the header alone."""
        if size - at < 2:
            return None
        first, second = data[at], data[at + 1]
        if first & 0x70:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "rsv_bits_set")
        if bool(second & 0x80) is not self._masked:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "masking_wrong")
        opcode, fin = first & 0x0F, bool(first & 0x80)
        length = second & 0x7F
        header_size = 2 + (4 if self._masked else 0)
        if length == 126:
            header_size += 2
        elif length == 127:
            header_size += 8
        if size - at < header_size:
            return None
        if length == 126:
            length = int.from_bytes(data[at + 2:at + 4], "big")
        elif length == 127:
            length = int.from_bytes(data[at + 2:at + 10], "big")
            if length >> 63:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "bad_length")
        if opcode >= OP_CLOSE:
            if opcode not in (OP_CLOSE, OP_PING, OP_PONG):
                raise FrameError(CLOSE_PROTOCOL_ERROR, "unknown_opcode")
            if not fin or length > _MAX_CONTROL_PAYLOAD:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "bad_control_frame")
        return opcode, fin, length, header_size

    def _data_frame(self, opcode: int, fin: bool, length: int) -> None:
        if opcode == OP_CONTINUATION:
            if not self._in_message:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "unexpected_continuation")
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._in_message:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "message_interrupted")
            self._message_size = 0
        else:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "unknown_opcode")
        self._message_size += length
        if self._message_size > self._max_message:
            raise FrameError(CLOSE_TOO_BIG, "message_too_big")
        self._in_message = not fin
        self._fin = fin

    def _payload(self, data: bytes | bytearray, at: int, header_size: int, length: int) -> bytes:
        payload = bytes(data[at + header_size:at + header_size + length])
        if self._masked:
            key = data[at + header_size - 4:at + header_size]
            payload = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
        return payload

    @staticmethod
    def _close(payload: bytes) -> Close:
        if not payload:
            return Close(CLOSE_NO_CODE, None)
        if len(payload) == 1:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "bad_close_frame")
        code = int.from_bytes(payload[:2], "big")
        if not 1000 <= code <= 4999 or code in _FORBIDDEN_CODES:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "bad_close_code")
        try:
            reason = payload[2:].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FrameError(CLOSE_BAD_DATA, "bad_close_reason") from exc
        return Close(code, reason or None)


def frame(opcode: int, payload: bytes, *, mask: bool) -> bytes:
    """One final frame; masked (with a fresh random key) when it goes to a server."""
    length = len(payload)
    mask_bit = 0x80 if mask else 0
    if length < 126:
        header = bytes((0x80 | opcode, mask_bit | length))
    elif length < 1 << 16:
        header = bytes((0x80 | opcode, mask_bit | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, mask_bit | 127)) + length.to_bytes(8, "big")
    if not mask:
        return header + payload
    key = os.urandom(4)
    return header + key + bytes(b ^ key[i & 3] for i, b in enumerate(payload))


def close_frame(code: int, reason: str | None, *, mask: bool) -> bytes:
    """A Close frame; the reason is cut (at a character boundary) to fit 125 bytes."""
    text = (reason or "").encode("utf-8")[:_MAX_CONTROL_PAYLOAD - 2]
    text = text.decode("utf-8", "ignore").encode("utf-8")
    return frame(OP_CLOSE, code.to_bytes(2, "big") + text, mask=mask)


def ping_frame(payload: bytes, *, mask: bool) -> bytes:
    return frame(OP_PING, payload, mask=mask)
