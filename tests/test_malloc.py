"""kn_sock/_malloc.py: equal-sized large buffers stop page-faulting once the threshold is raised."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

SCRIPT = r"""
import resource, sys
from kn_sock._malloc import tune_malloc_once
if sys.argv[1] == "tune":
    tune_malloc_once()
    tune_malloc_once()  # idempotent
warm = [bytes(bytearray(1 << 20)) for _ in range(2)]
del warm
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    b = bytes(bytearray(1 << 20))  # the payload pattern: a fresh 1 MiB object, filled, freed
    del b
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_tuning_removes_the_page_faults_of_equal_sized_large_buffers() -> None:
    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return int(out.stdout)

    untuned, tuned = faults("plain"), faults("tune")
    assert tuned < untuned / 4, (tuned, untuned)
