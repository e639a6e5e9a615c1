"""Tests for kn_sock.frames, named after the RFC 6455 sections they check.

Each close-code rule is checked twice: on ``parse_close`` / ``build_close`` themselves, and on
the wire, through a ``Protocol`` built on the twin under test (``backend`` fixture). The
frame-building tests compare the twin's ``build_frame`` with a hand-written encoding.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest

from kn_sock.exceptions import ProtocolError
from kn_sock.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    CloseCode,
    Opcode,
    build_close,
    is_valid_close_code,
    parse_close,
)
from kn_sock.protocol import CLIENT, SERVER, Closed, Protocol, State


MASK = b"\x37\xfa\x21\x3d"

# RFC 6455 §7.4.1 / §7.4.2 and the IANA registry.
VALID_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999]
INVALID_CODES = [0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]


def raw_close(payload: bytes, mask: bytes | None) -> bytes:
    """A close frame as a peer would send it (masked towards a server)."""
    b1 = len(payload) | (0x80 if mask else 0)
    if mask is None:
        return bytes([0x88, b1]) + payload
    return bytes([0x88, b1]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def receive_close(backend: Any, side: str, payload: bytes) -> tuple[Protocol, list[Any]]:
    proto = Protocol(side, backend=backend)
    return proto, proto.receive_data(raw_close(payload, MASK if side == SERVER else None))


def reply_payload(proto: Protocol) -> bytes:
    """The payload of the single close frame the protocol wants to send."""
    (data,) = proto.data_to_send()
    assert data[0] == 0x88
    n = data[1] & 0x7F
    if data[1] & 0x80:
        key = data[2:6]
        return bytes(b ^ key[i % 4] for i, b in enumerate(data[6 : 6 + n]))
    return data[2 : 2 + n]


# -- §5.2 Opcodes, §7.4 Status codes ----------------------------------------------------------


class TestConstants:
    """RFC 6455 §5.2 (opcodes) and §7.4.1 (close codes)."""

    def test_opcodes(self, backend: Any) -> None:
        assert (OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG) == (0, 1, 2, 8, 9, 10)
        assert [int(op) for op in Opcode] == [0, 1, 2, 8, 9, 10]
        # The twin's frames carry the same opcode numbers.
        parser = backend.FrameParser(expect_mask=False)
        frames = parser.feed(bytes([0x80 | Opcode.PING, 0, 0x80 | Opcode.BINARY, 0]))
        assert [f[0] for f in frames] == [Opcode.PING, Opcode.BINARY]

    def test_close_codes(self, backend: Any) -> None:
        assert CloseCode.NORMAL_CLOSURE == 1000
        assert CloseCode.PROTOCOL_ERROR == 1002
        assert CloseCode.NO_STATUS_RCVD == 1005
        assert CloseCode.ABNORMAL_CLOSURE == 1006
        assert CloseCode.INVALID_DATA == 1007
        assert CloseCode.MESSAGE_TOO_BIG == 1009
        assert CloseCode.INTERNAL_ERROR == 1011
        assert CloseCode.TLS_HANDSHAKE == 1015
        for code in (CloseCode.NO_STATUS_RCVD, CloseCode.ABNORMAL_CLOSURE, CloseCode.TLS_HANDSHAKE):
            assert not is_valid_close_code(code)  # §7.4.1: never on the wire
        # What a Protocol reports for a peer's empty close (backend-independent, checked per twin).
        proto, (closed,) = receive_close(backend, CLIENT, b"")
        assert closed.code == CloseCode.NO_STATUS_RCVD


# -- §5.5.1 Close: parsing ----------------------------------------------------------------------


class TestParseClose:
    """RFC 6455 §5.5.1: the close payload is empty, or a 2-byte code and a UTF-8 reason."""

    @pytest.mark.parametrize("side", [CLIENT, SERVER])
    def test_empty_payload_is_1005(self, backend: Any, side: str) -> None:
        assert parse_close(b"") == (1005, "")
        proto, (closed,) = receive_close(backend, side, b"")
        assert (closed.code, closed.reason, closed.error) == (1005, "", None)
        assert type(closed.code) is int  # a plain int, as for every other code (websockets too)
        assert reply_payload(proto) == b""  # an empty close gets an empty reply

    @pytest.mark.parametrize("side", [CLIENT, SERVER])
    def test_one_byte_payload_is_1002(self, backend: Any, side: str) -> None:
        with pytest.raises(ProtocolError) as info:
            parse_close(b"\x03")
        assert info.value.code == 1002
        proto, (closed,) = receive_close(backend, side, b"\x03")
        assert closed.error.code == 1002
        assert reply_payload(proto)[:2] == struct.pack("!H", 1002)

    @pytest.mark.parametrize("code", VALID_CODES)
    @pytest.mark.parametrize("side", [CLIENT, SERVER])
    def test_valid_codes_are_accepted_and_echoed(self, backend: Any, side: str, code: int) -> None:
        assert is_valid_close_code(code)
        payload = struct.pack("!H", code) + "fin ✓".encode()
        assert parse_close(payload) == (code, "fin ✓")
        proto, (closed,) = receive_close(backend, side, payload)
        assert (closed.code, closed.reason, closed.error) == (code, "fin ✓", None)
        assert reply_payload(proto) == struct.pack("!H", code)
        assert proto.state is State.CLOSED

    @pytest.mark.parametrize("code", INVALID_CODES)
    @pytest.mark.parametrize("side", [CLIENT, SERVER])
    def test_invalid_codes_are_1002(self, backend: Any, side: str, code: int) -> None:
        assert not is_valid_close_code(code)
        payload = struct.pack("!H", code) + b"reason"
        with pytest.raises(ProtocolError) as info:
            parse_close(payload)
        assert info.value.code == 1002
        proto, events = receive_close(backend, side, payload)
        assert isinstance(events[-1], Closed) and events[-1].error is not None
        assert events[-1].error.code == 1002
        assert reply_payload(proto)[:2] == struct.pack("!H", 1002)

    @pytest.mark.parametrize(
        "reason",
        [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"ok\xe2\x82"],
        ids=["ff", "overlong", "surrogate", "too-high", "truncated"],
    )
    @pytest.mark.parametrize("side", [CLIENT, SERVER])
    def test_invalid_utf8_reason_is_1007(self, backend: Any, side: str, reason: bytes) -> None:
        payload = struct.pack("!H", 1000) + reason
        with pytest.raises(ProtocolError) as info:
            parse_close(payload)
        assert info.value.code == 1007
        proto, events = receive_close(backend, side, payload)
        assert events[-1].error.code == 1007
        assert reply_payload(proto)[:2] == struct.pack("!H", 1007)

    def test_reason_of_123_bytes(self, backend: Any) -> None:
        payload = struct.pack("!H", 1000) + b"r" * 123
        assert parse_close(payload) == (1000, "r" * 123)
        proto, (closed,) = receive_close(backend, SERVER, payload)
        assert closed.reason == "r" * 123



# -- §5.5.1 Close: building ---------------------------------------------------------------------


class TestBuildClose:
    """RFC 6455 §5.5.1 and §7.4: what we may put in a close frame."""

    @pytest.mark.parametrize("code", VALID_CODES)
    def test_round_trip(self, backend: Any, code: int) -> None:
        payload = build_close(code, "bye ✓")
        assert payload == struct.pack("!H", code) + "bye ✓".encode()
        assert parse_close(payload) == (code, "bye ✓")
        # Sent by one twin-backed protocol, read by another.
        client, server = Protocol(CLIENT, backend=backend), Protocol(SERVER, backend=backend)
        (closed,) = server.receive_data(client.send_close(code, "bye ✓"))
        assert (closed.code, closed.reason) == (code, "bye ✓")

    @pytest.mark.parametrize("code", [1000.0, "1000", None])
    def test_a_code_that_is_not_an_int_is_a_type_error(self, backend: Any, code: Any) -> None:
        with pytest.raises(TypeError):
            build_close(code)
        with pytest.raises(TypeError):
            Protocol(CLIENT, backend=backend).send_close(code)

    def test_1005_is_an_empty_payload(self, backend: Any) -> None:
        assert build_close(1005) == b""
        assert build_close(CloseCode.NO_STATUS_RCVD) == b""
        with pytest.raises(ValueError):
            build_close(1005, "a reason needs a code")

    @pytest.mark.parametrize("code", [c for c in INVALID_CODES if c != 1005])
    def test_invalid_code_is_a_value_error(self, backend: Any, code: int) -> None:
        with pytest.raises(ValueError):
            build_close(code)
        with pytest.raises(ValueError):
            Protocol(CLIENT, backend=backend).send_close(code)

    def test_reason_length_limit(self, backend: Any) -> None:
        assert len(build_close(1000, "x" * 123)) == 125
        with pytest.raises(ValueError):
            build_close(1000, "x" * 124)
        with pytest.raises(ValueError):
            build_close(1000, "é" * 62)  # 124 bytes of UTF-8
        assert len(build_close(1000, "é" * 61 + "x")) == 125


# -- §5.2 Base framing: the twin's frame builder --------------------------------------------------


class TestBuildFrame:
    """RFC 6455 §5.2: the twin's ``build_frame`` against a hand-written encoding."""

    @pytest.mark.parametrize(
        "n,header",
        [(0, b"\x82\x00"), (125, b"\x82\x7d"), (126, b"\x82\x7e\x00\x7e"), (65535, b"\x82\x7e\xff\xff"),
         (65536, b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00")],
    )
    def test_length_encodings(self, backend: Any, n: int, header: bytes) -> None:
        payload = bytes(range(256)) * (n // 256) + bytes(range(n % 256))
        assert backend.build_frame(OP_BINARY, payload) == header + payload

    def test_masked_frame(self, backend: Any) -> None:
        frame = backend.build_frame(OP_TEXT, "Hello", True, False, b"\x37\xfa\x21\x3d")
        # RFC 6455 §5.7: "A single-frame masked text message".
        assert frame == bytes.fromhex("818537fa213d7f9f4d5158")

    def test_flags(self, backend: Any) -> None:
        assert backend.build_frame(OP_TEXT, b"Hel", False)[:2] == b"\x01\x03"  # §5.7 fragment
        assert backend.build_frame(OP_CONT, b"lo", True)[:2] == b"\x80\x02"
        assert backend.build_frame(OP_TEXT, b"", True, True)[:2] == b"\xc1\x00"  # RSV1
        assert backend.build_frame(OP_CLOSE, build_close(1000))[:2] == b"\x88\x02"

    @pytest.mark.parametrize("side", [CLIENT, SERVER])
    def test_rfc_examples_parse(self, backend: Any, side: str) -> None:
        # RFC 6455 §5.7 examples, as seen by the receiving side.
        proto = Protocol(side, backend=backend)
        if side == CLIENT:
            data = bytes.fromhex("810548656c6c6f") + bytes.fromhex("010348656c") + bytes.fromhex("80026c6f")
            data += bytes.fromhex("890548656c6c6f")
        else:
            data = bytes.fromhex("818537fa213d7f9f4d5158")
        events = proto.receive_data(data)
        assert events[0] == "Hello"
        if side == CLIENT:
            assert events[1] == "Hello" and events[2].data == b"Hello"
