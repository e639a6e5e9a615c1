"""kn_sock/reconnect.py, sans-I/O: backoff delays (random and clock injected, nothing sleeps),
which close codes and errors are worth a retry, and the outgoing queue."""

from __future__ import annotations

import pytest

from kn_sock.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from kn_sock.protocol import CLIENT, Protocol
from kn_sock.reconnect import (
    PERMANENT_CODES,
    RETRY_CODES,
    Outbox,
    ReconnectPolicy,
    end_code,
    queueable,
    retryable_error,
    should_reconnect,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_full_jitter_delays_stay_within_the_exponential_window():
    draws = iter([1.0 - 1e-12, 0.5, 0.0, 0.999, 0.25, 1.0 - 1e-12, 1.0 - 1e-12])
    policy = ReconnectPolicy(initial_delay=0.1, max_delay=1.0, factor=2, random=lambda: next(draws))
    delays = [policy.next_delay() for _ in range(7)]
    windows = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    for delay, window in zip(delays, windows):
        assert delay is not None and 0 <= delay <= window
    assert delays[0] == pytest.approx(0.1) and delays[1] == pytest.approx(0.1) and delays[2] == 0.0
    assert delays[4] == pytest.approx(0.25) and delays[6] == pytest.approx(1.0)
    assert policy.attempts == 7


def test_without_jitter_the_delay_is_the_window_and_reset_starts_over():
    policy = ReconnectPolicy(initial_delay=0.5, max_delay=3.0, factor=3, jitter=None)
    assert [policy.next_delay() for _ in range(4)] == [0.5, 1.5, 3.0, 3.0]
    policy.reset()
    assert policy.next_delay() == 0.5


def test_huge_attempt_counts_do_not_overflow():
    policy = ReconnectPolicy(jitter=False, max_delay=7.0)
    assert policy.window(10_000) == 7.0


def test_max_attempts_gives_up():
    policy = ReconnectPolicy(max_attempts=2, random=lambda: 0.5)
    assert policy.next_delay() is not None and policy.next_delay() is not None
    assert policy.next_delay() is None
    assert ReconnectPolicy(max_attempts=0).next_delay() is None


def test_deadline_bounds_the_attempts_with_the_injected_clock():
    clock = Clock()
    policy = ReconnectPolicy(initial_delay=1.0, factor=2, jitter=None, clock=clock)
    policy.start(2.5)
    assert policy.remaining() == 2.5
    assert policy.next_delay() == 1.0
    clock.now += 1.0
    assert policy.remaining() == 1.5
    assert policy.next_delay() is None  # 2 s more would end past the deadline
    clock.now += 5
    assert policy.remaining() == 0.0
    policy.reset()
    assert policy.remaining() is None


def test_from_option():
    assert ReconnectPolicy.from_option(False) is None and ReconnectPolicy.from_option(None) is None
    assert ReconnectPolicy.from_option(True).initial_delay == 0.1
    p = ReconnectPolicy.from_option({"initial_delay": 1, "max_delay": 5, "factor": 3, "max_attempts": 4, "jitter": "full"})
    assert (p.initial_delay, p.max_delay, p.factor, p.max_attempts, p.jitter) == (1.0, 5.0, 3.0, 4, "full")
    template = ReconnectPolicy(max_attempts=1)
    template.next_delay()
    copy = ReconnectPolicy.from_option(template)
    assert copy is not template and copy.attempts == 0 and copy.max_attempts == 1
    from types import MappingProxyType  # any mapping, as the annotations say (a TypedDict is a dict)

    assert ReconnectPolicy.from_option(MappingProxyType({"max_delay": 3})).max_delay == 3.0
    with pytest.raises(TypeError):
        ReconnectPolicy.from_option({"initial": 1})
    with pytest.raises(TypeError):
        ReconnectPolicy.from_option("yes")
    for bad in ({"factor": 0.5}, {"initial_delay": -1}, {"max_attempts": -1}, {"jitter": "equal"}):
        with pytest.raises(ValueError):
            ReconnectPolicy.from_option(bad)


@pytest.mark.parametrize("code", [1001, 1006, 1011, 1012, 1013, 1014])
def test_retry_codes(code):
    assert should_reconnect(code) and ReconnectPolicy().should_reconnect(code)


@pytest.mark.parametrize("code", [1000, 1005, 1002, 1003, 1007, 1008, 1009, 1010, 1015, 3000, 4999])
def test_final_codes(code):
    assert not should_reconnect(code) and not ReconnectPolicy().should_reconnect(code)


def test_code_sets_are_disjoint():
    assert not RETRY_CODES & PERMANENT_CODES


def test_end_code_from_the_protocol():
    proto = Protocol(CLIENT)
    proto.receive_data(b"\x88\x02\x03\xf3")  # close 1011
    assert end_code(proto) == 1011
    proto = Protocol(CLIENT)
    proto.fail(1002, "bad frame")  # we failed it: our code decides
    assert end_code(proto) == 1002
    proto = Protocol(CLIENT)
    proto.receive_eof()
    assert end_code(proto) == 1006
    assert end_code(None) == 1006


def test_retryable_errors():
    assert retryable_error(ConnectionRefusedError())
    assert retryable_error(TimeoutError())
    assert retryable_error(OSError("unreachable"))
    lost = InvalidHandshake("connection closed during the opening handshake: EOF")
    lost.__cause__ = EOFError("EOF")
    assert retryable_error(lost)
    lost.__cause__ = ConnectionResetError()
    assert retryable_error(lost)
    assert retryable_error(InvalidStatus("busy", 503)) and retryable_error(InvalidStatus("slow", 429))
    assert not retryable_error(InvalidStatus("nope", 404)) and not retryable_error(InvalidStatus("no", 403))
    assert not retryable_error(InvalidHandshake("bad Sec-WebSocket-Accept"))
    assert not retryable_error(ValueError())


def test_outbox_bound_and_ack_requeue():
    box = Outbox(3)
    for m in ("a", "b", "c"):
        box.add(m)
    with pytest.raises(ConnectionClosed, match="disconnected and 3 pending"):
        box.add("d")
    box.sent("x")  # without ack nothing is remembered
    assert len(box) == 3

    box = Outbox(4, ack=lambda msg: int(msg))
    for m in ("a", "b", "c"):
        box.sent(m)
    box.add("d")
    # In ack mode the bound holds while connected too: the error says so, not "disconnected" (audit 78).
    with pytest.raises(ConnectionClosed, match="4 messages are unacknowledged or queued .max_pending.: ack"):
        box.add("e")
    box.received("1")  # acknowledges "a"
    box.requeue()
    assert list(box.pending) == ["b", "c", "d"] and not box.unacked
    assert box.acknowledge(10) == 0


def test_queueable_copies_buffers_and_lists_fragments():
    buf = bytearray(b"ab")
    q = queueable(buf)
    buf[0] = 0
    assert q == b"ab" and type(q) is bytes
    assert queueable(x for x in ("a", "b")) == ["a", "b"]
    assert queueable("s") == "s"
    with pytest.raises(TypeError):
        queueable({"a": 1})
    with pytest.raises(TypeError):
        queueable(3)
    assert queueable([b"a", bytearray(b"b"), memoryview(b"c")]) == [b"a", b"b", b"c"]


@pytest.mark.parametrize("message", [[["n1"], ["n2"]], ["a", b"b"], [b"a", "b"], ["a", 1], [None]])
def test_queueable_checks_fragments_as_a_connected_send_would(message):
    """A message queued while disconnected is checked now: found wrong only when a
    reconnection flushes the queue, it could not be reported to the caller (audit: nested
    lists stopped the supervisor, mixed str/bytes failed the new connection with 1011)."""
    with pytest.raises(TypeError):
        queueable(message)
