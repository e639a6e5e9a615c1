"""kn_sock/broadcast.py: one frame for all, ordered and complete delivery, slow clients
skipped or closed without delaying the others or growing server memory past the limit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time

import pytest

from asyncio_support import TIMEOUT, serving, stalled_client, wait_until
from kn_sock import async_connect_websocket, broadcast, connect_websocket
from sync_support import running_server, wait_for

pytestmark = pytest.mark.timeout(30)


def collecting_server():
    conns: set = set()

    async def handler(ws, path):
        conns.add(ws)
        try:
            while await ws.recv() is not None:
                pass
        finally:
            conns.discard(ws)

    return conns, handler


@pytest.mark.asyncio
async def test_1000_messages_to_100_clients_complete_and_ordered(backend):
    conns, handler = collecting_server()
    n_clients, n_messages = 100, 1000
    async with serving(handler, backend=backend) as server:
        # Half negotiate permessage-deflate: they get the same uncompressed frame (RFC 7692 §6).
        clients = [
            await async_connect_websocket("127.0.0.1", server.port, compression=None if i % 2 else "deflate",
                                          backend=backend, max_queue=None)
            for i in range(n_clients)
        ]
        await wait_until(lambda: len(conns) == n_clients)
        assert any(c.extensions == ["permessage-deflate"] for c in conns)

        async def read_all(ws):
            return [await ws.recv(TIMEOUT) for _ in range(n_messages)]

        readers = [asyncio.create_task(read_all(c)) for c in clients]
        for i in range(n_messages):
            assert broadcast(conns, str(i) if i % 2 else str(i).encode()) == []
            if i % 100 == 99:
                await asyncio.sleep(0)
        results = await asyncio.wait_for(asyncio.gather(*readers), TIMEOUT * 2)
        expected = [str(i) if i % 2 else str(i).encode() for i in range(n_messages)]
        assert all(r == expected for r in results)
        for c in clients:
            await c.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("policy", ["skip", "close"])
async def test_stalled_client_is_left_out_without_delaying_the_others(policy):
    conns, handler = collecting_server()
    limit, size, rounds = 256 * 1024, 16 * 1024, 600  # ~9.4 MiB each
    message = b"x" * size
    async with serving(handler, close_timeout=0.5, compression=None) as server:
        fast = [await async_connect_websocket("127.0.0.1", server.port, max_queue=None) for _ in range(5)]
        slow_sock = await asyncio.to_thread(stalled_client, server.port)
        await wait_until(lambda: len(conns) == 6)
        slow_ws = next(ws for ws in conns if ws.remote_address == slow_sock.getsockname())
        received = [0] * len(fast)

        async def reader(k, ws):
            while received[k] < rounds:
                assert await ws.recv(TIMEOUT) == message
                received[k] += 1

        readers = [asyncio.create_task(reader(k, ws)) for k, ws in enumerate(fast)]
        left_out: list = []
        peak = 0
        t0 = time.perf_counter()
        for i in range(rounds):
            t = time.perf_counter()
            left_out += broadcast(list(conns), message, limit=limit, policy=policy)
            assert time.perf_counter() - t < 0.5  # never waits for anyone
            if slow_ws.transport is not None:
                peak = max(peak, slow_ws.transport.get_write_buffer_size())
            # Let the fast clients read: a broadcaster usually has other work between messages.
            while any(received[k] < i - 8 for k in range(len(fast))):
                await asyncio.sleep(0)
        await asyncio.wait_for(asyncio.gather(*readers), TIMEOUT * 2)
        elapsed = time.perf_counter() - t0
        assert received == [rounds] * len(fast)
        assert slow_ws in left_out and all(ws is slow_ws for ws in left_out)
        assert peak <= limit + size  # the stalled client's buffer stays bounded
        assert elapsed < 15
        if policy == "close":
            assert len(left_out) == 1 and slow_ws.closed
            assert slow_ws.protocol.close_sent[0] == 1008
            await asyncio.wait_for(slow_ws.wait_closed(), TIMEOUT)  # dropped after close_timeout
        else:
            assert len(left_out) > 1 and not slow_ws.closed
        slow_sock.close()
        for ws in fast:
            await ws.close()


@pytest.mark.asyncio
async def test_a_stalled_client_is_logged_when_skipping_starts_and_ends(caplog):
    """One INFO line when a connection starts being skipped, one when it takes messages again,
    DEBUG in between (audit: a line per message, ~1,000 lines/s from one stalled feed client)."""
    caplog.set_level(logging.DEBUG, logger="kn_sock")
    conns, handler = collecting_server()
    limit, message = 64 * 1024, b"x" * 16 * 1024
    async with serving(handler, compression=None) as server:
        sock = await asyncio.to_thread(stalled_client, server.port)
        await wait_until(lambda: len(conns) == 1)
        (ws,) = conns
        skipped = 0
        for _ in range(200):
            if broadcast(conns, message, limit=limit):
                skipped += 1
                if skipped == 5:
                    break
            await asyncio.sleep(0)
        assert skipped == 5
        unsent = ws.transport.get_write_buffer_size

        def drain() -> None:  # read until the server's buffer has gone out
            sock.settimeout(0.2)
            with contextlib.suppress(socket.timeout):
                while True:
                    sock.recv(1 << 16)

        while unsent():
            await asyncio.to_thread(drain)
        assert broadcast(conns, message, limit=limit) == []
        sock.close()
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.getMessage().startswith("broadcast:")]
    assert [level for level, _ in lines] == [logging.INFO] + [logging.DEBUG] * 4 + [logging.INFO]
    assert "over 65536 unsent bytes" in lines[0][1] and lines[-1][1].endswith("takes messages again, 5 skipped")


@pytest.mark.asyncio
async def test_client_side_connections_get_their_own_masked_frames():
    got: list = []

    async def handler(ws, path):
        async for message in ws:
            got.append(message)

    async with serving(handler) as server:
        clients = [await async_connect_websocket("127.0.0.1", server.port) for _ in range(3)]
        assert broadcast(clients, "hi") == []
        await wait_until(lambda: len(got) == 3)
        assert got == ["hi"] * 3
        for c in clients:
            await c.close()
        assert broadcast(clients, "gone") == []  # closed connections are passed over


def test_sync_server_connections_and_bad_arguments():
    conns: set = set()
    lock = threading.Lock()

    def handler(ws, address):
        with lock:
            conns.add(ws)
        while ws.recv() is not None:
            pass

    with running_server(handler) as server:
        clients = [connect_websocket("127.0.0.1", server.port) for _ in range(10)]
        assert wait_for(lambda: len(conns) == 10)
        for i in range(200):
            assert broadcast(conns, f"m{i}") == []
        for c in clients:
            assert [c.recv(TIMEOUT) for _ in range(200)] == [f"m{i}" for i in range(200)]
        slow = stalled_client(server.port)
        assert wait_for(lambda: len(conns) == 11)
        skipped: list = []
        for _ in range(400):
            skipped += broadcast(conns, b"y" * 16384, limit=65536)
        # The stalled client is left out (so are the others, which do not read meanwhile).
        assert any(ws.remote_address == slow.getsockname() for ws in skipped)
        assert all(ws._wbuf_size <= 65536 + 16384 for ws in conns)
        slow.close()
        with pytest.raises(ValueError):
            broadcast(conns, "x", policy="drop")
        with pytest.raises(TypeError):
            broadcast(conns, 42)
        for c in clients:
            c.close()


def test_a_set_changing_during_the_broadcast_is_no_error():
    """A blocking server's ``connections`` changes in handler threads while broadcast() runs
    (audit 70: "Set changed size during iteration")."""
    conns: set = set()

    class Leaving:
        @property
        def protocol(self):
            conns.discard(self)  # another thread's handler returning, as seen from here
            conns.update((Leaving(), Leaving()))  # and new ones coming
            return None

    conns.update(Leaving() for _ in range(5))
    assert broadcast(conns, "x") == []


def test_broadcast_to_the_blocking_servers_connections_while_clients_come_and_go():
    stop = threading.Event()

    def handler(ws, address):
        while ws.recv() is not None:
            pass

    with running_server(handler) as server:
        errors: list = []

        def churn():
            while not stop.is_set():
                try:
                    connect_websocket("127.0.0.1", server.port).close()
                except Exception as exc:  # pragma: no cover - reported below
                    errors.append(exc)

        threads = [threading.Thread(target=churn) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                broadcast(server.connections, "hi")
        finally:
            stop.set()
            for t in threads:
                t.join(TIMEOUT)
        assert errors == []


@pytest.mark.asyncio
async def test_direct_writes_that_fill_the_socket_hand_the_rest_to_the_transport(backend):
    # broadcast() writes to idle plain sockets itself (send_many); when the kernel takes only
    # part of a frame, or nothing, the transport must carry on with exactly the rest, in order.
    from kn_sock._pure import FrameParser

    conns, handler = collecting_server()
    async with serving(handler, backend=backend, compression=None) as server:
        sock = await asyncio.to_thread(stalled_client, server.port)
        await wait_until(lambda: len(conns) == 1)
        ws = next(iter(conns))
        ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        messages = [bytes([i]) * (20_000 + i) for i in range(60)]  # far more than the sockets hold
        for m in messages:
            assert broadcast(conns, m, limit=2**24) == []
        assert ws.transport.get_write_buffer_size() > 0  # the kernel refused some: buffered
        parser = FrameParser(expect_mask=False, max_size=None)
        got: list = []

        def read_all() -> None:
            while len(got) < len(messages):
                data = sock.recv(65536)
                assert data
                got.extend(payload for opcode, fin, rsv1, payload in parser.feed(data))

        await asyncio.to_thread(read_all)
        assert got == messages
        sock.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("policy", ["skip", "close"])
async def test_a_message_over_limit_reaches_idle_connections(policy):
    """Nothing unsent: the message goes, whatever its size (audit: a 1 MiB message with the
    default 1 MiB limit reached nobody; with policy="close" it closed every connection)."""
    conns, handler = collecting_server()
    message = b"z" * 5000
    async with serving(handler, compression=None) as server:
        clients = [await async_connect_websocket("127.0.0.1", server.port) for _ in range(3)]
        await wait_until(lambda: len(conns) == 3)
        assert broadcast(list(conns), message, limit=4096, policy=policy) == []
        for ws in clients:
            assert await ws.recv(TIMEOUT) == message
            await ws.close()


def test_a_message_over_limit_reaches_idle_blocking_connections():
    got: list = []

    def handler(ws, address):
        got.append(ws)
        ws.recv()

    with running_server(handler, compression=None) as server:
        clients = [connect_websocket("127.0.0.1", server.port) for _ in range(2)]
        assert wait_for(lambda: len(got) == 2)
        assert broadcast(got, b"z" * 5000, limit=4096) == []
        for ws in clients:
            assert ws.recv(TIMEOUT) == b"z" * 5000
            ws.close()
