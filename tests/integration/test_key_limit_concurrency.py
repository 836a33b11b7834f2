"""The three-live-key limit holds when separate processes generate keys at the same moment.

Each worker is a fresh interpreter (multiprocessing's ``spawn`` context), with its own SQLite
connection, released together by a barrier: the count-then-insert inside ``BEGIN IMMEDIATE`` is
what keeps the limit, not anything shared in memory.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import queue
from pathlib import Path

import pytest

from config.model import SwitchConfig
from enroll.authority import Authority
from enroll.errors import EnrollError
from enroll.keys import MAX_LIVE_KEYS

WORKERS = 10
#: Generous: spawning ten interpreters that import cryptography takes a few seconds on a busy CI.
JOIN_TIMEOUT_S = 120.0


def _generate(
    config: SwitchConfig,
    index: int,
    barrier: multiprocessing.synchronize.Barrier,
    results: multiprocessing.Queue[tuple[int, str]],
    open_after_barrier: bool,
) -> None:
    """Worker (runs in a spawned process): open the store, wait for the others, generate (or
    wait first, so that opening, creating and migrating the store race too)."""
    try:
        if open_after_barrier:
            barrier.wait(timeout=JOIN_TIMEOUT_S)
        authority = Authority.open(config, create=True)
        try:
            if not open_after_barrier:
                barrier.wait(timeout=JOIN_TIMEOUT_S)
            try:
                authority.generate_key("acme", f"Key {index}", actor=f"worker-{index}")
            except EnrollError as exc:
                results.put((index, exc.reason))
            else:
                results.put((index, "ok"))
        finally:
            authority.close()
    except BaseException as exc:  # reported, so that the test fails at once instead of timing out
        results.put((index, f"crashed: {type(exc).__name__}: {exc}"))
        raise


def _run_workers(config: SwitchConfig, *, open_after_barrier: bool = False) -> list[str]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    results: multiprocessing.Queue[tuple[int, str]] = ctx.Queue()
    processes = [
        ctx.Process(target=_generate, args=(config, i, barrier, results, open_after_barrier)) for i in range(WORKERS)
    ]
    for process in processes:
        process.start()
    outcomes: dict[int, str] = {}
    try:
        while len(outcomes) < WORKERS:
            index, outcome = results.get(timeout=JOIN_TIMEOUT_S)
            outcomes[index] = outcome
    except queue.Empty:
        pytest.fail(f"only {len(outcomes)} of {WORKERS} workers reported: {outcomes}")
    finally:
        for process in processes:
            process.join(timeout=JOIN_TIMEOUT_S)
            if process.is_alive():  # pragma: no cover - only on a hung worker
                process.kill()
                process.join()
    assert all(p.exitcode == 0 for p in processes), [p.exitcode for p in processes]
    return [outcomes[i] for i in range(WORKERS)]


def _check_store(config: SwitchConfig) -> None:
    authority = Authority.open(config)
    try:
        keys = authority.list_keys("acme")
        assert len(keys) == MAX_LIVE_KEYS
        created = [e for e in authority.audit_entries("acme") if e.action == "key.created"]
        assert sorted(e.target or "" for e in created) == sorted(k.id for k in keys)
        assert authority.verify_audit().ok
    finally:
        authority.close()


@pytest.mark.slow
def test_ten_processes_at_once_exactly_three_keys_are_created(switch_config: SwitchConfig) -> None:
    Authority.open(switch_config, create=True).close()  # the workers race on the limit only
    outcomes = _run_workers(switch_config)
    assert outcomes.count("ok") == MAX_LIVE_KEYS, outcomes
    assert outcomes.count("key_limit_reached") == WORKERS - MAX_LIVE_KEYS, outcomes
    _check_store(switch_config)


@pytest.mark.slow
def test_ten_processes_creating_the_store_at_once_still_create_three_keys(
    switch_config: SwitchConfig,
) -> None:
    assert not Path(switch_config.state_dir).exists()
    outcomes = _run_workers(switch_config, open_after_barrier=True)  # creating, migrating too
    assert sorted(outcomes) == sorted(["ok"] * MAX_LIVE_KEYS
                                      + ["key_limit_reached"] * (WORKERS - MAX_LIVE_KEYS)), outcomes
    _check_store(switch_config)
