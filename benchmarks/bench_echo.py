"""Echo throughput: kn_sock against raw sockets and the other Python WebSocket libraries.

One connection per contestant, client and server in separate processes (children of this script),
compression off everywhere. Modes:

* round trips/s at 64 B, 1 KiB, 64 KiB, 1 MiB binary, and 1 KiB text (send one message, wait for
  its echo, repeat);
* pipelined 1 KiB binary messages/s with a window of ``--window`` (default 100) messages in flight.

Contestants are interleaved and the whole set is repeated ``--rounds`` times; the table shows
medians. Async rows are compared with a raw asyncio TCP echo, blocking rows with a raw blocking
socket echo, and kn_sock rows also with picows (asyncio rows on the same event loop; the blocking
row with picows on the default asyncio loop, picows having no blocking API) and with websockets
(as installed, with its C masking; the pure twin also with websockets' all-Python masking, the
``websockets_py`` row).

    python benchmarks/bench_echo.py            # ~3 min
    python benchmarks/bench_echo.py --quick    # ~30 s smoke run
    python benchmarks/bench_echo.py --json out.json --only kn_pure,picows

Internal child modes: ``--serve NAME --port 0`` (prints ``PORT n``), ``--client NAME --port N``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402

MAX_SIZE = 4 * 2**20
HOST = "127.0.0.1"

# (key, kind, payload size) ; kind: bin | text | pipe
MODES_FULL = [
    ("64 B", "bin", 64),
    ("1 KiB", "bin", 1024),
    ("64 KiB", "bin", 65536),
    ("1 MiB", "bin", 2**20),
    ("text 1 KiB", "text", 1024),
    ("pipe 1 KiB", "pipe", 1024),
]
# Every client first exchanges two 1 MiB messages. glibc raises its mmap threshold once a large
# block is freed; before that, asyncio.Protocol's 256 KiB recv() buffer costs an mmap + munmap
# per read, so without priming a contestant's small-message figures depend on whether it has
# already run its 1 MiB cell (measured: raw asyncio 16k -> 35k rt/s at 64 B).
PRIME = bytes(2**20)
MODES_QUICK = [m for m in MODES_FULL if m[0] != "64 KiB"]


@dataclass
class Contestant:
    name: str  # short id used on the command line
    label: str
    group: str  # "async" or "sync"
    server: str  # server kind
    client: str  # client kind
    env: dict[str, str | None] = field(default_factory=dict)
    uvloop: bool = False
    requires: tuple[str, ...] = ()
    picows_ref: str | None = None  # picows row to compare kn_sock rows with
    note: str = ""
    # kn_sock rows: the implementation the row claims, "cython" or "pure", or "default" for the
    # one kn_sock picks here (then named in the label). Checked before the row runs (a probe in
    # the row's environment), on its server (IMPL line) and in every client (RESULT): a row whose
    # implementation is not the one claimed is skipped with a note, never shown mislabelled.
    impl: str | None = None


CONTESTANTS = [
    Contestant("raw_async", "raw asyncio (limit)", "async", "raw_async", "raw_async"),
    Contestant("raw_async_uvloop", "raw asyncio + uvloop (limit)", "async", "raw_async", "raw_async", uvloop=True,
               requires=("uvloop",)),
    Contestant("raw_async_buf", "raw asyncio BufferedProtocol", "async", "raw_async_buf", "raw_async_buf"),
    # Messages framed by a 4-byte length, each echoed once whole: the store-and-forward a
    # message protocol's echo cannot avoid (the raw echoes answer each chunk as it comes).
    Contestant("raw_async_msg", "raw asyncio, whole messages", "async", "raw_async_msg", "raw_async_msg"),
    Contestant("kn_cython", "kn_sock asyncio (cython)", "async", "kn_async", "kn_async",
               env={"KN_SOCK_PURE": None}, picows_ref="picows", impl="cython"),
    Contestant("kn_pure", "kn_sock asyncio (pure)", "async", "kn_async", "kn_async",
               env={"KN_SOCK_PURE": "1"}, picows_ref="picows", impl="pure"),
    Contestant("kn_uvloop", "kn_sock asyncio + uvloop", "async", "kn_async", "kn_async",
               uvloop=True, requires=("uvloop",), picows_ref="picows_uvloop", impl="default"),
    Contestant("kn_cb", "kn_sock asyncio on_message (cython)", "async", "kn_async_cb", "kn_async_cb",
               env={"KN_SOCK_PURE": None}, picows_ref="picows", impl="cython"),
    Contestant("kn_cb_uvloop", "kn_sock on_message + uvloop", "async", "kn_async_cb", "kn_async_cb",
               uvloop=True, requires=("uvloop",), picows_ref="picows_uvloop", impl="default"),
    # Mixed pairs: one end kn_sock's coroutine API, the other picows' (compare with the picows row).
    Contestant("kn_server_picows", "kn_sock server, picows client (cython)", "async", "kn_async", "picows",
               env={"KN_SOCK_PURE": None}, requires=("picows",), picows_ref="picows", impl="cython"),
    Contestant("kn_client_picows", "kn_sock client, picows server (cython)", "async", "picows", "kn_async",
               env={"KN_SOCK_PURE": None}, requires=("picows",), picows_ref="picows", impl="cython"),
    Contestant("picows", "picows (callbacks)", "async", "picows", "picows", requires=("picows",)),
    Contestant("picows_uvloop", "picows + uvloop", "async", "picows", "picows", uvloop=True,
               requires=("picows", "uvloop")),
    Contestant("websockets", "websockets (asyncio)", "async", "websockets", "websockets", requires=("websockets",)),
    # websockets with its C masking turned off: framing and masking all in Python, like kn_sock's pure twin.
    Contestant("websockets_py", "websockets (asyncio, no C speedups)", "async", "websockets_py", "websockets_py",
               requires=("websockets",)),
    Contestant("aiohttp", "aiohttp", "async", "aiohttp", "aiohttp", requires=("aiohttp",)),
    Contestant("raw_sync", "raw blocking socket (limit)", "sync", "raw_sync", "raw_sync"),
    Contestant("kn_sync", "kn_sock sync", "sync", "kn_sync", "kn_sync", picows_ref="picows", impl="default"),
    Contestant("websockets_sync", "websockets.sync", "sync", "websockets_sync", "websockets_sync",
               requires=("websockets",)),
    Contestant("websocket_client", "websocket-client (vs picows server)", "sync", "picows", "websocket_client",
               requires=("websocket", "picows")),
]
BY_NAME = {c.name: c for c in CONTESTANTS}
BASELINE = {"async": "raw_async", "sync": "raw_sync"}
UVLOOP_BASELINE = "raw_async_uvloop"  # the baseline of uvloop rows, when it ran


def kn_end(kind: str) -> bool:
    """Whether a server or client kind runs kn_sock (a mixed row's other end does not)."""
    return kind.startswith("kn_")


def baseline_of(c: Contestant, ran: Any) -> str:
    """The raw row ``c``'s ratios are to: raw asyncio on the same event loop, raw blocking sockets."""
    if c.uvloop and c.group == "async" and UVLOOP_BASELINE in ran:
        return UVLOOP_BASELINE
    return BASELINE[c.group]


def kn_implementation() -> str:
    """The implementation kn_sock runs in this process ("cython" or "pure"), as both
    ``kn_sock._backend.IMPLEMENTATION`` and ``kn_sock.IMPLEMENTATION`` say; if they disagree,
    both (which matches no claim)."""
    import kn_sock
    import kn_sock._backend as backend

    public = getattr(kn_sock, "IMPLEMENTATION", backend.IMPLEMENTATION)
    if public != backend.IMPLEMENTATION:
        return f"{backend.IMPLEMENTATION}/kn_sock.IMPLEMENTATION={public}"
    foreign = C.foreign_extension()
    if foreign:  # e.g. another checkout's, through an editable install's import hook
        return f"{backend.IMPLEMENTATION} from another kn_sock ({foreign})"
    return backend.IMPLEMENTATION


# =============================================================== servers (child processes)


def without_websockets_speedups(kind: str) -> str:
    """For ``websockets_py``: keep websockets' C masking from loading (its Python one is used
    then, as where the extension is not built); the kind to run, ``websockets``."""
    if kind != "websockets_py":
        return kind
    sys.modules["websockets.speedups"] = None  # type: ignore[assignment]  # (import fails: ImportError)
    import websockets.frames
    import websockets.utils

    if websockets.frames.apply_mask is not websockets.utils.apply_mask:
        raise RuntimeError("websockets still masks with its C speedups")
    return "websockets"


def serve(kind: str, port: int, use_uvloop: bool) -> None:
    C.exit_on_eof()
    kind = without_websockets_speedups(kind)
    if kind == "raw_sync":
        return serve_raw_sync(port)
    if kind == "kn_sync":
        return serve_kn_sync(port)
    if kind == "websockets_sync":
        return serve_websockets_sync(port)
    C.run_event_loop(serve_async(kind, port), use_uvloop)


async def serve_async(kind: str, port: int) -> None:
    import asyncio

    if kind == "raw_async":

        class Echo(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                self.transport = transport

            def data_received(self, data: bytes) -> None:
                self.transport.write(data)

        server = await asyncio.get_running_loop().create_server(Echo, HOST, port)
        bound = server.sockets[0].getsockname()[1]

    elif kind == "raw_async_buf":

        class BufEcho(asyncio.BufferedProtocol):
            def connection_made(self, transport: Any) -> None:
                self.transport = transport
                self.buf = memoryview(bytearray(2**18))

            def get_buffer(self, sizehint: int) -> Any:
                return self.buf

            def buffer_updated(self, nbytes: int) -> None:
                self.transport.write(self.buf[:nbytes])

        server = await asyncio.get_running_loop().create_server(BufEcho, HOST, port)
        bound = server.sockets[0].getsockname()[1]

    elif kind == "raw_async_msg":

        class MsgEcho(asyncio.Protocol):
            """Collect each message (a 4-byte big-endian length, then its bytes) and write it
            back once whole: one copy into the buffer, one write."""

            def connection_made(self, transport: Any) -> None:
                self.transport = transport
                self.buf = bytearray()
                self.need = 0  # length of the message being collected, its prefix included

            def data_received(self, data: bytes) -> None:
                buf = self.buf
                buf += data
                while True:
                    if not self.need:
                        if len(buf) < 4:
                            return
                        self.need = 4 + int.from_bytes(buf[:4], "big")
                    need = self.need
                    if len(buf) < need:
                        return
                    self.need = 0
                    if len(buf) == need:  # the usual case: hand the buffer over, no copy
                        self.transport.write(buf)
                        self.buf = buf = bytearray()
                    else:
                        self.transport.write(buf[:need])
                        del buf[:need]

        server = await asyncio.get_running_loop().create_server(MsgEcho, HOST, port)
        bound = server.sockets[0].getsockname()[1]

    elif kind == "kn_async":
        from kn_sock.asyncio.server import start_async_websocket_server

        async def handler(ws: Any, path: str) -> None:
            while (msg := await ws.recv()) is not None:
                await ws.send(msg)

        server = await start_async_websocket_server(
            HOST, port, handler, compression=None, ping_interval=None, max_size=MAX_SIZE
        )
        bound = server.port
        C.out(f"IMPL {kn_implementation()}")

    elif kind == "kn_async_cb":
        from kn_sock.asyncio.server import start_async_websocket_server

        async def cb_handler(ws: Any, path: str) -> None:
            ws.on_message = ws.send_nowait  # each message answered from the read path
            await ws.wait_closed()

        server = await start_async_websocket_server(
            HOST, port, cb_handler, compression=None, ping_interval=None, max_size=MAX_SIZE
        )
        bound = server.port
        C.out(f"IMPL {kn_implementation()}")

    elif kind == "picows":
        server, bound = await C.start_picows_echo(HOST, port, MAX_SIZE)

    elif kind == "websockets":
        from websockets.asyncio.server import serve as ws_serve

        async def handler(ws: Any) -> None:
            async for msg in ws:
                await ws.send(msg)

        server = await ws_serve(handler, HOST, port, compression=None, ping_interval=None, max_size=MAX_SIZE)
        bound = server.sockets[0].getsockname()[1]

    elif kind == "aiohttp":
        server, bound = await C.start_aiohttp_echo(HOST, port, False, MAX_SIZE)
    else:
        raise SystemExit(f"unknown server kind {kind}")

    C.out(f"PORT {bound}")
    await asyncio.Event().wait()


def serve_raw_sync(port: int) -> None:
    lsock = socket.create_server((HOST, port), backlog=128)
    C.out(f"PORT {lsock.getsockname()[1]}")

    def echo(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray(2**20)
        view = memoryview(buf)
        with conn:
            while True:
                n = conn.recv_into(buf)
                if not n:
                    return
                conn.sendall(view[:n])

    while True:
        conn, _ = lsock.accept()
        threading.Thread(target=echo, args=(conn,), daemon=True).start()


def serve_kn_sync(port: int) -> None:
    from kn_sock.sync import WebSocketServer

    def handler(ws: Any, address: Any) -> None:
        while (msg := ws.recv()) is not None:
            ws.send(msg)

    server = WebSocketServer(HOST, port, handler, compression=None, ping_interval=None, max_size=MAX_SIZE)
    C.out(f"IMPL {kn_implementation()}")
    C.out(f"PORT {server.port}")
    server.serve_forever()


def serve_websockets_sync(port: int) -> None:
    from websockets.sync.server import serve as ws_serve

    def handler(ws: Any) -> None:
        for msg in ws:
            ws.send(msg)

    kwargs: dict[str, Any] = {"compression": None, "max_size": MAX_SIZE}
    kwargs["ping_interval"] = None
    server = ws_serve(handler, HOST, port, **kwargs)
    C.out(f"PORT {server.socket.getsockname()[1]}")
    server.serve_forever()


# =============================================================== clients (child processes)


def payload(kind: str, size: int) -> bytes | str:
    if kind == "text":
        # ASCII with a few 2- and 3-byte characters so the UTF-8 path is exercised, `size` bytes
        unit = "kn_sock é € websocket " * 64
        data = unit.encode()[:size].decode("utf-8", "ignore")
        return data + "x" * (size - len(data.encode()))
    return os.urandom(size)


def run_client(kind: str, port: int, modes: list[tuple[str, str, int]], duration: float, warmup: float,
               window: int, use_uvloop: bool, expect_impl: str | None) -> None:
    C.exit_on_eof()
    results: dict[str, float] = {}
    error = None
    # A kn_sock row checks its implementation first: on a mismatch nothing is measured, and the
    # parent, seeing "impl" differ from its claim, skips the row.
    impl = kn_implementation() if expect_impl else None
    kind = without_websockets_speedups(kind)
    if impl == expect_impl:
        try:
            if kind in ("raw_sync", "kn_sync", "websockets_sync", "websocket_client"):
                sync_client(kind, port, modes, duration, warmup, window, results)
            else:
                C.run_event_loop(async_client(kind, port, modes, duration, warmup, window, results), use_uvloop)
        except BaseException as exc:  # report what was measured so far
            traceback.print_exc()
            error = f"{type(exc).__name__}: {exc}"
        if "kn_sock._backend" in sys.modules:
            impl = kn_implementation()
    C.out("RESULT " + json.dumps({"results": results, "error": error, "impl": impl}))
    sys.stdout.flush()
    os._exit(0)


def check_echo(sent: Any, got: Any, what: str) -> None:
    if isinstance(got, memoryview):
        got = bytes(got)
    if type(sent) is not type(got) or sent != got:
        raise AssertionError(
            f"{what}: echo mismatch: sent {type(sent).__name__}[{len(sent)}], got {type(got).__name__}"
            f"[{len(got) if hasattr(got, '__len__') else '?'}]"
        )


# Echoes inside the timed loops: every loop, whatever the contestant, adds up the length of each
# echo it receives (one len() and one integer add per message) and keeps the last one; after the
# window, outside the timing, check_window() compares the total with what was sent and the last
# echo with the message. A short, long, missing or extra echo thus fails the run (a wrong length
# or count), and so does a wrong last one. (Raw TCP rows count bytes instead: see open_async.)


def check_window(msg: Any, sent: int, received: int, total: int, last: Any, what: str) -> None:
    """After a timed window: ``received`` echoes of ``total`` length in all for ``sent`` messages
    ``msg``, the last echo ``last`` (None: not compared)."""
    if received != sent or total != sent * len(msg):
        raise AssertionError(
            f"{what}: {sent} messages of length {len(msg)} sent ({sent * len(msg)} in all), "
            f"{received} echoes of length {total} in all received"
        )
    if last is not None:
        check_echo(msg, last, f"{what}: last echo")


async def async_client(kind: str, port: int, modes: list[tuple[str, str, int]], duration: float, warmup: float,
                       window: int, results: dict[str, float]) -> None:
    limit = duration + warmup + 30  # whole-mode bound: a hang becomes a TimeoutError
    async with C.timeout(20):
        conn = await open_async(kind, port)
    try:
        async with C.timeout(30):
            await conn.rt(PRIME, 0.0)  # see PRIME
            await conn.rt(PRIME, 0.0)
        for key, mode, size in modes:
            msg = payload(mode, size)
            async with C.timeout(limit):
                if mode == "pipe":
                    await conn.pipe(msg, window, time.perf_counter() + warmup)
                    results[key] = await conn.pipe(msg, window, time.perf_counter() + duration)
                else:
                    await conn.check(msg)
                    await conn.rt(msg, time.perf_counter() + warmup)
                    results[key] = await conn.rt(msg, time.perf_counter() + duration)
    finally:
        async with C.timeout(10):
            await conn.close()


class CoroConn:
    """Round-trip and pipelined loops over a coroutine API: ``await send(m)``, ``await recv()``."""

    def __init__(self, send: Any, recv: Any, send_text: Any = None, recv_text: Any = None, close: Any = None):
        self.send, self.recv = send, recv
        self.send_text, self.recv_text = send_text or send, recv_text or recv
        self._close = close

    def _pair(self, msg: Any) -> tuple[Any, Any]:
        return (self.send_text, self.recv_text) if isinstance(msg, str) else (self.send, self.recv)

    async def check(self, msg: Any) -> None:
        send, recv = self._pair(msg)
        await send(msg)
        check_echo(msg, await recv(), "first echo")

    async def rt(self, msg: Any, end: float) -> float:
        send, recv = self._pair(msg)
        pc = time.perf_counter
        n = total = 0
        t0 = pc()
        while True:
            await send(msg)
            got = await recv()
            n += 1
            total += len(got)
            if (t := pc()) >= end:
                break
        check_window(msg, n, n, total, got, "round trips")
        return n / (t - t0)

    async def pipe(self, msg: Any, window: int, end: float) -> float:
        send, recv = self._pair(msg)
        pc = time.perf_counter
        t0 = pc()
        for _ in range(window):
            await send(msg)
        n = total = 0
        while True:
            got = await recv()
            n += 1
            total += len(got)
            if (t := pc()) >= end:
                break
            await send(msg)
        for _ in range(window - 1):  # drain what is still in flight
            got = await recv()
            total += len(got)
        check_window(msg, window + n - 1, n + window - 1, total, got, "pipelined")
        return n / (t - t0)

    async def close(self) -> None:
        if self._close is not None:
            await self._close()


class CallbackConn:
    """Round-trip and pipelined loops driven from a protocol callback (raw asyncio, picows)."""

    def __init__(self, loop: Any) -> None:
        self.loop = loop
        self.write: Any = None  # write(msg) sends one message
        self.on_message: Any = self._idle
        self.last: Any = None
        self.after_window: Any = None  # raw TCP: checks the byte counts after each window
        self.prefix = 0  # raw TCP with a length before each message: its size

    def _idle(self, data: Any) -> None:
        pass

    def message(self, data: Any) -> None:  # called by the protocol for each whole message
        self.on_message(data)

    async def check(self, msg: Any) -> None:
        fut = self.loop.create_future()
        self.on_message = lambda data: fut.done() or fut.set_result(data)
        self.write(msg)
        got = await fut
        self.on_message = self._idle
        self.check_got(msg, got)

    def check_got(self, msg: Any, got: Any) -> None:
        check_echo(msg, got, "first echo")

    def check_window(self, msg: Any, sent: int, received: int, total: int, last: Any, what: str) -> None:
        if self.after_window is not None:  # raw TCP: the bytes; a "message" is only a length
            self.after_window()
            msg, last = bytes(self.prefix) + (msg.encode() if isinstance(msg, str) else msg), None
        check_window(msg, sent, received, total, last, what)

    async def rt(self, msg: Any, end: float) -> float:
        fut = self.loop.create_future()
        pc = time.perf_counter
        write = self.write
        n = total = 0
        t0 = pc()

        def on_message(data: Any) -> None:
            nonlocal n, total
            n += 1
            total += len(data)
            t = pc()
            if t >= end:
                if not fut.done():  # (done: an extra echo after the last; never set twice)
                    fut.set_result((t, data))
            else:
                write(msg)

        self.on_message = on_message
        write(msg)
        t, last = await fut
        self.on_message = self._idle
        self.check_window(msg, n, n, total, last, "round trips")
        return n / (t - t0)

    async def pipe(self, msg: Any, window: int, end: float) -> float:
        fut = self.loop.create_future()
        pc = time.perf_counter
        write = self.write
        n = total = 0
        inflight = window  # the future resolves when it is back to 0: every message sent came back
        t_end = None
        t0 = pc()

        def on_message(data: Any) -> None:
            nonlocal n, total, inflight, t_end
            inflight -= 1
            total += len(data)
            if t_end is None:
                n += 1
                t = pc()
                if t >= end:
                    t_end = t
                else:
                    write(msg)
                    inflight += 1
            if inflight == 0 and not fut.done():
                fut.set_result(data)

        self.on_message = on_message
        for _ in range(window):
            write(msg)
        last = await fut
        self.on_message = self._idle
        self.check_window(msg, window + n - 1, window + n - 1, total, last, "pipelined")
        return n / (t_end - t0)

    async def close(self) -> None:
        pass


async def open_async(kind: str, port: int) -> Any:
    import asyncio

    loop = asyncio.get_running_loop()
    url = f"ws://{HOST}:{port}/"

    if kind == "kn_async":
        from kn_sock.asyncio.client import async_connect_websocket

        ws = await async_connect_websocket(HOST, port, compression=None, ping_interval=None, max_size=MAX_SIZE)
        return CoroConn(ws.send, ws.recv, close=ws.close)

    if kind == "kn_async_cb":
        from kn_sock.asyncio.client import async_connect_websocket

        ws = await async_connect_websocket(HOST, port, compression=None, ping_interval=None, max_size=MAX_SIZE)
        conn = CallbackConn(loop)
        ws.on_message = conn.message
        conn.write = ws.send_nowait

        async def close_cb() -> None:
            ws.on_message = None
            await ws.close()

        conn.close = close_cb  # type: ignore[method-assign]
        return conn

    if kind == "websockets":
        from websockets.asyncio.client import connect

        ws = await connect(url, compression=None, ping_interval=None, max_size=MAX_SIZE, proxy=None)
        return CoroConn(ws.send, ws.recv, close=ws.close)

    if kind == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession()
        ws = await session.ws_connect(url, compress=0, max_msg_size=MAX_SIZE, heartbeat=None)

        async def close() -> None:
            await ws.close()
            await session.close()

        return CoroConn(ws.send_bytes, ws.receive_bytes, ws.send_str, ws.receive_str, close)

    if kind in ("raw_async", "raw_async_buf", "raw_async_msg"):
        conn = CallbackConn(loop)
        framed = kind == "raw_async_msg"  # each message goes with a 4-byte length, and comes back so
        conn.prefix = 4 if framed else 0

        class RawClient(asyncio.Protocol):
            """Plain TCP: the echo server returns the bytes; a message is `size` bytes back.

            Bytes are counted (``total``, one add per read) and compared with the bytes sent
            after each window (``after_window``); what the loops get for each message is the
            message as sent (``unit``), which stands for its length only."""

            def __init__(self) -> None:
                self.size = 1
                self.unit = b""
                self.got = 0
                self.sent = self.total = 0
                self.batch: list[bytes] | None = None  # inside a read: the messages to write after it

            def connection_made(self, transport: Any) -> None:
                self.transport = transport

            def data_received(self, data: bytes) -> None:
                n = len(data)
                self.total += n
                self.got += n
                self.batch = batch = []
                while self.got >= self.size:
                    self.got -= self.size
                    conn.message(self.unit)
                self.batch = None
                flush(self.transport, batch)

        class RawBufClient(asyncio.BufferedProtocol):
            """The same with a receive buffer of our own (no allocation per read)."""

            def __init__(self) -> None:
                self.size = 1
                self.unit = b""
                self.got = 0
                self.sent = self.total = 0
                self.buf = memoryview(bytearray(2**18))
                self.batch: list[bytes] | None = None

            def connection_made(self, transport: Any) -> None:
                self.transport = transport

            def get_buffer(self, sizehint: int) -> Any:
                return self.buf

            def buffer_updated(self, nbytes: int) -> None:
                self.total += nbytes
                self.got += nbytes
                self.batch = batch = []
                while self.got >= self.size:
                    self.got -= self.size
                    conn.message(self.unit)
                self.batch = None
                flush(self.transport, batch)

        def flush(transport: Any, batch: list[bytes]) -> None:
            """Write what one read's messages answered, in one write (pipelined: many)."""
            if len(batch) == 1:
                transport.write(batch[0])
            elif batch:
                transport.write(b"".join(batch))

        factory = RawBufClient if kind == "raw_async_buf" else RawClient
        transport, proto = await loop.create_connection(factory, HOST, port)

        def write(msg: Any) -> None:
            if isinstance(msg, str):
                msg = msg.encode()
            if framed:  # (the copy stands for the client's masking pass)
                msg = len(msg).to_bytes(4, "big") + msg
            proto.unit = msg
            proto.size = size = len(msg)
            proto.sent += size
            if proto.batch is not None:
                proto.batch.append(msg)
            else:
                transport.write(msg)

        def after_window() -> None:
            if proto.total != proto.sent:
                raise AssertionError(f"raw echo: {proto.sent} bytes sent so far, {proto.total} received")

        async def close() -> None:
            transport.close()

        conn.write = write
        conn.after_window = after_window
        conn.check_got = lambda msg, got: None  # chunks, not messages: nothing to compare
        conn.close = close  # type: ignore[method-assign]
        return conn

    if kind == "picows":
        from picows import WSListener, WSMsgType, ws_connect

        conn = CallbackConn(loop)
        BINARY, TEXT = WSMsgType.BINARY, WSMsgType.TEXT

        class PicowsClient(WSListener):
            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                t = frame.msg_type
                if t is BINARY:
                    conn.message(frame.get_payload_as_bytes())
                elif t is TEXT:
                    conn.message(frame.get_payload_as_utf8_text())

        transport, _ = await ws_connect(PicowsClient, url, max_frame_size=MAX_SIZE)

        def write(msg: Any) -> None:
            if isinstance(msg, str):
                transport.send(TEXT, msg.encode())
            else:
                transport.send(BINARY, msg)

        async def close() -> None:
            transport.send_close()
            transport.disconnect()
            await transport.wait_disconnected()

        conn.write = write
        conn.close = close  # type: ignore[method-assign]
        return conn

    raise SystemExit(f"unknown client kind {kind}")


def sync_client(kind: str, port: int, modes: list[tuple[str, str, int]], duration: float, warmup: float,
                window: int, results: dict[str, float]) -> None:
    # No per-operation timeouts on the blocking clients (they would add a poll() per call);
    # the parent kills a client that overruns its deadline.
    url = f"ws://{HOST}:{port}/"
    if kind == "raw_sync":
        sock = socket.create_connection((HOST, port), timeout=20)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        view = memoryview(bytearray(2**20))
        unit = view[:1]  # the current message's bytes, as received: what recv() returns

        def send(msg: Any) -> None:
            sock.sendall(msg.encode() if isinstance(msg, str) else msg)

        def recv() -> Any:
            size = len(unit)
            got = 0
            while got < size:
                n = sock.recv_into(unit[got:])
                if not n:
                    raise ConnectionError("server closed")
                got += n
            return unit

        def set_size(msg: Any) -> None:
            nonlocal unit
            unit = view[:len(msg.encode() if isinstance(msg, str) else msg)]

        def after_window() -> None:  # every byte sent came back (recv() took them), and no more
            try:
                extra = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            raise AssertionError("raw echo: more bytes came back than were sent" if extra else "server closed")

        close = sock.close
        send_text, recv_text = send, recv
    elif kind == "kn_sync":
        from kn_sock.sync import connect_websocket

        ws = connect_websocket(HOST, port, compression=None, ping_interval=None, max_size=MAX_SIZE)
        send = send_text = ws.send
        recv = recv_text = ws.recv
        close = ws.close
        set_size = after_window = None
    elif kind == "websockets_sync":
        from websockets.sync.client import connect

        ws = connect(url, compression=None, ping_interval=None, max_size=MAX_SIZE, proxy=None)
        send = send_text = ws.send
        recv = recv_text = ws.recv
        close = ws.close
        set_size = after_window = None
    elif kind == "websocket_client":
        import websocket

        ws = websocket.create_connection(url, timeout=20, enable_multithread=False)
        ws.settimeout(None)
        send, send_text = ws.send_binary, ws.send
        recv = recv_text = ws.recv
        close = ws.close
        set_size = after_window = None
    else:
        raise SystemExit(f"unknown client kind {kind}")

    pc = time.perf_counter
    try:
        if set_size:
            set_size(PRIME)
        for _ in range(2):  # see PRIME
            send(PRIME)
            recv()
        for key, mode, size in modes:
            msg = payload(mode, size)
            s, r = (send_text, recv_text) if isinstance(msg, str) else (send, recv)
            # what the echo is compared with: raw TCP gets bytes back, even for text
            expect = msg.encode() if kind == "raw_sync" and isinstance(msg, str) else msg
            if set_size:
                set_size(msg)
            s(msg)
            check_echo(expect, r(), "first echo")
            for end_in, store in ((warmup, False), (duration, True)):
                end = pc() + end_in
                n = total = 0
                t0 = pc()
                if mode == "pipe":
                    for _ in range(window):
                        s(msg)
                    while True:
                        got = r()
                        n += 1
                        total += len(got)
                        if (t := pc()) >= end:
                            break
                        s(msg)
                    for _ in range(window - 1):
                        got = r()
                        total += len(got)
                    sent = window + n - 1
                else:
                    while True:
                        s(msg)
                        got = r()
                        n += 1
                        total += len(got)
                        if (t := pc()) >= end:
                            break
                    sent = n
                if after_window:
                    after_window()
                check_window(expect, sent, sent, total, got, "pipelined" if mode == "pipe" else "round trips")
                if store:
                    results[key] = n / (t - t0)
    finally:
        close()


# =============================================================== orchestration (parent)


def server_hello(child: C.Child, timeout: float) -> tuple[int, str | None]:
    """A server child's port, and the kn_sock implementation it reported (its ``IMPL`` line,
    printed before ``PORT``; None if there was none)."""
    impl = None
    deadline = time.monotonic() + timeout
    while True:
        line = child.readline(max(deadline - time.monotonic(), 0.001))
        if line.startswith("IMPL "):
            impl = line[len("IMPL "):].strip()
        elif line.startswith("PORT "):
            return int(line.split()[1]), impl
        elif line.startswith("ERROR"):
            raise C.ChildError(f"{child.label}: {line}{child.stderr_tail()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 0.2 s per cell, 1 round, fewer sizes")
    ap.add_argument("--rounds", type=C.positive_int, help="rounds (default 3; 1 with --quick)")
    ap.add_argument("--duration", type=C.positive_float, help="seconds per cell (default 0.6; 0.2 with --quick)")
    ap.add_argument("--warmup", type=C.non_negative_float, help="warm-up seconds before each cell (default 0.05)")
    ap.add_argument("--window", type=C.positive_int, default=100, help="messages in flight in the pipelined mode")
    ap.add_argument("--only", help="comma-separated contestant ids (" + ",".join(BY_NAME) + ")")
    ap.add_argument("--skip", help="comma-separated contestant ids to leave out")
    ap.add_argument("--pin", choices=("same", "split", "none"), default="same",
                    help="CPU placement of server and client: both on one CPU (default: steadiest on a small VM), "
                         "one CPU each, or left to the scheduler")
    ap.add_argument("--json", metavar="FILE", help="write raw and median results to FILE")
    ap.add_argument("--serve", metavar="KIND", help=argparse.SUPPRESS)
    ap.add_argument("--client", metavar="KIND", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--uvloop", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cells", help='comma-separated cells to run, e.g. "64 B,64 KiB" (default: all)')
    ap.add_argument("--modes", help=argparse.SUPPRESS)
    ap.add_argument("--impl", help=argparse.SUPPRESS)  # client: the kn_sock implementation its row claims
    args = C.parse_args(ap)

    if os.environ.get("BENCH_CPU"):
        C.pin_cpu(os.environ["BENCH_CPU"])
    if args.serve:
        return serve(args.serve, args.port, args.uvloop)
    if args.client:
        modes = [tuple(m) for m in json.loads(args.modes)]
        return run_client(args.client, args.port, modes, args.duration, args.warmup, args.window, args.uvloop,
                          args.impl)

    C.install_parent_handlers()
    rounds = args.rounds or (1 if args.quick else 3)
    duration = args.duration or (0.2 if args.quick else 0.6)
    warmup = args.warmup if args.warmup is not None else 0.05
    modes = MODES_QUICK if args.quick else MODES_FULL
    if args.cells:
        wanted = [c.strip() for c in args.cells.split(",")]
        modes = [m for m in MODES_FULL if m[0] in wanted]
        if not modes:
            ap.error(f"--cells: none of {wanted} in {[m[0] for m in MODES_FULL]}")
    args.only = C.known_ids(ap, "only", args.only, BY_NAME)
    args.skip = C.known_ids(ap, "skip", args.skip, BY_NAME)
    C.arguments_checked()
    if orchestrate(args, rounds, duration, warmup, modes):
        sys.exit(1)


def select_runnable(chosen: list[Contestant], notes: list[str]) -> tuple[list[Contestant], int]:
    """The contestants of ``chosen`` that can run here, and the number of failures: a peer not
    installed is skipped with a note; each kn_sock row's implementation is probed in the row's
    environment (a "default" row is labelled with it; a row whose claim does not hold is
    skipped, one whose kn_sock does not import fails). Also ``bench_server.py``'s."""
    failures = 0
    probes: dict[tuple[tuple[str, str], ...], tuple[str | None, bool, str]] = {}
    runnable: list[Contestant] = []
    for c in chosen:
        missing = [m for m in c.requires if not C.module_available(m)]
        if missing:
            notes.append(f"{c.label}: skipped, {', '.join(missing)} not installed")
            continue
        if c.name == "websocket_client" and C.module_available("wsaccel"):  # it masks and validates in C then
            c = replace(c, label=c.label.replace("websocket-client", "websocket-client + wsaccel"))
        if c.impl:
            env = C.clean_env(**c.env)
            key = tuple(sorted(env.items()))
            if key not in probes:
                probes[key] = C.kn_probe(env)
            impl, has_sync, err = probes[key]
            if impl is None:
                notes.append(f"{c.label}: kn_sock does not import: {err.strip()}")
                failures += 1
                continue
            if c.impl == "default":
                c = replace(c, label=f"{c.label} ({impl})", impl=impl)
            elif impl != c.impl:
                why = "the Cython extension is not in use" if c.impl == "cython" else f"kn_sock runs its {impl} twin"
                notes.append(f"{c.label}: skipped, {why} ({err.strip() or impl})")
                continue
            if c.server == "kn_sync" and not has_sync:
                notes.append(f"{c.label}: skipped, kn_sock.sync is not importable yet")
                continue
        runnable.append(c)
    return runnable, failures


def orchestrate(args: Any, rounds: int, duration: float, warmup: float, modes: list[tuple[str, str, int]]) -> int:
    """Run the contestants, print the table; the number of failures (a skip is not one)."""
    t_start = time.monotonic()
    notes: list[str] = []
    chosen = [c for c in CONTESTANTS if not args.only or c.name in args.only.split(",")]
    if args.skip:
        chosen = [c for c in chosen if c.name not in args.skip.split(",")]
    runnable, failures = select_runnable(chosen, notes)

    print(f"# echo benchmark: {C.machine_line()}")
    print(f"# {rounds} round(s), {duration} s per cell after {warmup} s warm-up, pipelined window {args.window}, "
          f"{len(runnable)} contestants, compression off, CPU placement: {args.pin}", flush=True)

    # --- servers: one per contestant, started together, kept for all rounds
    server_cpu, client_cpu = cpu_placement(args.pin, notes)
    servers, ports, failed = start_servers(runnable, server_cpu, notes)
    failures += failed

    # per round (None: no value that round), so that ratios pair the rows of one round
    raw: dict[str, dict[str, list[float | None]]] = {c.name: {m[0]: [None] * rounds for m in modes} for c in runnable}
    dropped: set[str] = set()  # rows skipped during the rounds (implementation not the one claimed)
    mode_arg = json.dumps(modes)
    client_budget = len(modes) * (duration + warmup) * 2 + 40

    step = max(1, len(runnable) // rounds)
    for rnd in range(rounds):
        # interleaved, each round starting further along: no row runs twice in a row across
        # rounds, so one burst of noise cannot weigh on the same row in two rounds
        start = (rnd * step) % max(1, len(runnable))
        order = runnable[start:] + runnable[:start]
        for c in order:
            server = servers.get(c.name)
            if server is None:
                continue
            if not server.alive():
                notes.append(f"{c.label}: server died before round {rnd + 1}{server.stderr_tail()}")
                failures += 1
                servers.pop(c.name).kill()
                continue
            env = C.clean_env(**c.env, BENCH_CPU=client_cpu)
            client = C.Child(
                [__file__, "--client", c.client, "--port", str(ports[c.name]), "--modes", mode_arg,
                 "--duration", str(duration), "--warmup", str(warmup), "--window", str(args.window)]
                + (["--uvloop"] if c.uvloop else []) + (["--impl", c.impl] if c.impl and kn_end(c.client) else []),
                env=env, label=f"{c.label} client",
            )
            try:
                words = client.expect("RESULT ", timeout=client_budget)
                res = json.loads(" ".join(words))
            except C.ChildError as exc:
                notes.append(f"{c.label}, round {rnd + 1}: client failed: {exc}")
                failures += 1
                res = {"results": {}, "impl": None}  # (counted once, here)
            finally:
                tail = client.stderr_tail()
                client.kill()
            if c.impl and res.get("impl") and res["impl"] != c.impl:  # (nothing was measured)
                notes.append(f"{c.label}: skipped, its client ran kn_sock's {res['impl']} implementation, "
                             f"not {c.impl}")
                servers.pop(c.name).kill()
                dropped.add(c.name)
                continue
            for key, value in res["results"].items():
                raw[c.name][key][rnd] = value
            if res.get("error"):
                notes.append(f"{c.label}, round {rnd + 1}: {res['error']}{tail}")
                failures += 1
            cells = " ".join(f"{k}={C.fmt_rate(v)}" for k, v in res["results"].items())
            print(f"  round {rnd + 1}/{rounds} {c.label:40s} {cells}", flush=True)
            if server.alive() is False:
                notes.append(f"{c.label}: server exited during round {rnd + 1}{server.stderr_tail()}")
                failures += 1

    for child in servers.values():
        child.kill()
    runnable = [c for c in runnable if c.name not in dropped]
    raw = {name: per for name, per in raw.items() if name not in dropped}

    med = {name: {k: C.median(v) for k, v in per.items()} for name, per in raw.items()}
    print()
    print(render(runnable, modes, med, raw))
    print()
    print("Cells: round trips/s (messages/s for 'pipe'), median of rounds; (x.xx) = ratio to the raw baseline")
    print("of the same group and event loop (raw asyncio for async rows, raw asyncio + uvloop for uvloop rows")
    print("when it ran, raw blocking socket for blocking rows). Ratios are medians of the ratios within each")
    print("round. 'vs picows': kn_sock / picows per column, the same way; asyncio rows on the same event loop")
    print("(uvloop rows vs picows + uvloop), the blocking row vs picows on the default asyncio loop (picows has")
    print("no blocking API). 'vs websockets': the same against websockets as installed (with its C masking)")
    print("on the default loop, the blocking row against websockets.sync.")
    if "kn_pure" in raw and "websockets_py" in raw:
        print("kn_sock asyncio (pure) / websockets without its C speedups (both all Python), per column: "
              + ratio_list(raw["kn_pure"], raw["websockets_py"], [m[0] for m in modes]))
    report_end(raw, rounds, notes, t_start)

    if args.json:
        with open(args.json, "w") as f:
            json.dump({
                "machine": C.machine_line(), "rounds": rounds, "duration": duration, "window": args.window,
                "modes": [m[0] for m in modes],
                "contestants": {c.name: {"label": c.label, "group": c.group, "raw": raw[c.name],
                                         "median": med[c.name]} for c in runnable},
                "notes": notes,
            }, f, indent=2)
        print(f"results written to {args.json}")
    if failures:
        print(f"FAILED: {failures} contestant run(s) failed (see the notes)")
    return failures


def cpu_placement(pin: str, notes: list[str]) -> tuple[str | None, str | None]:
    """``--pin``: the CPUs (as ``BENCH_CPU`` values) of the servers and of the clients: the same
    one ("same"), one each ("split", where there are two), or the scheduler's (None)."""
    cpus = sorted(os.sched_getaffinity(0))
    if pin == "same":
        return str(cpus[-1]), str(cpus[-1])
    if pin == "split":
        if len(cpus) >= 2:
            return str(cpus[0]), str(cpus[1])
        notes.append("--pin split: one CPU only here, servers and clients share it")
    return None, None


def start_servers(runnable: list[Contestant], server_cpu: str | None,
                  notes: list[str]) -> tuple[dict[str, C.Child], dict[str, int], int]:
    """Start every row's server (this script's ``--serve``), all together: (the children, their
    ports, failures). A server that fails to start, or whose kn_sock is not the implementation
    its row claims, is left out of ``runnable`` with a note."""
    pending = {c.name: C.Child([__file__, "--serve", c.server, "--port", "0"] + (["--uvloop"] if c.uvloop else []),
                               env=C.clean_env(**c.env, BENCH_CPU=server_cpu), label=f"{c.label} server")
               for c in runnable}
    servers: dict[str, C.Child] = {}
    ports: dict[str, int] = {}
    failures = 0
    for c in list(runnable):
        child = pending[c.name]
        try:
            port, server_impl = server_hello(child, timeout=30)
        except C.ChildError as exc:
            notes.append(f"{c.label}: server failed to start: {exc}")
            failures += 1
            child.kill()
            runnable.remove(c)
            continue
        if c.impl and kn_end(c.server) and server_impl != c.impl:
            notes.append(f"{c.label}: skipped, its server runs kn_sock's {server_impl or 'unreported'} "
                         f"implementation, not {c.impl}")
            child.kill()
            runnable.remove(c)
            continue
        ports[c.name] = port
        servers[c.name] = child
    return servers, ports, failures


def report_end(raw: dict[str, dict[str, list[float | None]]], rounds: int, notes: list[str], t_start: float) -> None:
    """After the table: the largest spread between rounds (a warning when noisy), the notes,
    the total time."""
    spread = spreads(raw)
    if spread:
        print(f"Largest spread between rounds (max/min): {spread[0]}")
        if spread[1] > NOISY and rounds >= 2:
            print(f"warning: a row varied by more than {NOISY:.1f}x between rounds: this machine was busy; "
                  "run again, or with more --rounds")
    for n in notes:
        print(f"note: {n}")
    print(f"total time {time.monotonic() - t_start:.0f} s")


#: A spread between rounds (max/min of one row's cell) above which the run is called noisy.
NOISY = 1.3


def spreads(raw: dict[str, dict[str, list[float | None]]]) -> tuple[str, float] | None:
    """The largest max/min of one row's cell across rounds, described, and its value."""
    worst = None
    for name, per in raw.items():
        for key, got in per.items():
            values = [v for v in got if v is not None]
            if len(values) >= 2 and min(values) > 0:
                s = max(values) / min(values)
                if worst is None or s > worst[0]:
                    worst = (s, name, key)
    return (f"{worst[0]:.2f}x ({worst[1]}, {worst[2]})", worst[0]) if worst else None


def render(runnable: list[Contestant], modes: list[tuple[str, str, int]], med: dict[str, dict[str, Any]],
           raw: dict[str, dict[str, list[float | None]]]) -> str:
    keys = [m[0] for m in modes]
    header = ["contestant", *keys, "vs picows", "vs websockets"]
    rows = []
    for group in ("async", "sync"):
        for c in runnable:
            if c.group != group:
                continue
            base_name = baseline_of(c, med)
            base = raw.get(base_name)
            row = [c.label]
            for k in keys:
                v = med[c.name].get(k)
                r = C.paired_ratio(raw[c.name][k], base[k]) if (base and c.name != base_name) else None
                row.append(C.fmt_rate(v) + (f" ({r:.2f})" if r is not None else ""))
            for ref_name in (c.picows_ref, websockets_ref(c)):
                ref = raw.get(ref_name) if ref_name else None
                row.append(ratio_list(raw[c.name], ref, keys) if c.name.startswith("kn_") and ref else "")
            rows.append(row)
    return C.table(header, rows)


def websockets_ref(c: Contestant) -> str | None:
    """The websockets row a kn_sock row is compared with: its group's, on the default loop (none for
    uvloop rows and mixed rows)."""
    if c.uvloop or not c.name.startswith("kn_") or not (kn_end(c.server) and kn_end(c.client)):
        return None
    return "websockets" if c.group == "async" else "websockets_sync"


def ratio_list(row: dict[str, list[float | None]], ref: dict[str, list[float | None]], keys: list[str]) -> str:
    """``row`` / ``ref`` per column (medians of the ratios within each round), joined by ``/``."""
    ratios = [C.paired_ratio(row[k], ref[k]) for k in keys]
    return "/".join(C.fmt_ratio(r) if r is not None else "-" for r in ratios)


if __name__ == "__main__":
    C.run_main(main)
