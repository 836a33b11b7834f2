"""The relay over memory streams, with Trio's autojump clock: fragments, size limits, liveness
(pings, idle timeout), close codes and a vanishing upstream. Both peers are plain wsproto
connections driven by the test, so every frame the gateway sends is seen."""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.testing
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, TextMessage

from config.model import GatewaySettings
from gateway import relay
from gateway.metrics import Metrics
from gateway.peer import Decision
from gateway.sessions import SessionRegistry

DECISION = Decision(True, "ok", "demo", trust="provisioned", identity="urn:switch:demo:a1")


@attrs.define
class Peer:
    """The far end of one side: the agent (a WebSocket client) or the upstream (a server)."""

    stream: trio.abc.Stream
    ws: Connection

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.ws.send(event))  # type: ignore[arg-type]

    async def next_event(self, *, answer_pings: bool = True) -> Event:
        while True:
            for event in self.ws.events():
                if isinstance(event, Ping) and answer_pings:
                    await self.send(event.response())
                    continue
                return event
            data = await self.stream.receive_some(65536)
            self.ws.receive_data(bytes(data) if data else None)

    async def message(self) -> bytes | str:
        """One whole message, however the gateway fragmented it."""
        parts: list[bytes | str] = []
        while True:
            event = await self.next_event()
            assert isinstance(event, TextMessage | BytesMessage), event
            parts.append(event.data)
            if event.message_finished:
                return "".join(parts) if isinstance(parts[0], str) else b"".join(parts)  # type: ignore[arg-type]


@attrs.define
class Rig:
    agent: Peer
    upstream: Peer
    registry: SessionRegistry
    metrics: Metrics
    result: list[str] = attrs.field(factory=list)


async def _start(nursery: trio.Nursery, settings: GatewaySettings) -> Rig:
    gw_agent, agent_end = trio.testing.memory_stream_pair()
    gw_up, up_end = trio.testing.memory_stream_pair()
    registry, metrics = SessionRegistry(), Metrics()
    rig = Rig(Peer(agent_end, Connection(ConnectionType.CLIENT)),
              Peer(up_end, Connection(ConnectionType.SERVER)), registry, metrics)

    async def run() -> None:
        rig.result.append(await relay._relay(
            relay._Side(gw_agent, Connection(ConnectionType.SERVER)),
            relay._Side(gw_up, Connection(ConnectionType.CLIENT)),
            DECISION, settings, registry, metrics, "127.0.0.1:1"))

    nursery.start_soon(run)
    await trio.testing.wait_all_tasks_blocked()
    return rig


