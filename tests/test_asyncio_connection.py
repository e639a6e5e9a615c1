"""AsyncWebSocket (kn_sock/asyncio/connection.py): messages, closing, pings, keepalive, limits.

Every protocol-relevant test runs under both parser twins (``backend`` ids [pure] / [cython]).
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import mmap
import os
import socket
import struct
import sys
import time
import weakref
import zlib
from typing import Any

import pytest

from asyncio_support import (
    TIMEOUT,
    default_loop,
    echo,
    make_tls_contexts,
    raw_client,
    raw_server,
    serving,
    stalled_client,
    wait_until,
)
from kn_sock import (
    AsyncWebSocket,
    ConnectionClosed,
    ConnectionClosedError,
    InvalidState,
    async_connect_websocket,
    start_async_websocket_server,
)
from kn_sock._pure import build_frame
from sync_support import assert_ended_by

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(20)]


# --------------------------------------------------------------------------- RFC 6455 §5.6: data frames


@pytest.mark.parametrize(
    "message, expected",
    [
        ("hello", "hello"),
        ("héllo ☃ \U0001f600", "héllo ☃ \U0001f600"),
        (b"\x00\x01\xfe\xff", b"\x00\x01\xfe\xff"),
        ("", ""),
        (b"", b""),
        (bytearray(b"ba"), b"ba"),
        (memoryview(b"mv"), b"mv"),
        (memoryview(b"s-t-r-i-d-e-d")[::2], b"strided"),
    ],
    ids=["text", "text-utf8", "binary", "empty-text", "empty-binary", "bytearray", "memoryview", "strided-view"],
)
@pytest.mark.parametrize("compression", ["deflate", None])
async def test_echo_types(backend, message, expected, compression):
    async with serving(echo, backend=backend, compression=compression) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend, compression=compression) as ws:
            await ws.send(message)
            got = await ws.recv(timeout=TIMEOUT)
            assert got == expected and type(got) is type(expected)


async def test_send_and_recv_awaitables_are_named_like_the_pure_twins_coroutines(backend):
    """Task reprs and debug warnings name them (the Cython twin's are not coroutine objects)."""
    async with serving(echo, backend=backend) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            await ws.send("y")  # for __anext__
            for make, name in ((lambda: ws.send("x"), "send"), (ws.recv, "recv"), (ws.__anext__, "__anext__")):
                awaitable = make()
                assert (awaitable.__name__, awaitable.__qualname__) == (name, f"AsyncCore.{name}")
                task = asyncio.ensure_future(awaitable)
                assert f"coro=<AsyncCore.{name}()" in repr(task)
                await asyncio.wait_for(task, TIMEOUT)


@pytest.mark.parametrize("compression", ["deflate", None])
@pytest.mark.parametrize(
    "fragments, expected",
    [(["a", "é", "", "c"], "aéc"), ([b"a", bytearray(b"b"), memoryview(b"c"), memoryview(b"d-e")[::2]], b"abcde"), (["only"], "only")],
    ids=["text", "binary", "single"],
)
async def test_echo_fragmented_sync_iterable(backend, compression, fragments, expected):
    async with serving(echo, backend=backend, compression=compression) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend, compression=compression) as ws:
            await ws.send(fragments)
            await ws.send(iter(fragments))  # a generator / iterator works too
            assert await ws.recv(timeout=TIMEOUT) == expected
            assert await ws.recv(timeout=TIMEOUT) == expected


@pytest.mark.parametrize("compression", ["deflate", None])
async def test_echo_fragmented_async_iterable(backend, compression):
    async def parts():
        for part in ("x" * 1000, "y" * 70000, "z"):
            await asyncio.sleep(0)
            yield part

    async with serving(echo, backend=backend, compression=compression) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend, compression=compression) as ws:
            await ws.send(parts())
            assert await ws.recv(timeout=TIMEOUT) == "x" * 1000 + "y" * 70000 + "z"


async def test_send_empty_iterable_sends_nothing(backend):
    async with serving(echo, backend=backend) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            await ws.send([])
            await ws.send("after")
            assert await ws.recv(timeout=TIMEOUT) == "after"


def _failing_parts():
    yield "a"
    yield "b"  # "a" is sent once "b" is known not to be the last fragment
    raise RuntimeError("boom")


async def _failing_aparts():
    yield "a"
    yield "b"
    raise RuntimeError("boom")


@pytest.mark.parametrize(
    "fragments, error",
    [(_failing_parts, RuntimeError), (_failing_aparts, RuntimeError), (lambda: ["text", b"bytes"], TypeError)],
    ids=["sync-raises", "async-raises", "mixed-types"],
)
async def test_fragmented_send_that_fails_midway_fails_the_connection(backend, fragments, error):
    """Half a message went out and cannot be finished: the connection fails with 1011."""
    seen = asyncio.get_running_loop().create_future()

    async def handler(websocket, path):
        assert await websocket.recv() is None
        seen.set_result(websocket.close_code)

    async with serving(handler, backend=backend) as server:
        ws = await async_connect_websocket("127.0.0.1", server.port, backend=backend)
        with pytest.raises(error):
            await ws.send(fragments())
        assert await asyncio.wait_for(seen, TIMEOUT) == 1011
        await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
        assert ws.closed
        with pytest.raises(ConnectionClosed):
            await ws.send("more")


async def test_recv_timeout_nan_inf_and_not_a_number(backend):
    """As in the blocking layer: NaN is a ValueError (the default loop ignored it: a recv that
    could wait for ever; uvloop raised from its timer), inf or a huge number no limit, a str a
    TypeError; the connection stays usable (no waiter left behind)."""
    async with serving(echo, backend=backend) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            with pytest.raises(ValueError, match="not nan"):
                await ws.recv(float("nan"))
            with pytest.raises(TypeError, match="not str"):
                await ws.recv("1")  # type: ignore[arg-type]
            for timeout in (float("inf"), 1e10):
                await ws.send("x")
                assert await ws.recv(timeout) == "x"
            await ws.send("y")
            assert await ws.recv(TIMEOUT) == "y"
            await ws.send("queued")
            await asyncio.wait_for(await ws.ping(), TIMEOUT)  # (the echo came before the pong)
            with pytest.raises(ValueError, match="not nan"):  # a message queued or not (audit)
                await ws.recv(float("nan"))
            assert await ws.recv(TIMEOUT) == "queued"
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend, reconnect=True) as rws:
            with pytest.raises(ValueError, match="not nan"):  # the reconnecting client too (audit)
                await rws.recv(float("nan"))
            with pytest.raises(TypeError, match="not bool"):
                await rws.recv(True)  # type: ignore[arg-type]


@pytest.mark.parametrize("compression", [None, "deflate"])
async def test_fragment_that_cannot_be_encoded(backend, compression):
    """A lone surrogate in a fragment: as the first one, nothing went out and the connection
    stays usable (every later send() raised InvalidState); as a later one, 1011 (audit)."""
    seen = asyncio.get_running_loop().create_future()

    async def handler(websocket, path):
        async for message in websocket:
            await websocket.send(message)
        seen.set_result(websocket.close_code)

    async with serving(handler, backend=backend, compression=compression) as server:
        ws = await async_connect_websocket("127.0.0.1", server.port, backend=backend, compression=compression)
        with pytest.raises(UnicodeEncodeError):
            await ws.send(["\ud800", "a"])
        await ws.send("probe")
        assert await ws.recv(TIMEOUT) == "probe"
        with pytest.raises(UnicodeEncodeError):
            await ws.send(["a", "\ud800"])
        assert await asyncio.wait_for(seen, TIMEOUT) == 1011
        with pytest.raises(ConnectionClosed):
            await ws.send("more")


@pytest.mark.parametrize("at", [0, 1])
async def test_send_before_the_first_fragment_is_out(backend, at):
    """The iterable is read one item ahead: until its first fragment went out, a send() from
    it slipped ahead of the fragmented message, and so did other tasks' (audit). Now its own
    raises InvalidState, as later on, and another task's waits for the whole message."""
    from kn_sock.exceptions import InvalidState

    seen = []
    other: list[asyncio.Task[None]] = []

    async def parts():
        for i in range(3):
            if i == at:
                try:
                    await ws.send("inside")
                except InvalidState:
                    seen.append("InvalidState")
                other.append(asyncio.ensure_future(ws.send("other")))
                await asyncio.sleep(0.01)
            yield str(i)

    async with serving(echo, backend=backend) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            await ws.send(parts())
            await asyncio.wait_for(other[0], TIMEOUT)
            assert seen == ["InvalidState"]
            assert await ws.recv(TIMEOUT) == "012"
            assert await ws.recv(TIMEOUT) == "other"


async def test_send_waits_for_a_fragmented_message_in_progress(backend):
    """Another task's send() waits for the fragmented message instead of failing (as websockets)."""
    gate = asyncio.Event()

    async def parts():
        yield "a"
        yield "b"
        await gate.wait()
        yield "c"

    async with serving(echo, backend=backend) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            frag = asyncio.create_task(ws.send(parts()))
            await asyncio.sleep(0.01)
            other = asyncio.create_task(ws.send("other"))
            await asyncio.sleep(0.01)
            assert not other.done()
            gate.set()
            await asyncio.wait_for(asyncio.gather(frag, other), TIMEOUT)
            assert await ws.recv(timeout=TIMEOUT) == "abc"
            assert await ws.recv(timeout=TIMEOUT) == "other"


