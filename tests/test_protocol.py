"""Tests for kn_sock.protocol (sans-I/O), named after the RFC 6455 / RFC 7692 sections they check.

Every test runs under both parser twins through the ``backend`` fixture ([pure] / [cython]).
Frames from the peer are built, and frames we send are decoded, by the small independent
codec below, so the tests do not trust the code under test to check itself.
"""

from __future__ import annotations

import array
import gc
import os
import random
import struct
import weakref
import zlib
from typing import Any, NamedTuple

import pytest

from kn_sock.exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidState,
    ProtocolError,
)
from kn_sock.extensions.permessage_deflate import ClientDeflateFactory, PerMessageDeflate, ServerDeflateFactory
from kn_sock.protocol import CLIENT, SERVER, Closed, Keepalive, Ping, Pong, Protocol, State


# -- an independent frame codec (RFC 6455 §5.2) ----------------------------------------------

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class Frame(NamedTuple):
    fin: bool
    rsv: int  # the three RSV bits, RSV1 = 4
    opcode: int
    mask: bytes | None
    payload: bytes


def xor(data: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


def encode(
    opcode: int,
    payload: bytes | str = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = None,
    length: int | None = None,
) -> bytes:
    """One raw frame; ``length`` overrides the announced payload length."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mbit = 0x80 if mask is not None else 0
    if n < 126:
        header = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        header = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        header = struct.pack("!BBQ", b0, mbit | 127, n)
    if mask is None:
        return header + payload
    return header + mask + xor(payload, mask)


def peer(receiver: Protocol, opcode: int, payload: bytes | str = b"", **kwargs: Any) -> bytes:
    """A frame as the receiver's peer sends it: masked towards a server (RFC 6455 §5.1)."""
    if receiver.side == SERVER and "mask" not in kwargs:
        kwargs["mask"] = os.urandom(4)
    return encode(opcode, payload, **kwargs)


def decode(data: bytes) -> list[Frame]:
    """Every frame in ``data``, which must end on a frame boundary."""
    frames = []
    pos = 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        n = b1 & 0x7F
        pos += 2
        if n == 126:
            (n,) = struct.unpack_from("!H", data, pos)
            pos += 2
        elif n == 127:
            (n,) = struct.unpack_from("!Q", data, pos)
            pos += 8
        mask = None
        if b1 & 0x80:
            mask = data[pos : pos + 4]
            pos += 4
        payload = data[pos : pos + n]
        assert len(payload) == n, "truncated frame"
        pos += n
        if mask is not None:
            payload = xor(payload, mask)
        frames.append(Frame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, mask, payload))
    return frames


def sent(proto: Protocol) -> list[Frame]:
    """Decode what the protocol wants written by itself."""
    return decode(b"".join(proto.data_to_send()))


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode("utf-8")


# -- helpers ----------------------------------------------------------------------------------


def make(backend: Any, side: str, **kwargs: Any) -> Protocol:
    return Protocol(side, backend=backend, **kwargs)


def deflate_pair(**server_kwargs: Any) -> tuple[PerMessageDeflate, PerMessageDeflate]:
    """A negotiated (client, server) permessage-deflate pair: offer → accept_offer → accept_response."""
    client_factory = ClientDeflateFactory()
    answer = ServerDeflateFactory(**server_kwargs).accept_offer(client_factory.offer())
    assert answer is not None
    response, server_ext = answer
    return client_factory.accept_response(response), server_ext


def connected(backend: Any, deflate: bool = False, **kwargs: Any) -> tuple[Protocol, Protocol]:
    """A (client, server) pair of protocols that agreed on the same extensions."""
    if deflate:
        client_ext, server_ext = deflate_pair()
        return (
            make(backend, CLIENT, extensions=[client_ext], **kwargs),
            make(backend, SERVER, extensions=[server_ext], **kwargs),
        )
    return make(backend, CLIENT, **kwargs), make(backend, SERVER, **kwargs)


def assert_failed(proto: Protocol, events: list[Any], code: int) -> None:
    """The connection failed with ``code`` (RFC 6455 §7.1.7): one close frame sent, CLOSED."""
    assert events, "no Closed event"
    closed = events[-1]
    assert isinstance(closed, Closed)
    assert closed.code == 1006
    assert isinstance(closed.error, ProtocolError)
    assert closed.error.code == code
    assert proto.error is closed.error
    assert proto.state is State.CLOSED
    assert proto.close_transport
    frames = sent(proto)
    closes = [f for f in frames if f.opcode == OP_CLOSE]
    assert len(closes) == 1
    assert frames[-1].opcode == OP_CLOSE
    assert struct.unpack("!H", closes[0].payload[:2])[0] == code
    assert (closes[0].mask is not None) == proto.is_client
    # Nothing more comes out of a failed connection.
    assert proto.receive_data(peer(proto, OP_TEXT, "late")) == []
    assert proto.data_to_send() == []
    with pytest.raises(ConnectionClosedError):
        proto.send("x")


def messages(events: list[Any]) -> list[Any]:
    return [e for e in events if type(e) in (str, bytes)]


# -- §5.1 Overview: masking by side -----------------------------------------------------------


class TestMasking:
    """RFC 6455 §5.1 and §5.3."""

    def test_server_accepts_masked_client_frame(self, backend: Any) -> None:
        server = make(backend, SERVER)
        assert server.receive_data(encode(OP_TEXT, "hi", mask=b"\x01\x02\x03\x04")) == ["hi"]

    def test_server_fails_on_unmasked_client_frame(self, backend: Any) -> None:
        server = make(backend, SERVER)
        assert_failed(server, server.receive_data(encode(OP_TEXT, "hi")), 1002)

    def test_client_fails_on_masked_server_frame(self, backend: Any) -> None:
        client = make(backend, CLIENT)
        assert_failed(client, client.receive_data(encode(OP_BINARY, b"hi", mask=b"abcd")), 1002)

    def test_client_masks_every_frame_with_a_fresh_key(self, backend: Any) -> None:
        client = make(backend, CLIENT)
        frames = [decode(client.send(b"same payload"))[0] for _ in range(64)]
        frames.append(decode(client.send_ping(b"p"))[0])
        frames.append(decode(client.send_pong(b"p"))[0])
        frames.append(decode(client.send_close())[0])
        assert all(f.mask is not None for f in frames)
        assert len({f.mask for f in frames}) == len(frames)
        assert {f.payload for f in frames[:64]} == {b"same payload"}

    @pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")  # 3.12+: forking is the point
    def test_masking_keys_span_pool_refills_and_are_not_shared_with_a_forked_child(self, backend: Any) -> None:
        client = make(backend, CLIENT)
        masks = [decode(client.send(b"x"))[0].mask for _ in range(600)]  # > 2 pools of 256 keys
        assert len(set(masks)) >= 590  # 32-bit keys: a few repeats by chance at most
        if not hasattr(os, "fork"):
            return
        client.send(b"x")  # the shared pool now holds unused keys
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                os.write(write_end, decode(client.send(b"x"))[0].mask)
            finally:
                os._exit(0)
        os.close(write_end)
        child_key = os.read(read_end, 4)
        os.close(read_end)
        os.waitpid(pid, 0)
        assert len(child_key) == 4 and child_key != decode(client.send(b"x"))[0].mask

    def test_server_never_masks(self, backend: Any) -> None:
        server = make(backend, SERVER)
        frames = decode(server.send("x") + server.send_ping(b"p") + server.send_pong() + server.send_close())
        assert [f.mask for f in frames] == [None] * 4

    def test_client_pong_reply_is_masked(self, backend: Any) -> None:
        client = make(backend, CLIENT)
        client.receive_data(encode(OP_PING, b"abc"))
        (pong,) = sent(client)
        assert pong.mask is not None and pong.payload == b"abc"


# -- §5.2 Base framing protocol ---------------------------------------------------------------


class TestBaseFraming:
    """RFC 6455 §5.2: reserved bits and opcodes, payload lengths, resumable parsing."""

    @pytest.mark.parametrize("side", [CLIENT, SERVER])
    @pytest.mark.parametrize("rsv", [4, 2, 1, 7], ids=["rsv1", "rsv2", "rsv3", "all"])
    def test_reserved_bits_fail_with_1002(self, backend: Any, side: str, rsv: int) -> None:
        proto = make(backend, side)
        assert_failed(proto, proto.receive_data(peer(proto, OP_TEXT, "x", rsv=rsv)), 1002)

    @pytest.mark.parametrize("rsv", [2, 1], ids=["rsv2", "rsv3"])
    def test_rsv2_rsv3_fail_even_with_deflate(self, backend: Any, rsv: int) -> None:
        client, server = connected(backend, deflate=True)
        assert_failed(server, server.receive_data(peer(server, OP_BINARY, b"x", rsv=rsv)), 1002)

    @pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
    @pytest.mark.parametrize("side", [CLIENT, SERVER])
    def test_reserved_opcodes_fail_with_1002(self, backend: Any, side: str, opcode: int) -> None:
        proto = make(backend, side)
        assert_failed(proto, proto.receive_data(peer(proto, opcode, b"")), 1002)

    def test_reserved_opcode_after_valid_frame_keeps_the_message(self, backend: Any) -> None:
        server = make(backend, SERVER)
        events = server.receive_data(peer(server, OP_TEXT, "ok") + peer(server, 5))
        assert events[0] == "ok"
        assert_failed(server, events, 1002)

    def test_64_bit_length_with_top_bit_set_fails_with_1002(self, backend: Any) -> None:
        client = make(backend, CLIENT, max_size=None)
        events = client.receive_data(b"\x82\x7f" + struct.pack("!Q", 1 << 63))
        assert_failed(client, events, 1002)

    @pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70000])
    @pytest.mark.parametrize("side", [CLIENT, SERVER])
    def test_payload_length_encodings(self, backend: Any, side: str, size: int) -> None:
        proto = make(backend, side)
        payload = os.urandom(size)
        assert proto.receive_data(peer(proto, OP_BINARY, payload)) == [payload]

    @pytest.mark.parametrize("side", [CLIENT, SERVER])
    def test_frames_split_at_every_byte(self, backend: Any, side: str) -> None:
        proto = make(backend, side)
        data = (
            peer(proto, OP_TEXT, "héllo")
            + peer(proto, OP_BINARY, bytes(300))
            + peer(proto, OP_TEXT, "frag", fin=False)
            + peer(proto, OP_PING, b"!")
            + peer(proto, OP_CONT, "ment")
        )
        events = []
        for i in range(len(data)):
            events += proto.receive_data(data[i : i + 1])
        assert messages(events) == ["héllo", bytes(300), "fragment"]
        assert [type(e) for e in events] == [str, bytes, Ping, str]

    def test_many_frames_in_one_chunk(self, backend: Any) -> None:
        server = make(backend, SERVER)
        data = b"".join(peer(server, OP_TEXT, str(i)) for i in range(100))
        assert server.receive_data(data) == [str(i) for i in range(100)]

    def test_empty_messages(self, backend: Any) -> None:
        server = make(backend, SERVER)
        events = server.receive_data(peer(server, OP_TEXT, b"") + peer(server, OP_BINARY, b""))
        assert events == ["", b""]
        assert [type(e) for e in events] == [str, bytes]

    def test_receive_data_accepts_bytearray_and_memoryview(self, backend: Any) -> None:
        server = make(backend, SERVER)
        frame = peer(server, OP_TEXT, "a")
        assert server.receive_data(bytearray(frame)) == ["a"]
        assert server.receive_data(memoryview(frame)) == ["a"]


