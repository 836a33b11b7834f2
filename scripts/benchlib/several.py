"""The bench's several-hosts setup: the bench deployment moved into PostgreSQL with `switch store
copy` and served by three Switch processes, each as a host of its own (own directory, ports,
state and passphrase files; the same PKI, so the same server certificate), on a PostgreSQL
server started for the section (tests/support/postgres.py: Debian's server in a temporary
directory, as the tests run it; durability off, as there: the figures compare Switch's work, not
the disk's)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import attrs

from scripts.benchlib import env
from tests.support.postgres import PASSPHRASE, PASSWORD, PostgresServer, running_postgres

HOSTS = 3


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


def _host(deploy: env.Deployment, directory: Path, store: str) -> env.Deployment:
    shutil.copytree(deploy.directory, directory,
                    ignore=shutil.ignore_patterns("state", "*.log", "secrets"))
    host = env.Deployment(directory, env.free_port(), env.free_port(), env.free_port(),
                          deploy.echo, deploy.secret)
    text = (deploy.config.read_text()
            .replace(f'"127.0.0.1:{deploy.gateway}"', f'"127.0.0.1:{host.gateway}"')
            .replace(f'"127.0.0.1:{deploy.enroll}"', f'"127.0.0.1:{host.enroll}"')
            .replace(f'"127.0.0.1:{deploy.admin}"', f'"127.0.0.1:{host.admin}"'))
    secrets = directory / "secrets"
    secrets.mkdir(mode=0o700)
    (secrets / "pg.pass").write_text(PASSWORD + "\n")
    (secrets / "issuer-keys.pass").write_bytes(PASSPHRASE + b"\n")
    host.config.write_text(text + store)
    return host


@contextlib.contextmanager
def several(deploy: env.Deployment, work: Path) -> Iterator[Several]:
    """PostgreSQL, the deployment copied into it, and three hosts serving it (one process
    each), for as long as the block runs. The deployment itself must not be serving."""
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
        hosts = [_host(deploy, root / f"host-{n}", store) for n in range(HOSTS)]
        servers = [stack.enter_context(env.switch(h, 1, h.directory)) for h in hosts]
        yield Several(hosts, servers, server)
