"""Section (i): does ``gateway.lightlock.LightLock`` pay against trio's own locks on the relay's
write path? ``python -m scripts.benchlib.locks [--quick]`` prints the figures alone.

Three measurements, each lock kind in turn, in alternating rounds (the median is kept, because
this machine's speed drifts by several per cent over minutes), all in one process:

- **uncontended**: CPU per ``async with lock`` with nothing else waiting (the relay's common
  case: a side's lock is contended only when a ping or close meets a relayed write);
- **relay write**: CPU of the event loop's thread per ``gateway.relay.pump.Side.write`` of a
  64-byte frame, the relay's write path as it runs (the side's lock, the cut-off bookkeeping,
  ``send_all``), over a TLS stream on a loopback socket (``SocketTLSStream``, as every agent
  connection) with a thread on the other end reading it (its CPU is not counted);
- **memory**: bytes per lock object (``tracemalloc``); a relayed session holds five (one per
  relay side, and three in its agent's ``SocketTLSStream``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import socket
import ssl
import statistics
import threading
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import trio

from enroll import pki
from gateway.lightlock import LightLock
from gateway.relay.pump import Side
from gateway.tls import TLSStream, tls_server
from gateway.tls_context import server_context
from gateway.wsframes import frame

KINDS: dict[str, Callable[[], Any]] = {
    "LightLock": LightLock, "trio.Lock": trio.Lock, "trio.StrictFIFOLock": trio.StrictFIFOLock,
}
#: A relayed session's locks: two relay sides, three in the agent's SocketTLSStream.
LOCKS_PER_SESSION = 5
FRAME = frame(0x2, b"x" * 64, mask=False)


async def _uncontended(make: Callable[[], Any], n: int) -> float:
    lock = make()
    start = time.thread_time()
    for _ in range(n):
        async with lock:
            pass
    return (time.thread_time() - start) / n


async def _tls_pair() -> tuple[TLSStream, ssl.SSLSocket]:
    """The gateway's end of a TLS connection over loopback (``SocketTLSStream``, as for every
    agent) and a blocking ``ssl`` client socket for a reader thread, handshake done."""
    now = dt.datetime.now(dt.UTC)
    ca_key = pki.generate_key()
    ca = pki.make_ca(pki.name("bench CA"), ca_key, now=now, validity=dt.timedelta(days=1))
    key = pki.generate_key()
    cert = pki.make_leaf(pki.name("bench"), key.public_key(), (ca, ca_key), now=now,
                         validity=dt.timedelta(days=1), dns_names=["bench.test"], server=True)
    client_ctx = ssl.create_default_context(cadata=pki.cert_pem(ca).decode())
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    def connect() -> ssl.SSLSocket:
        sock = socket.create_connection(("127.0.0.1", port))
        return client_ctx.wrap_socket(sock, server_hostname="bench.test")

    client: list[ssl.SSLSocket] = []
    async with trio.open_nursery() as nursery:

        async def connect_in_thread() -> None:
            client.append(await trio.to_thread.run_sync(connect))

        nursery.start_soon(connect_in_thread)
        tcp = await listeners[0].accept()
        server = tls_server(tcp, server_context([cert], key, client_auth="any"))
        await server.do_handshake()
    await listeners[0].aclose()
    return server, client[0]


async def _relay_writes(make: Callable[[], Any], n: int, pair: tuple[TLSStream, ssl.SSLSocket]
                        ) -> float:
    """CPU of the event loop's thread per ``Side.write`` of ``FRAME`` to the gateway's end; a
    thread reads the client's end meanwhile (its CPU is not counted)."""
    server, client = pair
    side = Side.agent(server, 1 << 20)
    side.lock = make()
    wanted = n * len(FRAME)

    def drain() -> None:
        got = 0
        while got < wanted:
            got += len(client.recv(65536))

    reader = threading.Thread(target=drain)
    reader.start()
    start = time.thread_time()
    for _ in range(n):
        await side.write(FRAME, in_frame=False)
    elapsed = time.thread_time() - start
    await trio.to_thread.run_sync(reader.join)
    return elapsed / n


def _bytes_per_lock(make: Callable[[], Any], n: int = 20000) -> float:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    held = [make() for _ in range(n)]
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del held
    return (after - before) / n


async def measure(quick: bool = False) -> dict[str, dict[str, float]]:
    """Per kind: ``uncontended_ns``, ``write_us``, ``bytes``, ``session_bytes`` (medians)."""
    rounds, n_lock, n_write = (3, 50_000, 5_000) if quick else (7, 300_000, 30_000)
    pair = await _tls_pair()
    samples: dict[str, dict[str, list[float]]] = {k: {"lock": [], "write": []} for k in KINDS}
    try:
        for _ in range(rounds):
            for kind, make in KINDS.items():
                samples[kind]["lock"].append(await _uncontended(make, n_lock))
                samples[kind]["write"].append(await _relay_writes(make, n_write, pair))
    finally:
        await trio.aclose_forcefully(pair[0])
        pair[1].close()
    out: dict[str, dict[str, float]] = {}
    for kind, make in KINDS.items():
        size = _bytes_per_lock(make)
        out[kind] = {"uncontended_ns": statistics.median(samples[kind]["lock"]) * 1e9,
                     "write_us": statistics.median(samples[kind]["write"]) * 1e6,
                     "bytes": size, "session_bytes": size * LOCKS_PER_SESSION}
    return out


def rows(quick: bool) -> list[tuple[str, str, str, float | None, str]]:
    """The section's rows for ``scripts/bench``: (measure, LightLock, trio.Lock, ratio, note)."""
    f = trio.run(measure, quick)
    light, lock, fifo = f["LightLock"], f["trio.Lock"], f["trio.StrictFIFOLock"]
    return [
        ("(i) relay write of a 64-byte frame over TLS, CPU per write, LightLock vs trio.Lock",
         f"{light['write_us']:.1f} µs", f"{lock['write_us']:.1f} µs (trio.Lock)",
         round(light["write_us"] / lock["write_us"], 2),
         f"trio.StrictFIFOLock {fifo['write_us']:.1f} µs; uncontended acquire+release "
         f"{light['uncontended_ns']:.0f} ns vs {lock['uncontended_ns']:.0f} ns "
         f"({fifo['uncontended_ns']:.0f} ns)"),
        ("(i) memory of a relayed session's 5 locks, LightLock vs trio.Lock",
         f"{light['session_bytes']:.0f} B", f"{lock['session_bytes']:.0f} B (trio.Lock)",
         round(light["session_bytes"] / lock["session_bytes"], 2),
         f"{light['bytes']:.0f} vs {lock['bytes']:.0f} B per lock (tracemalloc)"),
    ]


def render(figures: dict[str, dict[str, float]]) -> str:
    lines = ["| lock | uncontended acquire+release | relay write (64 B frame, TLS) | "
             "memory per lock | per session (5 locks) |", "| --- | --- | --- | --- | --- |"]
    for kind, f in figures.items():
        lines.append(f"| {kind} | {f['uncontended_ns']:.0f} ns | {f['write_us']:.2f} µs | "
                     f"{f['bytes']:.0f} B | {f['session_bytes'] / 1024:.1f} KiB |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(render(trio.run(measure, args.quick)))


if __name__ == "__main__":
    main()
