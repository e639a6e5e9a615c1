"""Reconnection of the asyncio client (SPEC.md "Reconnection"; kn_sock/asyncio/client.py).

Servers on 127.0.0.1 port 0; a restarted server binds the port the first one got. Backoff
delays are kept tiny here; their values are tested without sleeping in test_reconnect_policy.py.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from asyncio_support import TIMEOUT, echo, raw_server, serving, wait_until
from kn_sock import AsyncWebSocket, ConnectionClosed, async_connect_websocket, connect_websocket
from kn_sock.asyncio.client import AsyncReconnectingWebSocket
from kn_sock.asyncio.server import start_async_websocket_server
from kn_sock.frames import OP_TEXT

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

FAST = {"initial_delay": 0.01, "max_delay": 0.05}


def first_closes_with(code: int | None, counter: list[int]):
    """A handler: the first connection ends with ``code`` (None: TCP abort, 1006), later ones echo."""

    async def handler(ws, path):
        counter.append(1)
        if len(counter) == 1:
            await ws.send("first")
            if code is None:
                await asyncio.sleep(0.05)  # let "first" arrive: a reset may discard unread data
                ws.abort()
            else:
                await ws.close(code)
            return
        async for message in ws:
            await ws.send(message)

    return handler


def ending_connections(ended: int, count: int):
    """A handler: the first ``ended`` connections send ``count`` messages ("c<n>-<i>") and end
    with 1001; later ones send "new" and stay open."""
    counter: list[int] = []

    async def handler(ws, path):
        counter.append(1)
        n = len(counter)
        if n <= ended:
            for i in range(count):
                await ws.send(f"c{n}-{i}")
            await ws.close(1001)
            return
        await ws.send("new")
        await ws.wait_closed()

    return handler


# --------------------------------------------------------------------------- reconnect or not


async def test_messages_held_for_ended_connections_are_bounded(backend, caplog):
    """An application that does not read while the connection keeps ending: what ended
    connections received is held up to max_queue messages, the oldest connections' go first."""
    async with serving(ending_connections(4, 10), backend=backend) as server:
        ws = await async_connect_websocket("127.0.0.1", server.port, backend=backend, reconnect=FAST, max_queue=16)
        await wait_until(lambda: ws.reconnects == 4)
        got = [await ws.recv(TIMEOUT) for _ in range(11)]
        assert got == [f"c4-{i}" for i in range(10)] + ["new"]
        assert "messages received before a reconnection dropped" in caplog.text
        await ws.close()


async def test_first_connection_ending_during_on_connect_is_retried(backend):
    """A retryable close (1013 "try again later") that makes on_connect fail on the first
    connection is retried like one after it (audit: the connect raised)."""
    counter: list[int] = []

    async def handler(ws, path):
        counter.append(1)
        if len(counter) == 1:
            await ws.close(1013, "try again later")
            return
        await ws.send("welcome")
        async for message in ws:
            await ws.send(message)

    async def on_connect(ws):
        await ws.recv()  # the first connection: None, it is closed
        await ws.send("subscribe")  # ConnectionClosed the first time

    async with serving(handler, backend=backend) as server:
        async with async_connect_websocket(
            "127.0.0.1", server.port, backend=backend, reconnect=FAST, on_connect=on_connect
        ) as ws:
            assert await ws.recv(TIMEOUT) == "subscribe"
            assert ws.reconnects == 1 and len(counter) == 2


async def test_messages_received_before_a_reconnection_are_not_lost(backend):
    """Messages that arrived on a connection that then ended (and was replaced) are returned
    by recv(), in order, before the new connection's (audit: they were dropped)."""
    async with serving(ending_connections(2, 3), backend=backend) as server:
        ws = await async_connect_websocket("127.0.0.1", server.port, backend=backend, reconnect=FAST)
        await wait_until(lambda: ws.reconnects == 2)  # the application was busy meanwhile
        got = [await ws.recv(TIMEOUT) for _ in range(7)]
        assert got == ["c1-0", "c1-1", "c1-2", "c2-0", "c2-1", "c2-2", "new"]
        await ws.close()
        assert await ws.recv(TIMEOUT) is None


