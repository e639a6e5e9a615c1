"""Interop with Node.js ``ws`` (RFC 6455 / RFC 7692 against another implementation).

Both directions, both I/O styles, both twins:

- our asyncio and blocking clients against ``node/echo_server.js``: text, binary, empty
  messages, fragmented messages each way, 1 MiB (exactly ``max_size``), a compressible
  1 MiB message, and the closing handshake started by either side with a code and reason;
  with permessage-deflate (node compresses every message) and without;
- ``node/client.js`` against our asyncio and blocking servers: the same exchange, scripted
  on the node side, which reports what it saw as JSON.

Compression is checked on the wire, not only in the headers: node reports the socket's
byte counts, which must be far below the payload sizes when a compressible MiB crossed.
The tests skip (with the reason) only when node / npm are missing or ``npm install`` fails.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import threading
import time
from typing import Any

import pytest

from interop_support import (
    TIMEOUT,
    NodeEchoServer,
    ThreadedSync,
    fetch_node_close,
    node_client_command,
    require_node_ws,
)
from kn_sock import WebSocketServer, async_connect_websocket, connect_websocket, start_async_websocket_server

pytestmark = [pytest.mark.network, pytest.mark.timeout(90)]

MIB = 2**20
_ids = itertools.count()


@pytest.fixture(scope="module")
def node() -> str:
    return require_node_ws()


@pytest.fixture(scope="module")
def node_server(node: str) -> Any:
    server = NodeEchoServer(node)
    try:
        yield server
    finally:
        server.stop()


def node_pattern(size: int, binary: bool) -> bytes | str:
    """What ``frag:<kind>:N:SIZE`` makes node send (see echo_server.js ``pattern``)."""
    if binary:
        return bytes((i * 7) & 0xFF for i in range(size))
    return "".join(chr(0x61 + i % 26) for i in range(size))


# --------------------------------------------------------------------------- our clients → node server


async def open_client(style: str, url: str, backend: Any) -> Any:
    if style == "async":
        return await async_connect_websocket(url, backend=backend, open_timeout=TIMEOUT)
    return ThreadedSync(await asyncio.to_thread(connect_websocket, url, backend=backend, open_timeout=TIMEOUT))


async def echo_ok(ws: Any, message: Any, expected: Any = None) -> None:
    await ws.send(message)
    got = await ws.recv(TIMEOUT)
    want = message if expected is None else expected
    assert type(got) is type(want)
    assert got == want, f"echo differs: {len(got)} vs {len(want)}"


async def node_close(node_server: NodeEchoServer, conn_id: str) -> dict[str, Any]:
    """Wait (bounded) for node's 'close' event on ``conn_id`` (it fires once TCP is closed)."""
    deadline = time.monotonic() + TIMEOUT
    while (seen := await asyncio.to_thread(fetch_node_close, node_server.port, conn_id)) is None:
        assert time.monotonic() < deadline, "node never reported the close"
        await asyncio.sleep(0.02)
    return seen


