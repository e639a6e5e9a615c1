"""``AsyncCore``: the asyncio connection's receive callbacks and its whole-message send path.

Run under both twins (``backend`` fixture). ``_send_now`` writes a whole str/bytes message as
one frame only when nothing stands in the way, and declines (writing nothing)
otherwise, so that ``send()``'s general path keeps every other case; the Cython twin may
write straight to the socket, and what the kernel does not take must follow through the
transport, in order. ``next_mask`` hands out fresh keys. End-to-end behaviour (a peer that
stops reading, then reads everything) is checked through ``AsyncWebSocket``. (A forked
child's fresh keys: tests/test_protocol.py, through the protocol that uses ``next_mask``.)
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections import deque
from types import ModuleType
from typing import Any

import pytest

from asyncio_support import TIMEOUT, serving
from kn_sock import _pure, async_connect_websocket
from kn_sock.extensions.permessage_deflate import PerMessageDeflate
from kn_sock.protocol import Protocol, State


class FakeTransport:
    """Records writes; ``held`` bytes count as already waiting in its buffer."""

    def __init__(self, held: int = 0) -> None:
        self.writes: list[bytes] = []
        self.held = held

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return self.held + sum(map(len, self.writes))

    def is_closing(self) -> bool:
        return False


def make_core(backend: ModuleType, side: str = "client", **proto_options: Any) -> Any:
    core = type("Core", (backend.AsyncCore,), {})()
    core.protocol = Protocol(side, backend=backend, **proto_options)
    core.transport = FakeTransport()
    core._open = State.OPEN
    core._messages = None
    core._cork = None
    core._fd = -1
    return core


def frames_of(data: bytes, side: str = "client") -> list[tuple[int, bool, bool, Any]]:
    """Parse what a ``side`` endpoint wrote, as its peer would (pure parser; RSV1 allowed)."""
    parser = _pure.FrameParser(expect_mask=side == "client", max_size=None, rsv1_allowed=True)
    return parser.feed(data)


@pytest.mark.parametrize("side", ["client", "server"])
@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 300001])
def test_send_now_writes_one_frame(backend: ModuleType, side: str, size: int) -> None:
    for message in (bytes(range(256)) * (size // 256) + bytes(size % 256), "é" * (size // 2) + "a" * (size % 2)):
        core = make_core(backend, side)
        assert core._send_now(message) is True
        # A large server frame is its header, then the message's own bytes (no copy).
        split = side == "server" and len(message.encode() if isinstance(message, str) else message) >= 65536
        assert len(core.transport.writes) == (2 if split else 1)
        [(opcode, fin, rsv1, payload)] = frames_of(b"".join(core.transport.writes), side)
        assert (opcode, fin, rsv1) == ((1 if isinstance(message, str) else 2), True, False)
        assert payload == message


def test_send_now_client_masks_with_a_fresh_key_each_time(backend: ModuleType) -> None:
    core = make_core(backend, "client")
    for _ in range(3):
        assert core._send_now(b"same payload")
    keys = {frame[2:6] for frame in core.transport.writes}
    assert all(frame[1] & 0x80 for frame in core.transport.writes)
    assert len(keys) == 3


def test_send_now_declines_and_writes_nothing(backend: ModuleType) -> None:
    class Text(str):
        pass

    core = make_core(backend)
    for message in (bytearray(b"x"), memoryview(b"x"), Text("x"), 7, None, [b"x"], bytearray(65536)):
        assert core._send_now(message) is False
    cases = []
    core = make_core(backend)
    core._cork = []  # frames held back: the general path keeps their order
    cases.append(core)
    core = make_core(backend)
    core._messages = deque([b"queued"])  # a backlog: the general path corks
    cases.append(core)
    core = make_core(backend)
    core.transport = None
    cases.append(core)
    core = make_core(backend)
    core.protocol = None
    cases.append(core)
    core = make_core(backend)
    core.protocol.send_close(1000, "")  # CLOSING: the general path raises
    core.protocol.data_to_send()
    cases.append(core)
    core = make_core(backend)
    core.protocol.send_fragment(b"first", False)  # a fragmented message is open
    cases.append(core)
    for core in cases:
        transport = core.transport
        assert core._send_now(b"x") is False
        assert core._send_now("x") is False
        assert transport is None or transport.writes == []


def _nonblocking_pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return a, b


def _drain(sock: socket.socket) -> bytes:
    out = bytearray()
    while True:
        try:
            chunk = sock.recv(1 << 16)
        except BlockingIOError:
            return bytes(out)
        if not chunk:
            return bytes(out)
        out += chunk


@pytest.mark.skipif(os.name != "posix", reason="direct writes are POSIX only")
@pytest.mark.parametrize("side", ["client", "server"])
def test_send_now_with_deflate_frames_as_protocol_send(backend: ModuleType, side: str) -> None:
    """permessage-deflate: ``_send_now`` writes the frame ``Protocol.send`` makes (deflated,
    RSV1; as it is when incompressible), sharing the compression context with it; the peer
    inflates them all, in order."""
    core = make_core(backend, side, extensions=[PerMessageDeflate(is_server=side == "server")])
    reference = Protocol(side, backend=backend, extensions=[PerMessageDeflate(is_server=side == "server")])
    peer = Protocol("server" if side == "client" else "client", backend=backend, max_size=None,
                    extensions=[PerMessageDeflate(is_server=side != "server")])
    noise = os.urandom(40000)  # (its window: 15 bits, 32 KiB)
    messages: list[Any] = ["", b"", "héllo ✓" * 20, b"spam " * 300, noise, "après " * 2000, noise, b"x" * 70000, "z"]
    for i, message in enumerate(messages):
        if i % 3 == 2:  # interleaved with the general path: one compression context
            frame = core.protocol.send(message)
            core.transport.write(frame)
            expected = reference.send(message)
        else:
            assert core._send_now(message) is True
            expected = reference.send(message)
        if side == "server":  # (unmasked: byte for byte the same)
            assert core.transport.writes[-1] == expected
        [(opcode, fin, rsv1, _)] = frames_of(core.transport.writes[-1], side)
        assert (opcode, fin) == ((1 if isinstance(message, str) else 2), True)
        assert rsv1 == (message is not noise)
    received = peer.receive_data(b"".join(core.transport.writes))
    assert received == messages


def test_send_now_with_deflate_raises_as_send(backend: ModuleType) -> None:
    """A str that UTF-8 cannot encode fails in ``_send_now`` as in ``Protocol.send``, and
    nothing is written."""
    core = make_core(backend, "server", extensions=[PerMessageDeflate(is_server=True)])
    with pytest.raises(UnicodeEncodeError):
        core._send_now("lone \ud800 surrogate")
    with pytest.raises(UnicodeEncodeError):
        core.protocol.send("lone \ud800 surrogate")
    assert core.transport.writes == []


def test_send_now_on_a_socket_keeps_the_byte_order(backend: ModuleType) -> None:
    """Whatever part of a frame the socket takes directly, the rest follows via the transport;
    with bytes already waiting in the transport, everything goes behind them."""
    a, b = _nonblocking_pair()
    try:
        core = make_core(backend, "server")
        core._fd = a.fileno()
        # Fill the socket so the next direct write is partial or refused.
        filler = b"\x00" * 4096
        sent = bytearray()
        while True:
            try:
                sent += filler[: a.send(filler)]
            except BlockingIOError:
                break
        got = _drain(b)
        messages: list[Any] = [bytes([i]) * 30000 for i in range(1, 5)]
        messages += [bytes([5]) * 70000, "é" * 40000, bytes([6]) * 65536]  # header + payload
        for message in messages:
            assert core._send_now(message)
            got += _drain(b)
        assert got[: len(sent)] == bytes(sent)
        direct = got[len(sent) :]
        # The transport got what the socket did not take; a real one sends it afterwards.
        tail = b"".join(core.transport.writes)
        assert [f[3] for f in frames_of(direct + tail, "server")] == messages
        if backend is not _pure:  # the Cython twin wrote part of the first frame to the socket
            assert direct and tail
        # Bytes already in the transport's buffer: nothing may overtake them.
        core.transport = FakeTransport(held=10)
        assert core._send_now(b"after")
        assert _drain(b) == b"" and core.transport.writes == [b"\x82\x05after"]
    finally:
        a.close()
        b.close()


@pytest.mark.skipif(os.name != "posix", reason="direct writes are POSIX only")
@pytest.mark.parametrize("message", [bytes(range(256)) * 300, "é" * 50000], ids=["bytes", "str"])
def test_send_now_large_server_frame_partly_direct(backend: ModuleType, message: Any) -> None:
    """Header + payload in one direct write: what the socket takes, then the rest through the
    transport, in order (no copy of a bytes payload)."""
    a, b = _nonblocking_pair()
    try:
        core = make_core(backend, "server")
        core._fd = a.fileno()
        assert core._send_now(message)
        direct = _drain(b)
        tail = b"".join(core.transport.writes)
        assert direct and tail  # the socket took part of it, the transport the rest
        assert frames_of(direct + tail, "server") == [(1 if isinstance(message, str) else 2, True, False, message)]
        assert core._send_now(b"next")  # behind what the transport holds
        assert _drain(b) == b"" and core.transport.writes[-1] == b"\x82\x04next"
    finally:
        a.close()
        b.close()


def test_next_mask_gives_fresh_4_byte_keys(backend: ModuleType) -> None:
    keys = [backend.next_mask() for _ in range(600)]  # more than one pool of 256
    assert all(type(k) is bytes and len(k) == 4 for k in keys)
    assert len(set(keys)) > 590  # 4 random bytes: a repeat among 600 is rare, many would be a bug


async def test_small_messages_in_order_to_a_peer_that_stops_reading() -> None:
    """Thousands of small messages while the server's handler does not read (its socket and
    our transport fill up, sends wait for drain), then reads them all: intact and in order."""
    go = asyncio.Event()
    received: list[bytes] = []

    async def handler(ws: Any, path: str) -> None:
        await go.wait()
        async for message in ws:
            received.append(message)
            if len(received) == count:
                await ws.send("done")

    count = 3000
    messages = [i.to_bytes(4, "big") * (2000 + i % 7) for i in range(count)]
    async with serving(handler, compression=None, max_queue=4) as server:
        async with async_connect_websocket("127.0.0.1", server.port, compression=None, write_limit=4096) as ws:
            async with asyncio.timeout(TIMEOUT * 4):
                sender = asyncio.ensure_future(_send_all(ws, messages))
                await asyncio.sleep(0.05)
                assert not sender.done()  # the peer is not reading: sending had to wait
                go.set()
                await sender
                assert await ws.recv() == "done"
    assert received == messages


async def _send_all(ws: Any, messages: list[bytes]) -> None:
    for message in messages:
        await ws.send(message)


def test_coroutine_methods_say_so_with_either_twin() -> None:
    """``asyncio.iscoroutinefunction`` of ``send`` / ``recv`` is true with the Cython twin
    too (C functions returning awaitables, marked), as with the pure twin's ``async def``s:
    frameworks deciding whether to await a callable ask it (audit 78)."""
    from kn_sock import AsyncWebSocket

    for name in ("send", "recv"):
        assert asyncio.iscoroutinefunction(getattr(AsyncWebSocket, name)), name
    assert not asyncio.iscoroutinefunction(AsyncWebSocket.send_nowait)
