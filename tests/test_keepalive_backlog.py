"""Keepalive when our ping sits behind a backlog of our own data (Linux: TCP_INFO's bytes
acknowledged): a peer reading that backlog slowly but steadily is waited for (websockets fails
it with 1011 after ping_timeout); one that reads it all and never answers is failed, once the
ping has reached it, by both clients."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from typing import Any

import pytest

from kn_sock import (
    ConnectionClosed,
    WebSocketServer,
    async_connect_websocket,
    connect_websocket,
    start_async_websocket_server,
)
from kn_sock.protocol import Keepalive
from sync_support import RawServer, raw_client, running_server

BACKLOG = 4 * 2**20  # read by the peer at ~3 MB/s: over a second behind which the ping waits
OPTIONS: dict[str, Any] = dict(
    compression=None, ping_interval=0.2, ping_timeout=0.5, write_limit=2**24, close_timeout=0.5
)
needs_tcp_info = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux's TCP_INFO")


class SlowPeer:
    """A server that accepts one client and reads what it sends 16 KiB at a time, 5 ms apart,
    answering its pings (``answers``) or not, and recording what it saw."""

    def __init__(self, answers: bool) -> None:
        self.answers = answers
        self.server = RawServer()
        self.server.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # (accepted sockets inherit it)
        self.port = self.server.port
        self.read = 0  # payload bytes of data frames read
        self.pings = 0
        self.close_code: int | None = None
        self.backlog_read = threading.Event()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            peer = self.server.accept_ws()
            conn = self.conn = peer.sock
            conn.settimeout(10)
            peer.chunk, peer.pause = 16384, 0.005
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                b0, length, key = peer.recv_header()
                opcode = b0 & 0x0F
                if opcode >= 8:
                    payload = bytes(b ^ key[i % 4] for i, b in enumerate(peer._read(length)))  # type: ignore[index]
                    if opcode == 9:
                        self.pings += 1
                        if self.answers:
                            conn.sendall(bytes([0x8A, len(payload)]) + payload)
                    elif opcode == 8:
                        self.close_code = int.from_bytes(payload[:2], "big") if payload else 1005
                        return
                    continue
                while length:  # a data frame: skip its payload at the slow pace
                    n = min(length, 16384)
                    peer._read(n)
                    length -= n
                    self.read += n
                if self.read >= BACKLOG:
                    self.backlog_read.set()
        except (OSError, EOFError):
            pass
        finally:
            self.done.set()
            self.server.close()

    def stop(self) -> None:
        conn = getattr(self, "conn", None)
        if conn is not None:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # wakes the reader thread
            except OSError:
                pass
        self.thread.join(10)
        if conn is not None:
            conn.close()


# --------------------------------------------------------------------------- Keepalive alone


def test_ping_in_flight_bookkeeping():
    ka = Keepalive(1.0, 1.0, 0.0)
    ka.ping_sent(1.0, position=1000, acked=10)
    assert ka.ping_in_flight(500)  # on its way, the peer reading: wait
    assert ka.ping_in_flight(900)
    assert not ka.ping_in_flight(900)  # stalled: dead
    ka.ping_sent(2.0, position=1000, acked=10)
    assert ka.ping_in_flight(500)
    assert ka.ping_in_flight(1000)  # got through since the last look: one more wait
    assert not ka.ping_in_flight(1200)  # and no more
    ka.ping_sent(3.0, position=1000, acked=990)
    assert not ka.ping_in_flight(1000)  # through at the first look: the usual timeout
    ka.ping_sent(4.0)  # not known (not Linux, not TCP): never deferred
    assert not ka.ping_in_flight(500)
    ka.ping_sent(5.0, position=1000, acked=10)
    assert not ka.ping_in_flight(None)


def test_ping_in_flight_waits_a_bounded_number_of_timeouts():
    """A peer trickling towards the ping (one segment a timeout) is given BACKLOG_WAITS more
    timeouts, not hours (audit 80: still open after 22 timeouts)."""
    from kn_sock.protocol import BACKLOG_WAITS

    ka = Keepalive(1.0, 1.0, 0.0)
    ka.ping_sent(1.0, position=10**9, acked=0)
    assert all(ka.ping_in_flight(1460 * (i + 1)) for i in range(BACKLOG_WAITS))
    assert not ka.ping_in_flight(1460 * (BACKLOG_WAITS + 1))
    ka.ping_sent(2.0, position=10**9, acked=0)  # a new ping starts a new count
    assert ka.ping_in_flight(1460)


def test_pong_may_be_unread_bookkeeping():
    """While our reading is paused: wait while the peer's TCP takes more of our data at each
    look (no cap); fail at once when it took nothing and ours goes unanswered (gone, audit 81);
    a closed window answered by its TCP passes once (a slow reader between two window
    updates, audit 86), not twice (stalled)."""
    ka = Keepalive(1.0, 1.0, 0.0)
    ka.ping_sent(1.0, position=1000, acked=10)
    assert all(ka.pong_may_be_unread(10 + 100 * (i + 1), False) for i in range(20))  # no cap
    assert ka.pong_may_be_unread(2100, False)  # past the ping, and still taking more
    assert all(ka.pong_may_be_unread(2100, False) for _ in range(5))  # it has the ping: the pong may be ours to read
    assert not ka.pong_may_be_unread(2100, True)  # unless ours goes unanswered since
    ka.ping_sent(1.5, position=1000, acked=10)
    assert ka.pong_may_be_unread(500, False)
    assert ka.pong_may_be_unread(500, False)  # short of the ping, nothing more, its TCP answering: once
    assert not ka.pong_may_be_unread(500, False)  # twice: stalled
    ka.ping_sent(2.0, position=1000, acked=10)
    assert not ka.pong_may_be_unread(10, True)  # nothing taken, ours unanswered: gone
    ka.ping_sent(3.0, position=1000, acked=10)
    assert ka.pong_may_be_unread(20, True)  # anything taken shows a live peer
    assert ka.pong_may_be_unread(20, False)
    assert ka.pong_may_be_unread(30, False)  # progress resets the count
    assert ka.pong_may_be_unread(30, False)
    ka.ping_sent(4.0)  # not known (not Linux, not TCP): as before, wait
    assert ka.pong_may_be_unread(None) and ka.pong_may_be_unread(None)
    ka.ping_sent(5.0, position=1000, acked=10)
    assert ka.pong_may_be_unread(None)


# --------------------------------------------------------------------------- both clients


@needs_tcp_info
@pytest.mark.timeout(30)
def test_sync_client_waits_for_a_slow_reader_and_fails_a_silent_one(backend):
    for answers in (True, False):
        peer = SlowPeer(answers)
        ws = connect_websocket("127.0.0.1", peer.port, backend=backend, **OPTIONS)
        try:
            for _ in range(BACKLOG // 2**20):
                ws.send(bytes(2**20))
            if answers:
                assert peer.backlog_read.wait(15)
                assert not ws.closed, "a peer reading steadily towards our ping was failed"
                ws.send(b"still open")
            else:
                assert ws.recv(15) is None  # failed once the ping got through
                assert peer.done.wait(15)
                assert peer.read >= BACKLOG and peer.pings >= 1
                assert peer.close_code == 1011
                assert ws.close_code == 1006
        finally:
            ws.close()
            peer.stop()


@needs_tcp_info
@pytest.mark.timeout(30)
@pytest.mark.asyncio
async def test_async_client_waits_for_a_slow_reader_and_fails_a_silent_one(backend):
    for answers in (True, False):
        peer = SlowPeer(answers)
        ws = await async_connect_websocket("127.0.0.1", peer.port, backend=backend, **OPTIONS)
        try:
            for _ in range(BACKLOG // 2**20):
                await ws.send(bytes(2**20))
            if answers:
                assert await asyncio.to_thread(peer.backlog_read.wait, 15)
                assert not ws.closed, "a peer reading steadily towards our ping was failed"
                await ws.send(b"still open")
            else:
                assert await ws.recv(timeout=15) is None  # failed once the ping got through
                assert await asyncio.to_thread(peer.done.wait, 15)
                assert peer.read >= BACKLOG and peer.pings >= 1
                assert peer.close_code == 1011
                assert ws.close_code == 1006
        finally:
            ws.abort()
            await asyncio.to_thread(peer.stop)


# --------------------------------------------------------------------------- our reading paused

# A push-only handler never reads: once the client has sent more than max_queue messages,
# reading stops (backpressure) and a pong could be sitting unread. Keepalive used to put its
# timeout off for as long as that lasted, so a peer that vanished (or stopped reading) was
# never failed (audit 81). Now a peer whose TCP acknowledges nothing of ours is failed with
# 1011; one whose TCP takes everything is waited for (its pong may be unread).
PUSH_OPTIONS: dict[str, Any] = dict(
    compression=None, ping_interval=0.2, ping_timeout=0.3, max_queue=2, close_timeout=0.5
)
CHUNK = bytes(16384)


def _stalled_client(port: int) -> Any:
    """A client that fills the server's queue (10 messages, max_queue=2), then reads nothing."""
    peer = raw_client(port)
    for _ in range(10):
        peer.send_frame(0x1, b"subscribe")
    return peer


