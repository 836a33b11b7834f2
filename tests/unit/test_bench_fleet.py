"""The fleet bench's sizing and its loopback ceiling (scripts/benchlib/fleet.py): the processes
chosen for a fleet, and a fleet over the host's ports per destination refused before anything
starts (it would otherwise wait on connects failing with EADDRNOTAVAIL)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from scripts.benchlib import fleet
from scripts.benchlib.rows import Options


def test_the_fleet_gets_a_worker_per_nine_thousand_sessions_and_at_least_one_per_core() -> None:
    size = fleet.sizing(50_000, 2)
    assert (size.workers, size.generators, size.echoes, size.revoked) == (6, 6, 4, 10_000)
    small = fleet.sizing(1_500, 2)
    assert (small.workers, small.generators, small.echoes, small.revoked) == (2, 2, 2, 300)


def test_ports_per_destination_is_the_ephemeral_range(tmp_path: Path) -> None:
    ranges = tmp_path / "ip_local_port_range"
    ranges.write_text("32768\t60999\n")
    assert fleet.ports_per_destination(ranges) == 28_232
    ranges.write_text("garbage\n")
    assert fleet.ports_per_destination(ranges) is None
    assert fleet.ports_per_destination(tmp_path / "absent") is None


def test_a_fleet_over_the_ceiling_is_refused_before_anything_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ranges = tmp_path / "ip_local_port_range"
    ranges.write_text("32768 60999\n")
    monkeypatch.setattr(fleet.ports_per_destination, "__defaults__", (ranges,))
    nothing = cast(Any, None)  # no deployment: the check comes first
    with pytest.raises(RuntimeError, match="--fleet 50,000 is over the 28,232"):
        fleet.fleet(nothing, Options(quick=False, work=tmp_path, fleet=50_000))
