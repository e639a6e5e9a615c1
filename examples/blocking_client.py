"""Blocking client: send one message, print the reply.

    python examples/blocking_client.py [host] [port]      (default: localhost 8765)
"""

import sys

from kn_sock import connect_websocket

host = sys.argv[1] if len(sys.argv) > 1 else "localhost"
port = int(sys.argv[2]) if len(sys.argv) > 2 else 8765

ws = connect_websocket(host, port)
ws.send("Hello WebSocket!")
print(ws.recv())
ws.close()
