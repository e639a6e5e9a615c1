"""The kn_sock exception tree.

::

    WebSocketError                     base of everything kn_sock raises on purpose
    ├── ConnectionClosed               the connection is closed (send on a closed socket, …)
    │   ├── ConnectionClosedOK         … after a normal closing handshake (1000 / 1001, or no code: 1005)
    │   └── ConnectionClosedError      … abnormally (1006) or with an error code
    ├── InvalidHandshake               the opening handshake failed (client or server side)
    │   ├── InvalidStatus              client: the server answered with a non-101 status
    │   ├── InvalidProxyStatus         client: the HTTP proxy refused the tunnel (``proxy=``)
    │   └── InvalidHeader              a header is missing or has a bad value
    ├── ProtocolError                  the peer broke RFC 6455 / 7692; carries the close code
    │   └── PayloadTooBig              a message exceeded ``max_size`` (close code 1009)
    ├── InvalidURI                     not a ws:// or wss:// URI (or not an HTTP proxy URL)
    └── InvalidState                   the API was misused (e.g. send before the handshake)

Every ``ProtocolError`` carries ``code`` (the RFC 6455 close code to answer with) and every
``InvalidHandshake`` raised on the server side carries ``status`` (the HTTP status to answer
with). Errors raised because the *peer* misbehaved are ProtocolError / InvalidHandshake;
errors raised because *the caller* misused the API are InvalidState / TypeError / ValueError.
"""

from __future__ import annotations

from typing import Any, Mapping, TypeVar

__all__ = [
    "WebSocketError",
    "ConnectionClosed",
    "ConnectionClosedOK",
    "ConnectionClosedError",
    "InvalidHandshake",
    "InvalidStatus",
    "InvalidProxyStatus",
    "InvalidHeader",
    "ProtocolError",
    "PayloadTooBig",
    "InvalidURI",
    "InvalidState",
]


class WebSocketError(Exception):
    """Base class of every exception kn_sock raises on purpose."""


class ConnectionClosed(WebSocketError):
    """The connection is closed; ``code`` and ``reason`` come from the peer's close frame.

    ``sent`` and ``rcvd`` are the ``(code, reason)`` of the close frames we sent and received
    (None for one that was not), as websockets' ``sent`` / ``rcvd``: ``sent`` tells, say, that
    we failed the connection with 1011 "keepalive ping timeout" when the peer sent no close.
    """

    def __init__(
        self,
        code: int = 1006,
        reason: str = "",
        message: str | None = None,
        *,
        sent: tuple[int, str] | None = None,
        rcvd: tuple[int, str] | None = None,
    ) -> None:
        self.code = code
        self.reason = reason
        self.sent = sent
        self.rcvd = rcvd
        if message is None:
            message = f"connection closed: code={code} reason={reason!r}"
            if sent is not None and rcvd is None:
                message += f" (we sent {sent[0]} {sent[1]!r}; no close frame received)"
            elif sent is None and rcvd is None and code == 1006:
                message += " (no close frame received or sent)"
        super().__init__(message)

    def __reduce__(self) -> Any:
        return (type(self), (self.code, self.reason, str(self)), {"sent": self.sent, "rcvd": self.rcvd})


class ConnectionClosedOK(ConnectionClosed):
    """The connection was closed normally (1000 or 1001, or a close frame with no code: 1005)."""


class ConnectionClosedError(ConnectionClosed):
    """The connection was closed abnormally or with an error code."""


class InvalidHandshake(WebSocketError):
    """The opening handshake failed; ``status`` is the HTTP status to answer (server side)."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        headers: Mapping[str, str] | list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> None:
        self.status = status
        self.headers: Any = headers if headers is not None else []
        self.body = body
        super().__init__(message)

    def __reduce__(self) -> Any:
        return (type(self), (str(self), self.status, self.headers, self.body))


class InvalidStatus(InvalidHandshake):
    """Client side: the server answered the upgrade with a status other than 101.

    ``status``, ``headers`` and ``body`` are the answer's; ``response`` is the whole answer
    (``response.status_code``, ``.reason_phrase``, ``.headers``, ``.body``, as in websockets).
    """

    def __init__(
        self,
        message: str,
        status: int = 400,
        headers: Mapping[str, str] | list[tuple[str, str]] | None = None,
        body: bytes = b"",
        response: Any = None,
    ) -> None:
        super().__init__(message, status, headers, body)
        self.response = response

    def __reduce__(self) -> Any:
        return (type(self), (str(self), self.status, self.headers, self.body, self.response))

    @property
    def status_code(self) -> int:
        """The HTTP status of the answer (the same as ``status``)."""
        return self.status


class InvalidProxyStatus(InvalidHandshake):
    """Client side: the HTTP proxy (``proxy=``) answered CONNECT with a status other than 2xx
    (407: it wants credentials, ``http://user:password@proxy:port``); ``status``, ``headers``
    and ``body`` are its answer's."""

    @property
    def status_code(self) -> int:
        """The HTTP status of the proxy's answer (the same as ``status``)."""
        return self.status


class InvalidHeader(InvalidHandshake):
    """A handshake header is missing, repeated or has an invalid value."""


class ProtocolError(WebSocketError):
    """The peer broke the protocol; ``code`` is the close code to fail the connection with."""

    def __init__(self, reason: str, code: int = 1002) -> None:
        self.code = code
        self.reason = reason
        super().__init__(reason)

    def __eq__(self, other: object) -> bool:
        return (
            type(self) is type(other)
            and self.code == other.code  # type: ignore[attr-defined]
            and self.reason == other.reason  # type: ignore[attr-defined]
        )

    def __hash__(self) -> int:
        return hash((type(self), self.code, self.reason))

    def __reduce__(self) -> Any:
        return (type(self), (self.reason, self.code))


class PayloadTooBig(ProtocolError):
    """An incoming message exceeds ``max_size`` (close code 1009)."""

    def __init__(self, reason: str, code: int = 1009) -> None:
        super().__init__(reason, code)


class InvalidURI(WebSocketError, ValueError):
    """The URI is not a valid ws:// or wss:// URI."""


class InvalidState(WebSocketError, RuntimeError):
    """The connection is not in a state that allows this operation (API misuse: a second
    concurrent ``recv()``, say); a RuntimeError too, as websockets' ``ConcurrencyError``."""


_E = TypeVar("_E", bound=BaseException)


def detached(exc: _E) -> _E:
    """``exc`` without its traceback, nor those of the exceptions it was raised ``from``: for
    an error kept past the code that caught it (a connection's ``error``).

    A traceback holds its frames and their locals: a ``ProtocolError`` kept with it would
    keep the parser's buffers, the message and the zlib stream alive in a reference cycle
    with the connection (audit: 1-2 MB per connection failed for bad input, until a full
    collection). The implicit ``__context__`` is dropped, not cleared: it may be the
    application's own exception, being handled when it called ``recv()``."""
    seen: BaseException | None = exc
    for _ in range(8):  # (a chain is short; bounded all the same)
        if seen is None:
            break
        seen.__traceback__ = None
        if seen.__context__ is not seen.__cause__:
            seen.__context__ = None
        seen = seen.__cause__
    return exc
