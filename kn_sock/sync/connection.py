"""``WebSocket``: one blocking connection driving the sans-I/O core, with no thread of its own.

Design (threads and who touches the socket):

- Once the opening handshake is done, no call on the socket blocks except the reading
  application thread's own ``recv_into`` (a plain socket stays in blocking mode and every
  other call passes MSG_DONTWAIT; a TLS socket is non-blocking). Two parties may read it:
  an application thread inside ``recv()`` and the process's shared reactor thread
  (:mod:`kn_sock._reactor`). ``_read_lock`` says who: whoever holds it reads the socket
  (``recv_into`` the parser's ``get_buffer()``) and feeds the parser. The reactor only ever
  *tries* to take it and never waits.
- ``recv()`` first pops the message queue. When the queue is empty, the calling thread takes
  the socket: it takes ``_read_lock``, removes the socket from the reactor's interest set and
  reads it itself (a blocking ``recv_into``; poll first when a timeout is given), so a
  request/response loop costs no thread switch.
  On the way out it keeps the socket for a little longer (lazy hand-back): the reactor's
  tick, running every ``HOLD_TICK`` (10 ms) only while some connection is held, gives the
  socket back to the reactor once the application has stayed out of ``recv()`` for a tick.
  A tight request/response loop therefore makes no ``epoll_ctl`` call and never wakes the
  reactor; an application that goes elsewhere has its pings answered within 10-20 ms.
- While no application thread is reading, the reactor watches the socket: it answers pings,
  runs the closing handshake and keepalive, and queues messages; at ``max_queue`` queued
  messages it stops reading (TCP backpressure) until ``recv()`` drains the queue to a quarter.
- ``_lock`` guards the ``Protocol`` and the write buffer for short, never-blocking critical
  sections. Frames are written at once with a non-blocking ``send``; what the kernel does
  not take is buffered and flushed by the reactor; a sender blocks (flushing itself) while
  more than ``write_limit`` bytes are pending. ``_send_lock`` serialises whole messages
  between threads (a fragmented message is never interleaved with another one).
- The socket is shut down to wake any thread blocked on it, and its descriptor is closed
  only once no thread is using it (so it can never be reused under a poller).

Timers (keepalive, ``close_timeout``) run in the reactor. Every wait is bounded by
``close_timeout`` or by the caller's timeout, and is woken when the connection closes.
"""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import ssl as ssl_module
import threading
import time
from collections import deque
from time import monotonic as _monotonic
from typing import Any, Iterator

from .. import _tcp
from .._malloc import tune_malloc_once
from ..exceptions import ConnectionClosed, InvalidState
from ..frames import OP_BINARY, OP_TEXT
from ..http11 import Headers
from ..options import Options, checked_timeout
from ..protocol import INFLATE_BUDGET as _INFLATE_BUDGET
from ..protocol import Closed, Keepalive, Ping, Pong, Protocol, State, control_payload, exit_close_code
from .._reactor import EVENT_READ, EVENT_WRITE, HOLD_TICK, Timer, get_reactor

from .._types import SyncMessage  # annotations (resolvable at run time too, e.g. get_type_hints)

__all__ = ["WebSocket", "PongWaiter"]

logger = logging.getLogger("kn_sock")

_OPEN = State.OPEN

#: A read that brought more frames than this (a peer flooding tiny frames or pings) is
#: followed by a short sleep of the reading thread (the reactor's or the application's):
#: it held the GIL parsing them, and the other connections' threads, each waiting for the
#: GIL, took ~5 ms (the interpreter's switch interval) per handover, tens of ms a round trip.
_FAIR_FRAMES = 1024
_FAIR_SLEEP = 0.0002


def _fair_pause() -> None:
    """Let the threads waiting for the GIL run (see ``_FAIR_FRAMES``)."""
    time.sleep(_FAIR_SLEEP)
_CLOSED = State.CLOSED
_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl_module.SSLWantReadError, ssl_module.SSLWantWriteError)
_HAS_POLL = hasattr(select, "poll")
#: Plain sockets stay in blocking mode: the application thread's ``recv()`` then sleeps in
#: ``recv_into`` itself (one system call per read, no poll first), while every other socket
#: call passes MSG_DONTWAIT and never blocks. TLS sockets (and systems without MSG_DONTWAIT)
#: are non-blocking instead, and a reading application thread polls before reading.
_DONTWAIT: int = getattr(socket, "MSG_DONTWAIT", 0)
_HAS_SENDMSG: bool = hasattr(socket.socket, "sendmsg")  # not on Windows
#: FrameParser.recv_from (one C call: recv(2) + parse) reads plain sockets on POSIX.
_RECV_FROM: bool = os.name == "posix"


