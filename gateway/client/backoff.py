"""How long an agent waits before it tries again: exponential back-off with full jitter, shared by
the reference agent and the load generator so that a fleet spreads a reconnection storm.

"Full jitter" (AWS Architecture Blog, "Exponential Backoff And Jitter", 2015): the n-th
consecutive failure waits ``uniform(0, min(MAX_BACKOFF_S, BACKOFF_BASE_S * 2^n))``. Every wait,
the first one after the server closed included (n = 1: uniform in [0, 1 s]), is drawn from the
whole interval, so agents the gateway dropped together come back spread over it instead of in
lockstep, as they would with a fixed delay or with "equal jitter" (half fixed, half random).
"""

from __future__ import annotations

import random

import attrs

BACKOFF_BASE_S = 0.5
MAX_BACKOFF_S = 60.0
#: A session held at least this long resets the back-off; one the gateway or the upstream ends at
#: once counts as a failure, so that it cannot turn into a reconnect loop at the shortest delay.
STABLE_SESSION_S = MAX_BACKOFF_S
#: The exponent stops growing here (0.5 s * 2^16 is far above the cap): an agent that fails for
#: days must not overflow a float.
_MAX_EXPONENT = 16


def backoff_cap_s(failures: int) -> float:
    """The longest wait after ``failures`` consecutive failures: min(cap, base * 2^failures)."""
    return min(MAX_BACKOFF_S, BACKOFF_BASE_S * 2.0 ** min(max(failures, 0), _MAX_EXPONENT))


def backoff_s(failures: int, rng: random.Random | None = None) -> float:
    """The wait before the next attempt after ``failures`` consecutive failures: uniform in
    [0, ``backoff_cap_s(failures)``] (full jitter). ``rng`` defaults to the ``random`` module,
    which each process seeds from the operating system."""
    return (rng or random).uniform(0, backoff_cap_s(failures))


@attrs.define
class Reconnects:
    """The back-off of one agent's reconnect loop: ``failures`` counts the attempts since the last
    session that held ``STABLE_SESSION_S``. The reference agent and each of the load generator's
    simulated agents keep one."""

    rng: random.Random | None = None
    failures: int = 0

    def after_session(self, held_s: float) -> float:
        """The wait after a session that was open ``held_s`` seconds ended (the server closed it,
        the connection dropped): at least one failure, so the first wait is random too."""
        if held_s >= STABLE_SESSION_S:
            self.failures = 0
        return self.after_failure()

    def after_failure(self) -> float:
        """The wait after an attempt that did not open a session."""
        self.failures += 1
        return backoff_s(self.failures, self.rng)
