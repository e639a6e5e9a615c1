"""WebSocket URIs (RFC 6455 §3): ``ws://`` and ``wss://``, or a plain ``(host, port, path)``.

``parse_uri`` accepts both forms the public API promises::

    parse_uri("ws://localhost:8765/chat?room=1")
    parse_uri("wss://[::1]/")
    parse_uri("localhost", 8765)
    parse_uri("localhost", 8765, "/chat")

and always returns a normalised :class:`WebSocketURI` whose ``path`` is a valid
resource name (RFC 6455 §3: path plus optional query, never empty, never a fragment).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import urllib.parse

from .exceptions import InvalidURI

__all__ = ["WebSocketURI", "parse_uri", "DEFAULT_PORTS"]

#: Default ports per scheme (RFC 6455 §3).
DEFAULT_PORTS = {False: 80, True: 443}

# RFC 3986 §2.2 / §2.3: characters allowed unescaped in a path or query ("%" is handled
# separately so that existing %XX escapes survive and stray "%" are escaped).
_RESOURCE_SAFE = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/?"
)
# One-byte bytes objects, to test slices of the encoded path.
_HEX_DIGITS = frozenset(bytes([b]) for b in b"0123456789ABCDEFabcdef")
# A DNS name or IPv4 address after IDNA encoding (RFC 3986 reg-name, minus pct-encoding).
_REG_NAME_RE = re.compile(r"[A-Za-z0-9\-._~]+")
_PORT_RE = re.compile(r"[0-9]+")  # RFC 3986 §3.2.3: any number of digits (leading zeros)
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")


@dataclasses.dataclass(frozen=True)
class WebSocketURI:
    """A parsed WebSocket URI.

    Attributes:
        secure: ``True`` for ``wss://`` (TLS).
        host: Host name or IP address; IPv6 literals are stored without brackets.
        port: TCP port (80 / 443 when the URI gave none).
        path: Resource name: path plus query, always starting with ``"/"``.
        user_info: ``(user, password)`` from ``ws://user:pass@host/``, percent-decoded, or ``None``.
    """

    secure: bool
    host: str
    port: int
    path: str = "/"
    # Kept out of repr() so that credentials don't end up in logs.
    user_info: tuple[str, str] | None = dataclasses.field(default=None, repr=False)

    @property
    def scheme(self) -> str:
        """``"wss"`` or ``"ws"``."""
        return "wss" if self.secure else "ws"

    @property
    def host_header(self) -> str:
        """Value of the ``Host`` header: host, bracketed if IPv6, ``:port`` unless default."""
        host = f"[{self.host.replace('%', '%25')}]" if ":" in self.host else self.host
        if self.port == DEFAULT_PORTS[self.secure]:
            return host
        return f"{host}:{self.port}"

    @property
    def uri(self) -> str:
        """The full URI, without credentials (safe to log)."""
        return f"{self.scheme}://{self.host_header}{self.path}"

    @property
    def shown(self) -> str:
        """The URI for log lines and messages: :attr:`uri` with the query, which often carries
        a token (browsers cannot set headers on a WebSocket), shown as ``?…``."""
        path, sep, _ = self.path.partition("?")
        return f"{self.scheme}://{self.host_header}{path}{'?…' if sep else ''}"

    def __str__(self) -> str:
        """Same as :attr:`uri`."""
        return self.uri


def parse_uri(host_or_uri: str, port: int | None = None, path: str = "/") -> WebSocketURI:
    """Parse a ``ws://`` / ``wss://`` URI or a plain host, port and path.

    Args:
        host_or_uri: ``"ws://host[:port]/path?query"``, ``"wss://..."``, or a bare host
            (``"localhost"``, ``"127.0.0.1"``, ``"::1"``, ``"[::1]"``, ``"localhost:8765"``).
        port: Port for the plain form (required there unless ``host_or_uri`` has one); in the
            URI form it fills in a missing port.
        path: Resource name for the plain form (query allowed); in the URI form it fills in
            a missing path.

    Returns:
        The parsed, normalised URI.

    Raises:
        InvalidURI: if the scheme is not ws/wss, the host or port is invalid or missing,
            a fragment is present, or ``port`` / ``path`` conflict with the URI.
    """
    if not isinstance(host_or_uri, str):
        raise InvalidURI(f"expected a str URI or host, got {type(host_or_uri).__name__}")
    if port is not None:
        port = _check_port(port)
    if not isinstance(path, str):
        raise InvalidURI(f"expected a str path, got {type(path).__name__}")
    if "://" in host_or_uri:
        try:
            return _parse_full(host_or_uri, port, path)
        except InvalidURI as exc:
            secret = _password(host_or_uri)
            if not secret:
                raise
            # Error messages end up in logs and error trackers: not the password (audit 87).
            message = str(exc)
            for shown in (secret, repr(secret)[1:-1]):
                message = message.replace(f":{shown}@", ":***@")
            if any(piece in message for piece in re.split(r"[/?#]", secret) if piece):
                # A raw / ? or # in the password cut the authority short, and the parser's
                # own words quote a piece of it (as a port, say): withhold them (audit 88).
                message = f"{host_or_uri.replace(f':{secret}@', ':***@')!r}: not a valid WebSocket URI " \
                    "(the details would show its password)"
            raise InvalidURI(message) from None
    return _parse_plain(host_or_uri, port, path)


def _password(uri: str) -> str:
    """The password of ``scheme://user:password@host...``, or "". (Up to the last ``@``, not
    only within the authority: a URI that fails to parse may have a raw ``/``, ``?`` or ``#``
    in its password, base64 say, which cuts the authority short; a query's ``@`` makes this
    redact more than needed, never less.)"""
    userinfo, at, _ = uri.partition("://")[2].rpartition("@")
    return userinfo.partition(":")[2] if at else ""


def _parse_full(uri: str, port: int | None, path: str) -> WebSocketURI:
    """Parse the ``scheme://authority/resource`` form."""
    _check_no_space(uri)
    scheme, _, rest = uri.partition("://")
    if not _SCHEME_RE.fullmatch(scheme) or scheme.lower() not in ("ws", "wss"):
        raise InvalidURI(f"{uri!r} isn't a WebSocket URI: scheme must be ws or wss, not {scheme!r}")
    secure = scheme.lower() == "wss"
    if "#" in rest:
        # RFC 6455 §3: fragment identifiers are meaningless in WebSocket URIs.
        raise InvalidURI(f"{uri!r}: fragment identifiers are not allowed in WebSocket URIs")
    cut = len(rest)
    for sep in "/?":
        index = rest.find(sep)
        if index != -1:
            cut = min(cut, index)
    authority, resource = rest[:cut], rest[cut:]
    user_info = None
    if "@" in authority:
        raw_user_info, _, authority = authority.rpartition("@")
        user, _, password = raw_user_info.partition(":")
        try:
            user_info = (urllib.parse.unquote(user, errors="strict"), urllib.parse.unquote(password, errors="strict"))
        except UnicodeDecodeError:
            # (Not replaced by U+FFFD: that would send other credentials than the URI's.)
            raise InvalidURI(f"{uri!r}: the user name or password is not UTF-8 once %-decoded") from None
    host, uri_port = _split_host_port(authority, uri)
    if uri_port is not None and port is not None and uri_port != port:
        raise InvalidURI(f"{uri!r}: port {port} conflicts with the port in the URI")
    final_port = uri_port if uri_port is not None else port
    if final_port is None:
        final_port = DEFAULT_PORTS[secure]
    if resource in ("", "/") or resource.startswith("?"):
        if path not in ("", "/"):
            if resource not in ("", "/"):
                raise InvalidURI(f"{uri!r}: give the query in the URI or in path, not both")
            resource = path
    elif path not in ("", "/"):
        raise InvalidURI(f"{uri!r}: path {path!r} conflicts with the path in the URI")
    return WebSocketURI(secure, host, final_port, _encode_resource(resource, uri), user_info)


