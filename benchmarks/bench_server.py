"""Server throughput under concurrency: many connections to one server, the same load for all.

``bench_echo.py`` measures a client and a server together over one connection. Here only the
server changes: one load-generator process (uvloop when installed), the same for every row,
opens N connections to the server and keeps one 64 B binary message in flight on each (an echo
comes back, the next message goes), writing hand-built masked frames and counting the echoed
bytes. It is lighter than any WebSocket client, so the server is what limits the rate. The
servers are ``bench_echo.py``'s (``--serve KIND``), compression off; by default the server and the
load generator each get a CPU of their own (``--pin split``).

    python benchmarks/bench_server.py             # ~2 min
    python benchmarks/bench_server.py --quick     # ~15 s smoke run
    python benchmarks/bench_server.py --conns 10,100,500 --only kn_cython,picows,raw_async

Every connection's first echo is compared byte for byte with the frame expected back, and after
each cell the bytes received are compared with the messages sent (a short, extra or missing echo
fails the run). Internal child mode: ``--load KIND --port N`` (prints ``RESULT {...}``).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys
import time
import traceback
from dataclasses import replace
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402
import bench_echo as E  # noqa: E402

HOST = "127.0.0.1"
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: The servers compared: bench_echo's rows whose client and server are the same library, one
#: server kind each (the raw echo returns the client's masked frame as it came).
NAMES = ["raw_async", "raw_async_uvloop", "kn_cython", "kn_pure", "kn_uvloop", "kn_cb", "kn_cb_uvloop",
         "picows", "picows_uvloop", "websockets", "aiohttp", "raw_sync", "kn_sync", "websockets_sync"]
CONTESTANTS = [replace(E.BY_NAME[n], label=E.BY_NAME[n].label.replace(" (limit)", " echo (limit)")) for n in NAMES]
BY_NAME = {c.name: c for c in CONTESTANTS}
RAW_KINDS = ("raw_async", "raw_sync")  # servers that speak no WebSocket: no handshake, bytes echoed


# =============================================================== load generator (child)


def frames(size: int) -> tuple[bytes, bytes]:
    """(the masked binary frame a client sends with a ``size``-byte payload, the unmasked frame a
    WebSocket server echoes)."""
    data = os.urandom(size)
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    if size < 126:
        head = bytes([0x82, size])
    elif size < 65536:
        head = bytes([0x82, 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([0x82, 127]) + size.to_bytes(8, "big")
    return bytes([head[0], head[1] | 0x80]) + head[2:] + mask + masked, head + data


def run_load(kind: str, port: int, conns: list[int], size: int, duration: float, warmup: float) -> None:
    C.exit_on_eof()
    results: dict[str, float] = {}
    error = None
    try:
        C.raise_nofile()
        C.run_event_loop(load(kind, port, conns, size, duration, warmup, results), C.module_available("uvloop"))
    except BaseException as exc:  # report what was measured so far
        traceback.print_exc()
        error = f"{type(exc).__name__}: {exc}"
    C.out("RESULT " + json.dumps({"results": results, "error": error}))
    sys.stdout.flush()
    os._exit(0)


async def load(kind: str, port: int, conns: list[int], size: int, duration: float, warmup: float,
               results: dict[str, float]) -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    out_frame, echo_frame = frames(size)
    raw = kind in RAW_KINDS
    if raw:
        echo_frame = out_frame  # a TCP echo: the bytes as sent
    echo_len = len(echo_frame)
    state = {"running": False, "echoes": 0}

    class Conn(asyncio.Protocol):
        """One connection: the handshake, then one message in flight, echoes counted by bytes."""

        def __init__(self) -> None:
            self.opened = loop.create_future()
            self.first = loop.create_future()  # the first echo's bytes
            self.idle = loop.create_future()  # set once the last message sent came back, after the run
            self.lost = loop.create_future()
            self.buf = b""
            self.handshake = not raw
            self.got = 0  # bytes of the echo in progress
            self.sent = self.received = 0  # messages, bytes

        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            if raw:
                self.opened.set_result(None)
                return
            self.key = base64.b64encode(os.urandom(16))
            transport.write(b"GET / HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
                            % (HOST.encode(), port, self.key))

        def data_received(self, data: bytes) -> None:
            if self.handshake or not self.first.done():
                self.buf += data
                if self.handshake:
                    head, sep, rest = self.buf.partition(b"\r\n\r\n")
                    if not sep:
                        return
                    accept = base64.b64encode(hashlib.sha1(self.key + GUID).digest())
                    if not head.startswith(b"HTTP/1.1 101 ") or accept not in head:
                        self.opened.set_exception(AssertionError(f"handshake refused: {head[:200]!r}"))
                        self.transport.abort()
                        return
                    self.handshake, self.buf = False, rest
                    self.opened.set_result(None)
                    if not rest:
                        return
                if len(self.buf) < echo_len:
                    return
                data, self.buf = self.buf, b""  # (compared with the frame expected by load(): a
                self.first.set_result(data)  # longer one, or one more, is a mismatch too)
                return
            n = len(data)
            self.received += n
            got = self.got + n
            done = got // echo_len
            self.got = got - done * echo_len
            if done:
                state["echoes"] += done
                if state["running"]:
                    self.transport.write(out_frame)
                    self.sent += 1
                elif self.got == 0 and not self.idle.done():
                    self.idle.set_result(None)

        def connection_lost(self, exc: Exception | None) -> None:
            for fut in (self.opened, self.first, self.idle):
                if not fut.done():
                    fut.set_exception(ConnectionError("the server closed the connection"))
            if not self.lost.done():
                self.lost.set_result(None)

    for n in conns:
        opened: list[tuple[Any, Conn]] = []
        try:
            async with C.timeout(60):
                for _ in range(n):
                    transport, proto = await loop.create_connection(Conn, HOST, port)
                    opened.append((transport, proto))
                    await proto.opened
                for _, proto in opened:  # every connection's first echo, byte for byte
                    proto.transport.write(out_frame)
                for _, proto in opened:
                    got = await proto.first
                    if got != echo_frame:
                        raise AssertionError(f"echo mismatch: expected {len(echo_frame)} bytes {echo_frame[:12]!r}..., "
                                             f"got {len(got)} bytes {got[:12]!r}...")
            state["running"] = True
            for _, proto in opened:
                proto.transport.write(out_frame)
                proto.sent = 1
            await asyncio.sleep(warmup)
            start, t0 = state["echoes"], time.perf_counter()
            await asyncio.sleep(duration)
            count, t1 = state["echoes"] - start, time.perf_counter()
            state["running"] = False
            async with C.timeout(30):
                for _, proto in opened:
                    if proto.received < proto.sent * echo_len:
                        await proto.idle
            for _, proto in opened:
                if proto.received != proto.sent * echo_len:
                    raise AssertionError(f"{proto.sent} messages sent on a connection, {proto.received} bytes "
                                         f"echoed, not {proto.sent * echo_len}")
            results[str(n)] = count / (t1 - t0)
        finally:
            state["running"] = False
            for transport, proto in opened:  # a normal closing handshake (code 1000), then TCP
                if not raw and not transport.is_closing():
                    transport.write(b"\x88\x82\x00\x00\x00\x00\x03\xe8")
            try:
                async with C.timeout(5):
                    for transport, proto in opened:
                        if raw:
                            transport.close()
                        await proto.lost
            except TimeoutError:
                pass
            for transport, _ in opened:
                transport.close()


# =============================================================== orchestration (parent)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 0.3 s per cell, 1 round")
    ap.add_argument("--rounds", type=C.positive_int, help="rounds (default 3; 1 with --quick)")
    ap.add_argument("--duration", type=C.positive_float, help="seconds per cell (default 1.0; 0.3 with --quick)")
    ap.add_argument("--warmup", type=C.non_negative_float, help="warm-up seconds before each cell (default 0.2)")
    ap.add_argument("--conns", default="10,100", help="comma-separated numbers of connections (default 10,100)")
    ap.add_argument("--size", type=C.positive_int, default=64, help="message size in bytes (default 64)")
    ap.add_argument("--only", help="comma-separated contestant ids (" + ",".join(BY_NAME) + ")")
    ap.add_argument("--skip", help="comma-separated contestant ids to leave out")
    ap.add_argument("--pin", choices=("split", "same", "none"), default="split",
                    help="CPU placement of the server and the load generator: one CPU each (default), both on "
                         "one CPU, or left to the scheduler")
    ap.add_argument("--json", metavar="FILE", help="write raw and median results to FILE")
    ap.add_argument("--load", metavar="KIND", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = C.parse_args(ap)
    try:
        conns = [int(x) for x in args.conns.split(",") if x.strip()]
        if not conns or min(conns) < 1:
            raise ValueError
    except ValueError:
        ap.error(f"--conns: comma-separated numbers of connections, 1 or more, not {args.conns!r}")

    if os.environ.get("BENCH_CPU"):
        C.pin_cpu(os.environ["BENCH_CPU"])
    if args.load:
        return run_load(args.load, args.port, conns, args.size, args.duration, args.warmup)

    C.install_parent_handlers()
    rounds = args.rounds or (1 if args.quick else 3)
    duration = args.duration or (0.3 if args.quick else 1.0)
    warmup = args.warmup if args.warmup is not None else (0.1 if args.quick else 0.2)
    args.only = C.known_ids(ap, "only", args.only, BY_NAME)
    args.skip = C.known_ids(ap, "skip", args.skip, BY_NAME)
    C.arguments_checked()
    if orchestrate(args, rounds, duration, warmup, conns):
        sys.exit(1)


def orchestrate(args: Any, rounds: int, duration: float, warmup: float, conns: list[int]) -> int:
    """Run the servers under the load, print the table; the number of failures (a skip is not one)."""
    t_start = time.monotonic()
    notes: list[str] = []
    chosen = [c for c in CONTESTANTS if not args.only or c.name in args.only.split(",")]
    if args.skip:
        chosen = [c for c in chosen if c.name not in args.skip.split(",")]
    runnable, failures = E.select_runnable(chosen, notes)

    load_kind = "uvloop" if C.module_available("uvloop") else "asyncio"
    print(f"# server benchmark: {C.machine_line()}")
    print(f"# {rounds} round(s), {duration} s per cell after {warmup} s warm-up, {args.size} B binary messages, "
          f"connections: {', '.join(map(str, conns))}, load generator on {load_kind}, compression off, "
          f"CPU placement: {args.pin}", flush=True)

    server_cpu, load_cpu = E.cpu_placement(args.pin, notes)
    servers, ports, failed = E.start_servers(runnable, server_cpu, notes)
    failures += failed

    # the table's columns, as bench_echo's modes: (key, kind, connections)
    columns = [(f"{n} conns", "conns", n) for n in conns]
    raw: dict[str, dict[str, list[float | None]]] = {c.name: {k: [None] * rounds for k, _, _ in columns}
                                                     for c in runnable}
    budget = len(conns) * (duration + warmup + 10) + 60 + sum(conns) / 50
    step = max(1, len(runnable) // rounds)
    for rnd in range(rounds):
        start = (rnd * step) % max(1, len(runnable))
        for c in runnable[start:] + runnable[:start]:
            server = servers.get(c.name)
            if server is None:
                continue
            if not server.alive():
                notes.append(f"{c.label}: server died before round {rnd + 1}{server.stderr_tail()}")
                failures += 1
                servers.pop(c.name).kill()
                continue
            client = C.Child([__file__, "--load", c.server, "--port", str(ports[c.name]), "--conns",
                              ",".join(map(str, conns)), "--size", str(args.size), "--duration", str(duration),
                              "--warmup", str(warmup)],
                             env=C.clean_env(BENCH_CPU=load_cpu), label=f"{c.label} load")
            try:
                res = json.loads(" ".join(client.expect("RESULT ", timeout=budget)))
            except C.ChildError as exc:
                notes.append(f"{c.label}, round {rnd + 1}: load generator failed: {exc}")
                failures += 1
                res = {"results": {}}
            finally:
                tail = client.stderr_tail()
                client.kill()
            for n, value in res["results"].items():
                raw[c.name][f"{n} conns"][rnd] = value
            if res.get("error"):
                notes.append(f"{c.label}, round {rnd + 1}: {res['error']}{tail}")
                failures += 1
            cells = " ".join(f"{n} conns={C.fmt_rate(v)}" for n, v in res["results"].items())
            print(f"  round {rnd + 1}/{rounds} {c.label:40s} {cells}", flush=True)
    for child in servers.values():
        child.kill()

    med = {name: {k: C.median(v) for k, v in per.items()} for name, per in raw.items()}
    print()
    print(E.render(runnable, columns, med, raw))
    print()
    print("Cells: echoes/s over all connections, median of rounds; (x.xx) = ratio to the raw echo server of the")
    print("same group and event loop (raw asyncio for async rows, raw asyncio + uvloop for uvloop rows when it")
    print("ran, raw blocking sockets with a thread per connection for blocking rows), the median of the ratios")
    print("within each round. 'vs picows' / 'vs websockets': kn_sock / that server per column, the same way")
    print("(uvloop rows vs picows + uvloop; the blocking row vs picows on the default loop and websockets.sync).")
    E.report_end(raw, rounds, notes, t_start)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": C.machine_line(), "rounds": rounds, "duration": duration, "size": args.size,
                       "conns": conns, "pin": args.pin,
                       "contestants": {c.name: {"label": c.label, "group": c.group, "raw": raw[c.name],
                                                "median": med[c.name]} for c in runnable},
                       "notes": notes}, f, indent=2)
        print(f"results written to {args.json}")
    if failures:
        print(f"FAILED: {failures} contestant run(s) failed (see the notes)")
    return failures


if __name__ == "__main__":
    C.run_main(main)
