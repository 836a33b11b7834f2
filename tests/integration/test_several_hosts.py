"""Several hosts, one store: three `switch serve` processes, each with its own state directory,
ports and passphrase files, sharing one PostgreSQL database (the session's server), then the same
three behind a real TCP load balancer (HAProxy), and a SQLite deployment with live agents moved
to PostgreSQL with `switch store copy`.

The three hosts are started once for the module; a test that kills one starts it again."""

from __future__ import annotations

import base64
import concurrent.futures
import http.client
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from gateway.client.backoff import backoff_cap_s
from tests.support.balancer import haproxy
from tests.support.est import HOST
from tests.support.gateway import Agent, Echo, Gateway, LiveAgent
from tests.support.hosts import (
    Host,
    echo_upstream,
    enroll_burst,
    make_host,
    stop_all,
    store_table,
)
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.slow
#: How soon a revocation made on one host closes the dependent sessions on every host: the
#: issue's bound (docs/store.md aims for 200 ms); a bounded wait that fails past it.
REVOKED_CLOSE_S = 1.0
RACE_TENANT = '\n[tenants.race]\nhostnames = ["race.switch.test"]\nupstream = "ws://127.0.0.1:1/"\n'


@pytest.fixture(scope="module")
def echo_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with echo_upstream(tmp_path_factory.mktemp("echo")) as port:
        yield port


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer,
          echo_port: int) -> Iterator[list[Host]]:
    base = tmp_path_factory.mktemp("hosts")
    database = postgres.create_database()
    first = make_host(base / "h1", "h1", upstream=echo_port, store=(postgres, database))
    first.config.write_text(first.config.read_text().replace("\n[store]\n",
                                                             RACE_TENANT + "\n[store]\n"))
    three = [first, *(make_host(base / f"h{n}", f"h{n}", upstream=echo_port, like=first,
                                store=(postgres, database)) for n in (2, 3))]
    try:
        for host in three:
            host.start()
        first.cli("service", "enable", "demo")
        yield three
    finally:
        stop_all(three)
        postgres.drop_database(database)


def _gateway(host: Host, port: int | None = None) -> Gateway:
    """The test's client side of ``host`` (or of a balancer on ``port``)."""
    return Gateway(None, None, host.directory, Echo(),  # type: ignore[arg-type]
                   {**host.ports, "gateway": port or host.ports["gateway"]})


async def _enroll_agents(host: Host, secret: str, names: list[str], work: Path) -> list[Agent]:
    gw = _gateway(host)
    return [await gw.enroll(secret, name, work) for name in names]


async def _hold(gw: Gateway, agent: Agent) -> LiveAgent:
    return await trio.to_thread.run_sync(LiveAgent, gw, agent)


def test_ten_concurrent_key_generations_over_three_hosts_make_at_most_three_live_keys(
        hosts: list[Host]) -> None:
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        runs = list(pool.map(lambda n: hosts[n % 3].cli("keys", "generate", "race", f"Key {n}",
                                                        "--json", check=False), range(10)))
    made = [r for r in runs if r.returncode == 0]
    refused = [r for r in runs if r.returncode != 0]
    assert len(made) == 3, [r.stderr for r in runs]
    assert all(r.returncode == 1 and "key_limit_reached" in r.stderr for r in refused)
    listed = json.loads(hosts[1].cli("keys", "list", "race", "--json").stdout)
    assert sorted(k["name"] for k in listed) == sorted(json.loads(r.stdout)["name"] for r in made)
    assert "hash chain verified" in hosts[2].cli("audit", "verify").stdout


async def test_a_key_made_on_host_1_enrolls_at_host_2_and_revoked_on_host_3_closes_its_sessions_everywhere(
        hosts: list[Host], tmp_path: Path) -> None:
    h1, h2, h3 = hosts
    fleet = json.loads(h1.cli("keys", "generate", "demo", "Fleet", "--json").stdout)["secret"]
    kiosks = json.loads(h1.cli("keys", "generate", "demo", "Kiosks", "--json").stdout)["secret"]
    with trio.fail_after(120):
        fleet_agents = await _enroll_agents(h2, fleet, [f"laptop-{n}" for n in range(3)], tmp_path)
        kiosk_agents = await _enroll_agents(h2, kiosks, [f"kiosk-{n}" for n in range(3)], tmp_path)
        # Each agent holds a session on each host.
        revoked = [await _hold(_gateway(h), a) for h in hosts for a in fleet_agents]
        kept = [await trio.to_thread.run_sync(_gateway(h).connect, a)
                for h in hosts for a in kiosk_agents]
    h2.cli("keys", "suspend", "demo", "Kiosks", "--reason", "paused")
    h3.cli("keys", "revoke", "demo", "Fleet", "--reason", "leaked", "--confirm", "Fleet")
    deadline = time.monotonic() + REVOKED_CLOSE_S  # from the command's commit
    for live in revoked:
        assert live.closed.wait(max(0.0, deadline - time.monotonic())), \
            f"a session of the revoked key was still open {REVOKED_CLOSE_S} s after the revocation"
    assert {live.close_code for live in revoked} == {1008}
    # A suspended key issues nothing new, and its certificates' sessions stay, on every host
    # (each host applied the suspension before the revocation: changes apply in order).
    for ws in kept:
        ws.send("still there?")
        assert ws.recv(timeout=10) == "still there?"
        ws.close()


