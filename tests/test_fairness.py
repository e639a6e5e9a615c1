"""One abusive connection never stalls its neighbours (SPEC.md "Bad input": "another connection
disturbed"): a peer flooding empty continuation frames or pings, never reading, while a
well-behaved client on the same server does round trips. Both servers, both twins, the default
event loop and uvloop.

Not a benchmark: the bound is loose (100 round trips in 4 s; ~0.1-3 ms each here with the
fixes, 40-1,300 ms each before them: one read of tiny frames was tens of thousands of frames,
uvloop reads a socket 32 times in a row, and the blocking server's reading thread held the GIL).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time

import pytest

from asyncio_support import echo as async_echo
from kn_sock import async_connect_websocket, start_async_websocket_server
from kn_sock._pure import build_frame
from kn_sock.sync import connect_websocket
from sync_support import raw_client, running_server

pytestmark = pytest.mark.timeout(60)

ROUND_TRIPS = 100
BOUND = 4.0  # seconds for ROUND_TRIPS


def _flood(port: int, mode: str, stop: threading.Event, started: threading.Event) -> None:
    """The abusive peer: never reads; sends tiny frames as fast as the server takes them."""
    peer = raw_client(port)
    sock = peer.sock
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(0.1)
    key = os.urandom(4)
    if mode == "emptyfrag":
        sock.sendall(build_frame(2, b"a", False, False, key))
        chunk = build_frame(0, b"", False, False, key) * 10_000
    else:
        chunk = build_frame(9, b"p" * 125, True, False, key) * 400
    started.set()
    try:
        while not stop.is_set():
            try:
                sock.send(chunk)
            except socket.timeout:
                pass
    except OSError:  # the server may close it; the neighbour is what is measured
        pass
    finally:
        sock.close()


def _flooding(port: int, mode: str) -> tuple[threading.Thread, threading.Event]:
    stop, started = threading.Event(), threading.Event()
    thread = threading.Thread(target=_flood, args=(port, mode, stop, started), daemon=True)
    thread.start()
    assert started.wait(5)
    time.sleep(0.1)  # the flood is under way
    return thread, stop


@pytest.mark.parametrize("mode", ["emptyfrag", "pings"])
def test_blocking_server_neighbour_is_not_stalled(backend, mode):
    def handler(ws, address):
        for message in ws:
            ws.send(message)

    with running_server(handler, backend=backend, ping_interval=None) as server:
        thread, stop = _flooding(server.port, mode)
        try:
            with connect_websocket("127.0.0.1", server.port, backend=backend, ping_interval=None) as ws:
                start = time.monotonic()
                for i in range(ROUND_TRIPS):
                    ws.send(f"m{i}")
                    assert ws.recv(BOUND) == f"m{i}"
                elapsed = time.monotonic() - start
        finally:
            stop.set()
            thread.join(5)
    assert elapsed < BOUND, f"{ROUND_TRIPS} round trips took {elapsed:.2f} s during a {mode} flood"


async def _async_neighbour(backend, mode: str) -> float:
    server = await start_async_websocket_server("127.0.0.1", 0, async_echo, backend=backend, ping_interval=None)
    try:
        thread, stop = await asyncio.to_thread(_flooding, server.port, mode)
        try:
            async with async_connect_websocket("127.0.0.1", server.port, backend=backend, ping_interval=None) as ws:
                start = time.monotonic()
                for i in range(ROUND_TRIPS):
                    await ws.send(f"m{i}")
                    assert await ws.recv(timeout=BOUND) == f"m{i}"
                return time.monotonic() - start
        finally:
            stop.set()
            await asyncio.to_thread(thread.join, 5)
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 10)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("mode", ["emptyfrag", "pings"])
def test_asyncio_server_neighbour_is_not_stalled(backend, mode, loop):
    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        factory = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        elapsed = runner.run(_async_neighbour(backend, mode))
    assert elapsed < BOUND, f"{ROUND_TRIPS} round trips took {elapsed:.2f} s during a {mode} flood ({loop})"
