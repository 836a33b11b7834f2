"""Shared fixtures: configurations built from the model, an authority on a real SQLite file, and
stores on either engine (a real PostgreSQL server started once per session, tests/support)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest
import trio

from config.model import Profile, ServerTLS, StoreSettings, SwitchConfig, Tenant
from enroll.authority import Authority
from enroll.store import Store, open_store
from tests.support.est_service import Env, make_env
from tests.support.gateway import Gateway, start_gateway
from tests.support.postgres import PASSPHRASE, PASSWORD, PostgresServer, running_postgres

NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
async def gw(nursery: trio.Nursery, tmp_path: Path) -> Gateway:
    """A running Switch (in this process, real sockets on loopback) on a fresh dev deployment in
    ``tmp_path / "d"`` with the acme tenant and an echo upstream (``start_gateway``); it stops
    with the test's nursery. Tests that shape the deployment first call ``start_gateway``."""
    return await start_gateway(nursery, tmp_path / "d")


@pytest.fixture(params=["local", "remote"])
def cli_mode(request: pytest.FixtureRequest) -> str:
    """How a CLI command test runs ``switch``: on the store, or through the admin API of a
    running server (tests/support/cli.py)."""
    return str(request.param)


@pytest.fixture
def switch_config(tmp_path: Path) -> SwitchConfig:
    return SwitchConfig(
        path=tmp_path / "switch.toml",
        state_dir=tmp_path / "state",
        tls=ServerTLS(cert_file=tmp_path / "server.pem", key_file=tmp_path / "server.key"),
        profiles={"default": Profile("default"), "kiosk": Profile("kiosk", validity_s=86400,
                                                                  renew_before_s=3600)},
        tenants={
            "acme": Tenant("acme", ("acme.test",)),
            "other": Tenant("other", ("other.test",)),
        },
    )


@pytest.fixture
def authority(switch_config: SwitchConfig) -> Iterator[Authority]:
    auth = Authority.open(switch_config, clock=lambda: NOW, create=True)
    yield auth
    auth.close()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    """The EST service on a real SQLite store, with tenants acme and other enabled and a key."""
    yield from make_env(tmp_path)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole session (started on first use)."""
    with running_postgres() as server:
        yield server


def postgres_config(config: SwitchConfig, server: PostgresServer, database: str,
                    secrets_dir: Path) -> SwitchConfig:
    """``config`` with ``[store]`` naming ``database`` on ``server``, its password and the
    issuer key passphrase in files, as a deployment has them."""
    secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    password, passphrase = secrets_dir / "pg.pass", secrets_dir / "issuer-keys.pass"
    password.write_text(PASSWORD + "\n")
    passphrase.write_bytes(PASSPHRASE + b"\n")
    return attrs.evolve(config, store=StoreSettings(server.url(database), password, passphrase))


@pytest.fixture(params=["sqlite", "postgresql"])
def store_config(request: pytest.FixtureRequest, switch_config: SwitchConfig,
                 tmp_path: Path) -> Iterator[SwitchConfig]:
    """``switch_config`` on each engine in turn: SQLite in its state_dir, or a fresh database
    of the session's PostgreSQL server."""
    if request.param == "sqlite":
        yield switch_config
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    database = server.create_database()
    try:
        yield postgres_config(switch_config, server, database, tmp_path / "secrets")
    finally:
        server.drop_database(database)


@pytest.fixture
def open_stores(store_config: SwitchConfig) -> Iterator[Callable[[], Store]]:
    """Opens another store on the same file or database (another connection, as another
    process or host has); all are closed after the test."""
    opened: list[Store] = []

    def open_one() -> Store:
        opened.append(open_store(store_config, create=True))
        return opened[-1]

    yield open_one
    for store in opened:
        store.close()


@pytest.fixture
def store(open_stores: Callable[[], Store]) -> Store:
    return open_stores()
