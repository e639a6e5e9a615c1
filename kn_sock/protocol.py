"""The sans-I/O WebSocket protocol after the opening handshake (RFC 6455 §5-§7, RFC 7692).

Bytes in, events and bytes out; no sockets, threads, asyncio or clocks (time is passed in).
The asyncio and blocking layers drive one ``Protocol`` per connection:

- ``receive_data(data)`` returns the events the bytes complete: a message is the bare
  ``str`` (text) or ``bytes`` (binary) — no wrapper object on the hot path — and the rare
  control events are ``Ping``, ``Pong`` and ``Closed`` instances;
- ``data_to_send()`` returns the frames the protocol produced by itself (pongs, the close
  reply, the close frame that fails the connection);
- ``send_*`` methods return the frame bytes to write at once.

States (RFC 6455 §4.1, §7)::

    OPEN ──send_close──► CLOSING ──peer's close──► CLOSED
      │                                              ▲
      └──peer's close (reply sent)───────────────────┘
    any state ──protocol error / EOF──► CLOSED (fail: close frame sent when possible)

After CLOSED, ``close_transport`` says whether the I/O layer should now close TCP: at once on
the server and after a failure; a client waits for the server to close first (§7.1.1),
bounded by the I/O layer's ``close_timeout``.
"""

from __future__ import annotations

import os
import struct
from enum import IntEnum
from typing import Any, Callable, Iterable, Union

from . import _backend
from .exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidState,
    ProtocolError,
    detached,
)
from .frames import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, build_close, parse_close

__all__ = ["Protocol", "State", "Ping", "Pong", "Closed", "Keepalive", "CLIENT", "SERVER"]

CLIENT, SERVER = "client", "server"
Message = Union[str, bytes]


class State(IntEnum):
    """Connection states."""

    CONNECTING = 0
    OPEN = 1
    CLOSING = 2
    CLOSED = 3


class Ping:
    """The peer sent a ping (already answered with a pong)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Ping({self.data!r})"


class Pong:
    """The peer sent a pong; ``acked`` lists the pings it acknowledges, oldest first, with their tags."""

    __slots__ = ("data", "acked")

    def __init__(self, data: bytes, acked: list[tuple[bytes, Any]]) -> None:
        self.data = data
        self.acked = acked

    def __repr__(self) -> str:
        return f"Pong({self.data!r})"


class Closed:
    """The connection reached CLOSED; ``code`` / ``reason`` are the peer's (1006 if none arrived)."""

    __slots__ = ("code", "reason", "error")

    def __init__(self, code: int, reason: str, error: ProtocolError | None = None) -> None:
        self.code = code
        self.reason = reason
        self.error = error

    def __repr__(self) -> str:
        return f"Closed({self.code}, {self.reason!r})"


_OPEN = State.OPEN


#: Fragments of an incoming message from this size are kept as they are; smaller ones are
#: gathered in a bytearray (at most ~1% of a message in per-fragment overhead either way).
_OWN_PART = 4096
#: Pings read together each get their pong up to this many (Autobahn 2.10 sends 10 at once
#: and expects 10 pongs); past it, only the latest is answered (RFC 6455 §5.5.3).
_PONGS_PER_READ = 32
#: What the I/O layers set ``Protocol.batch_bytes`` to, and their own budget across calls:
#: the bytes of compressed messages inflated per event-loop iteration (asyncio) or per turn
#: of the shared reactor thread (blocking layer) before the rest waits for the next one,
#: that connection's reading paused meanwhile. zlib inflates ~0.4 MiB per ms, so a turn
#: holds its thread a few ms at most (audits 62, 67: one peer's deflated max_size messages
#: held it 0.15-0.5 s per read, every other connection starved).
INFLATE_BUDGET = 1 << 20


