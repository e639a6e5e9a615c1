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


def test_only_connections_opened_on_the_main_thread_tune_malloc(monkeypatch: pytest.MonkeyPatch) -> None:
    """glibc's mmap threshold is raised only from the main thread. The blocking server runs
    each connection in a thread of its own, as do programs that open clients in threads; glibc
    serves such threads from up to 8 malloc arenas per core, and the raised threshold lets each
    arena keep 16 MiB of freed memory that even malloc_trim() does not return (measured: a soak
    of 300 churning connections kept 23-27 MiB after every one had left, 64 client threads 37
    MiB against 7; without the tuning, the server's 1 MiB echo was no slower)."""
    import threading

    from kn_sock import _malloc, connect_websocket

    from sync_support import echo, raw_client, running_server

    monkeypatch.setattr(_malloc, "_done", False)
    monkeypatch.setenv("KN_SOCK_MALLOC_TUNING", "0")  # the decision is under test, not the effect

    def one_client(port: int) -> None:
        with connect_websocket("127.0.0.1", port, compression=None) as ws:
            ws.send(b"y")
            assert ws.recv() == b"y"

    with running_server(echo) as server:
        peer = raw_client(server.port)  # handshake by hand: only the server side is kn_sock's
        peer.send_frame(0x2, b"x")
        assert peer.recv_frame() == (0x2, b"x")  # the server connection is open
        peer.close()
        assert not _malloc._done
        errors: list[BaseException] = []

        def in_a_thread() -> None:
            try:
                one_client(server.port)
            except BaseException as exc:  # reported below
                errors.append(exc)

        thread = threading.Thread(target=in_a_thread)
        thread.start()
        thread.join(10)
        assert not thread.is_alive() and errors == []
        assert not _malloc._done  # a client in a thread of its own (and the server): untouched
        assert threading.current_thread() is threading.main_thread()
        one_client(server.port)
        assert _malloc._done
