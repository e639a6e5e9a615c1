"""Blocking WebSocket client: ``connect_websocket``.

The opening handshake runs in the calling thread on a blocking socket whose timeout is
the time left of ``open_timeout``; the connection then goes non-blocking and the shared
reactor looks after it whenever the application is not inside ``recv()``.
"""

from __future__ import annotations

import socket
import ssl as ssl_module
import time
from typing import Any

from ..exceptions import InvalidHandshake
from ..handshake import ClientHandshake
from ..options import Options, make_options
from ..protocol import CLIENT, Protocol
from ..uri import WebSocketURI, parse_uri
from .connection import WebSocket

__all__ = ["connect_websocket", "connect"]


def connect_websocket(host_or_uri: str, port: int | None = None, path: str = "/", **options: Any) -> WebSocket:
    """Open a blocking WebSocket client connection and return it once the handshake succeeded.

    Accepts ``connect_websocket("localhost", 8765)``, ``connect_websocket("localhost", 8765, "/chat")``
    and ``connect_websocket("ws://localhost:8765/chat")`` / ``"wss://..."``.

    Raises:
        InvalidURI: the URI is not a valid ws:// or wss:// URI.
        InvalidStatus: the server answered with another status than 101 (``status`` tells which).
        InvalidHandshake: any other failure of the opening handshake.
        TimeoutError: the connection and handshake took longer than ``open_timeout``.
        OSError: the TCP connection failed.
    """
    wsuri = parse_uri(host_or_uri, port, path)
    opts = make_options(options, allow=("sock",))
    if opts.reconnect:
        raise NotImplementedError("reconnect=True is not supported by the blocking client yet")
    return _open(wsuri, opts)


connect = connect_websocket


def _open(wsuri: WebSocketURI, opts: Options) -> WebSocket:
    timeout = opts.open_timeout
    deadline = None if timeout is None else time.monotonic() + timeout
    host = wsuri.host[1:-1] if wsuri.host.startswith("[") else wsuri.host
    sock: socket.socket | None = opts.extra.get("sock")
    try:
        if sock is None:
            sock = socket.create_connection((host, wsuri.port), timeout=timeout)
        else:
            sock.settimeout(timeout)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ssl = opts.ssl
        if wsuri.secure and not ssl:
            ssl = True
        if ssl:
            context = ssl_module.create_default_context() if ssl is True else ssl
            _set_timeout(sock, deadline)
            sock = context.wrap_socket(sock, server_hostname=host)
        kwargs: dict[str, Any] = {}
        if opts.user_agent:
            kwargs["user_agent"] = opts.user_agent
        hs = ClientHandshake(
            wsuri,
            subprotocols=opts.subprotocols,
            extra_headers=opts.headers,
            compression=opts.compression,
            origin=opts.origin,
            **kwargs,
        )
        _set_timeout(sock, deadline)
        sock.sendall(hs.data_to_send())
        response = None
        while response is None:
            _set_timeout(sock, deadline)
            data = sock.recv(65536)
            if not data:
                raise InvalidHandshake("connection closed during the opening handshake")
            response = hs.receive_data(data)
        proto = Protocol(
            CLIENT,
            max_size=opts.max_size,
            extensions=hs.extensions,
            subprotocol=hs.subprotocol,
            backend=opts.backend,
        )
        ws = WebSocket(sock, proto, opts)
    except socket.timeout:
        if sock is not None:
            sock.close()
        raise TimeoutError("timed out during the opening handshake") from None
    except BaseException:
        if sock is not None:
            sock.close()
        raise
    ws.path = wsuri.path
    ws.request_headers = hs.request.headers
    ws.response_headers = response.headers
    ws._start(hs.remainder)
    return ws


def _set_timeout(sock: socket.socket, deadline: float | None) -> None:
    """Give the next blocking call the time left until ``deadline``."""
    if deadline is None:
        sock.settimeout(None)
        return
    left = deadline - time.monotonic()
    if left <= 0:
        raise socket.timeout("timed out")
    sock.settimeout(left)