async def test_on_message_is_refused_on_the_reconnecting_client_itself(backend):
    """Set on the reconnecting client, on_message did nothing (messages still went to recv()):
    it belongs to one connection, ``connection``."""
    async with serving(echo, backend=backend) as server:
        ws = await async_connect_websocket("127.0.0.1", server.port, backend=backend, reconnect=FAST)
        try:
            with pytest.raises(AttributeError, match="connection"):
                ws.on_message = print
            assert ws.on_message is None  # read from the current connection
            got = []
            ws.connection.on_message = got.append
            await ws.send("hi")
            await wait_until(lambda: got == ["hi"])
        finally:
            await ws.close()


@pytest.mark.parametrize("code", [1001, 1011, 1012, 1013, None], ids=lambda c: str(c or 1006))
async def test_reconnects_after_retryable_close(backend, code):
    counter: list[int] = []
    async with serving(first_closes_with(code, counter), backend=backend) as server:
        ws = await async_connect_websocket("127.0.0.1", server.port, backend=backend, reconnect=FAST)
        assert isinstance(ws, AsyncReconnectingWebSocket)
        assert await ws.recv(TIMEOUT) == "first"
        await wait_until(lambda: ws.reconnects == 1)
        await ws.send("again")
        assert await ws.recv(TIMEOUT) == "again"
        assert ws.reconnects == 1 and len(counter) == 2
        assert ws.last_close_code == (code or 1006)
        assert ws.connected and not ws.closed
        await ws.close()
        assert ws.closed and not ws.connected
        assert await ws.recv(TIMEOUT) is None


@pytest.mark.parametrize("code", [1000, 1002, 1003, 1008, 1010, 4000])
async def test_no_reconnect_after_normal_or_permanent_close(code):
    counter: list[int] = []
    async with serving(first_closes_with(code, counter)) as server:
        ws = await async_connect_websocket("127.0.0.1", server.port, reconnect=FAST)
        assert await ws.recv(TIMEOUT) == "first"
        assert await ws.recv(TIMEOUT) is None  # no reconnection will follow
        assert ws.closed and not ws.connected and ws.reconnects == 0
        assert ws.close_code == code and ws.last_close_code == code
        with pytest.raises(ConnectionClosed):
            await ws.send("late")
        await asyncio.sleep(0.1)
        assert len(counter) == 1


async def test_no_reconnect_after_client_close():
    counter: list[int] = []

    async def handler(ws, path):
        counter.append(1)
        await echo(ws, path)

    async with serving(handler) as server:
        async with async_connect_websocket("127.0.0.1", server.port, reconnect=FAST) as ws:
            await ws.send("x")
            assert await ws.recv(TIMEOUT) == "x"
        assert ws.closed and ws.close_code == 1000
        assert await ws.recv(TIMEOUT) is None
        await asyncio.sleep(0.1)
        assert len(counter) == 1 and ws.reconnects == 0


async def test_no_reconnect_after_client_abort():
    """abort() is the client's own doing, like close(): closed for good, recv() gives None."""
    counter: list[int] = []

    async def handler(ws, path):
        counter.append(1)
        await echo(ws, path)

    async with serving(handler) as server:
        ws = await async_connect_websocket("127.0.0.1", server.port, reconnect=FAST)
        await ws.send("x")
        assert await ws.recv(TIMEOUT) == "x"
        blocked = asyncio.ensure_future(ws.recv(TIMEOUT))
        await asyncio.sleep(0)  # let it start waiting
        ws.abort()
        assert ws.closed and not ws.connected
        assert await blocked is None  # a recv() waiting at the time returns None too
        assert await ws.recv(TIMEOUT) is None
        with pytest.raises(ConnectionClosed):
            await ws.send("late")
        await asyncio.sleep(0.2)  # several backoff windows of FAST
        assert len(counter) == 1 and ws.reconnects == 0
        await ws.close()  # still allowed, does nothing more
        await asyncio.wait_for(ws.wait_closed(), TIMEOUT)


