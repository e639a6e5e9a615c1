"""The options of SPEC.md: invalid names and values are refused when a client connects or a
server is made (TypeError / ValueError, docs/api.md), never later in every connection."""

from __future__ import annotations

import asyncio
import math
import threading

import pytest

from kn_sock import WebSocketServer, async_connect_websocket, connect_websocket, start_async_websocket_server
from kn_sock.options import make_options

pytestmark = pytest.mark.timeout(20)

BAD = [
    ({"ping_interval": -1}, ValueError),  # audit: pings went out back to back (a core spinning)
    ({"ping_timeout": -0.5}, ValueError),
    ({"open_timeout": math.nan}, ValueError),
    ({"close_timeout": -1}, ValueError),
    ({"ping_interval": "x"}, TypeError),
    ({"close_timeout": True}, TypeError),
    ({"max_size": -1}, ValueError),
    ({"max_size": 1.5}, TypeError),
    ({"max_queue": 0}, ValueError),
    ({"write_limit": -1}, ValueError),
    ({"max_pending": -1}, ValueError),
    ({"on_connect": 5}, TypeError),
    ({"process_request": "no"}, TypeError),
    ({"ssl": "yes"}, TypeError),
    ({"compression": "gzip"}, ValueError),
    ({"no_such_option": 1}, TypeError),
    ({"origin": 5}, TypeError),  # audit: servers accepted these (clients failed at connect)
    ({"user_agent": 5}, TypeError),
    ({"reconnect": "yes"}, TypeError),
    ({"reconnect": {"bogus": 1}}, TypeError),
]
#: Refused by the handshake's own checks: on the asyncio client, when called (before the await).
CLIENT_BAD = [
    ({"subprotocols": 5}, TypeError),
    ({"subprotocols": ["bad token"]}, ValueError),
    ({"headers": 5}, TypeError),
    ({"headers": "X-A: 1"}, TypeError),
    ({"headers": {"Sec-WebSocket-Key": "x"}}, ValueError),
]
SERVER_BAD = BAD + [
    ({"headers": 123}, TypeError),
    ({"headers": {"Bad Header": "x"}}, ValueError),
    ({"subprotocols": 123}, TypeError),
    ({"server_header": 5}, TypeError),
    ({"origins": 123}, TypeError),
    ({"origins": [1]}, TypeError),  # audit: accepted, then every client refused 403
    ({"ssl": True}, TypeError),  # a server needs a context with its certificate
    ({"backlog": "x"}, TypeError),  # audit: accepted by the blocking server, raised when awaited (asyncio)
    ({"backlog": -5}, ValueError),
    ({"reuse_port": "yes"}, TypeError),
]
#: The blocking server's own options: audit, accepted, then the accept loop died
#: (thread_stack_size) or shutdown() hung (shutdown_grace).
BLOCKING_SERVER_BAD = [
    ({"thread_stack_size": -1}, ValueError),
    ({"thread_stack_size": 1}, ValueError),
    ({"thread_stack_size": "x"}, TypeError),
    ({"shutdown_grace": "x"}, TypeError),
    ({"shutdown_grace": -1}, ValueError),
    ({"shutdown_grace": math.nan}, ValueError),
]


def _ids(cases):
    return [",".join(f"{k}={v!r}" for k, v in kw.items()) for kw, _ in cases]


@pytest.mark.parametrize("options, error", BAD, ids=_ids(BAD))
def test_invalid_option_values_are_refused(options, error):
    with pytest.raises(error):
        make_options(options)


def test_valid_values_pass():
    opts = make_options({"ping_interval": 0, "ping_timeout": None, "open_timeout": 0.5, "max_size": None,
                         "max_queue": None, "origins": "https://a.example", "subprotocols": "chat"})
    assert opts.origins == ["https://a.example"] and opts.subprotocols == ["chat"]


