"""The one place that chooses between the Cython twin (``_speedups``) and the pure twin (``_pure``).

``KN_SOCK_PURE=1`` in the environment before import, a Python other than CPython, or an
extension that fails to import all select the pure twin. ``IMPLEMENTATION`` says which won.
"""

from __future__ import annotations

import os
import platform
from types import ModuleType
from typing import TYPE_CHECKING, Literal

__all__ = ["IMPLEMENTATION", "backend", "pure", "pure_requested", "speedups", "IMPORT_ERROR"]

from . import _pure as pure

speedups: ModuleType | None = None
IMPORT_ERROR: str | None = None

def pure_requested() -> bool:
    """True when ``KN_SOCK_PURE`` asks for the pure twin: set to anything but empty, ``0``,
    ``false``, ``no`` or ``off`` (any case)."""
    return os.environ.get("KN_SOCK_PURE", "").strip().lower() not in ("", "0", "false", "no", "off")


if TYPE_CHECKING:
    backend = pure
elif pure_requested():
    backend = pure
    IMPORT_ERROR = "KN_SOCK_PURE is set"
elif platform.python_implementation() != "CPython":
    backend = pure
    IMPORT_ERROR = "not CPython"
else:
    try:
        from . import _speedups as speedups  # type: ignore[no-redef]
    except ImportError as exc:  # no compiler at install time: the pure twin serves
        import importlib.machinery
        from pathlib import Path

        here = Path(__file__).resolve().parent
        if any((here / f"_speedups{suffix}").exists() for suffix in importlib.machinery.EXTENSION_SUFFIXES):
            IMPORT_ERROR = str(exc)
        else:  # Python's own words would be about a "partially initialized module"
            IMPORT_ERROR = ("the C extension is not built (installed without a C compiler or Cython,"
                            " or with KN_SOCK_BUILD_EXTENSION=no)")
        backend = pure
    else:
        backend = speedups

IMPLEMENTATION: Literal["cython", "pure"] = "cython" if backend is speedups else "pure"
