"""The relay's frame reader and frame builders (gateway.wsframes), as pure functions. Frames are
made and read back with wsproto, an independent implementation of RFC 6455."""

from __future__ import annotations

import random

import pytest
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from gateway.wsframes import (
    OP_PING,
    OP_PONG,
    Close,
    FrameReader,
    Violation,
    close_frame,
    frame,
    ping_frame,
)

LIMIT = 1 << 20


def agent_bytes(*events: object) -> bytes:
    """What an agent (a WebSocket client: masked frames) sends for ``events``."""
    ws = Connection(ConnectionType.CLIENT)
    return b"".join(ws.send(e) for e in events)  # type: ignore[arg-type]


def upstream_bytes(*events: object) -> bytes:
    """What an upstream (a server: unmasked frames) sends."""
    ws = Connection(ConnectionType.SERVER)
    return b"".join(ws.send(e) for e in events)  # type: ignore[arg-type]


def forwarded(items: list[object]) -> bytes:
    return b"".join(bytes(i) for i in items if not isinstance(i, Close | Violation))  # type: ignore[arg-type]


def read_back(data: bytes, side: ConnectionType) -> list[object]:
    ws = Connection(side)
    ws.receive_data(data)
    return list(ws.events())


# --- ok: what passes ----------------------------------------------------------------------------


def test_ok_frames_pass_unchanged_in_both_directions() -> None:
    stream = agent_bytes(TextMessage("hello"), BytesMessage(b"\x00" * 70000), Ping(b"p"))
    reader = FrameReader(masked=True, max_message_bytes=LIMIT)
    assert forwarded(reader.feed(stream)) == stream
    assert (reader.messages, reader.payload_bytes) == (2, 5 + 70000)
    # ... and the upstream reads them as the agent sent them (the agent's masking serves).
    events = read_back(stream, ConnectionType.SERVER)
    assert [type(e) for e in events] == [TextMessage, BytesMessage, Ping]
    down = upstream_bytes(TextMessage("hi"), Pong(b"p"))
    reader = FrameReader(masked=False, max_message_bytes=LIMIT)
    assert forwarded(reader.feed(down)) == down


def test_ok_a_chunk_inside_one_frame_is_forwarded_as_the_object_read() -> None:
    stream = agent_bytes(BytesMessage(b"y" * 50000))
    reader = FrameReader(masked=True, max_message_bytes=LIMIT)
    first, rest = stream[:20000], stream[20000:]
    [item] = reader.feed(first)
    assert item is first and reader.in_frame  # header and payload start: one run, the chunk
    middle, end = rest[:10000], rest[10000:]
    [item] = reader.feed(middle)
    assert item is middle  # no copy
    assert reader.in_frame
    assert forwarded(reader.feed(end)) == end
    assert not reader.in_frame and reader.messages == 1


@pytest.mark.parametrize("seed", range(20))
def test_ok_any_chunking_forwards_the_same_bytes_and_counts(seed: int) -> None:
    rng = random.Random(seed)
    events: list[object] = []
    for _ in range(30):
        kind = rng.choice(["text", "bytes", "fragmented", "ping", "pong"])
        if kind == "text":
            events.append(TextMessage("é" * rng.randint(0, 300)))
        elif kind == "bytes":
            events.append(BytesMessage(rng.randbytes(rng.choice([0, 1, 125, 126, 65535, 65536, 70000]))))
        elif kind == "fragmented":
            events.append(BytesMessage(b"a" * rng.randint(0, 200), message_finished=False))
            events.append(Ping(b"mid"))  # control frames may come between fragments
            events.append(BytesMessage(b"b" * rng.randint(0, 200), message_finished=True))
        else:
            events.append((Ping if kind == "ping" else Pong)(rng.randbytes(rng.randint(0, 125))))
    stream = agent_bytes(*events)
    reader = FrameReader(masked=True, max_message_bytes=LIMIT)
    out, at = [], 0
    while at < len(stream):
        step = rng.choice([1, 2, 3, 7, 14, 100, 4096, 16384])
        out.extend(reader.feed(stream[at:at + step]))
        at += step
    assert forwarded(out) == stream
    messages = sum(1 for e in events if isinstance(e, TextMessage | BytesMessage) and e.message_finished)
    assert reader.messages == messages and not reader.in_frame


def test_ok_the_pong_to_the_relays_own_ping_is_consumed_and_others_pass() -> None:
    reader = FrameReader(masked=True, max_message_bytes=LIMIT)
    reader.expect_pong = b"\x01\x02\x03\x04"
    stream = agent_bytes(TextMessage("a"), Pong(b"other"), Pong(b"\x01\x02\x03\x04"), TextMessage("b"))
    out = reader.feed(stream)
    assert read_back(forwarded(out), ConnectionType.SERVER) == [
        TextMessage("a"), Pong(b"other"), TextMessage("b")]
    assert reader.expect_pong is None


