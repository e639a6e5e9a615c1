"""The blocking server: handshake bounds, handler threads, shutdown, hooks, transports."""

from __future__ import annotations

import errno
import logging
import os
import queue
import shutil
import signal
import socket
import sys
import ssl
import subprocess
import threading
import time

import pytest
from typing import Any

import kn_sock.sync.server as server_module
from kn_sock.exceptions import ConnectionClosedError, InvalidStatus
from kn_sock.handshake import ServerHandshake
from kn_sock.sync import WebSocketServer, connect_websocket, start_websocket_server
from sync_support import bio_tls_client, echo, free_port, raw_client, read_to_eof, resolving, running_server, wait_for

pytestmark = pytest.mark.timeout(30)


# ---------------------------------------------------------------- the documented example


SERVER_EXAMPLE = '''
import threading
from kn_sock import start_websocket_server
def handle_websocket_client(client_socket, address):
    print(f"New WebSocket connection from {address}")
    while True:
        message = client_socket.recv()
        if message:
            print(f"Received: {message}")
            client_socket.send(f"Echo: {message}")
        else:
            break
shutdown_event = threading.Event()
start_websocket_server("localhost", 8765, handle_websocket_client, shutdown_event)
'''

CLIENT_EXAMPLE = '''
from kn_sock import connect_websocket
ws = connect_websocket("localhost", 8765)
ws.send("Hello WebSocket!")
print(ws.recv())
ws.close()
'''


def test_documented_examples_verbatim(capsys):
    port = free_port()
    namespace: dict = {}
    server = threading.Thread(target=exec, args=(SERVER_EXAMPLE.replace("8765", str(port)), namespace), daemon=True)
    server.start()
    assert wait_for(lambda: "shutdown_event" in namespace)

    def can_connect():
        try:
            socket.create_connection(("localhost", port), timeout=1).close()
            return True
        except OSError:
            return False

    assert wait_for(can_connect)
    client_ns: dict = {}
    exec(CLIENT_EXAMPLE.replace("8765", str(port)), client_ns)
    assert client_ns["ws"].closed
    start = time.monotonic()
    namespace["shutdown_event"].set()
    server.join(2)
    assert not server.is_alive()
    assert time.monotonic() - start < 0.5
    out = capsys.readouterr().out
    assert "Echo: Hello WebSocket!" in out
    assert "New WebSocket connection from" in out
    assert "Received: Hello WebSocket!" in out


# ---------------------------------------------------------------- shutdown


def test_shutdown_event_returns_within_half_a_second_with_1001(backend):
    port = free_port()
    event = threading.Event()
    handlers = []
    server = _serve_in_thread(port, lambda ws, a: (handlers.append(ws), echo(ws, a)), event, backend=backend)
    clients = [wait_for(lambda: _try_connect(port, backend=backend)) for _ in range(5)]
    for ws in clients:
        ws.send("ping")
        assert ws.recv(5) == "ping"
    assert _seconds_to_stop(server, event) < 0.5
    for ws in clients:
        assert ws.recv(5) is None
        assert ws.close_code == 1001


def test_shutdown_returns_after_the_handlers_ends_have_run(backend):
    """What a handler does after its connection closed (a log line, clean-up) has run when
    the server returns (audit: ``kn-sock serve --sync`` lost its last "closed" log lines)."""
    port = free_port()
    event = threading.Event()
    ended = []

    def handler(ws, address):
        for msg in ws:
            ws.send(msg)
        time.sleep(0.05)  # the handler's own clean-up, after the close
        ended.append(ws.close_code)

    server = _serve_in_thread(port, handler, event, backend=backend)
    clients = [wait_for(lambda: _try_connect(port, backend=backend)) for _ in range(3)]
    for ws in clients:
        ws.send("x")
        assert ws.recv(5) == "x"
    assert _seconds_to_stop(server, event) < 0.5
    assert ended == [1001, 1001, 1001]


def test_a_handler_shutting_its_server_down_is_not_waited_for(backend):
    """shutdown() called from a handler: the server does not wait for that handler to end
    (it is inside shutdown() itself), so it returns well before the grace."""
    port = free_port()
    box = {}
    done = threading.Event()

    def handler(ws, address):
        ws.recv(5)
        t0 = time.monotonic()
        box["server"].shutdown()
        box["took"] = time.monotonic() - t0
        done.set()

    # A long grace: were the handler waited for, shutdown() would take it (~2 s) in all.
    with WebSocketServer("127.0.0.1", port, handler, backend=backend, shutdown_grace=2.0) as server:
        box["server"] = server
        serving = threading.Thread(target=server.serve_forever, daemon=True)
        serving.start()
        ws = connect_websocket("127.0.0.1", port, backend=backend)
        ws.send("stop")
        assert done.wait(5)
        serving.join(5)
        assert not serving.is_alive()
        assert ws.recv(5) is None and ws.close_code == 1001
    assert box["took"] < 1.0


