"""The pyOpenSSL Trio streams: over memory BIOs (memory streams) and on sockets (real loopback
TCP), with the same tests for both transports."""

from __future__ import annotations

import datetime as dt
import functools
import ssl
from pathlib import Path

import pytest
import trio
import trio.testing
from OpenSSL import SSL

from enroll import pki
from gateway.tls import OpenSSLStream, SocketTLSStream, TLSStream, tls_client, tls_server
from gateway.tls_context import client_context, server_context

NOW = dt.datetime.now(dt.UTC)
YEAR = dt.timedelta(days=365)


class Pki:
    def __init__(self) -> None:
        self.root_key = pki.generate_key()
        self.root = pki.make_ca(pki.name("server root"), self.root_key, now=NOW, validity=YEAR)
        self.server_key = pki.generate_key()
        self.server = pki.make_leaf(pki.name("localhost"), self.server_key.public_key(),
                                    (self.root, self.root_key), now=NOW, validity=YEAR,
                                    dns_names=["localhost"], server=True, client=False)
        self.client_ca_key = pki.generate_key()
        self.client_ca = pki.make_ca(pki.name("client CA"), self.client_ca_key, now=NOW, validity=YEAR)
        self.client_key = pki.generate_key()
        self.client = pki.make_leaf(pki.name("agent"), self.client_key.public_key(),
                                    (self.client_ca, self.client_ca_key), now=NOW, validity=YEAR)
        other_key = pki.generate_key()
        self.other_ca = pki.make_ca(pki.name("other CA"), other_key, now=NOW, validity=YEAR)
        self.stranger_key = pki.generate_key()
        self.stranger = pki.make_leaf(pki.name("stranger"), self.stranger_key.public_key(),
                                      (self.other_ca, other_key), now=NOW, validity=YEAR)


@pytest.fixture(scope="module")
def certs() -> Pki:
    return Pki()


