"""EST issuance by `switch serve --workers 2` on one SQLite store: both workers issue, every
serial is distinct, and each certificate is committed before its reply reaches the agent."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from enroll import pki
from enroll.authority import Authority
from gateway.client.est_client import EstClient, EstServer, make_csr
from tests.support.est import HOST, make_deployment
from tests.support.processes import log_ports, worker_pids


def _stored(db: Path, serial: str) -> bool:
    """Whether another connection sees the certificate: committed, not merely written."""
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute("SELECT 1 FROM certificates WHERE serial = ?",
                            (serial,)).fetchone() is not None
    finally:
        conn.close()


def _issuing_workers(log: str) -> set[str]:
    return set(re.findall(r"est_request .*?status=200.*?worker=(\d+)", log)) | set(
        re.findall(r"est_request .*?worker=(\d+).*?status=200", log))


@pytest.mark.slow
async def test_two_workers_both_issue_against_one_store_each_certificate_committed_before_sent(
        tmp_path: Path) -> None:
    directory = tmp_path / "d"
    config = make_deployment(directory)
    authority = Authority.open(config)
    authority.enable_service("demo", actor="t")
    _, secret = authority.generate_key("demo", "Fleet", actor="t")
    authority.close()
    log = tmp_path / "serve.log"
    db = config.state_dir / "switch.db"
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "gateway.cli", "-c", str(config.path), "serve", "--workers", "2"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT)
    serials: list[str] = []
    not_committed: list[str] = []
    try:
        with trio.fail_after(120):
            while len(worker_pids(log.read_text())) < 2 or \
                    log.read_text().count("listener=enroll") < 3:  # noqa: ASYNC110
                await trio.sleep(0.05)
            server = EstServer("127.0.0.1", log_ports(log.read_text())["enroll"], HOST,
                               ca_file=directory / "pki/dev-root-ca.pem")

            async def agent(n: int) -> None:
                async with EstClient(server, timeout_s=30) as est:
                    for i in range(6):
                        cert = await est.simpleenroll(
                            make_csr(f"agent-{n}-{i}", pki.generate_key()), secret)
                        serial = format(cert.serial_number, "x")
                        serials.append(serial)
                        if not await trio.to_thread.run_sync(_stored, db, serial):
                            not_committed.append(serial)

            rounds = 0
            # New connections until both workers have issued (the kernel picks the acceptor).
            while len(_issuing_workers(log.read_text())) < 2:
                rounds += 1
                assert rounds <= 10, "one worker issued everything"
                async with trio.open_nursery() as nursery:
                    for n in range(8):
                        nursery.start_soon(agent, rounds * 100 + n)
    finally:
        proc.terminate()
        with trio.move_on_after(30):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
    assert not_committed == []
    assert len(serials) == len(set(serials)) == 48 * rounds
    conn = sqlite3.connect(db)
    try:
        stored = {row[0] for row in conn.execute("SELECT serial FROM certificates")}
        issued = conn.execute("SELECT certificates_issued FROM provisioning_keys").fetchone()[0]
    finally:
        conn.close()
    assert stored == set(serials)
    assert issued == len(serials)