def test_shutdown_event_returns_within_half_a_second_with_many_silent_peers(backend):
    """1,500 peers that never answer the 1001: dropping them wakes as many handler threads,
    which compete for the GIL; the grace leaves time for that (audit: 0.57-0.72 s)."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    n = min(1500, (soft - 200) // 2)
    if n < 500:
        pytest.skip(f"open file limit {soft} too low for this test")
    port = free_port()
    event = threading.Event()
    server = _serve_in_thread(port, echo, event, backend=backend, ping_interval=None)
    wait_for(lambda: _try_connect(port, backend=backend, ping_interval=None))  # listening
    peers = []
    try:
        for _ in range(n):
            peers.append(raw_client(port))  # handshake done; never reads nor answers
        assert _seconds_to_stop(server, event) < 0.5
        # Dropped: each peer reads our 1001 close frame, then the end of the stream (the
        # last wake-ups may finish just after the return; each read is bounded by 5 s).
        for peer in peers:
            assert read_to_eof(peer.sock).startswith(b"\x88\x02\x03\xe9")  # close 1001
    finally:
        for peer in peers:
            peer.close()


def test_a_shutdown_with_no_thread_to_be_had_wakes_the_dropped_handlers_itself(backend, monkeypatch):
    """The wake-ups of dropped connections' handler threads run in a thread of their own;
    when none can start, the shutdown does them itself: still in time, every peer dropped."""
    import types

    STARTS: list[str] = []

    class NoThread(threading.Thread):
        def start(self) -> None:
            STARTS.append(self.name)
            raise RuntimeError("can't start new thread")

    port = free_port()
    event = threading.Event()
    handlers: list[Any] = []
    server = _serve_in_thread(port, lambda ws, a: (handlers.append(ws), echo(ws, a)), event, backend=backend, ping_interval=None)
    wait_for(lambda: _try_connect(port, backend=backend, ping_interval=None))  # listening
    peers = [raw_client(port) for _ in range(3)]  # never answer the 1001: dropped
    try:
        # Their handler threads blocked reading (the case that needs a wake-up).
        assert wait_for(lambda: len(handlers) == 4 and all(ws._read_lock.locked() for ws in handlers))
        monkeypatch.setattr(server_module, "threading", types.SimpleNamespace(**{**vars(threading), "Thread": NoThread}))
        assert _seconds_to_stop(server, event) < 0.5
        assert STARTS == ["kn_sock-shutdown-wake"]
        for peer in peers:
            assert read_to_eof(peer.sock).startswith(b"\x88\x02\x03\xe9")  # close 1001, then the end
    finally:
        for peer in peers:
            peer.close()


def test_accept_failures_are_logged_once_a_run(backend, caplog):
    """Out of descriptors (EMFILE), accept() fails until some are freed: one error line for
    the run of failures and one when accepting works again, not ten lines a second (audit)."""
    with WebSocketServer("127.0.0.1", 0, echo, backend=backend) as server:
        real = server.sockets[0]
        real.setblocking(False)

        class Exhausted:
            failures = 3

            def accept(self):
                if self.failures:
                    self.failures -= 1
                    raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
                return real.accept()

        listener = Exhausted()
        with caplog.at_level(logging.DEBUG, logger="kn_sock"):
            for _ in range(3):
                server._accept_all(listener)
            with connect_websocket_later(server.port, backend) as result:
                assert wait_for(lambda: server._accept_all(listener) or not result.empty(), 5)
            assert result.get(timeout=5) == "still serving"
        lines = [(r.levelno, r.getMessage()) for r in caplog.records if "accept" in r.getMessage()]
        assert lines == [
            (logging.ERROR, "accept() failed: [Errno 24] Too many open files (retrying every 0.1 s)"),
            (logging.WARNING, "accepting again after 3 failed accept() calls"),
        ]


class connect_websocket_later:
    """A client connecting (and echoing one message) in a thread, while the test accepts."""

    def __init__(self, port, backend):
        self.port, self.backend = port, backend
        self.result = queue.Queue()

    def _run(self):
        try:
            with connect_websocket("127.0.0.1", self.port, backend=self.backend) as ws:
                ws.send("still serving")
                self.result.put(ws.recv(5))
        except Exception as exc:  # reported by the test
            self.result.put(exc)

    def __enter__(self):
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self.result

    def __exit__(self, *exc):
        self.thread.join(5)


def _serve_in_thread(port, handler, event, **options):
    """start_websocket_server(..., shutdown_event=event) in a daemon thread, started."""
    server = threading.Thread(
        target=start_websocket_server,
        args=("127.0.0.1", port, handler),
        kwargs={"shutdown_event": event, **options},
        daemon=True,
    )
    server.start()
    return server


def _seconds_to_stop(server, event):
    """Set ``event``; how long the server thread took to return (it must have)."""
    start = time.monotonic()
    event.set()
    server.join(5)
    assert not server.is_alive()
    return time.monotonic() - start


def _try_connect(port, **options):
    try:
        return connect_websocket("127.0.0.1", port, **options)
    except OSError:
        return None


def test_shutdown_drops_peers_that_do_not_finish_the_closing_handshake(backend):
    with running_server(echo, backend=backend) as server:
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        from kn_sock.handshake import ClientHandshake
        from kn_sock.uri import parse_uri

        hs = ClientHandshake(parse_uri("127.0.0.1", server.port))
        raw.sendall(hs.data_to_send())
        while hs.receive_data(raw.recv(4096)) is None:
            pass
        assert wait_for(lambda: len(server.connections) == 1)
        start = time.monotonic()
        port = server.port
        server.shutdown()
        assert time.monotonic() - start < 0.5
        assert server.port == port  # still known once shut down
    data = read_to_eof(raw)
    assert data[:4] == b"\x88\x02\x03\xe9"  # close frame, 1001
    raw.close()


@pytest.mark.parametrize("port", [99999, 65536, -1, "99999"])
def test_server_rejects_a_port_out_of_range(port):
    # getaddrinfo() takes 99999 modulo 65536: the server bound 34463 without a word (audit).
    with pytest.raises(ValueError, match="out of range"):
        WebSocketServer("127.0.0.1", port, echo)


def test_server_port_as_digits():
    with WebSocketServer("127.0.0.1", "0", echo) as server:
        assert server.port > 0


def test_shutdown_answers_503_to_a_handshake_in_progress(backend):
    """A client still sending its upgrade request when the server shuts down gets HTTP 503
    (as from the asyncio server and websockets), not a bare reset, within the 0.5 s bound."""
    with running_server(echo, backend=backend) as server:
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        raw.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # incomplete
        assert wait_for(lambda: len(server._pending) == 1)
        start = time.monotonic()
        server.shutdown()
        assert time.monotonic() - start < 0.5
    data = read_to_eof(raw)
    assert data.startswith(b"HTTP/1.1 503 "), data
    raw.close()


def test_shutdown_hands_the_gil_over_quickly_then_restores_the_switch_interval(backend, monkeypatch):
    """While shutdown() runs, the GIL changes hands every 0.1 ms (10 handlers busy in Python
    code made it wait 5 ms at every system call: 1 to 2.7 s to shut down, SPEC's bound being
    0.5 s; audit 54); the application's switch interval is back afterwards."""
    import sys

    seen = []
    ours: set = set()  # (other tests' connections may still be closing in their threads)
    real = server_module.WebSocket._start_close

    def recording(self, *args, **kwargs):
        if self in ours:
            seen.append(sys.getswitchinterval())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(server_module.WebSocket, "_start_close", recording)
    before = sys.getswitchinterval()
    with running_server(echo, backend=backend) as server:
        ws = connect_websocket("127.0.0.1", server.port, backend=backend)
        assert wait_for(lambda: server.connections)
        ours.update(server.connections)
    assert seen and seen[0] == pytest.approx(server_module._SHUTDOWN_SWITCH)
    assert sys.getswitchinterval() == before
    assert ws.recv(5) is None and ws.close_code == 1001


