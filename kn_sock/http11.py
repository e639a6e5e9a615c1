"""The HTTP/1.1 subset of the WebSocket opening handshake (RFC 6455 §4, RFC 7230).

Sans-I/O: resumable parsers take bytes and return a :class:`Request` / :class:`Response`
once the head is complete, builders return bytes. Everything the peer controls is
bounded while buffering (:data:`MAX_LINE`, :data:`MAX_HEADERS`, :data:`MAX_HEAD`,
:data:`MAX_BODY`), and every malformed input raises :class:`InvalidHandshake` (or its
subclass :class:`InvalidHeader`) carrying the HTTP status a server answers with:
431 for oversized heads, 400 for anything malformed.

Parser rules (RFC 7230 §3):

* lines end with CRLF; a bare LF or CR is an error (400);
* empty lines before the start line are ignored (§3.5 robustness);
* ``field-name ":" OWS field-value OWS``: no whitespace before the colon (§3.2.4, 400),
  no obsolete line folding (§3.2.4, 400), no control characters in values (400);
* requests: ``token SP origin-form SP HTTP/1.x`` with x >= 1 (RFC 6455 §4.1);
* responses: ``HTTP/1.x SP 3DIGIT [SP reason]``.
"""

from __future__ import annotations

import base64
import hashlib
import http
import os
import re
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Union

from .exceptions import InvalidHandshake, InvalidHeader

__all__ = [
    "MAX_LINE",
    "MAX_HEADERS",
    "MAX_HEAD",
    "MAX_BODY",
    "GUID",
    "Headers",
    "HeadersLike",
    "Request",
    "Response",
    "RequestParser",
    "ResponseParser",
    "build_request",
    "build_response",
    "accept_key",
    "generate_key",
    "parse_token_list",
    "parse_extensions",
    "build_extension",
    "parse_subprotocols",
    "ExtensionParams",
]

#: Longest accepted line of the head, CRLF excluded (bytes).
MAX_LINE = 8192
#: Most header fields accepted in one head.
MAX_HEADERS = 128
#: Largest accepted head: start line, header lines and the final empty line (bytes). As
#: large as the line and field limits allow (SPEC.md "Bad input" sets only those): no extra
#: bound that a head within them could hit.
MAX_HEAD = (MAX_HEADERS + 2) * (MAX_LINE + 2) + 2
#: Largest response body kept (bytes); longer bodies are truncated to this.
MAX_BODY = 2**20
#: Interim (1xx) responses a client skips before the answer to its upgrade request.
_MAX_INTERIM = 8

#: RFC 6455 §1.3: the GUID concatenated with Sec-WebSocket-Key.
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# RFC 7230 §3.2.6 token.
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN_RE = re.compile(_TOKEN)
# RFC 7230 §3.1.1 request-line; origin-form target: visible ASCII starting with "/".
_REQUEST_LINE_RE = re.compile(rb"(" + _TOKEN.encode() + rb") (/[\x21-\x7e]*) HTTP/([0-9])\.([0-9])")
#: The absolute-form of a request target (RFC 9112 §3.2.2), which a server must accept:
#: scheme "://" authority, then the origin-form (path and query) it stands for, if any. (No
#: "#" in the authority either: a fragment there is refused, as one in the path is.)
_ABSOLUTE_LINE_RE = re.compile(
    rb"(" + _TOKEN.encode() + rb") ((?i:https?|wss?)://[\x21\x22\x24-\x2e\x30-\x3e\x40-\x7e]+)([/?][\x21-\x7e]*)? HTTP/([0-9])\.([0-9])"
)
#: The asterisk-form (``OPTIONS *``) and authority-form (``CONNECT host:port``) of RFC 9112
#: §3.2.3-4: valid requests, which the handshake answers with 405 (not GET), not 400.
_OTHER_FORM_LINE_RE = re.compile(rb"(OPTIONS) (\*) HTTP/([0-9])\.([0-9])|(CONNECT) ([\x21-\x2e\x30-\x7e]+:[0-9]+) HTTP/([0-9])\.([0-9])")
# RFC 7230 §3.1.2 status-line; the reason phrase may be empty (and its SP is tolerated missing).
_STATUS_LINE_RE = re.compile(rb"HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?")
# RFC 7230 §3.2: field-name ":" OWS field-value OWS; field-value is VCHAR / obs-text / SP / HTAB.
# OWS is stripped afterwards rather than in the pattern, which keeps matching linear.
_HEADER_LINE_RE = re.compile(rb"(" + _TOKEN.encode() + rb"):([\t\x20-\x7e\x80-\xff]*)")
_CONTENT_LENGTH_RE = re.compile(r"[0-9]{1,18}")
#: Control characters (header injection) and what ISO-8859-1, the encoding of HTTP/1.1
#: field values, cannot carry (caught when the headers are given, not in every handshake).
_FORBIDDEN_VALUE_CHARS_RE = re.compile("[\x00-\x08\x0a-\x1f\x7f\u0100-\U0010ffff]")

