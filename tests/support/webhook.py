"""A webhook receiver on loopback (trio and h11): records each request it gets and answers with
the statuses it is given in turn (then 204); or, ``silent``, accepts connections and never
answers (a receiver that is down without refusing)."""

from __future__ import annotations

import attrs
import h11
import trio


@attrs.define
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@attrs.define(eq=False)
class Receiver:
    statuses: list[int] = attrs.field(factory=list)
    silent: bool = False
    received: list[Received] = attrs.field(factory=list)
    connections: int = 0
    port: int = 0
    arrived: trio.Event = attrs.field(factory=trio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def wait_for(self, count: int) -> list[Received]:
        while len(self.received) < count:
            self.arrived = trio.Event()
            await self.arrived.wait()
        return self.received

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        self.arrived.set()
        if self.silent:
            await trio.sleep_forever()
        conn = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                self.received.append(Received(
                    request.target.decode(),
                    {k.decode().lower(): v.decode() for k, v in request.headers}, body))
                status = self.statuses.pop(0) if self.statuses else 204
                await stream.send_all(conn.send(h11.Response(
                    status_code=status, headers=[("Content-Length", "0"),
                                                 ("Connection", "close")])) or b"")
                await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                self.arrived.set()
                await stream.aclose()
                return
            else:
                await stream.aclose()
                return

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self.handle, listeners)
