"""Unix sockets: the servers' socket files (a stale one removed before binding, ours after
closing) and the clients' connect, which waits for room in a full listen backlog."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import stat
import struct
import time
from typing import Any

# A non-blocking connect to a Unix listener whose backlog is full fails with EAGAIN (Linux)
# where TCP would retransmit its SYN and wait; the clients wait too, within open_timeout.
_RETRY_FIRST = 0.001
_RETRY_MAX = 0.05
_NO_TIMEOUT = 2.0**31  # seconds: beyond a timeval's reach on every platform, no bound


def unix_connect(path: Any, timeout: float | None) -> socket.socket:
    """A stream socket connected to the Unix socket at ``path`` within ``timeout`` seconds."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        target = os.fspath(path)  # (socket.connect takes no PathLike)
        bounded = timeout is not None and timeout < _NO_TIMEOUT
        deadline = time.monotonic() + timeout if bounded else None  # type: ignore[operator]
        while True:
            if deadline is not None:
                # Blocking, bounded by SO_SNDTIMEO: Linux waits that long for room in a full
                # backlog (a socket timeout would make it non-blocking: EAGAIN at once). (0
                # would mean no bound: at least a microsecond.)
                left = max(deadline - time.monotonic(), 0.0)
                sec = int(left)
                usec = max(int((left - sec) * 1e6), 0 if sec else 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("@ll", sec, usec))
            try:
                sock.connect(target)  # unbounded: the kernel waits for room in the backlog
            except BlockingIOError:
                raise socket.timeout("timed out") from None
            try:
                sock.getpeername()
                break
            except OSError as exc:
                # A signal interrupted the kernel's wait and CPython, polling the socket as for
                # a TCP connect in progress, took it for connected (audit 86): wait again.
                if exc.errno != errno.ENOTCONN:
                    raise
                if deadline is not None and time.monotonic() >= deadline:
                    raise socket.timeout("timed out") from None
        if deadline is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("@ll", 0, 0))
    except BaseException:
        sock.close()
        raise
    return sock


async def async_unix_connect(path: Any) -> socket.socket:
    """A non-blocking stream socket connected to the Unix socket at ``path``; while the
    listener's backlog is full, it retries (the caller bounds the wait)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        target = os.fspath(path)
        delay = _RETRY_FIRST
        while True:
            try:
                sock.connect(target)
                return sock
            except BlockingIOError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
    except BaseException:
        sock.close()
        raise


def _abstract(path: Any) -> bool:
    """Linux's abstract socket names (a leading NUL) have no file."""
    return isinstance(path, (str, bytes)) and path[:1] in ("\0", b"\0")


def remove_stale_socket(path: Any) -> None:
    """Remove ``path`` if it is a stale socket file (a previous run's), before binding to it.

    Raises:
        OSError: EADDRINUSE when a server still listens on it (a connect succeeds): removing
            its file would leave it running, unreachable (websockets.sync refuses too).
    """
    if _abstract(path):
        return
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return  # not a socket: binding fails on it, as it should
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)  # a full backlog: EAGAIN at once, which means alive too
    try:
        probe.connect(os.fspath(path))
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # nobody listens: stale
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINPROGRESS):
            raise OSError(errno.EADDRINUSE, f"a server is listening on {os.fsdecode(path)!r} already") from None
        return  # (EACCES, say): leave the file alone; binding reports the problem
    else:
        raise OSError(errno.EADDRINUSE, f"a server is listening on {os.fsdecode(path)!r} already")
    finally:
        probe.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


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