ExtensionParams = list[tuple[str, Union[str, None]]]
HeadersLike = Union["Headers", Mapping[str, str], Iterable[tuple[str, str]], None]


class Headers(MutableMapping[str, str]):
    """Case-insensitive, multi-valued, order-preserving HTTP header fields.

    Behaves like a mapping from name to its *first* value (``headers["Host"]``,
    ``"host" in headers``, ``headers.get(...)``, ``dict(headers)``); every value of a
    repeated field is available through :meth:`get_all`, and :meth:`items` yields all
    ``(name, value)`` pairs in wire order with their original case. Iteration and ``len``
    count distinct names. ``headers[name] = value`` replaces every value of ``name``;
    :meth:`add` appends one.
    """

    # Memory: one list of pairs per connection (request_headers / response_headers live as
    # long as the connection, compacted to one bytes object while idle). Lookups go through
    # an index by lower-cased name, built on the first lookup after a change and dropped by
    # every change and by compact(): a handshake looks up a dozen names.
    __slots__ = ("_pairs", "_raw", "_index")
    _pairs: list[tuple[str, str]] | None
    _raw: bytes | None
    _index: dict[str, list[str]] | None

    def __init__(self, headers: HeadersLike = None) -> None:
        """Build from a dict / mapping, an iterable of ``(name, value)`` pairs, or Headers.

        Raises:
            TypeError: if a name or value is not a str.
            ValueError: if a name is not an HTTP token or a value contains CR, LF or NUL.
        """
        self._items: list[tuple[str, str]] = []
        if headers is None:
            return
        if isinstance(headers, Headers):
            self._items = list(headers._items)
            return
        if isinstance(headers, Mapping):
            for name, value in headers.items():
                self.add(name, value)
            return
        for pair in headers:
            # (A str is iterable too: "ab" would unpack as a pair, "X: 1" fail to unpack.)
            if isinstance(pair, (str, bytes)) or not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise TypeError(f"headers must be a mapping or (name, value) pairs, got the item {pair!r}")
            self.add(pair[0], pair[1])

    @classmethod
    def _trusted(cls, pairs: list[tuple[str, str]]) -> Headers:
        """Wrap ``pairs`` (names and values already valid; the list is taken over)."""
        headers = cls.__new__(cls)
        headers._items = pairs
        return headers

    @property
    def _items(self) -> list[tuple[str, str]]:
        """The pairs, re-read from the compact form if :meth:`compact` stored them so."""
        pairs = self._pairs
        if pairs is None:
            raw = self._raw.decode("latin-1") if self._raw else ""
            pairs = [tuple(line.split(": ", 1)) for line in raw.split("\r\n")] if raw else []  # type: ignore[misc]
            self._pairs = pairs
            self._raw = None
        return pairs

    @_items.setter
    def _items(self, pairs: list[tuple[str, str]]) -> None:
        self._pairs = pairs
        self._raw = None
        self._index = None

    def _lookup(self) -> dict[str, list[str]]:
        """Lower-cased name → its values in order (built on demand, dropped on change)."""
        index = self._index
        if index is None:
            index = {}
            for name, value in self._items:
                key = name.lower()
                values = index.get(key)
                if values is None:
                    index[key] = [value]
                else:
                    values.append(value)
            self._index = index
        return index

    def compact(self) -> None:
        """Keep the fields as one bytes object until next used (memory of idle connections)."""
        pairs = self._pairs
        if pairs is not None:
            self._raw = "\r\n".join(f"{n}: {v}" for n, v in pairs).encode("latin-1")
            self._pairs = None
        self._index = None

    def _append(self, name: str, value: str) -> None:
        """Append without validation (parser and copy paths)."""
        self._items.append((name, value))
        self._index = None

    def add(self, name: str, value: str) -> None:
        """Append one field, keeping any existing values of ``name``.

        Raises:
            TypeError: if ``name`` or ``value`` is not a str.
            ValueError: if ``name`` is not a token or ``value`` contains control characters
                (this prevents header injection through user-supplied headers) or characters
                ISO-8859-1 cannot encode.
        """
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"header names and values must be str, got {name!r}: {value!r}")
        if not _TOKEN_RE.fullmatch(name):
            raise ValueError(f"invalid header name {name!r}")
        bad = _FORBIDDEN_VALUE_CHARS_RE.search(value)
        if bad:
            if ord(bad.group()) > 0xFF:
                raise ValueError(f"header {name} is not encodable in ISO-8859-1: {value!r}")
            raise ValueError(f"invalid header value for {name}: {value!r}")
        self._append(name, value)

    def get_all(self, name: str) -> list[str]:
        """Return every value of ``name`` in order (an empty list if absent)."""
        values = self._lookup().get(name.lower())
        return [] if values is None else list(values)

    def items(self) -> list[tuple[str, str]]:  # type: ignore[override]
        """Return all ``(name, value)`` pairs in order, repeated names included."""
        return list(self._items)

    def copy(self) -> Headers:
        """Return an independent copy."""
        return Headers(self)

    def __getitem__(self, name: str) -> str:
        """Return the first value of ``name``; raise KeyError if absent."""
        values = self._lookup().get(name.lower()) if isinstance(name, str) else None
        if values is None:
            raise KeyError(name)
        return values[0]

    def __setitem__(self, name: str, value: str) -> None:
        """Replace every value of ``name`` with ``value``."""
        if name in self:
            del self[name]
        self.add(name, value)

    def __delitem__(self, name: str) -> None:
        """Remove every value of ``name``; raise KeyError if absent."""
        if name not in self:
            raise KeyError(name)
        key = name.lower()
        self._items = [item for item in self._items if item[0].lower() != key]

    def __contains__(self, name: object) -> bool:
        """Whether a field called ``name`` (any case) is present."""
        return isinstance(name, str) and name.lower() in self._lookup()

    def __iter__(self) -> Iterator[str]:
        """Iterate over distinct names, in original case of their first occurrence."""
        seen: dict[str, str] = {}
        for n, _ in self._items:
            seen.setdefault(n.lower(), n)
        return iter(list(seen.values()))

    def __len__(self) -> int:
        """Number of distinct names."""
        return len(self._lookup())

    def __eq__(self, other: object) -> bool:
        """Equal when every name has the same values in the same order (name case ignored)."""
        if not isinstance(other, Headers):
            if not isinstance(other, (Mapping, list, tuple)):
                return NotImplemented
            try:
                other = Headers(other)
            except (TypeError, ValueError):
                return False
        return self._lookup() == other._lookup()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        """Show the raw pairs."""
        return f"Headers({self._items!r})"


