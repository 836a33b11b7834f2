"""The bench keeps its servers' logs (and only logs) when a section misses (scripts/bench.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_script", ROOT / "scripts" / "bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_script", module)
    spec.loader.exec_module(module)
    return module


def test_keep_logs_copies_only_log_files_with_their_paths(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "deploy" / "pki").mkdir(parents=True)
    (work / "nginx-w1").mkdir()
    (work / "switch-w3-fleet.log").write_text('{"event": "stopped"}\n')
    (work / "nginx-w1" / "error.log").write_text("warn\n")
    (work / "deploy" / "pki" / "ca.key").write_text("secret\n")
    (work / "deploy" / "switch.toml").write_text("[server]\n")
    target = tmp_path / "bench-results-logs"
    (target / "stale").mkdir(parents=True)  # an earlier run's copy is replaced
    assert _bench().keep_logs(work, target) == 2
    kept = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert kept == ["nginx-w1/error.log", "switch-w3-fleet.log"]
    assert (target / "switch-w3-fleet.log").read_text() == '{"event": "stopped"}\n'


def test_a_server_started_again_writes_a_new_log_and_keeps_the_earlier_one(tmp_path: Path) -> None:
    """The fleet's restart (section g) used to reopen the same file: the first Switch's stop,
    the part worth keeping, was overwritten by the second's start."""
    from scripts.benchlib.env import _fresh

    first = _fresh(tmp_path / "switch-w6-fleet.log")
    assert first.name == "switch-w6-fleet.log"
    first.write_text("stopped\n")
    second = _fresh(tmp_path / "switch-w6-fleet.log")
    assert second.name == "switch-w6-fleet-2.log"
    second.touch()
    assert _fresh(tmp_path / "switch-w6-fleet.log").name == "switch-w6-fleet-3.log"
    assert first.read_text() == "stopped\n"
