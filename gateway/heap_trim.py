"""Giving the C heap's free pages back to the system after bursts of handshakes (glibc's
``malloc_trim``), so that a process holding idle sessions is charged for what they hold.

Why: a TLS handshake allocates and frees tens of KiB in OpenSSL (the ClientHello, the key
exchange, the certificate's parsing, the handshake's buffers) between the allocations that live
as long as the session. glibc keeps what is freed inside its heap for reuse and gives back only
the top of the heap on its own, so after thousands of handshakes the heap holds free pages
among the sessions' memory, resident for nothing. ``malloc_trim(0)`` returns every whole free
page (``madvise``); measured holding 2,000 relayed sessions just connected, about 1 KiB per
session of resident memory (docs/performance.md, "Reading the figures").

``trim_after_handshakes`` trims at most every ``TRIM_EVERY_S`` and only when at least
``TRIM_AFTER`` handshakes ended since the last trim: a burst is followed by a trim within a few
seconds, and an idle process never trims. Where the C library has no ``malloc_trim`` (musl,
macOS) nothing is done.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import trio

#: Seconds between two looks at the handshake count.
TRIM_EVERY_S = 5.0
#: Handshakes (ended, whatever their outcome) since the last trim that make the next look trim.
TRIM_AFTER = 64


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
                                trim: Callable[[], bool] | None = None,
                                every_s: float = TRIM_EVERY_S, after: int = TRIM_AFTER) -> None:
    """Run until cancelled: every ``every_s``, trim (``trim``, else ``malloc_trim()``) when
    ``handshakes()`` (a count that only grows) moved by at least ``after`` since the last trim."""
    trim = trim or malloc_trim()
    if trim is None:
        return
    last = handshakes()
    while True:
        await trio.sleep(every_s)
        count = handshakes()
        if count - last >= after:
            last = count
            trim()