def _wrong_guess(host: Host, secret: str) -> int:
    """One enrollment attempt with a wrong provisioning key, from 127.0.0.2 (a source of its
    own: the lock-out it earns must not stop the other tests' enrollments from 127.0.0.1)."""
    from cryptography.hazmat.primitives import serialization

    from enroll import pki
    from gateway.client.est_client import make_csr

    context = ssl.create_default_context(cafile=str(host.ca_file))
    sock = socket.create_connection(("127.0.0.1", host.ports["enroll"]), timeout=10,
                                    source_address=("127.0.0.2", 0))
    connection = http.client.HTTPSConnection(HOST, host.ports["enroll"], timeout=10,
                                             context=context)
    connection.sock = context.wrap_socket(sock, server_hostname=HOST)
    csr = make_csr("guesser", pki.generate_key()).public_bytes(serialization.Encoding.DER)
    wrong = base64.b64encode(f"agent:{secret}".encode()).decode()
    try:
        connection.request("POST", "/.well-known/est/simpleenroll", base64.encodebytes(csr),
                           {"Content-Type": "application/pkcs10", "Authorization": f"Basic {wrong}"})
        return connection.getresponse().status
    finally:
        connection.close()


def test_wrong_key_guesses_spread_over_the_hosts_are_refused_after_five_in_total(
        hosts: list[Host]) -> None:
    # Guesses at the secret of a key that exists (made here when the tenant has none).
    listed = json.loads(hosts[0].cli("keys", "list", "demo", "--json").stdout)
    key_id = listed[0]["id"] if listed else json.loads(hosts[0].cli(
        "keys", "generate", "demo", "Guessed", "--json").stdout)["id"]
    statuses = [_wrong_guess(hosts[n % 3], f"swk_{key_id}_{'A' * 43}") for n in range(8)]
    assert statuses == [401] * 5 + [429] * 3


async def test_a_host_killed_during_an_enrollment_burst_loses_no_certificate_a_client_received(
        hosts: list[Host]) -> None:
    h1, h2, h3 = hosts
    secret = json.loads(h1.cli("keys", "generate", "demo", "Burst", "--json").stdout)["secret"]
    before = {str(c["serial"]) for c in h1.certificates()}
    received: dict[str, str] = {}
    failed: list[str] = []
    with trio.fail_after(180):
        async with trio.open_nursery() as nursery:
            async def burst(host: Host) -> None:
                names = [f"{host.name}-agent-{n}" for n in range(40)]
                failed.extend(await enroll_burst(host, secret, names, concurrency=4,
                                                 received=received))

            for host in hosts:
                nursery.start_soon(burst, host)
            while sum(1 for n in received if n.startswith("h2-")) < 8:  # noqa: ASYNC110
                await trio.sleep(0.02)
            await trio.to_thread.run_sync(h2.kill)  # kill -9, mid-burst
    assert failed and all(n.startswith("h2-") for n in failed)  # only the killed host's
    stored = {str(c["serial"]) for c in h1.certificates()} - before
    assert set(received.values()) <= stored  # every certificate a client received
    assert "hash chain verified" in h3.cli("audit", "verify").stdout
    await trio.to_thread.run_sync(h2.start)  # the lock and the ports went with the process


async def test_agents_behind_a_load_balancer_move_to_the_other_hosts_when_one_is_killed(
        hosts: list[Host], tmp_path: Path) -> None:
    from gateway.client.loadtest import HoldContext, LoadSettings, run_loadtest

    h1, h2, h3 = hosts
    secret = json.loads(h1.cli("keys", "generate", "demo", "Balanced", "--json").stdout)["secret"]
    agents = 12
    certificates: list[int] = []

    def kill_one(_: HoldContext) -> None:
        certificates.append(len(h1.certificates()))
        h3.kill()

    with haproxy(hosts, tmp_path) as port:
        settings = LoadSettings(
            agents=agents, processes=1, gateway=("127.0.0.1", port),
            enroll=("127.0.0.1", h1.ports["enroll"]), server_name=HOST, key_secret=secret,
            ca_file=h1.ca_file, connect_rate=0, enroll_concurrency=4, hold_s=8.0,
            message_interval_s=0.5, timeout_s=10, reconnect=True, phase_timeout_s=120)
        report, _ = await trio.to_thread.run_sync(
            lambda: run_loadtest(settings, during_hold=kill_one))
    await trio.to_thread.run_sync(h3.start)
    assert report["enrolled"] == report["connected"] == agents, report["failures"]
    reconnects = report["reconnects"]
    # The killed host's share came back through the balancer, on the other two hosts...
    assert 0 < reconnects["reopened"] < agents and report["connected_at_end"] == agents
    # ... the sessions the dead host held, dropped (1006: no closing handshake) and nothing
    # else; with no refusal and no failed attempt (HAProxy passes a refused connection on) ...
    assert report["failures"] == {"session: closed_1006": reconnects["reopened"]}
    assert reconnects["failed_attempts"] == {}
    # ... within their reconnect back-off (the first wait after a drop: up to 1 s) and one
    # attempt's deadline ...
    assert reconnects["time_to_reopen"]["max_ms"] <= (backoff_cap_s(1) + settings.timeout_s) * 1000
    # ... and with the certificates they hold: nothing enrolled again.
    assert len(h1.certificates()) == certificates[0]


