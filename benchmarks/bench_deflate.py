"""Echo round trips with permessage-deflate negotiated: what the default options cost.

``compression="deflate"`` is kn_sock's default (and websockets', and every browser offers it), so
this is what most connections run. Each library's client and server, in separate processes, with
permessage-deflate on at that library's own settings, echo messages that differ from one to the
next, as a feed's do (the same message over and over would deflate to a back-reference):

* ``json 100 B``: market-data ticks, JSON objects of about 100 bytes (text);
* ``json 2 KiB``: lists of 16 such ticks (text);
* ``random 64 KiB``: random bytes (binary; incompressible: media, encrypted or compressed data).

A round trip sends one message and waits for its echo, which is checked. Contestants: kn_sock
(Cython and pure), websockets and aiohttp with deflate; for reference, kn_sock (Cython) and picows
with compression off (picows has none). Rows are interleaved and repeated ``--rounds`` times; the
table shows medians, and each row against websockets (paired by round).

    python benchmarks/bench_deflate.py            # ~1 min
    python benchmarks/bench_deflate.py --quick    # ~15 s smoke run

Internal child modes: ``--serve KIND`` (prints ``PORT n``), ``--client KIND --port N``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import traceback
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402

HOST = "127.0.0.1"
MAX_SIZE = 2**20
#: (cell, kind, size): kind "json" (text, about ``size`` bytes) or "random" (binary).
CELLS = [("json 100 B", "json", 100), ("json 2 KiB", "json", 2048), ("random 64 KiB", "random", 65536)]
#: Distinct messages a client cycles through per cell.
VARIANTS = 256

# id: (label, server/client kind, KN_SOCK_PURE, deflate expected)
CONTESTANTS: dict[str, tuple[str, str, str | None, bool]] = {
    "kn_cython": ("kn_sock (Cython), deflate", "kn", None, True),
    "kn_pure": ("kn_sock (pure), deflate", "kn", "1", True),
    "websockets": ("websockets, deflate", "websockets", None, True),
    "aiohttp": ("aiohttp, deflate", "aiohttp", None, True),
    "kn_cython_off": ("kn_sock (Cython), off", "kn_off", None, False),
    "picows": ("picows (no compression)", "picows", None, False),
}
REFERENCE = "websockets"
MODULES = {"kn": "kn_sock", "kn_off": "kn_sock", "websockets": "websockets", "aiohttp": "aiohttp", "picows": "picows"}


def messages(kind: str, size: int) -> list[Any]:
    """``VARIANTS`` distinct messages of a cell, the same in every process (seeded)."""
    rng = random.Random(f"{kind}/{size}")
    if kind == "random":
        return [rng.randbytes(size) for _ in range(VARIANTS)]
    symbols = ["BTC-USD", "ETH-USD", "SOL-USD", "EUR-USD", "AAPL", "MSFT"]

    def tick(i: int) -> dict[str, Any]:
        return {"type": "tick", "symbol": rng.choice(symbols), "price": round(rng.uniform(10, 60000), 2),
                "size": round(rng.random() * 10, 4), "seq": i, "ts": 1_764_000_000_000 + rng.randrange(10**6)}

    ticks = 1 if size <= 128 else max(1, size // 128)
    out = []
    for i in range(VARIANTS):
        body = tick(i) if ticks == 1 else [tick(i * ticks + j) for j in range(ticks)]
        out.append(json.dumps(body, separators=(",", ":")))
    return out


# ================================================================ servers (child processes)


async def serve(kind: str) -> None:
    import asyncio

    server: Any
    if kind in ("kn", "kn_off"):
        from kn_sock import IMPLEMENTATION, start_async_websocket_server

        async def handler(ws: Any, path: str) -> None:
            async for msg in ws:
                await ws.send(msg)

        server = await start_async_websocket_server(
            HOST, 0, handler, compression="deflate" if kind == "kn" else None, ping_interval=None, max_size=MAX_SIZE
        )
        C.out(f"IMPL {IMPLEMENTATION}")
        port = server.port
    elif kind == "websockets":
        from websockets.asyncio.server import serve as ws_serve

        async def ws_handler(ws: Any) -> None:
            async for msg in ws:
                await ws.send(msg)

        server = await ws_serve(ws_handler, HOST, 0, ping_interval=None, max_size=MAX_SIZE)  # deflate: its default
        port = server.sockets[0].getsockname()[1]
    elif kind == "aiohttp":
        server, port = await C.start_aiohttp_echo(HOST, 0, True, MAX_SIZE)
    elif kind == "picows":
        server, port = await C.start_picows_echo(HOST, 0, MAX_SIZE)
    else:
        raise SystemExit(f"unknown server kind {kind}")
    C.out(f"PORT {port}")
    await asyncio.Event().wait()


# ================================================================ clients (child processes)


class CoroutineDriver:
    """Round trips through a library's coroutine API: send, await the echo, check it."""

    def __init__(self, send: Any, recv: Any, close: Any) -> None:
        self.send, self.recv, self.close = send, recv, close

    async def window(self, key: str, msgs: list[Any], seconds: float) -> int:
        send, recv = self.send, self.recv
        n = i = 0
        end = time.perf_counter() + seconds
        while True:
            msg = msgs[i]
            await send(msg)
            echo = await recv()
            if echo != msg:
                raise AssertionError(f"{key}: echo mismatch ({type(echo).__name__}[{len(echo)}])")
            n += 1
            i = (i + 1) % VARIANTS
            if not n & 15 and time.perf_counter() >= end:
                return n


