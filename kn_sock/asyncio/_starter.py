"""``Starter``: what ``async_connect_websocket`` and ``start_async_websocket_server`` return,
at once awaitable, an async context manager and a coroutine (as websockets' ``connect()`` and
``serve()``, and aiohttp's ``ws_connect()``)."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Generator, TypeVar

__all__ = ["Starter"]

_T = TypeVar("_T")


class Starter(Coroutine[Any, None, _T]):
    """Runs ``_start()`` (a subclass's coroutine) when awaited, or when entered with
    ``async with``, which gives ``_start()``'s result and leaves through that result's own
    ``__aexit__`` (closing it). It is also a coroutine (``send``/``throw``/``close``), so
    ``asyncio.create_task``, ``TaskGroup.create_task`` and ``asyncio.run`` take it."""

    _result: Any = None
    _steps: Any = None  # the start, once driven as a coroutine (send/throw)

    async def _start(self) -> _T:
        raise NotImplementedError

    def __await__(self) -> Generator[Any, None, _T]:
        """Start: ``result = await ...``."""
        return self._start().__await__()

    def _driven(self) -> Any:
        steps = self._steps
        if steps is None:
            steps = self._steps = self._start().__await__()
        return steps

    def send(self, value: None, /) -> Any:
        """Coroutine protocol: run the start to its next suspension (the event loop sends None;
        typed so, a forgotten ``await`` before ``ws.send("...")`` is a type error)."""
        return self._driven().send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        """Coroutine protocol: raise ``typ`` inside the start."""
        if val is None and tb is None:
            return self._driven().throw(typ)
        return self._driven().throw(typ, val, tb)  # the old three-argument form

    def close(self) -> None:
        """Coroutine protocol: abandon the start (a no-op if it never began)."""
        if self._steps is not None:
            self._steps.close()

    async def __aenter__(self) -> _T:
        """Start; the result, closed on exit."""
        self._result = result = await self._start()
        entered: _T = await result.__aenter__()  # type: ignore[attr-defined]
        return entered

    async def __aexit__(self, *exc: Any) -> None:
        """Leave through the result's own ``__aexit__`` (it closes)."""
        if self._result is not None:
            await self._result.__aexit__(*exc)
