"""A Switch on PostgreSQL: it enrolls agents, a revocation made through another store
connection reaches it by NOTIFY and closes the dependent session, a killed listener reconnects
while the poll covers the gap, and a lost database keeps the last trust state in force while
/readyz, /metrics and EST say the store is unavailable."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio_websocket

from config.load import load_config
from enroll import pki
from enroll.authority import Authority
from gateway.client.est_client import EstClient, EstServer, make_csr
from tests.support.est import HOST, make_deployment
from tests.support.gateway import (
    Echo,
    Gateway,
    LiveAgent,
    add_acme_tenant,
    provisioning_key,
    start_gateway,
    write_agent,
)
from tests.support.postgres import PASSPHRASE, PASSWORD, PostgresServer
from tests.support.processes import connection_holders, log_ports, worker_pids

#: Bounds on things that happen at once; the tests check that they happen, not how fast.
WAIT_S = 15.0


@pytest.fixture
def database(postgres: PostgresServer) -> Iterator[str]:
    name = postgres.create_database()
    yield name
    postgres.drop_database(name)


def _deployment(directory: Path, server: PostgresServer, database: str) -> Path:
    make_deployment(directory)
    add_acme_tenant(directory)
    secrets = directory / "secrets"
    secrets.mkdir(mode=0o700)
    (secrets / "pg.pass").write_text(PASSWORD + "\n")
    (secrets / "issuer-keys.pass").write_bytes(PASSPHRASE + b"\n")
    config = directory / "switch.toml"
    config.write_text(config.read_text() + f"""
