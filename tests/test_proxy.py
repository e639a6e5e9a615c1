"""``proxy=``: the clients through an HTTP CONNECT proxy (RFC 9110 §9.3.6), both layers, both twins."""

from __future__ import annotations

import asyncio
import base64
import socket

import pytest

from asyncio_support import echo as async_echo
from asyncio_support import make_tls_contexts, serving, wait_until
from kn_sock import InvalidProxyStatus, InvalidURI, async_connect_websocket, connect_websocket
from kn_sock.exceptions import InvalidHandshake
from kn_sock.proxy import ConnectAnswer, connect_request, parse_proxy, proxy_for
from kn_sock.uri import parse_uri
from proxy_support import ConnectProxy
from sync_support import echo, running_server

pytestmark = pytest.mark.timeout(30)
TIMEOUT = 5.0


# ------------------------------------------------------------------ sans I/O


@pytest.mark.parametrize(
    "url, host, port, user_info",
    [
        ("http://proxy.example:3128", "proxy.example", 3128, None),
        ("http://proxy.example", "proxy.example", 80, None),
        ("proxy.example:8080", "proxy.example", 8080, None),
        ("http://u%40x:p%3Aw@[::1]:3128/", "::1", 3128, ("u@x", "p:w")),
    ],
)
def test_parse_proxy(url, host, port, user_info):
    proxy = parse_proxy(url)
    assert (proxy.host, proxy.port, proxy.user_info) == (host, port, user_info)
    assert "p:w" not in repr(proxy) and "p:w" not in proxy.shown


@pytest.mark.parametrize("url", ["socks5://127.0.0.1:1080", "https://proxy:443", "http://:80", "http://h:99999",
                                 "http://h:80/path"])
def test_parse_proxy_refuses(url):
    with pytest.raises(InvalidURI):
        parse_proxy(url)


@pytest.mark.parametrize("url", ["http://u:%FF@h:3128", "http://%E9:s3cret@h:3128"])
def test_parse_proxy_refuses_credentials_not_utf8(url):
    """Not U+FFFD in place of the bytes (other credentials than the URL's), as ws:// URIs."""
    with pytest.raises(InvalidURI, match="UTF-8") as info:
        parse_proxy(url)
    assert "s3cret" not in str(info.value) and "%FF" not in str(info.value)


def test_connect_request():
    wsuri = parse_uri("wss://[::1]:8443/chat")
    assert connect_request(parse_proxy("http://u:p@h:1"), wsuri, "ua/1") == (
        b"CONNECT [::1]:8443 HTTP/1.1\r\nHost: [::1]:8443\r\nProxy-Authorization: Basic dTpw\r\n"
        b"User-Agent: ua/1\r\n\r\n"
    )


def test_connect_answer_split_refused_and_early_data():
    answer = ConnectAnswer(parse_proxy("h:1"))
    assert answer.feed(b"HTTP/1.1 200 Connection est") is False
    assert answer.feed(b"ablished\r\nVia: x\r\n\r\n") is True
    with pytest.raises(InvalidProxyStatus) as info:
        ConnectAnswer(parse_proxy("h:1")).feed(b"HTTP/1.1 407 Auth\r\nContent-Length: 0\r\n\r\n")
    assert info.value.status == info.value.status_code == 407 and "http://h:1" in str(info.value)
    with pytest.raises(InvalidHandshake, match="sent data before"):
        ConnectAnswer(parse_proxy("h:1")).feed(b"HTTP/1.1 200 OK\r\n\r\nHTTP/1.1 101")
    with pytest.raises(InvalidHandshake, match="closed the connection"):
        ConnectAnswer(parse_proxy("h:1")).feed(b"")
    # RFC 9110 §9.3.6: a 2xx answer's Content-Length is ignored (audit: waited for a body)
    assert ConnectAnswer(parse_proxy("h:1")).feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n") is True


