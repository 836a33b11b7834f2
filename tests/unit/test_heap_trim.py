"""Giving the C heap back after bursts of handshakes (``gateway.heap_trim``): when it trims, and
that the C library's ``malloc_trim`` is found and applied where the process has one."""

from __future__ import annotations

import platform

import pytest
import trio
import trio.testing

from gateway import heap_trim


async def test_a_burst_of_handshakes_is_followed_by_one_trim(
        autojump_clock: trio.testing.MockClock) -> None:
    handshakes = 0
    trims: list[float] = []

    def trim() -> bool:
        trims.append(trio.current_time())
        return True

    async with trio.open_nursery() as n:
        n.start_soon(lambda: heap_trim.trim_after_handshakes(
            lambda: handshakes, trim=trim, every_s=5.0, after=64))
        await trio.sleep(1)
        handshakes += 100  # a burst
        await trio.sleep(30)  # then quiet
        assert len(trims) == 1 and trims[0] <= 6.0  # trimmed once, at the next look
        handshakes += 10  # a few more: not worth a trim
        await trio.sleep(30)
        assert len(trims) == 1
        handshakes += 60  # 70 since the last trim: trimmed again
        await trio.sleep(5)
        assert len(trims) == 2
        n.cancel_scope.cancel()


async def test_an_idle_process_never_trims(autojump_clock: trio.testing.MockClock) -> None:
    trims: list[int] = []
    with trio.move_on_after(600):
        await heap_trim.trim_after_handshakes(lambda: 0, trim=lambda: bool(trims.append(1)))
    assert trims == []


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
