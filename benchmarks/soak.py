"""Soak test: many churning connections against a kn_sock server; does memory come back?

The server is a child process (``soak.py --serve``): kn_sock's echo server on 127.0.0.1,
port 0, permessage-deflate on (the default), ``--server asyncio`` (the default), ``uvloop``
(the same on uvloop's loop) or ``sync`` (the blocking server: a thread per connection), plus a
``process_request`` hook answering ``GET /stats`` with its live connection / handler (task
or thread) / connection object counts (after a ``gc.collect()``). The parent runs ``--conns``
client connections (kn_sock's asyncio client) for ``--minutes``, each one looping: connect,
echo messages of varied size and type for a random lifetime (5-40 s), then leave by a closing
handshake (60 %), an abort (30 %) or an abort with a message still in flight (10 %); one
connection in twenty is instead a raw TCP peer that sends half a handshake and drops (the
junk a public server sees).

Readings of the server, from /proc: VmRSS and open fds,

- ``cold``: before any client;
- ``warm``: after a warm-up wave (all N connect, echo once, close) has left — the baseline,
  since first use grows allocator arenas and caches that a process never gives back;
- every ``--interval`` seconds (default 60) during the soak;
- ``end``: after every client has left and the server reports no connection left.

It fails (exit 1) when the end fds differ from the warm fds (kn_sock's shared reactor thread,
keepalive timers for both servers, opens its epoll and wake-up pair at the first connection,
for the process's life),
when the server still holds connections, handler tasks or threads, or connection objects, or
when the end RSS exceeds the warm baseline by more than ``--rss-tolerance`` MiB (default 16).
Loopback only; every loop is bounded and the server exits when the parent's pipe closes (or
after minutes + 5).

    python benchmarks/soak.py                       # 1000 connections, 10 minutes
    python benchmarks/soak.py --minutes 3 --conns 1000
    python benchmarks/soak.py --minutes 3 --server sync
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import os
import random
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path and os.path.isdir(os.path.join(ROOT, "kn_sock")):  # a checkout, not installed
    sys.path.insert(0, ROOT)

from kn_sock import (  # noqa: E402
    AsyncWebSocket,
    WebSocket,
    WebSocketServer,
    async_connect_websocket,
    start_async_websocket_server,
)

MIB = 2**20


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --------------------------------------------------------------------------- the server (child)


def _malloc_trim() -> Any:
    """glibc's malloc_trim (hands free heap pages back, to tell retention from leaks), or None."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def _stats(path: str, connections: int, handlers: int, kind: type, trim: Any) -> Any:
    """The ``/stats`` answer of either server: counts after a gc, ``connections`` and
    ``handlers`` not counting the /stats request itself (nor its connection object, which
    the asyncio server makes before the upgrade, the blocking one after)."""
    gc.collect()
    if path == "/stats?trim=1" and trim is not None:
        trim(0)
    body = {
        "connections": connections,
        "tasks": handlers,
        "ws_objects": sum(1 for o in gc.get_objects() if isinstance(o, kind)) - (kind is AsyncWebSocket),
        "gc_objects": len(gc.get_objects()),
        "allocated_blocks": sys.getallocatedblocks(),
    }
    return 200, [("Content-Type", "application/json")], json.dumps(body).encode()


def on_stdin_eof(callback: Any) -> None:
    """Call ``callback()`` from a daemon thread once stdin ends (the parent is gone)."""

    def watch() -> None:
        sys.stdin.read()
        callback()

    threading.Thread(target=watch, daemon=True).start()


