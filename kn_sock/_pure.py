"""Pure-Python twin of ``kn_sock._speedups``: masking, UTF-8 validation, frame parsing and building.

This module is the specification of the twins: ``_speedups.pyx`` matches it function for
function, result for result and error for error (same exception types and messages).
Only ``kn_sock._backend`` chooses between the two.

Frames are plain tuples ``(opcode, fin, rsv1, payload)`` — the cheapest object Python has —
where ``payload`` is ``bytes``, except for an unfragmented, uncompressed text frame when the
parser was created with ``decode_text=True``: its payload is already decoded to ``str``
(``bytes.decode`` validates while decoding, so text is validated exactly once).
"""

from __future__ import annotations

import codecs
import collections
import errno as _errno
import operator
import os
import select
import socket as _socket
import stat as _stat
import struct
import threading
from operator import index as _operator_index
from typing import Any, Union

from .exceptions import InvalidState, PayloadTooBig, ProtocolError, detached
from .options import checked_timeout

from ._types import Data, Message  # annotations (resolvable at run time too, e.g. get_type_hints)

__all__ = [
    "apply_mask",
    "apply_mask_inplace",
    "validate_utf8",
    "Utf8Validator",
    "FrameParser",
    "build_frame",
    "Frame",
    "Waiter",
    "next_mask",
    "AsyncCore",
    "send_many",
    "write_message",
    "OP_EARLY",
]

BytesLike = Union[bytes, bytearray, memoryview]
Frame = tuple  # (opcode: int, fin: bool, rsv1: bool, payload: bytes | str)

#: The opcode of the frames ``FrameParser(early_compressed_text=True)`` hands out for the
#: payload of an incomplete compressed text frame (never on the wire: opcodes are 0-15).
OP_EARLY = -1

_MASK_LEN_ERROR = "mask must be 4 bytes"
_utf8_decode = codecs.utf_8_decode
_pack_2 = struct.Struct("!BB").pack
_pack_4 = struct.Struct("!BBH").pack
_pack_10 = struct.Struct("!BBQ").pack
_from_bytes = int.from_bytes

#: ``send()`` yields to the event loop once after this many sends that did not suspend (the
#: socket took every frame at once): a task sending in a loop to a peer that reads as fast, or
#: that is gone (asyncio reports a lost connection through the loop, which such a loop would
#: never let run: sends "succeeded" for ever and every other connection froze), lets the loop
#: run now and then. A task that suspends in ``recv()`` (an echo, a request/response) never pays.
_SEND_YIELD_EVERY = 128
#: A deflated send() counts once more towards _SEND_YIELD_EVERY per this many bytes (str:
#: characters) of its message (kn_sock.asyncio.connection's figure; the Cython twin has it too).
_DEFLATE_YIELD_UNIT = 4096
#: A read (through the transport) that brought more frames than this reads no more until the
#: next event loop iteration (``_yield_reading``): uvloop reads a socket up to 32 times in a
#: row, so a peer flooding tiny frames or pings held the loop for tens of milliseconds
#: (fairness). Pipelined 1 KiB messages (~128 a read) are under it; a pause and a resume per
#: read of many small messages cost two system calls, nothing next to the messages' handling.
_FAIR_FRAMES = 128
#: The pure parser's next read after such a read: this many bytes, not _READ_SIZE (a read of
#: 6-byte frames is ~20,000 frames for Python to parse: ~20 ms with the loop held).
_FAIR_READ = 8192

#: The read buffer get_buffer() hands out, one per thread and shared by every parser on it:
#: buffer_updated() copies what was read into the parser's own buffer before anything else
#: runs, so an idle connection holds no 128 KiB of its own.
_READ_BUFFERS = threading.local()
_READ_SIZE = 131072
#: recv_from's read buffers, taken only for the read itself (any thread), a few kept.
_RECV_POOL: list = []
_RECV_POOL_MAX = 4


#: What the Cython twin's buffer access raises (BufferError) for a non-contiguous buffer.
_NOT_CONTIGUOUS = "memoryview: underlying buffer is not C-contiguous"


def _mask_key(mask: BytesLike) -> bytes:
    """Return the 4-byte mask as bytes, or raise ValueError / TypeError."""
    key = bytes(memoryview(mask))
    if len(key) != 4:
        raise ValueError(_MASK_LEN_ERROR)
    return key


def apply_mask(data: BytesLike, mask: BytesLike) -> bytes:
    """Return ``data`` XOR-ed with the repeating 4-byte ``mask`` (RFC 6455 §5.3) as new bytes.

    Raises:
        TypeError: when ``data`` or ``mask`` does not support the buffer protocol.
        ValueError: when ``mask`` is not exactly 4 bytes long.
    """
    if type(data) is bytes and type(mask) is bytes and len(mask) == 4:
        return _xor(data, mask)  # speed: the common case, no memoryview, no validation call
    view = memoryview(data)
    if not view.c_contiguous:
        raise BufferError(_NOT_CONTIGUOUS)
    key = _mask_key(mask)
    if view.nbytes == 0:
        return b""
    return _xor(view.cast("B"), key)


#: Below this size masking is one big-integer XOR (fastest for short payloads); from it on,
#: ``bytes.translate`` with a table per key byte, applied to each of the four byte phases
#: through extended slices (measured here: 8 KiB 15 -> 10 us, 64 KiB 87 -> 73 us, 1 MiB
#: 1.39 -> 1.19 ms; at 1 KiB big-integer XOR is still ahead).
_XOR_TRANSLATE_MIN = 2048
#: Translated in pieces of this size (a multiple of 4, so every piece starts at mask phase
#: 0), which stay in the CPU cache: one pass over 1 MiB through extended slices is slower
#: than big-integer XOR.
_XOR_CHUNK = 32768
#: ``_XOR_TABLES[k]`` maps every byte b to b ^ k (made on first use).
_XOR_TABLES: list = [None] * 256
_XOR_IDENTITY = _from_bytes(bytes(range(256)), "little")
_XOR_ONES = _from_bytes(b"\x01" * 256, "little")


def _xor_table(k: int) -> bytes:
    """The ``bytes.translate`` table for XOR with the byte ``k``."""
    table = _XOR_TABLES[k]
    if table is None:
        table = _XOR_TABLES[k] = (_XOR_IDENTITY ^ k * _XOR_ONES).to_bytes(256, "little")
    return table  # type: ignore[no-any-return]


def _xor(data: bytes | memoryview, key: bytes) -> bytes:
    """``data`` (bytes or a 1-D byte view) XOR the repeating ``key``, mask phase 0 at its start.

    No loop over bytes in Python (~100x slower): one big-integer XOR for short data, else a
    table lookup per byte in C (``bytes.translate``), one mask phase at a time.
    """
    n = len(data)
    if n < _XOR_TRANSLATE_MIN:
        return (_from_bytes(data, "little") ^ _from_bytes(key * (n >> 2) + key[: n & 3], "little")).to_bytes(n, "little")
    t0, t1, t2, t3 = map(_xor_table, key)
    view = memoryview(data)
    parts = []
    for i in range(0, n, _XOR_CHUNK):
        piece = bytearray(view[i : i + _XOR_CHUNK])
        piece[0::4] = piece[0::4].translate(t0)
        piece[1::4] = piece[1::4].translate(t1)
        piece[2::4] = piece[2::4].translate(t2)
        piece[3::4] = piece[3::4].translate(t3)
        parts.append(piece)
    return b"".join(parts)


