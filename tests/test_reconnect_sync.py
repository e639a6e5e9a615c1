"""Reconnection of the blocking client (SPEC.md "Reconnection"; kn_sock/sync/client.py),
mirroring test_reconnect_async.py against the blocking server."""

from __future__ import annotations

import threading
import time

import pytest

from kn_sock import ConnectionClosed, WebSocket, connect_websocket
from kn_sock.sync import WebSocketServer
from kn_sock.sync.client import ReconnectingWebSocket
from sync_support import running_server, wait_for

pytestmark = pytest.mark.timeout(30)

FAST = {"initial_delay": 0.01, "max_delay": 0.05}
TIMEOUT = 5.0


def echo(ws, address):
    for message in ws:
        ws.send(message)


def first_closes_with(code, counter):
    def handler(ws, address):
        counter.append(1)
        if len(counter) == 1:
            ws.send("first")
            if code is None:
                time.sleep(0.05)
                ws.abort()
            else:
                ws.close(code)
            return
        echo(ws, address)

    return handler


def test_first_connection_ending_during_on_connect_is_retried(backend):
    """A retryable close (1013 "try again later") that makes on_connect fail on the first
    connection is retried like one after it (audit: the connect raised)."""
    counter: list[int] = []

    def handler(ws, address):
        counter.append(1)
        if len(counter) == 1:
            ws.close(1013, "try again later")
            return
        echo(ws, address)

    calls: list[int] = []

    def on_connect(ws):
        calls.append(1)
        if len(calls) == 1:
            assert ws.recv(TIMEOUT) is None  # the first connection: closed with 1013
        ws.send("subscribe")  # ConnectionClosed the first time

    with running_server(handler, backend=backend) as server:
        ws = connect_websocket("127.0.0.1", server.port, backend=backend, reconnect=FAST, on_connect=on_connect)
        assert ws.recv(TIMEOUT) == "subscribe"
        assert ws.reconnects == 1 and len(counter) == 2
        ws.close()


def test_messages_received_before_a_reconnection_are_not_lost(backend):
    """Messages that arrived on a connection that then ended (and was replaced) are returned
    by recv(), in order, before the new connection's (audit: they were dropped)."""
    counter: list[int] = []

    def handler(ws, address):
        counter.append(1)
        n = len(counter)
        if n <= 2:  # two connections end with 1001, each after three messages
            for i in range(3):
                ws.send(f"c{n}-{i}")
            ws.close(1001)
            return
        ws.send("new")
        ws.wait_closed(TIMEOUT)

    with running_server(handler, backend=backend) as server:
        ws = connect_websocket("127.0.0.1", server.port, backend=backend, reconnect=FAST)
        assert wait_for(lambda: ws.reconnects == 2)  # the application was busy meanwhile
        got = [ws.recv(TIMEOUT) for _ in range(7)]
        assert got == ["c1-0", "c1-1", "c1-2", "c2-0", "c2-1", "c2-2", "new"]
        ws.close()
        assert ws.recv(TIMEOUT) is None


def test_reconnects_promptly_while_recv_is_polled(backend):
    """recv(timeout) called more often than the reactor's hold tick, on a connection that the
    server closed (1001): the server's EOF is still read and the client reconnects after its
    backoff, not after close_timeout (audit: 10 s)."""
    counter: list[int] = []
    with running_server(first_closes_with(1001, counter), backend=backend) as server:
        ws = connect_websocket("127.0.0.1", server.port, backend=backend, reconnect=FAST, close_timeout=8)
        assert ws.recv(TIMEOUT) == "first"
        t0 = time.monotonic()
        while not ws.reconnects and time.monotonic() - t0 < TIMEOUT:
            with pytest.raises(TimeoutError):
                ws.recv(0.002)
        assert ws.reconnects == 1 and time.monotonic() - t0 < 2.0
        ws.send("again")
        assert ws.recv(TIMEOUT) == "again"
        ws.close()


@pytest.mark.parametrize("code", [1001, 1011, 1012, None], ids=lambda c: str(c or 1006))
def test_reconnects_after_retryable_close(backend, code):
    counter: list[int] = []
    with running_server(first_closes_with(code, counter), backend=backend) as server:
        ws = connect_websocket("127.0.0.1", server.port, backend=backend, reconnect=FAST)
        assert isinstance(ws, ReconnectingWebSocket)
        assert ws.recv(TIMEOUT) == "first"
        assert wait_for(lambda: ws.reconnects == 1 and ws.connected)
        ws.send("again")
        assert ws.recv(TIMEOUT) == "again"
        assert len(counter) == 2 and ws.last_close_code == (code or 1006)
        ws.close()
        assert ws.closed and ws.recv(TIMEOUT) is None


