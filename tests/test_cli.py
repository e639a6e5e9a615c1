"""The command line (``python -m kn_sock``), driven through subprocesses as a user would.

Servers listen on 127.0.0.1 port 0: the first stdout line of ``serve`` names the real port.
Every subprocess has a timeout, and every server started here is stopped (SIGTERM, then kill).
"""

from __future__ import annotations

import os
import platform
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

import kn_sock
from asyncio_support import make_tls_contexts
from sync_support import free_port

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



# ------------------------------------------------------------------ --version, help


def test_version_names_the_implementation() -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith(f"kn_sock {kn_sock.__version__} ({kn_sock.IMPLEMENTATION})")


def test_version_under_forced_pure_twin() -> None:
    env = {**os.environ, "KN_SOCK_PURE": "1"}
    proc = subprocess.run([sys.executable, "-m", "kn_sock", "--version"], capture_output=True, text=True,
                          timeout=TIMEOUT, env=env)
    assert "(pure)" in proc.stdout and "[pure: KN_SOCK_PURE is set]" in proc.stdout


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


def test_connect_through_a_proxy(server: Server) -> None:
    from proxy_support import ConnectProxy

    with ConnectProxy() as proxy:
        proc = run_cli("connect", server.uri, "--proxy", proxy.url, input="tunnelled\n")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines() == ["tunnelled"]
        assert proxy.requests and proxy.requests[0].startswith(b"CONNECT 127.0.0.1:")
    with ConnectProxy(credentials="Basic x") as proxy:
        proc = run_cli("connect", server.uri, "--proxy", proxy.url, input="")
        assert proc.returncode == 1
        assert_one_line_error(proc, "the proxy refused the tunnel: HTTP 407", "--proxy http://user:password@")
    proc = run_cli("connect", server.uri, "--proxy", "socks5://127.0.0.1:1", input="")
    assert proc.returncode == 2
    assert_one_line_error(proc, "invalid URI", "socks5")


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
        ("drop", 3, "error: connection lost: 1006 (no close frame)"),
        ("1000", 0, "connection closed: 1000 'boom'"),
        ("1001", 0, "connection closed: 1001 'boom'"),
        ("1005", 0, "connection closed: 1005"),  # a close frame with no code: normal too
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
            ws.close(int(end), "" if end == "1005" else "boom")

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


def _quick_bench_echo(only: str, needs: str, duration: str) -> subprocess.CompletedProcess[str]:
    """``bench_echo.py --quick`` for the rows ``only`` at 64 B, one round; skips without the
    benchmarks or the peer module ``needs``; asserts exit 0."""
    if not (ROOT / "benchmarks" / "bench_echo.py").exists():
        pytest.skip("no benchmarks/ in this checkout")
    pytest.importorskip(needs)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_echo.py"), "--quick", "--only", only,
         "--cells", "64 B", "--rounds", "1", "--duration", duration],
        capture_output=True, text=True, timeout=90, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


@pytest.mark.slow
def test_bench_echo_mixed_rows_check_only_their_kn_sock_end() -> None:
    """The mixed rows pair kn_sock with a picows end, which reports no kn_sock implementation:
    only the kn_sock end is checked (with both ends checked, both rows were always skipped)."""
    proc = _quick_bench_echo("kn_server_picows,kn_client_picows", "picows", "0.1")
    for label in ("kn_sock server, picows client (cython)", "kn_sock client, picows server (cython)"):
        row = re.search(rf"^\| {re.escape(label)} +\| [\d.]+k? ", proc.stdout, re.M)
        skipped = f"{label}: skipped, the Cython extension is not in use" in proc.stdout
        assert row or skipped, proc.stdout[-2000:]
    assert "unreported" not in proc.stdout and "FAILED" not in proc.stdout, proc.stdout[-2000:]


@pytest.mark.slow
def test_bench_echo_compares_the_pure_twin_with_an_all_python_websockets() -> None:
    """``websockets_py`` runs websockets with its C masking kept from loading (the child checks
    that its frames mask in Python), and a line gives kn_sock's pure twin against it."""
    proc = _quick_bench_echo("kn_pure,websockets_py,websockets", "websockets", "0.05")
    assert re.search(r"^\| websockets \(asyncio, no C speedups\) +\| [\d.]+k? ", proc.stdout, re.M), proc.stdout
    assert re.search(r"^\| kn_sock asyncio \(pure\) .*\| [\d.]+ +\|$", proc.stdout, re.M), proc.stdout  # vs websockets
    assert re.search(r"^kn_sock asyncio \(pure\) / websockets without its C speedups .*: [\d.]+$", proc.stdout, re.M)


