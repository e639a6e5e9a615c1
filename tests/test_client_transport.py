"""The clients' ``unix=`` (a Unix socket path) and ``sock=`` (a connected socket) options,
blocking and asyncio: served by both kn_sock servers, redirections over a Unix socket, and
the checks of the two options."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
import time
from typing import Any, Iterator

import pytest

from asyncio_support import TIMEOUT
from sync_support import RawServer
from kn_sock import (
    InvalidHandshake,
    WebSocketServer,
    async_connect_websocket,
    connect_websocket,
    start_async_websocket_server,
)

pytestmark = [
    pytest.mark.timeout(20),
    pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix sockets"),
]


def sync_echo(ws: Any, address: Any) -> None:
    for message in ws:
        ws.send(f"{ws.path} {message}")


async def async_echo(ws: Any, path: str) -> None:
    async for message in ws:
        await ws.send(f"{path} {message}")


class SyncUnixServer:
    """The blocking server on a Unix socket, in a thread."""

    def __init__(self, path: str, backend: Any, handler: Any = sync_echo, **options: Any) -> None:
        self.server = WebSocketServer(None, None, handler, unix=path, backend=backend, **options)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "SyncUnixServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.thread.join(TIMEOUT)


# --------------------------------------------------------------------------- unix=


@pytest.mark.asyncio
async def test_async_client_over_unix_to_both_servers(tmp_path, backend):
    path = str(tmp_path / "a.sock")
    async with await start_async_websocket_server(None, None, async_echo, unix=path, backend=backend):
        async with async_connect_websocket("ws://localhost/chat?x=1", unix=path, backend=backend) as ws:
            await ws.send("hi")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "/chat?x=1 hi"
            assert ws.extensions == ["permessage-deflate"]  # (the rest of the options apply as over TCP)
            assert ws.request_headers["Host"] == "localhost"
        assert ws.close_code == 1000
    path = str(tmp_path / "s.sock")
    with SyncUnixServer(path, backend):
        ws = await async_connect_websocket("ws://localhost/", unix=path, compression=None, backend=backend)
        await ws.send(b"\x00" * 100_000)  # a large frame (a write of its own) over the Unix socket
        await ws.send("after")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "/ " + str(b"\x00" * 100_000)
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "/ after"
        await ws.close()


def test_sync_client_over_unix_to_both_servers(tmp_path, backend):
    path = str(tmp_path / "s.sock")
    with SyncUnixServer(path, backend):
        with connect_websocket("ws://localhost/sync", unix=path, backend=backend) as ws:
            ws.send("hi")
            assert ws.recv(TIMEOUT) == "/sync hi"
        assert ws.close_code == 1000

    path = str(tmp_path / "a.sock")
    ready = threading.Event()
    stop: list[Any] = []

    def run_async_server() -> None:
        async def main() -> None:
            server = await start_async_websocket_server(None, None, async_echo, unix=path, backend=backend)
            done = asyncio.get_running_loop().create_future()
            stop.append((asyncio.get_running_loop(), done))
            ready.set()
            await done
            server.close()
            await server.wait_closed()

        asyncio.run(main())

    thread = threading.Thread(target=run_async_server, daemon=True)
    thread.start()
    assert ready.wait(TIMEOUT)
    try:
        with connect_websocket("ws://localhost/a", unix=path, backend=backend) as ws:
            ws.send("hi")
            assert ws.recv(TIMEOUT) == "/a hi"
    finally:
        loop, done = stop[0]
        loop.call_soon_threadsafe(done.set_result, None)
        thread.join(TIMEOUT)


def test_sync_client_takes_a_pathlike_unix_path(tmp_path, backend):
    """socket.connect takes no PathLike: the blocking client raised TypeError (audit 80)."""
    path = tmp_path / "p.sock"
    with SyncUnixServer(str(path), backend):
        with connect_websocket("ws://localhost/p", unix=path, backend=backend) as ws:
            ws.send("hi")
            assert ws.recv(TIMEOUT) == "/p hi"


def test_sync_server_takes_a_pathlike_or_bytes_unix_path(tmp_path, backend):
    """socket.bind takes no PathLike either: the blocking server raised TypeError when it bound
    (the asyncio server takes both); the socket file is still removed at shutdown."""
    for path in (tmp_path / "p.sock", os.fsencode(tmp_path / "b.sock")):
        with SyncUnixServer(path, backend):  # type: ignore[arg-type]  (str in the helper)
            with connect_websocket("ws://localhost/p", unix=path, backend=backend) as ws:
                ws.send("hi")
                assert ws.recv(TIMEOUT) == "/p hi"
        assert not os.path.exists(path)
    with pytest.raises(TypeError, match="unix must be a path"):
        WebSocketServer(None, None, sync_echo, unix=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unix must be a path"):  # asyncio: at the call, not awaited
        start_async_websocket_server(None, None, async_echo, unix=3)  # type: ignore[arg-type]


def test_sync_client_unix_path_missing(tmp_path):
    with pytest.raises(OSError):
        connect_websocket("ws://localhost/", unix=str(tmp_path / "none.sock"))


@pytest.mark.asyncio
async def test_async_client_unix_path_missing(tmp_path):
    with pytest.raises(OSError):
        await async_connect_websocket("ws://localhost/", unix=str(tmp_path / "none.sock"))


@contextlib.contextmanager
def full_unix_backlog(tmp_path: Any) -> Iterator[tuple[str, socket.socket, int]]:
    """A Unix listener nobody accepts on, its backlog filled: (path, listener, connections held)."""
    path = str(tmp_path / "full.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(0)
    held = []
    try:
        for _ in range(8):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            held.append(s)
            s.setblocking(False)
            try:
                s.connect(path)
            except BlockingIOError:  # full (Linux); other systems may refuse instead
                break
        else:
            pytest.skip("this system's Unix listen backlog does not fill")
        yield path, listener, len(held) - 1
    finally:
        for s in held:
            s.close()
        listener.close()


def _make_room(listener: socket.socket, held: int) -> RawServer:
    """Accept and drop the connections filling the backlog; the next accepted is the client."""
    listener.settimeout(TIMEOUT)
    for _ in range(held):
        listener.accept()[0].close()
    return RawServer(listener)


# (Linux refuses a non-blocking connect to a full backlog with EAGAIN where TCP would wait
# for its SYN to be accepted: both clients wait, within open_timeout.)


def test_sync_client_times_out_on_a_full_unix_backlog(tmp_path):
    with full_unix_backlog(tmp_path) as (path, _, _):
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="opening handshake"):
            connect_websocket("ws://localhost/", unix=path, open_timeout=0.3)
        assert 0.25 < time.monotonic() - started < 0.3 + TIMEOUT


@pytest.mark.asyncio
async def test_async_client_times_out_on_a_full_unix_backlog(tmp_path):
    with full_unix_backlog(tmp_path) as (path, _, _):
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="opening handshake"):
            await async_connect_websocket("ws://localhost/", unix=path, open_timeout=0.3)
        assert 0.25 < time.monotonic() - started < 0.3 + TIMEOUT


def test_sync_client_waits_for_room_in_a_full_unix_backlog(tmp_path, backend):
    with full_unix_backlog(tmp_path) as (path, listener, held):
        result: dict[str, Any] = {}

        def client() -> None:
            result["ws"] = connect_websocket("ws://localhost/", unix=path, open_timeout=TIMEOUT, backend=backend)

        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        time.sleep(0.1)  # (no event tells the client has met the full backlog; if not yet, it passes anyway)
        peer = _make_room(listener, held).accept_ws()
        thread.join(TIMEOUT)
        with result["ws"] as ws:
            peer.send_frame(0x1, b"room")
            assert ws.recv(TIMEOUT) == "room"
            peer.send_frame(0x8, b"\x03\xe8")
            assert ws.recv(TIMEOUT) is None
            peer.close()  # (the server closes TCP first)


@pytest.mark.asyncio
async def test_async_client_waits_for_room_in_a_full_unix_backlog(tmp_path, backend):
    with full_unix_backlog(tmp_path) as (path, listener, held):
        task = asyncio.ensure_future(
            async_connect_websocket("ws://localhost/", unix=path, open_timeout=TIMEOUT, backend=backend)
        )
        await asyncio.sleep(0.1)  # (as above)
        assert not task.done()
        peer = await asyncio.to_thread(lambda: _make_room(listener, held).accept_ws())
        async with await asyncio.wait_for(task, TIMEOUT) as ws:
            peer.send_frame(0x1, b"room")
            assert await ws.recv(TIMEOUT) == "room"
            peer.send_frame(0x8, b"\x03\xe8")
            assert await ws.recv(TIMEOUT) is None
            peer.close()  # (the server closes TCP first)


@pytest.mark.asyncio
async def test_async_reconnecting_client_over_unix(tmp_path, backend):
    """reconnect= reopens the Unix socket (it is a path, not a socket of the caller's)."""
    path = str(tmp_path / "r.sock")
    server = await start_async_websocket_server(None, None, async_echo, unix=path, backend=backend)
    ws = await async_connect_websocket(
        "ws://localhost/r", unix=path, backend=backend, reconnect={"initial_delay": 0.01, "max_delay": 0.05}
    )
    try:
        await ws.send("one")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "/r one"
        server.close()  # 1001: the client reconnects once the server is back
        await server.wait_closed()
        server = await start_async_websocket_server(None, None, async_echo, unix=path, backend=backend)
        await ws.send("two")  # queued while disconnected, delivered once reconnected
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "/r two"
    finally:
        await ws.close()
        server.close()
        await server.wait_closed()


# --------------------------------------------------------------------------- sock=


@pytest.mark.asyncio
async def test_async_client_on_a_callers_socket(tmp_path, backend):
    path = str(tmp_path / "a.sock")
    async with await start_async_websocket_server(None, None, async_echo, unix=path, backend=backend):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        async with async_connect_websocket("ws://localhost/given", sock=sock, backend=backend) as ws:
            await ws.send("hi")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "/given hi"


@pytest.mark.asyncio
async def test_async_client_on_a_callers_tcp_socket(backend):
    async with await start_async_websocket_server("127.0.0.1", 0, async_echo, backend=backend) as server:
        sock = socket.create_connection(("127.0.0.1", server.port))
        async with async_connect_websocket("ws://example.com/tcp", sock=sock, backend=backend) as ws:
            await ws.send("hi")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "/tcp hi"
            assert ws.remote_address[1] == server.port


# --------------------------------------------------------------------------- redirections


def _redirect(location: str) -> Any:
    def process_request(path: str, headers: Any) -> Any:
        if path == "/old":
            return 302, [("Location", location)], b""
        return None

    return process_request


@pytest.mark.asyncio
async def test_same_origin_redirect_followed_over_unix(tmp_path, backend):
    path = str(tmp_path / "a.sock")
    async with await start_async_websocket_server(
        None, None, async_echo, unix=path, backend=backend, process_request=_redirect("/new")
    ):
        async with async_connect_websocket("ws://localhost/old", unix=path, backend=backend) as ws:
            await ws.send("hi")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "/new hi"

        def sync() -> None:
            with connect_websocket("ws://localhost/old", unix=path, backend=backend) as ws:
                ws.send("hi")
                assert ws.recv(TIMEOUT) == "/new hi"

        await asyncio.to_thread(sync)


@pytest.mark.asyncio
async def test_cross_origin_redirect_refused_over_unix(tmp_path, backend):
    """The Unix socket is the one server: a redirection to another host can't be followed."""
    path = str(tmp_path / "a.sock")
    async with await start_async_websocket_server(
        None, None, async_echo, unix=path, backend=backend, process_request=_redirect("ws://elsewhere/new")
    ):
        with pytest.raises(InvalidHandshake, match="another origin"):
            await async_connect_websocket("ws://localhost/old", unix=path, backend=backend)
        with pytest.raises(InvalidHandshake, match="another origin"):
            await asyncio.to_thread(connect_websocket, "ws://localhost/old", unix=path, backend=backend)


@pytest.mark.asyncio
async def test_redirect_not_followed_on_a_callers_socket(tmp_path, backend):
    path = str(tmp_path / "a.sock")
    async with await start_async_websocket_server(
        None, None, async_echo, unix=path, backend=backend, process_request=_redirect("/new")
    ):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        with pytest.raises(InvalidHandshake) as info:
            await async_connect_websocket("ws://localhost/old", sock=sock, backend=backend)
        assert getattr(info.value, "status", None) == 302


# --------------------------------------------------------------------------- checks


@pytest.mark.parametrize(
    "options, error, words",
    [
        ({"unix": "x", "sock": "S"}, ValueError, "exclusive"),
        ({"unix": 3}, TypeError, "unix must be a path"),
        ({"sock": "not a socket"}, TypeError, "sock must be a socket"),
        ({"sock": "S", "reconnect": True}, ValueError, "cannot reopen"),
    ],
)
def test_transport_options_checked_at_once(options, error, words):
    with socket.socket() as s:
        options = {k: (s if v == "S" else v) for k, v in options.items()}
        with pytest.raises(error, match=words):
            connect_websocket("ws://localhost/", **options)
        with pytest.raises(error, match=words):
            async_connect_websocket("ws://localhost/", **options)
    assert not os.path.exists("x")


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs setitimer")
def test_sync_client_waits_on_when_a_signal_interrupts_the_backlog_wait(tmp_path):
    """A signal whose handler returns (SIGALRM here; SIGCHLD, SIGWINCH...) interrupting the
    wait made CPython take the unconnected socket for connected: InvalidHandshake (ENOTCONN)
    at once (audit 86). The wait goes on to open_timeout."""
    previous = signal.signal(signal.SIGALRM, lambda *args: None)
    try:
        with full_unix_backlog(tmp_path) as (path, _, _):
            signal.setitimer(signal.ITIMER_REAL, 0.1)
            started = time.monotonic()
            with pytest.raises(TimeoutError, match="opening handshake"):
                connect_websocket("ws://localhost/", unix=path, open_timeout=0.5)
            assert time.monotonic() - started > 0.45
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