def test_a_console_session_signed_in_on_one_host_works_on_another_and_ends_on_all(
        hosts: list[Host], tmp_path: Path) -> None:
    from gateway.api.session import COOKIE, csrf_token
    from tests.support.processes import log_ports

    first = hosts[0]
    first.cli("operators", "add", "console-admin", "--role", "security-admin")
    (tmp_path / "pw").write_text("a console password\n")
    first.cli("operators", "set-password", "console-admin", "--password-file",
              str(tmp_path / "pw"))
    bases = [f"https://127.0.0.1:{log_ports(h.log.read_text())['api']}" for h in hosts]
    verify = ssl.create_default_context(cafile=str(first.ca_file))
    with httpx.Client(verify=verify, timeout=30) as browser:  # one jar: cookies are per host name
        signed = browser.post(f"{bases[0]}/signin", data={
            "name": "console-admin", "password": "a console password"},
            headers={"Origin": bases[0]})
        assert signed.status_code == 303, signed.text
        csrf = csrf_token(browser.cookies[COOKIE])
        for base in bases:  # the session is in the store: every host knows it
            whoami = browser.get(f"{base}/api/v1/whoami").json()
            assert (whoami["operator"], whoami["credential"]) == ("console-admin", "session")
        changed = browser.put(f"{bases[1]}/api/v1/tenants/demo/service", json={"enabled": True},
                              headers={"X-CSRF-Token": csrf, "Origin": bases[1]})
        assert changed.status_code == 200, changed.text
        out = browser.post(f"{bases[2]}/signout", data={"csrf_token": csrf},
                           headers={"Origin": bases[2]})
        assert out.status_code == 303
        browser.cookies.set(COOKIE, signed.cookies[COOKIE])  # a copy kept by whoever stole it
        for base in bases:
            assert browser.get(f"{base}/api/v1/whoami").status_code == 401


async def test_store_copy_moves_a_deployment_with_live_agents_to_postgresql(
        postgres: PostgresServer, echo_port: int, tmp_path: Path) -> None:
    lite = make_host(tmp_path / "lite", "lite", upstream=echo_port)
    lite.cli("service", "enable", "demo")
    secret = json.loads(lite.cli("keys", "generate", "demo", "Fleet", "--json").stdout)["secret"]
    database = postgres.create_database(template="template0")
    store_table(tmp_path, postgres, database)  # the operator's password and passphrase files
    copy = ["store", "copy", "--to", postgres.url(database), "--password-file",
            str(tmp_path / "secrets" / "pg.pass"), "--passphrase-file",
            str(tmp_path / "secrets" / "issuer-keys.pass")]
    hosts = [lite]
    await trio.to_thread.run_sync(lite.start)
    try:
        with trio.fail_after(120):
            agents = await _enroll_agents(lite, secret, [f"agent-{n}" for n in range(3)], tmp_path)
            live = [await _hold(_gateway(lite), a) for a in agents]
        busy = lite.cli(*copy, check=False)  # never from under a serving Switch
        assert busy.returncode == 1 and "already_running" in busy.stderr
        await trio.to_thread.run_sync(lite.stop)
        assert all(s.closed.wait(10) and s.close_code == 1001 for s in live)  # going away
        lite.cli(*copy)
        lite.config.write_text(lite.config.read_text()
                               + store_table(lite.directory, postgres, database))
        hosts.append(make_host(tmp_path / "other", "other", upstream=echo_port, like=lite,
                               store=(postgres, database)))
        for host in hosts:
            await trio.to_thread.run_sync(host.start)
        # The agents reconnect, to either host, with the certificates they hold.
        with trio.fail_after(60):
            back = [await _hold(_gateway(h), a) for h in hosts for a in agents]
        assert all(s.still_works() for s in back)
        assert {str(c["serial"]) for c in hosts[1].certificates()} == \
            {format(a.chain[0].serial_number, "x") for a in agents}
    finally:
        stop_all(hosts)
        postgres.drop_database(database)