def test_the_quick_gil_handoff_keeps_an_interval_the_application_set_meanwhile():
    """Nested (concurrent shutdowns) restore once, at the end; an interval the application
    set during a shutdown stays (regression audit 56)."""
    import sys

    before = sys.getswitchinterval()
    try:
        with server_module._quick_gil_handoff():
            with server_module._quick_gil_handoff():
                assert sys.getswitchinterval() == pytest.approx(server_module._SHUTDOWN_SWITCH)
            assert sys.getswitchinterval() == pytest.approx(server_module._SHUTDOWN_SWITCH)
        assert sys.getswitchinterval() == before
        with server_module._quick_gil_handoff():
            sys.setswitchinterval(0.002)
        assert sys.getswitchinterval() == pytest.approx(0.002)
    finally:
        sys.setswitchinterval(before)


def test_shutdown_just_after_the_101_still_sends_1001(backend, monkeypatch):
    """The race of a shutdown with a connection whose 101 answer has just gone out: it
    must get its 1001 close (SPEC), not a bare end of TCP. Made deterministic by holding
    the server between sending the 101 and starting the connection while shutdown() runs."""
    answered, proceed = threading.Event(), threading.Event()
    real = server_module.WebSocket

    def held_after_the_101(*args, **kwargs):
        answered.set()
        proceed.wait(5)
        return real(*args, **kwargs)

    monkeypatch.setattr(server_module, "WebSocket", held_after_the_101)
    with running_server(echo, backend=backend, ping_interval=None) as server:
        peer = raw_client(server.port)  # has read the 101
        assert answered.wait(5)
        start = time.monotonic()
        server.shutdown()
        assert time.monotonic() - start < 0.5
        proceed.set()
        opcode, payload = peer.recv_frame()
        assert opcode == 8 and payload[:2] == (1001).to_bytes(2, "big")
        peer.send_frame(8, payload[:2])
        with pytest.raises(EOFError):
            peer.recv_frame()
        peer.close()


def test_shutdown_during_the_handshake_never_leaves_a_101_without_a_close(backend, monkeypatch):
    """A shutdown that starts before the 101 goes out: the client is answered 503 or dropped,
    and never upgraded (a 101 would then owe it a close frame)."""
    reached, proceed = threading.Event(), threading.Event()

    class HeldHandshake(ServerHandshake):
        def accept(self, request):
            reached.set()
            proceed.wait(5)
            return super().accept(request)

    monkeypatch.setattr(server_module, "ServerHandshake", HeldHandshake)
    with running_server(echo, backend=backend) as server:
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        from kn_sock.handshake import ClientHandshake
        from kn_sock.uri import parse_uri

        raw.sendall(ClientHandshake(parse_uri("127.0.0.1", server.port)).data_to_send())
        assert reached.wait(5)
        start = time.monotonic()
        server.shutdown()
        assert time.monotonic() - start < 0.5
        proceed.set()
        data = b""
        try:
            while chunk := raw.recv(4096):
                data += chunk
        except ConnectionResetError:
            pass
        raw.close()
        assert data == b"" or data.startswith(b"HTTP/1.1 503 ")


def test_shutdown_racing_fresh_connections_always_sends_1001(backend):
    """The same race without a hook, a few times: shutdown() right after connect_websocket()."""
    deadline = time.monotonic() + 10
    for _ in range(10):
        server = WebSocketServer("127.0.0.1", 0, echo, backend=backend, ping_interval=None)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        ws = connect_websocket("127.0.0.1", server.port, backend=backend, ping_interval=None)
        start = time.monotonic()
        server.shutdown()
        assert time.monotonic() - start < 0.5
        assert ws.recv(5) is None
        assert ws.close_code == 1001
        thread.join(5)
        assert time.monotonic() < deadline


def test_context_manager_and_port_zero():
    with WebSocketServer("127.0.0.1", 0, echo) as server:
        assert server.port > 0
        assert server.sockets[0].getsockname()[1] == server.port
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1)


# ---------------------------------------------------------------- opening handshake


def test_open_timeout_drops_silent_tcp_connection():
    with running_server(echo, open_timeout=0.3) as server:
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        start = time.monotonic()
        assert raw.recv(4096) == b""  # dropped without an answer
        assert 0.25 < time.monotonic() - start < 2
        raw.close()
        # The server still works.
        with connect_websocket("127.0.0.1", server.port) as ws:
            ws.send("ok")
            assert ws.recv(5) == "ok"


def test_open_timeout_drops_trickling_client():
    with running_server(echo, open_timeout=0.3) as server:
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        start = time.monotonic()
        with pytest.raises(OSError):
            for _ in range(100):
                raw.sendall(b"G")
                time.sleep(0.05)
        assert time.monotonic() - start < 2
        raw.close()


