"""Tests for kn_sock.extensions.permessage_deflate, named after RFC 7692 sections."""

from __future__ import annotations

import os
import time
import tracemalloc
import zlib
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kn_sock.exceptions import InvalidHandshake, InvalidHeader, PayloadTooBig, ProtocolError
from kn_sock.extensions.permessage_deflate import (
    WORST_CASE_OVERHEAD,
    ClientDeflateFactory,
    PerMessageDeflate,
    ServerDeflateFactory,
)

try:
    from websockets.extensions import permessage_deflate as ws_pmd
    from websockets.frames import Frame, Opcode
except ImportError:  # pragma: no cover - websockets is only a test peer
    ws_pmd = None  # type: ignore[assignment]

needs_websockets = pytest.mark.skipif(ws_pmd is None, reason="websockets not installed")

HELLO = bytes.fromhex("f248cdc9c90700")


def pair(**kwargs: object) -> tuple[PerMessageDeflate, PerMessageDeflate]:
    """A negotiated (client, server) pair: the server factory answers the client's offer."""
    client_kwargs = {k[7:]: v for k, v in kwargs.items() if k.startswith("client_")}
    server_kwargs = {k[7:]: v for k, v in kwargs.items() if k.startswith("server_")}
    client_factory = ClientDeflateFactory(**client_kwargs)  # type: ignore[arg-type]
    server_factory = ServerDeflateFactory(**server_kwargs)  # type: ignore[arg-type]
    answer = server_factory.accept_offer(client_factory.offer())
    assert answer is not None
    response, server = answer
    return client_factory.accept_response(response), server


def inflate_strictly(compressed: bytes, bits: int) -> bytes:
    """Inflate with a ``bits`` window, one input byte per call.

    Within one call zlib resolves distances against everything it has output in that call,
    however far back; one byte at a time, a distance beyond the window fails.
    """
    decompressor = zlib.decompressobj(wbits=-bits)  # zlib's inflate accepts 8 bits
    data = compressed + b"\x00\x00\xff\xff"
    return b"".join(decompressor.decompress(data[i : i + 1]) for i in range(len(data)))


def accept(
    factory: ServerDeflateFactory, offer: Sequence[tuple[str, str | None]]
) -> tuple[list[tuple[str, str | None]], PerMessageDeflate]:
    answer = factory.accept_offer(offer)
    assert answer is not None, "offer declined"
    return answer


def send(sender: PerMessageDeflate, receiver: PerMessageDeflate, message: bytes, max_size: int | None = None) -> bytes:
    return receiver.decompress(sender.compress(message), True, max_size)


# -- §7.1 Extension negotiation: the client's offer ------------------------------------------


class TestClientOffer:
    def test_default_offer_lets_the_server_limit_our_window(self) -> None:
        assert ClientDeflateFactory().offer() == [("client_max_window_bits", None)]

    def test_offer_with_every_parameter(self) -> None:
        factory = ClientDeflateFactory(
            server_no_context_takeover=True,
            client_no_context_takeover=True,
            server_max_window_bits=10,
            client_max_window_bits=11,
        )
        assert factory.offer() == [
            ("server_no_context_takeover", None),
            ("client_no_context_takeover", None),
            ("server_max_window_bits", "10"),
            ("client_max_window_bits", "11"),
        ]

    def test_offer_without_client_max_window_bits(self) -> None:
        assert ClientDeflateFactory(client_max_window_bits=None).offer() == []
        assert ClientDeflateFactory(client_max_window_bits=False).offer() == []

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"server_max_window_bits": 7},
            {"server_max_window_bits": 16},
            {"client_max_window_bits": 7},
            {"client_max_window_bits": "12"},
            {"compress_settings": {"wbits": 10}},
        ],
    )
    def test_invalid_configuration_is_a_value_error(self, kwargs: dict) -> None:
        with pytest.raises(ValueError):
            ClientDeflateFactory(**kwargs)


