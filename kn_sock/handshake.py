"""The WebSocket opening handshake (RFC 6455 §4), both sides, sans-I/O.

Neither class touches a socket or a clock: the I/O layer feeds received bytes in,
sends the bytes it gets back, and enforces ``open_timeout`` itself.

Client::

    hs = ClientHandshake(parse_uri("ws://example.com/chat"), subprotocols=["chat"])
    send(hs.data_to_send())
    while (response := hs.receive_data(recv())) is None:
        pass                                   # raises InvalidHandshake / InvalidStatus
    hs.subprotocol, hs.extensions, hs.remainder  # remainder: the server's first frames

Server::

    hs = ServerHandshake(subprotocols=["chat"], origins=["https://example.com"])
    while (request := hs.receive_data(recv())) is None:
        pass
    try:
        send(hs.accept(request))
    except InvalidHandshake as exc:
        send(hs.reject_from(exc))
        close()

Failures raise :class:`InvalidHandshake` (``InvalidHeader`` for a bad header,
``InvalidStatus`` for a non-101 answer) carrying the HTTP status a server answers with.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import http
import re
from typing import Any
from urllib.parse import urljoin

from .exceptions import InvalidHandshake, InvalidHeader, InvalidStatus, InvalidURI
from .http11 import (
    Headers,
    HeadersLike,
    Request,
    RequestParser,
    Response,
    ResponseParser,
    accept_key,
    build_extension,
    build_request,
    build_response,
    generate_key,
    parse_extensions,
    parse_subprotocols,
    parse_token_list,
)
from .uri import WebSocketURI, parse_uri

try:
    from . import __version__
except ImportError:  # kn_sock/__init__.py still initialising without __version__ set
    __version__ = "0"

try:
    from .extensions.permessage_deflate import ClientDeflateFactory, ServerDeflateFactory
except ModuleNotFoundError as exc:  # pragma: no cover - only while the module is missing
    if exc.name != "kn_sock.extensions.permessage_deflate":
        raise
    ClientDeflateFactory = ServerDeflateFactory = None  # type: ignore[assignment,misc]

__all__ = ["ClientHandshake", "ServerHandshake", "USER_AGENT", "COMPRESSION_NAMES"]

#: Default ``User-Agent`` (client) and ``Server`` (server) header value.
USER_AGENT = f"kn_sock/{__version__}"
#: Accepted values of the ``compression`` option.
COMPRESSION_NAMES = (None, "deflate")
_DEFLATE = "permessage-deflate"

# Headers the handshake computes; letting users override them would break it.
_RESERVED_HEADERS = frozenset(
    {
        "upgrade",
        "connection",
        "sec-websocket-key",
        "sec-websocket-accept",
        "sec-websocket-version",
        "sec-websocket-protocol",
        "sec-websocket-extensions",
    }
)
#: Headers that frame a body, which an upgrade request and a 101 answer don't have: given
#: through ``headers=``, a proxy in between could read a body where there is none (audit 87).
_BODY_HEADERS = frozenset({"content-length", "transfer-encoding"})


def _extra_headers(headers: HeadersLike) -> Headers:
    """Validate user-supplied extra headers.

    Raises:
        ValueError: if a header the handshake computes is given, or a name/value is invalid.
        TypeError: if a name or value is not a str.
    """
    if headers is not None and not hasattr(headers, "__iter__") or isinstance(headers, (str, bytes)):
        raise TypeError(f"headers must be a mapping or a list of (name, value) pairs, not {type(headers).__name__}")
    extra = Headers(headers)
    for name in extra:
        if name.lower() in _RESERVED_HEADERS:
            raise ValueError(
                f"the {name} header is set by the handshake; use the subprotocols /"
                " compression options instead"
            )
        if name.lower() in _BODY_HEADERS:
            raise ValueError(f"the {name} header frames a body, and an opening handshake has none")
    if len(extra.get_all("Host")) > 1:
        raise ValueError("the Host header given more than once (a request has one, RFC 9112 §3.2)")
    return extra


def _merge(headers: Headers, extra: Headers) -> None:
    """Add ``extra`` to ``headers``; an extra header replaces a default of the same name."""
    for name in extra:
        if name in headers:
            del headers[name]
    for name, value in extra.items():
        headers.add(name, value)


def _check_subprotocols(subprotocols: list[str] | None) -> list[str]:
    """Validate the ``subprotocols`` option."""
    if subprotocols is None:
        return []
    if isinstance(subprotocols, str):
        raise TypeError("subprotocols must be a list of str, not a str")
    if not hasattr(subprotocols, "__iter__"):
        raise TypeError(f"subprotocols must be a list of str, not {type(subprotocols).__name__}")
    protocols = list(subprotocols)
    if not all(isinstance(protocol, str) for protocol in protocols):
        raise TypeError(f"subprotocols must be str: {protocols!r}")
    try:
        valid = parse_subprotocols(protocols) == protocols
    except InvalidHeader:
        valid = False
    if not valid:
        raise ValueError(f"invalid subprotocols (each must be an HTTP token): {protocols!r}")
    return protocols


def _check_compression(compression: str | None) -> str | None:
    """Validate the ``compression`` option."""
    if compression not in COMPRESSION_NAMES:
        raise ValueError(f"unsupported compression {compression!r}: use 'deflate' or None")
    return compression


class ClientHandshake:
    """Client side of the opening handshake (RFC 6455 §4.1).

    Args:
        wsuri: Where to connect; gives the request target, ``Host`` and credentials.
        subprotocols: Subprotocols to offer, in preference order.
        extra_headers: More request headers (dict, list of pairs or Headers); ``Origin``,
            ``User-Agent``, ``Authorization`` or ``Host`` given here replace the defaults.
        compression: ``"deflate"`` offers permessage-deflate (RFC 7692); None offers nothing.
        origin: Value of the ``Origin`` header, if any.
        user_agent: Value of the ``User-Agent`` header; None omits it.

    Raises:
        ValueError / TypeError: on invalid options.

    Attributes:
        request: The upgrade request sent.
        response: The server's response once received (also set when it is rejected).
        subprotocol: The negotiated subprotocol, or None.
        extensions: Negotiated extension objects (at most the permessage-deflate one).
        remainder: Bytes received after the response head (the server's first frames).
    """

    def __init__(
        self,
        wsuri: WebSocketURI,
        *,
        subprotocols: list[str] | None = None,
        extra_headers: HeadersLike = None,
        compression: str | None = "deflate",
        origin: str | None = None,
        user_agent: str | None = USER_AGENT,
    ) -> None:
        self.wsuri = wsuri
        self.key = generate_key()
        self.available_subprotocols = _check_subprotocols(subprotocols)
        self._factory: Any = None
        if _check_compression(compression) == "deflate" and ClientDeflateFactory is not None:
            self._factory = ClientDeflateFactory()
        headers = self._request_headers(extra_headers, origin, user_agent)
        self.request = Request("GET", wsuri.path, headers)
        self.response: Response | None = None
        self.subprotocol: str | None = None
        self.extensions: list[Any] = []
        self._parser = ResponseParser()
        self._error: InvalidHandshake | None = None
        self._done = False

    @classmethod
    def from_options(cls, wsuri: WebSocketURI, opts: Any) -> "ClientHandshake":
        """The handshake a client with connection options ``opts`` (``Options``) sends to
        ``wsuri``; built before connecting, so that bad subprotocols, headers, ``origin`` or
        ``user_agent`` raise ValueError at once, not behind a network error."""
        kwargs: dict[str, Any] = {}
        if opts.user_agent is not None:  # ("" sends an empty one)
            kwargs["user_agent"] = opts.user_agent
        return cls(
            wsuri,
            subprotocols=opts.subprotocols,
            extra_headers=opts.headers,
            compression=opts.compression,
            origin=opts.origin,
            **kwargs,
        )

    def _request_headers(
        self, extra_headers: HeadersLike, origin: str | None, user_agent: str | None
    ) -> Headers:
        """Build the upgrade request headers (RFC 6455 §4.1, items 4-12)."""
        headers = Headers()
        headers["Host"] = self.wsuri.host_header
        headers["Upgrade"] = "websocket"
        headers["Connection"] = "Upgrade"
        headers["Sec-WebSocket-Key"] = self.key
        headers["Sec-WebSocket-Version"] = "13"
        if self._factory is not None:
            headers["Sec-WebSocket-Extensions"] = build_extension(_DEFLATE, self._factory.offer())
        if self.available_subprotocols:
            headers["Sec-WebSocket-Protocol"] = ", ".join(self.available_subprotocols)
        if origin is not None:
            headers["Origin"] = origin
        if self.wsuri.user_info is not None:
            credentials = ":".join(self.wsuri.user_info).encode("utf-8")
            headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode("ascii")
        if user_agent is not None:
            headers["User-Agent"] = user_agent
        _merge(headers, _extra_headers(extra_headers))
        return headers

    @property
    def remainder(self) -> bytes:
        """Bytes received after the response (the server's first frames)."""
        return self._parser.remainder

    def data_to_send(self) -> bytes:
        """Return the upgrade request bytes."""
        return build_request(self.request.method, self.request.path, self.request.headers)

    def receive_data(self, data: bytes) -> Response | None:
        """Feed response bytes; return the response once complete and valid, else None.

        Raises:
            InvalidStatus: if the server answered with a status other than 101 (``status``,
                ``headers`` and ``body`` are those of the response).
            InvalidHeader: if a handshake header is missing or wrong.
            InvalidHandshake: if the response is malformed or the extension parameters are
                unacceptable. Every later call raises the same error.
        """
        if self._error is not None:
            raise self._error
        if self._done:
            self._parser.feed(data)
            return self.response
        try:
            response = self._parser.feed(data)
            if response is None:
                return None
            self.response = response
            try:
                self._validate(response)
            except InvalidHandshake as exc:
                # Client side: the server's answer (a 101 whose headers are wrong, here).
                exc.status, exc.headers, exc.body = response.status, response.headers, response.body
                raise
        except InvalidHandshake as exc:
            self._error = exc
            raise
        self._done = True
        return response

    def _validate(self, response: Response) -> None:
        """Check the response against RFC 6455 §4.1 (the client's checks, items 1-6)."""
        headers = response.headers
        if response.status != 101:
            raise InvalidStatus(
                f"server rejected WebSocket connection: HTTP {response.status}",
                status=response.status,
                headers=headers,
                body=response.body,
                response=response,
            )
        if parse_token_list(headers.get_all("Upgrade")) != ["websocket"]:
            raise InvalidHeader(f"invalid Upgrade header: {headers.get_all('Upgrade')!r}")
        if "upgrade" not in parse_token_list(headers.get_all("Connection")):
            raise InvalidHeader(f"invalid Connection header: {headers.get_all('Connection')!r}")
        accept = headers.get_all("Sec-WebSocket-Accept")
        if len(accept) != 1:
            raise InvalidHeader(f"expected one Sec-WebSocket-Accept header, got {len(accept)}")
        if accept[0] != accept_key(self.key):
            raise InvalidHeader(f"invalid Sec-WebSocket-Accept header: {accept[0]!r}")
        self.subprotocol = self._negotiated_subprotocol(headers)
        self.extensions = self._negotiated_extensions(headers)

    def _negotiated_subprotocol(self, headers: Headers) -> str | None:
        """Return the server's subprotocol, which must be one we offered."""
        protocols = parse_subprotocols(headers.get_all("Sec-WebSocket-Protocol"))
        if not protocols:
            return None
        if len(protocols) > 1:
            raise InvalidHeader(f"server chose more than one subprotocol: {protocols!r}")
        if protocols[0] not in self.available_subprotocols:
            raise InvalidHeader(f"server chose a subprotocol we did not offer: {protocols[0]!r}")
        return protocols[0]

    def _negotiated_extensions(self, headers: Headers) -> list[Any]:
        """Return extension objects for the server's choice, which must match our offer."""
        extensions: list[Any] = []
        for name, params in parse_extensions(headers.get_all("Sec-WebSocket-Extensions")):
            if name.lower() != _DEFLATE or self._factory is None:
                raise InvalidHeader(f"server chose an extension we did not offer: {name!r}")
            if extensions:
                raise InvalidHeader(f"server chose {_DEFLATE} more than once")
            extensions.append(self._factory.accept_response(params))
        return extensions


class ServerHandshake:
    """Server side of the opening handshake (RFC 6455 §4.2).

    The I/O layer calls :meth:`receive_data` until it returns the request, then the
    user's ``process_request(path, headers)`` hook if any (it may be a coroutine, which is
    why this is a separate step: when the hook returns ``(status, headers, body)`` the I/O
    layer sends :meth:`reject` of that instead of upgrading), then :meth:`accept`. On
    :class:`InvalidHandshake` from either call it sends :meth:`reject_from` of the error
    and closes the connection.

    Args:
        subprotocols: Subprotocols supported, in the server's preference order.
        origins: Allowed ``Origin`` values (None in the list allows a missing Origin);
            None allows any.
        extra_headers: More response headers for the 101 answer (dict, pairs or Headers).
        compression: ``"deflate"`` accepts permessage-deflate offers; None declines them.
        server_header: Value of the ``Server`` header; None omits it.

    Raises:
        ValueError / TypeError: on invalid options.

    Attributes:
        request: The upgrade request, once received.
        subprotocol: The negotiated subprotocol, or None (set by :meth:`accept`).
        extensions: Negotiated extension objects (set by :meth:`accept`).
        response_headers: Headers of the 101 response (set by :meth:`accept`).
        remainder: Bytes received after the request head (a client may pipeline frames).
    """

    def __init__(
        self,
        *,
        subprotocols: list[str] | None = None,
        origins: list[str | None] | None = None,
        extra_headers: HeadersLike = None,
        compression: str | None = "deflate",
        server_header: str | None = USER_AGENT,
    ) -> None:
        self.available_subprotocols = _check_subprotocols(subprotocols)
        self.origins = None if origins is None else list(origins)
        self.extra_headers = _extra_headers(extra_headers)
        self.compression = _check_compression(compression)
        if server_header is not None and server_header is not USER_AGENT:
            Headers([("Server", server_header)])  # TypeError / ValueError if invalid
        self.server_header = server_header
        self.request: Request | None = None
        self.subprotocol: str | None = None
        self.extensions: list[Any] = []
        self.response_headers: Headers | None = None
        self._parser = RequestParser()

    @property
    def remainder(self) -> bytes:
        """Bytes received after the request head (the client's first frames)."""
        return self._parser.remainder

    def receive_data(self, data: bytes) -> Request | None:
        """Feed request bytes; return the request once its head is complete, else None.

        Raises:
            InvalidHandshake: if the request is malformed (``status`` 400) or too large
                (``status`` 431); answer it with :meth:`reject_from`.
        """
        request = self._parser.feed(data)
        if request is not None:
            self.request = request
        return request

    def accept(self, request: Request) -> bytes:
        """Validate the upgrade request and return the 101 response bytes.

        Raises:
            InvalidHandshake: with ``status`` 405 (method not GET), 426 (no ``Upgrade``
                header, or another ``Sec-WebSocket-Version``; ``headers`` say what to use),
                403 (``Origin`` not allowed) or 400 (any other bad upgrade, an ``Upgrade``
                to another protocol included).
        """
        self.request = request
        headers = request.headers
        if request.method != "GET":
            raise _fail(f"unsupported HTTP method {request.method}", 405, [("Allow", "GET")])
        self._check_http(headers)
        key = self._check_upgrade(headers)
        self._check_origin(headers)
        pairs = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", accept_key(key))]
        self.extensions, extension_header = self._negotiate_extensions(headers)
        if extension_header is not None:
            pairs.append(("Sec-WebSocket-Extensions", extension_header))
        self.subprotocol = self._negotiate_subprotocol(headers)
        if self.subprotocol is not None:
            pairs.append(("Sec-WebSocket-Protocol", self.subprotocol))
        if self.server_header is not None:
            pairs.append(("Server", self.server_header))
        # Every value above is valid by construction (the accept key is base64, the
        # extension is built from tokens, the subprotocol and Server header were checked).
        response = Headers._trusted(pairs)
        if self.extra_headers:
            _merge(response, self.extra_headers)
        self.response_headers = response
        return build_response(101, response)

    def _check_http(self, headers: Headers) -> None:
        """HTTP-level checks: one Host, no request body (RFC 7230 §5.4, §3.3)."""
        hosts = headers.get_all("Host")
        if len(hosts) != 1 or not hosts[0]:
            raise _fail("missing or repeated Host header", 400)
        if _HOST_RE.fullmatch(hosts[0]) is None:
            # RFC 9112 §3.2: a Host field with an invalid value gets 400.
            raise _fail(f"invalid Host header: {hosts[0][:80]!r}", 400)
        lengths = headers.get_all("Content-Length")
        if "Transfer-Encoding" in headers or any(v.strip() != "0" for v in lengths):
            # A body would be mistaken for WebSocket frames.
            raise _fail("an upgrade request must not have a body", 400)

    def _check_upgrade(self, headers: Headers) -> str:
        """Check Upgrade, Connection, Sec-WebSocket-Version and -Key (§4.2.1); return the key."""
        try:
            upgrade = parse_token_list(headers.get_all("Upgrade"))
            connection = parse_token_list(headers.get_all("Connection"))
        except InvalidHeader as exc:
            raise _fail(str(exc), 400) from None
        if "websocket" not in upgrade:
            if upgrade:  # an upgrade to another protocol (h2c, TLS/1.0): a bad upgrade here
                raise _fail(f"unsupported Upgrade: {', '.join(upgrade)[:80]!r}; this endpoint speaks websocket", 400)
            # Typically a plain HTTP GET (a browser, a health check): say what is needed.
            raise _fail(
                "this is a WebSocket endpoint; send an Upgrade: websocket request",
                426,
                [("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")],
            )
        if "upgrade" not in connection:
            raise _fail("missing Upgrade in Connection header", 400)
        versions = headers.get_all("Sec-WebSocket-Version")
        if len(versions) != 1:
            raise _fail("missing or repeated Sec-WebSocket-Version header", 400)
        if versions[0].strip() != "13":
            # RFC 6455 §4.4: answer 426 with the versions we support.
            # A 426 names the protocol to upgrade to (RFC 9110 §15.5.22).
            raise _fail(
                f"unsupported WebSocket version {versions[0]!r}",
                426,
                [("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")],
            )
        keys = headers.get_all("Sec-WebSocket-Key")
        if len(keys) != 1:
            raise _fail("missing or repeated Sec-WebSocket-Key header", 400)
        try:
            raw_key = base64.b64decode(keys[0].encode("latin-1"), validate=True)
        except (binascii.Error, ValueError):
            raw_key = b""
        if len(raw_key) != 16:
            raise _fail(f"invalid Sec-WebSocket-Key header: {keys[0][:40]!r}", 400)
        return keys[0]

    def _check_origin(self, headers: Headers) -> None:
        """Check Origin against the allowed list (RFC 6455 §10.2)."""
        if self.origins is None:
            return
        values = headers.get_all("Origin")
        if len(values) > 1:
            raise _fail("repeated Origin header", 400)
        origin = values[0] if values else None
        if origin not in self.origins:
            raise _fail(f"origin not allowed: {origin!r}", 403)

    def _negotiate_subprotocol(self, headers: Headers) -> str | None:
        """Pick the first of our subprotocols the client offered; None if none in common."""
        try:
            offered = parse_subprotocols(headers.get_all("Sec-WebSocket-Protocol"))
        except InvalidHeader as exc:
            raise _fail(str(exc), 400) from None
        for protocol in self.available_subprotocols:
            if protocol in offered:
                return protocol
        return None

    def _negotiate_extensions(self, headers: Headers) -> tuple[list[Any], str | None]:
        """Accept the first acceptable permessage-deflate offer (RFC 7692 §5)."""
        try:
            offers = parse_extensions(headers.get_all("Sec-WebSocket-Extensions"))
        except InvalidHeader as exc:
            raise _fail(str(exc), 400) from None
        if self.compression != "deflate" or ServerDeflateFactory is None:
            return [], None
        factory = None
        for name, params in offers:
            if name.lower() != _DEFLATE:
                continue  # unknown extensions are declined by omission (RFC 6455 §9.1)
            factory = factory or ServerDeflateFactory()
            accepted = factory.accept_offer(params)
            if accepted is not None:
                response_params, extension = accepted
                return [extension], build_extension(_DEFLATE, response_params)
        return [], None

    def reject(self, status: int, headers: HeadersLike = None, body: bytes | str = b"") -> bytes:
        """Return an HTTP response that ends the connection (errors, ``process_request``).

        Adds ``Connection: close`` (``Upgrade, close`` when there is an ``Upgrade`` header:
        RFC 9110 §7.8), ``Content-Length`` (but not to a 204 or 304, which have no content)
        and, when there is a body and none is given,
        ``Content-Type: text/plain; charset=utf-8``. A str body is UTF-8 encoded. The answer
        to a HEAD request has no body (its ``Content-Length`` is the body's, RFC 9110 §9.3.2).

        Raises:
            ValueError: if ``status`` is informational (1xx) or not a valid status code, a
                header is invalid, or ``Transfer-Encoding`` is given.
        """
        if isinstance(body, str):
            body = body.encode("utf-8")
        if status == 101:
            raise ValueError("reject() cannot send 101 Switching Protocols")
        if 100 <= status < 200:  # (an interim answer, after which the client waits for the real one)
            raise ValueError(f"reject() cannot answer with an informational status ({status})")
        response = Headers(headers)
        if "Transfer-Encoding" in response:  # the body goes out whole, with its Content-Length
            raise ValueError("reject() sends the body whole: no Transfer-Encoding")
        response["Connection"] = "Upgrade, close" if "Upgrade" in response else "close"
        if body and "Content-Type" not in response:
            response["Content-Type"] = "text/plain; charset=utf-8"
        if status >= 200 and status not in (204, 304):
            # (Never on a 1xx / 204 / 304 answer, which has no content: RFC 9110 §8.6.)
            response["Content-Length"] = str(len(body))
        elif "Content-Length" in response:
            del response["Content-Length"]
        if self.server_header is not None and "Server" not in response:
            response["Server"] = self.server_header
        if self.request is not None and self.request.method == "HEAD":
            body = b""
        return build_response(status, response, body)

    def reject_from(self, exc: InvalidHandshake) -> bytes:
        """Return the HTTP response for a handshake error (its status, headers and body)."""
        body = exc.body
        if not body:
            body = _error_body(str(exc))
        return self.reject(exc.status, exc.headers, body)

    def hand_over(self, ws: Any, request: Request) -> None:
        """Give the connection ``ws`` what it keeps of the accepted ``request``: ``path``,
        ``request_headers`` and ``response_headers``, both compacted (memory: idle connections
        keep one bytes object each)."""
        ws.path = request.path
        ws.request_headers = request.headers
        ws.response_headers = self.response_headers
        request.headers.compact()
        ws.response_headers.compact()


#: Redirections a client follows (RFC 6455 §4.1 lets it: 3xx "MAY be redirected"), and how many.
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 10


def redirect_target(wsuri: WebSocketURI, exc: InvalidStatus, *, unix: bool = False) -> WebSocketURI | None:
    """Where a 3xx answer to a connection to ``wsuri`` sends the client, or None if ``exc``
    is not a redirection. ``Location`` may be relative, ``ws``/``wss`` or ``http``/``https``
    (taken as ``ws``/``wss``).

    Raises:
        InvalidHandshake: a redirection without a usable ``Location``, from ``wss://`` to
            a plain ``ws://`` URI (never downgrade TLS), or (``unix``: the client connects
            to a Unix socket, whatever the URI's host) to another origin.
    """
    if exc.status not in REDIRECT_STATUSES:
        return None
    locations = Headers(exc.headers).get_all("Location")
    if len(locations) != 1 or not locations[0].strip():
        raise InvalidHandshake(f"HTTP {exc.status} redirection without one Location header", exc.status, exc.headers, exc.body)
    target = urljoin(wsuri.uri, locations[0].strip())
    scheme, sep, rest = target.partition("://")
    scheme = {"http": "ws", "https": "wss"}.get(scheme.lower(), scheme.lower())
    try:
        new = parse_uri(f"{scheme}{sep}{rest}")
    except InvalidURI as error:
        raise InvalidHandshake(f"HTTP {exc.status} redirection to an invalid URI: {error}", exc.status, exc.headers, exc.body) from None
    if wsuri.secure and not new.secure:
        raise InvalidHandshake(f"refused to follow a redirection from {wsuri.shown} to insecure {new.shown}", exc.status, exc.headers, exc.body)
    if unix and not same_origin(new, wsuri):
        raise InvalidHandshake(
            f"refused to follow a redirection from {wsuri.shown} to another origin ({new.shown}) over a Unix socket",
            exc.status, exc.headers, exc.body,
        )
    return new


def same_origin(a: WebSocketURI, b: WebSocketURI) -> bool:
    """Whether two URIs have the same origin: scheme (TLS or not), host and port."""
    return (a.secure, a.host.lower(), a.port) == (b.secure, b.host.lower(), b.port)


#: What a redirection to another origin does not carry (as browsers, curl, requests and
#: websockets): credentials meant for the first server, which the next could collect.
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})


