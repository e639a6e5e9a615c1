"""start_async_websocket_server / AsyncWebSocketServer (kn_sock/asyncio/server.py).

The documented example, handler lifecycle and close codes, shutdown, the opening handshake
(RFC 6455 §4.2) with its HTTP answers, process_request, negotiation, interop with the
``websockets`` client, TLS and uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import struct
import sys
import threading
import time
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import connect as ws_connect

from asyncio_support import (
    TIMEOUT,
    RawPeer,
    echo,
    http_exchange,
    make_tls_contexts,
    raw_client,
    serving,
    upgrade_request,
    wait_until,
)
from kn_sock import _pure
from sync_support import bio_tls_client
from kn_sock import (
    AsyncWebSocketServer,
    ConnectionClosed,
    InvalidStatus,
    async_connect_websocket,
    start_async_websocket_server,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(20)]


# --------------------------------------------------------------------------- the documented example


async def test_documented_example(backend):
    async def handler(websocket, path):
        async for message in websocket:
            await websocket.send(f"Echo: {message}")

    server = await start_async_websocket_server("127.0.0.1", 0, handler, backend=backend)
    assert isinstance(server, AsyncWebSocketServer)
    port = server.port
    assert port == server.sockets[0].getsockname()[1] != 0
    async with async_connect_websocket("127.0.0.1", port, backend=backend) as websocket:
        await websocket.send("Hello")
        assert await websocket.recv() == "Echo: Hello"
    assert websocket.close_code == 1000
    ws = await async_connect_websocket("127.0.0.1", port, backend=backend)
    await ws.send("again")
    assert await ws.recv() == "Echo: again"
    await ws.close()
    server.close()
    await asyncio.wait_for(server.wait_closed(), TIMEOUT)


async def test_path_includes_query_string(backend):
    paths = asyncio.Queue()

    async def handler(websocket, path):
        await paths.put((path, websocket.path))

    async with serving(handler, backend=backend) as server:
        ws = await async_connect_websocket(f"ws://127.0.0.1:{server.port}/chat?x=1", backend=backend)
        assert await asyncio.wait_for(paths.get(), TIMEOUT) == ("/chat?x=1", "/chat?x=1")
        assert ws.path == "/chat?x=1"
        await ws.close()
        async with async_connect_websocket("127.0.0.1", server.port, path="/a/b?y=2&z", backend=backend):
            assert await asyncio.wait_for(paths.get(), TIMEOUT) == ("/a/b?y=2&z", "/a/b?y=2&z")


async def test_handler_with_one_parameter(backend):
    async def handler(websocket):
        await websocket.send(websocket.path)

    async with serving(handler, backend=backend) as server:
        async with async_connect_websocket("127.0.0.1", server.port, path="/one", backend=backend) as ws:
            assert await ws.recv(timeout=TIMEOUT) == "/one"


# --------------------------------------------------------------------------- handler lifecycle, close codes


async def test_handler_returns_closes_1000(backend):
    async def handler(websocket, path):
        pass

    async with serving(handler, backend=backend) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            assert await ws.recv(timeout=TIMEOUT) is None
            assert (ws.close_code, ws.close_reason) == (1000, "")


async def test_handler_raises_closes_1011(backend, caplog):
    async def handler(websocket, path):
        raise RuntimeError("secret detail")

    async with serving(handler, backend=backend) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            assert await ws.recv(timeout=TIMEOUT) is None
            assert ws.close_code == 1011
            assert "secret" not in ws.close_reason  # details are logged, not sent
    assert any("secret detail" in (r.exc_text or str(r.exc_info)) for r in caplog.records)


async def test_handler_raising_another_connections_connection_closed_closes_1011(backend, caplog):
    """A relay handler sending to a peer that left lets that ConnectionClosed out: its own,
    open connection is closed 1011 and the error logged, not taken for its own peer leaving
    (regression audit 54)."""
    gone = []

    async def handler(websocket, path):
        if path == "/first":
            gone.append(websocket)
            await websocket.wait_closed()
            return
        await gone[0].send("relay")  # the first client left: ConnectionClosed

    async with serving(handler, backend=backend) as server:
        first = await async_connect_websocket(f"ws://127.0.0.1:{server.port}/first", backend=backend)
        await first.close()
        await wait_until(lambda: gone and gone[0].closed)
        with caplog.at_level(logging.ERROR, logger="kn_sock"):
            async with async_connect_websocket(f"ws://127.0.0.1:{server.port}/second", backend=backend) as ws:
                assert await ws.recv(timeout=TIMEOUT) is None
                assert ws.close_code == 1011
    assert any("handler failed" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_server_close_sends_1001_and_wait_closed_returns(backend):
    ready = asyncio.Queue()

    async def handler(websocket, path):
        await ready.put(None)
        async for message in websocket:
            await websocket.send(message)

    server = await start_async_websocket_server("127.0.0.1", 0, handler, backend=backend)
    port = server.port
    clients = [await async_connect_websocket("127.0.0.1", port, backend=backend) for _ in range(3)]
    for _ in clients:
        await asyncio.wait_for(ready.get(), TIMEOUT)
    server.close()
    await asyncio.wait_for(server.wait_closed(), TIMEOUT)
    for ws in clients:
        assert await ws.recv(timeout=TIMEOUT) is None
        assert ws.close_code == 1001
        await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
    assert not server.connections and not server.tasks
    assert server.port == port  # still known once closed
    with pytest.raises(OSError):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)


async def test_wait_closed_does_not_wait_for_done_callbacks(backend):
    # Python 3.12's gather() of finished tasks completes without a trip through the loop, so
    # the done callback that takes a finished handler task out of ``tasks`` had not run yet
    # and wait_closed() spun forever. It must judge what is still running by itself.
    server = await start_async_websocket_server("127.0.0.1", 0, echo, backend=backend)
    finished = asyncio.get_running_loop().create_task(asyncio.sleep(0))
    await finished
    server.tasks.add(finished)  # finished, and nothing will ever remove it
    server.close()
    await asyncio.wait_for(server.wait_closed(), TIMEOUT)


@pytest.mark.parametrize("sent_before", [b"", b"GET / HTTP/1.1\r\n"])
async def test_server_close_answers_503_to_connections_still_in_handshake(backend, sent_before):
    """Accepted but not upgraded yet when the server closes: HTTP 503, not a bare reset (audit;
    websockets answers the same), whether the request comes before or after the close."""
    server = await start_async_websocket_server("127.0.0.1", 0, echo, backend=backend)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(sent_before)
    await wait_until(lambda: len(server.connections) == 1)
    server.close()
    writer.write(upgrade_request()[len(sent_before) :])
    answer = await asyncio.wait_for(reader.read(), TIMEOUT)
    assert answer.startswith(b"HTTP/1.1 503 "), answer
    writer.close()
    await asyncio.wait_for(server.wait_closed(), TIMEOUT)
    assert not server.connections


async def test_server_close_right_after_an_accept_answers_503(backend, monkeypatch):
    """close() between asyncio accepting a connection and the task that makes its transport:
    the client gets its 503 (asyncio's server closed at once failed that task and left the
    socket open, the client waiting for its open_timeout; regression audit 53)."""
    loop = asyncio.get_running_loop()
    if not isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop):
        pytest.skip("selector event loops only")
    server = await start_async_websocket_server("127.0.0.1", 0, echo, backend=backend)
    create_task = loop.create_task
    hit = []

    def close_after_accept(coro, **kwargs):
        task = create_task(coro, **kwargs)
        if getattr(coro, "__name__", "") == "_accept_connection2" and not hit:
            hit.append(coro)
            server.close()  # the accepted socket's transport is not made yet
        return task

    monkeypatch.setattr(loop, "create_task", close_after_accept)
    with pytest.raises(InvalidStatus) as info:
        await async_connect_websocket("127.0.0.1", server.port, backend=backend, open_timeout=TIMEOUT)
    assert hit and info.value.status == 503
    await asyncio.wait_for(server.wait_closed(), TIMEOUT)
    assert not server.sockets


@pytest.mark.parametrize("accepting", [False, True], ids=["idle", "accepting"])
async def test_server_close_then_loop_stop_closes_the_port(backend, accepting):
    """close() and loop.stop() in one callback (a SIGTERM handler), the loop then closed:
    the port is closed at once (a close deferred to the next iteration never ran: the
    listening socket stayed open; regression audits 56, 58), also when a connection was just
    accepted (asyncio's server then goes one iteration later). (A loop of its own, in a thread.)"""

    def run_and_stop() -> None:
        loop = asyncio.new_event_loop()
        try:
            server = loop.run_until_complete(start_async_websocket_server("127.0.0.1", 0, echo, backend=backend))

            def on_signal():
                server.close()
                loop.stop()

            if accepting:
                if not isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop):
                    return
                create_task = loop.create_task

                def stop_after_accept(coro, **kwargs):
                    task = create_task(coro, **kwargs)
                    if getattr(coro, "__name__", "") == "_accept_connection2":
                        loop.create_task = create_task  # type: ignore[method-assign]
                        on_signal()  # the accepted connection's transport is not made yet
                    return task

                loop.create_task = stop_after_accept  # type: ignore[method-assign]
                client = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
            else:
                loop.call_soon(on_signal)
            loop.run_forever()
            assert not server.sockets
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT).close()
            if accepting:  # the loop runs again: the accepted connection is answered 503
                answer = loop.run_until_complete(asyncio.wait_for(asyncio.to_thread(client.recv, 4096), TIMEOUT))
                assert answer.startswith(b"HTTP/1.1 503 "), answer
                client.close()
                loop.run_until_complete(asyncio.wait_for(server.wait_closed(), TIMEOUT))
        finally:
            loop.close()

    await asyncio.to_thread(run_and_stop)


