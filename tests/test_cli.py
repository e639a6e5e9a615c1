"""The command line (``python -m kn_sock``), driven through subprocesses as a user would.

Servers listen on 127.0.0.1 port 0: the first stdout line of ``serve`` names the real port.
Every subprocess has a timeout, and every server started here is stopped (SIGTERM, then kill).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

import kn_sock
from asyncio_support import make_tls_contexts

pytestmark = pytest.mark.network

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 20


def run_cli(*args: str, input: str | None = None, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kn_sock", *args],
        input=input, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    """An expected failure: a non-zero exit, one ``error:`` line on stderr, no traceback."""
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


class Server:
    """A ``kn-sock serve`` subprocess; ``uri`` is known once its banner line arrived."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kn_sock", "serve", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )
        line = self._first_line()
        match = re.search(r"(wss?)://(\S+):(\d+)/", line)
        assert match, line
        self.port = int(match.group(3))
        self.uri = f"{match.group(1)}://127.0.0.1:{self.port}/"
        self.banner = line

    def _first_line(self) -> str:
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(TIMEOUT)
        if not box or not box[0]:
            self.stop()
            pytest.fail(f"serve printed no banner; stderr: {self.proc.stderr.read()}")  # type: ignore[union-attr]
        return box[0]

    def stop(self) -> tuple[int, str]:
        """SIGTERM (the documented way to stop it); return (exit code, stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    yield srv
    srv.stop()


def free_port() -> int:
    """A port that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ --version, help


def test_version_names_the_implementation() -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith(f"kn_sock {kn_sock.__version__} ({kn_sock.IMPLEMENTATION})")


def test_version_under_forced_pure_twin() -> None:
    env = {**os.environ, "KN_SOCK_PURE": "1"}
    proc = subprocess.run([sys.executable, "-m", "kn_sock", "--version"], capture_output=True, text=True,
                          timeout=TIMEOUT, env=env)
    assert "(pure)" in proc.stdout


def test_help_documents_exit_codes() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    assert "exit codes" in proc.stdout and "130" in proc.stdout


def test_unknown_option_is_a_usage_error() -> None:
    proc = run_cli("connect", "ws://127.0.0.1:1/", "--bogus")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------ serve + connect