# -- §7.1 Extension negotiation: the client checks the server's response ----------------------


class TestClientAcceptResponse:
    def test_empty_response_means_15_bit_windows_with_context_takeover(self) -> None:
        ext = ClientDeflateFactory(client_max_window_bits=None).accept_response([])
        assert ext.name == "permessage-deflate"
        assert not ext.is_server
        assert (ext.local_max_window_bits, ext.remote_max_window_bits) == (15, 15)
        assert not ext.local_no_context_takeover and not ext.remote_no_context_takeover

    def test_without_a_limit_from_the_server_the_default_client_compresses_with_12_bits(self) -> None:
        """A limit is an upper bound (§7.1.2.2): offered without a value and not limited (an
        aiohttp server), the client keeps its documented 12-bit window (audit: 15, ~140 KiB)."""
        ext = ClientDeflateFactory().accept_response([])
        assert (ext.local_max_window_bits, ext.remote_max_window_bits) == (12, 15)
        message = os.urandom(2000) * 20
        server = ServerDeflateFactory().accept_offer([])
        assert server is not None
        frame = ext.compress(message, True)
        assert server[1].decompress(frame, True, None) == message

    def test_server_limits_both_windows(self) -> None:
        ext = ClientDeflateFactory().accept_response(
            [("server_max_window_bits", "12"), ("client_max_window_bits", "10")]
        )
        assert (ext.local_max_window_bits, ext.remote_max_window_bits) == (10, 12)

    def test_7_1_1_1_server_no_context_takeover_accepted(self) -> None:
        factory = ClientDeflateFactory(server_no_context_takeover=True)
        ext = factory.accept_response([("server_no_context_takeover", None)])
        assert ext.remote_no_context_takeover and not ext.local_no_context_takeover

    def test_7_1_1_1_server_no_context_takeover_requested_but_missing(self) -> None:
        with pytest.raises(InvalidHandshake) as info:
            ClientDeflateFactory(server_no_context_takeover=True).accept_response([])
        assert info.value.status == 400

    def test_7_1_1_1_server_announces_no_context_takeover_unasked(self) -> None:
        ext = ClientDeflateFactory().accept_response([("server_no_context_takeover", None)])
        assert ext.remote_no_context_takeover

    def test_7_1_1_2_server_asks_client_no_context_takeover(self) -> None:
        ext = ClientDeflateFactory().accept_response([("client_no_context_takeover", None)])
        assert ext.local_no_context_takeover and not ext.remote_no_context_takeover

    def test_7_1_1_2_client_no_context_takeover_offered(self) -> None:
        ext = ClientDeflateFactory(client_no_context_takeover=True).accept_response([])
        assert ext.local_no_context_takeover

    def test_7_1_2_1_server_max_window_bits_requested_and_honoured(self) -> None:
        factory = ClientDeflateFactory(server_max_window_bits=10)
        assert factory.accept_response([("server_max_window_bits", "9")]).remote_max_window_bits == 9

    def test_7_1_2_1_server_max_window_bits_requested_but_missing(self) -> None:
        with pytest.raises(InvalidHandshake):
            ClientDeflateFactory(server_max_window_bits=10).accept_response([])

    def test_7_1_2_1_server_max_window_bits_larger_than_requested(self) -> None:
        with pytest.raises(InvalidHandshake):
            ClientDeflateFactory(server_max_window_bits=10).accept_response([("server_max_window_bits", "11")])

    def test_7_1_2_2_client_max_window_bits_not_offered(self) -> None:
        with pytest.raises(InvalidHandshake):
            ClientDeflateFactory(client_max_window_bits=None).accept_response([("client_max_window_bits", "10")])

    def test_7_1_2_2_client_max_window_bits_needs_a_value(self) -> None:
        with pytest.raises(InvalidHeader):
            ClientDeflateFactory().accept_response([("client_max_window_bits", None)])

    def test_7_1_2_2_client_max_window_bits_larger_than_offered(self) -> None:
        with pytest.raises(InvalidHandshake):
            ClientDeflateFactory(client_max_window_bits=10).accept_response([("client_max_window_bits", "11")])

    def test_7_1_2_2_offered_client_max_window_bits_value_is_our_limit(self) -> None:
        assert ClientDeflateFactory(client_max_window_bits=11).accept_response([]).local_max_window_bits == 11

    @pytest.mark.parametrize(
        "params",
        [
            [("foo", None)],
            [("server_no_context_takeover", None), ("server_no_context_takeover", None)],
            [("server_max_window_bits", "12"), ("server_max_window_bits", "12")],
            [("server_no_context_takeover", "1")],
            [("client_no_context_takeover", "")],
            [("server_max_window_bits", None)],
            [("server_max_window_bits", "7")],
            [("server_max_window_bits", "16")],
            [("server_max_window_bits", "08")],
            [("server_max_window_bits", "+9")],
            [("server_max_window_bits", "ten")],
            [("client_max_window_bits", "16")],
        ],
    )
    def test_7_invalid_unknown_or_duplicate_parameter(self, params: list) -> None:
        with pytest.raises(InvalidHeader) as info:
            ClientDeflateFactory().accept_response(params)
        assert info.value.status == 400

    @pytest.mark.parametrize("bits", range(8, 16))
    def test_7_1_2_every_valid_window_size(self, bits: int) -> None:
        response = [("server_max_window_bits", str(bits)), ("client_max_window_bits", str(bits))]
        ext = ClientDeflateFactory(client_max_window_bits=15).accept_response(response)
        assert (ext.local_max_window_bits, ext.remote_max_window_bits) == (bits, bits)
        ext = ClientDeflateFactory().accept_response(response)  # offered without a value
        assert (ext.local_max_window_bits, ext.remote_max_window_bits) == (min(bits, 12), bits)


