"""asyncio WebSocket client: ``async_connect_websocket``."""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from typing import Any, Generator

from ..exceptions import InvalidHandshake
from ..handshake import ClientHandshake
from ..options import Options, make_options
from ..protocol import CLIENT, Protocol
from ..uri import WebSocketURI, parse_uri
from .connection import AsyncWebSocket

__all__ = ["async_connect_websocket", "connect"]


class _ClientOpening:
    """Client side of the opening handshake for one connection."""

    __slots__ = ("wsuri", "opts", "fut", "hs")

    def __init__(
        self, wsuri: WebSocketURI, opts: Options, fut: asyncio.Future[AsyncWebSocket], hs: ClientHandshake
    ) -> None:
        self.wsuri = wsuri
        self.opts = opts
        self.fut = fut
        self.hs: ClientHandshake | None = hs

    def connection_made(self, ws: AsyncWebSocket) -> None:
        hs = self.hs
        assert hs is not None and ws.transport is not None
        ws.path = self.wsuri.path
        ws.request_headers = hs.request.headers
        ws.transport.write(hs.data_to_send())

    def data_received(self, ws: AsyncWebSocket, data: bytes) -> None:
        hs = self.hs
        if hs is None or self.fut.done():
            return
        try:
            response = hs.receive_data(data)
        except InvalidHandshake as exc:
            self.fut.set_exception(exc)
            if ws.transport is not None:
                ws.transport.close()
            return
        if response is None:
            return
        ws.response_headers = response.headers
        proto = Protocol(
            CLIENT,
            max_size=self.opts.max_size,
            extensions=hs.extensions,
            subprotocol=hs.subprotocol,
            backend=self.opts.backend,
        )
        remainder = hs.remainder
        self.hs = None
        self.fut.set_result(ws)
        ws.start(proto, remainder)

    def connection_lost(self, ws: AsyncWebSocket, exc: Exception | None) -> None:
        if not self.fut.done():
            self.fut.set_exception(InvalidHandshake(f"connection closed during the opening handshake: {exc or 'EOF'}"))


def _handshake(wsuri: WebSocketURI, opts: Options) -> ClientHandshake:
    """Build the handshake before connecting, so invalid options raise from the caller's await."""
    kwargs: dict[str, Any] = {}
    if opts.user_agent:
        kwargs["user_agent"] = opts.user_agent
    return ClientHandshake(
        wsuri,
        subprotocols=opts.subprotocols,
        extra_headers=opts.headers,
        compression=opts.compression,
        origin=opts.origin,
        **kwargs,
    )


async def _open(wsuri: WebSocketURI, opts: Options) -> AsyncWebSocket:
    loop = asyncio.get_running_loop()
    hs = _handshake(wsuri, opts)
    ssl = opts.ssl
    if wsuri.secure and not ssl:
        ssl = True
    if ssl is True:
        ssl = ssl_module.create_default_context()
    fut: asyncio.Future[AsyncWebSocket] = loop.create_future()

    def factory() -> AsyncWebSocket:
        ws = AsyncWebSocket(CLIENT, opts, loop)
        ws._handshake = _ClientOpening(wsuri, opts, fut, hs)
        return ws

    transport = None
    try:
        async with asyncio.timeout(opts.open_timeout):
            host = wsuri.host[1:-1] if wsuri.host.startswith("[") else wsuri.host
            transport, ws = await loop.create_connection(
                factory, host, wsuri.port, ssl=ssl or None, server_hostname=host if ssl else None
            )
            return await fut
    except BaseException:
        if transport is not None:
            transport.abort()
        if fut.done() and not fut.cancelled():
            fut.exception()
        raise


class connect:
    """``async_connect_websocket(...)``: await it for a connection, or use it with ``async with``."""

    def __init__(self, host_or_uri: str, port: int | None = None, path: str = "/", **options: Any) -> None:
        """Validate the URI and options now; connect when awaited."""
        self.wsuri = parse_uri(host_or_uri, port, path)
        self.options = make_options(options)
        self.ws: AsyncWebSocket | None = None

    def __await__(self) -> Generator[Any, None, AsyncWebSocket]:
        return _open(self.wsuri, self.options).__await__()

    async def __aenter__(self) -> AsyncWebSocket:
        self.ws = await _open(self.wsuri, self.options)
        return self.ws

    async def __aexit__(self, *exc: Any) -> None:
        if self.ws is not None:
            await self.ws.close()


def async_connect_websocket(host_or_uri: str, port: int | None = None, path: str = "/", **options: Any) -> connect:
    """Open an asyncio WebSocket client connection: ``await`` it or use ``async with``."""
    return connect(host_or_uri, port, path, **options)