def test_unbounded_timeouts_and_whole_float_sizes():
    opts = make_options({"open_timeout": math.inf, "close_timeout": 1e12, "max_queue": 32.0, "write_limit": 32768.0,
                         "ssl": False})
    assert opts.open_timeout is None and opts.close_timeout is None  # no limit, as None
    assert opts.max_queue == 32 and type(opts.max_queue) is int and opts.write_limit == 32768
    assert opts.ssl is None


@pytest.mark.parametrize("options, error", SERVER_BAD + BLOCKING_SERVER_BAD, ids=_ids(SERVER_BAD + BLOCKING_SERVER_BAD))
def test_blocking_server_refuses_invalid_options_when_made(options, error):
    with pytest.raises(error):
        WebSocketServer("127.0.0.1", 0, lambda ws, address: None, **options).shutdown()


@pytest.mark.parametrize("options, error", SERVER_BAD, ids=_ids(SERVER_BAD))
async def test_asyncio_server_refuses_invalid_options_when_started(options, error):
    with pytest.raises(error):
        server = await start_async_websocket_server("127.0.0.1", 0, lambda ws, path: None, **options)
        server.close()


@pytest.mark.parametrize(
    "options, error",
    SERVER_BAD + [({"sock": 5}, TypeError), ({"handler": None}, TypeError), ({"handler": 5}, TypeError)],
    ids=_ids(SERVER_BAD) + ["sock=5", "handler=None", "handler=5"],
)
def test_asyncio_server_refuses_invalid_options_at_the_call(options, error):
    """Before it is awaited (docs/api.md: "invalid options raise at once"): audit, a bad backlog
    raised when awaited, a handler that is not callable failed every connection with 1011."""
    options = dict(options)
    handler = options.pop("handler", lambda ws, path: None)
    with pytest.raises(error):
        start_async_websocket_server("127.0.0.1", 0, handler, **options)


def test_max_queue_says_its_minimum():
    with pytest.raises(ValueError, match="max_queue must be >= 1 or None, not -1"):
        make_options({"max_queue": -1})


def test_blocking_server_stack_size_and_grace_that_are_fine():
    server = WebSocketServer("127.0.0.1", 0, lambda ws, address: None, thread_stack_size=0, shutdown_grace=math.inf)
    server.shutdown()
    server = WebSocketServer("127.0.0.1", 0, lambda ws, address: None, thread_stack_size=65536, shutdown_grace=0)
    server.shutdown()


@pytest.mark.parametrize("options, error", BAD, ids=_ids(BAD))
async def test_clients_refuse_invalid_options_before_connecting(options, error):
    # Port 9 (discard) on 127.0.0.1: nothing is listening; the options are refused first.
    with pytest.raises(error):
        connect_websocket("127.0.0.1", 9, **options)
    with pytest.raises(error):
        await async_connect_websocket("127.0.0.1", 9, **options)


@pytest.mark.parametrize("options, error", BAD + CLIENT_BAD, ids=_ids(BAD + CLIENT_BAD))
async def test_async_connect_refuses_invalid_options_when_called(options, error):
    """docs/api.md: async_connect_websocket's "URI and options are validated when called"."""
    with pytest.raises(error):
        async_connect_websocket("127.0.0.1", 9, **options)


def test_one_origin_as_a_str_is_a_list_of_one():
    with WebSocketServer("127.0.0.1", 0, lambda ws, address: ws.send("hi"), origins="https://ok.example") as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        with connect_websocket("127.0.0.1", server.port, origin="https://ok.example") as ws:
            assert ws.recv(5) == "hi"


async def test_one_origin_as_a_str_asyncio():
    async def handler(ws, path):
        await ws.send("hi")

    server = await start_async_websocket_server("127.0.0.1", 0, handler, origins="https://ok.example")
    try:
        async with async_connect_websocket("127.0.0.1", server.port, origin="https://ok.example") as ws:
            assert await asyncio.wait_for(ws.recv(), 5) == "hi"
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)