# -- §7.1 Extension negotiation: the server answers an offer ---------------------------------


class TestServerAcceptOffer:
    def test_default_answer_to_default_offer(self) -> None:
        answer = ServerDeflateFactory().accept_offer([("client_max_window_bits", None)])
        assert answer is not None
        response, ext = answer
        assert response == [("server_max_window_bits", "12"), ("client_max_window_bits", "12")]
        assert ext.is_server
        assert (ext.local_max_window_bits, ext.remote_max_window_bits) == (12, 12)
        assert ext.compress_settings == {"memLevel": 4}
        assert ext.response_params() == response

    def test_7_1_2_2_offer_without_client_max_window_bits_forces_15_bits(self) -> None:
        answer = ServerDeflateFactory().accept_offer([])
        assert answer is not None
        response, ext = answer
        assert all(name != "client_max_window_bits" for name, _ in response)
        assert ext.remote_max_window_bits == 15

    def test_7_1_2_2_require_client_max_window_bits_declines(self) -> None:
        assert ServerDeflateFactory(require_client_max_window_bits=True).accept_offer([]) is None

    def test_7_1_2_2_client_announces_smaller_window(self) -> None:
        response, ext = accept(ServerDeflateFactory(), [("client_max_window_bits", "10")])
        assert ("client_max_window_bits", "10") in response
        assert ext.remote_max_window_bits == 10

    def test_7_1_2_2_client_announces_larger_window(self) -> None:
        response, ext = accept(ServerDeflateFactory(), [("client_max_window_bits", "15")])
        assert ("client_max_window_bits", "12") in response
        assert ext.remote_max_window_bits == 12

    def test_7_1_2_2_no_client_limit_configured(self) -> None:
        factory = ServerDeflateFactory(client_max_window_bits=None)
        response, ext = accept(factory, [("client_max_window_bits", None)])
        assert response == [("server_max_window_bits", "12")]
        assert ext.remote_max_window_bits == 15
        response, ext = accept(factory, [("client_max_window_bits", "9")])
        assert ext.remote_max_window_bits == 9

    @pytest.mark.parametrize(("requested", "used"), [("8", 8), ("10", 10), ("12", 12), ("15", 12)])
    def test_7_1_2_1_server_max_window_bits_request_honoured(self, requested: str, used: int) -> None:
        response, ext = accept(ServerDeflateFactory(), [("server_max_window_bits", requested)])
        assert ("server_max_window_bits", str(used)) in response
        assert ext.local_max_window_bits == used

    def test_7_1_2_1_no_server_limit_configured(self) -> None:
        factory = ServerDeflateFactory(server_max_window_bits=None)
        response, ext = accept(factory, [])
        assert response == [] and ext.local_max_window_bits == 15
        response, ext = accept(factory, [("server_max_window_bits", "11")])
        assert response == [("server_max_window_bits", "11")] and ext.local_max_window_bits == 11

    def test_7_1_1_1_server_no_context_takeover_requested(self) -> None:
        response, ext = accept(ServerDeflateFactory(), [("server_no_context_takeover", None)])
        assert ("server_no_context_takeover", None) in response
        assert ext.local_no_context_takeover and not ext.remote_no_context_takeover

    def test_7_1_1_1_server_no_context_takeover_configured(self) -> None:
        response, ext = accept(ServerDeflateFactory(server_no_context_takeover=True), [])
        assert ("server_no_context_takeover", None) in response
        assert ext.local_no_context_takeover

    def test_7_1_1_2_client_no_context_takeover_offered(self) -> None:
        response, ext = accept(ServerDeflateFactory(), [("client_no_context_takeover", None)])
        assert ("client_no_context_takeover", None) in response
        assert ext.remote_no_context_takeover and not ext.local_no_context_takeover

    def test_7_1_1_2_client_no_context_takeover_required(self) -> None:
        response, ext = accept(ServerDeflateFactory(client_no_context_takeover=True), [])
        assert ("client_no_context_takeover", None) in response
        assert ext.remote_no_context_takeover

    @pytest.mark.parametrize(
        "params",
        [
            [("foo", None)],
            [("foo", "bar")],
            [("client_max_window_bits", None), ("client_max_window_bits", None)],
            [("server_no_context_takeover", None), ("server_no_context_takeover", None)],
            [("server_no_context_takeover", "yes")],
            [("client_no_context_takeover", "1")],
            [("server_max_window_bits", None)],
            [("server_max_window_bits", "7")],
            [("server_max_window_bits", "16")],
            [("client_max_window_bits", "0")],
            [("client_max_window_bits", "015")],
            [("client_max_window_bits", "")],
        ],
    )
    def test_5_invalid_offer_is_declined(self, params: list) -> None:
        assert ServerDeflateFactory().accept_offer(params) is None

    def test_invalid_configuration_is_a_value_error(self) -> None:
        with pytest.raises(ValueError):
            ServerDeflateFactory(server_max_window_bits=16)
        with pytest.raises(ValueError):
            ServerDeflateFactory(client_max_window_bits=7)
        with pytest.raises(ValueError):
            ServerDeflateFactory(compress_settings={"wbits": -9})

    @pytest.mark.parametrize(
        "client_kwargs",
        [
            {"client_max_window_bits": None},
            {},
            {"client_max_window_bits": 9},
            {"server_no_context_takeover": True, "client_no_context_takeover": True},
            {"server_max_window_bits": 8, "client_max_window_bits": 8},
        ],
    )
    def test_7_1_server_response_is_accepted_by_the_client(self, client_kwargs: dict) -> None:
        client_factory = ClientDeflateFactory(**client_kwargs)
        response, server = accept(ServerDeflateFactory(), client_factory.offer())
        client = client_factory.accept_response(response)
        assert client.local_max_window_bits == server.remote_max_window_bits
        assert client.remote_max_window_bits == server.local_max_window_bits
        assert client.local_no_context_takeover == server.remote_no_context_takeover
        assert client.remote_no_context_takeover == server.local_no_context_takeover
        for message in (b"hello " * 100, b"", os.urandom(300), b"hello " * 100):
            assert send(client, server, message) == message
            assert send(server, client, message) == message


