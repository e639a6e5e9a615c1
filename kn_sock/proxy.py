"""HTTP proxies for the clients (``proxy=``), sans I/O: which proxy, the CONNECT request, its answer.

A client reaches its server through an HTTP proxy with ``CONNECT host:port`` (RFC 9110 §9.3.6):
once the proxy answers 2xx, the TCP connection is a tunnel to the server, in which TLS
(``wss://``) and the opening handshake run as on a direct connection. ``proxy=None`` (the
default) connects directly; ``proxy=True`` takes the proxy from the environment (``wss_proxy`` /
``https_proxy`` for ``wss://``, ``ws_proxy`` / ``http_proxy`` for ``ws://``, then ``all_proxy``;
``no_proxy`` lists the hosts reached directly); a string is the proxy's URL,
``http://[user:password@]host[:port]`` (credentials go as ``Proxy-Authorization: Basic``).
"""

from __future__ import annotations

import base64
import dataclasses
import urllib.parse
import urllib.request
from typing import Any

from .exceptions import InvalidHandshake, InvalidProxyStatus, InvalidURI
from .http11 import Headers, ResponseParser, build_request
from .uri import WebSocketURI

__all__ = ["ProxyURI", "parse_proxy", "check_proxy", "proxy_for", "connect_request", "ConnectAnswer"]


@dataclasses.dataclass(frozen=True)
class ProxyURI:
    """An HTTP proxy: host, port (80 unless given) and credentials (kept out of ``repr``)."""

    host: str
    port: int
    user_info: tuple[str, str] | None = dataclasses.field(default=None, repr=False)

    @property
    def shown(self) -> str:
        """The proxy for log lines and errors, without credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def parse_proxy(url: str) -> ProxyURI:
    """Parse ``http://[user:password@]host[:port]`` (a bare ``host:port`` too).

    Raises:
        InvalidURI: not an HTTP proxy URL (SOCKS proxies are not supported).
    """
    if not isinstance(url, str):
        raise TypeError(f"proxy must be a URL (str), True (from the environment) or None, not {type(url).__name__}")
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    scheme = parts.scheme.lower()
    if scheme != "http":
        raise InvalidURI(f"unsupported proxy {scheme}://: kn_sock reaches servers through HTTP proxies (CONNECT)")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise InvalidURI("invalid port in the proxy URL") from None
    if not host:
        raise InvalidURI("proxy URL without a host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InvalidURI("a proxy URL is http://host:port, without a path")
    user_info = None
    if parts.username is not None:
        try:
            user_info = (urllib.parse.unquote(parts.username, errors="strict"),
                         urllib.parse.unquote(parts.password or "", errors="strict"))
        except UnicodeDecodeError:  # (not U+FFFD in place of the bytes: other credentials; as ws:// URIs)
            raise InvalidURI("the proxy URL's user name or password is not UTF-8 once %-decoded") from None
    return ProxyURI(host, port or 80, user_info)


def check_proxy(value: Any) -> None:
    """The ``proxy`` option: None / False, True, or a proxy URL (TypeError / InvalidURI)."""
    if value is None or isinstance(value, bool):
        return
    parse_proxy(value)


def proxy_for(wsuri: WebSocketURI, proxy: Any) -> ProxyURI | None:
    """The proxy to reach ``wsuri`` through, for the ``proxy`` option; None: directly."""
    if proxy is None or proxy is False:
        return None
    if proxy is not True:
        return parse_proxy(proxy)
    # no_proxy; an IPv6 host unbracketed, so that "::1" in the list matches, as curl, requests
    # and websockets read it (bracketed, only "[::1]" did).
    if urllib.request.proxy_bypass(f"{wsuri.host}:{wsuri.port}"):
        return None
    proxies = urllib.request.getproxies()  # the *_proxy environment variables
    if wsuri.secure:
        url = proxies.get("wss") or proxies.get("https")
    else:
        url = proxies.get("ws") or proxies.get("http")
    url = url or proxies.get("all")
    return parse_proxy(url) if url else None


def connect_request(proxy: ProxyURI, wsuri: WebSocketURI, user_agent: str | None = None) -> bytes:
    """The ``CONNECT host:port`` request asking ``proxy`` for a tunnel to ``wsuri``'s server."""
    target = f"[{wsuri.host}]:{wsuri.port}" if ":" in wsuri.host else f"{wsuri.host}:{wsuri.port}"
    headers = Headers()
    headers["Host"] = target
    if proxy.user_info is not None:
        credentials = f"{proxy.user_info[0]}:{proxy.user_info[1]}".encode()
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(credentials).decode()
    if user_agent:
        headers["User-Agent"] = user_agent
    return build_request("CONNECT", target, headers)


class _ConnectResponseParser(ResponseParser):
    """A response to CONNECT: a 2xx one has no body, whatever its Content-Length or
    Transfer-Encoding say (RFC 9110 §9.3.6: the client MUST ignore them); what follows it is
    the tunnel's."""

    def _expected_body_length(self) -> int | None:
        if 200 <= self._status < 300:
            return 0
        return super()._expected_body_length()


class ConnectAnswer:
    """The proxy's answer to CONNECT, fed as it arrives."""

    def __init__(self, proxy: ProxyURI) -> None:
        self._proxy = proxy
        self._parser = _ConnectResponseParser()

    def feed(self, data: bytes) -> bool:
        """Consume ``data``; True once the proxy accepted (the tunnel is open), False until its
        answer is complete.

        Raises:
            InvalidProxyStatus: the proxy refused (407: it wants credentials).
            InvalidHandshake: a malformed answer, or data in the tunnel before our first bytes.
        """
        if not data:  # (EOFError as the cause: a network failure, which reconnecting clients retry)
            raise InvalidHandshake(
                f"the proxy {self._proxy.shown} closed the connection before answering CONNECT"
            ) from EOFError("EOF")
        response = self._parser.feed(data)
        if response is None:
            return False
        if not 200 <= response.status < 300:
            raise InvalidProxyStatus(
                f"the proxy {self._proxy.shown} refused the tunnel: HTTP {response.status} {response.reason}".rstrip(),
                response.status, response.headers, response.body,
            )
        # A 2xx answer to CONNECT has no body (RFC 9110 §9.3.6): what follows is the server's,
        # which speaks only after our first bytes (TLS's ClientHello, or the upgrade request).
        if response.body or self._parser.remainder:
            raise InvalidHandshake(f"the proxy {self._proxy.shown} sent data before the tunnel was used")
        return True
