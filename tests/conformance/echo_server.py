"""kn_sock echo server for ``wstest -m fuzzingclient``: ``python echo_server.py async|uvloop|sync PORTFILE``."""

from __future__ import annotations

import asyncio
import sys

OPTIONS = dict(max_size=2**25, max_queue=None, ping_interval=None, compression="deflate")


def run_async(portfile: str, use_uvloop: bool = False) -> None:
    """Serve with the asyncio layer until killed (on uvloop's event loop with ``use_uvloop``)."""
    from kn_sock.asyncio.server import start_async_websocket_server

    async def handler(ws, path):  # type: ignore[no-untyped-def]
        async for msg in ws:
            await ws.send(msg)

    async def main() -> None:
        server = await start_async_websocket_server("127.0.0.1", 0, handler, **OPTIONS)
        with open(portfile, "w") as f:
            f.write(str(server.port))
        await server.serve_forever()

    if use_uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(main())


def run_uvloop(portfile: str) -> None:
    """Serve with the asyncio layer on uvloop until killed."""
    run_async(portfile, use_uvloop=True)


def run_sync(portfile: str) -> None:
    """Serve with the blocking layer until killed."""
    from kn_sock.sync import WebSocketServer

    def handler(ws, address):  # type: ignore[no-untyped-def]
        for msg in ws:
            ws.send(msg)

    with WebSocketServer("127.0.0.1", 0, handler, **OPTIONS) as server:
        with open(portfile, "w") as f:
            f.write(str(server.port))
        server.serve_forever()


if __name__ == "__main__":
    {"async": run_async, "uvloop": run_uvloop, "sync": run_sync}[sys.argv[1]](sys.argv[2])