# -- §7.2 Message payload transformation -----------------------------------------------------


class TestCompression:
    def test_7_2_3_1_a_message_compressed_using_one_compressed_deflate_block(self) -> None:
        client, server = pair()
        assert client.compress(b"Hello") == HELLO
        assert server.decompress(HELLO, True, None) == b"Hello"

    def test_7_2_3_2_sharing_lz77_sliding_window(self) -> None:
        client, server = pair()
        assert client.compress(b"Hello") == HELLO
        assert client.compress(b"Hello") == bytes.fromhex("f200110000")
        assert server.decompress(HELLO, True, None) == b"Hello"
        assert server.decompress(bytes.fromhex("f200110000"), True, None) == b"Hello"

    def test_7_2_3_2_no_context_takeover_restarts_the_window(self) -> None:
        client, server = pair(client_client_no_context_takeover=True)
        assert client.compress(b"Hello") == HELLO
        assert client.compress(b"Hello") == HELLO
        assert server.decompress(HELLO, True, None) == b"Hello"
        assert server.decompress(HELLO, True, None) == b"Hello"

    def test_7_2_3_3_deflate_block_with_no_compression(self) -> None:
        _, server = pair()
        assert server.decompress(bytes.fromhex("000500faff48656c6c6f00"), True, 5) == b"Hello"

    def test_7_2_3_4_deflate_block_with_bfinal_set(self) -> None:
        _, server = pair()
        assert server.decompress(bytes.fromhex("f348cdc9c9070000"), True, None) == b"Hello"
        # The stream ended: the next message starts a new one.
        assert server.decompress(HELLO, True, None) == b"Hello"

    def test_7_2_3_4_data_after_the_final_block_is_refused(self) -> None:
        _, server = pair()
        with pytest.raises(ProtocolError) as info:
            server.decompress(bytes.fromhex("f348cdc9c90700") + b"garbage", True, None)
        assert info.value.code == 1002

    def test_7_2_3_5_two_deflate_blocks_in_one_message(self) -> None:
        _, server = pair()
        data = bytes.fromhex("f248050000") + bytes.fromhex("00ffff cac9c90700".replace(" ", ""))
        assert server.decompress(data, True, None) == b"Hello"

    def test_7_2_3_6_empty_message(self) -> None:
        client, server = pair()
        assert client.compress(b"") == b"\x00"
        assert server.decompress(b"\x00", True, 0) == b""
        # Again, with context takeover: still a single 0x00 byte, still inflatable.
        assert client.compress(b"") == b"\x00"
        assert server.decompress(b"\x00", True, 0) == b""
        assert send(client, server, b"Hello") == b"Hello"

    def test_7_2_3_6_zero_length_payload_is_tolerated(self) -> None:
        _, server = pair()
        assert server.decompress(b"", True, None) == b""
        assert server.decompress(HELLO, True, None) == b"Hello"

    @pytest.mark.parametrize("server_nct", [False, True])
    @pytest.mark.parametrize("client_nct", [False, True])
    def test_7_2_round_trip_across_messages(self, server_nct: bool, client_nct: bool) -> None:
        client, server = pair(
            server_server_no_context_takeover=server_nct, client_client_no_context_takeover=client_nct
        )
        messages = [b"The quick brown fox " * 50, b"", os.urandom(2000), b"The quick brown fox " * 50, b"x"]
        sizes = []
        for message in messages:
            compressed = client.compress(message)
            sizes.append(len(compressed))
            assert server.decompress(compressed, True, None) == message
            assert send(server, client, message) == message
        # Context takeover: the repeated message refers back to the previous ones.
        assert (sizes[3] < sizes[0]) is not client_nct

    def test_7_2_1_no_context_takeover_drops_zlib_objects(self) -> None:
        client, server = pair(server_server_no_context_takeover=True, server_client_no_context_takeover=True)
        assert server._compressor is None and server._decompressor is None
        send(client, server, b"hello")
        send(server, client, b"hello")
        assert server._compressor is None and server._decompressor is None
        assert client._compressor is None and client._decompressor is None

    def test_zlib_objects_are_created_lazily(self) -> None:
        client, server = pair()
        assert client._compressor is None and client._decompressor is None
        send(client, server, b"hello")
        assert client._compressor is not None and server._decompressor is not None
        assert client._decompressor is None and server._compressor is None

    @pytest.mark.parametrize("nct", [False, True])
    def test_7_2_fragmented_messages(self, nct: bool) -> None:
        client, server = pair(client_client_no_context_takeover=nct)
        for _ in range(3):
            message = os.urandom(500) + b"abc" * 3000 + os.urandom(10)
            pieces = [message[i : i + 1000] for i in range(0, len(message), 1000)] + [b""]
            frames = [client.compress(p, fin=i == len(pieces) - 1) for i, p in enumerate(pieces)]
            out = b"".join(server.decompress(f, i == len(frames) - 1, len(message)) for i, f in enumerate(frames))
            assert out == message

    def test_7_2_large_final_frame_takes_the_two_call_path(self) -> None:
        client, server = pair()
        message = os.urandom(20000)
        compressed = client.compress(message)
        assert len(compressed) > 4096
        assert server.decompress(compressed, True, len(message)) == message
        with pytest.raises(PayloadTooBig):
            server.decompress(client.compress(message), True, len(message) - 1)

    def test_accepts_bytearray_and_memoryview(self) -> None:
        client, server = pair()
        assert server.decompress(memoryview(client.compress(bytearray(b"abc"))), True, 3) == b"abc"
        assert server.decompress(bytearray(client.compress(memoryview(b"def"))), True, 3) == b"def"

    @pytest.mark.parametrize("bits", range(8, 16))
    def test_7_1_2_compressor_keeps_to_its_window(self, bits: int) -> None:
        ext = PerMessageDeflate(is_server=True, local_max_window_bits=bits)
        # Repeats 1.5 windows apart: only a compressor with too large a window finds them.
        block = os.urandom((1 << bits) + (1 << (bits - 1)))
        compressed = ext.compress(block * 3)
        assert inflate_strictly(compressed, bits) == block * 3

    def test_7_1_2_strict_inflate_detects_a_too_large_window(self) -> None:
        block = os.urandom(384)
        compressor = zlib.compressobj(wbits=-10)
        compressed = compressor.compress(block * 3) + compressor.flush(zlib.Z_SYNC_FLUSH)
        assert inflate_strictly(compressed[:-4], 10) == block * 3
        with pytest.raises(zlib.error):
            inflate_strictly(compressed[:-4], 8)

    def test_7_1_2_window_8_compressor_still_finds_matches(self) -> None:
        # zlib runs with 9 bits, whose largest distance is 512 - 262 = 250 < 256.
        ext = PerMessageDeflate(is_server=True, local_max_window_bits=8)
        block = os.urandom(250)
        compressed = ext.compress(block * 8)
        assert len(compressed) < 2 * len(block)
        assert inflate_strictly(compressed, 8) == block * 8


