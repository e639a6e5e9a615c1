"""Property-based parity: ``_speedups`` behaves exactly like ``_pure`` (the specification).

Same results, same frames, same errors (type, message, close code) on random payloads,
masks, offsets, chunkings, valid and invalid UTF-8 and random frame streams.
"""

from __future__ import annotations

import random

import os

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kn_sock import _backend
from kn_sock import _pure as P
from kn_sock.exceptions import ProtocolError

if _backend.speedups is None:
    pytest.skip(f"kn_sock._speedups is not loaded ({_backend.IMPORT_ERROR})", allow_module_level=True)
S = _backend.speedups

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

masks = st.binary(min_size=4, max_size=4)
utf8_text = st.text().map(lambda s: s.encode("utf-8", "surrogatepass"))
# Mostly-valid UTF-8 with a few corrupted bytes, and raw bytes.
nasty = st.one_of(
    utf8_text,
    st.binary(max_size=64),
    st.tuples(utf8_text, st.integers(0, 200), st.integers(0, 255)).map(
        lambda t: t[0][: t[1]] + bytes([t[2]]) + t[0][t[1] :]
    ),
    st.lists(st.sampled_from([b"\xc0", b"\xed", b"\xa0", b"\x80", b"\xf4", b"\x90", b"\xe0", b"\xf0", b"a", "é".encode(), "😀".encode()]),
             max_size=12).map(b"".join),
)


def outcome(fn, *args, **kwargs):
    """The result, or the exception's type and message."""
    try:
        return ("ok", fn(*args, **kwargs))
    except Exception as exc:  # noqa: BLE001 - compared between the twins
        return ("raised", type(exc), str(exc))


@SETTINGS
@given(data=st.binary(max_size=300), mask=st.binary(max_size=6))
def test_apply_mask(data, mask):
    assert outcome(S.apply_mask, data, mask) == outcome(P.apply_mask, data, mask)


@SETTINGS
@given(data=st.binary(max_size=300), mask=masks, offset=st.integers(-3, 310), length=st.integers(-2, 310))
def test_apply_mask_inplace(data, mask, offset, length):
    a, b = bytearray(data), bytearray(data)
    assert outcome(S.apply_mask_inplace, a, mask, offset, length) == outcome(
        P.apply_mask_inplace, b, mask, offset, length
    )
    assert a == b


# Long payloads (the Cython kernels align their stores from 4 KiB on), from a seeded generator:
# hypothesis refuses to draw inputs this large itself.
long_data = st.integers(3990, 9000).map(lambda n: random.Random(n).randbytes(n))


@SETTINGS
@given(data=long_data, mask=masks, offset=st.integers(0, 70))
def test_apply_mask_long_runs(data, mask, offset):
    """New bytes from a long source at any address (the Cython kernel aligns its stores first)."""
    view = memoryview(data)[offset:]
    assert S.apply_mask(view, mask) == P.apply_mask(view, mask)


@SETTINGS
@given(data=long_data, mask=masks, offset=st.integers(0, 70), cut=st.integers(0, 70))
def test_apply_mask_inplace_long_runs(data, mask, offset, cut):
    """Runs long enough for the Cython kernel to first reach a 32-byte boundary, from any address."""
    a, b = bytearray(data), bytearray(data)
    length = len(data) - offset - cut
    S.apply_mask_inplace(a, mask, offset, length)
    P.apply_mask_inplace(b, mask, offset, length)
    assert a == b


@pytest.mark.parametrize("n", [2047, 2048, 2049, 8193, 32767, 32768, 32769, 65536 + 1, 3 * 32768 + 4095])
def test_apply_mask_pieces(n):
    """The pure twin masks long inputs by table lookups in 32 KiB pieces (big-integer XOR below
    2 KiB): every method switch, piece boundary and tail keeps the phase."""
    data = random.Random(n).randbytes(n)
    mask = b"\x01\x80\xfe\x7f"
    expected = bytes(b ^ mask[i & 3] for i, b in enumerate(data))
    assert P.apply_mask(data, mask) == S.apply_mask(data, mask) == expected
    assert P.apply_mask(memoryview(bytearray(data))[1:], mask) == S.apply_mask(data[1:], mask)
    buf = bytearray(data)
    P.apply_mask_inplace(buf, mask)
    assert buf == expected


