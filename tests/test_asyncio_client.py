"""async_connect_websocket (kn_sock/asyncio/client.py): both call forms, URIs, the opening
handshake from the client's side (RFC 6455 §4.1), failures, and interop with the
``websockets`` server."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import struct
import weakref

import pytest
import websockets
from websockets.asyncio.server import serve as ws_serve

from asyncio_support import TIMEOUT, echo, make_tls_contexts, raw_server, serving, wait_until
from sync_support import CREDENTIALS, credential_redirects, credentials_seen
from kn_sock._pure import build_frame
from kn_sock.reconnect import retryable_error
from kn_sock import (
    AsyncWebSocket,
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
    async_connect_websocket,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(20)]


# --------------------------------------------------------------------------- call forms


async def test_await_form(backend):
    async with serving(echo, backend=backend) as server:
        ws = await async_connect_websocket("127.0.0.1", server.port, backend=backend)
        assert isinstance(ws, AsyncWebSocket) and ws.side == "client" and ws.open
        await ws.send("a")
        assert await ws.recv(timeout=TIMEOUT) == "a"
        await ws.close()
        assert ws.closed and ws.close_code == 1000


async def test_async_with_form_closes_on_exit(backend):
    async with serving(echo, backend=backend) as server:
        async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            await ws.send(b"b")
            assert await ws.recv(timeout=TIMEOUT) == b"b"
        assert ws.closed and ws.transport is None and ws.close_code == 1000
        # Also when the block raises: with 1011, as websockets (the echo server answers it).
        with pytest.raises(KeyError):
            async with async_connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
                raise KeyError
        assert ws.closed and ws.close_code == 1011


async def test_connection_object_is_its_own_context_manager(backend):
    async with serving(echo, backend=backend) as server:
        ws = await async_connect_websocket("127.0.0.1", server.port, backend=backend)
        async with ws:
            await ws.send("c")
            assert await ws.recv(timeout=TIMEOUT) == "c"
        assert ws.closed


@pytest.mark.parametrize(
    "make_args, expected_path",
    [
        (lambda port: (f"ws://127.0.0.1:{port}",), "/"),
        (lambda port: (f"ws://127.0.0.1:{port}/chat?x=1",), "/chat?x=1"),
        (lambda port: ("127.0.0.1", port), "/"),
        (lambda port: ("127.0.0.1", port, "/p?q"), "/p?q"),
        (lambda port: (f"ws://localhost:{port}/h",), "/h"),
    ],
    ids=["uri", "uri-path-query", "host-port", "host-port-path", "localhost"],
)
async def test_uri_forms(backend, make_args, expected_path):
    async def handler(websocket, path):
        await websocket.send(path)

    async with serving(handler, backend=backend) as server:
        async with async_connect_websocket(*make_args(server.port), backend=backend) as ws:
            assert ws.path == expected_path
            assert await ws.recv(timeout=TIMEOUT) == expected_path


@pytest.mark.parametrize("uri", ["http://127.0.0.1:1/", "ws://", "ws://h:99999/", "ws://h/#frag"])
async def test_invalid_uri(uri):
    with pytest.raises(InvalidURI):
        await async_connect_websocket(uri)


async def test_unknown_option():
    with pytest.raises(TypeError):
        async_connect_websocket("ws://127.0.0.1:1/", bogus=True)


@pytest.mark.parametrize(
    "options, error",
    [
        ({"headers": {"Sec-WebSocket-Key": "x"}}, ValueError),
        ({"subprotocols": ["bad token"]}, ValueError),
        ({"compression": "brotli"}, ValueError),
    ],
)
async def test_invalid_options_raise_at_once(options, error):
    """Invalid options raise from the call / await, not as a hang until open_timeout."""
    async with raw_server(answer=False) as (port, _):
        with pytest.raises(error):
            await asyncio.wait_for(async_connect_websocket("127.0.0.1", port, open_timeout=TIMEOUT, **options), 1)


# --------------------------------------------------------------------------- failures


async def test_connection_refused():
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    with pytest.raises(OSError):
        await async_connect_websocket("127.0.0.1", port, open_timeout=TIMEOUT)


async def test_open_timeout_against_silent_server(backend):
    async with raw_server(answer=False) as (port, _):
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(TimeoutError):
            await async_connect_websocket("127.0.0.1", port, backend=backend, open_timeout=0.2)
        assert loop.time() - start < 2
        with pytest.raises(TimeoutError):
            async with async_connect_websocket("127.0.0.1", port, backend=backend, open_timeout=0.2):
                pass


async def test_open_timeout_says_what_timed_out(backend):
    """A server that never answers the upgrade: TimeoutError with the blocking client's message."""
    from kn_sock import connect_websocket

    async with raw_server(answer=False) as (port, _):
        with pytest.raises(TimeoutError, match="^timed out during the opening handshake$"):
            await async_connect_websocket("127.0.0.1", port, backend=backend, open_timeout=0.2)
        with pytest.raises(TimeoutError, match="^timed out during the opening handshake$"):
            await async_connect_websocket("127.0.0.1", port, backend=backend, open_timeout=0.2, reconnect=True)
        with pytest.raises(TimeoutError) as blocking:
            await asyncio.to_thread(connect_websocket, "127.0.0.1", port, backend=backend, open_timeout=0.2)
        assert str(blocking.value) == "timed out during the opening handshake"


