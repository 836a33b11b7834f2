"""The frame pump over memory streams, with Trio's autojump clock: fragments, size limits,
liveness (pings, idle timeout), write deadlines, back-pressure, close codes, a vanishing
upstream, metrics and the log line. Both peers are plain wsproto connections driven by the
test, so every frame the gateway sends is seen."""

from __future__ import annotations

from collections.abc import Callable

import attrs
import pytest
import structlog
import trio
import trio.testing
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, Pong, TextMessage

from config.model import GatewaySettings
from gateway.metrics import Metrics
from gateway.peer import Decision
from gateway.relay import pump
from gateway.relay import session as relay_session
from gateway.sessions import Session, SessionRegistry

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


StreamPair = Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]]


async def _start(nursery: trio.Nursery, settings: GatewaySettings, *,
                 agent_pair: StreamPair = trio.testing.memory_stream_pair,
                 upstream_pair: StreamPair = trio.testing.memory_stream_pair) -> Rig:
    """A relaying session between two test peers. ``lockstep_stream_pair`` for a side makes its
    writes wait until the peer reads them (a real socket's back-pressure, with no buffer)."""
    gw_agent, agent_end = agent_pair()
    gw_up, up_end = upstream_pair()
    registry, metrics = SessionRegistry(), Metrics()
    rig = Rig(Peer(agent_end, Connection(ConnectionType.CLIENT)),
              Peer(up_end, Connection(ConnectionType.SERVER)), registry, metrics)

    async def run() -> None:
        # As run_session does once the upgrade is done: registered, the pump inside the
        # session's scope (an eviction ends it there), the closing outside it.
        session = Session(DECISION, trio.CancelScope(), "127.0.0.1:1")
        registry.add(session)
        relay = relay_session.Relay(pump.Side.agent(gw_agent, settings.max_message_bytes),
                                    pump.Side.upstream(gw_up, settings.max_message_bytes),
                                    session, settings, metrics)
        try:
            with session.cancel_scope:
                await relay.pump()
            rig.result.append(await relay.finish())
        finally:
            registry.remove(session)

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
    assert pump.outcome("revoked_key", None) == ("revoked_key", (1008, "revoked_key"), (1001, "agent_evicted"))
    assert pump.outcome("shutdown", None)[1] == (1001, "shutdown")
    vanished = pump.outcome(None, pump.Ended(True, 1006, None))
    assert vanished == ("agent_closed_1006", None, (1000, None))
    assert pump.outcome(None, pump.Ended(False, 1006, None)) == \
        ("upstream_failed", (1011, "upstream_failed"), None)
    assert pump.outcome(None, pump.Ended(False, 1005, None))[2] == (1000, None)


# --- a stalled peer, back-pressure, metrics and the session's log line ------------------------


async def test_an_upstream_that_stops_reading_ends_the_session_after_write_timeout(
        autojump_clock: trio.abc.Clock) -> None:
    settings = GatewaySettings(write_timeout_s=10, ping_interval_s=30, idle_timeout_s=300)
    with trio.fail_after(3600):  # without a write deadline the session would hang for ever
        async with trio.open_nursery() as nursery:
            rig = await _start(nursery, settings, upstream_pair=trio.testing.lockstep_stream_pair)
            start = trio.current_time()
            await rig.agent.send(BytesMessage(data=b"x" * 1000))  # the upstream never reads it
            closing = await rig.agent.next_event()
            assert isinstance(closing, CloseConnection)
            assert (closing.code, closing.reason) == (1011, "upstream_write_timeout")
            assert trio.current_time() - start == pytest.approx(10, abs=0.5)
            await rig.agent.send(closing.response())
    assert rig.result == ["upstream_write_timeout"]
    assert rig.metrics.registry.get_sample_value(
        "switch_session_ends_total", {"tenant": "demo", "reason": "upstream_write_timeout"}) == 1


