"""The ``kn-sock`` / ``python -m kn_sock`` command line: serve, connect, demo, bench.

Exit codes (also in ``kn-sock --help`` and docs/guide.md):

    0    success (for ``connect``: we closed, or the server closed with 1000 / 1001 / no code)
    1    could not connect or serve: refused, DNS, timeout, TLS, handshake rejected
         (the HTTP status is shown), port in use, unreadable certificate; a benchmark failed
    2    bad command line, including an invalid URI
    3    ``connect``: the connection was closed with an error code or lost (1006), by the
         server or by the client (e.g. a message over ``--max-size``: 1009)
    130  interrupted (Ctrl-C) — except ``serve``, for which Ctrl-C / SIGTERM is the normal stop
    143  ``connect``: stopped by SIGTERM (after closing with 1001, as on Ctrl-C)

Expected failures print one ``error: ...`` line on stderr, never a traceback. The library's
own log lines (``logging.getLogger("kn_sock")``) go to stderr; the CLI's output to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import http
import logging
import os
import platform
import queue
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from . import __version__
from ._backend import IMPLEMENTATION
from .exceptions import ConnectionClosed, InvalidHandshake, InvalidProxyStatus, InvalidStatus, InvalidURI, WebSocketError
from .options import Options

__all__ = ["main", "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE", "EXIT_CLOSED", "EXIT_INTERRUPTED", "EXIT_TERMINATED"]

logger = logging.getLogger("kn_sock")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CLOSED = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM

#: ``connect``: after stdin ends, wait at most this long for replies still due (seconds).
DEFAULT_LINGER = 2.0
#: ``connect``: once as many messages came back as were sent, wait this long for stragglers.
_QUIET = 0.1
_NORMAL_CLOSE = (1000, 1001, 1005)  # as ConnectionClosedOK


class CLIError(Exception):
    """An expected failure: printed as one ``error:`` line, exits with ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def _out(text: str) -> None:
    """Write one line to stdout (the CLI's output; the library itself only logs)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _err(text: str) -> None:
    """Write one line to stderr (status lines and errors)."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _addr(address: Any) -> str:
    """``('127.0.0.1', 5000)`` → ``127.0.0.1:5000``; IPv6 in brackets."""
    if isinstance(address, tuple) and len(address) >= 2:
        host = address[0]
        return f"[{host}]:{address[1]}" if ":" in str(host) else f"{host}:{address[1]}"
    return str(address or "?")


def _redact(uri: str) -> str:
    """``ws://user:pw@host/`` → ``ws://user:***@host/``: no password in what we print."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i != -1), default=len(rest))
    user_info, at, host = rest[:cut].rpartition("@")
    if not at or ":" not in user_info:
        return uri
    return f"{scheme}://{user_info.partition(':')[0]}:***@{host}{rest[cut:]}"


class _Terminated(KeyboardInterrupt):
    """SIGTERM during ``connect``: raised in the main thread, handled as Ctrl-C (close 1001)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated()


def _interrupted(exc: KeyboardInterrupt) -> int:
    return EXIT_TERMINATED if isinstance(exc, _Terminated) else EXIT_INTERRUPTED


#: C0 controls but TAB and LF, DEL and the C1 controls: what a peer's text must not send to
#: a terminal (escape sequences rewrite the screen or the window title; CR overwrites a line).
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


#: The same and TAB and LF, for a log line (a peer's LF would start a line of its own).
_LOG_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")


def _printable(text: str, controls: re.Pattern[str] = _CONTROLS) -> str:
    """``text`` with the control characters a terminal would act on shown escaped (``\\x1b``)."""
    return controls.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _short(message: Any, limit: int = 60) -> str:
    text = repr(message) if isinstance(message, (bytes, bytearray)) else _printable(str(message), _LOG_CONTROLS)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------- serve


