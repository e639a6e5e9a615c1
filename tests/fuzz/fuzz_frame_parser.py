"""atheris target: the frame parser of both twins (RFC 6455 §5, RFC 7692 §6.1).

Input layout: byte 0 = options (bit 0 expect_mask, bit 1 rsv1_allowed, bit 2 decode_text,
bit 3 feed through get_buffer/buffer_updated, bits 4-6 pick max_size), byte 1 = chunk size
(1..256), the rest = the byte stream, fed in chunks of that size.

Oracle: ``feed`` / ``buffer_updated`` never raise; a parser error is a ``ProtocolError``
(code 1002, 1007 or 1009) left in ``error``; frames are 4-tuples with payloads within the
limits; and the pure and Cython twins return the same frames and the same error (type,
code and message) for the same input.

Run: ``python tests/fuzz/fuzz_frame_parser.py -max_total_time=60 [corpus_dir]``
(or ``tests/fuzz/run_fuzz.sh``). ``check(data)`` is what ``tests/fuzz/test_fuzz_regressions.py``
replays under pytest.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

from kn_sock import _backend
from kn_sock.exceptions import PayloadTooBig, ProtocolError

__all__ = ["check", "seeds", "TestOneInput", "TWINS"]

MAX_SIZES = (None, 0, 1, 125, 126, 65536, 2**20, 7)
TWINS: list[ModuleType] = [t for t in (_backend.pure, _backend.speedups) if t is not None]


def _run(twin: ModuleType, flags: int, chunk: int, stream: bytes) -> tuple[list[Any], Any]:
    max_size = MAX_SIZES[(flags >> 4) & 7]
    parser = twin.FrameParser(
        expect_mask=bool(flags & 1),
        max_size=max_size,
        rsv1_allowed=bool(flags & 2),
        decode_text=bool(flags & 4),
    )
    frames: list[Any] = []
    for start in range(0, len(stream), chunk):
        piece = stream[start : start + chunk]
        if flags & 8:
            buf = parser.get_buffer(len(piece))
            buf[: len(piece)] = piece
            frames.extend(parser.buffer_updated(len(piece)))
        else:
            frames.extend(parser.feed(piece))
    error = parser.error
    if error is not None:
        assert isinstance(error, ProtocolError), repr(error)
        assert error.code in (1002, 1007, 1009), repr(error)
        assert (error.code == 1009) == isinstance(error, PayloadTooBig), repr(error)
    for frame in frames:
        opcode, fin, rsv1, payload = frame
        assert opcode in (0, 1, 2, 8, 9, 10), frame[:3]
        assert isinstance(payload, (bytes, str)), type(payload)
        if opcode >= 8:
            assert fin and not rsv1 and len(payload) <= 125
        elif max_size is not None and not rsv1:
            size = len(payload.encode("utf-8")) if isinstance(payload, str) else len(payload)
            assert size <= max_size, (size, max_size)
    return frames, error


def check(data: bytes) -> None:
    """Feed ``data`` (layout in the module docstring) to every twin; assert the oracle."""
    if len(data) < 2:
        return
    flags, chunk, stream = data[0], data[1] + 1, data[2:]
    results = [_run(twin, flags, chunk, stream) for twin in TWINS]
    for other in results[1:]:
        assert other[0] == results[0][0], "twins returned different frames"
        assert other[1] == results[0][1], f"twins disagree on the error: {results[0][1]!r} vs {other[1]!r}"


def seeds() -> list[bytes]:
    """Starting inputs: valid frame streams of each kind, each side, with varied options."""
    build = _backend.pure.build_frame
    mask = b"\x01\x02\x03\x04"
    client = [
        build(1, "héllo", mask=mask),
        build(2, bytes(range(256)), fin=False, mask=mask) + build(0, b"x" * 300, mask=mask),
        build(9, b"ping", mask=mask) + build(10, b"", mask=mask),
        build(1, b"\xf2\x80\x80", rsv1=True, mask=mask),
        build(2, b"y" * 70000, mask=mask),
        build(8, b"\x03\xe8bye", mask=mask),
        build(1, "frag", fin=False, mask=mask) + build(9, b"", mask=mask) + build(0, "ment", mask=mask),
    ]
    server = [build(1, "héllo"), build(2, b"z" * 200, fin=False) + build(0, b"!"), build(8, b"")]
    out = [bytes([0x07 | (i << 4) & 0x70, 17]) + frame for i, frame in enumerate(client)]
    out += [bytes([0x06 | (i << 5) & 0x60, 255]) + frame for i, frame in enumerate(server)]
    out.append(bytes([0x0F, 0]) + client[1])  # through get_buffer, one byte at a time
    return out


def TestOneInput(data: bytes) -> None:  # noqa: N802 (atheris' name)
    check(data)


def main() -> None:
    import atheris

    atheris.instrument_all()  # kn_sock is imported already; the Cython twin stays uninstrumented
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
