"""The keepalive sweep (gateway/relay/keepalive.py) over memory streams with Trio's autojump
clock: one sweep per run, no timer per idle session, a heap that does not grow with the pings,
the grace before an eviction, a ping retried when the agent's stream is inside a frame, and an
ended session's entry letting its streams go. The behaviour the agent sees (pings, idle and
ping timeouts, stalls) is test_relay_pump.py's."""

from __future__ import annotations

import gc
import weakref

import trio
import trio.testing
from wsproto.events import BytesMessage, CloseConnection, Ping

from config.model import GatewaySettings
from gateway.relay import keepalive as keepalive_module
from gateway.relay.keepalive import Keepalive
from gateway.relay.pump import Relaying
from gateway.sessions import SessionRegistry
from tests.unit.test_relay_pump import _start


def _relaying(registry: SessionRegistry) -> list[Relaying]:
    """The relaying state of ``registry``'s sessions."""
    sessions = set(map(id, registry))
    return [obj for obj in gc.get_objects()
            if isinstance(obj, Relaying) and id(obj.session) in sessions]


async def test_one_sweep_per_run_and_idle_sessions_wait_with_no_timer_of_their_own(
        autojump_clock: trio.abc.Clock) -> None:
    settings = GatewaySettings(ping_interval_s=30, idle_timeout_s=300)
    async with trio.open_nursery() as nursery:
        rigs = [await _start(nursery, settings) for _ in range(20)]
        assert Keepalive.current() is Keepalive.current()
        # Twenty idle sessions, each watched once, and one timer in all: the sweep's.
        assert len(Keepalive.current()) == 20
        stats = trio.lowlevel.current_statistics()
        assert stats.seconds_to_next_deadline == 30
        nursery.cancel_scope.cancel()
    del rigs


async def test_the_heap_does_not_grow_with_pings_and_data(autojump_clock: trio.abc.Clock) -> None:
    settings = GatewaySettings(ping_interval_s=5, idle_timeout_s=300)
    async with trio.open_nursery() as nursery:
        rig = await _start(nursery, settings)
        for n in range(200):  # 1,000 s: 200 pings answered, a message now and then
            if n % 7 == 0:
                await rig.agent.send(BytesMessage(data=b"m"))
                assert await rig.upstream.message() == b"m"
            with trio.move_on_after(5):
                while True:
                    await rig.agent.next_event()  # answers the pings
            assert len(Keepalive.current()) <= 2
        assert not rig.result
        nursery.cancel_scope.cancel()


async def test_a_pong_that_arrives_in_the_grace_keeps_the_session(
        autojump_clock: trio.abc.Clock) -> None:
    settings = GatewaySettings(ping_interval_s=10, idle_timeout_s=300)
    async with trio.open_nursery() as nursery:
        rig = await _start(nursery, settings)
        ping = await rig.agent.next_event(answer_pings=False)
        assert isinstance(ping, Ping)
        await trio.sleep(10)  # the answer is due now: the sweep finds it late...
        await trio.sleep(keepalive_module.EVICTION_GRACE_S / 2)
        await rig.agent.send(ping.response())  # ...and it comes within the grace
        await trio.sleep(5)
        assert not rig.result
        # Silent again and not answering: evicted one interval after the next ping, plus grace.
        ping = await rig.agent.next_event(answer_pings=False)
        sent = trio.current_time()
        closing = await rig.agent.next_event(answer_pings=False)
        assert isinstance(closing, CloseConnection) and closing.reason == "ping_timeout"
        waited = trio.current_time() - sent
        assert 10 <= waited <= 10 + 2 * keepalive_module.EVICTION_GRACE_S
        await rig.agent.send(closing.response())
    assert rig.result == ["ping_timeout"]


async def test_a_ping_that_cannot_go_between_frames_is_tried_again(
        autojump_clock: trio.abc.Clock) -> None:
    settings = GatewaySettings(ping_interval_s=10, idle_timeout_s=300, write_timeout_s=600)
    async with trio.open_nursery() as nursery:
        rig = await _start(nursery, settings)
        whole = rig.upstream.ws.send(BytesMessage(data=b"z" * 1000))
        await rig.upstream.stream.send_all(whole[:500])  # half a frame, then nothing for 12 s
        await trio.sleep(12)
        assert not rig.result
        await rig.upstream.stream.send_all(whole[500:])
        assert await rig.agent.message() == b"z" * 1000
        started = trio.current_time()
        ping = await rig.agent.next_event(answer_pings=False)
        assert isinstance(ping, Ping)  # within a retry of the frame's end, not an interval
        assert trio.current_time() - started <= keepalive_module.PING_RETRY_S
        nursery.cancel_scope.cancel()


async def test_an_ended_session_is_let_go_before_its_entry_comes_up(
        autojump_clock: trio.abc.Clock) -> None:
    settings = GatewaySettings(ping_interval_s=30, idle_timeout_s=300)
    async with trio.open_nursery() as nursery:
        rig = await _start(nursery, settings)
        [relaying] = _relaying(rig.registry)
        agent_side = relaying.agent
        assert agent_side is not None
        side_ref = weakref.ref(agent_side)
        del agent_side
        await rig.agent.send(CloseConnection(code=1000))
        closing = await rig.upstream.next_event()
        await rig.upstream.send(closing.response())  # type: ignore[attr-defined]
        await rig.agent.next_event()
        await trio.testing.wait_all_tasks_blocked()
        assert rig.result == ["agent_closed_1000"]
        # Its entry is still on the heap (due in 30 s) but holds neither side's stream.
        assert len(Keepalive.current()) == 1 and relaying.agent is None
        del relaying
        gc.collect()
        assert side_ref() is None
        await trio.sleep(31)
        assert len(Keepalive.current()) == 0  # dropped when it came up


class _YieldsAfterSend(trio.abc.Stream):
    """A stream whose writes let every other task run once their bytes are out, as a socket's
    can (``SocketTLSStream`` yields every few calls): the agent's answer to a ping can then be
    read before the task that sent the ping runs again."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)
        await trio.testing.wait_all_tasks_blocked()

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _yielding_pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
    gateway_end, agent_end = trio.testing.memory_stream_pair()
    return _YieldsAfterSend(gateway_end), agent_end


async def test_a_pong_read_before_the_ping_task_runs_again_answers_the_ping(
        autojump_clock: trio.abc.Clock) -> None:
    """The 50,000-session bench found it: agents that answered at once were closed with
    ping_timeout, their pong read (and relayed upstream) before the ping was taken as out."""
    settings = GatewaySettings(ping_interval_s=10, idle_timeout_s=300)
    async with trio.open_nursery() as nursery:
        rig = await _start(nursery, settings, agent_pair=_yielding_pair)

        async def agent() -> None:
            while True:
                await rig.agent.next_event()  # answers every ping at once

        async def upstream() -> None:
            while True:
                event = await rig.upstream.next_event(answer_pings=False)
                raise AssertionError(f"the upstream got {event!r}")

        nursery.start_soon(agent)
        nursery.start_soon(upstream)
        await trio.sleep(120)  # a dozen pings, each answered at once
        assert not rig.result, rig.result
        nursery.cancel_scope.cancel()
