"""Type aliases of the public API's messages and options (annotations only)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterable, Callable, Iterable, Mapping, Sequence
from os import PathLike
from typing import TYPE_CHECKING, Any, TypeAlias, TypedDict, Union

if sys.version_info >= (3, 11):
    from typing import Unpack
elif TYPE_CHECKING:
    from typing_extensions import Unpack
else:  # 3.10 at run time, where typing_extensions may be missing: annotations only

    class Unpack:
        """``Unpack[X]`` is ``X`` (so that ``typing.get_type_hints`` resolves the options)."""

        def __class_getitem__(cls, item: Any) -> Any:
            return item

if TYPE_CHECKING:
    import socket
    from ssl import SSLContext
    from types import ModuleType

    from .http11 import HeadersLike
    from .reconnect import ReconnectPolicy

__all__ = ["AsyncServerOptions", "ClientOptions", "Data", "Message", "ServerOptions", "SyncMessage", "Unpack"]

#: One whole message: str → text, bytes-like → binary.
Data: TypeAlias = Union[str, bytes, bytearray, memoryview]
#: What the blocking ``send()`` takes: a whole message, or the fragments of one (all str or
#: all bytes-like, checked at run time: an item type per fragment lets mypy accept a list
#: mixing bytes and bytearray, which it would join to ``Sequence[int]`` otherwise).
SyncMessage: TypeAlias = Union[Data, Iterable[Data]]
#: What the asyncio ``send()`` takes: the same, or an async iterable of fragments.
Message: TypeAlias = Union[SyncMessage, AsyncIterable[Data]]


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
    headers: HeadersLike
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
    sock: socket.socket | None
    unix: str | bytes | PathLike[str] | PathLike[bytes] | None
    ack: bool | Callable[[Any], int]


class _ServerOptions(_SharedOptions, total=False):
    ssl: SSLContext | None
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
