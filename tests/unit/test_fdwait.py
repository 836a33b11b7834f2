"""gateway/fdwait.py: the wait for a readable socket entered with fewer coroutines alive, on
real socket pairs. It must take the fast path on the Trio this project installs (a Trio upgrade
that removes it fails here, not silently in the memory figures) and keep Trio's semantics:
wakes on data, a second waiter is refused, cancellation and ``notify_closing`` end it."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from gateway import fdwait


async def test_the_fast_path_is_taken_and_its_wait_is_trios_own() -> None:
    assert fdwait.fast_path()
    a, b = trio.socket.socketpair()
    with a, b:
        wait = fdwait.wait_readable(a)
        assert wait.cr_code.co_name == "_epoll_wait"  # type: ignore[attr-defined]
        await b.send(b"x")
        with trio.fail_after(5):
            await wait
        assert await a.recv(1) == b"x"


async def test_it_waits_until_data_arrives_and_a_second_waiter_is_refused() -> None:
    a, b = trio.socket.socketpair()
    with a, b:
        woke = trio.Event()

        async def waiter() -> None:
            await fdwait.wait_readable(a)
            woke.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert not woke.is_set()
            with pytest.raises(trio.BusyResourceError):
                await fdwait.wait_readable(a.fileno())
            await b.send(b"x")
            with trio.fail_after(5):
                await woke.wait()


async def test_cancelling_the_wait_or_closing_the_socket_ends_it() -> None:
    a, b = trio.socket.socketpair()
    with a, b:
        with trio.move_on_after(0.05) as scope:
            await fdwait.wait_readable(a)
        assert scope.cancelled_caught
        await b.send(b"x")  # the registration was undone: a new wait sees the data
        with trio.fail_after(5):
            await fdwait.wait_readable(a)

    c, d = trio.socket.socketpair()
    with d:
        async with trio.open_nursery() as nursery:
            async def closer() -> None:
                await trio.testing.wait_all_tasks_blocked()
                trio.lowlevel.notify_closing(c)
                c.close()

            nursery.start_soon(closer)
            with pytest.raises(trio.ClosedResourceError):
                await fdwait.wait_readable(c)