@pytest.mark.parametrize("code", [1000, 1002, 1008, 1009])
def test_no_reconnect_after_normal_or_permanent_close(code):
    counter: list[int] = []
    with running_server(first_closes_with(code, counter)) as server:
        ws = connect_websocket("127.0.0.1", server.port, reconnect=FAST)
        assert ws.recv(TIMEOUT) == "first"
        assert ws.recv(TIMEOUT) is None
        assert ws.closed and ws.reconnects == 0 and ws.close_code == code
        with pytest.raises(ConnectionClosed):
            ws.send("late")
        time.sleep(0.1)
        assert len(counter) == 1


def test_no_reconnect_after_client_close_and_plain_type_without_reconnect():
    counter: list[int] = []

    def handler(ws, address):
        counter.append(1)
        echo(ws, address)

    with running_server(handler) as server:
        with connect_websocket("127.0.0.1", server.port, reconnect=FAST) as ws:
            ws.send("x")
            assert ws.recv(TIMEOUT) == "x"
        assert ws.closed and ws.close_code == 1000 and ws.recv(TIMEOUT) is None
        time.sleep(0.1)
        assert len(counter) == 1
        plain = connect_websocket("127.0.0.1", server.port)
        assert type(plain) is WebSocket
        plain.close()


def test_no_reconnect_after_client_abort():
    """abort() is the client's own doing, like close(): closed for good, recv() gives None."""
    counter: list[int] = []

    def handler(ws, address):
        counter.append(1)
        echo(ws, address)

    with running_server(handler) as server:
        ws = connect_websocket("127.0.0.1", server.port, reconnect=FAST)
        ws.send("x")
        assert ws.recv(TIMEOUT) == "x"
        blocked: list[object] = []
        reader = threading.Thread(target=lambda: blocked.append(ws.recv(TIMEOUT)))
        reader.start()
        ws.abort()
        reader.join(TIMEOUT)
        assert blocked == [None]  # a recv() waiting at the time returns None too
        assert ws.closed and not ws.connected and ws.recv(TIMEOUT) is None
        with pytest.raises(ConnectionClosed):
            ws.send("late")
        time.sleep(0.2)  # several backoff windows of FAST
        assert len(counter) == 1 and ws.reconnects == 0
        ws.close()  # still allowed, does nothing more
        assert ws.wait_closed(0)


def test_abort_during_backoff_stops_the_reconnection():
    counter: list[int] = []

    def handler(ws, address):
        counter.append(1)
        ws.close(1012)  # service restart: worth a retry

    with running_server(handler) as server:
        ws = connect_websocket("127.0.0.1", server.port, reconnect={"initial_delay": 0.3, "jitter": None})
        assert wait_for(lambda: not ws.connected)
        start = time.monotonic()
        ws.abort()
        assert ws.closed and ws.recv(TIMEOUT) is None
        assert time.monotonic() - start < 0.25  # did not sit out the backoff
        time.sleep(0.5)  # past the retry that was due
        assert len(counter) == 1 and ws.reconnects == 0


def test_server_restart_same_port_every_message_once_in_order():
    """Stop the server at message STOP (nothing in flight), keep sending while it is down
    (queued), restart it on the same port: the server gets 0..N-1 once each, in order."""
    n, stop = 300, 100
    got: list[int] = []

    def handler(ws, address):
        for message in ws:
            got.append(int(message))

    server = WebSocketServer("127.0.0.1", 0, handler)
    port = server.port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    ws = connect_websocket("127.0.0.1", port, reconnect=FAST, open_timeout=2)
    restarted: list[WebSocketServer] = []
    try:
        for i in range(n):
            if i == stop:
                server.shutdown()
                thread.join(TIMEOUT)
                assert wait_for(lambda: not ws.connected)
            if i == stop + 50:
                assert ws.pending == 50
                server = WebSocketServer("127.0.0.1", port, handler)
                restarted.append(server)
                thread = threading.Thread(target=server.serve_forever, daemon=True)
                thread.start()
            ws.send(str(i))
            time.sleep(0.001 if i < stop else 0.002)
        assert wait_for(lambda: len(got) >= n, TIMEOUT)
        time.sleep(0.05)
        assert got == list(range(n))
        assert ws.reconnects == 1 and ws.last_close_code == 1001
        ws.close()
    finally:
        server.shutdown()
        thread.join(TIMEOUT)


def test_max_pending_overflow_raises():
    with running_server(echo) as server:
        ws = connect_websocket("127.0.0.1", server.port, reconnect={"initial_delay": 0.05, "max_delay": 0.05},
                               max_pending=3)
    assert wait_for(lambda: not ws.connected)
    for i in range(3):
        ws.send(str(i))
    with pytest.raises(ConnectionClosed):
        ws.send("overflow")
    ws.close()
    assert ws.closed