def test_serve_port_zero_then_echo_through_a_pipe(server: Server) -> None:
    assert server.banner.startswith(f"kn_sock {kn_sock.__version__} ({kn_sock.IMPLEMENTATION}) asyncio echo server")
    proc = run_cli("connect", server.uri, input="hi\nthere\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["hi", "there"]  # stdout is a pipe: raw messages, no "< "
    assert "connection closed: 1000" in proc.stderr
    code, err = server.stop()
    assert code == 0
    assert "connected, path /" in err and "messages echoed: 2" in err
    assert "Traceback" not in err


def test_serve_sync_echo() -> None:
    srv = Server("--sync")
    try:
        assert "blocking echo server" in srv.banner
        proc = run_cli("connect", srv.uri, input="ping-pong\n")
        assert proc.stdout.splitlines() == ["ping-pong"]
    finally:
        code, err = srv.stop()
    assert code == 0 and "Traceback" not in err and "server stopped" in err


def test_connect_commands_ping_close_and_escape(server: Server) -> None:
    proc = run_cli("connect", server.uri, input="//slash\n/ping\n/close 4000 done\nnot sent\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["/slash"]
    assert "pong in" in proc.stderr
    assert "connection closed: 4000" in proc.stderr  # the code the server echoed back


def test_connect_bad_close_code_is_reported_and_session_goes_on(server: Server) -> None:
    proc = run_cli("connect", server.uri, input="/close 99\n/close abc\nstill here\n")
    assert proc.returncode == 0
    assert "invalid close code" in proc.stderr
    assert "'abc' is not a close code" in proc.stderr
    assert proc.stdout.splitlines() == ["still here"]


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_serve_port_out_of_range_is_a_usage_error(port: str) -> None:
    proc = run_cli("serve", "--port", port)
    assert proc.returncode == 2
    assert "--port" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "option, value", [("--timeout", "-1"), ("--timeout", "nan"), ("--linger", "-1"), ("--subprotocol", "a b")]
)
def test_connect_bad_option_values_are_usage_errors(option: str, value: str) -> None:
    """One line and exit 2, no traceback, before any connection (port 9: nothing listens;
    regression audit 57: a traceback, or a network error hiding the bad value)."""
    proc = run_cli("connect", "ws://127.0.0.1:9/", option, value)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "refused" not in proc.stderr
    assert (option in proc.stderr) if option != "--subprotocol" else ("subprotocol" in proc.stderr)


def test_connect_host_idna_cannot_encode_is_a_usage_error() -> None:
    proc = run_cli("connect", "ws://a..b/")
    assert proc.returncode == 2, proc.stderr
    assert_one_line_error(proc, "invalid URI", "bad host name")


def test_serve_unknown_host_is_one_line() -> None:
    proc = run_cli("serve", "--port", "0", "--host", "nonexistent.invalid", timeout=20)
    assert proc.returncode == 1
    assert_one_line_error(proc, "cannot listen", "nonexistent.invalid")
    assert "Unknown error" not in proc.stderr


def test_serve_port_in_use_is_one_line(server: Server) -> None:
    proc = run_cli("serve", "--port", str(server.port), timeout=10)
    assert proc.returncode == 1
    assert_one_line_error(proc, "cannot listen", str(server.port))


def test_serve_tls_and_connect_wss(tmp_path: Path) -> None:
    make_tls_contexts(tmp_path)
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    srv = Server("--tls-cert", cert, "--tls-key", key)
    try:
        assert srv.uri.startswith("wss://")
        ok = run_cli("connect", srv.uri, "--cafile", cert, input="secret\n")
        assert ok.stdout.splitlines() == ["secret"], ok.stderr
        untrusted = run_cli("connect", srv.uri, input="secret\n")
        assert_one_line_error(untrusted, "certificate")
        assert untrusted.returncode == 1
    finally:
        srv.stop()


def test_serve_unreadable_certificate(tmp_path: Path) -> None:
    proc = run_cli("serve", "--port", "0", "--tls-cert", str(tmp_path / "missing.pem"), timeout=10)
    assert_one_line_error(proc, "certificate")


# ------------------------------------------------------------------ connect failures


def test_connect_refused() -> None:
    proc = run_cli("connect", f"ws://127.0.0.1:{free_port()}/", input="")
    assert proc.returncode == 1
    assert_one_line_error(proc, "cannot connect", "refused")


@pytest.mark.parametrize("uri", ["http://example.com/", "ws://", "ws://[::1", "localhost"])
def test_connect_bad_uri(uri: str) -> None:
    proc = run_cli("connect", uri, input="")
    assert proc.returncode == 2
    assert_one_line_error(proc, "invalid URI")


def test_connect_handshake_rejected_shows_the_status() -> None:
    """A plain HTTP server answering 403: the status is on the one error line."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        proc = run_cli("connect", f"ws://127.0.0.1:{port}/", input="")
    finally:
        thread.join(5)
        listener.close()
    assert proc.returncode == 1
    assert_one_line_error(proc, "HTTP 403 Forbidden")


def test_connect_exit_code_when_server_closes_with_an_error() -> None:
    """The server closes with 1011 while the client's stdin is still open: exit 3."""
    from kn_sock import WebSocketServer

    def handler(ws, address) -> None:  # type: ignore[no-untyped-def]
        ws.recv(5)
        ws.close(1011, "boom")

    with WebSocketServer("127.0.0.1", 0, handler) as srv:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        proc = subprocess.Popen([sys.executable, "-m", "kn_sock", "connect", f"ws://127.0.0.1:{srv.port}/"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            proc.stdin.write("trigger\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
            proc.wait(TIMEOUT)  # stdin stays open: the exit comes from the server's close
        finally:
            if proc.poll() is None:
                proc.kill()
            _, err = proc.communicate()
    assert proc.returncode == 3, err
    assert "1011 'boom'" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("end", "exit_code", "shown"),
    [
        ("1011", 3, "error: connection closed by the server: 1011 'boom'"),
        ("4000", 3, "error: connection closed by the server: 4000 'boom'"),
        ("drop", 3, "error: connection closed by the server: 1006"),
        ("1000", 0, "connection closed: 1000 'boom'"),
        ("1001", 0, "connection closed: 1001 'boom'"),
    ],
)
def test_connect_exit_code_after_end_of_input_depends_on_how_the_connection_ended(
    end: str, exit_code: int, shown: str
) -> None:
    """``echo hi | kn-sock connect URI``: input has ended and the client lingers for the reply
    when the server ends the connection; how it ended decides the exit code (README "Exit codes")."""
    from kn_sock import WebSocketServer

    def handler(ws, address) -> None:  # type: ignore[no-untyped-def]
        ws.recv(5)
        time.sleep(0.2)  # the client has seen the end of its input and lingers by now
        if end == "drop":
            ws.abort()
        else:
            ws.close(int(end), "boom")

    with WebSocketServer("127.0.0.1", 0, handler) as srv:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        proc = run_cli("connect", f"ws://127.0.0.1:{srv.port}/", "--linger", "10", input="hi\n")
    assert proc.returncode == exit_code, proc.stderr
    assert shown in proc.stderr and "Traceback" not in proc.stderr


def test_connect_exit_code_zero_when_input_ends_and_we_close(server: Server) -> None:
    """The replies came back, then the client closed at the end of its input: success."""
    proc = run_cli("connect", server.uri, "--linger", "10", input="a\nb\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["a", "b"] and "connection closed: 1000" in proc.stderr


# ------------------------------------------------------------------ demo, bench


def test_demo_prints_implementation_and_throughput() -> None:
    proc = run_cli("demo", "--seconds", "0.2")
    assert proc.returncode == 0, proc.stderr
    assert f"implementation: {kn_sock.IMPLEMENTATION}" in proc.stdout
    assert "received 'Hello WebSocket!'" in proc.stdout
    assert re.search(r"65536 B: +[\d,]+ round trips/s", proc.stdout)


@pytest.mark.slow
def test_bench_quick_speedups_prints_a_table() -> None:
    if not (ROOT / "benchmarks" / "bench_speedups.py").exists():
        pytest.skip("no benchmarks/ in this checkout")
    # With several suites, an option for another one (--only: echo's) is ignored here, with a
    # note (regression audit 58: bench_speedups refused it, failing the whole command); with
    # one suite, an option it does not know is a typo: an error (regression audit 59).
    proc = run_cli("bench", "--quick", "--suite", "speedups", "--suite", "echo", "--only", "kn_pure",
                   "--cells", "64 B", "--rounds", "1", "--duration", "0.05", timeout=80)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[1/2] speedups" in proc.stdout and "[2/2] echo" in proc.stdout and "done in" in proc.stdout
    assert "note: ignored by this suite (for another one): --only kn_pure" in proc.stdout
    assert "## Masking" in proc.stdout and "kn_sock pure" in proc.stdout
    proc = run_cli("bench", "--quick", "--suite", "speedups", "--quik", timeout=50)
    assert proc.returncode != 0 and "unrecognized arguments: --quik" in proc.stderr


@pytest.mark.parametrize(
    "script, args",
    [("bench_speedups.py", ["--bogus"]), ("bench_echo.py", ["--only", "nosuch"]), ("bench_conns.py", ["--only", "nosuch"])],
)
def test_bench_scripts_refuse_unknown_options_and_contestants(script: str, args: list[str]) -> None:
    """A usage error (exit 2), not a silent run or an empty table (regression audit 57)."""
    path = ROOT / "benchmarks" / script
    if not path.exists():
        pytest.skip("no benchmarks/ in this checkout")
    proc = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "error:" in proc.stderr and "Traceback" not in proc.stderr


def test_an_installed_package_carries_the_benchmarks(tmp_path: Path) -> None:
    """A wheel has no benchmarks/ beside the package: the build copies it into
    kn_sock/_benchmarks, where ``kn-sock bench`` finds it. Built here without the extension,
    which also shows what an install without a compiler reports."""
    if not (ROOT / "benchmarks" / "bench_speedups.py").exists():
        pytest.skip("no benchmarks/ in this checkout")
    pytest.importorskip("setuptools")  # not in a fresh venv of Python 3.12+
    env = {**os.environ, "KN_SOCK_BUILD_EXTENSION": "no"}
    env.pop("KN_SOCK_PURE", None)
    build = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    assert (tmp_path / "kn_sock" / "_benchmarks" / "_common.py").exists()
    for built in (tmp_path / "kn_sock").glob("_speedups*"):  # copied from this checkout's build
        if built.suffix in (".so", ".pyd"):
            built.unlink()
    env["PYTHONPATH"] = str(tmp_path)
    probe = subprocess.run(  # -S: no site-packages, where an editable install would map _speedups
        [sys.executable, "-S", "-c", "import kn_sock, kn_sock._backend as b, kn_sock.cli as c;"
         "print(kn_sock.__file__, kn_sock.IMPLEMENTATION, c.benchmarks_dir(), b.IMPORT_ERROR, sep='|')"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT,
    )
    where, impl, bench_dir, reason = probe.stdout.strip().split("|")
    assert where.startswith(str(tmp_path)) and impl == "pure"
    assert bench_dir == str(tmp_path / "kn_sock" / "_benchmarks")
    assert reason == "the C extension is not built (installed without a C compiler or Cython)"
    proc = subprocess.run(
        [sys.executable, "-m", "kn_sock", "bench", "--quick", "--suite", "speedups"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "## Masking" in proc.stdout
    # The benchmark children: the package's own directory is never on their path (its
    # asyncio subpackage shadowed the standard library's: every asyncio row failed).
    probe = subprocess.run(
        [sys.executable, "-S", "-c", "import sys; sys.path.insert(0, sys.argv[1]); import _common as C, subprocess;"
         "env = C.clean_env(); print(C.CHECKOUT); subprocess.run([sys.executable, '-S', '-c',"
         " 'import asyncio; print(asyncio.run.__module__)'], env=env, cwd=C.CHECKOUT or C.HERE, check=True)",
         str(bench_dir)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert probe.stdout.split() == ["None", "asyncio.runners"]