@pytest.mark.slow
def test_bench_deflate_negotiates_deflate_and_compares_with_websockets() -> None:
    """``bench_deflate.py``: every row checks what it claims (permessage-deflate negotiated or
    not, the kn_sock twin), echoes are checked, and rows get a ratio against websockets."""
    if not (ROOT / "benchmarks" / "bench_deflate.py").exists():
        pytest.skip("no benchmarks/ in this checkout")
    pytest.importorskip("websockets")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_deflate.py"), "--quick", "--only",
         "kn_cython,kn_pure,websockets,kn_cython_off", "--cells", "json 100 B,random 64 KiB", "--duration", "0.05"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    notes = [line for line in proc.stdout.splitlines() if line.startswith("note:")]
    # (Without the Cython extension, its rows are left out, saying so: checked, not measured.)
    assert all(re.match(r"note: kn_cython(_off)?: server runs kn_sock pure, not cython$", n) for n in notes), notes
    for label in ("kn_sock (pure), deflate", "websockets, deflate", "kn_sock (Cython), deflate", "kn_sock (Cython), off"):
        row = re.search(rf"^\| {re.escape(label)} +\| [\d.]+k? +\| [\d.]+k? ", proc.stdout, re.M)
        assert row or ("Cython" in label and notes), proc.stdout
    assert re.search(r"^\| kn_sock \(pure\), deflate .*\| [\d.]+ / [\d.]+ +\|$", proc.stdout, re.M), proc.stdout


@pytest.mark.slow
def test_bench_server_loads_every_server_alike() -> None:
    """``bench_server.py``: one load generator, many connections, against each server; kn_sock
    rows get a ratio to the raw echo of their group and one against picows / websockets."""
    if not (ROOT / "benchmarks" / "bench_server.py").exists():
        pytest.skip("no benchmarks/ in this checkout")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_server.py"), "--quick", "--only",
         "raw_async,kn_pure,kn_cython,raw_sync,kn_sync", "--conns", "1,3", "--duration", "0.1", "--warmup", "0"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for label in ("kn_sock asyncio (pure)", "kn_sock sync (", "kn_sock asyncio (cython)"):
        row = re.search(rf"^\| {re.escape(label)}.*\| [\d.]+k? \([\d.]+\) +\| [\d.]+k? \([\d.]+\) +\|", proc.stdout, re.M)
        assert row or (label.endswith("(cython)") and "the Cython extension is not in use" in proc.stdout), proc.stdout
    assert re.search(r"^\| raw asyncio echo \(limit\) +\| [\d.]+k? +\| [\d.]+k? +\|", proc.stdout, re.M), proc.stdout


def test_bench_server_load_checks_the_echoes() -> None:
    """The load generator fails a server that echoes the wrong bytes (here: the masked frame as
    it came, after a proper handshake), rather than counting them."""
    if not (ROOT / "benchmarks" / "bench_server.py").exists():
        pytest.skip("no benchmarks/ in this checkout")
    from sync_support import RawServer

    listener = RawServer()

    def serve() -> None:
        peer = listener.accept_ws(compression=None)  # a proper handshake, then the bytes as they came
        with peer.sock as conn:
            try:
                while data := conn.recv(4096):
                    conn.sendall(data)
            except OSError:  # (a timeout: the load generator waits for an end that never comes)
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    stdin, keep_open = os.pipe()  # (a benchmark child exits when its stdin closes)
    try:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "benchmarks" / "bench_server.py"), "--load", "kn_async", "--port",
             str(listener.port), "--conns", "1", "--duration", "0.1", "--warmup", "0"],
            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )
        out, err = proc.communicate(timeout=60)
    finally:
        listener.close()
        os.close(stdin)
        os.close(keep_open)
        thread.join(10)
    assert "RESULT " in out, err[-2000:]
    assert '"results": {}' in out and "echo mismatch" in out, out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--only", "kn_pure,typo"], "not an option or contestant of any suite chosen: --only typo"),
        (["--quik"], "not an option or contestant of any suite chosen: --quik"),
        (["--rounds", "0"], "echo: bench_echo.py: error: argument --rounds: must be at least 1: 0"),
    ],
)
def test_bench_several_suites_check_the_arguments_first(args: list[str], message: str) -> None:
    """With several suites, each ignored the others' options and ids, so a typo that every
    suite ignored ran everything and exited 0 (audit 82's finding): the arguments are checked
    by every suite first, and such a typo, or a bad value, is a usage error before any run."""
    if not (ROOT / "benchmarks" / "bench_echo.py").exists():
        pytest.skip("no benchmarks/ in this checkout")
    proc = run_cli("bench", "--quick", "--suite", "speedups", "--suite", "echo", *args, timeout=60)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert message in proc.stderr
    assert "== [1/2]" not in proc.stdout  # nothing ran


