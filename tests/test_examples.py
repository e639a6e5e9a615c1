"""Every script in examples/ runs: servers started as subprocesses on a free port, talked to, stopped.

Timeouts everywhere: each subprocess is bounded and killed if it outlives its test.
"""

from __future__ import annotations

import asyncio
import importlib.util
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from kn_sock import WebSocketServer, connect_websocket, start_async_websocket_server
from sync_support import free_port

pytestmark = pytest.mark.network

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT = 15



def wait_listening(port: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the example exited early: {proc.communicate()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"nothing listens on port {port}")


def start(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(EXAMPLES / script), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    """SIGTERM (each server example handles it), bounded; then kill."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(EXAMPLES / script), *args],
                          capture_output=True, text=True, timeout=TIMEOUT)


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def blocking_server(port: int) -> Iterator[subprocess.Popen[str]]:
    proc = start("blocking_server.py", "127.0.0.1", str(port))
    wait_listening(port, proc)
    yield proc
    stop(proc)


@pytest.fixture
def async_server(port: int) -> Iterator[subprocess.Popen[str]]:
    proc = start("async_server.py", "127.0.0.1", str(port))
    wait_listening(port, proc)
    yield proc
    stop(proc)


# ------------------------------------------------------------------ the four entry points


@pytest.mark.parametrize("client", ["blocking_client.py", "async_client.py"])
def test_blocking_server_with_each_client(blocking_server: subprocess.Popen[str], port: int, client: str) -> None:
    proc = run(client, "127.0.0.1", str(port))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "Echo: Hello WebSocket!"
    code, out, err = stop(blocking_server)
    assert code == 0, err
    assert "Received: Hello WebSocket!" in out and "server stopped" in out


@pytest.mark.parametrize("client", ["blocking_client.py", "async_client.py"])
def test_async_server_with_each_client(async_server: subprocess.Popen[str], port: int, client: str) -> None:
    proc = run(client, "127.0.0.1", str(port))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "Echo: Hello WebSocket!"
    code, out, err = stop(async_server)
    assert code == 0, err
    assert f"serving on ws://127.0.0.1:{port}/" in out and "server stopped" in out


def test_blocking_server_port_0_prints_the_bound_port_and_echoes_empty_messages() -> None:
    proc = start("blocking_server.py", "127.0.0.1", "0")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("serving on ws://127.0.0.1:") and ":0/" not in line, line
        port = int(line.strip().rsplit(":", 1)[1].rstrip("/"))
        with connect_websocket("127.0.0.1", port, open_timeout=5) as ws:
            ws.send("")  # an empty message is a message: it does not end the connection
            assert ws.recv(5) == "Echo: "
            ws.send("again")
            assert ws.recv(5) == "Echo: again"
    finally:
        code, _, err = stop(proc)
    assert code == 0, err


# ------------------------------------------------------------------ chat room


def test_chat_room_sends_to_everyone_else(port: int) -> None:
    proc = start("chat_room.py", "127.0.0.1", str(port))
    try:
        wait_listening(port, proc)
        uri = f"ws://127.0.0.1:{port}/"
        alice = connect_websocket(uri, open_timeout=5)
        assert alice.recv(5).startswith("* you are guest-")
        bob = connect_websocket(uri, open_timeout=5)
        bob_name = bob.recv(5).split()[3].rstrip(";")
        assert alice.recv(5) == f"* {bob_name} joined"
        alice.send("hello room")
        assert bob.recv(5).endswith(": hello room")
        with pytest.raises(TimeoutError):
            alice.recv(0.2)  # the sender does not get its own message back
        bob.close()
        assert alice.recv(5) == f"* {bob_name} left"
        alice.close()
    finally:
        code, _, err = stop(proc)
    assert code == 0 and "Traceback" not in err, err


# ------------------------------------------------------------------ JSON-RPC


def test_json_rpc_in_one_process() -> None:
    proc = run("json_rpc.py")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "add(2, 3) = 5" in lines
    assert "echo('a', 1) = ['a', 1]" in lines
    assert "concurrent: sleep_then -> 'slow', add -> 42" in lines
    assert "error: divide: Method not found (-32601)" in lines


def test_json_rpc_server_and_client_apart(port: int) -> None:
    server = start("json_rpc.py", "server", "127.0.0.1", str(port))
    try:
        wait_listening(port, server)
        with connect_websocket("127.0.0.1", port, open_timeout=5) as ws:
            ws.send("not json")
            assert ws.recv_json(5)["error"]["code"] == -32700
            ws.send_json({"jsonrpc": "2.0", "method": "add", "params": {"a": 1}, "id": 7})
            answer = ws.recv_json(5)
            assert answer["id"] == 7 and answer["error"]["code"] == -32602
            # notifications (no "id") are never answered, not even when they fail (JSON-RPC 2.0 §4.1)
            ws.send_json({"jsonrpc": "2.0", "method": "nosuch"})
            ws.send_json({"jsonrpc": "2.0", "method": "add", "params": [1]})
            ws.send_json({"jsonrpc": "2.0", "method": "add", "params": [1, 2]})
            # a method that is not a string: Invalid Request, and the server keeps serving
            ws.send_json({"jsonrpc": "2.0", "method": ["x"], "id": 8})
            assert ws.recv_json(5) == {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"},
                                       "id": 8}
            ws.send_json({"jsonrpc": "2.0", "method": "add", "params": [2, 3], "id": 9})
            assert ws.recv_json(5) == {"jsonrpc": "2.0", "result": 5, "id": 9}
        client = run("json_rpc.py", "client", "127.0.0.1", str(port))
        assert client.returncode == 0, client.stderr
        assert "add(2, 3) = 5" in client.stdout
    finally:
        _, _, err = stop(server)
    assert "Traceback" not in err and "never retrieved" not in err, err


# ------------------------------------------------------------------ reconnecting client


async def test_reconnecting_client_resubscribes_after_a_restart() -> None:
    """A news server that restarts (1001) after two messages: the client comes back and re-subscribes."""
    if importlib.util.find_spec("kn_sock.reconnect") is None:
        pytest.skip("client reconnection (SPEC 'Reconnection') is not in this kn_sock yet")
    subscriptions = 0

    async def news(ws, path):  # type: ignore[no-untyped-def]
        nonlocal subscriptions
        request = await ws.recv_json(5)
        assert request == {"subscribe": "news"}
        subscriptions += 1
        for i in range(2):
            await ws.send(f"news {subscriptions}.{i}")
        await ws.recv()  # None once the connection closes

    server = await start_async_websocket_server("127.0.0.1", 0, news)
    port = server.port
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / "reconnecting_client.py"), f"ws://127.0.0.1:{port}/", "4",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        async with asyncio.timeout(TIMEOUT):
            while subscriptions < 1:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        server.close()  # 1001 to the client: it must reconnect
        await server.wait_closed()
        server = await start_async_websocket_server("127.0.0.1", port, news)
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        server.close()
        await server.wait_closed()
    text = out.decode()
    assert proc.returncode == 0, err.decode()
    assert "connected (#2), subscribing" in text
    assert "received: news 2.1" in text


def test_reconnecting_client_stops_on_a_normal_close(port: int) -> None:
    """Against a server that closes with 1000, the client is told the connection ended for good."""
    if importlib.util.find_spec("kn_sock.reconnect") is None:
        pytest.skip("client reconnection (SPEC 'Reconnection') is not in this kn_sock yet")

    def handler(ws, address):  # type: ignore[no-untyped-def]
        ws.recv(5)
        ws.send("only one")

    with WebSocketServer("127.0.0.1", port, handler) as srv:
        import threading

        threading.Thread(target=srv.serve_forever, daemon=True).start()
        proc = run("reconnecting_client.py", f"ws://127.0.0.1:{port}/", "5")
    assert proc.returncode == 0, proc.stderr
    assert "received: only one" in proc.stdout
    assert "connection closed for good" in proc.stdout
