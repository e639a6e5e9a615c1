"""One-time glibc malloc tuning so large messages do not page-fault on every allocation.

glibc serves allocations above its mmap threshold (128 KiB at start) with a fresh ``mmap``;
freeing such a chunk raises the threshold to that chunk's size, but an allocation of the
*same* size is still served by ``mmap``. An echo of equal-sized 1 MiB messages therefore maps,
faults in (256 page faults per MiB) and unmaps every payload and every frame: measured here,
about 490 page faults and half the time of a 1 MiB round trip. Freeing one larger chunk once
lifts the threshold above the sizes we allocate, so those buffers come from the heap and are
reused. The cost: one ``mmap``/``munmap`` pair (``bytes(n)`` uses calloc, which does not touch
fresh pages) and a process whose heap may keep up to twice the threshold of freed memory.

That is per malloc arena: glibc gives threads arenas of their own (up to 8 per core), and
malloc_trim() does not shrink the top of those. So the tuning is done only from the main
thread: a connection opened in any other (the blocking server's handler threads, clients
opened in threads of their own, an event loop run in a thread) leaves malloc alone. Measured:
the blocking server, 300 churning connections for 2-4 minutes, left 23-27 MiB behind after
every one had gone, trimmed (untuned: nothing, and its 1 MiB echo was no slower: the server
builds no masked frames); 64 client threads, 4 waves, 37 MiB above cold (untuned: 7 MiB).

Set ``KN_SOCK_MALLOC_TUNING=0`` to opt out. Non-glibc platforms are left alone.
"""

from __future__ import annotations

import os
import platform
import sys
import threading

__all__ = ["tune_malloc_once", "THRESHOLD"]

THRESHOLD = 8 << 20
_done = False


def tune_malloc_once() -> None:
    """Raise glibc's dynamic mmap threshold to ``THRESHOLD`` the first time it is called on the main thread."""
    global _done
    if _done or threading.current_thread() is not threading.main_thread():
        return
    _done = True
    if os.environ.get("KN_SOCK_MALLOC_TUNING", "1") == "0":
        return
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return
    block = bytes(THRESHOLD)  # calloc → fresh mmap, no page touched; freed → threshold raised
    del block
