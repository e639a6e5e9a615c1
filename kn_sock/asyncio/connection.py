"""``AsyncWebSocket``: one connection, an ``asyncio.BufferedProtocol`` driving the sans-I/O core.

The receive path is: the event loop writes into ``get_buffer()`` (the parser's own buffer,
or for a large payload the final payload object itself) → ``buffer_updated`` → parser frames
→ ``Protocol`` events → a message goes straight to the waiting ``recv()`` future, so each
message received costs exactly one task wake-up. No stream reader, no per-frame task.
(Hot-path layering exception, see STYLE.md: this class holds the parser of its Protocol.)
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import time
from collections import deque
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

from .. import _backend, _tcp
from .._malloc import tune_malloc_once
from ..exceptions import ConnectionClosed, InvalidState
from ..http11 import Headers
from ..options import Options
from ..protocol import INFLATE_BUDGET as _INFLATE_BUDGET
from ..protocol import Closed, Keepalive, Ping, Pong, Protocol, State, control_payload, exit_close_code
from . import _timers
from ._compat import mark_coroutine_function

from .._types import Message  # annotations (resolvable at run time too, e.g. get_type_hints)

__all__ = ["AsyncWebSocket"]

logger = logging.getLogger("kn_sock")
#: Large frames go out as header + payload in one writev() on plain sockets (POSIX).
_WRITEV = hasattr(os, "writev")
# The selector loop's own socket transport, whose read callback _take_reading replaces (the
# private names it relies on exist on 3.8-3.13; anything else keeps the transport's reading).
_SelectorSocketTransport: Any = getattr(asyncio.selector_events, "_SelectorSocketTransport", None)
_OWN_READER = (
    os.name == "posix"
    and _SelectorSocketTransport is not None
    and hasattr(_SelectorSocketTransport, "_read_ready__on_eof")
    and hasattr(_SelectorSocketTransport, "_fatal_error")
    and hasattr(asyncio.selector_events.BaseSelectorEventLoop, "_add_reader")
    and hasattr(asyncio.selector_events.BaseSelectorEventLoop, "_remove_reader")
)
#: send() holds back at most this many bytes of frames (see AsyncWebSocket._cork).
_CORK_MAX = 65536
#: See kn_sock._pure._SEND_YIELD_EVERY (the Cython twin has the same figure).
_SEND_YIELD_EVERY = 128
#: send() with compression counts one message per this many bytes towards _SEND_YIELD_EVERY
#: (deflating costs ~6-18 ms per MiB): a task answering queued messages still lets the loop run.
_DEFLATE_YIELD_UNIT = 4096
_OPEN = State.OPEN
def tcp_transport(transport: Any) -> Any:
    """The TCP transport under asyncio's TLS one (its private ``_ssl_protocol._transport``,
    3.10-3.13), else None (plain TCP, uvloop)."""
    return getattr(getattr(transport, "_ssl_protocol", None), "_transport", None)


def unsent_bytes(transport: Any) -> int:
    """Bytes a transport still holds to send, the TCP transport under a TLS one included
    (``get_write_buffer_size()`` of asyncio's TLS transport counts only its own layer)."""
    try:
        size: int = transport.get_write_buffer_size()
    except AttributeError:  # asyncio's TLS transport closed twice: detached from its TLS layer
        return 0
    inner = tcp_transport(transport)
    if inner is not None and not inner.is_closing():
        size += inner.get_write_buffer_size()
    return size


def kernel_unsent(transport: Any) -> int:
    """Bytes the kernel still holds to send on the transport's socket (not yet acknowledged
    by the peer; Linux's SIOCOUTQ), 0 where that cannot be known."""
    return _tcp.kernel_unsent(transport.get_extra_info("socket"))


#: The read path (get_buffer / buffer_updated / _on_readable) and the coroutine API's hot calls
#: (send / recv / async for): C with the Cython twin (see kn_sock._pure.AsyncCore).
_AsyncCore = _backend.backend.AsyncCore


# The Cython twin's send / recv are C functions returning awaitables, not ``async def``s:
# asyncio.iscoroutinefunction says of them what it says of the pure twin's.
for _name in ("send", "recv"):
    mark_coroutine_function(_AsyncCore.__dict__[_name])


class AsyncWebSocket(_AsyncCore, asyncio.BufferedProtocol):
    """A WebSocket connection for asyncio (client or server side); every I/O method is awaited."""

    __slots__ = (
        "__weakref__",
        "_opts",
        "side",
        "_paused_for_write",
        "_fair_paused",
        "_in_backlog",
        "_budget_paused",
        "_spent",
        "_drain_waiter",
        "_keepalive",
        "_ka_handle",
        "_close_handle",
        "_on_open",
        "path",
        "request_headers",
        "response_headers",
        "remote_address",
        "local_address",
        "latency",
        "_max_queue",
        "_drop_limit",
        "_dropping",
        "_frag_done",
        "_frag_task",
        "_cork_size",
        "_own_reader",
        "_reader_off",
        "_ka_unsent",
        "_app_closed",
        "_ended",
    )

    def __init__(self, side: str, opts: Options, loop: asyncio.AbstractEventLoop) -> None:
        """Create the connection object; the I/O layer performs the handshake."""
        self._loop = loop
        self._open = _OPEN
        self._opts = opts
        self.side = side
        self.transport: asyncio.Transport | None = None
        self.protocol: Protocol | None = None
        self._parser: Any = None
        self._messages: deque[Any] | None = None  # created on first queued message (idle memory)
        self._waiter: Any = None  # the Waiter a recv() awaits (resumed inline, see AsyncCore)
        self._closed_fut: asyncio.Future[None] = loop.create_future()
        self._paused_reading = False  # by max_queue: the application is not reading
        self._paused_for_write = False  # by write_limit while on_message answers from the read path
        self._fair_paused = False  # for one loop iteration after a read of many frames
        self._in_backlog = False  # _backlog_step is running
        self._budget_paused = False  # reading paused and _backlog_run scheduled (_INFLATE_BUDGET)
        self._spent = 0  # bytes of compressed messages inflated in this loop iteration (_spend)
        self._write_paused = False
        self._on_message = None
        self._tx_idle = False
        self._unyielded = 0
        self._drain_waiter: asyncio.Future[None] | None = None
        self._keepalive: Keepalive | None = None
        self._ka_handle: Any = None  # asyncio.TimerHandle or _timers.TimerHandle
        self._close_handle: asyncio.TimerHandle | None = None
        self._hs_buf: memoryview | None = None
        self._on_open: Callable[[], None] | None = None
        self.path = "/"
        self.request_headers = Headers()
        self.response_headers = Headers()
        self.remote_address: Any = None
        self.local_address: Any = None
        self.latency = 0.0
        self._max_queue = opts.max_queue
        self._drop_limit: int | None = None  # closing: queue bound (reading no longer pauses)
        self._dropping = False  # closing, a message was dropped: so is every later one
        self._handshake: Any = None
        self._frag_done: asyncio.Future[None] | None = None  # set while a fragmented message is sent
        self._frag_task: Any = None  # ... by this task
        self._fd = -1  # plain (non-TLS) socket's descriptor: broadcast() may write to it directly
        # Frames held back while the application answers a backlog of received messages:
        # written together once it has caught up (see send), or at the next loop iteration.
        self._cork: list[bytes] | None = None
        self._cork_size = 0
        self._own_reader = False  # the loop calls _on_readable for this socket (see _take_reading)
        self._reader_off = False  # ... and _pause_reading unregistered it
        self._app_closed = False  # close() or abort() was called: a reconnecting client stops (reconnect.py)
        self._ended: asyncio.Future[None] | None = None  # made by _wait_ended, done at CLOSED
        self._ka_unsent = -1  # unsent bytes when a keepalive timeout was deferred under _paused_for_write

    # ------------------------------------------------------------ public attributes

    @property
    def closed(self) -> bool:
        """True once the connection is closed (or closing: no more sends possible)."""
        proto = self.protocol
        return proto is None and self.transport is None or proto is not None and proto.state >= State.CLOSING

    @property
    def open(self) -> bool:
        """True while messages can be sent."""
        return self.protocol is not None and self.protocol.state is State.OPEN

    @property
    def close_code(self) -> int | None:
        """The code of the peer's close frame (1005: none given, 1006: no close frame), None while open."""
        proto = self.protocol
        if proto is None:
            return 1006 if self._closed_fut.done() else None
        if proto.close_rcvd is not None:
            return proto.close_rcvd[0]
        return 1006 if proto.state is State.CLOSED else None

    @property
    def close_reason(self) -> str | None:
        """The reason of the peer's close frame ("" if none), None while open."""
        proto = self.protocol
        if proto is not None and proto.close_rcvd is not None:
            return proto.close_rcvd[1]
        return "" if self.close_code is not None else None

    @property
    def subprotocol(self) -> str | None:
        """The negotiated subprotocol, or None."""
        return self.protocol.subprotocol if self.protocol is not None else None

    @property
    def extensions(self) -> list[str]:
        """Names of the negotiated extensions, e.g. ``["permessage-deflate"]``."""
        return [ext.name for ext in self.protocol.extensions] if self.protocol is not None else []

    # ------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        """Record the transport and addresses; the handshake starts here."""
        self.transport = transport  # type: ignore[assignment]
        self.remote_address = transport.get_extra_info("peername")
        self.local_address = transport.get_extra_info("sockname")
        transport.set_write_buffer_limits(high=self._opts.write_limit)  # type: ignore[attr-defined]
        sock = transport.get_extra_info("socket")
        if sock is not None and transport.get_extra_info("sslcontext") is None:
            try:
                self._fd = sock.fileno()
            except (AttributeError, OSError):  # pragma: no cover - an unusual transport
                self._fd = -1
        if self._handshake is not None:
            self._handshake.connection_made(self)

    def eof_received(self) -> bool:
        """The peer closed its side: the connection is over (1006 unless a close frame came)."""
        if self.protocol is not None:
            self._dispatch(self.protocol.receive_eof(EOFError("the peer closed TCP without a close frame")))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """TCP is gone: wake every waiter."""
        proto = self.protocol
        if proto is not None and proto.state is not State.CLOSED:
            if exc is None and (proto.state is State.OPEN or self._close_handle is not None):
                # Lost with no eof_received (uvloop's TLS transport ending without close_notify)
                # and not by us: abort() and our failures reach CLOSED first, and _drop (the
                # close timer, while CLOSING) has let go of _close_handle.
                exc = EOFError("the peer closed TCP without a close frame")
            self._dispatch(proto.receive_eof(exc))
        self.transport = None
        self._cork = None
        for handle in (self._ka_handle, self._close_handle):
            if handle is not None:
                handle.cancel()
        self._ka_handle = self._close_handle = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._waiter = None
        if proto is not None:
            err = proto.closed_exception()
            for _, tag in list(proto.pings.items()):
                fut = tag[0] if tag is not None else None  # None: a keepalive ping
                if fut is not None and not fut.done():
                    fut.set_exception(err)
                    fut.exception()  # mark retrieved: nobody may be awaiting it
            proto.pings.clear()
            proto.batch_room = None  # (a bound method of ours: a cycle keeping a closed connection alive)
            proto.backlog = None
        self._wake_drain()
        if self._handshake is not None:
            self._handshake.connection_lost(self, exc)
        if not self._closed_fut.done():
            self._closed_fut.set_result(None)

    def pause_writing(self) -> None:
        """The transport's buffer passed ``write_limit``: sends now await drain.

        With an ``on_message`` callback, which answers from the read path without waiting,
        reading pauses too until the peer has read our answers: the buffer stays bounded.
        """
        self._write_paused = True
        proto = self.protocol
        if proto is not None:
            proto.hold_pongs = True  # a ping flood from a peer that does not read: one pong held
        if self._on_message is not None and not self._paused_for_write and self.transport is not None:
            self._paused_for_write = True
            self._pause_reading()

    def resume_writing(self) -> None:
        """The transport's buffer drained below its low-water mark."""
        self._write_paused = False
        proto = self.protocol
        if proto is not None and proto.hold_pongs:
            proto.hold_pongs = False
            out = proto.data_to_send()  # the pong held for the latest ping, if any
            if out and self.transport is not None:
                self._write(b"".join(out))
        if self._paused_for_write:
            self._paused_for_write = False
            self._ka_unsent = -1
            if self._messages and self._on_message is not None:
                # Messages that arrived while the callback's answers filled the buffer.
                self._feed_callback()
                if self._paused_for_write:  # its answers filled it again
                    self._wake_drain()
                    return
            if self._paused_reading:
                self._maybe_resume()
            elif not self._budget_paused:
                self._resume_reading()
                self._keepalive_resumed()
        self._wake_drain()

    def _wake_drain(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # ------------------------------------------------------------ opening (called by client/server)

    def start(self, protocol: Protocol, remainder: bytes = b"") -> None:
        """The handshake succeeded: switch to frames and process what came with the handshake."""
        tune_malloc_once()
        self.protocol = protocol
        self._parser = protocol.parser
        self._hs_buf = None
        opts = self._opts
        if protocol.deflate is not None:
            # One read of highly compressed messages must neither inflate past the queue bound
            # nor hold the event loop while it inflates (the rest waits: _backlog_step).
            protocol.batch_room = self._queue_room
            protocol.batch_bytes = _INFLATE_BUDGET
        if opts.ping_interval:
            self._keepalive = Keepalive(opts.ping_interval, opts.ping_timeout, self._loop.time())
            self._schedule_keepalive()
        self._take_reading()
        if remainder:
            frames = protocol.parser.feed(remainder)
            if protocol.parser.error is None:
                self._dispatch(protocol.receive_frames(frames))
            else:  # the frames before the error reach the application first
                self._dispatch_then_fail(frames)

    def _take_reading(self) -> None:
        """On the default (selector) event loop and a plain socket: register ``_on_readable``
        (read, parse and dispatch in one call; C with the Cython twin) as the socket's read
        callback in place of the transport's, which runs three Python calls around the same
        work. The transport still writes, closes (which unregisters any read callback) and
        handles the end of the stream and errors, which ``_on_readable`` hands to it. Pausing
        and resuming reading then go through ``_pause_reading``/``_resume_reading``."""
        transport = self.transport
        loop = self._loop
        if (
            _OWN_READER
            and self._fd >= 0
            and type(transport) is _SelectorSocketTransport
            and isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop)
            and transport.is_reading()  # type: ignore[union-attr]
        ):
            loop._add_reader(self._fd, self._on_readable)  # type: ignore[attr-defined]
            self._own_reader = True

    def _pause_reading(self) -> None:
        transport = self.transport
        if transport is None:
            return
        if self._own_reader:
            if self._fd >= 0 and not self._reader_off:
                self._reader_off = True
                self._loop._remove_reader(self._fd)  # type: ignore[attr-defined]
        else:
            transport.pause_reading()

    def _resume_reading(self) -> None:
        transport = self.transport
        if transport is None:
            return
        if self._own_reader:
            if self._fd >= 0 and self._reader_off and not transport.is_closing():
                self._reader_off = False
                self._loop._add_reader(self._fd, self._on_readable)  # type: ignore[attr-defined]
        else:
            transport.resume_reading()

    def _yield_reading(self) -> None:
        """Fairness: a read brought a lot of frames (``_FAIR_FRAMES``); read no more until the
        next loop iteration, so that the other connections get their turn first (uvloop reads
        a socket up to 32 times in a row: a peer flooding tiny frames held the loop ~30 ms)."""
        transport = self.transport
        if self._fair_paused or transport is None or self._own_reader:
            return  # (our own reader reads once per iteration anyway)
        self._fair_paused = True
        transport.pause_reading()  # type: ignore[attr-defined]
        self._loop.call_soon(self._fair_resume)

    def _fair_resume(self) -> None:
        self._fair_paused = False
        transport = self.transport
        if (
            transport is not None
            and not self._paused_reading
            and not self._paused_for_write
            and not self._budget_paused
            and not transport.is_closing()
        ):
            transport.resume_reading()  # type: ignore[attr-defined]

    def _is_reading(self) -> bool:
        """Whether the socket is being read (flow control's state; for tests and debugging)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        if self._own_reader:
            return not self._reader_off
        return transport.is_reading()  # type: ignore[attr-defined, no-any-return]

    # ------------------------------------------------------------ event dispatch (hot path)

    def _dispatch_then_fail(self, frames: list[Any]) -> None:
        """A read ended in a protocol error after complete frames: what came before the error
        is dispatched first (a task waiting in recv() runs at once and may answer, a ping is
        answered), then the connection fails. The order the peer sent things in is kept on
        the wire: an echo of the message goes out before the close frame (RFC 6455 §7.1.7
        fails the connection at the bad frame, not before it; Autobahn's strict behaviour)."""
        proto = self.protocol
        assert proto is not None
        self._dispatch(proto.receive_frames(frames, hold_error=True))
        if self._messages and proto.state is State.OPEN:
            # Queued, no task was waiting in recv(): one that is about to (its wake-up already
            # scheduled, as a client's right after the handshake) gets them first, one loop
            # iteration; the error waits no longer than that.
            self._loop.call_soon(self._fail_held)
        else:
            self._fail_held()

    def _fail_held(self) -> None:
        """Act on the parser error ``_dispatch_then_fail`` held back (no-op once acted on)."""
        proto = self.protocol
        # (Frames left in the backlog: the error follows them, _backlog_step's receive_frames
        # acts on it once they are dispatched.)
        if proto is not None and proto.state is not State.CLOSED and proto.backlog is None and not self._in_backlog:
            self._dispatch(proto.receive_frames([]))

    def _dispatch(self, events: list[Any]) -> None:
        messages = self._messages
        woken = None  # a recv() waiter completed here, resumed once everything below is done
        # Speed: answers an on_message callback gives to a batch of messages (a pipelining
        # peer) are held back and written together at the end (see _send_nowait_slow).
        batch = self._on_message is not None and self._cork is None and len(events) > 1
        if batch:
            # What the protocol already owes (pongs to pings read before these messages) goes
            # out before the callback's answers, in the order the peer sent things.
            owed = self.protocol.data_to_send()  # type: ignore[union-attr]
            if owed:
                self._write(owed[0] if len(owed) == 1 else b"".join(owed))
            self._cork = []
            self._cork_size = 0
        for ev in events:
            t = type(ev)
            if t is str or t is bytes:
                if self._dropping:
                    continue
                callback = self._on_message
                if callback is not None and not messages and not self._paused_for_write:
                    # (Once its answers fill the write buffer, later messages wait in the
                    # queue for resume_writing: bounded by write_limit, not by one read.)
                    try:
                        callback(ev)
                    except (KeyboardInterrupt, SystemExit):
                        raise
                    except BaseException as exc:  # (see _feed_callback)
                        self._callback_failed(exc)
                    continue
                waiter = self._waiter
                if waiter is not None and not messages:
                    self._waiter = None
                    if not waiter.done():
                        waiter.resolve(ev)
                        woken = waiter
                        continue
                if messages is None:
                    messages = self._messages = deque()
                elif self._drop_limit is not None and len(messages) >= self._drop_limit:
                    # Closing and the application is not reading: bounded, drop. A tail, never
                    # a message in the middle (audit: later ones were kept again, after a gap).
                    self._dropping = True
                    logger.debug("closing %s: dropping the messages the application has no room for", self.remote_address)
                    continue
                messages.append(ev)
            elif t is Pong:
                self._on_pong(ev)
            elif t is Closed:
                self._on_closed(ev)
            elif t is not Ping:  # pragma: no cover - no other event exists
                logger.debug("ignored event %r", ev)
        try:
            proto = self.protocol
            out = proto.data_to_send()  # type: ignore[union-attr]
            transport = self.transport
            if out:
                self._write(out[0] if len(out) == 1 else b"".join(out))
            max_queue = self._max_queue
            if max_queue is not None and messages and len(messages) >= max_queue and not self._paused_reading and transport is not None:
                self._paused_reading = True
                self._pause_reading()
            if proto.backlog is not None and not self._in_backlog:  # type: ignore[union-attr]
                self._spend(proto.batch_spent)  # type: ignore[union-attr]
                self._backlog_step()
            if proto.state is State.CLOSED:  # type: ignore[union-attr]
                ended = self._ended
                if ended is not None and not ended.done():
                    ended.set_result(None)
                self._after_closed()
        finally:
            if batch:
                self._uncork()
            if woken is not None:
                woken.wake_now()

    def _queue_room(self) -> int:
        """``Protocol.batch_room``: the messages the queue can still take (at least one)."""
        max_queue = self._max_queue
        if max_queue is None:
            return 1 << 30
        return max(1, max_queue - len(self._messages or ()))

    def _spend(self, nbytes: int) -> None:
        """Count inflated bytes against this loop iteration's ``_INFLATE_BUDGET`` (reset at the
        next one: per iteration, not per call, since recv() calls come back here each time the
        queue drains without the task ever suspending: audit 66)."""
        if nbytes:
            if not self._spent:
                self._loop.call_soon(self._spent_reset)
            self._spent += nbytes

    def _spent_reset(self) -> None:
        self._spent = 0

    def _backlog_step(self) -> None:
        """Frames wait in ``protocol.backlog`` (compressed messages ``batch_room`` or
        ``batch_bytes`` left): go on with them now while the queue has room, up to
        ``_INFLATE_BUDGET`` bytes of messages in this loop iteration (``_spend``); past it, on
        the next iteration (``_backlog_run``), reading paused meanwhile; with the queue full,
        once the application takes messages (``_maybe_resume``). The backlog always comes
        before anything read later."""
        proto = self.protocol
        assert proto is not None
        self._in_backlog = True
        try:
            while proto.backlog is not None:
                max_queue = self._max_queue
                if max_queue is not None and len(self._messages or ()) >= max_queue:
                    if not self._paused_reading and self.transport is not None:
                        self._paused_reading = True
                        self._pause_reading()
                    return
                if self._spent >= _INFLATE_BUDGET:
                    if not self._budget_paused and self.transport is not None:
                        self._budget_paused = True
                        self._pause_reading()
                        self._loop.call_soon(self._backlog_run)
                    return
                self._dispatch(proto.receive_frames([]))
                self._spend(proto.batch_spent)
        finally:
            self._in_backlog = False

    def _backlog_run(self) -> None:
        """The next loop iteration's share of the backlog (``_backlog_step``); reading resumes
        once it is done, unless the queue is full."""
        self._budget_paused = False
        self._spent = 0
        proto = self.protocol
        if proto is None or self.transport is None:
            return
        if proto.backlog is not None and not self._in_backlog:
            self._backlog_step()
        if not self._budget_paused and not self._paused_reading and not self._paused_for_write:
            self._resume_reading()

    def _on_pong(self, ev: Pong) -> None:
        now = self._loop.time()
        clock = time.perf_counter()
        for _, tag in ev.acked:
            if tag is None:
                continue
            fut, sent = tag
            # perf_counter, not loop.time(): uvloop's clock has millisecond steps, which
            # would report a local round trip as 0.0.
            self.latency = clock - sent
            if fut is None:  # keepalive ping
                if self._keepalive is not None:
                    self._keepalive.pong_received(now)
                    # The next tick may have been set at the ping's timeout, or not at all
                    # (ping_timeout=None): schedule it from the new deadline.
                    if self._ka_handle is not None:
                        self._ka_handle.cancel()
                        self._ka_handle = None
                    if self.protocol is not None and self.protocol.state is State.OPEN:
                        self._schedule_keepalive()
            elif not fut.done():
                fut.set_result(clock - sent)

    def _on_closed(self, ev: Closed) -> None:
        if ev.error is not None:
            logger.info("failing connection %s: %s (code %d)", self.remote_address, ev.error.reason, ev.error.code)
        waiter = self._waiter
        if waiter is not None and not self._messages and not waiter.done():
            self._waiter = None
            waiter.set_result(None)

    def _after_closed(self) -> None:
        """CLOSED reached: close TCP now (server, failure) or after ``close_timeout`` (client)."""
        transport = self.transport
        if transport is None:
            return
        if self._ka_handle is not None:
            self._ka_handle.cancel()
            self._ka_handle = None
        self._stop_backpressure()  # a client must see the server's EOF even with a full queue
        proto = self.protocol
        if proto.close_transport:  # type: ignore[union-attr]
            if proto.failed and not proto.eof_received and transport.can_write_eof():  # type: ignore[union-attr]
                # Failing with the peer perhaps still sending (the rest of an oversized
                # message...): closing with unread bytes would make the kernel reset the
                # connection, which can destroy our close frame before the peer reads it.
                # Half-close after it instead and read (dropping everything: the parser has
                # failed) until the peer's EOF, bounded by close_timeout below.
                transport.write_eof()
            elif not transport.is_closing():
                # Once only: asyncio's TLS transport closed a second time lets go of its TLS
                # layer, and its abort() then does nothing; our close_timeout would wait for
                # asyncio's 30 s TLS shutdown timeout (audit 86).
                transport.close()
        # Bounded: a peer that neither reads our buffer nor closes TCP is dropped after close_timeout.
        self._arm_abort()

    def _stop_backpressure(self) -> None:
        """Closing: read regardless of the queue so the peer's close frame and EOF get through.

        Messages still arriving are queued up to ``max_queue`` and dropped beyond it, so
        nothing accumulates without bound.
        """
        if self._max_queue is not None:
            self._drop_limit = self._max_queue
        self._max_queue = None
        proto = self.protocol
        if proto is not None:
            if proto.backlog is not None and proto.state is not State.CLOSED and not self._in_backlog:
                # (The peer's close frame may wait there; unbounded now, but still a budget
                # per loop iteration: fairness.)
                self._backlog_step()
        if self._paused_reading or self._paused_for_write:
            self._paused_reading = self._paused_for_write = False
            if not self._budget_paused:
                self._resume_reading()
            self._keepalive_resumed()
        if self._messages and self._on_message is not None:
            self._feed_callback()  # held back by _paused_for_write: the callback still gets them

    def _keepalive_resumed(self) -> None:
        """Reading resumes after our own backpressure: see ``Keepalive.reading_resumed``."""
        ka = self._keepalive
        if ka is not None:
            ka.reading_resumed(self._loop.time())

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 §7.1.7): close frame if possible, then close TCP."""
        proto = self.protocol
        if proto is not None and proto.state is not State.CLOSED:
            proto.fail(code, reason)
            self._dispatch([Closed(1006, "")])

    def _arm_abort(self) -> None:
        if self._close_handle is None and self.transport is not None:
            timeout = self._opts.close_timeout
            self._close_handle = self._loop.call_later(timeout if timeout is not None else 10.0, self._abort)

    def _abort(self) -> None:
        """The closing handshake timed out (``close_timeout``): drop the connection."""
        if self.transport is not None:
            # (docs/guide.md "Logging": timeouts at INFO, as the blocking layer's.)
            logger.info("closing the connection with %s timed out (close_timeout): dropping it", self.remote_address)
        self._drop()

    def _drop(self) -> None:
        """Drop the connection after a timeout (resetting TCP if the peer left data unread)."""
        self._close_handle = None
        self._fd = -1  # no more direct writes (see AsyncCore._send_now)
        if self.transport is not None:
            _tcp.reset_if_unsent(self.transport.get_extra_info("socket"))
            self.transport.abort()

    # ------------------------------------------------------------ keepalive

    def _schedule_keepalive(self) -> None:
        ka = self._keepalive
        if ka is None or ka.deadline is None:
            return
        # (Off asyncio's own loop: a scheduled timer costs its every iteration; see _timers.)
        self._ka_handle = _timers.call_at(self._loop, ka.deadline, self._keepalive_tick)

    def _keepalive_tick(self) -> None:
        self._ka_handle = None
        ka = self._keepalive
        proto = self.protocol
        if ka is None or proto is None or proto.state is not State.OPEN or self.transport is None:
            return
        now = self._loop.time()
        action = ka.poll(now)
        if action == "ping":
            payload = ka.new_payload(proto.pings)
            self._write(proto.send_ping(payload, (None, time.perf_counter())))
            sock = self.transport.get_extra_info("socket")
            acked = _tcp.bytes_acked(sock)
            if acked is None:
                ka.ping_sent(now)
            else:  # where the ping ends in what we send: see Keepalive.ping_in_flight
                ka.ping_sent(now, acked + _tcp.kernel_unsent(sock) + unsent_bytes(self.transport), acked)
        elif action == "timeout":
            acked = _tcp.bytes_acked(self.transport.get_extra_info("socket"))
            if self._paused_for_write:
                # Reading paused by write_limit while on_message answers from the read path:
                # a peer that reads our answers is alive (its pong may be sitting unread), as is
                # one whose TCP still takes the data queued before the ping.
                wait = self._peer_reads() or ka.ping_in_flight(acked)
            elif self._paused_reading:
                # Our own backpressure (max_queue, the application not reading) stopped
                # reading: the pong may be sitting unread, which says nothing about the peer,
                # unless the peer's TCP has stopped acknowledging what we send.
                wait = ka.pong_may_be_unread(acked, _tcp.retransmitting(self.transport.get_extra_info("socket")))
            else:  # the ping may be behind our own data, which the peer is still reading
                wait = ka.ping_in_flight(acked)
            if wait:
                logger.debug("keepalive ping on %s may be answered yet: waiting on", self.remote_address)
                ka.deferred(now)
            else:
                logger.info("keepalive ping timeout on %s: closing with 1011", self.remote_address)
                self._fail(1011, "keepalive ping timeout")
                transport = self.transport
                if transport is not None and unsent_bytes(transport) > 0:
                    # Our close frame waits behind data the peer has not taken for a whole
                    # timeout: drop the connection now, not close_timeout later, so that a
                    # send() waiting for drain learns it at once (as recv() does).
                    if self._close_handle is not None:
                        self._close_handle.cancel()
                    self._drop()
                return
        self._schedule_keepalive()

    def _peer_reads(self) -> bool:
        """Reading paused by ``_paused_for_write``: has the peer read any of what we sent since
        the last look? (The first look says yes: it only sets the mark.) The kernel's send
        queue counts: it drains as the peer reads while the transport's buffer may not move."""
        transport = self.transport
        unsent = unsent_bytes(transport) + kernel_unsent(transport)
        last, self._ka_unsent = self._ka_unsent, unsent
        return last < 0 or unsent < last

    # ------------------------------------------------------------ sending

    def _write(self, data: bytes) -> None:
        """Write a frame after any held back by send(): every write but send()'s own goes here."""
        transport = self.transport
        if transport is not None and data:
            if self._cork:
                self._uncork()
            self._twrite(data)

    def _uncork(self) -> None:
        """Write the frames held back by send() (no-op when there are none)."""
        cork = self._cork
        if cork is None:
            return
        self._cork = None
        if cork and self.transport is not None:
            self._twrite(cork[0] if len(cork) == 1 else b"".join(cork))

    async def _yield_to_loop(self) -> None:
        """``send()`` after ``_SEND_YIELD_EVERY`` sends that did not suspend: let the loop run."""
        self._unyielded = 0
        await asyncio.sleep(0)

    async def _drain(self) -> None:
        self._unyielded = 0
        while self._write_paused:
            if self.transport is None:  # lost with our data still buffered
                raise self.protocol.closed_exception()  # type: ignore[union-attr]
            if self._drain_waiter is None or self._drain_waiter.done():
                self._drain_waiter = self._loop.create_future()
            await asyncio.shield(self._drain_waiter)

    if TYPE_CHECKING:  # the coroutine API's hot calls are AsyncCore's (C with the Cython twin)

        async def send(self, message: Message, compress: bool | None = None) -> None:
            """Send a message: str → text, bytes-like → binary, (async) iterable → fragmented."""

        async def recv(self, timeout: float | None = None) -> str | bytes | None:
            """Return the next message (str or bytes), or None once the connection is closed."""

        def __aiter__(self) -> AsyncIterator[str | bytes]:
            """``async for message in ws`` yields messages until the connection closes."""

        async def __anext__(self) -> str | bytes:
            """The next message; StopAsyncIteration once closed."""

    async def _send_slow(self, message: Any, compress: bool | None) -> None:
        """``send()`` (AsyncCore) for what its fast path declines: compression, fragments,
        a frame that must wait behind others, a connection not open."""
        proto = self.protocol
        if proto is None:
            raise InvalidState("the connection is not open")
        try:
            transport = self.transport
            if transport is not None and transport.is_closing() and proto.state is _OPEN:
                # Lost (a write failed): asyncio tells the protocol through the loop, so let it
                # run; a task sending in a loop would otherwise never learn it (and block the loop).
                await self._yield_to_loop()
            t = type(message)
            if t is str or t is bytes or t is bytearray or t is memoryview or isinstance(message, (str, bytes, bytearray, memoryview)):
                try:
                    data = proto.send(message, compress)
                except InvalidState:
                    if self._frag_done is None:
                        raise
                    # Another task is sending a fragmented message: wait for its end (off the hot path).
                    await self._wait_fragmented()
                    return await self.send(message, compress)
                transport = self.transport
                if transport is None:
                    raise proto.closed_exception()
                if proto.deflate is not None and compress is not False:
                    # Deflating is the costly part: weigh it towards the yield (_DEFLATE_YIELD_UNIT).
                    size = message.nbytes if t is memoryview else len(message)
                    self._unyielded += size // _DEFLATE_YIELD_UNIT
                cork = self._cork
                if type(data) is tuple:  # large frame: header, then the payload itself (no copy)
                    if cork:
                        self._uncork()
                    self._write_pair(transport, data[0], data[1])
                elif len(data) > 65536:
                    if cork:
                        self._uncork()
                    self._twrite(memoryview(data))
                elif cork is not None:
                    cork.append(data)
                    self._cork_size += len(data)
                    if not self._messages or self._cork_size > _CORK_MAX:
                        self._uncork()
                elif self._messages:
                    # Speed: more received messages wait for the application, so most likely more
                    # sends follow in this same task step (a pipelining peer): hold the frames
                    # back and write them together, once the backlog is answered (above) or at the
                    # next loop iteration, whichever comes first. One write for many messages.
                    self._cork = [data]
                    self._cork_size = len(data)
                    self._loop.call_soon(self._uncork)
                else:
                    self._twrite(data)
            elif hasattr(message, "__aiter__"):
                await self._send_fragments_async(message, compress)
            elif hasattr(message, "__iter__") and not isinstance(message, dict):
                await self._send_fragments(message, compress)
            else:
                # (A buffer such as an mmap is neither: the caller wraps it in memoryview(), as in
                # queueable() and send_nowait(); it was framed and dropped without a word: audit.)
                raise TypeError(f"message must be str, bytes-like or an iterable of them, not {type(message).__name__}")
            if self._write_paused:
                await self._drain()
            else:
                self._unyielded += 1
                if self._unyielded >= _SEND_YIELD_EVERY:
                    await self._yield_to_loop()
            return
        except ConnectionClosed:
            if proto.state is not State.CLOSING:
                raise
        # Our close frame is out and the peer's answer awaited: how the connection ends
        # (ConnectionClosedOK after a clean handshake) is not known yet. Wait for it (bounded
        # by close_timeout), as websockets does, rather than report 1006 now.
        await self.wait_closed()
        raise proto.closed_exception()

    def _write_pair(self, transport: Any, head: bytes, payload: bytes) -> None:
        """Write a large frame given as header + payload: on an idle plain socket, one
        ``writev`` (the header never travels alone, which would wake the peer for 10 bytes
        and cost it a second read); what the kernel does not take goes to the transport."""
        n = 0
        if _WRITEV and self._fd >= 0 and not transport.get_write_buffer_size() and not transport.is_closing():
            try:
                n = os.writev(self._fd, (head, payload))
            except OSError:  # would block, or the connection failed: the transport finds out
                n = 0
        hlen = len(head)
        if n < hlen:
            self._twrite(memoryview(head)[n:] if n else head)
            n = hlen
        if n - hlen < len(payload):
            # memoryview: a partial send then keeps the rest without slicing a copy of it.
            self._twrite(memoryview(payload)[n - hlen :])

    def _write_frame(self, frame: Any, message: Any, limit: int, close_code: int | None, direct: list[Any] | None = None) -> int:
        """``broadcast()``'s hook: write ``frame`` (None: build this connection's own, masked,
        uncompressed frame of ``message``) unless it would take the transport's buffer past
        ``limit``; never waits. With ``direct`` (a list), a plain socket with nothing buffered
        is appended to it instead: the caller writes ``frame`` to it at once, with the others,
        before anything else can run, and hands what the kernel did not take to the transport.

        Returns:
            0 written (or to be written); 1 too slow (failed with ``close_code`` when given);
            2 not open; 3 a fragmented message is being sent (nothing written).
        """
        proto = self.protocol
        transport = self.transport
        if proto is None or transport is None or proto.state is not State.OPEN:
            return 2
        if proto._send_frag_open:
            return 3
        if self._cork:
            self._uncork()  # our own earlier frames go first
        size = len(frame) if frame is not None else len(message)
        buffered = unsent_bytes(transport)
        if direct is not None and not buffered and self._fd >= 0 and frame is not None and size <= limit:
            if not transport.is_closing():
                direct.append(self)
                return 0
        if buffered and buffered + size > limit:  # (nothing waiting: it goes, whatever its size)
            if close_code is not None:
                self._fail(close_code, "too slow for a broadcast")
            return 1
        if frame is None:
            frame = proto.send(message, False)
            if type(frame) is tuple:  # pragma: no cover - only server frames are split
                self._twrite(frame[0])
                frame = frame[1]
        self._twrite(frame)
        return 0

    async def _wait_fragmented(self) -> None:
        if self._frag_done is not None and self._frag_task is asyncio.current_task():
            # From the (async) iterable of this task's own fragmented send: waiting for its
            # end would never end (audit: a deadlock; websockets' too).
            raise InvalidState("send() called while this task sends a fragmented message (from its iterable)")
        while self._frag_done is not None:
            await asyncio.shield(self._frag_done)

    async def _send_fragments(self, fragments: Any, compress: bool | None) -> None:
        await self._send_fragments_async(_as_async_iter(fragments), compress)

    async def _send_fragments_async(self, fragments: Any, compress: bool | None) -> None:
        await self._wait_fragmented()
        proto = self.protocol
        assert proto is not None
        it = fragments.__aiter__()
        # Reserved from now on, while the iterable is read ahead: other tasks' whole messages
        # wait for this one, this task's raise InvalidState (they slipped ahead: audit).
        proto.begin_fragments()
        self._frag_done = done = self._loop.create_future()
        self._frag_task = asyncio.current_task()
        started = False
        try:
            try:
                prev = await it.__anext__()
            except StopAsyncIteration:
                return
            while True:
                try:
                    item = await it.__anext__()
                except StopAsyncIteration:
                    break
                self._write(proto.send_fragment(prev, False, compress))
                started = True
                if self._write_paused:
                    await self._drain()
                else:
                    # As send(): a lost connection is reported through the loop; let it run.
                    self._unyielded += 1
                    transport = self.transport
                    if self._unyielded >= _SEND_YIELD_EVERY or transport is None or transport.is_closing():
                        await self._yield_to_loop()
                prev = item
            self._write(proto.send_fragment(prev, True, compress))
        except BaseException:
            # Half a message is out: the connection cannot be used any more. Unless it is
            # already closing (close() from another task, the peer's close frame): then the
            # closing handshake goes on, as in the blocking layer.
            if started and proto.state is _OPEN:
                self._fail(1011, "error in fragmented message")
            raise
        finally:
            proto.abandon_fragments()
            self._frag_done = self._frag_task = None
            done.set_result(None)

    def _send_nowait_slow(self, message: Any, compress: bool | None) -> None:
        """``send_nowait()`` (AsyncCore) for what ``_send_now`` declines."""
        proto = self.protocol
        if proto is None:
            raise InvalidState("the connection is not open")
        if not isinstance(message, (str, bytes, bytearray, memoryview)):
            raise TypeError(f"send_nowait() sends one whole message, str or bytes-like, not {type(message).__name__}")
        data = proto.send(message, compress)
        transport = self.transport
        if transport is None:
            raise proto.closed_exception()
        cork = self._cork
        if type(data) is tuple:  # large frame: header, then the payload itself (no copy)
            self._uncork()
            self._write_pair(transport, data[0], data[1])
        elif cork is not None and len(data) <= 65536:  # frames held back: this one joins them
            cork.append(data)  # type: ignore[arg-type]
            self._cork_size += len(data)
            if self._cork_size > _CORK_MAX:
                self._uncork()
        else:
            self._write(memoryview(data) if len(data) > 65536 else data)  # type: ignore[arg-type]

    async def drain(self) -> None:
        """Wait until the outgoing buffer is below ``write_limit`` (after ``send_nowait``).

        Raises:
            ConnectionClosed: the connection was lost with data still buffered.
        """
        if self._write_paused:
            await self._drain()

    @property
    def on_message(self) -> Callable[[Any], Any] | None:
        """A callback receiving every message (str or bytes) as it arrives, instead of ``recv()``.

        Called from the protocol callback, so it must not block; it can answer with
        ``send_nowait()`` (an echo: ``ws.on_message = ws.send_nowait``). Messages already
        queued go to it at once, in order, when it is set. An exception it raises is logged
        and closes the connection with 1011. ``None`` (the default) queues messages for
        ``recv()`` again. Closing does not call it: ``await ws.wait_closed()``.

        Raises (on assignment):
            TypeError: neither callable nor None, or a coroutine function (never awaited).
            InvalidState: a ``recv()`` is being awaited.
        """
        return self._on_message  # type: ignore[no-any-return]

    @on_message.setter
    def on_message(self, callback: Callable[[Any], Any] | None) -> None:
        if callback is not None and not callable(callback):
            raise TypeError("on_message must be a callable or None")
        if inspect.iscoroutinefunction(callback) or inspect.iscoroutinefunction(getattr(callback, "__call__", None)):
            # (An object whose __call__ is async too: every message was dropped, audit.)
            raise TypeError("on_message must be a plain function (it is called without being awaited), not a coroutine function")
        if callback is not None and self._waiter is not None and not self._waiter.done():
            raise InvalidState("recv() is being awaited: on_message cannot be set now")
        self._on_message = callback
        if callback is not None and self._write_paused and not self._paused_for_write and self.transport is not None:
            # The buffer passed write_limit before the callback was set (a large greeting, a
            # broadcast): pause_writing came and went, so pause reading now, as it would have
            # (audit: the callback's answers to a peer that does not read grew without bound).
            self._paused_for_write = True
            self._pause_reading()
        self._feed_callback()
        if self._paused_reading and self._on_message is not None:
            # On the next loop iteration: set from inside a callback, resuming now would
            # dispatch later messages (the compressed backlog) before the rest of the batch
            # being delivered (audit: out of order).
            self._loop.call_soon(self._maybe_resume)

    def _feed_callback(self) -> None:
        """Hand queued messages to ``on_message`` in order, until none is left, the callback
        changes or fails, or its answers fill the write buffer (``_paused_for_write``)."""
        callback = self._on_message
        messages = self._messages
        while callback is not None and messages and self._on_message is callback and not self._paused_for_write:
            try:
                callback(messages.popleft())
            except (KeyboardInterrupt, SystemExit):
                raise  # stops the loop, as from any callback
            except BaseException as exc:
                # CancelledError too (a cancelled future's result()): it would otherwise
                # escape into asyncio, which kills the transport without a close frame or a log.
                self._callback_failed(exc)

    def _callback_failed(self, exc: BaseException) -> None:
        """``on_message`` raised: log it and fail the connection with 1011.

        ``ConnectionClosed`` from this connection (an answer to a message that arrived just
        before the peer's close) is no failure: the connection is closing anyway. From
        another one (a relay), it is, as for a handler.
        """
        if isinstance(exc, ConnectionClosed) and not self.open:
            logger.debug("on_message on %s: %s", self.remote_address, exc)
            return
        logger.error("on_message callback failed on %s: closing with 1011", self.remote_address, exc_info=exc)
        self._on_message = None
        self._fail(1011, "on_message callback failed")

    async def send_json(self, obj: Any) -> None:
        """Send ``obj`` as a JSON text message."""
        await self.send(json.dumps(obj))

    async def ping(self, data: bytes | str = b"") -> asyncio.Future[float]:
        """Send a ping; return a future resolving to the round-trip time when the pong arrives.

        Without ``data``, a random payload. A pong answers its ping and every earlier one.

        Raises:
            ConnectionClosed: the connection is closing or closed.
            ValueError: more than 125 bytes, or a ping with this payload is in flight.
        """
        proto = self.protocol
        if proto is None:
            raise InvalidState("the connection is not open")
        payload = control_payload(data)
        while not payload:  # (a given payload already in flight: ValueError, from send_ping)
            payload = os.urandom(4)
            if payload in proto.pings:
                payload = b""
        fut: asyncio.Future[float] = self._loop.create_future()
        self._write(proto.send_ping(payload, (fut, time.perf_counter())))
        if self._write_paused:
            await self._drain()
        return fut

    async def pong(self, data: bytes | str = b"") -> None:
        """Send an unsolicited pong."""
        proto = self.protocol
        if proto is None:
            raise InvalidState("the connection is not open")
        self._write(proto.send_pong(data))

    # ------------------------------------------------------------ receiving

    def _maybe_resume(self) -> None:
        max_queue = self._max_queue or 1
        if len(self._messages or ()) <= max_queue // 4 and self.transport is not None:
            proto = self.protocol
            if proto is not None and proto.backlog is not None:
                self._backlog_step()  # what batch_room left comes before reading more
                if self._max_queue is not None and len(self._messages or ()) >= self._max_queue:
                    return  # full again
            self._paused_reading = False
            if not self._paused_for_write and not self._budget_paused:
                self._resume_reading()
                self._keepalive_resumed()

    async def recv_json(self, timeout: float | None = None) -> Any:
        """Receive a message and decode it as JSON; None once closed."""
        msg = await self.recv(timeout)
        return None if msg is None else json.loads(msg)

    # ------------------------------------------------------------ closing

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Run the closing handshake (bounded by ``close_timeout``), then close TCP."""
        self._app_closed = True
        await self._close(code, reason)

    async def _close(self, code: int = 1000, reason: str = "") -> None:
        """``close()`` as the library uses it: not a close the application asked for."""
        proto = self.protocol
        transport = self.transport
        if proto is None:
            if transport is not None:
                transport.close()
            return
        if transport is not None and proto.state is State.OPEN:
            self._write(proto.send_close(code, reason))
            self._stop_backpressure()  # the peer's close frame may be behind a full queue
            self._arm_abort()
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Wait until TCP is closed."""
        await asyncio.shield(self._closed_fut)

    async def _wait_ended(self) -> None:
        """Wait until the connection is CLOSED: its closing handshake over (or failed, or TCP
        lost). TCP may still be closing, bounded by ``close_timeout``: a reconnecting client
        decides from here, not after a server that keeps TCP open (audit: recv() returned None,
        or the reconnection began, ``close_timeout`` late)."""
        proto = self.protocol
        if proto is None or proto.state is State.CLOSED or self._closed_fut.done():
            return
        if self._ended is None:
            self._ended = self._loop.create_future()
        await asyncio.wait((self._ended, self._closed_fut), return_when=asyncio.FIRST_COMPLETED)

    def abort(self) -> None:
        """Drop the TCP connection at once, without a closing handshake."""
        self._app_closed = True
        self._fd = -1  # no more direct writes (see AsyncCore._send_now)
        if self.transport is not None:
            self.transport.abort()
            # The transport reports it at the next loop iteration; the connection is closed
            # (1006) now, as in the blocking layer: send() raises, recv() returns None.
            proto = self.protocol
            if proto is not None and proto.state is not State.CLOSED:
                # What still waits compressed in the backlog is dropped with the connection:
                # delivered now, from inside an on_message callback that aborts, it would
                # overtake the rest of the batch being delivered (audit 66).
                proto.backlog = None
                self._dispatch(proto.receive_eof())

    async def __aenter__(self) -> "AsyncWebSocket":
        """The connection itself, closed on exit."""
        return self

    async def __aexit__(self, exc_type: Any, *exc: Any) -> None:
        """Close the connection on leaving the ``async with`` block: 1000, or 1011 if it
        raised (1001 if cancelled)."""
        await self.close(exit_close_code(exc_type))

    def __repr__(self) -> str:
        state = self.protocol.state.name if self.protocol is not None else "CONNECTING"
        return f"<AsyncWebSocket {self.side} {state} {self.remote_address}>"


async def _as_async_iter(iterable: Any) -> AsyncIterator[Any]:
    """An async iterator over a plain iterable (one code path for fragmented sends)."""
    for item in iterable:
        yield item
