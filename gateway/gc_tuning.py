"""How a serving process sets up Python's cyclic garbage collector for holding thousands of
long-lived sessions (``tune``, called once the process has loaded everything it starts with),
and for closing them all at shutdown (``stop_collecting``).

Why: a relayed session is about a hundred objects the collector tracks, so a worker holding
9,000 sessions has about a million, and a full (generation 2) collection walks them all: about
0.2 s for 2,000 sessions, a second or more at 9,000, with the event loop stopped. CPython runs
one after every ``threshold2`` (10 by default) generation-1 collections once the objects that
survived since the last full one exceed a quarter of the long-lived ones, which is exactly what
a burst of closing sessions produces: in a revocation of 2,000 sessions measured in one process,
two full collections took 0.44 s of the 1.39 s of CPU the whole revocation cost. Two measures:

* ``gc.freeze()`` once started: the objects of the imports, the configuration and the first
  trust state (most of what the process holds before any session) move to the permanent
  generation that collections skip;
* generation 2 is collected after ``FULL_AFTER`` generation-1 collections instead of 10 (the
  quarter rule still applies): a revocation or a storm of thousands of sessions runs without a
  full collection in its midst; cyclic garbage is still collected by the young generations
  when it dies young, and by the next full collection otherwise.
"""

from __future__ import annotations

import gc

#: Generation-1 collections between two full collections (CPython's default: 10).
FULL_AFTER = 100


def tune() -> None:
    young, middle, _ = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(young, middle, FULL_AFTER)


def stop_collecting() -> None:
    """At shutdown, once the process drains: no more collections. Closing thousands of sessions
    at once allocates in bursts (each session's ``Cancelled`` and its traceback, its closing
    handshakes, its log line) and the collector ran about once per 15 sessions, a quarter of
    the drain's CPU (0.5 of 2.1 s for 5,000 sessions, docs/performance.md). What it would
    reclaim is reference cycles of sessions already closed, a few KiB each, bounded by the
    sessions the process held; the process exits right after and frees everything. Called by
    ``gateway.serve.main`` when its stop begins, never by an embedded ``Switch`` (tests)."""
    gc.disable()
