"""Connection options shared by both sides and both I/O styles (SPEC.md "Options")."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable

from .uri import WebSocketURI, parse_uri

__all__ = [
    "BACKLOG", "Options", "check_blocking_callables", "check_client_transport", "check_server_options", "check_server_ssl",
    "check_unix_path", "client_uri", "make_options",
]


@dataclass
class Options:
    """Every option with its default; the same names for client, server, sync and asyncio."""

    subprotocols: list[str] | None = None
    compression: str | None = "deflate"
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    max_size: int | None = 2**20
    max_queue: int | None = 16
    write_limit: int = 2**16
    open_timeout: float | None = 10.0
    close_timeout: float | None = 10.0
    ssl: Any = None
    headers: Any = None
    origins: list[str | None] | None = None
    origin: str | None = None
    reconnect: Any = False
    max_pending: int = 1000
    on_connect: Callable[..., Any] | None = None
    process_request: Callable[..., Any] | None = None
    server_header: str | None = None
    user_agent: str | None = None
    backend: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.compression not in (None, "deflate"):
            raise ValueError(f"unsupported compression: {self.compression!r}")
        for name in ("ping_interval", "ping_timeout", "open_timeout", "close_timeout"):
            # Seconds, or None for no limit (ping_interval: no keepalive; 0 too, as websockets).
            value = getattr(self, name)
            _check_number(name, value, optional=True)
            if value is not None and value > _TIMEOUT_MAX:  # inf: no limit, as None
                setattr(self, name, None)
        for name in ("max_size", "max_queue", "write_limit", "max_pending"):
            value = getattr(self, name)
            if isinstance(value, float) and value.is_integer():
                setattr(self, name, int(value))  # 32.0 as 32
            _check_number(name, getattr(self, name), optional=name in ("max_size", "max_queue"), integer=True,
                          minimum=1 if name == "max_queue" else 0)
        if self.ssl is False:
            self.ssl = None

        if isinstance(self.subprotocols, str):
            self.subprotocols = [self.subprotocols]
        if isinstance(self.origins, str):
            self.origins = [self.origins]  # one origin, as one subprotocol
        if self.origins is not None:
            try:
                self.origins = list(self.origins)
            except TypeError:
                raise TypeError(f"origins must be a list of str (or None for no Origin header), not "
                                f"{type(self.origins).__name__}") from None
            for origin in self.origins:
                if origin is not None and not isinstance(origin, str):
                    raise TypeError(f"origins must hold str or None, not {type(origin).__name__}")
        for name in ("on_connect", "process_request"):
            if getattr(self, name) is not None and not callable(getattr(self, name)):
                raise TypeError(f"{name} must be callable or None, not {type(getattr(self, name)).__name__}")
        if self.ssl is not None and not isinstance(self.ssl, bool):
            import ssl

            if not isinstance(self.ssl, ssl.SSLContext):
                raise TypeError(f"ssl must be an ssl.SSLContext, True/False or None, not {type(self.ssl).__name__}")
        for name in ("origin", "user_agent", "server_header"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a str or None, not {type(value).__name__}")
        if self.reconnect is not False and self.reconnect is not None:
            from .reconnect import ReconnectPolicy

            ReconnectPolicy.from_option(self.reconnect)  # TypeError / ValueError on either side
        if self.backend is not None and not hasattr(self.backend, "FrameParser"):
            raise TypeError("backend must be kn_sock._pure or kn_sock._speedups")


def check_server_ssl(value: Any) -> None:
    """A server's ``ssl`` option: None or an ``ssl.SSLContext`` (TypeError otherwise)."""
    if value is not None:
        import ssl

        if not isinstance(value, ssl.SSLContext):
            raise TypeError(f"ssl must be an ssl.SSLContext or None on a server, not {type(value).__name__}")


def check_server_options(opts: Options) -> None:
    """What a server checks beyond the shared options: ``ssl`` (TypeError unless an
    ``ssl.SSLContext`` or None), and ``origin`` without ``origins``: a client's option, which a
    server would ignore while admitting every Origin, so a one-letter slip for ``origins``
    fails open (audit 87; websockets refuses it too). With ``origins`` given as well, one
    dict of options serving both sides, it is ignored as documented."""
    check_server_ssl(opts.ssl)
    if opts.origin is not None and opts.origins is None:
        raise TypeError(
            "origin= is the Origin header a client sends; a server admits Origins with origins=[...]"
        )


def check_blocking_callables(**callables: Any) -> None:
    """The blocking API calls the callables given by name (the server's ``handler`` and
    ``process_request``, the client's ``on_connect``; the other side's options are ignored)
    and never awaits: TypeError for a coroutine function, whose coroutine would never run
    (an instance whose ``__call__`` is one too; a class is called to make an instance)."""
    import inspect

    for name, function in callables.items():
        if function is None or isinstance(function, type):
            continue
        if inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(getattr(function, "__call__", None)):
            raise TypeError(
                f"{name} is a coroutine function, which the blocking API would never await: "
                "use a plain function, or the asyncio API"
            )


def check_client_transport(opts: Options) -> None:
    """A client's ``sock`` (a connected socket), ``unix`` (a Unix socket path) and ``proxy``
    (an HTTP proxy) options: TypeError / ValueError unless at most one is given, of the right
    type, and ``sock`` not with ``reconnect`` (which could not reopen it)."""
    sock = opts.extra.get("sock")
    unix = opts.extra.get("unix")
    proxy = opts.extra.get("proxy")
    if proxy is not None and proxy is not False:
        from .proxy import check_proxy

        check_proxy(proxy)
        if sock is not None or unix is not None:
            raise ValueError("proxy cannot be used with sock or unix")
    if sock is not None:
        import socket

        if not isinstance(sock, socket.socket):
            raise TypeError(f"sock must be a socket.socket, not {type(sock).__name__}")
        if unix is not None:
            raise ValueError("sock and unix are exclusive")
        if opts.reconnect is not False and opts.reconnect is not None:
            raise ValueError("reconnect= cannot reopen a caller-supplied sock")
    check_unix_path(unix)


