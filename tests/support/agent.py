"""A WebSocket server over TLS that misbehaves on purpose, for the agent's and the load test's
session handling: it echoes messages (unless ``echo`` is off), and when the client sends its Close
it first sends what ``after_close`` holds (raw frames: a Ping, an oversized message), then the
close reply (unless ``reply_to_close`` is off: then it drops the connection). With ``close_first``
it closes the first sessions itself, as a restarting server does."""

from __future__ import annotations

import datetime as dt
import functools
import random
import ssl
import struct
from pathlib import Path

import attrs
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Request, TextMessage

from enroll import pki
from tests.support.pki import write_ca, write_server


class RecordingRandom(random.Random):
    """For back-off tests: records the upper end of each ``uniform`` draw (the back-off's cap)
    and returns it, so that each cap is the wait."""

    def __init__(self) -> None:
        super().__init__(7)
        self.caps: list[float] = []

    def uniform(self, a: float, b: float) -> float:
        self.caps.append(b)
        return b


#: A server Ping (unmasked, as a server sends it).
PING_FRAME = b"\x89\x04ping"


def oversized_frame(size: int = (1 << 20) + 1) -> bytes:
    """A binary message one byte over trio-websocket's default limit (1 MiB)."""
    return b"\x82\x7f" + struct.pack("!Q", size) + b"x" * size


@attrs.define
class MisbehavingServer:
    directory: Path
    after_close: bytes = PING_FRAME
    echo: bool = True
    reply_to_close: bool = True
    #: The first this many sessions are closed by the server (1012, as a restart does) as soon
    #: as their upgrade is accepted.
    close_first: int = 0
    port: int = 0
    accepted: int = 0
    client_closes: list[int] = attrs.field(factory=list)
    #: set when the first part of a client's message arrives
    message_started: trio.Event = attrs.field(factory=trio.Event)
    ca_file: Path = attrs.field(init=False)
    _context: ssl.SSLContext = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        now = dt.datetime.now(dt.UTC)
        ca, ca_key, self.ca_file = write_ca(self.directory, "fake-ws", now=now)
        cert, key = write_server(self.directory, (ca, ca_key), now=now)
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(str(cert), str(key))

    def client_files(self) -> tuple[Path, Path]:
        """A client certificate and key (the server does not ask for one; the agent sends it)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        ca = x509.load_pem_x509_certificate(self.ca_file.read_bytes())
        ca_key = serialization.load_pem_private_key(
            (self.directory / "fake-ws.key").read_bytes(), None)
        key = pki.generate_key()
        cert = pki.make_leaf(pki.name("fake-agent"), key.public_key(), (ca, ca_key),  # type: ignore[arg-type]
                             now=dt.datetime.now(dt.UTC), validity=dt.timedelta(days=30),
                             client=True, server=False)
        cert_file, key_file = self.directory / "client.pem", self.directory / "client.key"
        cert_file.write_bytes(pki.cert_pem(cert))
        pki.write_private(key_file, pki.key_pem(key))
        return cert_file, key_file

    def client_context(self) -> ssl.SSLContext:
        """A client TLS context that trusts this server and sends ``client_files()``."""
        cert, key = self.client_files()
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(str(cert), str(key))
        return context

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, self._handle, 0,
                                                          host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]

    async def _handle(self, tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, self._context, server_side=True)
        conn = WSConnection(ConnectionType.SERVER)
        try:
            await stream.do_handshake()
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                conn.receive_data(bytes(data))
                for event in conn.events():
                    if isinstance(event, Request):
                        await stream.send_all(conn.send(AcceptConnection()))
                        self.accepted += 1
                        if self.accepted <= self.close_first:
                            await stream.send_all(conn.send(CloseConnection(1012, "restart")))
                    elif isinstance(event, TextMessage | BytesMessage):
                        self.message_started.set()
                        if self.echo:
                            await stream.send_all(conn.send(event))
                    elif isinstance(event, CloseConnection):
                        if conn.state is ConnectionState.CLOSED:
                            return  # the client's answer to this server's Close
                        self.client_closes.append(event.code)
                        await stream.send_all(self.after_close)
                        if self.reply_to_close:
                            await stream.send_all(conn.send(event.response()))
                        return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)
