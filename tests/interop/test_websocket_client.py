"""Interop with websocket-client (``import websocket``), the common blocking client, against
our asyncio and blocking servers, both twins.

websocket-client offers no extension, so the servers (permessage-deflate on by default) must
go without; it checks ``Sec-WebSocket-Accept`` and the subprotocol strictly. Through it: a
subprotocol and an extra request header, text (2-, 3- and 4-byte characters), binary, empty
and 3 MB messages, a message it fragments itself, its ping answered with the same data, our
ping answered by it, and closes with a code and reason both ways. Skips only when
websocket-client is not installed (it is in the ``test`` extra).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from typing import Any, AsyncIterator

import pytest

from asyncio_support import serving
from sync_support import running_server

websocket = pytest.importorskip("websocket", reason="websocket-client is not installed")

pytestmark = [pytest.mark.network, pytest.mark.timeout(60)]

TIMEOUT = 20.0
BIG = 2**23
MESSAGES: list[Any] = ["hi", "é€😀 " * 2000, "", b"", b"\x00\xff" * 40_000, os.urandom(3_000_000), "abc" * 1_000_000]


@contextlib.asynccontextmanager
async def our_server(kind: str, backend: Any, seen: dict[str, Any]) -> AsyncIterator[int]:
    """Our server (asyncio or blocking) on 127.0.0.1:0: echoes; "ping me" -> pings the client
    and answers "pong seen" once its pong is back; "close me" -> closes with 4003."""
    loop = asyncio.get_running_loop()
    done = seen["done"] = loop.create_future()
    options = dict(subprotocols=["chat.v1"], max_size=BIG, backend=backend)

    def note(ws: Any, path: str) -> None:
        seen.update(path=path, token=ws.request_headers.get("X-Token"), subprotocol=ws.subprotocol, extensions=ws.extensions)

    if kind == "async":

        async def handler(ws: Any, path: str) -> None:
            note(ws, path)
            async for message in ws:
                if message == "ping me":
                    waiter = await ws.ping(b"from kn_sock")
                    await asyncio.wait_for(waiter, TIMEOUT)
                    await ws.send("pong seen")
                elif message == "close me":
                    await ws.close(4003, "server bye")
                else:
                    await ws.send(message)
            done.set_result((ws.close_code, ws.close_reason))

        async with serving(handler, **options) as server:
            yield server.port
    else:

        def sync_handler(ws: Any, address: Any) -> None:
            note(ws, ws.path)
            for message in ws:
                if message == "ping me":
                    assert ws.ping(b"from kn_sock").wait(TIMEOUT)
                    ws.send("pong seen")
                elif message == "close me":
                    ws.close(4003, "server bye")
                else:
                    ws.send(message)
            loop.call_soon_threadsafe(done.set_result, (ws.close_code, ws.close_reason))

        with running_server(sync_handler, **options) as sync_server:
            yield sync_server.port


def open_client(port: int) -> Any:
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{port}/feed?id=3",
        subprotocols=["chat.v2", "chat.v1"],
        header=["X-Token: abc"],
        timeout=TIMEOUT,
    )
    assert ws.getstatus() == 101 and ws.subprotocol == "chat.v1"
    assert "sec-websocket-extensions" not in ws.getheaders()  # nothing offered, nothing chosen
    return ws


def exchange_and_close_from_the_client(port: int) -> None:
    ws = open_client(port)
    try:
        for message in MESSAGES:
            if isinstance(message, str):
                ws.send(message)
            else:
                ws.send_binary(message)
            opcode, data = ws.recv_data()
            assert opcode == (websocket.ABNF.OPCODE_TEXT if isinstance(message, str) else websocket.ABNF.OPCODE_BINARY)
            assert (data.decode() if isinstance(message, str) else data) == message
        # Fragmented by websocket-client itself: text in three frames.
        ws.send_frame(websocket.ABNF.create_frame("frag", websocket.ABNF.OPCODE_TEXT, fin=0))
        ws.send_frame(websocket.ABNF.create_frame("mented ", websocket.ABNF.OPCODE_CONT, fin=0))
        ws.send_frame(websocket.ABNF.create_frame("text", websocket.ABNF.OPCODE_CONT, fin=1))
        assert ws.recv() == "fragmented text"
        # Its ping: our pong carries the same data.
        ws.ping("are you there")
        frame = ws.recv_frame()
        assert (frame.opcode, frame.data) == (websocket.ABNF.OPCODE_PONG, b"are you there")
        # Our ping: websocket-client answers it while reading.
        ws.send("ping me")
        assert ws.recv() == "pong seen"
        ws.close(status=4002, reason=b"client bye")
    finally:
        ws.shutdown()


def close_from_the_server(port: int) -> tuple[int, bytes]:
    ws = open_client(port)
    try:
        ws.send("close me")
        frame = ws.recv_frame()
        assert frame.opcode == websocket.ABNF.OPCODE_CLOSE
        code, reason = struct.unpack("!H", frame.data[:2])[0], frame.data[2:]
        ws.send_close(code, reason)  # the closing handshake's reply, echoing the code
        return code, reason
    finally:
        ws.shutdown()


@pytest.mark.parametrize("kind", ["async", "sync"], ids=["async-server", "sync-server"])
async def test_websocket_client_against_our_server(backend: Any, kind: str) -> None:
    seen: dict[str, Any] = {}
    async with our_server(kind, backend, seen) as port:
        await asyncio.to_thread(exchange_and_close_from_the_client, port)
        assert await asyncio.wait_for(seen["done"], TIMEOUT) == (4002, "client bye")
    assert (seen["path"], seen["token"], seen["subprotocol"], seen["extensions"]) == ("/feed?id=3", "abc", "chat.v1", [])


@pytest.mark.parametrize("kind", ["async", "sync"], ids=["async-server", "sync-server"])
async def test_our_server_closes_a_websocket_client(backend: Any, kind: str) -> None:
    seen: dict[str, Any] = {}
    async with our_server(kind, backend, seen) as port:
        assert await asyncio.to_thread(close_from_the_server, port) == (4003, b"server bye")
        assert await asyncio.wait_for(seen["done"], TIMEOUT) == (4003, "server bye")
