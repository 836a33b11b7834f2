"""The fleet bench's sizing and its loopback ceiling (scripts/benchlib/fleet.py, fleet_sizing.py): the processes
chosen for a fleet, its source addresses, the nginx configuration spreading its upstream
connections over them, and a fleet over the host's ports per source address and destination
refused before anything starts (it would otherwise wait on connects failing with
EADDRNOTAVAIL)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from scripts.benchlib import env, fleet, fleet_sizing
from scripts.benchlib.rows import Options


def test_the_fleet_gets_a_worker_per_nine_thousand_sessions_and_at_least_one_per_core() -> None:
    size = fleet_sizing.sizing(50_000, 2)
    assert (size.workers, size.generators, size.echoes, size.revoked) == (6, 6, 4, 10_000)
    small = fleet_sizing.sizing(1_500, 2)
    assert (small.workers, small.generators, small.echoes, small.revoked) == (2, 2, 2, 300)


def test_ports_per_destination_is_the_ephemeral_range(tmp_path: Path) -> None:
    ranges = tmp_path / "ip_local_port_range"
    ranges.write_text("32768\t60999\n")
    assert fleet_sizing.ports_per_destination(ranges) == 28_232
    ranges.write_text("garbage\n")
    assert fleet_sizing.ports_per_destination(ranges) is None
    assert fleet_sizing.ports_per_destination(tmp_path / "absent") is None


def test_the_fleet_spreads_over_a_source_address_per_twenty_thousand_agents() -> None:
    assert fleet_sizing.source_addresses(1_500) == ("127.0.0.2", "127.0.0.3")
    assert fleet_sizing.source_addresses(50_000) == ("127.0.0.2", "127.0.0.3", "127.0.0.4")
    assert len(fleet_sizing.source_addresses(10_000_000)) == 253  # 127.0.0.2 to 127.0.0.254


def test_the_port_check_counts_the_source_addresses(tmp_path: Path) -> None:
    ranges = tmp_path / "ip_local_port_range"
    ranges.write_text("32768 60999\n")
    fleet_sizing.check_ports(50_000, 3, ranges)  # 16,667 per address: within 28,232 - 1,000
    fleet_sizing.check_ports(27_232, 1, ranges)
    with pytest.raises(RuntimeError, match="puts 28,233 connections on each of 1 source"):
        fleet_sizing.check_ports(28_233, 1, ranges)
    with pytest.raises(RuntimeError, match="puts 30,000 connections on each of 2 source"):
        fleet_sizing.check_ports(60_000, 2, ranges)
    fleet_sizing.check_ports(50_000, 1, tmp_path / "absent")  # a host that does not say: no check


def test_a_fleet_over_the_ceiling_is_refused_before_anything_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ranges = tmp_path / "ip_local_port_range"
    ranges.write_text("32768 40000\n")  # 7,233 ports: 3 addresses cannot hold 50,000 agents
    monkeypatch.setattr(fleet_sizing.check_ports, "__defaults__", (ranges,))
    nothing = cast(Any, None)  # no deployment: the check comes first
    with pytest.raises(RuntimeError, match="--fleet 50,000 puts 16,667 connections on each of 3"):
        fleet.fleet(nothing, Options(quick=False, work=tmp_path, fleet=50_000))


def test_the_fleet_config_spreads_switch_upstream_connections(tmp_path: Path) -> None:
    (tmp_path / "switch.toml").write_text('[gateway]\nping_interval = "5s"\n')
    deploy = env.Deployment(tmp_path, 1, 2, 3, 4)
    text = fleet_sizing.fleet_config(deploy, ("127.0.0.2", "127.0.0.3")).read_text()
    assert text == ('[gateway]\nupstream_source_addresses = ["127.0.0.2", "127.0.0.3"]\n'
                    'ping_interval = "30s"\n')


def test_nginx_binds_its_upstream_connections_over_the_source_addresses() -> None:
    assert env.nginx_source_split(()) == ("", "")
    split, bind = env.nginx_source_split(("127.0.0.2", "127.0.0.3", "127.0.0.4"))
    assert split == ('split_clients "$remote_addr$remote_port" $upstream_source '
                     "{ 33.33% 127.0.0.2; 33.33% 127.0.0.3; * 127.0.0.4; }")
    assert bind == "proxy_bind $upstream_source;"


def test_the_revocation_rows_report_the_evictions_and_judge_the_closing_handshakes() -> None:
    size = fleet_sizing.sizing(1_500, 2)  # 300 revoked
    marks = fleet.Marks(revoke=100.0, revoked=100.4, evicted=100.6, all_evicted=True,
                        server_closed=101.5, closed=True)
    report: dict[str, Any] = {"groups": {
        "revoked": {"enrolled": 300, "closed_by_server_at": [100.5 + i / 1000 for i in range(300)]},
        "main": {"enrolled": 1_200, "closed_by_server_at": []}}}
    evicted, closed = fleet._revoke_rows(size, report, marks)
    assert evicted.switch == "0.60 s" and evicted.met is None and "300 sessions" in evicted.measure
    assert closed.switch == "1.50 s" and closed.met is False  # the handshakes took 1.5 s
    marks.server_closed = 100.9
    [_, closed] = fleet._revoke_rows(size, report, marks)
    assert closed.met is True
    report["groups"]["main"]["closed_by_server_at"] = [100.7]  # another key's session: fails
    [_, closed] = fleet._revoke_rows(size, report, marks)
    assert closed.met is False
    marks.all_evicted = False
    [evicted, _] = fleet._revoke_rows(size, report, marks)
    assert evicted.switch == "not within 60 s"
