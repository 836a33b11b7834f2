"""A Trio lock for the hot paths of a connection: free to take without a schedule point.

``trio.Lock`` yields to the scheduler on every acquire, even when nobody else wants the lock; on
the TLS and relay paths, where the lock is almost never contended and the operation it guards
(a socket send or receive) is itself a checkpoint, that costs a run-loop iteration per call and
some 600 bytes per lock (a ``ParkingLot`` and its dict). ``LightLock`` takes a free lock at once
and makes its ``ParkingLot`` only when a second task has to wait; ownership passes straight to
the first waiter (FIFO, as ``trio.Lock``). A task cancelled while waiting leaves the queue.

Use it only where the guarded block awaits something that checkpoints (so the caller still
checkpoints); it is not re-entrant. It stays only while it pays: ``scripts/benchlib/locks.py``
(``scripts/bench`` section f) measures it against ``trio.Lock`` and ``trio.StrictFIFOLock`` on
the relay's write path; the figures are in docs/performance.md.
"""

from __future__ import annotations

from types import TracebackType

from trio.lowlevel import ParkingLot


class LightLock:
    __slots__ = ("_held", "_waiters")

    def __init__(self) -> None:
        self._held = False
        self._waiters: ParkingLot | None = None

    def locked(self) -> bool:
        return self._held

    async def __aenter__(self) -> None:
        if not self._held:
            self._held = True
            return
        if self._waiters is None:
            self._waiters = ParkingLot()
        await self._waiters.park()  # woken by __aexit__ as the new owner

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._waiters:
            self._waiters.unpark()  # hand over: the lock stays held, by the woken task
        else:
            self._held = False