# -- §5.4 Fragmentation -----------------------------------------------------------------------


class TestFragmentation:
    """RFC 6455 §5.4."""

    @pytest.mark.parametrize("side", [CLIENT, SERVER])
    def test_fragmented_text(self, backend: Any, side: str) -> None:
        proto = make(backend, side)
        assert proto.receive_data(peer(proto, OP_TEXT, "Hel", fin=False)) == []
        assert proto.receive_data(peer(proto, OP_CONT, "lo, ", fin=False)) == []
        assert proto.receive_data(peer(proto, OP_CONT, "wörld")) == ["Hello, wörld"]

    @pytest.mark.parametrize("side", [CLIENT, SERVER])
    def test_fragmented_binary(self, backend: Any, side: str) -> None:
        proto = make(backend, side)
        data = peer(proto, OP_BINARY, b"\x00\x01", fin=False) + peer(proto, OP_CONT, b"", fin=False)
        data += peer(proto, OP_CONT, b"\xff")
        events = proto.receive_data(data)
        assert events == [b"\x00\x01\xff"] and type(events[0]) is bytes

    def test_empty_fragments(self, backend: Any) -> None:
        server = make(backend, SERVER)
        data = peer(server, OP_TEXT, "", fin=False) + peer(server, OP_CONT, "", fin=False) + peer(server, OP_CONT, "")
        assert server.receive_data(data) == [""]

    def test_ping_inside_fragmented_message_is_answered(self, backend: Any) -> None:
        server = make(backend, SERVER)
        events = server.receive_data(peer(server, OP_TEXT, "frag", fin=False) + peer(server, OP_PING, b"in between"))
        assert len(events) == 1 and isinstance(events[0], Ping) and events[0].data == b"in between"
        (pong,) = sent(server)
        assert (pong.opcode, pong.fin, pong.payload) == (OP_PONG, True, b"in between")
        assert server.receive_data(peer(server, OP_CONT, "ment")) == ["fragment"]

    def test_pong_inside_fragmented_message(self, backend: Any) -> None:
        client = make(backend, CLIENT)
        events = client.receive_data(
            peer(client, OP_BINARY, b"a", fin=False) + peer(client, OP_PONG, b"?") + peer(client, OP_CONT, b"b")
        )
        assert isinstance(events[0], Pong) and events[1:] == [b"ab"]
        assert client.data_to_send() == []

    @pytest.mark.parametrize("side", [CLIENT, SERVER])
    def test_continuation_without_start_fails_with_1002(self, backend: Any, side: str) -> None:
        proto = make(backend, side)
        assert_failed(proto, proto.receive_data(peer(proto, OP_CONT, "x")), 1002)

    def test_continuation_after_finished_message_fails_with_1002(self, backend: Any) -> None:
        server = make(backend, SERVER)
        events = server.receive_data(peer(server, OP_TEXT, "a", fin=False) + peer(server, OP_CONT, "b"))
        assert events == ["ab"]
        assert_failed(server, server.receive_data(peer(server, OP_CONT, "c")), 1002)

    @pytest.mark.parametrize("first", [OP_TEXT, OP_BINARY])
    @pytest.mark.parametrize("second", [OP_TEXT, OP_BINARY])
    def test_new_data_frame_while_fragmented_fails_with_1002(self, backend: Any, first: int, second: int) -> None:
        server = make(backend, SERVER)
        assert server.receive_data(peer(server, first, b"a", fin=False)) == []
        assert_failed(server, server.receive_data(peer(server, second, b"b")), 1002)

    @pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
    @pytest.mark.parametrize("compressed", [False, True])
    def test_memory_of_a_message_in_tiny_fragments_is_about_its_size(
        self, backend: Any, opcode: int, compressed: bool
    ) -> None:
        # Bad input: a peer sending a message a byte a frame (or empty frames forever) must
        # not make the receiver hold ~40 bytes of objects per byte (or per empty frame).
        import tracemalloc

        server = make(backend, SERVER, extensions=[deflate_pair()[1]] if compressed else [])
        zip = zlib.compressobj(wbits=-15)

        def payload(data: bytes) -> bytes:  # each fragment's share of one deflate stream
            return zip.compress(data) + zip.flush(zlib.Z_SYNC_FLUSH) if compressed else data

        def fragments() -> bytes:  # 2,000 bytes in 1-byte frames, then 2,000 empty frames
            frames = [peer(server, OP_CONT, payload(b"a"), fin=False) for _ in range(2000)]
            frames += [peer(server, OP_CONT, payload(b""), fin=False) for _ in range(2000)]
            return b"".join(frames)

        rsv = 4 if compressed else 0
        assert server.receive_data(peer(server, opcode, payload(b"a"), fin=False, rsv=rsv)) == []
        assert server.receive_data(fragments()) == []  # the parser's buffers reach their size
        batches = [fragments() for _ in range(9)]
        tracemalloc.start()
        try:
            # (Measured from the 3rd batch: the first ones under tracing also fill CPython's
            # tuple free list, a fixed ~140 KiB.)
            for batch in batches[:3]:
                assert server.receive_data(batch) == []
            before = tracemalloc.get_traced_memory()[0]
            for batch in batches[3:]:
                assert server.receive_data(batch) == []
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert grown < 2 * 12_000, grown  # for 12,000 bytes of message (622 KB before the fix)
        last = zip.flush(zlib.Z_SYNC_FLUSH)[:-4] if compressed else b""
        (message,) = server.receive_data(peer(server, OP_CONT, last))
        assert message == ("a" if opcode == OP_TEXT else b"a") * 20_001

    def test_messages_after_a_fragmented_one(self, backend: Any) -> None:
        server = make(backend, SERVER)
        data = peer(server, OP_TEXT, "a", fin=False) + peer(server, OP_CONT, "b")
        data += peer(server, OP_BINARY, b"c", fin=False) + peer(server, OP_CONT, b"d") + peer(server, OP_TEXT, "e")
        assert server.receive_data(data) == ["ab", b"cd", "e"]


# -- §5.5 Control frames ----------------------------------------------------------------------


class TestControlFrames:
    """RFC 6455 §5.5: at most 125 bytes, never fragmented."""

    @pytest.mark.parametrize("opcode", [OP_CLOSE, OP_PING, OP_PONG])
    @pytest.mark.parametrize("side", [CLIENT, SERVER])
    def test_control_frame_over_125_bytes_fails_with_1002(self, backend: Any, side: str, opcode: int) -> None:
        proto = make(backend, side)
        payload = close_payload(1000, "x" * 124) if opcode == OP_CLOSE else bytes(126)
        assert_failed(proto, proto.receive_data(peer(proto, opcode, payload)), 1002)

    @pytest.mark.parametrize("opcode", [OP_CLOSE, OP_PING, OP_PONG])
    def test_control_frame_over_125_bytes_fails_from_the_header(self, backend: Any, opcode: int) -> None:
        client = make(backend, CLIENT)
        # Two bytes announcing a 16-bit length: no payload is needed to refuse it.
        assert_failed(client, client.receive_data(bytes([0x80 | opcode, 126])), 1002)

    @pytest.mark.parametrize("opcode", [OP_CLOSE, OP_PING, OP_PONG])
    @pytest.mark.parametrize("side", [CLIENT, SERVER])
    def test_fragmented_control_frame_fails_with_1002(self, backend: Any, side: str, opcode: int) -> None:
        proto = make(backend, side)
        assert_failed(proto, proto.receive_data(peer(proto, opcode, b"", fin=False)), 1002)

    def test_control_frame_of_exactly_125_bytes(self, backend: Any) -> None:
        server = make(backend, SERVER)
        (ping,) = server.receive_data(peer(server, OP_PING, bytes(range(125))))
        assert ping.data == bytes(range(125))
        assert sent(server)[0].payload == bytes(range(125))


# -- §5.5.1 Close -----------------------------------------------------------------------------