async def test_server_close_with_a_handshake_whose_client_left(backend):
    """The client left mid-handshake and the loop has not noticed yet when the server closes:
    close() does not raise (a Chromium test: ENOTCONN from write_eof after the 503)."""
    server = await start_async_websocket_server("127.0.0.1", 0, echo, backend=backend)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    sock.sendall(b"GET / HTTP/1.1\r\n")
    await wait_until(lambda: len(server.connections) == 1)
    await asyncio.sleep(0.05)
    sock.close()  # our answer to it will be met by a reset: write_eof() then fails (ENOTCONN)
    time.sleep(0.05)  # (blocking: the loop does not see the end before close())
    server.close()
    await asyncio.wait_for(server.wait_closed(), TIMEOUT)


async def test_server_close_answers_503_during_process_request(backend):
    entered = asyncio.Event()
    cancelled = []

    async def hook(path, headers):
        entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(path)
            raise

    server = await start_async_websocket_server("127.0.0.1", 0, echo, backend=backend, process_request=hook)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(upgrade_request("/slow"))
    await asyncio.wait_for(entered.wait(), TIMEOUT)
    server.close()
    answer = await asyncio.wait_for(reader.read(), TIMEOUT)
    assert answer.startswith(b"HTTP/1.1 503 "), answer
    assert cancelled == ["/slow"]
    writer.close()
    await asyncio.wait_for(server.wait_closed(), TIMEOUT)


@pytest.mark.parametrize("answer", [None, (200, [], b"bye")])
async def test_process_request_closing_the_server_itself(backend, caplog, answer):
    """A hook that closes the server (an admin endpoint) gets its own answer out, or 503
    when it lets the upgrade go on; no traceback (regression audit)."""
    server = None

    async def hook(path, headers):
        server.close()
        await asyncio.sleep(0)
        return answer

    server = await start_async_websocket_server("127.0.0.1", 0, echo, backend=backend, process_request=hook)
    status, _, body = await http_exchange(server.port, upgrade_request("/shutdown"))
    assert (status, body) == ((200, b"bye") if answer else (503, body))
    await asyncio.wait_for(server.wait_closed(), TIMEOUT)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_cancelled_handler_closes_1001_and_stays_cancelled(backend):
    """Cancelling the handler's task (an application stopping its tasks, asyncio.run ending)
    closes with 1001 and the task ends cancelled, as asyncio expects (audit: it returned)."""
    started = asyncio.Event()

    async def handler(websocket, path):
        started.set()
        await asyncio.sleep(30)

    async with serving(handler, backend=backend) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            await asyncio.wait_for(started.wait(), TIMEOUT)
            (task,) = server.tasks
            task.cancel("stopping")
            assert await ws.recv(timeout=TIMEOUT) is None
            assert ws.close_code == 1001
            with pytest.raises(asyncio.CancelledError) as info:
                await asyncio.wait_for(task, TIMEOUT)
            assert task.cancelled()
            if sys.version_info >= (3, 11):  # (3.10 does not carry the message to the awaiter)
                assert info.value.args == ("stopping",)  # the caller's message kept


async def test_server_close_is_bounded_by_close_timeout(backend):
    """A client that never answers the 1001 close frame is dropped after close_timeout."""
    async with serving(echo, backend=backend, close_timeout=0.2) as server:
        peer = await raw_client(server.port)
        loop = asyncio.get_running_loop()
        start = loop.time()
        server.close()
        await asyncio.wait_for(server.wait_closed(), 3)
        assert loop.time() - start < 2
        assert await peer.read_close() == (1001, "")
        assert await peer.at_eof()
        peer.close()


async def test_cancelling_wait_closed_leaves_the_handlers_alone(backend):
    """wait_for(server.wait_closed(), t) gives up after t, even while a silent peer holds the
    closing handshake open, and cancels neither the handlers nor the closing (audit)."""
    cancelled = []

    async def handler(ws, path):
        try:
            await ws.wait_closed()
        except asyncio.CancelledError:
            cancelled.append(path)
            raise

    async with serving(handler, backend=backend, close_timeout=1.0) as server:
        peer = await raw_client(server.port)
        loop = asyncio.get_running_loop()
        server.close()
        start = loop.time()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 0.1)
        assert loop.time() - start < 0.5
        await asyncio.wait_for(server.wait_closed(), 5)  # close_timeout drops the silent peer
        assert cancelled == []
        assert await peer.read_close() == (1001, "")
        peer.close()