async def test_send_from_the_iterable_of_its_own_fragmented_send_raises(backend):
    """The task sending the fragmented message cannot wait for its end: InvalidState, and
    the half-sent message fails the connection (1011) as any failing iterable does (audit:
    a deadlock, as in websockets)."""
    ws_box: list = []

    async def parts():
        yield "a"
        yield "b"
        await ws_box[0].send("inside")  # the fragmented message is open: this task's own

    async with serving(echo, backend=backend) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            ws_box.append(ws)
            with pytest.raises(InvalidState):
                await asyncio.wait_for(ws.send(parts()), TIMEOUT)
            await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
            assert ws.closed


async def test_close_during_a_fragmented_send_runs_the_closing_handshake(backend):
    """close() from another task while a fragmented send is between fragments: the sender's
    next fragment raises ConnectionClosed, and the closing handshake completes instead of the
    connection being failed (as in the blocking layer), with 1011, not the 1000 asked for:
    half a message went out (as websockets; audit 29C)."""
    gate = asyncio.Event()
    seen = asyncio.get_running_loop().create_future()

    async def parts():
        yield "a"
        yield "b"
        await gate.wait()
        yield "c"
        yield "d"

    async def handler(websocket, path):
        async for _ in websocket:
            pass
        seen.set_result(websocket.close_code)

    async with serving(handler, backend=backend, compression=None) as server:
        ws = await async_connect_websocket("127.0.0.1", server.port, backend=backend, compression=None)
        frag = asyncio.create_task(ws.send(parts()))
        await asyncio.sleep(0.01)
        closing = asyncio.create_task(ws.close())
        await asyncio.sleep(0)
        gate.set()
        await asyncio.wait_for(closing, TIMEOUT)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(frag, TIMEOUT)
        assert await asyncio.wait_for(seen, TIMEOUT) == 1011
        assert ws.close_code == 1011


@pytest.mark.parametrize("answer", [1000, 1011])
async def test_send_during_our_close_waits_for_the_handshake_outcome(backend, answer):
    """send() while our close frame awaits the peer's answer: raised once the handshake has
    ended, telling how (ConnectionClosedOK after 1000/1000; ConnectionClosedError with the
    peer's code otherwise), not an immediate ConnectionClosedError(1006) (as websockets)."""
    from kn_sock import ConnectionClosedError, ConnectionClosedOK

    async with raw_server() as (port, peers):
        ws = await async_connect_websocket("127.0.0.1", port, backend=backend, compression=None)
        peer = await asyncio.wait_for(peers.get(), TIMEOUT)
        closing = asyncio.create_task(ws.close())
        assert await peer.read_close() == (1000, "")
        sending = asyncio.create_task(ws.send("late"))
        await asyncio.sleep(0.05)
        assert not sending.done()  # waiting for the peer's answer
        peer.send_frame(8, answer.to_bytes(2, "big") + b"bye")
        peer.close()
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(sending, TIMEOUT)
        await asyncio.wait_for(closing, TIMEOUT)
        assert info.value.code == answer and info.value.reason == "bye"
        assert isinstance(info.value, ConnectionClosedOK if answer == 1000 else ConnectionClosedError)
        # Once closed, send() raises at once.
        with pytest.raises(ConnectionClosedOK if answer == 1000 else ConnectionClosedError):
            await asyncio.wait_for(ws.send("later"), 0.5)


async def test_send_wrong_type(backend):
    async with serving(echo, backend=backend) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            with pytest.raises(TypeError):
                await ws.send(42)
            with pytest.raises(TypeError):
                await ws.send({"a": 1})
            with pytest.raises(TypeError):
                await ws.send([42])
            with pytest.raises(TypeError, match="mmap"):  # was framed and dropped (audit)
                await ws.send(mmap.mmap(-1, 2))
            # The connection is still usable after API misuse that sent nothing.
            assert ws.open
            await ws.send("fine")
            assert await ws.recv(timeout=TIMEOUT) == "fine"


@pytest.mark.parametrize("size", [2**20, 100_000, 65_537], ids=["1MiB", "100KB", "64KiB+1"])
@pytest.mark.parametrize("compression", ["deflate", None])
async def test_echo_large(backend, size, compression):
    """Large payloads (random: incompressible) cross many reads and the get_buffer path."""
    payload = os.urandom(size)
    async with serving(echo, backend=backend, compression=compression) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend, compression=compression) as ws:
            await ws.send(payload)
            assert await ws.recv(timeout=TIMEOUT) == payload
            text = "é" * (size // 2)
            await ws.send(text)
            assert await ws.recv(timeout=TIMEOUT) == text


async def test_many_messages_in_order(backend):
    async with serving(echo, backend=backend) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            for i in range(500):
                await ws.send(str(i))
            for i in range(500):
                assert await ws.recv(timeout=TIMEOUT) == str(i)


async def test_handler_keeps_its_task_and_context_across_messages(backend):
    # recv() resumes the handler straight from the protocol callback (no loop trip): it must
    # still run as its own task, in its own context, and mix freely with other awaits.
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    async def handler(websocket, path):
        var.set(path)
        me = asyncio.current_task()
        async for message in websocket:
            if message == "sleep":
                await asyncio.sleep(0.001)
            await websocket.send(f"{message} {var.get()} {asyncio.current_task() is me}")

    async with serving(handler, backend=backend) as server:
        async with async_connect_websocket("127.0.0.1", server.port, path="/p", backend=backend) as ws:
            for message in ("a", "sleep", "b", "c"):
                await ws.send(message)
                assert await ws.recv(timeout=TIMEOUT) == f"{message} /p True"
            for i in range(50):  # several messages per read
                await ws.send(str(i))
            for i in range(50):
                assert await ws.recv(timeout=TIMEOUT) == f"{i} /p True"


async def test_json(backend):
    async def handler(websocket, path):
        obj = await websocket.recv_json()
        await websocket.send_json({"got": obj})

    async with serving(handler, backend=backend) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            await ws.send_json({"a": [1, 2.5, None, "é"]})
            assert await ws.recv_json(timeout=TIMEOUT) == {"got": {"a": [1, 2.5, None, "é"]}}
            assert await ws.recv_json(timeout=TIMEOUT) is None  # closed by the handler


# --------------------------------------------------------------------------- receiving


async def test_recv_none_after_close_and_async_for_ends(backend):
    async def handler(websocket, path):
        for i in range(3):
            await websocket.send(f"m{i}")

    async with serving(handler, backend=backend) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            received = [message async for message in ws]
            assert received == ["m0", "m1", "m2"]
            assert await ws.recv() is None
            assert await ws.recv(timeout=0.01) is None
            assert ws.close_code == 1000 and ws.close_reason == ""
            assert ws.closed and not ws.open
            with pytest.raises(ConnectionClosed):
                await ws.send("late")


async def test_recv_timeout_leaves_connection_usable(backend):
    async with serving(echo, backend=backend) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            with pytest.raises(TimeoutError):
                await ws.recv(timeout=0.05)
            with pytest.raises(TimeoutError):
                await ws.recv(timeout=0)
            await ws.send("still")
            assert await ws.recv(timeout=TIMEOUT) == "still"


# recv() and async for (__anext__) are separate C paths with the Cython twin.
RECEIVERS = pytest.mark.parametrize(
    "receive", [lambda ws: ws.recv(), lambda ws: ws.__anext__()], ids=["recv", "async-for"]
)


@RECEIVERS
async def test_cancelled_recv_does_not_lose_a_message(backend, receive):
    async with serving(echo, backend=backend) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            # Cancelled while nothing arrived: the next message goes to the next recv().
            task = asyncio.create_task(receive(ws))
            await wait_until(lambda: ws._waiter is not None)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await ws.send("one")
            assert await ws.recv(timeout=TIMEOUT) == "one"
            # Cancelled after the message was handed over but before recv() resumed: kept.
            task = asyncio.create_task(receive(ws))
            await wait_until(lambda: ws._waiter is not None)
            frame = build_frame(1, b"two")  # an unmasked server frame, fed as the loop would
            buf = memoryview(ws.get_buffer(-1))  # a writable buffer (not always a memoryview)
            buf[: len(frame)] = frame
            del buf
            ws.buffer_updated(len(frame))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await ws.recv(timeout=TIMEOUT) == "two"


async def test_wait_for_recv_timeout_does_not_lose_a_message(backend):
    async with serving(echo, backend=backend) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.02)
            await ws.send("kept")
            assert await ws.recv(timeout=TIMEOUT) == "kept"


