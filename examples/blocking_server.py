"""Blocking echo server: one thread per connection; the handler's return closes with 1000.

    python examples/blocking_server.py [host] [port]      (default: localhost 8765)

Ctrl-C or SIGTERM sets the shutdown event: every connection gets a 1001 close and the
server returns within half a second.
"""

import signal
import sys
import threading

from kn_sock import start_websocket_server


def handle_websocket_client(client_socket, address):
    print(f"New WebSocket connection from {address}", flush=True)
    while True:
        message = client_socket.recv()
        if message:
            print(f"Received: {message}", flush=True)
            client_socket.send(f"Echo: {message}")
        else:
            break


if __name__ == "__main__":
    host = sys.argv[1] if len(sys.argv) > 1 else "localhost"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 8765
    shutdown_event = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: shutdown_event.set())
    print(f"serving on ws://{host}:{port}/", flush=True)
    start_websocket_server(host, port, handle_websocket_client, shutdown_event)
    print("server stopped", flush=True)
