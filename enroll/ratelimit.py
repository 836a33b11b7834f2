"""Rate limiting of failed authentication attempts, per source address.

Pure and clock-free: every call takes ``now`` (seconds, any monotonic origin). A source that made
``max_failures`` failed attempts within ``window_s`` seconds is refused until the oldest of those
failures leaves the window; the refusal says how long to wait (``Retry-After``). Successful
attempts do not reset the count: a brute-forcer who guesses one key right must not earn more
guesses at the others.

One limiter per serving process (``gateway.serve.Switch`` makes it and hands it to every
``EstService`` it builds, so a reload keeps the counts); it is not shared between the processes of
``serve --workers N``, each of which counts the connections it accepted.

Memory is bounded: at most ``max_sources`` addresses are tracked; when full, the source whose
newest failure is oldest is forgotten first (an attacker spraying addresses can only make the
limiter forget, never grow).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque

import attrs


@attrs.define(eq=False)
class FailureLimiter:
    max_failures: int = 5
    window_s: float = 60.0
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
        if times is None or len(times) < self.max_failures:
            return None
        return max(1, math.ceil(times[0] + self.window_s - now))

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
