"""Many idle connections: server memory per connection, threads per connection, broadcast time.

For each server contestant and each N in ``--conns`` (default 1000,5000; ``--quick``: 200):

1. start the server (a child process), open and close a few warm-up connections, read its VmRSS;
2. open N WebSocket connections from one client process (asyncio, handshakes written by hand so
   the client side stays cheap), wait until the server reports N connections, settle, read VmRSS,
   thread count and open fds again;
3. tell the server to send one 100-byte binary message to every connection; the client process
   reports when all N have received it. Broadcast time = last receipt - first send (both processes
   read the same CLOCK_MONOTONIC through time.perf_counter). Plain contestants broadcast with a
   loop of ``await ws.send()``; the ``*_bcast`` ones with the library's broadcast function
   (``kn_sock.broadcast``: one frame built once, written without awaiting;
   ``websockets.broadcast``), picows with ``transport.send`` in a loop, raw asyncio with
   ``transport.write`` of one prebuilt frame.

Blocking servers (kn_sock sync, websockets.sync) are measured at min(N, ``--sync-max``) connections.
With ``--rounds R`` every server and count is measured R times (interleaved, a fresh server each
time) and the table shows medians. The ``bcast vs raw`` column is a row's broadcast time divided
by raw asyncio's at the same count.

    python benchmarks/bench_conns.py            # ~2 min
    python benchmarks/bench_conns.py --quick    # ~20 s
    python benchmarks/bench_conns.py --conns 1000 --only kn_off,websockets --json conns.json
    python benchmarks/bench_conns.py --conns 1000,5000 --rounds 5 --only raw_async,kn_bcast,websockets_bcast
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402

HOST = "127.0.0.1"
MESSAGE = bytes(range(100))
FRAME = bytes([0x82, len(MESSAGE)]) + MESSAGE  # the same message as an unmasked server frame
WARM_CONNS = 20


@dataclass
class Contestant:
    name: str
    label: str
    server: str
    deflate: bool = False
    sync: bool = False
    env: dict[str, str | None] = field(default_factory=dict)
    requires: tuple[str, ...] = ()


CONTESTANTS = [
    Contestant("raw_async", "raw asyncio (TCP only)", "raw_async"),
    Contestant("kn_off", "kn_sock asyncio, compression off", "kn_async"),
    Contestant("kn_bcast", "kn_sock asyncio, broadcast()", "kn_async_bcast"),
    Contestant("kn_bcast_deflate", "kn_sock asyncio, broadcast(), deflate (sent plain)", "kn_async_bcast", deflate=True),
    Contestant("kn_deflate", "kn_sock asyncio, deflate on", "kn_async", deflate=True),
    Contestant("websockets", "websockets, compression off", "websockets", requires=("websockets",)),
    Contestant("websockets_deflate", "websockets, deflate on", "websockets", deflate=True, requires=("websockets",)),
    Contestant("websockets_bcast", "websockets, websockets.broadcast()", "websockets_bcast", requires=("websockets",)),
    Contestant("picows", "picows", "picows", requires=("picows",)),
    Contestant("kn_sync", "kn_sock sync, compression off", "kn_sync", sync=True),
    Contestant("websockets_sync", "websockets.sync, compression off", "websockets_sync", sync=True,
               requires=("websockets",)),
]
BY_NAME = {c.name: c for c in CONTESTANTS}
BASELINE = "raw_async"  # the "bcast vs raw" column: a row's broadcast time / this server's


def median_result(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from several rounds of the same server and count: the median of each figure
    (None where no round has it), ``error`` from the first round that had one."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for r in runs for k in r):
        values = [r[key] for r in runs if r.get(key) is not None]
        if not values:
            out[key] = None
        elif key == "error" or not all(isinstance(v, (int, float)) for v in values):
            out[key] = values[0]
        elif all(isinstance(v, int) for v in values):
            out[key] = statistics.median_low(values)  # a count: one that was measured
        else:
            out[key] = statistics.median(values)
    return out


# =============================================================== servers (child processes)
#
# Commands on stdin: COUNT -> "COUNT n"; BCAST -> "BCAST t_first_send t_last_send n". EOF -> exit.


def serve(kind: str, deflate: bool) -> None:
    C.raise_nofile()
    if kind in ("kn_sync", "websockets_sync"):
        return serve_sync(kind, deflate)
    C.run_event_loop(serve_async(kind, deflate))


def send_loop(conns: set[Any]) -> Callable[[], Awaitable[tuple[float, float, int]]]:
    """The plain contestants' broadcast: ``await ws.send()`` to each connection in turn."""

    async def broadcast() -> tuple[float, float, int]:
        t0 = time.perf_counter()
        for ws in list(conns):
            await ws.send(MESSAGE)
        return t0, time.perf_counter(), len(conns)

    return broadcast


