"""The entry points' keyword options as ``TypedDict``s, for type checkers (and resolvable at
run time: ``typing.get_type_hints``, pydantic, sphinx). Imported by the layers, which load
these modules anyway; ``import kn_sock`` alone does not."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from os import PathLike
from ssl import SSLContext
from types import ModuleType
from typing import Any, Literal, TypedDict

from .http11 import Headers
from .reconnect import ReconnectPolicy

__all__ = ["AsyncServerOptions", "ClientOptions", "ServerOptions"]


# The keyword options of the entry points (docs/api.md "Options"), for type checkers: a
# misspelt option or a value of the wrong type is an error there, as it is at run time
# (``options.make_options``). Each side accepts the other side's options of ``Options`` and
# ignores them, so that one dict can serve both (tests/test_typing.py keeps these in step with
# the ``Options`` dataclass).
class _SharedOptions(TypedDict, total=False):
    subprotocols: Sequence[str] | str | None
    compression: str | None
    ping_interval: float | None
    ping_timeout: float | None
    max_size: int | None
    max_queue: int | None
    write_limit: int
    open_timeout: float | None
    close_timeout: float | None
    headers: Headers | Mapping[str, str] | Iterable[tuple[str, str]] | None  # (http11.HeadersLike)
    origins: Sequence[str | None] | str | None
    origin: str | None
    max_pending: int
    on_connect: Callable[[Any], Any] | None
    process_request: Callable[[str, Any], Any] | None
    server_header: str | None
    user_agent: str | None
    backend: ModuleType | None


class ClientOptions(_SharedOptions, total=False):
    """A client's options (``reconnect`` is a parameter of its own, which picks the return type)."""

    ssl: bool | SSLContext | None
    proxy: str | bool | None
    sock: socket.socket | None
    unix: str | bytes | PathLike[str] | PathLike[bytes] | None
    ack: bool | Callable[[Any], int]


class _ServerOptions(_SharedOptions, total=False):
    ssl: SSLContext | Literal[False] | None
    reconnect: bool | Mapping[str, Any] | ReconnectPolicy | None
    unix: str | bytes | PathLike[str] | PathLike[bytes] | None
    backlog: int
    reuse_port: bool


class ServerOptions(_ServerOptions, total=False):
    """The blocking server's options."""

    thread_stack_size: int
    shutdown_grace: float


class AsyncServerOptions(_ServerOptions, total=False):
    """The asyncio server's options."""

    reuse_address: bool | None
    sock: socket.socket | None
