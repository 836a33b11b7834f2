"""The liveness of relaying sessions: one sweep per process pings each agent that has been silent
for ``ping_interval_s``, evicts one that leaves a ping unanswered for another interval
(``ping_timeout``) or stays silent for ``idle_timeout_s`` (``idle_timeout``).

Why one sweep rather than a timer per session: an idle session's agent direction used to wait
for data under a cancel scope whose deadline was its next ping; each wait then held a scope, its
cancel status and a deadline entry in Trio's timer heap (about 1.2 KiB per idle session), and
each ping raised ``Cancelled`` through the waiting task and built a new scope (a fifth of an idle
process's CPU). Now the agent's direction waits with no timer at all (``gateway.relay.pump``)
and only notes when it last heard from the agent (``Relaying.last_heard``); the sweep keeps a
heap of when each session is next due, and looks at a session only then:

- heard from within the interval (the due time has moved on): the session goes back on the heap
  at its new due time (entries are never moved; a stale one is dropped when it comes up, since
  its due time is no longer the session's ``due``);
- silent for ``idle_timeout_s``: evicted (``idle_timeout``);
- a ping out and unanswered for an interval: evicted (``ping_timeout``);
- silent for an interval and no ping out: a ping goes out from a short task in the session's
  relay nursery (a write can block on a peer that does not read; the sweep never waits on one),
  under ``write_timeout_s`` (past it the session ends as ``agent_write_timeout``); the interval
  the answer has starts once the ping is out. When the
  relayed bytes end inside a frame (the upstream is half-way through one), the ping is tried
  again after ``PING_RETRY_S``.

A session found past its time is looked at once more ``EVICTION_GRACE_S`` later and evicted
only if it still is: the sweep and the agent's read can wake in the same turn of the event loop,
and a pong that arrived as the ping's time ran out must count. An eviction cancels the relay's scope (``Session.evict``), which ends a read left waiting in the
middle of a TLS record too. A session's timing comes from the settings it started with, as
before. The sweep is a Trio system task, started with the first session of a run
(``Keepalive.current``): a process-wide service with nothing to return, ended with the run.
"""

from __future__ import annotations

import heapq
import itertools
import os

import structlog
import trio

from gateway.relay.pump import Ended, Relaying
from gateway.wsframes import ping_frame

log = structlog.get_logger("switch.gateway")

#: After a ping could not be sent (the agent's stream was inside a relayed frame): try again.
PING_RETRY_S = 1.0
#: A session found past its time is evicted only if it still is this much later (``_visit``).
EVICTION_GRACE_S = 0.1
_INFINITY = float("inf")


