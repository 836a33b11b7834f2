"""One source cannot lock others out: 2,000 TCP connections from 127.0.0.1 that never send a byte
leave agents from 127.0.0.2 served on both agent-facing ports (Linux routes all of 127.0.0.0/8 to
loopback), keep the sessions already open (also from 127.0.0.1), and are closed at the first-byte
deadline, well before the handshake's."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest
import trio
from websockets.sync.client import connect

from tests.support.est import HOST, make_deployment
from tests.support.gateway import (
    Agent,
    Gateway,
    LiveAgent,
    add_acme_tenant,
    provisioning_key,
    start_gateway,
)

IDLE = 2000
ATTACKER, AGENT = "127.0.0.1", "127.0.0.2"


def _deploy(directory: Path) -> None:
    make_deployment(directory)
    add_acme_tenant(directory)
    config = directory / "switch.toml"
    text = config.read_text()
    # Caps the idle connections could fill without a per-source limit (the gateway's default of
    # 20,000 would take more sockets than this test may open), a first-byte deadline well inside
    # the handshake deadline, and the default per-source limits written out.
    text = text.replace("max_connections = 20000", "max_connections = 1000")
    text = text.replace('handshake_timeout = "10s"', 'handshake_timeout = "20s"')
    text = text.replace('first_byte_timeout = "5s"', 'first_byte_timeout = "3s"')
    config.write_text(text)


def _idle(port: int) -> list[socket.socket]:
    """``IDLE`` connections from the attacker's address that never send a byte."""
    return [socket.create_connection(("127.0.0.1", port), timeout=10,
                                     source_address=(ATTACKER, 0)) for _ in range(IDLE)]


def _cacerts(gw: Gateway) -> int:
    """``GET cacerts`` from the agent's address; the HTTP status (0: no answer)."""
    ctx = ssl.create_default_context(cafile=str(gw.ca_file))
    try:
        with socket.create_connection(("127.0.0.1", gw.ports["enroll"]), timeout=10,
                                      source_address=(AGENT, 0)) as sock, \
                ctx.wrap_socket(sock, server_hostname=HOST) as tls:
            tls.sendall(f"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: {HOST}\r\n"
                        "Connection: close\r\n\r\n".encode())
            head = tls.recv(64)
    except OSError:
        return 0
    return int(head.split()[1]) if head.startswith(b"HTTP/1.1 ") else 0


def _session(gw: Gateway) -> str:
    """A WebSocket session from the agent's address with the demo organisation agent; the echo."""
    agent = Agent(gw.directory / "pki/demo-agent.pem", gw.directory / "pki/demo-agent.key", [])
    try:
        sock = socket.create_connection(("127.0.0.1", gw.ports["gateway"]), timeout=10,
                                        source_address=(AGENT, 0))
        with connect(f"wss://{HOST}:{gw.ports['gateway']}/agent", sock=sock,
                     ssl=gw.ssl_context(agent), server_hostname=HOST, open_timeout=10,
                     compression=None, proxy=None) as ws:
            ws.send("hello")
            reply = ws.recv(timeout=10)
            return reply if isinstance(reply, str) else "?"
    except Exception as exc:  # noqa: BLE001 - the test counts what failed, whatever it was
        return type(exc).__name__


def _enroll_refusals(gw: Gateway, reason: str) -> float:
    return gw.switch.metrics.registry.get_sample_value(
        "switch_enroll_refusals_total", {"reason": reason}) or 0.0


async def _until(check: object, timeout_s: float = 30) -> None:
    with trio.fail_after(timeout_s):
        while not check():  # type: ignore[operator]  # noqa: ASYNC110 - polls the server
            await trio.sleep(0.05)


@pytest.mark.slow
async def test_idle_connections_from_one_source_leave_other_sources_served_on_both_ports(
        tmp_path: Path) -> None:
    directory = tmp_path / "d"
    _deploy(directory)
    config = (directory / "switch.toml").read_text()
    assert "max_handshakes_per_source = 500" in config and "max_handshakes_per_source = 50\n" in config
    with trio.fail_after(240):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, directory)
            provisioning_key(gw)  # the service on: cacerts answers
            # A session from the attacker's own address, open before the flood.
            agent = Agent(directory / "pki/demo-agent.pem", directory / "pki/demo-agent.key", [])
            live = await trio.to_thread.run_sync(LiveAgent, gw, agent)

            idle = await trio.to_thread.run_sync(_idle, gw.ports["enroll"])
            try:
                statuses = [await trio.to_thread.run_sync(_cacerts, gw) for _ in range(10)]
                assert statuses == [200] * 10
                await _until(lambda: _enroll_refusals(gw, "too_many_handshakes") == IDLE - 50)
                # The 50 it holds are closed at the first-byte deadline (3 s), not at the
                # handshake's (request_timeout, 10 s): counted as such.
                await _until(lambda: _enroll_refusals(gw, "first_byte_timeout") == 50)
            finally:
                for sock in idle:
                    sock.close()

            idle = await trio.to_thread.run_sync(_idle, gw.ports["gateway"])
            try:
                replies = [await trio.to_thread.run_sync(_session, gw) for _ in range(10)]
                assert replies == ["hello"] * 10
                await _until(lambda: gw.refusals("too_many_handshakes") == IDLE - 500)
                assert gw.refusals("too_many_connections") == 0
                assert await trio.to_thread.run_sync(live.still_works)
                await _until(lambda: gw.refusals("first_byte_timeout") == 500)
            finally:
                for sock in idle:
                    sock.close()
            assert await trio.to_thread.run_sync(live.still_works)
            assert gw.refusals("handshake_timeout") == 0
            nursery.cancel_scope.cancel()