class TestClose:
    """RFC 6455 §5.5.1 and §7: the closing handshake."""

    @pytest.mark.parametrize("code", [1000, 1001, 1003, 1011, 3000, 4999])
    @pytest.mark.parametrize("side", [CLIENT, SERVER])
    def test_peer_close_is_echoed_with_its_code(self, backend: Any, side: str, code: int) -> None:
        proto = make(backend, side)
        events = proto.receive_data(peer(proto, OP_CLOSE, close_payload(code, "bye")))
        assert len(events) == 1 and isinstance(events[0], Closed)
        assert (events[0].code, events[0].reason, events[0].error) == (code, "bye", None)
        (reply,) = sent(proto)
        assert reply.opcode == OP_CLOSE and reply.fin
        assert struct.unpack("!H", reply.payload[:2])[0] == code
        assert proto.state is State.CLOSED
        assert proto.close_rcvd == (code, "bye")
        assert proto.close_rcvd_then_sent is True

    def test_empty_close_gets_an_empty_reply_and_1005(self, backend: Any) -> None:
        server = make(backend, SERVER)
        (closed,) = server.receive_data(peer(server, OP_CLOSE, b""))
        assert (closed.code, closed.reason) == (1005, "")
        (reply,) = sent(server)
        assert (reply.opcode, reply.payload) == (OP_CLOSE, b"")
        assert server.state is State.CLOSED
        exc = server.closed_exception()
        assert isinstance(exc, ConnectionClosedOK) and exc.code == 1005

    def test_after_failing_the_closed_exception_carries_the_protocol_error(self, backend: Any) -> None:
        server = make(backend, SERVER)
        server.receive_data(peer(server, OP_CLOSE, b"\x03"))
        exc = server.closed_exception()
        assert isinstance(exc, ConnectionClosedError) and exc.code == 1006
        assert isinstance(exc.__cause__, ProtocolError) and exc.__cause__.code == 1002
        assert "failed by us" in str(exc) and exc.__cause__.reason in str(exc)

    def test_one_byte_close_payload_fails_with_1002(self, backend: Any) -> None:
        server = make(backend, SERVER)
        assert_failed(server, server.receive_data(peer(server, OP_CLOSE, b"\x03")), 1002)

    @pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
    @pytest.mark.parametrize("side", [CLIENT, SERVER])
    def test_invalid_close_code_fails_with_1002(self, backend: Any, side: str, code: int) -> None:
        proto = make(backend, side)
        assert_failed(proto, proto.receive_data(peer(proto, OP_CLOSE, close_payload(code))), 1002)

    def test_invalid_utf8_close_reason_fails_with_1007(self, backend: Any) -> None:
        server = make(backend, SERVER)
        events = server.receive_data(peer(server, OP_CLOSE, close_payload(1000) + b"\xce\xba\xe1\xbd\xb9\xed\xa0\x80"))
        assert_failed(server, events, 1007)

    def test_close_while_fragmented_message_is_open_is_a_normal_close(self, backend: Any) -> None:
        # Autobahn 7.1.5: a fragment, a close, then the rest of the message.
        server = make(backend, SERVER)
        data = peer(server, OP_TEXT, "frag", fin=False) + peer(server, OP_CLOSE, close_payload(1000))
        data += peer(server, OP_CONT, "ment")
        events = server.receive_data(data)
        assert len(events) == 1 and isinstance(events[0], Closed)
        assert (events[0].code, events[0].error) == (1000, None)
        (reply,) = sent(server)
        assert reply.payload == close_payload(1000)
        assert isinstance(server.closed_exception(), ConnectionClosedOK)

    def test_data_after_close_is_ignored(self, backend: Any) -> None:
        server = make(backend, SERVER)
        data = peer(server, OP_CLOSE, close_payload(1000)) + peer(server, OP_TEXT, "same chunk") + b"\xff\xff garbage"
        events = server.receive_data(data)
        assert [type(e) for e in events] == [Closed]
        assert len(sent(server)) == 1
        assert server.receive_data(peer(server, OP_TEXT, "later") + peer(server, OP_PING)) == []
        assert server.receive_data(b"\x00" * 10) == []
        assert server.data_to_send() == []
        assert server.error is None

    def test_locally_started_closing_handshake(self, backend: Any) -> None:
        client, server = connected(backend)
        frame = client.send_close(1000, "done")
        assert client.state is State.CLOSING
        assert client.send_close() == b""  # already started
        with pytest.raises(ConnectionClosed):
            client.send("too late")
        (closed,) = server.receive_data(frame)
        assert (closed.code, closed.reason) == (1000, "done")
        assert server.close_transport  # §7.1.1: the server closes TCP first
        (reply,) = server.data_to_send()
        (closed,) = client.receive_data(reply)
        assert (closed.code, closed.reason) == (1000, "")
        assert client.state is State.CLOSED
        assert not client.close_transport  # the client waits for the server's TCP close
        assert client.close_rcvd_then_sent is False
        assert client.data_to_send() == []  # no second close frame
        with pytest.raises(ConnectionClosedOK):
            client.send("x")
        with pytest.raises(ConnectionClosedOK):
            server.send("x")

    def test_server_started_closing_handshake(self, backend: Any) -> None:
        client, server = connected(backend)
        (closed,) = client.receive_data(server.send_close(1001))
        assert closed.code == 1001
        assert not client.close_transport
        (closed,) = server.receive_data(b"".join(client.data_to_send()))
        assert closed.code == 1001
        assert server.state is State.CLOSED and server.close_transport

    def test_close_reply_with_error_code_is_closed_error(self, backend: Any) -> None:
        server = make(backend, SERVER)
        server.receive_data(peer(server, OP_CLOSE, close_payload(1011)))
        with pytest.raises(ConnectionClosedError) as info:
            server.send("x")
        assert info.value.code == 1011

    def test_messages_before_close_in_the_same_chunk_are_delivered(self, backend: Any) -> None:
        client = make(backend, CLIENT)
        events = client.receive_data(peer(client, OP_TEXT, "last") + peer(client, OP_CLOSE, close_payload(1000)))
        assert events[0] == "last" and isinstance(events[1], Closed)

    def test_invalid_close_code_or_reason_on_send_is_a_value_error(self, backend: Any) -> None:
        client = make(backend, CLIENT)
        with pytest.raises(ValueError):
            client.send_close(1006)
        with pytest.raises(ValueError):
            client.send_close(1000, "x" * 124)
        assert client.state is State.OPEN

    def test_send_close_between_our_fragments_is_1011(self, backend: Any) -> None:
        """Half a message is out: not 1000, which would tell the peer its purpose was fulfilled
        (websockets: 1011 too); a reserved, unstarted one changes nothing; other codes stay."""
        client = make(backend, CLIENT)
        client.begin_fragments()
        client.abandon_fragments()
        client.send_fragment("a", False)
        (frame,) = decode(client.send_close(1000, "bye"))
        assert frame.payload == close_payload(1011, "close during fragmented message")
        assert client.close_sent == (1011, "close during fragmented message")
        server = make(backend, SERVER)
        server.send_fragment(b"a", True)
        (frame,) = decode(server.send_close(1000, "bye"))
        assert frame.payload == close_payload(1000, "bye")
        server = make(backend, SERVER)
        server.send_fragment(b"a", False)
        (frame,) = decode(server.send_close(1001, "going away"))  # says why itself (SPEC: shutdown sends 1001)
        assert frame.payload == close_payload(1001, "going away")
        server = make(backend, SERVER)
        server.send_fragment(b"a", False)
        (frame,) = decode(server.send_close(1005))  # no code: as normal as 1000 to the peer
        assert frame.payload == close_payload(1011, "close during fragmented message")

    def test_send_close_1005_sends_an_empty_close(self, backend: Any) -> None:
        server = make(backend, SERVER)
        (frame,) = decode(server.send_close(1005))
        assert (frame.opcode, frame.payload) == (OP_CLOSE, b"")


# -- §5.5.2 Ping, §5.5.3 Pong -----------------------------------------------------------------


