"""Typing as a user sees it (the package ships py.typed and the extension's .pyi): a program
using the documented API in the usual ways passes ``mypy --strict``, and the connection types
are precise, not Any (a wrong annotation is caught)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mypy")
pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parent.parent

GOOD = '''
import asyncio
import pathlib
import socket
import ssl
import threading
from typing import Any
from collections.abc import AsyncIterator
from typing import TypedDict
from kn_sock import (
    AsyncWebSocket, WebSocket, async_connect_websocket, connect_websocket, start_async_websocket_server,
    start_websocket_server,
)
from kn_sock import AsyncReconnectingWebSocket, ClientOptions, ReconnectingWebSocket, ReconnectPolicy


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


class Backoff(TypedDict, total=False):
    initial_delay: float
    max_delay: float


def resilient_typed() -> ReconnectingWebSocket:
    return connect_websocket("localhost", 8765, reconnect=Backoff(initial_delay=0.5))


async def rtt(ws: AsyncWebSocket) -> float:
    waiter = await ws.ping()
    return await waiter


def fragments(ws: WebSocket, parts: list[bytes]) -> None:
    ws.send(parts)
    ws.send(memoryview(b"x"))
    ws.send(["a", "b"])
    ws.send([b"a", bytearray(b"b"), memoryview(b"c")])  # mixed bytes-likes: fine at run time too


def resilient_surface(rws: ReconnectingWebSocket) -> tuple[int | None, str | None, list[str], float, int, str]:
    return rws.close_code, rws.subprotocol, rws.extensions, rws.latency, rws.reconnects, rws.side


async def served() -> int:
    async def handler(ws: AsyncWebSocket, path: str) -> None:
        await ws.send(path)

    async with start_async_websocket_server("127.0.0.1", 0, handler) as server:
        return server.port + len(server.sockets[0].getsockname())


def blocking_server() -> None:
    def handler(ws: WebSocket, address: tuple[str, int]) -> None:
        ws.send(str(address))

    start_websocket_server("127.0.0.1", 0, handler, threading.Event())


async def afragments(ws: AsyncWebSocket) -> None:
    async def parts() -> AsyncIterator[str]:
        yield "a"

    await ws.send(parts())
    await ws.send(bytearray(b"x"))
    ws.send_nowait("x")


def typed_dict_of_options() -> WebSocket:
    opts: ClientOptions = {"ping_interval": 5, "compression": None, "headers": {"X-A": "1"}}
    return connect_websocket("localhost", 8765, **opts)  # (mypy: with reconnect= too, Any)


def policy() -> ReconnectingWebSocket:
    return connect_websocket("localhost", 8765, reconnect=ReconnectPolicy(max_delay=5.0))


def every_option(ctx: ssl.SSLContext, shared: dict[str, Any]) -> None:
    # each entry point's documented options, with the value types docs/api.md gives them
    connect_websocket(
        "localhost", 8765, subprotocols=["chat"], compression=None, ping_interval=5, ping_timeout=None,
        max_size=None, max_queue=4, write_limit=1024, open_timeout=1.5, close_timeout=2, ssl=True,
        headers={"X-A": "1"}, origin="http://x", max_pending=10, on_connect=lambda ws: None,
        user_agent="ua", unix=pathlib.Path("/tmp/s"), ack=lambda message: 1,
    )
    connect_websocket("localhost", 8765, reconnect={"max_delay": 5.0}, headers=[("X-A", "1")], ssl=ctx, **shared)
    start_websocket_server(
        "127.0.0.1", 0, lambda ws, address: None, None, subprotocols="chat", origins=["http://x", None],
        process_request=lambda path, headers: (200, [], b"ok"), server_header="s", ssl=ctx, backlog=8,
        reuse_port=True, thread_stack_size=1 << 20, shutdown_grace=0.5, unix=b"/tmp/s", **shared,
    )
    start_websocket_server("127.0.0.1", 0, lambda ws: None, None, ssl=False)  # (False: as None)


async def aevery_option(ctx: ssl.SSLContext, shared: dict[str, Any]) -> None:
    async def handler(ws: AsyncWebSocket, path: str) -> None: ...

    async def on_connect(ws: AsyncWebSocket) -> None: ...

    async with async_connect_websocket("localhost", 8765, on_connect=on_connect, sock=socket.socket(), ssl=ctx):
        pass
    async with start_async_websocket_server(
        None, 0, handler, ssl=ctx, reuse_address=True, reuse_port=False, sock=socket.socket(), reconnect=True,
        **shared,
    ):
        pass
'''

BAD = '''
from kn_sock import async_connect_websocket, connect_websocket, start_async_websocket_server, start_websocket_server


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


from kn_sock import connect_websockett  # a typo: no module __getattr__ makes it an Any


async def forgot_await() -> None:
    ws = async_connect_websocket("localhost", 8765)
    await ws.send("hello")  # the connect call's coroutine send, not the connection's


def resilient_typo() -> None:
    rws = connect_websocket("localhost", 8765, reconnect=True)
    rws.clsoe_code


async def async_handler_for_blocking_server(ws: object, address: object) -> None: ...


def blocking_server() -> None:
    start_websocket_server("127.0.0.1", 0, async_handler_for_blocking_server, 5)


def option_typo() -> None:
    connect_websocket("localhost", 8765, ping_intreval=5)


def option_type() -> None:
    start_websocket_server("127.0.0.1", 0, lambda ws: None, None, max_size="1 MiB")


async def client_option_on_a_server() -> None:
    async def handler(ws: object, path: str) -> None: ...

    await start_async_websocket_server("127.0.0.1", 0, handler, ack=True)
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
    # audit 85: a misspelt name, a forgotten await, a reconnecting client's attribute typo, an
    # async handler and a non-event given to the blocking server all passed
    assert 'Module "kn_sock" has no attribute "connect_websockett"' in out
    assert 'Argument 1 to "send" of "Starter" has incompatible type "str"; expected "None"' in out
    assert '"ReconnectingWebSocket" has no attribute "clsoe_code"' in out
    assert 'Argument 3 to "start_websocket_server" has incompatible type' in out
    # audit 85: options were ``**options: Any``: a misspelt option or a wrong value type passed
    assert 'Unexpected keyword argument "ping_intreval" for overloaded function "connect_websocket"' in out
    assert '"start_websocket_server" has incompatible type "str"; expected "int | None"' in out
    assert 'Unexpected keyword argument "ack" for "start_async_websocket_server"' in out
    assert 'Argument 4 to "start_websocket_server" has incompatible type "int"' in out


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


def test_option_types_name_every_option():
    """The TypedDicts typing the entry points' ``**options`` name every option each accepts at
    run time (``Options``' fields plus each entry point's own), no more, no fewer."""
    from dataclasses import fields

    from kn_sock import AsyncServerOptions, ClientOptions, ServerOptions
    from kn_sock.options import Options

    shared = {f.name for f in fields(Options)} - {"extra"}

    def keys(typed: Any) -> set[str]:
        return set(typed.__required_keys__ | typed.__optional_keys__)

    assert keys(ClientOptions) == shared - {"reconnect"} | {"sock", "unix", "ack", "proxy"}  # reconnect: a parameter
    assert keys(ServerOptions) == shared | {"unix", "backlog", "reuse_port", "thread_stack_size", "shutdown_grace"}
    assert keys(AsyncServerOptions) == shared | {"unix", "backlog", "reuse_port", "reuse_address", "sock"}


def test_option_types_resolve_at_run_time():
    """get_type_hints on the exported TypedDicts (pydantic, sphinx): their names were imported
    for type checkers only (audit 91)."""
    import typing

    from kn_sock import AsyncServerOptions, ClientOptions, ServerOptions

    for typed in (ClientOptions, ServerOptions, AsyncServerOptions):
        hints = typing.get_type_hints(typed)
        assert "headers" in hints and "ssl" in hints