def serve(max_seconds: float, kind: str) -> None:
    """Child process: the echo server; prints its port, exits on stdin EOF or after max_seconds."""
    raise_fd_limit()
    if kind == "sync":
        serve_sync(max_seconds)
        return
    trim = _malloc_trim()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()

        async def echo(ws: Any, path: str) -> None:
            async for message in ws:
                await ws.send(message)

        def process_request(path: str, headers: Any) -> Any:
            if not path.startswith("/stats"):
                return None
            # Minus one: this /stats request is itself one of the server's connections.
            return _stats(path, len(server.connections) - 1, len(server.tasks), AsyncWebSocket, trim)

        server = await start_async_websocket_server(
            "127.0.0.1", 0, echo, process_request=process_request, backlog=4096
        )
        on_stdin_eof(lambda: loop.call_soon_threadsafe(lambda: stop.done() or stop.set_result(None)))
        print(server.port, flush=True)
        try:
            await asyncio.wait_for(stop, max_seconds)
        except asyncio.TimeoutError:
            pass
        server.close()
        await asyncio.wait_for(server.wait_closed(), 15)

    if kind == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def serve_sync(max_seconds: float) -> None:
    """``serve`` for the blocking server; its handler threads are counted by name."""
    trim = _malloc_trim()

    def echo(ws: Any, address: Any) -> None:
        for message in ws:
            ws.send(message)

    def handler_threads() -> int:
        return sum(1 for t in threading.enumerate() if t.name.startswith("kn_sock-handler-"))

    def process_request(path: str, headers: Any) -> Any:
        if not path.startswith("/stats"):
            return None
        # (This request is not in server.connections, which holds upgraded ones; minus its
        # thread: a handler thread runs the handshake.)
        return _stats(path, len(server.connections), handler_threads() - 1, WebSocket, trim)

    server = WebSocketServer("127.0.0.1", 0, echo, process_request=process_request, backlog=4096)
    stop = threading.Event()

    on_stdin_eof(stop.set)
    print(server.port, flush=True)
    runner = threading.Thread(target=server.serve_forever, daemon=True)
    runner.start()
    stop.wait(max_seconds)
    server.shutdown()
    runner.join(15)


# --------------------------------------------------------------------------- readings


def proc_reading(pid: int) -> tuple[float, int]:
    """(VmRSS in MiB, open fds) of ``pid`` from /proc."""
    rss_kib = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss_kib = int(line.split()[1])
    return rss_kib / 1024, len(os.listdir(f"/proc/{pid}/fd"))


async def server_stats(port: int, trim: bool = False) -> dict[str, int]:
    """GET /stats from the server (plain HTTP through its process_request hook); ``trim``
    makes it call glibc's malloc_trim(0) first."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
    try:
        target = b"/stats?trim=1" if trim else b"/stats"
        writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: soak\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    return json.loads(data.split(b"\r\n\r\n", 1)[1])


@dataclass
class Counters:
    opened: int = 0
    closed: int = 0
    aborted: int = 0
    aborted_in_flight: int = 0
    junk: int = 0
    messages: int = 0
    bytes: int = 0
    connect_errors: int = 0
    errors: int = 0
    mismatches: int = 0
    live: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)

    def error(self, exc: BaseException) -> None:
        self.errors += 1
        name = type(exc).__name__
        self.error_kinds[name] = self.error_kinds.get(name, 0) + 1


# --------------------------------------------------------------------------- the clients (parent)


def make_message(rng: random.Random) -> Any:
    roll = rng.random()
    size = rng.choice((16, 100, 1000, 4000)) if roll < 0.97 else 65536
    if rng.random() < 0.5:
        return ("soak ✓ " * (size // 8 + 1))[:size]  # compressible text
    return rng.randbytes(size) if rng.random() < 0.5 else bytes(size)


async def junk_peer(port: int, counters: Counters) -> None:
    """Half an upgrade request, then drop: the server must forget it at once."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
    except (OSError, asyncio.TimeoutError) as exc:
        counters.error(exc)
        return
    writer.write(b"GET / HTTP/1.1\r\nHost: soak\r\nUpgrade: websocket\r\n")
    await asyncio.sleep(0.1)
    writer.transport.abort()
    counters.junk += 1