async def test_messages_before_close_are_not_lost(backend):
    async def handler(websocket, path):
        for i in range(5):
            await websocket.send(f"m{i}")
        await websocket.close(4005, "done")

    async with serving(handler, backend=backend) as server:
        ws = await async_connect_websocket("127.0.0.1", server.port, backend=backend)
        await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
        assert [await ws.recv() for _ in range(5)] == [f"m{i}" for i in range(5)]
        assert await ws.recv() is None
        assert (ws.close_code, ws.close_reason) == (4005, "done")


async def test_async_with_server_and_serve_forever(backend):
    async with await start_async_websocket_server("127.0.0.1", 0, echo, backend=backend) as server:
        forever = asyncio.create_task(server.serve_forever())
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            await ws.send("x")
            assert await ws.recv(timeout=TIMEOUT) == "x"
            forever.cancel()
            with pytest.raises(asyncio.CancelledError):
                await forever
            assert await ws.recv(timeout=TIMEOUT) is None
            assert ws.close_code == 1001


async def test_serve_forever_returns_once_the_server_is_closed(backend):
    # The usual shutdown: a signal handler calls close() while main awaits serve_forever().
    server = await start_async_websocket_server("127.0.0.1", 0, echo, backend=backend)
    forever = asyncio.create_task(server.serve_forever())
    also = asyncio.create_task(server.serve_forever())
    async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
        await ws.send("x")
        assert await ws.recv(timeout=TIMEOUT) == "x"
        also.cancel()  # one caller's cancellation ends its own wait and closes the server
        with pytest.raises(asyncio.CancelledError):
            await also
        assert await asyncio.wait_for(forever, TIMEOUT) is None
        assert await ws.recv(timeout=TIMEOUT) is None
        assert ws.close_code == 1001
    # Called on a closed server: returns at once.
    await asyncio.wait_for(server.serve_forever(), TIMEOUT)
    server2 = await start_async_websocket_server("127.0.0.1", 0, echo, backend=backend)
    forever = asyncio.create_task(server2.serve_forever())
    await asyncio.sleep(0)
    server2.close()
    assert await asyncio.wait_for(forever, TIMEOUT) is None


async def test_one_bad_connection_does_not_disturb_others(backend):
    async with serving(echo, backend=backend, max_size=100) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as good:
            async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as bad:
                await bad.send(b"x" * 1000)
                assert await bad.recv(timeout=TIMEOUT) is None
                assert bad.close_code == 1009
            peer = await raw_client(server.port)
            peer.writer.write(b"\xff\xff garbage")  # reserved opcode: 1002
            assert (await peer.read_close())[0] == 1002
            peer.close()
            await good.send("still here")
            assert await good.recv(timeout=TIMEOUT) == "still here"


async def _frames_until_close(peer: RawPeer) -> list[tuple[int, Any]]:
    """Every frame the server sends up to its close frame: (opcode, payload), the close
    frame as (8, close code)."""
    got: list[tuple[int, Any]] = []
    async with asyncio.timeout(TIMEOUT):
        while True:
            opcode, payload = await peer.read_frame()
            if opcode == 8:
                got.append((8, struct.unpack("!H", payload[:2])[0]))
                return got
            got.append((opcode, payload))


def _masked(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    return _pure.build_frame(opcode, payload, fin, False, os.urandom(4))


async def callback_echo(websocket: Any, path: str) -> None:
    websocket.on_message = websocket.send_nowait
    await websocket.wait_closed()


@pytest.mark.parametrize("handler", [echo, callback_echo], ids=["recv", "on_message"])
@pytest.mark.parametrize(
    "burst, expected",
    [
        # A message, then a reserved opcode, in one read (Autobahn 4.1.3).
        (_masked(1, b"hello") + _masked(5, b"bad") + _masked(9, b""), [(1, b"hello"), (8, 1002)]),
        # A fragmented message, then a continuation with nothing to continue (5.15).
        (
            _masked(1, b"frag", fin=False) + _masked(0, b"ment") + _masked(0, b"stray", fin=False),
            [(1, b"fragment"), (8, 1002)],
        ),
        # A ping, two messages, then a reserved bit (3.2): the pong and both echoes first.
        (
            _masked(9, b"p") + _masked(2, b"\x00\x01") + _masked(1, b"two") + b"\xc1\x80" + os.urandom(4),
            [(10, b"p"), (2, b"\x00\x01"), (1, b"two"), (8, 1002)],
        ),
        # A message, then text that is not UTF-8.
        (_masked(1, b"ok") + _masked(1, b"\xff"), [(1, b"ok"), (8, 1007)]),
    ],
    ids=["opcode", "continuation", "rsv", "utf8"],
)
async def test_messages_before_a_protocol_error_in_the_same_read_are_answered_first(backend, handler, burst, expected):
    """What the peer sent before a bad frame is handled before the connection fails: a
    handler waiting in recv() (or an on_message callback) answers it, and the answers go
    out before the close frame, in the order the peer sent things (RFC 6455 §7.1.7 fails
    the connection at the bad frame)."""
    async with serving(handler, backend=backend, compression=None) as server:
        peer = await raw_client(server.port)
        # A first round trip: the handler is waiting for the next message when the burst comes.
        peer.writer.write(_masked(1, b"warm"))
        assert await peer.read_frame() == (1, b"warm")
        peer.writer.write(burst)  # one write: one read on loopback
        assert await _frames_until_close(peer) == expected
        assert await peer.at_eof()
        peer.close()


async def test_compressed_messages_before_a_protocol_error_are_answered_first(backend):
    """The same with permessage-deflate negotiated: two compressed messages (the protocol's
    bounded inflating path), then a reserved opcode; both echoes go out before the close."""
    import zlib

    def deflated(data: bytes) -> bytes:
        c = zlib.compressobj(wbits=-15)
        return (c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]

    def masked_rsv1(opcode: int, payload: bytes) -> bytes:
        return _pure.build_frame(opcode, payload, True, True, os.urandom(4))

    async with serving(echo, backend=backend) as server:
        peer = await raw_client(server.port, headers={"Sec-WebSocket-Extensions": "permessage-deflate"})
        burst = masked_rsv1(1, deflated(b"one " * 50)) + masked_rsv1(2, deflated(b"two" * 100)) + _masked(3, b"")
        peer.writer.write(burst)
        got = []
        inflate = zlib.decompressobj(wbits=-15)  # (one for all: the server may keep its context)
        async with asyncio.timeout(TIMEOUT):
            while True:
                b0, b1 = await peer.reader.readexactly(2)
                length = b1 & 0x7F
                if length == 126:
                    (length,) = struct.unpack("!H", await peer.reader.readexactly(2))
                payload = await peer.reader.readexactly(length)
                if b0 & 0x0F == 8:
                    got.append((8, struct.unpack("!H", payload[:2])[0]))
                    break
                if b0 & 0x40:
                    payload = inflate.decompress(payload + b"\x00\x00\xff\xff")
                got.append((b0 & 0x0F, payload))
        assert got == [(1, b"one " * 50), (2, b"two" * 100), (8, 1002)]
        peer.close()


# --------------------------------------------------------------------------- opening handshake (RFC 6455 §4.2)


async def test_open_timeout_drops_silent_connection(backend):
    async with serving(echo, backend=backend, open_timeout=0.1) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
        assert loop.time() - start < 2
        writer.close()


async def test_open_timeout_drops_slow_handshake(backend):
    async with serving(echo, backend=backend, open_timeout=0.1) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finished
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
        writer.close()


@pytest.mark.parametrize(
    "request_bytes, status, header",
    [
        (upgrade_request(headers={"Sec-WebSocket-Version": "12"}), 426, ("sec-websocket-version", "13")),
        (upgrade_request(method="POST"), 405, ("allow", "GET")),
        (upgrade_request(headers={"X-Big": "a" * 9 * 1024}), 431, None),
        (upgrade_request(headers={f"X-{i}": "1" for i in range(200)}), 431, None),
        (upgrade_request(headers={"Sec-WebSocket-Key": None}), 400, None),
        (upgrade_request(headers={"Sec-WebSocket-Key": "short"}), 400, None),
        (upgrade_request(headers={"Connection": "keep-alive"}), 400, None),
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 426, ("upgrade", "websocket")),
        (b"NOT HTTP AT ALL\r\n\r\n", 400, None),
    ],
    ids=["version-12", "post", "9KiB-header", "200-headers", "no-key", "bad-key", "no-upgrade-token", "plain-get", "garbage"],
)
async def test_http_answers(backend, request_bytes, status, header):
    async with serving(echo, backend=backend) as server:
        got, headers, body = await http_exchange(server.port, request_bytes)
        assert got == status
        if header is not None:
            assert headers[header[0]] == header[1]
        # A 426 names the upgrade (RFC 9110 §15.5.22), and Connection lists it (§7.8).
        assert headers["connection"] == ("Upgrade, close" if status == 426 else "close")
        if status == 426:
            assert (headers["upgrade"], headers["sec-websocket-version"]) == ("websocket", "13")
        assert int(headers["content-length"]) == len(body)


