"""The blocking ``WebSocket``: messages, closing, timeouts, threads, keepalive, limits (RFC 6455 §5-§7).

Every test runs under both twins through the ``backend`` fixture (tests/conftest.py).
"""

from __future__ import annotations

import gc
import logging
import mmap
import os
import queue
import socket
import struct
import threading
import time
import weakref

import pytest

from kn_sock._pure import build_frame
from kn_sock.exceptions import ConnectionClosed, ConnectionClosedError
from kn_sock.handshake import ClientHandshake
from kn_sock.sync import connect_websocket
from kn_sock.uri import parse_uri
from sync_support import assert_ended_by, echo, raw_client, raw_server, RawPeer, running_server, wait_for

pytestmark = pytest.mark.timeout(30)


# ---------------------------------------------------------------- messages (§5.6, §5.4)


@pytest.mark.parametrize("compression", ["deflate", None])
def test_echo_text_binary_empty_fragmented_large(backend, compression):
    with running_server(echo, backend=backend, compression=compression) as server:
        with connect_websocket("127.0.0.1", server.port, backend=backend, compression=compression) as ws:
            for message in ["Hello WebSocket!", "h\u00e9llo \U0001f600", b"\x00\x01\xff", "", b""]:
                ws.send(message)
                assert ws.recv(5) == message
            ws.send(["frag", "ment", "ed"])
            assert ws.recv(5) == "fragmented"
            ws.send([b"a", bytearray(b"b"), memoryview(b"c")])
            assert ws.recv(5) == b"abc"
            ws.send(memoryview(b"s-t-r-i-d-e-d")[::2])  # a strided view: sent as its bytes
            assert ws.recv(5) == b"strided"
            ws.send([memoryview(b"a-b")[::2], b"c"])
            assert ws.recv(5) == b"abc"
            big = os.urandom(2**20 - 64)
            ws.send(big)
            assert ws.recv(10) == big
            text = "x" * (2**20 - 64)
            ws.send(text)
            assert ws.recv(10) == text


def test_send_rejects_other_types(backend):
    with running_server(echo, backend=backend) as server:
        with connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            with pytest.raises(TypeError):
                ws.send(42)
            with pytest.raises(TypeError):
                ws.send({"a": 1})
            buffer = mmap.mmap(-1, 2)  # a buffer, not bytes-like here: it was framed and dropped
            with pytest.raises(TypeError, match="mmap"):
                ws.send(buffer)
            ws.send(memoryview(buffer))
            assert ws.recv(5) == bytes(2)
            ws.send("still usable")
            assert ws.recv(5) == "still usable"


def _raw_peer_and_client(srv, backend, **options):
    """A raw server peer and our client connected to it (no compression; no keepalive unless asked)."""
    peers = []
    t = threading.Thread(target=lambda: peers.append(srv.accept_ws()))
    t.start()
    options.setdefault("ping_interval", None)
    ws = connect_websocket("127.0.0.1", srv.port, backend=backend, compression=None, **options)
    t.join(5)
    return peers[0], ws


@pytest.mark.parametrize("stream", ["pings", "empty-continuations"])
def test_recv_timeout_holds_while_the_peer_streams_frames_that_make_no_message(backend, stream):
    """A peer sending without pause frames that complete no message keeps the socket
    readable: recv(timeout) still raises in time (audit: it waited as long as the stream)."""
    with raw_server() as srv:
        peer, ws = _raw_peer_and_client(srv, backend)
        stop = threading.Event()

        def flood():
            try:
                if stream == "empty-continuations":
                    peer.send_frame(1, b"", fin=False)  # a text message that never ends
                if stream == "pings":
                    frame = build_frame(9, b"", True, False, None)
                else:  # continuations without FIN: the message goes on
                    frame = build_frame(0, b"", False, False, None)
                end = time.monotonic() + 10
                while not stop.is_set() and time.monotonic() < end:
                    peer.sock.sendall(frame * 64)
            except OSError:
                pass

        flooder = threading.Thread(target=flood, daemon=True)
        flooder.start()
        try:
            start = time.monotonic()
            with pytest.raises(TimeoutError):
                ws.recv(0.3)
            assert time.monotonic() - start < 2.0
        finally:
            stop.set()
            flooder.join(5)
            ws.abort()
            peer.close()


def test_a_close_timeout_is_logged_at_info(backend, caplog):
    """docs/guide.md "Logging": timeouts at INFO (it was DEBUG here, nothing in asyncio)."""
    caplog.set_level(logging.INFO, logger="kn_sock")
    with raw_server() as srv:
        peer, ws = _raw_peer_and_client(srv, backend, close_timeout=0.2)
        ws.close()  # the peer never answers
        assert ws.close_code == 1006
        peer.close()
    assert any("timed out (close_timeout)" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)


@pytest.mark.parametrize("delay", [0.0, 0.05])
def test_protocol_error_then_half_close_still_gets_our_close_frame(backend, delay):
    """A message, a frame with a reserved opcode, then the peer's FIN (a half-close: it still
    reads): the message is delivered, then our 1002 close frame goes out before TCP closes, as
    in the asyncio layer (audit: the error held back for the message was dropped at EOF)."""
    with raw_server() as srv:
        peer, ws = _raw_peer_and_client(srv, backend)
        peer.sock.sendall(build_frame(1, b"a", True, False, None) + build_frame(3, b"", True, False, None))
        peer.sock.shutdown(socket.SHUT_WR)
        time.sleep(delay)  # (the application comes for the message later: the error is held)
        assert ws.recv(5) == "a"
        assert ws.recv(5) is None
        opcode, payload = peer.recv_frame()
        assert opcode == 8 and payload[:2] == (1002).to_bytes(2, "big")
        with pytest.raises(EOFError):
            peer.recv_frame()
        peer.close()


@pytest.mark.parametrize("end", ["error", "reset", "fin"])
def test_the_closed_exception_has_what_ended_the_connection_as_its_cause(backend, end):
    """After the end, send() raises ConnectionClosedError whose ``__cause__`` is the
    ProtocolError we failed the connection for (audit: None in this layer), or the peer's
    reset / the end of the stream when no close frame came (as websockets)."""
    gc.collect()
    gc.disable()  # and the exception keeps nothing in a cycle (the review: send() did)
    try:
        with raw_server() as srv:
            peer, ws = _raw_peer_and_client(srv, backend)
            if end == "error":
                peer.sock.sendall(build_frame(3, b"", True, False, None))
            elif end == "reset":
                peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                peer.sock.close()
            else:
                peer.sock.shutdown(socket.SHUT_WR)
            assert ws.recv(5) is None
            with pytest.raises(ConnectionClosedError) as info:
                ws.send("x")
            assert_ended_by(info.value, end)
            peer.close()
            assert ws.wait_closed(5)
            ref = weakref.ref(ws)
            del ws, info
            assert wait_for(lambda: ref() is None, 2)
    finally:
        gc.enable()