async def test_connect_is_also_a_coroutine(backend):
    """asyncio.create_task (and TaskGroup.create_task, asyncio.run) take the connect object,
    as they take aiohttp's ws_connect(); cancelling such a task cancels the attempt."""
    async with serving(echo, backend=backend) as server:
        attempt = async_connect_websocket("127.0.0.1", server.port, backend=backend)
        assert asyncio.iscoroutine(attempt)
        ws = await asyncio.create_task(attempt)
        await ws.send("task")
        assert await ws.recv(timeout=TIMEOUT) == "task"
        await ws.close()
        task = asyncio.create_task(async_connect_websocket("127.0.0.1", server.port, backend=backend))
        await asyncio.sleep(0)  # started: connecting
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async_connect_websocket("127.0.0.1", server.port).close()  # never started: nothing to do
        await wait_until(lambda: not server.connections)


@pytest.mark.parametrize("reset", [False, True], ids=["eof", "reset"])
async def test_server_closes_during_handshake(reset):
    """No HTTP answer, only EOF or a reset: InvalidHandshake whose cause is the network's
    (EOFError, ConnectionResetError), which a reconnecting client retries."""
    async def on_connect(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        if reset:
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    async with server:
        with pytest.raises(InvalidHandshake, match="connection closed during the opening handshake") as info:
            await async_connect_websocket("127.0.0.1", server.sockets[0].getsockname()[1], open_timeout=TIMEOUT)
    assert isinstance(info.value.__cause__, ConnectionResetError if reset else EOFError)
    assert retryable_error(info.value)


@pytest.mark.parametrize(
    "answer, error, status",
    [
        (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope", InvalidStatus, 403),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", InvalidStatus, 200),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Accept: wrong\r\n\r\n", InvalidHandshake, None),
        (b"garbage\r\n\r\n", InvalidHandshake, None),
    ],
    ids=["403", "200", "bad-accept", "garbage"],
)
async def test_rejected_handshake(answer, error, status):
    async def on_connect(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    async with server:
        with pytest.raises(error) as info:
            await async_connect_websocket("127.0.0.1", server.sockets[0].getsockname()[1], open_timeout=TIMEOUT)
        if status is not None:
            assert info.value.status == status


async def test_status_of_a_kn_sock_rejection(backend):
    async with serving(echo, backend=backend, process_request=lambda p, h: (418, [], "tea")) as server:
        with pytest.raises(InvalidStatus) as info:
            await async_connect_websocket(f"ws://127.0.0.1:{server.port}/", backend=backend)
        assert info.value.status == 418 and info.value.body == b"tea"


async def test_server_first_frames_arrive_with_the_handshake(backend):
    """Frames the server sends in the same packet as its 101 answer are not lost."""
    first = build_frame(1, b"first") + build_frame(2, b"second")
    async with raw_server(first_frames=first) as (port, peers):
        ws = await async_connect_websocket("127.0.0.1", port, backend=backend, compression=None)
        peer = await asyncio.wait_for(peers.get(), TIMEOUT)
        assert await ws.recv(timeout=TIMEOUT) == "first"
        assert await ws.recv(timeout=TIMEOUT) == b"second"
        peer.close()
        assert await ws.recv(timeout=TIMEOUT) is None
        assert ws.close_code == 1006


async def test_wss_first_frames_in_tls_records_of_their_own(backend, tmp_path):
    """Over TLS, a 101 and the frames after it in records of their own (asyncio's TLS transport
    fills the read buffer record by record, through slices of it): none is lost."""
    server_ctx, client_ctx = make_tls_contexts(tmp_path)
    first = build_frame(1, b"first") + build_frame(2, b"second")
    async with raw_server(first_frames=first, ssl=server_ctx, split=True) as (port, peers):
        for _ in range(5):
            ws = await async_connect_websocket(
                f"wss://127.0.0.1:{port}/", backend=backend, compression=None, ssl=client_ctx
            )
            peer = await asyncio.wait_for(peers.get(), TIMEOUT)
            assert await ws.recv(timeout=TIMEOUT) == "first"
            assert await ws.recv(timeout=TIMEOUT) == b"second"
            peer.writer.transport.abort()
            assert await ws.recv(timeout=TIMEOUT) is None


async def test_server_protocol_error_fails_client_1002(backend):
    async with raw_server() as (port, peers):
        ws = await async_connect_websocket("127.0.0.1", port, backend=backend, compression=None)
        peer = await asyncio.wait_for(peers.get(), TIMEOUT)
        peer.send_frame(3, b"")  # reserved opcode
        assert await ws.recv(timeout=TIMEOUT) is None
        assert await peer.read_close() == (1002, "reserved opcode 0x3")
        with pytest.raises(ConnectionClosed):
            await ws.send("x")


async def test_client_answers_messages_before_a_protocol_error_in_the_same_read(backend):
    """The client side of the server test of the same name: a message, a ping and a bad
    frame in one read; the application's echo and the pong go out before the close frame."""
    async with raw_server() as (port, peers):
        ws = await async_connect_websocket("127.0.0.1", port, backend=backend, compression=None)
        peer = await asyncio.wait_for(peers.get(), TIMEOUT)

        async def echo_loop() -> None:
            async for message in ws:
                await ws.send(message)

        task = asyncio.create_task(echo_loop())
        peer.send_frame(1, b"warm")
        assert await asyncio.wait_for(peer.read_frame(), TIMEOUT) == (1, b"warm")
        burst = build_frame(1, b"hello") + build_frame(9, b"p") + build_frame(4, b"")  # reserved opcode 4
        peer.writer.write(burst)
        got = [await asyncio.wait_for(peer.read_frame(), TIMEOUT) for _ in range(3)]
        assert sorted(got[:2]) == [(1, b"hello"), (10, b"p")]  # (the pong may go first)
        assert got[2][0] == 8 and struct.unpack("!H", got[2][1][:2])[0] == 1002
        peer.writer.transport.abort()
        await asyncio.wait_for(task, TIMEOUT)
        assert ws.close_code == 1006 or ws.close_code == 1002


async def test_client_answers_messages_that_came_with_the_handshake_before_failing(backend):
    """A message and a bad frame right behind the server's handshake answer (Autobahn's
    fuzzing server, 3.2): the application, which was not in recv() yet, gets one loop
    iteration to take it and answer before the connection fails."""
    first = build_frame(1, b"early") + bytes([0xA1, 0x00])  # FIN + RSV2, text, empty: 1002
    async with raw_server(first_frames=first) as (port, peers):
        async with async_connect_websocket("127.0.0.1", port, backend=backend, compression=None) as ws:
            async for message in ws:  # straight in, as Autobahn's client driver
                await ws.send(message)
            peer = await asyncio.wait_for(peers.get(), TIMEOUT)
            assert await asyncio.wait_for(peer.read_frame(), TIMEOUT) == (1, b"early")
            assert await peer.read_close() == (1002, "reserved bits must be 0")
            peer.writer.transport.abort()  # (the server closes TCP: the client waits for it)


async def test_client_fails_at_once_when_the_application_does_not_read(backend):
    """The one loop iteration above is all the error waits: an application busy elsewhere
    finds the connection failed (1002 sent), the message before the error still queued."""
    first = build_frame(2, b"kept") + bytes([0x83, 0x00])  # reserved opcode 3: 1002
    async with raw_server(first_frames=first) as (port, peers):
        ws = await async_connect_websocket("127.0.0.1", port, backend=backend, compression=None)
        peer = await asyncio.wait_for(peers.get(), TIMEOUT)
        assert await peer.read_close() == (1002, "reserved opcode 0x3")  # nobody called recv()
        assert await ws.recv(timeout=TIMEOUT) == b"kept"
        assert await ws.recv(timeout=TIMEOUT) is None
        assert ws.close_code == 1006
        with pytest.raises(ConnectionClosed):
            await ws.send("late")


async def test_server_invalid_utf8_fails_client_1007(backend):
    async with raw_server() as (port, peers):
        ws = await async_connect_websocket("127.0.0.1", port, backend=backend, compression=None)
        peer = await asyncio.wait_for(peers.get(), TIMEOUT)
        peer.send_frame(1, b"ok \xff", fin=False)
        assert await ws.recv(timeout=TIMEOUT) is None
        assert (await peer.read_close())[0] == 1007


# --------------------------------------------------------------------------- interop: websockets server


async def test_interop_websockets_server(backend):
    paths = []

    async def handler(connection):
        paths.append(connection.request.path)
        async for message in connection:
            if message == "close-me":
                await connection.close(4003, "server bye")
                return
            await connection.send(message)

    async with ws_serve(handler, "127.0.0.1", 0, subprotocols=["v2", "v1"]) as server:
        port = server.sockets[0].getsockname()[1]
        async with async_connect_websocket(
            f"ws://127.0.0.1:{port}/room?id=7", backend=backend, subprotocols=["v1", "v2"]
        ) as ws:
            assert ws.subprotocol in ("v1", "v2")
            assert ws.extensions == ["permessage-deflate"]
            for message in ("text é", b"\x00bin", "", b"", "big" * 100_000, bytes(300_000)):
                await ws.send(message)
                assert await ws.recv(timeout=TIMEOUT) == message
            await ws.send(["frag", "ment", "ed"])
            assert await ws.recv(timeout=TIMEOUT) == "fragmented"
            await ws.send([b"x", b"y"])
            assert await ws.recv(timeout=TIMEOUT) == b"xy"
            waiter = await ws.ping()
            assert await asyncio.wait_for(waiter, TIMEOUT) > 0
            await ws.send("close-me")
            assert await ws.recv(timeout=TIMEOUT) is None
            assert (ws.close_code, ws.close_reason) == (4003, "server bye")
        assert paths == ["/room?id=7"]

        async with async_connect_websocket(
            "127.0.0.1", port, backend=backend, compression=None, subprotocols=["v1"]
        ) as ws:
            assert ws.extensions == [] and ws.subprotocol == "v1"
            await ws.send("plain")
            assert await ws.recv(timeout=TIMEOUT) == "plain"


async def test_interop_websockets_server_sees_client_close_code(backend):
    seen = asyncio.get_running_loop().create_future()

    async def handler(connection):
        try:
            await connection.recv()
        except websockets.ConnectionClosed as exc:
            seen.set_result((exc.rcvd.code, exc.rcvd.reason))

    async with ws_serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        ws = await async_connect_websocket("127.0.0.1", port, backend=backend)
        await ws.close(4000, "bye")
        assert await asyncio.wait_for(seen, TIMEOUT) == (4000, "bye")
        await asyncio.wait_for(ws.wait_closed(), TIMEOUT)


async def test_interop_websockets_server_compressed_fragments(backend):
    """websockets sends a fragmented compressed message; kn_sock reassembles and inflates it."""

    async def handler(connection):
        await connection.send(["a" * 10_000, "b" * 10_000, "c"])
        await connection.send((b"z" * 5000 for _ in range(4)))
        await connection.wait_closed()

    async with ws_serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with async_connect_websocket("127.0.0.1", port, backend=backend) as ws:
            assert await ws.recv(timeout=TIMEOUT) == "a" * 10_000 + "b" * 10_000 + "c"
            assert await ws.recv(timeout=TIMEOUT) == b"z" * 20_000


async def test_interop_websockets_server_rejects(backend):
    from websockets.http11 import Response
    from websockets.datastructures import Headers

    def process_request(connection, request):
        return Response(401, "Unauthorized", Headers([("Content-Length", "6")]), b"go way")

    async with ws_serve(echo, "127.0.0.1", 0, process_request=process_request) as server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(InvalidStatus) as info:
            await async_connect_websocket("127.0.0.1", port, backend=backend)
        assert info.value.status == 401 and info.value.body == b"go way"


async def test_cancelling_a_connect_leaves_no_unretrieved_error(backend):
    """Cancelled while create_connection() finishes, the opening may still fail afterwards
    (asyncio closes the transport it had just made): that error must not be logged as 'Future
    exception was never retrieved' (audit)."""
    import gc

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(200)  # accepts TCP, never answers the upgrade
    errors: list[str] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx["message"]))
    try:
        for i in range(100):
            task = asyncio.ensure_future(
                async_connect_websocket("127.0.0.1", listener.getsockname()[1], backend=backend, ping_interval=None)
            )
            await asyncio.sleep((0.0001, 0.0002, 0.0003, 0.0005, 0.0008)[i % 5])
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.sleep(0.1)
        gc.collect()
        await asyncio.sleep(0.05)
    finally:
        listener.close()
    assert errors == []


