"""Keepalive timers kept off asyncio's own event loops (``call_at``).

Why: while any timer is scheduled, each iteration of asyncio's pure-Python event loop
(``BaseEventLoop._run_once``) works out a select timeout from the timer heap and checks the heap
again after the select. Measured here, two processes pinned to one CPU echoing 64 B messages over
one kn_sock connection: 53.5k round trips/s without keepalive, 44.3k with the default
``ping_interval`` (20 s), whose timer is the only one scheduled in either process. uvloop, whose
timers are in C, showed no difference.

So on asyncio's own loops, which time with ``time.monotonic()``, kn_sock's keepalive timers wait
in the reactor of the blocking layer (``kn_sock._reactor``: one lazily started daemon thread per
process, with a timer heap on the same clock, cancellation that drops the callback, and a fresh
start after fork), which hands each due timer to its loop with ``call_soon_threadsafe``. A loop
then has no timer of kn_sock's in its heap. Any other loop (uvloop, a loop with its own clock)
gets ``loop.call_at`` as before. A connection arms one timer per ``ping_interval``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from .._reactor import get_reactor

__all__ = ["call_at"]


class TimerHandle:
    """A timer from ``call_at``: ``cancel()`` it as an ``asyncio.TimerHandle``."""

    __slots__ = ("_loop", "_callback", "_when", "_timer")

    def __init__(self, loop: Any, when: float, callback: Callable[[], Any]) -> None:
        self._loop = loop
        self._when = when
        self._callback: Callable[[], Any] | None = callback
        self._timer = get_reactor().call_at(when, self._due)

    def when(self) -> float:
        """When it is due, in the loop's time."""
        return self._when

    def cancel(self) -> None:
        """Never run it (a no-op once it has run); keeps nothing alive from then on."""
        self._callback = None
        self._timer.cancel()

    def cancelled(self) -> bool:
        """Whether it was cancelled (or has run)."""
        return self._callback is None

    def _due(self) -> None:
        """In the reactor thread: hand the callback to the loop (a closed loop runs nothing)."""
        if self._callback is not None:
            try:
                self._loop.call_soon_threadsafe(self._run)
            except RuntimeError:  # the loop is closed
                pass

    def _run(self) -> None:
        """In the loop's thread: run the callback unless cancelled meanwhile."""
        callback = self._callback
        if callback is not None:
            self._callback = None
            callback()

    def __repr__(self) -> str:
        return f"<kn_sock TimerHandle when={self._when:.3f}{' cancelled' if self._callback is None else ''}>"


_off_loop_types: dict[type, bool] = {}


def _off_loop(loop: Any) -> bool:
    """Whether ``loop`` is one of asyncio's own loops timing with ``time.monotonic()``."""
    kind = type(loop)
    off = _off_loop_types.get(kind)
    if off is None:
        off = _off_loop_types[kind] = isinstance(loop, asyncio.BaseEventLoop) and kind.time is asyncio.BaseEventLoop.time
    return off


def call_at(loop: Any, when: float, callback: Callable[[], Any]) -> Any:
    """``loop.call_at(when, callback)``, kept off the loop's own timer heap on asyncio's loops."""
    if _off_loop(loop):
        return TimerHandle(loop, when, callback)
    return loop.call_at(when, callback)
