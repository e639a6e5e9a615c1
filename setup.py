"""Builds kn_sock's optional Cython extension; all metadata is static in pyproject.toml.

Environment switches:

* ``KN_SOCK_BUILD_EXTENSION``: ``auto`` (default) builds ``kn_sock._speedups`` when Cython and
  a C compiler work, and otherwise warns and installs the pure-Python package; ``yes`` fails
  loudly when the extension cannot be built (CI); ``no`` never builds it.
* ``KN_SOCK_CYTHON_ANNOTATE=1``: also write ``kn_sock/_speedups.html`` (``cython -a``) to see
  where the extension still calls into Python.

The Cython directives live at the top of ``kn_sock/_speedups.pyx``, nowhere else.
"""

from __future__ import annotations

import os
import sys
import warnings

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

MODE = os.environ.get("KN_SOCK_BUILD_EXTENSION", "auto").strip().lower()
if MODE not in ("yes", "no", "auto"):
    raise SystemExit(f"KN_SOCK_BUILD_EXTENSION must be yes, no or auto, not {MODE!r}")
ANNOTATE = os.environ.get("KN_SOCK_CYTHON_ANNOTATE", "") not in ("", "0")


def _warn_pure(exc: BaseException) -> None:
    cause = exc
    while cause.__cause__ is not None or cause.__context__ is not None:
        cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
    why = "no C compiler was found" if isinstance(cause, FileNotFoundError) else repr(exc)
    warnings.warn(
        f"kn_sock: the C extension could not be built ({why}); installing the pure-Python "
        "fallback, which works but is slower (`kn-sock --version` says which one runs). With a "
        "compiler and the Python headers, reinstall from the source with `pip install --no-cache-dir "
        "--force-reinstall <checkout or sdist>`; set KN_SOCK_BUILD_EXTENSION=yes to make this an error.",
        RuntimeWarning,
        stacklevel=1,
    )


class OptionalBuildExt(build_ext):
    """``build_ext`` that, in auto mode, turns a failed compile into a pure install."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any compiler failure
            if MODE == "yes":
                raise
            _warn_pure(exc)

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            if MODE == "yes":
                raise
            _warn_pure(exc)


class BuildPyWithBenchmarks(build_py):
    """``build_py`` that also ships ``benchmarks/`` as ``kn_sock/_benchmarks`` (for ``kn-sock
    bench`` in an installed package; an editable install uses the checkout's folder)."""

    def run(self) -> None:
        super().run()
        source = Path(__file__).resolve().parent / "benchmarks"
        if getattr(self, "editable_mode", False) or not source.is_dir():
            return
        target = Path(self.build_lib) / "kn_sock" / "_benchmarks"
        target.mkdir(parents=True, exist_ok=True)
        for path in sorted(source.iterdir()):
            if path.suffix in (".py", ".md"):
                shutil.copyfile(path, target / path.name)


def _extensions() -> list:
    if MODE == "no" or sys.implementation.name != "cpython":
        return []
    try:
        from Cython.Build import cythonize
        from setuptools import Extension

        # -g0: no debug information (Python's own flags add -g): a 2.4 MB extension is 0.4 MB.
        compile_args = [] if sys.platform == "win32" else ["-O3", "-g0"]
        ext = Extension(
            "kn_sock._speedups",
            ["kn_sock/_speedups.pyx"],
            extra_compile_args=compile_args,
        )
        return cythonize([ext], annotate=ANNOTATE, quiet=True)
    except Exception as exc:  # noqa: BLE001 - no Cython, or a Cython error
        if MODE == "yes":
            raise
        _warn_pure(exc)
        return []


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt, "build_py": BuildPyWithBenchmarks})