def client_uri(host_or_uri: str, port: int | None, path: str, opts: Options) -> WebSocketURI:
    """Where a client connects: ``parse_uri`` of its arguments, made ``wss`` by ``ssl=`` in the
    ``(host, port)`` form (so that ``Host`` leaves out port 443, not 80); ``ssl=`` with a
    ``ws://`` URI is a ValueError (as websockets), since the URI says no TLS."""
    wsuri = parse_uri(host_or_uri, port, path)
    if opts.ssl is not None and not wsuri.secure:
        if "://" in host_or_uri:
            raise ValueError(f"ssl= asks for TLS but {wsuri.shown} is a ws:// URI: use wss://")
        wsuri = replace(wsuri, secure=True)
    return wsuri


def check_unix_path(unix: object) -> None:
    """A ``unix`` option (clients and servers): None or a path, str, bytes or os.PathLike
    (TypeError otherwise)."""
    if unix is not None:
        import os

        if not isinstance(unix, (str, bytes, os.PathLike)):
            raise TypeError(f"unix must be a path (str, bytes or os.PathLike), not {type(unix).__name__}")


#: Servers' listen backlog unless given (asyncio's own default, 100, made a burst of 1,000
#: connections, clients reconnecting after a restart say, wait seconds for SYN retries).
BACKLOG = 1024

#: Longer timeouts are no limit (threading's waits refuse more than about 9e9 s).
_TIMEOUT_MAX = 1e9


def check_listen_options(listen: Mapping[Any, Any]) -> None:
    """A server's listening options, checked when the server is made (not when it binds, nor in
    its accept loop): ``backlog`` an int >= 0, ``reuse_port`` / ``reuse_address`` a bool or
    None, ``sock`` a listening ``socket.socket``, ``thread_stack_size`` (blocking server) 0 /
    None (the system's) or an int of at least 32 KiB, ``shutdown_grace`` seconds >= 0."""
    if listen.get("backlog") is not None:
        _check_number("backlog", listen["backlog"], optional=False, integer=True)
    for name in ("reuse_port", "reuse_address"):
        value = listen.get(name)
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool or None, not {type(value).__name__}")
    if listen.get("sock") is not None:
        import socket

        if not isinstance(listen["sock"], socket.socket):
            raise TypeError(f"sock must be a socket.socket, not {type(listen['sock']).__name__}")
    if "thread_stack_size" in listen:
        size = listen["thread_stack_size"]
        _check_number("thread_stack_size", size, optional=True, integer=True)
        if size and size < 32768:
            raise ValueError(f"thread_stack_size must be 0 (the system's), or at least 32768 bytes, not {size}")
    if "shutdown_grace" in listen:
        _check_number("shutdown_grace", listen["shutdown_grace"], optional=False)


def check_handler(handler: Any) -> None:
    """An asyncio server's handler must be callable (a coroutine function, in practice): TypeError
    at the call, rather than a 1011 and a log line for every connection."""
    if not callable(handler):
        raise TypeError(f"handler must be an async function, not {type(handler).__name__}")


def checked_timeout(timeout: Any) -> float | None:
    """A ``recv(timeout=)`` that is not None: seconds (0 or less: only a message already there),
    or None when longer than ``_TIMEOUT_MAX`` (inf: no limit). TypeError for what is not a
    number, ValueError for NaN (both layers alike: one ignored it, the other raised from deep inside)."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    if timeout != timeout:
        raise ValueError("timeout must be a number of seconds or None, not nan")
    return None if timeout > _TIMEOUT_MAX else timeout


def check_port(port: Any) -> None:
    """A server's port number must be 0-65535 (0: any free one); else ValueError.

    getaddrinfo() takes a larger number modulo 65536 (99999 would bind 34463), as an int or
    as digits. Anything else (None, a service name) is left to the resolver.
    """
    if isinstance(port, (bool, float)):
        raise TypeError(f"port must be an int, not {type(port).__name__}")
    if isinstance(port, (str, bytes)):
        try:
            port = int(port)
        except ValueError:  # a service name ("http")
            return
    if isinstance(port, int) and not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range 0-65535")


def _check_number(name: str, value: Any, *, optional: bool, integer: bool = False, minimum: int = 0) -> None:
    """Raise TypeError / ValueError unless ``value`` is a number >= ``minimum`` (None if ``optional``)."""
    if value is None and optional:
        return
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        what = "an int" if integer else "a number of seconds"
        raise TypeError(f"{name} must be {what}{' or None' if optional else ''}, not {type(value).__name__}")
    if not value >= minimum:  # (NaN too)
        raise ValueError(f"{name} must be >= {minimum}{' or None' if optional else ''}, not {value!r}")


_NAMES = frozenset(f.name for f in fields(Options)) - {"extra"}


def make_options(options: Mapping[str, object], *, allow: tuple[str, ...] = ()) -> Options:
    """Build ``Options`` from keyword arguments, rejecting unknown names with TypeError."""
    known: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in options.items():
        if key in _NAMES:
            known[key] = value
        elif key in allow:
            extra[key] = value
        else:
            raise TypeError(f"unexpected option {key!r}")
    return Options(**known, extra=extra)
