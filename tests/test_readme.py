"""The README's code runs as written.

A ```` ```python ```` block preceded by an HTML comment line is run by this module:

- ``<!-- runnable -->``: a self-contained script, run in a subprocess; it must exit 0.
- ``<!-- runnable: server -->``: a server, started with port 8765 replaced by a free port, and
  stopped after the ``client`` blocks that follow it ran. A blocking server (the code uses a
  ``shutdown_event``) runs in a thread of this process and is stopped by setting the event,
  which must make it return promptly (SPEC: within 0.5 s); other servers run in a subprocess.
- ``<!-- runnable: client -->``: run in a subprocess against the server above; it must exit 0.

A block that imports a name this kn_sock does not have (yet) is skipped, saying which.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from sync_support import free_port

pytestmark = pytest.mark.network

README = Path(__file__).resolve().parent.parent / "README.md"
TIMEOUT = 15
BLOCK = re.compile(r"<!-- runnable(?::\s*(\w+))? -->\n```python\n(.*?)```", re.S)


def blocks() -> list[tuple[str, str, int]]:
    """(kind, code, line number) of every marked block, in order."""
    text = README.read_text()
    return [(m.group(1) or "standalone", m.group(2), text.count("\n", 0, m.start()) + 2) for m in BLOCK.finditer(text)]


def scenarios() -> list[Any]:
    """Standalone blocks alone; each server block with the client blocks after it."""
    out: list[Any] = []
    server: tuple[str, int] | None = None
    clients: list[tuple[str, int]] = []
    for kind, code, line in blocks() + [("end", "", 0)]:
        if kind in ("server", "end") and server is not None:
            out.append(pytest.param(server, clients, id=f"server-line-{server[1]}"))
            server, clients = None, []
        if kind == "server":
            server = (code, line)
        elif kind == "client":
            assert server is not None, f"README line {line}: a client block needs a server block above it"
            clients.append((code, line))
        elif kind == "standalone":
            out.append(pytest.param(None, [(code, line)], id=f"line-{line}"))
    return out



def wait_listening(port: int, alive: Any) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        assert alive(), "the README server stopped before it was used"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"the README server does not listen on {port}")


def run_script(code: str, line: int) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT)
    missing = re.search(r"ImportError: cannot import name '(\w+)' from 'kn_sock'", proc.stderr)
    if missing:
        pytest.skip(f"README line {line}: kn_sock has no {missing.group(1)} yet")
    assert proc.returncode == 0, f"README block at line {line} failed:\n{proc.stderr}"
    return proc.stdout


def test_readme_has_runnable_blocks() -> None:
    kinds = [kind for kind, _, _ in blocks()]
    assert kinds.count("server") == 2 and kinds.count("client") == 2  # the four entry points
    assert "standalone" in kinds


def test_every_python_block_is_marked_or_known_not_runnable() -> None:
    """An unmarked python block must be one that needs the outside world (a certificate, a remote host)."""
    text = README.read_text()
    for match in re.finditer(r"(.*)\n```python\n(.*?)```", text, re.S):
        if "runnable" in match.group(1):
            continue
        assert "example.com" in match.group(2) or "cert.pem" in match.group(2), match.group(2)[:200]


@pytest.mark.parametrize("server, clients", scenarios())
def test_readme_block(server: tuple[str, int] | None, clients: list[tuple[str, int]]) -> None:
    if server is None:
        for code, line in clients:
            run_script(code, line)
        return
    port = free_port()
    code, line = server
    code = code.replace("8765", str(port))
    if "shutdown_event" in code:
        run_blocking_server(code, line, port, clients)
    else:
        run_subprocess_server(code, line, port, clients)


def run_clients(clients: list[tuple[str, int]], port: int) -> None:
    for code, line in clients:
        out = run_script(code.replace("8765", str(port)), line)
        assert out.strip(), f"README client at line {line} printed nothing"


def run_blocking_server(code: str, line: int, port: int, clients: list[tuple[str, int]]) -> None:
    namespace: dict[str, Any] = {"__name__": "readme"}
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            exec(compile(code, f"README.md:{line}", "exec"), namespace)
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        wait_listening(port, thread.is_alive)
        run_clients(clients, port)
    finally:
        event = namespace.get("shutdown_event")
        assert event is not None, "the README blocking server defines no shutdown_event"
        t0 = time.monotonic()
        event.set()
        thread.join(5)
    assert not thread.is_alive(), "start_websocket_server did not return after shutdown_event.set()"
    assert time.monotonic() - t0 < 1.5
    assert not errors, errors


def run_subprocess_server(code: str, line: int, port: int, clients: list[tuple[str, int]]) -> None:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(port, lambda: proc.poll() is None)
        run_clients(clients, port)
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=TIMEOUT)
    assert "Traceback" not in err, f"README server at line {line}:\n{err}"