def redirect_options(opts: Any, old: WebSocketURI, new: WebSocketURI) -> Any:
    """The connection options (``Options``) for following a redirection from ``old`` to
    ``new``: the same, but without credential headers when ``new`` is another origin."""
    if same_origin(old, new) or not opts.headers:
        return opts
    kept = [(name, value) for name, value in Headers(opts.headers).items() if name.lower() not in CREDENTIAL_HEADERS]
    return dataclasses.replace(opts, headers=kept)


#: A Host field value (RFC 9110 §7.2): uri-host [ ":" port ], the host an IP literal in
#: brackets or a reg-name (RFC 3986 §3.2.2: unreserved, pct-encoded and sub-delims).
_HOST_RE = re.compile(r"(?:\[[0-9A-Za-z:.%_~-]+\]|[0-9A-Za-z._~!$&'()*+,;=%-]+)(?::[0-9]*)?")


def _error_body(message: str) -> bytes:
    """The plain-text body explaining a failed handshake to the peer."""
    return f"Failed to open a WebSocket connection: {message}.\n".encode("utf-8", "replace")


def _fail(
    message: str, status: int, headers: list[tuple[str, str]] | None = None
) -> InvalidHandshake:
    """Build the server-side error for ``status`` with a body explaining it."""
    cls = InvalidHeader if status == 400 else InvalidHandshake
    phrase = http.HTTPStatus(status).phrase
    return cls(
        f"{message} ({status} {phrase})", status=status, headers=headers, body=_error_body(message)
    )