def http_answer(port: int, request: bytes) -> bytes:
    """Send ``request`` on a new connection and read the answer to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(request)
        return read_to_eof(raw)


def test_process_request_health_check():
    def process_request(path, headers):
        if path == "/health":
            return 200, [("Content-Type", "text/plain")], b"OK\n"
        if path == "/secret":
            return 401, {}, "no"
        return None

    with running_server(echo, process_request=process_request) as server:
        data = http_answer(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 200 ")
        assert data.endswith(b"\r\n\r\nOK\n")
        with pytest.raises(InvalidStatus) as info:
            connect_websocket(f"ws://127.0.0.1:{server.port}/secret")
        assert info.value.status == 401
        with connect_websocket(f"ws://127.0.0.1:{server.port}/chat") as ws:
            ws.send("upgraded")
            assert ws.recv(5) == "upgraded"


def test_process_request_raising_system_exit_is_500(caplog):
    """SystemExit in a hook only ends its thread: it is the hook's failure (500, logged), not a
    client left without an answer and a socket left open (audit)."""

    def hook(path, headers):
        sys.exit(3)

    with running_server(echo, process_request=hook) as server:
        data = http_answer(server.port, b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 500 ")
    assert "process_request failed" in caplog.text


def test_handler_raising_system_exit_closes_1011(caplog):
    """A handler's SystemExit ends only its thread: the connection is closed 1011 and the
    failure logged, as for any exception (it was left open)."""

    def handler(ws, address):
        ws.recv()
        sys.exit(3)

    with running_server(handler) as server:
        with connect_websocket(f"ws://127.0.0.1:{server.port}/") as ws:
            ws.send("go")
            assert ws.recv(5) is None
            assert ws.close_code == 1011
    assert "connection handler failed" in caplog.text


@pytest.mark.parametrize(
    "answer",
    [(101, [], b""), (200, []), (200, [("X", "a\r\nInjected: 1")], b""), (999, [], b"")],
    ids=["101", "pair", "crlf-in-header", "status-999"],
)
def test_process_request_bad_answer_is_500(answer, caplog):
    """A hook answer that cannot be sent is the hook's failure: 500, as the asyncio server."""
    with running_server(echo, process_request=lambda path, headers: answer) as server:
        data = http_answer(server.port, b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 500 ")
    assert "process_request failed" in caplog.text


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n" + bytes(300_000),
    ],
    ids=["oversized-head", "post-with-body"],
)
def test_refusal_with_unread_bytes_ends_without_a_reset(request_bytes):
    """The server half-closes after an HTTP refusal and drops what the client still sends until
    the client closes (closing with unread bytes would reset the connection)."""
    with running_server(echo) as server:
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        errors = []

        def send() -> None:
            try:
                for i in range(0, len(request_bytes), 1000):  # still sending after the answer
                    raw.sendall(request_bytes[i : i + 1000])
                    time.sleep(0.0005)
            except OSError as exc:
                errors.append(exc)

        sender = threading.Thread(target=send)
        sender.start()
        data = read_to_eof(raw, 65536)  # EOF from the half-close: no ECONNRESET
        sender.join(5)
        raw.close()
        assert data.startswith((b"HTTP/1.1 431 ", b"HTTP/1.1 405 "))
        assert errors == []  # the rest of the request was read (and dropped), not reset


def test_plain_get_gets_426_and_bad_origin_403():
    with running_server(echo, origins=["https://good.example"]) as server:
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert raw.recv(4096).startswith(b"HTTP/1.1 426 ")
        raw.close()
        with pytest.raises(InvalidStatus) as info:
            connect_websocket("127.0.0.1", server.port, origin="https://evil.example")
        assert info.value.status == 403
        with connect_websocket("127.0.0.1", server.port, origin="https://good.example") as ws:
            ws.send("hi")
            assert ws.recv(5) == "hi"


def test_subprotocol_negotiation(backend):
    chosen = queue.Queue()

    def handler(ws, address):
        chosen.put(ws.subprotocol)

    with running_server(handler, backend=backend, subprotocols=["chat", "superchat"]) as server:
        with connect_websocket("127.0.0.1", server.port, subprotocols=["superchat", "other"]) as ws:
            assert ws.subprotocol == "superchat"
            assert chosen.get(timeout=5) == "superchat"
        with connect_websocket("127.0.0.1", server.port, subprotocols=["other"]) as ws:
            assert ws.subprotocol is None
            assert chosen.get(timeout=5) is None


def test_compression_negotiated_by_default_and_off_with_none(backend):
    seen = queue.Queue()

    def handler(ws, address):
        seen.put(ws.extensions)
        echo(ws, address)

    with running_server(handler, backend=backend) as server:
        with connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            assert ws.extensions == ["permessage-deflate"]
            assert seen.get(timeout=5) == ["permessage-deflate"]
            ws.send("z" * 10000)
            assert ws.recv(5) == "z" * 10000
        with connect_websocket("127.0.0.1", server.port, backend=backend, compression=None) as ws:
            assert ws.extensions == []
            assert seen.get(timeout=5) == []
    with running_server(handler, backend=backend, compression=None) as server:
        with connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            assert ws.extensions == []
            assert seen.get(timeout=5) == []