@pytest.mark.parametrize("options", [{"server_header": "\u2713"}, {"headers": {"X": "\u20ac"}}, {"server_header": "a\r\nb"}])
def test_asyncio_server_start_refuses_bad_header_values_at_the_call(options):
    """As the blocking server's constructor does, not only once awaited (audit 88)."""
    with pytest.raises(ValueError):
        start_async_websocket_server("127.0.0.1", 0, lambda ws, path: None, **options)


async def test_a_server_refuses_origin_without_origins():
    """``origin=`` (the client's header) on a server, where ``origins=`` was meant, would admit
    every Origin: refused (audit 87), unless ``origins`` is given too (one dict for both sides)."""
    with pytest.raises(TypeError, match="origins="):
        WebSocketServer("127.0.0.1", 0, lambda ws, address: None, origin="https://ok.example")
    with pytest.raises(TypeError, match="origins="):
        start_async_websocket_server("127.0.0.1", 0, lambda ws, path: None, origin="https://ok.example")
    WebSocketServer(
        "127.0.0.1", 0, lambda ws, address: None, origin="https://ok.example", origins=["https://ok.example"]
    ).shutdown()


def test_blocking_api_refuses_coroutine_functions():
    """The blocking server and client never await: an ``async def`` handler, process_request
    or on_connect raises TypeError at once (the server closed every connection with 1000,
    the coroutine never run, a RuntimeWarning the only trace; audit 78)."""
    import functools

    from kn_sock import WebSocketServer, connect_websocket

    async def handler(ws, address):
        pass

    async def hook(*args):
        pass

    class Handler:
        async def __call__(self, ws, address):
            pass

    def plain(ws, address):
        pass

    for bad in (handler, functools.partial(handler), Handler()):
        with pytest.raises(TypeError, match="handler is a coroutine function"):
            WebSocketServer("127.0.0.1", 0, bad)
    with pytest.raises(TypeError, match="process_request is a coroutine function"):
        WebSocketServer("127.0.0.1", 0, plain, process_request=hook)
    with pytest.raises(TypeError, match="on_connect is a coroutine function"):
        connect_websocket("ws://127.0.0.1:9/", reconnect=True, on_connect=hook)

    # Not refused (audit 80): a class (called to make an instance, whatever its __call__), and
    # the other side's options, which are ignored.
    class HandlerClass:
        def __init__(self, ws, address):
            pass

        async def __call__(self):
            pass

    WebSocketServer("127.0.0.1", 0, HandlerClass).shutdown()
    WebSocketServer("127.0.0.1", 0, plain, on_connect=hook).shutdown()
    with pytest.raises(OSError):  # (it goes as far as connecting)
        connect_websocket("ws://127.0.0.1:9/", process_request=hook, open_timeout=2)


@pytest.mark.parametrize(("port", "host_header"), [(443, "example.com"), (80, "example.com:80"), (8443, "example.com:8443")])
def test_ssl_with_host_and_port_is_wss_for_the_host_header(port, host_header):
    """``connect_websocket(host, port, ssl=...)`` is ``wss://``: Host leaves out 443, not 80
    (RFC 6455 §4.1: the port only when not the scheme's default; audit 29U)."""
    from kn_sock.options import client_uri

    wsuri = client_uri("example.com", port, "/", make_options({"ssl": True}))
    assert wsuri.secure and wsuri.host_header == host_header
    assert not client_uri("example.com", port, "/", make_options({"ssl": False})).secure


def test_ssl_with_a_ws_uri_is_refused_at_the_call():
    """The URI says no TLS; ssl= says TLS (websockets: ValueError too). Nothing connects."""
    with pytest.raises(ValueError, match="use wss://"):
        connect_websocket("ws://127.0.0.1:9/", ssl=True)
    with pytest.raises(ValueError, match="use wss://"):
        async_connect_websocket("ws://127.0.0.1:9/", ssl=True)
    assert async_connect_websocket("wss://127.0.0.1:9/", ssl=True) is not None  # (not awaited: no connection)