async def test_messages_and_fragments_flow_both_ways(autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        rig = await _start(nursery, GatewaySettings())
        await rig.agent.send(TextMessage(data="héllo ", message_finished=False))
        await rig.agent.send(TextMessage(data="wörld", message_finished=True))
        assert await rig.upstream.message() == "héllo wörld"
        big = bytes(range(256)) * 1024  # 256 KiB: crosses many reads
        await rig.upstream.send(BytesMessage(data=big))
        assert await rig.agent.message() == big
        await rig.agent.send(CloseConnection(code=4001, reason="bye"))
        event = await rig.upstream.next_event()
        assert isinstance(event, CloseConnection) and (event.code, event.reason) == (4001, "bye")
        await rig.upstream.send(event.response())
        answer = await rig.agent.next_event()
        assert isinstance(answer, CloseConnection) and answer.code == 4001
    assert rig.result == ["agent_closed_4001"]
    assert len(rig.registry) == 0


async def test_a_message_over_the_limit_closes_with_1009_even_when_fragmented(
        autojump_clock: trio.abc.Clock) -> None:
    settings = GatewaySettings(max_message_bytes=1000)
    async with trio.open_nursery() as nursery:
        rig = await _start(nursery, settings)
        for _ in range(3):  # 3 x 400 bytes: each fragment is small, the message is not
            await rig.agent.send(BytesMessage(data=b"x" * 400, message_finished=False))
        events = []
        while not isinstance(event := await rig.upstream.next_event(), CloseConnection):
            events.append(event)
        assert sum(len(e.data) for e in events) == 800  # type: ignore[attr-defined]
        assert (event.code, event.reason) == (1001, "agent_message_too_big")
        closing = await rig.agent.next_event()
        assert isinstance(closing, CloseConnection) and closing.code == 1009
    assert rig.result == ["agent_message_too_big"]


async def test_an_agent_that_answers_pings_stays_and_one_that_stops_is_closed(
        autojump_clock: trio.abc.Clock) -> None:
    settings = GatewaySettings(ping_interval_s=30, idle_timeout_s=300)
    async with trio.open_nursery() as nursery:
        rig = await _start(nursery, settings)

        async def answer_for(seconds: float) -> None:
            with trio.move_on_after(seconds):
                while True:
                    await rig.agent.next_event()

        start = trio.current_time()
        await answer_for(600)  # ten minutes of pings answered: still open
        assert len(rig.registry) == 1 and not rig.result
        # Silence from now on: one ping unanswered for an interval closes the session.
        closing = await rig.agent.next_event(answer_pings=False)
        while isinstance(closing, Ping):
            closing = await rig.agent.next_event(answer_pings=False)
        assert isinstance(closing, CloseConnection)
        assert (closing.code, closing.reason) == (1008, "ping_timeout")
        await rig.agent.send(closing.response())
        gone = await rig.upstream.next_event()
        assert isinstance(gone, CloseConnection) and gone.reason == "agent_evicted"
        await rig.upstream.send(gone.response())
    assert rig.result == ["ping_timeout"]
    assert 600 + 30 <= trio.current_time() - start <= 600 + 61


async def test_without_pings_a_silent_agent_is_closed_after_the_idle_timeout(
        autojump_clock: trio.abc.Clock) -> None:
    settings = GatewaySettings(ping_interval_s=0, idle_timeout_s=120, close_timeout_s=1)
    async with trio.open_nursery() as nursery:
        rig = await _start(nursery, settings)
        start = trio.current_time()
        closing = await rig.agent.next_event()
        assert isinstance(closing, CloseConnection) and closing.reason == "idle_timeout"
        assert trio.current_time() - start == pytest.approx(120, abs=1)
    assert rig.result == ["idle_timeout"]


async def test_an_upstream_that_vanishes_closes_the_agent_with_1011(
        autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        rig = await _start(nursery, GatewaySettings())
        await rig.upstream.stream.aclose()  # no close frame: the connection just ends
        closing = await rig.agent.next_event()
        assert isinstance(closing, CloseConnection)
        assert (closing.code, closing.reason) == (1011, "upstream_failed")
        await rig.agent.send(closing.response())
    assert rig.result == ["upstream_failed"]


async def test_an_upstream_close_code_reaches_the_agent(autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        rig = await _start(nursery, GatewaySettings())
        await rig.upstream.send(CloseConnection(code=4403, reason="not yours"))
        closing = await rig.agent.next_event()
        assert isinstance(closing, CloseConnection) and (closing.code, closing.reason) == (4403, "not yours")
        await rig.agent.send(closing.response())
        answer = await rig.upstream.next_event()
        assert isinstance(answer, CloseConnection) and answer.code == 4403
    assert rig.result == ["upstream_closed_4403"]


def test_outcomes_are_decided_by_the_first_side_to_end() -> None:
    assert relay._outcome("revoked_key", None) == ("revoked_key", (1008, "revoked_key"), (1001, "agent_evicted"))
    assert relay._outcome("shutdown", None)[1] == (1001, "shutdown")
    vanished = relay._outcome(None, relay._Ended(True, 1006, None))
    assert vanished == ("agent_closed_1006", None, (1000, None))
    assert relay._outcome(None, relay._Ended(False, 1006, None)) == \
        ("upstream_failed", (1011, "upstream_failed"), None)
    assert relay._outcome(None, relay._Ended(False, 1005, None))[2] == (1000, None)


@pytest.mark.parametrize(("raw", "status", "reason"), [
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", 405, "not_an_upgrade"),
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 426, "not_an_upgrade"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
     426, "unsupported_websocket_version"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n", 400, "bad_websocket_key"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 40000 + b"\r\n\r\n", 431, "bad_request"),
    (b"\x16\x03\x01 not http at all\r\n\r\n", 400, "bad_request"),
])
async def test_bad_upgrades_are_refused_with_a_status(raw: bytes, status: int, reason: str) -> None:
    gw, client = trio.testing.memory_stream_pair()
    await client.send_all(raw)
    with pytest.raises(relay.UpgradeRefused) as refused:
        await relay._read_upgrade(gw)
    assert (refused.value.status, refused.value.reason) == (status, reason)
