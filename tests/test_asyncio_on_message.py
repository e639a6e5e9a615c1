"""``AsyncWebSocket.on_message`` / ``send_nowait`` / ``drain``: the callback style.

A callback set on the connection receives every message from the read path (no task
wake-up) and may answer with ``send_nowait``; ``recv()`` refuses meanwhile; queued messages
go to the callback when it is set; a failing callback closes with 1011; an answering
callback against a peer that does not read stays bounded (reading pauses above
``write_limit``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import pytest

from asyncio_support import TIMEOUT, raw_client, serving, wait_until
from kn_sock import ConnectionClosed, InvalidState, async_connect_websocket
from kn_sock._pure import build_frame
from kn_sock.asyncio.connection import unsent_bytes

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]


async def callback_echo(ws: Any, path: str) -> None:
    ws.on_message = ws.send_nowait
    await ws.wait_closed()


async def test_callback_echo_all_kinds_of_messages() -> None:
    """Whole, large, fragmented and compressed messages all reach the callback, in order."""
    async with serving(callback_echo) as server:  # compression negotiated by default
        async with async_connect_websocket("127.0.0.1", server.port) as ws:
            assert ws.extensions == ["permessage-deflate"]
            messages: list[Any] = ["hello", b"\x00\xff", "", b"", "é" * 40000, bytes(range(256)) * 1000]
            for m in messages:
                await ws.send(m)
            await ws.send(["frag", "mented"])  # one fragmented text message
            await ws.send(iter([b"a", b"b", b"c"]))
            got = [await asyncio.wait_for(ws.recv(), TIMEOUT) for _ in range(len(messages) + 2)]
            assert got == messages + ["fragmented", b"abc"]


async def test_callback_on_the_client_and_send_nowait_uncompressed() -> None:
    loop = asyncio.get_running_loop()
    async with serving(callback_echo, compression=None) as server:
        async with async_connect_websocket("127.0.0.1", server.port, compression=None) as ws:
            got: list[Any] = []
            done = loop.create_future()

            def on_message(message: Any) -> None:
                got.append(message)
                if len(got) == 200:
                    done.set_result(None)

            ws.on_message = on_message
            assert ws.on_message is on_message
            for i in range(100):
                ws.send_nowait(f"text {i}")
                ws.send_nowait(bytearray([i]) * (i * 700))  # up to ~70 KB: past the small-frame path
            await asyncio.wait_for(done, TIMEOUT)
            expected = []
            for i in range(100):
                expected += [f"text {i}", bytes([i]) * (i * 700)]
            assert got == expected
            ws.on_message = None  # back to recv()
            await ws.send("again")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "again"


async def test_setting_the_callback_delivers_queued_messages_first() -> None:
    async def three_then_wait(ws: Any, path: str) -> None:
        for i in range(3):
            await ws.send(f"m{i}")
        await ws.wait_closed()

    async with serving(three_then_wait) as server:
        async with async_connect_websocket("127.0.0.1", server.port) as ws:
            await wait_until(lambda: len(ws._messages or ()) == 3)
            got: list[str] = []
            ws.on_message = got.append
            assert got == ["m0", "m1", "m2"]


async def test_recv_refuses_while_a_callback_is_set_and_vice_versa() -> None:
    async with serving(callback_echo) as server:
        async with async_connect_websocket("127.0.0.1", server.port) as ws:
            ws.on_message = lambda m: None
            with pytest.raises(InvalidState):
                await ws.recv()
            with pytest.raises(InvalidState):
                async for _ in ws:
                    pass
            ws.on_message = None
            pending = asyncio.ensure_future(ws.recv())
            await asyncio.sleep(0)
            with pytest.raises(InvalidState):
                ws.on_message = print
            with pytest.raises(TypeError):
                ws.on_message = "not callable"  # type: ignore[assignment]
            await ws.send("x")
            assert await asyncio.wait_for(pending, TIMEOUT) == "x"


async def test_a_failing_callback_closes_with_1011(caplog: pytest.LogCaptureFixture) -> None:
    async def failing(ws: Any, path: str) -> None:
        def boom(message: Any) -> None:
            raise ValueError("secret detail")

        ws.on_message = boom
        await ws.wait_closed()

    caplog.set_level(logging.ERROR, logger="kn_sock")
    async with serving(failing) as server:
        async with async_connect_websocket("127.0.0.1", server.port) as ws:
            await ws.send("trigger")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) is None
            assert ws.close_code == 1011
    assert any("on_message" in r.getMessage() and r.exc_info for r in caplog.records)


@pytest.mark.parametrize("where", ["read", "batch", "queued"])
async def test_a_callback_raising_cancelled_error_closes_with_1011(caplog: pytest.LogCaptureFixture, where: str) -> None:
    """CancelledError (a cancelled future's result()) is a callback failure like any other:
    it escaped into asyncio, which killed the transport (1006, nothing on "kn_sock"). On each
    path a message takes to the callback: alone in its read (the fast path), several in one
    read (``_dispatch``), queued before the callback is set (``_feed_callback``)."""
    async def failing(ws: Any, path: str) -> None:
        def cancelled(message: Any) -> None:
            fut = asyncio.get_running_loop().create_future()
            fut.cancel()
            fut.result()

        if where == "queued":
            await wait_until(lambda: bool(ws._messages))
        ws.on_message = cancelled
        await ws.wait_closed()

    caplog.set_level(logging.ERROR, logger="kn_sock")
    async with serving(failing, compression=None) as server:
        peer = await raw_client(server.port)
        try:
            count = 3 if where == "batch" else 1
            peer.writer.write(b"".join(build_frame(1, b"trigger", True, False, os.urandom(4)) for _ in range(count)))
            assert await peer.read_close() == (1011, "on_message callback failed")
        finally:
            peer.close()
    assert any("on_message" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_answers_cut_by_the_peers_close_are_no_failure(caplog: pytest.LogCaptureFixture) -> None:
    """The peer sends messages and closes at once: answering the last ones raises
    ConnectionClosed inside the callback, which is not logged as an error."""
    caplog.set_level(logging.ERROR, logger="kn_sock")
    async with serving(callback_echo) as server:
        for _ in range(5):
            peer = await raw_client(server.port)
            for i in range(20):
                peer.send_frame(1, b"x" * i)
            peer.send_frame(8, b"\x03\xe8")
            assert await peer.read_close() == (1000, "")
            peer.close()
    assert not [r for r in caplog.records if "on_message" in r.getMessage()]


async def test_send_nowait_errors() -> None:
    async with serving(callback_echo) as server:
        ws = await async_connect_websocket("127.0.0.1", server.port)
        with pytest.raises(TypeError):
            ws.send_nowait(["not", "a", "whole", "message"])
        with pytest.raises(TypeError):
            ws.send_nowait(12)

        async def slow_fragments() -> Any:
            yield "a"
            yield "b"  # "a" goes out now: the fragmented message is open
            await asyncio.sleep(0.2)
            yield "c"

        fragmented = asyncio.ensure_future(ws.send(slow_fragments()))
        await asyncio.sleep(0.05)
        with pytest.raises(InvalidState):
            ws.send_nowait("in the middle")  # would interleave with the fragmented message
        await fragmented
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "abc"
        await ws.close()
        with pytest.raises(ConnectionClosed):
            ws.send_nowait("too late")
        with pytest.raises(ConnectionClosed):
            ws.send_nowait(b"x" * 100000)


async def test_answering_callback_stays_bounded_with_a_peer_that_does_not_read() -> None:
    """The peer sends ~8 MB and reads nothing: the callback's answers fill our write buffer,
    so reading pauses (the peer's own sends then block in TCP) instead of buffering all."""
    server_ws: list[Any] = []

    async def handler(ws: Any, path: str) -> None:
        server_ws.append(ws)
        ws.on_message = ws.send_nowait
        await ws.wait_closed()

    async with serving(handler, compression=None, write_limit=65536) as server:
        peer = await raw_client(server.port)
        try:
            payload = bytes(60000)
            sent = 0
            for _ in range(140):
                peer.send_frame(2, payload)
                sent += 1
                if peer.writer.transport.get_write_buffer_size() > 4 << 20:
                    break  # our own side is stuck too: the server stopped reading
            await wait_until(lambda: bool(server_ws) and server_ws[0]._paused_for_write)
            ws = server_ws[0]
            peak = 0
            for _ in range(20):
                peak = max(peak, ws.transport.get_write_buffer_size())
                await asyncio.sleep(0.01)
            assert peak < 65536 + (1 << 20)  # write_limit + what one read can answer
            # Now the peer reads: every answer arrives, in order, and the server reads on.
            async with asyncio.timeout(TIMEOUT * 3):
                for _ in range(sent):
                    opcode, data = await peer.read_frame()
                    assert (opcode, data) == (2, payload)
        finally:
            peer.close()


async def test_a_callback_set_over_write_limit_still_pauses_reading() -> None:
    """The buffer passed write_limit before the callback was set (a big greeting): reading
    pauses at once, as pause_writing would have made it (audit: answers to a peer that does
    not read grew to hundreds of MB)."""
    server_ws: list[Any] = []

    async def handler(ws: Any, path: str) -> None:
        server_ws.append(ws)
        ws.send_nowait(bytes(8 << 20))  # far over write_limit: writing pauses, no callback yet
        ws.on_message = ws.send_nowait
        await ws.wait_closed()

    async with serving(handler, compression=None, write_limit=65536, ping_interval=None) as server:
        peer = await raw_client(server.port)
        try:
            await wait_until(lambda: bool(server_ws) and server_ws[0]._write_paused)
            ws = server_ws[0]
            assert ws._paused_for_write
            start = ws.transport.get_write_buffer_size()
            payload = bytes(60000)
            for _ in range(100):  # 6 MB the server must not answer into its buffer
                peer.send_frame(2, payload)
                if peer.writer.transport.get_write_buffer_size() > 4 << 20:
                    break
                await asyncio.sleep(0)
            for _ in range(20):
                await asyncio.sleep(0.01)
                assert ws.transport.get_write_buffer_size() <= start + (1 << 20)
            opcode, data = await asyncio.wait_for(peer.read_frame(), TIMEOUT * 3)
            assert (opcode, len(data)) == (2, 8 << 20)
            opcode, data = await asyncio.wait_for(peer.read_frame(), TIMEOUT * 3)
            assert (opcode, data) == (2, payload)  # then the answers, once the peer reads
        finally:
            peer.close()


async def test_answers_to_a_batch_keep_their_order_around_a_ping() -> None:
    """Many messages (and a ping) in one read: the callback's answers, held back and written
    together, arrive complete and in order, and the ping is answered."""
    async with serving(callback_echo, compression=None) as server:
        peer = await raw_client(server.port)
        try:
            for i in range(30):
                peer.send_frame(1, f"a{i}".encode())
            peer.send_frame(9, b"are you there")
            for i in range(30):
                peer.send_frame(2, bytes([i]) * (i * 3000))  # some over the cork's 64 KiB
            got: list[tuple[int, bytes]] = []
            async with asyncio.timeout(TIMEOUT):
                while len(got) < 61:
                    got.append(await peer.read_frame())
            assert (10, b"are you there") in got
            data = [frame for frame in got if frame[0] != 10]
            assert data == [(1, f"a{i}".encode()) for i in range(30)] + [(2, bytes([i]) * (i * 3000)) for i in range(30)]
            for i in range(40):  # a batch with nothing else to write after it
                peer.send_frame(1, f"b{i}".encode())
            async with asyncio.timeout(TIMEOUT):
                assert [await peer.read_frame() for _ in range(40)] == [(1, f"b{i}".encode()) for i in range(40)]
        finally:
            peer.close()


@pytest.mark.parametrize("switch_at", [5, 17, 30])
async def test_a_callback_replacing_itself_over_a_compressed_backlog_keeps_the_order(backend, switch_at):
    """Reading paused (max_queue) with compressed messages waiting; the callback hands over to
    another one mid-batch: every message once, in order (audit: the next batch of the backlog
    overtook the rest of the current one)."""
    count = 300
    done = asyncio.Event()
    got: list[str] = []

    async def handler(ws, path):
        await asyncio.sleep(0.3)  # the queue fills: reading pauses, the rest waits compressed

        def collect(message):
            got.append(message)
            if len(got) == count:
                done.set()

        def first(message):
            collect(message)
            if len(got) == switch_at:
                ws.on_message = collect

        ws.on_message = first
        await done.wait()

    async with serving(handler, backend=backend, ping_interval=None) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend, ping_interval=None) as ws:
            assert ws.extensions == ["permessage-deflate"]
            for i in range(count):
                await ws.send(str(i))
            await asyncio.wait_for(done.wait(), TIMEOUT)
    assert got == [str(i) for i in range(count)]


async def test_a_callback_set_after_the_peers_close_gets_every_queued_message() -> None:
    """Its answers raise ConnectionClosed (closing): no failure, the next messages still come
    (audit 70: it stopped after the first, the rest stuck in the queue, recv() refused)."""

    async def three_then_close(ws: Any, path: str) -> None:
        for i in range(3):
            await ws.send(f"m{i}")

    async with serving(three_then_close) as server:
        async with async_connect_websocket("127.0.0.1", server.port) as ws:
            await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
            got: list[str] = []

            def answer(message: str) -> None:
                got.append(message)
                ws.send_nowait(message)

            ws.on_message = answer
            assert got == ["m0", "m1", "m2"]


async def test_connection_closed_from_another_connection_is_a_callback_failure(caplog: pytest.LogCaptureFixture) -> None:
    """A relay to a connection already closed: 1011 and an ERROR line, as for a handler
    (audit 70: swallowed at DEBUG, the rest of the callback skipped silently)."""
    caplog.set_level(logging.ERROR, logger="kn_sock")
    gone: list[Any] = []

    async def relay(ws: Any, path: str) -> None:
        if path == "/gone":
            gone.append(ws)
            return
        ws.on_message = lambda message: gone[0].send_nowait(message)
        await ws.wait_closed()

    async with serving(relay) as server:
        async with async_connect_websocket("127.0.0.1", server.port, path="/gone") as other:
            assert await asyncio.wait_for(other.recv(), TIMEOUT) is None
        async with async_connect_websocket("127.0.0.1", server.port, path="/src") as ws:
            await ws.send("relay me")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) is None
            assert ws.close_code == 1011
    assert any("on_message" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_a_coroutine_function_is_refused_as_callback() -> None:
    async with serving(callback_echo) as server:
        async with async_connect_websocket("127.0.0.1", server.port) as ws:

            async def never_awaited(message: Any) -> None:
                pass

            with pytest.raises(TypeError, match="coroutine"):
                ws.on_message = never_awaited

            class AsyncCallable:
                async def __call__(self, message: Any) -> None:
                    pass

            with pytest.raises(TypeError, match="coroutine"):  # (audit: every message dropped)
                ws.on_message = AsyncCallable()
            assert ws.on_message is None
            await ws.send("still usable")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "still usable"


async def test_answers_to_one_read_of_many_messages_stay_within_write_limit() -> None:
    """One read brings 2,000 tiny messages, each answered with 16 KiB, and the peer is not
    reading: the callback stops getting messages once its answers fill the buffer, and gets
    the rest as the peer reads (audit 70: all 2,000 answered at once, 32 MB buffered)."""
    server_ws: list[Any] = []
    answer = b"a" * 16384

    async def handler(ws: Any, path: str) -> None:
        server_ws.append(ws)
        ws.on_message = lambda message: ws.send_nowait(message + answer)
        await ws.wait_closed()

    count = 2000
    async with serving(handler, compression=None, write_limit=65536) as server:
        peer = await raw_client(server.port)
        try:
            peer.writer.write(b"".join(build_frame(2, i.to_bytes(2, "big"), True, False, os.urandom(4)) for i in range(count)))
            await wait_until(lambda: bool(server_ws) and server_ws[0]._paused_for_write)
            ws = server_ws[0]
            peak = 0
            for _ in range(10):
                peak = max(peak, unsent_bytes(ws.transport))
                await asyncio.sleep(0.01)
            assert peak < 65536 + 65536 + 4 * len(answer)  # write_limit + the cork + a few answers
            async with asyncio.timeout(TIMEOUT * 3):  # the peer reads: every answer, in order
                for i in range(count):
                    assert await peer.read_frame() == (2, i.to_bytes(2, "big") + answer)
            peer.send_frame(9, b"still reading")
            assert await asyncio.wait_for(peer.read_frame(), TIMEOUT) == (10, b"still reading")
        finally:
            peer.close()


async def test_keepalive_ends_a_callback_connection_whose_peer_reads_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """Reading paused by the callback's answers, and the peer reads none of them: no pong can
    come, and none is awaited forever (audit 70: the ping timeout was deferred again and
    again, the connection held open with its buffer full)."""
    caplog.set_level(logging.INFO, logger="kn_sock")
    server_ws: list[Any] = []
    big = b"x" * (4 << 20)

    async def handler(ws: Any, path: str) -> None:
        server_ws.append(ws)
        ws.on_message = lambda message: ws.send_nowait(big)
        await ws.wait_closed()

    async with serving(handler, compression=None, ping_interval=0.2, ping_timeout=0.2, close_timeout=0.5) as server:
        peer = await raw_client(server.port)
        try:
            for _ in range(200):  # past max_queue: they wait for the callback (audit 75)
                peer.send_frame(2, b"go")
            await wait_until(lambda: bool(server_ws) and server_ws[0]._paused_for_write)
            await wait_until(lambda: server_ws[0].closed)
        finally:
            peer.close()
    assert any("keepalive ping timeout" in r.getMessage() for r in caplog.records)
