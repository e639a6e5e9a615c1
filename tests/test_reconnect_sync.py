"""Reconnection of the blocking client (SPEC.md "Reconnection"; kn_sock/sync/client.py),
mirroring test_reconnect_async.py against the blocking server."""

from __future__ import annotations

import mmap
import socket
import threading
import time
from typing import Callable

import pytest

from kn_sock import ConnectionClosed, WebSocket, _pure, connect_websocket
from kn_sock.http11 import accept_key
from kn_sock.sync import WebSocketServer
from kn_sock.sync.client import ReconnectingWebSocket
from sync_support import echo, raw_server, running_server, wait_for

pytestmark = pytest.mark.timeout(30)

FAST = {"initial_delay": 0.01, "max_delay": 0.05}
TIMEOUT = 5.0


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


def test_a_reconnection_between_recv_s_reads_keeps_the_order(backend):
    """recv() looks at the ended connections' messages, then at the current connection: a
    reconnection in between (the supervisor thread's, forced here at that point) made the new
    connection's first message overtake the old one's unread ones (audit)."""
    from collections import deque

    counter: list[int] = []
    drop = threading.Event()

    def handler(ws, address):
        counter.append(1)
        if len(counter) == 1:
            ws.send("old1")
            ws.send("old2")
            drop.wait(TIMEOUT)
            ws.close(1012)
            return
        ws.send("new1")
        ws.wait_closed(TIMEOUT)

    with running_server(handler, backend=backend) as server:
        ws = connect_websocket("127.0.0.1", server.port, backend=backend, reconnect=FAST, compression=None)
        assert wait_for(lambda: len(ws._ws._messages) == 2)
        app = threading.current_thread()

        class SwitchedHere(deque):  # the application thread loses the GIL right after this test
            armed = True

            def __bool__(self) -> bool:
                value = len(self) > 0
                if threading.current_thread() is app and SwitchedHere.armed:
                    SwitchedHere.armed = False
                    drop.set()
                    wait_for(lambda: ws.reconnects == 1 and ws._ws._messages)
                return value

        ws._ended = SwitchedHere(ws._ended)
        assert [ws.recv(TIMEOUT), ws.recv(TIMEOUT), ws.recv(TIMEOUT)] == ["old1", "old2", "new1"]
        ws.close()


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


@pytest.mark.parametrize("how", ["close 1001", "close 1011", "abort"])
def test_no_reconnect_after_the_application_ends_the_current_connection(backend, how, caplog):
    """Closing (with any code) or aborting ``ws.connection`` itself is a close the client
    started too (SPEC.md "Reconnection"): no reconnection (audit: 1001 / 1011 reconnected)."""
    caplog.set_level("INFO", logger="kn_sock")
    counter: list[int] = []

    def handler(ws, address):
        counter.append(1)
        echo(ws, address)

    with running_server(handler, backend=backend) as server:
        ws = connect_websocket("127.0.0.1", server.port, backend=backend, reconnect=FAST)
        ws.send("x")
        assert ws.recv(TIMEOUT) == "x"
        if how == "abort":
            ws.connection.abort()
        else:
            ws.connection.close(int(how.split()[1]))
        assert ws.recv(TIMEOUT) is None  # no reconnection will follow
        assert ws.closed and not ws.connected and ws.reconnects == 0
        with pytest.raises(ConnectionClosed):
            ws.send("late")
        time.sleep(0.2)  # several backoff windows of FAST
        assert len(counter) == 1
    assert "by the application: not reconnecting" in caplog.text


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
    assert ws.closed and ws.pending == 0  # close() drops them (audit: they stayed counted)


def test_messages_dropped_for_good_are_no_longer_pending(caplog):
    """Given up with messages queued: logged, and ``pending`` is 0 (audit: it kept counting them)."""
    with running_server(echo) as server:
        ws = connect_websocket(
            "127.0.0.1", server.port, reconnect={"initial_delay": 0.3, "max_attempts": 1, "jitter": None}
        )
    assert wait_for(lambda: not ws.connected)
    for i in range(3):
        ws.send(str(i))
    assert ws.pending == 3
    assert ws.recv(TIMEOUT) is None  # the one attempt is refused: closed for good
    assert ws.closed and ws.pending == 0
    assert "3 queued messages" in caplog.text and "dropped: closed for good" in caplog.text


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
    probe.shutdown()  # (a free port, nothing listening on it)
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


# --------------------------------------------------------------------------- audit: raw peers