async def test_an_agent_that_stops_reading_is_cut_off_although_its_pings_cannot_be_sent(
        autojump_clock: trio.abc.Clock) -> None:
    settings = GatewaySettings(write_timeout_s=10, ping_interval_s=4, idle_timeout_s=300)
    with trio.fail_after(3600):  # pings wait on the same write lock: no ping_timeout either
        async with trio.open_nursery() as nursery:
            rig = await _start(nursery, settings, agent_pair=trio.testing.lockstep_stream_pair)
            start = trio.current_time()
            await rig.upstream.send(BytesMessage(data=b"y" * 1000))  # the agent never reads it
            closing = await rig.upstream.next_event()
            assert isinstance(closing, CloseConnection)
            assert (closing.code, closing.reason) == (1001, "agent_write_timeout")
            assert trio.current_time() - start == pytest.approx(10, abs=0.5)
            await rig.upstream.send(closing.response())
    assert rig.result == ["agent_write_timeout"]


async def test_an_idle_agent_that_does_not_read_its_ping_is_cut_off(
        autojump_clock: trio.abc.Clock) -> None:
    settings = GatewaySettings(write_timeout_s=10, ping_interval_s=30, idle_timeout_s=300)
    with trio.fail_after(3600):
        async with trio.open_nursery() as nursery:
            rig = await _start(nursery, settings, agent_pair=trio.testing.lockstep_stream_pair)
            start = trio.current_time()
            closing = await rig.upstream.next_event()
            assert isinstance(closing, CloseConnection) and closing.reason == "agent_write_timeout"
            assert trio.current_time() - start == pytest.approx(30 + 10, abs=0.5)
            await rig.upstream.send(closing.response())
    assert rig.result == ["agent_write_timeout"]


async def test_a_slow_upstream_reader_slows_the_agent_and_nothing_piles_up_in_between(
        autojump_clock: trio.abc.Clock) -> None:
    settings = GatewaySettings(write_timeout_s=120, ping_interval_s=0, idle_timeout_s=0)
    message = bytes(range(256)) * 16  # 4 KiB
    sent = 0
    async with trio.open_nursery() as nursery:
        rig = await _start(nursery, settings, agent_pair=trio.testing.lockstep_stream_pair,
                           upstream_pair=trio.testing.lockstep_stream_pair)

        async def agent_writes() -> None:
            nonlocal sent
            for _ in range(40):
                await rig.agent.send(BytesMessage(data=message))
                sent += 1

        nursery.start_soon(agent_writes)
        await trio.sleep(60)  # the upstream reads nothing for a minute
        # The gateway holds the one message it could not deliver and reads no further, so the
        # agent's own write of the next one cannot finish: one message ahead, never forty.
        assert sent == 1
        for _ in range(40):
            assert await rig.upstream.message() == message
        await trio.testing.wait_all_tasks_blocked()
        assert sent == 40
        nursery.cancel_scope.cancel()


async def test_relay_metrics_move_with_each_message_and_the_session_logs_one_line(
        autojump_clock: trio.abc.Clock) -> None:
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            rig = await _start(nursery, GatewaySettings())

            def sample(name: str, direction: str) -> float | None:
                return rig.metrics.registry.get_sample_value(
                    name, {"tenant": "demo", "direction": direction})

            await rig.agent.send(TextMessage(data="abc", message_finished=False))
            assert await rig.upstream.next_event() == TextMessage(data="abc", message_finished=False)
            # Added once per message, not per frame: nothing yet.
            assert sample("switch_relay_messages_total", "in") == sample(
                "switch_relay_bytes_total", "in") == 0
            await rig.agent.send(TextMessage(data="de"))
            assert await rig.upstream.message() == "de"
            assert sample("switch_relay_messages_total", "in") == 1
            assert sample("switch_relay_bytes_total", "in") == 5
            await rig.upstream.send(BytesMessage(data=b"12345678"))
            assert await rig.agent.message() == b"12345678"
            assert (sample("switch_relay_messages_total", "out"),
                    sample("switch_relay_bytes_total", "out")) == (1, 8)
            await trio.sleep(2)
            await rig.agent.send(CloseConnection(code=1000))
            closing = await rig.upstream.next_event()
            await rig.upstream.send(closing.response())  # type: ignore[attr-defined]
    lines = [entry for entry in logs if entry["event"] == "session"]
    assert len(lines) == 1
    line = lines[0]
    assert {k: line[k] for k in ("tenant", "identity", "trust", "key_id", "serial", "peer",
                                 "bytes_in", "bytes_out", "messages_in", "messages_out",
                                 "close_reason")} == {
        "tenant": "demo", "identity": "urn:switch:demo:a1", "trust": "provisioned",
        "key_id": None, "serial": None, "peer": "127.0.0.1:1", "bytes_in": 5, "bytes_out": 8,
        "messages_in": 1, "messages_out": 1, "close_reason": "agent_closed_1000"}
    assert line["duration_s"] == pytest.approx(2, abs=0.1)
    assert line["log_level"] == "info"