def test_connection_attributes():
    seen = queue.Queue()

    def handler(ws, address):
        seen.put((ws.path, ws.remote_address, ws.local_address, ws.request_headers["Host"], address))

    with running_server(handler) as server:
        with connect_websocket(f"ws://127.0.0.1:{server.port}/chat?room=1", headers={"X-Test": "1"}) as ws:
            path, remote, local, host, address = seen.get(timeout=5)
            assert path == "/chat?room=1" and ws.path == "/chat?room=1"
            assert remote == ws.local_address == address
            assert local == ws.remote_address
            assert host == f"127.0.0.1:{server.port}"
            assert ws.request_headers["X-Test"] == "1"
            assert ws.response_headers["Upgrade"].lower() == "websocket"


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs SIGUSR1")
def test_shutdown_from_a_signal_handler_in_the_serving_thread():
    """docs/guide.md: "On SIGTERM close the server". A signal handler calling shutdown() runs
    in serve_forever's own thread: serve_forever returns (it hung: audit) and the client
    gets 1001."""
    server = WebSocketServer("127.0.0.1", 0, lambda ws, address: ws.recv())
    got: queue.Queue = queue.Queue()

    def client() -> None:
        ws = connect_websocket("127.0.0.1", server.port)
        got.put(ws.recv(5))
        got.put(ws.close_code)

    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: server.shutdown())
    try:
        threading.Thread(target=client, daemon=True).start()

        def signal_once_connected() -> None:
            wait_for(lambda: server.connections)  # (serve_forever, below, accepts it)
            os.kill(os.getpid(), signal.SIGUSR1)

        timer = threading.Thread(target=signal_once_connected)
        timer.start()
        start = time.monotonic()
        server.serve_forever()
        assert time.monotonic() - start < 3
        timer.join()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert got.get(timeout=5) is None and got.get(timeout=5) == 1001


def test_serve_forever_after_shutdown_returns_at_once():
    server = WebSocketServer("127.0.0.1", 0, lambda ws, address: None)
    server.shutdown()
    server.serve_forever()  # (raised OSError EBADF: audit)


def test_handler_with_one_argument():
    def handler(ws):
        ws.send("one-arg handler")

    with running_server(handler) as server:
        with connect_websocket("127.0.0.1", server.port) as ws:
            assert ws.recv(5) == "one-arg handler"


def test_one_thread_per_connection():
    release = threading.Event()
    with running_server(lambda ws, a: release.wait(10)) as server:
        before = threading.active_count()
        clients = [connect_websocket("127.0.0.1", server.port, compression=None) for _ in range(20)]
        assert wait_for(lambda: len(server.connections) == 20)
        # 20 handler threads and nothing else per connection (client sides add no thread).
        assert threading.active_count() - before == 20
        release.set()
        for ws in clients:
            assert ws.recv(5) is None


# ---------------------------------------------------------------- transports


def test_ipv6():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server = WebSocketServer("::1", 0, echo)
    except OSError as exc:
        pytest.skip(f"cannot bind ::1: {exc}")
    with server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        with connect_websocket(f"ws://[::1]:{server.port}/") as ws:
            ws.send("v6")
            assert ws.recv(5) == "v6"
            assert ws.remote_address[0] == "::1"


@pytest.mark.parametrize("host", [None, ""])
def test_all_interfaces_means_ipv4_and_ipv6(host):
    """host None / "" listens on every interface, IPv4 and (where there is IPv6) IPv6, one
    port, as the asyncio server does (audit: IPv4 only)."""
    with WebSocketServer(host, 0, echo) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        families = {s.family for s in server.sockets}
        assert socket.AF_INET in families
        assert {s.getsockname()[1] for s in server.sockets} == {server.port}
        with connect_websocket(f"ws://127.0.0.1:{server.port}/") as ws:
            ws.send("v4")
            assert ws.recv(5) == "v4"
            assert ws.remote_address[0] == "127.0.0.1"
        if socket.AF_INET6 not in families:
            pytest.skip("no IPv6 here")
        with connect_websocket(f"ws://[::1]:{server.port}/") as ws:
            ws.send("v6")
            assert ws.recv(5) == "v6"


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix sockets")
def test_unix_socket(tmp_path):
    path = str(tmp_path / "ws.sock")
    with running_server(echo, unix=path):
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
        with connect_websocket("ws://localhost/", sock=sock) as ws:
            ws.send("over unix")
            assert ws.recv(5) == "over unix"
    assert not os.path.exists(path)


def _ipv6_loopback() -> None:
    try:
        with socket.create_server(("::1", 0), family=socket.AF_INET6):
            pass
    except OSError as exc:
        pytest.skip(f"cannot bind ::1: {exc}")


def test_a_host_with_several_addresses_is_served_on_all_of_them(monkeypatch):
    """``localhost`` is often ``::1`` and ``127.0.0.1``: both listen, on one port, as in the
    asyncio server (audit: only the first, so 127.0.0.1 clients were refused on Debian)."""
    _ipv6_loopback()
    resolving(monkeypatch, "dual.kn-sock.test", ["::1", "127.0.0.1"])
    with WebSocketServer("dual.kn-sock.test", 0, echo) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        assert [s.getsockname()[0] for s in server.sockets] == ["::1", "127.0.0.1"]
        assert {s.getsockname()[1] for s in server.sockets} == {server.port}
        for uri in (f"ws://127.0.0.1:{server.port}/", f"ws://[::1]:{server.port}/"):
            with connect_websocket(uri) as ws:
                ws.send(uri)
                assert ws.recv(5) == uri


@pytest.mark.parametrize("taken", [1, 99])
def test_port_0_taken_on_another_address_draws_another_port(monkeypatch, caplog, taken):
    """Port 0 on several addresses: a port another program holds on one of them is drawn again
    (audit: host=None then listened on IPv4 only); after 5 draws, the addresses it got stay,
    logged. A port asked for and taken raises."""
    _ipv6_loopback()
    resolving(monkeypatch, "dual.kn-sock.test", ["127.0.0.1", "::1"])
    real, refused = socket.create_server, []

    def create_server(address, *, family=socket.AF_INET, **kwargs):
        if family == socket.AF_INET6 and len(refused) < taken:
            refused.append(address)
            raise OSError(errno.EADDRINUSE, "Address already in use")
        return real(address, family=family, **kwargs)

    monkeypatch.setattr(socket, "create_server", create_server)
    with WebSocketServer("dual.kn-sock.test", 0, echo) as server:
        if taken == 1:
            assert len(server.sockets) == 2 and {s.getsockname()[1] for s in server.sockets} == {server.port}
        else:
            assert len(refused) == 5 and [s.family for s in server.sockets] == [socket.AF_INET]
            assert f"port {server.port} is taken on ::1" in caplog.text
        with pytest.raises(OSError) as info:
            WebSocketServer("dual.kn-sock.test", server.port, echo)
        assert info.value.errno == errno.EADDRINUSE


