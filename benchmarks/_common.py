"""Shared plumbing for the benchmarks: child processes, line protocol, /proc readings, tables.

Every benchmark runs its servers (and clients) as child processes of the script itself. A child
reads commands from its stdin and answers on stdout, one line each; when its stdin reaches EOF
(the parent exited, however it exited) the child exits too, so nothing is left running.
"""

from __future__ import annotations

import argparse
import atexit
import inspect
import json
import os
import resource
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
#: A source checkout: the directory holding the ``kn_sock`` package, for the children's
#: PYTHONPATH. None when these scripts are the copy an installed package carries
#: (``kn_sock/_benchmarks``): then ROOT is the package itself, and on sys.path its
#: ``asyncio`` subpackage would shadow the standard library's.
CHECKOUT = ROOT if os.path.isdir(os.path.join(ROOT, "kn_sock")) else None
if CHECKOUT is not None and CHECKOUT not in sys.path:
    sys.path.insert(0, CHECKOUT)

_CHILDREN: list["Child"] = []


#: Set by ``kn-sock bench`` to the number of suites it runs with one command line: with more
#: than one, an option or a contestant id that belongs to another suite is ignored here, with
#: a note (with one, it is an error, as when the script is run directly: a typo).
SUITE_ENV = "KN_SOCK_BENCH_SUITE"


#: Set by ``kn-sock bench`` (several suites) to a file: each suite parses its arguments, appends
#: what it ignored (a JSON list) and exits before running anything (``arguments_checked``), so
#: that an option or contestant id every suite ignores, a typo, is an error before the run.
CHECK_ENV = "KN_SOCK_BENCH_CHECK"
#: What this suite ignored as another suite's: option names, and ``--only ID``-style ids.
_IGNORED: list[str] = []


def arguments_checked() -> None:
    """After a script has checked its arguments: under ``kn-sock bench``'s check (CHECK_ENV),
    report what it ignored and exit; otherwise return and let it run."""
    path = os.environ.get(CHECK_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as report:
            report.write(json.dumps(_IGNORED) + "\n")
        sys.exit(0)


def _among_suites() -> bool:
    try:
        return int(os.environ.get(SUITE_ENV, "0")) > 1
    except ValueError:
        return False


def parse_args(ap: Any, argv: list[str] | None = None) -> Any:
    """``ap.parse_args(argv)``; under ``kn-sock bench`` with several suites (SUITE_ENV), options
    for another suite are ignored with a note instead of being a usage error."""
    if not _among_suites():
        return ap.parse_args(argv)
    args, unknown = ap.parse_known_args(argv)
    if unknown:
        _IGNORED.extend(token.split("=", 1)[0] for token in unknown if token.startswith("-"))
        if not os.environ.get(CHECK_ENV):
            print(f"note: ignored by this suite (for another one): {' '.join(unknown)}", flush=True)
    return args


def _checked(text: str, convert: Callable[[str], Any], kind: str, ok: Callable[[Any], bool], rule: str) -> Any:
    """argparse type helper: ``convert(text)``, refused unless finite and ``ok``."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {kind}: {text!r}") from None
    if not ok(value) or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be {rule}: {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    return _checked(text, int, "an integer", lambda v: v >= 1, "at least 1")  # type: ignore[no-any-return]


def positive_float(text: str) -> float:
    """argparse type: a number of seconds above 0."""
    return _checked(text, float, "a number", lambda v: v > 0, "above 0")  # type: ignore[no-any-return]


def non_negative_float(text: str) -> float:
    """argparse type: a number of seconds, 0 or more."""
    return _checked(text, float, "a number", lambda v: v >= 0, "0 or more")  # type: ignore[no-any-return]


def paired_ratio(values: list[float], bases: list[float]) -> float | None:
    """The median of per-round ratios ``values[i] / bases[i]`` (rows run in the same rounds):
    a noise burst in one round moves one ratio, not the baseline of every row."""
    ratios = [v / b for v, b in zip(values, bases) if v and b]
    return statistics.median(ratios) if ratios else None


def known_ids(ap: Any, option: str, value: str | None, known: Any) -> str | None:
    """The ids of ``--option value`` (comma-separated) that this script knows: an unknown id
    is a usage error, or, under ``kn-sock bench`` with several suites, ignored with a note."""
    if not value:
        return value
    ids = [i for i in value.split(",") if i]
    unknown = [i for i in ids if i not in known]
    if unknown:
        if not _among_suites():
            ap.error(f"--{option}: unknown contestant(s) {', '.join(unknown)} (known: {','.join(known)})")
        _IGNORED.extend(f"--{option} {i}" for i in unknown)
        if not os.environ.get(CHECK_ENV):
            print(f"note: --{option}: not contestants of this suite, ignored: {', '.join(unknown)}", flush=True)
    return ",".join(i for i in ids if i in known) or ","  # (",": a selection that matches none)


def _kill_children() -> None:
    for child in list(_CHILDREN):
        child.kill()


atexit.register(_kill_children)


def _on_signal(signum: int, frame: Any) -> None:
    _kill_children()
    sys.exit(128 + signum)


def install_parent_handlers() -> None:
    """In the parent: kill every child on SIGTERM / SIGHUP too (atexit covers the rest)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)


