"""A deployment's store over its life, through the `switch` command: created on purpose only, a
missing one refused, one serving Switch per state directory, schema versions on both engines
(`switch store migrate`; a newer schema refuses to start)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from enroll.store.schema import (
    POSTGRES_BASELINE,
    POSTGRES_BASELINE_VERSION,
    SCHEMA_VERSION,
    SQLITE_MIGRATIONS,
)
from enroll.store.sqlite import _split_sql
from tests.support.hosts import START_TIMEOUT_S, SWITCH, Host, make_host, pid_alive
from tests.support.postgres import PASSWORD, PostgresServer


def _host(tmp_path: Path, store: tuple[PostgresServer, str] | None = None) -> Host:
    return make_host(tmp_path / "d", "h1", upstream=1, store=store)


def _refused(done: subprocess.CompletedProcess[str], reason: str, code: int) -> str:
    line = done.stderr.strip()
    assert done.returncode == code, done.stderr
    assert line.startswith(f"switch: {reason}: ") and "\n" not in line, line
    return line


@pytest.mark.slow
def test_a_second_serve_says_already_running_and_touches_nothing_of_the_first(
        tmp_path: Path) -> None:
    host = _host(tmp_path)
    state = host.directory / "state"
    with host.log.open("ab") as out:  # the supervisor of two workers holds the lock
        first = subprocess.Popen([*SWITCH, "-c", str(host.config), "serve", "--workers", "2"],
                                 stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (host.ready() and len(list(state.glob("last-reload-*.json"))) == 2):
            assert first.poll() is None and time.monotonic() < deadline, host.log.read_text()
            time.sleep(0.05)
        before = _files(state)
        for workers in ("1", "2"):
            done = host.cli("serve", "--workers", workers, check=False)
            line = _refused(done, "already_running", 1)
            assert f"already running on {state} (pid {first.pid})" in line
        assert _files(state) == before  # pid file, snapshots, reload status: untouched
        assert (state / "switch.pid").read_text().strip() == str(first.pid) and host.ready()
    finally:
        first.terminate()
        first.wait(timeout=60)
    host.start()  # the lock went with the process
    host.stop()


def _files(state: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(state)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(state.rglob("*")) if p.is_file() and p.name != "switch.lock"}


def test_an_initialised_deployment_without_its_store_refuses_to_serve(tmp_path: Path) -> None:
    host = _host(tmp_path)
    state = host.directory / "state"
    (state / "switch.db").rename(tmp_path / "elsewhere.db")
    for args in (("serve",), ("serve", "--create-store"), ("keys", "list", "demo")):
        line = _refused(host.cli(*args, check=False), "store_missing", 4)
        assert f"there is no store at {state / 'switch.db'}" in line
        assert "restore" in line and str(state / "initialised.json") in line
        assert not (state / "switch.db").exists()  # nothing made in its place
    (tmp_path / "elsewhere.db").rename(state / "switch.db")  # put back: it serves again
    host.start()
    host.stop()


def test_only_init_or_create_store_creates_a_store(tmp_path: Path) -> None:
    host = _host(tmp_path)  # switch init made one: listed at once
    assert json.loads(host.cli("keys", "list", "demo", "--json").stdout) == []
    state = host.directory / "state"
    for name in ("switch.db", "initialised.json"):  # a deployment never initialised
        (state / name).unlink()
    line = _refused(host.cli("serve", check=False), "store_missing", 4)
    assert "--create-store" in line and not (state / "switch.db").exists()
    host.start("--create-store")
    host.stop()
    assert json.loads(host.cli("keys", "list", "demo", "--json").stdout) == []
    assert (state / "initialised.json").exists()


def test_a_postgresql_database_without_a_store_is_created_on_request_only(
        tmp_path: Path, postgres: PostgresServer) -> None:
    database = postgres.create_database(template="template0")
    try:
        host = _host(tmp_path, (postgres, database))
        line = _refused(host.cli("serve", check=False), "store_missing", 4)
        assert f"the database {postgres.url(database)} holds no Switch store" in line
        host.start("--create-store")
        host.stop()
        assert json.loads(host.cli("keys", "list", "demo", "--json").stdout) == []
        with psycopg.connect(postgres.url(database), password=PASSWORD) as conn:
            conn.execute("DROP TABLE switch_schema")  # the database loses its store
        line = _refused(host.cli("serve", "--create-store", check=False), "store_missing", 4)
        assert "never replaces it" in line
    finally:
        postgres.drop_database(database)


# --- schema versions -----------------------------------------------------------------------------


def test_a_sqlite_store_newer_than_switch_refuses_to_start(tmp_path: Path) -> None:
    host = _host(tmp_path)
    with sqlite3.connect(host.directory / "state" / "switch.db") as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    for args in (("serve",), ("store", "migrate")):
        line = _refused(host.cli(*args, check=False), "store_error", 4)
        assert f"schema version {SCHEMA_VERSION + 1}, newer than this Switch" in line
    assert not host.log.exists() or "listening" not in host.log.read_text()


def test_a_postgresql_store_newer_than_switch_refuses_to_start(
        tmp_path: Path, postgres: PostgresServer) -> None:
    database = postgres.create_database()
    try:
        host = _host(tmp_path, (postgres, database))
        with psycopg.connect(postgres.url(database), password=PASSWORD) as raw:
            raw.execute("UPDATE switch_schema SET version = %s", (SCHEMA_VERSION + 1,))
        for args in (("serve",), ("store", "migrate")):
            line = _refused(host.cli(*args, check=False), "store_error", 4)
            assert f"schema version {SCHEMA_VERSION + 1}, newer than this Switch" in line
    finally:
        postgres.drop_database(database)


def _requests(count: int) -> list[tuple[str, str]]:
    """Request ids that sort against the order they are filed in, with their digests."""
    return [(f"req_{9 - n:02d}", f"digest-{n}") for n in range(count)]


def test_store_migrate_brings_an_older_sqlite_store_to_the_current_schema(tmp_path: Path) -> None:
    host = _host(tmp_path)
    db = host.directory / "state" / "switch.db"
    db.unlink()
    with sqlite3.connect(db, isolation_level=None) as raw:  # a store an older Switch wrote
        for version in range(3):
            for statement in _split_sql(SQLITE_MIGRATIONS[version]):
                raw.execute(statement)
        raw.execute("PRAGMA user_version = 3")
        for request_id, digest in _requests(4):  # filed in the same second
            raw.execute("INSERT INTO pending_requests (id, tenant, csr_der, request_digest,"
                        " subject, state, created_at) VALUES (?, 'demo', x'00', ?, 'agent',"
                        " 'pending', 1000)", (request_id, digest))
    done = host.cli("store", "migrate")
    assert done.stdout.strip() == f"{db}: migrated from schema version 3 to {SCHEMA_VERSION}"
    listed = json.loads(host.cli("requests", "list", "--json").stdout)
    assert [r["id"] for r in listed] == [r for r, _ in _requests(4)]  # as they were filed
    again = host.cli("store", "migrate")
    assert again.stdout.strip() == f"{db}: schema version {SCHEMA_VERSION}, current; nothing to do"


def test_an_older_postgresql_store_is_migrated_by_store_migrate_only(
        tmp_path: Path, postgres: PostgresServer) -> None:
    database = postgres.create_database(template="template0")
    try:
        with psycopg.connect(postgres.url(database), password=PASSWORD) as raw:
            raw.execute(POSTGRES_BASELINE)  # the first schema PostgreSQL had
            raw.execute("CREATE TABLE switch_schema (version INTEGER NOT NULL)")
            raw.execute("INSERT INTO switch_schema VALUES (%s)", (POSTGRES_BASELINE_VERSION,))
            for n, (request_id, digest) in enumerate(_requests(4)):
                raw.execute("INSERT INTO pending_requests (id, tenant, csr_der, request_digest,"
                            " subject, state, created_at) VALUES (%s, 'demo', '\\x00', %s,"
                            " 'agent', 'pending', %s)", (request_id, digest, 1000 + n))
        host = _host(tmp_path, (postgres, database))
        for args in (("serve",), ("requests", "list")):  # every host waits for the operator
            line = _refused(host.cli(*args, check=False), "store_error", 4)
            assert "older than this Switch's" in line and "switch store migrate" in line
        done = host.cli("store", "migrate")
        assert done.stdout.strip() == (f"{postgres.url(database)}: migrated from schema version "
                                       f"{POSTGRES_BASELINE_VERSION} to {SCHEMA_VERSION}")
        listed = json.loads(host.cli("requests", "list", "--json").stdout)
        assert [r["id"] for r in listed] == [r for r, _ in _requests(4)]  # by creation time
    finally:
        postgres.drop_database(database)


def test_a_killed_server_leaves_no_lock_behind(tmp_path: Path) -> None:
    host = _host(tmp_path)
    host.start()
    assert host.proc is not None
    pid = host.proc.pid
    host.kill()
    assert not pid_alive(pid)
    host.start()  # no "already running": the kernel released the lock with the process
    host.stop()