@pytest.mark.parametrize("how", ["close 1001", "close 1011", "abort"])
async def test_no_reconnect_after_the_application_ends_the_current_connection(backend, how, caplog):
    """Closing (with any code) or aborting ``ws.connection`` itself is a close the client
    started too (SPEC.md "Reconnection"): no reconnection (audit: 1001 / 1011 reconnected)."""
    caplog.set_level("INFO", logger="kn_sock")
    counter: list[int] = []

    async def handler(ws, path):
        counter.append(1)
        await echo(ws, path)

    async with serving(handler, backend=backend) as server:
        ws = await async_connect_websocket("127.0.0.1", server.port, backend=backend, reconnect=FAST)
        await ws.send("x")
        assert await ws.recv(TIMEOUT) == "x"
        if how == "abort":
            ws.connection.abort()
        else:
            await ws.connection.close(int(how.split()[1]))
        assert await ws.recv(TIMEOUT) is None  # no reconnection will follow
        assert ws.closed and not ws.connected and ws.reconnects == 0
        with pytest.raises(ConnectionClosed):
            await ws.send("late")
        await asyncio.sleep(0.2)  # several backoff windows of FAST
        assert len(counter) == 1
    assert "by the application: not reconnecting" in caplog.text


async def test_abort_during_backoff_stops_the_reconnection():
    counter: list[int] = []

    async def handler(ws, path):
        counter.append(1)
        await ws.close(1012)  # service restart: worth a retry

    async with serving(handler) as server:
        ws = await async_connect_websocket(
            "127.0.0.1", server.port, reconnect={"initial_delay": 0.3, "jitter": None}
        )
        await wait_until(lambda: not ws.connected)
        ws.abort()
        assert ws.closed
        assert await asyncio.wait_for(ws.recv(), 0.25) is None  # did not sit out the backoff
        await asyncio.sleep(0.5)  # past the retry that was due
        assert len(counter) == 1 and ws.reconnects == 0
        await ws.close()


async def test_reconnect_off_keeps_plain_connection():
    async with serving(echo) as server:
        ws = await async_connect_websocket("127.0.0.1", server.port)
        assert type(ws) is AsyncWebSocket
        await ws.close()


# --------------------------------------------------------------------------- restart, queueing


async def test_server_restart_same_port_every_message_once_in_order(caplog):
    """A server stopped and restarted on its port while an asyncio and a blocking client keep
    sending: the server gets 0..N-1 from each, in order, none twice.

    Each sender reaches message ``STOP`` and waits until the server has stopped, so no
    message is in flight at the moment of the close (what a dying TCP connection swallows
    is not re-sent, by design); the messages sent while the server is down are queued."""
    caplog.set_level(logging.INFO, logger="kn_sock")
    n, stop = 300, 100
    got: dict[str, list[int]] = {"/async": [], "/sync": []}

    async def handler(ws, path):
        async for message in ws:
            got[path].append(int(message))

    loop = asyncio.get_running_loop()
    server = await start_async_websocket_server("127.0.0.1", 0, handler, reuse_address=True)
    port = server.port
    at_stop = {"async": asyncio.Event(), "sync": threading.Event()}
    stopped_async, stopped_sync = asyncio.Event(), threading.Event()
    opts = {"reconnect": FAST, "open_timeout": 2.0}
    client = await async_connect_websocket(f"ws://127.0.0.1:{port}/async", **opts)
    sync_client = await asyncio.to_thread(connect_websocket, f"ws://127.0.0.1:{port}/sync", **opts)

    async def async_sender():
        for i in range(n):
            if i == stop:
                at_stop["async"].set()
                await stopped_async.wait()
            await client.send(str(i))
            await asyncio.sleep(0.0005)

    def sync_sender():
        import time

        for i in range(n):
            if i == stop:
                at_stop["sync"].set()
                assert stopped_sync.wait(TIMEOUT)
            sync_client.send(str(i))
            time.sleep(0.0005)

    sync_thread = loop.run_in_executor(None, sync_sender)
    sender = asyncio.create_task(async_sender())
    await asyncio.wait_for(at_stop["async"].wait(), TIMEOUT)
    await wait_until(at_stop["sync"].is_set)
    server.close()
    await asyncio.wait_for(server.wait_closed(), TIMEOUT)
    await wait_until(lambda: not client.connected and not sync_client.connected)
    stopped_async.set()
    stopped_sync.set()
    await asyncio.sleep(0.2)  # both keep sending into the queue meanwhile; reconnections are refused
    assert client.pending > 0 and sync_client.pending > 0
    server = await start_async_websocket_server("127.0.0.1", port, handler, reuse_address=True)
    try:
        await asyncio.wait_for(asyncio.gather(sender, sync_thread), TIMEOUT)
        await wait_until(lambda: len(got["/async"]) >= n and len(got["/sync"]) >= n)
        await asyncio.sleep(0.05)
        assert got["/async"] == list(range(n))
        assert got["/sync"] == list(range(n))
        assert client.reconnects == 1 and sync_client.reconnects == 1
        assert client.last_close_code == 1001
        assert any("reconnecting" in r.getMessage() for r in caplog.records)
        await client.close()
        await asyncio.to_thread(sync_client.close)
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), TIMEOUT)


