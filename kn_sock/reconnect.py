"""Client reconnection, sans-I/O: which ends are worth a retry, and how long to wait before it.

The asyncio and blocking clients (``reconnect=True`` or a dict of the ``ReconnectPolicy``
arguments) ask this module three questions and do the waiting themselves:

- ``end_code(protocol)``: how did this connection end? The peer's close code; the code we
  failed the connection with (e.g. 1011 after a keepalive timeout, 1002 after a protocol
  error of the peer); 1006 when TCP simply went away.
- ``should_reconnect(code)``: retry after 1001 (going away), 1006 (abnormal), 1011-1014
  (server error, restart, try again later, bad gateway); never after 1000 / 1005 (a normal
  close), the permanent errors 1002, 1003, 1007-1010, or application codes (3000-4999),
  which only the application can interpret. A close the client itself started never
  reconnects: ``close()`` or ``abort()`` on the reconnecting client (the I/O layer knows that
  and does not ask) or on its current connection (``ReconnectPolicy.reopens`` checks).
- ``retryable_error(exc)``: a failed (re)connection attempt is retried after network errors
  (``OSError``: refused, reset, unreachable), timeouts, a handshake cut short, and HTTP
  statuses that say "later" (408, 429, 5xx); any other rejection (404, 403, a bad
  handshake) is permanent.

``ReconnectPolicy`` computes the delays: exponential backoff with full jitter
(delay = random() × min(max_delay, initial_delay × factor^attempt)), the "Full Jitter" of
AWS's "Exponential Backoff and Jitter" article, which spreads a crowd of clients that lost
the same server over the whole window instead of letting them return in lockstep. Random
and clock are injectable, so tests check the delays without sleeping.
"""

from __future__ import annotations

import logging
import random as random_module
import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable, Generic, TypeVar, overload

from .exceptions import ConnectionClosed, ConnectionClosedError, InvalidHandshake, InvalidProxyStatus, InvalidStatus
from .http11 import Headers

logger = logging.getLogger("kn_sock")

__all__ = [
    "ReconnectingState",
    "ReconnectPolicy",
    "RETRY_CODES",
    "PERMANENT_CODES",
    "by_app",
    "end_code",
    "should_reconnect",
    "retryable_error",
    "Outbox",
    "queueable",
]

#: Close codes after which the client reconnects (RFC 6455 §7.4.1 and the IANA registry).
RETRY_CODES = frozenset({1001, 1006, 1011, 1012, 1013, 1014})
#: Close codes that say retrying would fail the same way (documentation; anything not in
#: RETRY_CODES is final).
PERMANENT_CODES = frozenset({1002, 1003, 1007, 1008, 1009, 1010})
#: HTTP statuses of a refused upgrade that are worth retrying (the server is busy or restarting).
_RETRY_STATUSES = frozenset({408, 429})


def end_code(protocol: Any) -> int:
    """The close code that decides about reconnection, for a connection in CLOSED state.

    The peer's close code if a close frame arrived; else the code we failed the connection
    with (1011 keepalive timeout, 1002 / 1007 / 1009 the peer broke the protocol); else 1006.
    """
    if protocol is None:
        return 1006
    if protocol.close_rcvd is not None:
        return protocol.close_rcvd[0]
    if protocol.close_sent is not None:
        return protocol.close_sent[0]
    return 1006


def by_app(conn: Any) -> str:
    """For log lines: ``" by the application"`` when the application ended ``conn`` itself."""
    return " by the application" if conn._app_closed else ""


def should_reconnect(code: int, retry_codes: frozenset[int] = RETRY_CODES) -> bool:
    """True when a connection that ended with ``code`` should be reopened."""
    return code in retry_codes


def retryable_error(exc: BaseException) -> bool:
    """True when a failed connection attempt (``exc``) is worth another attempt."""
    if isinstance(exc, (InvalidStatus, InvalidProxyStatus)):  # (the proxy's 502 / 503: the server's unreachable for now)
        return exc.status >= 500 or exc.status in _RETRY_STATUSES
    if isinstance(exc, InvalidHandshake):
        # Only a handshake cut short by the network (a server going down mid-handshake): the
        # clients chain the network error, or EOFError, as its cause.
        return isinstance(exc.__cause__, (OSError, EOFError))
    return isinstance(exc, (OSError, TimeoutError, EOFError))