def _reading_client(port: int, seconds: float, pace: float = 0.0) -> Any:
    """The same, but reading (and discarding) what it gets for ``seconds``, not answering
    pings: as fast as it comes, or (``pace``) 64 KiB every ``pace`` seconds."""
    peer = _stalled_client(port)
    deadline = time.monotonic() + seconds
    peer.sock.settimeout(0.05)
    while time.monotonic() < deadline:
        try:
            if not peer.sock.recv(65536 if pace else 1 << 20):
                break
        except socket.timeout:
            pass
        if pace:
            time.sleep(pace)
    return peer


@needs_tcp_info
@pytest.mark.timeout(30)
def test_sync_server_push_only_fails_a_stalled_peer_and_keeps_a_reading_one(backend):
    for reading in (False, True, "slowly"):
        ended: list[BaseException] = []
        done = threading.Event()

        def handler(ws: Any, address: Any) -> None:
            try:
                while True:
                    ws.send(CHUNK)
            except ConnectionClosed as exc:
                ended.append(exc)
            finally:
                done.set()

        with WebSocketServer("127.0.0.1", 0, handler, backend=backend, **PUSH_OPTIONS) as server:
            threading.Thread(target=server.serve_forever, daemon=True).start()
            if reading:  # ~5 timeouts of the first ping; slowly: Linux reopens the window in steps (audit 86)
                peer = _reading_client(server.port, 1.5, 0.1 if reading == "slowly" else 0.0)
                assert not done.is_set(), f"a peer whose TCP reads all was failed: {ended}"
            else:
                peer = _stalled_client(server.port)
                assert done.wait(10), "a stalled peer was kept while our reading was paused"
                assert ended and ended[0].sent is not None and ended[0].sent[0] == 1011, ended
            peer.close()
            assert done.wait(10)