@dataclass
class Request:
    """An HTTP request head (the client's upgrade request).

    Attributes:
        method: The method token, e.g. ``"GET"``.
        path: The request target (resource name incl. query).
        headers: The header fields.
    """

    method: str
    path: str
    headers: Headers = field(default_factory=Headers)


@dataclass
class Response:
    """An HTTP response (the server's answer to the upgrade request).

    Attributes:
        status: The status code, e.g. 101.
        reason: The reason phrase (possibly empty).
        headers: The header fields.
        body: The body of a non-101 response (at most :data:`MAX_BODY` bytes).
    """

    status: int
    reason: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    @property
    def status_code(self) -> int:
        """``status`` under the name websockets and requests use."""
        return self.status

    @property
    def reason_phrase(self) -> str:
        """``reason`` under the name websockets uses."""
        return self.reason


class _HeadParser:
    """Resumable parser of an HTTP head: start line, header lines, empty line."""

    def __init__(self) -> None:
        self._reset_head()
        self._error: InvalidHandshake | None = None
        self._head_done = False
        #: Bytes received after the head (and after the body, for a response).
        self.remainder = b""

    def _reset_head(self) -> None:
        """Start a head afresh (at first, and for a response after an interim one)."""
        self._buffer = bytearray()
        self._line_start = 0  # offset of the first unparsed line
        self._scan = 0  # where to resume looking for CRLF
        self._started = False
        self._headers = Headers()
        self._count = 0

    def _feed_head(self, data: bytes) -> bool:
        """Buffer ``data`` and parse complete lines; return True once the head is complete."""
        if type(data) is bytes and not self._buffer and not self._started:
            end = data.find(b"\r\n\r\n")
            if 0 < end <= MAX_HEAD - 4 and data[:2] != b"\r\n":
                # Speed: the whole head in one piece, the usual case. Same checks, same
                # order and same errors as the line-by-line path below.
                lines = data[:end].split(b"\r\n")
                few = len(lines) <= MAX_HEADERS + 1
                match = _HEADER_LINE_RE.fullmatch
                append = self._headers._items.append
                for line in lines:
                    if len(line) > MAX_LINE:
                        raise _line_too_long(self._started)
                    if b"\n" in line or b"\r" in line:
                        raise _bare_newline()
                    if not self._started:
                        self._started = True
                        self._start_line(line)
                    elif few and (header := match(line)) is not None:
                        name, value = header.groups()
                        append((name.decode("ascii"), value.strip(b" \t").decode("latin-1")))
                    else:
                        self._header_line(line)  # counts the fields, raises the error
                self._headers._index = None
                self.remainder = data[end + 4 :]
                return True
        buffer = self._buffer
        old_length = len(buffer)
        buffer += data
        while True:
            end = buffer.find(b"\r\n", self._scan)
            if end == -1:
                break
            line = bytes(buffer[self._line_start : end])
            self._line_start = self._scan = end + 2
            if len(line) > MAX_LINE:
                raise _line_too_long(self._started)
            if self._line_start > MAX_HEAD:
                raise InvalidHandshake(f"HTTP head longer than {MAX_HEAD} bytes", status=431)
            if b"\n" in line or b"\r" in line:
                raise _bare_newline()
            if not self._started:
                if line:  # RFC 7230 §3.5: ignore empty lines before the start line
                    self._started = True
                    self._start_line(line)
            elif line:
                self._header_line(line)
            else:
                self.remainder = bytes(buffer[self._line_start :])
                self._buffer = bytearray()
                return True
        # No complete line left: bound the partial one (its last byte may be a CR).
        if buffer.find(b"\n", max(self._line_start, old_length)) != -1:
            raise _bare_newline()
        if len(buffer) - self._line_start > MAX_LINE + 1:
            raise _line_too_long(self._started)
        if len(buffer) > MAX_HEAD:
            raise InvalidHandshake(f"HTTP head longer than {MAX_HEAD} bytes", status=431)
        self._scan = max(self._line_start, len(buffer) - 1)
        return False

    def _header_line(self, line: bytes) -> None:
        """Parse one ``name: value`` line into the headers."""
        if line[:1] in (b" ", b"\t"):
            raise InvalidHeader("obsolete line folding is not supported (RFC 7230 §3.2.4)")
        match = _HEADER_LINE_RE.fullmatch(line)
        if match is None:
            raise InvalidHeader(f"invalid HTTP header line: {_excerpt(line)}")
        self._count += 1
        if self._count > MAX_HEADERS:
            raise InvalidHeader(f"more than {MAX_HEADERS} HTTP headers", status=431)
        name, value = match.groups()
        # RFC 7230 §3.2.4: field values are historically ISO-8859-1.
        self._headers._append(name.decode("ascii"), value.strip(b" \t").decode("latin-1"))

    def _start_line(self, line: bytes) -> None:
        """Parse the start line (request line or status line)."""
        raise NotImplementedError