@SETTINGS
@given(data=nasty)
def test_validate_utf8(data):
    assert S.validate_utf8(data) is P.validate_utf8(data)
    assert S.validate_utf8(bytearray(data)) is P.validate_utf8(data)


@SETTINGS
@given(data=nasty, cuts=st.lists(st.integers(0, 100), max_size=8), final=st.booleans())
def test_utf8_validator_fragmented(data, cuts, final):
    s, p = S.Utf8Validator(), P.Utf8Validator()
    pos = 0
    for cut in sorted(cuts) + [len(data)]:
        chunk = data[pos:cut] if cut > pos else b""
        pos = max(pos, cut)
        assert s.feed(chunk) is p.feed(chunk)
        assert s.valid is p.valid
    assert s.feed(b"", final=final) is p.feed(b"", final=final)
    assert s.valid is p.valid


@st.composite
def frame_streams(draw):
    """A byte stream of mostly plausible frames (sometimes broken), and the parser options."""
    expect_mask = draw(st.booleans())
    rsv1_allowed = draw(st.booleans())
    frames = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.integers(0, 9))
        if kind == 0:  # raw junk
            frames.append(draw(st.binary(max_size=12)))
            continue
        opcode = draw(st.sampled_from([0, 1, 2, 8, 9, 10, 3, 11]))
        payload = draw(st.one_of(nasty, st.binary(max_size=400), st.just(b"x" * 70_000)))
        mask = draw(masks) if draw(st.integers(0, 9)) else None
        if expect_mask and draw(st.integers(0, 9)):
            mask = mask or b"\x01\x02\x03\x04"
        elif not expect_mask and draw(st.integers(0, 9)):
            mask = None
        fin = draw(st.integers(0, 5)) > 0
        rsv1 = draw(st.integers(0, 5)) == 0
        frames.append(P.build_frame(opcode, payload, fin=fin, rsv1=rsv1, mask=mask))
    if draw(st.integers(0, 9)) == 0:  # a 64-bit length with the top bit set, or a giant one
        frames.append(bytes([0x82, 0xFF if expect_mask else 0x7F]) + draw(st.binary(min_size=8, max_size=8)))
    opts = dict(
        expect_mask=expect_mask,
        rsv1_allowed=rsv1_allowed,
        max_size=draw(st.sampled_from([None, 0, 10, 125, 1000, 2**20])),
        compressed_max_size=draw(st.sampled_from([None, 5, 100000])),
        decode_text=draw(st.booleans()),
        early_compressed_text=draw(st.booleans()),
    )
    return b"".join(frames), opts


def run_parser(mod, stream, opts, cuts, use_buffer):
    parser = mod.FrameParser(**opts)
    events = []
    pos = 0
    for cut in sorted(set(cuts)) + [len(stream)]:
        if cut <= pos:
            continue
        chunk = stream[pos:cut]
        pos = cut
        while chunk:
            if use_buffer:
                buf = parser.get_buffer(-1)
                n = min(len(buf), len(chunk))
                buf[:n] = chunk[:n]
                chunk = chunk[n:]
                frames = parser.buffer_updated(n)
            else:
                frames, chunk = parser.feed(chunk), b""
            events.append(frames)
            err = parser.error
            events.append(None if err is None else (type(err), err.code, err.reason))
            events.append((parser.in_message,))
    events.append(parser.buffered)
    return [e for e in events if e != []]


def normalise(events):
    """Merge frames across chunk boundaries: how a stream is cut may change how frames group
    (and how the payload of an incomplete compressed text frame is handed out early)."""
    frames, rest = [], []
    for e in events:
        if isinstance(e, list):
            frames.extend(f for f in e if f[0] != P.OP_EARLY)
        elif isinstance(e, tuple) and len(e) == 3:
            rest.append(e)
    return frames, rest[-1:] if rest else rest, events[-1]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(sf=frame_streams(), cuts=st.lists(st.integers(0, 80_000), max_size=10), use_buffer=st.booleans())
def test_frame_parser(sf, cuts, use_buffer):
    stream, opts = sf
    expected = run_parser(P, stream, opts, cuts, False)
    got = run_parser(S, stream, opts, cuts, use_buffer)
    if use_buffer:
        # get_buffer may offer the twins different sizes, so compare what was parsed, not when.
        assert normalise(got) == normalise(expected)
    else:
        assert got == expected


