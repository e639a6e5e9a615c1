"""The ``kn-sock`` / ``python -m kn_sock`` command line: serve, connect, demo, bench."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from ._backend import IMPLEMENTATION
from .exceptions import InvalidHandshake, InvalidStatus, InvalidURI, WebSocketError

__all__ = ["main"]

logger = logging.getLogger("kn_sock")


def _out(text: str) -> None:
    """Write one line to stdout (the CLI's output; the library itself only logs)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


# ---------------------------------------------------------------- serve


def _tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if not cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def cmd_serve(args: argparse.Namespace) -> int:
    """Run an echo server until interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    tls = _tls_context(args.tls_cert, args.tls_key)
    scheme = "wss" if tls else "ws"
    if args.sync:
        from .sync import WebSocketServer

        def handler(ws: Any, address: Any) -> None:
            logger.info("connection from %s", address)
            for msg in ws:
                ws.send(msg)
            logger.info("%s closed (%s)", address, ws.close_code)

        with WebSocketServer(args.host, args.port, handler, ssl=tls) as server:
            _out(f"kn_sock {__version__} ({IMPLEMENTATION}) blocking echo server on {scheme}://{args.host}:{server.port}/")
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                pass
        return 0

    from .asyncio.server import start_async_websocket_server

    async def ahandler(ws: Any, path: str) -> None:
        logger.info("connection from %s path %s", ws.remote_address, path)
        async for msg in ws:
            await ws.send(msg)
        logger.info("%s closed (%s)", ws.remote_address, ws.close_code)

    async def run() -> None:
        server = await start_async_websocket_server(args.host, args.port, ahandler, ssl=tls)
        _out(f"kn_sock {__version__} ({IMPLEMENTATION}) asyncio echo server on {scheme}://{args.host}:{server.port}/")
        await server.serve_forever()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    return 0


# ---------------------------------------------------------------- connect


def cmd_connect(args: argparse.Namespace) -> int:
    """Interactive client: lines typed are sent, messages received are printed."""
    from .sync import connect_websocket

    try:
        ws = connect_websocket(args.uri, open_timeout=args.timeout)
    except InvalidStatus as exc:
        _err(f"error: the server refused the WebSocket upgrade: HTTP {exc.status}")
        return 1
    except InvalidURI as exc:
        _err(f"error: invalid URI: {exc}")
        return 2
    except InvalidHandshake as exc:
        _err(f"error: opening handshake failed: {exc}")
        return 1
    except (OSError, TimeoutError) as exc:
        _err(f"error: cannot connect to {args.uri}: {exc}")
        return 1
    _err(f"connected to {args.uri} ({IMPLEMENTATION}); /ping, /close [code] or EOF to quit")

    def reader() -> None:
        for msg in ws:
            _out(f"< {msg!r}" if isinstance(msg, bytes) else f"< {msg}")
        _err(f"connection closed: {ws.close_code} {ws.close_reason or ''}".rstrip())

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        for line in sys.stdin:
            line = line.rstrip("\n")
            if line == "/ping":
                waiter = ws.ping()
                if waiter.wait(5):
                    _err(f"pong: {ws.latency * 1000:.2f} ms")
                else:
                    _err("no pong within 5 s")
            elif line.startswith("/close"):
                parts = line.split()
                code = int(parts[1]) if len(parts) > 1 else 1000
                ws.close(code)
                break
            else:
                ws.send(line)
    except WebSocketError as exc:
        _err(f"error: {exc}")
    except KeyboardInterrupt:
        pass
    ws.close()
    thread.join(2)
    return 0


# ---------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    """Start an echo server, exchange messages with it, print the throughput."""
    from .asyncio.client import async_connect_websocket
    from .asyncio.server import start_async_websocket_server

    async def handler(ws: Any, path: str) -> None:
        async for msg in ws:
            await ws.send(msg)

    async def run() -> None:
        server = await start_async_websocket_server("127.0.0.1", 0, handler, compression=None)
        _out(f"kn_sock {__version__}, implementation: {IMPLEMENTATION}")
        _out(f"echo server on ws://127.0.0.1:{server.port}/")
        async with async_connect_websocket("127.0.0.1", server.port, compression=None) as ws:
            await ws.send("Hello WebSocket!")
            _out(f"sent 'Hello WebSocket!', received {await ws.recv()!r}")
            for size in (64, 1024, 65536):
                payload = os.urandom(size)
                n = 0
                t0 = time.perf_counter()
                while time.perf_counter() - t0 < args.seconds:
                    await ws.send(payload)
                    if await ws.recv() != payload:
                        raise RuntimeError("echo mismatch")
                    n += 1
                elapsed = time.perf_counter() - t0
                _out(f"{size:>6} B: {n / elapsed:>9,.0f} round trips/s  {n * size * 2 / elapsed / 1e6:>8.1f} MB/s")
        server.close()
        await server.wait_closed()
        _out("(client and server share one process here; `kn-sock bench` compares libraries)")

    asyncio.run(run())
    return 0


# ---------------------------------------------------------------- bench


def cmd_bench(args: argparse.Namespace, extra: Sequence[str]) -> int:
    """Run the benchmark scripts from ``benchmarks/`` (a source checkout)."""
    root = Path(__file__).resolve().parent.parent / "benchmarks"
    suites = {"echo": "bench_echo.py", "speedups": "bench_speedups.py", "conns": "bench_conns.py"}
    chosen = args.suite or ["speedups", "echo"]
    status = 0
    for name in chosen:
        script = root / suites[name]
        if not script.exists():
            _err(f"benchmark {name}: {script} not found (benchmarks ship with the source checkout)")
            status = 1
            continue
        _out(f"== {name} ({script.name})")
        cmd = [sys.executable, str(script)] + (["--quick"] if args.quick else []) + list(extra)
        status = subprocess.call(cmd) or status
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``kn-sock`` and ``python -m kn_sock``."""
    parser = argparse.ArgumentParser(prog="kn-sock", description="kn_sock WebSocket tools")
    parser.add_argument("--version", action="version", version=f"kn_sock {__version__} ({IMPLEMENTATION})")
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("serve", help="run an echo server")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--sync", action="store_true", help="blocking server (threads)")
    mode.add_argument("--async", dest="use_async", action="store_true", help="asyncio server (default)")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p = sub.add_parser("connect", help="interactive client")
    p.add_argument("uri")
    p.add_argument("--timeout", type=float, default=10.0)
    p = sub.add_parser("demo", help="echo server and client in one process, with throughput")
    p.add_argument("--seconds", type=float, default=1.0)
    p = sub.add_parser("bench", help="run the benchmarks (source checkout)")
    p.add_argument("--suite", action="append", choices=["echo", "speedups", "conns"])
    p.add_argument("--quick", action="store_true")
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":
        return cmd_bench(args, extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "serve":
        return cmd_serve(args)
    if args.command == "connect":
        return cmd_connect(args)
    if args.command == "demo":
        return cmd_demo(args)
    parser.print_help()
    return 0