# -- §8.1 / RFC 6455 §10.4: limits and bad input -------------------------------------------------


class TestBadInput:
    def test_exactly_max_size_is_accepted(self) -> None:
        client, server = pair()
        for size in (0, 1, 1000, 100_000):
            message = os.urandom(size)
            assert server.decompress(client.compress(message), True, size) == message

    def test_one_byte_over_max_size_is_refused(self) -> None:
        client, server = pair()
        with pytest.raises(PayloadTooBig) as info:
            server.decompress(client.compress(b"x" * 1001), True, 1000)
        assert info.value.code == 1009

    def test_max_size_applies_to_the_whole_fragmented_message(self) -> None:
        client, server = pair()
        frames = [client.compress(b"y" * 600, fin=False), client.compress(b"y" * 600, fin=True)]
        assert server.decompress(frames[0], False, 1000) == b"y" * 600
        with pytest.raises(PayloadTooBig):
            server.decompress(frames[1], True, 1000)

    def test_max_size_is_per_message(self) -> None:
        client, server = pair()
        for _ in range(5):
            assert send(client, server, b"z" * 1000, max_size=1000) == b"z" * 1000

    def test_max_size_none_is_unlimited(self) -> None:
        client, server = pair()
        assert len(send(client, server, bytes(3_000_000), max_size=None)) == 3_000_000

    def test_zip_bomb_refused_with_bounded_memory(self) -> None:
        bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
        compressed = bomb.compress(bytes(64 << 20)) + bomb.flush(zlib.Z_SYNC_FLUSH)
        compressed = compressed[:-4]
        assert len(compressed) < 100_000
        _, server = pair()
        tracemalloc.start()
        try:
            start = time.perf_counter()
            with pytest.raises(PayloadTooBig) as info:
                server.decompress(compressed, True, 1 << 20)
            elapsed = time.perf_counter() - start
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert info.value.code == 1009
        assert elapsed < 1.0
        assert peak < 4 << 20, peak  # a few MiB, not 64 MiB

    def test_zip_bomb_in_many_frames(self) -> None:
        client, server = pair()
        frame = client.compress(bytes(1 << 20), fin=False)
        limit = (5 << 20) // 2
        server.decompress(frame, False, limit)
        server.decompress(frame, False, limit)
        with pytest.raises(PayloadTooBig):
            server.decompress(frame, False, limit)

    @pytest.mark.parametrize("garbage", [b"\xff\xff\xff\xff", b"\x07hello world", bytes(range(256))])
    def test_invalid_compressed_data_is_1002(self, garbage: bytes) -> None:
        _, server = pair()
        with pytest.raises(ProtocolError) as info:
            server.decompress(garbage, True, None)
        assert info.value.code == 1002
        assert "invalid compressed data" in info.value.reason

    def test_reference_before_the_start_of_the_stream_is_1002(self) -> None:
        # RFC 7692 §7.2.3.2's second message refers to the first; alone it is invalid.
        _, server = pair()
        with pytest.raises(ProtocolError) as info:
            server.decompress(bytes.fromhex("f200110000"), True, None)
        assert info.value.code == 1002

    def test_connection_state_is_reset_after_an_error(self) -> None:
        client, server = pair()
        with pytest.raises(PayloadTooBig):
            server.decompress(client.compress(b"a" * 100), True, 10)
        assert server._decompressor is None and server._inflated == 0


