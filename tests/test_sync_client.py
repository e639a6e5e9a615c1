"""The blocking client: URI forms, handshake failures, open_timeout, interop with websockets.sync."""

from __future__ import annotations

import os
import socket
import struct
import sys
import threading
import time

import pytest

from kn_sock.exceptions import ConnectionClosedError, InvalidHandshake, InvalidStatus, InvalidURI
from kn_sock.reconnect import retryable_error
from kn_sock.sync import connect_websocket
from sync_support import CREDENTIALS, credential_redirects, credentials_seen, echo, raw_server, resolving, running_server

pytestmark = pytest.mark.timeout(30)

websockets_sync_client = pytest.importorskip("websockets.sync.client")
websockets_sync_server = pytest.importorskip("websockets.sync.server")


def test_host_port_and_uri_forms(backend):
    paths = []

    def handler(ws, address):
        paths.append(ws.path)
        echo(ws, address)

    with running_server(handler, backend=backend) as server:
        forms = [
            (("127.0.0.1", server.port), "/"),
            (("127.0.0.1", server.port, "/chat"), "/chat"),
            ((f"ws://127.0.0.1:{server.port}/chat?x=1",), "/chat?x=1"),
            (("localhost", server.port), "/"),
        ]
        for args, path in forms:
            with connect_websocket(*args, backend=backend) as ws:
                assert ws.path == path
                ws.send("form")
                assert ws.recv(5) == "form"
        assert paths == [p for _, p in forms]


def test_invalid_uri_and_unknown_option():
    with pytest.raises(InvalidURI):
        connect_websocket("http://example.com/")
    with pytest.raises(TypeError):
        connect_websocket("127.0.0.1", 1, no_such_option=True)


def test_reconnect_initial_failure_is_bounded_by_the_policy():
    # Reconnection itself is tested in test_reconnect_sync.py.
    with pytest.raises(OSError):
        connect_websocket("127.0.0.1", 1, reconnect={"initial_delay": 0.01, "max_attempts": 1})


def test_connection_refused():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        connect_websocket("127.0.0.1", port, reconnect=False)


def test_rejection_status_is_visible():
    def process_request(path, headers):
        return 403, [("X-Why", "forbidden")], b"go away"

    with running_server(echo, process_request=process_request) as server:
        with pytest.raises(InvalidStatus) as info:
            connect_websocket("127.0.0.1", server.port)
    assert info.value.status == 403
    assert info.value.headers["X-Why"] == "forbidden"
    assert info.value.body == b"go away"
    assert isinstance(info.value, InvalidHandshake)


def test_open_timeout_with_silent_server():
    with raw_server() as srv:
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            connect_websocket("127.0.0.1", srv.port, open_timeout=0.3)
        assert time.monotonic() - start < 2


def test_open_timeout_zero_is_a_timeout():
    """open_timeout=0: TimeoutError at once, as the asyncio client (a socket timeout of 0
    made the connect non-blocking: BlockingIOError)."""
    with raw_server() as srv:
        with pytest.raises(TimeoutError):
            connect_websocket("127.0.0.1", srv.port, open_timeout=0)


