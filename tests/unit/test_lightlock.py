"""LightLock: free to take without a schedule point, FIFO hand-off, cancellation while waiting."""

from __future__ import annotations

import trio
import trio.testing

from gateway.lightlock import LightLock


async def test_a_free_lock_is_taken_without_yielding() -> None:
    lock = LightLock()
    with trio.testing.assert_no_checkpoints():
        async with lock:
            assert lock.locked()
    assert not lock.locked()


async def test_waiters_get_the_lock_in_order_and_one_at_a_time() -> None:
    lock = LightLock()
    order: list[int] = []
    inside = 0

    async def worker(i: int) -> None:
        nonlocal inside
        async with lock:
            inside += 1
            assert inside == 1
            order.append(i)
            await trio.sleep(0.01)
            inside -= 1

    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(worker, i)
            await trio.testing.wait_all_tasks_blocked()
    assert order == [0, 1, 2, 3, 4]
    assert not lock.locked()


async def test_a_waiter_cancelled_in_the_queue_never_gets_the_lock() -> None:
    lock = LightLock()
    got: list[str] = []

    async def holder(release: trio.Event) -> None:
        async with lock:
            got.append("holder")
            await release.wait()

    async def waiter(name: str, scope: trio.CancelScope) -> None:
        with scope:
            async with lock:
                got.append(name)

    release = trio.Event()
    doomed = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(holder, release)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter, "doomed", doomed)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter, "next", trio.CancelScope())
        await trio.testing.wait_all_tasks_blocked()
        doomed.cancel()
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert got == ["holder", "next"]
    assert not lock.locked()
