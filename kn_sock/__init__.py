"""kn_sock: a fast, correct WebSocket (RFC 6455 / RFC 7692) library for Python.

Blocking::

    from kn_sock import start_websocket_server, connect_websocket

asyncio::

    from kn_sock import start_async_websocket_server, async_connect_websocket

The public names are loaded on first use, so ``import kn_sock`` stays cheap and the
blocking and asyncio layers import only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._backend import IMPLEMENTATION
from .exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidHandshake,
    InvalidHeader,
    InvalidProxyStatus,
    InvalidState,
    InvalidStatus,
    InvalidURI,
    PayloadTooBig,
    ProtocolError,
    WebSocketError,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "IMPLEMENTATION",
    "start_websocket_server",
    "WebSocketServer",
    "connect_websocket",
    "WebSocket",
    "ReconnectingWebSocket",
    "start_async_websocket_server",
    "AsyncWebSocketServer",
    "async_connect_websocket",
    "AsyncWebSocket",
    "AsyncReconnectingWebSocket",
    "ReconnectPolicy",
    "ClientOptions",
    "ServerOptions",
    "AsyncServerOptions",
    "broadcast",
    "WebSocketError",
    "ConnectionClosed",
    "ConnectionClosedOK",
    "ConnectionClosedError",
    "InvalidHandshake",
    "InvalidStatus",
    "InvalidProxyStatus",
    "InvalidHeader",
    "ProtocolError",
    "PayloadTooBig",
    "InvalidURI",
    "InvalidState",
]

_LAZY = {
    "start_websocket_server": "kn_sock.sync",
    "WebSocketServer": "kn_sock.sync",
    "connect_websocket": "kn_sock.sync",
    "WebSocket": "kn_sock.sync",
    "start_async_websocket_server": "kn_sock.asyncio.server",
    "AsyncWebSocketServer": "kn_sock.asyncio.server",
    "async_connect_websocket": "kn_sock.asyncio.client",
    "AsyncWebSocket": "kn_sock.asyncio.connection",
    "broadcast": "kn_sock.broadcast",
    "ReconnectingWebSocket": "kn_sock.sync.client",
    "AsyncReconnectingWebSocket": "kn_sock.asyncio.client",
    "ReconnectPolicy": "kn_sock.reconnect",
    "ClientOptions": "kn_sock._option_types",
    "ServerOptions": "kn_sock._option_types",
    "AsyncServerOptions": "kn_sock._option_types",
}

if TYPE_CHECKING:
    from ._option_types import AsyncServerOptions, ClientOptions, ServerOptions
    from .asyncio.client import AsyncReconnectingWebSocket, async_connect_websocket
    from .asyncio.connection import AsyncWebSocket
    from .asyncio.server import AsyncWebSocketServer, start_async_websocket_server
    from .broadcast import broadcast
    from .reconnect import ReconnectPolicy
    from .sync.client import ReconnectingWebSocket
    from .sync import WebSocket, WebSocketServer, connect_websocket, start_websocket_server


if not TYPE_CHECKING:  # (type checkers would take any name, a typo too, for an Any from here)

    def __getattr__(name: str) -> Any:
        """Import the blocking / asyncio public names on first access (PEP 562)."""
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'kn_sock' has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted(__all__)
