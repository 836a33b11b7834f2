"""How a serving process learns that the store changed, and whether it can read the store.

Theory of operation: ``StoreWatch.next_change`` is what the store watcher (``gateway.serve``)
waits on between two reads of the change generation. It returns when the store pushed a change
notice (PostgreSQL ``NOTIFY``, received by ``run`` through the store's ``ChangeFeed`` in a worker
thread), or when the store's poll interval has passed, whichever is first: with PostgreSQL the
poll is the safety net under lost notices, with SQLite (no feed) it is the only signal.

Health: the watcher reports each read (``read_ok`` / ``read_failed``); the feed reports its
connection. ``switch_store_up`` (1 while the last read succeeded) and
``switch_store_listener_up`` (1 while the feed listens; absent without a feed) show them in
/metrics, and a change of either is logged once (``store_unreachable`` / ``store_reachable``,
``store_feed_*`` from the feed itself), never once per poll. Nothing here opens the gate: while
the store cannot be read the gateway keeps enforcing the last trust state it read.
"""

from __future__ import annotations

import threading

import structlog
import trio
from prometheus_client import CollectorRegistry, Gauge

from enroll.store import ChangeFeed, Store

log = structlog.get_logger("switch.store")

#: The longest one wait of the feed's thread: how soon it notices that it must stop.
FEED_WAIT_S = 1.0
#: While the store stays unreachable, ``store_unreachable`` is logged again this often.
REPEAT_LOG_S = 30.0


class StoreWatch:
    def __init__(self, store: Store, registry: CollectorRegistry) -> None:
        self.store = store
        self.poll_interval_s = store.poll_interval_s
        self.up = True
        self.problem: str | None = None
        self._changed = trio.Event()
        self._down_logged_at: float | None = None
        self._store_up = Gauge("switch_store_up", "1 while the store can be read, 0 after a "
                               "read failed (the last trust state read stays in force); the "
                               "lowest of the workers'", registry=registry,
                               multiprocess_mode="livemin")
        self._store_up.set(1)
        self._feed: ChangeFeed | None = store.change_feed()
        self._listener_up: Gauge | None = None
        if self._feed is not None:
            self._listener_up = Gauge("switch_store_listener_up", "1 while this process listens "
                                      "for the store's change notices (every worker, else 0)",
                                      registry=registry, multiprocess_mode="livemin")
            self._listener_up.set(0)

    async def next_change(self) -> None:
        """Until a change was pushed, or the poll interval passed."""
        with trio.move_on_after(self.poll_interval_s):
            await self._changed.wait()
        self._changed = trio.Event()

    def read_ok(self) -> None:
        if not self.up:
            log.info("store_reachable", store=self.store.describe())
        self.up, self.problem, self._down_logged_at = True, None, None
        self._store_up.set(1)

    def read_failed(self, error: str) -> None:
        now = trio.current_time()
        if self._down_logged_at is None or now - self._down_logged_at >= REPEAT_LOG_S:
            log.error("store_unreachable", store=self.store.describe(), error=error,
                      detail="enforcing the last trust state read; enrollment answers 503")
            self._down_logged_at = now
        self.up, self.problem = False, error
        self._store_up.set(0)

    async def run(self) -> None:
        """Receive pushed notices until cancelled (returns at once when the store has none)."""
        feed = self._feed
        if feed is None:
            return
        token = trio.lowlevel.current_trio_token()
        stopped = threading.Event()

        def listen() -> None:
            connected = False
            while not stopped.is_set():
                changed = feed.wait(FEED_WAIT_S)
                if changed or feed.connected != connected:
                    connected = feed.connected
                    try:
                        trio.from_thread.run_sync(self._notice, changed, connected,
                                                  trio_token=token)
                    except trio.RunFinishedError:
                        return

        try:
            await trio.to_thread.run_sync(listen, abandon_on_cancel=True)
        finally:
            # The thread sees these within FEED_WAIT_S, closes its connection and ends.
            stopped.set()
            feed.close()

    def _notice(self, changed: bool, connected: bool) -> None:
        if self._listener_up is not None:
            self._listener_up.set(1 if connected else 0)
        if changed:
            self._changed.set()
