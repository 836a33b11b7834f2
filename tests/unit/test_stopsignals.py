"""gateway/stopsignals.py: a repeated stop signal does not kill a stopping process, during its
shutdown or after (a late copy of the group's SIGTERM made half of a six-worker bench's workers
exit -15 after they had drained); before a stop, a signal keeps its default action."""

from __future__ import annotations

import signal

from gateway.stopsignals import STOP_SIGNALS, repeats_ignored_once_stopping


def test_once_stopping_a_stop_signal_is_ignored_during_and_after_the_shutdown() -> None:
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    try:
        stopping = False
        with repeats_ignored_once_stopping(lambda: stopping):
            stopping = True
            signal.raise_signal(signal.SIGTERM)  # ignored by the handler: still running
        assert all(signal.getsignal(s) is signal.SIG_IGN for s in STOP_SIGNALS)
        signal.raise_signal(signal.SIGTERM)  # the late copy: ignored too
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_without_a_stop_the_previous_handlers_come_back() -> None:
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    with repeats_ignored_once_stopping(lambda: False):
        assert all(callable(signal.getsignal(s)) for s in STOP_SIGNALS)
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before