async def test_send_and_recv_return_coroutines(backend):
    # With the Cython twin send() and recv() return coroutine-like objects instead of
    # coroutines (speed); both twins must behave as coroutines do: nothing happens before
    # the first step, tasks and asyncio's helpers take them, and one can be awaited once.
    async with serving(echo, backend=backend) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            unstarted = ws.recv()
            later = ws.recv()  # not waiting yet: no "already being awaited"
            first = ws.send("first")
            for call in (unstarted, later, first, ws.__anext__()):
                assert asyncio.iscoroutine(call)
                if call is not unstarted and call is not later and call is not first:
                    call.close()
            await ws.send("second")  # "first" has not gone out: it was not awaited yet
            assert await ws.recv(timeout=TIMEOUT) == "second"
            await first
            assert await later == "first"
            with pytest.raises(RuntimeError):
                await later
            unstarted.close()

            task = asyncio.create_task(ws.recv())
            await ws.send("to a task")
            assert await asyncio.wait_for(task, TIMEOUT) == "to a task"
            future = asyncio.ensure_future(ws.recv())
            await asyncio.gather(ws.send("a"), ws.send("b"))
            done, _ = await asyncio.wait([future], timeout=TIMEOUT)
            assert done and future.result() == "a"
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "b"

            # A step with an exception thrown in: raised there; the connection stays usable.
            thrown = ws.recv()
            assert thrown.send(None) is not None  # suspended, waiting
            with pytest.raises(KeyError):
                thrown.throw(KeyError("x"))
            await ws.send("after")
            assert await ws.recv(timeout=TIMEOUT) == "after"
            for drop in (True, False):  # stepped by hand: waiting, with no task to wake
                stepped = ws.recv()
                assert stepped.send(None) is not None
                if drop:
                    del stepped
                    gc.collect()
                await ws.send("after a stepped recv")  # the next recv() takes its place
                assert await ws.recv(timeout=TIMEOUT) == "after a stepped recv"
            not_sent = ws.send("never")
            with pytest.raises(ValueError):
                not_sent.throw(ValueError("y"))
            await ws.send("last")
            assert await ws.recv(timeout=TIMEOUT) == "last"
    # Closed: recv() gives None, async for's step ends the iteration, also inside a task.
    assert await ws.recv() is None
    with pytest.raises(StopAsyncIteration):
        await asyncio.create_task(ws.__anext__())
    with pytest.raises(ConnectionClosed):
        await asyncio.create_task(ws.send("closed"))


async def test_hand_stepped_calls_behave_as_coroutines(backend):
    # The corners of the coroutine protocol, the same under both twins.
    got: list = []
    async with serving(echo, backend=backend) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            # A recv() stepped by hand and dropped: the messages that arrive before the next
            # recv() (or before an on_message callback is set) are queued, not lost with it.
            stepped = ws.recv()
            assert stepped.send(None) is not None
            del stepped
            gc.collect()
            await ws.send("arrives while nobody waits")
            await wait_until(lambda: bool(ws._messages))  # queued: nobody waits
            assert await ws.recv(timeout=TIMEOUT) == "arrives while nobody waits"
            stepped = ws.recv()
            stepped.send(None)
            del stepped
            gc.collect()
            ws.on_message = got.append  # no recv() is being awaited any more
            await ws.send("to the callback")
            await wait_until(lambda: got)
            assert got == ["to the callback"]
            ws.on_message = None

            # As a coroutine: only None for the first step; StopIteration thrown in becomes
            # RuntimeError (PEP 479); nothing was sent.
            unstarted = ws.recv()
            with pytest.raises(TypeError):
                unstarted.send("not None")
            unstarted.close()  # (still unstarted: dropped, it would warn "never awaited")
            # StopIteration thrown in: RuntimeError out of a started one (PEP 479); out of one
            # not started, as it is from Python 3.12 on (its frame never runs).
            with pytest.raises(StopIteration if sys.version_info >= (3, 12) else RuntimeError):
                ws.send("never").throw(StopIteration)
            suspended = ws.recv()
            assert suspended.send(None) is not None
            with pytest.raises(RuntimeError):
                suspended.throw(StopIteration)
            with pytest.raises(RuntimeError):  # finished: whatever is thrown
                suspended.throw(KeyError)

            # Stepped again from inside its own step (a fragment iterator stepping the send
            # that reads it): refused, the send itself goes on unharmed.
            ops: list = []
            refused: list = []

            class Fragments:
                def __init__(self) -> None:
                    self.n = 0

                def __aiter__(self) -> "Fragments":
                    return self

                async def __anext__(self) -> bytes:
                    self.n += 1
                    if self.n == 2:
                        try:
                            ops[0].send(None)
                        except ValueError as exc:
                            refused.append(exc)
                    if self.n > 3:
                        raise StopAsyncIteration
                    return b"f"

            ops.append(ws.send(Fragments()))
            await asyncio.wait_for(ops[0], TIMEOUT)
            assert len(refused) == 1
            assert await ws.recv(timeout=TIMEOUT) == b"fff"
            await ws.send("still usable")
            assert await ws.recv(timeout=TIMEOUT) == "still usable"

            # Finished, they keep no connection alive.
            done_send = ws.send("kept?")
            await done_send
            done_recv = ws.recv()
            assert await done_recv == "kept?"
            ref = weakref.ref(ws)
    # Closed: a str that cannot be encoded fails as any send does, ConnectionClosed first.
    with pytest.raises(ConnectionClosed):
        await ws.send("\ud800")
    # (What the test itself holds goes first: the refused step's traceback reaches the frames
    # of the send it was refused from, and so the connection.)
    del ws, refused, ops, suspended, unstarted
    gc.collect()
    assert ref() is None


async def test_a_call_never_awaited_warns(backend):
    # A forgotten await: the message is not sent, and Python says so, under both twins.
    async with serving(echo, backend=backend) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            for name, call in (("send", lambda: ws.send("lost")), ("recv", ws.recv), ("__anext__", ws.__anext__)):
                with pytest.warns(RuntimeWarning, match=f"coroutine 'AsyncCore.{name}' was never awaited"):
                    call()
                    gc.collect()
            await ws.send("sent")
            assert await ws.recv(timeout=TIMEOUT) == "sent"


@RECEIVERS
async def test_concurrent_recv_is_an_error(backend, receive):
    async with serving(echo, backend=backend) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            first = asyncio.create_task(ws.recv())
            await wait_until(lambda: ws._waiter is not None)
            with pytest.raises(InvalidState):
                await receive(ws)
            await ws.send("for the first")
            assert await asyncio.wait_for(first, TIMEOUT) == "for the first"


async def test_recv_waiting_when_peer_closes_returns_none(backend):
    async def handler(websocket, path):
        await websocket.recv()  # one message, then return → close 1000

    async with serving(handler, backend=backend) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            waiting = asyncio.create_task(ws.recv())
            await asyncio.sleep(0.01)
            await ws.send("go")
            assert await asyncio.wait_for(waiting, TIMEOUT) is None
            assert ws.close_code == 1000


# --------------------------------------------------------------------------- RFC 6455 §7: closing


async def test_client_close_code_and_reason_reach_server(backend):
    seen = asyncio.get_running_loop().create_future()

    async def handler(websocket, path):
        assert await websocket.recv() is None
        seen.set_result((websocket.close_code, websocket.close_reason))

    async with serving(handler, backend=backend) as server:
        ws = await async_connect_websocket("127.0.0.1", server.port, backend=backend)
        await ws.close(4000, "bye")
        assert await asyncio.wait_for(seen, TIMEOUT) == (4000, "bye")
        assert ws.close_code == 4000  # the server echoed the code (RFC 6455 §5.5.1)
        assert ws.closed and ws.transport is None
        await ws.close()  # idempotent


async def test_close_with_invalid_code_is_rejected(backend):
    async with serving(echo, backend=backend) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            with pytest.raises(ValueError):
                await ws.close(1006)
            assert ws.open


async def test_tcp_dropped_without_close_is_1006(backend):
    seen = asyncio.get_running_loop().create_future()

    async def handler(websocket, path):
        assert await websocket.recv() is None
        seen.set_result(websocket.close_code)

    async with serving(handler, backend=backend) as server:
        ws = await async_connect_websocket("127.0.0.1", server.port, backend=backend)
        ws.abort()
        # Closed at once, as in the blocking layer (audit: open until the next loop iteration,
        # a send() meanwhile silently dropped).
        assert ws.closed and not ws.open and ws.close_code == 1006
        with pytest.raises(ConnectionClosed):
            await ws.send("after abort")
        assert await asyncio.wait_for(seen, TIMEOUT) == 1006
        await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
        assert ws.close_code == 1006
        assert await ws.recv() is None


async def test_server_drops_tcp_client_sees_1006(backend):
    async def handler(websocket, path):
        await websocket.recv()
        websocket.abort()

    async with serving(handler, backend=backend) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            await ws.send("x")
            assert await ws.recv(timeout=TIMEOUT) is None
            assert ws.close_code == 1006
            with pytest.raises(ConnectionClosed) as info:
                await ws.send("y")
            assert info.value.code == 1006