def _server_tls(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The server's TLS context from PEM files, or None without ``--tls-cert``."""
    if not cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise CLIError(f"cannot load the TLS certificate {cert!r}: {exc}") from None
    return ctx


class _EchoLog:
    """The echo handlers' readable connection log: open, messages (``-v``), close."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose

    def opened(self, ws: Any, address: Any) -> None:
        ext = ", ".join(ws.extensions) or "no extensions"
        logger.info("%s connected, path %s (%s)", _addr(address), ws.path, ext)

    def message(self, address: Any, msg: Any) -> None:
        if self.verbose:
            kind = "binary" if isinstance(msg, (bytes, bytearray)) else "text"
            logger.info("%s %s %d: %s", _addr(address), kind, len(msg), _short(msg))

    def closed(self, ws: Any, address: Any, count: int) -> None:
        reason = f" {ws.close_reason!r}" if ws.close_reason else ""
        logger.info("%s closed: code %s%s, messages echoed: %d", _addr(address), ws.close_code, reason, count)


def _serve_sync(args: argparse.Namespace, tls: ssl.SSLContext | None, banner: Callable[[int], None]) -> int:
    from .sync import WebSocketServer

    log = _EchoLog(args.verbose)

    def handler(ws: Any, address: Any) -> None:
        log.opened(ws, address)
        count = 0
        try:
            for msg in ws:
                log.message(address, msg)
                ws.send(msg)
                count += 1
        except ConnectionClosed:
            pass
        log.closed(ws, address, count)

    try:
        server = WebSocketServer(args.host, args.port, handler, ssl=tls)
    except OSError as exc:
        raise _listen_error(args, exc) from None
    # SIGTERM stops the server like Ctrl-C: serve_forever's cleanup closes connections with 1001.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with server:
        banner(server.port)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    logger.info("server stopped")
    return EXIT_OK


def _serve_async(args: argparse.Namespace, tls: ssl.SSLContext | None, banner: Callable[[int], None]) -> int:
    from .asyncio.server import start_async_websocket_server

    log = _EchoLog(args.verbose)

    async def handler(ws: Any, path: str) -> None:
        address = ws.remote_address
        log.opened(ws, address)
        count = 0
        try:
            async for msg in ws:
                log.message(address, msg)
                await ws.send(msg)
                count += 1
        except ConnectionClosed:
            pass
        log.closed(ws, address, count)

    async def run() -> None:
        try:
            server = await start_async_websocket_server(args.host, args.port, handler, ssl=tls)
        except OSError as exc:
            raise _listen_error(args, exc) from None
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        banner(server.port)
        try:
            await server.serve_forever()  # closes every connection with 1001 when cancelled
        except asyncio.CancelledError:
            pass

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    logger.info("server stopped")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    """Run an echo server until Ctrl-C or SIGTERM; the first stdout line names the real port."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.tls_key and not args.tls_cert:
        raise CLIError("--tls-key needs --tls-cert", EXIT_USAGE)
    tls = _server_tls(args.tls_cert, args.tls_key)
    scheme = "wss" if tls else "ws"
    style = "blocking" if args.sync else "asyncio"
    host = args.host or "0.0.0.0"  # "" binds every interface; "ws://:8765/" is no address
    host = f"[{host}]" if ":" in host else host

    def banner(port: int) -> None:
        _out(f"kn_sock {__version__} ({IMPLEMENTATION}) {style} echo server on {scheme}://{host}:{port}/")
        _err("press Ctrl-C to stop")

    return (_serve_sync if args.sync else _serve_async)(args, tls, banner)


# ---------------------------------------------------------------- connect


def _client_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The client's TLS context when ``--cafile`` or ``--insecure`` asks for a special one."""
    if not (args.cafile or args.insecure):
        return None
    try:
        ctx = ssl.create_default_context(cafile=args.cafile)
    except (OSError, ssl.SSLError) as exc:
        raise CLIError(f"cannot load the CA file {args.cafile!r}: {exc}") from None
    if args.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _open_client(args: argparse.Namespace, shown: str) -> Any:
    """Connect, turning every expected failure into a one-line ``CLIError``.

    ``shown``: the URI as printed (password redacted).
    """
    from .sync import connect_websocket
    from .uri import parse_uri

    def hide(text: str) -> str:
        return text.replace(args.uri, shown)

    options: dict[str, Any] = {"open_timeout": args.timeout}
    if args.no_compression:
        options["compression"] = None
    if args.subprotocol:
        options["subprotocols"] = args.subprotocol
    if args.max_size is not None:
        options["max_size"] = args.max_size or None  # 0: no limit
    if args.proxy:
        options["proxy"] = True if args.proxy == "env" else args.proxy
    try:
        secure = parse_uri(args.uri).secure
        if secure:
            tls = _client_tls(args)
            if tls is not None:
                options["ssl"] = tls
        elif args.cafile or args.insecure:
            _err("note: --cafile / --insecure ignored: a ws:// URI does not use TLS")
        return connect_websocket(args.uri, **options)
    except InvalidURI as exc:
        raise CLIError(hide(f"invalid URI: {exc}"), EXIT_USAGE) from None
    except InvalidStatus as exc:
        raise CLIError(f"{shown}: the server refused the WebSocket upgrade: HTTP {_status(exc.status)}") from None
    except InvalidProxyStatus as exc:
        hint = " (credentials: --proxy http://user:password@host:port)" if exc.status == 407 else ""
        raise CLIError(f"{shown}: the proxy refused the tunnel: HTTP {_status(exc.status)}{hint}") from None
    except InvalidHandshake as exc:
        raise CLIError(hide(f"{shown}: opening handshake failed: {exc}")) from None
    except ssl.SSLCertVerificationError as exc:
        hint = " (--cafile FILE trusts a certificate, --insecure skips the check)"
        raise CLIError(f"{shown}: TLS certificate check failed: {exc.verify_message or exc}{hint}") from None
    except ssl.SSLError as exc:
        raise CLIError(f"{shown}: TLS handshake failed: {exc.reason or exc}") from None
    except TimeoutError:
        raise CLIError(f"{shown}: timed out after {args.timeout:g} s") from None
    except OSError as exc:
        raise CLIError(hide(f"cannot connect to {shown}: {exc.strerror or exc}")) from None
    except UnicodeError as exc:  # a host name IDNA cannot encode ("a..b", a label over 63)
        raise CLIError(hide(f"invalid URI: {shown}: bad host name ({exc})"), EXIT_USAGE) from None
    except ValueError as exc:  # an option's value (a subprotocol that is not an HTTP token)
        raise CLIError(hide(str(exc)), EXIT_USAGE) from None


def _size(text: str) -> int:
    """argparse type: a number of bytes, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of bytes {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def _port(text: str) -> int:
    """argparse type: a TCP port number, 0-65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} out of range 0-65535")
    return port


