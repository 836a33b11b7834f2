"""A real PostgreSQL server for the tests: started once per test session, one database per test.

Debian's ``postgresql`` package provides the binaries (``./scripts/test`` installs it when
missing) under ``/usr/lib/postgresql/VERSION/bin``. ``initdb`` and ``postgres`` refuse to run as
root, so when the tests run as root the cluster belongs to the ``postgres`` user (``runuser``).
The cluster lives in a temporary directory, listens on 127.0.0.1 on a free port and on a socket
in that directory, and is stopped by the fixture's finaliser. Durability is off (``fsync``,
``synchronous_commit``, ``full_page_writes``): a test cluster is thrown away, and the tests
measure no speed.

Each test gets a fresh database, copied from a template already migrated to the current schema
(``CREATE DATABASE ... TEMPLATE``), owned by the role ``switch``, which logs in over TCP with a
password (scram-sha-256), as a deployment would with ``[store] password_file``.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import psycopg

from tests.support.processes import free_port

ROLE = "switch"
PASSWORD = "switch-test-password"
PASSPHRASE = b"the issuer keys' test passphrase"
TEMPLATE = "switch_template"
START_TIMEOUT_S = 60.0
_names = itertools.count(1)


def postgres_bin() -> Path | None:
    """The newest installed server's binaries, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name))
    return Path(found[-1]).parent if found else None


@attrs.define(eq=False)
class PostgresServer:
    directory: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def admin_conninfo(self) -> str:
        """The superuser, over the cluster's socket (trusted: only the test machine's users)."""
        return f"host={self.directory} port={self.port} user=postgres dbname=postgres"

    def url(self, dbname: str) -> str:
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{dbname}"

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.admin_conninfo, autocommit=True)

    def create_database(self, template: str = TEMPLATE) -> str:
        """A fresh database at the current schema, empty of data (with ``template="template0"``:
        an empty database, without Switch's schema)."""
        name = f"switch_test_{os.getpid()}_{next(_names)}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE {template} OWNER {ROLE}'
                         " STRATEGY FILE_COPY")
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def terminate(self, dbname: str, application_name: str | None = None) -> int:
        """Kill the server sessions on ``dbname`` (as a database restart or a network cut
        would end them); returns how many."""
        query = ("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                 " WHERE datname = %s AND pid != pg_backend_pid()")
        args: list[object] = [dbname]
        if application_name is not None:
            query += " AND application_name = %s"
            args.append(application_name)
        with self.admin() as conn:
            row = conn.execute(query, args).fetchone()
        return int(row[0]) if row else 0

    def terminate_pids(self, pids: list[int]) -> None:
        with self.admin() as conn:
            for pid in pids:
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))

    def listeners(self, dbname: str) -> list[int]:
        """The backends of ``dbname`` that wait for notifications (their pids)."""
        with self.admin() as conn:
            rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND"
                                " query ILIKE 'LISTEN%%'", (dbname,)).fetchall()
        return [int(r[0]) for r in rows]

    def stop(self) -> None:
        self.process.terminate()  # smart shutdown would wait for clients: SIGTERM is "fast"
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
        shutil.rmtree(self.directory, ignore_errors=True)


def _as_owner(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def start_postgres(bin_dir: Path) -> PostgresServer:
    directory = Path(tempfile.mkdtemp(prefix="switch-pg-"))
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    directory.chmod(0o700)
    data = directory / "data"
    subprocess.run(_as_owner([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres",
                              "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                              "--no-sync", "--no-instructions"]),
                   check=True, capture_output=True, timeout=120)
    port = free_port()
    log = (directory / "server.log").open("wb")  # read back when the server does not start
    process = subprocess.Popen(
        _as_owner([str(bin_dir / "postgres"), "-D", str(data), "-p", str(port),
                   "-k", str(directory), "-c", "listen_addresses=127.0.0.1",
                   "-c", "fsync=off", "-c", "synchronous_commit=off",
                   "-c", "full_page_writes=off", "-c", "max_connections=200",
                   "-c", "log_min_messages=warning"]),
        stdout=subprocess.DEVNULL, stderr=log)
    log.close()
    server = PostgresServer(directory, port, process)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with server.admin() as conn:
                conn.execute(f"CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD '{PASSWORD}'")
            break
        except psycopg.OperationalError:
            if process.poll() is not None or time.monotonic() > deadline:
                errors = (directory / "server.log").read_text(errors="replace")
                server.stop()
                raise RuntimeError(f"PostgreSQL did not start: {errors}") from None
            time.sleep(0.1)
    return server


def prepare_template(server: PostgresServer) -> None:
    """The template database, migrated by the store itself (so each test's copy is current)."""
    from enroll.store.postgres import PostgresStore

    with server.admin() as conn:
        conn.execute(f"CREATE DATABASE {TEMPLATE} OWNER {ROLE}")
    PostgresStore.open(server.url(TEMPLATE), password=PASSWORD, passphrase=PASSPHRASE,
                       create=True).close()


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed: run ./scripts/test (it installs "
                           "Debian's postgresql package) or apt-get install postgresql")
    server = start_postgres(bin_dir)
    try:
        prepare_template(server)
        yield server
    finally:
        server.stop()