class RequestParser(_HeadParser):
    """Resumable parser of an HTTP/1.1 request head (the server reads the upgrade request).

    Feed it bytes as they arrive, in chunks of any size. Bytes after the head (a client
    may pipeline its first frames) are kept in :attr:`remainder`. The method is not
    checked here (the handshake answers 405), so that the request is fully parsed first.
    """

    def __init__(self) -> None:
        super().__init__()
        self._method = ""
        self._path = ""
        self._result: Request | None = None

    def feed(self, data: bytes) -> Request | None:
        """Consume ``data``; return the request once its head is complete, else None.

        After completion, further data is appended to :attr:`remainder`.

        Raises:
            InvalidHandshake: on malformed input (``status`` 400) or when a limit is
                exceeded (``status`` 431); raised again by every later call.
        """
        if self._result is not None:
            self.remainder += data
            return self._result
        if self._error is not None:
            raise self._error
        try:
            done = self._feed_head(data)
        except InvalidHandshake as exc:
            self._error = exc
            raise
        if not done:
            return None
        self._result = Request(self._method, self._path, self._headers)
        return self._result

    def _start_line(self, line: bytes) -> None:
        """Parse ``method SP request-target SP HTTP-version``."""
        match = _REQUEST_LINE_RE.fullmatch(line)
        if match is not None:
            method, path, major, minor = match.groups()
        else:
            absolute = _ABSOLUTE_LINE_RE.fullmatch(line)
            if absolute is not None:
                method, _, path, major, minor = absolute.groups()
                path = path or b"/"
                if path[:1] == b"?":
                    path = b"/" + path
            else:
                other = _OTHER_FORM_LINE_RE.fullmatch(line)
                if other is None:
                    raise InvalidHandshake(f"invalid HTTP request line: {_excerpt(line)}")
                method, path, major, minor = [g for g in other.groups() if g is not None]
        if b"#" in path:  # no fragment in a request target (RFC 9112 §3.2; RFC 6455 §3)
            raise InvalidHandshake(f"fragment identifier in the request target: {_excerpt(line)}")
        _check_version(major, minor)
        self._method = method.decode("ascii")
        self._path = path.decode("ascii")


