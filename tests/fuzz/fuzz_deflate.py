"""atheris target: permessage-deflate decompression with a size limit (RFC 7692 §7.2.2).

Input layout: byte 0 = options (bits 0-2 remote window bits 8..15, bit 3
no_context_takeover, bit 4 is_server, bits 5-7 pick max_size), byte 1 = chunk size
(1..256), byte 2 = chunks per message (1..8), the rest = compressed payloads, cut into
frames and messages.

Oracle: ``decompress`` raises only ``ProtocolError`` (1002, bad deflate data) or
``PayloadTooBig`` (1009); a message never inflates past ``max_size``; and, as a round
trip, whatever our compressor produces for the same bytes inflates back to them.

Run: ``python tests/fuzz/fuzz_deflate.py -max_total_time=60 [corpus_dir]``.
"""

from __future__ import annotations

import sys
import zlib

from kn_sock.exceptions import PayloadTooBig, ProtocolError
from kn_sock.extensions.permessage_deflate import PerMessageDeflate

__all__ = ["check", "seeds", "TestOneInput"]

MAX_SIZES = (None, 0, 1, 16, 1000, 65536, 2**20, 2**16 + 1)


def _inflate_messages(ext: PerMessageDeflate, stream: bytes, chunk: int, per_message: int, max_size: int | None) -> None:
    frames = [stream[i : i + chunk] for i in range(0, len(stream), chunk)]
    for first in range(0, len(frames), per_message):
        message = frames[first : first + per_message]
        total = 0
        for index, frame in enumerate(message):
            fin = index == len(message) - 1
            try:
                out = ext.decompress(frame, fin, max_size)
            except PayloadTooBig as exc:
                assert exc.code == 1009, repr(exc)
                return  # the connection fails here
            except ProtocolError as exc:
                assert exc.code == 1002 and type(exc) is ProtocolError, repr(exc)
                return
            assert isinstance(out, bytes)
            total += len(out)
            assert max_size is None or total <= max_size, (total, max_size)


def _round_trip(bits: int, nct: bool, payload: bytes) -> None:
    sender = PerMessageDeflate(is_server=False, local_max_window_bits=bits, local_no_context_takeover=nct)
    receiver = PerMessageDeflate(is_server=True, remote_max_window_bits=bits, remote_no_context_takeover=nct)
    for message in (payload, payload[::-1], b""):
        half = len(message) // 2
        first, last = sender.compress(message[:half], fin=False), sender.compress(message[half:], fin=True)
        got = receiver.decompress(first, False, None) + receiver.decompress(last, True, None)
        assert got == message, (len(got), len(message))


def check(data: bytes) -> None:
    """Inflate ``data`` (layout in the module docstring) and round-trip it; assert the oracle."""
    if len(data) < 3:
        return
    flags, chunk, per_message, stream = data[0], data[1] + 1, data[2] % 8 + 1, data[3:]
    bits = 8 + (flags & 7)
    nct = bool(flags & 8)
    max_size = MAX_SIZES[flags >> 5]
    ext = PerMessageDeflate(is_server=bool(flags & 16), remote_max_window_bits=bits, remote_no_context_takeover=nct)
    _inflate_messages(ext, stream, chunk, per_message, max_size)
    _round_trip(bits, nct, stream)


def seeds() -> list[bytes]:
    """Starting inputs: real raw-deflate messages (sync-flushed, tail removed, as on the wire)."""
    out = []
    for bits, text in ((15, b"hello hello hello"), (9, bytes(range(256)) * 8), (12, b"")):
        comp = zlib.compressobj(wbits=-bits)
        payload = comp.compress(text) + comp.flush(zlib.Z_SYNC_FLUSH)
        payload = payload[:-4] if payload.endswith(b"\x00\x00\xff\xff") else payload
        for flags in (bits - 8, (bits - 8) | 0x18 | 0x60, (bits - 8) | 0x20):
            out.append(bytes([flags, min(255, max(0, len(payload) - 1)), 0]) + payload)
    bomb = zlib.compressobj(wbits=-15)
    out.append(bytes([0x47, 255, 7]) + bomb.compress(b"\x00" * 200000) + bomb.flush(zlib.Z_SYNC_FLUSH))
    return out


def TestOneInput(data: bytes) -> None:  # noqa: N802 (atheris' name)
    check(data)


def main() -> None:
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
