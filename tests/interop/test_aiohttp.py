"""Interop with aiohttp's WebSocket client and server (another asyncio implementation).

Both directions, both twins, our asyncio and blocking sides: text (with 2-, 3- and 4-byte characters), binary, empty and
large (3 MB) messages, fragmented messages from our side, a compressible MiB, the closing
handshake with a code and reason from either side; with permessage-deflate negotiated
(aiohttp's client offers ``client_max_window_bits``, its server answers with its own
parameters) and without. Skips only when aiohttp is not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any, AsyncIterator

import pytest

from sync_support import running_server
from kn_sock import async_connect_websocket, connect_websocket, start_async_websocket_server

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

TIMEOUT = 20.0
BIG = 2**24
MESSAGES: list[Any] = ["hi", "é€😀 " * 2000, "", b"", b"\x00" * 70_000, os.urandom(3_000_000), "abc" * 350_000]


@contextlib.asynccontextmanager
async def _our_server(kind: str, closed: asyncio.Future[Any], **options: Any) -> AsyncIterator[int]:
    """Our echo server (asyncio or blocking) on 127.0.0.1:0; sets ``closed`` to what it saw."""
    loop = asyncio.get_running_loop()

    def seen(ws: Any, path: str) -> Any:
        return (ws.close_code, ws.close_reason, path, ws.extensions)

    if kind == "async":

        async def handler(ws: Any, path: str) -> None:
            async for message in ws:
                await ws.send(message)
            closed.set_result(seen(ws, path))

        server = await start_async_websocket_server("127.0.0.1", 0, handler, **options)
        try:
            yield server.port
        finally:
            server.close()
            await server.wait_closed()
    else:

        def sync_handler(ws: Any, address: Any) -> None:
            for message in ws:
                ws.send(message)
            loop.call_soon_threadsafe(closed.set_result, seen(ws, ws.path))

        with running_server(sync_handler, **options) as sync_server:
            yield sync_server.port


@pytest.mark.parametrize("kind", ["async", "sync"], ids=["async-server", "sync-server"])
@pytest.mark.parametrize("compression", [None, "deflate"])
@pytest.mark.parametrize("offer", [0, 15], ids=["client-no-deflate", "client-deflate"])
async def test_aiohttp_client_against_our_server(backend, kind, compression, offer):
    closed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    async with _our_server(kind, closed, compression=compression, max_size=BIG, backend=backend) as port:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}/room?x=1"
            async with session.ws_connect(url, compress=offer, max_msg_size=BIG, autoping=True) as ws:
                for message in MESSAGES:
                    if isinstance(message, str):
                        await ws.send_str(message)
                    else:
                        await ws.send_bytes(message)
                    got = await ws.receive(timeout=TIMEOUT)
                    assert got.type is (aiohttp.WSMsgType.TEXT if isinstance(message, str) else aiohttp.WSMsgType.BINARY)
                    assert got.data == message
                negotiated = ws.compress
                await ws.close(code=4001, message=b"done here")
            code, reason, path, extensions = await asyncio.wait_for(closed, TIMEOUT)
    assert (code, reason, path) == (4001, "done here", "/room?x=1")
    both = bool(offer) and compression is not None
    assert bool(negotiated) is both
    assert extensions == (["permessage-deflate"] if both else [])


@pytest.fixture
async def aiohttp_echo():
    """An aiohttp echo server (deflate allowed); yields (port, [(close code, deflate)], done event)."""
    seen: list[Any] = []
    done = asyncio.Event()

    async def handler(request: Any) -> Any:
        ws = web.WebSocketResponse(compress=True, max_msg_size=BIG)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                if msg.data == "close me":
                    await ws.close(code=4002, message=b"server says bye")
                    break
                await ws.send_str(msg.data)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        seen.append((ws.close_code, bool(ws.compress)))
        done.set()
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield port, seen, done
    finally:
        await runner.cleanup()


def _joined(message: Any) -> Any:
    if isinstance(message, list):
        return "".join(message) if isinstance(message[0], str) else b"".join(message)
    return message


@pytest.mark.parametrize("compression", [None, "deflate"])
async def test_our_async_client_against_aiohttp_server(backend, compression, aiohttp_echo):
    port, seen, done = aiohttp_echo
    async with async_connect_websocket("127.0.0.1", port, compression=compression, max_size=BIG, backend=backend) as ws:
        assert ws.extensions == (["permessage-deflate"] if compression else [])
        for message in MESSAGES + [["frag", "mented ", "é€"], [b"a", b"b" * 100_000, b""]]:
            await ws.send(message)
            assert await ws.recv(timeout=TIMEOUT) == _joined(message)
        await ws.send("close me")
        assert await ws.recv(timeout=TIMEOUT) is None
        assert (ws.close_code, ws.close_reason) == (4002, "server says bye")
    await asyncio.wait_for(done.wait(), TIMEOUT)
    assert seen == [(4002, compression is not None)]


@pytest.mark.parametrize("compression", [None, "deflate"])
async def test_our_sync_client_against_aiohttp_server(backend, compression, aiohttp_echo):
    port, seen, done = aiohttp_echo

    def client() -> None:
        with connect_websocket("127.0.0.1", port, compression=compression, max_size=BIG, backend=backend) as ws:
            assert ws.extensions == (["permessage-deflate"] if compression else [])
            for message in MESSAGES + [["frag", "mented"]]:
                ws.send(message)
                assert ws.recv(timeout=TIMEOUT) == _joined(message)
            ws.close(4003, "client says bye")

    await asyncio.wait_for(asyncio.to_thread(client), TIMEOUT * 2)
    await asyncio.wait_for(done.wait(), TIMEOUT)
    assert seen == [(4003, compression is not None)]