class Protocol:
    """One WebSocket connection's state machine, for either side.

    Args:
        side: ``"client"`` or ``"server"``.
        max_size: largest incoming message in bytes (after decompression); None for no limit.
        extensions: negotiated extension objects (at most a ``PerMessageDeflate``).
        backend: the twin to use (``kn_sock._pure`` or ``kn_sock._speedups``); default: the selected one.
        subprotocol: the negotiated subprotocol, kept for the I/O layers.
    """

    __slots__ = (
        "__weakref__", "side", "is_client", "backend", "max_size", "subprotocol", "extensions",
        "deflate", "parser", "_build", "_validator_cls", "_masks", "state", "_out", "_parts",
        "_part_opcode", "_part_compressed", "_validator", "_send_frag_open", "_send_frag_started", "_send_frag_compressed",
        "_send_frag_text", "_early_done", "close_rcvd", "close_sent", "close_rcvd_then_sent", "close_transport", "failed",
        "error", "eof_received", "pings", "hold_pongs", "_held_pong", "_pongs", "batch_room", "batch_bytes",
        "batch_spent", "backlog", "skipped_broadcasts", "lost_cause",
    )  # memory: one connection's state without a per-instance __dict__

    @classmethod
    def after(cls, side: str, hs: Any, opts: Any) -> "Protocol":
        """The protocol of a connection whose opening handshake ``hs`` (a ``ClientHandshake`` or
        ``ServerHandshake``) succeeded, with the connection options ``opts`` (``Options``)."""
        return cls(side, max_size=opts.max_size, extensions=hs.extensions, subprotocol=hs.subprotocol,
                   backend=opts.backend)

    def __init__(
        self,
        side: str,
        *,
        max_size: int | None = 2**20,
        extensions: Iterable[Any] = (),
        backend: Any = None,
        subprotocol: str | None = None,
    ) -> None:
        """Create the protocol in the OPEN state (the handshake is done by client/server)."""
        if side not in (CLIENT, SERVER):
            raise ValueError("side must be 'client' or 'server'")
        self.side = side
        self.is_client = side == CLIENT
        self.backend = backend or _backend.backend
        self.max_size = max_size
        self.subprotocol = subprotocol
        self.extensions = list(extensions)
        self.deflate: Any = None
        for ext in self.extensions:
            if getattr(ext, "name", None) == "permessage-deflate":
                self.deflate = ext
        compressed_max = None
        if self.deflate is not None and max_size is not None:
            from .extensions.permessage_deflate import WORST_CASE_OVERHEAD

            compressed_max = WORST_CASE_OVERHEAD(max_size)
        self.parser = self.backend.FrameParser(
            expect_mask=not self.is_client,
            max_size=max_size,
            compressed_max_size=compressed_max,
            rsv1_allowed=self.deflate is not None,
            # Compressed text is inflated and checked as it arrives (1007 mid-frame).
            early_compressed_text=self.deflate is not None,
        )
        self._build = self.backend.build_frame
        self._validator_cls = self.backend.Utf8Validator
        self._masks = self.backend.next_mask if self.is_client else None
        self.state = State.OPEN
        self._out: list[bytes] = []
        self.skipped_broadcasts = 0  # broadcast(): messages skipped since it last took one (logging)
        self.lost_cause: BaseException | None = None  # why TCP ended before the closing handshake
        # Incoming fragmented message.
        self._parts: list[bytes | bytearray] = []
        self._part_opcode = 0
        self._part_compressed = False
        self._validator: Any = None
        # Payload bytes of the incomplete compressed text frame inflated early (OP_EARLY).
        self._early_done = 0
        # Outgoing fragmented message.
        #: A fragmented message is being sent, or reserved (``begin_fragments``): whole
        #: messages must wait. ``_send_frag_started``: its first fragment is out.
        self._send_frag_open = False
        self._send_frag_started = False
        self._send_frag_text = False
        self._send_frag_compressed = False
        # Closing handshake.
        self.close_rcvd: tuple[int, str] | None = None
        self.close_sent: tuple[int, str] | None = None
        self.close_rcvd_then_sent: bool | None = None
        self.close_transport = False
        #: The connection was failed (RFC 6455 §7.1.7) for the peer's bad input, which it may
        #: still be sending: the I/O layer half-closes and reads until its EOF (bounded by
        #: close_timeout) before closing TCP, so that our close frame is not lost to a reset.
        self.failed = False
        self.error: ProtocolError | None = None
        self.eof_received = False
        # Pings in flight: payload -> tag chosen by the I/O layer (waiter, send time, ...).
        self.pings: dict[bytes, Any] = {}
        #: Set by the I/O layer while the peer is not reading what we write (the transport's
        #: buffer is above write_limit): pings are then answered by one pong, for the latest
        #: (RFC 6455 §5.5.3), held until this is cleared, so a peer that floods pings and
        #: never reads cannot grow our write buffer without bound.
        self.hold_pongs = False
        self._held_pong: bytes | None = None
        self._pongs = 0
        #: Set by an I/O layer that queues messages (asyncio: the room left under
        #: ``max_queue``): with compression, one ``receive_frames`` call produces at most
        #: ``batch_room()`` events; the frames left are kept in ``backlog`` (compressed: small)
        #: and processed first by the next call. One read of highly compressed messages (1 MB
        #: of zeros deflates to ~1 KB) would otherwise inflate ~100 x max_size at once, past
        #: the queue bound (audit).
        self.batch_room: Callable[[], int] | None = None
        #: With ``batch_room`` (and compression): the bytes of messages one ``receive_frames``
        #: call produces before the frames left wait in ``backlog`` too (at least one message
        #: goes through); both I/O layers set ``INFLATE_BUDGET``. None: no such bound.
        self.batch_bytes: int | None = None
        #: The bytes of messages the last bounded call produced (for the I/O layer's own
        #: budget across calls).
        self.batch_spent = 0
        self.backlog: list[Any] | None = None

    # ---------------------------------------------------------------- receiving

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Any]:
        """Feed bytes from the peer; return the messages (str/bytes) and events they complete."""
        if self.state is State.CLOSED or self.close_rcvd is not None:
            return []
        return self.receive_frames(self.parser.feed(data))

    def receive_frames(self, frames: list[Any], hold_error: bool = False) -> list[Any]:
        """Process frames parsed elsewhere (by a parser fed through ``get_buffer``); the
        ``backlog`` a ``batch_room`` left goes first (``receive_frames([])`` processes it).

        ``hold_error``: a parser error that ended the read is not acted on yet (the connection
        stays open), so the I/O layer can hand the messages before it to the application
        first; the next ``receive_frames([])`` fails the connection."""
        if self.state is State.CLOSED or self.close_rcvd is not None:
            self.backlog = None
            return []
        backlog = self.backlog
        if backlog is not None:
            self.backlog = None
            frames = backlog + frames if frames else backlog
        events = self._process(frames) if frames else []
        if self.backlog is not None:
            if self.state is State.CLOSED or self.close_rcvd is not None:
                self.backlog = None  # what followed a close frame (or an error) is dropped
            else:
                return events  # (a parser error comes after the frames still waiting)
        if self.parser.error is not None and self.state is not State.CLOSED and not hold_error:
            self._fail_with(self.parser.error, events)
        return events

    def can_take_compressed(self) -> bool:
        """Whether a whole compressed data frame (FIN, RSV1, text or binary) read alone may go
        to ``receive_compressed`` instead of ``receive_frames``: open, nothing waiting in
        ``backlog``, no message in progress (the I/O layers' fast path)."""
        return (
            self.state is State.OPEN
            and self.deflate is not None
            and self.backlog is None
            and not self._part_opcode
            and not self._early_done
        )

    def receive_compressed(self, opcode: int, payload: Any) -> Any:
        """``receive_frames([(opcode, True, True, payload)])`` when ``can_take_compressed()``:
        the message itself (str or bytes), or, when the frame fails the connection (1002,
        1007, 1009), the list of events ``receive_frames`` would have returned."""
        self._part_compressed = True  # (as _slow_frame leaves it)
        try:
            data = self.deflate.decompress(payload, True, self.max_size)  # type: ignore[union-attr]
            return _decode_text(data) if opcode == OP_TEXT else data
        except ProtocolError as exc:
            events: list[Any] = []
            self._pongs = 0
            self._fail_with(exc, events)
            self.batch_spent = 0
            return events

    def _process(self, frames: list[Any]) -> list[Any]:
        """Turn frames into events; the fast path is one unfragmented uncompressed data frame."""
        room = self.batch_room
        if room is not None and self.deflate is not None:
            return self._process_bounded(frames, room(), self.batch_bytes)
        events: list[Any] = []
        append = events.append
        self._pongs = 0  # pongs this batch owes (see _control_frame)
        for frame in frames:
            opcode, fin, rsv1, payload = frame
            if opcode < 3 and fin and not rsv1 and opcode:
                # Hot path: whole uncompressed message; text already decoded by the parser.
                # (Also in CLOSING: messages the peer sent before our close still arrive,
                # RFC 6455 §7.1.2; the I/O layers bound what they queue while closing.)
                append(payload)
                continue
            try:
                self._slow_frame(opcode, fin, rsv1, payload, events)
            except ProtocolError as exc:
                self._fail_with(exc, events)
                return events
            if self.state is State.CLOSED or self.close_rcvd is not None:
                break
        return events

    def _process_bounded(self, frames: list[Any], limit: int, budget: int | None) -> list[Any]:
        """``_process`` under ``batch_room`` (``limit`` frames: a frame gives at most one message)
        and ``batch_bytes`` (``budget``): the frames left wait in ``backlog``."""
        events: list[Any] = []
        self._pongs = 0
        n = len(frames)
        done = 0
        size = 0
        while done < n:
            opcode, fin, rsv1, payload = frames[done]
            done += 1
            if opcode < 3 and fin and not rsv1 and opcode:
                events.append(payload)
                size += len(payload)
            else:
                count = len(events)
                try:
                    self._slow_frame(opcode, fin, rsv1, payload, events)
                except ProtocolError as exc:
                    self._fail_with(exc, events)
                    self.batch_spent = size
                    return events
                if len(events) > count and type(events[-1]) in (str, bytes):
                    size += len(events[-1])
                if self.state is State.CLOSED or self.close_rcvd is not None:
                    self.batch_spent = size
                    return events
            if done >= limit or (budget is not None and size >= budget):
                break
        self.batch_spent = size
        if done < n:
            rest = frames[done:]
            # Pings and pongs do not wait behind the messages (keepalive, both sides):
            # handled now, up to the peer's close frame (after which nothing is answered).
            # The close frame waits its turn, like one behind unread bytes in TCP.
            end = next((i for i, f in enumerate(rest) if f[0] == OP_CLOSE), len(rest))
            controls = [f for f in rest[:end] if f[0] == OP_PING or f[0] == OP_PONG]
            if controls:
                rest = [f for f in rest[:end] if f[0] != OP_PING and f[0] != OP_PONG] + rest[end:]
                for opcode, fin, rsv1, payload in controls:
                    self._control_frame(opcode, payload, events)
            self.backlog = rest or None
        return events

    def _slow_frame(self, opcode: int, fin: bool, rsv1: bool, payload: Any, events: list[Any]) -> None:
        """Handle control frames, fragments, compressed and undecoded text frames."""
        if opcode >= 8:
            self._control_frame(opcode, payload, events)
            return
        if opcode < 0:  # OP_EARLY: the first bytes of a compressed text frame still arriving
            self._early_text(payload)
            return
        early = self._early_done
        if opcode == OP_CONT or early:
            compressed = self._part_compressed
        else:
            compressed = rsv1
            self._part_opcode = opcode
            self._part_compressed = rsv1
            self._parts = []
            # The parser validates uncompressed fragmented text itself (as it arrives, even
            # mid-frame) when it decodes text; inflated text is validated here.
            checked_by_parser = not rsv1 and self.parser.decode_text
            self._validator = self._validator_cls() if opcode == OP_TEXT and not fin and not checked_by_parser else None
        if compressed:
            if early:  # its first bytes are inflated already (and in _parts)
                self._early_done = 0
                payload = memoryview(payload)[early:]
            payload = self.deflate.decompress(payload, fin, self.max_size)
        text = self._part_opcode == OP_TEXT
        if fin and opcode != OP_CONT and not early:
            # A whole message that took the slow path: compressed, or text the parser left as bytes.
            self._part_opcode = 0
            message: Message = payload
            if text:
                message = _decode_text(payload)
            events.append(message)
            return
        if text and self._validator is not None and not self._validator.feed(payload, fin):
            raise ProtocolError("invalid UTF-8 in text message", 1007)
        if payload:
            self._add_part(payload)
        if fin:
            data = b"".join(self._parts)
            self._parts = []
            self._part_opcode = 0
            self._validator = None
            events.append(_decode_text(data) if text else data)

    def _early_text(self, chunk: bytes) -> None:
        """Inflate the first bytes of an incomplete compressed text frame and check them.

        The parser hands them out (``early_compressed_text``) so that invalid UTF-8 fails the
        connection as soon as the bytes received so far can no longer be valid (SPEC "Bad
        input"), not once the whole frame is in; a message past ``max_size`` once inflated
        fails early too. What they inflate to joins the message's parts; the complete frame
        then inflates only its remaining bytes.
        """
        if not self._early_done and not self._part_opcode:
            # A new message's first frame (RSV1 text): start it as a fragmented one. (The
            # protocol's own state, not the parser's: frames may wait in ``backlog``.)
            self._part_opcode = OP_TEXT
            self._part_compressed = True
            self._parts = []
            self._validator = None
        if self._validator is None:
            self._validator = self._validator_cls()
        self._early_done += len(chunk)
        out = self.deflate.decompress(chunk, False, self.max_size)
        if out:
            if not self._validator.feed(out, False):
                raise ProtocolError("invalid UTF-8 in text message", 1007)
            self._add_part(out)

    def _add_part(self, payload: Any) -> None:
        parts = self._parts
        if len(payload) >= _OWN_PART:
            parts.append(payload)
        elif parts and type(parts[-1]) is bytearray:
            parts[-1] += payload
        else:
            # Memory: small fragments share one bytearray, so a message sent a byte a
            # frame costs about its size, not ~40 bytes of object per byte; empty ones
            # (a peer may send them forever) cost nothing.
            parts.append(bytearray(payload))

    def _control_frame(self, opcode: int, payload: bytes, events: list[Any]) -> None:
        """Answer pings, match pongs, run the closing handshake (RFC 6455 §5.5)."""
        if opcode == OP_PING:
            # OPEN or CLOSING here: §5.5.2 owes a pong "unless it already received a Close frame".
            if self.hold_pongs:
                self._held_pong = self._frame(OP_PONG, payload)
                events.append(Ping(payload))
                return
            out = self._out
            if self._pongs > _PONGS_PER_READ and events and type(events[-1]) is Ping and out:
                # Many pings read together (the previous frame of this batch was one, its pong
                # is out[-1]): past the first _PONGS_PER_READ, one pong, for the latest (RFC
                # 6455 §5.5.3: the earlier ones' were not sent yet). A ping flood then costs
                # the I/O layer a bounded number of writes and events per read (fairness).
                out[-1] = self._frame(OP_PONG, payload)
                events[-1] = Ping(payload)
                return
            self._pongs += 1
            out.append(self._frame(OP_PONG, payload))
            events.append(Ping(payload))
        elif opcode == OP_PONG:
            events.append(Pong(payload, self._ack_pings(payload)))
        elif opcode == OP_CLOSE:
            code, reason = parse_close(payload)
            self.close_rcvd = (code, reason)
            if self.state is State.OPEN:
                # Echo the code (RFC 6455 §5.5.1); an empty close gets an empty reply.
                self.close_sent = (code, "") if code != 1005 else (1005, "")
                self.close_rcvd_then_sent = True
                self._out.append(self._frame(OP_CLOSE, build_close(code) if code != 1005 else b""))
            elif self.close_rcvd_then_sent is None:
                self.close_rcvd_then_sent = False
            self.state = State.CLOSED
            self.close_transport = not self.is_client
            events.append(Closed(code, reason))

    def _ack_pings(self, payload: bytes) -> list[tuple[bytes, Any]]:
        """Pop the ping with this payload and every older one (a pong acknowledges them all)."""
        pings = self.pings
        if payload not in pings:
            return []
        acked = []
        for key in list(pings):
            acked.append((key, pings.pop(key)))
            if key == payload:
                break
        return acked

    def receive_eof(self, cause: BaseException | None = None) -> list[Any]:
        """The peer closed TCP: the connection is CLOSED (1006 unless a close frame came first;
        the frames still in ``backlog`` are processed first, as far as ``batch_room`` allows).

        ``cause``: what the I/O layer saw (``EOFError`` for the end of the stream, the
        ``OSError`` of a reset), the ``__cause__`` of ``closed_exception()`` when no close
        frame came (as websockets; ``detached``: its traceback would hold the reader's frames).
        """
        if cause is not None:
            self.note_lost(cause)
        events: list[Any] = []
        if self.backlog is not None:
            # What the queue has room for; the rest is dropped (an abnormal end: the bound on
            # what one connection holds comes first).
            budget, self.batch_bytes = self.batch_bytes, None  # (all it has room for: last call)
            try:
                events = self.receive_frames([])
            finally:
                self.batch_bytes = budget
            self.backlog = None
        self.eof_received = True
        if self.state is State.CLOSED:
            self.close_transport = True
            return events
        self.state = State.CLOSED
        self.close_transport = True
        events.append(Closed(1006, ""))
        return events

    def note_lost(self, cause: BaseException) -> None:
        """Keep what ended TCP before the closing handshake (the first only) for ``receive_eof``."""
        if self.state is not State.CLOSED and self.lost_cause is None:
            self.lost_cause = detached(cause)

    def data_to_send(self) -> list[bytes]:
        """Return (and forget) the frames the protocol wants written: pongs, close frames."""
        out = self._out
        held = self._held_pong
        if held is not None and not self.hold_pongs:
            self._held_pong = None
            if self.close_sent is None:  # never a pong after our close frame (§5.5.1)
                out.append(held)
        if out:
            self._out = []
        return out

    # ---------------------------------------------------------------- failing

    def fail(self, code: int = 1011, reason: str = "") -> None:
        """Fail the connection (RFC 6455 §7.1.7): send a close frame if possible, go CLOSED."""
        if self.state is State.CLOSED:
            return
        if self.state is State.OPEN and code not in (1005, 1006):
            self.close_sent = (code, reason)
            self._out.append(self._frame(OP_CLOSE, build_close(code, _truncate_reason(reason))))
        self.state = State.CLOSED
        self.close_transport = True

    def _fail_with(self, exc: ProtocolError, events: list[Any]) -> None:
        self.error = exc = detached(exc)
        self.fail(exc.code, exc.reason)
        self.failed = True
        events.append(Closed(1006, "", exc))

    # ---------------------------------------------------------------- sending

    def _frame(self, opcode: int, payload: Any, fin: bool = True, rsv1: bool = False) -> bytes:
        masks = self._masks
        return self._build(opcode, payload, fin, rsv1, masks() if masks is not None else None)

    def _check_open(self) -> None:
        if self.state is not State.OPEN:
            raise self.closed_exception()

    def closed_exception(self) -> ConnectionClosed:
        """The ConnectionClosed exception describing how the connection ended.

        Its ``__cause__`` is the ProtocolError we failed the connection for, or what ended
        TCP before a close frame came (an ``OSError``, or ``EOFError``); and whatever exception
        it is raised while handling is not shown with it (``__suppress_context__``, as
        ``raise ... from``): it says all there is.
        """
        exc = self._closed_exception()
        exc.__suppress_context__ = True
        return exc

    def _closed_exception(self) -> ConnectionClosed:
        if self.state is State.CONNECTING:
            return ConnectionClosedError(1006, "", "connection is not open yet")
        rcvd = self.close_rcvd
        sent = self.close_sent
        code, reason = rcvd if rcvd is not None else (1006, "")
        if rcvd is not None and sent is not None and rcvd[0] in (1000, 1001, 1005) and sent[0] in (1000, 1001, 1005):
            return ConnectionClosedOK(code, reason, sent=sent, rcvd=rcvd)
        error = self.error
        if error is None:
            closed = ConnectionClosedError(code, reason, sent=sent, rcvd=rcvd)
            if rcvd is None:
                closed.__cause__ = self.lost_cause  # the reset, the end of the stream (or None)
            return closed
        # We failed the connection for the peer's bad input: say so, with the ProtocolError
        # (its close code and reason) as the cause.
        exc = ConnectionClosedError(
            code, reason, f"connection failed by us: {error.reason} (code {error.code})", sent=sent, rcvd=rcvd
        )
        exc.__cause__ = error
        return exc

    def send(self, message: Any, compress: bool | None = None) -> bytes:
        """Return the frame of one whole message: str → text, bytes-like → binary.

        On the server side, a large (``SPLIT_THRESHOLD``) uncompressed str or bytes message
        gives a tuple ``(header, payload)`` instead: the I/O layer writes both, in order.

        Raises:
            ConnectionClosed: the connection is closing or closed.
            TypeError: the message is neither str nor bytes-like.
        """
        t = type(message)
        if (t is bytes or t is str) and self.state is _OPEN and self.deflate is None and not self._send_frag_open:
            # Speed: the common case (a whole str/bytes message, no compression) in one test.
            masks = self._masks
            if masks is not None:
                return self._build(OP_TEXT if t is str else OP_BINARY, message, True, False, masks())
            if len(message) < SPLIT_THRESHOLD:
                return self._build(OP_TEXT if t is str else OP_BINARY, message, True, False, None)
        if self.state is not State.OPEN or self._send_frag_open:
            if self.state is not State.OPEN:
                raise self.closed_exception()
            raise InvalidState("a fragmented message is being sent")
        if t is str:
            opcode = OP_TEXT
        elif t is bytes or t is bytearray:
            opcode = OP_BINARY
        elif isinstance(message, str):
            # Its text: str() of an enum member (class Cmd(str, Enum)) would be "Cmd.X".
            opcode, message = OP_TEXT, str.__str__(message)
        else:
            message = _contiguous(message, "message")
            opcode = OP_BINARY
        if self.deflate is not None and compress is not False:
            data = message.encode("utf-8") if opcode == OP_TEXT else message
            payload = self.deflate.compress_message(data)
            if payload is None:  # incompressible: sent as it is (see compress_message)
                return self._frame(opcode, data)
            return self._frame(opcode, payload, True, True)
        masks = self._masks
        if masks is None and (t is bytes or t is str) and len(message) >= SPLIT_THRESHOLD:
            # Speed: a large unmasked frame goes out as header + the caller's own immutable
            # payload, sparing a copy (and the page faults of a fresh multi-MiB buffer).
            data = message.encode("utf-8") if t is str else message
            return (_frame_header(opcode, len(data)), data)  # type: ignore[return-value]
        return self._build(opcode, message, True, False, masks() if masks is not None else None)

    def begin_fragments(self) -> None:
        """Reserve the connection for a fragmented message before its first fragment is known
        (the I/O layers read their iterable one item ahead): whole messages wait, or raise
        ``InvalidState`` from the sender's own iterable, from now on, not from the first
        fragment on. ``abandon_fragments`` undoes it if no fragment goes out.

        Raises:
            ConnectionClosed: the connection is closing or closed.
            InvalidState: a fragmented message is being sent already.
        """
        self._check_open()
        if self._send_frag_open:
            raise InvalidState("a fragmented message is being sent")
        self._send_frag_open = True

    def abandon_fragments(self) -> None:
        """End a reservation (``begin_fragments``) under which no fragment went out; a
        fragmented message already started stays open (the layers fail the connection)."""
        if not self._send_frag_started:
            self._send_frag_open = False

    def send_fragment(self, message: Any, fin: bool, compress: bool | None = None) -> bytes:
        """Return one frame of a fragmented message (the first fragment fixes text or binary).

        Raises:
            ConnectionClosed: the connection is closing or closed.
            TypeError: a fragment of the other type than the first, or not str/bytes-like.
        """
        self._check_open()
        is_text = isinstance(message, str)
        if not is_text:
            message = _contiguous(message, "fragment")
        elif type(message) is not str:
            message = str.__str__(message)  # its text, not str() of it (an enum member: "Cmd.X")
        if self._send_frag_started:
            if is_text != self._send_frag_text:
                raise TypeError("all fragments of a message must be of the same type")
            opcode = OP_CONT
            compressed = self._send_frag_compressed
        else:
            opcode = OP_TEXT if is_text else OP_BINARY
            compressed = self.deflate is not None and compress is not False
        # The frame first, the state after: a fragment that cannot be encoded (a lone
        # surrogate) changes nothing, so the layers can tell whether part of a message is out.
        if compressed:
            data = message.encode("utf-8") if is_text else message
            frame = self._frame(opcode, self.deflate.compress(data, fin), fin, opcode != OP_CONT)
        else:
            frame = self._frame(opcode, message, fin)
        if opcode != OP_CONT:
            self._send_frag_text = is_text
            self._send_frag_compressed = compressed
        self._send_frag_open = self._send_frag_started = not fin
        return frame

    def send_ping(self, data: bytes | str = b"", tag: Any = None) -> bytes:
        """Return a ping frame and remember it so the matching pong can be reported.

        Raises:
            ConnectionClosed: the connection is closing or closed.
            ValueError: more than 125 bytes, or a ping with the same payload is in flight.
        """
        self._check_open()
        payload = control_payload(data)
        if len(payload) > 125:
            raise ValueError("ping payload must be at most 125 bytes")
        if payload in self.pings:
            raise ValueError("a ping with the same payload is already in flight")
        self.pings[payload] = tag
        return self._frame(OP_PING, payload)

    def send_pong(self, data: bytes | str = b"") -> bytes:
        """Return an unsolicited pong frame (RFC 6455 §5.5.3).

        Raises:
            ConnectionClosed: the connection is closing or closed.
            ValueError: more than 125 bytes.
        """
        self._check_open()
        payload = control_payload(data)
        if len(payload) > 125:
            raise ValueError("pong payload must be at most 125 bytes")
        return self._frame(OP_PONG, payload)

    def send_close(self, code: int = 1000, reason: str = "") -> bytes:
        """Start the closing handshake: return the close frame and go CLOSING.

        Returns b"" when the handshake has already started or the connection is closed. In the
        middle of a fragmented message (its first fragment sent), 1000 / 1005 become 1011.

        Raises:
            ValueError: an invalid code or a reason over 123 bytes.
        """
        payload = build_close(code, reason)
        if self.state is not State.OPEN:
            return b""
        if (code == 1000 or code == 1005) and self._send_frag_started:
            # Half a message is out (another thread or task is between its fragments): 1000
            # (or no code) would tell the peer its purpose was fulfilled (websockets: 1011 too;
            # audit). Other codes say why themselves (a server's shutdown: 1001, as SPEC says).
            code, reason = 1011, "close during fragmented message"
            payload = build_close(code, reason)
        self.close_sent = (code, reason)
        self.state = State.CLOSING
        return self._frame(OP_CLOSE, payload)