def test_bench_one_suite_with_a_bad_option_is_a_usage_error() -> None:
    """Exit 2, as with several suites, not 1 as if the benchmark had failed (audit)."""
    if not (ROOT / "benchmarks" / "bench_speedups.py").exists():
        pytest.skip("no benchmarks/ in this checkout")
    proc = run_cli("bench", "--suite", "speedups", "--bogus", timeout=60)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "unrecognized arguments: --bogus" in proc.stderr and "FAILED" not in proc.stdout


@pytest.mark.parametrize(
    "script, args",
    [("bench_speedups.py", ["--bogus"]), ("bench_echo.py", ["--only", "nosuch"]), ("bench_conns.py", ["--only", "nosuch"]),
     ("bench_deflate.py", ["--only", "nosuch"]), ("bench_deflate.py", ["--cells", "json 1 GiB"]),
     ("bench_server.py", ["--only", "nosuch"])],
)
def test_bench_scripts_refuse_unknown_options_and_contestants(script: str, args: list[str]) -> None:
    """A usage error (exit 2), not a silent run or an empty table (regression audit 57)."""
    path = ROOT / "benchmarks" / script
    if not path.exists():
        pytest.skip("no benchmarks/ in this checkout")
    proc = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "error:" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "script, args",
    [("bench_echo.py", ["--window", "0"]), ("bench_echo.py", ["--duration", "-1"]), ("bench_echo.py", ["--rounds", "0"]),
     ("bench_conns.py", ["--conns", "abc"]), ("bench_conns.py", ["--concurrency", "0"]),
     ("bench_deflate.py", ["--rounds", "0"]), ("bench_deflate.py", ["--duration", "0"]),
     ("bench_server.py", ["--conns", "0"]), ("bench_server.py", ["--conns", "abc"]), ("bench_server.py", ["--size", "0"])],
)
def test_bench_scripts_refuse_meaningless_numbers(script: str, args: list[str]) -> None:
    """A usage error, not a hang or a table of nothing (audit 82)."""
    path = ROOT / "benchmarks" / script
    if not path.exists():
        pytest.skip("no benchmarks/ in this checkout")
    proc = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 2 and "error:" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def _descendants(pid: int) -> set[int]:
    """The processes below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _terminate(proc: subprocess.Popen[str], below: set[int]) -> tuple[str, float]:
    """SIGTERM to ``kn-sock bench``: it exits 143 saying so, and every process it had started
    (``below``) is gone within 5 s. Returns its output and how long it took to exit."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    seconds = time.monotonic() - started
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "stopped by SIGTERM" in out
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in below) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in below)
    return out, seconds


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
def test_bench_sigterm_stops_the_running_suite_and_its_processes() -> None:
    """SIGTERM to ``kn-sock bench`` reaches the running script, which stops its servers and
    clients (audit 82: the suite ran on to its end)."""
    if not (ROOT / "benchmarks" / "bench_echo.py").exists():
        pytest.skip("no benchmarks/ in this checkout")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kn_sock", "bench", "--suite", "echo", "--only", "raw_async,kn_pure",
         "--cells", "64 B", "--rounds", "3", "--duration", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        lines = []
        while "round 1/3" not in (line := proc.stdout.readline()):  # a client is running now
            assert line, "".join(lines)
            lines.append(line)
        below = _descendants(proc.pid)
        assert below
        out, seconds = _terminate(proc, below)
        assert seconds < 10, out
    finally:
        proc.kill()
        proc.wait()