class ResponseParser(_HeadParser):
    """Resumable parser of an HTTP/1.1 response (the client reads the upgrade answer).

    For a 101 response everything after the head is :attr:`remainder` (the server's first
    frames). For other responses a body is read: with ``Content-Length``, that many bytes
    (at most :data:`MAX_BODY`; the parser waits for them); without, whatever has arrived
    with the head (at most :data:`MAX_BODY`). Chunked bodies are returned undecoded.
    """

    def __init__(self) -> None:
        super().__init__()
        self._status = 0
        self._reason = ""
        self._http10 = False
        self._body_length: int | None = None  # bytes of body still to wait for
        self._result: Response | None = None
        self._interim = 0  # 1xx responses skipped

    def feed(self, data: bytes) -> Response | None:
        """Consume ``data``; return the response once complete, else None.

        After completion, further data is appended to :attr:`remainder`.

        Raises:
            InvalidHandshake: on a malformed response or an exceeded limit; raised again by
                every later call.
        """
        if self._result is not None:
            self.remainder += data
            return self._result
        if self._error is not None:
            raise self._error
        try:
            while not self._head_done:
                if not self._feed_head(data):
                    return None
                if 100 <= self._status < 200 and self._status != 101:
                    # An interim response (RFC 9110 §15.2: 100 Continue, 103 Early Hints...)
                    # comes before the final one: skip it and parse what follows.
                    self._interim += 1
                    if self._interim > _MAX_INTERIM:
                        raise InvalidHandshake(f"more than {_MAX_INTERIM} interim (1xx) responses")
                    data, self.remainder = self.remainder, b""
                    self._reset_head()
                    continue
                self._head_done = True
                self._body_length = self._expected_body_length()
                data = b""
            return self._feed_body(data)
        except InvalidHandshake as exc:
            self._error = exc
            raise

    def _feed_body(self, data: bytes) -> Response | None:
        """Wait for the body; build the response when it is complete."""
        pending = self.remainder + data if data else self.remainder
        body = b""
        if self._body_length is None:  # no Content-Length: what has arrived
            body, pending = pending[:MAX_BODY], b""
        elif self._body_length:
            if len(pending) < self._body_length:
                self.remainder = pending
                return None
            body, pending = pending[: self._body_length], pending[self._body_length :]
        self.remainder = pending
        self._result = Response(self._status, self._reason, self._headers, body)
        return self._result

    def _expected_body_length(self) -> int | None:
        """Return how many body bytes to wait for (None: take what has arrived)."""
        if self._http10 and self._status == 101:
            raise InvalidHandshake("HTTP/1.0 cannot switch protocols")
        # RFC 7230 §3.3.3: no body for 1xx, 204 and 304 responses.
        if self._status < 200 or self._status in (204, 304):
            return 0
        values = self._headers.get_all("Content-Length")
        if not values:
            return None
        lengths = {item.strip() for value in values for item in value.split(",")}
        if len(lengths) != 1 or not _CONTENT_LENGTH_RE.fullmatch(next(iter(lengths))):
            raise InvalidHeader(f"invalid Content-Length header: {', '.join(values)!r}")
        return min(int(lengths.pop()), MAX_BODY)

    def _start_line(self, line: bytes) -> None:
        """Parse ``HTTP-version SP status-code SP reason-phrase``."""
        match = _STATUS_LINE_RE.fullmatch(line)
        if match is None:
            raise InvalidHandshake(f"invalid HTTP status line: {_excerpt(line)}")
        major, minor, status, reason = match.groups()
        if (major, minor) == (b"1", b"0"):
            self._http10 = True  # tolerated for error answers from HTTP/1.0 proxies
        else:
            _check_version(major, minor)
        self._status = int(status)
        if not 100 <= self._status <= 599:
            raise InvalidHandshake(f"invalid HTTP status code: {self._status}")
        self._reason = (reason or b"").decode("latin-1")