async def serve_async(kind: str, deflate: bool) -> None:
    import asyncio

    use_bcast = kind.endswith("_bcast")  # the library's broadcast function instead of a send loop
    kind = kind.removesuffix("_bcast")
    loop = asyncio.get_running_loop()
    conns: set[Any] = set()
    compression = "deflate" if deflate else None

    if kind == "raw_async":

        class Idle(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                self.transport = transport
                conns.add(transport)

            def connection_lost(self, exc: Any) -> None:
                conns.discard(self.transport)

        server = await loop.create_server(Idle, HOST, 0, backlog=1024)
        port = server.sockets[0].getsockname()[1]

        async def broadcast() -> tuple[float, float, int]:
            t0 = time.perf_counter()
            for t in list(conns):
                t.write(FRAME)
            return t0, time.perf_counter(), len(conns)

    elif kind == "kn_async":
        from kn_sock.asyncio.server import start_async_websocket_server

        async def handler(ws: Any, path: str) -> None:
            conns.add(ws)
            try:
                while await ws.recv() is not None:
                    pass
            finally:
                conns.discard(ws)

        server = await start_async_websocket_server(HOST, 0, handler, compression=compression, backlog=1024)
        port = server.port

        if not use_bcast:
            broadcast = send_loop(conns)

        else:
            from kn_sock import broadcast as kn_broadcast

            async def broadcast() -> tuple[float, float, int]:
                t0 = time.perf_counter()
                skipped = kn_broadcast(conns, MESSAGE)
                return t0, time.perf_counter(), len(conns) - len(skipped)

    elif kind == "websockets":
        from websockets.asyncio.server import serve as ws_serve

        async def handler(ws: Any) -> None:
            conns.add(ws)
            try:
                async for _ in ws:
                    pass
            finally:
                conns.discard(ws)

        server = await ws_serve(handler, HOST, 0, compression=compression, backlog=1024)
        port = server.sockets[0].getsockname()[1]

        if not use_bcast:
            broadcast = send_loop(conns)

        else:
            from websockets.asyncio.server import broadcast as ws_broadcast

            async def broadcast() -> tuple[float, float, int]:
                t0 = time.perf_counter()
                ws_broadcast(conns, MESSAGE)
                return t0, time.perf_counter(), len(conns)

    elif kind == "picows":
        from picows import WSListener, WSMsgType, ws_create_server

        class Listener(WSListener):
            def on_ws_connected(self, transport: Any) -> None:
                conns.add(transport)

            def on_ws_disconnected(self, transport: Any) -> None:
                conns.discard(transport)

            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                if frame.msg_type is WSMsgType.CLOSE:
                    transport.send_close(frame.get_close_code())
                    transport.disconnect()

        server = await ws_create_server(lambda request: Listener(), HOST, 0, backlog=1024)
        port = server.sockets[0].getsockname()[1]

        async def broadcast() -> tuple[float, float, int]:
            t0 = time.perf_counter()
            for t in list(conns):
                t.send(WSMsgType.BINARY, MESSAGE)
            return t0, time.perf_counter(), len(conns)

    else:
        raise SystemExit(f"unknown server kind {kind}")

    def handle(line: str) -> str:
        if line == "COUNT":
            return f"COUNT {len(conns)}"
        if line == "BCAST":
            fut = asyncio.run_coroutine_threadsafe(asyncio.wait_for(broadcast(), 60), loop)
            t0, t1, n = fut.result(timeout=70)
            return f"BCAST {t0!r} {t1!r} {n}"
        return f"ERROR unknown command {line}"

    C.command_loop(handle)
    C.out(f"PORT {port}")
    await asyncio.Event().wait()


def serve_sync(kind: str, deflate: bool) -> None:
    conns: set[Any] = set()
    lock = threading.Lock()
    compression = "deflate" if deflate else None

    if kind == "kn_sync":
        from kn_sock.sync import WebSocketServer

        def handler(ws: Any, address: Any) -> None:
            with lock:
                conns.add(ws)
            try:
                while ws.recv() is not None:
                    pass
            finally:
                with lock:
                    conns.discard(ws)

        server = WebSocketServer(HOST, 0, handler, compression=compression)
        port = server.port
    else:
        from websockets.sync.server import serve as ws_serve

        def handler(ws: Any) -> None:  # type: ignore[misc]
            with lock:
                conns.add(ws)
            try:
                for _ in ws:
                    pass
            finally:
                with lock:
                    conns.discard(ws)

        server = ws_serve(handler, HOST, 0, compression=compression)
        port = server.socket.getsockname()[1]

    def handle(line: str) -> str:
        if line == "COUNT":
            return f"COUNT {len(conns)}"
        if line == "BCAST":
            with lock:
                targets = list(conns)
            t0 = time.perf_counter()
            for ws in targets:
                ws.send(MESSAGE)
            return f"BCAST {t0!r} {time.perf_counter()!r} {len(targets)}"
        return f"ERROR unknown command {line}"

    C.command_loop(handle)
    C.out(f"PORT {port}")
    server.serve_forever()


# =============================================================== the client process
#
# Commands: OPEN n -> "OPENED ok failed seconds"; CLOSEALL -> "CLOSED n";
# WAITMSG -> "GOT t_first t_last count" once every open connection has received one message.


def client_main(port: int, ws: bool, deflate: bool, concurrency: int) -> None:
    C.raise_nofile()
    try:
        import uvloop  # the client only has to be cheap; uvloop helps when installed
    except ImportError:
        uvloop = None
    C.run_event_loop(client_async(port, ws, deflate, concurrency), use_uvloop=uvloop is not None)


async def client_async(port: int, ws: bool, deflate: bool, concurrency: int) -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    protos: list[Any] = []
    state: dict[str, Any] = {"got": 0, "first": None, "last": None, "event": asyncio.Event(), "target": 0}
    ext = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" if deflate else ""

    def on_message() -> None:
        t = time.perf_counter()
        state["got"] += 1
        if state["first"] is None:
            state["first"] = t
        state["last"] = t
        if state["got"] >= state["target"]:
            state["event"].set()

    class Client(asyncio.Protocol):
        def __init__(self) -> None:
            self.ready = loop.create_future()
            self.buf = b""
            self.handshaking = ws
            self.transport: Any = None

        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            if not ws:
                self.ready.set_result(None)
                return
            key = base64.b64encode(os.urandom(16)).decode()
            transport.write(
                (f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n").encode()
            )

        def data_received(self, data: bytes) -> None:
            self.buf += data
            if self.handshaking:
                head, sep, rest = self.buf.partition(b"\r\n\r\n")
                if not sep:
                    return
                if not head.startswith(b"HTTP/1.1 101"):
                    if not self.ready.done():
                        self.ready.set_exception(ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace")))
                    self.transport.abort()
                    return
                agreed = b"permessage-deflate" in head.lower()
                if agreed != deflate:  # the row's label says what was negotiated: make sure
                    if not self.ready.done():
                        self.ready.set_exception(ConnectionError(
                            "permessage-deflate " + ("not negotiated" if deflate else "negotiated unasked")))
                    self.transport.abort()
                    return
                self.handshaking = False
                self.buf = rest
                if not self.ready.done():
                    self.ready.set_result(None)
            self.parse()

        def parse(self) -> None:
            buf = self.buf
            while len(buf) >= 2:
                b0, b1 = buf[0], buf[1]
                n, pos = b1 & 0x7F, 2
                if n == 126:
                    if len(buf) < 4:
                        break
                    n, pos = int.from_bytes(buf[2:4], "big"), 4
                elif n == 127:
                    if len(buf) < 10:
                        break
                    n, pos = int.from_bytes(buf[2:10], "big"), 10
                if len(buf) < pos + n:
                    break
                opcode = b0 & 0x0F
                payload = buf[pos:pos + n]
                buf = buf[pos + n:]
                if opcode == 0x9:  # ping -> pong (masked with a zero key)
                    self.transport.write(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
                elif opcode in (0x1, 0x2) or (opcode == 0 and b0 & 0x80):
                    if b0 & 0x80:
                        on_message()
            self.buf = buf

        def connection_lost(self, exc: Any) -> None:
            if not self.ready.done():
                self.ready.set_exception(ConnectionError(f"connection lost: {exc}"))

    sem = asyncio.Semaphore(concurrency)

    async def open_one() -> bool:
        async with sem:
            transport = None
            try:
                async with C.timeout(30):
                    transport, proto = await loop.create_connection(Client, HOST, port)
                    await proto.ready
                protos.append(proto)
                return True
            except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
                print(f"open failed: {exc!r}", file=sys.stderr)
                if transport is not None:
                    transport.abort()
                return False

    async def handle(line: str) -> str:
        cmd, *rest = line.split()
        if cmd == "OPEN":
            t0 = time.perf_counter()
            results = await asyncio.gather(*(open_one() for _ in range(int(rest[0]))))
            ok = sum(results)
            return f"OPENED {ok} {len(results) - ok} {time.perf_counter() - t0!r}"
        if cmd == "CLOSEALL":
            n = len(protos)
            for p in protos:
                p.transport.abort()
            protos.clear()
            return f"CLOSED {n}"
        if cmd == "WAITMSG":
            state["target"] = len(protos)
            if state["got"] < state["target"]:
                try:
                    async with C.timeout(60):
                        await state["event"].wait()
                except TimeoutError:
                    pass
            return f"GOT {state['first']!r} {state['last']!r} {state['got']}"
        return f"ERROR unknown command {line}"

    C.command_loop(lambda line: asyncio.run_coroutine_threadsafe(handle(line), loop).result(timeout=300))
    C.out("READY")
    await asyncio.Event().wait()


# =============================================================== orchestration (parent)


def measure(c: Contestant, n: int, concurrency: int) -> dict[str, Any]:
    env = C.clean_env()
    server = C.Child([__file__, "--serve", c.server] + (["--deflate"] if c.deflate else []), env=env,
                     label=f"{c.label} server")
    client = None
    try:
        port = server.expect("PORT ", 30)[0]
        client = C.Child([__file__, "--client", "--port", port, "--concurrency", str(concurrency)]
                         + (["--raw"] if c.server == "raw_async" else [])
                         + (["--deflate"] if c.deflate else []), env=env, label=f"{c.label} client")
        client.expect("READY", 30)

        def wait_count(target: int, timeout: float) -> int:
            deadline = time.monotonic() + timeout
            while True:
                count = int(server.command("COUNT", "COUNT ", 10)[0])
                if count == target or time.monotonic() > deadline:
                    return count
                time.sleep(0.05)

        # warm-up: first connections load lazily imported code and grow the free lists
        client.command(f"OPEN {WARM_CONNS}", "OPENED ", 60)
        wait_count(WARM_CONNS, 10)
        client.command("CLOSEALL", "CLOSED ", 30)
        wait_count(0, 10)
        time.sleep(0.3)
        rss0, thr0, fd0 = C.rss_kib(server.pid), C.threads(server.pid), C.fds(server.pid)

        ok, failed, secs = client.command(f"OPEN {n}", "OPENED ", 60 + n / 50)
        count = wait_count(int(ok), 30)
        time.sleep(0.5)
        rss1, thr1, fd1 = C.rss_kib(server.pid), C.threads(server.pid), C.fds(server.pid)

        t0, t1, sent = server.command("BCAST", "BCAST ", 90)
        first, last, got = client.command("WAITMSG", "GOT ", 90)
        time.sleep(0.2)
        rss2 = C.rss_kib(server.pid)
        result = {
            "conns": count, "failed": int(failed), "open_s": float(secs),
            "rss_before_kib": rss0, "rss_after_kib": rss1, "kib_per_conn": (rss1 - rss0) / max(count, 1),
            "rss_after_bcast_kib": rss2, "kib_per_conn_after_bcast": (rss2 - rss0) / max(count, 1),
            "threads_before": thr0, "threads_after": thr1, "threads_per_conn": (thr1 - thr0) / max(count, 1),
            "fds_per_conn": (fd1 - fd0) / max(count, 1),
            "bcast_sent": int(sent), "bcast_got": int(got),
            "bcast_send_ms": (float(t1) - float(t0)) * 1e3,
            "bcast_ms": (float(last) - float(t0)) * 1e3 if last != "None" else None,
        }
        if not server.alive():
            result["error"] = f"server exited{server.stderr_tail()}"
        return result
    finally:
        if client is not None:
            client.kill()
        server.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="200 connections only")
    ap.add_argument("--conns", help="comma-separated connection counts (default 1000,5000)")
    ap.add_argument("--sync-max", type=C.positive_int, default=1000, help="cap on connections for blocking servers")
    ap.add_argument("--concurrency", type=C.positive_int, default=64, help="handshakes in flight while opening")
    ap.add_argument("--rounds", type=C.positive_int, default=1,
                    help="measure every server and count this many times, interleaved; the table shows medians "
                         "(default 1)")
    ap.add_argument("--only", help="comma-separated contestant ids (" + ",".join(BY_NAME) + ")")
    ap.add_argument("--json", metavar="FILE", help="write the results (medians and every round) to FILE")
    ap.add_argument("--serve", metavar="KIND", help=argparse.SUPPRESS)
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--deflate", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
    args = C.parse_args(ap)

    if args.serve:
        return serve(args.serve, args.deflate)
    if args.client:
        return client_main(args.port, not args.raw, args.deflate, args.concurrency)

    args.only = C.known_ids(ap, "only", args.only, BY_NAME)
    try:
        counts = [C.positive_int(x) for x in (args.conns or "1000,5000").split(",")]
    except argparse.ArgumentTypeError as exc:
        ap.error(f"--conns: {exc}")
    if args.quick:
        counts = [200]
    C.arguments_checked()
    C.install_parent_handlers()
    t_start = time.monotonic()
    limit = C.raise_nofile()
    rounds = max(args.rounds, 1)
    notes: list[str] = []
    failures = 0  # a contestant that crashed or reported an error (a skip is not one)
    impl, has_sync, err = C.kn_probe(C.clean_env())
    chosen = [c for c in CONTESTANTS if not args.only or c.name in args.only.split(",")]
    runnable = []
    for c in chosen:
        missing = [m for m in c.requires if not C.module_available(m)]
        if missing:
            notes.append(f"{c.label}: skipped, {', '.join(missing)} not installed")
        elif c.name == "kn_sync" and not has_sync:
            notes.append(f"{c.label}: skipped, kn_sock.sync is not importable yet")
        else:
            if c.server.startswith("kn_") and impl:
                c.label += f" ({impl})"
            runnable.append(c)
    print(f"# connections benchmark: {C.machine_line()}; RLIMIT_NOFILE {limit}")
    if max(counts) + 100 > limit:
        notes.append(f"RLIMIT_NOFILE is {limit}: counts above it will fail")

    # (contestant, count) -> one result per round; rounds interleave the contestants
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    cells: list[tuple[Contestant, int]] = []
    for rnd in range(rounds):
        tag = f"round {rnd + 1}/{rounds} " if rounds > 1 else ""
        for n in counts:
            for c in runnable:
                m = min(n, args.sync_max) if c.sync else n
                if (c.name, m) in runs and len(runs[(c.name, m)]) > rnd:
                    continue  # a blocking server already measured at the capped count this round
                where = f"{c.label} at {m}" + (f", round {rnd + 1}" if rounds > 1 else "")
                try:
                    r = measure(c, m, args.concurrency)
                except C.ChildError as exc:
                    notes.append(f"{where}: {exc}")
                    failures += 1
                    continue
                if r.get("failed"):
                    notes.append(f"{where}: {r['failed']} connections failed to open")
                if r["bcast_got"] != r["conns"]:  # (its time would not be the time to reach all)
                    notes.append(f"{where}: broadcast reached {r['bcast_got']} of {r['conns']} connections")
                    failures += 1
                if r.get("error"):
                    notes.append(f"{where}: {r['error']}")
                    failures += 1
                if (c.name, m) not in runs:
                    runs[(c.name, m)] = []
                    cells.append((c, m))
                runs[(c.name, m)].append(r)
                print(f"  {tag}{c.label:45s} n={m:5d} {r['kib_per_conn']:6.1f} KiB/conn  "
                      f"bcast {r['bcast_ms'] or float('nan'):7.1f} ms  open {r['open_s']:.2f} s", flush=True)
    results = [(c, m, median_result(runs[(c.name, m)])) for c, m in cells]

    header = ["server", "conns", "KiB/conn", "after bcast", "threads/conn", "fds/conn", "broadcast ms",
              "bcast vs raw", "send loop ms", "handshakes/s"]
    raw_ms = {m: r["bcast_ms"] for c, m, r in results if c.name == BASELINE}
    rows = []
    for c, m, r in results:
        base = raw_ms.get(m)
        if c.name == BASELINE:
            ratio = ""
        elif base and r["bcast_ms"]:
            ratio = f"{r['bcast_ms'] / base:.2f}x"
        else:
            ratio = "-"
        rows.append([
            c.label, str(r["conns"]), f"{r['kib_per_conn']:.1f}", f"{r['kib_per_conn_after_bcast']:.1f}",
            f"{r['threads_per_conn']:.2f}", f"{r['fds_per_conn']:.2f}",
            f"{r['bcast_ms']:.1f}" if r["bcast_ms"] is not None else "-", ratio,
            f"{r['bcast_send_ms']:.1f}", C.fmt_rate(r["conns"] / r["open_s"]) if r["open_s"] else "-",
        ])
    print()
    print(C.table(header, rows))
    print()
    print("KiB/conn: server VmRSS growth / connections (idle, after the handshake); after bcast: the same once")
    print("every connection has sent one message (lazily allocated send state, e.g. a deflate compressor);")
    print("threads/conn, fds/conn: the same for the server's thread and fd counts; broadcast ms: server's first send -> last")
    print("client receipt of one 100 B message to all; bcast vs raw: this row's broadcast ms / raw asyncio's at the same")
    print("count (below 1: faster than raw); send loop ms: the server's own loop; handshakes/s: opening rate (64 in flight).")
    if rounds > 1:
        print(f"Every figure is the median of {rounds} rounds (each a fresh server and client).")
    for note in notes:
        print(f"note: {note}")
    print(f"total time {time.monotonic() - t_start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": C.machine_line(), "rounds": rounds, "notes": notes,
                       "results": [{"name": c.name, "label": c.label, **r, "rounds": runs[(c.name, m)]}
                                   for c, m, r in results]}, f, indent=2)
        print(f"results written to {args.json}")
    if failures:
        print(f"FAILED: {failures} contestant run(s) failed (see the notes)")
        sys.exit(1)


if __name__ == "__main__":
    C.run_main(main)