async def _three_queued_while_down(reconnect, **options):
    """A reconnecting client whose server has gone, with 3 messages queued."""
    server = await start_async_websocket_server("127.0.0.1", 0, echo)
    ws = await async_connect_websocket("127.0.0.1", server.port, reconnect=reconnect, **options)
    server.close()
    await server.wait_closed()
    await wait_until(lambda: not ws.connected)
    for i in range(3):
        await ws.send(str(i))
    assert ws.pending == 3
    return ws


async def test_max_pending_overflow_raises():
    ws = await _three_queued_while_down({"initial_delay": 0.05, "max_delay": 0.05}, max_pending=3)
    with pytest.raises(ConnectionClosed):
        await ws.send("overflow")
    await ws.close()
    assert ws.closed and ws.pending == 0  # close() drops them (audit: they stayed counted)


async def test_messages_dropped_for_good_are_no_longer_pending(caplog):
    """Given up with messages queued: logged, and ``pending`` is 0 (audit: it kept counting them)."""
    ws = await _three_queued_while_down({"initial_delay": 0.3, "max_attempts": 1, "jitter": None})
    assert await ws.recv(TIMEOUT) is None  # the one attempt is refused: closed for good
    assert ws.closed and ws.pending == 0
    assert "3 queued messages" in caplog.text and "dropped: closed for good" in caplog.text


async def test_recv_and_iteration_continue_across_reconnections():
    counter: list[int] = []

    async def handler(ws, path):
        counter.append(1)
        await ws.send(f"hello {len(counter)}")
        if len(counter) < 3:
            await ws.close(1012)
        else:
            await ws.close(1000)

    async with serving(handler) as server:
        ws = await async_connect_websocket("127.0.0.1", server.port, reconnect=FAST)
        messages = [m async for m in ws]
        assert messages == ["hello 1", "hello 2", "hello 3"]
        assert ws.reconnects == 2 and ws.closed and ws.close_code == 1000


async def test_on_connect_runs_each_time_before_the_queue():
    seen: list[list[str]] = []

    async def handler(ws, path):
        mine: list[str] = []
        seen.append(mine)
        async for message in ws:
            mine.append(message)
            if message == "bye":
                await ws.close(1012)
                return

    calls: list[AsyncWebSocket] = []

    async def on_connect(conn):
        assert isinstance(conn, AsyncWebSocket)
        calls.append(conn)
        await conn.send("subscribe")

    async with serving(handler) as server:
        ws = await async_connect_websocket("127.0.0.1", server.port, reconnect=FAST, on_connect=on_connect)
        await ws.send("bye")
        await wait_until(lambda: not ws.connected or ws.reconnects == 1)
        await ws.send("queued")
        await wait_until(lambda: len(seen) == 2 and len(seen[1]) == 2)
        assert seen[0] == ["subscribe", "bye"]
        assert seen[1] == ["subscribe", "queued"]
        assert len(calls) == 2 and calls[1] is ws.connection
        await ws.close()