async def test_reset_by_peer_is_1006_and_the_server_keeps_serving(backend, monkeypatch):
    """On the default loop the connection reads its plain socket itself (_on_readable, in
    place of the transport's callback); a reset (RST) reaches it as a read error, handed to
    the transport: the handler sees 1006, other connections are not disturbed."""
    seen = asyncio.get_running_loop().create_future()
    server_ws = []
    errors = []
    transport_cls = asyncio.selector_events._SelectorSocketTransport
    fatal_error = transport_cls._fatal_error

    def recording_fatal_error(self, exc, message="Fatal error on transport"):
        errors.append(type(exc))
        return fatal_error(self, exc, message)

    monkeypatch.setattr(transport_cls, "_fatal_error", recording_fatal_error)

    async def handler(websocket, path):
        server_ws.append(websocket)
        while (message := await websocket.recv()) is not None:
            await websocket.send(message)
        if not seen.done():
            seen.set_result(websocket.close_code)

    async with serving(handler, backend=backend, compression=None) as server:
        ws = await async_connect_websocket("127.0.0.1", server.port, backend=backend, compression=None)
        await ws.send(b"x")
        assert await ws.recv(timeout=TIMEOUT) == b"x"
        own_reader = default_loop()  # (uvloop's transports read in C: the same outcome)
        assert ws._own_reader == server_ws[0]._own_reader == own_reader
        sock = ws.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        ws.transport.abort()  # close(2) with a zero linger: RST
        assert await asyncio.wait_for(seen, TIMEOUT) == 1006
        assert errors == ([ConnectionResetError] if own_reader else [])
        await asyncio.wait_for(server_ws[0].wait_closed(), TIMEOUT)
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend, compression=None) as other:
            await other.send("still here")
            assert await other.recv(timeout=TIMEOUT) == "still here"


async def test_a_failing_read_path_fails_only_its_connection(backend):
    """Whatever goes wrong while reading (here a parser that raises) is handed to the
    transport as its own read would: that connection is dropped, the server keeps serving."""

    class BrokenParser:
        error = None

        def get_buffer(self, sizehint):
            raise RuntimeError("boom")

    server_ws = []

    async def handler(websocket, path):
        server_ws.append(websocket)
        while (message := await websocket.recv()) is not None:
            await websocket.send(message)

    async with serving(handler, backend=backend, compression=None) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend, compression=None) as ws:
            await ws.send("x")
            assert await ws.recv(timeout=TIMEOUT) == "x"
            assert server_ws[0]._own_reader == default_loop()  # (uvloop asks get_buffer itself)
            server_ws[0]._parser = BrokenParser()
            await ws.send("y")
            assert await ws.recv(timeout=TIMEOUT) is None
            assert ws.close_code == 1006
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend, compression=None) as other:
            await other.send("still here")
            assert await other.recv(timeout=TIMEOUT) == "still here"


async def test_peer_close_without_code_is_1005(backend):
    async with raw_server() as (port, peers):
        ws = await async_connect_websocket("127.0.0.1", port, backend=backend, compression=None)
        peer = await peers.get()
        peer.send_frame(8, b"")
        assert await ws.recv(timeout=TIMEOUT) is None
        assert ws.close_code == 1005 and ws.close_reason == ""
        opcode, payload = await peer.read_frame()
        assert (opcode, payload) == (8, b"")
        peer.close()
        await asyncio.wait_for(ws.wait_closed(), TIMEOUT)


@pytest.mark.parametrize("end", ["error", "reset", "fin"])
async def test_the_closed_exception_has_what_ended_the_connection_as_its_cause(backend, end):
    """After the end, send() raises ConnectionClosedError whose ``__cause__`` is the
    ProtocolError we failed the connection for, or the peer's reset / the end of the stream
    when no close frame came (as websockets; audit: None)."""
    async with raw_server() as (port, peers):
        ws = await async_connect_websocket("127.0.0.1", port, backend=backend, compression=None, ping_interval=None)
        peer = await peers.get()
        if end == "error":
            peer.send_frame(3, b"")
        elif end == "reset":
            sock = peer.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.writer.transport.abort()
        else:
            peer.writer.write_eof()
        assert await ws.recv(timeout=TIMEOUT) is None
        with pytest.raises(ConnectionClosedError) as info:
            await ws.send("x")
        assert_ended_by(info.value, end)
        peer.close()


@pytest.mark.parametrize("when", ["open", "closing"])
async def test_a_tls_peer_ending_tcp_without_close_notify_is_an_eof_cause(backend, tmp_path, when):
    """No close frame, no close_notify, just TCP's end (while open, or while our close frame
    awaits its answer): EOFError as the cause on every loop (uvloop's TLS transport reports it
    with connection_lost(None) alone: the cause was None)."""
    server_ctx, client_ctx = make_tls_contexts(tmp_path)
    async with raw_server(ssl=server_ctx) as (port, peers):
        ws = await async_connect_websocket("127.0.0.1", port, backend=backend, compression=None, ping_interval=None,
                                           ssl=client_ctx)
        peer = await peers.get()
        closing = None
        if when == "closing":
            closing = asyncio.ensure_future(ws.close())
            assert (await peer.read_frame())[0] == 8
        fd = peer.writer.get_extra_info("socket").fileno()
        with socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM) as dup:  # (uvloop's socket has no shutdown())
            dup.shutdown(socket.SHUT_WR)  # under TLS: no close_notify
        if closing is not None:
            await asyncio.wait_for(closing, TIMEOUT)
        assert await ws.recv(timeout=TIMEOUT) is None
        with pytest.raises(ConnectionClosedError) as info:
            await ws.send("x")
        assert info.value.__cause__.__class__ is EOFError
        if when == "open":
            assert_ended_by(info.value, "fin")
        peer.close()


async def test_client_close_is_bounded_by_close_timeout(backend):
    """A server that never answers the close frame: close() returns after close_timeout."""
    async with raw_server() as (port, peers):
        ws = await async_connect_websocket("127.0.0.1", port, backend=backend, close_timeout=0.2)
        await peers.get()
        await asyncio.wait_for(ws.close(), 2)
        assert ws.close_code == 1006


# --------------------------------------------------------------------------- RFC 6455 §5.5.2-3: ping / pong


async def test_ping_waiter_and_latency(backend):
    async with serving(echo, backend=backend) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend, ping_interval=None) as ws:
            assert ws.latency == 0.0
            waiter = await ws.ping()
            rtt = await asyncio.wait_for(waiter, TIMEOUT)
            assert rtt > 0 and ws.latency == rtt
            waiter = await ws.ping(b"custom")
            assert await asyncio.wait_for(waiter, TIMEOUT) > 0
            waiter = await ws.ping("text payload")
            assert await asyncio.wait_for(waiter, TIMEOUT) > 0
            with pytest.raises(ValueError):
                await ws.ping(b"x" * 126)
            assert await asyncio.wait_for(await ws.ping(bytearray(b"ba")), TIMEOUT) > 0
            assert await asyncio.wait_for(await ws.ping(None), TIMEOUT) > 0  # as websockets' ping()
            for bad in (125, 1.5):  # not bytes(125): 125 zero bytes
                with pytest.raises(TypeError):
                    await ws.ping(bad)
                with pytest.raises(TypeError):
                    await ws.pong(bad)
            with pytest.raises(TypeError):
                await ws.close(1000, b"a reason must be str")
            await ws.pong(b"unsolicited")  # ignored by the peer
            await ws.send("ok")
            assert await ws.recv(timeout=TIMEOUT) == "ok"
        with pytest.raises(ConnectionClosed):
            await ws.ping()


async def test_ping_waiter_fails_when_connection_is_lost(backend):
    async with raw_server() as (port, peers):
        ws = await async_connect_websocket("127.0.0.1", port, backend=backend, ping_interval=None)
        peer = await peers.get()
        waiter = await ws.ping()
        peer.writer.transport.abort()
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(waiter, TIMEOUT)


async def test_server_answers_pings_while_app_does_not_recv(backend):
    async with serving(lambda ws, path: ws.wait_closed(), backend=backend) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            waiter = await ws.ping()
            assert await asyncio.wait_for(waiter, TIMEOUT) > 0


async def test_ping_flood_from_a_peer_that_never_reads_stays_bounded(backend):
    """Bad input: pongs for a peer that does not read are not queued without bound; while the
    write buffer is above write_limit only the latest ping is answered (RFC 6455 §5.5.3)."""
    server_side = asyncio.get_running_loop().create_future()

    async def handler(websocket, path):
        server_side.set_result(websocket)
        await websocket.wait_closed()

    async with serving(handler, backend=backend, write_limit=4096, ping_interval=None) as server:
        peer = await raw_client(server.port)
        sws = await asyncio.wait_for(server_side, TIMEOUT)
        flood = build_frame(9, b"p" * 125, True, False, os.urandom(4)) * 20_000  # 2.6 MB of pings
        for _ in range(8):  # more pongs than the kernel buffers hold
            peer.writer.write(flood)
            await asyncio.wait_for(peer.writer.drain(), TIMEOUT)
        peer.send_frame(9, b"last")
        # Bounded by write_limit plus the pongs for one read's pings (before the fix: the
        # whole flood's pongs, ~16 MB here); pings read together get one pong, for the latest.
        assert sws.transport.get_write_buffer_size() < 4096 + 300_000
        pongs = 0
        async with asyncio.timeout(TIMEOUT * 3):
            while (await peer.read_frame()) != (10, b"last"):
                pongs += 1
                assert sws.transport.get_write_buffer_size() < 4096 + 300_000
        assert pongs < 20_000  # for 160,000 pings
        assert sws.open
        peer.close()