class TestWorstCaseOverhead:
    @pytest.mark.parametrize("level", [0, 1, 6, 9])
    @pytest.mark.parametrize("mem_level", [1, 5, 9])
    @pytest.mark.parametrize("strategy", [zlib.Z_DEFAULT_STRATEGY, zlib.Z_FIXED, zlib.Z_HUFFMAN_ONLY])
    def test_bound_covers_zlib_on_incompressible_data(self, level: int, mem_level: int, strategy: int) -> None:
        for size in (0, 1, 100, 5000, 70_000):
            data = os.urandom(size)
            ext = PerMessageDeflate(
                is_server=True, compress_settings={"level": level, "memLevel": mem_level, "strategy": strategy}
            )
            assert len(ext.compress(data)) <= WORST_CASE_OVERHEAD(size)

    def test_bound_is_monotonic_and_at_least_n(self) -> None:
        assert WORST_CASE_OVERHEAD(0) > 0
        assert WORST_CASE_OVERHEAD(2**20) >= 2**20 + ((2**20 + 7) >> 3) + ((2**20 + 63) >> 6) + 5


# -- Interoperability with websockets' implementation ------------------------------------------


@needs_websockets
class TestInteropWithWebsockets:
    @pytest.mark.parametrize(
        "kwargs",
        [
            {},
            {"server_no_context_takeover": True},
            {"client_no_context_takeover": True},
            {"server_max_window_bits": 10},
            {"client_max_window_bits": 9},
            {"client_max_window_bits": None},
        ],
    )
    def test_their_client_our_server(self, kwargs: dict) -> None:
        their_factory = ws_pmd.ClientPerMessageDeflateFactory(**kwargs)
        answer = ServerDeflateFactory().accept_offer(their_factory.get_request_params())
        assert answer is not None
        response, ours = answer
        theirs = their_factory.process_response_params(response, [])
        self.exchange(theirs, ours)

    @pytest.mark.parametrize(
        "kwargs",
        [
            {},
            {"server_no_context_takeover": True},
            {"client_no_context_takeover": True, "client_max_window_bits": 11},
            {"server_max_window_bits": 10},
            {"client_max_window_bits": None},
        ],
    )
    def test_our_client_their_server(self, kwargs: dict) -> None:
        ours_factory = ClientDeflateFactory(**kwargs)
        their_factory = ws_pmd.ServerPerMessageDeflateFactory(server_max_window_bits=11, client_max_window_bits=10)
        response, theirs = their_factory.process_request_params(ours_factory.offer(), [])
        ours = ours_factory.accept_response(response)
        self.exchange(theirs, ours)

    @staticmethod
    def exchange(theirs: object, ours: PerMessageDeflate) -> None:
        messages = [b"Hello", b"", b"hello hello hello " * 300, os.urandom(5000), b"Hello"]
        for message in messages:
            # Theirs → ours, in fragments.
            pieces = [message[:7], message[7:4000], message[4000:]]
            for i, piece in enumerate(pieces):
                opcode = Opcode.BINARY if i == 0 else Opcode.CONT
                frame = theirs.encode(Frame(opcode, piece, fin=i == 2))  # type: ignore[attr-defined]
                assert frame.rsv1 == (i == 0)
                assert ours.decompress(frame.data, i == 2, len(message)) == piece
            # Ours → theirs, in fragments.
            out = b""
            for i, piece in enumerate(pieces):
                opcode = Opcode.BINARY if i == 0 else Opcode.CONT
                frame = Frame(opcode, ours.compress(piece, fin=i == 2), fin=i == 2, rsv1=i == 0)
                out += theirs.decode(frame, max_size=None).data  # type: ignore[attr-defined]
            assert out == message


