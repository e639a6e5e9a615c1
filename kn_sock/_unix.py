"""Unix socket files of the servers: a stale one removed before binding, ours after closing."""

from __future__ import annotations

import os
import stat
from typing import Any


def _abstract(path: Any) -> bool:
    """Linux's abstract socket names (a leading NUL) have no file."""
    return isinstance(path, (str, bytes)) and path[:1] in ("\0", b"\0")


def remove_stale_socket(path: Any) -> None:
    """Remove ``path`` if it is a socket file (a previous run's), before binding to it."""
    if _abstract(path):
        return
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def socket_inode(path: Any) -> int | None:
    """The inode of the socket file just bound at ``path`` (see ``remove_unix_socket``); None
    for an abstract name (Linux, a leading NUL: no file) or a path that cannot be looked at."""
    if not isinstance(path, (str, bytes, os.PathLike)) or _abstract(path):
        return None
    try:
        return os.stat(path).st_ino
    except (OSError, ValueError):
        return None


def remove_unix_socket(path: Any, inode: int) -> None:
    """Remove the socket file a closing server bound, unless another has replaced it since."""
    try:
        if os.stat(path).st_ino == inode:
            os.unlink(path)
    except OSError:  # gone already (asyncio 3.13+ removes it too), or not ours to remove
        pass
