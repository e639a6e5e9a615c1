"""Connection options shared by both sides and both I/O styles (SPEC.md "Options")."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable

__all__ = ["Options", "make_options"]


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
        if self.max_size is not None and self.max_size < 0:
            raise ValueError("max_size must be >= 0 or None")
        if self.max_queue is not None and self.max_queue < 1:
            raise ValueError("max_queue must be >= 1 or None")
        if self.write_limit < 0:
            raise ValueError("write_limit must be >= 0")
        if isinstance(self.subprotocols, str):
            self.subprotocols = [self.subprotocols]


_NAMES = frozenset(f.name for f in fields(Options)) - {"extra"}


def make_options(options: dict[str, Any], *, allow: tuple[str, ...] = ()) -> Options:
    """Build ``Options`` from keyword arguments, rejecting unknown names with TypeError."""
    known = {}
    extra = {}
    for key, value in options.items():
        if key in _NAMES:
            known[key] = value
        elif key in allow:
            extra[key] = value
        else:
            raise TypeError(f"unexpected option {key!r}")
    return Options(**known, extra=extra)