def _seconds(text: str, zero: bool) -> float:
    """A number of seconds above 0 (or 0 too, with ``zero``); nan is refused."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not (value >= 0 if zero else value > 0):
        raise argparse.ArgumentTypeError(f"must be {'0 or more' if zero else 'above 0'}, not {text}")
    return value


def _positive(text: str) -> float:
    """argparse type: a number of seconds above 0."""
    return _seconds(text, zero=False)


def _not_negative(text: str) -> float:
    """argparse type: a number of seconds, 0 or more."""
    return _seconds(text, zero=True)


def _listen_error(args: argparse.Namespace, exc: OSError) -> CLIError:
    if isinstance(exc, socket.gaierror):  # resolver codes are not errno values
        why = exc.strerror or str(exc)
    else:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
    return CLIError(f"cannot listen on {args.host}:{args.port}: {why}")


def _status(code: int) -> str:
    try:
        return f"{code} {http.HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


class _Session:
    """State shared by the stdin reader, the WebSocket reader and the main thread of ``connect``.

    Both reader threads always end with one event: ``("eof", None)`` / ``("closed", None)``,
    or ``("failed", message)`` for an unexpected error (the session then ends with exit 1).
    """

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.cond = threading.Condition()
        self.sent = 0
        self.received = 0
        #: Messages received since the first one was sent (a greeting sent on connect is no reply).
        self.replies = 0
        self.last_activity = time.monotonic()
        self.finished = False
        self.decorate = sys.stdout.isatty()
        self.warned = False

    def _lines(self) -> Iterator[str]:
        """stdin's lines, decoded here in stdin's encoding (UTF-8 by default): bytes that do
        not decode become U+FFFD (with one warning), instead of killing the thread (strict decoding) or making send() fail
        (surrogateescape)."""
        stdin = sys.stdin
        if stdin is None:
            return
        buffer = getattr(stdin, "buffer", None)
        source: Iterator[Any] = iter(buffer) if buffer is not None else iter(stdin)
        encoding = getattr(stdin, "encoding", None) if buffer is not None else None
        try:
            encoding = codecs.lookup(encoding).name if encoding else "utf-8"
        except LookupError:
            encoding = "utf-8"
        for raw in source:
            if isinstance(raw, str):  # a text stdin without a buffer (replaced by the caller)
                encoding = "utf-8"
                try:
                    raw = raw.encode("utf-8", "surrogateescape")
                except UnicodeEncodeError:  # other lone surrogates: U+FFFD below
                    raw = raw.encode("utf-8", "surrogatepass")
            try:
                yield raw.decode(encoding)
            except UnicodeDecodeError:
                if not self.warned:
                    self.warned = True
                    shown = "UTF-8" if encoding == "utf-8" else encoding
                    _err(f"warning: input is not valid {shown}: the invalid bytes are sent as U+FFFD")
                yield raw.decode(encoding, "replace")

    def read_stdin(self) -> None:
        outcome: tuple[str, Any] = ("failed", "reading stdin stopped unexpectedly")
        try:
            for line in self._lines():
                self.events.put(("line", line.rstrip("\r\n")))
            outcome = ("eof", None)
        except Exception as exc:
            outcome = ("failed", f"cannot read stdin: {exc}")
        finally:
            self.events.put(outcome)

    def read_ws(self) -> None:
        outcome: tuple[str, Any] = ("closed", None)
        try:
            for msg in self.ws:
                with self.cond:  # decided before it is shown (what is shown may prompt a send)
                    reply = self.sent > 0
                text = repr(bytes(msg)) if isinstance(msg, (bytes, bytearray)) else msg
                # On a terminal, a peer's control characters are shown, not obeyed (audit 87);
                # piped, the text goes out as it came.
                _out(f"< {_printable(text)}" if self.decorate else text)
                with self.cond:
                    self.received += 1
                    if reply:
                        self.replies += 1
                    self.last_activity = time.monotonic()
                    self.cond.notify_all()
        except BrokenPipeError:
            pass
        except Exception as exc:
            outcome = ("failed", f"cannot show a message received: {exc}")
        finally:
            with self.cond:
                self.finished = True
                self.cond.notify_all()
            self.events.put(outcome)

    def linger(self, limit: float) -> None:
        """After stdin ended: wait (at most ``limit`` s) until every message sent has had a reply:
        as many messages received since the first one was sent as were sent."""
        deadline = time.monotonic() + limit
        with self.cond:
            while not self.finished:
                now = time.monotonic()
                if now >= deadline:
                    return
                if self.replies >= self.sent and now - self.last_activity >= _QUIET:
                    return
                self.cond.wait(min(deadline - now, _QUIET))


def _command(session: _Session, line: str) -> bool:
    """Handle one stdin line; False once the session should end (``/close``)."""
    ws = session.ws
    if line == "/ping":
        waiter = ws.ping()
        if waiter.wait(5):
            _err(f"pong in {waiter.rtt * 1000:.2f} ms")
        else:
            _err("no pong within 5 s")
        return True
    if line == "/close" or line.startswith("/close "):
        parts = line.split(None, 2)
        try:
            try:
                code = int(parts[1]) if len(parts) > 1 else 1000
            except ValueError:
                raise ValueError(f"{parts[1]!r} is not a close code (a number, e.g. 1000)") from None
            ws.close(code, parts[2] if len(parts) > 2 else "")
        except ValueError as exc:
            _err(f"error: /close [code] [reason]: {exc}")
            return True
        return False
    if line.startswith("//"):  # "//text" sends "/text"
        line = line[1:]
    elif line.startswith("/"):
        _err("commands: /ping, /close [code] [reason]; //text sends /text")
        return True
    with session.cond:
        session.sent += 1
        session.last_activity = time.monotonic()
    ws.send(line)
    return True


def cmd_connect(args: argparse.Namespace) -> int:
    """Interactive client: lines typed are sent, messages received are printed.

    SIGTERM is handled as Ctrl-C: close with 1001, then exit (143 instead of 130).
    """
    if threading.current_thread() is not threading.main_thread():
        return _connect(args)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _connect(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _connect(args: argparse.Namespace) -> int:
    shown = _redact(args.uri)
    ws = _open_client(args, shown)
    session = _Session(ws)
    reader = threading.Thread(target=session.read_ws, name="kn_sock-cli-reader", daemon=True)
    we_close = False  # we decided to close while the connection was still open
    try:  # (from here on, Ctrl-C / SIGTERM closes with 1001)
        reader.start()
        threading.Thread(target=session.read_stdin, name="kn_sock-cli-stdin", daemon=True).start()
        _err(f"connected to {shown} ({IMPLEMENTATION}); /ping, /close [code] [reason], EOF (Ctrl-D) to quit")
        while True:
            kind, line = session.events.get()
            if kind == "closed":
                break
            if kind == "failed":  # an unexpected error in a reader thread
                ws.close(1001)
                reader.join(2)
                raise CLIError(line)
            if kind == "eof":
                session.linger(args.linger)
                # The server may have closed (or TCP died) while we lingered: then its end decides.
                we_close = ws.open
                break
            was_open = ws.open
            if not _command(session, line):
                we_close = was_open
                break
    except ConnectionClosed:
        pass
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (_Terminated)
        ws.close(1001)
        if reader.ident is not None:
            reader.join(2)
        return _interrupted(exc)
    ws.close()
    reader.join(2)
    return _report_close(ws, we_close and ws.protocol.close_rcvd_then_sent is not True)


def _report_close(ws: Any, we_closed: bool) -> int:
    """Print how the connection ended; the exit code says how, not when input ended.

    0 when we started the closing handshake or the server closed with 1000 / 1001 / no code
    (1005); 3 when the server closed with another code, the connection was lost (1006), or the client
    library failed it (a message over max_size: 1009, invalid UTF-8: 1007, keepalive: 1011).
    """
    code, reason = ws.close_code, ws.close_reason
    detail = f"{code} {reason!r}" if reason else f"{code}"
    if we_closed or code in _NORMAL_CLOSE:
        _err(f"connection closed: {detail}")
        return EXIT_OK
    proto = ws.protocol
    error = proto.error  # the ProtocolError we failed the connection for (the server's input)
    if error is not None:
        hint = " (--max-size raises the limit)" if error.code == 1009 else ""
        _err(f"error: connection closed by the client: {error.code}, {error.reason}{hint}")
        return EXIT_CLOSED
    if proto.close_rcvd is None and proto.close_sent is not None:  # e.g. keepalive timeout
        sent_code, sent_reason = proto.close_sent
        _err(f"error: connection closed by the client: {sent_code}" + (f", {sent_reason}" if sent_reason else ""))
        return EXIT_CLOSED
    if proto.close_rcvd is None:  # no close frame: the TCP connection ended (1006)
        _err(f"error: connection lost: {detail} (no close frame)")
        return EXIT_CLOSED
    _err(f"error: connection closed by the server: {detail}")
    return EXIT_CLOSED


# ---------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    """Start an echo server, exchange messages with it, print the throughput."""
    asyncio.run(_demo(args.seconds))
    return EXIT_OK


async def _demo(seconds: float) -> None:
    from .asyncio.client import async_connect_websocket
    from .asyncio.server import start_async_websocket_server

    async def handler(ws: Any, path: str) -> None:
        async for msg in ws:
            await ws.send(msg)

    server = await start_async_websocket_server("127.0.0.1", 0, handler, compression=None)
    _out(f"kn_sock {__version__}, implementation: {IMPLEMENTATION}")
    _out(f"echo server on ws://127.0.0.1:{server.port}/")
    try:
        async with async_connect_websocket("127.0.0.1", server.port, compression=None) as ws:
            await ws.send("Hello WebSocket!")
            _out(f"sent 'Hello WebSocket!', received {await ws.recv()!r}")
            for size in (64, 1024, 65536):
                n, elapsed = await _round_trips(ws, os.urandom(size), seconds)
                _out(f"{size:>6} B: {n / elapsed:>9,.0f} round trips/s  {n * size * 2 / elapsed / 1e6:>8.1f} MB/s")
    finally:
        server.close()
        await server.wait_closed()
    _out("(client and server share one process here; `kn-sock bench` compares libraries)")


async def _round_trips(ws: Any, payload: bytes, seconds: float) -> tuple[int, float]:
    n = 0
    t0 = time.perf_counter()
    while True:
        await ws.send(payload)
        if await ws.recv() != payload:
            raise CLIError("demo: echo mismatch")
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return n, elapsed


# ---------------------------------------------------------------- bench

SUITES = {
    "speedups": "bench_speedups.py",
    "protocol": "bench_protocol.py",
    "echo": "bench_echo.py",
    "conns": "bench_conns.py",
    "deflate": "bench_deflate.py",
    "server": "bench_server.py",
}
DEFAULT_SUITES = ["speedups", "protocol", "echo"]


def benchmarks_dir() -> Path:
    """Where the benchmark scripts are: a source checkout's ``benchmarks/``, else the copy an
    installed package carries (``kn_sock/_benchmarks``)."""
    package = Path(__file__).resolve().parent
    checkout = package.parent / "benchmarks"
    return checkout if (checkout / "_common.py").exists() else package / "_benchmarks"


def cmd_bench(args: argparse.Namespace, extra: Sequence[str]) -> int:
    """Run the benchmark scripts (``benchmarks/``), one after the other."""
    root = benchmarks_dir()
    chosen = list(dict.fromkeys(args.suite or DEFAULT_SUITES))
    if len(chosen) > 1:
        problem, stopped_by = _check_suite_arguments(root, chosen, extra, args.quick)
        if stopped_by is not None:
            _out(f"== checking the arguments: stopped by {signal.Signals(stopped_by).name}")
            return 128 + stopped_by
        if problem:
            _err(f"error: {problem}")
            return EXIT_USAGE
    status = EXIT_OK
    started = time.perf_counter()
    for i, name in enumerate(chosen, 1):
        script = root / SUITES[name]
        tag = f"[{i}/{len(chosen)}] {name}"
        if not script.exists():
            _err(f"error: {tag}: {script} not found (an install without the benchmarks; a source checkout has them)")
            status = EXIT_FAILURE
            continue
        options = _per_suite_json(extra, name) if len(chosen) > 1 else list(extra)
        cmd = [sys.executable, str(script)] + (["--quick"] if args.quick else []) + options
        _out(f"== {tag}: {script.name}{' --quick' if args.quick else ''} ...")
        t0 = time.perf_counter()
        # (KN_SOCK_BENCH_SUITE: with several suites, an option or contestant id meant for
        # another one is ignored there, with a note; with one, it is an error, a typo.)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "KN_SOCK_BENCH_SUITE": str(len(chosen))}
        rc, stopped_by, _ = _run_suite(cmd, env)  # streams its tables as they come
        if stopped_by is not None:
            _out(f"== {tag}: stopped by {signal.Signals(stopped_by).name}")
            return 128 + stopped_by
        if rc == EXIT_USAGE and len(chosen) == 1:
            # argparse's exit: the command line is wrong (the script said how, above), as
            # with several suites, where the check above catches it before any run
            return EXIT_USAGE
        _out(f"== {tag}: {'done' if rc == 0 else f'FAILED (exit {rc})'} in {time.perf_counter() - t0:.1f} s")
        if rc != 0:
            status = EXIT_FAILURE
    _out(f"== {len(chosen)} suite(s) in {time.perf_counter() - started:.1f} s")
    return status


def _check_suite_arguments(
    root: Path, chosen: list[str], extra: Sequence[str], quick: bool
) -> tuple[str | None, int | None]:
    """With several suites, each ignores the options and contestant ids of the others: have each
    check the command line first (``KN_SOCK_BENCH_CHECK``; it exits before running anything), so
    that a bad value, or a name that every suite ignores (a typo), is an error before the run.
    Returns (the problem or None, the signal that stopped the check or None)."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory(prefix="kn_sock-bench-") as tmp:
        report = os.path.join(tmp, "ignored.jsonl")
        env = {**os.environ, "KN_SOCK_BENCH_SUITE": str(len(chosen)), "KN_SOCK_BENCH_CHECK": report}
        for name in chosen:
            script = root / SUITES[name]
            if not script.exists():
                return None, None  # (reported when it would run)
            cmd = [sys.executable, str(script)] + (["--quick"] if quick else []) + _per_suite_json(extra, name)
            rc, stopped_by, err = _run_suite(cmd, env, check_timeout=_CHECK_TIMEOUT)
            if stopped_by is not None:
                return None, stopped_by
            if rc != 0:
                return f"{name}: " + (err.strip().splitlines() or [f"exit {rc}"])[-1], None
        try:
            with open(report, encoding="utf-8") as lines:
                ignored = [set(json.loads(line)) for line in lines]
        except (OSError, ValueError):  # a script that does not take part in the check
            return None, None
    if len(ignored) == len(chosen):
        # ignored everywhere: an option, or an id ("--only x") where each suite either does not
        # take the option or does not know the id
        everywhere = sorted(
            item for item in set().union(*ignored)
            if all(item in each or item.split(" ", 1)[0] in each for each in ignored)
        )
        if everywhere:
            return f"not an option or contestant of any suite chosen: {', '.join(everywhere)}", None
    return None, None


