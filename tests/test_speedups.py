"""The twins ``_pure`` and ``_speedups``, function by function, on RFC 6455 vectors and errors.

Every test takes the ``backend`` fixture, so it runs as ``[pure]`` and as ``[cython]``.
"""

from __future__ import annotations

import array
import errno
import inspect
import os
import random
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kn_sock.exceptions import PayloadTooBig, ProtocolError

MASK = b"\x37\xfa\x21\x3d"
# RFC 6455 §5.7
HELLO_UNMASKED = bytes([0x81, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])
HELLO_MASKED = bytes([0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
HEL_LO = (bytes([0x01, 0x03, 0x48, 0x65, 0x6C]), bytes([0x80, 0x02, 0x6C, 0x6F]))
PING_HELLO = bytes([0x89, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])
PONG_HELLO_MASKED = bytes([0x8A, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])


def naive_mask(data: bytes, mask: bytes, phase: int = 0) -> bytes:
    return bytes(b ^ mask[(i + phase) % 4] for i, b in enumerate(data))


def merged(frames: list) -> list:
    """Frames with each run of consecutive continuation frames as one: the parsers merge the
    continuation frames one call completes, so how a stream is cut decides the grouping."""
    out: list = []
    for frame in frames:
        if frame[0] == 0 and out and out[-1][0] == 0 and not out[-1][1]:
            out[-1] = (0, frame[1], False, out[-1][3] + frame[3])
        else:
            out.append(frame)
    return out


def feed_chunks(parser, data: bytes, sizes) -> list:
    """Feed ``data`` in chunks of the given sizes (cycled); return all frames."""
    frames = []
    pos = 0
    sizes = list(sizes)
    i = 0
    while pos < len(data):
        n = max(1, sizes[i % len(sizes)])
        frames += parser.feed(data[pos : pos + n])
        pos += n
        i += 1
    return frames


def recv_into_chunks(parser, data: bytes, rng: random.Random, max_chunk: int = 100_000) -> list:
    """Deliver ``data`` through get_buffer/buffer_updated in random-size reads, like recv_into."""
    frames = []
    pos = 0
    while pos < len(data):
        buf = parser.get_buffer(-1)
        assert len(buf) > 0 and not buf.readonly
        n = min(len(buf), len(data) - pos, rng.randint(1, max_chunk))
        buf[:n] = data[pos : pos + n]
        frames += parser.buffer_updated(n)
        pos += n
    return frames


# --------------------------------------------------------------------------- apply_mask


class TestApplyMask:
    def test_rfc_6455_5_7_hello(self, backend):
        assert backend.apply_mask(b"Hello", MASK) == HELLO_MASKED[6:]
        assert backend.apply_mask(HELLO_MASKED[6:], MASK) == b"Hello"

    @pytest.mark.parametrize("n", [0, 1, 3, 4, 7, 8, 9, 15, 16, 17, 31, 33, 125, 1024, 4099, 20000, 70001])
    def test_lengths(self, backend, n):
        data = os.urandom(n)
        out = backend.apply_mask(data, MASK)
        assert type(out) is bytes
        assert out == naive_mask(data, MASK)

    def test_bytes_like_inputs(self, backend):
        data = bytes(range(200))
        expect = naive_mask(data, MASK)
        assert backend.apply_mask(bytearray(data), bytearray(MASK)) == expect
        assert backend.apply_mask(memoryview(data), memoryview(MASK)) == expect
        assert backend.apply_mask(memoryview(b"xx" + data)[2:], MASK) == expect
        words = array.array("I", data[:100])
        assert backend.apply_mask(array.array("B", data), MASK) == expect
        assert len(backend.apply_mask(words, MASK)) == words.itemsize * len(words)

    @pytest.mark.parametrize("mask", [b"", b"abc", b"abcde", bytearray(8)])
    def test_mask_length(self, backend, mask):
        with pytest.raises(ValueError, match="^mask must be 4 bytes$"):
            backend.apply_mask(b"data", mask)

    @pytest.mark.parametrize("bad", ["text", 5, None, [1, 2]])
    def test_not_a_buffer(self, backend, bad):
        with pytest.raises(TypeError, match="bytes-like object is required"):
            backend.apply_mask(bad, MASK)
        with pytest.raises(TypeError, match="bytes-like object is required"):
            backend.apply_mask(b"data", bad)


class TestMaskAcrossTheStreamingThreshold:
    """From 12 MiB the Cython twin's copying mask writes around the cache (non-temporal
    stores, its own loop): every length, source alignment and mask phase around that size."""

    BIG = 12 << 20

    @staticmethod
    def reference(data, mask: bytes, phase: int = 0) -> bytes:
        # Whole 32-bit words through one int XOR (fast enough for 12 MiB, unlike naive_mask).
        data = bytes(data)
        key = (mask[phase % 4 :] + mask[: phase % 4]) * ((len(data) + 3) // 4)
        return (int.from_bytes(data, "little") ^ int.from_bytes(key[: len(data)], "little")).to_bytes(len(data), "little")

    @pytest.mark.parametrize("extra", [-1, 0, 1, 63, 64, 4099])
    @pytest.mark.parametrize("skip", [0, 1, 3, 17])
    def test_apply_mask(self, backend, extra, skip):
        raw = os.urandom(self.BIG + extra + skip)
        data = memoryview(raw)[skip:]
        assert backend.apply_mask(data, MASK) == self.reference(data, MASK)

    @pytest.mark.parametrize("masked", [False, True])
    def test_large_frame_in_odd_chunks(self, backend, masked):
        payload = os.urandom(self.BIG + 5)
        mask = MASK if masked else None
        frame = backend.build_frame(2, payload, mask=mask)
        if masked:
            assert frame[14:] == self.reference(payload, MASK)
        parser = (server_parser if masked else client_parser)(backend, max_size=None)
        # A first chunk that ends mid-word, so the rest (one chunk past the threshold) is
        # unmasked from mask phase 3.
        frames = feed_chunks(parser, frame, [14 + 3, self.BIG + 2])
        assert frames == [(2, True, False, payload)]


class TestApplyMaskInplace:
    def test_whole_buffer(self, backend):
        buf = bytearray(b"Hello")
        assert backend.apply_mask_inplace(buf, MASK) is None
        assert bytes(buf) == HELLO_MASKED[6:]

    @pytest.mark.parametrize("offset,length", [(0, -1), (3, -1), (3, 0), (1, 5), (0, 100), (99, 1), (100, -1), (7, 70)])
    def test_ranges(self, backend, offset, length):
        data = os.urandom(100)
        buf = bytearray(data)
        backend.apply_mask_inplace(buf, MASK, offset, length)
        end = 100 if length < 0 else offset + length
        assert bytes(buf) == data[:offset] + naive_mask(data[offset:end], MASK) + data[end:]

    def test_every_short_length_and_offset_phase(self, backend):
        # Every length through the small path's 16-, 8-, 4- and 1-byte steps and past it.
        data = os.urandom(300)
        for length in range(0, 290):
            for offset in (0, 1, 3):
                buf = bytearray(data)
                backend.apply_mask_inplace(buf, MASK, offset, length)
                end = offset + length
                assert bytes(buf) == data[:offset] + naive_mask(data[offset:end], MASK) + data[end:], (length, offset)

    def test_large_and_memoryview(self, backend):
        data = os.urandom(50_000)
        buf = bytearray(data)
        backend.apply_mask_inplace(memoryview(buf)[10:], MASK)
        assert bytes(buf) == data[:10] + naive_mask(data[10:], MASK)

    @pytest.mark.parametrize("offset,length", [(-1, -1), (101, -1), (0, 101), (50, 51), (-5, 2)])
    def test_out_of_range(self, backend, offset, length):
        with pytest.raises(ValueError, match="^range out of buffer$"):
            backend.apply_mask_inplace(bytearray(100), MASK, offset, length)

    def test_readonly(self, backend):
        with pytest.raises(TypeError, match="^buffer must be writable$"):
            backend.apply_mask_inplace(b"abcd", MASK)
        with pytest.raises(TypeError, match="^buffer must be writable$"):
            backend.apply_mask_inplace(memoryview(bytearray(4)).toreadonly(), MASK)

    def test_errors(self, backend):
        with pytest.raises(TypeError, match="bytes-like object is required"):
            backend.apply_mask_inplace("abcd", MASK)
        with pytest.raises(ValueError, match="^mask must be 4 bytes$"):
            backend.apply_mask_inplace(bytearray(4), b"abc")


# --------------------------------------------------------------------------- UTF-8

VALID_UTF8 = [
    b"",
    b"ascii only",
    "héllo wörld".encode(),
    "€ 中文 日本語".encode(),
    "😀🎉 \U0010ffff".encode(),
    "\u0080\u07ff\u0800\uffff\U00010000".encode(),
    b"\xed\x9f\xbf",  # U+D7FF, just below the surrogates
    b"\xee\x80\x80",  # U+E000, just above
    ("a" * 100 + "é" + "b" * 100).encode(),
]
INVALID_UTF8 = [
    b"\x80",  # stray continuation
    b"\xbf",
    b"\xc0\xaf",  # overlong '/'
    b"\xc1\xbf",  # overlong
    b"\xe0\x80\xaf",  # overlong 3-byte
    b"\xe0\x9f\xbf",
    b"\xf0\x80\x80\xaf",  # overlong 4-byte
    b"\xf0\x8f\xbf\xbf",
    b"\xed\xa0\x80",  # U+D800 surrogate
    b"\xed\xbf\xbf",  # U+DFFF
    b"\xf4\x90\x80\x80",  # U+110000
    b"\xf5\x80\x80\x80",
    b"\xff",
    b"\xfe",
    b"\xc3",  # truncated
    b"\xe2\x82",
    b"\xf0\x9f\x98",
    b"\xc3\x28",  # bad continuation
    b"\xe2\x28\xa1",
    b"\xf0\x9f\x28\x80",
    b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",  # Autobahn 6.x style
]


class TestValidateUtf8:
    @pytest.mark.parametrize("data", VALID_UTF8)
    def test_valid(self, backend, data):
        assert backend.validate_utf8(data) is True
        assert backend.validate_utf8(bytearray(data)) is True
        assert backend.validate_utf8(memoryview(data)) is True

    @pytest.mark.parametrize("data", INVALID_UTF8)
    def test_invalid(self, backend, data):
        assert backend.validate_utf8(data) is False

    @pytest.mark.parametrize("bad", [b"\x80", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82"])
    def test_invalid_at_every_position(self, backend, bad):
        text = ("ascii and ünïcödé 😀 " * 3).encode()
        for pos in range(len(text) + 1):
            # only cut at code-point boundaries, so the sole defect is ``bad``
            if pos < len(text) and (text[pos] & 0xC0) == 0x80:
                continue
            assert backend.validate_utf8(text[:pos] + bad + text[pos:]) is False, pos
        long_ascii = b"x" * 40_000
        for pos in (0, 7, 8, 15, 16, 17, 20_000, 39_999, 40_000):
            assert backend.validate_utf8(long_ascii[:pos] + bad + long_ascii[pos:]) is False

    def test_large(self, backend):
        assert backend.validate_utf8(("😀 é 中 abc" * 10_000).encode()) is True

    def test_not_a_buffer(self, backend):
        with pytest.raises(TypeError, match="bytes-like object is required"):
            backend.validate_utf8("text")


class TestUtf8Validator:
    @pytest.mark.parametrize("data", VALID_UTF8)
    def test_byte_at_a_time(self, backend, data):
        v = backend.Utf8Validator()
        for i in range(len(data)):
            assert v.feed(data[i : i + 1]) is True
        assert v.feed(b"", final=True) is True
        assert v.valid is True

    @pytest.mark.parametrize("data", INVALID_UTF8)
    def test_invalid(self, backend, data):
        v = backend.Utf8Validator()
        results = [v.feed(data[i : i + 1]) for i in range(len(data))]
        results.append(v.feed(b"", final=True))
        assert results[-1] is False
        # sticky: once False, False until reset
        first = results.index(False)
        assert all(r is False for r in results[first:])
        assert v.valid is False
        assert v.feed(b"ok") is False
        v.reset()
        assert v.valid is True and v.feed(b"ok", final=True) is True

    @pytest.mark.parametrize(
        "prefix",
        [b"\xed\xa0", b"\xe0\x80", b"\xf0\x80", b"\xf4\x90", b"\xc0", b"\xf5", b"\x80", b"\xe2\x28"],
    )
    def test_fail_fast_mid_code_point(self, backend, prefix):
        """RFC 6455 §8.1: fail as soon as the bytes so far cannot begin valid UTF-8."""
        v = backend.Utf8Validator()
        assert v.feed(b"abc" + prefix) is False

    def test_incomplete_is_fine_until_final(self, backend):
        v = backend.Utf8Validator()
        assert v.feed(b"abc\xf0\x9f") is True
        assert v.feed(b"\x98") is True
        assert v.feed(b"", final=True) is False
        v.reset()
        assert v.feed(b"\xf0\x9f\x98", final=False) is True
        assert v.feed(b"\x80 done", final=True) is True
        assert v.feed("é".encode(), final=True) is True  # a fresh message after final

    def test_non_byte_items(self, backend):
        # array('H') of 41 41 41 e2 (little-endian): the pending lead byte must survive.
        words = array.array("H", [0x4141, 0xE241] if array.array("H", [1]).tobytes() == b"\x01\x00" else [0x4141, 0x41E2])
        v = backend.Utf8Validator()
        assert v.feed(words) is True
        assert v.feed(b"\x82\xac", final=True) is True

    def test_not_a_buffer(self, backend):
        v = backend.Utf8Validator()
        with pytest.raises(TypeError, match="bytes-like object is required"):
            v.feed("text")


# --------------------------------------------------------------------------- FrameParser


def client_parser(backend, **kw):
    return backend.FrameParser(expect_mask=False, **kw)


def server_parser(backend, **kw):
    return backend.FrameParser(expect_mask=True, **kw)


class TestFrameParserRFC:
    def test_unmasked_hello(self, backend):
        assert client_parser(backend).feed(HELLO_UNMASKED) == [(1, True, False, "Hello")]

    def test_masked_hello(self, backend):
        assert server_parser(backend).feed(HELLO_MASKED) == [(1, True, False, "Hello")]

    def test_fragmented_hello(self, backend):
        p = client_parser(backend)
        assert p.feed(HEL_LO[0]) == [(1, False, False, b"Hel")]
        assert p.in_message is True
        assert p.feed(HEL_LO[1]) == [(0, True, False, b"lo")]
        assert p.in_message is False

    def test_ping_pong(self, backend):
        assert client_parser(backend).feed(PING_HELLO) == [(9, True, False, b"Hello")]
        assert server_parser(backend).feed(PONG_HELLO_MASKED) == [(10, True, False, b"Hello")]

    def test_256_bytes_binary(self, backend):
        data = bytes([0x82, 0x7E, 0x01, 0x00]) + os.urandom(256)
        assert client_parser(backend).feed(data) == [(2, True, False, data[4:])]

    def test_64k_binary(self, backend):
        payload = os.urandom(65536)
        data = bytes([0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]) + payload
        assert client_parser(backend).feed(data) == [(2, True, False, payload)]

    def test_decode_text_off(self, backend):
        p = client_parser(backend, decode_text=False)
        assert p.feed(HELLO_UNMASKED) == [(1, True, False, b"Hello")]

    def test_byte_at_a_time(self, backend):
        stream = HELLO_UNMASKED + HEL_LO[0] + PING_HELLO + HEL_LO[1] + bytes([0x82, 0x7E, 0x01, 0x00]) + bytes(256)
        p = client_parser(backend)
        frames = []
        for i in range(len(stream)):
            frames += p.feed(stream[i : i + 1])
        assert frames == [
            (1, True, False, "Hello"),
            (1, False, False, b"Hel"),
            (9, True, False, b"Hello"),
            (0, True, False, b"lo"),
            (2, True, False, bytes(256)),
        ]
        assert p.buffered == 0

    def test_buffered(self, backend):
        p = client_parser(backend)
        assert p.feed(HELLO_UNMASKED[:3]) == []
        assert p.buffered == 3
        assert p.feed(HELLO_UNMASKED[3:] + PING_HELLO[:1]) == [(1, True, False, "Hello")]
        assert p.buffered == 1

    def test_input_types(self, backend):
        for data in (HELLO_MASKED, bytearray(HELLO_MASKED), memoryview(b"junk" + HELLO_MASKED)[4:]):
            assert server_parser(backend).feed(data) == [(1, True, False, "Hello")]
        with pytest.raises(TypeError, match="^can't concat str to bytearray$"):
            server_parser(backend).feed("text")

    def test_attributes_are_writable(self, backend):
        p = client_parser(backend)
        assert (p.expect_mask, p.max_size, p.compressed_max_size, p.rsv1_allowed, p.decode_text, p.error) == (
            False, 2**20, None, False, True, None,
        )
        p.expect_mask = True
        p.max_size = 10
        p.compressed_max_size = 20
        p.rsv1_allowed = True
        p.decode_text = False
        assert (p.expect_mask, p.max_size, p.compressed_max_size, p.rsv1_allowed, p.decode_text) == (
            True, 10, 20, True, False,
        )
        assert p.feed(HELLO_MASKED) == [(1, True, False, b"Hello")]
        p.max_size = 4
        assert p.feed(HELLO_MASKED) == []
        assert p.error == PayloadTooBig("message too big: 5 bytes > 4 bytes")
        p.error = None
        p.max_size = None
        assert p.feed(HELLO_MASKED) == [(1, True, False, b"Hello")]


def apply4(payload: bytes) -> bytes:
    """``MASK`` followed by ``payload`` masked with it."""
    return MASK + naive_mask(payload, MASK)


def _err(backend, data: bytes, *, chunked: bool = False, **kw):
    kw.setdefault("expect_mask", False)
    p = backend.FrameParser(**kw)
    frames = feed_chunks(p, data, [1]) if chunked else p.feed(data)
    return frames, p.error, p


def m(b0: int, payload: bytes = b"") -> bytes:
    """An unmasked frame with first byte ``b0``."""
    n = len(payload)
    if n < 126:
        return bytes([b0, n]) + payload
    if n < 65536:
        return bytes([b0, 126]) + n.to_bytes(2, "big") + payload
    return bytes([b0, 127]) + n.to_bytes(8, "big") + payload


PROTOCOL_ERRORS = [
    # (stream, expected reason, code, parser options)
    (m(0x91), "reserved bits must be 0", 1002, {}),
    (m(0xA1), "reserved bits must be 0", 1002, {}),
    (m(0xC1), "reserved bits must be 0", 1002, {}),  # RSV1 not negotiated
    (m(0xC9), "reserved bits must be 0", 1002, {"rsv1_allowed": True}),  # RSV1 on a control frame
    (m(0x83), "reserved opcode 0x3", 1002, {}),
    (m(0x87), "reserved opcode 0x7", 1002, {}),
    (m(0x8B), "reserved opcode 0xb", 1002, {}),
    (m(0x8F), "reserved opcode 0xf", 1002, {}),
    (m(0x09), "fragmented control frame", 1002, {}),
    (m(0x89, bytes(126)), "control frame too long: at most 125 bytes, in the 7-bit length field", 1002, {}),
    (m(0x88, bytes(126)), "control frame too long: at most 125 bytes, in the 7-bit length field", 1002, {}),
    (m(0x80), "unexpected continuation frame", 1002, {}),
    (m(0x01) + m(0x81), "expected a continuation frame", 1002, {}),
    (m(0x01) + m(0x82), "expected a continuation frame", 1002, {}),
    (m(0x41, b"x") + m(0xC0), "RSV1 set on a continuation frame", 1002, {"rsv1_allowed": True}),
    (bytes([0x81, 0x80, 1, 2, 3, 4]), "incorrect masking: server frames must not be masked", 1002, {}),
    (m(0x81), "incorrect masking: client frames must be masked", 1002, {"expect_mask": True}),
    (bytes([0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0]), "frame length has the most significant bit set", 1002, {}),
    # RFC 6455 §5.2: "the minimal number of bytes MUST be used to encode the length".
    (bytes([0x81, 0x7E, 0, 5]) + b"hello", "frame length not in its minimal form", 1002, {}),
    (bytes([0x82, 0x7E, 0, 125]) + bytes(125), "frame length not in its minimal form", 1002, {}),
    (bytes([0x81, 0x7F]) + (5).to_bytes(8, "big") + b"hello", "frame length not in its minimal form", 1002, {}),
    (bytes([0x82, 0x7F]) + (65535).to_bytes(8, "big") + bytes(65535), "frame length not in its minimal form", 1002, {}),
    (m(0x81, b"\xff"), "invalid UTF-8 in text message", 1007, {}),
    (m(0x81, b"ok\xed\xa0\x80"), "invalid UTF-8 in text message", 1007, {}),
    (m(0x82, bytes(11)), "message too big: 11 bytes > 10 bytes", 1009, {"max_size": 10}),
    (m(0x02, bytes(6)) + m(0x80, bytes(5)), "message too big: 11 bytes > 10 bytes", 1009, {"max_size": 10}),
    (m(0xC2, bytes(21)), "message too big: 21 bytes > 20 bytes", 1009,
     {"max_size": 100, "compressed_max_size": 20, "rsv1_allowed": True}),
    # Compressed messages: the bound is per frame (inflated size is the decompressor's job).
    (m(0x42, bytes(15)) + m(0x00, bytes(20)) + m(0x80, bytes(21)), "message too big: 21 bytes > 20 bytes", 1009,
     {"max_size": 100, "compressed_max_size": 20, "rsv1_allowed": True}),
]


class TestFrameParserErrors:
    @pytest.mark.parametrize("chunked", [False, True], ids=["whole", "bytewise"])
    @pytest.mark.parametrize("stream,reason,code,opts", PROTOCOL_ERRORS)
    def test_error(self, backend, stream, reason, code, opts, chunked):
        good = bytes([0x89, 0x84]) + apply4(b"ping") if opts.get("expect_mask") else m(0x89, b"ping")
        frames, error, p = _err(backend, good + stream + good, chunked=chunked, **opts)
        assert frames[0] == (9, True, False, b"ping")
        assert isinstance(error, ProtocolError)
        assert (type(error), error.code, error.reason, str(error)) == (
            PayloadTooBig if code == 1009 else ProtocolError, code, reason, reason,
        )
        assert p.buffered == 0
        # the parser ignores further input once failed
        assert p.feed(good) == [] and p.error is error

    def test_size_limit_decided_from_the_header(self, backend):
        """Only the header of a 2**40-byte frame arrives: the error is immediate."""
        p = client_parser(backend)
        header = bytes([0x82, 0x7F]) + (2**40).to_bytes(8, "big")
        assert p.feed(header) == []
        assert p.error == PayloadTooBig(f"message too big: {2**40} bytes > {2**20} bytes")
        p = server_parser(backend, max_size=1000)
        assert p.feed(bytes([0x82, 0xFE, 0x03, 0xE9])) == []  # 1001 bytes, mask key not even sent
        assert p.error.code == 1009

    def test_no_limit(self, backend):
        p = client_parser(backend, max_size=None)
        payload = os.urandom(2**21)
        assert p.feed(m(0x82, payload)) == [(2, True, False, payload)]

    def test_exact_limit(self, backend):
        p = client_parser(backend, max_size=10)
        assert p.feed(m(0x02, bytes(4)) + m(0x00, bytes(6)) + m(0x80)) == [
            (2, False, False, bytes(4)), (0, True, False, bytes(6)),  # continuations merged
        ]
        assert p.error is None

    def test_continuation_frames_one_call_completes_are_merged(self, backend):
        """Fairness: a peer sending tiny or empty fragments costs one frame per read, not one
        per fragment; control frames keep their place (they end a run), and so does an error."""
        p = client_parser(backend, max_size=None)
        tiny = b"".join(m(0x00, b"x") for _ in range(5000)) + b"".join(m(0x00) for _ in range(5000))
        assert p.feed(m(0x02, b"a") + tiny) == [(2, False, False, b"a"), (0, False, False, b"x" * 5000)]
        assert p.feed(m(0x00, b"b") + m(0x00, b"c") + m(0x89, b"p") + m(0x00, b"d") + m(0x80, b"e")) == [
            (0, False, False, b"bc"), (9, True, False, b"p"), (0, True, False, b"de"),
        ]
        # Runs never span calls, nor messages.
        assert p.feed(m(0x02, b"a") + m(0x00, b"b")) == [(2, False, False, b"a"), (0, False, False, b"b")]
        assert p.feed(m(0x00, b"c") + m(0x80, b"d") + m(0x02, b"e") + m(0x00, b"f")) == [
            (0, True, False, b"cd"), (2, False, False, b"e"), (0, False, False, b"f"),
        ]
        # The frames before an error are all reported, the run included.
        assert p.feed(m(0x00, b"g") + m(0x00, b"h") + m(0x03)) == [(0, False, False, b"gh")]
        assert p.error is not None and p.error.code == 1002

    def test_control_frames_interleaved(self, backend):
        p = client_parser(backend, max_size=10)
        frames = p.feed(m(0x01, b"ab") + m(0x89, bytes(125)) + m(0x8A) + m(0x80, "é".encode()))
        assert frames == [
            (1, False, False, b"ab"), (9, True, False, bytes(125)), (10, True, False, b""),
            (0, True, False, "é".encode()),
        ]

    def test_frames_before_the_error_are_returned(self, backend):
        frames, error, _ = _err(backend, HELLO_UNMASKED * 3 + m(0x83) + HELLO_UNMASKED)
        assert frames == [(1, True, False, "Hello")] * 3
        assert error == ProtocolError("reserved opcode 0x3", 1002)


class TestFrameParserBuffers:
    def test_get_buffer_small_frames(self, backend):
        stream = b"".join(m(0x82, os.urandom(n)) for n in range(0, 300, 7)) + HELLO_UNMASKED
        rng = random.Random(1)
        for _ in range(5):
            p = client_parser(backend)
            frames = recv_into_chunks(p, stream, rng, max_chunk=50)
            assert frames == client_parser(backend).feed(stream)
            assert p.buffered == 0

    @pytest.mark.parametrize("masked", [False, True])
    @pytest.mark.parametrize("size", [65535, 65536, 200_000, 2**20])
    def test_large_payload_random_chunks(self, backend, masked, size):
        payload = os.urandom(size)
        text = ("é€😀" * (size // 9 + 1)).encode()[:size]
        while True:  # cut on a code point boundary
            try:
                text.decode()
                break
            except UnicodeDecodeError:
                text = text[:-1]
        mask = os.urandom(4) if masked else None
        stream = (
            backend.build_frame(2, payload, mask=mask)
            + backend.build_frame(9, b"p", mask=mask)
            + backend.build_frame(1, text, mask=mask)
            + backend.build_frame(2, payload[:1000], fin=False, mask=mask)
            + backend.build_frame(0, payload, fin=False, mask=mask)
            + backend.build_frame(0, b"end", mask=mask)
        )
        expected = [
            (2, True, False, payload), (9, True, False, b"p"), (1, True, False, text.decode()),
            (2, False, False, payload[:1000]), (0, False, False, payload), (0, True, False, b"end"),
        ]
        rng = random.Random(size)
        for max_chunk in (1000, 70_000, 3 * 2**20):
            p = backend.FrameParser(expect_mask=masked, max_size=None)
            assert merged(recv_into_chunks(p, stream, rng, max_chunk)) == merged(expected)
            assert p.buffered == 0
            p = backend.FrameParser(expect_mask=masked, max_size=None)
            sizes = [rng.randint(1, max_chunk) for _ in range(50)]
            assert merged(feed_chunks(p, stream, sizes)) == merged(expected)

    def test_buffered_counts_a_large_payload(self, backend):
        p = client_parser(backend)
        frame = m(0x82, bytes(100_000))
        p.feed(frame[:50_000])
        assert p.buffered == 50_000
        buf = p.get_buffer()
        n = min(len(buf), 1000)
        buf[:n] = frame[50_000 : 50_000 + n]
        assert p.buffer_updated(n) == []
        assert p.buffered == 50_000 + n

    def test_large_text_invalid(self, backend):
        bad = m(0x81, b"a" * 70_000 + b"\xff" + b"b" * 10)
        p = client_parser(backend)
        assert recv_into_chunks(p, bad + PING_HELLO, random.Random(3), 9000) == []
        assert p.error == ProtocolError("invalid UTF-8 in text message", 1007)

    def test_buffer_updated_range(self, backend):
        p = client_parser(backend)
        with pytest.raises(ValueError, match="^nbytes out of range$"):
            p.buffer_updated(1)  # no buffer handed out yet
        buf = p.get_buffer()
        with pytest.raises(ValueError, match="^nbytes out of range$"):
            p.buffer_updated(len(buf) + 1)
        with pytest.raises(ValueError, match="^nbytes out of range$"):
            p.buffer_updated(-1)
        assert p.buffer_updated(0) == []

    def test_sizehint(self, backend):
        p = client_parser(backend)
        assert len(p.get_buffer(200_000)) >= 65536  # a hint: the pure twin always offers 128 KiB
        assert len(p.get_buffer()) >= 4096


# --------------------------------------------------------------------------- FrameParser: early UTF-8

# Autobahn 6.4.3 / 6.4.4: "κόσμε", then U+110000 (not Unicode), then "edited", in chops.
KOSME = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"
NOT_UNICODE = b"\xf4\x90\x80\x80"  # invalid from its second byte on
INVALID_UTF8 = ProtocolError("invalid UTF-8 in text message", 1007)
GOOD_TEXT = "Grüße, κόσμε — 中文 😀 ".encode()


def deliver(parser, data: bytes, sizes, via_buffer: bool):
    """Deliver ``data`` in chunks of ``sizes`` (cycled) by feed or get_buffer/buffer_updated.

    A chunk larger than the buffer get_buffer offers takes several reads. Stops at the first
    call that sets ``error``. Returns the frames and the stream offsets before and after that
    call (``None, None`` when no error was set).
    """
    frames = []
    pos = i = 0
    while pos < len(data):
        stop = min(pos + max(1, sizes[i % len(sizes)]), len(data))
        i += 1
        while pos < stop:
            n = stop - pos
            if via_buffer:
                buf = parser.get_buffer(-1)
                n = min(n, len(buf))
                buf[:n] = data[pos : pos + n]
                frames += parser.buffer_updated(n)
            else:
                frames += parser.feed(data[pos : pos + n])
            if parser.error is not None:
                return frames, pos, pos + n
            pos += n
    return frames, None, None


def padding(n: int) -> bytes:
    """``n`` bytes of valid, mostly non-ASCII UTF-8 (cut on a code point boundary)."""
    return (GOOD_TEXT * (n // len(GOOD_TEXT) + 1))[:n].decode("utf-8", "ignore").encode().ljust(n, b"a")


class TestFrameParserEarlyUtf8:
    """SPEC "Bad input": 1007 as soon as the bytes received so far cannot be valid, mid-frame."""

    @pytest.mark.parametrize("via_buffer", [False, True], ids=["feed", "get_buffer"])
    @pytest.mark.parametrize("masked", [False, True], ids=["client", "server"])
    def test_autobahn_6_4_3_three_chops(self, backend, masked, via_buffer):
        mask = MASK if masked else None
        frame = backend.build_frame(1, KOSME + NOT_UNICODE + b"edited", mask=mask)
        hdr = len(frame) - len(KOSME + NOT_UNICODE + b"edited")
        p = backend.FrameParser(expect_mask=masked)
        sizes = [hdr + len(KOSME), len(NOT_UNICODE), 6]
        frames, before, after = deliver(p, frame, sizes, via_buffer)
        assert frames == [] and p.error == INVALID_UTF8
        assert (before, after) == (hdr + len(KOSME), hdr + len(KOSME) + 4)  # the frame is not complete
        assert p.buffered == 0 and p.feed(frame) == [] and p.error == INVALID_UTF8

    @pytest.mark.parametrize("via_buffer", [False, True], ids=["feed", "get_buffer"])
    @pytest.mark.parametrize("masked", [False, True], ids=["client", "server"])
    @pytest.mark.parametrize("fin", [True, False], ids=["fin", "first_fragment"])
    @pytest.mark.parametrize(
        "pad,sizes",
        [
            (0, [1]),
            (0, [3, 5]),
            (1000, [7, 100]),
            (60_000, [4096]),
            (70_000, [1]),  # large payload (received in place by the Cython twin), byte by byte
            (70_000, [4096]),
            (70_000, [65536, 1, 999]),
            (300_000, [4096, 70_000]),
        ],
    )
    def test_fails_at_the_call_that_brings_the_bad_byte(self, backend, masked, via_buffer, fin, pad, sizes):
        mask = MASK if masked else None
        # The tail is longer than any chunk: the frame is never complete when the bad byte comes.
        payload = padding(pad) + KOSME + NOT_UNICODE + GOOD_TEXT * 2100
        ping = backend.build_frame(9, b"ping", mask=mask)
        frame = backend.build_frame(1, payload, fin=fin, mask=mask)
        stream = ping + frame + backend.build_frame(2, b"never", mask=mask)
        bad = len(ping) + len(frame) - len(payload) + pad + len(KOSME) + 1  # the \x90
        p = backend.FrameParser(expect_mask=masked, max_size=None)
        frames, before, after = deliver(p, stream, sizes, via_buffer)
        assert p.error == INVALID_UTF8
        assert before <= bad < after < len(ping) + len(frame)
        assert frames == [(9, True, False, b"ping")]
        assert p.buffered == 0 and p.feed(stream) == [] and p.error == INVALID_UTF8

    @pytest.mark.parametrize("via_buffer", [False, True], ids=["feed", "get_buffer"])
    @pytest.mark.parametrize("masked", [False, True], ids=["client", "server"])
    @pytest.mark.parametrize("pad", [0, 70_000])
    @pytest.mark.parametrize(
        "bad",
        [b"\xff", b"\x80", b"\xc0", b"\xc1", b"\xf5", b"\xed\xa0", b"\xe0\x9f", b"\xf0\x8f", b"\xf4\x90", b"\xce(",
         b"\xe2\x82(", b"\xf0\x9f\x98("],
    )
    def test_fails_mid_code_point(self, backend, masked, via_buffer, pad, bad):
        """The error comes with the byte that makes the sequence impossible, not at its end."""
        mask = MASK if masked else None
        payload = padding(pad) + b"ok" + bad + b"\x80\x80\x80" + b"x" * 100
        frame = backend.build_frame(1, payload, mask=mask)
        hdr = len(frame) - len(payload)
        cut = hdr + pad + 2 + len(bad) - 1  # everything before the decisive byte
        p = backend.FrameParser(expect_mask=masked, max_size=None)
        frames, before, after = deliver(p, frame, [cut, 1, 1], via_buffer)
        assert p.error == INVALID_UTF8 and frames == []
        assert (before, after) == (cut, cut + 1)

    @pytest.mark.parametrize("via_buffer", [False, True], ids=["feed", "get_buffer"])
    def test_state_is_reset_for_each_frame(self, backend, via_buffer):
        """A first fragment ending in a partial code point must not leak it into the next frame."""
        first = backend.build_frame(1, b"ab\xce\xba", fin=False)
        end = backend.build_frame(0, b"", fin=True)
        second = backend.build_frame(1, b"\xba" + b"xyz")  # a stray continuation byte: invalid
        stream = first + end + second
        p = client_parser(backend)
        frames, before, after = deliver(p, stream, [len(first) - 1, 1 + len(end) + 3, 1, 3], via_buffer)
        assert frames == [(1, False, False, b"ab\xce\xba"), (0, True, False, b"")]
        assert p.error == INVALID_UTF8
        assert (before, after) == (len(first) - 1, len(first) + len(end) + 3)

    @pytest.mark.parametrize("via_buffer", [False, True], ids=["feed", "get_buffer"])
    @pytest.mark.parametrize("pad", [0, 70_000])
    def test_continuation_frames_are_checked_mid_frame(self, backend, via_buffer, pad):
        """A text message's continuation frame is checked as it arrives, from the state the
        previous frame ended in (here inside "€", which the continuation completes)."""
        euro = "€".encode()
        payload = euro[1:] + padding(pad) + b"\xff" + b"x" * 50
        first = backend.build_frame(1, b"ab" + euro[:1], fin=False)
        stream = first + backend.build_frame(0, payload)
        bad = len(stream) - 51  # the offset of the 0xFF
        p = client_parser(backend, max_size=None)
        frames, before, after = deliver(p, stream, [7, 13, 4099], via_buffer)
        assert before <= bad < after < len(stream)  # mid-frame: 50 bytes still to come
        assert p.error.code == 1007
        assert frames == [(1, False, False, b"ab" + euro[:1])]

    @pytest.mark.parametrize("via_buffer", [False, True], ids=["feed", "get_buffer"])
    @pytest.mark.parametrize("opts,b0", [({"rsv1_allowed": True}, 0xC1), ({"decode_text": False}, 0x81)],
                             ids=["compressed", "decode_text_off"])
    def test_not_checked(self, backend, via_buffer, opts, b0):
        """Compressed text (its bytes are deflate's) and decode_text=False: no early check."""
        payload = b"\xff" * 70_000
        stream = m(b0, payload)
        p = client_parser(backend, max_size=None, **opts)
        frames, before, _ = deliver(p, stream, [1000], via_buffer)
        assert before is None and p.error is None
        assert frames == [(1, True, b0 == 0xC1, payload)]

    def test_each_byte_is_checked_once(self, backend):
        """An 8 MiB text frame arriving in 1 KiB chunks: linear, not quadratic (~32 GB rescanned)."""
        import time

        payload = padding(8 << 20)
        frame = backend.build_frame(1, payload, mask=MASK)
        view = memoryview(frame)
        p = server_parser(backend, max_size=None)
        t0 = time.process_time()
        frames = []
        for i in range(0, len(frame), 1024):
            frames += p.feed(view[i : i + 1024])
        elapsed = time.process_time() - t0
        assert frames == [(1, True, False, payload.decode())]
        assert elapsed < 5.0, elapsed

    def test_pure_twin_feeds_each_byte_once(self, monkeypatch):
        """The pure twin's validator sees every payload byte of the incomplete frame exactly once."""
        from kn_sock import _pure

        seen = []

        class Counting(_pure.Utf8Validator):
            __slots__ = ()

            def feed(self, data, final=False):
                seen.append(bytes(data))
                return super().feed(data, final)

        monkeypatch.setattr(_pure, "Utf8Validator", Counting)
        payload = padding(100_000)
        frame = _pure.build_frame(1, payload, mask=MASK)
        p = _pure.FrameParser(expect_mask=True, max_size=None)
        assert feed_chunks(p, frame, [1, 2, 3, 4093, 10_000]) == [(1, True, False, payload.decode())]
        got = b"".join(seen)
        assert payload.startswith(got) and len(got) > len(payload) - 10_000

    @settings(max_examples=60, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                     HealthCheck.data_too_large])
    @given(
        text=st.text(max_size=200),
        pad=st.sampled_from([0, 0, 70_000]),
        masked=st.booleans(),
        fin=st.booleans(),
        via_buffer=st.booleans(),
        cuts=st.lists(st.integers(0, 71_000), max_size=25),
    )
    def test_valid_text_in_random_chops_never_fails(self, backend, text, pad, masked, fin, via_buffer, cuts):
        payload = padding(pad) + text.encode("utf-8", "surrogatepass")
        if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
            payload = padding(pad) + text.encode("utf-8", "replace")
        mask = MASK if masked else None
        stream = backend.build_frame(1, payload, fin=fin, mask=mask) + backend.build_frame(9, b"", mask=mask)
        bounds = sorted({c for c in cuts if 0 < c < len(stream)}) + [len(stream)]
        sizes = [b - a for a, b in zip([0] + bounds, bounds)]
        p = backend.FrameParser(expect_mask=masked, max_size=None)
        frames, before, _ = deliver(p, stream, sizes, via_buffer)
        assert before is None and p.error is None
        assert frames == [(1, fin, False, payload.decode() if fin else payload), (9, True, False, b"")]


# --------------------------------------------------------------------------- build_frame


class TestBuildFrame:
    def test_rfc_6455_5_7(self, backend):
        assert backend.build_frame(1, "Hello") == HELLO_UNMASKED
        assert backend.build_frame(1, b"Hello", mask=MASK) == HELLO_MASKED
        assert backend.build_frame(1, "Hel", fin=False) + backend.build_frame(0, b"lo") == b"".join(HEL_LO)
        assert backend.build_frame(9, b"Hello") == PING_HELLO
        assert backend.build_frame(10, "Hello", mask=bytearray(MASK)) == PONG_HELLO_MASKED

    @pytest.mark.parametrize("n,header", [
        (0, b"\x82\x00"), (125, b"\x82\x7d"), (126, b"\x82\x7e\x00\x7e"), (256, b"\x82\x7e\x01\x00"),
        (65535, b"\x82\x7e\xff\xff"), (65536, b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
    ])
    def test_length_encodings(self, backend, n, header):
        payload = os.urandom(n)
        assert backend.build_frame(2, payload) == header + payload
        masked = backend.build_frame(2, payload, mask=MASK)
        assert masked == bytes([header[0], header[1] | 0x80]) + header[2:] + MASK + naive_mask(payload, MASK)

    def test_flags_and_payload_types(self, backend):
        assert backend.build_frame(2, bytearray(b"ab"), fin=False, rsv1=True) == b"\x42\x02ab"
        assert backend.build_frame(0, memoryview(b"xab")[1:], rsv1=False) == b"\x80\x02ab"
        assert backend.build_frame(1, "é😀") == b"\x81\x06" + "é😀".encode()

        class S(str):
            def __str__(self):
                return "other"

        assert backend.build_frame(1, S("x")) == b"\x81\x05other"
        assert backend.build_frame(True, b"") == b"\x81\x00"

    def test_roundtrip(self, backend):
        for n in (0, 1, 125, 126, 65535, 65536, 100_000):
            payload = os.urandom(n)
            p = server_parser(backend, max_size=None)
            assert p.feed(backend.build_frame(2, payload, mask=os.urandom(4))) == [(2, True, False, payload)]

    def test_errors(self, backend):
        for op in (-1, 16, 2**70):
            with pytest.raises(ValueError, match="^opcode must be between 0 and 15$"):
                backend.build_frame(op, b"")
        with pytest.raises(TypeError, match="bytes-like object is required"):
            backend.build_frame(2, 5)
        with pytest.raises(TypeError, match="bytes-like object is required"):
            backend.build_frame(99, None)  # the payload is checked first
        with pytest.raises(ValueError, match="^mask must be 4 bytes$"):
            backend.build_frame(2, b"x", mask=b"abc")
        with pytest.raises(TypeError):
            backend.build_frame(2, b"x", mask=1)
        with pytest.raises(UnicodeEncodeError):
            backend.build_frame(1, "\ud800")


def test_same_public_names(backend):
    assert sorted(backend.__all__) == sorted(
        ["apply_mask", "apply_mask_inplace", "validate_utf8", "Utf8Validator", "FrameParser", "build_frame", "Frame", "Waiter",
         "next_mask", "AsyncCore", "send_many", "write_message", "OP_EARLY"]
    )
    assert backend.Frame is tuple
    assert backend.OP_EARLY == -1


def test_docstrings_read_the_same_in_both_twins(backend):
    """``help()`` / ``inspect.getdoc`` of what users call on a connection: the text of the pure
    twin's docstring, not a generated signature line first (audit), and no method without one."""
    from kn_sock import _pure

    for name in ("recv", "send", "send_nowait", "__aiter__", "__anext__", "get_buffer", "buffer_updated"):
        ours, pure = (inspect.getdoc(getattr(twin.AsyncCore, name)) for twin in (backend, _pure))
        assert ours and pure and ours.splitlines()[0] == pure.splitlines()[0], name
        assert "timeout" in str(inspect.signature(backend.AsyncCore.recv))


# --------------------------------------------------------------------------- send_many


def test_send_many_writes_to_each_socket(backend):
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        for a, _ in pairs:
            a.setblocking(False)
        fds = [a.fileno() for a, _ in pairs] + [pairs[0][0].fileno()]
        assert backend.send_many(fds, bytearray(b"frame")) == [5, 5, 5, 5]
        assert pairs[0][1].recv(100) == b"frameframe"
        assert [b.recv(100) for _, b in pairs[1:]] == [b"frame", b"frame"]
        assert backend.send_many([], b"x") == []
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_send_many_reports_errors_as_negative_errno(backend):
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        b.close()
        assert backend.send_many([a.fileno()], b"x") == [-errno.EPIPE]
        c, d = socket.socketpair()
        c.setblocking(False)
        try:
            results = [backend.send_many([c.fileno()], b"y" * 65536)[0] for _ in range(200)]
            assert results[-1] == -errno.EAGAIN  # full: nothing taken, nothing raised
            assert all(r == -errno.EAGAIN or 0 < r <= 65536 for r in results)
        finally:
            c.close()
            d.close()
    finally:
        a.close()


def test_send_many_bad_arguments(backend):
    with pytest.raises(TypeError, match="bytes-like"):
        backend.send_many([1], "text")
    with pytest.raises(ValueError, match="negative"):
        backend.send_many([-1], b"x")
    with pytest.raises(TypeError):
        backend.send_many([1.5], b"x")
    with pytest.raises(OverflowError):
        backend.send_many([2**64], b"x")


# --------------------------------------------------------------------------- write_message


def _read_frames(backend, sock, masked: bool, count: int = 1) -> tuple[list, bytes]:
    """Read from ``sock`` until ``count`` frames arrived; return them and the bytes read."""
    sock.settimeout(5)
    parser = backend.FrameParser(expect_mask=masked, max_size=None)
    frames: list = []
    data = bytearray()
    while len(frames) < count:
        chunk = sock.recv(1 << 20)
        assert chunk, "end of stream before the frames"
        data += chunk
        frames += parser.feed(chunk)
    assert parser.buffered == 0
    return frames, bytes(data)


def _parse_all(backend, data: bytes, masked: bool) -> list:
    return backend.FrameParser(expect_mask=masked, max_size=None).feed(data)


@pytest.mark.skipif(not hasattr(socket, "MSG_DONTWAIT"), reason="POSIX")
class TestWriteMessage:
    @pytest.mark.parametrize("masked", [False, True])
    @pytest.mark.parametrize(
        "message",
        [b"", b"hello", "h\u00e9llo \U0001f600", b"x" * 125, b"y" * 126, b"z" * 2034, b"w" * 2035, b"v" * 65535,
         b"u" * 65536, "t" * 70000, bytes(range(256)) * 1000],
        ids=lambda m: f"{type(m).__name__}{len(m)}",
    )
    def test_whole_frame(self, backend, masked, message):
        a, b = socket.socketpair()
        try:
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            assert backend.write_message(a, message, masked) is None
            frames, data = _read_frames(backend, b, masked)
            assert frames == [(1 if type(message) is str else 2, True, False, message)]
            assert ((data[1] & 0x80) != 0) == masked
        finally:
            a.close()
            b.close()

    def test_fresh_mask_each_frame(self, backend):
        a, b = socket.socketpair()
        try:
            for _ in range(20):
                assert backend.write_message(a, b"same", True) is None
            frames, data = _read_frames(backend, b, True, 20)
            assert frames == [(2, True, False, b"same")] * 20
            keys = {data[i + 2 : i + 6] for i in range(0, len(data), 10)}
            assert len(keys) == 20
        finally:
            a.close()
            b.close()

    @pytest.mark.parametrize("room", [0, 5000])
    @pytest.mark.parametrize("masked", [False, True])
    @pytest.mark.parametrize("size,text", [(100, False), (1900, True), (3000, True), (70000, False), (300000, True), (300000, False)])
    def test_what_the_kernel_leaves_is_returned_in_order(self, backend, masked, size, text, room):
        """A full socket takes part of the frame or none of it; the rest comes back, and the
        bytes written then the rest are exactly the frame."""
        a, b = socket.socketpair()
        try:
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
            a.setblocking(False)
            filler = 0
            while True:  # fill the socket up
                try:
                    filler += a.send(b"\0" * 4096)
                except BlockingIOError:
                    break
            got = bytearray()
            while len(got) < room:  # make room for part of a frame
                got += b.recv(room - len(got))
            message = ("\u00e9" * (size // 2)) if text else os.urandom(size)
            rest = backend.write_message(a, message, masked)
            if rest is None:
                assert room and size < 5000
                rest = []
            else:
                assert len(rest) >= 1
                assert all(type(part) in (bytes, memoryview) for part in rest)
                if size >= 65536 and not masked:
                    assert b"".join(bytes(p) for p in rest)[-1000:] == (message.encode() if text else message)[-1000:]
            # Drain the peer while writing the rest, then parse what arrived after the filler.
            b.setblocking(False)
            pending = [memoryview(bytes(p)) for p in rest]
            for _ in range(100000):
                while pending:
                    try:
                        n = a.send(pending[0])
                    except BlockingIOError:
                        break
                    pending[0] = pending[0][n:]
                    if not len(pending[0]):
                        pending.pop(0)
                try:
                    got += b.recv(1 << 20)
                except BlockingIOError:
                    if not pending:
                        break
            frames = _parse_all(backend, bytes(got[filler:]), masked)
            assert frames == [(1 if text else 2, True, False, message)]
            assert bytes(got[:filler]) == bytes(filler)
        finally:
            a.close()
            b.close()

    def test_errors(self, backend):
        a, b = socket.socketpair()
        try:
            with pytest.raises(TypeError, match="^message must be str or bytes, not bytearray$"):
                backend.write_message(a, bytearray(b"x"), False)
            with pytest.raises(TypeError, match="^message must be str or bytes, not int$"):
                backend.write_message(a, 3, True)
            with pytest.raises(UnicodeEncodeError):
                backend.write_message(a, "\ud800", True)
            b.close()
            with pytest.raises(BrokenPipeError):
                backend.write_message(a, b"x", True)
            with pytest.raises(BrokenPipeError):
                backend.write_message(a, b"x" * 70000, False)
        finally:
            a.close()
            b.close()


# --------------------------------------------------------------------------- FrameParser.recv_from


def _frame(opcode, payload, fin=True, rsv1=False, mask=None):
    from kn_sock._pure import build_frame

    return build_frame(opcode, payload, fin, rsv1, mask)


@pytest.fixture
def sockpair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_recv_from_returns_one_whole_message_as_its_payload(backend, sockpair):
    a, b = sockpair
    p = backend.FrameParser(expect_mask=False)
    a.sendall(_frame(2, b"hello"))
    assert p.recv_from(b) == b"hello"
    a.sendall(_frame(1, "héllo"))
    assert p.recv_from(b.fileno()) == "héllo"  # a descriptor works too
    a.sendall(_frame(1, b"\xff"))  # invalid UTF-8: the error, not a payload
    assert p.recv_from(b) == [] and p.error.code == 1007


def test_recv_from_gives_frames_when_a_read_is_not_exactly_one_message(backend, sockpair):
    a, b = sockpair
    p = backend.FrameParser(expect_mask=True)
    key = b"\x01\x02\x03\x04"
    a.sendall(_frame(2, b"ab", mask=key) + _frame(1, "cd", mask=key))
    assert p.recv_from(b) == [(2, True, False, b"ab"), (1, True, False, "cd")]
    a.sendall(_frame(1, "frag", fin=False, mask=key))
    assert p.recv_from(b) == [(1, False, False, b"frag")]
    a.sendall(_frame(0, "ment", mask=key))  # the end of a fragmented message: a frame
    assert p.recv_from(b) == [(0, True, False, b"ment")]
    a.sendall(_frame(9, b"hi", mask=key))  # control frames come as frames
    assert p.recv_from(b) == [(9, True, False, b"hi")]
    a.sendall(_frame(2, b"xyz", mask=key)[:3])  # a partial frame: nothing yet
    assert p.recv_from(b) == []
    a.sendall(_frame(2, b"xyz", mask=key)[3:])
    assert p.recv_from(b) == b"xyz"
    raw = backend.FrameParser(expect_mask=False, decode_text=False)
    a.sendall(_frame(1, "t"))  # undecoded text would look like binary: a frame
    assert raw.recv_from(b) == [(1, True, False, b"t")]


def test_recv_from_large_payload_lands_in_place_across_reads(backend, sockpair):
    a, b = sockpair
    p = backend.FrameParser(expect_mask=False, max_size=None)
    big = os.urandom(300_000)
    got = _pump(p, a, b, [_frame(2, big) + _frame(2, b"next")])
    assert _as_frames(got) == [(2, True, False, big), (2, True, False, b"next")]


def test_recv_from_end_of_stream_errors_and_bad_arguments(backend, sockpair):
    a, b = sockpair
    p = backend.FrameParser(expect_mask=False)
    with pytest.raises(BlockingIOError) as info:
        p.recv_from(b, socket.MSG_DONTWAIT)
    assert info.value.errno == errno.EAGAIN
    a.close()
    assert p.recv_from(b) is None
    with pytest.raises(ValueError, match="flags must be 0 or socket.MSG_DONTWAIT"):
        p.recv_from(b, socket.MSG_PEEK)
    with pytest.raises(TypeError, match="fileno"):
        p.recv_from("socket")
    with pytest.raises(ValueError, match="negative"):
        p.recv_from(-1)
    with pytest.raises(OverflowError):
        p.recv_from(2**40)
    c, d = socket.socket(), socket.socket()  # never connected
    try:
        with pytest.raises(OSError) as info:
            p.recv_from(c)
        assert info.value.errno == errno.ENOTCONN
    finally:
        c.close()
        d.close()
    b.close()
    with pytest.raises(ValueError, match="negative"):
        p.recv_from(b)  # closed: fileno() is -1


def test_recv_from_survives_a_signal_during_a_blocking_read(backend, sockpair):
    import signal
    import threading

    if not hasattr(signal, "pthread_kill"):
        pytest.skip("needs pthread_kill")
    a, b = sockpair
    p = backend.FrameParser(expect_mask=False)
    seen = []
    old = signal.signal(signal.SIGUSR1, lambda *args: seen.append(1))
    try:
        main = threading.get_ident()

        def interrupt_then_send():
            signal.pthread_kill(main, signal.SIGUSR1)  # EINTR: the read resumes
            a.sendall(_frame(2, b"after the signal"))

        timer = threading.Timer(0.2, interrupt_then_send)
        timer.start()
        assert p.recv_from(b) == b"after the signal"
        timer.join()
        assert seen == [1]
    finally:
        signal.signal(signal.SIGUSR1, old)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    messages=st.lists(st.one_of(st.binary(max_size=300), st.text(max_size=100)), min_size=1, max_size=20),
    cuts=st.lists(st.integers(min_value=1, max_value=97), min_size=1, max_size=8),
)
def test_recv_from_agrees_with_feed_on_any_cutting(backend, messages, cuts):
    stream = b"".join(_frame(1 if isinstance(m, str) else 2, m) for m in messages)
    a, b = socket.socketpair()
    try:
        p = backend.FrameParser(expect_mask=False)
        got = []
        pos = i = 0
        while len(got) < len(messages):
            if pos < len(stream):
                step = cuts[i % len(cuts)]
                i += 1
                a.sendall(stream[pos : pos + step])
                pos += step
            r = p.recv_from(b)
            got.extend(f[3] for f in r) if isinstance(r, list) else got.append(r)
        assert got == messages
    finally:
        a.close()
        b.close()


def _wide_frame(opcode, payload, fin=True, mask=None):
    """A frame whose length takes the 64-bit form even when a shorter one would do (legal)."""
    import struct

    from kn_sock._pure import apply_mask

    head = bytes([(0x80 if fin else 0) | opcode, (0x80 if mask else 0) | 127]) + struct.pack("!Q", len(payload))
    return head + (mask + apply_mask(payload, mask) if mask else payload)


def _pump(parser, a, b, chunks):
    """Send ``chunks`` one at a time and read each one to the end with recv_from (non-blocking)."""
    out = []
    a.setblocking(False)
    for chunk in chunks:
        view = memoryview(chunk)
        while True:
            if view:
                try:
                    view = view[a.send(view) :]
                except BlockingIOError:
                    pass
            try:
                r = parser.recv_from(b, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if not view:
                    break
                continue
            assert r is not None
            out.extend(r) if isinstance(r, list) else out.append(r)
            if parser.error is not None:
                return out
    return out


def _as_frames(got):
    """recv_from's results as frame tuples (a bare payload is one whole message)."""
    return [g if isinstance(g, tuple) else (1 if isinstance(g, str) else 2, True, False, g) for g in got]


SIZES = [0, 5, 126, 16383, 16384, 20000, 65535, 65536, 70000]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    plan=st.lists(
        st.tuples(st.sampled_from(SIZES), st.sampled_from(["bin", "text", "frag", "ping", "wide"])),
        min_size=1,
        max_size=8,
    ),
    cuts=st.lists(st.sampled_from([1, 3, 4, 8, 14, 100, 16388, 20004, 65540, 70010, 200_000]), min_size=1, max_size=5),
    client_side=st.booleans(),
)
def test_recv_from_landing_guesses_agree_with_feed(backend, plan, cuts, client_side):
    """recv_from guesses each large frame's size from the last one (landing it in place): right,
    wrong, cut anywhere, the frames are those feed() gives for the same bytes."""
    key = b"\x11\x22\x33\x44" if not client_side else None  # a server parser reads masked frames
    frames = []
    for size, kind in plan:
        if kind == "ping":
            frames.append(_frame(9, b"p", mask=key))
        payload = os.urandom(size)
        if kind == "text":
            frames.append(_frame(1, ("é" * (size // 2) + "a" * (size % 2)).encode(), mask=key))
        elif kind == "frag":
            frames.append(_frame(2, payload, fin=False, mask=key) + _frame(0, payload, mask=key))
        elif kind == "wide":
            frames.append(_wide_frame(2, payload, mask=key))
        else:
            frames.append(_frame(2, payload, mask=key))
    stream = b"".join(frames)
    chunks, pos, i = [], 0, 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        chunks.append(stream[pos : pos + step])
        pos += step
        i += 1
    ref = backend.FrameParser(expect_mask=not client_side, max_size=None).feed(stream)
    a, b = socket.socketpair()
    try:
        got = _pump(backend.FrameParser(expect_mask=not client_side, max_size=None), a, b, chunks)
    finally:
        a.close()
        b.close()
    assert _as_frames(got) == ref


@pytest.mark.parametrize(
    "second, code",
    [
        (bytes([0xA2, 126, 0x4E, 0x20]) + bytes(20000), 1002),  # RSV2, the guessed size
        (bytes([0x82, 0xFE, 0x4E, 0x20]) + b"kkkk" + bytes(20000), 1002),  # masked, to a client
        (bytes([0x89, 126, 0x4E, 0x20]) + bytes(20000), 1002),  # a control frame that size
        (bytes([0x00, 126, 0x4E, 0x20]) + bytes(20000), 1002),  # a continuation of nothing
        (bytes([0x81, 126, 0x4E, 0x20]) + b"\xff" * 20000, 1007),  # text, not UTF-8
        (bytes([0x81, 126, 0x4E, 0x20]) + b"a" * 19999 + b"\xc3", 1007),  # ends mid code point
    ],
)
def test_recv_from_landing_a_bad_frame_of_the_guessed_size(backend, sockpair, second, code):
    a, b = sockpair
    p = backend.FrameParser(expect_mask=False)
    first = os.urandom(20000)
    got = _pump(p, a, b, [_frame(2, first), _frame(2, first), second + _frame(2, b"never")])
    assert got[:2] == [first, first]  # the same size twice: the next frame is guessed
    assert p.error is not None and p.error.code == code


@pytest.mark.parametrize("client_side", [True, False])
def test_recv_from_landing_with_frames_after_the_payload(backend, sockpair, client_side):
    """One read brings the guessed frame and what follows it (right and wrong guesses)."""
    a, b = sockpair
    key = None if client_side else b"\x01\x02\x03\x04"
    p = backend.FrameParser(expect_mask=not client_side)
    x, y, z = os.urandom(20000), os.urandom(20000), os.urandom(30000)
    assert _pump(p, a, b, [_frame(2, x, mask=key)]) == [x]
    assert _pump(p, a, b, [_frame(2, y, mask=key)]) == [y]  # the same size twice: guessed from now on
    right = _frame(2, y, mask=key) + _frame(2, x, mask=key) + _frame(1, "tail", mask=key)
    assert _as_frames(_pump(p, a, b, [right])) == [(2, True, False, y), (2, True, False, x), (1, True, False, "tail")]
    assert _pump(p, a, b, [_frame(2, x, mask=key)]) == [x]
    assert _pump(p, a, b, [_frame(2, x, mask=key)]) == [x]
    wrong = _frame(2, z, mask=key) + _frame(2, y, mask=key) + _frame(9, b"ping", mask=key)
    assert _as_frames(_pump(p, a, b, [wrong])) == [(2, True, False, z), (2, True, False, y), (9, True, False, b"ping")]


def test_recv_from_landing_respects_a_lowered_max_size(backend, sockpair):
    a, b = sockpair
    p = backend.FrameParser(expect_mask=False)
    assert _pump(p, a, b, [_frame(2, bytes(20000))] * 2) == [bytes(20000)] * 2
    p.max_size = 19999
    assert _pump(p, a, b, [_frame(2, bytes(20000))]) == []
    assert p.error.code == 1009


def test_recv_from_landing_end_of_stream_midway(backend, sockpair):
    a, b = sockpair
    p = backend.FrameParser(expect_mask=False)
    payload = os.urandom(30000)
    assert _pump(p, a, b, [_frame(2, payload)] * 2) == [payload] * 2
    a.sendall(_frame(2, payload)[:15000])
    assert p.recv_from(b) == []
    assert p.buffered == 15000
    a.close()
    assert p.recv_from(b) is None


def test_send_many_same_errors_in_both_twins():
    from kn_sock import _pure

    speedups = pytest.importorskip("kn_sock._speedups")
    r, w = os.pipe()
    try:
        bad_inputs = [[1.5], ["3"], [2**63], [2**64], [-1]]
        for fds in bad_inputs:
            errors = []
            for twin in (_pure, speedups):
                with pytest.raises(Exception) as info:
                    twin.send_many(fds, b"x")
                errors.append((type(info.value), str(info.value)))
            assert errors[0] == errors[1], fds
        closed_r, closed_w = os.pipe()
        os.close(closed_r)
        os.close(closed_w)
        for twin in (_pure, speedups):  # not a socket; a closed descriptor
            assert twin.send_many([w, closed_w], b"x") == [-errno.ENOTSOCK, -errno.EBADF]
    finally:
        os.close(r)
        os.close(w)


def test_a_stale_receive_view_never_reaches_another_parser(backend):
    """Receive buffers are recycled across parsers once nothing can reach them; one a caller
    still holds a view of (here written to after its parser let go) is never handed out."""
    p1 = backend.FrameParser(expect_mask=False, max_size=None)
    stale = memoryview(p1.get_buffer(-1))
    frame = backend.build_frame(2, b"one")
    stale[: len(frame)] = frame
    assert p1.buffer_updated(len(frame)) == [(2, True, False, b"one")]
    for _ in range(8):
        p2 = backend.FrameParser(expect_mask=False, max_size=None)
        view = memoryview(p2.get_buffer(-1))
        good = backend.build_frame(2, b"two")
        view[: len(good)] = good
        stale[: len(good)] = backend.build_frame(2, b"BAD")
        del view
        assert p2.buffer_updated(len(good)) == [(2, True, False, b"two")]
    del stale
    for _ in range(8):  # and once the view is gone, everything still parses
        p3 = backend.FrameParser(expect_mask=False, max_size=None)
        view = memoryview(p3.get_buffer(-1))
        view[: len(frame)] = frame
        del view
        assert p3.buffer_updated(len(frame)) == [(2, True, False, b"one")]


def test_a_receive_buffer_in_use_is_never_recycled(backend):
    """A view dying while its parser still uses the buffer (a second view, taken since) does
    not hand that buffer to another parser."""
    p1 = backend.FrameParser(expect_mask=False, max_size=None)
    first = memoryview(p1.get_buffer(-1))
    second = memoryview(p1.get_buffer(-1))  # the current one: the first no longer counts
    del first
    p2 = backend.FrameParser(expect_mask=False, max_size=None)
    other = memoryview(p2.get_buffer(-1))
    a, b = backend.build_frame(2, b"for p1"), backend.build_frame(2, b"for p2")
    second[: len(a)] = a
    other[: len(b)] = b
    del second, other
    assert p1.buffer_updated(len(a)) == [(2, True, False, b"for p1")]
    assert p2.buffer_updated(len(b)) == [(2, True, False, b"for p2")]


def test_receive_buffers_are_recycled():
    """A parser done with its receive buffer hands it to the next read (Cython twin: no
    128 KiB allocation per message), whether it read with recv_from or through get_buffer."""
    sp = pytest.importorskip("kn_sock._speedups")
    a, b = socket.socketpair()
    try:
        p = sp.FrameParser(expect_mask=False, max_size=None)
        b.send(sp.build_frame(2, b"one"))
        assert p.recv_from(a) == b"one"
        assert sp._spares() >= 1
        before = sp._spares()
        view = memoryview(p.get_buffer(-1))  # takes one
        assert sp._spares() == before - 1
        frame = sp.build_frame(2, b"two")
        view[: len(frame)] = frame
        assert p.buffer_updated(len(frame)) == [(2, True, False, b"two")]
        assert sp._spares() == before - 1  # still viewed: not yet
        del view
        assert sp._spares() == before  # the view is gone: back for reuse
    finally:
        a.close()
        b.close()


def test_pure_parsers_share_one_read_buffer_per_thread():
    """Memory: an idle pure-twin connection holds no read buffer of its own (140 -> 12 KiB a
    connection pair); parsers on one thread share it, since buffer_updated() takes the bytes
    out before anything else runs, and another thread has its own. A buffer someone still
    holds a view of is not handed out again."""
    import threading

    from kn_sock import _pure

    def read(parser, data):  # what a transport does: get_buffer, recv_into, buffer_updated
        view = parser.get_buffer(-1)
        view[: len(data)] = data
        owner = view.obj
        view.release()
        return owner, parser.buffer_updated(len(data))

    a, b = client_parser(_pure), client_parser(_pure)
    frame_a, frame_b = _pure.build_frame(2, b"A" * 300), _pure.build_frame(1, "b" * 200)
    shared, frames = read(a, frame_a)
    assert frames == [(2, True, False, b"A" * 300)]
    owner, frames = read(b, frame_b[:-7])  # b keeps an incomplete frame...
    assert owner is shared and frames == []
    owner, frames = read(a, frame_a)  # ...while a reads into the same memory
    assert owner is shared and frames == [(2, True, False, b"A" * 300)]
    owner, frames = read(b, frame_b[-7:])
    assert owner is shared and frames == [(1, True, False, "b" * 200)]
    held = a.get_buffer(-1)
    assert b.get_buffer(-1).obj is not held.obj  # a view still alive: that memory is left to it
    other = []
    thread = threading.Thread(target=lambda: other.append(read(client_parser(_pure), frame_a)[0]))
    thread.start()
    thread.join()
    assert other[0] is not shared


@pytest.mark.parametrize("last", [1 << 20, 100, None], ids=["after 1 MiB messages", "after small ones", "fresh"])
def test_recv_from_waits_without_a_buffer(backend, sockpair, last):
    """A blocking recv_from waits for data before taking memory to read it into: an idle
    connection's reader (a thread of its own in the blocking layer) holds no buffer the size
    of the last messages (Cython: the guessed payload; pure: a 128 KiB read buffer), nor,
    with no guess to make, the 128 KiB receive buffer (Cython: 128 KiB an idle blocking
    connection, against 3 KiB pure: audit)."""
    import threading
    import tracemalloc

    a, b = sockpair
    p = backend.FrameParser(expect_mask=False, max_size=None)
    if last is not None:
        message = bytes(last)
        # Two frames of one size: the Cython parser guesses the next one's if large (sent
        # from a thread: a socket pair holds less than a frame).
        sender = threading.Thread(target=a.sendall, args=(_frame(2, message) * 3,))
        sender.start()
        frames = []
        while len(frames) < 3:
            got = p.recv_from(b)
            frames += [got] if type(got) is bytes else [f[3] for f in got]
        sender.join(5)
        assert [len(f) for f in frames] == [len(message)] * 3
    spares = getattr(backend, "_spares", lambda: 0)  # Cython: standard buffers kept for reuse
    result = []
    tracemalloc.start()
    try:
        reader = threading.Thread(target=lambda: result.append(p.recv_from(b)))
        before, spared = tracemalloc.get_traced_memory()[0], spares()
        reader.start()
        reader.join(0.3)  # blocked: nothing sent yet
        assert reader.is_alive()
        held = tracemalloc.get_traced_memory()[0] - before + (spared - spares()) * 131072
        a.sendall(_frame(2, b"next"))
        reader.join(5)
    finally:
        tracemalloc.stop()
    assert held < 16 * 1024, held
    assert result == [b"next"]


# --------------------------------------------------------------------------- audit 89 (ASan)


def test_non_contiguous_mask_is_taken_as_its_bytes(backend):
    """A strided 4-byte mask: the Cython twin raised BufferError, the pure one took it."""
    mask = memoryview(b"aXbXcXdX")[::2]
    assert backend.apply_mask(b"hello", mask) == naive_mask(b"hello", b"abcd")
    buf = bytearray(b"hello")
    backend.apply_mask_inplace(buf, mask)
    assert bytes(buf) == naive_mask(b"hello", b"abcd")


def test_send_many_when_an_index_changes_the_list(backend):
    """A descriptor whose ``__index__`` empties the list: the Cython twin read past its end
    (a segfault); both twins now take the descriptors as iterating the list gives them."""
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        fds: list = []

        class Shrinks:
            def __index__(self) -> int:
                fds.clear()
                return a.fileno()

        fds.extend([Shrinks(), a.fileno(), a.fileno(), a.fileno()])
        assert backend.send_many(fds, b"x") == [1]
        assert b.recv(10) == b"x"
    finally:
        a.close()
        b.close()


def test_stale_get_buffer_view_rewriting_a_buffered_header(backend):
    """Bytes written through a view handed out before the last buffer_updated() no longer
    count, but they rewrote a partly buffered frame's length: the Cython twin then copied a
    negative size (heap corruption). Now the parser goes on with what its buffer holds."""
    p = backend.FrameParser(expect_mask=False, max_size=None)
    view = p.get_buffer()
    view[:14] = b"\x82\x7e\x01\x00" + b"A" * 10  # a 256-byte binary frame, 10 bytes of it
    assert p.buffer_updated(14) == []
    view[1:2] = b"\x05"  # stale: the buffered header now says 5 bytes
    try:
        p.feed(b"B" * 100)
    except ProtocolError:
        pass  # (whatever the rewritten bytes mean; no crash, no corruption)


def test_declared_length_near_the_largest_is_buffered_not_an_overflow_error(backend):
    """max_size=None and a 63-bit length within bytes' header of the largest: the Cython
    twin's allocation raised OverflowError out of the parser (to recv() in the blocking
    client); both twins buffer what arrives, as for any length they cannot allocate."""
    p = backend.FrameParser(expect_mask=False, max_size=None)
    header = b"\x82\x7f" + (2**63 - 1).to_bytes(8, "big")
    assert p.feed(header + b"x" * 10) == []
    assert p.error is None


def test_private_awaitables_made_from_python_refuse_to_run():
    """``_Send`` / ``_Recv`` made with ``__new__`` have no connection: stepping one crashed."""
    speedups = pytest.importorskip("kn_sock._speedups")
    for name in ("_Send", "_Recv"):
        cls = getattr(speedups, name, None)
        if cls is None:
            continue
        with pytest.raises(RuntimeError, match="not made by"):
            cls.__new__(cls).send(None)


@pytest.mark.parametrize(
    "fds", [[-1, "A"], ["A", -1], [-(2**64)], [2**64], [2**63 - 1], [2**31], [0.5]], ids=str
)
def test_send_many_bad_descriptors_give_the_same_outcome_in_both_twins(fds):
    """Audit 91: converting every descriptor before checking any made the Cython twin raise
    TypeError where the pure one raised ValueError; a descriptor beyond int gave -EBADF from
    one and OverflowError from the other."""
    pure = pytest.importorskip("kn_sock._pure")
    speedups = pytest.importorskip("kn_sock._speedups")
    outcomes = []
    for twin in (pure, speedups):
        try:
            outcomes.append(twin.send_many(fds, b"x"))
        except Exception as exc:  # noqa: BLE001 - the outcome compared
            outcomes.append((type(exc), str(exc)))
    assert outcomes[0] == outcomes[1]


def test_async_core_refuses_a_foreign_parsers_malformed_frames(backend):
    """A parser other than the twin's own handing ``AsyncCore`` frames that are not 4-tuples:
    the Cython core read past the tuple (audit 89); both twins raise instead."""

    class Parser:
        error = None
        last_frames = 1

        def buffer_updated(self, nbytes: int) -> list:
            return [(2,)]

    core = backend.AsyncCore()
    core._parser = Parser()
    with pytest.raises((TypeError, ValueError)):
        core.buffer_updated(1)
