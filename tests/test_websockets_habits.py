"""Where a websockets user's habits meet kn_sock (audit 79): the server as an async context
manager without ``await``, the close code of a ``with`` block left by an exception,
``on_connect`` without ``reconnect``, ``InvalidState`` as a RuntimeError, and a ping whose
payload is already waiting for its pong. Blocking and asyncio, both twins."""

from __future__ import annotations

import asyncio
import inspect
import queue
import threading
from typing import Any

import pytest

from asyncio_support import TIMEOUT, echo
from kn_sock import (
    InvalidState,
    WebSocketServer,
    async_connect_websocket,
    connect_websocket,
    start_async_websocket_server,
)

pytestmark = pytest.mark.timeout(20)


async def recorded(codes: "asyncio.Queue[Any]") -> Any:
    async def handler(ws: Any, path: str) -> None:
        async for message in ws:  # (no echo: a send racing the client's close would raise)
            pass
        await codes.put((ws.close_code, ws.close_reason))

    return handler


# --------------------------------------------------------------------------- the server start


@pytest.mark.asyncio
async def test_server_start_is_an_async_context_manager_without_await(backend):
    async with start_async_websocket_server("127.0.0.1", 0, echo, backend=backend) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            await ws.send("hi")
            assert await ws.recv(TIMEOUT) == "hi"
        assert server.sockets
    assert not server.sockets  # closed on exit
    async with await start_async_websocket_server("127.0.0.1", 0, echo, backend=backend) as server:
        assert server.port  # the documented form still works
    server = await start_async_websocket_server("127.0.0.1", 0, echo, backend=backend)
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
async def test_server_start_is_still_a_coroutine(backend):
    """SPEC.md: "Coroutine." asyncio.iscoroutine(function) and create_task accept it."""
    assert asyncio.iscoroutinefunction(start_async_websocket_server)
    start = start_async_websocket_server("127.0.0.1", 0, echo, backend=backend)
    assert asyncio.iscoroutine(start)
    server = await asyncio.create_task(start)
    server.close()
    await server.wait_closed()
    with pytest.raises(TypeError):  # options are checked at the call
        start_async_websocket_server("127.0.0.1", 0, echo, no_such_option=1)
    start = start_async_websocket_server("127.0.0.1", 0, echo)
    start.close()  # never awaited: no "was never awaited" warning, nothing bound
    if hasattr(inspect, "markcoroutinefunction"):
        assert inspect.iscoroutinefunction(start_async_websocket_server)


# --------------------------------------------------------------------------- with-block close codes


@pytest.mark.asyncio
async def test_async_with_block_left_by_an_exception_closes_1011(backend):
    codes: asyncio.Queue[Any] = asyncio.Queue()
    async with start_async_websocket_server("127.0.0.1", 0, await recorded(codes), backend=backend) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend):
            pass
        assert await asyncio.wait_for(codes.get(), TIMEOUT) == (1000, "")
        with pytest.raises(ZeroDivisionError):
            async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
                await ws.send("x")
                1 / 0
        assert await asyncio.wait_for(codes.get(), TIMEOUT) == (1011, "")
        assert ws.closed
        ws = await async_connect_websocket("127.0.0.1", server.port, backend=backend)
        with pytest.raises(KeyError):
            async with ws:  # the connection object itself
                raise KeyError
        assert await asyncio.wait_for(codes.get(), TIMEOUT) == (1011, "")

        async def cancelled() -> None:
            async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
                await ws.send("x")
                await asyncio.sleep(30)

        task = asyncio.create_task(cancelled())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await asyncio.wait_for(codes.get(), TIMEOUT) == (1001, "")


def test_with_block_left_by_an_exception_closes_1011(backend):
    codes: queue.Queue[Any] = queue.Queue()

    def handler(ws: Any, address: Any) -> None:
        for message in ws:
            pass
        codes.put(ws.close_code)

    with WebSocketServer("127.0.0.1", 0, handler, backend=backend) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        with connect_websocket("127.0.0.1", server.port, backend=backend):
            pass
        assert codes.get(timeout=TIMEOUT) == 1000
        with pytest.raises(ZeroDivisionError):
            with connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
                1 / 0
        assert codes.get(timeout=TIMEOUT) == 1011
        with pytest.raises(ZeroDivisionError):
            with connect_websocket("127.0.0.1", server.port, backend=backend, reconnect=True) as rws:
                1 / 0
        assert codes.get(timeout=TIMEOUT) == 1011
        assert ws.closed and not rws.connected


# --------------------------------------------------------------------------- on_connect alone


@pytest.mark.asyncio
async def test_on_connect_without_reconnect_runs_once(backend):
    seen: list[Any] = []

    async def on_connect(ws: Any) -> None:
        await ws.send("subscribe")
        seen.append(ws)

    async with start_async_websocket_server("127.0.0.1", 0, echo, backend=backend) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend, on_connect=on_connect) as ws:
            assert seen == [ws]
            assert await ws.recv(TIMEOUT) == "subscribe"

        def failing(ws: Any) -> None:
            seen.append("failed")
            raise LookupError("no such topic")

        with pytest.raises(LookupError):
            await async_connect_websocket("127.0.0.1", server.port, backend=backend, on_connect=failing)
        assert seen[-1] == "failed"

        def blocking() -> None:
            calls = []
            with connect_websocket("127.0.0.1", server.port, backend=backend, on_connect=calls.append) as ws:
                assert calls == [ws]
            with pytest.raises(LookupError):
                connect_websocket("127.0.0.1", server.port, backend=backend, on_connect=failing)

        await asyncio.to_thread(blocking)


# --------------------------------------------------------------------------- misuse and pings


@pytest.mark.asyncio
async def test_concurrent_recv_is_a_runtime_error(backend):
    async with start_async_websocket_server("127.0.0.1", 0, echo, backend=backend) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            first = asyncio.create_task(ws.recv())
            await asyncio.sleep(0.05)
            with pytest.raises(RuntimeError):
                await ws.recv()
            with pytest.raises(InvalidState):
                await ws.recv()
            first.cancel()


@pytest.mark.asyncio
async def test_ping_payload_already_waiting_is_refused(backend):
    """A second ping with the same payload before its pong: ValueError (it was silently given a
    random payload instead); an empty payload is always random."""
    async with start_async_websocket_server("127.0.0.1", 0, echo, backend=backend) as server:
        ws = await async_connect_websocket("127.0.0.1", server.port, backend=backend, ping_interval=None)
        waiters = [await ws.ping(b"a")]
        with pytest.raises(ValueError, match="same payload"):
            await ws.ping(b"a")
        waiters += [await ws.ping() for _ in range(3)]
        assert len(ws.protocol.pings) == 4
        await asyncio.wait_for(asyncio.gather(*waiters), TIMEOUT)
        await ws.ping(b"a")  # answered: free again
        await ws.close()

        def blocking() -> None:
            with connect_websocket("127.0.0.1", server.port, backend=backend, ping_interval=None) as ws:
                waiter = ws.ping(b"a")
                try:
                    ws.ping(b"a")
                except ValueError as exc:
                    assert "same payload" in str(exc)
                else:
                    assert waiter.is_set(), "the second ping was accepted while the first was waiting"
                assert waiter.wait(TIMEOUT)
                assert all(ws.ping().wait(TIMEOUT) for _ in range(3))

        await asyncio.to_thread(blocking)