class PicowsDriver:
    """Round trips the picows way: each echo, checked in the frame callback, sends the next."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.done: Any = None
        self.msgs: list[Any] = []
        self.n = self.i = 0
        self.end = 0.0
        self.key = ""

    def write(self, msg: Any) -> None:
        from picows import WSMsgType

        if isinstance(msg, str):
            self.transport.send(WSMsgType.TEXT, msg.encode())
        else:
            self.transport.send(WSMsgType.BINARY, msg)

    def echo(self, echo: Any) -> None:
        if self.done is None or self.done.done():
            return
        if echo != self.msgs[self.i]:
            self.done.set_exception(AssertionError(f"{self.key}: echo mismatch ({type(echo).__name__}[{len(echo)}])"))
            return
        self.n += 1
        self.i = (self.i + 1) % VARIANTS
        if not self.n & 15 and time.perf_counter() >= self.end:
            self.done.set_result(self.n)
            return
        self.write(self.msgs[self.i])

    async def window(self, key: str, msgs: list[Any], seconds: float) -> int:
        import asyncio

        self.key, self.msgs, self.n, self.i = key, msgs, 0, 0
        self.done = asyncio.get_running_loop().create_future()
        self.end = time.perf_counter() + seconds
        self.write(msgs[0])
        return await self.done  # type: ignore[no-any-return]

    async def close(self) -> None:
        self.transport.send_close()
        self.transport.disconnect()
        await self.transport.wait_disconnected()


async def connect(kind: str, port: int) -> tuple[Any, bool]:
    """(a driver with ``window()`` and ``close()``, whether permessage-deflate was negotiated)."""
    url = f"ws://{HOST}:{port}/"
    if kind in ("kn", "kn_off"):
        from kn_sock import async_connect_websocket

        ws = await async_connect_websocket(
            HOST, port, compression="deflate" if kind == "kn" else None, ping_interval=None, max_size=MAX_SIZE
        )
        return CoroutineDriver(ws.send, ws.recv, ws.close), "permessage-deflate" in ws.extensions
    if kind == "websockets":
        from websockets.asyncio.client import connect as ws_connect

        wsc = await ws_connect(url, ping_interval=None, max_size=MAX_SIZE, proxy=None)
        return CoroutineDriver(wsc.send, wsc.recv, wsc.close), bool(wsc.protocol.extensions)
    if kind == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession()
        aws = await session.ws_connect(url, compress=15, max_msg_size=MAX_SIZE, heartbeat=None)

        async def aio_send(msg: Any) -> None:
            if isinstance(msg, str):
                await aws.send_str(msg)
            else:
                await aws.send_bytes(msg)

        async def aio_recv() -> Any:
            return (await aws.receive()).data

        async def aio_close() -> None:
            await aws.close()
            await session.close()

        return CoroutineDriver(aio_send, aio_recv, aio_close), bool(aws.compress)
    if kind == "picows":
        from picows import WSListener, WSMsgType
        from picows import ws_connect as picows_connect

        driver = PicowsDriver()

        class Client(WSListener):  # type: ignore[misc]
            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                t = frame.msg_type
                if t is WSMsgType.TEXT:
                    driver.echo(frame.get_payload_as_utf8_text())
                elif t is WSMsgType.BINARY:
                    driver.echo(frame.get_payload_as_bytes())

        driver.transport, _ = await picows_connect(Client, url, max_frame_size=MAX_SIZE)
        return driver, False
    raise SystemExit(f"unknown client kind {kind}")


async def client(kind: str, port: int, cells: list[tuple[str, str, int]], duration: float,
                 warmup: float, results: dict[str, float]) -> None:
    async with C.timeout(20):
        driver, deflate = await connect(kind, port)
    try:
        expected = kind in ("kn", "websockets", "aiohttp")
        if deflate != expected:
            raise RuntimeError(f"permessage-deflate {'not ' if expected else ''}negotiated")
        for key, mkind, size in cells:
            msgs = messages(mkind, size)
            async with C.timeout(warmup + 30):
                await driver.window(key, msgs, warmup)
            async with C.timeout(duration + 30):
                t0 = time.perf_counter()
                n = await driver.window(key, msgs, duration)
                results[key] = n / (time.perf_counter() - t0)
    finally:
        async with C.timeout(10):
            await driver.close()


def run_client(kind: str, port: int, cells: list[tuple[str, str, int]], duration: float, warmup: float) -> None:
    C.exit_on_eof()
    results: dict[str, float] = {}
    error = None
    impl = None
    try:
        C.run_event_loop(client(kind, port, cells, duration, warmup, results))
    except BaseException as exc:
        traceback.print_exc()
        error = f"{type(exc).__name__}: {exc}"
    if "kn_sock" in sys.modules:
        impl = sys.modules["kn_sock"].IMPLEMENTATION
    C.out("RESULT " + json.dumps({"results": results, "error": error, "impl": impl}))
    sys.stdout.flush()
    os._exit(0)


# ================================================================ parent


def run_row(cid: str, cells: list[tuple[str, str, int]], duration: float, warmup: float,
            cpu: str | None) -> tuple[dict[str, float], str | None]:
    """One contestant for one round: (results per cell, why it was skipped or failed)."""
    label, kind, pure, _ = CONTESTANTS[cid]
    env = C.clean_env(KN_SOCK_PURE=pure, BENCH_CPU=cpu)
    want = ("pure" if pure else "cython") if kind.startswith("kn") else None
    server = C.Child([__file__, "--serve", kind], env=env, label=f"{cid} server")
    client_child = None
    try:
        impl = None
        while True:
            line = server.readline(30)
            if line.startswith("IMPL "):
                impl = line.split()[1]
            elif line.startswith("PORT "):
                port = int(line.split()[1])
                break
            elif line.startswith("ERROR"):
                return {}, line
        if want is not None and impl != want:
            return {}, f"server runs kn_sock {impl}, not {want}"
        client_child = C.Child(
            [__file__, "--client", kind, "--port", str(port), "--cells", ",".join(c[0] for c in cells),
             "--duration", str(duration), "--warmup", str(warmup)],
            env=env, label=f"{cid} client",
        )
        budget = len(cells) * (duration + warmup + 30) + 30
        (payload,) = [" ".join(client_child.expect("RESULT ", budget))]
        report = json.loads(payload)
        if want is not None and report["impl"] != want:
            return {}, f"client runs kn_sock {report['impl']}, not {want}"
        return report["results"], report["error"]
    except C.ChildError as exc:
        return {}, str(exc)
    finally:
        if client_child is not None:
            client_child.kill()
        server.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 0.2 s per cell, 1 round")
    ap.add_argument("--rounds", type=C.positive_int, help="rounds (default 3; 1 with --quick)")
    ap.add_argument("--duration", type=C.positive_float, help="seconds per cell (default 0.6; 0.2 with --quick)")
    ap.add_argument("--warmup", type=C.non_negative_float, default=0.1, help="warm-up seconds before each cell")
    ap.add_argument("--only", help="comma-separated contestant ids (" + ",".join(CONTESTANTS) + ")")
    ap.add_argument("--cells", help='comma-separated cells (default: all): ' + ", ".join(c[0] for c in CELLS))
    ap.add_argument("--json", metavar="FILE", help="write the raw and median results to FILE")
    ap.add_argument("--pin", choices=("same", "none"), default="same",
                    help="server and client on one CPU (default, as bench_echo.py: steadiest on a small VM) "
                         "or left to the scheduler")
    ap.add_argument("--serve", metavar="KIND", help=argparse.SUPPRESS)
    ap.add_argument("--client", metavar="KIND", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = C.parse_args(ap)
    names = {c[0]: c for c in CELLS}
    if args.cells:
        unknown = [c for c in args.cells.split(",") if c not in names]
        if unknown:
            ap.error(f"--cells: unknown {', '.join(unknown)} (known: {', '.join(names)})")
        cells = [names[c] for c in args.cells.split(",")]
    else:
        cells = list(CELLS)
    only = C.known_ids(ap, "only", args.only, CONTESTANTS)
    duration = args.duration or (0.2 if args.quick else 0.6)
    rounds = args.rounds or (1 if args.quick else 3)
    if os.environ.get("BENCH_CPU"):
        C.pin_cpu(os.environ["BENCH_CPU"])
    if args.serve:
        C.exit_on_eof()
        C.run_event_loop(serve(args.serve))
        return 0
    if args.client:
        run_client(args.client, args.port, cells, duration, args.warmup)
        return 0
    C.arguments_checked()
    C.install_parent_handlers()

    chosen = [cid for cid in CONTESTANTS if not only or cid in only.split(",")]
    missing = {cid for cid in chosen if not C.module_available(MODULES[CONTESTANTS[cid][1]])}
    for cid in sorted(missing):
        print(f"note: {cid} skipped: {MODULES[CONTESTANTS[cid][1]]} is not installed")
    chosen = [cid for cid in chosen if cid not in missing]
    print(C.machine_line())
    cpu = str(sorted(os.sched_getaffinity(0))[-1]) if args.pin == "same" else None
    print(f"permessage-deflate echo: {rounds} round(s), {duration:.2f} s per cell, contestants interleaved, "
          f"CPU placement: {args.pin}")
    raw: dict[str, dict[str, list[float]]] = {cid: {c[0]: [] for c in cells} for cid in chosen}
    failed: dict[str, str] = {}
    for r in range(rounds):
        order = chosen[r % len(chosen):] + chosen[: r % len(chosen)] if chosen else []
        for cid in order:
            if cid in failed:
                continue
            results, problem = run_row(cid, cells, duration, args.warmup, cpu)
            if problem:
                failed[cid] = problem.splitlines()[0]
                print(f"note: {cid}: {failed[cid]}")
            for key, _, _ in cells:
                raw[cid][key].append(results.get(key, 0.0))
    header = ["contestant"] + [c[0] for c in cells] + [f"vs {REFERENCE}"]
    rows = []
    medians: dict[str, dict[str, float | None]] = {}
    for cid in chosen:
        if cid in failed:
            continue
        medians[cid] = {key: C.median([v for v in raw[cid][key] if v]) for key, _, _ in cells}
        ratios = []
        for key, _, _ in cells:
            base = raw.get(REFERENCE, {}).get(key)
            ratios.append(C.paired_ratio(raw[cid][key], base) if base and REFERENCE not in failed else None)
        row = [CONTESTANTS[cid][0]] + [C.fmt_rate(medians[cid][key]) for key, _, _ in cells]
        row.append(" / ".join(C.fmt_ratio(x) for x in ratios) if cid != REFERENCE else "")
        rows.append(row)
    print("round trips/s (median); last column: per cell, against websockets with deflate")
    print(C.table(header, rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"raw": raw, "median": medians, "failed": failed}, f, indent=1)
    return 1 if failed and len(failed) == len(chosen) else 0


if __name__ == "__main__":
    C.run_main(main)