async def test_keepalive_timeout_server_side_closes_1011(backend):
    """Server keepalive against a client that completed the handshake and then stays silent."""
    result = asyncio.get_running_loop().create_future()

    async def handler(websocket, path):
        result.set_result(await websocket.recv())

    async with serving(handler, backend=backend, ping_interval=0.05, ping_timeout=0.1) as server:
        peer = await raw_client(server.port)
        opcode, _ = await asyncio.wait_for(peer.read_frame(), TIMEOUT)
        assert opcode == 9  # a ping, never answered
        assert await peer.read_close() == (1011, "keepalive ping timeout")
        assert await asyncio.wait_for(result, TIMEOUT) is None
        assert await peer.at_eof()
        peer.close()


async def test_keepalive_timeout_client_side_closes_1011(backend):
    async with raw_server() as (port, peers):
        ws = await async_connect_websocket("127.0.0.1", port, backend=backend, ping_interval=0.05, ping_timeout=0.1)
        peer = await peers.get()
        assert await ws.recv(timeout=TIMEOUT) is None
        assert ws.closed
        assert await peer.read_close() == (1011, "keepalive ping timeout")
        await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
        with pytest.raises(ConnectionClosed) as info:  # it names keepalive as the cause
            await ws.send("late")
        assert info.value.code == 1006 and info.value.sent == (1011, "keepalive ping timeout")
        assert "keepalive ping timeout" in str(info.value)


async def test_keepalive_works_while_app_never_calls_recv(backend):
    server_side = asyncio.get_running_loop().create_future()
    done = asyncio.Event()

    async def handler(websocket, path):
        server_side.set_result(websocket)
        await done.wait()

    async with serving(handler, backend=backend, ping_interval=0.03, ping_timeout=3) as server:
        async with async_connect_websocket(
            "127.0.0.1", server.port, backend=backend, ping_interval=0.03, ping_timeout=3
        ) as ws:
            sws = await asyncio.wait_for(server_side, TIMEOUT)
            await wait_until(lambda: ws.latency > 0 and sws.latency > 0)
            first = ws.latency, sws.latency
            # Several intervals later both are still open and pings keep flowing.
            await wait_until(lambda: ws.latency != first[0] and sws.latency != first[1])
            assert ws.open and sws.open
            done.set()


async def test_keepalive_without_ping_timeout_keeps_pinging(backend):
    """ping_timeout=None: pings continue after the first pong."""
    async with serving(echo, backend=backend) as server:
        async with async_connect_websocket(
            "127.0.0.1", server.port, backend=backend, ping_interval=0.02, ping_timeout=None
        ) as ws:
            await wait_until(lambda: ws.latency > 0)
            first = ws.latency
            await wait_until(lambda: ws.latency != first, timeout=2)


async def test_keepalive_without_ping_timeout_pings_a_silent_peer_every_interval(backend):
    """ping_timeout=None and a peer that never answers: a ping every interval, never a close."""
    async with raw_server() as (port, peers):
        ws = await async_connect_websocket("127.0.0.1", port, backend=backend, ping_interval=0.02, ping_timeout=None)
        peer = await peers.get()
        payloads = set()
        async with asyncio.timeout(TIMEOUT):
            while len(payloads) < 5:
                opcode, payload = await peer.read_frame()
                assert opcode == 9
                payloads.add(payload)
        assert ws.open
        assert len(ws.protocol.pings) <= 1  # the unanswered ones are given up, not kept
        ws.abort()


# --------------------------------------------------------------------------- limits


@pytest.mark.parametrize("compression", ["deflate", None])
async def test_max_size_1009(backend, compression):
    closed = asyncio.get_running_loop().create_future()

    async def handler(websocket, path):
        async for message in websocket:
            await websocket.send(message)
        closed.set_result(websocket.close_code)

    async with serving(handler, backend=backend, max_size=1000, compression=compression) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend, compression=compression) as ws:
            await ws.send(b"a" * 1000)  # exactly max_size: accepted
            assert await ws.recv(timeout=TIMEOUT) == b"a" * 1000
            await ws.send(b"a" * 1001 if compression is None else b"a" * 100_000)
            assert await ws.recv(timeout=TIMEOUT) is None
            assert ws.close_code == 1009
        assert await asyncio.wait_for(closed, TIMEOUT) == 1006  # no close frame came from the client


async def test_max_size_fragmented_1009(backend):
    async with serving(echo, backend=backend, max_size=1000, compression=None) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend, compression=None) as ws:
            await ws.send([b"a" * 600, b"b" * 600])
            assert await ws.recv(timeout=TIMEOUT) is None
            assert ws.close_code == 1009


