"""Interop with a real browser: headless Chromium against kn_sock's asyncio server.

One server does both jobs, as a real deployment would: its ``process_request`` hook answers
``GET /`` with ``chromium/page.html`` over plain HTTP (SPEC.md "Options"), and ``/ws``
upgrades. The page opens a WebSocket back to ``/ws``, exchanges text, binary (ArrayBuffer),
1 MiB (exactly ``max_size``) random and compressible messages, a fragmented and a
compressible 1 MiB message sent by us, and reports what it saw as a final
``REPORT {json}`` text message over the same WebSocket. Chromium always offers
permessage-deflate (RFC 7692); the test checks it was negotiated on both sides and, where
the kernel tells (``TCP_INFO``), that the compressible MiB really crossed compressed.

Skips (with the reason) only when no Chromium binary is found: ``.ci/run`` installs
Debian's ``chromium``; ``KN_SOCK_CHROMIUM`` may name another binary.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from kn_sock import start_async_websocket_server

pytestmark = [pytest.mark.network, pytest.mark.timeout(90)]

PAGE = (Path(__file__).resolve().parent / "chromium" / "page.html").read_bytes()
MIB = 2**20
#: Bound on the browser's whole run, from launch to its report.
REPORT_TIMEOUT = 45.0
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--mute-audio",
    "--password-store=basic",
    "--use-mock-keychain",
]


def find_chromium() -> str:
    for candidate in (os.environ.get("KN_SOCK_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (path := shutil.which(candidate)):
            return path
    pytest.skip("Chromium interop: no chromium binary (apt-get install chromium, or set KN_SOCK_CHROMIUM)")


def tcp_bytes_received(ws: Any) -> int | None:
    """``tcpi_bytes_received`` of the connection's socket (Linux ≥ 4.1), or None if unknown."""
    sock = ws.transport.get_extra_info("socket") if ws.transport is not None else None
    if sock is None or not hasattr(socket, "TCP_INFO"):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except OSError:
        return None
    # struct tcp_info: 8 one-byte fields, 24 u32, then u64 pacing_rate, max_pacing_rate,
    # bytes_acked, bytes_received (offset 128).
    return struct.unpack_from("=Q", info, 128)[0] if len(info) >= 136 else None


@pytest.fixture
def chromium() -> str:
    return find_chromium()


async def launch(chromium: str, url: str, profile: str) -> subprocess.Popen[bytes]:
    log = open(os.path.join(profile, "chromium.log"), "wb")
    try:
        return subprocess.Popen(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", url],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the finally below ends all of it
        )
    finally:
        log.close()


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End the browser we started: its process group (zygote, renderers) by its id."""
    try:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        os.killpg(proc.pid, signal.SIGKILL)  # any helper that outlived the main process
    except ProcessLookupError:
        pass
    if proc.poll() is None:
        proc.wait(5)


async def test_chromium_page_against_async_server(chromium, backend):
    loop = asyncio.get_running_loop()
    report: asyncio.Future[dict[str, Any]] = loop.create_future()
    seen: dict[str, Any] = {}
    http_paths: list[str] = []

    def process_request(path: str, headers: Any) -> Any:
        if path == "/ws":
            return None  # upgrade
        http_paths.append(path)
        if path == "/":
            return 200, [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")], PAGE
        return 404, [("Content-Type", "text/plain")], b"not found"

    async def handler(ws: Any, path: str) -> None:
        seen["extensions"] = ws.extensions
        seen["offer"] = ws.request_headers.get("Sec-WebSocket-Extensions")
        before = tcp_bytes_received(ws)
        async for message in ws:
            after = tcp_bytes_received(ws)
            if isinstance(message, str) and message.startswith("REPORT "):
                if not report.done():
                    report.set_result(json.loads(message[7:]))
                return
            if message == "cmd:fragmented":
                await ws.send(["frag", "mented ", "✓" * 1000])
            elif message == "cmd:big":
                await ws.send("kn_sock " * (MIB // 8))
            else:
                if isinstance(message, str) and message.startswith("chromium permessage-deflate"):
                    seen["compressible_wire"] = None if None in (before, after) else after - before
                    seen["compressible_len"] = len(message)
                await ws.send(message)
            before = after

    server = await start_async_websocket_server("127.0.0.1", 0, handler, process_request=process_request, backend=backend)
    with tempfile.TemporaryDirectory(prefix="kn_sock-chromium-") as profile:
        proc = await launch(chromium, f"http://127.0.0.1:{server.port}/", profile)
        try:
            try:
                result = await asyncio.wait_for(asyncio.shield(report), REPORT_TIMEOUT)
            except asyncio.TimeoutError:
                log = Path(profile, "chromium.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"no report from Chromium within {REPORT_TIMEOUT} s (HTTP paths {http_paths}); log:\n{log}")
        finally:
            stop(proc)
            server.close()
            await asyncio.wait_for(server.wait_closed(), 10)

    assert "/" in http_paths  # the page itself came from process_request
    assert result["error"] is None, result
    failed = {name: why for name, why in result["steps"].items() if why is not True}
    assert not failed, result
    assert len(result["steps"]) == 7, result
    # RFC 7692: Chromium offers permessage-deflate; both ends agree it was negotiated.
    assert "permessage-deflate" in (seen["offer"] or "")
    assert seen["extensions"] == ["permessage-deflate"]
    assert result["extensions"].startswith("permessage-deflate"), result
    assert seen["compressible_len"] == MIB
    if seen["compressible_wire"] is not None:  # Chromium really compressed the MiB, we inflated it
        assert seen["compressible_wire"] < 64 * 1024, seen
