"""A cheap EST load generator for the bench's section (c): prepared ``simpleenroll`` requests
written on keep-alive TLS connections by blocking threads, the reply read up to its
``Content-Length`` and its status checked, nothing parsed. On two cores the generator competes with
the server it measures, so it must cost as little CPU per request as it can (the reference EST
client parses every reply's PKCS#7 and certificate: several times this)."""

from __future__ import annotations

import base64
import socket
import ssl
import threading
import time
from typing import Any


def prepared(host: str, path: str, secret: str, csr_der: bytes) -> bytes:
    """The bytes of one ``simpleenroll`` request for ``csr_der`` on a keep-alive connection."""
    body = base64.encodebytes(csr_der)
    token = base64.b64encode(f"agent:{secret}".encode()).decode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/pkcs10\r\n"
            f"Authorization: Basic {token}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def _read_reply(sock: ssl.SSLSocket, buffer: bytearray) -> int:
    """Read one reply (status line, headers, ``Content-Length`` body) off ``sock``; its status.
    ``buffer`` keeps what was read beyond it (none, for a client that waits for each reply)."""
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            break
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        buffer += chunk
    head = bytes(buffer[:end]).lower()
    status = int(head[9:12])
    at = head.find(b"\r\ncontent-length:")
    stop = head.find(b"\r\n", at + 2)
    length = int(head[at + 17:stop if stop >= 0 else len(head)]) if at >= 0 else 0
    total = end + 4 + length
    while len(buffer) < total:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        buffer += chunk
    del buffer[:total]
    return status


def run(spec: dict[str, Any], requests: list[bytes], threads: int, go: Any, results: Any) -> None:
    """One generator process: ``threads`` connections to ``spec["port"]``, each sending the next
    prepared request once its reply is in, all released together by ``go``; puts (requests,
    failures, end time, this process's CPU seconds over the run) on ``results``. A failure is
    any request not answered 200: refused, cut off, or never sent because every connection
    broke (a connection that breaks leaves the rest of the requests to the others)."""
    context = ssl.create_default_context(cafile=spec["ca"])
    lock = threading.Lock()
    todo = iter(requests)
    issued = 0
    ready = threading.Barrier(threads + 1)

    def worker() -> None:
        nonlocal issued
        try:
            raw = socket.create_connection(("127.0.0.1", spec["port"]), timeout=60)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = context.wrap_socket(raw, server_hostname=spec["host"])
        finally:
            ready.wait(timeout=120)  # the others start even if this connection did not open
        buffer = bytearray()
        go.wait()
        try:
            while True:
                with lock:
                    request = next(todo, None)
                if request is None:
                    return
                sock.sendall(request)
                if _read_reply(sock, buffer) == 200:
                    with lock:
                        issued += 1
        finally:
            sock.close()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    ready.wait(timeout=120)
    go.wait()
    cpu0 = time.process_time()
    for t in pool:
        t.join()
    results.put((len(requests), len(requests) - issued, time.monotonic(),
                 time.process_time() - cpu0))
