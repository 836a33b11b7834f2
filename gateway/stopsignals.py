"""How a serving process (``switch serve``, its supervisor, each worker) keeps a repeated stop
signal from killing it while it shuts down.

Trio's signal receiver, as it closes, raises again every signal it holds unread, under the
handler that was in place before it was opened. A SIGTERM or SIGINT that arrives in the last
moments of a shutdown (a worker gets two when they are sent to its whole process group, one of
them forwarded by its supervisor) would then kill the process with the default action, and it
would not exit 0. ``repeats_ignored_once_stopping`` installs, under the receiver, a handler that
ignores them once the process is stopping, and leaves them ignored when it closes after a stop
began (a copy can come later still: the bench saw half of six workers exit -15 after draining);
before a stop began a signal does what it does by default.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def repeats_ignored_once_stopping(stopping: Callable[[], bool]) -> Iterator[None]:
    """Open around ``trio.open_signal_receiver``; ``stopping()`` says whether a stop began."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if stopping():
            return
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)

    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            # Once stopping, a stop signal stays ignored for what is left of the process: one
            # that comes after the receiver closed (the supervisor's forwarded copy, late) would
            # otherwise kill it with the default action, and it would not exit 0.
            signal.signal(signum, signal.SIG_IGN if stopping() else old)