@pytest.mark.parametrize("close_by", ["client", "server"])
@pytest.mark.parametrize("path", ["/deflate", "/plain"])
@pytest.mark.parametrize("style", ["async", "sync"])
async def test_client_against_node_echo_server(node_server, backend, style, path, close_by):
    conn_id = f"c{os.getpid()}-{next(_ids)}"
    deflate = path == "/deflate"
    ws = await open_client(style, node_server.url(f"{path}?id={conn_id}"), backend)
    try:
        # RFC 7692: node's server always accepts our offer on /deflate, has it off on /plain.
        assert ws.extensions == (["permessage-deflate"] if deflate else [])
        await echo_ok(ws, "héllo from kn_sock ✓ " + "🙂" * 3)
        await echo_ok(ws, "")
        await echo_ok(ws, bytes(range(256)))
        await echo_ok(ws, b"")
        # Fragmented, ours → node (an iterable is one fragmented message), echoed whole.
        await echo_ok(ws, ["frag", "mented ", "tëxt"], "fragmented tëxt")
        parts = [b"\x00" * 1000, os.urandom(70000), b"end"]
        await echo_ok(ws, parts, b"".join(parts))
        # Fragmented, node → ours (fin:false … fin:true; compressed as one message on /deflate).
        await ws.send("frag:text:7:100000")
        assert await ws.recv(TIMEOUT) == node_pattern(100000, False)
        await ws.send("frag:binary:3:300000")
        assert await ws.recv(TIMEOUT) == node_pattern(300000, True)
        # Exactly max_size (the default 1 MiB) is accepted.
        await echo_ok(ws, os.urandom(MIB))
        await echo_ok(ws, "kn_sock interop " * (MIB // 16))
        await ws.send("stats")
        stats = json.loads(await ws.recv(TIMEOUT))
        # ≈ 2.2 MiB of payload crossed each way, ≈ 1.1 MiB of it random (incompressible).
        if deflate:
            assert stats["extensions"] == "permessage-deflate"
            assert stats["bytesRead"] < 1.25 * MIB, stats  # we compressed what we sent
            assert stats["bytesWritten"] < 1.25 * MIB, stats  # node compressed, we inflated
        else:
            assert stats["extensions"] == ""
            assert stats["bytesRead"] > 2 * MIB and stats["bytesWritten"] > 2 * MIB, stats
        if close_by == "client":
            await ws.close(4001, "kn_sock says bye")
            assert ws.closed
            assert (ws.close_code, ws.close_reason) == (4001, "kn_sock says bye")  # ws echoes both
            assert await node_close(node_server, conn_id) == {"code": 4001, "reason": "kn_sock says bye"}
        else:
            await ws.send("close:4002:node says bye")
            assert await ws.recv(TIMEOUT) is None
            assert (ws.close_code, ws.close_reason) == (4002, "node says bye")
            # We echo the code (RFC 6455 §5.5.1).
            assert (await node_close(node_server, conn_id))["code"] == 4002
    finally:
        await ws.close()


# --------------------------------------------------------------------------- node client → our servers


def check_node_report(report: dict[str, Any], deflate: bool, close_by: str) -> None:
    assert report.get("error") is None, report
    failed = {name: why for name, why in report["steps"].items() if why is not True}
    assert not failed, report
    assert report["ok"] is True and len(report["steps"]) == 8, report
    assert report["extensions"] == ("permessage-deflate" if deflate else ""), report
    if close_by == "client":
        assert report["close"]["code"] == 4001, report  # we echo the code, not the reason
    else:
        assert report["close"] == {"code": 4002, "reason": "server says bye"}, report
    wire = report["wire"]
    if deflate:  # node compressed the compressible MiB, and so did we on the way back
        assert wire["compressibleWritten"] < 64 * 1024 and wire["compressibleRead"] < 64 * 1024, wire
    else:
        assert wire["compressibleWritten"] > MIB and wire["compressibleRead"] > MIB, wire


def parse_report(stdout: str, stderr: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert lines, f"node client printed no report; stderr: {stderr[-2000:]}"
    return json.loads(lines[-1])


def expected_close(close_by: str) -> tuple[int, str]:
    return (4001, "node says bye") if close_by == "client" else (4002, "server says bye")


@pytest.mark.parametrize("close_by", ["client", "server"])
@pytest.mark.parametrize("deflate", [True, False], ids=["deflate", "plain"])
async def test_node_client_against_async_server(node, backend, deflate, close_by):
    seen: dict[str, Any] = {}
    done = asyncio.Event()

    async def handler(ws, path):
        seen["extensions"] = ws.extensions
        async for message in ws:
            if isinstance(message, str) and message.startswith("close:"):
                _, code, reason = message.split(":", 2)
                await ws.close(int(code), reason)
                break
            await ws.send(message)
        seen["close"] = (ws.close_code, ws.close_reason)
        done.set()

    server = await start_async_websocket_server("127.0.0.1", 0, handler, backend=backend)
    try:
        cmd = node_client_command(node, f"ws://127.0.0.1:{server.port}/", deflate=deflate, close=close_by)
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 45)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        check_node_report(parse_report(out.decode(), err.decode()), deflate, close_by)
        await asyncio.wait_for(done.wait(), TIMEOUT)
        assert seen["extensions"] == (["permessage-deflate"] if deflate else [])
        assert seen["close"] == expected_close(close_by)
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), TIMEOUT)


@pytest.mark.parametrize("close_by", ["client", "server"])
@pytest.mark.parametrize("deflate", [True, False], ids=["deflate", "plain"])
def test_node_client_against_sync_server(node, backend, deflate, close_by):
    seen: dict[str, Any] = {}
    done = threading.Event()

    def handler(ws, address):
        seen["extensions"] = ws.extensions
        for message in ws:
            if isinstance(message, str) and message.startswith("close:"):
                _, code, reason = message.split(":", 2)
                ws.close(int(code), reason)
                break
            ws.send(message)
        seen["close"] = (ws.close_code, ws.close_reason)
        done.set()

    with WebSocketServer("127.0.0.1", 0, handler, backend=backend) as server:
        serving = threading.Thread(target=server.serve_forever, daemon=True)
        serving.start()
        try:
            cmd = node_client_command(node, f"ws://127.0.0.1:{server.port}/", deflate=deflate, close=close_by)
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=45)
            check_node_report(parse_report(proc.stdout, proc.stderr), deflate, close_by)
            assert done.wait(TIMEOUT)
            assert seen["extensions"] == (["permessage-deflate"] if deflate else [])
            assert seen["close"] == expected_close(close_by)
        finally:
            server.shutdown()
            serving.join(TIMEOUT)