def _check_version(major: bytes, minor: bytes) -> None:
    """RFC 6455 §4.1: the handshake needs HTTP/1.1 (or a later 1.x)."""
    if major != b"1" or minor == b"0":
        version = f"HTTP/{major.decode()}.{minor.decode()}"
        raise InvalidHandshake(f"unsupported HTTP version {version}: HTTP/1.1 required")


def _line_too_long(header: bool) -> InvalidHandshake:
    """The 431 error for a line over :data:`MAX_LINE` bytes."""
    if header:
        return InvalidHeader(f"HTTP header line longer than {MAX_LINE} bytes", status=431)
    # RFC 9112 §3: a request-target too long to parse gets 414 (the start line of a
    # request is its method, target and version: the target is what grows).
    return InvalidHandshake(f"HTTP start line longer than {MAX_LINE} bytes", status=414)


def _bare_newline() -> InvalidHandshake:
    """The 400 error for a line not ended by CRLF."""
    return InvalidHandshake("HTTP lines must end with CRLF (bare CR or LF found)")


def _excerpt(line: bytes, limit: int = 80) -> str:
    """A short, printable excerpt of peer data for error messages."""
    text = repr(line[:limit])
    return text + "..." if len(line) > limit else text


def _serialize(start_line: str, headers: Headers) -> bytes:
    """Encode a start line and headers followed by the empty line."""
    head = start_line.encode("ascii")
    pairs = headers._items
    try:
        return b"%s\r\n%s\r\n" % (head, "".join([f"{n}: {v}\r\n" for n, v in pairs]).encode("latin-1"))
    except UnicodeEncodeError:
        for name, value in pairs:
            try:
                f"{name}: {value}".encode("latin-1")
            except UnicodeEncodeError:
                raise ValueError(f"header {name} is not encodable in ISO-8859-1: {value!r}") from None
        raise