def _upgrade(conn: socket.socket) -> bytes:
    """Answer a client's upgrade request by hand; return what followed it."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(4096)
        if not chunk:
            raise ConnectionError("no request")
        head += chunk
    head, _, rest = head.partition(b"\r\n\r\n")
    key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n") if line.lower().startswith(b"sec-websocket-key:"))
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: " + accept_key(key.decode()).encode() + b"\r\n\r\n")
    return rest


def _read_texts(conn: socket.socket, buf: bytes, until: Callable[[list[str]], bool]) -> list[str]:
    """Small masked frames' payloads as text until ``until(got)``."""
    got: list[str] = []
    conn.settimeout(TIMEOUT)
    while not until(got):
        while len(buf) < 2 or len(buf) < 6 + (buf[1] & 0x7F):
            chunk = conn.recv(4096)
            if not chunk:
                return got
            buf += chunk
        n = buf[1] & 0x7F
        got.append(_pure.apply_mask(buf[6 : 6 + n], buf[2:6]).decode())
        buf = buf[6 + n :]
    return got


def _read_to_eof(conn: socket.socket, eof: threading.Event) -> None:
    """Read and drop until the peer closes (then set ``eof``); close ``conn``."""
    conn.settimeout(TIMEOUT)
    try:
        while conn.recv(4096):
            pass
        eof.set()
    finally:
        conn.close()


def test_a_send_waiting_behind_a_fragmented_send_goes_out_after_the_reconnection(backend):
    """A thread's send() waits behind another thread's fragmented message when the connection
    drops; by the time it learns it, the client has reconnected and flushed its queue. The
    message goes out on the new connection, and so do the next ones (audit: it was queued
    after the flush, and every later send() queued behind it while connected)."""
    listener = socket.create_server(("127.0.0.1", 0))
    second_got: list[str] = []
    part1 = threading.Event()

    def serve() -> None:
        first, _ = listener.accept()
        with first:
            _read_texts(first, _upgrade(first), lambda got: got == ["part1"])
            part1.set()
            time.sleep(0.1)  # let the other sender start waiting
        second, _ = listener.accept()
        with second:
            second_got.extend(_read_texts(second, _upgrade(second), lambda got: len(got) == 3))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ws = connect_websocket("127.0.0.1", listener.getsockname()[1], backend=backend, reconnect=FAST,
                           ping_interval=None, compression=None, max_pending=4)
    go_on = threading.Event()

    def slow_fragments():
        yield "part1"
        yield "part2"  # part1 goes out once the next one is known
        go_on.wait(TIMEOUT)
        yield "part3"

    streaming = threading.Thread(target=lambda: ws.send(slow_fragments()), daemon=True)
    streaming.start()
    assert part1.wait(TIMEOUT)
    waiting = threading.Thread(target=lambda: ws.send("important"), daemon=True)
    waiting.start()
    assert wait_for(lambda: ws.reconnects == 1 and ws.connected)
    go_on.set()
    streaming.join(TIMEOUT)
    waiting.join(TIMEOUT)
    ws.send("after0")
    ws.send("after1")
    thread.join(TIMEOUT)
    assert second_got == ["important", "after0", "after1"]
    assert ws.pending == 0
    ws.close()
    listener.close()


def test_close_cuts_a_reconnection_attempt_short(backend):
    """close() while an attempt waits for the server's handshake answer: the attempt ends at
    once, no handshake completes after close() (audit: it went on until open_timeout)."""
    listener = socket.create_server(("127.0.0.1", 0))
    second_eof = threading.Event()

    def serve() -> None:
        first, _ = listener.accept()
        _upgrade(first)
        first.close()  # drop: the client reconnects
        second, _ = listener.accept()  # ... and waits for an answer that never comes
        _read_to_eof(second, second_eof)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ws = connect_websocket("127.0.0.1", listener.getsockname()[1], backend=backend, reconnect=FAST,
                           ping_interval=None, open_timeout=TIMEOUT)
    assert wait_for(lambda: ws._attempt is not None and ws._attempt.sock is not None)
    start = time.monotonic()
    ws.close()
    assert second_eof.wait(1) and time.monotonic() - start < 1
    assert ws._thread is not None
    ws._thread.join(1)
    assert not ws._thread.is_alive()
    listener.close()


def test_on_connect_failing_on_a_reconnection_retries_without_flushing(backend, caplog):
    """on_connect raising on a reconnection (a failed re-login) closes that connection with
    1011 and reconnects with backoff; the queue waits for a connection whose on_connect
    succeeded (audit: it was flushed on the failed session)."""
    calls: list[int] = []
    received: list[list[str]] = []

    def handler(ws, address):
        mine: list[str] = []
        received.append(mine)
        if len(received) == 1:
            ws.close(1012)  # service restart: reconnect
            return
        for message in ws:
            mine.append(message)

    def on_connect(conn):
        calls.append(1)
        if len(calls) == 2:
            raise PermissionError("login rejected")
        conn.send(f"login{len(calls)}")

    with running_server(handler, backend=backend) as server:
        ws = connect_websocket("127.0.0.1", server.port, backend=backend, reconnect=FAST,
                               on_connect=on_connect, ping_interval=None)
        assert wait_for(lambda: len(calls) >= 2)  # the first connection is gone: queued or on the third
        ws.send("queued")
        assert wait_for(lambda: len(received) == 3 and received[2] == ["login3", "queued"])
        assert received[1] == []  # the failed session got nothing
        assert ws.reconnects == 1  # successful reconnections only
        assert "login rejected" in caplog.text
        ws.close()


