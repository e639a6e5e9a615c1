"""Shared fixtures: every twin-sensitive test runs under both implementations.

``backend`` is parametrised with ids ``[pure]`` and ``[cython]``. The cython case skips
when the extension is not loaded (with the import error as the reason), unless
``KN_SOCK_REQUIRE_EXTENSION=1`` says it must be there, in which case it fails. With
``KN_SOCK_PURE=1`` the extension is deliberately off, so the cython case always skips.
"""

from __future__ import annotations

import asyncio
import os
import sys
from types import ModuleType

import pytest

from kn_sock import _backend

if sys.version_info < (3, 11):  # pragma: no cover - Python 3.10 only
    # The tests are written for 3.11+: asyncio.timeout exists and asyncio's TimeoutError is
    # the builtin one (3.10's asyncio.wait_for raises a class of its own).
    import asyncio.exceptions

    from kn_sock.asyncio._compat import timeout as _timeout

    asyncio.timeout = _timeout  # type: ignore[attr-defined]
    asyncio.exceptions.TimeoutError = asyncio.TimeoutError = TimeoutError  # type: ignore[misc]

    class _Runner:
        """The part of 3.11's ``asyncio.Runner`` the tests use: a loop from ``loop_factory``,
        ``run(coro)``, and on exit the tasks left cancelled and the loop closed."""

        def __init__(self, *, loop_factory=None, debug=None):  # type: ignore[no-untyped-def]
            self._factory = loop_factory or asyncio.new_event_loop

        def __enter__(self):  # type: ignore[no-untyped-def]
            self._loop = self._factory()
            return self

        def run(self, coro):  # type: ignore[no-untyped-def]
            return self._loop.run_until_complete(coro)

        def __exit__(self, *exc):  # type: ignore[no-untyped-def]
            loop = self._loop
            try:
                tasks = asyncio.all_tasks(loop)
                for task in tasks:
                    task.cancel()
                if tasks:
                    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    asyncio.Runner = _Runner  # type: ignore[attr-defined, misc]

__all__ = ["BACKEND_IDS", "backend", "loop_name", "require_extension"]

BACKEND_IDS = ["pure", "cython"]


def require_extension() -> bool:
    """True when the environment demands the compiled twin (CI sets KN_SOCK_REQUIRE_EXTENSION=1)."""
    return os.environ.get("KN_SOCK_REQUIRE_EXTENSION", "") not in ("", "0")


def _forced_pure() -> bool:
    from kn_sock._backend import pure_requested

    return pure_requested()


@pytest.fixture(params=BACKEND_IDS, ids=BACKEND_IDS)
def backend(request: pytest.FixtureRequest) -> ModuleType:
    """The twin module under test (``kn_sock._pure`` or ``kn_sock._speedups``)."""
    if request.param == "pure":
        return _backend.pure
    if _backend.speedups is None:
        reason = f"kn_sock._speedups is not loaded ({_backend.IMPORT_ERROR})"
        if require_extension() and not _forced_pure():
            pytest.fail(reason + " but KN_SOCK_REQUIRE_EXTENSION=1")
        pytest.skip(reason)
    return _backend.speedups


def loop_name() -> str:
    """The event loop the asyncio tests run on: ``KN_SOCK_TEST_LOOP`` (``asyncio``, the
    default, or ``uvloop``)."""
    name = os.environ.get("KN_SOCK_TEST_LOOP", "") or "asyncio"
    if name not in ("asyncio", "uvloop"):
        raise pytest.UsageError(f"KN_SOCK_TEST_LOOP={name!r}: expected asyncio or uvloop")
    return name


def _loop_factories_hook() -> bool:
    """True when pytest-asyncio takes its loops from the ``pytest_asyncio_loop_factories``
    hook (1.5 and later), which replaces overriding the ``event_loop_policy`` fixture."""
    try:
        from pytest_asyncio import plugin
    except ImportError:  # pragma: no cover - pytest-asyncio is in the test extra
        return False
    return hasattr(plugin, "PytestAsyncioSpecs")


if loop_name() == "uvloop":
    # The whole asyncio suite on uvloop (an ImportError here when it is not installed).
    import uvloop

    if _loop_factories_hook():

        @pytest.hookimpl(optionalhook=True)
        def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, object]:
            """Every asyncio test's loop: uvloop's (one factory: pytest 8.4+ keeps the test ids as they are)."""
            return {"uvloop": uvloop.new_event_loop}

    else:  # older pytest-asyncio: the policy fixture (deprecated by the hook above)

        @pytest.fixture(scope="session")
        def event_loop_policy() -> asyncio.AbstractEventLoopPolicy:
            """pytest-asyncio's loop policy: uvloop's."""
            return uvloop.EventLoopPolicy()  # type: ignore[no-any-return]
