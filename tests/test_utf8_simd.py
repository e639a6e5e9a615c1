"""The Cython twin's vectorised UTF-8 scan against Python's own decoder, at every step boundary.

The scan proves 32-byte steps valid with SIMD lookups and hands the rest (an invalid step, the
tail) to the scalar loop, so the cases that matter are sequences placed across and around step
boundaries. ``_utf8_simd(False)`` switches the vector path off, to compare the two paths. On a
CPU without AVX2 both runs take the scalar path and the tests still hold.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kn_sock import _backend
from kn_sock import _pure as P

if _backend.speedups is None:
    pytest.skip(f"kn_sock._speedups is not loaded ({_backend.IMPORT_ERROR})", allow_module_level=True)
S = _backend.speedups


def python_says(data: bytes) -> bool:
    try:
        data.decode("utf-8")  # strict RFC 3629: no overlongs, surrogates or > U+10FFFF
    except UnicodeDecodeError:
        return False
    return True


@pytest.fixture(params=["simd", "scalar"])
def path(request: pytest.FixtureRequest):
    was = S._utf8_simd(request.param == "simd")
    yield request.param
    S._utf8_simd(was)


# Second to fourth bytes worth trying after every lead: the edges of every RFC 3629 range.
EDGES = bytes([0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xED, 0xEF, 0xF0, 0xF4, 0xF5, 0xFF])
LATER = bytes([0x41, 0x80, 0xBF, 0xC0, 0xF0])
# Offsets of the sequence in a 96-byte ASCII text: across the first and second step boundary.
OFFSETS = (0, 29, 30, 31, 32, 33, 61, 62, 63, 64, 65, 92, 93, 94, 95)


@pytest.mark.parametrize("offset", OFFSETS)
def test_every_two_byte_pair(path, offset):
    base = bytearray(b"a" * 96)
    for b1, b2 in itertools.product(range(256), repeat=2):
        data = bytearray(base)
        data[offset : offset + 2] = bytes((b1, b2))
        data = bytes(data[:96])
        assert S.validate_utf8(data) is python_says(data), (offset, data[offset : offset + 2])


@pytest.mark.parametrize("offset", (29, 30, 31, 32, 62, 64, 93))
def test_three_and_four_byte_sequences_at_the_edges(path, offset):
    base = "é€".encode() * 20  # non-ASCII, so no step takes the all-ASCII shortcut
    for lead in range(0xC0, 0x100):
        for tail in itertools.product(EDGES, LATER, LATER):
            seq = bytes((lead, *tail))
            for k in (2, 3, 4):
                data = base[:offset] + seq[:k] + b"x" * 40
                assert S.validate_utf8(data) is python_says(data), (offset, seq[:k])


def test_sequence_cut_by_the_end_of_a_step(path):
    for ch in ("é", "€", "😀"):
        enc = ch.encode()
        for pad in range(60, 70):
            for cut in range(1, len(enc) + 1):
                data = b"a" * pad + enc[:cut]
                assert S.validate_utf8(data) is (cut == len(enc))
                data = b"a" * pad + enc[:cut] + b"b" * 64
                assert S.validate_utf8(data) is (cut == len(enc))


chars = st.sampled_from(["a", "~", "\x7f", "é", "ß", "€", "中", "\ud7ff", "\ue000", "\uffff", "😀", "\U0010ffff"])
noise = st.sampled_from([b"\x80", b"\xbf", b"\xc0", b"\xc1", b"\xc2", b"\xe0", b"\xe0\x80", b"\xed\xa0", b"\xf0\x8f", b"\xf4\x90", b"\xf5", b"\xff", b"\x00"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(chars.map(str.encode), noise), min_size=20, max_size=160).map(b"".join))
def test_random_texts_agree_with_python_and_the_pure_twin(data):
    expected = python_says(data)
    was = S._utf8_simd(True)
    try:
        assert S.validate_utf8(data) is expected
        S._utf8_simd(False)
        assert S.validate_utf8(data) is expected
    finally:
        S._utf8_simd(was)
    assert P.validate_utf8(data) is expected


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(chars.map(str.encode), min_size=40, max_size=200).map(b"".join), st.lists(st.integers(0, 800), max_size=6))
def test_incremental_validator_over_long_chunks(data, cuts):
    """Utf8Validator runs the same scan on each chunk: a code point cut by a chunk is carried over."""
    v = S.Utf8Validator()
    pos = 0
    for cut in sorted(c for c in cuts if c <= len(data)) + [len(data)]:
        assert v.feed(data[pos:cut]) is True
        pos = max(pos, cut)
    assert v.feed(b"", final=True) is True
    bad = data + b"\xed\xa0\x80" + data
    v = S.Utf8Validator()
    assert v.feed(bad[: len(data) + 2]) is False  # fails fast, at the surrogate's second byte


def test_the_hook_reports_the_previous_state():
    was = S._utf8_simd(False)
    try:
        assert S._utf8_simd(False) is False
    finally:
        S._utf8_simd(was)