def test_open_timeout_bounds_a_slow_name_lookup(monkeypatch):
    """A resolver that does not answer: TimeoutError at open_timeout, as the asyncio client
    (getaddrinfo took its own time, 5 s per attempt and DNS server)."""
    real = socket.getaddrinfo
    release = threading.Event()

    def slow(host, *args, **kwargs):
        if host == "slow.invalid":
            if kwargs.get("flags", args[4] if len(args) > 4 else 0) & socket.AI_NUMERICHOST:  # (port, family, type, proto, flags)
                raise socket.gaierror(socket.EAI_NONAME, "not a number")
            release.wait(5)
        return real("127.0.0.1" if host == "slow.invalid" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    start = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            connect_websocket("ws://slow.invalid:9/", open_timeout=0.3)
        assert time.monotonic() - start < 2
    finally:
        release.set()


def test_a_lookup_failing_after_open_timeout_leaves_no_cycle(monkeypatch):
    """The late error, kept by the lookup thread with its traceback (which holds that thread's
    frame, whose cell holds the error's list), was a cycle (audit 29Q)."""
    import gc

    real = socket.getaddrinfo
    release = threading.Event()

    def slow(host, *args, **kwargs):
        if host == "slow.invalid":
            if kwargs.get("flags", args[4] if len(args) > 4 else 0) & socket.AI_NUMERICHOST:
                raise socket.gaierror(socket.EAI_NONAME, "not a number")
            release.wait(5)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        with pytest.raises(TimeoutError):
            connect_websocket("ws://slow.invalid:9/", open_timeout=0.1)
        (lookup,) = [t for t in threading.enumerate() if t.name == "kn_sock-resolve-slow.invalid"]
        release.set()
        lookup.join(5)
        gc.collect()
        assert not [o for o in gc.garbage if isinstance(o, socket.gaierror)]
    finally:
        release.set()
        gc.garbage.clear()
        gc.set_debug(0)
        gc.enable()


def test_a_failed_name_lookup_raises_its_error(monkeypatch):
    def failing(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", failing)
    with pytest.raises(socket.gaierror):
        connect_websocket("ws://nowhere.invalid:9/", open_timeout=1)


def test_server_closing_during_handshake():
    with raw_server() as srv:

        def peer():
            conn, _ = srv.sock.accept()
            conn.recv(4096)
            conn.close()

        t = threading.Thread(target=peer)
        t.start()
        with pytest.raises(InvalidHandshake):
            connect_websocket("127.0.0.1", srv.port, open_timeout=5)
        t.join(5)


# ---------------------------------------------------------------- interop with websockets.sync


def test_websockets_client_to_our_server(backend):
    with running_server(echo, backend=backend) as server:
        with websockets_sync_client.connect(f"ws://127.0.0.1:{server.port}/") as ws:
            for message in ["hello", b"\x00\xff", "", "\u00e9" * 1000, os.urandom(200000)]:
                ws.send(message)
                assert ws.recv(timeout=5) == message
            ws.send(["frag", "mented"])
            assert ws.recv(timeout=5) == "fragmented"
            ws.ping().wait(5)
        with websockets_sync_client.connect(f"ws://127.0.0.1:{server.port}/", compression=None) as ws:
            ws.send("no compression")
            assert ws.recv(timeout=5) == "no compression"
            ws.close(4000, "bye")


def test_our_client_to_websockets_server(backend):
    def handler(ws):
        for message in ws:
            ws.send(message)

    with websockets_sync_server.serve(handler, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        port = server.socket.getsockname()[1]
        try:
            with connect_websocket("127.0.0.1", port, backend=backend) as ws:
                assert ws.extensions == ["permessage-deflate"]
                for message in ["hello", b"\x00\xff", "", "\u00e9" * 1000, os.urandom(200000)]:
                    ws.send(message)
                    assert ws.recv(5) == message
                ws.send([b"frag", b"mented"])
                assert ws.recv(5) == b"fragmented"
                assert ws.ping().wait(5)
            assert ws.closed and ws.close_code == 1000
            with connect_websocket("127.0.0.1", port, backend=backend, compression=None) as ws:
                assert ws.extensions == []
                ws.send("plain")
                assert ws.recv(5) == "plain"
        finally:
            server.shutdown()
            thread.join(5)


def test_websockets_server_closing_is_seen(backend):
    def handler(ws):
        ws.close(4002, "server says bye")

    with websockets_sync_server.serve(handler, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        port = server.socket.getsockname()[1]
        try:
            ws = connect_websocket("127.0.0.1", port, backend=backend)
            assert ws.recv(5) is None
            assert (ws.close_code, ws.close_reason) == (4002, "server says bye")
            assert ws.wait_closed(5)
        finally:
            server.shutdown()
            thread.join(5)


@pytest.mark.parametrize(
    "options",
    [{"subprotocols": ["a b"]}, {"headers": {"Bad Name": "x"}}, {"origin": "bad\r\nx"}, {"user_agent": "a\r\nb"}],
)
def test_bad_handshake_options_raise_before_connecting(options):
    """ValueError at once, as from the asyncio client, not a network error that hides the bad
    value (nothing listens on port 9; regression audit 57)."""
    with pytest.raises(ValueError):
        connect_websocket("127.0.0.1", 9, open_timeout=5, **options)


@pytest.mark.parametrize("reset", [True, False], ids=["reset", "eof"])
def test_reset_during_the_handshake_is_invalid_handshake(reset):
    """A server that resets (or closes) the connection mid-handshake: InvalidHandshake (as the
    asyncio client raises), not a bare ConnectionResetError, with the network's error (or
    EOFError) as its cause; a reconnecting client retries it."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        conn.recv(4096)
        if reset:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # RST, or FIN

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with pytest.raises(InvalidHandshake, match="connection closed during the opening handshake") as info:
            connect_websocket("127.0.0.1", listener.getsockname()[1], open_timeout=5)
        assert isinstance(info.value.__cause__, ConnectionResetError if reset else EOFError)
        assert retryable_error(info.value)
    finally:
        thread.join(5)
        listener.close()


def _report_credentials(ws, address):
    ws.send(credentials_seen(ws.request_headers))


def test_a_redirect_to_another_origin_drops_credential_headers():
    """Authorization, Cookie and Proxy-Authorization from ``headers=`` go to the origin they
    were meant for, not to wherever a 3xx points (audit 87; as websockets, curl, browsers)."""
    with running_server(_report_credentials) as target:
        with running_server(_report_credentials, process_request=credential_redirects(target.port)) as server:
            with connect_websocket("127.0.0.1", server.port, "/same", headers=CREDENTIALS) as ws:
                assert ws.recv(5) == repr(["Bearer secret", "session=abc", "kept"])
            with connect_websocket("127.0.0.1", server.port, "/other", headers=list(CREDENTIALS.items())) as ws:
                assert ws.path == "/there"
                assert ws.recv(5) == repr([None, None, "kept"])


def test_redirects_are_followed():
    """A 3xx with a Location is followed (here to another path, then another server)."""
    with running_server(lambda ws, address: ws.send(ws.path)) as target:

        def hook(path, headers):
            if path == "/old":
                return 308, {"Location": "/older?x=1"}, b""
            if path == "/older?x=1":
                return 302, {"Location": f"http://127.0.0.1:{target.port}/new"}, b""
            return None

        with running_server(echo, process_request=hook) as server:
            with connect_websocket("127.0.0.1", server.port, "/old") as ws:
                assert ws.path == "/new"
                assert ws.recv(5) == "/new"


# --------------------------------------------------------------------------- a bad frame behind good ones


def _accept_in_thread(srv, first_frames: bytes) -> tuple[threading.Thread, list]:
    """Accept one client on ``srv`` in a thread, ``first_frames`` right behind the upgrade
    answer; the accepted socket lands in the list."""
    peers: list = []
    t = threading.Thread(target=lambda: peers.append(srv.accept_ws(first_frames=first_frames).sock))
    t.start()
    return t, peers


@pytest.mark.timeout(20)
def test_client_answers_messages_that_came_with_the_handshake_before_failing(backend):
    """A message and a bad frame right behind the server's handshake answer (Autobahn's
    fuzzing server, 3.2): the application takes it and answers before the connection fails."""
    from kn_sock._pure import build_frame

    with raw_server() as srv:
        t, peers = _accept_in_thread(srv, build_frame(1, b"early") + bytes([0xA1, 0x00]))
        with connect_websocket("127.0.0.1", srv.port, backend=backend, compression=None, close_timeout=1) as ws:
            got = []
            for message in ws:
                got.append(message)
                ws.send(message)
            assert got == ["early"]
            assert ws.close_code == 1006
            t.join(5)
            conn = peers[0]
            data = b""
            while len(data) < 2 + 4 + 5 + 2 + 4 + 2:  # masked echo, then masked close 1002
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            conn.close()
        assert data[0] == 0x81 and data[11] == 0x88, data  # the echo's frame first, then the close


@pytest.mark.timeout(20)
def test_client_fails_within_a_tick_when_the_application_does_not_read(backend):
    """The error waits for the application no longer than a reactor tick: with nobody in
    recv(), the close frame (1002) goes out anyway; the message stays queued."""
    from kn_sock._pure import build_frame

    with raw_server() as srv:
        t, peers = _accept_in_thread(srv, build_frame(2, b"kept") + bytes([0x83, 0x00]))
        ws = connect_websocket("127.0.0.1", srv.port, backend=backend, compression=None, close_timeout=1)
        try:
            t.join(5)
            conn = peers[0]
            head = conn.recv(2)  # the close frame's header, without any recv() on our side
            assert head[0] == 0x88
            rest = conn.recv(64)
            assert int.from_bytes(bytes(a ^ b for a, b in zip(rest[4:6], rest[0:2])), "big") == 1002
            conn.close()
            assert ws.recv(timeout=5) == b"kept"
            assert ws.recv(timeout=5) is None
        finally:
            ws.close()


@pytest.mark.parametrize("sender", ["fast path", "fragments"])
def test_send_raises_when_the_peer_resets_mid_message_and_its_close_frame_is_kept(backend, sender):
    """A peer that sends a close frame and resets the connection while we are writing a large
    message: send() raises (it returned as if sent: audit), and the close frame, which arrived
    before the reset (Linux keeps it readable), gives close_code (it was 1006)."""
    from kn_sock._pure import build_frame

    def peer() -> None:
        sock = srv.accept_ws().sock
        try:
            sock.recv(4096)  # the start of our message, the rest unread: closing resets
            sock.sendall(build_frame(8, struct.pack("!H", 1009) + b"too big", True, False, None))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            sock.close()

    with raw_server() as srv:
        thread = threading.Thread(target=peer, daemon=True)
        thread.start()
        ws = connect_websocket("127.0.0.1", srv.port, backend=backend, compression=None, close_timeout=5)
        started = time.monotonic()
        message = bytes(32 * 2**20)
        with pytest.raises(ConnectionClosedError) as info:
            ws.send(message if sender == "fast path" else [message[: 2**24], message[2**24 :]])
        assert info.value.code == 1009 and info.value.reason == "too big"
        assert time.monotonic() - started < 3  # not close_timeout: the reset ends the stream
        assert ws.recv(5) is None and ws.close_code == 1009
        ws.close()
        thread.join(5)


# ---------------------------------------------------------------- a host with several addresses


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="127.0.0.2-4 and SYNs dropped by a full backlog: Linux")
def test_open_timeout_bounds_all_the_addresses_together(monkeypatch):
    """Three addresses that never answer the SYN (full accept queues): TimeoutError at
    open_timeout, not three times it (audit: each address had its own timeout)."""
    keep = []
    try:
        port = 0
        for ip in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
            listener = socket.create_server((ip, port), backlog=0)
            port = listener.getsockname()[1]
            keep.append(listener)
            for _ in range(8):  # fill the accept queue: later SYNs are dropped
                filler = socket.socket()
                filler.setblocking(False)
                try:
                    filler.connect((ip, port))
                except BlockingIOError:
                    pass
                keep.append(filler)
        resolving(monkeypatch, "three.kn-sock.test", [(ip, port) for ip in ("127.0.0.2", "127.0.0.3", "127.0.0.4")])
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            connect_websocket(f"ws://three.kn-sock.test:{port}/", open_timeout=1.0)
        assert time.monotonic() - start < 2.0  # (3 s before)
    finally:
        for sock in keep:
            sock.close()


def test_the_next_address_is_tried_and_the_first_error_raised(monkeypatch):
    """An address that refuses is passed over for the next (as socket.create_connection);
    when every one fails, the first one's error is raised."""
    closed = socket.create_server(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()
    with running_server(echo) as server:
        resolving(monkeypatch, "two.kn-sock.test", [("127.0.0.1", dead_port), ("127.0.0.1", server.port)])
        with connect_websocket("ws://two.kn-sock.test/", open_timeout=5) as ws:
            ws.send("second")
            assert ws.recv(5) == "second"
    resolving(monkeypatch, "none.kn-sock.test", [("127.0.0.1", dead_port), ("127.0.0.1", dead_port)])
    with pytest.raises(ConnectionRefusedError):
        connect_websocket("ws://none.kn-sock.test/", open_timeout=5)