async def test_on_connect_reads_the_new_connections_first_message_not_the_application(backend):
    """On a reconnection on_connect runs while the application already waits in recv(): the
    new connection's first message (the answer to on_connect's re-subscription) is
    on_connect's; the application gets what follows (it could get either)."""
    counter: list[int] = []

    async def handler(ws, path):
        counter.append(1)
        assert await ws.recv(TIMEOUT) == "auth"
        await ws.send(f"welcome {len(counter)}")
        await ws.send(f"data {len(counter)}")
        if len(counter) == 1:
            await ws.close(1012)
            return
        await echo(ws, path)

    answers: list[str] = []

    async def on_connect(conn):
        await conn.send("auth")
        await asyncio.sleep(0.02)  # the application's recv() is waiting meanwhile
        answers.append(await conn.recv(TIMEOUT))

    async with serving(handler, backend=backend) as server:
        ws = await async_connect_websocket("127.0.0.1", server.port, backend=backend, reconnect=FAST, on_connect=on_connect)
        for _ in range(2):  # the application stays in recv() across the reconnection
            assert await ws.recv(TIMEOUT) == f"data {len(answers)}"
        assert answers == ["welcome 1", "welcome 2"] and ws.reconnects == 1
        await ws.close()


async def test_on_connect_may_read_through_the_reconnecting_client_itself(backend):
    """on_connect awaiting the reconnecting client's own recv() (not the connection it was
    given) reads the new connection's first message, no self-deadlock (audit)."""
    counter: list[int] = []

    async def handler(ws, path):
        counter.append(1)
        await ws.send(f"welcome {len(counter)}")
        if len(counter) == 1:
            await ws.close(1012)
            return
        await echo(ws, path)

    answers: list = []
    holder: list = []

    async def on_connect(conn):
        if holder:  # a reconnection: the client exists
            answers.append(await holder[0].recv(TIMEOUT))

    async with serving(handler, backend=backend) as server:
        ws = await async_connect_websocket("127.0.0.1", server.port, backend=backend, reconnect=FAST, on_connect=on_connect)
        holder.append(ws)
        assert await ws.recv(TIMEOUT) == "welcome 1"
        await wait_until(lambda: answers)
        assert answers == ["welcome 2"] and ws.reconnects == 1
        await ws.send("echo")
        assert await ws.recv(TIMEOUT) == "echo"
        await ws.close()


async def test_initial_connection_retried_until_the_server_starts():
    server = await start_async_websocket_server("127.0.0.1", 0, echo)
    port = server.port
    server.close()
    await server.wait_closed()

    async def later():
        await asyncio.sleep(0.2)
        return await start_async_websocket_server("127.0.0.1", port, echo, reuse_address=True)

    starting = asyncio.create_task(later())
    ws = await async_connect_websocket("127.0.0.1", port, reconnect=FAST, open_timeout=3)
    server = await starting
    try:
        await ws.send("up")
        assert await ws.recv(TIMEOUT) == "up"
        await ws.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_initial_connection_gives_up_per_policy():
    server = await start_async_websocket_server("127.0.0.1", 0, echo)
    port = server.port
    server.close()
    await server.wait_closed()
    with pytest.raises(OSError):
        await async_connect_websocket("127.0.0.1", port, reconnect={"initial_delay": 0.01, "max_attempts": 2})
    with pytest.raises((OSError, TimeoutError)):
        await async_connect_websocket("127.0.0.1", port, reconnect=FAST, open_timeout=0.2)


async def test_gives_up_after_max_attempts():
    counter: list[int] = []
    server = await start_async_websocket_server("127.0.0.1", 0, first_closes_with(1001, counter))
    ws = await async_connect_websocket("127.0.0.1", server.port, reconnect={"initial_delay": 0.01, "max_attempts": 2})
    server.close()
    await server.wait_closed()
    assert await ws.recv(TIMEOUT) == "first"
    assert await ws.recv(TIMEOUT) is None
    assert ws.closed and ws.reconnects == 0