@SETTINGS
@given(
    opcode=st.one_of(st.integers(-2, 17), st.booleans()),
    payload=st.one_of(st.binary(max_size=300), st.text(max_size=50), st.just(b"y" * 70_000), st.integers()),
    fin=st.booleans(),
    rsv1=st.booleans(),
    mask=st.one_of(st.none(), masks, st.binary(max_size=5)),
    wrap=st.sampled_from([bytes, bytearray, memoryview]),
)
def test_build_frame(opcode, payload, fin, rsv1, mask, wrap):
    if isinstance(payload, bytes):
        payload = wrap(payload)
    assert outcome(S.build_frame, opcode, payload, fin, rsv1, mask) == outcome(
        P.build_frame, opcode, payload, fin, rsv1, mask
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(sf=frame_streams(), cuts=st.lists(st.integers(0, 80_000), max_size=10), use_buffer=st.booleans())
def test_early_compressed_chunks_are_the_next_frames_first_bytes(sf, cuts, use_buffer):
    """early_compressed_text: what is handed out early (OP_EARLY) is, in order, the start of
    the payload of the next data frame to complete, a compressed text frame or a
    continuation of a compressed text message; both twins."""
    stream, opts = sf
    opts = dict(opts, early_compressed_text=True)
    for mod in (P, S):
        early = b""
        compressed_text = False  # a compressed text message is open
        for event in run_parser(mod, stream, opts, cuts, use_buffer):
            if not isinstance(event, list):
                continue
            for opcode, fin, rsv1, payload in event:
                if opcode == mod.OP_EARLY:
                    assert fin is False and rsv1 is True and payload
                    early += payload
                    continue
                if opcode < 8 and early:
                    assert (opcode == 1 and rsv1) or (opcode == 0 and compressed_text)
                    assert payload[: len(early)] == early
                    early = b""
                if opcode in (1, 2):
                    compressed_text = opcode == 1 and rsv1 and not fin
                elif opcode == 0 and fin:
                    compressed_text = False


@pytest.mark.parametrize("mod", [P, S], ids=["pure", "cython"])
@pytest.mark.parametrize("size", [1000, 200_000])  # 200 KB: the Cython twin receives it in place
@pytest.mark.parametrize("use_buffer", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_early_compressed_chunks_example(mod, size, use_buffer, masked):
    payload = os.urandom(size)
    mask = b"\x01\x02\x03\x04" if masked else None
    stream = P.build_frame(1, payload, fin=False, rsv1=True, mask=mask) + P.build_frame(0, payload[:99], mask=mask)
    head = len(stream) - len(P.build_frame(0, payload[:99], mask=mask)) - size
    cuts = [head + 10, head + 11, head + size // 2, len(stream) - 50]
    opts = dict(expect_mask=masked, rsv1_allowed=True, max_size=None, early_compressed_text=True)
    frames = [f for e in run_parser(mod, stream, opts, cuts, use_buffer) if isinstance(e, list) for f in e]
    assert [f for f in frames if f[0] != mod.OP_EARLY] == [(1, False, True, payload), (0, True, False, payload[:99])]
    first = frames.index((1, False, True, payload))
    early = b"".join(f[3] for f in frames[:first])  # the first frame's, handed out early
    assert all(f[0] == mod.OP_EARLY for f in frames[:first]) and len(frames[:first]) >= 3
    assert payload.startswith(early) and len(early) >= size // 2
    assert frames[first + 1] == (mod.OP_EARLY, False, True, payload[:49])  # the continuation's
    # Off by default, and never for binary or uncompressed text.
    opts["early_compressed_text"] = False
    assert not [f for e in run_parser(mod, stream, opts, cuts, use_buffer) if isinstance(e, list) for f in e if f[0] < 0]


# --------------------------------------------------------------------------- early UTF-8 (1007)

BAD_UTF8 = [b"\xf4\x90\x80\x80", b"\xff", b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe0\x80\x80", b"\xce(", b"\xf0\x9f\x98"]


@st.composite
def chopped_text(draw):
    """A text frame (maybe large, maybe with an invalid sequence) in a stream, cut at random points."""
    expect_mask = draw(st.booleans())
    mask = (draw(masks) if expect_mask else None)
    pad = draw(st.sampled_from([0, 0, 0, 70_000]))
    bad = draw(st.one_of(st.sampled_from(BAD_UTF8), st.just(b""), nasty))
    payload = "é".encode() * (pad // 2) + draw(utf8_text) + bad + draw(utf8_text) * draw(st.integers(1, 3))
    fin = draw(st.booleans())
    rsv1 = draw(st.integers(0, 7)) == 0
    as_continuation = draw(st.integers(0, 4)) == 0
    lead = P.build_frame(9, b"p", mask=mask)
    if as_continuation:  # the message's first frame ends on a code point boundary
        lead += P.build_frame(1, draw(utf8_text), fin=False, rsv1=rsv1, mask=mask)
        frame = P.build_frame(0, payload, fin=fin, mask=mask)
    else:
        frame = P.build_frame(1, payload, fin=fin, rsv1=rsv1, mask=mask)
    stream = lead + frame + P.build_frame(10, b"", mask=mask)
    start = len(lead) + len(frame) - len(payload)  # the payload's offset in the stream
    # Where the payload stops being a valid UTF-8 prefix (the validator fails fast; binary search).
    lo, hi = 0, len(payload) + 1
    while lo < hi:
        mid = (lo + hi) // 2
        if P.Utf8Validator().feed(payload[:mid]):
            lo = mid + 1
        else:
            hi = mid
    first_bad = start + lo - 1 if lo <= len(payload) else None  # offset of the decisive byte
    if first_bad is None and fin and payload and not P.validate_utf8(payload):
        first_bad = start + len(payload) - 1  # a valid prefix cut short: the final byte decides
    near = st.integers(max(0, start + lo - 6), min(len(stream), start + lo + 6))
    cuts = draw(st.lists(st.one_of(st.integers(0, len(stream)), near), max_size=30))
    opts = dict(
        expect_mask=expect_mask,
        rsv1_allowed=rsv1 or draw(st.booleans()),
        max_size=draw(st.sampled_from([None, 2**20])),
        decode_text=draw(st.integers(0, 5)) > 0,
    )
    checked = not rsv1 and opts["decode_text"]  # compressed text is checked once inflated
    info = dict(first_bad=first_bad if checked else None)
    return stream, opts, cuts, info


def error_segment(mod, stream, opts, cuts, use_buffer):
    """Deliver the segments between ``cuts``; return the frames, the error and the index of the
    segment whose delivery set it (a segment may take several get_buffer reads)."""
    parser = mod.FrameParser(**opts)
    frames = []
    bounds = sorted({c for c in cuts if 0 < c < len(stream)}) + [len(stream)]
    pos = 0
    for index, stop in enumerate(bounds):
        while pos < stop and parser.error is None:
            if use_buffer:
                buf = parser.get_buffer(-1)
                n = min(len(buf), stop - pos)
                buf[:n] = stream[pos : pos + n]
                frames += parser.buffer_updated(n)
            else:
                n = stop - pos
                frames += parser.feed(stream[pos:stop])
            pos += n
        err = parser.error
        if err is not None:
            return frames, (type(err), err.code, err.reason), index
        pos = stop
    return frames, None, None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=chopped_text())
@example(  # a final text frame ending inside a code point: 1007 with its last byte
    case=(
        b"\x89\x01p\x81\x03\xf0\x9f\x98\x8a\x00",
        {"expect_mask": False, "rsv1_allowed": False, "max_size": None, "decode_text": True},
        [],
        {"first_bad": 7},
    )
)
def test_early_utf8_error_at_the_same_call(case):
    """Both twins report a 1007 at exactly the same call, whatever the cuts, and that call is
    the one that brings the first byte that makes the text invalid: mid-frame or as the frame
    completes, in a text message's first frame or in a continuation frame."""
    stream, opts, cuts, info = case
    assert run_parser(S, stream, opts, cuts, False) == run_parser(P, stream, opts, cuts, False)
    expected = error_segment(P, stream, opts, cuts, False)
    assert error_segment(S, stream, opts, cuts, False) == expected
    assert error_segment(S, stream, opts, cuts, True) == expected
    assert error_segment(P, stream, opts, cuts, True) == expected
    # The specification itself: as soon as the bytes received so far cannot be valid.
    bounds = sorted({c for c in cuts if 0 < c < len(stream)}) + [len(stream)]
    if info["first_bad"] is None:
        assert expected[1] is None or expected[1][1] != 1007
        return
    index = next(i for i, b in enumerate(bounds) if b > info["first_bad"])
    assert expected[1:] == ((ProtocolError, 1007, "invalid UTF-8 in text message"), index)


def _outcome(call, *args):
    try:
        return ("ok", call(*args))
    except Exception as exc:
        return (type(exc).__name__, str(exc))


def _strided() -> memoryview:
    return memoryview(bytearray(b"abcdefgh"))[::2]


@pytest.mark.parametrize(
    "case",
    [
        lambda m: m.apply_mask(_strided(), b"abcd"),
        lambda m: m.apply_mask(_strided(), "abcd"),
        lambda m: m.apply_mask_inplace(_strided(), b"abcd"),
        lambda m: m.apply_mask_inplace(_strided(), b"abc"),
        lambda m: m.build_frame(1, _strided()),
        lambda m: m.build_frame(1, _strided(), mask=b"abcd"),
        lambda m: m.FrameParser(expect_mask=False).feed(_strided()),
        lambda m: m.FrameParser(expect_mask=False, max_size=1e6),  # type: ignore[arg-type]
        lambda m: m.FrameParser(expect_mask=False, max_size="10"),  # type: ignore[arg-type]
        lambda m: m.FrameParser(expect_mask=False, compressed_max_size=2.5),  # type: ignore[arg-type]
    ],
)
def test_off_contract_arguments_fail_alike(case):
    """Strided buffers and non-integer limits: the same exception from both (audit 71: pure
    masked strided views that Cython refused, and took a float max_size)."""
    pure, cython = _outcome(case, P), _outcome(case, S)
    assert pure == cython
    assert pure[0] in ("BufferError", "TypeError", "ValueError")


def _set(obj, name, value):
    setattr(obj, name, value)
    return obj


@pytest.mark.parametrize(
    "case",
    [
        lambda m: _set(m.FrameParser(expect_mask=False), "max_size", 1.5).feed(b"\x82\x02ab"),
        lambda m: _set(m.FrameParser(expect_mask=False), "max_size", "5").feed(b"\x82\x02ab"),
        lambda m: _set(m.FrameParser(expect_mask=False), "compressed_max_size", 2.5),
        lambda m: [f[:4] for f in _set(m.FrameParser(expect_mask=False), "max_size", 1).feed(b"\x82\x02ab")],
        lambda m: [f[:4] for f in m.FrameParser(expect_mask=None).feed(b"\x82\x02ab")],  # type: ignore[arg-type]
        lambda m: [f[:4] for f in m.FrameParser(expect_mask="yes").feed(b"\x82\x82abcd\x00\x00")],  # type: ignore[arg-type]
        lambda m: (m.FrameParser(expect_mask=[]).expect_mask, m.FrameParser(expect_mask=1).expect_mask),  # type: ignore[arg-type]
        lambda m: [f[:2] for f in _set(m.FrameParser(expect_mask=False), "expect_mask", "yes").feed(b"\x82\x82abcd\x00\x00")],
    ],
)
def test_limits_set_later_and_truthy_expect_mask_alike(case):
    """A limit assigned after construction is checked as the constructor's (pure took 1.5 as
    a float limit); ``expect_mask`` is taken for its truth (pure compared the object: every
    frame failed with 1002) (audit 29P)."""
    assert _outcome(case, P) == _outcome(case, S)


def test_buffer_updated_without_a_fresh_buffer_fails_alike():
    """A buffer from get_buffer counts for one buffer_updated, and none after a feed (audit 71:
    pure parsed the old buffer again, a duplicated message)."""
    for m in (P, S):
        p = m.FrameParser(expect_mask=False)
        buf = p.get_buffer(-1)
        buf[:2] = b"\x82\x00"
        del buf
        assert p.buffer_updated(2) == [(2, True, False, b"")]
        with pytest.raises(ValueError, match="nbytes out of range"):
            p.buffer_updated(2)
        assert p.buffer_updated(0) == []  # nothing read: fine (audit 75)
        buf = p.get_buffer(-1)
        buf[:2] = b"\x82\x00"
        del buf
        assert p.feed(b"") == []
        with pytest.raises(ValueError, match="nbytes out of range"):
            p.buffer_updated(2)


def test_last_frames_after_invalid_utf8_in_a_fragment_agrees():
    counts = []
    for m in (P, S):
        p = m.FrameParser(expect_mask=False)
        assert p.feed(b"\x01\x02\xc0\xaf") == []
        assert p.error is not None and p.error.code == 1007
        counts.append(p.last_frames)
    assert counts[0] == counts[1]
