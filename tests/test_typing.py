"""Typing as a user sees it (the package ships py.typed and the extension's .pyi): a program
using the documented API in the usual ways passes ``mypy --strict``, and the connection types
are precise, not Any (a wrong annotation is caught)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("mypy")
pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parent.parent

GOOD = '''
import asyncio
from collections.abc import AsyncIterator
from kn_sock import AsyncWebSocket, WebSocket, async_connect_websocket, connect_websocket
from kn_sock.asyncio.client import AsyncReconnectingWebSocket
from kn_sock.sync.client import ReconnectingWebSocket


def opened() -> WebSocket:
    return connect_websocket("localhost", 8765)


def message(ws: WebSocket) -> str | bytes | None:
    return ws.recv(timeout=1.0)


def every(ws: WebSocket) -> list[str | bytes]:
    return [m for m in ws]


def resilient() -> ReconnectingWebSocket:
    return connect_websocket("ws://localhost:8765/", reconnect=True)


async def aopened() -> AsyncWebSocket:
    return await async_connect_websocket("localhost", 8765)


async def amessage() -> str | bytes | None:
    async with async_connect_websocket("ws://localhost:8765/chat") as ws:
        await ws.send("hi")
        return await ws.recv()


async def aevery(ws: AsyncWebSocket) -> list[str | bytes]:
    return [m async for m in ws]


async def aresilient() -> AsyncReconnectingWebSocket:
    return await async_connect_websocket("localhost", 8765, reconnect={"max_delay": 5.0})


async def rtt(ws: AsyncWebSocket) -> float:
    waiter = await ws.ping()
    return await waiter


def fragments(ws: WebSocket, parts: list[bytes]) -> None:
    ws.send(parts)
    ws.send(memoryview(b"x"))
    ws.send(["a", "b"])
    ws.send([b"a", bytearray(b"b"), memoryview(b"c")])  # mixed bytes-likes: fine at run time too


async def afragments(ws: AsyncWebSocket) -> None:
    async def parts() -> AsyncIterator[str]:
        yield "a"

    await ws.send(parts())
    await ws.send(bytearray(b"x"))
    ws.send_nowait("x")
'''

BAD = '''
from kn_sock import async_connect_websocket, connect_websocket


def wrong() -> int:
    return connect_websocket("localhost", 8765)


async def awrong() -> int:
    return await async_connect_websocket("localhost", 8765)


def text(ws_text: str) -> None: ...


def unchecked() -> None:
    ws = connect_websocket("localhost", 8765)
    text(ws.recv())


def not_a_message() -> None:
    connect_websocket("localhost", 8765).send(123)


async def anot_a_message() -> None:
    ws = await async_connect_websocket("localhost", 8765)
    await ws.send(1.5)
'''


def _mypy(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent(source))
    env = dict(os.environ, MYPYPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(prog)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=280,
    )


def test_a_user_program_passes_mypy_strict(tmp_path):
    result = _mypy(tmp_path, GOOD)
    assert result.returncode == 0, result.stdout + result.stderr


def test_connection_types_are_precise(tmp_path):
    result = _mypy(tmp_path, BAD)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert 'Incompatible return value type (got "WebSocket", expected "int")' in out
    assert 'Incompatible return value type (got "AsyncWebSocket", expected "int")' in out
    assert 'Argument 1 to "text" has incompatible type "str | bytes | None"' in out
    assert 'Argument 1 to "send" of "WebSocket" has incompatible type "int"' in out
    assert 'Argument 1 to "send" of "AsyncWebSocket" has incompatible type "float"' in out


def test_annotations_resolve_at_run_time():
    """get_type_hints (sphinx autodoc, pydantic, beartype) resolves the message aliases."""
    import typing

    from kn_sock import WebSocket, broadcast
    from kn_sock._pure import AsyncCore
    from kn_sock.asyncio.client import AsyncReconnectingWebSocket
    from kn_sock.sync.client import ReconnectingWebSocket

    for function in (WebSocket.send, broadcast, ReconnectingWebSocket.send, AsyncReconnectingWebSocket.send,
                     AsyncCore.send, AsyncCore.send_nowait):
        assert "message" in typing.get_type_hints(function)