async def tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    """Two ends of a real loopback TCP connection."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    await listeners[0].aclose()
    return server, client


@pytest.fixture(params=["memory", "socket"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _pair(certs: Pki, transport: str, *, client_auth: str = "required",
                with_cert: bool = True, stranger: bool = False, max_version: int | None = None
                ) -> tuple[TLSStream, TLSStream]:
    if transport == "socket":
        a, b = await tcp_pair()
    else:
        a, b = trio.testing.memory_stream_pair()  # type: ignore[assignment]
    sctx = server_context([certs.server, certs.root], certs.server_key,
                          client_auth=client_auth, trust=[certs.client_ca])  # type: ignore[arg-type]
    chain, key = ([certs.stranger], certs.stranger_key) if stranger else ([certs.client], certs.client_key)
    cctx = client_context(trust=[certs.root], chain=chain if with_cert else (),
                          key=key if with_cert else None, max_version=max_version)
    server, client = tls_server(a, sctx), tls_client(b, cctx, "localhost")
    assert isinstance(server, SocketTLSStream if transport == "socket" else OpenSSLStream)
    return server, client


VERSIONS = pytest.mark.parametrize("max_version", [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION],
                                   ids=["tls1.2", "tls1.3"])


@VERSIONS
async def test_handshake_and_echo_both_ways(certs: Pki, transport: str, max_version: int) -> None:
    server, client = await _pair(certs, transport, max_version=max_version)
    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            n.start_soon(server.do_handshake)
            n.start_soon(client.do_handshake)
        assert server.server_name == "localhost"
        chain = server.verified_chain()
        assert chain is not None and chain[0] == certs.client and chain[-1] == certs.client_ca
        await client.send_all(b"ping")
        assert await server.receive_some() == b"ping"
        await server.send_all(b"pong")
        assert await client.receive_some() == b"pong"
        await client.aclose()
        assert await server.receive_some() == b""


async def test_large_payloads_flow_both_ways_at_once(certs: Pki, transport: str) -> None:
    server, client = await _pair(certs, transport)
    payload = bytes(range(256)) * 4096  # 1 MiB

    async def pump(src: TLSStream, dst_received: list[bytes]) -> None:
        total = 0
        while total < len(payload):
            data = await src.receive_some(65536)
            assert data
            dst_received.append(data)
            total += len(data)

    got_server: list[bytes] = []
    got_client: list[bytes] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            n.start_soon(server.send_all, payload)
            n.start_soon(client.send_all, payload)
            n.start_soon(pump, server, got_server)
            n.start_soon(pump, client, got_client)
    assert b"".join(got_server) == payload and b"".join(got_client) == payload


async def _server_handshake_fails(server: TLSStream, client: TLSStream) -> None:
    """Assert on the server side (STYLE: under TLS 1.3 the client's own handshake may succeed)."""
    with trio.fail_after(10):
        async with trio.open_nursery() as n:

            async def client_side() -> None:
                try:
                    await client.do_handshake()
                    await client.receive_some()
                except trio.BrokenResourceError:
                    pass
                finally:
                    await client.aclose()

            n.start_soon(client_side)
            with pytest.raises(trio.BrokenResourceError):
                await server.do_handshake()
            await server.aclose()


@VERSIONS
async def test_missing_client_certificate_is_refused_when_required(certs: Pki, transport: str, max_version: int) -> None:
    await _server_handshake_fails(*await _pair(certs, transport, with_cert=False, max_version=max_version))


@VERSIONS
async def test_untrusted_client_certificate_is_refused(certs: Pki, transport: str, max_version: int) -> None:
    await _server_handshake_fails(*await _pair(certs, transport, stranger=True, max_version=max_version))


async def test_any_mode_accepts_an_untrusted_certificate_for_the_caller_to_judge(certs: Pki, transport: str) -> None:
    server, client = await _pair(certs, transport, client_auth="any", stranger=True)
    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            n.start_soon(server.do_handshake)
            n.start_soon(client.do_handshake)
    assert server.peer_certificate() == certs.stranger
    assert server.peer_chain()[0] == certs.stranger


async def test_any_mode_allows_no_certificate(certs: Pki, transport: str) -> None:
    server, client = await _pair(certs, transport, client_auth="any", with_cert=False)
    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            n.start_soon(server.do_handshake)
            n.start_soon(client.do_handshake)
    assert server.peer_certificate() is None


async def test_garbage_bytes_break_the_handshake(certs: Pki, transport: str) -> None:
    if transport == "socket":
        a, b = await tcp_pair()
    else:
        a, b = trio.testing.memory_stream_pair()  # type: ignore[assignment]
    server = tls_server(a, server_context([certs.server], certs.server_key, client_auth="any"))
    await b.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
        await server.do_handshake()


async def test_eof_without_close_notify_is_truncation(certs: Pki, transport: str) -> None:
    server, client = await _pair(certs, transport)
    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            n.start_soon(server.do_handshake)
            n.start_soon(client.do_handshake)
        await client.transport.aclose()  # no close_notify
        with pytest.raises(trio.BrokenResourceError):
            await server.receive_some()


async def test_sessions_are_never_resumed(certs: Pki, transport: str, tmp_path: Path) -> None:
    """A TLS 1.2 client offering its previous session gets a full handshake."""
    sctx = server_context([certs.server, certs.root], certs.server_key, client_auth="required",
                          trust=[certs.client_ca])  # type: ignore[arg-type]
    cctx = client_context(trust=[certs.root], chain=[certs.client], key=certs.client_key,
                          max_version=SSL.TLS1_2_VERSION)
    session = None
    for _ in range(2):
        if transport == "socket":
            a, b = await tcp_pair()
        else:
            a, b = trio.testing.memory_stream_pair()  # type: ignore[assignment]
        server = tls_server(a, sctx)
        client = tls_client(b, cctx, "localhost")
        if session is not None:
            client.connection.set_session(session)
        with trio.fail_after(10):
            async with trio.open_nursery() as n:
                n.start_soon(server.do_handshake)
                n.start_soon(client.do_handshake)
        assert not server.session_reused and not client.session_reused
        session = client.connection.get_session()


async def _connected(certs: Pki) -> tuple[TLSStream, TLSStream]:
    server, client = await _pair(certs, "socket")
    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            n.start_soon(server.do_handshake)
            n.start_soon(client.do_handshake)
    return server, client


async def test_socket_stream_refuses_io_after_close(certs: Pki) -> None:
    """After aclose the descriptor's number may belong to another socket: no call touches it."""
    server, client = await _connected(certs)
    await server.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await server.receive_some()
    with pytest.raises(trio.ClosedResourceError):
        await server.send_all(b"x")
    assert await client.receive_some() == b""  # the close_notify arrived
    await client.aclose()


async def test_socket_stream_close_wakes_a_task_waiting_to_receive(certs: Pki) -> None:
    server, client = await _connected(certs)
    with trio.fail_after(5):
        async with trio.open_nursery() as n:

            async def reader() -> None:
                with pytest.raises(trio.ClosedResourceError):
                    await server.receive_some()

            n.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            await server.aclose()
    await client.aclose()


async def test_socket_stream_send_waits_for_a_peer_that_does_not_read(certs: Pki) -> None:
    """Back-pressure: with the peer not reading, send_all blocks (and can be cancelled)."""
    server, client = await _connected(certs)
    with trio.move_on_after(1) as scope:
        while True:
            await server.send_all(b"x" * 65536)
    assert scope.cancelled_caught
    await server.aclose()
    await client.aclose()


async def test_socket_stream_rejects_two_concurrent_receivers(certs: Pki) -> None:
    server, client = await _connected(certs)
    with trio.fail_after(5):
        async with trio.open_nursery() as n:
            n.start_soon(server.receive_some)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await server.receive_some()
            n.cancel_scope.cancel()
    await server.aclose()
    await client.aclose()


async def test_a_busy_socket_stream_does_not_starve_other_tasks(certs: Pki) -> None:
    """Calls that complete at once still yield every few calls, so a connection that always has
    data cannot monopolise the event loop."""
    server, client = await _connected(certs)
    ticks = 0
    with trio.fail_after(20):
        async with trio.open_nursery() as n:

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await trio.lowlevel.checkpoint()

            async def drain() -> None:
                while await client.receive_some():
                    pass

            n.start_soon(ticker)
            n.start_soon(drain)
            await trio.sleep(0.05)  # both started (the ticker never blocks, so no wait_all_tasks_blocked)
            before = ticks
            for _ in range(200):
                await server.send_all(b"y" * 100)  # small: each completes without waiting
            assert ticks - before >= 200 // 8 - 1
            n.cancel_scope.cancel()
    await server.aclose()
    await client.aclose()


async def test_real_socket_with_a_stdlib_ssl_client(certs: Pki, tmp_path: Path) -> None:
    sctx = server_context([certs.server, certs.root], certs.server_key, client_auth="required",
                          trust=[certs.client_ca])  # type: ignore[arg-type]
    seen: list[str] = []

    async def handler(stream: trio.SocketStream) -> None:
        tls = tls_server(stream, sctx)
        assert isinstance(tls, SocketTLSStream)
        try:
            await tls.do_handshake()
            chain = tls.verified_chain() or []
            seen.append(chain[0].subject.rfc4514_string())
            await tls.send_all(await tls.receive_some())
        finally:
            await tls.aclose()

    (tmp_path / "root.pem").write_bytes(pki.cert_pem(certs.root))
    (tmp_path / "client.pem").write_bytes(pki.cert_pem(certs.client))
    (tmp_path / "client.key").write_bytes(pki.key_pem(certs.client_key))
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            listeners = await n.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            ctx = ssl.create_default_context(cafile=str(tmp_path / "root.pem"))
            ctx.load_cert_chain(tmp_path / "client.pem", tmp_path / "client.key")
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            stream = trio.SSLStream(tcp, ctx, server_hostname="localhost")
            await stream.send_all(b"hello")
            assert await stream.receive_some(100) == b"hello"
            await stream.aclose()
            result = await trio.run_process(
                ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
                 "-CAfile", str(tmp_path / "root.pem"), "-cert", str(tmp_path / "client.pem"),
                 "-key", str(tmp_path / "client.key"), "-quiet", "-verify_return_error"],
                stdin=b"from openssl\n", capture_stdout=True, capture_stderr=True, check=False)
            assert b"from openssl" in result.stdout, result.stderr
            n.cancel_scope.cancel()
    assert seen == ["CN=agent", "CN=agent"]