@pytest.mark.parametrize(("close", "expected"), [
    (CloseConnection(code=4001, reason="bye"), Close(4001, "bye")),
    (CloseConnection(code=1000), Close(1000, None)),
])
def test_ok_a_close_ends_the_output_after_what_came_before(close: CloseConnection, expected: Close) -> None:
    reader = FrameReader(masked=True, max_message_bytes=LIMIT)
    stream = agent_bytes(TextMessage("last"), close) + b"ignored after the close"
    out = reader.feed(stream)
    assert out[-1] == expected
    assert read_back(forwarded(out), ConnectionType.SERVER) == [TextMessage("last")]


def test_ok_a_close_without_a_code_reads_as_1005() -> None:
    assert FrameReader(masked=False, max_message_bytes=LIMIT).feed(frame(0x8, b"", mask=False)) == [
        Close(1005, None)]


# --- fail: what is refused, and with which code -------------------------------------------------


def _refusal(data: bytes, *, masked: bool = True, limit: int = LIMIT) -> Violation:
    out = FrameReader(masked=masked, max_message_bytes=limit).feed(data)
    assert isinstance(out[-1], Violation), out
    return out[-1]


@pytest.mark.parametrize(("data", "masked", "violation"), [
    (bytes([0xC1, 0x80]) + b"\0" * 4, True, Violation(1002, "rsv_bits_set")),  # RSV1: no extension
    (frame(0x1, b"x", mask=False), True, Violation(1002, "masking_wrong")),  # agent unmasked
    (frame(0x1, b"x", mask=True), False, Violation(1002, "masking_wrong")),  # upstream masked
    (frame(0x3, b"x", mask=True), True, Violation(1002, "unknown_opcode")),
    (frame(0xB, b"x", mask=True), True, Violation(1002, "unknown_opcode")),
    (frame(OP_PING, b"x" * 126, mask=True), True, Violation(1002, "bad_control_frame")),
    (bytes([0x09, 0x80]) + b"\0" * 4, True, Violation(1002, "bad_control_frame")),  # not final
    (frame(0x0, b"x", mask=True), True, Violation(1002, "unexpected_continuation")),
    (bytes([0x01, 0x81]) + b"\0" * 4 + b"a" + frame(0x1, b"b", mask=True), True,
     Violation(1002, "message_interrupted")),
    (bytes([0x82, 0xFF]) + (1 << 63).to_bytes(8, "big") + b"\0" * 4, True, Violation(1002, "bad_length")),
    (frame(0x8, b"\x03", mask=True), True, Violation(1002, "bad_close_frame")),
    (frame(0x8, (1005).to_bytes(2, "big"), mask=True), True, Violation(1002, "bad_close_code")),
    (frame(0x8, (999).to_bytes(2, "big"), mask=True), True, Violation(1002, "bad_close_code")),
    (frame(0x8, (1000).to_bytes(2, "big") + b"\xff", mask=True), True, Violation(1007, "bad_close_reason")),
])
def test_fail_protocol_violations_end_with_the_code_owed(data: bytes, masked: bool,
                                                         violation: Violation) -> None:
    assert _refusal(data, masked=masked) == violation


def test_fail_a_message_over_the_limit_is_refused_from_the_header_before_any_of_its_bytes() -> None:
    stream = agent_bytes(BytesMessage(b"a" * 400, message_finished=False),
                         BytesMessage(b"b" * 400, message_finished=False),
                         BytesMessage(b"c" * 400, message_finished=True))
    out = FrameReader(masked=True, max_message_bytes=1000).feed(stream)
    assert out[-1] == Violation(1009, "message_too_big")
    relayed = read_back(forwarded(out), ConnectionType.SERVER)
    assert [len(e.data) for e in relayed] == [400, 400]  # type: ignore[attr-defined]


# --- frames of the relay's own ------------------------------------------------------------------


@pytest.mark.parametrize("mask", [True, False])
def test_built_frames_read_back(mask: bool) -> None:
    """Masked frames (to the upstream) read back by a server, unmasked (to the agent) by a
    client, at every length encoding."""
    side = ConnectionType.SERVER if mask else ConnectionType.CLIENT
    data = (ping_frame(b"abcd", mask=mask) + frame(OP_PONG, b"x" * 125, mask=mask)
            + frame(0x2, b"y" * 300, mask=mask) + frame(0x2, b"z" * 70000, mask=mask))
    events = read_back(data, side)
    assert events[:2] == [Ping(b"abcd"), Pong(b"x" * 125)]
    assert [len(e.data) for e in events[2:]] == [300, 70000]  # type: ignore[attr-defined]


def test_a_close_reason_is_cut_at_a_character_boundary_to_fit() -> None:
    data = close_frame(1008, "é" * 100, mask=False)
    [event] = read_back(data, ConnectionType.CLIENT)
    assert isinstance(event, CloseConnection) and event.code == 1008
    assert event.reason == "é" * 61  # 122 bytes: 2 for the code, 123 at most for the reason