def test_recv_timeout_nan_inf_and_not_a_number(backend):
    """As in the asyncio layer: NaN is a ValueError (it was one from select(), "Invalid value NaN"),
    inf or a huge number no limit (OverflowError: timestamp out of range), a str a TypeError;
    the connection stays usable."""
    with running_server(echo) as server:
        with connect_websocket(f"ws://127.0.0.1:{server.port}/", backend=backend) as ws:
            with pytest.raises(ValueError, match="not nan"):
                ws.recv(float("nan"))
            with pytest.raises(TypeError, match="not str"):
                ws.recv("1")  # type: ignore[arg-type]
            for timeout in (float("inf"), 1e10):
                ws.send("x")
                assert ws.recv(timeout) == "x"
            ws.send("queued")
            assert ws.ping().wait(5)  # (the echo came before the pong: it is queued)
            with pytest.raises(ValueError, match="not nan"):  # a message queued or not (audit)
                ws.recv(float("nan"))
            assert ws.recv(5) == "queued"
        with connect_websocket(f"ws://127.0.0.1:{server.port}/", backend=backend, reconnect=True) as rws:
            with pytest.raises(ValueError, match="not nan"):  # the reconnecting client too (audit)
                rws.recv(float("nan"))
            with pytest.raises(TypeError, match="not bool"):
                rws.recv(True)  # type: ignore[arg-type]


@pytest.mark.parametrize("compression", [None, "deflate"])
def test_fragment_that_cannot_be_encoded(backend, compression):
    """A lone surrogate in a fragment raises UnicodeEncodeError. As the first fragment, nothing
    went out and the connection stays usable (it was failed 1011); as a later one, half a
    message is out and the connection fails 1011 (the next send went out after half a message,
    which the peer refused 1002) (audit)."""
    with running_server(echo, compression=compression) as server:
        with connect_websocket(f"ws://127.0.0.1:{server.port}/", backend=backend, compression=compression) as ws:
            with pytest.raises(UnicodeEncodeError):
                ws.send(["\ud800", "a"])
            ws.send("probe")
            assert ws.recv(5) == "probe" and ws.open
            with pytest.raises(UnicodeEncodeError):
                ws.send(["a", "\ud800"])
            assert ws.closed
            with pytest.raises(ConnectionClosed):
                ws.send("next")
            assert ws.recv(5) is None


@pytest.mark.parametrize("source", ["mixed-types", "raising-generator"])
def test_fragment_source_failing_midway_fails_the_connection_1011(backend, source):
    """Half a message is out and no other one can follow it (RFC 6455 §5.4): the connection
    is failed with 1011, like the asyncio layer and websockets do, and the error reaches the
    caller; the connection is not left open with every later send() refused."""

    def generator():
        yield "a"
        yield "b"
        yield "c"
        raise ValueError("no more fragments")

    fragments, error = (["a", "b", b"c"], TypeError) if source == "mixed-types" else (generator(), ValueError)
    with raw_server() as srv:
        peer, ws = _raw_peer_and_client(srv, backend)
        with pytest.raises(error):
            ws.send(fragments)
        assert ws.closed
        with pytest.raises(ConnectionClosed):
            ws.send("next")
        assert peer.recv_frame() == (1, b"a")  # text, no FIN
        assert peer.recv_frame() == (0, b"b")  # continuation, no FIN
        opcode, payload = peer.recv_frame()
        assert (opcode, payload) == (8, (1011).to_bytes(2, "big") + b"error in fragmented message")
        with pytest.raises(EOFError):
            peer.recv_frame()  # a failed connection closes TCP (RFC 6455 §7.1.7)
        assert ws.recv(5) is None
        peer.close()


@pytest.mark.timeout(20)
def test_send_from_the_iterable_of_its_own_fragmented_send_raises(backend):
    """The thread sending the fragmented message holds the send lock: a send() from its
    iterable raises InvalidState instead of waiting for ever (audit: a deadlock, for every
    thread's send; websockets.sync raises ConcurrencyError), and the half-sent message fails
    the connection (1011) as any failing iterable does. Other threads are not blocked."""
    from kn_sock.exceptions import InvalidState

    with running_server(echo, backend=backend) as server:
        ws = connect_websocket("127.0.0.1", server.port, backend=backend)

        def parts():
            yield "a"
            yield "b"
            ws.send("inside")  # the fragmented message is open: this thread's own

        with pytest.raises(InvalidState):
            ws.send(parts())
        assert ws.wait_closed(5) and ws.closed
        with pytest.raises(ConnectionClosed):
            ws.send("after")  # returns at once: the send lock was released


@pytest.mark.parametrize("size", [5, 8_000_000])
@pytest.mark.parametrize("at", [0, 1])
def test_send_from_the_iterable_before_its_first_fragment_raises(backend, at, size):
    """The iterable is read one item ahead: before the first fragment goes out, a send() from
    it raised nothing and went out ahead of the fragmented message, or, over write_limit,
    waited for the send lock its own thread held: a deadlock that close() did not end (audit).
    It raises InvalidState at any point now; the connection stays usable if nothing went out."""
    from kn_sock.exceptions import InvalidState

    with running_server(echo, backend=backend, max_size=None) as server:
        ws = connect_websocket("127.0.0.1", server.port, backend=backend, max_size=None)
        seen = []

        def parts():
            for i in range(3):
                if i == at:
                    try:
                        ws.send("x" * size)
                    except InvalidState:
                        seen.append("InvalidState")
                yield str(i)

        done = threading.Event()
        thread = threading.Thread(target=lambda: (ws.send(parts()), done.set()), daemon=True)
        thread.start()
        assert done.wait(10), "deadlock"
        assert seen == ["InvalidState"]
        assert ws.recv(5) == "012"  # the fragmented message, and nothing ahead of it
        ws.close()


