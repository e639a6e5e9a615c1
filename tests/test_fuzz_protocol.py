"""Fuzzing kn_sock.protocol.Protocol.receive_data (RFC 6455 §5, §7.1.7; RFC 7692 §6).

Arbitrary bytes, and valid frame streams with mutations, are fed in arbitrary chunks to a
``Protocol`` on either side, with and without permessage-deflate, under both twins.
``receive_data`` may raise nothing at all: every error must become a ``Closed`` event carrying
a ``ProtocolError`` with code 1002, 1007 or 1009, and a close frame with that code in
``data_to_send()``. After CLOSED nothing more is emitted; messages are exactly ``str`` / ``bytes``.
"""

from __future__ import annotations

import os
import struct
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as note_outcome
from hypothesis import strategies as st

from kn_sock import _backend, _pure
from kn_sock.exceptions import ProtocolError
from kn_sock.extensions.permessage_deflate import ClientDeflateFactory, ServerDeflateFactory
from kn_sock.frames import is_valid_close_code
from kn_sock.protocol import CLIENT, SERVER, Closed, Ping, Pong, Protocol, State


# KN_SOCK_FUZZ_EXAMPLES=20000 for a deep run outside the regular suite.
FUZZ = settings(
    max_examples=int(os.environ.get("KN_SOCK_FUZZ_EXAMPLES", "250")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


# -- an independent frame codec ---------------------------------------------------------------


def encode(opcode: int, payload: bytes, fin: bool = True, rsv1: bool = False, mask: bytes | None = None) -> bytes:
    n = len(payload)
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    mbit = 0x80 if mask is not None else 0
    if n < 126:
        header = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        header = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        header = struct.pack("!BBQ", b0, mbit | 127, n)
    if mask is None:
        return header + payload
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class Out(NamedTuple):
    opcode: int
    masked: bool
    payload: bytes


def decode(data: bytes) -> list[Out]:
    """The frames the protocol sent (well-formed by construction: any error here is a bug)."""
    frames, pos = [], 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        assert b0 & 0x70 == 0 and b0 & 0x80, "we send only final frames without RSV bits here"
        n, pos = b1 & 0x7F, pos + 2
        assert n <= 125, "we only send control frames here"
        key = None
        if b1 & 0x80:
            key, pos = data[pos : pos + 4], pos + 4
        payload = data[pos : pos + n]
        assert len(payload) == n
        pos += n
        if key is not None:
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        frames.append(Out(b0 & 0x0F, key is not None, payload))
    return frames


# -- the protocol under test and its peer --------------------------------------------------------


def make(backend: Any, side: str, deflate: bool, max_size: int | None) -> tuple[Protocol, Any]:
    """The protocol under test and, with deflate, the peer's compressor side of the agreement."""
    if not deflate:
        return Protocol(side, backend=backend, max_size=max_size), None
    client_factory = ClientDeflateFactory()
    answer = ServerDeflateFactory().accept_offer(client_factory.offer())
    assert answer is not None
    response, server_ext = answer
    client_ext = client_factory.accept_response(response)
    ours, theirs = (client_ext, server_ext) if side == CLIENT else (server_ext, client_ext)
    return Protocol(side, backend=backend, max_size=max_size, extensions=[ours]), theirs


class Run(NamedTuple):
    events: list[Any]
    out: list[Out]
    state: State


def run(proto: Protocol, chunks: list[bytes], eof: bool = True) -> Run:
    """Feed ``chunks`` and check every invariant along the way.

    The protocol may be OPEN or CLOSING (we already sent our close frame with ``send_close``).
    """
    closing = proto.state is State.CLOSING
    events: list[Any] = []
    out: list[Out] = []
    closed: Closed | None = None
    for chunk in chunks:
        new = proto.receive_data(chunk)  # no exception, ever
        if closed is not None:
            assert new == [], "events after Closed"
        for event in new:
            assert closed is None, "events after Closed"
            t = type(event)
            if t is str or t is bytes:
                pass
            elif t is Ping or t is Pong:
                assert type(event.data) is bytes and len(event.data) <= 125
            elif t is Closed:
                closed = event
            else:
                raise AssertionError(f"unexpected event {event!r}")
        events += new
        sent = decode(b"".join(proto.data_to_send()))
        for frame in sent:
            assert frame.masked == proto.is_client  # RFC 6455 §5.1
        if closed is not None and out and out[-1].opcode == OP_CLOSE:
            assert sent == [], "frames after the close frame"
        out += sent
        if proto.state is State.CLOSED:
            assert closed is not None, "CLOSED without a Closed event"
    n_messages = sum(type(e) in (str, bytes) for e in events)
    note_outcome(f"messages: {min(n_messages, 3)}{'+' if n_messages > 3 else ''}")
    if closed is not None:
        note_outcome(f"closed: {closed.error.code if closed.error else 'peer close'}")
        check_closed(proto, closed, out, closing)
    else:
        assert proto.state is (State.CLOSING if closing else State.OPEN)
        assert not [f for f in out if f.opcode == OP_CLOSE]
    # Every ping got its pong, in order, with its payload (RFC 6455 §5.5.3); nothing else was sent.
    # Owed in CLOSING too: "unless it already received a Close frame" (RFC 6455 §5.5.2).
    pings = [e.data for e in events if type(e) is Ping]
    assert [f.payload for f in out if f.opcode == OP_PONG] == pings
    assert {f.opcode for f in out} <= {OP_PONG, OP_CLOSE}
    if eof:
        tail = proto.receive_eof()
        if closed is None:
            assert len(tail) == 1 and type(tail[0]) is Closed and tail[0].code == 1006
        else:
            assert tail == []
        assert proto.state is State.CLOSED and proto.close_transport
        assert proto.data_to_send() == []
    return Run(events, out, proto.state)


def check_closed(proto: Protocol, closed: Closed, out: list[Out], closing: bool) -> None:
    assert proto.state is State.CLOSED
    assert proto.receive_data(b"\x81\x00" * 3) == []
    closes = [f for f in out if f.opcode == OP_CLOSE]
    if closing:
        # Our close frame went out with send_close: never a second one (RFC 6455 §5.5.1).
        assert closes == []
        if closed.error is not None:
            assert closed.error.code in (1002, 1007, 1009) and proto.close_transport
        else:
            assert closed.code == 1005 or is_valid_close_code(closed.code)
            assert proto.close_transport is (proto.side == SERVER)
        return
    assert len(closes) == 1 and out[-1].opcode == OP_CLOSE, "exactly one close frame, sent last"
    payload = closes[0].payload
    if closed.error is not None:
        assert isinstance(closed.error, ProtocolError)
        assert closed.error.code in (1002, 1007, 1009)
        assert closed.code == 1006
        assert proto.close_transport
        assert struct.unpack("!H", payload[:2])[0] == closed.error.code
        payload[2:].decode("utf-8")
    else:
        assert closed.code == 1005 or is_valid_close_code(closed.code)
        expected = b"" if closed.code == 1005 else struct.pack("!H", closed.code)
        assert payload == expected  # the echo (RFC 6455 §5.5.1)
        assert proto.close_transport is (proto.side == SERVER)


# -- strategies -------------------------------------------------------------------------------

sides = st.sampled_from([CLIENT, SERVER])
max_sizes = st.sampled_from([None, 2**20, 2**20, 64, 0])


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut at arbitrary points."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


text_payloads = st.one_of(
    st.text(max_size=40).map(lambda s: s.encode("utf-8")),
    st.binary(max_size=20),  # mostly invalid UTF-8
    st.sampled_from([b"\xce\xba\xe1\xbd\xb9", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\xac"]),
)
data_payloads = st.one_of(st.binary(max_size=40), st.just(bytes(200)), st.just(b"z" * 70000))
close_codes = st.one_of(
    st.sampled_from([1000, 1001, 1002, 1005, 1006, 1007, 1011, 1015, 3000, 4999, 5000, 0]),
    st.integers(0, 65535),
)


@st.composite
def message_frames(draw: st.DrawFn) -> list[tuple[int, bool, bytes]]:
    """One logical unit as (opcode, fin, payload) tuples: a message, maybe fragmented, or a control frame."""
    kind = draw(st.sampled_from(["text", "binary", "fragmented", "text", "binary", "fragmented", "ping", "pong", "close", "raw"]))
    if kind in ("text", "binary"):
        payload = draw(text_payloads if kind == "text" else data_payloads)
        return [(OP_TEXT if kind == "text" else OP_BINARY, True, payload)]
    if kind == "fragmented":
        opcode = draw(st.sampled_from([OP_TEXT, OP_BINARY]))
        parts = draw(st.lists(text_payloads, min_size=1, max_size=4))
        frames = [(OP_CONT if i else opcode, i == len(parts) - 1, p) for i, p in enumerate(parts)]
        if draw(st.booleans()):  # a control frame in the middle (RFC 6455 §5.4)
            frames.insert(draw(st.integers(1, len(frames))), (OP_PING, True, draw(st.binary(max_size=10))))
        return frames
    if kind in ("ping", "pong"):
        return [(OP_PING if kind == "ping" else OP_PONG, True, draw(st.binary(max_size=125)))]
    if kind == "close":
        if draw(st.booleans()):
            return [(OP_CLOSE, True, draw(st.binary(max_size=3)))]
        reason = draw(st.text(max_size=10)).encode("utf-8")
        return [(OP_CLOSE, True, struct.pack("!H", draw(close_codes)) + reason)]
    return [(draw(st.integers(0, 15)), draw(st.booleans()), draw(st.binary(max_size=8)))]


@st.composite
def frame_stream(draw: st.DrawFn, side: str, peer_ext: Any) -> bytes:
    """A stream of frames as the peer of ``side`` would send them, compressed or not."""
    data = bytearray()
    for unit in draw(st.lists(message_frames(), max_size=6)):
        compress = peer_ext is not None and unit[0][0] in (OP_TEXT, OP_BINARY) and draw(st.booleans())
        for i, (opcode, fin, payload) in enumerate(unit):
            rsv1 = False
            if compress and opcode < 8:
                rsv1 = i == 0
                payload = peer_ext.compress(payload, fin)
            mask = os.urandom(4) if side == SERVER else None
            data += encode(opcode, payload, fin, rsv1, mask)
    return bytes(data)


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few bit flips, byte replacements, insertions, deletions or a truncation."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif not buf:
            continue
        elif op == "flip":
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            buf[pos] = draw(st.integers(0, 255))
        elif op == "delete":
            del buf[pos : pos + draw(st.integers(1, 4))]
        else:
            del buf[pos:]
    return bytes(buf)


@st.composite
def scenarios(draw: st.DrawFn, mutate: bool) -> tuple[str, bool, int | None, list[bytes]]:
    side = draw(sides)
    deflate = draw(st.booleans())
    max_size = draw(max_sizes)
    # The peer's compressor only shapes the input; the protocol gets its own agreement in run().
    _, peer_ext = make(_pure, side, deflate, max_size)
    data = draw(frame_stream(side, peer_ext))
    if mutate:
        data = draw(mutated(data))
    return side, deflate, max_size, draw(chunked(data))


# -- the fuzz targets -------------------------------------------------------------------------


class TestFuzzReceiveData:
    """No input makes receive_data raise; every failure is a 1002/1007/1009 close."""

    @FUZZ
    @given(side=sides, deflate=st.booleans(), max_size=max_sizes, chunks=st.lists(st.binary(max_size=64), max_size=8))
    def test_arbitrary_bytes(self, backend: Any, side: str, deflate: bool, max_size: int | None, chunks: list[bytes]) -> None:
        proto, _ = make(backend, side, deflate, max_size)
        run(proto, chunks)

    @FUZZ
    @given(side=sides, deflate=st.booleans(), prefix=st.binary(min_size=1, max_size=14), chunks=st.lists(st.binary(max_size=32), max_size=4))
    def test_plausible_headers(self, backend: Any, side: str, deflate: bool, prefix: bytes, chunks: list[bytes]) -> None:
        # Steer the first byte towards valid opcodes and the mask bit towards the expected one.
        b0 = (prefix[0] & 0xC0) | (prefix[0] % 3) | 0x80 * (prefix[0] & 1)
        b1 = (0x80 if side == SERVER else 0) | (prefix[1] & 0x7F if len(prefix) > 1 else 0)
        proto, _ = make(backend, side, deflate, 2**20)
        run(proto, [bytes([b0, b1]) + prefix[2:], *chunks])

    @FUZZ
    @given(data=st.data())
    def test_mutated_valid_frame_streams(self, backend: Any, data: st.DataObject) -> None:
        side, deflate, max_size, chunks = data.draw(scenarios(mutate=True))
        proto, _ = make(backend, side, deflate, max_size)
        if data.draw(st.booleans(), label="we sent a close first"):
            proto.send_close(1000)
        run(proto, chunks)

    @FUZZ
    @given(data=st.data())
    def test_valid_frame_streams_without_eof(self, backend: Any, data: st.DataObject) -> None:
        side, deflate, max_size, chunks = data.draw(scenarios(mutate=False))
        proto, _ = make(backend, side, deflate, max_size)
        run(proto, chunks, eof=False)


class TestFuzzValidStreams:
    """Unmutated streams: the messages come out as sent, cut wherever the bytes were cut."""

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def test_messages_come_out_as_sent(self, backend: Any, data: st.DataObject) -> None:
        side = data.draw(sides)
        deflate = data.draw(st.booleans())
        proto, peer_ext = make(backend, side, deflate, None)
        units = data.draw(
            st.lists(
                st.one_of(
                    st.text(max_size=50),
                    st.binary(max_size=50),
                    st.lists(st.text(max_size=10), min_size=1, max_size=4),
                ),
                max_size=6,
            )
        )
        stream, expected = bytearray(), []
        for unit in units:
            compress = peer_ext is not None and data.draw(st.booleans())
            parts = unit if isinstance(unit, list) else [unit]
            for i, part in enumerate(parts):
                payload = part.encode("utf-8") if isinstance(part, str) else part
                opcode = OP_CONT if i else (OP_TEXT if isinstance(part, str) else OP_BINARY)
                fin = i == len(parts) - 1
                if compress:
                    payload = peer_ext.compress(payload, fin)
                stream += encode(opcode, payload, fin, compress and i == 0, os.urandom(4) if side == SERVER else None)
            expected.append("".join(unit) if isinstance(unit, list) else unit)
        result = run(proto, data.draw(chunked(bytes(stream))), eof=False)
        assert result.events == expected
        assert [type(e) for e in result.events] == [type(e) for e in expected]
        assert result.state is State.OPEN and proto.error is None


# -- twin parity ------------------------------------------------------------------------------


def summary(result: Run) -> list[Any]:
    """Events and frames sent, comparable across twins (close reasons included, masks not)."""
    events: list[tuple[Any, ...]] = []
    for e in result.events:
        if type(e) is Closed:
            err = e.error
            events.append(("Closed", e.code, e.reason, type(err).__name__, getattr(err, "code", None), getattr(err, "reason", None)))
        elif type(e) in (Ping, Pong):
            events.append((type(e).__name__, e.data))
        else:
            events.append((type(e).__name__, e))
    return [events, result.out, result.state]


class TestFuzzTwinParity:
    """SPEC.md "Speedups": both twins give the same events, errors and frames for the same bytes."""

    @FUZZ
    @given(data=st.data())
    def test_same_events_under_both_twins(self, backend: Any, data: st.DataObject) -> None:
        if _backend.speedups is None:
            pytest.skip("kn_sock._speedups not available")
        if backend is _pure:
            pytest.skip("compares the pure twin with the one under test")
        mutate = data.draw(st.booleans())
        side, deflate, max_size, chunks = data.draw(scenarios(mutate=mutate))
        results = []
        for twin in (_pure, backend):
            proto, _ = make(twin, side, deflate, max_size)
            results.append(summary(run(proto, chunks)))
        assert results[0] == results[1]