async def test_ack_mode_resends_what_was_not_acknowledged():
    """ack=: a message stays queued until acknowledged, and goes out again after a reconnection."""
    seen: list[list[str]] = []

    async def handler(ws, path):
        mine: list[str] = []
        seen.append(mine)
        async for message in ws:
            mine.append(message)
            if len(seen) == 1 and len(mine) == 2:
                ws.abort()  # dies without acknowledging the second one
                return
            await ws.send("ack")

    async with serving(handler) as server:
        ws = await async_connect_websocket(
            "127.0.0.1", server.port, reconnect=FAST, ack=lambda msg: 1 if msg == "ack" else 0
        )
        await ws.send("a")
        assert await ws.recv(TIMEOUT) == "ack"
        assert ws.pending == 0
        await ws.send("b")
        await ws.send("c")  # queued or sent; either way unacknowledged
        assert await ws.recv(TIMEOUT) == "ack"  # from the second connection
        assert await ws.recv(TIMEOUT) == "ack"
        assert seen[0][:2] == ["a", "b"] and seen[1] == ["b", "c"]
        assert ws.pending == 0 and ws.reconnects == 1
        await ws.close()


# --------------------------------------------------------------------------- audit: messages never written


async def test_a_message_waiting_behind_a_fragmented_send_is_queued_when_the_connection_drops(backend):
    """Another task's fragmented message is on the wire when the connection drops: the message
    waiting behind it was never written, so it goes out on the next connection (audit: send()
    returned and the message was gone)."""
    async with raw_server() as (port, peers):
        ws = await async_connect_websocket("127.0.0.1", port, backend=backend, reconnect=FAST,
                                           ping_interval=None, compression=None, close_timeout=0.2)
        first = await asyncio.wait_for(peers.get(), TIMEOUT)
        go_on = asyncio.Event()

        async def slow_fragments():
            yield "part1"
            yield "part2"  # part1 goes out once the next one is known
            await go_on.wait()
            yield "part3"

        streaming = asyncio.create_task(ws.send(slow_fragments()))
        assert await asyncio.wait_for(first.read_frame(), TIMEOUT) == (OP_TEXT, b"part1")
        waiting = asyncio.create_task(ws.send("important"))
        await asyncio.sleep(0.02)
        assert not waiting.done()  # behind the fragmented message
        first.close()  # the connection drops mid-message
        second = await asyncio.wait_for(peers.get(), TIMEOUT)
        go_on.set()
        await asyncio.wait_for(asyncio.gather(streaming, waiting, return_exceptions=True), TIMEOUT)
        await ws.send("after")
        assert await asyncio.wait_for(second.read_frame(), TIMEOUT) == (OP_TEXT, b"important")
        assert await asyncio.wait_for(second.read_frame(), TIMEOUT) == (OP_TEXT, b"after")
        assert ws.pending == 0
        await ws.close()


async def test_on_connect_failing_on_a_reconnection_retries_without_flushing(backend, caplog):
    """on_connect raising on a reconnection (a failed re-login) closes that connection with
    1011 and reconnects with backoff; the queue waits for a connection whose on_connect
    succeeded (audit: it was flushed on the failed session)."""
    calls: list[int] = []
    received: list[list[str]] = []

    async def handler(websocket, path):
        mine: list[str] = []
        received.append(mine)
        if len(received) == 1:
            await websocket.close(1012)  # service restart: reconnect
            return
        async for message in websocket:
            mine.append(message)

    async def on_connect(conn):
        calls.append(1)
        if len(calls) == 2:
            raise PermissionError("login rejected")
        await conn.send(f"login{len(calls)}")

    async with serving(handler, backend=backend) as server:
        ws = await async_connect_websocket("127.0.0.1", server.port, backend=backend, reconnect=FAST,
                                           on_connect=on_connect, ping_interval=None)
        await wait_until(lambda: len(calls) >= 2)  # the first connection is gone: queued or on the third
        await ws.send("queued")
        await wait_until(lambda: ws.connected and len(calls) == 3)
        await wait_until(lambda: len(received) == 3 and received[2] == ["login3", "queued"])
        assert received[1] == []  # the failed session got nothing
        assert ws.reconnects == 1  # successful reconnections only
        assert "login rejected" in caplog.text
        await ws.close()