async def one_connection(url: str, port: int, rng: random.Random, deadline: float, counters: Counters) -> None:
    if rng.random() < 0.05:
        await junk_peer(port, counters)
        await asyncio.sleep(rng.uniform(0.2, 1.0))
        return
    try:
        ws = await async_connect_websocket(url, open_timeout=20)
    except Exception as exc:  # connection refused / backlog full / timeout: count, retry later
        counters.connect_errors += 1
        counters.error(exc)
        await asyncio.sleep(1.0)
        return
    counters.opened += 1
    counters.live += 1
    end = min(deadline, time.monotonic() + rng.uniform(5, 40))
    try:
        while time.monotonic() < end:
            message = make_message(rng)
            await ws.send(message)
            reply = await ws.recv(timeout=30)
            counters.messages += 1
            counters.bytes += len(message)
            if reply != message:
                counters.mismatches += 1
            await asyncio.sleep(rng.uniform(0.5, 1.5))
        ending = rng.random()
        if ending < 0.6:
            await ws.close()
            counters.closed += 1
        elif ending < 0.9:
            ws.abort()
            counters.aborted += 1
        else:
            await ws.send(make_message(rng))
            ws.abort()
            counters.aborted_in_flight += 1
    except Exception as exc:
        counters.error(exc)
        ws.abort()
    finally:
        counters.live -= 1


async def worker(index: int, url: str, port: int, deadline: float, counters: Counters, seed: int) -> None:
    rng = random.Random(seed * 1_000_003 + index)
    await asyncio.sleep(rng.uniform(0, 5))  # ramp up over 5 s
    while time.monotonic() < deadline:
        await one_connection(url, port, rng, deadline, counters)


async def warm_up(url: str, conns: int) -> None:
    """All N connect (at most 200 handshakes at a time), echo once and close together: the
    server reaches its working size once, so that the baseline includes what it never gives back."""
    sem = asyncio.Semaphore(200)

    async def connect() -> Any:
        async with sem:
            return await async_connect_websocket(url, open_timeout=30)

    async def echo_and_close(ws: Any, i: int) -> None:
        await ws.send("warm-up %d" % i)
        await ws.recv(timeout=30)
        await ws.close()

    opened = await asyncio.gather(*(connect() for _ in range(conns)), return_exceptions=True)
    sockets = [ws for ws in opened if not isinstance(ws, BaseException)]
    results = await asyncio.gather(*(echo_and_close(ws, i) for i, ws in enumerate(sockets)), return_exceptions=True)
    failures = [r for r in list(opened) + list(results) if isinstance(r, BaseException)]
    if failures:
        print(f"warm-up: {len(failures)} failures, e.g. {failures[0]!r}", flush=True)
    for ws in sockets:
        ws.abort()  # no-op for the closed ones


async def settle(port: int, timeout: float = 60.0, trim: bool = False) -> dict[str, int]:
    """Wait (bounded) until the server holds no connection nor handler; return that /stats.
    (The one that says so is the one returned: the blocking server's thread for an earlier
    /stats may still be finishing its answer when a request follows at once.)"""
    deadline = time.monotonic() + timeout
    while True:
        stats = await server_stats(port, trim=trim)
        if stats["connections"] == 0 and stats["tasks"] == 0 or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.5)


def row(label: str, pid: int, stats: dict[str, int] | None, counters: Counters | None) -> dict[str, Any]:
    rss, fds = proc_reading(pid)
    entry: dict[str, Any] = {"at": label, "rss_mib": round(rss, 1), "fds": fds}
    if stats is not None:
        entry.update(
            server_conns=stats["connections"],
            ws_objects=stats["ws_objects"],
            py_blocks=stats["allocated_blocks"],
        )
    if counters is not None:
        entry.update(
            client_live=counters.live,
            opened=counters.opened,
            msgs=counters.messages,
            errors=counters.errors,
        )
    cells = "  ".join(f"{k}={v}" for k, v in entry.items() if k != "at")
    print(f"{label:>8}  {cells}", flush=True)
    return entry


