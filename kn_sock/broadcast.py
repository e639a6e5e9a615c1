"""``broadcast()``: one message to many connections, built once, never waiting for anyone.

Works with server- and client-side connections of both I/O styles (``AsyncWebSocket`` and
the blocking ``WebSocket``, even mixed) and is a plain function: no ``await``, no blocking.

Why it is cheap: a server's frames are not masked (RFC 6455 §5.1), so one frame serves
every connection and is written by reference, not copied. A connection that negotiated
permessage-deflate gets the same uncompressed frame with RSV1 clear, which RFC 7692 §6
allows message by message, so no per-connection compression runs either. Only client-side
connections (masked, §5.3) need a frame of their own.

Why one slow client cannot hurt the others: the frame is written to each connection's
buffer without waiting; a connection with unsent bytes that the frame would take past
``limit`` is skipped (one with nothing unsent always takes it, whatever its size)
(``policy="skip"``), or failed with 1008 (``policy="close"``: its buffer is then dropped
after ``close_timeout`` at the latest), so server memory per client stays below ``limit``
plus one message.
"""

from __future__ import annotations

import logging
import os
import sys
import types
from typing import Any, Iterable, Literal

from . import _backend
from .frames import OP_BINARY, OP_TEXT

from ._types import Data  # annotations (resolvable at run time too, e.g. get_type_hints)

__all__ = ["broadcast", "DEFAULT_LIMIT"]

logger = logging.getLogger("kn_sock")

#: Default bound on a connection's unsent bytes, past which ``broadcast`` skips it.
DEFAULT_LIMIT = 2**20

_OK, _SLOW, _NOT_OPEN, _BUSY = 0, 1, 2, 3
_DIRECT = os.name == "posix"  # asyncio connections on plain sockets: one send_many() for all


def broadcast(connections: Iterable[Any], message: Data, *, limit: int = DEFAULT_LIMIT, policy: Literal["skip", "close"] = "skip") -> list[Any]:
    """Send ``message`` (str → text, bytes-like → binary) to every open connection, without waiting.

    Connections that are closing or closed are passed over silently (like
    ``websockets.broadcast``). A connection is *skipped* when it has unsent bytes and
    writing the frame would take them past ``limit`` (an idle connection always gets the
    message, even one larger than ``limit``), or when it is in the middle of sending a fragmented
    message (a frame cannot be put between two fragments, RFC 6455 §5.4).

    Args:
        connections: any iterable of ``AsyncWebSocket`` / ``WebSocket`` (e.g. a set kept
            by the handler).
        message: the message.
        limit: per-connection bound on unsent bytes, default 1 MiB.
        policy: ``"skip"``: leave a slow connection out of this message; ``"close"``:
            also fail it with close code 1008 (policy violation).

    Returns:
        The connections that did not get the message because they were too slow (or busy
        with a fragmented message). Logged on the ``kn_sock`` logger: at INFO when a
        connection is closed, or starts being skipped, and when it takes messages again; the
        skips in between at DEBUG.

    Raises:
        TypeError: ``message`` is neither str nor bytes-like.
        ValueError: an unknown ``policy`` or a negative ``limit``.
    """
    if policy == "skip":
        close_code = None
    elif policy == "close":
        close_code = 1008
    else:
        raise ValueError(f"policy must be 'skip' or 'close', not {policy!r}")
    if limit < 0:
        raise ValueError("limit must be >= 0")
    if isinstance(message, str):
        opcode, data = OP_TEXT, message.encode("utf-8")
    elif isinstance(message, (bytes, bytearray, memoryview)):
        opcode, data = OP_BINARY, bytes(message)
    else:
        raise TypeError(f"message must be str or bytes-like, not {type(message).__name__}")
    shared: bytes | None = None  # the one unmasked, uncompressed frame
    left_out = []
    # asyncio connections whose socket has nothing buffered: written all at once below by
    # send_many (C loop, GIL released) rather than one transport.write() each.
    direct: list[Any] | None = [] if _DIRECT else None
    # A snapshot: a blocking server's ``connections`` changes in other threads (handlers
    # coming and going) while this loop runs.
    for ws in list(connections):
        proto = ws.protocol
        if proto is None:
            continue
        if proto.is_client:
            status = ws._write_frame(None, message, limit, close_code)
        else:
            if shared is None:
                shared = _backend.backend.build_frame(opcode, data, True, False, None)
            status = ws._write_frame(shared, None, limit, close_code, direct)
        if status == _SLOW or status == _BUSY:
            left_out.append(ws)
            if status == _SLOW and close_code is not None:
                logger.info("broadcast: closed %s with %d: over %d unsent bytes", ws.remote_address, close_code, limit)
            else:
                # One INFO line when a connection starts missing messages and one when it takes
                # them again; the skips in between at DEBUG (a stalled client of a busy feed
                # would otherwise log every message).
                why = "busy sending a fragmented message" if status == _BUSY else f"over {limit} unsent bytes"
                skipped = proto.skipped_broadcasts
                proto.skipped_broadcasts = skipped + 1
                if skipped:
                    logger.debug("broadcast: skipped %s: %s", ws.remote_address, why)
                else:
                    logger.info("broadcast: skipped %s: %s (the next skips are logged at DEBUG)", ws.remote_address, why)
        elif status == _OK and proto.skipped_broadcasts:
            logger.info("broadcast: %s takes messages again, %d skipped", ws.remote_address, proto.skipped_broadcasts)
            proto.skipped_broadcasts = 0
    if direct:
        assert shared is not None
        size = len(shared)
        for ws, sent in zip(direct, _backend.backend.send_many([ws._fd for ws in direct], shared)):
            if sent < size:  # the kernel took part or none of it (or failed): the transport takes over
                ws._twrite(memoryview(shared)[sent:] if sent > 0 else shared)
    return left_out


class _CallableModule(types.ModuleType):
    """``kn_sock.broadcast`` is both this module and the function (see ``kn_sock._LAZY``):
    importing the submodule makes Python bind the *module* to the package attribute, so the
    module forwards calls to the function and ``kn_sock.broadcast(...)`` works either way."""

    def __call__(self, *args: Any, **kwargs: Any) -> list[Any]:
        return broadcast(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