def test_an_installed_package_carries_the_benchmarks(tmp_path: Path) -> None:
    """A wheel has no benchmarks/ beside the package: the build copies it into
    kn_sock/_benchmarks, where ``kn-sock bench`` finds it. Built here without the extension,
    which also shows what an install without a compiler reports."""
    if not (ROOT / "benchmarks" / "bench_speedups.py").exists():
        pytest.skip("no benchmarks/ in this checkout")
    # (not in a fresh venv of Python 3.12+; pyproject.toml's license needs 77, which the test
    # extra installs, not an older venv's own)
    pytest.importorskip("setuptools", minversion="77")
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
    assert reason == "the C extension is not built (installed without a C compiler or Cython, or with KN_SOCK_BUILD_EXTENSION=no)"
    version = subprocess.run([sys.executable, "-S", "-m", "kn_sock", "--version"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=TIMEOUT)
    assert version.stdout.rstrip().endswith(f"(pure) Python {platform.python_version()} [pure: {reason}]"), version.stdout
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


# ------------------------------------------------------------------ audit of the command line


def read_line_within(stream, timeout: float = TIMEOUT) -> str:  # type: ignore[no-untyped-def]
    """One line of a subprocess pipe, or "" if none came within ``timeout``."""
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return box[0] if box else ""


@pytest.mark.parametrize(
    ("encoding", "data", "echoed"),
    [
        ("utf-8:strict", b"x\xff\n", ["x\ufffd"]),  # the stdin thread died: a hang
        (None, b"x\xff\xfey\nok\nz\xff\n", ["x\ufffd\ufffdy", "ok", "z\ufffd"]),  # a traceback from send()
    ],
)
def test_connect_input_not_utf8_is_sent_with_replacement_characters(
    server: Server, encoding: str | None, data: bytes, echoed: list[str]
) -> None:
    env = {**os.environ}
    env.pop("PYTHONIOENCODING", None)
    if encoding:
        env["PYTHONIOENCODING"] = encoding
    proc = subprocess.run([sys.executable, "-m", "kn_sock", "connect", server.uri], input=data,
                          capture_output=True, timeout=TIMEOUT, cwd=ROOT, env=env)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, err
    assert proc.stdout.decode("utf-8").splitlines() == echoed
    assert "Traceback" not in err and err.count("not valid UTF-8") == 1, err


def test_connect_stdin_read_error_ends_the_session_with_one_error_line(server: Server) -> None:
    """stdin fails (a socket reset by its peer): one ``error:`` line and exit 1, not a hang."""
    listener = socket.create_server(("127.0.0.1", 0))
    with listener, socket.create_connection(listener.getsockname()[:2], timeout=TIMEOUT) as stdin:
        peer, _ = listener.accept()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # a reset: stdin's first read fails with ECONNRESET
        proc = subprocess.run([sys.executable, "-m", "kn_sock", "connect", server.uri], stdin=stdin.fileno(),
                              capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT)
    assert proc.returncode == 1, proc.stderr
    assert_one_line_error(proc, "cannot read stdin")


@pytest.mark.parametrize("option", [["-k"], ["--insecure"], ["--cafile", "missing.pem"]])
def test_connect_tls_options_are_ignored_for_ws(server: Server, option: list[str]) -> None:
    proc = run_cli("connect", server.uri, *option, input="plain\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["plain"]
    assert "ignored" in proc.stderr and "Traceback" not in proc.stderr


def _raw_server(frame: bytes, got: list[bytes]) -> tuple[socket.socket, threading.Thread]:
    """A minimal WebSocket server: accepts the upgrade, sends ``frame``, then reads until EOF
    (what it reads, the client's close frame, goes to ``got``)."""
    import base64
    import hashlib

    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            key = re.search(rb"(?i)sec-websocket-key: *(\S+)", request).group(1)  # type: ignore[union-attr]
            accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n" + frame)
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            got.append(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def _close_code_of(frame: bytes) -> int:
    """The code of a masked (client) close frame."""
    assert frame[0] == 0x88, frame
    mask, payload = frame[2:6], frame[6:8]
    return int.from_bytes(bytes(b ^ mask[i] for i, b in enumerate(payload)), "big")


@pytest.mark.parametrize(
    ("frame", "options", "code", "shown"),
    [
        (b"\x82\x14" + b"x" * 20, ["--max-size", "10"], 1009, "message too big"),
        (b"\x82\x7f" + (2**20 + 1).to_bytes(8, "big") + bytes(2**20 + 1), [], 1009, "--max-size raises"),
        (b"\x81\x02\xff\xfe", [], 1007, "invalid UTF-8"),
    ],
    ids=["max-size-option", "default-max-size", "invalid-utf8"],
)
def test_connect_reports_a_connection_the_client_failed(frame: bytes, options: list[str], code: int, shown: str) -> None:
    """The server's message is too big or not UTF-8: our side closed (1009 / 1007), not the server."""
    got: list[bytes] = []
    listener, thread = _raw_server(frame, got)
    try:
        with subprocess.Popen([sys.executable, "-m", "kn_sock", "connect", "--no-compression", *options,
                               f"ws://127.0.0.1:{listener.getsockname()[1]}/"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT) as proc:
            try:
                proc.wait(TIMEOUT)  # stdin stays open: the end is the failure's, not the input's
            finally:
                if proc.poll() is None:
                    proc.kill()
                _, err = proc.communicate()
        thread.join(TIMEOUT)
    finally:
        listener.close()
    assert proc.returncode == 3, err
    assert_one_line_error(subprocess.CompletedProcess([], 3, "", err), f"closed by the client: {code}", shown)
    assert got and _close_code_of(got[0]) == code


def test_connect_linger_does_not_count_a_greeting_as_a_reply() -> None:
    """The server greets on connect, then echoes after a while: linger waits for the echo."""
    from kn_sock import WebSocketServer

    def handler(ws, address) -> None:  # type: ignore[no-untyped-def]
        ws.send("welcome")
        msg = ws.recv(TIMEOUT)
        time.sleep(1.0)  # a slow reply (the old rule took the greeting for it and closed)
        ws.send(msg)
        ws.recv(TIMEOUT)

    with WebSocketServer("127.0.0.1", 0, handler) as srv:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        proc = subprocess.Popen([sys.executable, "-m", "kn_sock", "connect", "--linger", "10",
                                 f"ws://127.0.0.1:{srv.port}/"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            assert read_line_within(proc.stdout) == "welcome\n"  # before anything was sent
            out, err = proc.communicate("hi\n", timeout=TIMEOUT)  # (nothing more came before "hi")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, err
    assert out.splitlines() == ["hi"], err


def test_connect_sigterm_closes_with_1001() -> None:
    from kn_sock import WebSocketServer

    codes: list[int | None] = []
    done = threading.Event()

    def handler(ws, address) -> None:  # type: ignore[no-untyped-def]
        for _ in ws:
            pass
        codes.append(ws.close_code)
        done.set()

    with WebSocketServer("127.0.0.1", 0, handler) as srv:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        proc = subprocess.Popen([sys.executable, "-m", "kn_sock", "connect", f"ws://127.0.0.1:{srv.port}/"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=ROOT)
        try:
            assert read_line_within(proc.stderr).startswith("connected to")
            proc.send_signal(signal.SIGTERM)
            proc.wait(TIMEOUT)
            assert done.wait(TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
            _, err = proc.communicate()
    assert proc.returncode == 143, err
    assert codes == [1001] and "Traceback" not in err
    assert "143" in run_cli("--help").stdout


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
def test_bench_sigterm_during_the_argument_check(tmp_path: Path) -> None:
    """SIGTERM while the suites check the arguments reaches the checking script too (audit 91:
    it was left running, its temporary directory behind)."""
    (tmp_path / "_common.py").write_text("")
    hang = "import os, sys, time\nif os.environ.get('KN_SOCK_BENCH_CHECK'):\n    print('checking', flush=True, file=sys.stderr); time.sleep(60)\n"
    for name in ("bench_echo.py", "bench_conns.py"):
        (tmp_path / name).write_text(hang)
    code = ("import sys; from pathlib import Path; from kn_sock import cli; "
            f"cli.benchmarks_dir = lambda: Path({str(tmp_path)!r}); "
            "sys.exit(cli.main(['bench', '--suite', 'echo', '--suite', 'conns']))")
    before = set(os.listdir(tempfile.gettempdir()))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while not _descendants(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        below = _descendants(proc.pid)
        assert below
        time.sleep(0.3)  # (the script's interpreter up, in its sleep)
        _terminate(proc, below)
        left = {n for n in set(os.listdir(tempfile.gettempdir())) - before if n.startswith("kn_sock-bench-")}
        assert not left
    finally:
        proc.kill()
        proc.wait()


def test_bench_json_with_several_suites_writes_one_file_per_suite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kn_sock import cli

    script = ("import argparse, json, os, sys\n"
              "ap = argparse.ArgumentParser(); ap.add_argument('--json'); args, _ = ap.parse_known_args()\n"
              "json.dump({'suite': os.path.basename(sys.argv[0])}, open(args.json, 'w'))\n")
    for name in ("_common.py", "bench_echo.py", "bench_conns.py"):
        (tmp_path / name).write_text(script)
    monkeypatch.setattr(cli, "benchmarks_dir", lambda: tmp_path)
    assert cli.main(["bench", "--suite", "echo", "--suite", "conns", "--json", str(tmp_path / "r.json")]) == 0
    assert cli.main(["bench", "--suite", "echo", "--suite", "conns", f"--json={tmp_path / 'x'}"]) == 0
    import json

    assert json.loads((tmp_path / "r.echo.json").read_text()) == {"suite": "bench_echo.py"}
    assert json.loads((tmp_path / "r.conns.json").read_text()) == {"suite": "bench_conns.py"}
    assert (tmp_path / "x.echo").exists() and (tmp_path / "x.conns").exists()
    assert not (tmp_path / "r.json").exists()
    assert cli.main(["bench", "--suite", "echo", "--json", str(tmp_path / "one.json")]) == 0  # one suite: as given
    assert (tmp_path / "one.json").exists()


@pytest.mark.parametrize("where", ["{port}", "x"])
def test_connect_error_lines_redact_the_password(where: str) -> None:
    proc = run_cli("connect", f"ws://user:s3cret@127.0.0.1:{where.format(port=free_port())}/", input="")
    assert_one_line_error(proc, "ws://user:***@127.0.0.1:")
    assert "s3cret" not in proc.stderr


def test_no_command_prints_usage_on_stderr() -> None:
    proc = run_cli()
    assert proc.returncode == 2
    assert proc.stdout == "" and proc.stderr.startswith("usage: kn-sock")


def test_serve_banner_for_every_interface(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``--host ""`` binds every interface: the banner names 0.0.0.0, not ``ws://:PORT/``
    (the server is replaced here: the test listens on 127.0.0.1 only)."""
    from kn_sock import cli

    monkeypatch.setattr(cli, "_serve_async", lambda args, tls, banner: banner(4321) or 0)
    assert cli.main(["serve", "--host", "", "--port", "0"]) == 0
    assert "echo server on ws://0.0.0.0:4321/" in capsys.readouterr().out


def test_a_peers_control_characters_are_shown_not_obeyed_on_a_terminal() -> None:
    """Escape sequences in a peer's text (window title, clear screen, CR overwriting a line)
    are escaped where the CLI shows them on a terminal and in the ``serve -v`` log (audit 87);
    tabs, newlines and other characters stay as they are."""
    from kn_sock.cli import _printable, _short

    hostile = "hi\x1b]0;PWNED\x07\x1b[2J\rover\x9b31m\x00\x7f"
    shown = _printable(hostile)
    assert not any(ch in shown for ch in "\x1b\x07\r\x9b\x00\x7f")
    assert shown == "hi\\x1b]0;PWNED\\x07\\x1b[2J\\x0dover\\x9b31m\\x00\\x7f"
    assert _printable("tab\tnew\nline é ☃") == "tab\tnew\nline é ☃"
    assert "\x1b" not in _short("a\x1bb") and _short(b"\x1b") == repr(b"\x1b")
    # In the log, a peer's LF would forge a line of its own (audit 88).
    assert _short("hello\n127.0.0.1:1 closed") == "hello\\x0a127.0.0.1:1 closed"
