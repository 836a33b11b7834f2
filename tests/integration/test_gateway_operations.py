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

from tests.support.est import make_deployment
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
