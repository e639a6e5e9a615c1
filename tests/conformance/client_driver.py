"""kn_sock clients driving ``wstest -m fuzzingserver``: ``python client_driver.py async|uvloop|sync URL AGENT``."""

from __future__ import annotations

import asyncio
import json
import sys
import time

OPTIONS = dict(max_size=2**25, max_queue=None, ping_interval=None, compression="deflate", close_timeout=5)


async def run_async(url: str, agent: str) -> None:
    """Run every case with the asyncio client."""
    from kn_sock.asyncio.client import async_connect_websocket
    from kn_sock.exceptions import WebSocketError

    async with async_connect_websocket(f"{url}/getCaseCount") as ws:
        count = json.loads(await ws.recv())
    t0 = time.time()
    for n in range(1, count + 1):
        try:
            async with async_connect_websocket(f"{url}/runCase?case={n}&agent={agent}", **OPTIONS) as ws:
                async for msg in ws:
                    await ws.send(msg)
        except (WebSocketError, OSError, TimeoutError):
            pass
    async with async_connect_websocket(f"{url}/updateReports?agent={agent}") as ws:
        await ws.recv()
    print(f"{count} cases in {time.time() - t0:.1f}s", flush=True)


def run_sync(url: str, agent: str) -> None:
    """Run every case with the blocking client."""
    from kn_sock.exceptions import WebSocketError
    from kn_sock.sync import connect_websocket

    with connect_websocket(f"{url}/getCaseCount") as ws:
        count = json.loads(ws.recv())
    t0 = time.time()
    for n in range(1, count + 1):
        try:
            with connect_websocket(f"{url}/runCase?case={n}&agent={agent}", **OPTIONS) as ws:
                for msg in ws:
                    ws.send(msg)
        except (WebSocketError, OSError, TimeoutError):
            pass
    with connect_websocket(f"{url}/updateReports?agent={agent}") as ws:
        ws.recv()
    print(f"{count} cases in {time.time() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    mode, url, agent = sys.argv[1:4]
    if mode == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if mode in ("async", "uvloop"):
        asyncio.run(run_async(url, agent))
    else:
        run_sync(url, agent)