def test_an_address_that_cannot_be_bound_raises_unless_its_family_is_missing(monkeypatch):
    """An address of the host that is not this machine's raises, as in asyncio (the review:
    it was left out quietly); IPv6 missing (EADDRNOTAVAIL on ``::1``, EAFNOSUPPORT) only
    leaves the IPv6 addresses out."""
    resolving(monkeypatch, "elsewhere.kn-sock.test", ["127.0.0.1", "192.0.2.1"])  # TEST-NET-1
    with pytest.raises(OSError) as info:
        WebSocketServer("elsewhere.kn-sock.test", 0, echo)
    assert info.value.errno == errno.EADDRNOTAVAIL
    resolving(monkeypatch, "dual.kn-sock.test", ["::1", "127.0.0.1"])
    real = socket.create_server

    def no_ipv6(address, *, family=socket.AF_INET, **kwargs):
        if family == socket.AF_INET6:
            raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
        return real(address, family=family, **kwargs)

    monkeypatch.setattr(socket, "create_server", no_ipv6)
    for host in ("dual.kn-sock.test", None):
        with WebSocketServer(host, 0, echo) as server:
            assert [s.family for s in server.sockets] == [socket.AF_INET]


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix sockets")
def test_a_live_servers_unix_socket_is_not_taken_over_a_stale_one_is(tmp_path):
    """A second server on the path of one still listening raises EADDRINUSE, as websockets.sync
    (audit: it removed the file, and the first ran on, unreachable); a stale file is replaced."""
    path = str(tmp_path / "ws.sock")
    with running_server(echo, unix=path):
        with pytest.raises(OSError) as info:
            WebSocketServer(None, None, echo, unix=path)
        assert info.value.errno == errno.EADDRINUSE
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)  # the first one still serves it
        with connect_websocket("ws://localhost/", sock=sock) as ws:
            ws.send("still here")
            assert ws.recv(5) == "still here"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(path)  # a crashed run's file: nobody listens
    with running_server(echo, unix=path):
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
        sock.close()


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix sockets")
def test_unix_socket_file_bound_by_another_server_since_is_left_alone(tmp_path):
    path = str(tmp_path / "ws.sock")
    with running_server(echo, unix=path):
        os.unlink(path)
        with socket.socket(socket.AF_UNIX) as other:
            other.bind(path)  # another server's now: shutdown must not remove it
    assert os.path.exists(path)