# -- Property: whatever the settings and fragmentation, decompress(compress(m)) == m ----------


@settings(max_examples=60, deadline=None)
@given(
    messages=st.lists(
        st.lists(st.one_of(st.binary(max_size=300), st.just(b"abcabcabc" * 20)), max_size=4), min_size=1, max_size=4
    ),
    local_bits=st.integers(8, 15),
    nct=st.booleans(),
    level=st.integers(0, 9),
)
def test_property_round_trip(messages: list[list[bytes]], local_bits: int, nct: bool, level: int) -> None:
    sender = PerMessageDeflate(
        is_server=True,
        local_no_context_takeover=nct,
        local_max_window_bits=local_bits,
        compress_settings={"level": level},
    )
    receiver = PerMessageDeflate(is_server=False, remote_no_context_takeover=nct, remote_max_window_bits=local_bits)
    for fragments in messages:
        fragments = fragments or [b""]
        message = b"".join(fragments)
        out = b""
        for i, fragment in enumerate(fragments):
            fin = i == len(fragments) - 1
            compressed = sender.compress(fragment, fin=fin)
            out += receiver.decompress(compressed, fin, len(message))
        assert out == message


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=200), fin=st.booleans())
def test_property_arbitrary_bytes_only_documented_errors(data: bytes, fin: bool) -> None:
    receiver = PerMessageDeflate(is_server=True)
    try:
        out = receiver.decompress(data, fin, 1000)
    except ProtocolError as exc:
        assert exc.code in (1002, 1009)
    else:
        assert len(out) <= 1000