#: Exit status on Ctrl-C (128 + SIGINT), as a shell reports it.
EXIT_INTERRUPTED = 128 + signal.SIGINT


def run_main(main: Callable[[], Any]) -> None:
    """``sys.exit(main())``, except that Ctrl-C kills the children and exits with 130 after one
    line on stderr instead of a traceback. A child process of a benchmark (``--serve`` /
    ``--client``: it shares the terminal's process group, so it gets the Ctrl-C too) exits
    with 130 silently, leaving the one line to its parent."""
    try:
        status = main()
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the cleanup
        _kill_children()
        if any(arg in ("--serve", "--client") for arg in sys.argv[1:]):
            os._exit(EXIT_INTERRUPTED)  # a child: no word, and no wait for its server threads
        sys.stderr.write(f"{os.path.basename(sys.argv[0])}: interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(status)


class ChildError(RuntimeError):
    pass


class Child:
    """A child process speaking the line protocol; stderr goes to a temp file for diagnostics."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, label: str = "") -> None:
        self.label = label or " ".join(args)
        self.errfile = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.errfile,
            env=env,
            cwd=CHECKOUT or HERE,  # never the installed package itself (see CHECKOUT)
        )
        self._buf = b""
        _CHILDREN.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def readline(self, timeout: float) -> str:
        """Next stdout line (without newline); ChildError on timeout or exit."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChildError(f"{self.label}: no answer within {timeout:.0f} s{self.stderr_tail()}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.proc.wait(timeout=5)
                    raise ChildError(
                        f"{self.label}: exited with code {self.proc.returncode}{self.stderr_tail()}"
                    )
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def expect(self, prefix: str, timeout: float) -> list[str]:
        """Read lines until one starts with ``prefix``; return its words after the prefix."""
        while True:
            line = self.readline(timeout)
            if line.startswith(prefix):
                return line[len(prefix):].split()
            if line.startswith("ERROR"):
                raise ChildError(f"{self.label}: {line}{self.stderr_tail()}")

    def command(self, line: str, prefix: str, timeout: float) -> list[str]:
        self.send(line)
        return self.expect(prefix, timeout)

    def stderr_tail(self, limit: int = 1500) -> str:
        try:
            self.errfile.seek(0)
            data = self.errfile.read().decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""
        return f"\n    stderr: ...{data[-limit:]}" if data else ""

    def kill(self) -> None:
        if self in _CHILDREN:
            _CHILDREN.remove(self)
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
        except OSError:
            pass
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=0.5)  # EOF on stdin makes a child exit by itself
            except subprocess.TimeoutExpired:
                self.proc.kill()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        for f in (self.proc.stdout, self.errfile):
            try:
                f.close()  # type: ignore[union-attr]
            except (OSError, AttributeError):
                pass


# ---------------------------------------------------------------- child side


def out(line: str) -> None:
    """Write one protocol line to stdout (thread-safe enough: one write call)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def command_loop(handle: Callable[[str], str | None]) -> None:
    """Child side: call ``handle(line)`` for each stdin line and print its answer; exit at EOF.

    Runs in a daemon thread; ``handle`` must be thread-safe (asyncio children hop to their loop
    with ``run_coroutine_threadsafe``).
    """

    def run() -> None:
        for raw in sys.stdin.buffer:
            line = raw.decode().strip()
            if not line:
                continue
            try:
                answer = handle(line)
            except BaseException as exc:  # report, never die silently
                answer = f"ERROR {type(exc).__name__}: {exc}".replace("\n", " ")
            if answer is not None:
                out(answer)
        os._exit(0)

    threading.Thread(target=run, name="bench-commands", daemon=True).start()


def exit_on_eof() -> None:
    """Child side: exit as soon as the parent goes away (stdin EOF)."""
    command_loop(lambda line: None)


def pin_cpu(spec: str) -> None:
    """Child side: restrict this process to the CPUs in ``spec`` ("0" or "0,1"), if the machine has them."""
    try:
        wanted = {int(x) for x in spec.split(",") if x.strip()}
        allowed = os.sched_getaffinity(0)
        if wanted and wanted <= allowed:
            os.sched_setaffinity(0, wanted)
    except (AttributeError, OSError, ValueError):
        pass


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def timeout(delay: float) -> Any:
    """``asyncio.timeout(delay)``; on Python 3.10, which lacks it, kn_sock's equivalent."""
    import asyncio

    if hasattr(asyncio, "timeout"):
        return asyncio.timeout(delay)
    from kn_sock.asyncio._compat import timeout as compat_timeout

    return compat_timeout(delay)


