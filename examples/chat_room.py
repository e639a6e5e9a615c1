"""A chat room (asyncio): every message a client sends goes to all the *other* clients.

    python examples/chat_room.py [host] [port]      (default: localhost 8765)

Then, in two or more terminals:  kn-sock connect ws://localhost:8765/

Each client is named ``guest-N``; joins and departures are announced. Sending to many
connections uses ``kn_sock.broadcast`` when this kn_sock has it, else a plain loop.
"""

import asyncio
import inspect
import itertools
import signal
import sys

from kn_sock import ConnectionClosed, start_async_websocket_server

try:
    from kn_sock import broadcast
except ImportError:  # an older kn_sock: a loop over the connections does the same
    broadcast = None

clients = {}  # websocket -> name
numbers = itertools.count(1)


async def send_to_all(connections, message):
    """Send ``message`` to every connection in ``connections``, skipping those that closed."""
    if not connections:
        return
    if broadcast is not None:
        result = broadcast(connections, message)
        if inspect.isawaitable(result):
            await result
        return
    for ws in connections:
        try:
            await ws.send(message)
        except ConnectionClosed:
            pass  # it left meanwhile; its own handler announces it


async def handler(websocket, path):
    name = f"guest-{next(numbers)}"
    others = list(clients)
    clients[websocket] = name
    await websocket.send(f"* you are {name}; {len(others)} other(s) here")
    await send_to_all(others, f"* {name} joined")
    try:
        async for message in websocket:
            await send_to_all([ws for ws in clients if ws is not websocket], f"{name}: {message}")
    finally:
        del clients[websocket]
        await send_to_all(list(clients), f"* {name} left")


async def main(host, port):
    server = await start_async_websocket_server(host, port, handler)
    print(f"chat room on ws://{host}:{server.port}/", flush=True)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    try:
        await server.serve_forever()
    except asyncio.CancelledError:
        pass


if __name__ == "__main__":
    host = sys.argv[1] if len(sys.argv) > 1 else "localhost"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 8765
    try:
        asyncio.run(main(host, port))
    except KeyboardInterrupt:
        pass
