"""The atheris targets of tests/fuzz/, run under pytest: seeds, past findings, random bytes.

``run_fuzz.sh`` runs the targets for minutes with coverage guidance; this module keeps them
honest in every CI run. It replays each target's ``seeds()`` (valid frame streams,
handshakes and deflate messages that reach deep into the code), every input that ever
crashed a target (``REGRESSIONS``: add the crash-* file's bytes there with a note), and a
few hundred hypothesis-generated inputs through the same ``check`` functions, whose oracle
accepts only the documented exceptions (kn_sock.exceptions) and twin parity.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzz_deflate
import fuzz_frame_parser
import fuzz_handshake
from kn_sock import _backend

TARGETS = {
    "frame_parser": fuzz_frame_parser,
    "handshake": fuzz_handshake,
    "deflate": fuzz_deflate,
}

#: (target, input, what it once broke). Empty: no crash in the runs so far (see the report
#: of issue 7: ~60 s per target, ~60k-500k executions each).
REGRESSIONS: list[tuple[str, bytes, str]] = []

#: Hand-written edge cases, beside the seeds: each is a valid input for its target's layout.
EDGES: list[tuple[str, bytes]] = [
    # Frame parser: 64-bit length with the top bit set; a 126-length control frame; a
    # masked frame to a client; invalid UTF-8 in one text frame; a 1009 from the header alone.
    ("frame_parser", bytes([0x01, 255]) + b"\x82\xff\x80" + b"\x00" * 7 + b"abcd"),
    ("frame_parser", bytes([0x01, 255]) + b"\x89\xfe\x00\x7e" + b"abcd"),
    ("frame_parser", bytes([0x00, 255]) + b"\x81\x82abcd\x00\x00"),
    ("frame_parser", bytes([0x04, 0]) + b"\x81\x02\xc3\x28"),
    ("frame_parser", bytes([0x21, 255]) + b"\x82\xfe\x01\x00abcd"),
    # Handshake: a header line of 9 KiB (431); an HTTP/1.0 101; a response whose
    # Sec-WebSocket-Extensions names an extension we did not offer.
    ("handshake", bytes([0, 255]) + b"GET / HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n"),
    ("handshake", bytes([1, 255]) + b"HTTP/1.0 101 OK\r\n\r\n"),
    (
        "handshake",
        bytes([3, 255]) + b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
        b"Sec-WebSocket-Accept: {ACCEPT}\r\nSec-WebSocket-Extensions: x-foo\r\n\r\n",
    ),
    # Deflate: garbage; bytes after a BFINAL block; an empty message sent as no bytes at all.
    ("deflate", bytes([0x07, 255, 0]) + b"\xff\xff\xff\xff"),
    ("deflate", bytes([0x07, 255, 0]) + b"\x03\x00" + b"junk after the end"),
    ("deflate", bytes([0x47, 0, 0])),
]


def cases() -> list[object]:
    out: list[object] = []
    for name, module in TARGETS.items():
        out += [pytest.param(name, seed, id=f"{name}-seed{i}") for i, seed in enumerate(module.seeds())]
    out += [pytest.param(name, data, id=f"{name}-edge{i}") for i, (name, data) in enumerate(EDGES)]
    out += [pytest.param(name, data, id=f"{name}-regression{i}") for i, (name, data, _) in enumerate(REGRESSIONS)]
    return out


@pytest.mark.parametrize(("target", "data"), cases())
def test_replay(target: str, data: bytes) -> None:
    TARGETS[target].check(data)


def test_both_twins_are_fuzzed() -> None:
    """The frame-parser target compares the twins: both must be there when CI requires it."""
    if os.environ.get("KN_SOCK_REQUIRE_EXTENSION", "") not in ("", "0") and not _backend.pure_requested():
        assert len(fuzz_frame_parser.TWINS) == 2


RANDOM = settings(
    max_examples=int(os.environ.get("KN_SOCK_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("target", sorted(TARGETS))
@RANDOM
@given(data=st.binary(min_size=2, max_size=2048))
def test_random_bytes(target: str, data: bytes) -> None:
    TARGETS[target].check(data)
