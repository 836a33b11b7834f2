"""Operating the gateway: graceful shutdown, the connection cap, handshake deadlines."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import trio
from websockets.exceptions import ConnectionClosed

from tests.support.est import HOST, make_deployment
from tests.support.gateway import Agent, Echo, Gateway, add_acme_tenant, start_gateway


def _wait_for_ports(log: Path, proc: trio.Process | subprocess.Popen[bytes]) -> dict[str, int]:
    for _ in range(300):
        ports = {name: int(port) for port, name in re.findall(
            r"address=127\.0\.0\.1:(\d+) listener=(\w+)", log.read_text())}
        if {"gateway", "enroll", "admin"} <= set(ports):
            return ports
        if proc.poll() is not None:
            raise AssertionError(log.read_text())
        time.sleep(0.05)
    raise AssertionError("no listeners: " + log.read_text())


async def test_sigterm_closes_sessions_with_going_away_at_once_and_exits_0(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    make_deployment(directory)
    add_acme_tenant(directory)
    echo = Echo()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            import trio_websocket

            server = await nursery.start(trio_websocket.serve_websocket, echo.handler, "127.0.0.1", 0, None)
            config = directory / "switch.toml"
            text = config.read_text().replace('upstream = "ws://127.0.0.1:8080/"',
                                              f'upstream = "ws://127.0.0.1:{server.port}/"')
            # A drain deadline far away: the close must not wait for it.
            text = re.sub(r'drain_timeout = "[^"]+"', 'drain_timeout = "60s"', text)
            config.write_text(text)
            log = tmp_path / "serve.log"
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "gateway.cli", "-c", str(config), "serve"],
                stdout=log.open("wb"), stderr=subprocess.STDOUT)
            try:
                ports = await trio.to_thread.run_sync(_wait_for_ports, log, proc)
                gw = Gateway(None, None, directory, echo, ports)  # type: ignore[arg-type]
                agent = Agent(directory / "pki/demo-agent.pem", directory / "pki/demo-agent.key", [])
                ws = await trio.to_thread.run_sync(gw.connect, agent)
                await trio.to_thread.run_sync(ws.send, "hi")
                assert await trio.to_thread.run_sync(ws.recv, 10) == "hi"
                codes: list[int | None] = []
                done = threading.Event()

                def wait_close() -> None:
                    try:
                        while True:
                            ws.recv()
                    except ConnectionClosed as exc:
                        codes.append(exc.rcvd.code if exc.rcvd else None)
                    done.set()

                threading.Thread(target=wait_close, daemon=True).start()
                proc.send_signal(signal.SIGTERM)
                assert await trio.to_thread.run_sync(done.wait, 30)
                assert codes == [1001]
                with trio.fail_after(30):
                    assert await proc.wait() == 0
                text = log.read_text()
                assert "event=draining" in text and "cut=0" in text
            finally:
                if proc.poll() is None:
                    proc.kill()
            nursery.cancel_scope.cancel()


UPGRADE = (f"GET /agent HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").encode()


async def _silent_session(gw: Gateway, agent: Agent) -> trio.SSLStream[trio.SocketStream]:
    """A relayed session whose agent, once upgraded, never reads again: it will not answer a
    close."""
    tcp = await trio.open_tcp_stream("127.0.0.1", gw.ports["gateway"])
    stream = trio.SSLStream(tcp, gw.ssl_context(agent), server_hostname=HOST)
    await stream.send_all(UPGRADE)
    head = b""
    while b"\r\n\r\n" not in head:
        head += await stream.receive_some(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    return stream


async def _stop_with_a_silent_agent(tmp_path: Path, *, drain: str, second_signal: bool,
                                    workers: int) -> str:
    """``switch serve --workers N`` (``close_timeout`` far away) holding a silent session:
    SIGTERM (and a second one once it drains); it must exit 0 within 30 s. Returns its log."""
    directory = tmp_path / "d"
    make_deployment(directory)
    add_acme_tenant(directory)
    echo = Echo()
    async with trio.open_nursery() as nursery:
        import trio_websocket

        server = await nursery.start(trio_websocket.serve_websocket, echo.handler, "127.0.0.1", 0, None)
        config = directory / "switch.toml"
        text = config.read_text().replace('upstream = "ws://127.0.0.1:8080/"',
                                          f'upstream = "ws://127.0.0.1:{server.port}/"')
        text = re.sub(r'drain_timeout = "[^"]+"', f'drain_timeout = "{drain}"', text)
        text = re.sub(r'close_timeout = "[^"]+"', 'close_timeout = "120s"', text)
        config.write_text(text)
        log = tmp_path / "serve.log"
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "gateway.cli", "-c", str(config), "serve", "--workers",
             str(workers)], stdout=log.open("wb"), stderr=subprocess.STDOUT)
        try:
            ports = await trio.to_thread.run_sync(_wait_for_ports, log, proc)
            gw = Gateway(None, None, directory, echo, ports)  # type: ignore[arg-type]
            agent = Agent(directory / "pki/demo-agent.pem", directory / "pki/demo-agent.key", [])
            with trio.fail_after(30):
                # Every worker serves (one still starting would die of the signal).
                while workers > 1 and "event=serving" not in log.read_text():  # noqa: ASYNC110
                    await trio.sleep(0.05)
                silent = await _silent_session(gw, agent)
            proc.send_signal(signal.SIGTERM)
            if second_signal:
                with trio.fail_after(30):
                    while "event=draining" not in log.read_text():  # noqa: ASYNC110 - its log
                        await trio.sleep(0.05)
                proc.send_signal(signal.SIGTERM)
            with trio.fail_after(30):  # far under the 120 s a close may wait for its answer
                assert await proc.wait() == 0
            await trio.aclose_forcefully(silent)
        finally:
            if proc.poll() is None:
                proc.kill()
        nursery.cancel_scope.cancel()
    return log.read_text()


async def test_a_session_whose_agent_never_answers_its_close_is_cut_at_the_drain_deadline(
        tmp_path: Path) -> None:
    text = await _stop_with_a_silent_agent(tmp_path, drain="1s", second_signal=False, workers=2)
    assert "event=drained" in text and "cut=1" in text
    assert text.count("event=worker_stopped exit_code=0") == 2, text


async def test_a_second_sigterm_cuts_every_connection_at_once(tmp_path: Path) -> None:
    text = await _stop_with_a_silent_agent(tmp_path, drain="120s", second_signal=True, workers=1)
    assert "event=stopping_now" in text and "cut=1" in text


async def test_a_second_sigterm_to_the_supervisor_kills_its_workers(tmp_path: Path) -> None:
    text = await _stop_with_a_silent_agent(tmp_path, drain="120s", second_signal=True, workers=2)
    assert "event=stopping_now" in text
    assert "event=worker_killed" in text and "reason=second_signal" in text


async def test_connections_over_the_cap_are_refused_and_live_sessions_stay(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    make_deployment(directory)
    add_acme_tenant(directory)
    config = directory / "switch.toml"
    config.write_text(re.sub(r"(\[gateway\][^\[]*?)max_connections = \d+", r"\1max_connections = 1",
                             config.read_text()))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, directory)
            agent = Agent(directory / "pki/demo-agent.pem", directory / "pki/demo-agent.key", [])
            ws = await trio.to_thread.run_sync(gw.connect, agent)
            stream = await trio.open_tcp_stream("127.0.0.1", gw.ports["gateway"])
            assert await stream.receive_some(10) == b""  # closed at once
            assert gw.refusals("too_many_connections") == 1
            await trio.to_thread.run_sync(ws.send, "still here")
            assert await trio.to_thread.run_sync(ws.recv, 10) == "still here"
            nursery.cancel_scope.cancel()


async def test_a_stalled_handshake_is_cut_at_its_deadline(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    make_deployment(directory)
    add_acme_tenant(directory)
    config = directory / "switch.toml"
    config.write_text(re.sub(r'handshake_timeout = "[^"]+"', 'handshake_timeout = "1s"',
                             config.read_text()))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, directory)
            stream = await trio.open_tcp_stream("127.0.0.1", gw.ports["gateway"])
            await stream.send_all(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
            start = trio.current_time()
            assert await stream.receive_some(10) == b""
            assert 0.9 < trio.current_time() - start < 5
            assert gw.refusals("handshake_timeout") == 1
            nursery.cancel_scope.cancel()


async def test_file_descriptor_exhaustion_is_survived(tmp_path: Path) -> None:
    """With its fd limit at 96, a server flooded with 200 connections backs off accepting, does
    not crash, and serves an agent normally once the flood is gone."""
    import resource

    directory = tmp_path / "d"
    make_deployment(directory)
    add_acme_tenant(directory)
    config = directory / "switch.toml"
    log = tmp_path / "serve.log"

    def limit_fds() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (96, 96))

    proc = subprocess.Popen(  # noqa: ASYNC220 - preexec_fn is not available through trio
        [sys.executable, "-m", "gateway.cli", "-c", str(config), "serve", "--workers", "1"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, preexec_fn=limit_fds)
    try:
        ports = await trio.to_thread.run_sync(_wait_for_ports, log, proc)
        flood = []
        with trio.fail_after(30):
            for _ in range(200):
                flood.append(await trio.open_tcp_stream("127.0.0.1", ports["gateway"]))
            await trio.sleep(1)
            assert proc.poll() is None
            assert "EMFILE" in log.read_text()  # the limit was really reached
            for stream in flood:
                await stream.aclose()
            gw = Gateway(None, None, directory, Echo(), ports)  # type: ignore[arg-type]
            agent = Agent(directory / "pki/demo-agent.pem", directory / "pki/demo-agent.key", [])

            def handshake_ok() -> bool:
                import socket
                import ssl

                ctx = gw.ssl_context(agent)
                with socket.create_connection(("127.0.0.1", ports["gateway"]), timeout=10) as sock, \
                        ctx.wrap_socket(sock, server_hostname="demo.switch.test") as tls:
                    return tls.version() is not None and isinstance(tls, ssl.SSLSocket)

            for _ in range(50):  # the server catches up with the closed flood
                try:
                    if await trio.to_thread.run_sync(handshake_ok):
                        break
                except OSError:
                    await trio.sleep(0.2)
            else:
                raise AssertionError("no handshake after the flood: " + log.read_text()[-2000:])
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)
