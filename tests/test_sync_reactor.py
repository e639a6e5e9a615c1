"""The shared reactor of the blocking layer: timers (kn_sock/_reactor.py).

A cancelled timer must keep nothing alive: connections cancel their keepalive and close
timers when they close, and those timers would otherwise pin every closed connection (and
its buffers) in the heap until they fall due.
"""

from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest

from kn_sock._reactor import _COMPACT_MIN, Reactor, get_reactor

pytestmark = pytest.mark.timeout(30)


class _Owner:
    """Stands for a connection: a timer's callback is one of its bound methods."""

    def __init__(self) -> None:
        self.fired = threading.Event()

    def tick(self) -> None:
        self.fired.set()


@pytest.fixture
def reactor():
    """A reactor whose thread is not started: its heap is only what the test puts there."""
    r = Reactor()
    yield r
    r._sel.close()
    r._wake_r.close()
    r._wake_w.close()


def test_cancelled_timer_releases_its_callback(reactor):
    owner = _Owner()
    timer = reactor.call_at(time.monotonic() + 3600, owner.tick)
    ref = weakref.ref(owner)
    timer.cancel()
    assert timer.cancelled
    del owner
    gc.collect()
    assert ref() is None


def test_cancelled_timers_are_removed_from_the_heap(reactor):
    live = [reactor.call_at(time.monotonic() + 3600, _Owner().tick) for _ in range(8)]
    dead = [reactor.call_at(time.monotonic() + 3600, _Owner().tick) for _ in range(4 * _COMPACT_MIN)]
    for timer in dead:
        timer.cancel()
    timers = [entry[2] for entry in reactor._timers]
    assert all(timer in timers for timer in live)
    assert sum(timer.cancelled for timer in timers) < _COMPACT_MIN
    heap = reactor._timers
    assert all(heap[(i - 1) // 2] <= heap[i] for i in range(1, len(heap)))  # still a heap


def test_due_timers_run_and_cancelled_ones_never():
    shared = get_reactor()
    run, cancelled = _Owner(), _Owner()
    timer = shared.call_at(time.monotonic() + 0.01, cancelled.tick)
    timer.cancel()
    shared.call_at(time.monotonic() + 0.02, run.tick)
    assert run.fired.wait(5)
    assert not cancelled.fired.is_set()