@pytest.mark.parametrize(
    "request_bytes",
    [
        upgrade_request(headers={"X-Big": "a" * 200_000}),
        upgrade_request(method="POST", headers={"Content-Length": "300000"}) + bytes(300_000),
    ],
    ids=["oversized-head", "post-with-body"],
)
async def test_refusal_with_unread_bytes_ends_without_a_reset(backend, request_bytes):
    """The server half-closes after an HTTP refusal and drops what the client still sends until
    the client closes: closing with unread bytes would reset the connection (and a reset can
    destroy the answer before the client reads it)."""
    async with serving(echo, backend=backend) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request_bytes)
        data = await asyncio.wait_for(reader.read(), TIMEOUT)  # EOF from the half-close, no reset
        assert data.startswith((b"HTTP/1.1 431 ", b"HTTP/1.1 405 "))
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        await wait_until(lambda: not server.connections)


async def test_failing_drains_so_the_peer_gets_the_close_frame(backend):
    """A peer still sending the rest of an oversized message gets our 1009 close frame and then
    our EOF (we half-close and read until its EOF: closing at once with its bytes unread would
    reset the connection, and the reset can destroy the close frame before it is read)."""
    async with serving(echo, backend=backend, max_size=1000) as server:
        for _ in range(3):
            peer = await raw_client(server.port)
            peer.send_frame(2, bytes(300_000))  # the server fails at the header, the rest follows
            await asyncio.wait_for(peer.writer.drain(), TIMEOUT)
            assert (await peer.read_close())[0] == 1009
            assert await peer.at_eof()  # the half-close: a clean EOF, not ECONNRESET
            peer.writer.write_eof()
            peer.close()
        await wait_until(lambda: not server.connections)


async def test_origin_check(backend):
    async with serving(echo, backend=backend, origins=["https://good.example"]) as server:
        status, _, _ = await http_exchange(server.port, upgrade_request(headers={"Origin": "https://evil.example"}))
        assert status == 403
        status, _, _ = await http_exchange(server.port, upgrade_request())
        assert status == 403  # no Origin, and None is not in the list
        with pytest.raises(InvalidStatus) as info:
            await async_connect_websocket("127.0.0.1", server.port, backend=backend, origin="https://evil.example")
        assert info.value.status == 403
        async with async_connect_websocket(
            "127.0.0.1", server.port, backend=backend, origin="https://good.example"
        ) as ws:
            await ws.send("ok")
            assert await ws.recv(timeout=TIMEOUT) == "ok"