class ReconnectPolicy:
    """Exponential backoff with full jitter, bounded by ``max_attempts`` and an optional deadline.

    Args:
        initial_delay: the backoff window of the first retry, in seconds.
        max_delay: the largest window.
        factor: the window's growth per failed attempt.
        max_attempts: consecutive failed attempts after which to give up; None: never give up.
        jitter: ``"full"`` (default; ``True`` too): a uniformly random delay in [0, window];
            ``None`` / ``False``: exactly the window.
        retry_codes: close codes after which to reconnect (default ``RETRY_CODES``).
        random: a ``() -> float in [0, 1)`` (default ``random.random``).
        clock: a monotonic ``() -> float`` (default ``time.monotonic``), for ``deadline``.

    Use: ``delay = policy.next_delay()`` before each retry (None: give up), ``policy.reset()``
    once connected. ``start(timeout)`` sets a deadline: a delay that would end past it is
    refused (None), which bounds the initial connection by ``open_timeout``.

    Raises:
        ValueError: (constructor) a negative delay, a factor below 1, ``max_attempts`` < 0,
            an unknown ``jitter``.
    """

    __slots__ = (
        "initial_delay", "max_delay", "factor", "max_attempts", "jitter", "retry_codes",
        "_random", "_clock", "attempts", "deadline",
    )

    def __init__(
        self,
        initial_delay: float = 0.1,
        max_delay: float = 10.0,
        factor: float = 2.0,
        max_attempts: int | None = None,
        jitter: Any = "full",
        retry_codes: Any = RETRY_CODES,
        *,
        random: Callable[[], float] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if initial_delay < 0 or max_delay < 0:
            raise ValueError("delays must be >= 0")
        if factor < 1:
            raise ValueError("factor must be >= 1")
        if max_attempts is not None and max_attempts < 0:
            raise ValueError("max_attempts must be >= 0 or None")
        if jitter is True:
            jitter = "full"
        elif jitter is False:
            jitter = None
        if jitter not in ("full", None):
            raise ValueError(f"unsupported jitter: {jitter!r} (use 'full' or None)")
        self.initial_delay = float(initial_delay)
        self.max_delay = float(max_delay)
        self.factor = float(factor)
        self.max_attempts = max_attempts
        self.jitter = jitter
        self.retry_codes = frozenset(retry_codes)
        self._random = random or random_module.random
        self._clock = clock or time.monotonic
        #: Failed attempts since the last successful connection.
        self.attempts = 0
        self.deadline: float | None = None

    @classmethod
    def from_option(cls, value: Any) -> "ReconnectPolicy | None":
        """The policy the ``reconnect`` option asks for: None (off), defaults (True), a dict's.

        Raises:
            TypeError: an unknown dict key or an option of another type.
            ValueError: see the constructor.
        """
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value.copy()
        if isinstance(value, Mapping):  # a dict (a TypedDict describing it too)
            return cls(**value)
        raise TypeError(f"reconnect must be a bool, a dict or a ReconnectPolicy, not {type(value).__name__}")

    def copy(self) -> "ReconnectPolicy":
        """A fresh policy with the same settings (one per client: the counters are state)."""
        return ReconnectPolicy(
            self.initial_delay, self.max_delay, self.factor, self.max_attempts, self.jitter, self.retry_codes,
            random=self._random, clock=self._clock,
        )

    def window(self, attempt: int) -> float:
        """The backoff window before retry number ``attempt`` (0 for the first)."""
        try:
            window = self.initial_delay * self.factor**attempt
        except OverflowError:
            return self.max_delay
        return min(self.max_delay, window)

    def next_delay(self) -> float | None:
        """Count one failed attempt; return how long to wait before the next, None to give up."""
        if self.max_attempts is not None and self.attempts >= self.max_attempts:
            return None
        window = self.window(self.attempts)
        self.attempts += 1
        delay = window * self._random() if self.jitter == "full" else window
        if self.deadline is not None and self._clock() + delay >= self.deadline:
            return None
        return delay

    def remaining(self) -> float | None:
        """Seconds left until the deadline (never negative), None without one."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - self._clock())

    def start(self, timeout: float | None) -> None:
        """Bound the coming attempts by ``timeout`` seconds from now (None: no bound)."""
        self.deadline = None if timeout is None else self._clock() + timeout

    def reset(self) -> None:
        """A connection succeeded: the next failure starts from ``initial_delay`` again."""
        self.attempts = 0
        self.deadline = None

    def should_reconnect(self, code: int) -> bool:
        """True when a connection that ended with ``code`` should be reopened."""
        return code in self.retry_codes

    def reopens(self, conn: Any) -> bool:
        """True when ``conn``, a connection that has ended, should be reopened: its end is worth
        a retry and the application did not end it itself (``close()`` or ``abort()`` on it)."""
        return not conn._app_closed and self.should_reconnect(end_code(conn.protocol))

    def __repr__(self) -> str:
        return (
            f"ReconnectPolicy(initial_delay={self.initial_delay}, max_delay={self.max_delay}, "
            f"factor={self.factor}, max_attempts={self.max_attempts}, jitter={self.jitter!r})"
        )


def queueable(message: Any) -> Any:
    """``message`` in a form that can wait in a queue: bytes-like copied to ``bytes`` (the
    caller may reuse its buffer once ``send`` returned), a fragment iterable as a list.

    Checked now, as a connected ``send()`` would check it, since a message found wrong only
    once a reconnection flushes the queue could no longer be reported to the caller.

    Raises:
        TypeError: neither str, bytes-like nor an iterable of them all str or all bytes-like.
    """
    if isinstance(message, (str, bytes)):
        return message
    if isinstance(message, (bytearray, memoryview)):
        return bytes(message)
    if isinstance(message, dict) or not hasattr(message, "__iter__"):
        raise TypeError(f"message must be str, bytes-like or an iterable of them, not {type(message).__name__}")
    parts: list[Any] = []
    text = None
    for part in message:
        if isinstance(part, str):
            is_text = True
        elif isinstance(part, (bytes, bytearray, memoryview)):
            is_text = False
            part = bytes(part)
        else:
            raise TypeError(f"a fragmented message's parts must be str or bytes-like, not {type(part).__name__}")
        if text is None:
            text = is_text
        elif text is not is_text:
            raise TypeError("a fragmented message's parts must be all str or all bytes-like")
        parts.append(part)
    return parts


class Outbox:
    """A reconnecting client's outgoing messages that no TCP connection has taken yet.

    ``pending`` holds messages ``send()`` could not hand to a connection (disconnected, or
    queued messages still being flushed, so order is kept). With ``ack`` on (the opt-in
    no-loss mode) every message handed to a connection also waits in ``unacked`` until the
    application acknowledges it; on a disconnection ``requeue()`` puts the unacknowledged
    ones back in front of ``pending``, so what a dead TCP connection swallowed is sent again
    (at least once: the application must tolerate duplicates). Both together hold at most
    ``max_pending`` messages.

    Args:
        max_pending: the bound on ``pending`` + ``unacked``.
        ack: None / False (off), True (``acknowledge(n)`` is called by the application), or
            a callable ``f(incoming_message) -> int`` telling how many of the oldest
            unacknowledged messages an incoming message acknowledges.
    """

    __slots__ = ("max_pending", "ack", "pending", "unacked")

    def __init__(self, max_pending: int, ack: Any = None) -> None:
        if max_pending < 0:
            raise ValueError("max_pending must be >= 0")
        if ack is not None and ack is not False and ack is not True and not callable(ack):
            raise TypeError("ack must be True or a callable")
        self.max_pending = max_pending
        self.ack = ack or None
        self.pending: deque[Any] = deque()
        self.unacked: deque[Any] = deque()

    def __len__(self) -> int:
        return len(self.pending) + len(self.unacked)

    def check_room(self) -> None:
        """Raise ConnectionClosedError when no more messages may wait.

        Raises:
            ConnectionClosedError: ``max_pending`` messages are waiting already.
        """
        if len(self.pending) + len(self.unacked) >= self.max_pending:
            if self.ack is not None:  # (connected or not: sent messages wait for their ack)
                raise ConnectionClosedError(
                    1006, "", f"{self.max_pending} messages are unacknowledged or queued (max_pending): ack() some first"
                )
            raise ConnectionClosedError(1006, "", f"disconnected and {self.max_pending} pending messages are queued (max_pending)")

    def add(self, message: Any) -> None:
        """Queue ``message`` (already ``queueable``) for the next connection.

        Raises:
            ConnectionClosedError: the queue is full.
        """
        self.check_room()
        self.pending.append(message)

    def sent(self, message: Any) -> None:
        """``message`` was handed to a connection (kept until acknowledged in ack mode)."""
        if self.ack is not None:
            self.unacked.append(message)

    def received(self, message: Any) -> None:
        """An incoming message arrived: let the ack callable acknowledge sent messages."""
        ack = self.ack
        if ack is not None and ack is not True:
            n = ack(message)
            if n:
                self.acknowledge(n)

    def acknowledge(self, n: int = 1) -> int:
        """Forget the ``n`` oldest unacknowledged messages; return how many were forgotten."""
        unacked = self.unacked
        n = min(n, len(unacked))
        for _ in range(n):
            unacked.popleft()
        return n

    def drop(self) -> None:
        """Closed for good: forget every message, queued or unacknowledged."""
        self.pending.clear()
        self.unacked.clear()

    def requeue(self) -> None:
        """Disconnected: unacknowledged messages go back in front of the pending ones, in order."""
        if self.unacked:
            self.unacked.extend(self.pending)
            self.pending, self.unacked = self.unacked, deque()


_T = TypeVar("_T")


class _Current(Generic[_T]):
    """A reconnecting client's attribute read from its current connection, typed (what
    ``__getattr__`` forwards is an Any to type checkers)."""

    def __init__(self, doc: str) -> None:
        self.__doc__ = doc
        self._name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> "_Current[_T]": ...
    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> _T: ...
    def __get__(self, obj: object, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        return getattr(obj._ws, self._name)  # type: ignore[attr-defined]


class ReconnectingState:
    """State shared by the sync and asyncio reconnecting clients (their I/O differs, not this).

    Subclasses set ``_ws`` (the current connection), ``_final``, ``connected`` and ``_outbox``.
    Attributes not defined here are read from the current connection.
    """

    _ws: Any
    _opts: Any
    _wsuri: Any
    _final: bool
    connected: bool
    _outbox: Outbox
    reconnects: int
    last_close_code: int | None
    close: Callable[..., Any]  # each client's own (the asyncio one's is a coroutine)

    def _init_state(self, max_pending: int, ack: Any) -> None:
        """Set the state both clients share (called from their ``__init__``)."""
        self._outbox = Outbox(max_pending, ack)
        self._ws = None
        #: Ended connections whose received messages recv() has not returned yet (oldest first).
        self._ended: deque = deque()
        self._closing = False  # close() was called: never reconnect
        self._final = False  # no reconnection will follow
        #: The new connection ``on_connect`` is running with: recv() leaves it alone until
        #: on_connect returns (what the connection brings first, a re-subscription's answer,
        #: is on_connect's to read).
        self._settling: Any = None
        #: Who runs on_connect (its thread ident / task): its own recv() calls go through.
        self._settling_runner: Any = None
        #: True while a connection is open and the queue has been flushed into it.
        self.connected = False
        #: Successful reconnections so far (the first connection does not count).
        self.reconnects = 0
        #: How the previous connection ended (``end_code``), None before any ended.
        self.last_close_code: int | None = None

    def _replaced(self, old: Any) -> None:
        """``old`` ended and a new connection takes its place: what it received stays readable.

        Bounded: past ``max_queue`` messages held for ended connections (an application that
        does not read while the connection keeps ending), the oldest connection's go.
        """
        if not old._messages:
            return
        ended = self._ended
        ended.append(old)
        limit = self._opts.max_queue
        if limit is None:
            return
        held = sum(len(c._messages or ()) for c in ended)
        while held > limit and len(ended) > 1:
            dropped = len(ended.popleft()._messages or ())
            held -= dropped
            logger.warning("%d messages received before a reconnection dropped: recv() did not take them", dropped)

    def _drop_outbox(self) -> None:
        """Closed for good: say how many queued messages are lost, and let them go (``pending``
        is 0 from then on)."""
        if self._outbox.pending:
            logger.warning("%d queued messages to %s dropped: closed for good", len(self._outbox), self._wsuri.shown)
        self._outbox.drop()

    def _setup_failed(self, exc: Exception, conn: Any) -> bool:
        """``on_connect(conn)`` raised ``exc`` on a reconnection: log it, and tell whether the
        session failed (True: close it 1011 and retry with backoff; a failed login, say) or
        the connection ended under it (False: its close code decides, as for any end)."""
        if isinstance(exc, ConnectionClosed) and not conn.open:
            logger.info("connection to %s lost during on_connect", self._wsuri.shown)
            return False
        # Not a session to send the queue on: the policy is reset only once on_connect succeeded.
        logger.error("on_connect failed for %s: closing (1011), reconnecting", self._wsuri.shown, exc_info=exc)
        return True

    def _take_ended(self) -> Any:
        """The oldest message an ended connection received and recv() has not returned, or None."""
        ended = self._ended
        while ended:
            messages = ended[0]._messages
            try:
                return messages.popleft()
            except (IndexError, AttributeError):  # drained (by another reader too), or none
                ended.popleft()
        return None

    @property
    def connection(self) -> Any:
        """The current (or last) underlying connection."""
        return self._ws

    @property
    def closed(self) -> bool:
        """True once closed for good: ``close()`` was called or no reconnection will follow."""
        return self._final

    @property
    def open(self) -> bool:
        """True while connected (messages go straight out)."""
        return self.connected and self._ws is not None and self._ws.open

    @property
    def pending(self) -> int:
        """Messages waiting for a connection (in ack mode, with those not yet acknowledged)."""
        return len(self._outbox)

    def abort(self) -> None:
        """Drop the current TCP connection at once, without a closing handshake; closed for good.

        An abort is the client's own doing, so like ``close()`` it is never followed by a
        reconnection (SPEC.md "Reconnection"): ``recv()`` returns None from then on and
        queued messages are dropped. This is the blocking client's; the asyncio client
        overrides it (its ``close()`` is a coroutine).
        """
        # Before the drop: the supervisor that the drop wakes up must see it and not reconnect.
        self._closing = True
        ws = self._ws
        if ws is not None:
            ws.abort()
        # The connection is gone, so close() sends nothing: it stops a backoff in progress,
        # marks the client closed and wakes recv() / wait_closed().
        self.close()

    # The documented attributes of a connection (SPEC.md), read from the current one; typed
    # here, where the rest of its surface comes through ``__getattr__``, which type checkers
    # are not shown (a misspelt name would be an Any to them).
    close_code: _Current[int | None] = _Current("The current (or last) connection's ``close_code``.")
    close_reason: _Current[str | None] = _Current("The current (or last) connection's ``close_reason``.")
    subprotocol: _Current[str | None] = _Current("The current connection's negotiated subprotocol, or None.")
    extensions: _Current[list[str]] = _Current("The current connection's negotiated extensions.")
    path: _Current[str] = _Current("The request path (with the query string).")
    request_headers: _Current[Headers] = _Current("The current connection's opening request headers.")
    response_headers: _Current[Headers] = _Current("The current connection's opening response headers.")
    remote_address: _Current[Any] = _Current("The current connection's peer address.")
    local_address: _Current[Any] = _Current("The current connection's own address.")
    side: _Current[str] = _Current('``"client"``.')
    latency: _Current[float] = _Current("The current connection's last ping round trip in seconds (0.0 before any).")

    if not TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any:
            if name.startswith("__"):
                raise AttributeError(name)
            return getattr(self._ws, name)
