"""The one shared selector thread behind every blocking connection of the process.

The blocking layer gives each server connection exactly one thread (the user's handler)
and nothing more; everything that must happen while no application thread is looking at
a socket runs here, in one lazily started daemon thread:

- reading the sockets of connections whose application is not inside ``recv()``
  (answering pings, running the closing handshake, queueing messages up to ``max_queue``);
- flushing write buffers that the sending threads left behind (they never wait for it
  unless more than ``write_limit`` bytes are pending);
- timers: keepalive pings and their timeouts, ``close_timeout``; and the asyncio layer's
  keepalive timers on asyncio's own loops, which it hands to their loop when due
  (:mod:`kn_sock.asyncio._timers`).

Thread safety: ``set_interest`` and ``call_at`` may be called from any thread. With
epoll (Linux) an interest change made by another thread takes effect in the kernel at
once, so no wake-up is needed and the hot path (``recv()`` taking a socket from the
reactor and handing it back) costs two ``epoll_ctl`` calls and no thread switch. With
other selectors, adding interest wakes the reactor so that its next ``select`` sees it.

Each watched object has ``_on_ready(mask)``; callbacks run in the reactor thread and must
never block. An exception in a callback is logged and does not stop the reactor.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import selectors
import socket
import threading
import time
from typing import Any, Callable

__all__ = ["Reactor", "Timer", "get_reactor", "EVENT_READ", "EVENT_WRITE"]

logger = logging.getLogger("kn_sock")

EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE
#: Period of the lazy hand-back tick (see ``Reactor.hold``): an application thread that left
#: ``recv()`` keeps reading rights for between one and two ticks.
HOLD_TICK = 0.01
#: Cancelled timers are removed from the heap once there are at least this many and they
#: are more than half of it (each connection cancels one per keepalive pong and one at close).
_COMPACT_MIN = 64


class Timer:
    """A scheduled callback; ``cancel()`` makes the reactor skip it.

    A cancelled timer drops its callback at once, so it keeps nothing alive (a connection's
    bound method, and through it the connection's buffers) while it waits in the heap, and
    the reactor removes cancelled timers from the heap once they are most of it.
    """

    __slots__ = ("when", "callback", "_reactor")

    def __init__(self, when: float, callback: Callable[[], Any]) -> None:
        self.when = when
        self.callback: Callable[[], Any] | None = callback
        # The reactor whose heap holds this timer; None once popped (or never pushed).
        self._reactor: Reactor | None = None

    @property
    def cancelled(self) -> bool:
        """True once cancelled (or run)."""
        return self.callback is None

    def cancel(self) -> None:
        """Do not run the callback (it may already be running); drop the reference to it."""
        if self.callback is None:
            return
        self.callback = None
        reactor = self._reactor
        if reactor is not None:
            reactor._timer_cancelled()


class Reactor:
    """A ``selectors`` loop in a daemon thread, shared by every blocking connection."""

    def __init__(self) -> None:
        """Create the selector and the wake-up socket pair; ``start()`` runs the thread."""
        self._sel = selectors.DefaultSelector()
        # epoll applies interest changes made by other threads at once; others need a wake-up.
        epoll = getattr(selectors, "EpollSelector", None)
        self._wake_on_change = not (epoll is not None and isinstance(self._sel, epoll))
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r.fileno(), EVENT_READ, None)
        self._timers: list[tuple[float, int, Timer]] = []
        # Cancelled timers still in ``_timers`` (approximate: one cancelled as it is popped may count).
        self._ncancelled = 0
        self._seq = itertools.count()
        self._tlock = threading.Lock()
        self._sleep_until = math.inf
        self._thread: threading.Thread | None = None
        self.ident: int | None = None
        # Connections an application thread keeps after recv() (see ``hold``).
        self._held: set[Any] = set()
        self._tick_scheduled = False

    def start(self) -> None:
        """Start the reactor thread (a daemon: it never keeps the process alive)."""
        thread = threading.Thread(target=self._run, name="kn_sock-reactor", daemon=True)
        self._thread = thread
        thread.start()

    # ------------------------------------------------------------ any thread

    def wake(self) -> None:
        """Make the reactor's current ``select`` return."""
        try:
            self._wake_w.send(b"\0")
        except OSError:  # buffer full: a wake-up is already pending
            pass

    def set_interest(self, fd: int, old: int, new: int, obj: Any) -> None:
        """Change what the reactor watches ``fd`` for (0: nothing). The caller serialises per fd."""
        sel = self._sel
        if old == new:
            return
        if not old:
            sel.register(fd, new, obj)
        elif not new:
            sel.unregister(fd)
        else:
            sel.modify(fd, new, obj)
        if self._wake_on_change and new & ~old and threading.get_ident() != self.ident:
            self.wake()

    def call_at(self, when: float, callback: Callable[[], Any]) -> Timer:
        """Run ``callback()`` in the reactor thread at ``when`` (``time.monotonic()`` clock)."""
        timer = Timer(when, callback)
        timer._reactor = self
        with self._tlock:
            heapq.heappush(self._timers, (when, next(self._seq), timer))
            wake = when < self._sleep_until
        if wake and threading.get_ident() != self.ident:
            self.wake()
        return timer

    def call_soon(self, callback: Callable[[], Any]) -> Timer:
        """Run ``callback()`` in the reactor thread as soon as possible."""
        return self.call_at(time.monotonic(), callback)

    def _timer_cancelled(self) -> None:
        """A timer in the heap was cancelled: compact the heap if it is mostly dead timers."""
        with self._tlock:
            self._ncancelled += 1
            timers = self._timers
            if self._ncancelled >= _COMPACT_MIN and 2 * self._ncancelled > len(timers):
                # In place: the reactor thread reads ``self._timers`` without the lock.
                timers[:] = [entry for entry in timers if entry[2].callback is not None]
                heapq.heapify(timers)
                self._ncancelled = 0

    def hold(self, obj: Any) -> None:
        """``obj`` keeps its socket for now; call ``obj._release_hold(now)`` every ``HOLD_TICK``.

        Lazy hand-back: a thread leaving ``recv()`` keeps the socket instead of registering
        it again, because in a request/response loop it comes back within microseconds. A
        tick, scheduled only while some connection is held, lets each held connection hand
        its socket back (and call ``unhold``) once its application has stayed out of
        ``recv()`` for a tick. ``hold`` and ``unhold`` are called with ``obj``'s lock held.
        """
        with self._tlock:
            self._held.add(obj)
            if self._tick_scheduled:
                return
            self._tick_scheduled = True
        self.call_at(time.monotonic() + HOLD_TICK, self._tick)

    def unhold(self, obj: Any) -> None:
        """``obj`` handed its socket back (or closed)."""
        with self._tlock:
            self._held.discard(obj)

    # ------------------------------------------------------------ reactor thread

    def _run(self) -> None:
        self.ident = threading.get_ident()
        while True:
            try:
                self._once()
            except Exception:  # pragma: no cover - a bug; keep serving the other connections
                logger.exception("kn_sock reactor error")

    def _once(self) -> None:
        timers = self._timers
        with self._tlock:
            if timers:
                now = time.monotonic()
                timeout: float | None = max(0.0, timers[0][0] - now)
                self._sleep_until = now + timeout  # type: ignore[operator]
            else:
                timeout = None
                self._sleep_until = math.inf
        ready = self._sel.select(timeout)
        # Awake: timers added from now on are seen at the top of the next turn.
        self._sleep_until = -math.inf
        for key, mask in ready:
            obj = key.data
            if obj is None:
                self._drain_wake()
                continue
            try:
                obj._on_ready(mask)
            except Exception:
                logger.exception("kn_sock reactor: error handling %r", obj)
        if timers:
            self._run_timers()

    def _run_timers(self) -> None:
        now = time.monotonic()
        due = []
        with self._tlock:
            timers = self._timers
            while timers and timers[0][0] <= now:
                timer = heapq.heappop(timers)[2]
                timer._reactor = None
                if timer.callback is None:
                    if self._ncancelled:
                        self._ncancelled -= 1
                else:
                    due.append(timer)
        for timer in due:
            # Read once: another thread may cancel (and clear) it meanwhile.
            callback = timer.callback
            if callback is None:
                continue
            timer.callback = None  # run: holds nothing any more
            try:
                callback()
            except Exception:
                logger.exception("kn_sock reactor: error in timer %r", callback)

    def _tick(self) -> None:
        now = time.monotonic()
        with self._tlock:
            held = list(self._held)
        for obj in held:
            try:
                obj._release_hold(now)
            except Exception:
                logger.exception("kn_sock reactor: error releasing %r", obj)
                self.unhold(obj)
        with self._tlock:
            if not self._held:
                self._tick_scheduled = False
                return
        self.call_at(now + HOLD_TICK, self._tick)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass


_reactor: Reactor | None = None
_reactor_lock = threading.Lock()


def get_reactor() -> Reactor:
    """Return the process's reactor, starting it on first use."""
    global _reactor
    reactor = _reactor
    if reactor is not None:
        return reactor
    with _reactor_lock:
        if _reactor is None:
            reactor = Reactor()
            reactor.start()
            _reactor = reactor
        return _reactor


def _after_fork_in_child() -> None:
    # The reactor thread does not survive fork(): a child starts its own on first use.
    global _reactor
    _reactor = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
