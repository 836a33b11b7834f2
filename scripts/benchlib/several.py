"""The bench's several-hosts setup: the bench deployment moved into PostgreSQL with `switch store
copy` and served by Switch processes (three unless asked otherwise), each as a host of its own
(own directory, listener ports, state and passphrase files; the same PKI, so the same server
certificate), on a PostgreSQL server started for the block (tests/support/postgres.py: Debian's
server in a temporary directory, as the tests run it; durability off, as there: the figures
compare Switch's work, not the disk's)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import attrs

from scripts.benchlib import env
from tests.support.cli import loopback_ports
from tests.support.postgres import PASSPHRASE, PASSWORD, PostgresServer, running_postgres
from tests.support.processes import log_ports

HOSTS = 3
#: The listeners a host serves (`listening` events), each on a port of its own.
LISTENERS = {"gateway", "enroll", "admin", "api"}


@attrs.frozen
class Several:
    hosts: list[env.Deployment]
    servers: list[env.Server]
    postgres: PostgresServer

    def root_pids(self) -> tuple[int, ...]:
        return tuple(s.root_pid for s in self.servers)

    def switch_cpu(self) -> float:
        return sum(s.cpu() for s in self.servers)

    def postgres_cpu(self) -> float:
        from gateway.client import procstat

        return procstat.cpu_seconds(procstat.tree(self.postgres.process.pid)) or 0.0


def _host(deploy: env.Deployment, directory: Path, store: str) -> Path:
    """A host's directory like ``deploy``'s, every listener on loopback port 0 (each host binds
    ports of its own, whichever listeners the configuration has; `switch serve` logs the ports
    it got), on the PostgreSQL ``store``; its configuration file."""
    shutil.copytree(deploy.directory, directory,
                    ignore=shutil.ignore_patterns("state", "*.log", "secrets"))
    secrets = directory / "secrets"
    secrets.mkdir(mode=0o700)
    (secrets / "pg.pass").write_text(PASSWORD + "\n")
    (secrets / "issuer-keys.pass").write_bytes(PASSPHRASE + b"\n")
    config = directory / "switch.toml"
    config.write_text(deploy.config.read_text() + store)
    loopback_ports(config)
    return config


@contextlib.contextmanager
def _serving(deploy: env.Deployment, directory: Path) -> Iterator[tuple[env.Deployment, env.Server]]:
    """``switch serve`` (one process) on the host in ``directory`` until its /readyz answers;
    the host as a deployment with the ports it logged."""
    log = directory / "switch-w1.log"
    ports: dict[str, int] = {}

    def ready() -> bool:
        ports.update(log_ports(log.read_text()))
        return ports.keys() >= LISTENERS and env.http_ok(
            f"http://127.0.0.1:{ports['admin']}/readyz")

    with env.running([*env.SWITCH, "-c", str(directory / "switch.toml"), "serve", "--workers",
                      "1"], log, ready, "switch") as server:
        yield env.Deployment(directory, ports["gateway"], ports["enroll"], ports["admin"],
                             deploy.echo, deploy.secret, api=ports["api"]), server


@contextlib.contextmanager
def several(deploy: env.Deployment, work: Path, hosts: int = HOSTS) -> Iterator[Several]:
    """PostgreSQL, the deployment copied into it, and ``hosts`` hosts serving it (one process
    each, every listener on a port of its own), for as long as the block runs, each ready
    (/readyz) before the block starts. The deployment itself must not be serving."""
    with running_postgres() as server, contextlib.ExitStack() as stack:
        database = server.create_database(template="template0")
        root = work / f"several-{database}"
        secrets = root / "secrets"
        secrets.mkdir(parents=True)
        (secrets / "pg.pass").write_text(PASSWORD + "\n")
        (secrets / "issuer-keys.pass").write_bytes(PASSPHRASE + b"\n")
        deploy.cli("store", "copy", "--to", server.url(database), "--password-file",
                   str(secrets / "pg.pass"), "--passphrase-file",
                   str(secrets / "issuer-keys.pass"))
        store = (f'\n[store]\nurl = "{server.url(database)}"\npassword_file = "secrets/pg.pass"\n'
                 'issuer_key_passphrase_file = "secrets/issuer-keys.pass"\n')
        started = [stack.enter_context(_serving(deploy, _host(deploy, root / f"host-{n}",
                                                             store).parent))
                   for n in range(hosts)]
        yield Several([h for h, _ in started], [s for _, s in started], server)
