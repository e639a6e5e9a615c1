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


def test_server_close_with_the_loop_stopped_during_process_request():
    """close() between run_until_complete calls (after run_forever, say) while a hook runs:
    no RuntimeError (no running loop), the client gets its 503 (regression audit)."""
    import socket

    from asyncio_support import TIMEOUT, echo, upgrade_request, wait_until
    from kn_sock import start_async_websocket_server

    async def hook(path, headers):
        await asyncio.sleep(30)

    loop = asyncio.new_event_loop()
    try:
        server = loop.run_until_complete(start_async_websocket_server("127.0.0.1", 0, echo, process_request=hook))
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
        sock.sendall(upgrade_request())
        loop.run_until_complete(wait_until(lambda: any(ws._handshake.task for ws in server.connections)))
        server.close()  # the loop is not running here
        loop.run_until_complete(asyncio.wait_for(server.wait_closed(), TIMEOUT))
        assert sock.recv(4096).startswith(b"HTTP/1.1 503 ")
        sock.close()
    finally:
        loop.close()