def test_tls13_tickets_are_turned_off_on_this_build() -> None:
    from gateway.tls_tickets import disable_tls13_tickets

    assert disable_tls13_tickets(SSL.Context(SSL.TLS_SERVER_METHOD))


async def test_a_tls13_client_gets_no_session_ticket(certs: Pki, tmp_path: Path) -> None:
    """No NewSessionTicket after a TLS 1.3 handshake: nothing to resume, and nothing arriving
    while a threaded client starts writing (see gateway.tls_tickets)."""
    sctx = server_context([certs.server, certs.root], certs.server_key, client_auth="required",
                          trust=[certs.client_ca])  # type: ignore[arg-type]

    async def handler(stream: trio.SocketStream) -> None:
        tls = tls_server(stream, sctx)
        try:
            await tls.send_all(await tls.receive_some())
        finally:
            await tls.aclose()

    (tmp_path / "root.pem").write_bytes(pki.cert_pem(certs.root))
    (tmp_path / "client.pem").write_bytes(pki.cert_pem(certs.client))
    (tmp_path / "client.key").write_bytes(pki.key_pem(certs.client_key))

    def client(port: int) -> tuple[str, bool]:
        import socket

        ctx = ssl.create_default_context(cafile=str(tmp_path / "root.pem"))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(tmp_path / "client.pem", tmp_path / "client.key")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"ping")
            assert tls.recv(100) == b"ping"  # tickets, if any, arrived before this
            session = tls.session
            return str(tls.version()), bool(session is not None and session.has_ticket)

    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            listeners = await n.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            version, has_ticket = await trio.to_thread.run_sync(client, port)
            n.cancel_scope.cancel()
    assert version == "TLSv1.3" and not has_ticket