async def test_max_queue_pauses_reading(backend):
    """A flooding client: the server buffers a bounded number of messages, then stops reading."""
    server_side = asyncio.get_running_loop().create_future()
    release = asyncio.Event()
    got = []

    async def handler(websocket, path):
        server_side.set_result(websocket)
        await release.wait()
        async for message in websocket:
            got.append(message)

    count, size = 10_000, 1024  # 10 MB: more than the kernel's socket buffers hold
    async with serving(handler, backend=backend, max_queue=4, compression=None) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend, compression=None) as ws:
            sws = await asyncio.wait_for(server_side, TIMEOUT)
            # Fixed kernel buffers (no autotuning), so the 10 MB cannot all sit in them.
            sws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
            ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
            sender = asyncio.create_task(_flood(ws, count, size))
            await wait_until(lambda: not sws._is_reading())
            # One read of the socket may complete many messages; past that, nothing more is read.
            bound = 4 + 70_000 // size
            queued = len(sws._messages)
            assert 4 <= queued <= bound
            await asyncio.sleep(0.05)
            assert len(sws._messages) == queued
            assert not sender.done()  # the client is blocked on drain: backpressure end to end
            release.set()
            await asyncio.wait_for(sender, TIMEOUT)
            await wait_until(lambda: len(got) == count)
            assert got == [i.to_bytes(4, "big") * (size // 4) for i in range(count)]


@pytest.mark.parametrize("side", ["server", "client"])
@pytest.mark.parametrize("ending", ["read-all", "close", "on_message"])
async def test_max_queue_bounds_compressed_messages_too(backend, side, ending):
    """One read of highly compressed messages (1 MB of zeros deflates to ~1 KB: ~100 in one
    read) is inflated only up to max_queue (it was ~100 x max_size for one connection, audit);
    the rest waits compressed and is delivered, in order, as the application reads, or before
    the closing handshake completes."""
    count, size = 150, 1_000_000
    messages = [i.to_bytes(4, "big") + bytes(size - 4) for i in range(count)]
    peer_side = asyncio.get_running_loop().create_future()
    done = asyncio.Event()

    async def handler(websocket, path):
        peer_side.set_result(websocket)
        await done.wait()

    async with serving(handler, backend=backend, max_queue=4, max_size=2**21) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend, max_queue=4, max_size=2**21) as ws:
            other = await asyncio.wait_for(peer_side, TIMEOUT)
            receiver, sender = (other, ws) if side == "server" else (ws, other)
            assert receiver.extensions == ["permessage-deflate"]
            sending = asyncio.create_task(_send_all(sender, messages))
            await wait_until(lambda: len(receiver._messages or ()) >= 4 and not receiver._is_reading())
            await asyncio.sleep(0.05)
            assert len(receiver._messages) <= 4  # bounded: 4 x 1 MB, not ~100 MB
            if ending == "on_message":
                got: list = []
                receiver.on_message = got.append
                await wait_until(lambda: len(got) == count)
            else:
                got = []
                if ending == "close":
                    for _ in range(10):
                        got.append(await receiver.recv(timeout=TIMEOUT))
                    assert len(receiver._messages or ()) <= 4
                    await asyncio.wait_for(sending, TIMEOUT)
                    await asyncio.wait_for(receiver.close(), TIMEOUT)
                    assert receiver.close_code == 1000
                    got += list(receiver._messages or ())  # what was queued before the close
                    assert got == messages[: len(got)]
                    done.set()
                    return
                while len(got) < count:
                    got.append(await receiver.recv(timeout=TIMEOUT))
            await asyncio.wait_for(sending, TIMEOUT)
            assert got == messages
            done.set()


async def test_pings_behind_compressed_messages_are_answered_while_the_queue_is_full(backend):
    """max_queue bounds what is inflated (the rest waits compressed): a ping read with those
    messages is still answered at once, whether or not the application reads (SPEC)."""
    import zlib

    from sync_support import raw_client as sync_raw_client

    release = asyncio.Event()

    async def handler(websocket, path):
        await release.wait()

    def peer(port: int) -> bytes:
        raw = sync_raw_client(port, compression="deflate")
        z = zlib.compressobj(wbits=-9)  # within any window the server may have asked for
        data = b""
        for i in range(20):
            payload = z.compress(b"%d" % i + bytes(1_000_000)) + z.flush(zlib.Z_SYNC_FLUSH)
            data += build_frame(2, payload[:-4], True, True, os.urandom(4))
        raw.sock.sendall(data + build_frame(9, b"still there?", True, False, os.urandom(4)))
        try:
            while True:
                opcode, payload = raw.recv_frame()
                if opcode == 10:
                    return payload
        finally:
            raw.close()

    async with serving(handler, backend=backend, max_queue=2) as server:
        try:
            assert await asyncio.wait_for(asyncio.to_thread(peer, server.port), TIMEOUT) == b"still there?"
            (sws,) = server.connections
            assert len(sws._messages) <= 2 and sws.protocol.backlog is not None  # bounded
        finally:
            release.set()


def _ticker(loop: asyncio.AbstractEventLoop) -> list[int]:
    """A callback counting the event loop's iterations (it reschedules itself each one, until
    the count is set negative)."""
    ticks = [0]

    def tick() -> None:
        if ticks[0] >= 0:
            ticks[0] += 1
            loop.call_soon(tick)

    loop.call_soon(tick)
    return ticks


def _deflated_burst(count: int, size: int) -> bytes:
    """``count`` client frames of ``size`` zero bytes (after a 4-byte id), deflated in one
    stream (context takeover, a window any server accepts)."""
    import zlib

    z = zlib.compressobj(wbits=-9)
    out = b""
    for i in range(count):
        payload = z.compress(i.to_bytes(4, "big") + bytes(size)) + z.flush(zlib.Z_SYNC_FLUSH)
        out += build_frame(2, payload[:-4], True, True, os.urandom(4))
    return out


async def _loop_turns_per_message(backend: Any, count: int, size: int, **options: Any) -> list[int]:
    """A raw peer sends ``count`` deflated messages of ``size`` zeros in one write to an
    ``async for`` handler; for each message, the event loop iteration it arrived in."""
    from sync_support import raw_client as sync_raw_client

    loop = asyncio.get_running_loop()
    ticks = [0]
    seen: list[int] = []

    async def handler(websocket, path):
        nonlocal ticks
        async for message in websocket:
            if not seen:
                ticks = _ticker(loop)
            seen.append(ticks[0])
            if len(seen) == count:
                ticks[0] = -1
                return

    def peer(port: int) -> None:
        raw = sync_raw_client(port, compression="deflate")
        raw.sock.sendall(_deflated_burst(count, size))
        raw.sock.settimeout(TIMEOUT)
        try:
            raw.sock.recv(1)  # the server's close
        finally:
            raw.close()

    async with serving(handler, backend=backend, **options) as server:
        await asyncio.wait_for(asyncio.to_thread(peer, server.port), TIMEOUT)
        await wait_until(lambda: len(seen) == count)
    return seen


async def test_inflating_a_read_of_compressed_messages_lets_the_loop_run(backend):
    """A read bringing many small deflated messages that inflate to ~1 MB each is processed a
    budget at a time, one loop iteration each, not all in one read callback (audit: a peer
    sending such messages held the loop 0.3-0.5 s per read, starving every other connection)."""
    seen = await _loop_turns_per_message(backend, 12, 1_000_000, max_size=2**21)  # ~12 KB: one read
    assert seen[-1] - seen[0] >= 4, seen  # two messages a step


async def test_the_inflating_budget_is_per_loop_iteration(backend):
    """Small messages that inflate to 60 KB each, read by a plain ``async for``: each recv()
    that drains the queue refills it from the backlog, but a loop iteration still inflates
    about the budget, not the whole read (audit 66: 97 MB in one iteration, 0.4-0.7 s)."""
    seen = await _loop_turns_per_message(backend, 300, 60_000)
    per_iteration = max(seen.count(t) for t in set(seen))
    assert per_iteration * 60_000 <= 3_000_000, per_iteration


@pytest.mark.parametrize("max_queue", [None, 16])
async def test_abort_from_on_message_keeps_the_order(backend, max_queue):
    """on_message aborting mid-batch: what is delivered is a prefix of the stream (audit 66:
    the compressed backlog, processed by abort(), overtook the rest of the batch)."""
    from sync_support import raw_client as sync_raw_client

    got: list[int] = []
    done = asyncio.Event()

    async def handler(websocket, path):
        def on_message(message):
            got.append(int.from_bytes(message[:4], "big"))
            if len(got) == 20:
                websocket.abort()

        websocket.on_message = on_message
        await websocket.wait_closed()
        done.set()

    def peer(port: int) -> None:
        raw = sync_raw_client(port, compression="deflate")
        raw.sock.sendall(_deflated_burst(120, 50_000))
        raw.sock.settimeout(TIMEOUT)
        try:
            while raw.sock.recv(65536):
                pass
        except OSError:
            pass
        finally:
            raw.close()

    async with serving(handler, backend=backend, max_queue=max_queue) as server:
        task = asyncio.create_task(asyncio.to_thread(peer, server.port))
        await asyncio.wait_for(done.wait(), TIMEOUT)
        await asyncio.wait_for(task, TIMEOUT)
    assert got == list(range(len(got))) and len(got) >= 20, got


@pytest.mark.parametrize("max_queue", [None, 16])
async def test_keepalive_fails_a_silent_peer_that_keeps_the_inflating_busy(backend, max_queue):
    """A peer that never answers pings but keeps sending small deflated messages that inflate
    to ~1 MB: the backlog processed a budget per loop iteration (reading paused meanwhile) is
    no reason to wait on for its pong (audit 64: no 1011 for 30 s and more)."""
    import select
    import struct
    import zlib

    from sync_support import raw_client as sync_raw_client

    async def handler(websocket, path):
        async for message in websocket:
            pass

    def peer(port: int) -> int | None:
        raw = sync_raw_client(port, compression="deflate")
        z = zlib.compressobj(wbits=-9)
        first = z.compress(bytes(1_000_000)) + z.flush(zlib.Z_SYNC_FLUSH)
        steady = [z.compress(bytes(1_000_000)) + z.flush(zlib.Z_SYNC_FLUSH) for _ in range(2)]
        assert steady[0] == steady[1]  # (deflate in a steady state: each next message the same)
        head = build_frame(2, first[:-4], True, True, os.urandom(4))
        batch = b"".join(build_frame(2, steady[0][:-4], True, True, os.urandom(4)) for _ in range(2)) * 16
        data = bytearray()
        deadline = time.monotonic() + 8
        try:
            raw.sock.sendall(head + batch)
            raw.sock.setblocking(False)
            sending = True
            while time.monotonic() < deadline:
                readable, writable, _ = select.select([raw.sock], [raw.sock] if sending else [], [], 0.01)
                if writable:
                    try:
                        raw.sock.send(batch)
                    except BlockingIOError:
                        pass
                    except OSError:
                        sending = False  # (the server is gone: what it sent may still be read)
                if not readable:
                    continue
                try:
                    chunk = raw.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    return None
                if not chunk:
                    return None
                data += chunk
                while len(data) >= 2:  # server frames: unmasked, control frames short
                    n = data[1] & 0x7F
                    if n > 125 or len(data) < 2 + n:
                        break
                    opcode, payload = data[0] & 0x0F, bytes(data[2 : 2 + n])
                    del data[: 2 + n]
                    if opcode == 8:  # (pings, opcode 9, go unanswered)
                        return struct.unpack("!H", payload[:2])[0]
            return None
        finally:
            raw.close()

    async with serving(handler, backend=backend, max_queue=max_queue, max_size=2**21,
                       ping_interval=0.3, ping_timeout=0.3, close_timeout=1) as server:
        start = time.monotonic()
        code = await asyncio.wait_for(asyncio.to_thread(peer, server.port), TIMEOUT)
        assert code == 1011 and time.monotonic() - start < 5


async def test_compressed_sends_let_the_loop_run(backend):
    """send() counts what it deflates towards yielding to the loop: a task sending large
    compressed messages without ever suspending still lets the other callbacks run."""
    loop = asyncio.get_running_loop()
    async with serving(echo, backend=backend) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            assert ws.extensions == ["permessage-deflate"]
            ticks = _ticker(loop)
            before = ticks[0]
            for _ in range(4):
                await ws.send(bytes(300_000))  # deflates to ~300 bytes: never waits to drain
            after, ticks[0] = ticks[0], -1
            assert after > before


async def _send_all(ws: AsyncWebSocket, messages: list) -> None:
    for message in messages:
        await ws.send(message)


async def _flood(ws: AsyncWebSocket, count: int, size: int) -> None:
    for i in range(count):
        await ws.send(i.to_bytes(4, "big") * (size // 4))


async def test_close_while_reading_is_paused_is_prompt(backend):
    """The handler returns with the queue full: the close handshake must still complete."""
    server_side = asyncio.get_running_loop().create_future()
    release = asyncio.Event()

    async def handler(websocket, path):
        server_side.set_result(websocket)
        await release.wait()

    async with serving(handler, backend=backend, max_queue=2, compression=None, close_timeout=3) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend, compression=None) as ws:
            sws = await asyncio.wait_for(server_side, TIMEOUT)
            for _ in range(200):
                await ws.send(b"x" * 1000)
            await wait_until(lambda: not sws._is_reading())
            loop = asyncio.get_running_loop()
            start = loop.time()
            release.set()
            assert await ws.recv(timeout=TIMEOUT) is None
            await asyncio.wait_for(sws.wait_closed(), TIMEOUT)
            assert loop.time() - start < 1.0
            assert ws.close_code == 1000 and sws.close_code == 1000


async def test_write_limit_send_awaits_drain(backend):
    """A peer that never reads: send() eventually blocks and the write buffer stays bounded."""
    blocked = asyncio.get_running_loop().create_future()
    limit = 2**16

    async def handler(websocket, path):
        chunk = os.urandom(2**16)
        sent = 0
        while True:
            try:
                await asyncio.wait_for(websocket.send(chunk), 0.3)
            except TimeoutError:
                blocked.set_result((sent, websocket.transport.get_write_buffer_size()))
                return
            sent += 1
            assert websocket.transport.get_write_buffer_size() <= limit + len(chunk) + 16
            if sent > 2000:  # 128 MB went through: not blocked
                blocked.set_result((sent, None))
                return

    async with serving(handler, backend=backend, write_limit=limit, compression=None, close_timeout=0.2) as server:
        peer = await raw_client(server.port)
        sent, buffered = await asyncio.wait_for(blocked, 10)
        assert buffered is not None, "send() never blocked"
        assert buffered <= limit + 2**16 + 16
        peer.writer.transport.abort()


async def test_send_blocked_on_drain_raises_when_connection_is_lost(backend):
    server_side = asyncio.get_running_loop().create_future()
    outcome = asyncio.get_running_loop().create_future()

    async def handler(websocket, path):
        server_side.set_result(websocket)
        chunk = os.urandom(2**16)
        try:
            for _ in range(5000):
                await websocket.send(chunk)
        except ConnectionClosed as exc:
            outcome.set_result(exc)
        else:
            outcome.set_result(None)

    async with serving(handler, backend=backend, compression=None) as server:
        peer = await raw_client(server.port)
        sws = await asyncio.wait_for(server_side, TIMEOUT)
        await wait_until(lambda: sws._write_paused)
        peer.writer.transport.abort()
        exc = await asyncio.wait_for(outcome, TIMEOUT)
        assert isinstance(exc, ConnectionClosed) and exc.code == 1006


async def test_attributes(backend):
    server_side = asyncio.get_running_loop().create_future()

    async def handler(websocket, path):
        server_side.set_result(websocket)
        await websocket.recv()

    async with serving(handler, backend=backend, headers={"X-Srv": "1"}) as server:
        async with async_connect_websocket(
            "127.0.0.1", server.port, path="/p?q=1", backend=backend, headers={"X-Cli": "2"}
        ) as ws:
            sws = await asyncio.wait_for(server_side, TIMEOUT)
            assert isinstance(ws, AsyncWebSocket) and isinstance(sws, AsyncWebSocket)
            assert ws.path == sws.path == "/p?q=1"
            assert sws.request_headers["X-Cli"] == "2"
            assert ws.response_headers["X-Srv"] == "1"
            assert ws.remote_address[:2] == sws.local_address[:2] == ("127.0.0.1", server.port)
            assert sws.remote_address[:2] == ws.local_address[:2]
            assert ws.open and not ws.closed
            assert ws.close_code is None and ws.close_reason is None
            assert ws.subprotocol is None
            assert "OPEN" in repr(ws)


async def test_fragmented_send_waits_for_drain_between_fragments(backend):
    fragments = [os.urandom(2**16) for _ in range(16)]
    async with serving(echo, backend=backend, compression=None) as server:
        async with async_connect_websocket(
            "127.0.0.1", server.port, backend=backend, compression=None, write_limit=1024
        ) as ws:
            await ws.send(fragments)
            await ws.send((f for f in fragments))
            assert await ws.recv(timeout=TIMEOUT) == b"".join(fragments)
            assert await ws.recv(timeout=TIMEOUT) == b"".join(fragments)


async def test_many_concurrent_clients(backend):
    async with serving(echo, backend=backend) as server:

        async def client(i: int) -> list:
            async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
                out = []
                for j in range(10):
                    await ws.send(f"{i}:{j}")
                    out.append(await ws.recv(timeout=TIMEOUT))
                return out

        results = await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(50))), 10)
        assert results == [[f"{i}:{j}" for j in range(10)] for i in range(50)]