async def test_a_redirect_to_another_origin_drops_credential_headers(backend):
    """See the blocking client's test (audit 87)."""

    async def report(ws, path):
        await ws.send(credentials_seen(ws.request_headers))

    async with serving(report, backend=backend) as target:
        async with serving(report, backend=backend, process_request=credential_redirects(target.port)) as server:
            async with async_connect_websocket("127.0.0.1", server.port, "/same", headers=CREDENTIALS) as ws:
                assert await ws.recv(timeout=TIMEOUT) == repr(["Bearer secret", "session=abc", "kept"])
            async with async_connect_websocket("127.0.0.1", server.port, "/other", headers=CREDENTIALS) as ws:
                assert ws.path == "/there"
                assert await ws.recv(timeout=TIMEOUT) == repr([None, None, "kept"])


async def test_redirects_are_followed(backend):
    """A 3xx with a Location (relative here) is followed, up to 10 times; then InvalidHandshake."""

    def hook(path, headers):
        if path.startswith("/hop"):
            n = int(path[4:])
            return 302 if n % 2 else 307, [("Location", f"/hop{n - 1}" if n > 1 else "/chat")], b""
        if path == "/loop":
            return 301, [("Location", "ws://127.0.0.1:%d/loop" % port)], b""
        return None

    async with serving(echo, backend=backend, process_request=hook) as server:
        port = server.port
        async with async_connect_websocket("127.0.0.1", port, "/hop10", backend=backend) as ws:
            assert ws.path == "/chat"
            await ws.send("after ten redirections")
            assert await ws.recv(timeout=TIMEOUT) == "after ten redirections"
        with pytest.raises(InvalidHandshake, match="more than 10 redirections"):
            await async_connect_websocket("127.0.0.1", port, "/hop11", backend=backend)
        with pytest.raises(InvalidHandshake, match="more than 10 redirections"):
            await async_connect_websocket("127.0.0.1", port, "/loop", backend=backend)


@pytest.mark.parametrize("compression", ["deflate", None])
async def test_a_closed_client_is_freed_without_the_cycle_collector(backend, compression):
    """A closed connection (client and server side) is in no reference cycle (audit: the opening handshake's
    future held the connection, which held the handshake, so every closed client waited,
    zlib streams and all, for a full collection)."""
    refs = []

    async def handler(ws, path):
        refs.append(weakref.ref(ws))
        await echo(ws, path)

    async with serving(handler, backend=backend, compression=compression) as server:
        gc.collect()
        gc.disable()
        try:
            for _ in range(3):
                ws = await async_connect_websocket("127.0.0.1", server.port, backend=backend, compression=compression)
                await ws.send("hello")
                assert await ws.recv(timeout=TIMEOUT) == "hello"
                await ws.close()
                refs.append(weakref.ref(ws))
                del ws
            await wait_until(lambda: len(refs) == 6 and all(ref() is None for ref in refs))
        finally:
            gc.enable()