SPLIT_THRESHOLD = 65536
_pack_len2 = struct.Struct("!BBH").pack
_pack_len8 = struct.Struct("!BBQ").pack


def _contiguous(message: Any, what: str) -> memoryview | bytes:
    """A bytes-like message as one C-contiguous buffer (copied only when it is a strided view)."""
    if type(message) is not memoryview:
        try:
            message = memoryview(message)
        except TypeError:
            raise TypeError(f"{what} must be str or bytes-like, not {type(message).__name__}") from None
    if not message.c_contiguous:
        return message.tobytes()  # e.g. view[::2]: the frame builders and zlib need one piece
    return message


def control_payload(data: Any) -> bytes:
    """A ping / pong payload as bytes: str (UTF-8) or bytes-like; None is empty.

    Raises:
        TypeError: another type (``bytes(5)`` would make five zero bytes of an int).
    """
    if isinstance(data, str):
        return data.encode("utf-8")
    if data is None:  # websockets' ping(None): a payload of our choosing
        return b""
    try:
        return bytes(memoryview(data))
    except TypeError:
        raise TypeError(f"ping/pong data must be str or bytes-like, not {type(data).__name__}") from None


def _frame_header(opcode: int, length: int) -> bytes:
    """Header of an unmasked, final, uncompressed frame of ``length`` >= 126 bytes."""
    if length < 65536:
        return _pack_len2(0x80 | opcode, 126, length)
    return _pack_len8(0x80 | opcode, 127, length)