def _parse_plain(host: str, port: int | None, path: str) -> WebSocketURI:
    """Parse the ``(host, port, path)`` form: always ``ws://``."""
    _check_no_space(host)
    if not host:
        raise InvalidURI("empty host")
    if not host.startswith("[") and host.count(":") > 1:
        host_port: tuple[str, int | None] = (_check_ipv6(host, host), None)
    else:
        host_port = _split_host_port(host, host)
    name, host_port_port = host_port
    if host_port_port is not None and port is not None and host_port_port != port:
        raise InvalidURI(f"{host!r}: port {port} conflicts with the port in the host")
    final_port = host_port_port if host_port_port is not None else port
    if final_port is None:
        raise InvalidURI(
            f"{host!r} has no port: give one (host, port or 'host:port'), or a ws:// / wss:// URI"
        )
    if "#" in path:
        raise InvalidURI(f"path {path!r}: fragment identifiers are not allowed")
    _check_no_space(path)
    return WebSocketURI(False, name, final_port, _encode_resource(path, path))


def _split_host_port(authority: str, source: str) -> tuple[str, int | None]:
    """Split ``host[:port]`` / ``[v6][:port]`` and validate both parts."""
    if authority.startswith("["):
        close = authority.find("]")
        if close == -1:
            raise InvalidURI(f"{source!r}: unterminated IPv6 literal")
        host = _check_ipv6(urllib.parse.unquote(authority[1:close]), source)
        after = authority[close + 1 :]
        if after and not after.startswith(":"):
            raise InvalidURI(f"{source!r}: unexpected {after!r} after IPv6 literal")
        port_text = after[1:] if after else ""
    else:
        if authority.count(":") > 1:
            raise InvalidURI(f"{source!r}: IPv6 addresses must be written in brackets")
        host, _, port_text = authority.partition(":")
        host = _check_reg_name(host, source)
    if not port_text:
        # RFC 3986 §3.2.3: an empty port ("host:") means the default port.
        return host, None
    digits = port_text.lstrip("0") or "0"
    if not _PORT_RE.fullmatch(port_text) or len(digits) > 5:
        raise InvalidURI(f"{source!r}: invalid port {port_text!r}")
    return host, _check_port(int(digits), source)