def test_iteration_continues_and_on_connect_runs_each_time():
    counter: list[int] = []
    seen: list[str] = []

    def handler(ws, address):
        counter.append(1)
        seen.append(ws.recv(TIMEOUT))  # what on_connect sent
        ws.send(f"hello {len(counter)}")
        ws.close(1012 if len(counter) < 3 else 1000)

    calls: list[WebSocket] = []

    def on_connect(conn):
        calls.append(conn)
        conn.send(f"subscribe {len(calls)}")

    with running_server(handler) as server:
        ws = connect_websocket("127.0.0.1", server.port, reconnect=FAST, on_connect=on_connect)
        assert list(ws) == ["hello 1", "hello 2", "hello 3"]
        assert seen == ["subscribe 1", "subscribe 2", "subscribe 3"]
        assert ws.reconnects == 2 and len(calls) == 3 and ws.closed


def test_on_connect_reads_the_new_connections_first_message_not_the_application(backend):
    """On a reconnection on_connect runs while the application is already blocked in recv():
    the new connection's first message (the answer to on_connect's re-subscription) is
    on_connect's; the application gets what follows (it could get either)."""
    counter: list[int] = []

    def handler(ws, address):
        counter.append(1)
        assert ws.recv(TIMEOUT) == "auth"
        ws.send(f"welcome {len(counter)}")
        ws.send(f"data {len(counter)}")
        if len(counter) == 1:
            ws.close(1012)
            return
        echo(ws, address)

    answers: list[str] = []

    def on_connect(conn):
        conn.send("auth")
        answers.append(conn.recv(TIMEOUT))

    with running_server(handler, backend=backend) as server:
        ws = connect_websocket("127.0.0.1", server.port, backend=backend, reconnect=FAST, on_connect=on_connect)
        for _ in range(2):  # the application stays in recv() across the reconnection
            assert ws.recv(TIMEOUT) == f"data {len(answers)}"
        assert answers == ["welcome 1", "welcome 2"] and ws.reconnects == 1
        ws.close()


def test_on_connect_may_read_through_the_reconnecting_client_itself(backend):
    """on_connect calling the reconnecting client's own recv() (not the connection it was
    given) reads the new connection's first message, no self-deadlock (audit)."""
    counter: list[int] = []

    def handler(ws, address):
        counter.append(1)
        ws.send(f"welcome {len(counter)}")
        if len(counter) == 1:
            ws.close(1012)
            return
        echo(ws, address)

    answers: list = []
    holder: list = []

    def on_connect(conn):
        if holder:  # a reconnection: the client exists
            answers.append(holder[0].recv(TIMEOUT))

    with running_server(handler, backend=backend) as server:
        ws = connect_websocket("127.0.0.1", server.port, backend=backend, reconnect=FAST, on_connect=on_connect)
        holder.append(ws)
        assert ws.recv(TIMEOUT) == "welcome 1"
        wait_for(lambda: answers)
        assert answers == ["welcome 2"] and ws.reconnects == 1
        ws.send("echo")
        assert ws.recv(TIMEOUT) == "echo"
        ws.close()


def test_initial_connection_retried_then_bounded():
    probe = WebSocketServer("127.0.0.1", 0, echo)
    port = probe.port
    probe.socket.close()
    with pytest.raises(OSError):
        connect_websocket("127.0.0.1", port, reconnect={"initial_delay": 0.01, "max_attempts": 2})
    with pytest.raises((OSError, TimeoutError)):
        connect_websocket("127.0.0.1", port, reconnect=FAST, open_timeout=0.2)
    holder: list[WebSocketServer] = []

    def later():
        time.sleep(0.2)
        s = WebSocketServer("127.0.0.1", port, echo)
        holder.append(s)
        s.serve_forever()

    t = threading.Thread(target=later, daemon=True)
    t.start()
    ws = connect_websocket("127.0.0.1", port, reconnect=FAST, open_timeout=3)
    ws.send("up")
    assert ws.recv(TIMEOUT) == "up"
    ws.close()
    holder[0].shutdown()
    t.join(TIMEOUT)


def test_ack_mode_manual():
    seen: list[list[str]] = []

    def handler(ws, address):
        mine: list[str] = []
        seen.append(mine)
        for message in ws:
            mine.append(message)
            if len(seen) == 1 and len(mine) == 2:
                ws.abort()
                return
            ws.send("ack")

    with running_server(handler) as server:
        ws = connect_websocket("127.0.0.1", server.port, reconnect=FAST, ack=True)
        ws.send("a")
        assert ws.recv(TIMEOUT) == "ack"
        assert ws.pending == 1 and ws.ack() == 1 and ws.pending == 0
        ws.send("b")
        assert ws.recv(TIMEOUT) == "ack"  # "b" re-sent on the second connection
        ws.ack()
        assert seen[0] == ["a", "b"] and seen[1] == ["b"]
        ws.close()