@pytest.fixture(scope="module")
def tls_contexts(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    return server_ctx, client_ctx


def test_tls(backend, tls_contexts):
    server_ctx, client_ctx = tls_contexts
    with running_server(echo, ssl=server_ctx, backend=backend) as server:
        with connect_websocket(f"wss://localhost:{server.port}/", ssl=client_ctx, backend=backend) as ws:
            for message in ["over TLS", os.urandom(300000), ""]:
                ws.send(message)
                assert ws.recv(5) == message
            assert ws.ping().wait(5)
        with pytest.raises(ssl.SSLError):
            connect_websocket(f"wss://localhost:{server.port}/", open_timeout=2)  # untrusted certificate


def test_tls_with_host_port_and_ssl(backend, tls_contexts):
    """The ``(host, port)`` form with ``ssl=``: wss (the guide's ``ssl=True`` way)."""
    server_ctx, client_ctx = tls_contexts
    with running_server(echo, ssl=server_ctx, backend=backend) as server:
        with connect_websocket("localhost", server.port, ssl=client_ctx, backend=backend) as ws:
            ws.send("over TLS")
            assert ws.recv(5) == "over TLS"


def test_empty_user_agent_and_server_header_are_sent_empty(backend):
    """``""`` is the value given, not "use the default" (websockets sends it too; audit 29U)."""
    seen = []

    def handler(ws, address):
        seen.append(ws.request_headers.get_all("User-Agent"))

    with running_server(handler, server_header="", backend=backend) as server:
        with connect_websocket("127.0.0.1", server.port, user_agent="", backend=backend) as ws:
            assert ws.response_headers.get_all("Server") == [""]
            ws.recv(5)
    assert seen == [[""]]


def _read_to_tls_end(sock: ssl.SSLSocket) -> bytes:
    """Read until the peer ends the TLS session: with its close_notify, or SSLEOFError (the
    socket must have ``suppress_ragged_eofs=False``) when TCP ends without one."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_tls_sessions_end_with_close_notify(backend, tls_contexts):
    """RFC 6455 §7.1.1: close "the TLS session, if applicable" (RFC 8446 §6.1: close_notify),
    as the asyncio layer does; the blocking layer closed TCP under it (audit), which a strict
    peer reads as a truncation. Both sides: our server, then our client."""
    from kn_sock._pure import build_frame
    from kn_sock.handshake import ClientHandshake
    from kn_sock.uri import parse_uri

    server_ctx, client_ctx = tls_contexts
    with running_server(echo, ssl=server_ctx, backend=backend) as server:
        raw = client_ctx.wrap_socket(socket.create_connection(("127.0.0.1", server.port), timeout=5),
                                     server_hostname="localhost", suppress_ragged_eofs=False)
        hs = ClientHandshake(parse_uri("127.0.0.1", server.port, "/"), compression=None)
        raw.sendall(hs.data_to_send())
        while hs.receive_data(raw.recv(65536)) is None:
            pass
        raw.sendall(build_frame(8, (1000).to_bytes(2, "big"), True, False, os.urandom(4)))
        assert _read_to_tls_end(raw) == b"\x88\x02\x03\xe8"  # our close frame back, then close_notify
        raw.close()

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    got: list[Any] = []

    def peer() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True, suppress_ragged_eofs=False) as tls:
            tls.settimeout(5)
            shs = ServerHandshake(compression=None)
            request = None
            while request is None:
                request = shs.receive_data(tls.recv(65536))
            tls.sendall(shs.accept(request))
            frame = b""
            while len(frame) < 8:  # the client's close frame (masked: 8 bytes)
                frame += tls.recv(8 - len(frame))
            tls.sendall(b"\x88\x02\x03\xe8")
            try:
                tls.unwrap()  # our close_notify, then the client's (a TCP end without it: SSLError)
                got.append("close_notify")
            except (ssl.SSLError, OSError) as exc:
                got.append(exc)

    thread = threading.Thread(target=peer, daemon=True)
    thread.start()
    try:
        ws = connect_websocket(f"wss://localhost:{listener.getsockname()[1]}/", ssl=client_ctx, backend=backend,
                               compression=None, close_timeout=1)
        ws.close()
        thread.join(5)
    finally:
        listener.close()
    assert got == ["close_notify"], got


def test_tls_client_sending_a_message_over_max_size_gets_1009(backend, tls_contexts):
    """Over TLS the failing server cannot half-close and keep reading, so the client's write
    fails (reset) in the middle of its message: its send() raises, and the server's 1009,
    which arrived before the reset, is still read (audit: send() returned, close_code 1006)."""
    server_ctx, client_ctx = tls_contexts
    with running_server(echo, ssl=server_ctx, backend=backend, max_size=2**20, compression=None) as server:
        ws = connect_websocket(f"wss://localhost:{server.port}/", ssl=client_ctx, backend=backend, compression=None)
        try:
            with pytest.raises(ConnectionClosedError) as info:
                ws.send(bytes(8 * 2**20))
            assert info.value.code == 1009
            assert ws.recv(5) is None and (ws.close_code, ws.closed) == (1009, True)
        finally:
            ws.abort()


def test_tls_handshakes_leave_nothing_pending(tls_contexts):
    """TLS connections, upgraded, refused or timed out, leave nothing in the server's set of
    handshakes in progress (where the TLS socket replaced the TCP one)."""
    server_ctx, client_ctx = tls_contexts

    def tls_connection():
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        return client_ctx.wrap_socket(sock, server_hostname="localhost")

    with running_server(echo, ssl=server_ctx, open_timeout=0.5) as server:
        with connect_websocket(f"wss://localhost:{server.port}/", ssl=client_ctx) as ws:
            ws.send("over TLS")
            assert ws.recv(5) == "over TLS"
        refused = tls_connection()
        refused.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert refused.recv(4096).startswith(b"HTTP/1.1 426 ")
        refused.close()
        silent = tls_connection()  # TLS up, then no request: dropped after open_timeout
        try:
            data = silent.recv(4096)
        except (ssl.SSLError, OSError):  # the server closed TCP without a TLS close_notify
            data = b""
        assert data == b""
        silent.close()
        assert wait_for(lambda: not server._pending)


@pytest.mark.parametrize("where", ["request", "process_request"])
def test_tls_shutdown_answers_503_to_a_handshake_in_progress(backend, tls_contexts, where):
    """TLS up, the upgrade request still coming in (or process_request running) when the
    server shuts down: HTTP 503 over TLS, as over plain TCP and from the asyncio server (the
    socket was shut down under the TLS read: a bare EOF; regression audit 54)."""
    server_ctx, client_ctx = tls_contexts
    entered, release = threading.Event(), threading.Event()

    def hook(path, headers):
        entered.set()
        release.wait(5)

    options = {"process_request": hook} if where == "process_request" else {}
    with running_server(echo, ssl=server_ctx, backend=backend, **options) as server:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        tls = client_ctx.wrap_socket(sock, server_hostname="localhost")
        if where == "request":
            tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n")  # incomplete
            assert wait_for(lambda: server._tls_up)
        else:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            assert entered.wait(5)
        start = time.monotonic()
        threading.Timer(0.1, release.set).start()
        server.shutdown()
        assert time.monotonic() - start < 0.5
    data = read_to_eof(tls)
    assert data.startswith(b"HTTP/1.1 503 "), data
    tls.close()
    assert wait_for(lambda: server._halt_r is None)  # closed with the last handshake waiting on it


def test_tls_shutdown_answers_503_to_a_client_midway_through_a_tls_record(backend, tls_contexts):
    """TLS up, then only 3 bytes of the record carrying the request when the server shuts
    down: 503 at once (the thread sat in the TLS read, waiting for the rest of the record,
    until open_timeout; regression audit 56). The client runs TLS over memory BIOs to send
    part of a record."""
    server_ctx, client_ctx = tls_contexts
    with running_server(echo, ssl=server_ctx, backend=backend, open_timeout=10) as server:
        raw, tls, incoming, outgoing = bio_tls_client(server.port, client_ctx, "localhost")
        raw.sendall(outgoing.read())
        tls.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        raw.sendall(outgoing.read()[:3])  # 3 bytes of a 5-byte record header
        assert wait_for(lambda: server._tls_up)
        time.sleep(0.05)  # (nothing to wait for: the server thread is waiting for the record)
        start = time.monotonic()
        server.shutdown()
        assert time.monotonic() - start < 0.5
    data = b""
    while chunk := raw.recv(65536):
        incoming.write(chunk)
    while True:
        try:
            data += tls.read(65536)
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError, ssl.SSLEOFError):
            break
    assert data.startswith(b"HTTP/1.1 503 "), data
    assert time.monotonic() - start < 2  # not after open_timeout
    raw.close()


def test_tls_keepalive_while_idle(tls_contexts):
    server_ctx, client_ctx = tls_contexts
    release = threading.Event()
    with running_server(lambda ws, a: release.wait(10), ssl=server_ctx, ping_interval=0.05) as server:
        with connect_websocket(f"wss://localhost:{server.port}/", ssl=client_ctx, ping_interval=0.05) as ws:
            assert wait_for(lambda: ws.latency > 0)
            assert ws.ping().wait(5)
            release.set()
            assert ws.recv(5) is None


def test_shutdown_wakes_a_thread_in_the_tls_handshake(tls_contexts):
    """A TCP connection that never starts TLS: shutdown() wakes its thread at once (audit: the
    TCP socket in the pending set had been detached by wrap_socket, so the thread waited for
    open_timeout)."""
    server_ctx, _ = tls_contexts
    server = WebSocketServer("127.0.0.1", 0, echo, ssl=server_ctx, open_timeout=30)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    assert wait_for(lambda: len(server._pending) == 1)
    server.shutdown()
    assert raw.recv(4096) == b""  # dropped at once, not after open_timeout
    assert wait_for(lambda: not server._pending, 2)
    raw.close()
    thread.join(5)


def test_a_connection_accepted_as_shutdown_starts_gets_503(backend):
    """A connection accepted just before shutdown(), whose thread starts after it: 503, as for
    a handshake in progress (audit: closed without an answer)."""
    server = WebSocketServer("127.0.0.1", 0, echo, backend=backend)
    ours, theirs = socket.socketpair()
    try:
        theirs.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")
        theirs.shutdown(socket.SHUT_WR)
        server._closing = True  # shutdown() has begun
        server._serve_connection(ours, ("127.0.0.1", 1))
        theirs.settimeout(5)
        assert theirs.recv(4096).startswith(b"HTTP/1.1 503 ")
    finally:
        theirs.close()
        server._closing = False
        server.shutdown()


# --------------------------------------------------------------------------- a bad frame behind good ones


def _frames_until_close(peer) -> list:
    """Every frame the server sends up to its close frame: (opcode, payload), the close
    frame as (8, close code)."""
    got = []
    while True:
        opcode, payload = peer.recv_frame()
        if opcode == 8:
            got.append((8, int.from_bytes(payload[:2], "big")))
            return got
        got.append((opcode, payload))


def _masked(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    from kn_sock._pure import build_frame

    return build_frame(opcode, payload, fin, False, os.urandom(4))


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "burst, expected",
    [
        (_masked(1, b"hello") + _masked(5, b"bad") + _masked(9, b""), [(1, b"hello"), (8, 1002)]),
        (
            _masked(1, b"frag", fin=False) + _masked(0, b"ment") + _masked(0, b"stray", fin=False),
            [(1, b"fragment"), (8, 1002)],
        ),
        (_masked(1, b"ok") + _masked(1, b"\xff"), [(1, b"ok"), (8, 1007)]),
    ],
    ids=["opcode", "continuation", "utf8"],
)
def test_messages_before_a_protocol_error_in_the_same_read_are_answered_first(backend, burst, expected):
    """The handler, reading in recv(), gets the messages that came before a bad frame in the
    same read, and its answers go out before the close frame (Autobahn 3.2 / 4.1.3 / 5.15
    strict behaviour); its next recv() finds the connection failed."""
    results: queue.Queue = queue.Queue()

    def handler(ws, address):
        got = []
        while True:
            message = ws.recv()
            if message is None:
                break
            got.append(message)
            ws.send(message)
        results.put((got, ws.close_code))

    with running_server(handler, backend=backend, compression=None) as server:
        peer = raw_client(server.port)
        try:
            peer.sock.sendall(_masked(1, b"warm"))
            assert peer.recv_frame() == (1, b"warm")
            peer.sock.sendall(burst)  # one write: one read on loopback
            assert _frames_until_close(peer) == expected
            got, code = results.get(timeout=5)
            assert got == ["warm"] + [p.decode() for op, p in expected if op == 1]
            assert code == 1006  # failed by us, no close frame from the peer
        finally:
            peer.close()


def test_shutdown_waits_for_a_connection_upgraded_past_its_snapshot(backend, monkeypatch):
    """A handshake past its point of no return (101 sent) whose connection is not yet in
    ``connections`` when shutdown() takes its list: shutdown() returned at once and the
    connection closed a whole grace later (audit 29S). Now it waits for it, and the
    connection is sent 1001 and dropped by the same deadline as the others."""
    reached, go = threading.Event(), threading.Event()
    real = server_module.Protocol

    class SlowProtocol(real):  # type: ignore[valid-type,misc]
        @classmethod
        def after(cls, *args, **kwargs):  # built between the 101 and connections.add()
            reached.set()
            go.wait(5)
            return real.after(*args, **kwargs)

    monkeypatch.setattr(server_module, "Protocol", SlowProtocol)
    server = WebSocketServer("127.0.0.1", 0, lambda ws: ws.recv(), backend=backend, compression=None)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    peer = raw_client(server.port)  # never answers the close frame
    assert reached.wait(5)
    stopping = threading.Thread(target=server.shutdown)
    t0 = time.monotonic()
    stopping.start()
    wait_for(lambda: server._drop_at is not None)  # its list is taken, without this connection
    go.set()
    stopping.join(5)
    took = time.monotonic() - t0
    assert not stopping.is_alive() and took < 1.0
    assert peer.recv_frame() == (0x8, (1001).to_bytes(2, "big"))
    peer.sock.settimeout(0.2)  # dropped by the time shutdown() returned
    assert read_to_eof(peer.sock) == b""
    peer.close()


def test_wait_closed_keeps_the_callers_timeout(backend):
    """``wait_closed(timeout)`` waited ``timeout`` + 0.5 s (a margin meant for close()'s own
    wait; audit 29S)."""
    with running_server(echo, backend=backend) as server:
        with connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            t0 = time.monotonic()
            assert ws.wait_closed(0.05) is False
            assert time.monotonic() - t0 < 0.4