def build_request(method: str, path: str, headers: Headers) -> bytes:
    """Serialise an HTTP/1.1 request head.

    Raises:
        ValueError: if ``method`` is not a token, ``path`` contains whitespace or control
            characters, or a header value is not ISO-8859-1.
    """
    if not _TOKEN_RE.fullmatch(method):
        raise ValueError(f"invalid HTTP method {method!r}")
    if not re.fullmatch(r"[\x21-\x7e]+", path):
        raise ValueError(f"invalid request target {path!r}")
    return _serialize(f"{method} {path} HTTP/1.1", Headers(headers))


def build_response(
    status: int, headers: Headers, body: bytes = b"", reason: str | None = None
) -> bytes:
    """Serialise an HTTP/1.1 response; add ``Content-Length`` when a body is allowed.

    Args:
        status: The status code (100-599).
        headers: The header fields (not modified).
        body: The body, for statuses that have one.
        reason: The reason phrase; the standard one (``http.HTTPStatus``) by default.

    Raises:
        ValueError: if ``status`` is out of range, ``reason`` contains CR/LF, or a body is
            given for a 1xx / 204 / 304 status.
    """
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise ValueError(f"invalid HTTP status {status!r}")
    if type(headers) is not Headers:
        headers = Headers(headers)
    if reason is None:
        reason = _PHRASES.get(status, "")
    elif _FORBIDDEN_VALUE_CHARS_RE.search(reason):
        raise ValueError(f"invalid reason phrase {reason!r}")
    no_body = status < 200 or status in (204, 304)
    if no_body and body:
        raise ValueError(f"a {status} response cannot have a body")
    if not no_body and "Content-Length" not in headers:
        headers = Headers(headers)
        headers["Content-Length"] = str(len(body))
    head = _serialize(f"HTTP/1.1 {status} {reason}", headers)
    return head + body if body else head


#: Standard reason phrases by status code.
_PHRASES = {status.value: status.phrase for status in http.HTTPStatus}


