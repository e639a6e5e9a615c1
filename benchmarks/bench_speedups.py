"""Micro-benchmarks of kn_sock's speedups against the peers, in one run (< 60 s).

Masking (MB/s), UTF-8 validation (MB/s) and frame parsing (frames/s), each contestant run
in interleaved rounds; the table shows medians and ratios to the reference (memcpy,
bytes.decode) and to the best peer. Peers that are not installed are skipped.

    python benchmarks/bench_speedups.py [--quick]
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(ROOT, "kn_sock")):  # a checkout (installed: kn_sock/_benchmarks)
    sys.path.insert(0, ROOT)

import _common as C  # noqa: E402
from kn_sock import _pure  # noqa: E402

speedups, NO_SPEEDUPS = C.load_speedups()  # (both twins in one process, whatever KN_SOCK_PURE says)

ROUNDS = 7
TARGET = 0.02  # seconds per measurement

SIZES = [16, 125, 1024, 65536, 1 << 20, 16 << 20]
MASK = b"\x37\xfa\x21\x3d"


def _peers_mask(data: bytes, buf: bytearray) -> dict[str, Callable[[], object]]:
    peers: dict[str, Callable[[], object]] = {}
    try:
        from websockets.speedups import apply_mask as ws_mask

        peers["websockets C (new)"] = lambda: ws_mask(data, MASK)
    except ImportError:
        pass
    try:
        from websockets.utils import apply_mask as ws_pure_mask  # the pure twin's peer

        if len(data) <= 1 << 20:
            peers["websockets pure (new)"] = lambda: ws_pure_mask(data, MASK)
    except ImportError:
        pass
    try:
        from aiohttp._websocket.mask import _websocket_mask_cython as aio_mask

        peers["aiohttp Cython (in place)"] = lambda: aio_mask(MASK, buf)
    except ImportError:
        pass
    try:
        from wsaccel.xormask import XorMaskerSimple

        peers["wsaccel (new)"] = lambda: XorMaskerSimple(MASK).process(data)
    except ImportError:
        pass
    return peers


def measure(contestants: dict[str, Callable[[], object]], units: float) -> dict[str, float]:
    """Median throughput (``units`` per call / seconds per call) of each, rounds interleaved."""
    loops = {}
    for name, fn in contestants.items():  # calibrate
        n = 1
        while True:
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            dt = time.perf_counter() - t0
            if dt > TARGET / 4 or n > 1 << 22:
                loops[name] = max(1, int(n * TARGET / max(dt, 1e-9)))
                break
            n *= 4
    samples: dict[str, list[float]] = {name: [] for name in contestants}
    names = list(contestants)
    shuffle = random.Random(1).shuffle
    for _ in range(ROUNDS):
        # A new order each round: who runs after whom (caches, malloc's state after a large
        # free) must not favour anyone systematically (a rotation keeps every predecessor).
        shuffle(names)
        for name in names:
            fn = contestants[name]
            n = loops[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append(units * n / (time.perf_counter() - t0))
    return {name: statistics.median(v) for name, v in samples.items()}


def table(title: str, unit: str, rows: list[tuple[str, dict[str, float]]], ref: str, ours: list[str]) -> None:
    print(f"\n## {title} ({unit}; ratio to {ref} / to the best peer)\n")
    for label, res in rows:
        best_peer = max((v for k, v in res.items() if k not in ours and k != ref and not k.startswith("kn_sock")), default=None)
        print(f"{label}")
        for name, v in sorted(res.items(), key=lambda kv: -kv[1]):
            r_ref = v / res[ref] if ref in res else float("nan")
            r_peer = f"{v / best_peer:5.2f}" if best_peer else "  -  "
            print(f"    {name:30s} {v:14,.0f}   x{r_ref:5.2f}   x{r_peer}")


def bench_mask(quick: bool) -> None:
    rows = []
    for size in SIZES if not quick else SIZES[:4]:
        data = os.urandom(size)
        buf = bytearray(data)
        c: dict[str, Callable[[], object]] = {"memcpy bytes(bytearray)": lambda: bytes(buf)}
        # Every contestant is a function bound beforehand, called the same way (no attribute
        # lookup inside the timed lambda: at 16 B that alone is ~10% of a call).
        if speedups is not None:
            kn_mask, kn_inplace = speedups.apply_mask, speedups.apply_mask_inplace
            c["kn_sock cython (new)"] = lambda: kn_mask(data, MASK)
            c["kn_sock cython (in place)"] = lambda: kn_inplace(buf, MASK)
        if size <= 1 << 20:
            pure_mask = _pure.apply_mask
            c["kn_sock pure (new)"] = lambda: pure_mask(data, MASK)
        for name, fn in _peers_mask(data, buf).items():
            if "wsaccel" in name and size > 1 << 20:
                continue
            c[name] = fn
        rows.append((f"{size:,} B", {k: v / 1e6 for k, v in measure(c, size).items()}))
    table("Masking", "MB/s", rows, "memcpy bytes(bytearray)", ["kn_sock cython (new)", "kn_sock cython (in place)", "kn_sock pure (new)"])


def bench_utf8(quick: bool) -> None:
    try:
        from wsaccel.utf8validator import Utf8Validator as WsaccelValidator
    except ImportError:
        WsaccelValidator = None
    texts = {
        "ASCII": "The quick brown fox jumps over the lazy dog. ",
        "mixed": "Grüße, Jürgen! Ça va? Ελληνικά — 中文 text. ",
        "emoji": "😀🎉🚀👍🏽",
    }
    rows = []
    for kind, unit_text in texts.items():
        for size in (1024, 1 << 20):
            raw = (unit_text * (size // len(unit_text.encode()) + 1)).encode()[:size]
            raw = raw.decode("utf-8", "ignore").encode()
            decode = raw.decode  # every contestant bound beforehand (see bench_mask)
            c: dict[str, Callable[[], object]] = {"bytes.decode": lambda: decode()}
            if speedups is not None:
                kn_valid = speedups.validate_utf8
                c["kn_sock cython validate_utf8"] = lambda: kn_valid(raw)
            pure_valid = _pure.validate_utf8
            c["kn_sock pure validate_utf8"] = lambda: pure_valid(raw)
            if WsaccelValidator is not None and size <= 1024:
                c["wsaccel Utf8Validator"] = lambda: WsaccelValidator().validate(raw)
            rows.append((f"{kind} {size:,} B", {k: v / 1e6 for k, v in measure(c, len(raw)).items()}))
    table("UTF-8 validation", "MB/s", rows, "bytes.decode", ["kn_sock cython validate_utf8", "kn_sock pure validate_utf8"])


def bench_parse(quick: bool) -> None:
    frame = _pure.build_frame(2, os.urandom(64))
    count = (1 << 20) // len(frame)
    stream = frame * count
    c: dict[str, Callable[[], object]] = {}

    def run(mod):
        def go():
            frames = mod.FrameParser(expect_mask=False).feed(stream)
            assert len(frames) == count

        return go

    if speedups is not None:
        c["kn_sock cython feed()"] = run(speedups)

        def via_buffer():
            p = speedups.FrameParser(expect_mask=False)
            view = memoryview(stream)
            pos = n = 0
            while pos < len(stream):
                b = p.get_buffer()
                k = min(len(b), len(stream) - pos)
                b[:k] = view[pos : pos + k]
                pos += k
                n += len(p.buffer_updated(k))
            assert n == count

        c["kn_sock cython get_buffer()"] = via_buffer
    c["kn_sock pure feed()"] = run(_pure)
    try:
        from websockets.frames import Frame
        from websockets.streams import StreamReader

        def ws_parse():
            reader = StreamReader()
            reader.feed_data(stream)
            reader.feed_eof()
            n = 0
            for _ in range(count):
                gen = Frame.parse(reader.read_exact, mask=False)
                try:
                    while True:
                        next(gen)
                except StopIteration:
                    n += 1
            assert n == count

        c["websockets Frame.parse"] = ws_parse
    except ImportError:
        pass
    rows = [(f"1 MiB of {len(frame)} B binary frames ({count} frames)", {k: v for k, v in measure(c, count).items()})]
    print("\n## Frame parsing (frames/s; ratio to cython feed() / to the best peer)\n")
    for label, res in rows:
        best = max((v for k, v in res.items() if not k.startswith("kn_sock")), default=None)
        print(label)
        ref = res.get("kn_sock cython feed()", next(iter(res.values())))
        for name, v in sorted(res.items(), key=lambda kv: -kv[1]):
            peer = f"{v / best:6.2f}" if best else "   -  "
            print(f"    {name:30s} {v:14,.0f}   x{v / ref:5.2f}   x{peer}")


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer sizes and rounds")
    quick = C.parse_args(parser, sys.argv[1:] if argv is None else argv).quick
    C.arguments_checked()
    print(f"kn_sock speedups benchmark — cython {'loaded' if speedups else 'NOT loaded'}, Python {sys.version.split()[0]}")
    if speedups is None:
        print(f"note: no Cython rows: {NO_SPEEDUPS}")
    t0 = time.perf_counter()
    bench_mask(quick)
    bench_utf8(quick)
    bench_parse(quick)
    print(f"\n(total {time.perf_counter() - t0:.1f} s, {ROUNDS} interleaved rounds, medians)")


if __name__ == "__main__":
    C.run_main(main)