# --- frames forwarded as they are -----------------------------------------------------------


async def test_pings_between_the_agent_and_its_upstream_pass_end_to_end(
        autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        rig = await _start(nursery, GatewaySettings(ping_interval_s=0, idle_timeout_s=0))
        await rig.agent.send(Ping(b"from-agent"))
        assert await rig.upstream.next_event(answer_pings=False) == Ping(b"from-agent")
        await rig.upstream.send(Pong(b"from-agent"))
        assert await rig.agent.next_event() == Pong(b"from-agent")
        await rig.upstream.send(Ping(b"from-upstream"))
        assert await rig.agent.next_event(answer_pings=False) == Ping(b"from-upstream")
        nursery.cancel_scope.cancel()


async def test_an_agent_that_breaks_the_protocol_gets_1002_and_the_upstream_1001(
        autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        rig = await _start(nursery, GatewaySettings())
        await rig.agent.send(TextMessage(data="fine"))
        assert await rig.upstream.message() == "fine"
        await rig.agent.stream.send_all(b"\x81\x01x")  # an unmasked frame from a client
        closing = await rig.agent.next_event()
        assert isinstance(closing, CloseConnection)
        assert (closing.code, closing.reason) == (1002, "masking_wrong")
        gone = await rig.upstream.next_event()
        assert isinstance(gone, CloseConnection) and (gone.code, gone.reason) == (1001, "agent_protocol_error")
        await rig.upstream.send(gone.response())
    assert rig.result == ["agent_protocol_error"]


async def test_no_ping_goes_into_the_middle_of_a_relayed_frame(autojump_clock: trio.abc.Clock) -> None:
    """The upstream sends half of a frame and stalls past the ping interval: the gateway's ping
    waits for the frame's end (the agent's parser would break on a ping inside it)."""
    settings = GatewaySettings(ping_interval_s=10, idle_timeout_s=300, write_timeout_s=600)
    async with trio.open_nursery() as nursery:
        rig = await _start(nursery, settings)
        whole = Connection(ConnectionType.SERVER).send(BytesMessage(data=b"z" * 1000))
        await rig.upstream.stream.send_all(whole[:500])
        with trio.move_on_after(35):  # three ping intervals; the agent keeps talking
            while True:
                await rig.agent.send(TextMessage(data="still here"))
                await trio.sleep(5)
        await rig.upstream.stream.send_all(whole[500:])
        assert await rig.agent.message() == b"z" * 1000  # whole, not split by a ping
        await trio.sleep(11)  # the agent is silent: now the ping comes, between frames
        assert isinstance(await rig.agent.next_event(answer_pings=False), Ping)
        nursery.cancel_scope.cancel()


async def test_an_eviction_inside_a_relayed_frame_closes_the_agent_without_a_close_frame(
        autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        rig = await _start(nursery, GatewaySettings())
        whole = Connection(ConnectionType.SERVER).send(BytesMessage(data=b"z" * 1000))
        await rig.upstream.stream.send_all(whole[:500])
        await trio.testing.wait_all_tasks_blocked()
        [session] = list(rig.registry)
        session.evict("key_revoked")
        gone = await rig.upstream.next_event()
        assert isinstance(gone, CloseConnection) and gone.reason == "agent_evicted"
        # The upstream finishes its frame, then answers the close.
        await rig.upstream.stream.send_all(whole[500:])
        await rig.upstream.send(gone.response())
        await trio.testing.wait_all_tasks_blocked()
        assert rig.result == ["key_revoked"]
        data = b""
        with trio.move_on_after(1):
            while True:
                data += await rig.agent.stream.receive_some(65536)
        # The half frame and nothing after it: a close frame there would corrupt the stream
        # (the gateway's listener then closes the connection).
        assert data == whole[:500]


async def test_data_arriving_as_the_ping_timer_fires_is_relayed_not_taken_for_a_stall(
        mock_clock: trio.testing.MockClock) -> None:
    """The agent's message arrives just before the ping deadline but the gateway runs only after
    it (a busy event loop): the timer has fired, and the write that relays the message must not
    be cut off as a stall (a Trio scope stays cancelled once its deadline has passed)."""
    import time

    mock_clock.rate = 1.0  # real time, so that a blocked event loop lets deadlines pass
    settings = GatewaySettings(ping_interval_s=0.2, idle_timeout_s=300, write_timeout_s=30,
                               close_timeout_s=0.1)
    async with trio.open_nursery() as nursery:
        rig = await _start(nursery, settings)
        for n in range(5):
            await trio.sleep(0.18)
            await rig.agent.send(TextMessage(data=f"m{n}"))  # the gateway's read is ready now...
            time.sleep(0.05)  # noqa: ASYNC251 - blocks the loop on purpose: the deadline passes
            with trio.fail_after(5):
                assert await rig.upstream.message() == f"m{n}"
        assert not rig.result and len(rig.registry) == 1
        nursery.cancel_scope.cancel()



async def test_an_evicted_session_closes_the_upstream_while_the_agent_has_not_answered(
        autojump_clock: trio.abc.Clock) -> None:
    """Both closes go out first, then both answers are read: an agent slow to answer its 1008
    does not hold back the upstream's close, and the whole waits one close_timeout at most."""
    settings = GatewaySettings()
    async with trio.open_nursery() as nursery:
        rig = await _start(nursery, settings)
        [session] = list(rig.registry)
        started = trio.current_time()
        session.evict("key_revoked")
        told = await rig.agent.next_event()
        assert isinstance(told, CloseConnection) and told.code == 1008
        gone = await rig.upstream.next_event()  # the agent has not answered
        assert isinstance(gone, CloseConnection) and gone.reason == "agent_evicted"
        await rig.upstream.send(gone.response())
        await trio.testing.wait_all_tasks_blocked()
        assert rig.result == []  # still waiting (bounded) for the agent's answer
        await rig.agent.send(told.response())
        await trio.testing.wait_all_tasks_blocked()
        assert rig.result == ["key_revoked"]
        assert trio.current_time() - started < settings.close_timeout_s


async def test_closing_sides_that_never_answer_waits_one_close_timeout_in_all(
        autojump_clock: trio.abc.Clock) -> None:
    settings = GatewaySettings()
    async with trio.open_nursery() as nursery:
        rig = await _start(nursery, settings)
        [session] = list(rig.registry)
        session.evict("key_revoked")
        assert isinstance(await rig.agent.next_event(), CloseConnection)
        assert isinstance(await rig.upstream.next_event(), CloseConnection)
        await trio.sleep(settings.close_timeout_s - 0.1)
        assert rig.result == []  # still waiting for the answers
        await trio.sleep(0.2)
        assert rig.result == ["key_revoked"]  # one close_timeout, not one per side