[store]
url = "{server.url(database)}"
password_file = "secrets/pg.pass"
issuer_key_passphrase_file = "secrets/issuer-keys.pass"
""")
    return directory


def _metric(gw: Gateway, name: str) -> float | None:
    return gw.switch.metrics.registry.get_sample_value(name)


async def _closed(live: LiveAgent) -> None:
    with trio.fail_after(WAIT_S):
        await trio.to_thread.run_sync(live.closed.wait)


async def _revoke_elsewhere(gw: Gateway, key: str = "Fleet") -> None:
    """Revoke through a store connection of its own, as another host would."""
    def revoke() -> None:
        authority = Authority.open(gw.config)
        try:
            authority.revoke_key("demo", key, reason="leaked", confirm=key, actor="elsewhere")
        finally:
            authority.close()

    await trio.to_thread.run_sync(revoke)


async def _readyz(gw: Gateway) -> tuple[int, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", gw.ports["admin"])
    async with stream:
        await stream.send_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.strip()


async def test_a_revocation_made_elsewhere_reaches_the_switch_by_notify_and_closes_the_session(
        tmp_path: Path, postgres: PostgresServer, database: str) -> None:
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, _deployment(tmp_path / "d", postgres, database))
            assert gw.switch.authority.store.engine == "postgresql"
            agent = await gw.enroll(provisioning_key(gw), "laptop-1", tmp_path)
            await gw.synced()
            live = await trio.to_thread.run_sync(LiveAgent, gw, agent)
            with trio.fail_after(WAIT_S):  # the watcher listens
                while _metric(gw, "switch_store_listener_up") != 1:  # noqa: ASYNC110
                    await trio.sleep(0.05)
            # No poll from now on: only a pushed notice can tell the Switch of the revocation.
            gw.switch.store_watch.poll_interval_s = 3600
            await trio.sleep(gw.switch.authority.store.poll_interval_s)  # the last poll's wait ends
            await _revoke_elsewhere(gw)
            await _closed(live)
            assert live.close_code == 1008
            nursery.cancel_scope.cancel()


async def test_a_killed_listener_reconnects_and_the_poll_covers_the_gap(
        tmp_path: Path, postgres: PostgresServer, database: str) -> None:
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, _deployment(tmp_path / "d", postgres, database))
            first = provisioning_key(gw, "Fleet")
            authority = Authority.open(gw.config)
            try:
                second = authority.generate_key("demo", "Spare", actor="t")[1]
            finally:
                authority.close()
            one = await gw.enroll(first, "laptop-1", tmp_path)
            two = await gw.enroll(second, "laptop-2", tmp_path)
            await gw.synced()
            live_one = await trio.to_thread.run_sync(LiveAgent, gw, one)
            live_two = await trio.to_thread.run_sync(LiveAgent, gw, two)
            with trio.fail_after(WAIT_S):
                while not postgres.listeners(database):  # noqa: ASYNC110
                    await trio.sleep(0.05)
            killed = postgres.listeners(database)
            postgres.terminate_pids(killed)
            await _revoke_elsewhere(gw, "Fleet")  # while the listener is gone or reconnecting
            await _closed(live_one)
            with trio.fail_after(WAIT_S):  # it listens again, on a new connection
                while postgres.listeners(database) in ([], killed) or \
                        _metric(gw, "switch_store_listener_up") != 1:  # noqa: ASYNC110
                    await trio.sleep(0.05)
            gw.switch.store_watch.poll_interval_s = 3600
            await trio.sleep(gw.switch.authority.store.poll_interval_s)
            await _revoke_elsewhere(gw, "Spare")
            await _closed(live_two)
            nursery.cancel_scope.cancel()


@pytest.mark.slow
async def test_a_lost_database_keeps_the_last_trust_state_and_refuses_enrollment(
        tmp_path: Path, postgres: PostgresServer, database: str) -> None:
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, _deployment(tmp_path / "d", postgres, database))
            secret = provisioning_key(gw)
            agent = await gw.enroll(secret, "laptop-1", tmp_path)
            await gw.synced()
            live = await trio.to_thread.run_sync(LiveAgent, gw, agent)
            assert await _readyz(gw) == (200, b"ready; config generation 1")
            with postgres.admin() as conn:
                conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            postgres.terminate(database)
            with trio.fail_after(WAIT_S * 2):
                while _metric(gw, "switch_store_up") != 0:  # noqa: ASYNC110
                    await trio.sleep(0.05)
            assert await _readyz(gw) == (503, b"store_unreachable")
            # The gate stays as it was: the live session is up, the agent still connects...
            assert await trio.to_thread.run_sync(live.still_works)
            again = await trio.to_thread.run_sync(LiveAgent, gw, agent)
            # ...and enrollment, which needs the store, is refused with a reason to retry.
            from gateway.client.est_client import EstClientError

            with pytest.raises(EstClientError) as refused:
                await gw.enroll(secret, "laptop-2", tmp_path)
            assert (refused.value.status, refused.value.reason) == (503, "store_unavailable")
            with postgres.admin() as conn:
                conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
            with trio.fail_after(WAIT_S * 2):
                while _metric(gw, "switch_store_up") != 1:  # noqa: ASYNC110
                    await trio.sleep(0.05)
            assert (await _readyz(gw))[0] == 200
            await gw.enroll(secret, "laptop-2", tmp_path)
            assert await trio.to_thread.run_sync(again.still_works)
            nursery.cancel_scope.cancel()



@pytest.mark.slow
async def test_workers_on_postgresql_enforce_a_revocation_in_every_worker_and_reload_cleanly(
        tmp_path: Path, postgres: PostgresServer, database: str) -> None:
    directory = _deployment(tmp_path / "d", postgres, database)
    path = directory / "switch.toml"
    echo = Echo()
    log = tmp_path / "serve.log"
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(trio_websocket.serve_websocket, echo.handler,
                                         "127.0.0.1", 0, None)
            echo.port = server.port
            path.write_text(path.read_text().replace(
                'upstream = "ws://127.0.0.1:8080/"', f'upstream = "ws://127.0.0.1:{echo.port}/"'))
            config = load_config(path)
            authority = Authority.open(config)
            authority.enable_service("demo", actor="t")
            _, secret = authority.generate_key("demo", "Fleet", actor="t")
            authority.close()
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "gateway.cli", "-c", str(path), "serve", "--workers", "2"],
                stdout=log.open("wb"), stderr=subprocess.STDOUT)
            try:
                while len(worker_pids(log.read_text())) < 2 or \
                        log.read_text().count("listener=gateway") < 3:  # noqa: ASYNC110
                    await trio.sleep(0.05)
                ports, pids = log_ports(log.read_text()), worker_pids(log.read_text())
                key = pki.generate_key()
                async with EstClient(EstServer("127.0.0.1", ports["enroll"], HOST,
                                               ca_file=directory / "pki/dev-root-ca.pem")) as est:
                    cert = await est.simpleenroll(make_csr("laptop-1", key), secret)
                agent = write_agent(tmp_path, "laptop-1", cert, key)
                gw = Gateway(None, config, directory, echo, ports)  # type: ignore[arg-type]
                sessions: list[LiveAgent] = []
                for _ in range(40):  # until both workers hold sessions of this agent
                    sessions.append(await trio.to_thread.run_sync(LiveAgent, gw, agent))
                    if len(connection_holders(ports["gateway"], set(pids.values()))) == 2:
                        break
                assert connection_holders(ports["gateway"], set(pids.values())) == \
                    set(pids.values())
                result = await trio.run_process(
                    [sys.executable, "-m", "gateway.cli", "-c", str(path), "keys", "revoke", "demo",
                     "Fleet", "--reason", "leaked", "--confirm", "Fleet"], capture_stdout=True)
                assert result.returncode == 0
                for live in sessions:
                    await _closed(live)
                assert all(live.close_code == 1008 for live in sessions)
                # A reload from the supervisor's snapshot: [store] unchanged, nothing to restart.
                before = {w: (directory / "state" / f"last-reload-{w}.json").stat().st_mtime_ns
                          for w in pids}
                proc.send_signal(signal.SIGHUP)
                with trio.fail_after(WAIT_S):
                    while any((directory / "state" / f"last-reload-{w}.json").stat()  # noqa: ASYNC110
                              .st_mtime_ns == before[w] for w in pids):
                        await trio.sleep(0.05)
                for worker in pids:
                    status = json.loads((directory / "state" /
                                         f"last-reload-{worker}.json").read_text())
                    assert status["ok"] and status["restart_needed"] == [], status
            finally:
                proc.send_signal(signal.SIGTERM)
                with trio.fail_after(30):
                    await proc.wait()
            nursery.cancel_scope.cancel()