def accept_key(key: str) -> str:
    """Return the ``Sec-WebSocket-Accept`` value for a ``Sec-WebSocket-Key`` (RFC 6455 §4.2.2)."""
    digest = hashlib.sha1((key + GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def generate_key() -> str:
    """Return a fresh ``Sec-WebSocket-Key``: 16 random bytes, base64 (RFC 6455 §4.1)."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


def _split_list(values: Iterable[str]) -> Iterator[str]:
    """Split RFC 7230 §7 ``#rule`` lists; empty elements are ignored."""
    for value in values:
        for item in value.split(","):
            item = item.strip(" \t")
            if item:
                yield item


def parse_token_list(values: Iterable[str]) -> list[str]:
    """Parse a comma-separated token list (``Connection``, ``Upgrade``), lowercased.

    ``Upgrade`` elements may carry a version (``name/version``, RFC 7230 §6.7).

    Raises:
        InvalidHeader: (status 400) if an element is not a token.
    """
    tokens = []
    for item in _split_list(values):
        name, slash, version = item.partition("/")
        if not _TOKEN_RE.fullmatch(name) or (slash and not _TOKEN_RE.fullmatch(version)):
            raise InvalidHeader(f"invalid token {item!r} in header list")
        tokens.append(item.lower())
    return tokens


def parse_subprotocols(values: Iterable[str]) -> list[str]:
    """Parse ``Sec-WebSocket-Protocol`` values (case preserved, RFC 6455 §4.1 item 10).

    Raises:
        InvalidHeader: (status 400) if an element is not a token, or if the header is there
            with no element at all (``""``, ``","``).
    """
    values = list(values)
    protocols = []
    for item in _split_list(values):
        if not _TOKEN_RE.fullmatch(item):
            raise InvalidHeader(f"invalid subprotocol {item!r} in Sec-WebSocket-Protocol")
        protocols.append(item)
    if values and not protocols:  # 1#token: present, so at least one (RFC 9110 §5.6.1)
        raise InvalidHeader(f"empty Sec-WebSocket-Protocol header: {', '.join(values)!r}")
    return protocols


# RFC 6455 §9.1 grammar, one extension at a time:
#   extension = extension-token *( OWS ";" OWS extension-param )
#   extension-param = token [ OWS "=" OWS (token | quoted-string) ]
_EXT_TOKEN_RE = re.compile(r"[ \t]*(" + _TOKEN + r")[ \t]*")
_EXT_QUOTED_RE = re.compile(r'[ \t]*"((?:[^"\\\x00-\x1f\x7f]|\\[\t\x20-\x7e])*)"[ \t]*')


def parse_extensions(values: Iterable[str]) -> list[tuple[str, ExtensionParams]]:
    """Parse ``Sec-WebSocket-Extensions`` values (RFC 6455 §9.1).

    Returns:
        ``[(name, [(param, value or None), ...]), ...]`` in order; quoted values are
        unquoted.

    Raises:
        InvalidHeader: (status 400) on bad syntax, including a quoted value that is not a
            token once unquoted, and a header that is there with no element (``""``, ``","``).
    """
    values = list(values)
    extensions: list[tuple[str, ExtensionParams]] = []
    for value in values:
        pos = 0
        while pos < len(value):
            pos = _skip_list_separators(value, pos)
            if pos >= len(value):
                break
            name, pos = _parse_ext_token(value, pos)
            params: ExtensionParams = []
            while pos < len(value) and value[pos] == ";":
                param, pos = _parse_ext_token(value, pos + 1)
                param_value = None
                if pos < len(value) and value[pos] == "=":
                    param_value, pos = _parse_ext_value(value, pos + 1)
                params.append((param, param_value))
            if pos < len(value) and value[pos] != ",":
                raise InvalidHeader(f"invalid Sec-WebSocket-Extensions header: {value!r}")
            extensions.append((name, params))
    if values and not extensions:  # 1#extension: present, so at least one (RFC 9110 §5.6.1)
        raise InvalidHeader(f"empty Sec-WebSocket-Extensions header: {', '.join(values)!r}")
    return extensions


def _skip_list_separators(value: str, pos: int) -> int:
    """Skip OWS and empty list elements."""
    while pos < len(value) and value[pos] in " \t,":
        pos += 1
    return pos


def _parse_ext_token(value: str, pos: int) -> tuple[str, int]:
    """Parse a token surrounded by OWS."""
    match = _EXT_TOKEN_RE.match(value, pos)
    if match is None:
        raise InvalidHeader(f"invalid Sec-WebSocket-Extensions header: {value!r}")
    return match.group(1), match.end()


def _parse_ext_value(value: str, pos: int) -> tuple[str, int]:
    """Parse a parameter value: token or quoted-string holding a token (RFC 6455 §9.1)."""
    match = _EXT_TOKEN_RE.match(value, pos)
    if match is not None:
        return match.group(1), match.end()
    match = _EXT_QUOTED_RE.match(value, pos)
    if match is None:
        raise InvalidHeader(f"invalid Sec-WebSocket-Extensions header: {value!r}")
    unquoted = re.sub(r"\\(.)", r"\1", match.group(1))
    if not _TOKEN_RE.fullmatch(unquoted):
        raise InvalidHeader(f"invalid quoted value in Sec-WebSocket-Extensions: {value!r}")
    return unquoted, match.end()


def build_extension(name: str, params: Iterable[tuple[str, str | None]]) -> str:
    """Serialise one extension for ``Sec-WebSocket-Extensions``: ``name; a=1; b``.

    Raises:
        ValueError: if the name, a parameter name or a value is not a token.
    """
    parts = [name]
    for param, value in params:
        parts.append(param if value is None else f"{param}={value}")
    for part in parts:
        for token in part.split("=", 1):
            if not _TOKEN_RE.fullmatch(token):
                raise ValueError(f"invalid extension token {token!r}")
    return "; ".join(parts)