def _decode_text(data: Any) -> str:
    try:
        return bytes(data).decode("utf-8") if type(data) is not bytes else data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("invalid UTF-8 in text message", 1007) from None


def _truncate_reason(reason: str) -> str:
    data = reason.encode("utf-8")
    if len(data) <= 123:
        return reason
    return data[:123].decode("utf-8", "ignore")


def exit_close_code(exc_type: Any) -> int:
    """The close code for leaving a connection's ``with`` / ``async with`` block: 1000
    normally, 1011 (internal error) on an exception, as websockets does, and 1001 (going away)
    on a cancellation, KeyboardInterrupt or SystemExit (not errors of the application's)."""
    if exc_type is None:
        return 1000
    return 1011 if issubclass(exc_type, Exception) else 1001


#: How many more ``ping_timeout``s a keepalive ping stuck behind our own unsent data may be
#: given while the peer reads towards it (see Keepalive.ping_in_flight): a slow reader of a
#: large backlog is waited for, up to (1 + BACKLOG_WAITS) x ping_timeout in all.
BACKLOG_WAITS = 5

#: The shortest wait before a deferred keepalive timeout is looked at again (``ping_timeout=0``
#: with our reading paused would otherwise reschedule the check at once, again and again).
_RECHECK_MIN = 0.05