class PongWaiter:
    """What ``WebSocket.ping()`` returns: ``wait(timeout)`` is True once the pong arrived.

    ``rtt`` (also ``latency``) is the round-trip time in seconds, None until the pong arrives.
    If the connection closes first, ``wait`` returns False at once.
    """

    __slots__ = ("_event", "rtt")

    def __init__(self) -> None:
        self._event = threading.Event()
        self.rtt: float | None = None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the pong arrives (True), the connection closes or ``timeout`` passes (False)."""
        return self._event.wait(timeout) and self.rtt is not None

    def is_set(self) -> bool:
        """True once the pong arrived."""
        return self.rtt is not None

    @property
    def latency(self) -> float | None:
        """Same as ``rtt``."""
        return self.rtt

    def _set(self, rtt: float | None) -> None:
        self.rtt = rtt
        self._event.set()


class WebSocket:
    """A blocking WebSocket connection (client or server side).

    Created by ``connect_websocket`` or by the server after the opening handshake. Every
    method may be called from any thread; ``send`` may be called by several at once.
    """

    __slots__ = (
        "__weakref__",
        "side",
        "protocol",
        "_opts",
        "_sock",
        "_fd",
        "_wm",
        "_masked",
        "_ssl",
        "_io_lock",
        "_nb",
        "_direct",
        "_parser",
        "_lock",
        "_read_lock",
        "_send_lock",
        "_frag_thread",
        "_asleep",
        "_messages",
        "_max_queue",
        "_read_paused",
        "_dropping",
        "_aborting",
        "_backlog_later",
        "_error_held",
        "_app_reading",
        "_held",
        "_held_since",
        "_app_writers",
        "_interest",
        "_wbuf",
        "_wbuf_size",
        "_write_limit",
        "_close_after_flush",
        "_half_closed",
        "_write_dead",
        "_half_close_after_flush",
        "_eof",
        "_sock_done",
        "_fd_closed",
        "_done",
        "_ended",
        "_keepalive",
        "_ka_timer",
        "_close_timer",
        "_rpoll",
        "_reactor",
        "path",
        "request_headers",
        "response_headers",
        "remote_address",
        "local_address",
        "latency",
        "_app_closed",
    )

    def __init__(self, sock: socket.socket, protocol: Protocol, opts: Options) -> None:
        """Wrap a socket whose opening handshake succeeded; call ``_start`` to begin I/O."""
        self.side = protocol.side
        self.protocol = protocol
        self._opts = opts
        self._app_closed = False  # close() or abort() was called: a reconnecting client stops (reconnect.py)
        self._ended: threading.Event | None = None  # made by _wait_ended, set at CLOSED
        self._sock: Any = sock  # socket.socket or ssl.SSLSocket
        self._fd = sock.fileno()
        self._ssl = isinstance(sock, ssl_module.SSLSocket)
        # OpenSSL objects must not be used by two threads at once: serialise TLS calls.
        self._io_lock = threading.Lock() if self._ssl else None
        # Flags of the never-blocking calls on a plain socket in blocking mode (0: non-blocking socket).
        self._nb = _DONTWAIT if not self._ssl else 0
        # recv() may read this socket itself with FrameParser.recv_from (plain socket, POSIX).
        self._direct = self._nb != 0 and _RECV_FROM
        # send() of a whole str/bytes message: framed and written by one call of the twins'
        # write_message (plain socket, POSIX; not with compression, which frames otherwise).
        backend = protocol.backend
        self._wm = (
            backend.write_message
            if self._direct and _HAS_SENDMSG and protocol.deflate is None
            and protocol._masks in (None, backend.next_mask)
            else None
        )
        self._masked = protocol._masks is not None
        self._parser = protocol.parser
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._frag_thread = 0  # the thread sending a fragmented message (holding _send_lock)
        self._asleep = False  # _abort_asleep is running: _finalize leaves the reader asleep
        self._messages: deque[Any] = deque()
        self._max_queue = opts.max_queue
        self._read_paused = False
        self._dropping = False  # closing, a message was dropped: so is every later one
        self._aborting = False  # dropped (abort(), a timeout): no TLS close_notify
        self._error_held = False  # a parser error waits for the messages before it (_hold_error)
        self._backlog_later = False  # the reactor goes on with protocol.backlog soon (reading paused)
        self._app_reading = False
        self._held = False
        self._held_since = 0.0
        self._app_writers = 0
        self._interest = 0
        self._wbuf: deque[Any] = deque()
        self._wbuf_size = 0
        self._write_limit = opts.write_limit
        self._close_after_flush = False
        self._half_closed = False
        self._half_close_after_flush = False
        self._write_dead = False  # a write failed: the peer is gone, what it sent is read on
        self._eof = False
        self._sock_done = False
        self._fd_closed = False
        self._done = threading.Event()
        self._keepalive: Keepalive | None = None
        self._ka_timer: Timer | None = None
        self._close_timer: Timer | None = None
        self._rpoll: Any = None
        self._reactor = get_reactor()
        self.path = "/"
        self.request_headers = Headers()
        self.response_headers = Headers()
        try:
            self.remote_address: Any = sock.getpeername()
        except OSError:
            self.remote_address = None
        self.local_address: Any = sock.getsockname()
        self.latency = 0.0

    # ------------------------------------------------------------ public attributes

    @property
    def closed(self) -> bool:
        """True once the connection is closing or closed (no more sends possible)."""
        return self._sock_done or self.protocol.state >= State.CLOSING

    @property
    def open(self) -> bool:
        """True while messages can be sent."""
        return not self._sock_done and self.protocol.state is _OPEN

    @property
    def close_code(self) -> int | None:
        """The code of the peer's close frame (1005: none given, 1006: no close frame), None while open."""
        proto = self.protocol
        if proto.close_rcvd is not None:
            return proto.close_rcvd[0]
        return 1006 if proto.state is _CLOSED else None

    @property
    def close_reason(self) -> str | None:
        """The reason of the peer's close frame ("" if none), None while open."""
        proto = self.protocol
        if proto.close_rcvd is not None:
            return proto.close_rcvd[1]
        return "" if proto.state is _CLOSED else None

    @property
    def subprotocol(self) -> str | None:
        """The negotiated subprotocol, or None."""
        return self.protocol.subprotocol

    @property
    def extensions(self) -> list[str]:
        """Names of the negotiated extensions, e.g. ``["permessage-deflate"]``."""
        return [ext.name for ext in self.protocol.extensions]

    # ------------------------------------------------------------ opening (called by client/server)

    def _start(self, remainder: bytes = b"") -> None:
        """The handshake succeeded: go non-blocking, start keepalive, hand the socket to the reactor."""
        tune_malloc_once()  # (from the main thread only: the server's handler threads never do)
        self._sock.setblocking(bool(self._nb))
        opts = self._opts
        with self._lock:
            if self.protocol.deflate is not None:
                # One read of highly compressed messages must not inflate past the queue bound,
                # nor hold the reactor thread while it inflates (_INFLATE_BUDGET).
                self.protocol.batch_room = self._queue_room
                self.protocol.batch_bytes = _INFLATE_BUDGET
            if opts.ping_interval:
                self._keepalive = Keepalive(opts.ping_interval, opts.ping_timeout, time.monotonic())
                self._schedule_keepalive()
            if remainder:
                proto = self.protocol
                frames = proto.parser.feed(remainder)
                hold = bool(frames) and proto.parser.error is not None
                self._dispatch(proto.receive_frames(frames, hold))
                if hold:
                    self._hold_error()
                self._backlog_step()
            self._update_interest()

    # ------------------------------------------------------------ reactor interface (reactor thread)

    def _on_ready(self, mask: int) -> None:
        """The socket is readable / writable and no application thread is using it that way."""
        if mask & EVENT_WRITE:
            with self._lock:
                if not self._sock_done:
                    self._flush()
                    self._update_interest()
        if mask & EVENT_READ:
            if not self._read_lock.acquire(False):
                return  # an application thread took the socket meanwhile
            try:
                self._reactor_read()
            finally:
                self._release_reader()

    def _reactor_read(self) -> None:
        sock = self._sock
        parser = self._parser
        io_lock = self._io_lock
        while not self._sock_done:
            try:
                if io_lock is None and _RECV_FROM:
                    got = parser.recv_from(sock, self._nb)
                else:
                    got = self._read_py(self._nb)
            except _WOULD_BLOCK:
                return
            except (OSError, ValueError) as exc:  # ValueError: the socket object was closed (fileno -1)
                self._read_failed(exc)
                got = None
            self._feed(got, True)
            if self._parser.last_frames > _FAIR_FRAMES:
                _fair_pause()
            # TLS may hold decrypted bytes that will never make the socket readable again.
            if got is None or not self._ssl or self._read_paused and self.protocol.state is _OPEN:
                return
            if self._backlog_later:
                return  # (the deferred backlog first: _backlog_later_step reads on after it)
            if not sock.pending():
                return

    def _release_reader(self) -> None:
        with self._lock:
            self._read_lock.release()
            if self._sock_done:
                self._maybe_close_fd()
            else:
                self._update_interest()

    def _update_interest(self) -> None:
        """Tell the reactor what to watch the socket for (called with ``_lock`` held)."""
        if self._sock_done:
            new = 0
        else:
            new = 0
            # Backpressure while OPEN: a full queue pauses reading. What we have not sent yet
            # does not: a peer that writes as much as we do must be read to go on reading us
            # (or both sides would wait to write), and a close frame must be seen. The pongs a
            # peer that does not read could pile up are held instead (see _flush).
            if not self._app_reading and not self._held and not self._eof and not self._backlog_later and (
                self.protocol.state is not _OPEN or not self._read_paused
            ):
                new = EVENT_READ
            if self._wbuf and not self._app_writers:
                new |= EVENT_WRITE
        old = self._interest
        if new != old:
            self._interest = new
            self._reactor.set_interest(self._fd, old, new, self)
            if self._ssl and new & EVENT_READ and not old & EVENT_READ and self._sock.pending():
                self._reactor.call_soon(lambda: self._on_ready(EVENT_READ))

    # ------------------------------------------------------------ receive path (whoever holds _read_lock)

    def _feed(self, got: Any, in_reactor: bool = False) -> None:
        """Take what one read gave: ``FrameParser.recv_from``'s result (None: end of stream);
        ``in_reactor``: read by the shared reactor thread (which inflates a budget at a time)."""
        t = type(got)
        if t is bytes or t is str:
            # Speed: one whole uncompressed data message (the parser has checked it is not
            # inside a fragmented one); while OPEN, queue it without the Protocol round trip:
            # what _dispatch would do, minus everything only control frames need.
            proto = self.protocol
            if proto.state is _OPEN and proto.backlog is None:
                messages = self._messages
                messages.append(got)
                max_queue = self._max_queue
                if max_queue is not None and len(messages) >= max_queue:
                    with self._lock:
                        self._pause_for_queue()
                return
            got = [(OP_TEXT if t is str else OP_BINARY, True, False, got)]
        elif got is None:
            with self._lock:
                if self._error_held:
                    # A protocol error held back for the messages before it, then the end of
                    # the stream: fail first, so that our close frame (1002...) goes out before
                    # TCP ends, to a peer that only half-closed (audit: it was never sent).
                    self._fail_held()
                self._eof = True
                self._dispatch(self.protocol.receive_eof(EOFError("the peer closed TCP without a close frame")))
            return
        if got or self._parser.error is not None:
            with self._lock:
                proto = self.protocol
                # Over write_limit, only the latest ping gets a pong (RFC 6455 §5.5.3), once
                # the buffer drains (_flush): a ping flood from a peer that does not read our
                # answers cannot pile them up.
                proto.hold_pongs = self._wbuf_size > self._write_limit
                open_before = proto.state is _OPEN
                # Frames before a protocol error: their messages reach the application first
                # (_hold_error), the error after them.
                hold = bool(got) and open_before and self._parser.error is not None
                self._dispatch(proto.receive_frames(got, hold), open_before)
                if hold:
                    self._hold_error()
                if proto.backlog is not None:
                    self._backlog_step(proto.batch_spent if in_reactor else None)

    def _hold_error(self) -> None:
        """A read ended in a protocol error after complete frames (``_lock`` held): with their
        messages queued, the connection fails once the application has taken them (its next
        ``recv()`` finds the queue empty), or after ``HOLD_TICK`` at most, so an answer to them
        can go out before the close frame, in the order the peer sent things (Autobahn's strict
        behaviour); at once otherwise."""
        proto = self.protocol
        if proto.backlog is not None:
            return  # the backlog's last receive_frames acts on the error (_backlog_step)
        if self._messages and proto.state is _OPEN and not self._sock_done:
            if not self._error_held:
                self._error_held = True
                self._reactor.call_at(time.monotonic() + HOLD_TICK, self._held_error_expired)
        else:
            self._fail_held()

    def _fail_held(self) -> None:
        """Act on the parser error ``_hold_error`` held back (``_lock`` held)."""
        self._error_held = False
        proto = self.protocol
        if proto.state is not _CLOSED and proto.backlog is None and not self._sock_done:
            self._dispatch(proto.receive_frames([]), proto.state is _OPEN)

    def _held_error_expired(self) -> None:
        """``HOLD_TICK`` after ``_hold_error`` (reactor thread): the application did not come
        for the messages in time; the connection fails now."""
        with self._lock:
            if self._error_held:
                self._fail_held()
                if not self._sock_done:
                    self._update_interest()

    def _read_py(self, flags: int) -> Any:
        """One read through the socket object (TLS; platforms without ``recv_from``), in the
        shape of ``FrameParser.recv_from``'s result."""
        parser = self._parser
        if self._io_lock is None:
            n = self._sock.recv_into(parser.get_buffer(-1), 0, flags)
        else:
            with self._io_lock:
                n = self._sock.recv_into(parser.get_buffer(-1))
        if not n:
            return None
        frames = parser.buffer_updated(n)
        if len(frames) == 1 and parser.error is None:
            opcode, fin, rsv1, payload = frames[0]
            if fin and not rsv1 and (opcode == OP_BINARY or opcode == OP_TEXT):
                return payload
        return frames

    def _dispatch(self, events: list[Any], open_before: bool = True) -> None:
        """Queue messages, handle control events, write the protocol's frames (``_lock`` held).

        ``open_before``: the connection was open before the frames behind ``events`` were read.
        """
        messages = self._messages
        # Closing: reading no longer pauses (the peer's close frame must get through), so the
        # queue is bounded by dropping what the application has no room for. Messages read
        # while the connection was open are all kept, even when the peer's close frame came
        # in the same read (the read's size bounds them): they were sent before it.
        drop_over = self._max_queue if not open_before else None
        for ev in events:
            t = type(ev)
            if t is str or t is bytes:
                if drop_over is not None and (self._dropping or len(messages) >= drop_over):
                    # A tail is dropped, never a message in the middle (audit: once the
                    # application took some, later ones were kept again, after a gap).
                    if not self._dropping:
                        self._dropping = True
                        logger.debug("closing %s: dropping the messages the application has no room for", self.remote_address)
                    continue
                messages.append(ev)
            elif t is Pong:
                self._on_pong(ev)
            elif t is Closed:
                if ev.error is not None:
                    logger.info(
                        "failing connection %s: %s (code %d)", self.remote_address, ev.error.reason, ev.error.code
                    )
            elif t is not Ping:  # pragma: no cover - no other event exists
                logger.debug("ignored event %r", ev)
        proto = self.protocol
        out = proto.data_to_send()
        for data in out:
            self._write(data)
        max_queue = self._max_queue
        if max_queue is not None and len(messages) >= max_queue:
            self._pause_for_queue()
        if proto.state is _CLOSED:
            self._after_closed()

    def _pause_for_queue(self) -> None:
        """Reading pauses: ``max_queue`` messages wait (``_lock`` held). recv() takes messages
        without the lock and resumes only a pause it sees, so look again once the flag is set:
        a queue emptied meanwhile (by a recv() that saw no pause) would leave reading paused
        with nothing queued, pings unanswered until the next recv() (audit 29S)."""
        self._read_paused = True
        if len(self._messages) <= (self._max_queue or 1) // 4 and self.protocol.backlog is None:
            self._read_paused = False

    def _queue_room(self) -> int:
        """``Protocol.batch_room``: the messages the queue can still take (at least one); no
        bound once closing (``_dispatch`` then drops what is over ``max_queue``)."""
        max_queue = self._max_queue
        if max_queue is None or self.protocol.state is not _OPEN:
            return 1 << 30
        return max(1, max_queue - len(self._messages))

    def _backlog_step(self, spent: int | None = None) -> None:
        """Frames ``batch_room`` or ``batch_bytes`` left in ``protocol.backlog`` (compressed
        messages) go on while the queue has room; else reading stays paused until the
        application takes messages (``_maybe_resume``), so the backlog always comes before
        anything read later (``_lock`` held). In the reactor thread (``spent``: the bytes of
        messages produced so far), past ``_INFLATE_BUDGET`` the rest waits for the reactor's
        next turn (``_backlog_later_step``)."""
        proto = self.protocol
        messages = self._messages
        while proto.backlog is not None:
            max_queue = self._max_queue
            open_before = proto.state is _OPEN
            if open_before and max_queue is not None and len(messages) >= max_queue:
                self._read_paused = True
                if len(messages) > max_queue // 4:
                    return
                self._read_paused = False  # taken meanwhile (see _pause_for_queue): go on
                continue
            if spent is not None and spent >= _INFLATE_BUDGET:
                if not self._backlog_later:
                    self._backlog_later = True
                    self._reactor.call_soon(self._backlog_later_step)
                return
            self._dispatch(proto.receive_frames([]), open_before)
            if spent is not None:
                spent += proto.batch_spent

    def _backlog_later_step(self) -> None:
        """The reactor's next share of the backlog (see ``_backlog_step``)."""
        with self._lock:
            self._backlog_later = False
            if not self._sock_done:
                if self.protocol.backlog is not None:
                    self._backlog_step(0)
                self._update_interest()

    def _on_pong(self, ev: Pong) -> None:
        now = time.monotonic()
        for _, tag in ev.acked:
            if tag is None:
                continue
            waiter, sent = tag
            self.latency = now - sent
            if waiter is None:  # keepalive ping
                if self._keepalive is not None:
                    self._keepalive.pong_received(now)
                    # The next tick was set for this ping's timeout (or, with ping_timeout=None,
                    # for ping_interval after it): the next ping is due ping_interval after this
                    # one was sent, so schedule the tick from the new deadline.
                    if self.protocol.state is _OPEN:
                        self._schedule_keepalive()
            else:
                waiter._set(now - sent)

    def _after_closed(self) -> None:
        """CLOSED reached: close TCP now (server, failure, EOF) or wait for the server's EOF (client)."""
        if self._ended is not None:
            self._ended.set()
        if self._ka_timer is not None:
            self._ka_timer.cancel()
            self._ka_timer = None
        if self.protocol.close_transport or self._eof:
            if self._eof or not self._drain_before_close():
                if self._eof or not self._wbuf:
                    self._finalize()
                    return
                self._close_after_flush = True
        # Bounded: a peer that neither reads our buffer nor closes TCP is dropped after close_timeout.
        self._arm_close_timer()
        self._update_interest()

    def _drain_before_close(self) -> bool:
        """Failing (RFC 6455 §7.1.7) a plain TCP connection whose peer may still be sending:
        half-close once our close frame is out and read (dropping everything: the parser has
        failed) until the peer's EOF, instead of closing now. Closing with unread bytes makes
        the kernel reset the connection, which can destroy our close frame before the peer
        reads it. Returns False when the connection should just close."""
        if not self.protocol.failed or self._ssl:
            return False
        if not self._half_closed:
            if self._wbuf:
                self._half_close_after_flush = True
            else:
                self._half_close()
        return True

    def _half_close(self) -> None:
        self._half_closed = True
        self._half_close_after_flush = False
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    # ------------------------------------------------------------ writing (``_lock`` held)

    def _write(self, data: Any) -> None:
        if self._sock_done or not data:
            return
        wbuf = self._wbuf
        if wbuf:
            wbuf.append(data)
            self._wbuf_size += len(data)
            return
        try:
            if self._io_lock is None:
                n = self._sock.send(data, self._nb)
            else:
                with self._io_lock:
                    n = self._sock.send(data)
        except _WOULD_BLOCK:
            n = 0
        except OSError as exc:
            self._connection_lost(exc)
            return
        size = len(data)
        if n < size:
            # TLS must retry with the very same buffer; plain sockets take the rest.
            # After a would-block, TLS retries with the very same buffer (n is 0 then).
            wbuf.append(memoryview(data)[n:] if n else data)
            self._wbuf_size += size - n
            self._update_interest()

    def _queue(self, parts: list) -> None:
        """Queue what a direct write left (the socket's write buffer was empty)."""
        wbuf = self._wbuf
        for part in parts:
            wbuf.append(part)
            self._wbuf_size += len(part)
        self._update_interest()

    def _write_pair(self, head: bytes, payload: bytes) -> None:
        # A large frame as header + the caller's payload: one sendmsg() on a plain socket, so
        # the header never travels alone (the peer would wake up and read just its 10 bytes).
        if self._sock_done:
            return
        if self._wbuf or self._ssl or not _HAS_SENDMSG:
            self._write(head)
            self._write(payload)
            return
        try:
            n = self._sock.sendmsg((head, payload), (), self._nb)
        except _WOULD_BLOCK:
            n = 0
        except OSError as exc:
            self._connection_lost(exc)
            return
        hlen = len(head)
        left = hlen + len(payload) - n
        if left:
            wbuf = self._wbuf
            if n < hlen:
                wbuf.append(memoryview(head)[n:] if n else head)
                wbuf.append(payload)
            else:
                wbuf.append(memoryview(payload)[n - hlen :])
            self._wbuf_size += left
            self._update_interest()

    def _flush(self) -> None:
        wbuf = self._wbuf
        sock = self._sock
        io_lock = self._io_lock
        while wbuf:
            data = wbuf[0]
            try:
                if io_lock is None:
                    n = sock.send(data, self._nb)
                else:
                    with io_lock:
                        n = sock.send(data)
            except _WOULD_BLOCK:
                break
            except OSError as exc:
                self._connection_lost(exc)
                return
            size = len(data)
            self._wbuf_size -= n
            if n < size:
                wbuf[0] = memoryview(data)[n:]
                break
            wbuf.popleft()
        proto = self.protocol
        if proto._held_pong is not None and self._wbuf_size <= self._write_limit:
            proto.hold_pongs = False
            for data in proto.data_to_send():  # the pong held for the latest ping
                self._write(data)
        if not wbuf:
            if self._close_after_flush:
                self._finalize()
            elif self._half_close_after_flush:
                self._half_close()

    def _read_failed(self, exc: Exception) -> None:
        """A read raised, the end of the stream for ``_feed``: keep a network error as the cause."""
        if isinstance(exc, OSError):
            self.protocol.note_lost(exc)

    def _connection_lost(self, exc: BaseException | None) -> None:
        """A write failed (reset, broken pipe): what we had to send is lost.

        What the peer sent before it went is still readable (Linux keeps a reset connection's
        received bytes): its close frame, say a 1009 for the message we were sending. So,
        unless nothing more can be read, reading goes on (the reactor, or a thread in recv())
        and the end of the stream closes the connection, bounded by the close timer; writes
        meanwhile fail again at once and are dropped. A sender raises (see ``send``).
        Reporting 1006 at once lost that close code over TLS, where a peer that fails the
        connection cannot half-close it (audit).
        """
        self._wbuf.clear()
        self._wbuf_size = 0
        self._close_after_flush = self._half_close_after_flush = False
        if self._write_dead:
            return
        if isinstance(exc, OSError):
            self.protocol.note_lost(exc)  # (the cause, even if reading goes on to the end)
        logger.debug("connection to %s lost: %s", self.remote_address, exc)
        if not self._eof and not self._read_paused:
            self._write_dead = True
            self._arm_close_timer()
            if self._held:
                self._unhold_now()  # the reactor reads on now, not at its next tick
            self._update_interest()
            return
        self._eof = True
        self._dispatch(self.protocol.receive_eof(exc))
        self._finalize()

    # ------------------------------------------------------------ closing TCP (``_lock`` held)

    def _finalize(self) -> None:
        """Close TCP (after one last flush attempt) and wake every waiter; idempotent.

        Within ``_abort_asleep``, a thread blocked on the socket is left asleep (``_wake_reader``).
        """
        if self._sock_done:
            return
        if self._wbuf and not self._eof:
            self._close_after_flush = False
            self._flush()
            if self._sock_done:
                return
        proto = self.protocol
        if proto.state is not _CLOSED:
            self._eof = True
            self._dispatch(proto.receive_eof())
            if self._sock_done:
                return
        self._sock_done = True
        for timer in (self._ka_timer, self._close_timer):
            if timer is not None:
                timer.cancel()
        self._ka_timer = self._close_timer = None
        self._update_interest()
        if self._held:
            # The reactor's tick would drop it within HOLD_TICK; do it now, so that nothing
            # of the reactor's refers to a closed connection.
            self._held = False
            self._reactor.unhold(self)
        if self._ssl and not self._aborting and not self._wbuf and not self._write_dead and not self._fd_closed:
            self._close_notify()
        if not self._asleep:
            self._wake_reader()
        self._wbuf.clear()
        self._wbuf_size = 0
        self._maybe_close_fd()
        for _, tag in list(proto.pings.items()):
            if tag is not None and tag[0] is not None:
                tag[0]._set(None)
        proto.pings.clear()
        proto.batch_room = None  # (a bound method of ours: a cycle keeping a closed connection alive)
        self._done.set()

    def _close_notify(self) -> None:
        """TLS: end the session with a close_notify before TCP closes (RFC 6455 §7.1.1: close
        "the TLS session, if applicable"; RFC 8446 §6.1), as the asyncio layer does. The socket
        does not block: the peer's own close_notify is not awaited."""
        assert self._io_lock is not None
        with self._io_lock:
            try:
                self._sock.unwrap()
            except (OSError, ValueError):  # (SSLWantReadError: ours is out, the peer's not in yet)
                pass

    def _wake_reader(self) -> None:
        """Shut the socket down both ways: wakes a thread blocked on it (``_lock`` held)."""
        if not self._fd_closed:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _maybe_close_fd(self) -> None:
        """Close the descriptor once no thread can still be polling it."""
        if self._fd_closed or self._read_lock.locked() or self._app_writers:
            return
        self._fd_closed = True
        try:
            self._sock.close()
        except OSError:  # pragma: no cover
            pass

    def _abort_locked(self) -> None:
        self._aborting = True
        self._eof = True
        self._wbuf.clear()
        self._wbuf_size = 0
        self._close_after_flush = False
        self._finalize()

    def _abort_asleep(self) -> None:
        """``abort()``, leaving a thread blocked on the socket asleep until ``_wake_reader()``
        (a server dropping many connections at once: see ``WebSocketServer._close_all_now``)."""
        with self._lock:
            self._asleep = True
            try:
                _tcp.reset_if_unsent(self._sock)  # dropped at the shutdown's deadline: see _tcp
                self._abort_locked()
            finally:
                self._asleep = False

    def _arm_close_timer(self) -> None:
        if self._close_timer is None and not self._sock_done:
            timeout = self._opts.close_timeout
            when = time.monotonic() + (timeout if timeout is not None else 10.0)
            self._close_timer = self._reactor.call_at(when, self._close_timeout_expired)

    def _close_timeout_expired(self) -> None:
        with self._lock:
            self._close_timer = None
            if not self._sock_done:
                logger.info("closing the connection with %s timed out (close_timeout): dropping it", self.remote_address)
                _tcp.reset_if_unsent(self._sock)
                self._abort_locked()

    # ------------------------------------------------------------ keepalive (reactor thread)

    def _schedule_keepalive(self) -> None:
        """(Re)arm the keepalive tick for ``Keepalive.deadline`` (``_lock`` held).

        The timer holds this connection (its bound method) until it fires or is cancelled,
        so every path that closes the connection cancels it (``_after_closed``, ``_finalize``).
        """
        ka = self._keepalive
        if ka is None or self._sock_done:
            return
        when = ka.deadline
        timer = self._ka_timer
        if timer is not None:
            timer.cancel()
            self._ka_timer = None
        if when is not None:
            self._ka_timer = self._reactor.call_at(when, self._keepalive_tick)

    def _keepalive_tick(self) -> None:
        with self._lock:
            self._ka_timer = None
            ka = self._keepalive
            proto = self.protocol
            if ka is None or proto.state is not _OPEN or self._sock_done:
                return
            now = time.monotonic()
            action = ka.poll(now)
            if action == "ping":
                payload = ka.new_payload(proto.pings)
                self._write(proto.send_ping(payload, (None, now)))
                acked = _tcp.bytes_acked(self._sock)
                if acked is None:
                    ka.ping_sent(now)
                else:  # where the ping ends in what we send: see Keepalive.ping_in_flight
                    ka.ping_sent(now, acked + _tcp.kernel_unsent(self._sock) + self._wbuf_size, acked)
            elif action == "timeout":
                acked = _tcp.bytes_acked(self._sock)
                if self._read_paused:
                    # Our own backpressure (max_queue, the application not reading) stopped
                    # reading: the pong may be sitting unread, which says nothing about the
                    # peer, unless the peer's TCP has stopped acknowledging what we send.
                    wait = ka.pong_may_be_unread(acked, _tcp.retransmitting(self._sock))
                else:  # the ping may be behind our own data, which the peer is still reading
                    wait = ka.ping_in_flight(acked)
                if wait:
                    logger.debug("keepalive ping on %s may be answered yet: waiting on", self.remote_address)
                    ka.deferred(now)
                else:
                    logger.info("keepalive ping timeout on %s: closing with 1011", self.remote_address)
                    proto.fail(1011, "keepalive ping timeout")
                    self._dispatch([Closed(1006, "")])
                    if self._wbuf and not self._sock_done:
                        # Our close frame waits behind data the peer has not taken for a whole
                        # timeout: close now rather than after close_timeout, waking the
                        # threads blocked in recv() / send() (audit 81: recv() returned None
                        # close_timeout late; the asyncio layer's returns at once).
                        _tcp.reset_if_unsent(self._sock)
                        self._finalize()
                    return
            self._schedule_keepalive()

    # ------------------------------------------------------------ sending

    def send(self, message: SyncMessage) -> None:
        """Send a message: str → text, bytes-like → binary, iterable of str/bytes → fragmented.

        Blocks while more than ``write_limit`` bytes are waiting to be sent.

        Raises:
            ConnectionClosed: the connection is closing or closed. While our close frame
                awaits the peer's answer, raised once the closing handshake has ended
                (bounded by ``close_timeout``), telling how it ended.
            TypeError: a message of another type.
        """
        try:
            return self._send(message)
        except ConnectionClosed:
            if threading.get_ident() == self._reactor.ident:
                raise
            state = self.protocol.state
            if state is _CLOSED:
                # Ended meanwhile (the peer's close came while this sender waited for a lock):
                # how it ended is known now, and the exception raised while CLOSING is stale
                # (audit: a 1006 "no close frame received" after a clean close).
                # (Its __cause__ is the ProtocolError or network error, if any. Not kept in a
                # local: this frame, in its traceback, would keep the connection in a cycle.)
                raise self.protocol.closed_exception()
            if state is not State.CLOSING and not self._write_dead:
                raise
        # Our close frame is out and the peer's answer awaited, or a write failed and what
        # the peer sent before is being read: how the connection ends (ConnectionClosedOK
        # after a clean handshake, the peer's 1009) is not known yet. Wait for it (bounded
        # by the close timer), as websockets does, rather than report 1006 now.
        self._wait_done(self._opts.close_timeout)
        raise self.protocol.closed_exception()

    def _send(self, message: Any) -> None:
        proto = self.protocol
        t = type(message)
        if t is bytes or t is str:
            if self._frag_thread:
                # This thread's fragmented send reads its iterable ahead of its first fragment:
                # draining under _send_lock, which it holds, would never end (audit).
                self._check_not_in_fragments()
            # Speed: a whole message needs only _lock (frames are written whole under it);
            # _send_lock matters only while another thread sends a fragmented message.
            # (acquire/release: ~80 ns less than ``with`` on 3.11, whose __exit__ packs a tuple.)
            lock = self._lock
            lock.acquire()
            try:
                written = not proto._send_frag_open
                if written:
                    wm = self._wm
                    if wm is not None and proto.state is _OPEN and not self._wbuf and not self._sock_done:
                        # Speed: framed and written in one C call; only what the kernel did
                        # not take goes through the write buffer.
                        try:
                            rest = wm(self._sock, message, self._masked)
                        except OSError as exc:
                            self._connection_lost(exc)
                            raise proto.closed_exception()  # (with its cause: see send)
                        if rest is None:
                            return
                        self._queue(rest)
                    else:
                        self._frame_and_write(message)
                    if self._wbuf_size <= self._write_limit:
                        return
            finally:
                lock.release()
            if written:
                with self._send_lock:  # over write_limit: drain like any sender, one at a time
                    self._drain()
                return
        self._check_not_in_fragments()
        with self._send_lock:
            if isinstance(message, (str, bytes, bytearray, memoryview)):
                with self._lock:
                    self._frame_and_write(message)
                    over = self._wbuf_size > self._write_limit
                if over:
                    self._drain()
            elif hasattr(message, "__iter__") and not isinstance(message, dict):
                self._send_fragments(message)
            else:
                # (A buffer such as an mmap is neither: the caller wraps it in memoryview(), as in
                # queueable() and send_nowait(); it was framed and dropped without a word: audit.)
                raise TypeError(f"message must be str, bytes-like or an iterable of them, not {type(message).__name__}")

    def _frame_and_write(self, message: Any) -> None:
        """The frame(s) of one whole message through the protocol, then to the socket (``_lock`` held)."""
        proto = self.protocol
        if self._sock_done or self._write_dead:
            # Lost, possibly in the middle of another thread's fragmented message, which is
            # then still open in the protocol: ConnectionClosed, not InvalidState (audit).
            raise proto.closed_exception()
        data = proto.send(message)  # (no I/O: _sock_done cannot change meanwhile, _lock held)
        if type(data) is tuple:  # large frame: header, then the payload (no copy)
            self._write_pair(data[0], data[1])
        else:
            self._write(data)
        if self._write_dead:
            raise proto.closed_exception()

    def _write_frame(self, frame: Any, message: Any, limit: int, close_code: int | None, direct: Any = None) -> int:
        """``broadcast()``'s hook: write ``frame`` (None: build this connection's own, masked,
        uncompressed frame of ``message``) unless it would take the write buffer past
        ``limit``; never blocks (what the kernel does not take is flushed by the reactor).
        ``direct`` is the asyncio connections' batch list, unused here: other threads write
        to this socket too, so the frame is written under ``_lock`` now.

        Returns:
            0 written; 1 too slow (failed with ``close_code`` when given); 2 not open;
            3 a fragmented message is being sent (nothing written).
        """
        proto = self.protocol
        with self._lock:
            if self._sock_done or proto.state is not _OPEN:
                return 2
            if proto._send_frag_open:
                return 3
            size = len(frame) if frame is not None else len(message)
            if self._wbuf_size and self._wbuf_size + size > limit:  # (nothing waiting: it goes)
                if close_code is not None:
                    proto.fail(close_code, "too slow for a broadcast")
                    self._dispatch([Closed(1006, "")])
                return 1
            if frame is None:
                frame = proto.send(message, False)
                if type(frame) is tuple:  # pragma: no cover - only server frames are split
                    self._write(frame[0])
                    frame = frame[1]
            self._write(frame)
            return 0

    def _send_if_open(self, message: Any) -> bool:
        """``send`` for the reconnecting client: False, and nothing written, if no longer open.

        True means the frames were handed to this connection (a failure while draining them
        afterwards is not reported: the reconnecting client must not send them again).
        """
        proto = self.protocol
        self._check_not_in_fragments()
        with self._send_lock:
            with self._lock:
                if self._sock_done or proto.state is not _OPEN:
                    return False
                if not isinstance(message, (str, bytes, bytearray, memoryview)):
                    if isinstance(message, dict) or not hasattr(message, "__iter__"):
                        raise TypeError(f"message must be str, bytes-like or an iterable of them, not {type(message).__name__}")
                    fragments = True
                else:
                    fragments = False
                    data = proto.send(message)
                    if type(data) is tuple:
                        self._write(data[0])
                        self._write(data[1])
                    else:
                        self._write(data)
                over = self._wbuf_size > self._write_limit
            try:
                if fragments:
                    self._send_fragments(message)
                elif over:
                    self._drain()
            except ConnectionClosed:
                pass
        return True

    def _check_not_in_fragments(self) -> None:
        """Refuse a send from the iterable of this thread's own fragmented send, which holds
        ``_send_lock``: waiting for it would never end (audit: a deadlock, for every sender)."""
        if self._frag_thread and self._frag_thread == threading.get_ident():
            raise InvalidState("send() called while this thread sends a fragmented message (from its iterable)")

    def _send_fragments(self, fragments: Any) -> None:
        """Send an iterable of str or bytes as one fragmented message (``_send_lock`` held).

        One item is read ahead, so the last one goes out with FIN. If the iterable (or a
        fragment of the wrong type) fails once a fragment went out, the peer holds half a
        message and no other message can follow it: the connection is failed with 1011 (as
        the asyncio layer and websockets do), and the exception propagates. A failure
        before the first fragment leaves the connection usable.
        """
        proto = self.protocol
        with self._lock:
            if self._sock_done or self._write_dead:
                raise proto.closed_exception()
            # Reserved from now on, while the iterable is read ahead: other threads' whole
            # messages wait for this one, this thread's raise InvalidState (not slip ahead).
            proto.begin_fragments()
        self._frag_thread = threading.get_ident()
        try:
            it = iter(fragments)
            try:
                prev = next(it)
            except StopIteration:
                return
            for item in it:
                self._send_frame(lambda p=prev: proto.send_fragment(p, False))
                prev = item
            self._send_frame(lambda: proto.send_fragment(prev, True))
        except BaseException:
            with self._lock:
                if proto._send_frag_started and proto.state is _OPEN and not self._sock_done and not self._write_dead:
                    self._fail(1011, "error in fragmented message")
            raise
        finally:
            self._frag_thread = 0
            with self._lock:
                proto.abandon_fragments()

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 §7.1.7): close frame, then close TCP (``_lock`` held)."""
        logger.info("failing connection %s: %s (code %d)", self.remote_address, reason, code)
        self.protocol.fail(code, reason)
        self._dispatch([Closed(1006, "")])

    def _send_frame(self, build: Any) -> None:
        with self._lock:
            data = build()
            if self._sock_done:
                raise self.protocol.closed_exception()
            self._write(data)
            if self._write_dead:
                raise self.protocol.closed_exception()
            over = self._wbuf_size > self._write_limit
        if over:
            self._drain()

    def _drain(self) -> None:
        """Flush from this thread until at most ``write_limit`` bytes are pending."""
        while True:
            with self._lock:
                if self._sock_done:
                    raise self.protocol.closed_exception()
                self._flush()
                if self._write_dead:
                    raise self.protocol.closed_exception()
                if self._wbuf_size <= self._write_limit:
                    # What the reactor watches follows the buffer (no write interest once empty).
                    if not self._sock_done:
                        self._update_interest()
                    return
                if self._sock_done:
                    raise self.protocol.closed_exception()
                self._app_writers += 1
                self._update_interest()
            try:
                _wait_fd(self._fd, True, None, None)
            finally:
                with self._lock:
                    self._app_writers -= 1
                    if self._sock_done:
                        self._maybe_close_fd()
                    else:
                        self._update_interest()

    def send_json(self, obj: Any) -> None:
        """Send ``obj`` as a JSON text message."""
        self.send(json.dumps(obj))

    def ping(self, data: bytes | str = b"") -> PongWaiter:
        """Send a ping; return a waiter whose ``wait(timeout)`` is True once the pong arrived.

        Raises:
            ConnectionClosed: the connection is closing or closed.
            ValueError: more than 125 bytes, or a ping with this payload is in flight.
        """
        proto = self.protocol
        payload = control_payload(data)
        waiter = PongWaiter()
        with self._lock:
            while not payload:  # (a given payload already in flight: ValueError, from send_ping)
                payload = os.urandom(4)
                if payload in proto.pings:
                    payload = b""
            self._write(proto.send_ping(payload, (waiter, time.monotonic())))
            over = self._wbuf_size > self._write_limit
            if self._held:
                self._unhold_now()  # the reactor reads the pong, even if recv() is not called
        if over:
            self._drain()
        return waiter

    def pong(self, data: bytes | str = b"") -> None:
        """Send an unsolicited pong."""
        with self._lock:
            self._write(self.protocol.send_pong(data))

    # ------------------------------------------------------------ receiving

    def recv(self, timeout: float | None = None) -> str | bytes | None:
        """Return the next message (str or bytes), or None once the connection is closed.

        Raises:
            TimeoutError: no message within ``timeout`` seconds (the connection stays usable).
            ValueError / TypeError: ``timeout`` is NaN / not a number.
        """
        if timeout is not None:
            timeout = checked_timeout(timeout)
        messages = self._messages
        if messages:
            try:
                msg = messages.popleft()
            except IndexError:  # another thread took it
                pass
            else:
                if self._read_paused:
                    self._maybe_resume()
                return msg
        if timeout is None and self._held and self._direct:
            # Speed: the usual case, a blocking read of a plain socket this thread held last
            # time (the reactor is not watching it for reads): read and return a whole
            # message without the queue, and leave without _lock. Holding _read_lock is what
            # keeps the reactor from reading meanwhile (it only tries it); a reactor tick that
            # gives the socket back while we read changes nothing but the next call's path.
            rl = self._read_lock
            if rl.acquire(False):
                self._app_reading = True
                try:
                    if (not messages and not self._sock_done and self.protocol.state is _OPEN
                            and self._wbuf_size <= self._write_limit and self.protocol.backlog is None
                            and not self._error_held):
                        try:
                            got = self._parser.recv_from(self._sock, 0)
                        except _WOULD_BLOCK:
                            got = []
                        except (OSError, ValueError) as exc:  # as in _read_once
                            self._read_failed(exc)
                            got = None
                        t = type(got)
                        if (t is bytes or t is str) and self.protocol.state is _OPEN:
                            return got
                        self._feed(got)
                        if self._parser.last_frames > _FAIR_FRAMES:
                            _fair_pause()
                    return self._next_message(None)
                finally:
                    self._app_reading = False
                    self._held_since = _monotonic()
                    rl.release()
                    if self._sock_done or self.protocol.state is _CLOSED:
                        with self._lock:
                            self._after_recv_closed()
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._read_lock.acquire(True, -1 if timeout is None else max(timeout, 0.0)):
            raise TimeoutError("no message received in time")
        try:
            if self._held:
                # Speed: held, the reactor is not watching the socket for reads, and it reads
                # _app_reading under _lock before giving the socket back (_release_hold). Should
                # it have just given it back, it may see the socket readable while we read it;
                # it then fails to take _read_lock and leaves it to us, and the finally below
                # holds the socket again.
                self._app_reading = True
            else:
                with self._lock:
                    self._app_reading = True
                    self._update_interest()
            return self._next_message(deadline)
        finally:
            lock = self._lock
            lock.acquire()
            try:
                self._app_reading = False
                self._read_lock.release()
                if self._sock_done or self.protocol.state is _CLOSED:
                    self._after_recv_closed()
                else:
                    # Lazy hand-back (Reactor.hold): keep the socket away from the reactor
                    # for one more tick; the next recv() most likely comes much sooner.
                    self._held_since = _monotonic()
                    if not self._held:
                        self._held = True
                        self._reactor.hold(self)
                        self._update_interest()
            finally:
                lock.release()

    def _next_message(self, deadline: float | None) -> Any:
        """recv()'s wait (``_read_lock`` held): the queue's first message, read until one
        comes; None once the connection is closed."""
        messages = self._messages
        read = False
        while True:
            if messages:
                msg = messages.popleft()
                if self._read_paused:
                    self._maybe_resume()
                return msg
            if self._sock_done or self.protocol.state is _CLOSED:
                return None
            if read and deadline is not None and _monotonic() >= deadline:
                # A peer streaming frames that make no message (pings, empty continuations)
                # keeps the socket readable: the wait alone never timed out (audit).
                raise TimeoutError("no message received in time")
            if self.protocol.backlog is not None:
                # Messages wait there (the reactor leaves a backlog for its next turn): they
                # come before anything read from the socket.
                with self._lock:
                    if self.protocol.backlog is not None:
                        self._backlog_step()
                continue
            if self._error_held:
                # The messages before a protocol error are taken: the connection fails now
                # (the parser reads nothing more; _hold_error).
                with self._lock:
                    if self._error_held:
                        self._fail_held()
                continue
            self._read_once(deadline)
            read = True

    def _after_recv_closed(self) -> None:
        """recv() found the connection closed (``_lock`` held): close the socket once done, else
        give it back to the reactor at once, which reads the peer's EOF (a client waits for it
        after the closing handshake): holding it again for recv() calls that will only ever
        return None would leave that EOF unread, however often they come, until close_timeout."""
        if self._sock_done:
            self._maybe_close_fd()
        elif self._held:
            self._unhold_now()
        elif not self._app_reading:
            self._update_interest()

    def _unhold_now(self) -> None:
        """Give a held socket back to the reactor at once rather than at its next tick
        (``_lock`` held): an answer is awaited from the peer (a pong, its close frame) that no
        application thread may be reading for; waiting for the tick added up to 10-20 ms to
        a ping's round trip and to ``close()``."""
        if self._held and not self._app_reading and not self._sock_done:
            self._held = False
            self._reactor.unhold(self)
            self._update_interest()

    def _release_hold(self, now: float) -> None:
        """Reactor tick: give the socket back to the reactor if the application left it idle."""
        with self._lock:
            if self._held and not self._sock_done and (self._app_reading or now - self._held_since < HOLD_TICK):
                return
            self._held = False
            self._reactor.unhold(self)
            if not self._sock_done:
                self._update_interest()

    def _read_once(self, deadline: float | None) -> None:
        """Wait for the socket (until ``deadline``) and feed what it has (``_read_lock`` held)."""
        sock = self._sock
        flags = self._nb
        if flags and deadline is None:
            flags = 0  # blocking read: the data, the peer's EOF or our shutdown() wakes it
        elif not (self._ssl and sock.pending()):
            if self._rpoll is None and _HAS_POLL:
                self._rpoll = select.poll()
                self._rpoll.register(self._fd, select.POLLIN)
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            if not _wait_fd(self._fd, False, timeout, self._rpoll):
                raise TimeoutError("no message received in time")
        try:
            if self._io_lock is None and _RECV_FROM:
                got = self._parser.recv_from(sock, flags)
            else:
                got = self._read_py(flags)
        except ssl_module.SSLWantWriteError:
            _wait_fd(self._fd, True, 0.05, None)
            return
        except _WOULD_BLOCK:
            return
        except (OSError, ValueError) as exc:  # ValueError: the socket object was closed (fileno -1)
            self._read_failed(exc)
            got = None
        self._feed(got)
        if self._parser.last_frames > _FAIR_FRAMES:
            _fair_pause()

    def _maybe_resume(self) -> None:
        max_queue = self._max_queue or 1
        if len(self._messages) <= max_queue // 4:
            with self._lock:
                if self._read_paused and len(self._messages) <= max_queue // 4:
                    if self.protocol.backlog is not None:
                        self._backlog_step()  # what batch_room left comes before reading more
                        if self.protocol.backlog is not None or len(self._messages) >= max_queue:
                            return
                    self._read_paused = False
                    self._update_interest()
                    ka = self._keepalive
                    if ka is not None:  # the pong may be behind what was left unread
                        ka.reading_resumed(time.monotonic())

    def recv_json(self, timeout: float | None = None) -> Any:
        """Receive a message and decode it as JSON; None once closed."""
        msg = self.recv(timeout)
        return None if msg is None else json.loads(msg)

    def __iter__(self) -> Iterator[str | bytes]:
        """``for message in ws`` yields messages until the connection closes."""
        while (msg := self.recv()) is not None:
            yield msg

    # ------------------------------------------------------------ closing

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Run the closing handshake (bounded by ``close_timeout``), then close TCP."""
        self._app_closed = True
        self._close(code, reason)

    def _close(self, code: int = 1000, reason: str = "") -> None:
        """``close()`` as the library uses it: not a close the application asked for."""
        self._start_close(code, reason)
        self._wait_done(self._opts.close_timeout)
        if not self._done.is_set():
            self.abort()

    def _start_close(self, code: int = 1000, reason: str = "") -> None:
        """Send the close frame without waiting (the server's shutdown uses it)."""
        with self._lock:
            proto = self.protocol
            if not self._sock_done and proto.state is _OPEN:
                self._write(proto.send_close(code, reason))
                self._arm_close_timer()
                if proto.backlog is not None:
                    self._backlog_step()  # closing: the peer's close frame may be waiting there
                if self._held:
                    self._unhold_now()  # the reactor reads the peer's close frame
                self._update_interest()

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait until TCP is closed (at most ``timeout`` seconds); True if it is."""
        return self._done.wait(timeout)

    def _wait_done(self, close_timeout: float | None) -> bool:
        """``wait_closed`` as our close paths use it: the reactor's close timer ends the
        connection at ``close_timeout``; the wait is longer, only to bound a stuck one."""
        return self._done.wait(None if close_timeout is None else close_timeout + 0.5)

    def _wait_ended(self) -> None:
        """Wait until the connection is CLOSED: its closing handshake over (or failed, or TCP
        lost). TCP may still be closing, bounded by ``close_timeout``: a reconnecting client
        decides from here, not after a server that keeps TCP open (audit: recv() returned None,
        or the reconnection began, ``close_timeout`` late)."""
        with self._lock:
            if self.protocol.state is _CLOSED or self._sock_done:
                return
            if self._ended is None:
                self._ended = threading.Event()
            ended = self._ended
        ended.wait()

    def abort(self) -> None:
        """Drop the TCP connection at once, without a closing handshake."""
        self._app_closed = True
        with self._lock:
            self._abort_locked()

    def __enter__(self) -> "WebSocket":
        """The connection itself, closed on exit."""
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        """Close the connection on leaving the ``with`` block: 1000, or 1011 if it raised
        (1001 for KeyboardInterrupt / SystemExit)."""
        self.close(exit_close_code(exc_type))

    def __repr__(self) -> str:
        return f"<WebSocket {self.side} {self.protocol.state.name} {self.remote_address}>"


def _wait_fd(fd: int, write: bool, timeout: float | None, poller: Any) -> bool:
    """Wait until ``fd`` is readable (or writable); False on timeout."""
    if _HAS_POLL:
        if poller is None:
            poller = select.poll()
            poller.register(fd, select.POLLOUT if write else select.POLLIN)
        ms = None if timeout is None else int(timeout * 1000 + 0.999)
        return bool(poller.poll(ms))
    if write:
        _, w, x = select.select([], [fd], [fd], timeout)
        return bool(w or x)
    r, _, x = select.select([fd], [], [fd], timeout)  # pragma: no cover - no poll() (Windows)
    return bool(r or x)

