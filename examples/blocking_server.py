"""Blocking echo server: one thread per connection; the handler's return closes with 1000.

    python examples/blocking_server.py [host] [port]      (default: localhost 8765; port 0 picks a free one)

Ctrl-C or SIGTERM stops it: every connection gets a 1001 close and the server returns
within half a second.
"""

import signal
import sys

from kn_sock import WebSocketServer


def handle_websocket_client(ws, address):
    print(f"New WebSocket connection from {address}", flush=True)
    # recv() returns None once the connection is closed; an empty message ("") is a message.
    while (message := ws.recv()) is not None:
        print(f"Received: {message}", flush=True)
        ws.send(f"Echo: {message}")


if __name__ == "__main__":
    host = sys.argv[1] if len(sys.argv) > 1 else "localhost"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 8765
    with WebSocketServer(host, port, handle_websocket_client) as server:  # binds here: port 0 is resolved
        # shutdown() from the signal handler: serve_forever() sees it once the handler returns
        signal.signal(signal.SIGTERM, lambda signum, frame: server.shutdown())
        print(f"serving on ws://{host}:{server.port}/", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass  # serve_forever() has closed every connection with 1001 on its way out
    print("server stopped", flush=True)