@pytest.mark.parametrize("use_async", [False, True], ids=["sync-hook", "async-hook"])
async def test_process_request_health_check(backend, use_async):
    calls = []

    def decide(path, headers):
        calls.append((path, headers.get("X-Token")))
        if path == "/health":
            return 200, [("X-Health", "yes")], b"OK"
        if headers.get("X-Token") != "secret":
            return 401, {}, "denied"
        return None

    if use_async:

        async def hook(path, headers):
            await asyncio.sleep(0)
            return decide(path, headers)

    else:
        hook = decide

    async with serving(echo, backend=backend, process_request=hook) as server:
        status, headers, body = await http_exchange(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (status, headers["x-health"], body) == (200, "yes", b"OK")
        with pytest.raises(InvalidStatus) as info:
            await async_connect_websocket("127.0.0.1", server.port, backend=backend)
        assert info.value.status == 401 and info.value.body == b"denied"
        async with async_connect_websocket(
            "127.0.0.1", server.port, path="/ws?q", backend=backend, headers={"X-Token": "secret"}
        ) as ws:
            await ws.send("through")
            assert await ws.recv(timeout=TIMEOUT) == "through"
        assert calls[-1] == ("/ws?q", "secret")


@pytest.mark.parametrize("with_hook", [False, True], ids=["no-hook", "async-hook"])
async def test_pipelined_frames_after_request(backend, with_hook):
    """Frames sent right behind the request (in the same packet) are not lost, also across
    the pause for an async process_request hook."""

    async def hook(path, headers):
        await asyncio.sleep(0.02)

    hook_option = {"process_request": hook} if with_hook else {}
    async with serving(echo, backend=backend, compression=None, **hook_option) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        from kn_sock._pure import build_frame

        writer.write(upgrade_request() + build_frame(1, b"early", True, False, b"abcd"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 101")
        assert await asyncio.wait_for(reader.readexactly(7), TIMEOUT) == b"\x81\x05early"
        writer.close()


async def test_process_request_failure_is_500(backend, caplog):
    def hook(path, headers):
        raise RuntimeError("hook broke")

    async with serving(echo, backend=backend, process_request=hook) as server:
        status, _, _ = await http_exchange(server.port, upgrade_request())
        assert status == 500


async def test_server_repr(backend):
    server = await start_async_websocket_server("127.0.0.1", 0, echo, backend=backend)
    assert repr(server) == f"<AsyncWebSocketServer ('127.0.0.1', {server.port})>"
    server.close()
    assert repr(server) == "<AsyncWebSocketServer closed>"
    await server.wait_closed()


async def test_handler_that_is_not_async_is_named_in_the_log(backend, caplog):
    """A plain function passes the call (it may return an awaitable); one that returns None
    fails its connection 1011 with a line that says what is wrong."""

    def handler(ws, path):
        return None

    async with serving(handler, backend=backend) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            assert await ws.recv(TIMEOUT) is None
            assert ws.close_code == 1011
    assert "the handler must be an async function (async def): it returned NoneType" in caplog.text


async def test_process_request_raising_cancelled_error_is_500(backend, caplog):
    """A hook that awaits a future someone else cancelled raises CancelledError: the hook's
    failure, 500 and logged at once, as any exception (audit: nothing until open_timeout)."""

    async def hook(path, headers):
        fut = asyncio.get_running_loop().create_future()
        fut.cancel()
        await fut

    async with serving(echo, backend=backend, process_request=hook, open_timeout=30) as server:
        status, _, _ = await asyncio.wait_for(http_exchange(server.port, upgrade_request()), 5)
        assert status == 500
    assert "process_request failed" in caplog.text


async def test_process_request_cancelled_at_open_timeout_is_no_failure(backend, caplog):
    """open_timeout ending the handshake cancels the hook: that cancellation is ours, not the
    hook's failure (no 500, no "process_request failed")."""
    entered = asyncio.Event()
    cancelled = asyncio.Event()

    async def hook(path, headers):
        entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with serving(echo, backend=backend, process_request=hook, open_timeout=0.3) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(upgrade_request())
        await asyncio.wait_for(entered.wait(), TIMEOUT)
        await asyncio.wait_for(cancelled.wait(), TIMEOUT)
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""  # dropped, unanswered
        writer.close()
    assert "process_request failed" not in caplog.text


async def test_process_request_bad_answer_is_500_not_a_hang(backend):
    def hook(path, headers):
        return 101, [], b""  # cannot be sent as a plain HTTP answer

    async with serving(echo, backend=backend, process_request=hook) as server:
        status, _, _ = await http_exchange(server.port, upgrade_request())
        assert status == 500


@pytest.mark.parametrize(
    "server_protocols, client_protocols, chosen",
    [
        (["b", "a"], ["a", "b"], "b"),  # the server's preference order wins
        (["chat"], ["chat", "superchat"], "chat"),
        (["x"], ["y"], None),  # nothing in common: proceed without one
        (["x"], None, None),
        (None, ["y"], None),
    ],
)
async def test_subprotocol_negotiation(backend, server_protocols, client_protocols, chosen):
    async def handler(websocket, path):
        await websocket.send(str(websocket.subprotocol))

    async with serving(handler, backend=backend, subprotocols=server_protocols) as server:
        async with async_connect_websocket(
            "127.0.0.1", server.port, backend=backend, subprotocols=client_protocols
        ) as ws:
            assert ws.subprotocol == chosen
            assert await ws.recv(timeout=TIMEOUT) == str(chosen)


@pytest.mark.parametrize(
    "server_compression, client_compression, negotiated",
    [("deflate", "deflate", True), ("deflate", None, False), (None, "deflate", False)],
)
async def test_compression_negotiation(backend, server_compression, client_compression, negotiated):
    async def handler(websocket, path):
        await websocket.send(repr(websocket.extensions))
        await echo(websocket, path)

    async with serving(handler, backend=backend, compression=server_compression) as server:
        async with async_connect_websocket(
            "127.0.0.1", server.port, backend=backend, compression=client_compression
        ) as ws:
            expected = ["permessage-deflate"] if negotiated else []
            assert ws.extensions == expected
            assert await ws.recv(timeout=TIMEOUT) == repr(expected)
            await ws.send("z" * 10000)
            assert await ws.recv(timeout=TIMEOUT) == "z" * 10000


@pytest.mark.parametrize(
    "options, error",
    [
        ({"no_such_option": 1}, TypeError),
        ({"subprotocols": ["bad token"]}, ValueError),
        ({"headers": {"Sec-WebSocket-Accept": "x"}}, ValueError),
        ({"max_queue": 0}, ValueError),
    ],
)
async def test_server_rejects_invalid_options_at_start(options, error):
    with pytest.raises(error):
        await start_async_websocket_server("127.0.0.1", 0, echo, **options)


@pytest.mark.parametrize("port", [99999, 65536, -1, "99999"])
async def test_server_rejects_a_port_out_of_range(port):
    with pytest.raises(ValueError, match="out of range"):  # not OverflowError, nor modulo 65536
        await start_async_websocket_server("127.0.0.1", port, echo)


@pytest.mark.parametrize("port", [True, 8765.0])
async def test_server_rejects_a_port_that_is_not_an_int(port):
    with pytest.raises(TypeError, match="port"):
        await start_async_websocket_server("127.0.0.1", port, echo)


# --------------------------------------------------------------------------- interop: websockets client


async def test_interop_websockets_client(backend):
    closed = asyncio.get_running_loop().create_future()

    async def handler(websocket, path):
        async for message in websocket:
            if message == "close-me":
                await websocket.close(4002, "asked")
                break
            await websocket.send(message)
        closed.set_result((websocket.close_code, websocket.close_reason))

    async with serving(handler, backend=backend, subprotocols=["v2", "v1"]) as server:
        uri = f"ws://127.0.0.1:{server.port}/chat?x=1"
        async with ws_connect(uri, subprotocols=["v1", "v2"]) as client:
            assert client.subprotocol == "v2"
            assert "permessage-deflate" in client.response.headers["Sec-WebSocket-Extensions"]
            for message in ("text é", b"\x00binary", "", b"", "big" * 100_000, bytes(200_000)):
                await client.send(message)
                assert await asyncio.wait_for(client.recv(), TIMEOUT) == message
            await client.send(["frag", "mented"])
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == "fragmented"
            await client.send([b"a", b"b"])
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == b"ab"
            await client.ping()
            await client.close(4001, "client bye")
        assert await asyncio.wait_for(closed, TIMEOUT) == (4001, "client bye")

        closed = asyncio.get_running_loop().create_future()
        async with ws_connect(uri, compression=None) as client:
            assert "Sec-WebSocket-Extensions" not in client.response.headers
            await client.send("close-me")
            with pytest.raises(websockets.ConnectionClosed) as info:
                await asyncio.wait_for(client.recv(), TIMEOUT)
            assert (info.value.rcvd.code, info.value.rcvd.reason) == (4002, "asked")


async def test_interop_websockets_client_gets_an_incompressible_message_of_its_max_size(backend):
    """websockets applies max_size to the compressed frame: an incompressible message of
    exactly its max_size, compressed, came out longer and was refused with 1009 (audit 90).
    It goes uncompressed now; compressed messages after it still inflate right."""
    blob = os.urandom(2**20)

    async def handler(websocket, path):
        await websocket.send(blob)
        await websocket.send("compressible " * 1000)
        await websocket.send(blob[:40_000] * 2)  # compressible, by a reference 40 kB back (beyond the window)
        await websocket.recv()

    async with serving(handler, backend=backend) as server:
        async with ws_connect(f"ws://127.0.0.1:{server.port}/", max_size=2**20) as client:
            assert "permessage-deflate" in client.response.headers["Sec-WebSocket-Extensions"]
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == blob
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == "compressible " * 1000
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == blob[:40_000] * 2
            await client.send("done")


async def test_interop_websockets_client_handler_outcomes(backend):
    async def handler(websocket, path):
        if path == "/raise":
            raise ValueError("x")

    async with serving(handler, backend=backend) as server:
        for path, code in (("/ok", 1000), ("/raise", 1011)):
            async with ws_connect(f"ws://127.0.0.1:{server.port}{path}") as client:
                with pytest.raises(websockets.ConnectionClosed) as info:
                    await asyncio.wait_for(client.recv(), TIMEOUT)
                assert info.value.rcvd.code == code


# --------------------------------------------------------------------------- TLS, uvloop


def _tls_request(client_ctx: Any, port: int, request: bytes) -> Any:
    """A TLS connection to the server on ``port`` that sends ``request`` (blocking: in a thread)."""
    sock = client_ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT),
                                  server_hostname="127.0.0.1")
    sock.sendall(request)
    return sock


def _slow_tls_then_silent(client_ctx: Any, port: int, tls_after: float) -> tuple[float, float]:
    """TCP now, the TLS handshake ``tls_after`` seconds later, then nothing: (seconds from the
    TCP connect to TLS up, to the server's drop)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    started = time.monotonic()
    time.sleep(tls_after)
    sock = client_ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    up = time.monotonic() - started
    try:
        sock.recv(4096)  # b"" or a reset: dropped
    except OSError:
        pass
    ended = time.monotonic() - started
    sock.close()
    return up, ended


async def test_wss_open_timeout_counts_the_tls_handshake_too(backend, tmp_path):
    """open_timeout bounds the whole opening handshake, TLS included: a client whose TLS
    handshake took most of it and that then sends nothing is dropped at open_timeout, not
    open_timeout after TLS came up (audit: 1.95x)."""
    server_ctx, client_ctx = make_tls_contexts(tmp_path)
    async with serving(echo, backend=backend, ssl=server_ctx, open_timeout=1.0) as server:
        up, ended = await asyncio.to_thread(_slow_tls_then_silent, client_ctx, server.port, 0.6)
        assert 0.6 <= up < 1.0
        assert ended < 1.4, ended


async def test_wss_server_close_with_a_client_mid_handshake_is_bounded(backend, tmp_path):
    """TLS done, HTTP request incomplete, and the client never answers our close_notify: the
    503 goes out and the connection is dropped soon, not after asyncio's 30 s TLS shutdown
    timeout (regression audit)."""
    server_ctx, client_ctx = make_tls_contexts(tmp_path)
    server = await start_async_websocket_server("127.0.0.1", 0, echo, backend=backend, ssl=server_ctx)

    sock = await asyncio.to_thread(_tls_request, client_ctx, server.port, b"GET / HTTP/1.1\r\nHost: x\r\n")
    await wait_until(lambda: len(server.connections) == 1)
    server.close()
    await asyncio.wait_for(server.wait_closed(), 3)
    answer = await asyncio.to_thread(sock.recv, 4096)
    assert answer.startswith(b"HTTP/1.1 503 "), answer
    sock.close()


async def test_wss_server_close_ends_a_lingering_http_answer(backend, tmp_path):
    """A TLS client got an HTTP answer (426 for a plain GET) and neither reads nor closes:
    server close() does not wait for its close_notify (asyncio's 30 s; regression audit)."""
    server_ctx, client_ctx = make_tls_contexts(tmp_path)
    server = await start_async_websocket_server("127.0.0.1", 0, echo, backend=backend, ssl=server_ctx)

    sock = await asyncio.to_thread(_tls_request, client_ctx, server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await wait_until(lambda: any(ws._handshake.hs is None for ws in server.connections))
    server.close()
    await asyncio.wait_for(server.wait_closed(), 2)
    sock.close()


async def test_wss_answered_connection_is_released_after_the_linger(backend, tmp_path):
    """A TLS client got its HTTP answer and neither reads on nor closes: let go after the
    linger, not after asyncio's 30 s close_notify wait (for ever on 3.10; regression audit)."""
    server_ctx, client_ctx = make_tls_contexts(tmp_path)
    async with serving(echo, backend=backend, ssl=server_ctx) as server:

        sock = await asyncio.to_thread(_tls_request, client_ctx, server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await wait_until(lambda: len(server.connections) == 1)
        await wait_until(lambda: not server.connections, 3)
        sock.close()


async def test_wss_close_just_after_the_tls_handshake_answers_503_and_ends(backend, tmp_path, monkeypatch):
    """close() after TLS came up (connection_made) but before the task that ran the TLS
    handshake resumed: the client gets its 503 and wait_closed() returns; that task was
    cancelled, asyncio closed the TLS transport a second time, which detached it from its TLS
    layer, and the connection stayed until asyncio's 30 s shutdown timeout (audit 56)."""
    import kn_sock.asyncio.server as server_module

    server_ctx, client_ctx = make_tls_contexts(tmp_path)
    server = await start_async_websocket_server("127.0.0.1", 0, echo, backend=backend, ssl=server_ctx)
    real = server_module._ServerOpening.connection_made

    tls_tasks = []

    def then_close(self, ws):
        tls_tasks.extend(server._tls_pending)  # (one connection: its TLS task)
        real(self, ws)
        server.close()  # the TLS task's waiter is done, the task has not resumed yet

    monkeypatch.setattr(server_module._ServerOpening, "connection_made", then_close)
    sock = await asyncio.to_thread(_tls_request, client_ctx, server.port, upgrade_request())
    await asyncio.wait_for(server.wait_closed(), TIMEOUT)
    assert tls_tasks and tls_tasks[0].done() and not tls_tasks[0].cancelled()
    answer = await asyncio.to_thread(sock.recv, 4096)
    assert answer.startswith(b"HTTP/1.1 503 "), answer
    sock.close()


async def test_wss_close_as_the_tls_handshake_completes_ends_promptly(backend, tmp_path):
    """close() runs in the loop iteration that then completes a client's TLS handshake (its
    last flight arrived while the loop was busy): wait_closed() returns promptly. close()
    cancelled the handshake's task; the handshake completed (503), then the cancellation made
    asyncio close the TLS transport a second time, detaching it: 30 s (audit 58). The client
    runs TLS over memory BIOs to hold back its last flight."""
    server_ctx, client_ctx = make_tls_contexts(tmp_path)
    server = await start_async_websocket_server("127.0.0.1", 0, echo, backend=backend, ssl=server_ctx)
    loop = asyncio.get_running_loop()
    ready, go, done = threading.Event(), threading.Event(), threading.Event()

    def client() -> None:
        raw, _, _, outgoing = bio_tls_client(server.port, client_ctx, "127.0.0.1", TIMEOUT)
        last_flight = outgoing.read()
        ready.set()
        go.wait(TIMEOUT)
        raw.sendall(last_flight)
        with contextlib.suppress(OSError):
            while raw.recv(65536):
                pass
        raw.close()
        done.set()

    threading.Thread(target=client, daemon=True).start()
    assert await asyncio.to_thread(ready.wait, TIMEOUT)
    await wait_until(lambda: server._tls_pending)

    def busy_then_close() -> None:
        go.set()
        time.sleep(0.2)  # the last flight arrives while the loop is busy
        loop.call_soon(server.close)  # next iteration: close() first, then that read

    loop.call_soon(busy_then_close)
    await asyncio.sleep(0.01)
    await asyncio.wait_for(server.wait_closed(), TIMEOUT)
    assert await asyncio.to_thread(done.wait, TIMEOUT)


async def test_wss_close_before_a_tls_handshake_starts_closes_its_socket(backend, tmp_path):
    """A connection reset before its TLS handshake task ran, then close(): the task, cancelled
    before its first step, never ran its body; its socket is closed all the same (it was
    left to the garbage collector: ResourceWarning; regression audit 59)."""
    server_ctx, _ = make_tls_contexts(tmp_path)
    server = await start_async_websocket_server("127.0.0.1", 0, echo, backend=backend, ssl=server_ctx)
    loop = asyncio.get_running_loop()
    socks: list = []
    default = loop.get_task_factory()

    def close_now() -> None:
        socks.extend(server._tls_pending.values())
        server.close()

    def factory(loop, coro, **kwargs):
        if getattr(coro, "__name__", "") == "_start_tls":
            loop.call_soon(close_now)  # before the task's first step
        return default(loop, coro, **kwargs) if default else asyncio.Task(coro, loop=loop, **kwargs)

    def client_resets() -> None:  # connect, then RST, while the loop is busy
        client = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        time.sleep(0.05)

    loop.set_task_factory(factory)
    try:
        loop.call_soon(client_resets)
        await asyncio.wait_for(server.wait_closed(), TIMEOUT)
        await wait_until(lambda: socks and all(sock.fileno() == -1 for sock in socks))
    finally:
        loop.set_task_factory(default)


async def test_server_close_with_an_unread_large_answer_is_bounded(backend):
    """process_request answered 8 MiB that the client never reads: server close() aborts it
    (close() would wait for the unsent bytes for ever; audit)."""
    def hook(path, headers):
        return 200, [], b"x" * (8 << 20)

    server = await start_async_websocket_server("127.0.0.1", 0, echo, backend=backend, process_request=hook)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(upgrade_request())
    await wait_until(lambda: all(ws._handshake.hs is None for ws in server.connections) and server.connections)
    server.close()
    await asyncio.wait_for(server.wait_closed(), 2)
    writer.close()


async def test_wss_with_host_port_and_ssl(backend, tmp_path):
    """The ``(host, port)`` form with ``ssl=``: wss (the guide's ``ssl=True`` way)."""
    server_ctx, client_ctx = make_tls_contexts(tmp_path)
    async with serving(echo, backend=backend, ssl=server_ctx) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend, ssl=client_ctx) as ws:
            await ws.send("secure")
            assert await ws.recv(timeout=TIMEOUT) == "secure"


async def test_empty_user_agent_and_server_header_are_sent_empty(backend):
    """``""`` is the value given, not "use the default" (websockets sends it too; audit 29U)."""
    seen = []

    async def handler(websocket, path):
        seen.append(websocket.request_headers.get_all("User-Agent"))

    async with serving(handler, backend=backend, server_header="") as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend, user_agent="") as ws:
            assert ws.response_headers.get_all("Server") == [""]
            assert await ws.recv(timeout=TIMEOUT) is None
    assert seen == [[""]]


async def test_wss_echo(backend, tmp_path):
    server_ctx, client_ctx = make_tls_contexts(tmp_path)
    async with serving(echo, backend=backend, ssl=server_ctx) as server:
        async with async_connect_websocket(f"wss://127.0.0.1:{server.port}/s", backend=backend, ssl=client_ctx) as ws:
            await ws.send("secure")
            assert await ws.recv(timeout=TIMEOUT) == "secure"
            assert not ws._own_reader  # TLS: the transport reads (and decrypts)
            big = bytes(300_000)
            await ws.send(big)
            assert await ws.recv(timeout=TIMEOUT) == big
        assert ws.close_code == 1000
        # An untrusted certificate fails the TLS handshake on the client.
        with pytest.raises(OSError):
            await async_connect_websocket(f"wss://127.0.0.1:{server.port}/", backend=backend, open_timeout=TIMEOUT)


async def test_wss_request_and_first_frame_in_tls_records_of_their_own(backend, tmp_path):
    """asyncio's TLS transport fills the read buffer record by record through slices of it: a
    request in two records and the first frame in a third must all arrive intact (the
    handshake buffer was a bytearray, whose slices are copies: the later records were lost)."""
    server_ctx, client_ctx = make_tls_contexts(tmp_path)
    async with serving(echo, backend=backend, ssl=server_ctx) as server:
        for _ in range(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=client_ctx)
            request = upgrade_request("/tls")
            writer.write(request[:40])  # each write: a TLS record of its own
            writer.write(request[40:])
            writer.write(_pure.build_frame(1, b"first", True, False, b"\x01\x02\x03\x04"))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            assert head.startswith(b"HTTP/1.1 101")
            peer = RawPeer(reader, writer, mask=True)
            assert await asyncio.wait_for(peer.read_frame(), TIMEOUT) == (1, b"first")
            writer.transport.abort()


async def test_wss_open_timeout_covers_tls_handshake(backend, tmp_path, caplog):
    server_ctx, _ = make_tls_contexts(tmp_path)
    caplog.set_level(logging.INFO, logger="kn_sock")
    async with serving(echo, backend=backend, ssl=server_ctx, open_timeout=0.2) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await asyncio.wait_for(reader.read(), 3) == b""
        writer.close()
        # Logged (SPEC "Bad input"): asyncio's own TLS server drops it without a word.
        await wait_until(lambda: any("TLS handshake with" in r.getMessage() for r in caplog.records))


async def test_wss_failed_tls_handshake_is_logged_and_neighbours_go_on(backend, tmp_path, caplog):
    server_ctx, client_ctx = make_tls_contexts(tmp_path)
    caplog.set_level(logging.INFO, logger="kn_sock")
    async with serving(echo, backend=backend, ssl=server_ctx) as server:
        async with async_connect_websocket(f"wss://127.0.0.1:{server.port}/", backend=backend, ssl=client_ctx) as ws:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(upgrade_request("/plain-http-to-a-tls-port"))
            assert await asyncio.wait_for(reader.read(), 3) == b""
            writer.close()
            await wait_until(lambda: any("TLS handshake with" in r.getMessage() and "failed" in r.getMessage()
                                         for r in caplog.records))
            # A client that connects and closes at once: the reason is never empty.
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.close()
            await wait_until(lambda: sum("TLS handshake with" in r.getMessage() for r in caplog.records) >= 2)
            assert all(not r.getMessage().endswith(": ") for r in caplog.records)
            await ws.send("still here")
            assert await ws.recv(timeout=TIMEOUT) == "still here"
            assert len(server.connections) == 1
            # No task kept per TLS connection (audit: every one stayed in server.tasks).
            await wait_until(lambda: not server._tls_pending and all(not t.done() for t in server.tasks))


async def test_echo_under_uvloop(backend, tmp_path):
    """The whole exchange, plain and over TLS, on a uvloop event loop (run in a thread)."""
    uvloop = pytest.importorskip("uvloop")
    server_ctx, client_ctx = make_tls_contexts(tmp_path)

    async def main():
        assert "uvloop" in type(asyncio.get_running_loop()).__module__
        async with serving(echo, backend=backend) as server:
            async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
                assert not ws._own_reader  # uvloop's transports read in C already
                for message in ("text", b"bin", "x" * 200_000, bytes(1 << 20)):
                    await ws.send(message)
                    assert await ws.recv(timeout=TIMEOUT) == message
                await ws.send(["a", "b"])
                assert await ws.recv(timeout=TIMEOUT) == "ab"
                waiter = await ws.ping()
                assert await asyncio.wait_for(waiter, TIMEOUT) > 0
            assert ws.close_code == 1000
        async with serving(echo, backend=backend, ssl=server_ctx) as server:
            async with async_connect_websocket(f"wss://127.0.0.1:{server.port}/", backend=backend, ssl=client_ctx) as ws:
                for message in ("tls", bytes(300_000)):
                    await ws.send(message)
                    assert await ws.recv(timeout=TIMEOUT) == message

    def run() -> None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())

    await asyncio.wait_for(asyncio.to_thread(run), 15)



def _handshake_then_reset(port: int, client_ctx: Any, compression: bool, gone: threading.Event) -> None:
    """A client that completes the opening handshake, reads nothing more, and resets TCP."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn = client_ctx.wrap_socket(sock, server_hostname="127.0.0.1") if client_ctx is not None else sock
    extra = {"Sec-WebSocket-Extensions": "permessage-deflate"} if compression else None
    conn.sendall(upgrade_request("/", extra))
    head = b""
    while b"\r\n\r\n" not in head:
        head += conn.recv(1024)
    assert head.startswith(b"HTTP/1.1 101"), head
    time.sleep(0.3)
    conn.close()  # SO_LINGER 0: a reset (conn: the TLS socket owns the descriptor)
    gone.set()


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
@pytest.mark.parametrize("compression", [True, False], ids=["deflate", "plain"])
async def test_a_handler_sending_in_a_loop_learns_that_the_peer_is_gone(backend, tls, compression, tmp_path):
    """A handler that only sends (``while True: await ws.send(...)``) to a peer that resets:
    its send() raises ConnectionClosed soon after, and meanwhile the event loop keeps running
    other tasks (audit: sends "succeeded" for ever and the loop froze; asyncio reports a lost
    connection through the loop, which the sends never let run)."""
    loop = asyncio.get_running_loop()
    outcome = loop.create_future()
    ticks: list[float] = []

    async def handler(ws, path):
        t0 = loop.time()
        try:
            while loop.time() - t0 < 8:
                await ws.send("tick")
        except ConnectionClosed as exc:
            outcome.set_result(exc)
        else:
            outcome.set_result(None)

    async def ticker():
        while True:
            ticks.append(loop.time())
            await asyncio.sleep(0.02)

    server_ctx, client_ctx = make_tls_contexts(tmp_path) if tls else (None, None)
    async with serving(handler, backend=backend, ssl=server_ctx, compression="deflate" if compression else None) as server:
        tick = asyncio.create_task(ticker())
        gone = threading.Event()
        client = threading.Thread(target=_handshake_then_reset, args=(server.port, client_ctx, compression, gone))
        client.start()
        try:
            result = await asyncio.wait_for(outcome, 6)
        finally:
            tick.cancel()
            client.join(TIMEOUT)
        assert gone.is_set()
        assert isinstance(result, ConnectionClosed)
        assert max(b - a for a, b in zip(ticks, ticks[1:])) < 1.0


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix sockets")
async def test_unix_socket_served_and_its_file_removed_on_close(tmp_path):
    """unix=: served there; close() removes the socket file (audit 70: asyncio before 3.13
    left it), but not one another server has bound at that path since."""
    path = str(tmp_path / "ws.sock")
    async with await start_async_websocket_server(None, None, echo, unix=path) as server:
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(upgrade_request())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 101")
        writer.write(_pure.build_frame(1, b"over unix", True, False, b"abcd"))
        assert await asyncio.wait_for(reader.readexactly(11), TIMEOUT) == b"\x81\x09over unix"
        writer.close()
    assert not os.path.exists(path)

    server = await start_async_websocket_server(None, None, echo, unix=path)
    os.unlink(path)
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(path)
        server.close()
        await server.wait_closed()
        assert os.path.exists(path)


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix sockets")
async def test_a_live_servers_unix_socket_is_not_taken_over(tmp_path):
    """A second server on the path of one still listening raises EADDRINUSE (asyncio alone
    removes the file and binds: the first would run on, unreachable); a stale file is replaced."""
    path = str(tmp_path / "ws.sock")
    async with await start_async_websocket_server(None, None, echo, unix=path):
        with pytest.raises(OSError) as info:
            await start_async_websocket_server(None, None, echo, unix=path)
        assert info.value.errno == errno.EADDRINUSE
        reader, writer = await asyncio.open_unix_connection(path)  # the first one still serves it
        writer.write(upgrade_request())
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)).startswith(b"HTTP/1.1 101")
        writer.close()
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(path)  # a crashed run's file: nobody listens
    async with await start_async_websocket_server(None, None, echo, unix=path):
        reader, writer = await asyncio.open_unix_connection(path)
        writer.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract Unix socket names are Linux's")
async def test_abstract_unix_socket_name(tmp_path):
    """unix="\\0name" (no file): served, and closed cleanly (audit 75: ValueError after binding)."""
    name = f"\0kn_sock_test_{os.getpid()}"
    async with await start_async_websocket_server(None, None, echo, unix=name):
        sock = socket.socket(socket.AF_UNIX)  # (uvloop's create_unix_connection refuses such a name)
        sock.connect(name)
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        writer.write(upgrade_request())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 101")
        writer.close()


async def test_out_of_file_descriptors_is_logged_once_a_second(caplog):
    """CPython's accept loop logs EMFILE up to ``backlog`` times per readiness and retries as
    often: a server's process out of descriptors wrote thousands of tracebacks a second
    (audit 87). One a second gets through, with a count of the others."""
    import errno
    import logging

    async def handler(ws, path):
        pass

    loop = asyncio.get_running_loop()
    async with start_async_websocket_server("127.0.0.1", 0, handler):
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            for _ in range(2):
                for _ in range(50):
                    loop.call_exception_handler({
                        "message": "socket.accept() out of system resource",
                        "exception": OSError(errno.EMFILE, "Too many open files"),
                    })
                loop.call_exception_handler({"message": "something else"})
    records = [r for r in caplog.records if r.name == "asyncio"]
    accept = [r for r in records if r.getMessage().startswith("socket.accept() out of system resource")]
    assert len(accept) == 1, [r.getMessage()[:80] for r in records]
    assert sum(r.getMessage().startswith("something else") for r in records) == 2


@pytest.mark.parametrize("given", [None, 16])
async def test_listen_backlog_defaults_to_1024(backend, monkeypatch, given):
    """asyncio's own default (100) made a burst of 1,000 connections wait seconds for SYN
    retries; the blocking server listens with 1024 (audit 29X)."""
    loop = asyncio.get_running_loop()
    seen = []
    real = loop.create_server

    async def spy(*args, **kwargs):
        seen.append(kwargs.get("backlog"))
        return await real(*args, **kwargs)

    monkeypatch.setattr(loop, "create_server", spy)
    options = {} if given is None else {"backlog": given}
    async with serving(echo, backend=backend, **options):
        pass
    assert seen == [1024 if given is None else given]