@needs_tcp_info
@pytest.mark.timeout(30)
@pytest.mark.asyncio
async def test_async_server_push_only_fails_a_stalled_peer_and_keeps_a_reading_one(backend):
    for reading in (False, True, "slowly"):
        ended: list[BaseException] = []
        done = asyncio.Event()

        async def handler(ws: Any, path: str) -> None:
            try:
                while True:
                    await ws.send(CHUNK)
            except ConnectionClosed as exc:
                ended.append(exc)
            finally:
                done.set()

        async with start_async_websocket_server("127.0.0.1", 0, handler, backend=backend, **PUSH_OPTIONS) as server:
            if reading:
                peer = await asyncio.to_thread(_reading_client, server.port, 1.5, 0.1 if reading == "slowly" else 0.0)
                assert not done.is_set(), f"a peer whose TCP reads all was failed: {ended}"
            else:
                peer = await asyncio.to_thread(_stalled_client, server.port)
                await asyncio.wait_for(done.wait(), 10)
                assert ended and ended[0].sent is not None and ended[0].sent[0] == 1011, ended
            peer.close()
            await asyncio.wait_for(done.wait(), 10)


@needs_tcp_info
@pytest.mark.timeout(30)
def test_sync_keepalive_timeout_behind_a_backlog_wakes_recv_and_send_at_once(backend):
    """The peer takes nothing (its application stopped reading): the keepalive timeout ends
    the connection at once, not close_timeout later while our close frame waits behind the
    backlog (audit 81; the asyncio layer already did)."""
    server = RawServer()
    accepted: list[Any] = []
    thread = threading.Thread(target=lambda: accepted.append(server.accept_ws()), daemon=True)
    thread.start()
    ws = connect_websocket("127.0.0.1", server.port, backend=backend, compression=None,
                           ping_interval=0.2, ping_timeout=0.3, close_timeout=8)
    send_ended = threading.Event()

    def sender() -> None:
        try:
            while True:
                ws.send(bytes(2**20))
        except ConnectionClosed:
            send_ended.set()

    threading.Thread(target=sender, daemon=True).start()
    started = time.monotonic()
    try:
        assert ws.recv(15) is None
        assert time.monotonic() - started < 4, "recv() waited for close_timeout"
        assert send_ended.wait(4)
        assert ws.close_code == 1006
    finally:
        ws.abort()
        thread.join(10)
        for peer in accepted:
            peer.close()
        server.close()


