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

from kn_sock import async_connect_websocket, connect_websocket
from kn_sock.protocol import Keepalive
from sync_support import RawServer

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
