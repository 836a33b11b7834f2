"""`switch backup` while Switch serves and issues, and `switch restore` into a stopped deployment:
nothing a client received is lost, the WAL's content included."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import trio

from tests.support.hosts import Host, enroll_burst, make_host


def _serials(host: Host) -> set[str]:
    return {str(c["serial"]) for c in host.certificates()}


def _restored(tmp_path: Path, like: Host, name: str, archive: Path) -> Host:
    """A copy of ``like``'s deployment (config, PKI) with an empty state directory, restored
    from ``archive``."""
    host = make_host(tmp_path / name, name, upstream=1, like=like)
    done = host.cli("restore", str(archive), "--json")
    summary = json.loads(done.stdout)
    assert summary["file"] == str(archive) and "replaced_store_moved_to" not in summary
    return host


@pytest.mark.slow
async def test_a_backup_taken_while_certificates_are_issued_loses_none_a_client_received(
        tmp_path: Path) -> None:
    host = make_host(tmp_path / "live", "live", upstream=1)
    host.cli("service", "enable", "demo")
    secret = json.loads(host.cli("keys", "generate", "demo", "Fleet", "--json").stdout)["secret"]
    await trio.to_thread.run_sync(host.start)
    try:
        received: dict[str, str] = {}
        stop = trio.Event()
        before_backup: set[str] = set()
        during = tmp_path / "during.tar.gz"
        with trio.fail_after(240):
            async with trio.open_nursery() as nursery:
                async def burst() -> None:
                    names = [f"agent-{n}" for n in range(2000)]
                    assert await enroll_burst(host, secret, names, concurrency=8,
                                              received=received, stop=stop) == []

                nursery.start_soon(burst)
                while len(received) < 60:  # noqa: ASYNC110 - the burst is under way
                    await trio.sleep(0.05)
                before_backup = set(received.values())
                backup = await trio.to_thread.run_sync(
                    lambda: host.cli("backup", str(during), "--json"))
                after_backup = len(received)
                while len(received) < after_backup + 20:  # noqa: ASYNC110 - issuing goes on
                    await trio.sleep(0.05)
                stop.set()
        assert after_backup > len(before_backup), "nothing was issued while the backup ran"
        assert json.loads(backup.stdout)["certificates"] >= len(before_backup)
        final = tmp_path / "final.tar.gz"
        host.cli("backup", str(final))  # Switch still serves: its last writes are in the WAL
        assert (host.directory / "state" / "switch.db-wal").stat().st_size > 0
        issued = set(received.values())
        assert _serials(host) == issued

        refused = host.cli("restore", str(final), "--replace", check=False)
        assert refused.returncode == 1 and "already_running" in refused.stderr
    finally:
        await trio.to_thread.run_sync(host.stop)

    assert final.stat().st_mode & 0o777 == 0o600  # it holds the issuers' private keys
    with tarfile.open(final) as archive:
        names = archive.getnames()
    assert "switch.db" in names and any(n.startswith("issuers/demo/") for n in names)
    one = _restored(tmp_path, host, "from-during", during)
    taken = _serials(one)
    assert before_backup <= taken <= issued  # consistent: all received before, none invented
    two = _restored(tmp_path, host, "from-final", final)
    assert _serials(two) == issued  # every certificate a client received
    assert "hash chain verified" in two.cli("audit", "verify").stdout
    # The restored deployment signs with the restored issuer key: it serves and issues.
    await trio.to_thread.run_sync(two.start)
    try:
        more: dict[str, str] = {}
        assert await enroll_burst(two, secret, ["after-restore"], concurrency=1,
                                  received=more) == []
    finally:
        await trio.to_thread.run_sync(two.stop)
    assert _serials(two) == issued | set(more.values())


def test_restore_refuses_to_replace_a_store_unless_told_and_keeps_the_old_one(
        tmp_path: Path) -> None:
    host = make_host(tmp_path / "d", "d", upstream=1)
    host.cli("service", "enable", "demo")
    archive = tmp_path / "b.tar.gz"
    host.cli("backup", str(archive))
    host.cli("keys", "generate", "demo", "After")
    refused = host.cli("restore", str(archive), check=False)
    assert refused.returncode == 1 and refused.stderr.startswith("switch: store_exists: ")
    assert [k["name"] for k in json.loads(host.cli("keys", "list", "demo", "--json").stdout)] \
        == ["After"]
    done = json.loads(host.cli("restore", str(archive), "--replace", "--json").stdout)
    assert json.loads(host.cli("keys", "list", "demo", "--json").stdout) == []
    aside = Path(done["replaced_store_moved_to"])
    assert (aside / "switch.db").exists() and (aside / "issuers").is_dir()


def test_restore_refuses_an_archive_that_is_not_a_whole_switch_backup(tmp_path: Path) -> None:
    host = make_host(tmp_path / "d", "d", upstream=1)
    host.cli("service", "enable", "demo")
    archive = tmp_path / "b.tar.gz"
    host.cli("backup", str(archive))
    (host.directory / "state" / "switch.db").unlink()
    keyless = tmp_path / "keyless.tar.gz"
    with tarfile.open(archive) as source, tarfile.open(keyless, "w:gz") as target:
        for member in source.getmembers():
            if not member.name.startswith("issuers/"):
                target.addfile(member, source.extractfile(member))
    refused = host.cli("restore", str(keyless), check=False)
    assert refused.returncode == 1 and "backup_invalid" in refused.stderr
    assert "lacks the key of issuer" in refused.stderr
    assert not (host.directory / "state" / "switch.db").exists()  # nothing changed
    host.cli("restore", str(archive))
    assert host.cli("service", "status", "demo").returncode == 0


def test_backup_and_restore_refuse_a_postgresql_store_with_a_pointer_to_the_docs(
        tmp_path: Path, postgres: object) -> None:
    from tests.support.postgres import PostgresServer

    assert isinstance(postgres, PostgresServer)
    database = postgres.create_database()
    try:
        host = make_host(tmp_path / "d", "d", upstream=1, store=(postgres, database))
        for args in (("backup", str(tmp_path / "b.tar.gz")), ("restore", str(tmp_path / "x"))):
            refused = host.cli(*args, check=False)
            assert refused.returncode == 1 and "unsupported_store" in refused.stderr
            assert "pg_dump" in refused.stderr or "pg_restore" in refused.stderr
            assert 'docs/operations.md, "Backups"' in refused.stderr
    finally:
        postgres.drop_database(database)


def test_the_documented_pg_dump_and_pg_restore_procedure_restores_a_working_store(
        tmp_path: Path, postgres: object) -> None:
    """docs/operations.md, "PostgreSQL: pg_dump and pg_restore", as written: a pgpass file, a
    custom-format dump, a restore with --no-owner into an empty database; Switch then serves
    from it, its audit chain verifies, and new rows follow the restored ones."""
    import subprocess

    from tests.support.postgres import PASSWORD, PostgresServer, postgres_bin

    assert isinstance(postgres, PostgresServer)
    tools = postgres_bin()
    assert tools is not None
    source, restored = postgres.create_database(), postgres.create_database(template="template0")
    try:
        host = make_host(tmp_path / "d", "d", upstream=1, store=(postgres, source))
        host.cli("service", "enable", "demo")
        host.cli("keys", "generate", "demo", "Before")
        pgpass = tmp_path / "backup.pgpass"
        pgpass.write_text(f"127.0.0.1:{postgres.port}:*:switch:{PASSWORD}\n")
        pgpass.chmod(0o600)
        env = {"PGPASSFILE": str(pgpass), "PATH": "/usr/bin:/bin"}
        dump = tmp_path / "switch.dump"
        for argv in ([str(tools / "pg_dump"), "--format=custom", f"--file={dump}",
                      postgres.url(source)],
                     [str(tools / "pg_restore"), "--no-owner", "--role=switch", "--exit-on-error",
                      f"--dbname={postgres.url(restored)}", str(dump)]):
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
        text = host.config.read_text().replace(postgres.url(source), postgres.url(restored))
        host.config.write_text(text)
        assert "hash chain verified" in host.cli("audit", "verify").stdout
        host.cli("keys", "generate", "demo", "After")
        listed = json.loads(host.cli("keys", "list", "demo", "--json").stdout)
        assert [k["name"] for k in listed] == ["Before", "After"]
        host.start()
        host.stop()
    finally:
        postgres.drop_database(source)
        postgres.drop_database(restored)