class Keepalive:
    """The sweep of one Trio run (``current``): ``watch`` a relaying session when it starts."""

    _run_var: trio.lowlevel.RunVar[Keepalive] = trio.lowlevel.RunVar("switch_keepalive")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Relaying]] = []
        self._order = itertools.count()
        self._sleep: trio.CancelScope | None = None

    @classmethod
    def current(cls) -> Keepalive:
        """This run's sweep, started on first use."""
        try:
            return cls._run_var.get()
        except LookupError:
            keepalive = cls()
            cls._run_var.set(keepalive)
            trio.lowlevel.spawn_system_task(keepalive._sweep, name="gateway.relay.keepalive")
            return keepalive

    def __len__(self) -> int:
        """Entries on the heap (stale ones included)."""
        return len(self._heap)

    def watch(self, relaying: Relaying) -> None:
        """Look after ``relaying`` from now on (nothing to do when its settings ask for neither
        pings nor an idle limit)."""
        relaying.last_heard = trio.current_time()
        self._schedule(relaying, _next_due(relaying))

    @staticmethod
    def forget(relaying: Relaying) -> None:
        """The session is over: its entry on the heap (until it comes up) no longer holds its
        streams (and their OpenSSL objects) alive."""
        relaying.due = -_INFINITY
        relaying.agent = None
        relaying.ended = None  # its traceback holds the directions' frames, and their sides

    def _schedule(self, relaying: Relaying, due: float) -> None:
        relaying.due = due
        if due == _INFINITY:
            return
        heapq.heappush(self._heap, (due, next(self._order), relaying))
        if self._sleep is not None and due < self._sleep.deadline:
            self._sleep.deadline = due

    async def _sweep(self) -> None:
        while True:
            with trio.CancelScope(deadline=self._heap[0][0] if self._heap else _INFINITY
                                  ) as self._sleep:
                await trio.sleep_forever()
            self._sleep = None
            now = trio.current_time()
            heap = self._heap
            while heap and heap[0][0] <= now:
                due, _, relaying = heapq.heappop(heap)
                if due != relaying.due or relaying.nursery.cancel_scope.cancel_called:
                    continue  # stale (the session moved on or was looked at since) or over
                try:
                    self._visit(relaying, now)
                except Exception:  # noqa: BLE001 - one session's fault must not end the sweep
                    log.exception("keepalive_failed", peer=relaying.session.peer)
                    relaying.session.evict("internal_error")

    def _visit(self, relaying: Relaying, now: float) -> None:
        settings = relaying.settings
        interval, idle_limit = settings.ping_interval_s, settings.idle_timeout_s
        reason = None
        if idle_limit > 0 and now >= relaying.last_heard + idle_limit:
            reason = "idle_timeout"
        elif interval > 0 and relaying.pinged_at is not None:
            if now >= relaying.pinged_at + interval:
                reason = "ping_timeout"
        elif interval > 0 and now >= relaying.last_heard + interval:
            # Being sent: the wait for the answer starts once it is out (a ping that waits for
            # the write lock behind a stalled write is that write's timeout, not ping_timeout).
            relaying.pinged_at = _INFINITY
            self._schedule(relaying, _INFINITY)  # on no heap entry: the ping's task puts it back
            relaying.nursery.start_soon(self._ping, relaying, name="gateway.relay.ping")
            return
        if reason is not None and relaying.warned:
            relaying.session.evict(reason)
            return
        relaying.warned = reason is not None
        # Condemned: look once more after a moment, so that what arrived from the agent just as
        # its time ran out (a busy event loop runs this sweep before the read) still counts.
        self._schedule(relaying, now + EVICTION_GRACE_S if relaying.warned
                       else _next_due(relaying))

    async def _ping(self, relaying: Relaying) -> None:
        """Send one ping to the agent, under ``write_timeout_s``; when its stream is inside a
        relayed frame now, look again in ``PING_RETRY_S``.

        The pong is expected before the ping goes out: this task may run again only after the
        agent's direction has read the answer (a write can yield after its bytes left), and a
        pong read before ``expect_pong`` was set would be relayed upstream and the ping taken
        for unanswered (``ping_timeout`` an interval later)."""
        agent = relaying.agent
        if agent is None:  # the session is over
            return
        payload = os.urandom(4)
        agent.reader.expect_pong = payload
        try:
            with trio.move_on_after(relaying.settings.write_timeout_s) as timer:
                sent = await agent.inject(ping_frame(payload, mask=agent.mask))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            relaying.end(True, exc)
            return
        if timer.cancelled_caught:  # the agent stopped reading
            relaying.end(True, Ended(True, 1006, None, stalled=True))
        elif sent:
            # Answered already (the reader consumed the pong and cleared it): nothing is out.
            answered = agent.reader.expect_pong is not payload
            relaying.pinged_at = None if answered else trio.current_time()
            self._schedule(relaying, _next_due(relaying))
        else:  # the upstream is half-way through a frame to the agent
            agent.reader.expect_pong = None
            relaying.pinged_at = None
            self._schedule(relaying, trio.current_time()
                           + min(relaying.settings.ping_interval_s, PING_RETRY_S))


def _next_due(relaying: Relaying) -> float:
    """When ``relaying`` must next be looked at, from what it last heard and the ping out."""
    settings = relaying.settings
    interval, idle_limit = settings.ping_interval_s, settings.idle_timeout_s
    due = _INFINITY
    if interval > 0:
        due = (relaying.pinged_at if relaying.pinged_at is not None
               else relaying.last_heard) + interval
    if idle_limit > 0:
        due = min(due, relaying.last_heard + idle_limit)
    return due