def test_proxy_from_the_environment(monkeypatch):
    for name in ("http_proxy", "https_proxy", "ws_proxy", "wss_proxy", "all_proxy", "no_proxy",
                 "HTTP_PROXY", "HTTPS_PROXY", "WS_PROXY", "WSS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    ws, wss = parse_uri("ws://example.com/"), parse_uri("wss://example.com/")
    assert proxy_for(ws, True) is None and proxy_for(ws, None) is None
    monkeypatch.setenv("http_proxy", "http://p1:3128")
    monkeypatch.setenv("https_proxy", "http://p2:3128")
    assert proxy_for(ws, True).host == "p1" and proxy_for(wss, True).host == "p2"
    assert proxy_for(ws, None) is None and proxy_for(ws, False) is None
    assert proxy_for(ws, "http://p3:1").host == "p3"  # given: used whatever the environment says
    monkeypatch.setenv("no_proxy", "example.com")
    assert proxy_for(ws, True) is None and proxy_for(wss, True) is None
    monkeypatch.setenv("no_proxy", "localhost,127.0.0.1,::1")  # IPv6 unbracketed, as curl (audit)
    assert proxy_for(parse_uri("ws://[::1]:8765/"), True) is None
    assert proxy_for(parse_uri("ws://[::2]:8765/"), True).host == "p1"


@pytest.mark.parametrize("options, error", [({"proxy": 5}, TypeError), ({"proxy": "socks5://h:1"}, InvalidURI),
                                            ({"proxy": "http://h:1", "unix": "/tmp/x.sock"}, ValueError)])
async def test_bad_proxy_options_raise_at_the_call(options, error):
    with pytest.raises(error):
        connect_websocket("127.0.0.1", 9, **options)
    with pytest.raises(error):
        async_connect_websocket("127.0.0.1", 9, **options)


# ------------------------------------------------------------------ blocking client


def test_blocking_client_through_a_proxy(backend):
    with ConnectProxy() as proxy, running_server(echo, backend=backend) as server:
        with connect_websocket("127.0.0.1", server.port, backend=backend, proxy=proxy.url) as ws:
            ws.send("through the tunnel")
            assert ws.recv(TIMEOUT) == "through the tunnel"
        assert proxy.requests[0].startswith(f"CONNECT 127.0.0.1:{server.port} HTTP/1.1\r\n".encode())


def test_blocking_client_wss_through_a_proxy(backend, tmp_path):
    server_ctx, client_ctx = make_tls_contexts(tmp_path)
    with ConnectProxy() as proxy, running_server(echo, backend=backend, ssl=server_ctx) as server:
        with connect_websocket(f"wss://127.0.0.1:{server.port}/", backend=backend, ssl=client_ctx,
                               proxy=proxy.url) as ws:
            ws.send(b"\x00" * 100_000)
            assert ws.recv(TIMEOUT) == b"\x00" * 100_000
        assert proxy.requests[0].startswith(f"CONNECT 127.0.0.1:{server.port} ".encode())


def test_blocking_client_proxy_credentials(backend):
    expected = "Basic " + base64.b64encode(b"user:pa ss").decode()
    with ConnectProxy(credentials=expected) as proxy, running_server(echo, backend=backend) as server:
        with pytest.raises(InvalidProxyStatus) as info:
            connect_websocket("127.0.0.1", server.port, backend=backend, proxy=proxy.url)
        assert info.value.status == 407
        url = f"http://user:pa%20ss@127.0.0.1:{proxy.port}"
        with connect_websocket("127.0.0.1", server.port, backend=backend, proxy=url) as ws:
            ws.send("ok")
            assert ws.recv(TIMEOUT) == "ok"


def test_blocking_client_proxy_from_the_environment(backend, monkeypatch):
    with ConnectProxy() as proxy, running_server(echo, backend=backend) as server:
        monkeypatch.setenv("http_proxy", proxy.url)
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        with connect_websocket("127.0.0.1", server.port, backend=backend, proxy=True) as ws:
            ws.send("env")
            assert ws.recv(TIMEOUT) == "env"
        with connect_websocket("127.0.0.1", server.port, backend=backend) as ws:  # default: direct
            ws.send("direct")
            assert ws.recv(TIMEOUT) == "direct"
        assert len(proxy.requests) == 1


def test_blocking_client_proxy_refusing_or_silent(backend):
    with ConnectProxy(refuse=502) as proxy:
        with pytest.raises(InvalidProxyStatus) as info:
            connect_websocket("127.0.0.1", 9, backend=backend, proxy=proxy.url)
        assert info.value.status == 502 and info.value.body == b"nope"
    with ConnectProxy(silent=True) as proxy:
        with pytest.raises(TimeoutError):
            connect_websocket("127.0.0.1", 9, backend=backend, proxy=proxy.url, open_timeout=0.3)
    port = socket.create_server(("127.0.0.1", 0))
    dead = port.getsockname()[1]
    port.close()
    with pytest.raises(ConnectionRefusedError):
        connect_websocket("127.0.0.1", 9, backend=backend, proxy=f"http://127.0.0.1:{dead}")


# ------------------------------------------------------------------ asyncio client


async def test_asyncio_client_through_a_proxy(backend):
    with ConnectProxy() as proxy:
        async with serving(async_echo, backend=backend) as server:
            async with async_connect_websocket("127.0.0.1", server.port, backend=backend, proxy=proxy.url) as ws:
                await ws.send("through the tunnel")
                assert await ws.recv(TIMEOUT) == "through the tunnel"
        assert proxy.requests[0].startswith(f"CONNECT 127.0.0.1:{server.port} HTTP/1.1\r\n".encode())


async def test_asyncio_client_wss_through_a_proxy(backend, tmp_path):
    server_ctx, client_ctx = make_tls_contexts(tmp_path)
    with ConnectProxy() as proxy:
        async with serving(async_echo, backend=backend, ssl=server_ctx) as server:
            async with async_connect_websocket(f"wss://127.0.0.1:{server.port}/", backend=backend, ssl=client_ctx,
                                               proxy=proxy.url) as ws:
                await ws.send(b"\x00" * 100_000)
                assert await ws.recv(TIMEOUT) == b"\x00" * 100_000


async def test_asyncio_client_proxy_credentials_and_environment(backend, monkeypatch):
    expected = "Basic " + base64.b64encode(b"user:secret").decode()
    with ConnectProxy(credentials=expected) as proxy:
        async with serving(async_echo, backend=backend) as server:
            with pytest.raises(InvalidProxyStatus) as info:
                await async_connect_websocket("127.0.0.1", server.port, backend=backend, proxy=proxy.url)
            assert info.value.status == 407
            monkeypatch.setenv("http_proxy", f"http://user:secret@127.0.0.1:{proxy.port}")
            monkeypatch.delenv("no_proxy", raising=False)
            monkeypatch.delenv("NO_PROXY", raising=False)
            async with async_connect_websocket("127.0.0.1", server.port, backend=backend, proxy=True) as ws:
                await ws.send("env")
                assert await ws.recv(TIMEOUT) == "env"


async def test_asyncio_client_proxy_refusing_or_silent(backend):
    with ConnectProxy(refuse=403) as proxy:
        with pytest.raises(InvalidProxyStatus) as info:
            await async_connect_websocket("127.0.0.1", 9, backend=backend, proxy=proxy.url)
        assert info.value.status == 403
    with ConnectProxy(silent=True) as proxy:
        with pytest.raises(TimeoutError):
            await async_connect_websocket("127.0.0.1", 9, backend=backend, proxy=proxy.url, open_timeout=0.3)
        with pytest.raises(asyncio.TimeoutError):  # a cancellation in the tunnel's wait
            await asyncio.wait_for(async_connect_websocket("127.0.0.1", 9, backend=backend, proxy=proxy.url), 0.3)


def test_proxy_dropping_before_answering_is_a_network_failure(backend):
    """EOFError as the cause, as a server's drop mid-handshake: reconnecting clients retry it
    (audit: raised after one attempt, no cause)."""
    with ConnectProxy(drop_first=2) as proxy, running_server(echo, backend=backend) as server:
        with pytest.raises(InvalidHandshake, match="before answering CONNECT") as info:
            connect_websocket("127.0.0.1", server.port, backend=backend, proxy=proxy.url)
        assert isinstance(info.value.__cause__, EOFError)
        with connect_websocket("127.0.0.1", server.port, backend=backend, proxy=proxy.url,
                               reconnect={"initial_delay": 0.01}) as ws:
            ws.send("third time")
            assert ws.recv(TIMEOUT) == "third time"
        assert len(proxy.requests) == 3


async def test_asyncio_proxy_dropping_before_answering_is_retried(backend):
    with ConnectProxy(drop_first=1) as proxy:
        async with serving(async_echo, backend=backend) as server:
            ws = await async_connect_websocket("127.0.0.1", server.port, backend=backend, proxy=proxy.url,
                                               reconnect={"initial_delay": 0.01})
            await ws.send("second time")
            assert await ws.recv(TIMEOUT) == "second time"
            await ws.close()
        assert len(proxy.requests) == 2


async def test_reconnecting_client_reconnects_through_the_proxy(backend):
    """Each reconnection opens a new tunnel (the first connection is closed with 1012)."""
    seen: list[int] = []

    async def handler(websocket, path):
        seen.append(1)
        if len(seen) == 1:
            await websocket.close(1012)
            return
        await async_echo(websocket, path)

    with ConnectProxy() as proxy:
        async with serving(handler, backend=backend) as server:
            ws = await async_connect_websocket("127.0.0.1", server.port, backend=backend, proxy=proxy.url,
                                               reconnect={"initial_delay": 0.01, "max_delay": 0.05})
            await wait_until(lambda: ws.reconnects == 1)  # (a message sent before may die with the first)
            await ws.send("after")
            assert await ws.recv(TIMEOUT) == "after"
            assert ws.reconnects == 1 and len(proxy.requests) == 2
            await ws.close()