async def test_keepalive_tolerates_our_own_backpressure(backend):
    """SPEC: keepalive runs whether or not the application reads. With max_queue full, reading
    is paused by us, so an unread pong is not a dead peer: no 1011, and once the application
    reads again everything arrives."""
    release = asyncio.Event()
    received: list = []

    async def handler(ws, path):
        await release.wait()
        async for msg in ws:
            received.append(msg)
            if len(received) == 40:
                await ws.send("done")

    async with serving(handler, backend=backend, max_queue=2, ping_interval=0.1, ping_timeout=0.1) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend, ping_interval=None) as ws:
            for i in range(40):
                await ws.send(os.urandom(2048))
            await asyncio.sleep(0.6)  # several ping intervals pass while the server does not read
            assert ws.close_code is None
            release.set()
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "done"
    assert len(received) == 40


def _read_binary_frames(sock: socket.socket, skip: int, count: int) -> list[bytes]:
    """``count`` unmasked binary payloads from ``sock``, after ``skip`` raw bytes."""
    from kn_sock._pure import FrameParser

    data = b""
    while len(data) < skip:
        data += sock.recv(skip - len(data))
    assert data == b"\x00" * skip
    parser = FrameParser(expect_mask=False, max_size=None)
    got: list = []
    while len(got) < count:
        chunk = sock.recv(65536)
        assert chunk
        got.extend(parser.feed(chunk))
    assert [opcode for opcode, _, _, _ in got] == [2] * count
    return [payload for _, _, _, payload in got]


@pytest.mark.parametrize("prefill", [False, True], ids=["writev-partial", "socket-full"])
async def test_large_frames_to_a_slow_reader_arrive_whole_and_in_order(backend, prefill):
    # A large server frame goes out as header + payload in one writev on an idle plain socket;
    # the kernel taking part of it, or nothing (socket already full), leaves the rest to the
    # transport, in order.
    messages = [bytes([i]) * (65536 + 977 * i) for i in range(12)]
    filler: list[int] = []
    done = asyncio.Event()

    async def handler(ws, path):
        sock = ws.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        total = 0
        if prefill:
            while True:
                try:
                    total += os.write(ws._fd, b"\x00" * 4096)
                except BlockingIOError:
                    break
        filler.append(total)
        for m in messages:
            await ws.send(m)
        done.set()
        await ws.recv()

    async with serving(handler, backend=backend, compression=None, write_limit=2**22) as server:
        sock = await asyncio.to_thread(stalled_client, server.port)
        await wait_until(lambda: bool(filler))
        got = await asyncio.to_thread(_read_binary_frames, sock, filler[0], len(messages))
        assert got == messages
        async with asyncio.timeout(TIMEOUT):
            await done.wait()
        sock.sendall(build_frame(8, b"\x03\xe8", True, False, b"abcd"))
        sock.close()


# --------------------------------------------------------------------------- corking (AsyncWebSocket.send)


async def test_pipelined_messages_come_back_complete_and_in_order(backend):
    # Replies to a backlog of received messages are held back and written together.
    async with serving(echo, backend=backend, compression=None) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend, compression=None) as ws:
            messages = [os.urandom(i % 300) for i in range(600)] + ["text %d" % i for i in range(50)]
            for m in messages:
                await ws.send(m)
            got = [await ws.recv() for _ in messages]
            assert got == messages


def _burst(*payloads: bytes) -> bytes:
    return b"".join(build_frame(2, p, True, False, b"mask") for p in payloads)


async def test_held_back_reply_is_written_when_the_application_stops_answering(backend):
    # Three messages arrive in one read; the handler answers only the first and then waits
    # for something else: its reply must still go out (at the next loop iteration).
    first = asyncio.Event()

    async def handler(ws, path):
        await ws.recv()
        await ws.send(b"only reply")  # two more messages are queued: held back
        first.set()
        await ws.wait_closed()  # busy elsewhere: never answers again

    async with serving(handler, backend=backend, compression=None) as server:
        sock = await asyncio.to_thread(stalled_client, server.port)
        try:
            sock.sendall(_burst(b"a", b"b", b"c"))
            async with asyncio.timeout(TIMEOUT):
                await first.wait()
            got = await asyncio.to_thread(_read_binary_frames, sock, 0, 1)
            assert got == [b"only reply"]
        finally:
            sock.close()


