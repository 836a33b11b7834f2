"""The gateway works on a bounded number of handshakes per process (``HANDSHAKES_IN_PROGRESS``,
here 2): a burst of many more agents than that all get their sessions with no refusal (the others
wait in the listen queue, their deadlines not running), and a silent connection holds no place
(it still times out at the first-byte deadline, and agents behind it are served meanwhile)."""

from __future__ import annotations

import functools
import socket
from pathlib import Path

import pytest
import trio
from websockets.sync.client import connect

from gateway import gateway_listener
from gateway.listening import HandshakeCapacity, serve_tcp
from tests.support.est import HOST, make_deployment
from tests.support.gateway import Agent, Gateway, add_acme_tenant, start_gateway

BURST = 40


def _session(gw: Gateway) -> str:
    """A WebSocket session with the demo organisation agent; the echo, or what went wrong."""
    agent = Agent(gw.directory / "pki/demo-agent.pem", gw.directory / "pki/demo-agent.key", [])
    try:
        with connect(f"wss://{HOST}:{gw.ports['gateway']}/agent",
                     ssl=gw.ssl_context(agent), server_hostname=HOST, open_timeout=30,
                     compression=None, proxy=None,
                     sock=socket.create_connection(("127.0.0.1", gw.ports["gateway"]),
                                                   timeout=30)) as ws:
            ws.send("hello")
            reply = ws.recv(timeout=30)
            return reply if isinstance(reply, str) else "?"
    except Exception as exc:  # noqa: BLE001 - the test counts what failed, whatever it was
        return type(exc).__name__


async def test_the_accept_loop_holds_no_more_connections_than_the_capacity_has_room_for() -> None:
    capacity = HandshakeCapacity(2)
    most = 0
    done = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal most, done
        most = max(most, capacity.busy)
        await trio.sleep(0.01)
        await stream.send_all(b"x")
        capacity.give_back()
        done += 1

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            [listener] = await nursery.start(functools.partial(
                serve_tcp, "test", handler, "127.0.0.1", 0, capacity=capacity))
            port = listener.socket.getsockname()[1]
            clients = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(20)]
            for client in clients:
                assert await client.receive_some(1) == b"x"
                await client.aclose()
            nursery.cancel_scope.cancel()
    assert done == 20
    assert most == 2  # full, never over


@pytest.mark.slow
async def test_a_burst_far_over_the_bound_is_all_served_and_a_silent_connection_holds_no_place(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway_listener, "HANDSHAKES_IN_PROGRESS", 2)
    directory = tmp_path / "d"
    make_deployment(directory)
    add_acme_tenant(directory)
    config = directory / "switch.toml"
    config.write_text(config.read_text().replace('first_byte_timeout = "5s"',
                                                 'first_byte_timeout = "2s"'))
    with trio.fail_after(180):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, directory)
            # More silent connections than the bound: they hold no place...
            silent = [socket.create_connection(("127.0.0.1", gw.ports["gateway"]), timeout=10)
                      for _ in range(5)]
            try:
                # ...so agents are served while they wait for their first byte.
                assert await trio.to_thread.run_sync(_session, gw) == "hello"
                assert gw.refusals("first_byte_timeout") == 0  # served before they timed out
                replies: list[str] = []

                async def one() -> None:
                    replies.append(await trio.to_thread.run_sync(_session, gw))

                async with trio.open_nursery() as burst:
                    for _ in range(BURST):
                        burst.start_soon(one)
                assert replies == ["hello"] * BURST
                # The silent ones are still closed at the first-byte deadline.
                with trio.fail_after(30):
                    while gw.refusals("first_byte_timeout") < 5:  # noqa: ASYNC110 - polls
                        await trio.sleep(0.05)
            finally:
                for sock in silent:
                    sock.close()
            assert gw.refusals("first_byte_timeout") == 5
            assert gw.refusals("handshake_timeout") == 0
            assert gw.switch.metrics.registry.get_sample_value(
                "switch_handshakes_total", {"tenant": "demo", "result": "ok"}) == BURST + 1
            nursery.cancel_scope.cancel()