class Keepalive:
    """Keepalive bookkeeping (when to ping, when a ping is overdue), driven by the caller's clock.

    One keepalive ping is in flight at a time. The I/O layer calls ``poll(now)`` once
    ``deadline`` has passed; it answers ``"ping"`` (send one with ``new_payload(pings)``, then
    call ``ping_sent(now)``),
    ``"timeout"`` (no pong within ``timeout``: fail with 1011) or None. ``pong_received(now)``
    clears the ping in flight; the next ping is due ``interval`` after the previous one was sent.
    With ``timeout=None`` a ping that gets no answer is given up ``interval`` after it was sent
    and the next one goes out (pings keep flowing, as with websockets' ``ping_timeout=None``).
    """

    __slots__ = (
        "interval", "timeout", "_next_ping", "_ping_at", "_payload", "_extended", "_recheck",
        "_position", "_acked", "_behind", "_waits", "_still",
    )

    def __init__(self, interval: float | None, timeout: float | None, now: float) -> None:
        """Start counting from ``now``; ``interval=None`` disables keepalive."""
        self.interval = interval
        self.timeout = timeout
        self._ping_at: float | None = None
        self._next_ping: float | None = now + interval if interval else None
        self._payload: bytes | None = None  # the last keepalive ping's payload
        self._extended = False  # this ping's timeout already restarted by reading_resumed
        self._recheck: float | None = None  # the timeout came while our reading was paused: look again then
        # Where the ping ends in the bytes we send (acknowledged + unsent when it was written),
        # how many the peer had acknowledged at the last look, and whether the ping was still
        # on its way then (see ping_in_flight); None: not known (not Linux, not TCP).
        self._position: int | None = None
        self._acked: int | None = None
        self._behind = False
        self._waits = 0  # timeouts this ping was given by ping_in_flight (at most BACKLOG_WAITS)
        self._still = 0  # looks in a row, our reading paused, that found nothing more acknowledged

    def new_payload(self, pings: dict[bytes, Any]) -> bytes:
        """The payload for the next keepalive ping: fresh, not in the protocol's ``pings``.

        The previous keepalive ping, if it is still in ``pings`` (never answered: given up with
        ``timeout=None`` or under our own backpressure), is dropped from it, so a peer that
        never answers costs nothing.
        """
        if self._payload is not None:
            pings.pop(self._payload, None)
        payload = os.urandom(4)
        while payload in pings:
            payload = os.urandom(4)
        self._payload = payload
        return payload

    @property
    def deadline(self) -> float | None:
        """When ``poll`` next has something to say; None when nothing is scheduled."""
        if self._ping_at is not None:
            if self.timeout is not None:
                deadline = self._ping_at + self.timeout
                recheck = self._recheck
                return recheck if recheck is not None and recheck > deadline else deadline
            return self._ping_at + self.interval if self.interval else None
        return self._next_ping

    def ping_sent(self, now: float, position: int | None = None, acked: int | None = None) -> None:
        """A keepalive ping went out at ``now``: written up to byte ``position`` of the stream
        we send, of which the peer had acknowledged ``acked`` (both None if not known)."""
        self._ping_at = now
        self._extended = False
        self._recheck = None
        self._position = position
        self._acked = acked
        self._behind = False
        self._waits = 0
        self._still = 0

    def ping_in_flight(self, acked: int | None) -> bool:
        """At a timeout, the peer having acknowledged ``acked`` bytes of ours: is the ping
        still on its way to a peer that keeps reading what we sent before it? Then its pong
        can't have come yet, which says nothing about the peer: the caller defers (a slow
        reader of a large backlog is not failed for it, as it is by websockets). True also
        once, at the first look after the ping got through, so the peer's application has a
        timeout to read up to it. False for a peer that acknowledged nothing since the last
        look (dead or stalled), or that had the ping already at the first look; and False
        once the ping has had ``BACKLOG_WAITS`` timeouts more, however steadily the peer
        trickles towards it (a peer reading one segment a timeout must not hold its
        connection for hours without ever answering a ping)."""
        position, last = self._position, self._acked
        if position is None or last is None or acked is None or self._waits >= BACKLOG_WAITS:
            return False
        self._acked = acked
        if acked < position:  # still on its way: wait while the peer reads towards it
            wait = self._behind = acked > last
        else:  # through: one more timeout if it was still on its way at the last look
            wait, self._behind = self._behind, False
        if wait:
            self._waits += 1
        return wait

    def pong_may_be_unread(self, acked: int | None, retransmitting: bool | None = None) -> bool:
        """At a timeout while our own backpressure keeps us from reading (the pong may be
        waiting in what we hold back), the peer's TCP having acknowledged ``acked`` bytes of
        ours, and ours ``retransmitting`` (data it does not acknowledge in time): wait on?

        Yes when that can't be told (``acked`` or the ping's position unknown: as before), and
        while the peer's TCP takes more of our data at each look, however slowly (a reader of
        a large backlog; no cap, unlike ``ping_in_flight``: its pong may have come long ago).
        No when it took nothing since the last look and ours goes unanswered: the peer or the
        path to it is gone (audit 81: a push-only handler never read again, so the timeout
        was put off for as long as the peer stayed silent). Otherwise, yes once its TCP has
        the ping (an idle connection: the pong is most likely behind what we hold back); and
        its TCP answering but taking nothing short of the ping (a closed window) is let pass
        once, as a slow reader between two window updates (audit 86: Linux reopens a full
        window in large steps), not twice: stalled."""
        if acked is None or self._position is None:
            return True
        last, self._acked = self._acked, acked
        if last is None or acked > last:
            self._still = 0
            return True
        if retransmitting:
            return False
        if acked >= self._position:  # its TCP has the ping, and nothing of ours goes unanswered
            return True
        self._still += 1
        return self._still < 2

    def reading_resumed(self, now: float) -> None:
        """Our reading was paused (backpressure) and resumes at ``now``: the pong may still be
        behind what was left unread, so the ping's timeout counts from now, once per ping (a
        peer that never answers must not be kept alive by a reader that pauses often)."""
        if self._ping_at is not None and self._ping_at < now and not self._extended:
            self._ping_at = now
            self._extended = True
            self._recheck = None

    def deferred(self, now: float) -> None:
        """The ping timed out while our own backpressure kept us from reading (its pong may be
        sitting unread): keep waiting for it, and look again ``timeout`` from ``now``. The
        ping stays the same: a peer that never answers is caught at a check that finds our
        reading going (``reading_resumed`` extends a ping's wait once only)."""
        self._recheck = now + max(self.timeout or 0.0, _RECHECK_MIN)

    def pong_received(self, now: float) -> None:
        """The pong for the keepalive ping came back at ``now``."""
        if self._ping_at is not None and self.interval:
            self._next_ping = max(self._ping_at + self.interval, now)
        self._ping_at = None
        self._recheck = None

    def poll(self, now: float) -> str | None:
        """What to do at ``now``: ``"ping"``, ``"timeout"`` or None (not yet due)."""
        if self._ping_at is not None:
            if self.timeout is not None:
                return "timeout" if now >= self.deadline else None  # type: ignore[operator]
            if self.interval and now >= self._ping_at + self.interval:
                return "ping"  # no timeout: the unanswered ping is given up, the next one is due
            return None
        if self._next_ping is not None and now >= self._next_ping:
            return "ping"
        return None
