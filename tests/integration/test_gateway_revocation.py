"""Live revocation: a change in the store closes dependent sessions within a second, whichever
process made it, also sessions still opening (waiting for their upgrade or their upstream);
suspension closes nothing. Under TLS 1.2 and 1.3."""

from __future__ import annotations

import functools
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from websockets.exceptions import WebSocketException

from tests.support.est import HOST
from tests.support.gateway import (
    Agent,
    Echo,
    Gateway,
    LiveAgent,
    provisioning_key,
    start_gateway,
)

VERSIONS = pytest.mark.parametrize("tls", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3],
                                   ids=["tls1.2", "tls1.3"])


async def _closed_within(live: LiveAgent, seconds: float) -> float:
    start = trio.current_time()
    with trio.fail_after(seconds):
        await trio.to_thread.run_sync(live.closed.wait)
    return trio.current_time() - start


async def _handshake_refused(gw: Gateway, agent: Agent, tls: ssl.TLSVersion | None = None) -> None:
    def attempt() -> None:
        with gw.connect(agent, max_version=tls) as ws:
            ws.send("x")
            ws.recv(timeout=5)

    with pytest.raises((ssl.SSLError, OSError, WebSocketException, EOFError)):
        await trio.to_thread.run_sync(attempt)


def _cli(gw: Gateway, *args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "-c", str(gw.config.path),
                             *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@VERSIONS
@pytest.mark.parametrize("via", ["this process", "another process"])
async def test_revoking_a_key_closes_its_live_session_within_a_second(gw: Gateway,
        tmp_path: Path, via: str, tls: ssl.TLSVersion) -> None:
    with trio.fail_after(60):
        secret = provisioning_key(gw)
        agent = await gw.enroll(secret, "laptop-1", tmp_path)
        await gw.synced()
        live = await trio.to_thread.run_sync(LiveAgent, gw, agent, tls)
        bystander_agent = Agent(gw.directory / "pki/demo-agent.pem",
                                gw.directory / "pki/demo-agent.key", [])
        bystander = await trio.to_thread.run_sync(LiveAgent, gw, bystander_agent, tls)
        if via == "this process":
            authority = gw.authority()
            authority.revoke_key("demo", "Fleet", reason="leaked", confirm="Fleet", actor="t")
            authority.close()
        else:
            await trio.to_thread.run_sync(
                lambda: _cli(gw, "keys", "revoke", "demo", "Fleet", "--reason", "leaked",
                             "--confirm", "Fleet"))
        # The change is committed now; the session must be gone within a second of it.
        elapsed = await _closed_within(live, 5)
        assert elapsed < 1.0, elapsed
        assert live.close_code == 1008
        assert await trio.to_thread.run_sync(bystander.still_works)
        await _handshake_refused(gw, agent, tls)
        assert gw.refusals("key_revoked", "demo") >= 1


@VERSIONS
@pytest.mark.slow
async def test_suspending_a_key_closes_nothing(gw: Gateway, tmp_path: Path, tls: ssl.TLSVersion) -> None:
    with trio.fail_after(60):
        agent = await gw.enroll(provisioning_key(gw), "laptop-1", tmp_path)
        await gw.synced()
        live = await trio.to_thread.run_sync(LiveAgent, gw, agent, tls)
        authority = gw.authority()
        authority.suspend_key("demo", "Fleet", reason="pause", actor="t")
        authority.close()
        await gw.synced()
        await trio.sleep(0.5)
        assert await trio.to_thread.run_sync(live.still_works)
        # and a new connection with that certificate is still admitted
        with await trio.to_thread.run_sync(lambda: gw.connect(agent, max_version=tls)) as ws:
            await trio.to_thread.run_sync(ws.send, "again")
            assert await trio.to_thread.run_sync(ws.recv, 10) == "again"


@VERSIONS
async def test_revoking_a_certificate_or_disabling_the_service_closes_sessions(gw: Gateway,
        tmp_path: Path, tls: ssl.TLSVersion) -> None:
    with trio.fail_after(60):
        secret = provisioning_key(gw)
        first = await gw.enroll(secret, "laptop-1", tmp_path)
        second = await gw.enroll(secret, "laptop-2", tmp_path)
        await gw.synced()
        live1 = await trio.to_thread.run_sync(LiveAgent, gw, first, tls)
        live2 = await trio.to_thread.run_sync(LiveAgent, gw, second, tls)
        serial = format(first.chain[0].serial_number, "x")
        await trio.to_thread.run_sync(
            lambda: _cli(gw, "certs", "revoke", serial, "--reason", "stolen"))
        await _closed_within(live1, 3)
        assert await trio.to_thread.run_sync(live2.still_works)
        await trio.to_thread.run_sync(lambda: _cli(gw, "service", "disable", "demo", "--yes"))
        await _closed_within(live2, 3)
        await _handshake_refused(gw, second, tls)


UPGRADE = (f"GET /agent HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").encode()


def _handshakes_ok(gw: Gateway) -> float:
    return gw.switch.metrics.registry.get_sample_value(
        "switch_handshakes_total", {"tenant": "demo", "result": "ok"}) or 0.0


async def _open_tls(gw: Gateway, agent: Agent, tls: ssl.TLSVersion) -> trio.SSLStream[trio.SocketStream]:
    """A TLS connection to the gateway whose handshake the server has completed too (under
    TLS 1.3 the client is done first), with no WebSocket upgrade sent yet."""
    before = _handshakes_ok(gw)
    tcp = await trio.open_tcp_stream("127.0.0.1", gw.ports["gateway"])
    stream = trio.SSLStream(tcp, gw.ssl_context(agent, tls), server_hostname=HOST)
    await stream.do_handshake()
    with trio.fail_after(5):
        while _handshakes_ok(gw) == before:  # noqa: ASYNC110 - the server's count
            await trio.sleep(0.01)
    return stream


async def _response_head(stream: trio.abc.Stream) -> bytes:
    received = b""
    with trio.move_on_after(15):
        while b"\r\n\r\n" not in received:
            try:
                chunk = await stream.receive_some(4096)
            except trio.BrokenResourceError:
                break
            if not chunk:
                break
            received += chunk
    return received


def _revoke(gw: Gateway) -> None:
    authority = gw.authority()
    try:
        authority.revoke_key("demo", "Fleet", reason="leaked", confirm="Fleet", actor="t")
    finally:
        authority.close()


@VERSIONS
async def test_a_key_revoked_between_handshake_and_upgrade_gets_the_upgrade_refused(gw: Gateway,
        tmp_path: Path, tls: ssl.TLSVersion) -> None:
    with trio.fail_after(60):
        agent = await gw.enroll(provisioning_key(gw), "laptop-1", tmp_path)
        await gw.synced()
        stream = await _open_tls(gw, agent, tls)
        _revoke(gw)
        await gw.synced()
        await stream.send_all(UPGRADE)  # too late: the session was closed as it waited
        head = await _response_head(stream)
        assert head.startswith(b"HTTP/1.1 403 "), head
        assert gw.refusals("key_revoked", "demo") == 1
        assert not gw.echo.requests  # nothing reached the upstream
        await trio.aclose_forcefully(stream)


@VERSIONS
async def test_a_key_revoked_while_the_upstream_is_slow_to_answer_is_refused_within_a_second(
        tmp_path: Path, tls: ssl.TLSVersion) -> None:
    accepted = trio.Event()

    async def silent_upstream(stream: trio.SocketStream) -> None:
        accepted.set()
        await trio.sleep_forever()  # accepts, never answers the WebSocket handshake

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, silent_upstream, 0, host="127.0.0.1"))
            echo = Echo(port=listeners[0].socket.getsockname()[1])
            gw = await start_gateway(nursery, tmp_path / "d", echo=echo)
            assert gw.config.gateway.upstream_connect_timeout_s >= 10
            agent = await gw.enroll(provisioning_key(gw), "laptop-1", tmp_path)
            await gw.synced()
            stream = await _open_tls(gw, agent, tls)
            await stream.send_all(UPGRADE)
            await accepted.wait()  # the gateway now waits for its upstream
            start = trio.current_time()
            _revoke(gw)
            head = await _response_head(stream)
            assert trio.current_time() - start < 1.0
            assert head.startswith(b"HTTP/1.1 403 "), head
            assert gw.refusals("key_revoked", "demo") == 1
            await trio.aclose_forcefully(stream)
            nursery.cancel_scope.cancel()
