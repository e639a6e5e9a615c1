"""``kn_sock.asyncio._timers``: keepalive timers kept off asyncio's own event loops.

On asyncio's loops (``time.monotonic()``), ``call_at`` timers wait in the shared reactor thread
(``kn_sock._reactor``) and run in their loop's thread when due, without entering the loop's timer heap (whose mere presence costs
every iteration of the pure-Python loop); on other loops it is ``loop.call_at``.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import threading
import weakref
from typing import Any

import pytest

from asyncio_support import TIMEOUT, default_loop, echo, serving
from kn_sock import async_connect_websocket
from kn_sock.asyncio import _timers


def asyncio_loop_only() -> None:
    """Skip on uvloop (``KN_SOCK_TEST_LOOP=uvloop``): ``call_at`` is the loop's own there."""
    if not default_loop():
        pytest.skip("about asyncio's own loops (on uvloop, _timers.call_at is loop.call_at)")


async def test_a_timer_runs_in_its_loop_when_due_and_stays_off_the_heap() -> None:
    asyncio_loop_only()
    loop = asyncio.get_running_loop()
    ran: list[Any] = []
    done = asyncio.Event()
    start = loop.time()

    def callback() -> None:
        ran.append((threading.get_ident(), loop.time()))
        done.set()

    handle = _timers.call_at(loop, start + 0.05, callback)
    assert isinstance(handle, _timers.TimerHandle) and handle.when() == start + 0.05
    assert not any(h.when() == start + 0.05 for h in loop._scheduled)  # type: ignore[attr-defined]
    await asyncio.wait_for(done.wait(), TIMEOUT)
    [(thread, when)] = ran
    assert thread == threading.get_ident() and when >= start + 0.05


async def test_timers_run_in_deadline_order_and_cancelled_ones_never() -> None:
    loop = asyncio.get_running_loop()
    ran: list[int] = []
    done = asyncio.Event()
    now = loop.time()
    handles = [_timers.call_at(loop, now + delay, (lambda i=i: ran.append(i))) for i, delay in enumerate([0.06, 0.02, 0.04, 0.03])]
    handles[2].cancel()
    assert handles[2].cancelled() and not handles[0].cancelled()
    _timers.call_at(loop, now + 0.08, done.set)
    await asyncio.wait_for(done.wait(), TIMEOUT)
    assert ran == [1, 3, 0]


async def test_a_cancelled_timer_keeps_nothing_alive() -> None:
    class Owner:
        def tick(self) -> None:
            raise AssertionError("cancelled: must not run")

    owner = Owner()
    ref = weakref.ref(owner)
    handle = _timers.call_at(asyncio.get_running_loop(), asyncio.get_running_loop().time() + 3600, owner.tick)
    handle.cancel()
    del owner
    gc.collect()
    assert ref() is None


def test_a_timer_due_after_its_loop_closed_is_dropped() -> None:
    """The thread survives a closed loop and serves the next one."""
    old = asyncio.new_event_loop()
    _timers.call_at(old, old.time() + 0.01, lambda: None)
    old.close()

    async def later() -> None:
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0.03)  # (past the closed loop's timer: it has been dropped by now)
        _timers.call_at(loop, loop.time() + 0.01, done.set)
        await asyncio.wait_for(done.wait(), TIMEOUT)

    asyncio.run(later())


def test_other_loops_get_loop_call_at() -> None:
    class OwnClock(asyncio.SelectorEventLoop):  # type: ignore[misc,valid-type]
        def time(self) -> float:
            return super().time() + 1000.0

    loop = OwnClock()
    try:
        handle = _timers.call_at(loop, loop.time() + 60, lambda: None)
        assert isinstance(handle, asyncio.TimerHandle)
        handle.cancel()
    finally:
        loop.close()


async def test_keepalive_runs_without_a_timer_on_the_loop() -> None:
    """With keepalive on (the default), neither end keeps a timer on asyncio's loop, and pings
    still go out and come back (``latency``)."""
    asyncio_loop_only()
    async with serving(echo, ping_interval=0.05, ping_timeout=1.0) as server:
        async with async_connect_websocket("127.0.0.1", server.port, ping_interval=0.05, ping_timeout=1.0) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            loop = asyncio.get_running_loop()
            for _ in range(int(TIMEOUT / 0.01)):
                if ws.latency:
                    break
                await asyncio.sleep(0.01)  # (polling a value that has no event; bounded)
            assert ws.latency and ws.latency > 0
            names = [repr(h) for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
            assert not [n for n in names if "keepalive" in n], names


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform != "linux", reason="fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")  # 3.12+: forking is the point
def test_timers_work_in_a_forked_child() -> None:
    """The parent's reactor thread does not survive fork: the child gets a fresh one."""

    async def one_timer() -> None:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        _timers.call_at(loop, loop.time() + 0.01, done.set)
        await asyncio.wait_for(done.wait(), TIMEOUT)

    asyncio.run(one_timer())  # the parent's thread is running
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            asyncio.run(one_timer())
        except BaseException:
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
