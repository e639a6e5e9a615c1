"""The blocking (threads) I/O layer: one handler thread per server connection, one shared reactor thread.

See :mod:`kn_sock.sync.connection` for the design.
"""

from .client import connect_websocket
from .connection import WebSocket
from .server import WebSocketServer, start_websocket_server

__all__ = ["WebSocket", "WebSocketServer", "start_websocket_server", "connect_websocket"]