STALLED = dict(compression=None, ping_interval=0.2, ping_timeout=0.3, close_timeout=0.5)


def read_until_reset(sock: socket.socket) -> int:
    """Read what a dropped connection still delivers; the bytes read (raises on a clean EOF)."""
    sock.settimeout(10)
    got = 0
    with pytest.raises(ConnectionResetError):
        while True:
            data = sock.recv(65536)
            assert data, "an orderly FIN: what we had not sent stayed with the kernel"
            got += len(data)
    return got


@needs_tcp_info
@pytest.mark.timeout(30)
def test_sync_server_resets_a_stalled_peer_it_drops(backend):
    """A peer that stopped reading, dropped after a timeout with MiBs still in our kernel send
    queue: a TCP reset frees them at once; a plain close left them to an orphaned socket that
    the kernel retries for minutes (audit: 4 MB in FIN-WAIT-1)."""
    ended = threading.Event()

    def handler(ws: Any, address: Any) -> None:
        try:
            while True:
                ws.send(bytes(2**20))
        except ConnectionClosed:
            ended.set()

    with running_server(handler, backend=backend, **STALLED) as server:
        peer = raw_client(server.port)
        peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            assert ended.wait(10)
            assert read_until_reset(peer.sock) < 2**20
        finally:
            peer.close()


@needs_tcp_info
@pytest.mark.timeout(30)
async def test_async_server_resets_a_stalled_peer_it_drops(backend):
    """As above, for the asyncio server (dropped when its closing handshake times out)."""
    ended = asyncio.Event()

    async def handler(ws: Any, path: str) -> None:
        try:
            while True:
                await ws.send(bytes(2**20))
        except ConnectionClosed:
            ended.set()

    server = await start_async_websocket_server("127.0.0.1", 0, handler, backend=backend, **STALLED)
    try:
        peer = await asyncio.to_thread(raw_client, server.port)
        peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            await asyncio.wait_for(ended.wait(), 10)
            assert await asyncio.to_thread(read_until_reset, peer.sock) < 2**20
        finally:
            peer.close()
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 10)