async def test_a_permanent_close_during_on_connect_ends_the_client(backend):
    """The server refuses a reconnected session for good (1008) while on_connect runs: its
    ConnectionClosed is not an on_connect failure to retry, the close code decides (regression
    audit: reconnected for ever)."""
    count: list[int] = []
    calls: list[int] = []

    async def handler(websocket, path):
        count.append(1)
        await websocket.close(1012 if len(count) == 1 else 1008)

    async def on_connect(conn):
        calls.append(1)
        if len(calls) > 1:  # the reconnection: the server's 1008 comes
            await conn.wait_closed()
        await conn.send("login")

    async with serving(handler, backend=backend) as server:
        ws = await async_connect_websocket("127.0.0.1", server.port, backend=backend, reconnect=FAST,
                                           on_connect=on_connect, ping_interval=None)
        assert await ws.recv(timeout=TIMEOUT) is None
        assert len(count) == 2 and ws.last_close_code == 1008 and ws.reconnects == 0
        await ws.close()


async def test_first_on_connect_failing_with_another_connections_closed_error_raises(backend):
    """on_connect's ConnectionClosed comes from another, closed connection while the new one
    is open: an on_connect failure, raised by the connect call (audit: a zombie client)."""
    async with serving(echo, backend=backend) as server:
        dead = await async_connect_websocket("127.0.0.1", server.port, backend=backend)
        await dead.close()

        async def on_connect(conn):
            await dead.send("subscribe")

        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(async_connect_websocket("127.0.0.1", server.port, backend=backend, reconnect=FAST,
                                                           on_connect=on_connect), 2)


async def test_a_server_holding_tcp_open_after_its_close_delays_neither_reconnection_nor_the_end(backend):
    """The server's close frame ends the connection for the decision: a server that then
    keeps TCP open delayed the reconnection (1011) and recv()'s None (1000) by close_timeout."""
    async with raw_server() as (port, peers):
        ws = await async_connect_websocket(
            "127.0.0.1", port, backend=backend, reconnect=FAST, close_timeout=8, ping_interval=None
        )
        held = []
        try:
            start = asyncio.get_running_loop().time()
            first = await asyncio.wait_for(peers.get(), TIMEOUT)
            held.append(first)
            first.send_frame(8, (1011).to_bytes(2, "big"))  # then holds TCP open
            second = await asyncio.wait_for(peers.get(), TIMEOUT)
            held.append(second)
            second.send_frame(1, b"second")
            second.send_frame(8, (1000).to_bytes(2, "big"))  # likewise
            assert await ws.recv(TIMEOUT) == "second"
            assert await ws.recv(TIMEOUT) is None
            assert asyncio.get_running_loop().time() - start < 3  # not close_timeout (8 s) each
            assert ws.reconnects == 1 and ws.last_close_code == 1000
        finally:
            for peer in held:
                peer.writer.transport.abort()
        await asyncio.wait_for(ws.wait_closed(), TIMEOUT)


async def test_cancelled_during_on_connect_the_connect_call_returns_at_once(backend):
    """A timeout around the connect call while on_connect runs: the connection is dropped
    at once, as without reconnect= (it awaited a 1011 closing handshake, up to close_timeout,
    against a server that does not answer one)."""
    async with raw_server() as (port, peers):

        async def slow(ws):
            await asyncio.sleep(30)

        start = asyncio.get_running_loop().time()
        with pytest.raises((asyncio.TimeoutError, TimeoutError)):
            await asyncio.wait_for(
                async_connect_websocket(
                    "127.0.0.1", port, backend=backend, reconnect=FAST, on_connect=slow, close_timeout=5, ping_interval=None
                ),
                0.3,
            )
        assert asyncio.get_running_loop().time() - start < 2
        peer = await asyncio.wait_for(peers.get(), TIMEOUT)
        assert await asyncio.wait_for(peer.reader.read(), TIMEOUT) == b""  # dropped: no close frame
