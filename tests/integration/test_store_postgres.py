"""What only the PostgreSQL engine does, against the session's real server: change notices
(LISTEN/NOTIFY) and their feed's reconnection, issuer keys sealed under the passphrase, the
passphrase check, and a database that goes away and comes back."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import psycopg
import pytest

from config.model import StoreSettings, SwitchConfig
from enroll import issuers, keywrap
from enroll.errors import StoreError, StoreUnavailable
from enroll.keys import KeyAction
from enroll.store import Store, open_store
from enroll.store.postgres import PostgresStore
from tests.support.postgres import PASSPHRASE, PASSWORD, PostgresServer

NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
TS = int(NOW.timestamp())
#: A bound on waits for something that happens at once (a notice, a reconnection), never a
#: speed being measured: the tests only check that it happens.
WAIT_S = 10.0


@attrs.define
class Database:
    server: PostgresServer
    name: str

    @property
    def url(self) -> str:
        return self.server.url(self.name)

    def open(self, passphrase: bytes = PASSPHRASE) -> PostgresStore:
        # A short wait for a pooled connection: the loss tests wait it out on each call.
        return PostgresStore.open(self.url, password=PASSWORD, passphrase=passphrase,
                                  pool_timeout_s=1.0)

    def allow_connections(self, allowed: bool) -> None:
        with self.server.admin() as conn:
            conn.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            self.server.terminate(self.name)


@pytest.fixture
def database(postgres: PostgresServer) -> Iterator[Database]:
    name = postgres.create_database()
    yield Database(postgres, name)
    postgres.drop_database(name)


@pytest.fixture
def pg(database: Database) -> Iterator[PostgresStore]:
    store = database.open()
    yield store
    store.close()


def _make(seq: int) -> issuers.Material:
    return issuers.make_issuer("acme", seq, key_type="ec-p256", validity_s=86400, now=NOW)


def test_a_committed_change_reaches_a_listening_feed(database: Database, pg: Store) -> None:
    feed = pg.change_feed()
    assert feed is not None
    try:
        assert feed.wait(WAIT_S) is True  # connected: read the store now
        assert feed.connected and feed.problem is None
        assert feed.wait(0.05) is False  # nothing happened
        pg.set_service("acme", True, actor="t", ts=TS, make_issuer=_make)
        assert feed.wait(WAIT_S) is True
        with pytest.raises(StoreError), pg.transaction():  # rolled back: nothing is announced
            pg.set_service("acme", False, actor="t", ts=TS, make_issuer=_make)
            raise StoreError("changed my mind")
        assert feed.wait(0.2) is False
        assert database.server.listeners(database.name)
    finally:
        feed.close()
        feed.wait(0)


def test_a_feed_whose_connection_is_killed_says_so_and_reconnects(database: Database,
                                                                   pg: Store) -> None:
    feed = pg.change_feed()
    assert feed is not None
    try:
        assert feed.wait(WAIT_S)
        [pid] = database.server.listeners(database.name)
        assert database.server.terminate(database.name) >= 1
        assert feed.wait(WAIT_S) is False  # the loss, noticed within one wait
        assert not feed.connected and feed.problem
        # Changes made meanwhile are not lost: reconnecting reports a change (read the store).
        pg.set_service("acme", True, actor="t", ts=TS, make_issuer=_make)
        reconnected = False
        for _ in range(100):
            if feed.wait(0.1):
                reconnected = True
                break
        assert reconnected and feed.connected and feed.problem is None
        assert database.server.listeners(database.name) not in ([], [pid])
        pg.set_service("acme", False, actor="t", ts=TS, make_issuer=_make)
        assert feed.wait(WAIT_S) is True  # and listens again
    finally:
        feed.close()
        feed.wait(0)


def test_a_feed_closed_from_another_thread_ends_its_wait(pg: Store) -> None:
    feed = pg.change_feed()
    assert feed is not None
    assert feed.wait(WAIT_S)
    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(feed.wait(1.0)))
    waiter.start()
    feed.close()
    waiter.join(timeout=WAIT_S)
    assert result == [False] and not feed.connected


def test_issuer_keys_are_sealed_in_the_database_never_in_clear(database: Database,
                                                                pg: Store) -> None:
    pg.set_service("acme", True, actor="t", ts=TS, make_issuer=_make)
    [issuer] = pg.list_issuers("acme").issuers
    assert issuer.key_path == ""
    with psycopg.connect(database.url, password=PASSWORD) as raw:
        row = raw.execute("SELECT key_sealed FROM issuers").fetchone()
    assert row is not None
    sealed = bytes(row[0])
    assert sealed.startswith(keywrap.MAGIC) and b"PRIVATE KEY" not in sealed
    other = database.open()  # another host with the same passphrase signs with the same key
    try:
        assert other.load_issuer_key(issuer).public_key() == issuer.certificate().public_key()
    finally:
        other.close()


def test_a_host_with_another_passphrase_is_refused_with_one_line(database: Database,
                                                                  pg: Store) -> None:
    with pytest.raises(StoreError) as refused:
        database.open(passphrase=b"not the passphrase the first host used")
    assert "same issuer key passphrase" in refused.value.message
    assert "\n" not in refused.value.message
    with pytest.raises(StoreError, match="passphrase"):
        PostgresStore.open(database.url, password=PASSWORD, passphrase=b"")


def test_the_store_refuses_a_schema_newer_than_it_knows(database: Database, pg: Store) -> None:
    with psycopg.connect(database.url, password=PASSWORD) as raw:
        raw.execute("UPDATE switch_schema SET version = version + 1")
    with pytest.raises(StoreError, match="newer"):
        database.open()


def test_an_unreachable_server_is_store_unavailable(postgres: PostgresServer) -> None:
    with pytest.raises(StoreUnavailable, match="cannot open the store"):
        PostgresStore.open("postgresql://switch@127.0.0.1:1/none", password=PASSWORD,
                           passphrase=PASSPHRASE)
    with pytest.raises(StoreError, match="password authentication failed"):
        PostgresStore.open(postgres.url("postgres"), password="wrong", passphrase=PASSPHRASE)


def test_a_lost_database_is_store_unavailable_and_the_store_recovers(database: Database,
                                                                     pg: Store) -> None:
    pg.set_service("acme", True, actor="t", ts=TS, make_issuer=_make)
    database.allow_connections(False)
    try:
        with pytest.raises(StoreUnavailable):
            pg.generation()
        with pytest.raises(StoreUnavailable):
            pg.transition_key("acme", "K", KeyAction.SUSPEND, reason="r", confirm=None,
                              actor="t", ts=TS)
    finally:
        database.allow_connections(True)
    # The pool connects again by itself, after its reconnection back-off (which started at
    # about a second and doubles while the database refused): a few seconds, not one.
    deadline = time.monotonic() + 30
    while True:
        try:
            assert pg.service_enabled("acme")
            break
        except StoreUnavailable:
            assert time.monotonic() < deadline, "the pool did not reconnect"


def test_open_store_reads_the_password_and_passphrase_files(
        database: Database, switch_config: SwitchConfig, tmp_path: Path) -> None:
    (tmp_path / "pg.pass").write_text(PASSWORD + "\n")
    (tmp_path / "kek.pass").write_bytes(PASSPHRASE + b"\r\n")
    config = attrs.evolve(switch_config, store=StoreSettings(
        database.url, tmp_path / "pg.pass", tmp_path / "kek.pass"))
    store = open_store(config)
    try:
        assert store.engine == "postgresql" and store.describe() == database.url
    finally:
        store.close()
    (tmp_path / "kek.pass").write_text("another one\n")
    with pytest.raises(StoreError, match=f"passphrase in {tmp_path / 'kek.pass'}"):
        open_store(config)


def test_both_engines_have_the_same_columns_in_every_table(database: Database, pg: Store,
                                                           tmp_path: Path) -> None:
    import sqlite3

    from enroll.store import open_sqlite
    from enroll.store.schema import TABLES

    open_sqlite(tmp_path / "switch.db").close()
    raw = sqlite3.connect(tmp_path / "switch.db")
    lite = {t: [r[1] for r in raw.execute(f"PRAGMA table_info({t})")] for t in TABLES}
    raw.close()
    with psycopg.connect(database.url, password=PASSWORD) as conn:
        rows = conn.execute("SELECT table_name, column_name FROM information_schema.columns"
                            " WHERE table_schema = 'public' ORDER BY ordinal_position").fetchall()
    postgres = {t: [c for table, c in rows if table == t] for t in TABLES}
    assert {t: sorted(c) for t, c in postgres.items()} == {t: sorted(c) for t, c in lite.items()}
