"""Rate limiting of failed authentication attempts, per source address.

The rule (``retry_after``) is pure and clock-free: a source that made ``max_failures`` failed
attempts within ``window_s`` seconds is refused until the oldest of those failures leaves the
window; the refusal says how long to wait (``Retry-After``). Successful attempts do not reset the
count: a brute-forcer who guesses one key right must not earn more guesses at the others.

Two limiters apply it. ``SharedFailureLimiter`` (what the EST service uses) counts failures in
the store, so every worker and every host sharing the store counts the same failures: five
guesses a minute in total, not five per process. A check is a read; only a failure writes, and
each failure recorded prunes failures that left the window. Two guesses checked at the same
moment on two hosts may both pass the check before either is counted, so a burst of concurrent
guesses can exceed the limit by the number of requests in flight; sequential guessing cannot.
``FailureLimiter`` keeps the counts in one process's memory (for tools and tests), bounded:
at most ``max_sources`` addresses are tracked; when full, the source whose newest failure is
oldest is forgotten first (an attacker spraying addresses can only make it forget, never grow).

Times are seconds; the shared limiter needs wall-clock time (hosts share it), the in-memory one
accepts any origin.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Protocol

import attrs

from enroll.store import Store

MAX_FAILURES = 5
WINDOW_S = 60.0


class Limiter(Protocol):
    def retry_after(self, source: str, now: float) -> int | None: ...

    def record_failure(self, source: str, now: float) -> None: ...


def retry_after(failures: Sequence[float], now: float, *, max_failures: int = MAX_FAILURES,
                window_s: float = WINDOW_S) -> int | None:
    """Seconds to wait before trying again after ``failures`` (times, oldest first), or None
    when another attempt may be made now."""
    recent = [t for t in failures if t > now - window_s]
    if len(recent) < max_failures:
        return None
    oldest_counted = recent[-max_failures]
    return max(1, math.ceil(oldest_counted + window_s - now))


@attrs.define(eq=False)
class SharedFailureLimiter:
    """Failures counted in the store (see the module docstring)."""

    store: Store
    max_failures: int = MAX_FAILURES
    window_s: float = WINDOW_S

    def retry_after(self, source: str, now: float) -> int | None:
        return retry_after(self.store.auth_failures(source, now - self.window_s), now,
                           max_failures=self.max_failures, window_s=self.window_s)

    def record_failure(self, source: str, now: float) -> None:
        self.store.record_auth_failure(source, now, forget_before=now - self.window_s)


@attrs.define(eq=False)
class FailureLimiter:
    max_failures: int = MAX_FAILURES
    window_s: float = WINDOW_S
    max_sources: int = 100_000
    _failures: OrderedDict[str, deque[float]] = attrs.field(factory=OrderedDict, init=False)

    def _recent(self, source: str, now: float) -> deque[float] | None:
        times = self._failures.get(source)
        if times is None:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[source]
            return None
        return times

    def retry_after(self, source: str, now: float) -> int | None:
        """Seconds the source must wait before trying again, or None when it may try now."""
        times = self._recent(source, now)
        if times is None:
            return None
        return retry_after(times, now, max_failures=self.max_failures, window_s=self.window_s)

    def record_failure(self, source: str, now: float) -> None:
        times = self._recent(source, now)
        if times is None:
            times = deque(maxlen=self.max_failures)
            self._failures[source] = times
            while len(self._failures) > self.max_sources:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(source)
        times.append(now)

    def __len__(self) -> int:
        return len(self._failures)
