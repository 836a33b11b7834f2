"""Pushed change notices from PostgreSQL: ``LISTEN switch_changes`` on a connection of its own.

Theory of operation (psycopg's "Asynchronous notifications"): the feed holds one autocommit
connection that does nothing but ``LISTEN``; ``wait`` blocks on it for at most its timeout
(``Connection.notifies(timeout=...)``), so a caller's loop always gets control back to notice it
must stop. When the connection is lost (the server restarted, ``pg_terminate_backend``, a
network cut noticed by TCP keepalives), the feed logs it once, says so in ``connected`` and
``problem``, and reconnects on later waits with back-off (``BACKOFF_S`` doubling to
``MAX_BACKOFF_S``). A reconnection is reported as a change: notices sent while the feed was away
are lost, so the caller must read the store again. The feed never raises for connection trouble.

Used by one thread at a time; ``close`` may be called from any thread.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import psycopg
import structlog
from psycopg import sql

from enroll.store.base import ChangeFeed

log = structlog.get_logger("switch.store")

BACKOFF_S = 0.1
MAX_BACKOFF_S = 5.0


class PostgresChangeFeed(ChangeFeed):
    def __init__(self, conninfo: str, channel: str) -> None:
        self._conninfo = conninfo
        self._channel = channel
        self._conn: psycopg.Connection[Any] | None = None
        self._closed = threading.Event()
        self._backoff_s = BACKOFF_S
        self._next_attempt = 0.0
        self._problem: str | None = "not connected yet"
        self._was_connected = False

    @property
    def connected(self) -> bool:
        return self._conn is not None

    @property
    def problem(self) -> str | None:
        return self._problem

    def close(self) -> None:
        self._closed.set()

    def wait(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        if self._closed.is_set():
            self._disconnect()
            return False
        if self._conn is None:
            if time.monotonic() < self._next_attempt:
                self._closed.wait(max(0.0, min(deadline, self._next_attempt) - time.monotonic()))
                return False
            return self._connect()
        try:
            return bool(list(self._conn.notifies(
                timeout=max(0.0, deadline - time.monotonic()), stop_after=1)))
        except psycopg.Error as exc:
            self._lost(exc)
            return False
        finally:
            if self._closed.is_set():
                self._disconnect()

    def _connect(self) -> bool:
        try:
            conn = psycopg.connect(self._conninfo, autocommit=True)
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
        except psycopg.Error as exc:
            self._problem = _one_line(exc)
            self._next_attempt = time.monotonic() + self._backoff_s
            self._backoff_s = min(self._backoff_s * 2, MAX_BACKOFF_S)
            log.warning("store_feed_connect_failed", error=self._problem,
                        retry_in_s=round(self._next_attempt - time.monotonic(), 2))
            return False
        self._conn, self._problem, self._backoff_s = conn, None, BACKOFF_S
        log.info("store_feed_listening", channel=self._channel, again=self._was_connected)
        self._was_connected = True
        return True  # whatever was notified while not listening is lost: read the store

    def _lost(self, exc: BaseException) -> None:
        self._problem = _one_line(exc)
        log.error("store_feed_lost", error=self._problem)
        self._disconnect()
        self._next_attempt = time.monotonic() + self._backoff_s

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):  # already broken: nothing to release
                conn.close()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
