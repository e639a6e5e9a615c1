"""Interop through a real reverse proxy: kn_sock's clients and servers with nginx in between.

The usual deployment of a WebSocket server: nginx terminates the client's connection and
opens its own to the server, forwarding the upgrade (``proxy_http_version 1.1`` and the
``Upgrade`` / ``Connection`` headers, which nginx rewrites to its own spelling, lowercase
``upgrade``). Through it: the path and query, permessage-deflate negotiated end to end,
text, binary, empty, fragmented and 1 MiB messages, a ping's pong, and a close code and
reason from the server reaching the client.

nginx cannot listen on port 0: it is given a port just found free on 127.0.0.1, and another
one if it fails to bind that. Skips (with the reason) only when no ``nginx`` binary is found;
``.ci/run`` installs Debian's ``nginx-light`` when missing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from asyncio_support import serving
from interop_support import TIMEOUT, ThreadedSync
from sync_support import free_port, running_server
from kn_sock import async_connect_websocket, connect_websocket

pytestmark = [pytest.mark.network, pytest.mark.timeout(60)]

MIB = 2**20


def find_nginx() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("nginx interop: no `nginx` binary (Debian: apt-get install nginx-light)")


class Proxy:
    """nginx in a child process, proxying WebSocket upgrades on ``port`` to ``upstream``."""

    def __init__(self, nginx: str, prefix: Path, upstream: int) -> None:
        prefix.mkdir(parents=True, exist_ok=True)
        self.error_log = prefix / "error.log"
        for _ in range(5):  # another process may take the free port first: try another one
            self.port = free_port()
            self.proc = self._start(nginx, prefix, upstream)
            if self._wait_listening():
                return
            self.stop()
        raise AssertionError(f"nginx did not start: {self.log()}")

    def _start(self, nginx: str, prefix: Path, upstream: int) -> subprocess.Popen[bytes]:
        p = str(prefix)
        conf = prefix / "nginx.conf"
        conf.write_text(textwrap.dedent(f"""\
            daemon off;
            master_process off;
            pid {p}/nginx.pid;
            error_log {p}/error.log info;
            events {{ worker_connections 64; }}
            http {{
                access_log off;
                client_body_temp_path {p}; proxy_temp_path {p};
                fastcgi_temp_path {p}; uwsgi_temp_path {p}; scgi_temp_path {p};
                map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
                server {{
                    listen 127.0.0.1:{self.port};
                    location / {{
                        proxy_pass http://127.0.0.1:{upstream};
                        proxy_http_version 1.1;
                        proxy_set_header Upgrade $http_upgrade;
                        proxy_set_header Connection $connection_upgrade;
                        proxy_set_header Host $host;
                        proxy_read_timeout 60s;
                    }}
                }}
            }}
            """))
        return subprocess.Popen(
            [nginx, "-p", p, "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _wait_listening(self) -> bool:
        """True once nginx accepts connections on ``port``; False if it exited (port taken)."""
        for _ in range(int(TIMEOUT / 0.02)):
            if self.proc.poll() is not None:
                return False
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT).close()
                return True
            except OSError:
                time.sleep(0.02)  # (nothing to wait on: nginx says nothing when it listens)
        return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(TIMEOUT)

    def log(self) -> str:
        return self.error_log.read_text(errors="replace")[-2000:] if self.error_log.exists() else ""


async def connect_through(proxy: Proxy, style: str, backend: Any, path: str) -> Any:
    """A kn_sock client (asyncio, or blocking driven from threads) through the proxy."""
    uri = f"ws://127.0.0.1:{proxy.port}{path}"
    if style == "async":
        return await async_connect_websocket(uri, backend=backend, open_timeout=TIMEOUT)
    return ThreadedSync(await asyncio.to_thread(connect_websocket, uri, backend=backend, open_timeout=TIMEOUT))


def make_handler(seen: dict[str, Any], style: str) -> Any:
    """The server's handler: echo, and close with 4001 "bye" on "close please"."""

    def note(ws: Any, path: str) -> None:
        seen["path"] = path
        seen["connection"] = ws.request_headers.get("Connection")
        seen["extensions"] = list(ws.extensions)
        seen["noted"].set()

    if style == "async":

        async def async_handler(ws: Any, path: str) -> None:
            note(ws, path)
            async for message in ws:
                if message == "close please":
                    await ws.close(4001, "bye")
                    return
                await ws.send(message)

        return async_handler

    def sync_handler(ws: Any, address: Any) -> None:
        note(ws, ws.path)
        for message in ws:
            if message == "close please":
                ws.close(4001, "bye")
                return
            ws.send(message)

    return sync_handler


@pytest.fixture
async def served(request: pytest.FixtureRequest, backend: Any) -> AsyncIterator[tuple[Any, dict[str, Any]]]:
    """A kn_sock server of the style in ``request.param`` (async / sync) on 127.0.0.1:0."""
    seen: dict[str, Any] = {"noted": threading.Event()}  # set by the handler once it ran
    if request.param == "async":
        async with serving(make_handler(seen, "async"), backend=backend) as server:
            yield server, seen
    else:
        with running_server(make_handler(seen, "sync"), backend=backend) as sync_server:
            yield sync_server, seen


@pytest.mark.parametrize("served", ["async", "sync"], indirect=True)
@pytest.mark.parametrize("style", ["async", "sync"])
async def test_through_nginx(served: tuple[Any, dict[str, Any]], style: str, backend: Any, tmp_path: Path) -> None:
    server, seen = served
    proxy = await asyncio.to_thread(Proxy, find_nginx(), tmp_path / "nginx", server.port)  # (it waits)
    try:
        ws = await connect_through(proxy, style, backend, "/chat?room=7&x=%20y")
        assert await asyncio.to_thread(seen["noted"].wait, TIMEOUT)  # (the handler runs on its own)
        assert seen["path"] == "/chat?room=7&x=%20y"
        assert seen["connection"] == "upgrade"  # nginx's spelling, not the client's
        assert ws.extensions == seen["extensions"] == ["permessage-deflate"]
        for message in ["hello", b"\x00\xff" * 10, "", b"", "é€😀" * 1000, os.urandom(MIB), "a" * MIB]:
            await ws.send(message)
            assert await ws.recv(timeout=TIMEOUT) == message
        await ws.send(["frag", "mented ", "text"])
        assert await ws.recv(timeout=TIMEOUT) == "fragmented text"
        if style == "async":
            waiter = await ws.ping(b"through nginx")
            assert await asyncio.wait_for(waiter, TIMEOUT) > 0
        else:
            waiter = await asyncio.to_thread(ws.ws.ping, b"through nginx")
            assert await asyncio.to_thread(waiter.wait, TIMEOUT)
        await ws.send("close please")
        assert await ws.recv(timeout=TIMEOUT) is None
        assert (ws.close_code, ws.close_reason) == (4001, "bye")
    finally:
        await asyncio.to_thread(proxy.stop)