def apply_mask_inplace(buffer: BytesLike, mask: BytesLike, offset: int = 0, length: int = -1) -> None:
    """XOR ``buffer[offset:offset + length]`` in place with ``mask`` (mask phase 0 at ``offset``).

    ``length=-1`` means up to the end of the buffer.

    Raises:
        TypeError: when ``buffer`` is not a writable bytes-like object.
        ValueError: when ``mask`` is not 4 bytes or the range falls outside the buffer.
    """
    view = memoryview(buffer)
    if not view.c_contiguous:
        raise BufferError(_NOT_CONTIGUOUS)
    if view.readonly:
        raise TypeError("buffer must be writable")
    key = _mask_key(mask)
    size = view.nbytes
    if length < 0:
        length = size - offset
    if offset < 0 or offset + length > size or offset > size:
        raise ValueError("range out of buffer")
    if length == 0:
        return
    chunk = view.cast("B")[offset : offset + length]
    chunk[:] = _xor(chunk, key)


def _valid_tail(tail: bytes) -> bool:
    """Tell whether ``tail`` (at most 3 bytes) can still begin a valid UTF-8 sequence."""
    try:
        tail.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.end == len(tail) and exc.reason == "unexpected end of data"
    return True


def validate_utf8(data: BytesLike) -> bool:
    """Return True when ``data`` is entirely valid UTF-8 (RFC 3629: no overlongs, surrogates or > U+10FFFF).

    Raises:
        TypeError: when ``data`` does not support the buffer protocol.
    """
    try:
        _utf8_decode(memoryview(data), "strict", True)
    except UnicodeDecodeError:
        return False
    return True


class Utf8Validator:
    """Incremental UTF-8 validator for fragmented text messages (RFC 6455 §8.1, fail fast).

    ``feed`` returns False as soon as the bytes received so far can no longer begin a valid
    UTF-8 string, even in the middle of a code point; once False it stays False until ``reset``.
    """

    __slots__ = ("_pending", "_valid")

    def __init__(self) -> None:
        """Start with an empty, valid state."""
        self._pending = b""
        self._valid = True

    @property
    def valid(self) -> bool:
        """False once invalid input has been seen."""
        return self._valid

    def reset(self) -> None:
        """Forget everything fed so far."""
        self._pending = b""
        self._valid = True

    def feed(self, data: BytesLike, final: bool = False) -> bool:
        """Validate the next chunk; with ``final=True`` the message must also end on a code point.

        Raises:
            TypeError: when ``data`` does not support the buffer protocol.
        """
        view = memoryview(data)
        if view.itemsize != 1 or view.ndim != 1:
            view = view.cast("B")  # slice by bytes below, whatever the exporter's item format
        if not self._valid:
            return False
        chunk = self._pending + bytes(view) if self._pending else view
        try:
            _, consumed = _utf8_decode(chunk, "strict", final)
        except UnicodeDecodeError:
            self._valid = False
            self._pending = b""
            return False
        tail = bytes(chunk[consumed:])
        if tail and not _valid_tail(tail):
            self._valid = False
            self._pending = b""
            return False
        self._pending = tail
        return True


def _limit(value: int | None) -> int | None:
    """A size limit as given: None or an integer (TypeError otherwise, as the Cython twin)."""
    if value is not None:
        operator.index(value)
    return value


