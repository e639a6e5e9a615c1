"""A client that survives server restarts: ``reconnect=True`` and ``on_connect`` to re-subscribe.

    python examples/reconnecting_client.py [uri] [count]
    (default: ws://localhost:8765/ and 10 messages)

The server is expected to answer a ``{"subscribe": "news"}`` message with a stream of
messages. When the connection drops (1001 on a server restart, 1006 when the network
fails, 1011-1014), the client reconnects with exponential backoff and jitter; ``on_connect``
runs after *every* connection, so the subscription is renewed each time. ``recv()`` blocks
across the reconnection and returns None only when no reconnection will follow.
"""

import asyncio
import sys

from kn_sock import async_connect_websocket

connections = 0


async def subscribe(ws):
    """on_connect: runs after the first connection and after every reconnection."""
    global connections
    connections += 1
    print(f"connected (#{connections}), subscribing", flush=True)
    await ws.send_json({"subscribe": "news"})


async def main(uri, count):
    backoff = {"initial_delay": 0.1, "max_delay": 2.0, "factor": 2.0, "max_attempts": 20}
    async with async_connect_websocket(uri, reconnect=backoff, on_connect=subscribe) as ws:
        for _ in range(count):
            message = await ws.recv()
            if message is None:  # closed for good: 1000, a permanent error, or attempts exhausted
                print("connection closed for good", flush=True)
                return
            print(f"received: {message}", flush=True)


if __name__ == "__main__":
    uri = sys.argv[1] if len(sys.argv) > 1 else "ws://localhost:8765/"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    asyncio.run(main(uri, count))