async def test_socket_stream_wait_readable_returns_when_bytes_arrive(certs: Pki) -> None:
    """The idle relay's wait (``gateway.relay.pump``): it returns once the peer sends, and the
    receive after it finds the bytes."""
    server, client = await _connected(certs)
    assert isinstance(server, SocketTLSStream)
    with trio.fail_after(5):
        async with trio.open_nursery() as n:
            got: list[bytes] = []

            async def reader() -> None:
                await server.wait_readable()
                got.append(await server.receive_some())

            n.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []  # still waiting: nothing was sent
            await client.send_all(b"hello")
    assert got == [b"hello"]
    await server.aclose()
    await client.aclose()


async def test_socket_stream_wait_readable_sees_bytes_openssl_already_holds(certs: Pki) -> None:
    """A record read in part leaves the rest decrypted inside OpenSSL and nothing on the socket:
    the wait must not sleep on the socket then."""
    server, client = await _connected(certs)
    assert isinstance(server, SocketTLSStream)
    await client.send_all(b"0123456789")
    with trio.fail_after(5):
        assert await server.receive_some(4) == b"0123"
        await server.wait_readable()  # would wait forever on the socket alone
        assert await server.receive_some() == b"456789"
    await server.aclose()
    await client.aclose()


async def test_socket_stream_wait_readable_after_close_or_on_close(certs: Pki) -> None:
    server, client = await _connected(certs)
    assert isinstance(server, SocketTLSStream)
    with trio.fail_after(5):
        async with trio.open_nursery() as n:

            async def waiter() -> None:
                with pytest.raises(trio.ClosedResourceError):
                    await server.wait_readable()

            n.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            await server.aclose()  # wakes the waiter
    with pytest.raises(trio.ClosedResourceError):
        await server.wait_readable()
    await client.aclose()


async def test_relay_waits_for_readability_on_sockets_only(certs: Pki) -> None:
    """``pump.readable_wait``: the relay's idle wait is the TLS stream's own, Trio's for a plain
    socket stream, and none (a plain read) for other streams."""
    from gateway.relay.pump import readable_wait

    server, client = await _connected(certs)
    assert isinstance(server, SocketTLSStream)
    assert readable_wait(server) == server.wait_readable
    plain_server, plain_client = await tcp_pair()
    wait = readable_wait(plain_server)
    assert wait is not None
    with trio.fail_after(5):
        async with trio.open_nursery() as n:
            done = trio.Event()

            async def waiter() -> None:
                await wait()
                done.set()

            n.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set()
            await plain_client.send_all(b"x")
            await done.wait()
    assert await plain_server.receive_some() == b"x"
    memory, _ = trio.testing.memory_stream_pair()
    assert readable_wait(memory) is None
    for stream in (server, client, plain_server, plain_client):
        await stream.aclose()
