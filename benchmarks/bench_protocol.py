"""Sans-I/O protocol overhead: kn_sock's Protocol vs websockets' Protocol on the same bytes.

Measures the time to receive and decode one small frame (64 B text, masked, as a server sees
it) and to build one (64 B text, unmasked, as a server sends it), per message, for:

- kn_sock ``Protocol`` with the Cython twin and with the pure twin;
- websockets' sans-I/O ``ServerProtocol`` (``receive_data`` + ``events_received``,
  ``send_text`` + ``data_to_send``) when installed.

It also reports the memory one connection's permessage-deflate state takes once a message
has been compressed and decompressed at the default settings (tracemalloc, zlib's allocations
included), next to websockets' at its defaults.

    python benchmarks/bench_protocol.py [--quick]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import tracemalloc
import zlib
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
if (ROOT / "kn_sock").is_dir():  # a checkout (installed: kn_sock/_benchmarks)
    sys.path.insert(0, str(ROOT))

import _common as C  # noqa: E402
from kn_sock import _pure  # noqa: E402
from kn_sock.extensions.permessage_deflate import ClientDeflateFactory, ServerDeflateFactory  # noqa: E402
from kn_sock.protocol import CLIENT, SERVER, Protocol  # noqa: E402

speedups, NO_SPEEDUPS = C.load_speedups()  # (both twins in one process, whatever KN_SOCK_PURE says)

BATCH = 2000
# websockets' serve() defaults (enable_server_permessage_deflate), used to build its extension
# below and printed next to its figure.
WS_WINDOW_BITS, WS_MEM_LEVEL = 12, 5


def _time_per_op(fn: Callable[[], None], seconds: float, rounds: int) -> float:
    """Median seconds per call of ``fn`` (which performs BATCH operations) over ``rounds``."""
    results = []
    for _ in range(rounds):
        n = 0
        t0 = time.perf_counter()
        while True:
            fn()
            n += BATCH
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds:
                break
        results.append(elapsed / n)
    return statistics.median(results)


def kn_cases(backend: Any) -> tuple[Callable[[], None], Callable[[], None]]:
    """(receive, send) batch functions for kn_sock with ``backend``."""
    client = Protocol(CLIENT, backend=backend)
    server = Protocol(SERVER, backend=backend, max_size=None)
    frame = client.send("x" * 64)
    stream = frame * BATCH
    text = "y" * 64

    def receive() -> None:
        events = server.receive_data(stream)
        assert len(events) == BATCH

    def send() -> None:
        for _ in range(BATCH):
            server.send(text)

    return receive, send


def websockets_cases() -> tuple[Callable[[], None], Callable[[], None]] | None:
    """(receive, send) batch functions for websockets' sans-I/O protocol, or None."""
    try:
        from websockets.frames import Frame, Opcode
        from websockets.protocol import Protocol as WsProtocol
        from websockets.protocol import Side, State
    except ImportError:
        return None
    server = WsProtocol(Side.SERVER, state=State.OPEN, max_size=None)  # framing only
    frame = Frame(Opcode.TEXT, b"x" * 64).serialize(mask=True, extensions=[])
    stream = frame * BATCH
    text = "y" * 64

    def receive() -> None:
        server.receive_data(stream)
        events = server.events_received()
        assert len(events) == BATCH
        for ev in events:  # what an application needs: the decoded text
            ev.data.decode()

    def send() -> None:
        for _ in range(BATCH):
            server.send_text(text.encode())
            server.data_to_send()

    return receive, send


def deflate_settings(ext: Any) -> str:
    """The window and memLevel a negotiated kn_sock ``PerMessageDeflate`` actually uses."""
    level = ext.compress_settings.get("memLevel", zlib.DEF_MEM_LEVEL)
    windows = sorted({ext.local_max_window_bits, ext.remote_max_window_bits})
    return f"window {'/'.join(map(str, windows))} bits, memLevel {level}"


def deflate_memory() -> tuple[float, str, float | None]:
    """KiB retained by one server connection's deflate state after one message each way,
    the settings it ran with (read from the library), and websockets' KiB (None: not installed)."""
    payload = bytes(range(256)) * 64

    def measure(make: Callable[[], Any], use: Callable[[Any], None]) -> float:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        obj = make()
        use(obj)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        del obj
        return (after - before) / 1024

    params = ClientDeflateFactory().offer()

    def kn_make() -> Any:
        return ServerDeflateFactory().accept_offer(params)[1]  # type: ignore[index]

    client_ext = ClientDeflateFactory().accept_response(ServerDeflateFactory().accept_offer(params)[0])  # type: ignore[index]
    incoming = client_ext.compress(payload)

    def kn_use(ext: Any) -> None:
        ext.decompress(incoming, True, None)
        ext.compress(payload)

    kn = measure(kn_make, kn_use)
    kn_settings = deflate_settings(kn_make())
    try:
        from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
        from websockets.frames import Frame, Opcode
    except ImportError:
        return kn, kn_settings, None

    def ws_make() -> Any:
        # The settings websockets' serve() uses by default (enable_server_permessage_deflate).
        factory = ServerPerMessageDeflateFactory(
            server_max_window_bits=WS_WINDOW_BITS, client_max_window_bits=WS_WINDOW_BITS,
            compress_settings={"memLevel": WS_MEM_LEVEL},
        )
        return factory.process_request_params([("client_max_window_bits", None)], [])[1]

    def ws_use(ext: Any) -> None:
        out = ext.encode(Frame(Opcode.BINARY, payload))
        ext.decode(Frame(Opcode.BINARY, incoming, rsv1=True))
        del out

    return kn, kn_settings, measure(ws_make, ws_use)


def main() -> int:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = C.parse_args(parser)
    C.arguments_checked()
    seconds, rounds = (0.1, 1) if args.quick else (0.4, 5)
    rows: list[tuple[str, float, float]] = []
    contestants: list[tuple[str, Any]] = []
    if speedups is not None:
        contestants.append(("kn_sock Protocol (cython)", kn_cases(speedups)))
    else:
        print(f"note: no Cython row: {NO_SPEEDUPS}")
    contestants.append(("kn_sock Protocol (pure)", kn_cases(_pure)))
    ws = websockets_cases()
    if ws is not None:
        contestants.append(("websockets Protocol", ws))
    for name, (receive, send) in contestants:
        rows.append((name, _time_per_op(receive, seconds, rounds), _time_per_op(send, seconds, rounds)))
    ref = rows[-1] if ws is not None else None
    print("Sans-I/O protocol, 64 B text frames, per message (median):")
    print(f"| {'contestant':<28} | receive+decode | ratio vs websockets | build | ratio vs websockets |")
    print(f"| {'-' * 28} | -------------- | ------------------- | ----- | ------------------- |")
    for name, rx, tx in rows:
        rr = f"{ref[1] / rx:.1f}x" if ref else "-"
        tr = f"{ref[2] / tx:.1f}x" if ref else "-"
        print(f"| {name:<28} | {rx * 1e6:>11.3f} us | {rr:>19} | {tx * 1e6:.3f} us | {tr:>19} |")
    kn_mem, kn_settings, ws_mem = deflate_memory()
    print()
    print("permessage-deflate state per connection after one message each way (defaults):")
    print(f"  kn_sock:    {kn_mem:.1f} KiB ({kn_settings})")
    if ws_mem is not None:
        print(f"  websockets: {ws_mem:.1f} KiB "
              f"(its serve() defaults: window {WS_WINDOW_BITS} bits, memLevel {WS_MEM_LEVEL})")
    return 0


if __name__ == "__main__":
    C.run_main(main)
