"""Helpers for the interop tests: finding / installing real peers and driving them.

Not a test module (no ``test_`` prefix). Peers are started by the tests themselves on
127.0.0.1 port 0; a test skips, with the reason, only when its peer cannot be found or
installed. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "NODE_DIR",
    "TIMEOUT",
    "require_node_ws",
    "NodeEchoServer",
    "node_client_command",
    "fetch_node_close",
    "ThreadedSync",
]

NODE_DIR = Path(__file__).resolve().parent / "node"
#: Bound on every wait of the interop tests (the node client has its own 30 s watchdog).
TIMEOUT = 20.0
_install_lock = threading.Lock()


def require_node_ws() -> str:
    """Return the ``node`` executable with the ``ws`` package ready in ``NODE_DIR``, or skip.

    Runs ``npm install`` into ``tests/interop/node`` when ``node_modules/ws`` is missing
    (``.ci/run`` normally did it already); skips when node or npm is absent or the install
    fails (no registry).
    """
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js interop: `node` is not on PATH (install nodejs + npm to run these tests)")
    with _install_lock:
        if not (NODE_DIR / "node_modules" / "ws" / "package.json").exists():
            npm = shutil.which("npm")
            if npm is None:
                pytest.skip("Node.js interop: `npm` is not on PATH, cannot install the `ws` package")
            try:
                proc = subprocess.run(
                    [npm, "install", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR)],
                    cwd=NODE_DIR,
                    capture_output=True,
                    text=True,
                    timeout=180,
                )
            except subprocess.TimeoutExpired:
                pytest.skip("Node.js interop: `npm install` of `ws` timed out (registry unreachable?)")
            if proc.returncode != 0 or not (NODE_DIR / "node_modules" / "ws").exists():
                pytest.skip(f"Node.js interop: `npm install` of `ws` failed: {proc.stderr.strip()[-500:]}")
    return node


class NodeEchoServer:
    """``tests/interop/node/echo_server.js`` in a child process (see that file for its commands)."""

    def __init__(self, node: str) -> None:
        self.proc = subprocess.Popen(
            [node, str(NODE_DIR / "echo_server.js")],
            cwd=NODE_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        first: list[str] = []
        reader = threading.Thread(target=lambda: first.append(self.proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(TIMEOUT)
        if not first or not first[0].strip():
            self.stop()
            raise RuntimeError(f"node echo server did not start: {self.proc.stderr.read() if self.proc.stderr else ''}")
        self.port: int = json.loads(first[0])["port"]

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        """Close its stdin (it exits on EOF); kill it if it lingers."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(5)
        except (subprocess.TimeoutExpired, OSError):
            self.proc.kill()
            self.proc.wait(5)
        finally:
            for pipe in (self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()


def fetch_node_close(port: int, conn_id: str) -> dict[str, Any] | None:
    """The close (``{"code", "reason"}``) the node echo server saw on connection ``conn_id``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/closes?id={conn_id}", timeout=TIMEOUT) as answer:
        data = json.loads(answer.read())
    if data.get("error"):
        raise AssertionError(f"node saw an error on {conn_id}: {data['error']}")
    return data["close"]


def node_client_command(node: str, url: str, *, deflate: bool, close: str) -> list[str]:
    """The command line of ``tests/interop/node/client.js`` for one scripted run."""
    cmd = [node, str(NODE_DIR / "client.js"), url, f"--close={close}"]
    if not deflate:
        cmd.append("--no-deflate")
    return cmd


class ThreadedSync:
    """Awaitable facade over a blocking ``WebSocket``: each call runs in a worker thread.

    Lets one async scenario drive both the asyncio and the blocking client; the blocking
    calls really block (in a thread), nothing is emulated.
    """

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ws, name)

    async def send(self, message: Any) -> None:
        await asyncio.to_thread(self.ws.send, message)

    async def recv(self, timeout: float | None = None) -> Any:
        return await asyncio.to_thread(self.ws.recv, timeout)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await asyncio.to_thread(self.ws.close, code, reason)
