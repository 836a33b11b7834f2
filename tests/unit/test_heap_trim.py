"""Giving the C heap back after bursts of handshakes (``gateway.heap_trim``): when it trims, and
that the C library's ``malloc_trim`` is found and applied where the process has one."""

from __future__ import annotations

import platform

import pytest
import trio
import trio.testing

from gateway import heap_trim


class Handshakes:
    """A handshake count the test moves, and the trims it causes."""

    def __init__(self) -> None:
        self.count = 0
        self.trims: list[float] = []

    def trim(self) -> bool:
        self.trims.append(trio.current_time())
        return True

    async def storm(self, per_second: int, seconds: int) -> None:
        for _ in range(seconds):
            self.count += per_second
            await trio.sleep(1)


async def test_a_burst_is_followed_by_one_trim_once_it_is_over(
        autojump_clock: trio.testing.MockClock) -> None:
    hs = Handshakes()
    async with trio.open_nursery() as n:
        n.start_soon(lambda: heap_trim.trim_after_handshakes(lambda: hs.count, trim=hs.trim))
        await trio.sleep(0.5)
        await hs.storm(200, 20)  # 20 s of a storm: no trim in its midst
        assert hs.trims == []
        await trio.sleep(3)  # over: trimmed within a couple of ticks
        assert len(hs.trims) == 1 and hs.trims[0] <= 20.5 + 2 * heap_trim.TICK_S
        await trio.sleep(120)  # quiet: nothing more
        assert len(hs.trims) == 1
        hs.count += heap_trim.TRIM_AFTER - 1  # a few more: not a burst
        await trio.sleep(10)
        assert len(hs.trims) == 1
        hs.count += 1
        await trio.sleep(2)
        assert len(hs.trims) == 2
        n.cancel_scope.cancel()


async def test_a_steady_stream_of_handshakes_is_trimmed_now_and_then(
        autojump_clock: trio.testing.MockClock) -> None:
    hs = Handshakes()
    async with trio.open_nursery() as n:
        n.start_soon(lambda: heap_trim.trim_after_handshakes(lambda: hs.count, trim=hs.trim))
        await trio.sleep(0.5)
        await hs.storm(100, 300)  # never quiet, for 5 minutes
        assert 4 <= len(hs.trims) <= 5  # every TRIM_AT_LEAST_EVERY_S
        n.cancel_scope.cancel()


async def test_an_idle_process_never_trims(autojump_clock: trio.testing.MockClock) -> None:
    hs = Handshakes()
    with trio.move_on_after(600):
        await heap_trim.trim_after_handshakes(lambda: hs.count, trim=hs.trim)
    assert hs.trims == []


async def test_nothing_is_done_without_a_malloc_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    """musl, macOS: no malloc_trim, the task ends at once."""
    monkeypatch.setattr(heap_trim, "malloc_trim", lambda: None)
    with trio.fail_after(1):
        await heap_trim.trim_after_handshakes(lambda: 0)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_glibc_malloc_trim_is_found_and_runs() -> None:
    trim = heap_trim.malloc_trim()
    assert trim is not None
    garbage = [bytearray(4096) for _ in range(2000)]  # some heap to give back
    del garbage
    assert isinstance(trim(), bool)