def _send_until_closed(ws, message_for, expected, then=None, n=4):
    """``n`` threads send ``message_for(i)`` (called anew each time if callable: a generator) in a
    loop until send() raises; ``then()`` runs once they started. Each thread's outcome: the name
    of ``expected`` if it raised that, else a repr."""
    outcomes: dict[int, str] = {}

    def run(i: int) -> None:
        message = message_for(i)
        try:
            while True:
                ws.send(message() if callable(message) else message)
        except expected:
            outcomes[i] = expected.__name__
        except Exception as exc:
            outcomes[i] = repr(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    if then is not None:
        then()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    return outcomes


def test_senders_waiting_behind_a_fragmented_message_get_connection_closed_when_it_drops(backend):
    """Threads waiting for a fragmented message to end, whose connection is reset under it,
    get ConnectionClosed, the documented outcome, not InvalidState (audit: 1 in 3 runs)."""

    def fragments():
        for _ in range(100_000):
            yield b"f" * 2000

    with raw_server() as srv:

        def peer():
            while True:
                try:
                    conn = srv.accept_ws().sock
                except OSError:
                    return
                got = 0
                while got < 100_000:
                    data = conn.recv(65536)
                    if not data:
                        break
                    got += len(data)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()  # a reset

        threading.Thread(target=peer, daemon=True).start()
        for _ in range(30):
            ws = connect_websocket("127.0.0.1", srv.port, backend=backend, compression=None, ping_interval=None,
                                   close_timeout=2)
            outcomes = _send_until_closed(ws, lambda i: fragments if i == 0 else "hello", ConnectionClosed)
            assert outcomes == dict.fromkeys(range(4), "ConnectionClosed")
            ws.abort()


def test_fragment_senders_get_connection_closed_ok_after_a_clean_close(backend):
    """A sender of fragmented messages whose connection closes cleanly (our close(), answered
    at once) gets ConnectionClosedOK, not the ConnectionClosedError 1006 it built while the
    closing handshake was under way (audit: 2-5% of runs)."""
    from kn_sock.exceptions import ConnectionClosedOK

    def handler(ws, address):
        for _ in ws:
            pass

    with running_server(handler, backend=backend, max_size=None) as server:
        for _ in range(40):
            ws = connect_websocket("127.0.0.1", server.port, backend=backend, compression=None, close_timeout=3)
            outcomes = _send_until_closed(ws, lambda i: ["f" * 100, "g" * 100] if i % 2 else "s" * 1000,
                                          ConnectionClosedOK, then=lambda: (time.sleep(0.002), ws.close()))
            if ws.close_code == 1011:  # close() came between the fragments of a message
                assert all("ConnectionClosedError" in o and "1011" in o for o in outcomes.values()), outcomes
            else:
                assert ws.close_code == 1000
                assert outcomes == dict.fromkeys(range(4), "ConnectionClosedOK")


@pytest.mark.parametrize("source", ["bad-first-fragment", "raising-generator", "not-iterable"])
def test_fragment_source_failing_before_any_fragment_leaves_the_connection_usable(backend, source):
    """One fragment is read ahead (the last one is sent with FIN): a source that fails
    before a first fragment went out has sent nothing, and the connection goes on."""

    def generator():
        yield "a"
        raise ValueError("no more fragments")

    cases = {
        "bad-first-fragment": ([42, "a"], TypeError),
        "raising-generator": (generator(), ValueError),
        "not-iterable": (42, TypeError),
    }
    fragments, error = cases[source]
    with running_server(echo, backend=backend) as server:
        with connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            with pytest.raises(error):
                ws.send(fragments)
            assert ws.open
            ws.send(["frag", "ment"])
            assert ws.recv(5) == "fragment"
            ws.send("whole")
            assert ws.recv(5) == "whole"


def test_a_client_that_keeps_sending_sees_the_servers_close(backend):
    """A thread streaming large messages (each over write_limit) must go on reading while it
    waits for them to drain, or the server's close frame sits unread and a clean 1001 ends as
    two 1006s after close_timeout (audit)."""
    codes = []

    def handler(ws, address):
        for _ in range(50):
            if ws.recv() is None:
                return
            time.sleep(0.001)  # a consumer a little slower than the producer
        ws.close(1001, "enough")
        codes.append(ws.close_code)

    with running_server(handler, backend=backend, compression=None, close_timeout=5) as server:
        for _ in range(8):  # (before the fix about one in ten took seconds: reading paused)
            ws = connect_websocket("127.0.0.1", server.port, backend=backend, compression=None, ping_interval=None)
            started = time.monotonic()
            with pytest.raises(ConnectionClosed):
                while time.monotonic() - started < 10:
                    ws.send(b"x" * 70_000)
            assert time.monotonic() - started < 4  # not the server's close_timeout
            assert ws.close_code == 1001
            ws.close()
        wait_for(lambda: len(codes) == 4)
        assert codes == [1001] * 8


def test_json(backend):
    with running_server(echo, backend=backend) as server:
        with connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            ws.send_json({"a": [1, 2, None]})
            assert ws.recv_json(5) == {"a": [1, 2, None]}


def test_iteration_ends_at_close(backend):
    def handler(ws, address):
        for i in range(3):
            ws.send(str(i))

    with running_server(handler, backend=backend) as server:
        ws = connect_websocket("127.0.0.1", server.port, backend=backend)
        assert list(ws) == ["0", "1", "2"]
        assert ws.recv() is None
        assert ws.close_code == 1000


def test_messages_read_with_the_peers_close_frame_are_all_delivered(backend):
    # 200 messages and the close frame in one write (one read here): every message sent before
    # the close frame is delivered, not only max_queue of them.
    burst = b"".join(build_frame(1, str(i).encode()) for i in range(200)) + build_frame(8, b"\x03\xe8")
    with raw_server() as srv:
        peer, ws = _raw_peer_and_client(srv, backend)
        peer.sock.sendall(burst)
        assert [int(m) for m in ws] == list(range(200))
        assert ws.close_code == 1000
        peer.close()


def test_server_handler_gets_every_message_sent_before_the_clients_close(backend):
    got = queue.Queue()

    def handler(ws, address):
        got.put([int(m) for m in ws])

    with running_server(handler, backend=backend) as server:
        peer = raw_client(server.port)
        frames = b"".join(build_frame(2, str(i).encode(), True, False, os.urandom(4)) for i in range(200))
        peer.sock.sendall(frames + build_frame(8, b"\x03\xe8", True, False, os.urandom(4)))
        assert got.get(timeout=5) == list(range(200))
        assert peer.recv_frame()[0] == 8
        peer.close()


# ---------------------------------------------------------------- closing (§7)


@pytest.mark.parametrize("answer", [1000, 1011])
def test_send_during_our_close_waits_for_the_handshake_outcome(backend, answer):
    """send() while our close frame awaits the peer's answer: raised once the handshake has
    ended, telling how (ConnectionClosedOK after 1000/1000; ConnectionClosedError with the
    peer's code otherwise), not an immediate ConnectionClosedError(1006) (as websockets)."""
    from kn_sock import ConnectionClosedError, ConnectionClosedOK

    with raw_server() as srv:
        peer, ws = _raw_peer_and_client(srv, backend)
        closing = threading.Thread(target=ws.close)
        closing.start()
        assert peer.recv_frame() == (8, b"\x03\xe8")
        outcome = queue.Queue()

        def late_send():
            try:
                ws.send("late")
            except ConnectionClosed as exc:
                outcome.put(exc)

        sender = threading.Thread(target=late_send)
        sender.start()
        with pytest.raises(queue.Empty):
            outcome.get(timeout=0.05)  # waiting for the peer's answer
        peer.send_frame(8, answer.to_bytes(2, "big") + b"bye")
        peer.close()
        exc = outcome.get(timeout=5)
        sender.join(5)
        closing.join(5)
        assert exc.code == answer and exc.reason == "bye"
        assert isinstance(exc, ConnectionClosedOK if answer == 1000 else ConnectionClosedError)
        with pytest.raises(ConnectionClosedOK if answer == 1000 else ConnectionClosedError):
            ws.send("later")


def test_recv_none_after_close_and_close_codes(backend):
    seen = queue.Queue()

    def handler(ws, address):
        while ws.recv() is not None:
            pass
        seen.put((ws.close_code, ws.close_reason, ws.closed))

    with running_server(handler, backend=backend) as server:
        ws = connect_websocket("127.0.0.1", server.port, backend=backend)
        ws.close(4000, "bye now")
        assert seen.get(timeout=5) == (4000, "bye now", True)
        assert ws.closed
        assert ws.close_code == 4000  # the server echoes the code (RFC 6455 §5.5.1)
        assert ws.recv() is None
        assert ws.recv(0.1) is None
        with pytest.raises(ConnectionClosed):
            ws.send("late")


def test_handler_return_closes_1000_and_exception_closes_1011(backend, caplog):
    def handler(ws, address):
        if ws.path == "/boom":
            raise RuntimeError("handler bug")

    with running_server(handler, backend=backend) as server:
        ws = connect_websocket("127.0.0.1", server.port, backend=backend)
        assert ws.recv(5) is None
        assert ws.close_code == 1000
        with caplog.at_level(logging.ERROR, logger="kn_sock"):
            ws = connect_websocket(f"ws://127.0.0.1:{server.port}/boom", backend=backend)
            assert ws.recv(5) is None
            assert ws.close_code == 1011
            assert ws.close_reason == ""  # details are not sent to the peer
        assert any("handler failed" in r.getMessage() and r.exc_info for r in caplog.records)


def test_handler_raising_another_connections_connection_closed_closes_1011(backend, caplog):
    """A relay handler sending to a peer that left lets that ConnectionClosed out: its own,
    open connection is closed 1011 and the error logged, not taken for its own peer leaving
    (regression audit 54)."""
    gone = []
    first_done = threading.Event()

    def handler(ws, address):
        if ws.path == "/first":
            gone.append(ws)
            ws.recv(5)
            first_done.set()
            return
        gone[0].send("relay")  # the first client left: ConnectionClosed

    with running_server(handler, backend=backend) as server:
        first = connect_websocket(f"ws://127.0.0.1:{server.port}/first", backend=backend)
        first.close()
        assert first_done.wait(5) and wait_for(lambda: gone[0].closed)
        with caplog.at_level(logging.ERROR, logger="kn_sock"):
            ws = connect_websocket(f"ws://127.0.0.1:{server.port}/second", backend=backend)
            assert ws.recv(5) is None
            assert ws.close_code == 1011
    assert any("handler failed" in r.getMessage() and r.exc_info for r in caplog.records)


def test_server_close_reason_visible_to_client(backend):
    def handler(ws, address):
        ws.close(4001, "go away")

    with running_server(handler, backend=backend) as server:
        ws = connect_websocket("127.0.0.1", server.port, backend=backend)
        assert ws.recv(5) is None
        assert (ws.close_code, ws.close_reason) == (4001, "go away")
        assert ws.wait_closed(5)


def test_peer_drops_tcp_gives_1006(backend):
    with raw_server() as srv:
        result = {}

        def peer():
            p = srv.accept_ws()
            p.close()

        t = threading.Thread(target=peer)
        t.start()
        ws = connect_websocket("127.0.0.1", srv.port, backend=backend, compression=None)
        t.join(5)
        assert ws.recv(5) is None
        result["code"] = ws.close_code
        assert result["code"] == 1006


def test_close_timeout_bounds_close_with_silent_peer(backend):
    with raw_server() as srv:
        peers = []
        t = threading.Thread(target=lambda: peers.append(srv.accept_ws()))
        t.start()
        ws = connect_websocket("127.0.0.1", srv.port, backend=backend, close_timeout=0.3, compression=None)
        t.join(5)
        start = time.monotonic()
        ws.close()
        assert time.monotonic() - start < 2
        assert ws.closed and ws.close_code == 1006
        opcode, payload = peers[0].recv_frame()
        assert opcode == 8 and payload[:2] == b"\x03\xe8"
        peers[0].close()


def _freed(*refs: "weakref.ref[object]") -> bool:
    gc.collect()
    return all(ref() is None for ref in refs)


@pytest.mark.parametrize("ending", ["close", "1009"])
def test_closed_connections_are_freed_promptly(backend, ending):
    """Nothing of the shared reactor (keepalive and close timers, selector registrations,
    held sockets) keeps a closed connection alive: with the default 20 s keepalive armed,
    both ends are garbage as soon as the application lets go of them, buffers and all."""
    server_side = queue.Queue()

    def handler(ws, address):
        server_side.put(weakref.ref(ws))
        for message in ws:
            ws.send(message)

    with running_server(handler, backend=backend, max_size=1024) as server:
        ws = connect_websocket("127.0.0.1", server.port, backend=backend)
        ws.send("hello")
        assert ws.recv(5) == "hello"  # the client thread holds the socket now (lazy hand-back)
        if ending == "close":
            ws.close()
        else:
            ws.send(b"x" * 2048)  # over the server's max_size
            assert ws.recv(5) is None
            assert ws.close_code == 1009
        assert ws.wait_closed(5)
        client = weakref.ref(ws)
        del ws
        server_ref = server_side.get(timeout=5)
        assert wait_for(lambda: _freed(client, server_ref), 2)


@pytest.mark.parametrize("max_queue", [None, 16])
def test_the_reactor_inflates_a_budget_at_a_time(backend, max_queue):
    """The shared reactor thread, reading for a connection whose application is not in
    recv(), inflates a read of many small deflated ~1 MB messages a budget (1 MiB) at a time,
    other connections' events in between (audit 67: it held the reactor 150-250 ms, every
    other connection's reads and keepalive stalled); recv() then gets every message, in order."""
    import zlib

    with raw_server() as srv:
        peers = []
        t = threading.Thread(target=lambda: peers.append(srv.accept_ws(compression="deflate")))
        t.start()
        ws = connect_websocket("127.0.0.1", srv.port, backend=backend, max_queue=max_queue, max_size=2**21)
        t.join(5)
        peer = peers[0]
        assert ws.extensions == ["permessage-deflate"]
        steps: list[int] = []
        done = threading.Event()

        def tick() -> None:  # the reactor's turns, and how many messages were queued at each
            steps.append(len(ws._messages))
            if len(ws._messages) >= 12 or len(steps) > 100_000:
                done.set()
            else:
                ws._reactor.call_soon(tick)

        z = zlib.compressobj(wbits=-9)
        data = b""
        for i in range(12):
            payload = z.compress(b"%02d" % i + bytes(1_000_000)) + z.flush(zlib.Z_SYNC_FLUSH)
            data += build_frame(2, payload[:-4], True, True, None)
        again = b""
        for i in range(12):
            payload = z.compress(b"%02d" % i + bytes(1_000_000)) + z.flush(zlib.Z_SYNC_FLUSH)
            again += build_frame(2, payload[:-4], True, True, None)
        ws._reactor.call_soon(tick)
        peer.sock.sendall(data)  # ~12 KB: one read
        assert done.wait(10)
        jumps = [b - a for a, b in zip(steps, steps[1:])]
        assert max(jumps) <= 3, steps  # two 1 MB messages a turn (1 MiB budget), not all twelve
        got = [ws.recv(5) for _ in range(12)]
        assert [m[:2] for m in got] == [b"%02d" % i for i in range(12)]
        # Again, the application in recv() at once: a backlog the reactor left for its next
        # turn comes before anything read from the socket (no wait for more data).
        peer.sock.sendall(again)
        got = [ws.recv(5) for _ in range(12)]
        assert [m[:2] for m in got] == [b"%02d" % i for i in range(12)]
        peer.send_frame(8, b"\x03\xe8")
        peer.close()
        ws.close()


def test_a_message_read_while_a_backlog_waits_comes_after_it(backend):
    """A whole message read while frames wait in ``protocol.backlog`` (the reactor's budget
    left them for its next turn) is queued after them, not ahead through the fast path
    (audit 68: over TLS the reactor read on and a small message overtook the backlog)."""
    with running_server(echo, backend=backend) as server:
        with connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            ws.send("hello")
            assert ws.recv(5) == "hello"
            with ws._lock:
                ws.protocol.backlog = [(2, True, False, b"B0"), (2, True, False, b"B1")]
            ws._feed(b"TAIL")
            assert [ws.recv(5) for _ in range(3)] == [b"B0", b"B1", b"TAIL"]


def test_messages_dropped_while_closing_are_a_tail_never_a_gap(backend):
    """Closing with the application not reading: what it has no room for is dropped (reading
    cannot pause: the close frame must get through), but only as a tail: once one message is
    dropped, so is every later one (audit: after the application took some, later ones were
    kept again, and it saw a hole in the stream)."""
    with raw_server() as srv:
        peers = []
        t = threading.Thread(target=lambda: peers.append(srv.accept_ws()))
        t.start()
        ws = connect_websocket("127.0.0.1", srv.port, backend=backend, compression=None, max_queue=4)
        t.join(5)
        peer = peers[0]
        for i in range(6):  # the queue fills (4), reading pauses
            peer.send_frame(1, b"%d" % i)
        assert wait_for(lambda: len(ws._messages) >= 4)
        closer = threading.Thread(target=ws.close)
        closer.start()
        opcode, _ = peer.recv_frame()
        assert opcode == 8
        for i in range(6, 20):  # closing: read on, the queue full: dropped
            peer.send_frame(1, b"%d" % i)
        got = [ws.recv(5) for _ in range(2)]
        assert wait_for(lambda: ws._dropping)  # the first burst read (and dropped); room made now
        for i in range(20, 30):
            peer.send_frame(1, b"%d" % i)
        peer.send_frame(8, b"\x03\xe8")
        peer.close()  # (the server closes TCP first)
        while (message := ws.recv(5)) is not None:
            got.append(message)
        closer.join(5)
    numbers = [int(m) for m in got]
    assert numbers == list(range(len(numbers))), numbers  # a prefix of the stream
    assert ws.close_code == 1000


def test_closed_compressed_connections_are_freed_without_the_cycle_collector(backend):
    """With permessage-deflate (the default), a closed connection is in no reference cycle
    (audit: the protocol kept a bound method of the connection, so each closed pair, zlib
    streams and buffers, waited for a full collection, which a large heap makes rare)."""
    server_side = queue.Queue()

    def handler(ws, address):
        server_side.put(weakref.ref(ws))
        for message in ws:
            ws.send(message)

    with running_server(handler, backend=backend) as server:
        gc.collect()
        gc.disable()
        try:
            ws = connect_websocket("127.0.0.1", server.port, backend=backend)
            assert ws.extensions == ["permessage-deflate"]
            ws.send("hello" * 100)
            assert ws.recv(5) == "hello" * 100
            ws.close()
            assert ws.wait_closed(5)
            client = weakref.ref(ws)
            del ws
            server_ref = server_side.get(timeout=5)
            assert wait_for(lambda: client() is None and server_ref() is None, 2)
        finally:
            gc.enable()


# ---------------------------------------------------------------- timeouts, threads


def test_recv_timeout_leaves_connection_usable(backend):
    with running_server(echo, backend=backend) as server:
        with connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            start = time.monotonic()
            with pytest.raises(TimeoutError):
                ws.recv(timeout=0.1)
            assert 0.09 <= time.monotonic() - start < 1
            with pytest.raises(TimeoutError):
                ws.recv(timeout=0)
            ws.send("after timeout")
            assert ws.recv(5) == "after timeout"


def test_recv_timeout_mid_message_keeps_partial_frame(backend):
    with raw_server() as srv:
        peers = []
        t = threading.Thread(target=lambda: peers.append(srv.accept_ws()))
        t.start()
        ws = connect_websocket("127.0.0.1", srv.port, backend=backend, compression=None)
        t.join(5)
        peer = peers[0]
        frame = b"\x81\x05hello"
        peer.sock.sendall(frame[:4])
        with pytest.raises(TimeoutError):
            ws.recv(0.1)
        peer.sock.sendall(frame[4:])
        assert ws.recv(5) == "hello"
        peer.close()
        ws.abort()


def test_concurrent_senders(backend):
    received = queue.Queue()

    def handler(ws, address):
        for message in ws:
            received.put(message)

    n_threads, n_messages = 6, 200
    with running_server(handler, backend=backend) as server:
        with connect_websocket("127.0.0.1", server.port, backend=backend, write_limit=1024) as ws:

            def sender(k):
                for i in range(n_messages):
                    if i % 20 == 7:  # fragmented messages among whole ones, from every thread
                        ws.send([f"{k}:{i}:", "fr", "ag"])
                    else:
                        ws.send(f"{k}:{i}:" + "p" * (i % 50) * 40)
                ws.send([f"{k}:", "frag"])

            threads = [threading.Thread(target=sender, args=(k,)) for k in range(n_threads)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(20)
            got = [received.get(timeout=10) for _ in range(n_threads * (n_messages + 1))]
    for k in range(n_threads):
        mine = [m for m in got if m.startswith(f"{k}:")]
        assert mine[-1] == f"{k}:frag"
        assert [int(m.split(":")[1]) for m in mine[:-1]] == list(range(n_messages))
        assert all(m.endswith(":frag") for m in mine[7:-1:20])


def test_concurrent_send_and_recv(backend):
    with running_server(echo, backend=backend) as server:
        with connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            got = []
            reader = threading.Thread(target=lambda: got.extend(ws.recv(10) for _ in range(500)))
            reader.start()
            for i in range(500):
                ws.send(str(i))
            reader.join(20)
            assert got == [str(i) for i in range(500)]


@pytest.mark.parametrize("how", ["close", "abort"])
def test_recv_without_timeout_is_woken_by_close_from_another_thread(backend, how):
    # A recv() with no timeout sleeps in the socket's own blocking read: close() / abort()
    # from another thread must end it (it returns None), as must the peer's answer.
    def handler(ws, address):
        while ws.recv() is not None:
            pass

    with running_server(handler, backend=backend) as server:
        ws = connect_websocket("127.0.0.1", server.port, backend=backend, ping_interval=None)
        got = queue.Queue()
        reader = threading.Thread(target=lambda: got.put(ws.recv()))
        reader.start()
        time.sleep(0.05)  # let it block in the read (nothing to wait for: it must stay blocked)
        assert got.empty()
        start = time.monotonic()
        getattr(ws, how)()
        assert got.get(timeout=5) is None
        assert time.monotonic() - start < 2
        reader.join(5)
        assert ws.closed


# ---------------------------------------------------------------- ping / pong / keepalive (§5.5.2, §5.5.3)


def test_ping_waiter_and_latency(backend):
    with running_server(echo, backend=backend) as server:
        with connect_websocket("127.0.0.1", server.port, backend=backend, ping_interval=None) as ws:
            waiter = ws.ping()
            assert waiter.wait(5)
            assert waiter.rtt is not None and 0 < waiter.rtt < 5
            assert ws.latency == waiter.rtt
            waiter = ws.ping(b"custom")
            assert waiter.wait(5)
            for bad in (125, 1.5):  # not bytes(125): 125 zero bytes
                with pytest.raises(TypeError):
                    ws.ping(bad)
                with pytest.raises(TypeError):
                    ws.pong(bad)
            with pytest.raises(TypeError):
                ws.close(1000, b"a reason must be str")
            ws.pong(b"unsolicited")  # ignored by the peer
            ws.send("still fine")
            assert ws.recv(5) == "still fine"


def test_ping_and_close_right_after_recv_are_not_held_for_a_tick(backend):
    """After recv() the application keeps the socket for a reactor tick (HOLD_TICK, 10 ms):
    a ping's pong and the peer's close frame waited for that tick, adding 10-20 ms to
    ``latency`` and to ``close()`` (audit 77). ping() and close() give the socket back at once."""
    import statistics

    with running_server(echo, backend=backend, compression=None) as server:
        rtts = []
        with connect_websocket("127.0.0.1", server.port, backend=backend, ping_interval=None) as ws:
            for _ in range(10):
                ws.send("x")
                assert ws.recv(5) == "x"
                waiter = ws.ping()
                assert waiter.wait(5)
                rtts.append(waiter.rtt)
        closes = []
        for _ in range(5):
            ws = connect_websocket("127.0.0.1", server.port, backend=backend, ping_interval=None)
            ws.send("x")
            assert ws.recv(5) == "x"
            start = time.monotonic()
            ws.close()
            closes.append(time.monotonic() - start)
            assert ws.close_code == 1000
    assert statistics.median(rtts) < 0.005, rtts
    assert statistics.median(closes) < 0.005, closes


def test_ping_waiter_returns_false_when_connection_closes(backend):
    with raw_server() as srv:
        peers = []
        t = threading.Thread(target=lambda: peers.append(srv.accept_ws()))
        t.start()
        ws = connect_websocket("127.0.0.1", srv.port, backend=backend, compression=None, ping_interval=None)
        t.join(5)
        waiter = ws.ping()
        with pytest.raises(TimeoutError):
            ws.recv(0.05)
        assert not waiter.wait(0.05)
        peers[0].close()
        start = time.monotonic()
        assert not waiter.wait(5)
        assert time.monotonic() - start < 2


def test_pings_answered_while_app_not_in_recv(backend):
    release = threading.Event()

    def handler(ws, address):
        release.wait(10)  # busy elsewhere: never calls recv()

    with running_server(handler, backend=backend) as server:
        with connect_websocket("127.0.0.1", server.port, backend=backend) as ws:
            for _ in range(3):
                assert ws.ping().wait(5)
            release.set()


def test_keepalive_runs_while_client_app_is_idle(backend):
    """Both sides ping each other every 50 ms; neither application calls recv()."""
    done = threading.Event()
    latencies = []

    def handler(ws, address):
        done.wait(10)
        latencies.append(ws.latency)

    opts = dict(backend=backend, ping_interval=0.05, ping_timeout=0.5)
    with running_server(handler, **opts) as server:
        ws = connect_websocket("127.0.0.1", server.port, **opts)
        assert wait_for(lambda: ws.latency > 0)
        time.sleep(0.3)  # several keepalive rounds without any recv() on either side
        assert not ws.closed
        done.set()
        assert ws.recv(5) is None
        assert ws.close_code == 1000
    assert latencies[0] > 0


def test_keepalive_timeout_closes_1011(backend):
    """A peer that completes the handshake and then never answers pings is failed with 1011."""
    result = queue.Queue()

    def handler(ws, address):
        start = time.monotonic()
        result.put((ws.recv(), time.monotonic() - start, ws.close_code))

    with running_server(handler, backend=backend, ping_interval=0.1, ping_timeout=0.2) as server:
        peer = raw_client(server.port)
        opcode, _ = peer.recv_frame()
        assert opcode == 9  # ping, never answered
        message, elapsed, code = result.get(timeout=5)
        assert message is None and elapsed < 2 and code == 1006
        opcode, payload = peer.recv_frame()
        assert opcode == 8 and payload[:2] == (1011).to_bytes(2, "big")
        peer.close()


def test_keepalive_timeout_client_side(backend):
    with raw_server() as srv:
        peers = []
        t = threading.Thread(target=lambda: peers.append(srv.accept_ws()))
        t.start()
        ws = connect_websocket(
            "127.0.0.1", srv.port, backend=backend, compression=None, ping_interval=0.1, ping_timeout=0.2
        )
        t.join(5)
        assert ws.recv(5) is None  # returns once the keepalive fails
        assert ws.closed
        opcode, _ = peers[0].recv_frame()
        assert opcode == 9
        opcode, payload = peers[0].recv_frame()
        assert opcode == 8 and payload[:2] == (1011).to_bytes(2, "big")
        peers[0].close()
        with pytest.raises(ConnectionClosed) as info:  # it names keepalive as the cause
            ws.send("late")
        assert info.value.code == 1006 and info.value.sent == (1011, "keepalive ping timeout")


@pytest.mark.parametrize("ping_timeout", [1.0, None])
def test_keepalive_pings_every_ping_interval(backend, ping_timeout):
    """SPEC: a keepalive ping every ping_interval, whatever ping_timeout is (it only bounds
    the wait for each pong); the next ping is due ping_interval after the previous one was
    sent. The client application never calls recv(): the reactor does it all."""
    interval, count = 0.05, 6
    with raw_server() as srv:
        peer, ws = _raw_peer_and_client(srv, backend, ping_interval=interval, ping_timeout=ping_timeout)
        peer.sock.settimeout(3)
        times = []
        while len(times) < count:
            opcode, payload = peer.recv_frame()
            assert opcode == 9
            times.append(time.monotonic())
            peer.send_frame(10, payload)  # answered at once
        span = times[-1] - times[0]
        # Before the fix: ping_timeout apart (5 s here), or a single ping with ping_timeout=None.
        assert (count - 1) * interval * 0.8 <= span < 2.0
        assert ws.open
        ws.abort()
        peer.close()


def test_keepalive_without_ping_timeout_keeps_pinging_a_silent_peer(backend):
    """ping_timeout=None: an unanswered ping is no error, and pings keep going every
    ping_interval (server side, handler inside recv()); the unanswered ones are not
    remembered without bound."""
    interval, count = 0.05, 6
    conns = queue.Queue()

    def handler(ws, address):
        conns.put(ws)
        ws.recv(10)

    with running_server(handler, backend=backend, ping_interval=interval, ping_timeout=None) as server:
        peer = raw_client(server.port)
        peer.sock.settimeout(3)
        ws = conns.get(timeout=5)
        start = time.monotonic()
        for _ in range(count):
            opcode, _ = peer.recv_frame()  # never answered
            assert opcode == 9
        assert time.monotonic() - start < 2.0
        assert ws.open
        with ws._lock:
            assert len(ws.protocol.pings) <= 1
        peer.close()


# ---------------------------------------------------------------- limits


def test_max_size_closes_1009(backend):
    result = queue.Queue()

    def handler(ws, address):
        result.put(ws.recv())

    with running_server(handler, backend=backend, max_size=1024) as server:
        ws = connect_websocket("127.0.0.1", server.port, backend=backend, compression=None)
        ws.send(b"x" * 1024)  # exactly max_size: fine
        assert result.get(timeout=5) == b"x" * 1024
    with running_server(handler, backend=backend, max_size=1024) as server:
        ws = connect_websocket("127.0.0.1", server.port, backend=backend)
        ws.send(os.urandom(1025))
        assert result.get(timeout=5) is None
        assert ws.recv(5) is None
        assert ws.close_code == 1009


def test_failing_drains_so_the_peer_gets_the_close_frame(backend):
    """A peer still sending the rest of an oversized message gets our 1009 close frame and then
    our EOF: we half-close and read until its EOF, where closing at once with its bytes unread
    would reset the connection (and the reset can destroy the close frame before it is read)."""
    with running_server(echo, backend=backend, max_size=1000) as server:
        for _ in range(3):
            peer = raw_client(server.port)
            peer.send_frame(2, bytes(300_000))  # the server fails at the header, the rest follows
            opcode, payload = peer.recv_frame()
            assert (opcode, int.from_bytes(payload[:2], "big")) == (8, 1009)
            with pytest.raises(EOFError):
                peer.recv_frame()  # the half-close: a clean EOF, not ECONNRESET
            peer.sock.shutdown(socket.SHUT_WR)
            peer.close()
        wait_for(lambda: not server.connections)


def test_full_duplex_senders_and_a_reader_never_stall(backend):
    """Threads sending large messages while another reads their echoes: our unsent bytes must
    not stop the reading (the echo server, blocked writing to us, would stop reading us: both
    sides waiting to write; audit: 4 trials in 5 stalled)."""
    count, size, senders = 100, 200_000, 4
    with running_server(echo, backend=backend, compression=None) as server:
        ws = connect_websocket("127.0.0.1", server.port, backend=backend, compression=None)
        got = []

        def reader():
            while len(got) < count:
                message = ws.recv(10)
                if message is None:
                    return
                got.append(len(message))

        def sender():
            for _ in range(count // senders):
                ws.send(b"x" * size)

        threads = [threading.Thread(target=sender, daemon=True) for _ in range(senders)]
        r = threading.Thread(target=reader, daemon=True)
        r.start()
        for t in threads:
            t.start()
        r.join(30)
        assert got == [size] * count
        ws.close()


def test_ping_flood_while_a_send_waits_on_a_peer_that_never_reads(backend):
    """Bad input: a handler blocked sending to a peer that does not read goes on reading (so a
    close frame would be seen), and the pongs for the peer's ping flood do not pile up: over
    write_limit only the latest ping is answered, once the buffer drains (RFC 6455 §5.5.3)."""
    conns = []
    sending = threading.Event()
    sent = threading.Event()

    def handler(ws, address):
        conns.append(ws)
        sending.set()
        ws.send(b"x" * 32_000_000)  # more than the kernel buffers: blocks, the peer never reads
        sent.set()

    with running_server(handler, backend=backend, write_limit=4096, ping_interval=None, compression=None) as server:
        peer = raw_client(server.port)
        assert sending.wait(5)
        ws = conns[0]
        wait_for(lambda: ws._wbuf_size > 4096)  # the send waits for the peer
        waiting = ws._wbuf_size
        ping = build_frame(9, b"p" * 125, True, False, os.urandom(4))
        for _ in range(25):  # 4 MB of pings: all read, whatever our own send waits on
            peer.sock.sendall(ping * 1000)
        peer.send_frame(9, b"last")
        wait_for(lambda: (ws.protocol._held_pong or b"").endswith(b"last"))
        assert ws._wbuf_size <= waiting  # no pong queued behind the send
        assert not sent.is_set()
        frames = []
        while not frames or frames[-1] != (10, b"last"):
            frames.append(peer.recv_frame())
        assert frames[0] == (2, b"x" * 32_000_000)
        assert len(frames) < 10  # the pong for the latest ping, not one for each
        assert sent.wait(5)
        assert peer.recv_frame() == (8, (1000).to_bytes(2, "big"))
        peer.close()
        wait_for(lambda: not server.connections)


def test_max_queue_backpressure_with_flooding_peer(backend):
    """The server's application does not read: its queue stays at max_queue and TCP pushes back."""
    release = threading.Event()
    finished = threading.Event()
    conns = []
    received = []

    def handler(ws, address):
        conns.append(ws)
        release.wait(20)
        received.extend(m for m in ws)
        finished.set()

    n, size = 400, 65536
    payload = os.urandom(size)
    with running_server(handler, backend=backend, max_queue=4) as server:
        ws = connect_websocket("127.0.0.1", server.port, backend=backend, compression=None)
        progress = []

        def flood():
            for i in range(n):
                ws.send(payload)
                progress.append(i)
            ws.close()

        t = threading.Thread(target=flood, daemon=True)
        t.start()
        t.join(1.0)
        assert t.is_alive(), "25 MiB cannot all be buffered: the sender must be blocked"
        sent = len(progress)
        assert sent < n
        server_ws = conns[0]
        assert len(server_ws._messages) <= 4 + 1
        release.set()
        t.join(20)
        assert not t.is_alive()
        assert finished.wait(10)
    assert len(received) == n and all(m == payload for m in received)


@pytest.mark.parametrize("side", ["server", "client"])
@pytest.mark.parametrize("ending", ["read-all", "close"])
def test_max_queue_bounds_compressed_messages_too(backend, side, ending):
    """One read of highly compressed messages (1 MB of zeros deflates to ~1 KB: ~100 in one
    read) is inflated only up to max_queue; the rest waits compressed and is delivered, in
    order, as the application reads, or before the closing handshake completes (it was 60 to
    120 x max_size for one connection whose application did not read: audit 55)."""
    count, size = 150, 1_000_000
    messages = [i.to_bytes(4, "big") + bytes(size - 4) for i in range(count)]
    peer_side: "queue.Queue[object]" = queue.Queue()
    done = threading.Event()

    def handler(ws, address):
        peer_side.put(ws)
        done.wait(20)

    options = dict(backend=backend, max_queue=4, max_size=2**21)
    with running_server(handler, **options) as server:
        ws = connect_websocket("127.0.0.1", server.port, **options)
        try:
            other = peer_side.get(timeout=5)
            receiver, sender = (other, ws) if side == "server" else (ws, other)
            assert receiver.extensions == ["permessage-deflate"]
            sending = threading.Thread(target=lambda: [sender.send(m) for m in messages], daemon=True)
            sending.start()
            assert wait_for(lambda: len(receiver._messages) >= 4 and receiver._read_paused)
            time.sleep(0.1)  # (nothing to wait for: what must not happen is more inflating)
            assert len(receiver._messages) <= 4  # bounded: 4 x 1 MB, not ~100 MB
            got = []
            if ending == "close":
                for _ in range(10):
                    got.append(receiver.recv(timeout=5))
                assert len(receiver._messages) <= 4
                sending.join(10)
                assert not sending.is_alive()
                receiver.close()
                assert receiver.close_code == 1000
                got += list(receiver._messages)  # what was queued before the close
                assert got == messages[: len(got)]
            else:
                while len(got) < count:
                    got.append(receiver.recv(timeout=5))
                    assert len(receiver._messages) <= 4
                sending.join(10)
                assert got == messages
        finally:
            done.set()
            ws.close()


def test_write_limit_with_peer_that_never_reads(backend):
    with raw_server() as srv:
        peers = []
        t = threading.Thread(target=lambda: peers.append(srv.accept_ws()))
        t.start()
        ws = connect_websocket("127.0.0.1", srv.port, backend=backend, compression=None, write_limit=2**16)
        t.join(5)
        chunk = b"\x00" * 2**20
        errors = []
        progress = []

        def send_forever():
            try:
                for i in range(200):
                    ws.send(chunk)
                    progress.append(i)
            except ConnectionClosed as exc:
                errors.append(exc)

        sender = threading.Thread(target=send_forever, daemon=True)
        sender.start()
        sender.join(1.0)
        assert sender.is_alive() and len(progress) < 200
        # Memory bounded: at most one message beyond the limit is buffered.
        assert ws._wbuf_size <= 2**16 + 2**20 + 16
        ws.abort()
        sender.join(5)
        assert not sender.is_alive()
        assert errors and isinstance(errors[0], ConnectionClosed)
        peers[0].close()


def test_server_first_frames_arrive_with_handshake(backend):
    """Frames the server sends right after its 101 (the handshake ``remainder``) are not lost."""

    def handler(ws, address):
        ws.send("first")
        ws.send("second")

    with running_server(handler, backend=backend) as server:
        ws = connect_websocket("127.0.0.1", server.port, backend=backend)
        assert ws.recv(5) == "first"
        assert ws.recv(5) == "second"
        assert ws.recv(5) is None


def test_reactor_takes_the_socket_back_after_recv(backend):
    """After recv() returns, the thread keeps the socket briefly (lazy hand-back); then the
    reactor reads again, so pings keep being answered while the application is elsewhere."""
    from kn_sock._reactor import get_reactor

    rtts = queue.Queue()
    release = threading.Event()

    def handler(ws, address):
        ws.send("hello")
        assert ws.recv(5) == "ack"
        for _ in range(3):
            waiter = ws.ping()
            rtts.put(waiter.wait(5))
        release.wait(10)

    with running_server(handler, backend=backend) as server:
        ws = connect_websocket("127.0.0.1", server.port, backend=backend)
        assert ws.recv(5) == "hello"
        ws.send("ack")  # from now on, this application never calls recv() until release
        assert [rtts.get(timeout=5) for _ in range(3)] == [True, True, True]
        assert not ws._held and ws._interest
        release.set()
        assert ws.recv(5) is None
    assert wait_for(lambda: ws not in get_reactor()._held, 1)


def _slow_raw_client(port: int) -> RawPeer:
    """A raw client with a 4 KiB receive buffer that reads its handshake reply byte by byte,
    leaving every frame after it unread until the test reads them."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    hs = ClientHandshake(parse_uri("127.0.0.1", port, "/"))
    sock.sendall(hs.data_to_send())
    while hs.receive_data(sock.recv(1)) is None:
        pass
    return RawPeer(sock, True, hs.remainder)


def test_large_frames_to_a_slow_reader_arrive_whole_and_in_order(backend):
    """Large server frames go out as header + payload in one sendmsg; when the kernel takes
    only part (or nothing), the rest is queued and flushed in order."""
    messages = [bytes([i]) * (65536 + 977 * i) for i in range(24)] + [b"small"]
    sent = threading.Event()

    def handler(ws, address):
        ws._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        for m in messages:
            ws.send(m)
        sent.set()
        ws.recv()

    with running_server(handler, backend=backend, compression=None) as server:
        peer = _slow_raw_client(server.port)
        assert not sent.wait(0.3)  # the server is held up by the unread frames
        got = [peer.recv_frame() for _ in messages]
        assert [opcode for opcode, _ in got] == [2] * len(messages)
        assert [payload for _, payload in got] == messages
        assert sent.wait(5)
        peer.send_frame(8, b"\x03\xe8")
        peer.close()


def test_large_frame_sent_while_the_socket_is_full_is_queued_whole(backend):
    """sendmsg taking nothing (the kernel buffer already full): header and payload both queue."""
    message = bytes(range(256)) * 400
    filler: list[int] = []
    sent = threading.Event()

    def handler(ws, address):
        sock = ws._sock
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        total = 0
        with ws._lock:  # keep the reactor from flushing while the buffer is filled by hand
            for size in (4096, 512, 64, 8, 1):  # to the byte: a smaller write may still fit
                while True:
                    try:
                        total += sock.send(b"\x00" * size, socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        break
            filler.append(total)
        ws.send(message)
        assert ws._wbuf_size == len(message) + 10  # nothing taken: all of it queued
        sent.set()
        ws.recv()

    with running_server(handler, backend=backend, compression=None, write_limit=2**20) as server:
        peer = _slow_raw_client(server.port)
        assert sent.wait(5)
        assert peer._read(filler[0]) == b"\x00" * filler[0]
        assert peer.recv_frame() == (2, message)
        peer.send_frame(8, b"\x03\xe8")
        peer.close()


@pytest.mark.parametrize("ending", ["reset", "close-frame"])
def test_blocking_recv_of_a_held_socket_handles_every_kind_of_read(backend, ending, monkeypatch):
    """recv() without a timeout on a socket it held last time reads it directly: whole
    messages, a ping (answered) between them, frames of a fragmented message, then the end."""
    import struct

    import kn_sock.sync.connection as connection

    monkeypatch.setattr(connection, "HOLD_TICK", 60.0)  # the thread keeps the socket throughout
    with raw_server() as srv:
        peer_box = []
        ready = threading.Event()

        def peer():
            peer_box.append(srv.accept_ws())
            ready.set()

        t = threading.Thread(target=peer)
        t.start()
        ws = connect_websocket("127.0.0.1", srv.port, backend=backend, compression=None, ping_interval=None)
        assert ready.wait(5)
        t.join(5)
        p = peer_box[0]
        # The first message arrives while this thread is reading (not the reactor), so recv()
        # ends by holding the socket.
        sender = threading.Thread(target=lambda: wait_for(lambda: ws._app_reading) and p.send_frame(2, b"first"))
        sender.start()
        assert ws.recv() == b"first"
        sender.join(5)
        assert ws._held  # every recv() from here on starts on the held socket
        p.send_frame(9, b"are you there")
        p.send_frame(1, "second".encode())
        assert ws.recv() == "second"
        assert p.recv_frame() == (10, b"are you there")
        p.send_frame(1, b"fra", fin=False)
        p.send_frame(0, b"gment")
        assert ws.recv() == "fragment"
        big = os.urandom(20000)
        for _ in range(3):  # large frames, received in place (recv_from's size guess)
            p.send_frame(2, big)
            assert ws.recv() == big
        assert ws._held
        if ending == "reset":
            p.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            p.close()  # RST: recv(2) fails with ECONNRESET
            assert ws.recv() is None
            assert ws.close_code == 1006
        else:
            p.send_frame(8, struct.pack("!H", 4000) + b"bye")
            assert ws.recv() is None
            assert (ws.close_code, ws.close_reason) == (4000, "bye")
            p.close()


def test_keepalive_failure_wakes_a_blocking_recv_on_a_held_socket(backend, monkeypatch):
    """The application thread sleeps in the socket's own read (recv() without a timeout on a
    socket it holds); a keepalive that fails (1011) must still end that read."""
    import kn_sock.sync.connection as connection

    monkeypatch.setattr(connection, "HOLD_TICK", 60.0)
    result = queue.Queue()

    def handler(ws, address):
        try:
            ws.recv(timeout=0.01)  # returns holding the socket, as every recv() does
        except TimeoutError:
            pass
        held = ws._held
        start = time.monotonic()
        result.put((held, ws.recv(), time.monotonic() - start, ws.close_code))

    with running_server(handler, backend=backend, ping_interval=0.1, ping_timeout=0.2) as server:
        peer = raw_client(server.port)
        opcode, _ = peer.recv_frame()
        assert opcode == 9  # ping, never answered
        held, message, elapsed, code = result.get(timeout=5)
        assert held and message is None and elapsed < 2 and code == 1006
        opcode, payload = peer.recv_frame()
        assert opcode == 8 and payload[:2] == (1011).to_bytes(2, "big")
        peer.close()


def test_queue_emptied_while_reading_pauses_does_not_leave_reading_paused(backend):
    """The reader appends the max_queue-th message, then takes _lock to pause reading; a
    recv() that empties the queue in between sees no pause to undo. Reading stayed paused with
    nothing queued: pings went unanswered until the next recv() (audit 29S; the test holds
    _lock, as a sending thread does, to open that window)."""
    go = threading.Event()

    def handler(ws, address):
        for i in range(3):
            ws.send(f"m{i}")
        go.wait(5)
        ws.send("m3")
        for _ in ws:
            pass

    with running_server(handler, backend=backend, compression=None) as server:
        ws = connect_websocket("127.0.0.1", server.port, backend=backend, compression=None, max_queue=4,
                               ping_interval=None)
        with ws:
            wait_for(lambda: len(ws._messages) == 3)
            with ws._lock:
                go.set()
                wait_for(lambda: len(ws._messages) == 4)  # the reader now waits for _lock
                assert [ws.recv(timeout=1) for _ in range(4)] == ["m0", "m1", "m2", "m3"]
            assert ws.ping().wait(5)  # read by the reactor: this thread is not in recv()
            assert not ws._read_paused
