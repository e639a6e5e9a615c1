"""The exceptions of docs/api.md survive pickling (multiprocessing, concurrent.futures)."""

from __future__ import annotations

import pickle

import pytest

from kn_sock.exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidHandshake,
    InvalidHeader,
    InvalidProxyStatus,
    InvalidState,
    InvalidStatus,
    InvalidURI,
    PayloadTooBig,
    ProtocolError,
)

CASES = [
    ConnectionClosed(1006, ""),
    ConnectionClosedOK(1001, "going away"),
    ConnectionClosedError(1011, "oops", "connection failed by us: bad (code 1002)"),
    ConnectionClosedError(1006, "", sent=(1011, "keepalive ping timeout")),
    ConnectionClosedOK(1000, "bye", sent=(1000, ""), rcvd=(1000, "bye")),
    InvalidHandshake("refused", 403, [("X-Why", "no")], b"body"),
    InvalidStatus("server rejected WebSocket connection: HTTP 404", 404, [("A", "b")], b"missing"),
    InvalidHeader("invalid Upgrade header", 101),
    InvalidProxyStatus("the proxy http://p:1 refused the tunnel: HTTP 407", 407, [("Proxy-Authenticate", "Basic")], b""),
    ProtocolError("bad frame", 1002),
    PayloadTooBig("too big"),
    InvalidURI("not a ws URI"),
    InvalidState("not open"),
]


@pytest.mark.parametrize("exc", CASES, ids=[type(e).__name__ for e in CASES])
def test_pickle_round_trip(exc):
    """Type, message and attributes survive (audit: a ConnectionClosed's message doubled)."""
    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is type(exc) and str(copy) == str(exc)
    for name in ("code", "reason", "status", "headers", "body", "sent", "rcvd"):
        assert getattr(copy, name, None) == getattr(exc, name, None)


def test_closed_says_what_we_sent_when_nothing_came_back():
    """A close we sent unanswered (keepalive's 1011, say) is named in the message and in
    ``sent``, as websockets' ``sent``; ``code`` stays the peer's (1006: none)."""
    exc = ConnectionClosedError(1006, "", sent=(1011, "keepalive ping timeout"))
    assert exc.code == 1006 and exc.sent == (1011, "keepalive ping timeout") and exc.rcvd is None
    assert "we sent 1011 'keepalive ping timeout'; no close frame received" in str(exc)
    assert str(ConnectionClosed(1000, "x")) == "connection closed: code=1000 reason='x'"
    assert ConnectionClosed(1000, "x").sent is None