async def soak(args: argparse.Namespace, pid: int, port: int) -> int:
    url = f"ws://127.0.0.1:{port}/soak"
    curve = [row("cold", pid, await server_stats(port), None)]
    await warm_up(url, args.conns)
    curve.append(row("warm", pid, await settle(port), None))
    curve.append(row("warm+trim", pid, await settle(port, trim=True), None))
    warm = curve[-1]

    counters = Counters()
    start = time.monotonic()
    deadline = start + args.minutes * 60
    workers = [
        asyncio.create_task(worker(i, url, port, deadline, counters, args.seed)) for i in range(args.conns)
    ]
    next_reading = start + args.interval
    while not all(w.done() for w in workers):
        await asyncio.wait(workers, timeout=max(0.0, next_reading - time.monotonic()))
        if time.monotonic() >= next_reading and time.monotonic() < deadline + 1:
            minutes = (time.monotonic() - start) / 60
            curve.append(row(f"{minutes:.1f}min", pid, await server_stats(port), counters))
            next_reading += args.interval
        if time.monotonic() > deadline + 120:  # bounded: a stuck client must not hang the soak
            print("workers still running 120 s after the deadline: cancelling", flush=True)
            for w in workers:
                w.cancel()
            await asyncio.wait(workers, timeout=10)
            break
    curve.append(row("end", pid, await settle(port), counters))
    stats = await settle(port, trim=True)
    curve.append(row("end+trim", pid, stats, counters))
    end = curve[-1]

    print(
        f"\nclient totals: opened={counters.opened} closed={counters.closed} aborted={counters.aborted} "
        f"aborted_in_flight={counters.aborted_in_flight} junk={counters.junk} messages={counters.messages} "
        f"({counters.bytes / MIB:.0f} MiB) mismatches={counters.mismatches} connect_errors={counters.connect_errors} "
        f"errors={counters.errors} {counters.error_kinds}"
    )
    print(f"server at end: {stats}")
    problems = []
    if end["fds"] != warm["fds"]:
        problems.append(f"fds {end['fds']} at the end vs {warm['fds']} warm ({curve[0]['fds']} cold)")
    if stats["connections"] or stats["tasks"] or stats["ws_objects"]:
        problems.append(f"server still holds {stats}")
    if end["rss_mib"] > warm["rss_mib"] + args.rss_tolerance:
        problems.append(f"RSS {end['rss_mib']} MiB at the end vs {warm['rss_mib']} MiB warm (+{args.rss_tolerance} allowed)")
    if end["py_blocks"] > warm["py_blocks"] * 1.05 + 10000:
        problems.append(f"{end['py_blocks']} Python blocks allocated at the end vs {warm['py_blocks']} warm")
    if counters.mismatches:
        problems.append(f"{counters.mismatches} echoes differed")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"args": vars(args), "curve": curve, "counters": counters.__dict__, "problems": problems}, out, indent=2)
    verdict = "ok (fds back to warm; RSS and Python blocks back to warm, both after malloc_trim)"
    print("LEAK CHECK: " + ("FAILED: " + "; ".join(problems) if problems else verdict))
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="soak duration (default 10)")
    parser.add_argument("--conns", type=int, default=1000, help="concurrent client connections (default 1000)")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between readings (default 60)")
    parser.add_argument("--rss-tolerance", type=float, default=16.0, help="MiB above warm allowed at the end")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--server", choices=("asyncio", "uvloop", "sync"), default="asyncio",
        help="the server under test: asyncio (default), the same on uvloop, or the blocking server",
    )
    parser.add_argument("--json", help="also write the curve and totals to this file")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--max-seconds", type=float, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.max_seconds or 3600, args.server)
        return 0
    raise_fd_limit()
    child = subprocess.Popen(
        [
            sys.executable, os.path.abspath(__file__), "--serve", "--server", args.server,
            "--max-seconds", str(args.minutes * 60 + 300),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        print(f"kn_sock soak: {args.server} server, {args.conns} connections, {args.minutes} min, server pid {child.pid} port {port}")
        return asyncio.run(soak(args, child.pid, port))
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C: one line and 130, no traceback (main() closed the child's stdin)
        if "--serve" in sys.argv[1:]:
            os._exit(130)  # the server child got the Ctrl-C too: leave the word to the parent
        sys.stderr.write("soak.py: interrupted\n")
        sys.exit(130)
