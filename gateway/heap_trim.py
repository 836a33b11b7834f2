"""Giving the C heap's free pages back to the system after bursts of handshakes (glibc's
``malloc_trim``), so that a process holding idle sessions is charged for what they hold.

Why: a TLS handshake allocates and frees tens of KiB in OpenSSL (the ClientHello, the key
exchange, the certificate's parsing, the handshake's buffers) between the allocations that live
as long as the session. glibc keeps what is freed inside its heap for reuse and gives back only
the top of the heap on its own, so after thousands of handshakes the heap holds free pages
among the sessions' memory, resident for nothing. ``malloc_trim(0)`` returns every whole free
page (``madvise``); measured holding 2,000 relayed sessions just connected, about 1 KiB per
session of resident memory (docs/performance.md, "Reading the figures").

``trim_after_handshakes`` trims once a burst is over: at least ``TRIM_AFTER`` handshakes
ended since the last trim and fewer than ``QUIET`` in the last ``TICK_S`` (so the trim comes a
second or two after a storm, not in its midst), or, under a steady stream of handshakes,
``TRIM_AT_LEAST_EVERY_S`` after the last trim. An idle process never trims. Where the C library
has no ``malloc_trim`` (musl, macOS) nothing is done.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import trio

#: Seconds between two looks at the handshake count.
TICK_S = 1.0
#: Handshakes (ended, whatever their outcome) since the last trim that make a burst.
TRIM_AFTER = 64
#: Fewer handshakes than this in the last tick: the burst is over.
QUIET = 16
#: Under a steady stream of handshakes (never quiet), trim this often all the same.
TRIM_AT_LEAST_EVERY_S = 60.0


def malloc_trim() -> Callable[[], bool] | None:
    """glibc's ``malloc_trim(0)`` (True when it gave memory back), or None where the process's
    C library has none."""
    try:
        libc = ctypes.CDLL(None)  # the C library the process runs on
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: bool(trim(0))


async def trim_after_handshakes(handshakes: Callable[[], int], *,
                                trim: Callable[[], bool] | None = None) -> None:
    """Run until cancelled, trimming (``trim``, else ``malloc_trim()``) after each burst of
    handshakes; ``handshakes()`` is a count that only grows (see the module docstring)."""
    trim = trim or malloc_trim()
    if trim is None:
        return
    last = previous = handshakes()
    trimmed_at = trio.current_time()
    while True:
        await trio.sleep(TICK_S)
        count = handshakes()
        burst_over = count - previous < QUIET
        overdue = trio.current_time() - trimmed_at >= TRIM_AT_LEAST_EVERY_S
        previous = count
        if count - last >= TRIM_AFTER and (burst_over or overdue):
            last = count
            trimmed_at = trio.current_time()
            trim()