def test_a_permanent_close_during_on_connect_ends_the_client(backend):
    """The server refuses a reconnected session for good (1008) while on_connect runs: its
    ConnectionClosed is not an on_connect failure to retry, the close code decides (regression
    audit: reconnected for ever)."""
    count: list[int] = []
    calls: list[int] = []

    def handler(ws, address):
        count.append(1)
        ws.close(1012 if len(count) == 1 else 1008)

    def on_connect(conn):
        calls.append(1)
        if len(calls) > 1:  # the reconnection: the server's 1008 comes
            conn.wait_closed(TIMEOUT)
        conn.send("login")

    with running_server(handler, backend=backend) as server:
        ws = connect_websocket("127.0.0.1", server.port, backend=backend, reconnect=FAST, on_connect=on_connect,
                               ping_interval=None)
        assert ws.wait_closed(TIMEOUT)
        assert len(count) == 2 and ws.last_close_code == 1008 and ws.reconnects == 0
        ws.close()


def test_send_while_connected_checks_the_type(backend):
    """dict / mmap while connected: TypeError, as while disconnected (audit: the dict's keys
    went out as a text message, the mmap as 1-byte fragments)."""
    with running_server(echo, backend=backend) as server:
        ws = connect_websocket("127.0.0.1", server.port, backend=backend, reconnect=FAST, ping_interval=None)
        for bad in ({"a": 1}, mmap.mmap(-1, 2)):
            with pytest.raises(TypeError):
                ws.send(bad)
        ws.send("fine")
        assert ws.recv(TIMEOUT) == "fine"
        ws.close()


def test_close_cuts_a_tls_reconnection_attempt_short(tmp_path):
    """As above, during the attempt's TLS handshake (wrap_socket detached the TCP socket the
    attempt had registered: the cancel missed it)."""
    from asyncio_support import make_tls_contexts

    server_ctx, client_ctx = make_tls_contexts(tmp_path)
    listener = socket.create_server(("127.0.0.1", 0))
    second_eof = threading.Event()

    def serve() -> None:
        first, _ = listener.accept()
        tls = server_ctx.wrap_socket(first, server_side=True)
        _upgrade(tls)
        tls.close()  # drop: the client reconnects
        second, _ = listener.accept()  # ... and never answers its TLS handshake
        _read_to_eof(second, second_eof)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ws = connect_websocket(f"wss://127.0.0.1:{listener.getsockname()[1]}/", ssl=client_ctx, reconnect=FAST,
                           ping_interval=None, open_timeout=TIMEOUT)
    assert wait_for(lambda: ws._attempt is not None and ws._attempt.sock is not None)
    ws.close()
    assert second_eof.wait(1)
    assert ws._thread is not None
    ws._thread.join(1)
    assert not ws._thread.is_alive()
    listener.close()


def test_first_on_connect_failing_with_another_connections_closed_error_raises(backend):
    """on_connect's ConnectionClosed comes from another, closed connection while the new one
    is open: an on_connect failure, raised by the connect call (audit: a zombie client)."""
    with running_server(echo, backend=backend) as server:
        dead = connect_websocket("127.0.0.1", server.port, backend=backend)
        dead.close()

        def on_connect(conn):
            dead.send("subscribe")

        start = time.monotonic()
        with pytest.raises(ConnectionClosed):
            connect_websocket("127.0.0.1", server.port, backend=backend, reconnect=FAST, on_connect=on_connect)
        assert time.monotonic() - start < 2


def test_a_server_holding_tcp_open_after_its_close_delays_neither_reconnection_nor_the_end(backend):
    """The server's close frame ends the connection for the decision: a server that then
    keeps TCP open delayed the reconnection (1011) and recv()'s None (1000) by close_timeout."""
    peers = []
    with raw_server() as srv:

        def serve():
            first = srv.accept_ws()
            peers.append(first)
            first.send_frame(8, (1011).to_bytes(2, "big"))  # then holds TCP open
            second = srv.accept_ws()
            peers.append(second)
            second.send_frame(1, b"second")
            second.send_frame(8, (1000).to_bytes(2, "big"))  # likewise

        threading.Thread(target=serve, daemon=True).start()
        ws = connect_websocket("127.0.0.1", srv.port, backend=backend, reconnect=FAST, close_timeout=8, ping_interval=None)
        try:
            start = time.monotonic()
            assert ws.recv(TIMEOUT) == "second"
            assert ws.recv(TIMEOUT) is None
            assert time.monotonic() - start < 3  # not close_timeout (8 s) per connection
            assert ws.reconnects == 1 and ws.last_close_code == 1000
        finally:
            for peer in peers:
                peer.close()
        assert ws.wait_closed(TIMEOUT)  # the last connection's TCP, now the server let go