#: Seconds a suite may take to check its arguments (it only parses them).
_CHECK_TIMEOUT = 120.0


def _run_suite(cmd: list[str], env: dict[str, str], *, check_timeout: float | None = None) -> tuple[int, int | None, str]:
    """Run one benchmark script: (its exit status, the signal that stopped us or None, its
    stderr when checking). SIGTERM or SIGHUP sent to us is passed on (the script stops its
    servers and clients, then exits); Ctrl-C reaches the script itself, through the terminal's
    process group. With ``check_timeout`` (the argument check), its output is not shown, its
    stderr is returned, and it is killed past the timeout."""
    if check_timeout is None:
        proc = subprocess.Popen(cmd, env=env, text=True)  # (text: no pipes, the type of check's)
    else:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    err = ""
    stopped_by: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        stopped_by.append(signum)
        proc.send_signal(signum)

    signals = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]
    previous = {sig: signal.signal(sig, forward) for sig in signals}
    try:
        if check_timeout is None:
            rc = proc.wait()
        else:
            try:
                err = proc.communicate(timeout=check_timeout)[1]
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                err = f"checking the arguments took over {check_timeout:g} s"
            rc = proc.returncode
    except BaseException:  # Ctrl-C: the script got it too; give it a moment to clean up
        try:
            proc.wait(5)
        except BaseException:
            proc.kill()
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return rc, (stopped_by[0] if stopped_by else None), err