class TestPingPong:
    """RFC 6455 §5.5.2 and §5.5.3."""

    @pytest.mark.parametrize("payload", [b"", b"hello", bytes(range(125))])
    @pytest.mark.parametrize("side", [CLIENT, SERVER])
    def test_ping_is_answered_with_a_pong_with_the_same_payload(self, backend: Any, side: str, payload: bytes) -> None:
        proto = make(backend, side)
        (event,) = proto.receive_data(peer(proto, OP_PING, payload))
        assert isinstance(event, Ping) and event.data == payload and type(event.data) is bytes
        (pong,) = sent(proto)
        assert (pong.opcode, pong.fin, pong.rsv, pong.payload) == (OP_PONG, True, 0, payload)

    def test_every_ping_gets_its_own_pong(self, backend: Any) -> None:
        server = make(backend, SERVER)
        for i in range(5):
            (ping,) = server.receive_data(peer(server, OP_PING, bytes([i])))
            assert isinstance(ping, Ping) and ping.data == bytes([i])
        assert [f.payload for f in sent(server)] == [bytes([i]) for i in range(5)]

    def test_ten_pings_read_together_get_ten_pongs(self, backend: Any) -> None:
        """Autobahn 2.10: ten pings in one write, a pong for each, in order."""
        server = make(backend, SERVER)
        events = server.receive_data(b"".join(peer(server, OP_PING, b"%d" % i) for i in range(10)))
        assert [e.data for e in events] == [b"%d" % i for i in range(10)]
        assert [f.payload for f in sent(server)] == [b"%d" % i for i in range(10)]

    def test_a_ping_flood_read_together_gets_a_bounded_number_of_pongs(self, backend: Any) -> None:
        """RFC 6455 §5.5.3 allows it: past the first 32 pings of a read, only the latest is
        answered; a flood costs a bounded number of pongs and events per read (fairness)."""
        server = make(backend, SERVER)
        data = b"".join(peer(server, OP_PING, b"%d" % i) for i in range(1000))
        events = server.receive_data(data)
        assert [e.data for e in events] == [b"%d" % i for i in range(32)] + [b"999"]
        assert [f.payload for f in sent(server)] == [b"%d" % i for i in range(32)] + [b"999"]
        # The count starts again with each read.
        events = server.receive_data(b"".join(peer(server, OP_PING, b"x%d" % i) for i in range(3)))
        assert [f.payload for f in sent(server)] == [b"x0", b"x1", b"x2"]

    def test_pong_matches_the_ping_and_acks_older_ones(self, backend: Any) -> None:
        client, server = connected(backend)
        pings = [client.send_ping(b"1", tag="a"), client.send_ping("2", tag="b"), client.send_ping(b"3", tag="c")]
        server.receive_data(pings[0])
        server.receive_data(pings[1])
        pongs = sent(server)
        (pong,) = client.receive_data(encode(OP_PONG, pongs[1].payload))
        assert isinstance(pong, Pong) and pong.data == b"2"
        assert pong.acked == [(b"1", "a"), (b"2", "b")]
        assert list(client.pings) == [b"3"]
        # The late pong for "1" is now unsolicited.
        (late,) = client.receive_data(encode(OP_PONG, b"1"))
        assert late.acked == []
        assert list(client.pings) == [b"3"]

    def test_unsolicited_pong_is_ignored(self, backend: Any) -> None:
        server = make(backend, SERVER)
        server.send_ping(b"mine")
        (pong,) = server.receive_data(peer(server, OP_PONG, b"heartbeat"))
        assert isinstance(pong, Pong) and pong.acked == []
        assert server.data_to_send() == []
        assert server.state is State.OPEN and list(server.pings) == [b"mine"]

    def test_send_ping_over_125_bytes_is_a_value_error(self, backend: Any) -> None:
        client = make(backend, CLIENT)
        frame = decode(client.send_ping(bytes(125)))[0]
        assert (frame.opcode, frame.payload) == (OP_PING, bytes(125))
        with pytest.raises(ValueError):
            client.send_ping(bytes(126))
        with pytest.raises(ValueError):
            client.send_pong(bytes(126))
        assert bytes(126) not in client.pings

    def test_duplicate_ping_payload_in_flight_is_a_value_error(self, backend: Any) -> None:
        client = make(backend, CLIENT)
        client.send_ping(b"x")
        with pytest.raises(ValueError):
            client.send_ping(b"x")

    def test_ping_is_answered_while_closing(self, backend: Any) -> None:
        # "unless it already received a Close frame": having only sent one, we still owe the pong.
        client = make(backend, CLIENT)
        client.send_close()
        (ping,) = client.receive_data(encode(OP_PING, b"still there?"))
        assert isinstance(ping, Ping)
        (pong,) = sent(client)
        assert (pong.opcode, pong.payload) == (OP_PONG, b"still there?")

    def test_no_pong_after_the_peers_close(self, backend: Any) -> None:
        server = make(backend, SERVER)
        events = server.receive_data(peer(server, OP_CLOSE, close_payload(1000)) + peer(server, OP_PING, b"?"))
        assert [type(e) for e in events] == [Closed]
        assert [f.opcode for f in sent(server)] == [OP_CLOSE]

    @pytest.mark.parametrize("side", [CLIENT, SERVER])
    def test_while_pongs_are_held_only_the_latest_ping_is_answered(self, backend: Any, side: str) -> None:
        # §5.5.3: with earlier pongs unsent, answering only the most recent ping is allowed;
        # the I/O layer holds pongs while the peer does not read what we write.
        proto = make(backend, side)
        proto.hold_pongs = True
        events = proto.receive_data(b"".join(peer(proto, OP_PING, b"%d" % i) for i in range(1000)))
        assert [e.data for e in events] == [b"%d" % i for i in range(1000)]
        assert proto.data_to_send() == []
        assert proto.receive_data(peer(proto, OP_BINARY, b"data")) == [b"data"]
        proto.hold_pongs = False
        (pong,) = sent(proto)
        assert (pong.opcode, pong.payload) == (OP_PONG, b"999")
        assert proto.data_to_send() == []
        proto.receive_data(peer(proto, OP_PING, b"again"))
        assert [(f.opcode, f.payload) for f in sent(proto)] == [(OP_PONG, b"again")]

    def test_ping_after_close_raises(self, backend: Any) -> None:
        client = make(backend, CLIENT)
        client.send_close()
        with pytest.raises(ConnectionClosed):
            client.send_ping()
        with pytest.raises(ConnectionClosed):
            client.send_pong()


# -- §5.6 Data frames, §8.1 Handling errors in UTF-8-encoded data -----------------------------

INVALID_UTF8 = [
    b"\xff",
    b"\xc0\xaf",  # overlong "/"
    b"\xe0\x80\xaf",  # overlong
    b"\xed\xa0\x80",  # surrogate U+D800
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",  # Autobahn 6.x
    b"\xe2\x82",  # truncated at the end of the message
    b"\x80",  # lone continuation byte
]


