"""asyncio echo server.

    python examples/async_server.py [host] [port]      (default: localhost 8765)

Ctrl-C (or SIGTERM) cancels serve_forever(), which closes every connection with 1001.
"""

import asyncio
import signal
import sys

from kn_sock import start_async_websocket_server


async def handler(websocket, path):
    async for message in websocket:
        await websocket.send(f"Echo: {message}")


async def main(host, port):
    server = await start_async_websocket_server(host, port, handler)
    print(f"serving on ws://{host}:{server.port}/", flush=True)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    try:
        await server.serve_forever()
    except asyncio.CancelledError:
        print("server stopped", flush=True)


if __name__ == "__main__":
    host = sys.argv[1] if len(sys.argv) > 1 else "localhost"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 8765
    try:
        asyncio.run(main(host, port))
    except KeyboardInterrupt:
        pass
