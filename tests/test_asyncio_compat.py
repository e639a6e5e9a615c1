"""kn_sock.asyncio._compat: what the asyncio layer uses in place of 3.11+ APIs on Python 3.10.

The 3.10 versions are tested on every Python (they are plain asyncio code)."""

from __future__ import annotations

import asyncio

import pytest

from kn_sock.asyncio._compat import _timeout_310, cancelling


async def test_timeout_raises_timeout_error_past_the_delay():
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(TimeoutError):
        async with _timeout_310(0.05):
            await asyncio.sleep(5)
    assert loop.time() - start < 2


async def test_timeout_lets_a_quick_block_through_and_none_never_fires():
    async with _timeout_310(5):
        await asyncio.sleep(0)
    async with _timeout_310(None):
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.01)  # no cancellation left behind for this task


async def test_timeout_passes_an_outside_cancellation_through():
    entered = asyncio.Event()

    async def body() -> None:
        async with _timeout_310(5):
            entered.set()
            await asyncio.sleep(5)

    task = asyncio.create_task(body())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancelling():
    assert cancelling(None) is False
    assert cancelling(asyncio.current_task()) is False
