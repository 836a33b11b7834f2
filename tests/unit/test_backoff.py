"""The reconnect back-off of the reference agent and the load generator (gateway/client/backoff.py):
full jitter, so that a fleet the gateway dropped at once comes back spread out. These tests look
at the distribution of the waits, not at time."""

from __future__ import annotations

import random
import statistics

import pytest

from gateway.client.backoff import (
    MAX_BACKOFF_S,
    STABLE_SESSION_S,
    Reconnects,
    backoff_cap_s,
    backoff_s,
)
from tests.support.agent import RecordingRandom


def test_backoff_is_full_jitter_capped_and_never_overflows() -> None:
    rng = RecordingRandom()
    assert [backoff_s(n, rng) for n in range(1, 10)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert backoff_s(100_000, rng) == 60  # an agent failing for weeks: no OverflowError
    spread = {round(backoff_s(3), 3) for _ in range(200)}
    assert len(spread) > 100 and all(0 <= s <= 4 for s in spread)


@pytest.mark.parametrize("failures", [1, 3, 7, 12])
def test_waits_fill_the_whole_interval_from_zero_to_the_cap_evenly(failures: int) -> None:
    # 20,000 agents that failed alike: their waits, in ten equal slices of [0, cap], put about
    # a tenth in each slice. Equal jitter (cap/2 + uniform(0, cap/2)) would leave the lower half
    # empty, a fixed delay would put them all in one slice: both bring a storm back at once.
    rng = random.Random(2024)
    cap = backoff_cap_s(failures)
    waits = [backoff_s(failures, rng) for _ in range(20_000)]
    assert all(0 <= w <= cap for w in waits)
    slices = [0] * 10
    for w in waits:
        slices[min(int(w / cap * 10), 9)] += 1
    assert all(1_700 <= n <= 2_300 for n in slices), slices
    assert statistics.fmean(waits) == pytest.approx(cap / 2, rel=0.03)
    assert min(waits) < cap * 0.001 and max(waits) > cap * 0.999


def test_the_first_wait_after_a_server_close_is_random_and_at_most_a_second() -> None:
    # A restart closes every session at once: each agent's first wait is its own draw from
    # [0, 1 s], never the same fixed pause.
    firsts = [Reconnects(random.Random(seed)).after_session(held_s=3600.0) for seed in range(2_000)]
    assert all(0 <= w <= 1.0 for w in firsts)
    assert len({round(w, 6) for w in firsts}) > 1_990
    assert statistics.fmean(firsts) == pytest.approx(0.5, rel=0.05)


def test_failed_attempts_widen_the_interval_until_a_session_holds() -> None:
    rng = RecordingRandom()
    reconnects = Reconnects(rng)
    reconnects.after_session(held_s=STABLE_SESSION_S)       # the gateway restarted
    for _ in range(8):
        reconnects.after_failure()                           # refused while it starts
    reconnects.after_session(held_s=1.0)                     # ended at once: still failing
    reconnects.after_session(held_s=STABLE_SESSION_S + 1)    # held: starts over
    assert rng.caps == [1, 2, 4, 8, 16, 32, 60, 60, 60, 60, 1]
    assert max(rng.caps) == MAX_BACKOFF_S
