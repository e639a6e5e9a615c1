"""What asyncio lacks on the oldest Python kn_sock supports (3.10)."""

from __future__ import annotations

import asyncio
import inspect
import sys
from types import TracebackType
from typing import Any

__all__ = ["timeout", "cancelling", "mark_coroutine_function", "TLS_NO_LIMIT"]

#: ``ssl_handshake_timeout`` for "no limit of asyncio's own": without one, asyncio bounds a
#: TLS handshake by 60 s, whatever ``open_timeout`` says (None: no limit; or more than 60 s).
#: Finite, as uvloop turns it into milliseconds.
TLS_NO_LIMIT = 1e9


class _Timeout:
    """``asyncio.timeout(delay)`` for Python 3.10: cancel the task at the deadline and turn
    that cancellation into ``TimeoutError`` on the way out of the block."""

    __slots__ = ("_delay", "_handle", "_task", "_fired")

    def __init__(self, delay: float | None) -> None:
        self._delay = delay
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None
        self._fired = False

    def _fire(self) -> None:
        self._fired = True
        assert self._task is not None
        self._task.cancel()

    async def __aenter__(self) -> "_Timeout":
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("timeout() must be used inside a task")
        self._task = task
        if self._delay is not None:
            loop = asyncio.get_running_loop()
            self._handle = loop.call_at(loop.time() + max(self._delay, 0.0), self._fire)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._fired and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc


def _timeout_310(delay: float | None) -> Any:
    """An async context manager raising TimeoutError when its block runs past ``delay`` seconds."""
    return _Timeout(delay)


if sys.version_info >= (3, 11):
    timeout = asyncio.timeout
else:  # pragma: no cover - exercised on Python 3.10 only
    timeout = _timeout_310


def cancelling(task: "asyncio.Task[Any] | None") -> bool:
    """``task.cancelling()`` (3.11+): whether a cancellation of ``task`` is pending; False on 3.10,
    which cannot tell."""
    method = getattr(task, "cancelling", None)
    return bool(method()) if method is not None else False


def mark_coroutine_function(function: Any) -> None:
    """Have ``asyncio.iscoroutinefunction`` (and, from 3.12, ``inspect.iscoroutinefunction``)
    say true of ``function``, which is not an ``async def`` but returns an awaitable: a Cython
    function, or one returning a ``Starter``. (A C function without attributes is left alone.)"""
    if inspect.iscoroutinefunction(function):
        return
    try:
        marker = getattr(asyncio.coroutines, "_is_coroutine", None)
        if marker is not None:
            function._is_coroutine = marker
        mark = getattr(inspect, "markcoroutinefunction", None)
        if mark is not None:
            mark(function)
    except (AttributeError, TypeError):  # pragma: no cover
        pass