def _check_ipv6(host: str, source: str) -> str:
    """Return ``host`` if it is an IPv6 address (zone id allowed), else raise."""
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise InvalidURI(f"{source!r}: invalid IPv6 address {host!r}") from None
    return host


def _check_reg_name(host: str, source: str) -> str:
    """Validate a host name or IPv4 address; IDNA-encode non-ASCII names."""
    if not host:
        raise InvalidURI(f"{source!r}: missing host")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise InvalidURI(f"{source!r}: invalid internationalised host name") from None
    if not _REG_NAME_RE.fullmatch(host):
        raise InvalidURI(f"{source!r}: invalid host {host!r}")
    return host


def _check_port(port: object, source: str | None = None) -> int:
    """Validate a port number (1-65535)."""
    if isinstance(port, bool) or not isinstance(port, int):
        raise InvalidURI(f"port must be an int, not {type(port).__name__}")
    if not 0 < port < 65536:
        where = f"{source!r}: " if source is not None else ""
        raise InvalidURI(f"{where}port {port} out of range 1-65535")
    return port


def _check_no_space(text: str) -> None:
    """Reject whitespace and control characters, which a URI never contains."""
    for char in text:
        if char.isspace() or ord(char) < 0x20 or ord(char) == 0x7F:
            raise InvalidURI(f"{text!r}: whitespace and control characters are not allowed")


def _encode_resource(resource: str, source: str) -> str:
    """Return a valid resource name: leading "/", non-ASCII and unsafe bytes percent-encoded."""
    if not resource.startswith("/"):
        resource = "/" + resource
    try:
        raw = resource.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidURI(f"{source!r}: path is not valid Unicode") from None
    out = []
    for index, byte in enumerate(raw):
        if byte in _RESOURCE_SAFE:
            out.append(chr(byte))
        elif byte == 0x25 and raw[index + 1 : index + 2] in _HEX_DIGITS and (
            raw[index + 2 : index + 3] in _HEX_DIGITS
        ):
            out.append("%")  # keep an existing %XX escape
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)