def _per_suite_json(extra: Sequence[str], suite: str) -> list[str]:
    """With several suites, ``--json r.json`` becomes ``--json r.SUITE.json`` for each one
    (each run wrote the same file: only the last suite's results were left)."""
    options = list(extra)
    for i, arg in enumerate(options):
        if arg == "--json" and i + 1 < len(options) and options[i + 1]:
            options[i + 1] = _suite_file(options[i + 1], suite)
            break
        if arg.startswith("--json=") and len(arg) > len("--json="):
            options[i] = "--json=" + _suite_file(arg[len("--json="):], suite)
            break
    return options


def _suite_file(name: str, suite: str) -> str:
    path = Path(name)
    return str(path.with_name(f"{path.stem}.{suite}{path.suffix}"))


# ---------------------------------------------------------------- main

EPILOG = """\
exit codes:
  0    success
  1    could not connect or serve (refused, DNS, timeout, TLS, HTTP status), a benchmark failed
  2    bad command line or invalid URI
  3    connect: the connection was closed with an error code or lost (by the server or the client)
  130  interrupted (Ctrl-C); serve stops with 0 on Ctrl-C / SIGTERM
  143  connect: stopped by SIGTERM (it closes with 1001 first, as on Ctrl-C)
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kn-sock", description="kn_sock WebSocket tools", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    version = f"kn_sock {__version__} ({IMPLEMENTATION}) Python {platform.python_version()}"
    if IMPLEMENTATION == "pure":  # why, so that an install that fell back without a word shows it
        from ._backend import IMPORT_ERROR

        if IMPORT_ERROR:
            version += f" [pure: {IMPORT_ERROR}]"
    parser.add_argument("--version", action="version", version=version)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("serve", help="run an echo server", description="Echo server; logs connections on stderr.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8765, help="TCP port; 0 picks a free one (default 8765)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--sync", action="store_true", help="blocking server (a thread per connection)")
    mode.add_argument("--async", dest="use_async", action="store_true", help="asyncio server (the default)")
    p.add_argument("--tls-cert", metavar="PEM", help="serve wss:// with this certificate (chain)")
    p.add_argument("--tls-key", metavar="PEM", help="private key, if not in the --tls-cert file")
    p.add_argument("-v", "--verbose", action="store_true", help="log every message too")
    p = sub.add_parser("connect", help="interactive client", description=(
        "Lines read from stdin are sent as text messages; messages received are printed on stdout "
        "('< ' in front when stdout is a terminal). /ping, /close [code] [reason]; //text sends /text. "
        "At the end of stdin, replies still due are awaited (--linger) before closing."))
    p.add_argument("uri", help="ws://host:port/path or wss://...")
    p.add_argument("--timeout", type=_positive, default=10.0, help="opening handshake timeout (default 10 s)")
    p.add_argument("--linger", type=_not_negative, default=DEFAULT_LINGER,
                   help=f"at end of input, wait up to this long (default {DEFAULT_LINGER:g} s) for replies: "
                        "until as many messages came in since the first one was sent as were sent "
                        "(a greeting before it does not count)")
    p.add_argument("--max-size", type=_size, metavar="BYTES",
                   help=f"largest message accepted, 0: no limit (default {Options.max_size}, the library's)")
    p.add_argument("--cafile", metavar="PEM", help="trust this certificate / CA bundle for wss:// (ignored for ws://)")
    p.add_argument("-k", "--insecure", action="store_true", help="wss:// without certificate checks (ignored for ws://)")
    p.add_argument("--subprotocol", action="append", metavar="NAME", help="offer a subprotocol (repeatable)")
    p.add_argument("--no-compression", action="store_true", help="do not offer permessage-deflate")
    p.add_argument("--proxy", metavar="URL", help="connect through this HTTP proxy, http://[user:password@]host:port "
                                                  "(CONNECT), or 'env' for the *_proxy / no_proxy variables")
    p = sub.add_parser("demo", help="echo server and client in one process, with throughput", description=(
        "Starts an asyncio echo server and a client in this process, checks one echo, then measures "
        "round trips per second at 64 B, 1 KiB and 64 KiB (--seconds each)."))
    p.add_argument("--seconds", type=_positive, default=1.0, help="per message size (default 1 s)")
    p = sub.add_parser("bench", help="run the benchmarks; extra options go to the scripts", description=(
        "Runs the benchmark scripts of benchmarks/ one after the other. Extra options go to every "
        "script; with several suites, one that a script does not know (or a contestant id of "
        "another suite's --only / --skip) is ignored there, with a note, and one that no suite knows is "
        "an error before any runs; --json FILE then writes one file per suite (--json r.json: "
        "r.echo.json, r.conns.json, ...)."))
    p.add_argument("--suite", action="append", choices=list(SUITES),
                   help=f"repeatable (default: {' '.join(DEFAULT_SUITES)})")
    p.add_argument("--quick", action="store_true", help="the scripts' short smoke runs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``kn-sock`` and ``python -m kn_sock``; returns the exit code."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    commands: dict[str, Callable[[], int]] = {
        "serve": lambda: cmd_serve(args),
        "connect": lambda: cmd_connect(args),
        "demo": lambda: cmd_demo(args),
        "bench": lambda: cmd_bench(args, extra),
    }
    if args.command is None:  # argparse's convention: usage and the error on stderr, exit 2
        parser.print_usage(sys.stderr)
        _err(f"{parser.prog}: error: a command is required: serve, connect, demo or bench")
        return EXIT_USAGE
    try:
        return commands[args.command]()
    except CLIError as exc:
        _err(f"error: {exc}")
        return exc.code
    except KeyboardInterrupt as exc:
        return _interrupted(exc)
    except BrokenPipeError:  # stdout closed early (``| head``): not worth a traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush stays quiet
        return EXIT_OK
    except WebSocketError as exc:
        _err(f"error: {exc}")
        return EXIT_FAILURE