async def start_picows_echo(host: str, port: int, max_size: int) -> tuple[Any, int]:
    """Child side: a picows echo server (text and binary frames back as they came, the close
    handshake answered); returns (the server, its port)."""
    from picows import WSListener, WSMsgType, ws_create_server

    class PicowsEcho(WSListener):  # type: ignore[misc]
        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            t = frame.msg_type
            if t is WSMsgType.BINARY or t is WSMsgType.TEXT:
                transport.send(t, frame.get_payload_as_memoryview())
            elif t is WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code(), frame.get_close_message())
                transport.disconnect()

    server = await ws_create_server(lambda request: PicowsEcho(), host, port, max_frame_size=max_size)
    return server, server.sockets[0].getsockname()[1]


async def start_aiohttp_echo(host: str, port: int, compress: bool, max_size: int) -> tuple[Any, int]:
    """Child side: an aiohttp echo server (text and binary messages back as they came;
    permessage-deflate with ``compress``); returns (its runner, its port)."""
    from aiohttp import WSMsgType, web

    async def ws_handler(request: Any) -> Any:
        ws = web.WebSocketResponse(compress=compress, max_msg_size=max_size, heartbeat=None)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/", ws_handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner, runner.addresses[0][1]


def run_event_loop(main: Any, use_uvloop: bool = False) -> Any:
    if use_uvloop:
        import uvloop

        if hasattr(uvloop, "run"):
            return uvloop.run(main)
        uvloop.install()
    import asyncio

    return asyncio.run(main)


# ---------------------------------------------------------------- /proc


def proc_status(pid: int) -> dict[str, str]:
    result = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            result[key] = value.strip()
    return result


def rss_kib(pid: int) -> int:
    return int(proc_status(pid)["VmRSS"].split()[0])


def threads(pid: int) -> int:
    return int(proc_status(pid)["Threads"])


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# ---------------------------------------------------------------- formatting


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt_rate(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e4:
        return f"{x / 1e3:.1f}k"
    if x >= 1e3:
        return f"{x / 1e3:.2f}k"
    if x >= 100:
        return f"{x:.0f}"
    return f"{x:.1f}"


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, column-aligned so it also reads well in a terminal."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    sep = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def machine_line() -> str:
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
    except OSError:
        model = "?"
    return (
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs ({model}), "
        f"{platform.system()} {platform.release()}"
    )


def clean_env(**changes: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("KN_SOCK_PURE", None)
    if CHECKOUT is not None:
        env["PYTHONPATH"] = CHECKOUT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def module_available(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def foreign_extension() -> str:
    """Where kn_sock's extension was loaded from, if not from the kn_sock package imported (an
    editable install's import hook can hand another checkout's to a checkout without one); ""
    when it is the package's own or not loaded. (Also run in ``kn_probe``'s child, as source.)"""
    import os
    import sys

    import kn_sock

    ext = sys.modules.get("kn_sock._speedups")
    if ext is None or not getattr(ext, "__file__", None):
        return ""
    here = os.path.dirname(os.path.abspath(kn_sock.__file__))
    there = os.path.dirname(os.path.abspath(ext.__file__))
    return "" if os.path.samefile(here, there) else str(ext.__file__)


def load_speedups() -> tuple[Any, str]:
    """kn_sock's Cython twin for the in-process micro-benchmarks, which show both twins side by
    side (so even under KN_SOCK_PURE=1): (the module, "") or (None, why it is not there)."""
    try:
        import kn_sock._speedups as speedups
    except ImportError as exc:
        return None, f"the Cython extension is not built ({exc})"
    foreign = foreign_extension()
    if foreign:
        return None, f"the Cython extension loaded is another kn_sock's ({foreign})"
    return speedups, ""


def kn_probe(env: dict[str, str]) -> tuple[str | None, bool, str]:
    """In a child with ``env``: (kn_sock implementation or None, sync layer importable, error text)."""
    code = inspect.getsource(foreign_extension) + (
        "import kn_sock._backend as b\n"
        "impl = b.IMPLEMENTATION\n"
        "if foreign_extension():\n"
        "    impl = 'foreign'\n"
        "    import sys; print('the extension is another kn_sock\\'s:', foreign_extension(), file=sys.stderr)\n"
        "try:\n"
        "    from kn_sock.sync import WebSocketServer, connect_websocket\n"
        "    s = 1\n"
        "except Exception as e:\n"
        "    s = 0\n"
        "    import sys; print('sync layer:', type(e).__name__, e, file=sys.stderr)\n"
        "print(impl, s, b.IMPORT_ERROR or '')\n"
    )
    try:
        r = subprocess.run([sys.executable, "-c", code], env=env, cwd=CHECKOUT or HERE, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return None, False, "import timed out"
    if r.returncode != 0:
        return None, False, r.stderr.strip()[-500:]
    impl, sync, *err = r.stdout.split(maxsplit=2)
    return impl, sync == "1", (err[0].strip() if err else "") + " " + r.stderr.strip()