class TestUtf8:
    """RFC 6455 §5.6 and §8.1: invalid UTF-8 in a text message fails with 1007."""

    @pytest.mark.parametrize("payload", INVALID_UTF8)
    @pytest.mark.parametrize("side", [CLIENT, SERVER])
    def test_invalid_utf8_in_one_frame_fails_with_1007(self, backend: Any, side: str, payload: bytes) -> None:
        proto = make(backend, side)
        assert_failed(proto, proto.receive_data(peer(proto, OP_TEXT, payload)), 1007)

    def test_invalid_utf8_in_binary_is_fine(self, backend: Any) -> None:
        server = make(backend, SERVER)
        assert server.receive_data(peer(server, OP_BINARY, b"\xff\xfe")) == [b"\xff\xfe"]

    def test_code_point_split_across_fragments(self, backend: Any) -> None:
        server = make(backend, SERVER)
        euro = "€".encode()
        data = peer(server, OP_TEXT, euro[:1], fin=False) + peer(server, OP_CONT, euro[1:2], fin=False)
        data += peer(server, OP_CONT, euro[2:])
        assert server.receive_data(data) == ["€"]

    @pytest.mark.parametrize(
        "fragments",
        [
            # Autobahn 6.4.1: the second fragment is a code point above U+10FFFF.
            [b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", b"\xf4\x90\x80\x80", b"edited"],
            # Autobahn 6.4.2: the first fragment ends on a valid lead byte, the second can't follow it.
            [b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4", b"\x90\x80\x80", b"edited"],
            # A surrogate's first two bytes are already impossible.
            [b"ok", b"\xed\xa0", b"\x80"],
            # An invalid byte in the very first fragment.
            [b"\xff", b"ok"],
        ],
        ids=["6.4.1", "6.4.2", "surrogate", "first"],
    )
    @pytest.mark.parametrize("side", [CLIENT, SERVER])
    def test_fragmented_text_fails_fast(self, backend: Any, side: str, fragments: list[bytes]) -> None:
        proto = make(backend, side)
        events: list[Any] = []
        for i, fragment in enumerate(fragments):
            events = proto.receive_data(peer(proto, OP_TEXT if i == 0 else OP_CONT, fragment, fin=False))
            if events:
                break
        # It fails on the fragment that makes the message impossible, before the last one.
        assert i < len(fragments) - 1 or len(fragments) == 2
        assert_failed(proto, events, 1007)

    def test_fragmented_text_ending_mid_code_point_fails_with_1007(self, backend: Any) -> None:
        server = make(backend, SERVER)
        assert server.receive_data(peer(server, OP_TEXT, b"ok\xe2", fin=False)) == []
        assert_failed(server, server.receive_data(peer(server, OP_CONT, b"\x82")), 1007)

    @pytest.mark.parametrize("at", [0, 1, 250])
    @pytest.mark.parametrize("size", [300, 100_000])
    @pytest.mark.parametrize("side", [CLIENT, SERVER])
    def test_invalid_utf8_in_a_continuation_frame_fails_before_the_frame_is_complete(
        self, backend: Any, side: str, size: int, at: int
    ) -> None:
        # SPEC "Bad input": 1007 as soon as the bytes received so far cannot be valid, in a
        # continuation frame too (the first fragment ends inside "€", which the next completes).
        proto = make(backend, side)
        assert proto.receive_data(peer(proto, OP_TEXT, "ok".encode() + "€".encode()[:1], fin=False)) == []
        payload = bytearray("€".encode()[1:] + b"a" * size)
        payload[2 + at] = 0xFF
        frame = peer(proto, OP_CONT, bytes(payload))
        head = len(frame) - len(payload)
        assert proto.receive_data(frame[: head + 2 + at]) == []  # still a valid prefix
        assert_failed(proto, proto.receive_data(frame[head + 2 + at : head + 2 + at + 2]), 1007)

    @pytest.mark.parametrize("side", [CLIENT, SERVER])
    def test_continuation_frames_fed_in_pieces_stay_valid(self, backend: Any, side: str) -> None:
        proto = make(backend, side)
        text = "naïve €uro 😊 " * 2000
        data = text.encode()
        cuts = [0, 7, 1001, 1002, 15_000, 15_003, 60_000, len(data)]
        stream = b"".join(
            peer(proto, OP_TEXT if i == 0 else OP_CONT, data[a:b], fin=b == len(data))
            for i, (a, b) in enumerate(zip(cuts, cuts[1:]))
        )
        events: list[Any] = []
        for i in range(0, len(stream), 997):  # reads that end mid-frame and mid-code point
            events += proto.receive_data(stream[i : i + 997])
        assert events == [text]

    def test_ping_between_fragments_does_not_disturb_validation(self, backend: Any) -> None:
        server = make(backend, SERVER)
        data = peer(server, OP_TEXT, b"\xe2", fin=False) + peer(server, OP_PING, b"\xff")
        data += peer(server, OP_CONT, b"\x82\xac")
        events = server.receive_data(data)
        assert isinstance(events[0], Ping) and events[1:] == ["€"]


# -- max_size (RFC 6455 §10.4) ----------------------------------------------------------------


class TestMaxSize:
    """RFC 6455 §10.4 and §7.4.1 (1009): limits decided before buffering the payload."""

    @pytest.mark.parametrize(
        "header",
        [
            b"\x82\x7e" + struct.pack("!H", 1001),
            b"\x82\x7f" + struct.pack("!Q", 2**40),
            b"\x81\x7f" + struct.pack("!Q", 2**63 - 1),
        ],
        ids=["16-bit", "40-bit", "63-bit"],
    )
    def test_too_big_frame_fails_with_1009_from_the_header_alone(self, backend: Any, header: bytes) -> None:
        client = make(backend, CLIENT, max_size=1000)
        assert_failed(client, client.receive_data(header), 1009)

    def test_too_big_masked_frame_fails_before_the_mask_key(self, backend: Any) -> None:
        server = make(backend, SERVER, max_size=1000)
        assert_failed(server, server.receive_data(b"\x82\xfe" + struct.pack("!H", 1001)), 1009)

    def test_too_big_frame_fails_with_1009_when_fed_byte_by_byte(self, backend: Any) -> None:
        client = make(backend, CLIENT, max_size=1000)
        header = b"\x82\x7e" + struct.pack("!H", 1001)
        for byte in header[:-1]:
            assert client.receive_data(bytes([byte])) == []
        assert_failed(client, client.receive_data(header[-1:]), 1009)

    @pytest.mark.parametrize("side", [CLIENT, SERVER])
    def test_message_of_exactly_max_size_is_accepted(self, backend: Any, side: str) -> None:
        proto = make(backend, side, max_size=1000)
        assert proto.receive_data(peer(proto, OP_BINARY, bytes(1000))) == [bytes(1000)]
        assert proto.receive_data(peer(proto, OP_TEXT, "é" * 500)) == ["é" * 500]

    def test_fragmented_message_cumulative_size_fails_with_1009(self, backend: Any) -> None:
        server = make(backend, SERVER, max_size=1000)
        for _ in range(3):
            assert server.receive_data(peer(server, OP_BINARY if _ == 0 else OP_CONT, bytes(300), fin=False)) == []
        # 900 bytes so far: a 200-byte fragment is refused from its header.
        assert_failed(server, server.receive_data(b"\x80\xfe" + struct.pack("!H", 200)), 1009)

    def test_fragmented_message_of_exactly_max_size_is_accepted(self, backend: Any) -> None:
        server = make(backend, SERVER, max_size=1000)
        data = peer(server, OP_TEXT, "a" * 600, fin=False) + peer(server, OP_CONT, "b" * 400)
        assert server.receive_data(data) == ["a" * 600 + "b" * 400]
        # The limit is per message: the next one starts from zero.
        assert server.receive_data(peer(server, OP_BINARY, bytes(1000))) == [bytes(1000)]

    def test_control_frames_do_not_count_towards_the_message(self, backend: Any) -> None:
        server = make(backend, SERVER, max_size=10)
        data = peer(server, OP_BINARY, bytes(5), fin=False) + peer(server, OP_PING, bytes(100))
        data += peer(server, OP_CONT, bytes(5))
        events = server.receive_data(data)
        assert events[1:] == [bytes(10)]

    def test_no_limit(self, backend: Any) -> None:
        client = make(backend, CLIENT, max_size=None)
        assert client.receive_data(encode(OP_BINARY, bytes(3 * 2**20))) == [bytes(3 * 2**20)]


# -- §7.1.7 Fail the WebSocket connection, §7.1.1 / §7.1.4 closing TCP ---------------------------


class TestFail:
    """RFC 6455 §7.1.7, §7.1.1 (who closes TCP) and §7.1.5 (1006)."""

    def test_a_failure_leaves_the_applications_exception_alone(self, backend: Any) -> None:
        """Bad input fed while the application handles an exception of its own (recv() in an
        ``except`` block): the stored error drops that context; it neither keeps it nor
        strips its traceback (a regression of the fix below: audit 64)."""
        client, server = connected(backend, deflate=True)
        try:
            raise ValueError("the application's")
        except ValueError as app_error:
            server.receive_data(backend.build_frame(2, b"\xff" * 100, True, True, os.urandom(4)))
            chain, error = [], server.error
            while error is not None:
                chain.append(error)
                error = error.__cause__ or error.__context__
            assert chain and app_error not in chain
            assert app_error.__traceback__ is not None

    @pytest.mark.parametrize("bad", ["corrupt deflate", "deflate bomb", "invalid utf-8", "bad close code"])
    def test_a_connection_failed_for_bad_input_is_freed_without_the_cycle_collector(self, backend: Any, bad: str) -> None:
        """The ProtocolError kept as ``error`` holds no traceback: its frames would keep the
        protocol, the parser's buffers and the zlib stream alive in a reference cycle until a
        full collection (audit: 1-2 MB per failed connection)."""
        client, server = connected(backend, deflate=True, max_size=100_000)
        mask = os.urandom(4)
        if bad == "corrupt deflate":
            data = backend.build_frame(2, b"\xff" * 50_000, True, True, mask)
        elif bad == "deflate bomb":
            data = client.send(bytes(200_000))
        elif bad == "invalid utf-8":
            data = backend.build_frame(1, b"a" * 50_000 + b"\xff", True, False, mask)
        else:
            data = backend.build_frame(8, struct.pack("!H", 999), True, False, mask)
        gc.disable()
        try:
            events = server.receive_data(data)
            assert isinstance(events[-1], Closed) and server.error is not None
            error: BaseException | None = server.error
            while error is not None:
                assert error.__traceback__ is None
                error = error.__cause__ or error.__context__
            ref = weakref.ref(server)
            del server, events, error
            assert ref() is None
        finally:
            gc.enable()

    @pytest.mark.parametrize("side", [CLIENT, SERVER])
    def test_fail_sends_one_close_frame_and_closes(self, backend: Any, side: str) -> None:
        proto = make(backend, side)
        proto.fail(1011, "internal")
        (frame,) = sent(proto)
        assert frame.payload == close_payload(1011, "internal")
        assert proto.state is State.CLOSED and proto.close_transport
        proto.fail(1002)
        assert proto.data_to_send() == []
        with pytest.raises(ConnectionClosedError) as info:
            proto.send("x")
        assert info.value.code == 1006
        assert proto.send_close() == b""

    def test_fail_truncates_a_long_reason(self, backend: Any) -> None:
        server = make(backend, SERVER)
        server.fail(1011, "é" * 100)
        (frame,) = sent(server)
        assert len(frame.payload) <= 125
        frame.payload[2:].decode("utf-8")

    def test_fail_while_closing_sends_no_second_close_frame(self, backend: Any) -> None:
        client = make(backend, CLIENT)
        client.send_close()
        client.fail(1011)
        assert client.data_to_send() == []
        assert client.state is State.CLOSED and client.close_transport

    def test_protocol_error_while_closing_sends_no_second_close_frame(self, backend: Any) -> None:
        client = make(backend, CLIENT)
        client.send_close()
        (closed,) = client.receive_data(encode(OP_CONT, b"x"))
        assert closed.error.code == 1002
        assert client.data_to_send() == []
        assert client.state is State.CLOSED and client.close_transport

    def test_send_after_protocol_error_raises_connection_closed_error(self, backend: Any) -> None:
        server = make(backend, SERVER)
        server.receive_data(peer(server, 3))
        for call in (lambda: server.send(b"x"), lambda: server.send_ping(), lambda: server.send_fragment("x", True)):
            with pytest.raises(ConnectionClosedError):
                call()

    @pytest.mark.parametrize("side", [CLIENT, SERVER])
    def test_receive_eof_is_1006(self, backend: Any, side: str) -> None:
        proto = make(backend, side)
        (closed,) = proto.receive_eof()
        assert isinstance(closed, Closed) and closed.code == 1006 and closed.error is None
        assert proto.state is State.CLOSED and proto.close_transport
        assert proto.data_to_send() == []
        assert proto.receive_data(peer(proto, OP_TEXT, "x")) == []
        with pytest.raises(ConnectionClosedError) as info:
            proto.send("x")
        assert info.value.code == 1006

    def test_receive_eof_in_the_middle_of_a_message(self, backend: Any) -> None:
        server = make(backend, SERVER)
        server.receive_data(peer(server, OP_TEXT, "par", fin=False) + peer(server, OP_CONT, "tial")[:3])
        (closed,) = server.receive_eof()
        assert closed.code == 1006

    def test_receive_eof_after_closing_handshake(self, backend: Any) -> None:
        client = make(backend, CLIENT)
        client.receive_data(encode(OP_CLOSE, close_payload(1000)))
        assert not client.close_transport
        assert client.receive_eof() == []
        assert client.close_transport
        assert isinstance(client.closed_exception(), ConnectionClosedOK)

    def test_receive_eof_while_closing_is_an_error(self, backend: Any) -> None:
        client = make(backend, CLIENT)
        client.send_close()
        (closed,) = client.receive_eof()
        assert closed.code == 1006
        assert isinstance(client.closed_exception(), ConnectionClosedError)

    @pytest.mark.parametrize("side,expected", [(CLIENT, False), (SERVER, True)])
    def test_close_transport_after_a_normal_close(self, backend: Any, side: str, expected: bool) -> None:
        proto = make(backend, side)
        assert not proto.close_transport
        proto.receive_data(peer(proto, OP_CLOSE, close_payload(1000)))
        assert proto.close_transport is expected

    @pytest.mark.parametrize("side", [CLIENT, SERVER])
    def test_close_transport_after_a_failure(self, backend: Any, side: str) -> None:
        proto = make(backend, side)
        proto.receive_data(peer(proto, OP_TEXT, b"\xff"))
        assert proto.close_transport


# -- §5.6 / §5.4 Sending ----------------------------------------------------------------------


class TestSending:
    """What we send parses back on the other side (RFC 6455 §5.6, §5.4)."""

    def test_a_str_subclass_is_sent_as_its_text(self, backend: Any) -> None:
        """class Cmd(str, Enum): its value goes out, not str() of it ("Cmd.SUB"), as websockets."""
        import enum

        class Cmd(str, enum.Enum):
            SUB = "subscribe"

        client, server = connected(backend)
        assert server.receive_data(client.send(Cmd.SUB)) == ["subscribe"]
        assert client.receive_data(server.send(Cmd.SUB)) == ["subscribe"]
        frames = [client.send_fragment(Cmd.SUB, False), client.send_fragment(Cmd.SUB, True)]
        assert server.receive_data(b"".join(frames)) == ["subscribesubscribe"]

    @pytest.mark.parametrize(
        "message",
        ["", "héllo ✓", "x" * 70000, b"", b"\x00\xff", bytes(126), bytearray(b"ba"), memoryview(b"mv")],
        ids=["empty-str", "str", "long-str", "empty-bytes", "bytes", "126", "bytearray", "memoryview"],
    )
    def test_messages_round_trip_both_ways(self, backend: Any, message: Any) -> None:
        client, server = connected(backend)
        expected = bytes(message) if not isinstance(message, str) else message
        for sender, receiver in ((client, server), (server, client)):
            frame = sender.send(message)
            if isinstance(frame, tuple):  # large unmasked frame: (header, payload), written in order
                assert not sender.is_client and len(frame) == 2
                frame = b"".join(frame)
            (decoded,) = decode(frame)
            assert decoded.opcode == (OP_TEXT if isinstance(message, str) else OP_BINARY)
            assert decoded.fin and decoded.rsv == 0
            (received,) = receiver.receive_data(frame)
            assert received == expected and type(received) is type(expected)

    def test_send_refuses_other_types(self, backend: Any) -> None:
        client = make(backend, CLIENT)
        with pytest.raises(TypeError):
            client.send(42)
        with pytest.raises(TypeError):
            client.send_fragment(42, True)

    @pytest.mark.parametrize("parts", [["ab", "cd", "é"], [b"ab", b"", b"\xff"]], ids=["text", "binary"])
    def test_fragmented_message_round_trip(self, backend: Any, parts: list[Any]) -> None:
        client, server = connected(backend)
        frames = [client.send_fragment(p, i == len(parts) - 1) for i, p in enumerate(parts)]
        decoded = [decode(f)[0] for f in frames]
        first = OP_TEXT if isinstance(parts[0], str) else OP_BINARY
        assert [f.opcode for f in decoded] == [first, OP_CONT, OP_CONT]
        assert [f.fin for f in decoded] == [False, False, True]
        assert all(f.mask is not None for f in decoded)
        events = server.receive_data(b"".join(frames))
        assert events == ["".join(parts) if first == OP_TEXT else b"".join(parts)]

    def test_control_frames_may_interleave_a_fragmented_send(self, backend: Any) -> None:
        client, server = connected(backend)
        data = client.send_fragment("a", False) + client.send_ping(b"p") + client.send_fragment("b", True)
        events = server.receive_data(data)
        assert isinstance(events[0], Ping) and events[1] == "ab"

    def test_mixed_fragment_types_is_a_type_error(self, backend: Any) -> None:
        client = make(backend, CLIENT)
        client.send_fragment("a", False)
        with pytest.raises(TypeError):
            client.send_fragment(b"b", True)

    def test_send_while_a_fragmented_message_is_open_is_invalid_state(self, backend: Any) -> None:
        client = make(backend, CLIENT)
        client.send_fragment(b"a", False)
        with pytest.raises(InvalidState):
            client.send(b"b")
        client.send_fragment(b"b", True)
        client.send(b"c")

    def test_send_after_close_raises_connection_closed(self, backend: Any) -> None:
        client = make(backend, CLIENT)
        client.send_close()
        with pytest.raises(ConnectionClosed):
            client.send("x")
        with pytest.raises(ConnectionClosed):
            client.send_fragment("x", True)

    def test_send_on_closed_connection_with_an_open_fragmented_send(self, backend: Any) -> None:
        # SPEC: sending on a closed connection raises ConnectionClosed, whatever was going on.
        client = make(backend, CLIENT)
        client.send_fragment("a", False)
        client.receive_data(encode(OP_CLOSE, close_payload(1001)))
        with pytest.raises(ConnectionClosedOK):
            client.send("x")
        with pytest.raises(ConnectionClosedOK):
            client.send_fragment("b", True)

    def test_sending_does_not_queue_anything(self, backend: Any) -> None:
        client = make(backend, CLIENT)
        client.send("x")
        client.send_ping()
        assert client.data_to_send() == []


# -- RFC 7692 permessage-deflate --------------------------------------------------------------


class TestPerMessageDeflate:
    """RFC 7692 §6 (RSV1), §7.2 (compression) and the max_size rules of SPEC.md."""

    @pytest.mark.parametrize("message", ["hello " * 100, b"\x00\x01" * 500, "", b"", "é"])
    def test_compressed_messages_round_trip_both_ways(self, backend: Any, message: Any) -> None:
        client, server = connected(backend, deflate=True)
        for sender, receiver in ((client, server), (server, client)):
            for _ in range(3):  # context takeover across messages
                frame = sender.send(message)
                (decoded,) = decode(frame)
                assert decoded.rsv == 4  # RSV1: compressed
                assert (decoded.mask is not None) == sender.is_client
                assert receiver.receive_data(frame) == [message]
                assert type(message) is str or len(message) < 100 or len(decoded.payload) < len(message)

    @pytest.mark.parametrize("bits", [9, 12, 15])
    def test_incompressible_message_of_a_window_or_more_goes_uncompressed(self, backend: Any, bits: int) -> None:
        """RFC 7692 §6: any message may go uncompressed. One that deflate does not shrink, as
        long as the window or longer, does (the compressor then starts afresh: the peer has
        not inflated it, so no later reference may point into it); so does one whose first
        1 KiB does not shrink (the rest is then not deflated at all); shorter ones, and
        compressible ones, are compressed; the receiver, keeping its context, inflates all."""
        client_ext, server_ext = deflate_pair(server_max_window_bits=bits)
        assert server_ext.local_max_window_bits == bits
        client = make(backend, CLIENT, extensions=[client_ext])
        server = make(backend, SERVER, extensions=[server_ext], max_size=None)
        window = 1 << bits
        text = "spam and eggs " * (window // 8)
        random = os.urandom(window)
        for message, compressed in [
            (text, True), (random, False), (text, True), (random[: window - 1], True),
            (random.hex(), True), (text.encode() + random, True), (os.urandom(3 * window), False), (text, True),
            # Judged by its first 1 KiB (the probe): incompressible, though the whole is not.
            (os.urandom(max(1024, window)) + text.encode() * 4, False),
            # The probe shrinks (300 bytes alike), the whole does not: uncompressed too.
            (b"a" * 300 + os.urandom(2**19), False), (text, True),
        ]:
            frame = server.send(message)
            (decoded,) = decode(frame)
            assert decoded.rsv == (4 if compressed else 0), (len(message), compressed)
            if not compressed:
                assert decoded.payload == (message if type(message) is bytes else message.encode())
            assert client.receive_data(frame) == [message]

    def test_compressible_typed_array_view_is_compressed(self, backend: Any) -> None:
        """A memoryview of doubles: its len() counts items, an eighth of its bytes, so it
        seemed incompressible and went uncompressed (audit 91)."""
        client, server = connected(backend, deflate=True)
        rng = random.Random(0)
        values = array.array("d", [float(rng.randrange(100)) for _ in range(4096)])  # 32 KiB
        frame = server.send(memoryview(values))
        (decoded,) = decode(frame)
        assert decoded.rsv == 4 and len(values) < len(decoded.payload) < len(values) * 8 // 2
        assert client.receive_data(frame) == [values.tobytes()]

    def test_incompressible_typed_array_view_goes_uncompressed(self, backend: Any) -> None:
        """The 1 KiB probe of a typed array is its first 1 KiB of bytes, not 1,024 items."""
        client, server = connected(backend, deflate=True)
        values = array.array("q", os.urandom(8 * 2048))  # 16 KiB of random 64-bit integers
        frame = server.send(memoryview(values))
        (decoded,) = decode(frame)
        assert decoded.rsv == 0 and decoded.payload == values.tobytes()
        assert client.receive_data(frame) == [values.tobytes()]
        assert client.receive_data(server.send("after it " * 100)) == ["after it " * 100]

    @pytest.mark.parametrize(
        "bad",
        [None, (OP_BINARY, b"\xff\xff\xff\xff", 1002), (OP_TEXT, b"not utf-8 \xff", 1007), (OP_BINARY, b"z" * 5000, 1009)],
        ids=["valid", "bad-deflate", "bad-utf8", "too-big"],
    )
    def test_receive_compressed_is_receive_frames(self, backend: Any, bad: Any) -> None:
        """``receive_compressed`` (the I/O layers' path for a whole compressed frame read
        alone) gives what ``receive_frames`` gives, events and close frame alike, and leaves
        the protocol in the same state, sharing the decompression context."""
        client_ext, _ = deflate_pair()
        messages: list[Any] = ["tick ✓ " * 9, b"\x00" * 300, "", "tick ✓ " * 9, b"", b"\x07" * 3000]
        payloads = [(OP_TEXT if isinstance(m, str) else OP_BINARY,
                     client_ext.compress(m.encode() if isinstance(m, str) else m)) for m in messages]
        if bad is not None:
            opcode, data, _ = bad
            payloads.insert(3, (opcode, client_ext.compress(data) if data != b"\xff\xff\xff\xff" else data))
        outcomes = []
        for fast in (False, True):
            _, server_ext = deflate_pair()
            server = make(backend, SERVER, extensions=[server_ext], max_size=4096)
            events: list[Any] = []
            for opcode, payload in payloads:
                if server.state is not State.OPEN:
                    break
                if fast:
                    assert server.can_take_compressed()
                    got = server.receive_compressed(opcode, payload)
                    events += got if type(got) is list else [got]
                else:
                    events += server.receive_frames([(opcode, True, True, payload)])
            outcomes.append(([repr(e) for e in events], server.data_to_send(), server.state, server.close_sent, repr(server.error)))
        assert outcomes[0] == outcomes[1]
        if bad is None:
            assert outcomes[0][0] == [repr(m) for m in messages]
        else:
            assert outcomes[0][0][3:] == ["Closed(1006, '')"] and outcomes[0][3][0] == bad[2]

    def test_can_take_compressed_only_between_messages(self, backend: Any) -> None:
        """Not with a fragmented message in progress, frames in the backlog, or once closing."""
        client_ext, server_ext = deflate_pair()
        server = make(backend, SERVER, extensions=[server_ext])
        assert server.can_take_compressed()
        assert server.receive_frames([(OP_TEXT, False, True, client_ext.compress(b"first half", False))]) == []
        assert not server.can_take_compressed()  # a fragmented message is in progress
        assert server.receive_frames([(0, True, False, client_ext.compress(b" and the rest", True))]) == ["first half and the rest"]
        assert server.can_take_compressed()
        server.backlog = [(OP_BINARY, True, False, b"waiting")]
        assert not server.can_take_compressed()
        server.backlog = None
        server.send_close(1000)
        assert not server.can_take_compressed()
        assert not make(backend, SERVER).can_take_compressed()  # no deflate negotiated

    def test_fragmented_compressed_messages(self, backend: Any) -> None:
        client, server = connected(backend, deflate=True)
        for sender, receiver in ((client, server), (server, client)):
            parts = ["spam " * 50, "", "eggs é " * 50]
            frames = [sender.send_fragment(p, i == 2) for i, p in enumerate(parts)]
            decoded = [decode(f)[0] for f in frames]
            assert [f.rsv for f in decoded] == [4, 0, 0]  # RSV1 on the first frame only (§6.1)
            assert [f.opcode for f in decoded] == [OP_TEXT, OP_CONT, OP_CONT]
            events: list[Any] = []
            for f in frames:
                events += receiver.receive_data(f)
            assert events == ["".join(parts)]
            # And a binary one right after, sharing the compression context.
            frames = [sender.send_fragment(b"ab" * 100, False), sender.send_fragment(b"cd" * 100, True)]
            assert receiver.receive_data(b"".join(frames)) == [b"ab" * 100 + b"cd" * 100]

    def test_compressed_message_fragmented_by_the_peer(self, backend: Any) -> None:
        client_ext, server_ext = deflate_pair()
        server = make(backend, SERVER, extensions=[server_ext])
        payload = client_ext.compress("fragmented by a proxy ✓".encode() * 20)
        cut = len(payload) // 3
        data = peer(server, OP_TEXT, payload[:cut], rsv=4, fin=False) + peer(server, OP_CONT, payload[cut:2 * cut], fin=False)
        data += peer(server, OP_PING, b"!") + peer(server, OP_CONT, payload[2 * cut :])
        events = server.receive_data(data)
        assert isinstance(events[0], Ping)
        assert events[1:] == ["fragmented by a proxy ✓" * 20]

    def test_uncompressed_message_on_a_deflate_connection(self, backend: Any) -> None:
        client, server = connected(backend, deflate=True)
        assert server.receive_data(peer(server, OP_TEXT, "plain")) == ["plain"]
        assert server.receive_data(client.send("packed")) == ["packed"]

    def test_rsv1_on_a_continuation_frame_fails_with_1002(self, backend: Any) -> None:
        client_ext, server_ext = deflate_pair()
        server = make(backend, SERVER, extensions=[server_ext])
        payload = client_ext.compress(b"abcdef")
        data = peer(server, OP_BINARY, payload[:2], rsv=4, fin=False) + peer(server, OP_CONT, payload[2:], rsv=4)
        assert_failed(server, server.receive_data(data), 1002)

    def test_rsv1_on_a_continuation_of_an_uncompressed_message_fails_with_1002(self, backend: Any) -> None:
        client, server = connected(backend, deflate=True)
        data = peer(client, OP_TEXT, "a", fin=False) + peer(client, OP_CONT, "b", rsv=4)
        assert_failed(client, client.receive_data(data), 1002)

    @pytest.mark.parametrize("side", [CLIENT, SERVER])
    def test_rsv1_without_deflate_fails_with_1002(self, backend: Any, side: str) -> None:
        proto = make(backend, side)
        payload = zlib.compressobj(wbits=-15).compress(b"x")
        assert_failed(proto, proto.receive_data(peer(proto, OP_TEXT, payload, rsv=4)), 1002)

    @pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
    def test_rsv1_on_a_control_frame_fails_with_1002(self, backend: Any, opcode: int) -> None:
        client, server = connected(backend, deflate=True)
        assert_failed(server, server.receive_data(peer(server, opcode, b"", rsv=4)), 1002)

    @pytest.mark.parametrize("side", [CLIENT, SERVER])
    @pytest.mark.parametrize("continuation", [False, True])
    def test_invalid_utf8_in_a_compressed_frame_fails_1007_before_the_frame_is_complete(
        self, backend: Any, side: str, continuation: bool
    ) -> None:
        """SPEC "Bad input": 1007 as soon as the bytes received so far cannot be valid, even
        mid-message: a compressed text frame's first bytes are inflated as they arrive (the
        frame, 90 KiB of incompressible text, is never completed here)."""
        client_ext, server_ext = deflate_pair()
        receiver = make(backend, side, extensions=[server_ext if side == SERVER else client_ext])
        sender_ext = client_ext if side == SERVER else server_ext
        text = b"\xff\xfe" + os.urandom(60_000).hex().encode()[:90_000]
        payload = sender_ext.compress(text, True)
        if continuation:
            head = sender_ext.compress(b"a valid start ", False)
            data = peer(receiver, OP_TEXT, head, rsv=4, fin=False) + peer(receiver, OP_CONT, payload)
        else:
            data = peer(receiver, OP_TEXT, payload, rsv=4)
        assert len(data) > 40_000
        events: list[Any] = []
        for i in range(0, 40_000, 1000):  # the first 40 KB of the frames, in pieces
            events += receiver.receive_data(data[i : i + 1000])
            if events:
                break
        assert_failed(receiver, events, 1007)
        assert receiver.error is not None and receiver.error.reason == "invalid UTF-8 in text message"

    @pytest.mark.parametrize("fragmented", [False, True])
    @pytest.mark.parametrize("piece", [1, 7, 1000, 70_000])
    def test_compressed_text_arriving_in_pieces_is_delivered_intact(
        self, backend: Any, fragmented: bool, piece: int
    ) -> None:
        """The early inflation of compressed text (for the 1007 above) changes nothing about
        what is delivered: messages cut anywhere, with pings in between, come out whole."""
        client, server = connected(backend, deflate=True)
        messages: list[Any] = ["é" * 3000 + os.urandom(20_000).hex(), "short ✓", b"\x00bin" * 500, ""]
        data = b""
        for message in messages:
            if fragmented and message and isinstance(message, str):
                third = len(message) // 3
                parts = [message[:third], message[third : 2 * third], message[2 * third :]]
                data += b"".join(client.send_fragment(p, i == 2) for i, p in enumerate(parts))
            else:
                data += client.send(message)
            data += client.send_ping(os.urandom(4))
        events: list[Any] = []
        for i in range(0, len(data), piece):
            events += server.receive_data(data[i : i + piece])
        assert [e for e in events if not isinstance(e, Ping)] == messages
        assert server.state is State.OPEN

    def test_batch_room_bounds_the_messages_of_a_call_and_pings_do_not_wait(self, backend: Any) -> None:
        """An I/O layer's batch_room (asyncio: the queue's room) bounds the messages one call
        inflates; the rest waits compressed in backlog, in order; pings and pongs are handled
        at once, the close frame in its turn; an EOF delivers what the room allows."""
        client, server = connected(backend, deflate=True)
        room = [4]
        server.batch_room = lambda: room[0]
        messages = [b"%d" % i + bytes(10_000) for i in range(20)]
        data = b"".join(client.send(m) for m in messages)
        data += client.send_ping(b"keepalive") + client.send_close(1000)
        events = server.receive_data(data)
        assert events[:4] == messages[:4] and isinstance(events[4], Ping) and len(events) == 5
        assert [f.opcode for f in sent(server)] == [OP_PONG]  # answered now
        assert server.backlog is not None and server.state is State.OPEN
        got = list(events[:4])
        while server.backlog is not None:
            got += [e for e in server.receive_frames([]) if not isinstance(e, (Ping, Closed))]
        assert got == messages and server.state is State.CLOSED  # the close frame came last
        # An EOF with a backlog: what the room allows, then 1006; the rest is dropped.
        client, server = connected(backend, deflate=True)
        server.batch_room = lambda: 4
        events = server.receive_data(b"".join(client.send(m) for m in messages))
        assert events == messages[:4] and server.backlog is not None
        events = server.receive_eof()
        assert events[:4] == messages[4:8] and isinstance(events[4], Closed) and events[4].code == 1006
        assert server.backlog is None

    def test_batch_bytes_bounds_what_one_call_inflates(self, backend: Any) -> None:
        """batch_bytes (asyncio: a read callback's inflating budget) bounds the bytes of the
        messages one call produces, at least one message; the rest waits in backlog, in
        order, pings answered at once; an EOF then processes all the room allows."""
        client, server = connected(backend, deflate=True)
        server.batch_room = lambda: 16
        server.batch_bytes = 250_000
        messages = [b"%d" % i + bytes(100_000) for i in range(12)] + [bytes(600_000), b"x"]
        data = b"".join(client.send(m) for m in messages) + client.send_ping(b"ka")
        events = server.receive_data(data)
        assert events[:3] == messages[:3] and isinstance(events[3], Ping) and len(events) == 4
        assert [f.opcode for f in sent(server)] == [OP_PONG]
        got, calls = list(events[:3]), 1
        while server.backlog is not None:
            step = server.receive_frames([])
            assert 0 < sum(len(e) for e in step) < 250_000 + 600_000
            got += step
            calls += 1
        assert got == messages and calls == 6  # 3 + 3 + 3 + 3, then 600 KB alone, then b"x"
        client, server = connected(backend, deflate=True)
        server.batch_room = lambda: 16
        server.batch_bytes = 1
        events = server.receive_data(b"".join(client.send(m) for m in messages[:5]))
        assert events == messages[:1] and server.backlog is not None
        events = server.receive_eof()
        assert events[:4] == messages[1:5] and isinstance(events[4], Closed) and events[4].code == 1006
        assert server.batch_bytes == 1

    def test_zip_bomb_in_one_text_frame_fails_with_1009_before_the_frame_is_complete(self, backend: Any) -> None:
        client_ext, server_ext = deflate_pair()
        server = make(backend, SERVER, max_size=10_000, extensions=[server_ext])
        payload = client_ext.compress(b" " * 5_000_000 + os.urandom(30_000))
        data = peer(server, OP_TEXT, payload, rsv=4)
        events = server.receive_data(data[: len(data) // 2])
        assert_failed(server, events, 1009)

    @pytest.mark.parametrize("fragmented", [False, True])
    def test_zip_bomb_fails_with_1009(self, backend: Any, fragmented: bool) -> None:
        client_ext, server_ext = deflate_pair()
        server = make(backend, SERVER, max_size=10_000, extensions=[server_ext])
        payload = client_ext.compress(bytes(10_000_000))
        assert len(payload) < 20_000
        if fragmented:
            data = peer(server, OP_BINARY, payload[:10], rsv=4, fin=False) + peer(server, OP_CONT, payload[10:])
        else:
            data = peer(server, OP_BINARY, payload, rsv=4)
        assert_failed(server, server.receive_data(data), 1009)

    def test_message_one_byte_over_max_size_fails_with_1009(self, backend: Any) -> None:
        client_ext, server_ext = deflate_pair()
        server = make(backend, SERVER, max_size=1000, extensions=[server_ext])
        data = peer(server, OP_TEXT, client_ext.compress(b"a" * 1001), rsv=4)
        assert_failed(server, server.receive_data(data), 1009)

    @pytest.mark.parametrize("level", [0, 1, 9])
    def test_message_of_exactly_max_size_is_accepted_whatever_its_compressed_length(
        self, backend: Any, level: int
    ) -> None:
        # (kn_sock's own send() would send it uncompressed: compress_message; other peers don't)
        client_factory = ClientDeflateFactory(compress_settings={"level": level})
        response, server_ext = ServerDeflateFactory().accept_offer(client_factory.offer())  # type: ignore[misc]
        client_ext = client_factory.accept_response(response)
        server = make(backend, SERVER, max_size=4096, extensions=[server_ext])
        message = os.urandom(4096)
        payload = client_ext.compress(message)
        assert len(payload) > 4096  # incompressible: longer than max_size
        assert server.receive_data(peer(server, OP_BINARY, payload, rsv=4)) == [message]
        # Still so when a proxy split it into tiny fragments.
        payload = client_ext.compress(os.urandom(4096))
        data = peer(server, OP_BINARY, payload[:1], rsv=4, fin=False)
        data += b"".join(peer(server, OP_CONT, payload[i : i + 7], fin=False) for i in range(1, len(payload), 7))
        data += peer(server, OP_CONT, b"")
        (received,) = server.receive_data(data)
        assert len(received) == 4096

    def test_message_of_exactly_max_size_in_small_compressed_fragments(self, backend: Any) -> None:
        client, server = connected(backend, deflate=True, max_size=4096)
        message = os.urandom(4096)
        chunks = [message[i : i + 16] for i in range(0, 4096, 16)]
        data = b"".join(client.send_fragment(c, i == len(chunks) - 1) for i, c in enumerate(chunks))
        assert server.receive_data(data) == [message]

    def test_compressed_bytes_beyond_the_worst_case_fail_with_1009_from_the_header(self, backend: Any) -> None:
        client_ext, server_ext = deflate_pair()
        server = make(backend, SERVER, max_size=4096, extensions=[server_ext])
        header = b"\xc2\xff" + struct.pack("!Q", 2**32)
        assert_failed(server, server.receive_data(header), 1009)

    def test_invalid_compressed_data_fails_with_1002(self, backend: Any) -> None:
        # A protocol (extension) error, not "data inconsistent with the message type": RFC 7692
        # names no code; websockets sends 1002 too. Text or binary alike.
        for opcode in (OP_BINARY, OP_TEXT):
            client, server = connected(backend, deflate=True)
            assert_failed(server, server.receive_data(peer(server, opcode, b"\xff\xff\xff\xff", rsv=4)), 1002)

    def test_invalid_utf8_in_a_compressed_text_message_fails_with_1007(self, backend: Any) -> None:
        client_ext, server_ext = deflate_pair()
        server = make(backend, SERVER, extensions=[server_ext])
        assert_failed(server, server.receive_data(peer(server, OP_TEXT, client_ext.compress(b"ok\xff"), rsv=4)), 1007)

    def test_invalid_utf8_in_a_fragmented_compressed_text_message_fails_fast(self, backend: Any) -> None:
        client_ext, server_ext = deflate_pair()
        server = make(backend, SERVER, extensions=[server_ext])
        first = peer(server, OP_TEXT, client_ext.compress(b"valid", fin=False), rsv=4, fin=False)
        assert server.receive_data(first) == []
        second = peer(server, OP_CONT, client_ext.compress(b"\xed\xa0\x80", fin=False), fin=False)
        assert_failed(server, server.receive_data(second), 1007)

    def test_per_message_opt_out(self, backend: Any) -> None:
        client, server = connected(backend, deflate=True)
        for sender, receiver in ((client, server), (server, client)):
            frame = sender.send("not compressed " * 10, compress=False)
            (decoded,) = decode(frame)
            assert decoded.rsv == 0 and decoded.payload == b"not compressed " * 10
            assert receiver.receive_data(frame) == ["not compressed " * 10]
            frames = [sender.send_fragment(b"a", False, compress=False), sender.send_fragment(b"b", True)]
            assert [decode(f)[0].rsv for f in frames] == [0, 0]
            assert receiver.receive_data(b"".join(frames)) == [b"ab"]
            # Compression resumes with the next message.
            assert decode(sender.send("again"))[0].rsv == 4

    def test_max_size_none_with_deflate(self, backend: Any) -> None:
        client_ext, server_ext = deflate_pair()
        client = make(backend, CLIENT, extensions=[client_ext])
        server = make(backend, SERVER, max_size=None, extensions=[server_ext])
        assert server.receive_data(client.send(bytes(3 * 2**20))) == [bytes(3 * 2**20)]


# -- Keepalive --------------------------------------------------------------------------------


class TestKeepalive:
    """Keepalive bookkeeping, driven through a client/server pair exchanging real ping/pong frames."""

    def test_ping_due_after_interval_and_pong_resets(self, backend: Any) -> None:
        client, server = connected(backend)
        ka = Keepalive(10.0, 5.0, now=100.0)
        assert ka.deadline == 110.0
        assert ka.poll(109.9) is None
        assert ka.poll(110.0) == "ping"
        server.receive_data(client.send_ping(b"ka", tag="keepalive"))
        ka.ping_sent(110.0)
        assert ka.deadline == 115.0
        assert ka.poll(112.0) is None
        (pong,) = client.receive_data(b"".join(server.data_to_send()))
        assert pong.acked == [(b"ka", "keepalive")]
        ka.pong_received(112.0)
        assert ka.deadline == 120.0  # interval after the previous ping was sent
        assert ka.poll(119.0) is None
        assert ka.poll(120.0) == "ping"

    def test_reading_resumed_counts_the_timeout_from_then(self, backend: Any) -> None:
        # The pong may be behind what our own backpressure left unread (audit: 1011 right
        # after the application resumed reading).
        ka = Keepalive(10.0, 5.0, now=0.0)
        ka.ping_sent(10.0)
        ka.reading_resumed(14.0)
        assert ka.poll(15.0) is None and ka.deadline == 19.0
        assert ka.poll(19.0) == "timeout"
        ka.reading_resumed(12.0)  # never earlier than the ping
        assert ka.deadline == 19.0

    def test_a_peer_that_never_answers_is_not_kept_alive_by_pauses(self, backend: Any) -> None:
        # Reading pausing and resuming all the time: one extension per ping, and a timeout
        # found while paused waits on without starting over (regression audit: for ever).
        ka = Keepalive(10.0, 5.0, now=0.0)
        ka.ping_sent(10.0)
        ka.reading_resumed(12.0)
        ka.reading_resumed(16.0)  # a second resume: no second extension
        assert ka.deadline == 17.0 and ka.poll(17.0) == "timeout"
        ka.deferred(17.0)  # (found while paused)
        assert ka.deadline == 22.0 and ka.poll(21.0) is None
        assert ka.poll(22.0) == "timeout"  # the same ping: found while reading, it is the end

    def test_a_deferred_timeout_waits_a_little_even_with_ping_timeout_zero(self, backend: Any) -> None:
        ka = Keepalive(1.0, 0.0, now=0.0)
        ka.ping_sent(1.0)
        assert ka.poll(1.0) == "timeout"
        ka.deferred(1.0)  # paused: no check loop at the same instant (regression audit)
        assert ka.deadline == pytest.approx(1.05) and ka.poll(1.01) is None

    def test_late_pong_schedules_from_now(self, backend: Any) -> None:
        ka = Keepalive(10.0, 50.0, now=0.0)
        ka.ping_sent(10.0)
        ka.pong_received(30.0)
        assert ka.deadline == 30.0 and ka.poll(30.0) == "ping"

    def test_timeout_after_ping_timeout(self, backend: Any) -> None:
        client, server = connected(backend)
        ka = Keepalive(10.0, 5.0, now=0.0)
        assert ka.poll(10.0) == "ping"
        client.send_ping(b"lost")  # the server never answers
        ka.ping_sent(10.0)
        assert ka.poll(14.99) is None
        assert ka.poll(15.0) == "timeout"
        client.fail(1011, "keepalive ping timeout")
        (frame,) = sent(client)
        assert frame.payload[:2] == struct.pack("!H", 1011)

    def test_without_timeout_pings_go_on_every_interval_answered_or_not(self, backend: Any) -> None:
        # ping_timeout=None only disables the timeout (as in websockets): an unanswered ping
        # is given up an interval after it went out and the next one is due (NAT keepalive).
        ka = Keepalive(1.0, None, now=0.0)
        ka.ping_sent(1.0)
        assert ka.deadline == 2.0
        assert ka.poll(1.99) is None
        assert ka.poll(2.0) == "ping"
        ka.ping_sent(2.0)
        ka.pong_received(2.5)
        assert ka.deadline == 3.0 and ka.poll(3.0) == "ping"

    def test_new_payload_is_fresh_and_drops_the_unanswered_one(self, backend: Any) -> None:
        client, _ = connected(backend)
        ka = Keepalive(1.0, None, now=0.0)
        first = ka.new_payload(client.pings)
        client.send_ping(first, tag=None)
        second = ka.new_payload(client.pings)
        assert second != first and first not in client.pings
        client.send_ping(b"user", tag="user")
        ka.new_payload(client.pings)
        assert client.pings.get(b"user") == "user"

    @pytest.mark.parametrize("interval", [None, 0])
    def test_disabled_with_none(self, backend: Any, interval: Any) -> None:
        ka = Keepalive(interval, 20.0, now=0.0)
        assert ka.deadline is None
        assert ka.poll(1e12) is None


class TestSection7_1_2_DataWhileClosing:
    """RFC 6455 §7.1.2: after sending a Close frame, data the peer sent before it still arrives."""

    def test_message_received_in_closing_state_is_delivered(self, backend: Any) -> None:
        client, server = connected(backend)
        in_flight = server.send("echo of something")
        client.send_close(1000)
        assert client.state is State.CLOSING
        assert client.receive_data(in_flight) == ["echo of something"]
