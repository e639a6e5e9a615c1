"""The selector: the compiled twin is live when required, and KN_SOCK_PURE forces the pure one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kn_sock import _backend


def _forced_pure() -> bool:
    from kn_sock._backend import pure_requested

    return pure_requested()


def test_extension_loaded_when_required():
    """CI sets KN_SOCK_REQUIRE_EXTENSION=1: a silently missing extension must fail the run."""
    required = os.environ.get("KN_SOCK_REQUIRE_EXTENSION", "") not in ("", "0")
    if _forced_pure():
        assert _backend.IMPLEMENTATION == "pure"
        assert _backend.speedups is None
        return
    if not required and _backend.speedups is None:
        pytest.skip(f"extension not built ({_backend.IMPORT_ERROR}); set KN_SOCK_REQUIRE_EXTENSION=1 to fail")
    assert _backend.speedups is not None, f"extension required but not loaded: {_backend.IMPORT_ERROR}"
    assert _backend.IMPLEMENTATION == "cython"
    assert _backend.backend is _backend.speedups


def test_implementation_is_consistent():
    assert _backend.IMPLEMENTATION in ("cython", "pure")
    assert (_backend.IMPLEMENTATION == "cython") == (_backend.backend is _backend.speedups)
    assert _backend.pure.__name__ == "kn_sock._pure"


def _run(code: str, **env: str) -> str:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("KN_SOCK_")}
    full_env.update(env)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    full_env["PYTHONPATH"] = root + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()


def test_kn_sock_pure_forces_the_pure_twin():
    code = "from kn_sock import _backend; print(_backend.IMPLEMENTATION, _backend.speedups is None)"
    assert _run(code, KN_SOCK_PURE="1") == "pure True"


def test_without_kn_sock_pure():
    if _backend.speedups is None:
        pytest.skip("extension not built")
    code = "from kn_sock import _backend; print(_backend.IMPLEMENTATION)"
    assert _run(code) == "cython"
    for off in ("0", "false", "No", " off "):  # (audit 29K: "false" forced the pure twin)
        assert _run(code, KN_SOCK_PURE=off) == "cython"
    assert _run(code, KN_SOCK_PURE="yes") == "pure"


@pytest.mark.parametrize("pure_env", ["", "1"])
def test_require_extension_fixture_semantics(pure_env):
    """The conftest ``backend`` fixture: REQUIRE fails a missing extension unless KN_SOCK_PURE is set."""
    root = os.path.dirname(os.path.abspath(__file__))
    code = (
        "import sys, types, pytest\n"
        "sys.path.insert(0, %r)\n"
        "import conftest\n"
        "conftest._backend.speedups = None\n"
        "conftest._backend.IMPORT_ERROR = 'simulated'\n"
        "class R: param = 'cython'\n"
        "try:\n"
        "    conftest.backend.__wrapped__(R())\n"
        "except pytest.fail.Exception: print('failed')\n"
        "except pytest.skip.Exception: print('skipped')\n"
    ) % root
    out = _run(code, KN_SOCK_REQUIRE_EXTENSION="1", **({"KN_SOCK_PURE": pure_env} if pure_env else {}))
    assert out == ("skipped" if pure_env else "failed")