class FrameParser:
    """Resumable RFC 6455 §5 frame parser, fed arbitrary chunks of the byte stream.

    It enforces every rule that needs only the frame stream: reserved bits and opcodes,
    control frames (≤ 125 bytes, unfragmented), masking by side, 64-bit lengths with the top
    bit clear, continuation sequencing (RFC 6455 §5.4), RSV1 only on a message's first frame
    (RFC 7692 §6.1) and the message size limit, decided from each frame header *before* its
    payload is buffered. Errors are not raised: ``feed`` returns the frames parsed before the
    error and sets ``error`` to the ``ProtocolError`` (code 1002, 1007 or 1009) to fail the
    connection with; the parser then ignores further input.

    Invalid UTF-8 fails fast (SPEC "Bad input", RFC 6455 §8.1): with ``decode_text``, when a
    call ends inside an uncompressed text frame (opcode 1, RSV1 clear: a text message's first
    frame, final or not), the payload bytes received so far are validated incrementally — each
    byte once, the validator state and the count checked kept until the frame is complete —
    and ``error`` is set to the 1007 as soon as they can no longer begin valid UTF-8 (a
    truncated but valid code point at the end is fine). The frames of an uncompressed
    fragmented text message are validated as one stream: each frame as it completes (the
    bytes the early check has not seen), continuation frames mid-frame too, from the state
    the previous frame ended in, and a code point left truncated by the last frame is a 1007.
    An unfragmented text frame is validated by decoding it (the whole payload, once more).
    Compressed frames are not checked here (only the inflated bytes are text: the caller's
    ``Utf8Validator`` does that); with ``early_compressed_text``, a call that ends inside a
    compressed text frame hands the caller its new payload bytes (an ``OP_EARLY`` frame) so
    that it can inflate and check them before the frame is complete.

    Args:
        expect_mask: True on a server (client frames must be masked), False on a client.
        max_size: largest uncompressed message in bytes; None means no limit.
        compressed_max_size: limit on the compressed bytes of each frame of an RSV1 message
            (defaults to max_size); the inflated size is bounded by the decompressor.
        rsv1_allowed: True once permessage-deflate is negotiated.
        decode_text: return unfragmented uncompressed text payloads as ``str``.
        early_compressed_text: hand out the payload of an incomplete compressed text frame
            as it arrives (``OP_EARLY`` frames, see ``_early_compressed``), for the caller to
            inflate and check early (1007 mid-frame, SPEC "Bad input").
    """

    __slots__ = (
        "_expect_mask",
        "_max_size",
        "_compressed_max_size",
        "rsv1_allowed",
        "decode_text",
        "early_compressed_text",
        "error",
        "_buf",
        "_frag_opcode",
        "_frag_compressed",
        "_msg_size",
        "_scratch",
        "_room",
        "_text_validator",
        "_text_checked",
        "_msg_validator",
        "_cz_done",
        "_co_at",
        "_co_run",
        "last_frames",
    )

    def __init__(
        self,
        *,
        expect_mask: bool,
        max_size: int | None = 2**20,
        compressed_max_size: int | None = None,
        rsv1_allowed: bool = False,
        decode_text: bool = True,
        early_compressed_text: bool = False,
    ) -> None:
        """Create a parser for one direction of one connection."""
        self.expect_mask = expect_mask
        self.max_size = max_size
        self.compressed_max_size = compressed_max_size
        self.rsv1_allowed = rsv1_allowed
        self.decode_text = decode_text
        self.early_compressed_text = early_compressed_text
        self.error: ProtocolError | None = None
        self._buf = bytearray()
        self._frag_opcode = 0
        self._frag_compressed = False
        self._msg_size = 0
        self._scratch: bytearray | None = None
        self._room = 0  # bytes buffer_updated may report: the last get_buffer's, 0 once used
        # Fail-fast UTF-8 check of the incomplete text frame at the head of ``_buf``: the
        # validator (None: no frame checked yet) and how many payload bytes it has seen.
        self._text_validator: Utf8Validator | None = None
        self._text_checked = 0
        # The uncompressed fragmented text message in progress (with decode_text): validated
        # frame by frame, and mid-frame like a first frame (None: no such message).
        self._msg_validator: Utf8Validator | None = None
        # early_compressed_text: the payload bytes of the incomplete compressed text frame
        # at the head of ``_buf`` already handed out as an OP_EARLY frame.
        self._cz_done = 0
        # The run of continuation frames the current call merges into one (see _parse_one):
        # the position after the frame it goes into (0: none), and its payload so far.
        self._co_at = 0
        self._co_run: bytearray | None = None
        #: Frames the last feed / buffer_updated / recv_from call parsed (merged ones
        #: included): the I/O layers' measure of the work one read brought (fairness).
        self.last_frames = 0

    @property
    def expect_mask(self) -> bool:
        """True on a server (client frames must be masked), False on a client."""
        return self._expect_mask

    @expect_mask.setter
    def expect_mask(self, value: bool) -> None:
        self._expect_mask = bool(value)  # (a bint in the Cython twin)

    @property
    def max_size(self) -> int | None:
        """Largest uncompressed message in bytes; None means no limit."""
        return self._max_size

    @max_size.setter
    def max_size(self, value: int | None) -> None:
        self._max_size = _limit(value)

    @property
    def compressed_max_size(self) -> int | None:
        """Limit on the compressed bytes of an RSV1 message (None: ``max_size`` applies)."""
        return self._compressed_max_size

    @compressed_max_size.setter
    def compressed_max_size(self, value: int | None) -> None:
        self._compressed_max_size = _limit(value)

    @property
    def buffered(self) -> int:
        """Number of bytes received but not yet returned as frames."""
        return len(self._buf)

    @property
    def in_message(self) -> bool:
        """True while a fragmented message is open (its last frame not yet received)."""
        return self._frag_opcode != 0

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Return a writable buffer for the next read (``recv_into`` / ``BufferedProtocol``)."""
        scratch = getattr(_READ_BUFFERS, "buffer", None)
        if scratch is not None:
            try:
                scratch.append(0)  # a bytearray can change size only while no view of it is alive
            except BufferError:  # someone still holds a view from an earlier read: leave it that
                scratch = None
            else:
                del scratch[-1]
        if scratch is None:
            scratch = _READ_BUFFERS.buffer = bytearray(_READ_SIZE)
        self._scratch = scratch
        if self.last_frames > _FAIR_FRAMES:  # the last read was a flood of tiny frames
            self._room = _FAIR_READ
            return memoryview(scratch)[:_FAIR_READ]
        self._room = len(scratch)
        return memoryview(scratch)

    def buffer_updated(self, nbytes: int) -> list[Frame]:
        """Parse the ``nbytes`` just written into the buffer from ``get_buffer``."""
        scratch = self._scratch
        if scratch is None or not 0 <= nbytes <= self._room:
            raise ValueError("nbytes out of range")
        return self.feed(memoryview(scratch)[:nbytes])  # (feed: the buffer no longer counts)

    def recv_from(self, sock: object, flags: int = 0) -> list[Frame] | bytes | str | None:
        """Read once from the plain socket ``sock`` (or its descriptor) into the receive
        buffer and parse what arrived (the socket's own timeout does not apply).

        Returns None at the end of the stream; the payload itself (bytes for binary, str for
        text, which needs ``decode_text``) when the read completed exactly one whole
        uncompressed data message, not part of a fragmented one; otherwise the list of frames
        completed (possibly empty).

        Raises:
            OSError: as ``socket.recv_into`` does (BlockingIOError: nothing to read with
                ``MSG_DONTWAIT``). The GIL is released while reading.
        """
        fd = _fileno(sock)
        if flags != 0 and flags != _MSG_DONTWAIT:
            raise ValueError("flags must be 0 or socket.MSG_DONTWAIT")
        if not hasattr(os, "readv"):  # pragma: no cover - Windows
            raise OSError(_errno.ENOSYS, os.strerror(_errno.ENOSYS))
        # Wait (or, with MSG_DONTWAIT, look) until there is something to read before taking a
        # read buffer: a blocking reader waits with none, so a thread per idle connection
        # holds no 128 KiB (one reader per parser: what is readable now is still there next).
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if not poller.poll(0 if flags & _MSG_DONTWAIT else None):
            raise BlockingIOError(_errno.EAGAIN, os.strerror(_errno.EAGAIN))
        try:
            scratch = _RECV_POOL.pop()
        except IndexError:
            scratch = bytearray(_READ_SIZE)
        view = memoryview(scratch)
        try:
            n = os.readv(fd, [view if self.last_frames <= _FAIR_FRAMES else view[:_FAIR_READ]])
            if n == 0:
                return None
            part = view[:n]
            try:
                frames = self.feed(part)  # copies what it keeps
            finally:
                part.release()
        finally:
            view.release()
            if len(_RECV_POOL) < _RECV_POOL_MAX:
                _RECV_POOL.append(scratch)
        if len(frames) == 1 and self.error is None:
            opcode, fin, rsv1, payload = frames[0]
            if fin is True and rsv1 is False and (opcode == 2 or (opcode == 1 and self.decode_text)):
                return payload
        return frames

    def feed(self, data: BytesLike) -> list[Frame]:
        """Add bytes from the peer and return every frame they complete, in order."""
        self.last_frames = 0
        self._room = 0  # a buffer from get_buffer before this call no longer counts
        if self.error is not None:
            return []
        buf = self._buf
        try:
            buf += data
        except TypeError:
            if type(data) is memoryview and not data.c_contiguous:
                raise BufferError(_NOT_CONTIGUOUS) from None
            raise
        frames: list[Frame] = []
        pos = 0
        end = len(buf)
        try:
            while end - pos >= 2:
                consumed = self._parse_one(buf, pos, end, frames)
                if consumed == 0:
                    break
                pos += consumed
            if pos:
                del buf[:pos]
            self._co_end(frames, False)
            # speed: only a call that ends inside a text frame pays for the early check.
            if len(buf) > 2:
                kind = buf[0] & 0x4F
                if self.decode_text and (kind == 1 or (kind == 0 and self._msg_validator is not None)):
                    self._check_partial_text(buf)
                elif self.early_compressed_text and (
                    kind == 0x41 or (kind == 0 and self._frag_opcode == 1 and self._frag_compressed)
                ):
                    self._early_compressed(buf, frames)
        except ProtocolError as exc:
            self._co_end(frames, False)
            self.error = detached(exc)
            self._buf = bytearray()
            return frames
        return frames

    def _co_end(self, frames: list[Frame], fin: bool) -> None:
        """Close the run of continuation frames merged into ``frames[-1]`` (see ``_parse_one``)."""
        run = self._co_run
        self._co_run = None
        self._co_at = 0
        if run is not None:
            frames[-1] = (0, fin, False, bytes(run))

    def _early_compressed(self, buf: bytearray, frames: list[Frame]) -> None:
        """Hand out the new payload bytes of the incomplete compressed text frame ``buf`` holds.

        With ``early_compressed_text``, a call that ends inside a compressed text frame (a
        text message's first frame with RSV1, or a continuation of such a message) appends
        ``(OP_EARLY, False, True, chunk)``: the frame's next unmasked payload bytes, each
        byte once, so that the caller can inflate them and check the text as it arrives.
        The complete frame is still returned whole; the bytes handed out early are its first.
        """
        got, chunk = _partial_payload(buf, self._cz_done)
        if chunk is not None:
            self._cz_done = got
            frames.append((OP_EARLY, False, True, chunk))

    def _check_partial_text(self, buf: bytearray) -> None:
        """Validate the new payload bytes of the incomplete text frame ``buf`` holds (fail fast).

        The frame's header has been checked already; the bytes checked by earlier calls are
        not looked at again (the validator keeps the code point they ended in).
        """
        validator = self._text_validator
        got, new = _partial_payload(buf, self._text_checked if validator is not None else 0)
        if new is None:
            return
        if validator is None:
            # A continuation frame goes on from where the message's previous frame ended.
            validator = self._msg_validator if buf[0] & 0x0F == 0 else None
            if validator is None:
                validator = Utf8Validator()
            self._text_validator = validator
        self._text_checked = got
        if not validator.feed(new):
            raise ProtocolError("invalid UTF-8 in text message", 1007)

    def _parse_one(self, buf: bytearray, pos: int, end: int, frames: list[Frame]) -> int:
        """Parse the frame at ``pos``; append it and return its length, or 0 if incomplete."""
        b0 = buf[pos]
        b1 = buf[pos + 1]
        fin = bool(b0 & 0x80)
        rsv1 = bool(b0 & 0x40)
        opcode = b0 & 0x0F
        masked = bool(b1 & 0x80)
        length = b1 & 0x7F
        self._check_header(b0, opcode, fin, rsv1, masked, length)
        hdr = 2
        if length == 126:
            if end - pos < 4:
                return 0
            length = (buf[pos + 2] << 8) | buf[pos + 3]
            if length < 126:
                raise ProtocolError("frame length not in its minimal form", 1002)
            hdr = 4
        elif length == 127:
            if end - pos < 10:
                return 0
            length = _from_bytes(buf[pos + 2 : pos + 10], "big")
            if length >> 63:
                raise ProtocolError("frame length has the most significant bit set", 1002)
            if length < 65536:  # RFC 6455 §5.2: "the minimal number of bytes MUST be used"
                raise ProtocolError("frame length not in its minimal form", 1002)
            hdr = 10
        if opcode < 8:
            self._check_size(opcode, rsv1, length)
        if masked:
            hdr += 4
        total = hdr + length
        if end - pos < total:
            return 0
        start = pos + hdr
        if masked:
            payload = apply_mask(memoryview(buf)[start : start + length], buf[start - 4 : start])
        else:
            payload = bytes(buf[start : start + length])
        frame = self._finish(opcode, fin, rsv1, length, payload)
        self.last_frames += 1
        if opcode == 0 and self._co_at and self._co_at == len(frames):
            # The previous frame this call returns is a (non-final) continuation of the same
            # message: one frame for both. A peer sending tiny (or empty) fragments then costs
            # one frame per read, not one per fragment (fairness, as the Cython twin).
            run = self._co_run
            if run is None:
                run = self._co_run = bytearray(frames[-1][3])
            run += frame[3]
            if fin:
                self._co_end(frames, True)
            return total
        if self._co_run is not None:
            self._co_end(frames, False)
        frames.append(frame)
        self._co_at = len(frames) if opcode == 0 and not fin else 0
        return total

    def _check_header(self, b0: int, opcode: int, fin: bool, rsv1: bool, masked: bool, length: int) -> None:
        """Apply the rules that the first two bytes of a frame decide (RFC 6455 §5.2)."""
        if b0 & 0x30 or (rsv1 and not self.rsv1_allowed):
            raise ProtocolError("reserved bits must be 0", 1002)
        if opcode >= 8:
            if opcode > 10:
                raise ProtocolError(f"reserved opcode {opcode:#x}", 1002)
            if not fin:
                raise ProtocolError("fragmented control frame", 1002)
            if length > 125:
                raise ProtocolError("control frame too long: at most 125 bytes, in the 7-bit length field", 1002)
            if rsv1:
                raise ProtocolError("reserved bits must be 0", 1002)
        elif opcode == 0:
            if not self._frag_opcode:
                raise ProtocolError("unexpected continuation frame", 1002)
            if rsv1:
                raise ProtocolError("RSV1 set on a continuation frame", 1002)
        elif opcode <= 2:
            if self._frag_opcode:
                raise ProtocolError("expected a continuation frame", 1002)
        else:
            raise ProtocolError(f"reserved opcode {opcode:#x}", 1002)
        if masked != self._expect_mask:
            raise ProtocolError(
                "incorrect masking: client frames must be masked"
                if self._expect_mask
                else "incorrect masking: server frames must not be masked",
                1002,
            )

    def _check_size(self, opcode: int, rsv1: bool, length: int) -> None:
        """Refuse a data frame that would take its message past the limit (close code 1009)."""
        compressed = rsv1 if opcode else self._frag_compressed
        limit = self._max_size
        if compressed and self._compressed_max_size is not None:
            limit = self._compressed_max_size
        if limit is not None:
            # A compressed message is inflated frame by frame (the decompressor bounds the
            # inflated total by max_size), so its compressed bytes are bounded per frame.
            size = length + (self._msg_size if opcode == 0 and not compressed else 0)
            if size > limit:
                raise PayloadTooBig(f"message too big: {size} bytes > {limit} bytes")

    def _finish(self, opcode: int, fin: bool, rsv1: bool, length: int, payload: bytes) -> Frame:
        """Update the fragmentation state and build the frame tuple."""
        if (opcode == 0 and self._msg_validator is not None) or (
            opcode == 1 and not fin and not rsv1 and self.decode_text
        ):
            try:
                self._text_fragment(opcode, fin, payload)
            except ProtocolError:
                self.last_frames += 1  # a fragment counts before its check (as the Cython twin)
                raise
        if self._text_validator is not None:
            # The frame the early UTF-8 check was following (always the next to complete) is done.
            self._text_validator = None
            self._text_checked = 0
        self._cz_done = 0
        if opcode == 0:
            if fin:
                self._frag_opcode = 0
                self._msg_size = 0
            else:
                self._msg_size += length
        elif opcode < 8:
            if fin:
                if opcode == 1 and not rsv1 and self.decode_text:
                    try:
                        return (1, True, False, payload.decode("utf-8"))
                    except UnicodeDecodeError:
                        raise ProtocolError("invalid UTF-8 in text message", 1007) from None
            else:
                self._frag_opcode = opcode
                self._frag_compressed = rsv1
                self._msg_size = length
        return (opcode, fin, rsv1, payload)

    def _text_fragment(self, opcode: int, fin: bool, payload: bytes) -> None:
        """A frame of an uncompressed fragmented text message is complete: validate the bytes
        the early check has not seen (all of them if it saw none) and carry the state over to
        the next frame; on the last one a truncated code point is an error too."""
        validator = self._text_validator
        done = self._text_checked
        if validator is None:
            validator = self._msg_validator if opcode == 0 else None
            if validator is None:
                validator = Utf8Validator()
            done = 0
        self._msg_validator = None
        if not validator.feed(payload[done:] if done else payload, fin):
            raise ProtocolError("invalid UTF-8 in text message", 1007)
        if not fin:
            self._msg_validator = validator


def _partial_payload(buf: bytearray, done: int) -> tuple[int, BytesLike | None]:
    """For the incomplete frame ``buf`` starts with (its header checked): how many payload
    bytes it holds, and those past the first ``done``, unmasked (None when there are none)."""
    b1 = buf[1]
    hdr = 2 if b1 & 0x7F < 126 else 4 if b1 & 0x7F == 126 else 10
    if b1 & 0x80:
        hdr += 4
    got = len(buf) - hdr
    if got <= done:
        return got, None
    if b1 & 0x80:
        key = bytes(buf[hdr - 4 : hdr])
        phase = done & 3
        return got, apply_mask(memoryview(buf)[hdr + done :], key[phase:] + key[:phase])
    return got, bytes(buf[hdr + done :])


def build_frame(
    opcode: int,
    payload: Union[str, BytesLike],
    fin: bool = True,
    rsv1: bool = False,
    mask: BytesLike | None = None,
) -> bytes:
    """Build one frame: header and (masked, when ``mask`` is given) payload in one bytes object.

    ``payload`` may be ``str`` (encoded as UTF-8) or any bytes-like object.

    Raises:
        TypeError: when ``payload`` is neither str nor bytes-like.
        ValueError: when ``opcode`` is not 0..15 or ``mask`` is not 4 bytes.
    """
    if type(payload) is str:
        data: BytesLike = payload.encode("utf-8")  # type: ignore[union-attr]
    elif isinstance(payload, str):
        data = str(payload).encode("utf-8")
    else:
        data = memoryview(payload)  # type: ignore[arg-type]
        if not data.c_contiguous:
            raise BufferError(_NOT_CONTIGUOUS)
    if not 0 <= opcode <= 15:
        raise ValueError("opcode must be between 0 and 15")
    n = len(data) if type(data) is bytes else data.nbytes  # type: ignore[union-attr]
    b0 = opcode | (0x80 if fin else 0) | (0x40 if rsv1 else 0)
    mbit = 0x80 if mask is not None else 0
    if n < 126:
        header = _pack_2(b0, mbit | n)
    elif n < 65536:
        header = _pack_4(b0, mbit | 126, n)
    else:
        header = _pack_10(b0, mbit | 127, n)
    if mask is None:
        return header + data
    key = _mask_key(mask)
    return header + key + apply_mask(data, key)



_MASK_POOL: list = []
_mask_pop = _MASK_POOL.pop


def next_mask() -> bytes:
    """A fresh 4-byte masking key from ``os.urandom`` (RFC 6455 §5.3); each key is used once.

    Speed: one getrandom() call per 256 keys, and a key is one ``list.pop()`` (~40 ns here,
    against ~130 ns to slice it from a per-connection pool). A forked child starts with an
    empty pool (``os.register_at_fork``), never with its parent's keys.
    """
    try:
        return _mask_pop()
    except IndexError:
        pool = os.urandom(1024)
        _MASK_POOL.extend([pool[i : i + 4] for i in range(4, 1024, 4)])
        return pool[:4]  # not popped: other threads may drain the pool meanwhile


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_MASK_POOL.clear)


_PENDING, _RESULT, _EXCEPTION, _CANCELLED = 0, 1, 2, 3
_asyncio_names: list = []  # [current_task, CancelledError, InvalidStateError], on first use


def _asyncio() -> list:
    if not _asyncio_names:  # lazily: the blocking API never imports asyncio
        import asyncio

        _asyncio_names.extend((asyncio.current_task, asyncio.CancelledError, asyncio.InvalidStateError))
    return _asyncio_names


class Waiter:
    """A future-like object (``asyncio.isfuture`` is true) that can resume its task inline.

    An asyncio task that awaits a future registers its wake-up with ``add_done_callback``;
    a plain ``asyncio.Future`` always schedules that wake-up with ``loop.call_soon``, so the
    task runs on the next loop iteration. A ``Waiter`` keeps the first callback (the awaiting
    task's wake-up) aside: ``set_result``, ``set_exception`` and ``cancel`` behave exactly like
    a future's (every callback scheduled through the loop), while ``resolve(result)`` followed
    by ``wake_now()`` — meant for protocol callbacks — runs the task's next step right away
    when no task is running on the loop (else it is scheduled as usual). The task, its
    context, ``current_task()`` and cancellation are untouched: only the trip through the
    loop is skipped.
    """

    __slots__ = ("_asyncio_future_blocking", "_loop", "_state", "_value", "_wake", "_wake_ctx", "_callbacks")

    def __init__(self, loop: object) -> None:
        self._asyncio_future_blocking = False
        self._loop = loop
        self._state = _PENDING
        self._value: object = None  # the result, the exception or the cancel message
        self._wake: object = None
        self._wake_ctx: object = None
        self._callbacks: list | None = None

    def __repr__(self) -> str:
        state = ("pending", "finished", "failed", "cancelled")[self._state]
        return f"<Waiter {state}>"

    def get_loop(self) -> object:
        """The event loop this waiter belongs to."""
        return self._loop

    def done(self) -> bool:
        """True once a result, an exception or a cancellation is set."""
        return self._state != _PENDING

    def cancelled(self) -> bool:
        """True if cancelled."""
        return self._state == _CANCELLED

    def result(self) -> object:
        """The result; raises the exception, ``CancelledError``, or ``InvalidStateError`` if pending."""
        state = self._state
        if state == _RESULT:
            return self._value
        if state == _EXCEPTION:
            raise self._value  # type: ignore[misc]
        names = _asyncio()
        if state == _CANCELLED:
            raise names[1]() if self._value is None else names[1](self._value)
        raise names[2]("Result is not ready.")

    def exception(self) -> object:
        """The exception (None after a result); ``CancelledError`` / ``InvalidStateError`` as ``result``."""
        state = self._state
        if state == _RESULT:
            return None
        if state == _EXCEPTION:
            return self._value
        names = _asyncio()
        if state == _CANCELLED:
            raise names[1]() if self._value is None else names[1](self._value)
        raise names[2]("Exception is not set.")

    def add_done_callback(self, fn: object, *, context: object = None) -> None:
        """Call ``fn(self)`` once done (through the loop); the first one may be run by ``wake_now``."""
        if self._state != _PENDING:
            self._loop.call_soon(fn, self, context=context)  # type: ignore[attr-defined]
        elif self._wake is None:
            self._wake = fn
            self._wake_ctx = context
        else:
            if self._callbacks is None:
                self._callbacks = []
            self._callbacks.append((fn, context))

    def remove_done_callback(self, fn: object) -> int:
        """Remove every registration of ``fn``; returns how many were removed."""
        n = 0
        if self._wake is not None and self._wake == fn:
            self._wake = self._wake_ctx = None
            n = 1
        if self._callbacks:
            kept = [(f, c) for f, c in self._callbacks if f != fn]
            n += len(self._callbacks) - len(kept)
            self._callbacks = kept
        return n

    def _complete(self, state: int, value: object) -> None:
        if self._state != _PENDING:
            raise _asyncio()[2]("invalid state")
        self._state = state
        self._value = value
        callbacks = self._callbacks
        if callbacks:
            self._callbacks = None
            call_soon = self._loop.call_soon  # type: ignore[attr-defined]
            for fn, ctx in callbacks:
                call_soon(fn, self, context=ctx)

    def _schedule_wake(self) -> None:
        fn = self._wake
        if fn is not None:
            ctx = self._wake_ctx
            self._wake = self._wake_ctx = None
            self._loop.call_soon(fn, self, context=ctx)  # type: ignore[attr-defined]

    def set_result(self, result: object) -> None:
        """Complete with ``result``; every callback goes through the loop."""
        self._complete(_RESULT, result)
        self._schedule_wake()

    def set_exception(self, exception: object) -> None:
        """Complete with ``exception`` (a class is instantiated); every callback goes through the loop."""
        if isinstance(exception, type):
            exception = exception()
        if not isinstance(exception, BaseException):
            raise TypeError("invalid exception object")
        if isinstance(exception, StopIteration):
            raise TypeError("StopIteration interacts badly with generators and cannot be raised into a Future")
        self._complete(_EXCEPTION, exception)
        self._schedule_wake()

    def cancel(self, msg: object = None) -> bool:
        """Cancel (False if already done); every callback goes through the loop."""
        if self._state != _PENDING:
            return False
        self._complete(_CANCELLED, msg)
        self._schedule_wake()
        return True

    def resolve(self, result: object) -> None:
        """Complete with ``result`` but keep the awaiting task's wake-up for ``wake_now()``."""
        self._complete(_RESULT, result)

    def wake_now(self) -> None:
        """After ``resolve``: resume the awaiting task here if no task is running, else via the loop."""
        fn = self._wake
        if fn is None or self._state == _PENDING:
            return
        loop = self._loop
        ctx = self._wake_ctx
        self._wake = self._wake_ctx = None
        if _asyncio()[0](loop) is not None:  # never run a task inside another one
            loop.call_soon(fn, self, context=ctx)  # type: ignore[attr-defined]
        elif ctx is None:
            fn(self)  # type: ignore[operator]
        else:
            ctx.run(fn, self)  # type: ignore[attr-defined]

    def __await__(self):  # type: ignore[no-untyped-def]
        """Suspend until done, then return the result (or raise)."""
        if self._state == _PENDING:
            self._asyncio_future_blocking = True
            yield self
        return self.result()

    __iter__ = __await__


_MSG_DONTWAIT: int = getattr(_socket, "MSG_DONTWAIT", 0)
_WRITEV: bool = hasattr(os, "writev")
_WM_STACK = 2048  # the Cython twin builds frames up to this size on the C stack
_WM_SPLIT = 65536  # unmasked payloads from this size go out after their header (no copy)


_state_closed: list = []  # [State.CLOSED], on first use (the protocol module imports this one)


def _closed_state() -> Any:
    if not _state_closed:
        from .protocol import State

        _state_closed.append(State.CLOSED)
    return _state_closed[0]


def _timeout_waiter(waiter: Any) -> None:
    """recv(timeout=)'s timer: fail the waiter with TimeoutError unless it is done."""
    if not waiter.done():
        waiter.set_exception(TimeoutError("no message received in time"))


class AsyncCore:
    """The receive path of an asyncio connection: ``get_buffer`` and ``buffer_updated``.

    ``kn_sock.asyncio.connection.AsyncWebSocket`` (a ``BufferedProtocol``) inherits them, so
    with the Cython twin the event loop's two calls per read are C calls. Until the handshake
    is done (``_parser`` is None) bytes go to ``_handshake.data_received(self, data)``; then to
    the parser: one whole data message read alone, with nothing queued (``_messages``), goes
    to the ``_on_message`` callback when one is set (an exception it raises goes to
    ``self._callback_failed``), else to a waiting ``recv()`` (``_waiter``), whose task runs at
    once (``Waiter.wake_now``) — a compressed one inflated by ``Protocol.receive_compressed``
    when ``Protocol.can_take_compressed()`` — and anything else goes to
    ``self._dispatch(protocol.receive_frames(...))``.
    ``_open`` is the protocol's OPEN state, set by the subclass.
    """

    __slots__ = (
        "_parser", "_waiter", "_messages", "protocol", "_hs_buf", "_handshake", "_open", "transport", "_cork", "_fd",
        "_on_message", "_tx_idle", "_loop", "_closed_fut", "_paused_reading", "_write_paused", "_unyielded",
    )

    def __init__(self) -> None:
        self._on_message: Any = None
        self._tx_idle = False  # the transport holds nothing (the Cython twin's direct writes)
        self._unyielded = 0  # sends done without suspending since the task last did (_SEND_YIELD_EVERY)
        self._fd = -1  # the plain socket's descriptor (the Cython twin writes small frames to it)
        self.transport: Any = None
        self._cork: Any = None
        self._parser: Any = None
        self._waiter: Any = None
        self._messages: Any = None
        self.protocol: Any = None
        self._hs_buf: Any = None
        self._handshake: Any = None
        self._open: Any = None
        self._loop: Any = None
        self._closed_fut: Any = None
        self._paused_reading = False  # by max_queue: the application is not reading
        self._write_paused = False  # the transport's buffer is above write_limit

    def get_buffer(self, sizehint: int) -> Any:
        """Where the loop writes the next bytes: the parser's buffer once open."""
        parser = self._parser
        if parser is not None:
            return parser.get_buffer(sizehint)
        if self._hs_buf is None:
            # A memoryview, not the bytearray: a transport may fill it piecewise through
            # slices (asyncio's TLS reads more records into buf[offset:]), and a slice of a
            # bytearray is a copy, where a slice of a view writes through.
            self._hs_buf = memoryview(bytearray(16384))
        return self._hs_buf

    def buffer_updated(self, nbytes: int) -> None:
        """Parse what arrived and dispatch it."""
        parser = self._parser
        if parser is None:
            data = bytes(self._hs_buf[:nbytes])
            if self._handshake is not None:
                self._handshake.data_received(self, data)
            return
        frames = parser.buffer_updated(nbytes)
        if parser.last_frames > _FAIR_FRAMES:
            self._yield_reading()  # type: ignore[attr-defined]
        if frames:
            if len(frames) == 1 and parser.error is None:
                opcode, fin, rsv1, payload = frames[0]
                if fin and (opcode == 2 or opcode == 1) and not self._messages and self.protocol.state is self._open:
                    if rsv1:
                        # Compressed: inflated here too, unless a message is in progress or
                        # frames wait in the protocol's backlog (Protocol.can_take_compressed).
                        proto = self.protocol
                        if not proto.can_take_compressed():
                            self._dispatch(proto.receive_frames(frames))  # type: ignore[attr-defined]
                            return
                        payload = proto.receive_compressed(opcode, payload)
                        if type(payload) is list:  # it failed the connection: the events
                            self._dispatch(payload)  # type: ignore[attr-defined]
                            return
                    callback = self._on_message
                    if callback is not None:
                        try:
                            callback(payload)
                        except (KeyboardInterrupt, SystemExit):
                            raise
                        except BaseException as exc:  # CancelledError too (see AsyncWebSocket._feed_callback)
                            self._callback_failed(exc)  # type: ignore[attr-defined]
                        return
                    waiter = self._waiter
                    if waiter is not None and not waiter.done():
                        self._waiter = None
                        waiter.resolve(payload)
                        waiter.wake_now()
                        return
                    if rsv1:
                        self._dispatch([payload])  # type: ignore[attr-defined]
                        return
            if parser.error is None:
                self._dispatch(self.protocol.receive_frames(frames))  # type: ignore[attr-defined]
            else:  # the frames before the error reach the application first
                self._dispatch_then_fail(frames)  # type: ignore[attr-defined]
        elif parser.error is not None:
            self._dispatch(self.protocol.receive_frames(frames))  # type: ignore[attr-defined]

    def _on_readable(self) -> None:
        """The event loop's read callback for a plain socket (``_fd``) once the connection is
        open, registered by the connection in place of the transport's: read, then
        ``buffer_updated``; the end of the stream and errors go to the transport as its own
        read would (``_read_ready__on_eof``, ``_fatal_error``)."""
        transport = self.transport
        parser = self._parser
        if transport is None or parser is None or self._fd < 0:
            return
        try:
            nbytes = os.readv(self._fd, [parser.get_buffer(-1)])
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            transport._fatal_error(exc, "Fatal read error on socket transport")
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            transport._fatal_error(exc, "Fatal error: protocol.buffer_updated() call failed.")
            return
        if not nbytes:
            transport._read_ready__on_eof()
            return
        try:
            self.buffer_updated(nbytes)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            transport._fatal_error(exc, "Fatal error: protocol.buffer_updated() call failed.")

    def _send_now(self, message: object) -> bool:
        """Write a whole str/bytes message as one frame, if nothing stands in the way (the
        connection open, no fragmented message being sent, no frames held back in ``_cork``,
        no received message queued); True if written, False to take ``send()``'s general path
        (which also raises every error). With permessage-deflate the frame is the one
        ``Protocol.send`` makes (``compress_message``). A large (64 KiB) unmasked uncompressed
        frame goes as its header and the message's own bytes: one ``writev`` on an idle plain
        socket, the rest through the transport."""
        t = type(message)
        if (t is not bytes and t is not str) or self._cork is not None or self._messages:
            return False
        proto = self.protocol
        transport = self.transport
        if (
            proto is None
            or transport is None
            or proto.state is not self._open
            or proto._send_frag_open
            or transport.is_closing()  # lost: send()'s general path lets the loop report it
        ):
            return False
        data = message.encode("utf-8") if t is str else message  # type: ignore[attr-defined]
        masks = proto._masks
        if proto.deflate is not None:
            # As Protocol.send frames it: deflated with RSV1, or as it is when incompressible.
            payload = proto.deflate.compress_message(data)
            rsv1 = payload is not None
            frame = build_frame(1 if t is str else 2, payload if rsv1 else data, True, rsv1, masks() if masks is not None else None)  # type: ignore[arg-type]
            self._twrite(memoryview(frame) if len(frame) > 65536 else frame)
            return True
        size = len(data)  # type: ignore[arg-type]
        if masks is None and size >= _WM_SPLIT:
            header = _pack_10(0x81 if t is str else 0x82, 127, size)
            n = 0
            if self._fd >= 0 and _WRITEV and not transport.get_write_buffer_size():
                try:
                    n = os.writev(self._fd, (header, data))  # type: ignore[arg-type]
                except OSError:  # would block, or failed: the transport finds out
                    n = 0
                if n == 10 + size:
                    return True
            if n < 10:
                self._twrite(header[n:])
                n = 10
            self._twrite(memoryview(data)[n - 10 :] if n > 10 else data)  # type: ignore[arg-type]
            return True
        self._twrite(build_frame(1 if t is str else 2, data, True, False, masks() if masks is not None else None))  # type: ignore[arg-type, attr-defined]
        return True

    # ------------------------------------------------------------ the coroutine API's hot calls

    async def send(self, message: Message, compress: bool | None = None) -> None:
        """Send a message: str → text, bytes-like → binary, (async) iterable → fragmented.

        Raises:
            ConnectionClosed: the connection is closing or closed.
            TypeError: a message of another type.
        """
        if compress is None and self._send_now(message):  # speed: a whole message, now
            if self.protocol.deflate is not None:
                # Deflating is the costly part: it weighs towards the yield (as in _send_slow).
                self._unyielded += len(message) // _DEFLATE_YIELD_UNIT  # type: ignore[arg-type]
            if self._write_paused:
                await self._drain()  # type: ignore[attr-defined]
            else:
                self._unyielded += 1
                if self._unyielded >= _SEND_YIELD_EVERY:
                    await self._yield_to_loop()  # type: ignore[attr-defined]
            return
        await self._send_slow(message, compress)  # type: ignore[attr-defined]

    async def recv(self, timeout: float | None = None) -> Any:
        """Return the next message (str or bytes), or None once the connection is closed.

        Raises:
            TimeoutError: no message within ``timeout`` seconds (the connection stays usable).
            InvalidState: another coroutine is already waiting in ``recv``, or messages go to
                an ``on_message`` callback.
            ValueError / TypeError: ``timeout`` is NaN / not a number.
        """
        if timeout is not None:
            timeout = checked_timeout(timeout)  # (first: a bad one raises, a message queued or not)
        msg = self._take_queued()
        if msg is not None:
            return msg
        waiter = self._new_waiter()
        if waiter is None:
            return None
        handle = self._loop.call_later(timeout, _timeout_waiter, waiter) if timeout is not None else None
        try:
            return await waiter
        except BaseException:  # cancelled (or closed): a message handed over must not be lost
            self._recv_cancelled(waiter)
            raise
        finally:
            if handle is not None:
                handle.cancel()
            if self._waiter is waiter:
                self._waiter = None

    def __aiter__(self) -> Any:
        """``async for message in ws`` yields messages until the connection closes."""
        return self

    async def __anext__(self) -> Any:
        """The next message; StopAsyncIteration once the connection is closed."""
        msg = await self.recv()
        if msg is None:
            raise StopAsyncIteration
        return msg

    def _take_queued(self) -> Any:
        """The oldest queued message (reading resumes once the queue has drained), or None."""
        messages = self._messages
        if not messages:
            return None
        msg = messages.popleft()
        if self._paused_reading:
            self._maybe_resume()  # type: ignore[attr-defined]
        return msg

    def _new_waiter(self) -> Waiter | None:
        """recv() found nothing queued: the waiter to await, or None once the connection is closed."""
        proto = self.protocol
        if self._closed_fut.done() or proto is None or proto.state is _closed_state():
            return None
        w = self._waiter
        if w is not None and not w.done() and (w._wake is not None or w._callbacks):
            # (A pending waiter with no wake-up registered is one nobody waits on: a recv()
            # stepped by hand and dropped. The next recv() takes its place.)
            raise InvalidState("recv() is already being awaited by another task")
        if self._on_message is not None:
            raise InvalidState("messages go to the on_message callback, not to recv()")
        waiter = self._waiter = Waiter(self._loop)
        self._unyielded = 0  # the task suspends here
        return waiter

    def _recv_cancelled(self, waiter: Waiter) -> None:
        """recv() cancelled: a message handed over just before must not be lost."""
        if waiter._state == _RESULT and waiter._value is not None:
            if self._messages is None:
                self._messages = collections.deque()
            self._messages.appendleft(waiter._value)

    def send_nowait(self, message: Data, compress: bool | None = None) -> None:
        """Send one whole message (str or bytes-like) now, without waiting for the peer to read.

        For ``on_message`` callbacks, which cannot await: the frame goes to the socket or, what
        the kernel does not take, to the transport's buffer. While an ``on_message`` callback
        is set, reading pauses whenever that buffer passes ``write_limit``, so answering from
        the callback stays bounded; code sending in a loop outside it should ``await drain()``.

        Raises:
            ConnectionClosed: the connection is closing or closed.
            InvalidState: not open yet, or another task is sending a fragmented message.
            TypeError: not a str or bytes-like object.
        """
        if compress is None and self._send_now(message):
            return
        self._send_nowait_slow(message, compress)  # type: ignore[attr-defined]

    def _twrite(self, data: Any) -> None:
        """``transport.write(data)``: every write to the transport goes here, so the Cython
        twin knows when the transport may hold bytes its direct writes must not overtake."""
        self._tx_idle = False
        self.transport.write(data)


def send_many(fds: list, data: BytesLike) -> list:
    """Write ``data`` once to each non-blocking socket in ``fds`` (the Cython twin: GIL released).

    Returns, per descriptor, the number of bytes the kernel took or ``-errno`` (never raises
    for a socket error: the caller hands what is left to the socket's owner). A descriptor
    that is not a socket gives ``-ENOTSOCK``. The sockets must be non-blocking: the Cython
    twin's send(MSG_DONTWAIT) never waits, this twin's write() would on a blocking one.
    """
    view = memoryview(data)
    fds = [_index(fd) for fd in fds]
    out = []
    for fd in fds:
        if os.name != "posix":  # pragma: no cover - Windows
            out.append(-_errno.ENOSYS)
            continue
        if fd > 2**31 - 1:  # no such descriptor (os.fstat would raise OverflowError)
            out.append(-_errno.EBADF)
            continue
        try:
            if not _stat.S_ISSOCK(os.fstat(fd).st_mode):
                out.append(-_errno.ENOTSOCK)
                continue
            out.append(os.write(fd, view))
        except OSError as exc:
            out.append(-(exc.errno or _errno.EIO))
    return out


def write_message(sock: Any, message: Union[str, bytes], masked: bool) -> list | None:
    """Frame the whole str or bytes ``message`` (masked with a fresh key from ``next_mask``
    when ``masked``) and write what the plain socket ``sock`` takes now, without waiting.

    An unmasked payload of 64 KiB or more is written after its header in the same call,
    without being copied.

    Returns:
        None when all of the frame went; otherwise the list of bytes-like objects left to
        write, in order.

    Raises:
        TypeError: ``message`` is not exactly str or bytes.
        OSError: as ``socket.send`` does, except for would-block (nothing written then).
    """
    t = type(message)
    if t is str:
        op, data = 0x81, message.encode("utf-8")  # type: ignore[union-attr]
    elif t is bytes:
        op, data = 0x82, message
    else:
        raise TypeError(f"message must be str or bytes, not {t.__name__}")
    n = len(data)
    if not masked and n >= _WM_SPLIT:
        header = _pack_10(op, 127, n)
        try:
            sent = sock.sendmsg((header, data), (), _MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        if sent == 10 + n:
            return None
        if sent < 10:
            return [header[sent:], data]
        return [memoryview(data)[sent - 10 :]] if t is bytes else [data[sent - 10 :]]  # type: ignore[index]
    frame = build_frame(op & 0x0F, data, mask=next_mask() if masked else None)
    try:
        sent = sock.send(frame, _MSG_DONTWAIT)
    except BlockingIOError:
        sent = 0
    if sent == len(frame):
        return None
    if len(frame) <= _WM_STACK:
        return [frame[sent:]]
    return [memoryview(frame)[sent:]] if sent else [frame]


def _fileno(obj: object) -> int:
    """A descriptor from an int or an object's ``fileno()`` (PyObject_AsFileDescriptor's rules)."""
    if isinstance(obj, int):
        fd = int(obj)
    else:
        fileno = getattr(obj, "fileno", None)
        if fileno is None:
            raise TypeError("argument must be an int, or have a fileno() method.")
        fd = fileno()
        if not isinstance(fd, int):
            raise TypeError("fileno() returned a non-integer")
        fd = int(fd)
    if fd > 2**31 - 1 or fd < -(2**31):
        raise OverflowError("Python int too large to convert to C int")
    if fd < 0:
        raise ValueError(f"file descriptor cannot be a negative integer ({fd})")
    return fd


def _index(fd: object) -> int:
    """A descriptor for send_many, with the errors of the Cython twin's conversion to C long long."""
    fd = _operator_index(fd)  # type: ignore[arg-type]
    if fd < 0:
        raise ValueError("file descriptor cannot be a negative integer")
    if fd >= 2**63:
        raise OverflowError("Python int too large to convert to C long")
    return fd
