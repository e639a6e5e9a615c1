"""asyncio client: send one message, print the reply.

    python examples/async_client.py [host] [port]      (default: localhost 8765)
"""

import asyncio
import sys

from kn_sock import async_connect_websocket


async def main(host, port):
    async with async_connect_websocket(host, port) as websocket:
        await websocket.send("Hello WebSocket!")
        print(await websocket.recv())


if __name__ == "__main__":
    host = sys.argv[1] if len(sys.argv) > 1 else "localhost"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 8765
    asyncio.run(main(host, port))