async def test_held_back_frames_go_before_control_frames_and_close(backend):
    async def handler(ws, path):
        await ws.recv()
        await ws.send(b"reply 1")  # held back: two messages still queued
        await ws.ping(b"p")  # a control frame must not overtake it
        await ws.recv()
        await ws.send(b"reply 2")  # held back: one message still queued
        await ws.close(1000, "done")  # nor may the close frame

    async with serving(handler, backend=backend, compression=None) as server:
        sock = await asyncio.to_thread(stalled_client, server.port)
        try:
            sock.sendall(_burst(b"a", b"b", b"c"))

            def read_frames() -> list:
                from kn_sock._pure import FrameParser

                parser = FrameParser(expect_mask=False)
                frames: list = []
                while not frames or frames[-1][0] != 8:
                    data = sock.recv(65536)
                    assert data
                    frames.extend(parser.feed(data))
                return [(opcode, payload) for opcode, _, _, payload in frames]

            frames = await asyncio.to_thread(read_frames)
            assert [f[0] for f in frames] == [2, 9, 2, 8]
            assert frames[0][1] == b"reply 1" and frames[2][1] == b"reply 2"
        finally:
            sock.close()


@pytest.mark.parametrize("blocking_server", [False, True])
async def test_keepalive_spares_a_peer_whose_pong_waited_behind_unread_messages(backend, blocking_server):
    """The application leaves max_queue messages unread past ping_timeout, then reads: the
    peer's pong is behind what we had not read, so no 1011 (audit: keepalive closed the
    healthy connection right after reading resumed)."""
    import threading

    from kn_sock import WebSocketServer

    opts = dict(ping_interval=0.2, ping_timeout=0.2, max_queue=4, compression=None, backend=backend)
    result: list = []

    async def ahandler(ws, path):
        await asyncio.sleep(0.8)
        n = 0
        while (message := await ws.recv()) not in (None, "END"):
            n += 1
        result.append((n, message))

    def shandler(ws, address):
        time.sleep(0.8)
        n = 0
        while (message := ws.recv()) not in (None, "END"):
            n += 1
        result.append((n, message))

    if blocking_server:
        server: Any = WebSocketServer("127.0.0.1", 0, shandler, **opts)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    else:
        server = await start_async_websocket_server("127.0.0.1", 0, ahandler, **opts)
    try:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend, ping_interval=None,
                                           compression=None) as ws:
            sent = 0
            end = time.monotonic() + 1.2
            while time.monotonic() < end:
                await ws.send("x" * 1024)
                sent += 1
            await ws.send("END")
            await wait_until(lambda: result, 5)
        assert result == [(sent, "END")]
    finally:
        server.close() if not blocking_server else server.shutdown()


async def test_send_once_the_transport_is_lost_raises_under_both_twins(backend):
    """The transport is closing (a reset, abort()) before asyncio reports the connection lost:
    send() raises ConnectionClosed with either twin (the Cython fast path wrote to the socket
    and returned, the pure one raised: audit 65)."""
    async with serving(echo, backend=backend) as server:
        ws = await async_connect_websocket("127.0.0.1", server.port, backend=backend, compression=None)
        await ws.send("before")
        assert await ws.recv(timeout=TIMEOUT) == "before"
        ws.transport.abort()
        with pytest.raises(ConnectionClosed):
            await ws.send("after")
        assert ws.close_code == 1006


async def test_messages_dropped_while_closing_are_a_tail_never_a_gap(backend):
    """As in the blocking layer: closing with the application not reading, what it has no
    room for is dropped, but only as a tail (audit 67: later messages were kept again once
    the application took some, and it saw a hole in the stream)."""
    async with raw_server() as (port, peers):
        ws = await async_connect_websocket("127.0.0.1", port, backend=backend, compression=None, max_queue=4)
        peer = await asyncio.wait_for(peers.get(), TIMEOUT)
        for i in range(6):  # the queue fills (4), reading pauses
            peer.send_frame(1, b"%d" % i)
        await wait_until(lambda: len(ws._messages or ()) >= 4)
        closer = asyncio.create_task(ws.close())
        assert (await peer.read_close())[0] == 1000
        for i in range(6, 20):  # closing: read on, the queue full: dropped
            peer.send_frame(1, b"%d" % i)
        await wait_until(lambda: ws._dropping)
        got = [await ws.recv(timeout=TIMEOUT) for _ in range(2)]  # room made now
        for i in range(20, 30):
            peer.send_frame(1, b"%d" % i)
        peer.send_frame(8, b"\x03\xe8")
        peer.close()
        while (message := await ws.recv(timeout=TIMEOUT)) is not None:
            got.append(message)
        await asyncio.wait_for(closer, TIMEOUT)
    numbers = [int(m) for m in got]
    assert numbers == list(range(len(numbers))), numbers  # a prefix of the stream
    assert ws.close_code == 1000


# -- whole compressed frames read alone (AsyncCore's path for them: Protocol.receive_compressed)

_NO_TAKEOVER = {"Sec-WebSocket-Extensions": "permessage-deflate; client_no_context_takeover; server_no_context_takeover"}


def _deflated(data: bytes) -> bytes:
    """One message deflated on its own (no context takeover), the 0x00 0x00 0xff 0xff tail off."""
    compressor = zlib.compressobj(wbits=-15)
    return (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


def _inflated(payload: bytes) -> bytes:
    return zlib.decompressobj(wbits=-15).decompress(payload + b"\x00\x00\xff\xff")


@pytest.mark.parametrize("mode", ["recv", "on_message"])
async def test_whole_compressed_frames_each_read_alone(backend, mode):
    """Compressed messages, one frame a read: text, binary and empty ones arrive whole and
    in order, to a waiting recv() or to on_message, and one that arrives while nobody waits
    is queued for the next recv()."""
    got: list[Any] = []
    gate = asyncio.Event()
    conns: list[Any] = []

    async def handler(websocket, path):
        conns.append(websocket)
        await gate.wait()
        if mode == "on_message":
            done = asyncio.Event()

            def on_message(message):
                got.append(message)
                websocket.send_nowait(message)
                if message == "end":
                    done.set()

            websocket.on_message = on_message
            await done.wait()
        else:
            async for message in websocket:
                got.append(message)
                await websocket.send(message)
                if message == "end":
                    break

    messages: list[Any] = ["queued first ✓" * 5, "héllo ✓" * 10, b"\x00\x01" * 50, "", b"", bytes(3000), "end"]
    async with serving(handler, backend=backend, ping_interval=None) as server:
        peer = await raw_client(server.port, headers=_NO_TAKEOVER)
        await wait_until(lambda: bool(conns))
        for i, message in enumerate(messages):
            data = message.encode() if isinstance(message, str) else message
            peer.writer.write(build_frame(1 if isinstance(message, str) else 2, _deflated(data), True, True, os.urandom(4)))
            if i == 0:  # read while the handler does not wait yet: queued
                await wait_until(lambda: bool(conns[0]._messages))
                gate.set()
            opcode, payload = await asyncio.wait_for(peer.read_frame(), TIMEOUT)
            assert (opcode, _inflated(payload)) == ((1 if isinstance(message, str) else 2), data)
        assert got == messages
        peer.close()


@pytest.mark.parametrize(
    "opcode, payload, code",
    [
        (2, b"\xff\xff\xff\xff", 1002),  # not a deflate stream
        (1, _deflated(b"ok \xff\xfe"), 1007),  # invalid UTF-8 once inflated
        (2, _deflated(b"a" * 5000), 1009),  # past max_size once inflated
    ],
    ids=["bad-deflate", "bad-utf8", "too-big"],
)
async def test_whole_compressed_frame_read_alone_fails_with_the_rfc_code(backend, opcode, payload, code):
    """A bad compressed frame read alone while recv() waits fails the connection with the
    RFC's code, as any other path does; recv() then returns None."""
    result = asyncio.get_running_loop().create_future()
    conns: list[Any] = []

    async def handler(websocket, path):
        conns.append(websocket)
        result.set_result((await websocket.recv(), websocket.close_code))

    async with serving(handler, backend=backend, ping_interval=None, max_size=1000) as server:
        peer = await raw_client(server.port, headers=_NO_TAKEOVER)
        await wait_until(lambda: bool(conns) and conns[0]._waiter is not None)
        peer.writer.write(build_frame(opcode, payload, True, True, os.urandom(4)))
        assert (await peer.read_close())[0] == code
        assert await asyncio.wait_for(result, TIMEOUT) == (None, 1006)
        peer.close()


async def test_a_close_timeout_is_logged_at_info(caplog: pytest.LogCaptureFixture) -> None:
    """docs/guide.md "Logging": timeouts at INFO (nothing was logged here)."""
    caplog.set_level(logging.INFO, logger="kn_sock")
    async with raw_server() as (port, peers):
        ws = await async_connect_websocket("127.0.0.1", port, close_timeout=0.2, ping_interval=None)
        peer = await asyncio.wait_for(peers.get(), TIMEOUT)
        await asyncio.wait_for(ws.close(), TIMEOUT)  # the peer never answers
        assert ws.close_code == 1006
        peer.writer.transport.abort()
    assert any("timed out (close_timeout)" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
