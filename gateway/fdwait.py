"""Trio's wait for a readable socket, entered with two coroutines fewer (memory per idle session).

Every idle relaying session has two waits in progress for its whole life, one per direction
(``gateway.relay.pump``), and what a wait keeps alive is paid per session. The public
``trio.lowlevel.wait_readable`` is a generated wrapper that awaits the run's I/O manager's
``wait_readable``, which awaits its ``_epoll_wait``: two coroutine frames (about 0.2 KiB each)
that only pass the call on. ``wait_readable`` here returns ``_epoll_wait``'s coroutine itself
(tracemalloc, 1,000 relayed sessions: 0.85 KiB less per session).

It reaches into Trio's run state (``GLOBAL_RUN_CONTEXT.runner.io_manager``, the epoll
manager's ``_epoll_wait(fd, "read_task")``), which no public API offers. Where that is not
there (another platform's I/O manager, a Trio that renamed it), the public wait is used: the
same semantics (``BusyResourceError`` for a second waiter, ``ClosedResourceError`` on
``notify_closing``, cancellable), one wrapper deeper. ``fast_path()`` says which one runs, and
tests/unit/test_fdwait.py fails when the fast path is gone, so that a Trio upgrade that
removes it is noticed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

_run: Any
try:
    from trio._core import _run
except ImportError:  # pragma: no cover - a Trio that moved it: the public wait is used
    _run = None


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


def _epoll_wait() -> Callable[[Any, str], Awaitable[None]] | None:
    """The current run's ``_epoll_wait``, or None."""
    try:
        return _run.GLOBAL_RUN_CONTEXT.runner.io_manager._epoll_wait  # type: ignore[no-any-return]
    except AttributeError:
        return None


def fast_path() -> bool:
    """Whether ``wait_readable`` skips Trio's wrappers in this run."""
    return _epoll_wait() is not None


def wait_readable(sock: int | _HasFileno) -> Awaitable[None]:
    """``trio.lowlevel.wait_readable(sock)``, to be awaited by the caller (returned, not awaited
    here: a coroutine of ours would stay alive for the whole wait)."""
    wait = _epoll_wait()
    if wait is None:
        return trio.lowlevel.wait_readable(sock)  # noqa: ASYNC105 - awaited by the caller
    return wait(sock, "read_task")
