"""What the kernel knows of a TCP socket's sending (Linux; None or 0 elsewhere): keepalive
uses it to tell a peer still reading towards our ping from a dead one."""

from __future__ import annotations

import socket
import struct
import sys
from typing import Any

__all__ = ["bytes_acked", "kernel_unsent", "reset_if_unsent", "retransmitting"]

#: ioctl request for the bytes a socket's kernel send queue holds, sent or not but not yet
#: acknowledged (Linux: SIOCOUTQ, which is TIOCOUTQ's number); None elsewhere.
_SIOCOUTQ: int | None = None
#: struct tcp_info: offset of tcpi_bytes_acked (u64, Linux 4.2+; after 26 u8/u32 fields and
#: the u64 pacing rates), and the size asked for.
_ACKED_AT = 120
_INFO_SIZE = 128
_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None) if sys.platform.startswith("linux") else None
if sys.platform.startswith("linux"):
    try:
        import fcntl
        import termios

        _SIOCOUTQ = termios.TIOCOUTQ
    except (ImportError, AttributeError):  # pragma: no cover
        pass


def kernel_unsent(sock: Any) -> int:
    """Bytes the kernel holds to send on ``sock`` (a socket object or None), not yet
    acknowledged by the peer; 0 where that cannot be known."""
    if _SIOCOUTQ is None or sock is None:
        return 0
    try:
        return int.from_bytes(fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0"), sys.byteorder, signed=True)
    except (AttributeError, OSError, ValueError):
        return 0


#: struct linger {l_onoff = 1, l_linger = 0}: close() sends a reset and frees the send queue.
_LINGER_NONE = struct.pack("ii", 1, 0)


def reset_if_unsent(sock: Any) -> None:
    """Before dropping ``sock`` after a timeout (its peer did not finish the closing handshake
    in time): if the kernel still holds bytes to send, make closing it send a TCP reset.

    A peer that stopped reading leaves up to the kernel's send buffer (MiBs, autotuned) unsent;
    a plain close() keeps them in an orphaned socket that the kernel retries for minutes. A
    reset frees them at once (as nginx's ``reset_timedout_connection``). A peer that has taken
    everything still gets an orderly FIN."""
    if kernel_unsent(sock) <= 0:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_NONE)
    except (AttributeError, OSError, ValueError):  # pragma: no cover - a closed socket
        pass


def bytes_acked(sock: Any) -> int | None:
    """How many bytes the peer's TCP has acknowledged on ``sock`` so far (it grows as the peer
    reads once its receive buffer is full); None where that cannot be known."""
    if _TCP_INFO is None or sock is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _INFO_SIZE)
    except (AttributeError, OSError, ValueError, TypeError):
        return None
    if len(info) < _ACKED_AT + 8:  # a kernel before 4.2
        return None
    acked: int = struct.unpack_from("=Q", info, _ACKED_AT)[0]
    return acked


#: struct tcp_info: offset of tcpi_retransmits (RTO retransmissions of the oldest data not
#: acknowledged, reset by an acknowledgement). (Not tcpi_probes: a zero-window probe stays
#: counted for a while however promptly a live peer answers it.)
_RETRANSMITS_AT = 2


def retransmitting(sock: Any) -> bool | None:
    """Whether the kernel is retransmitting data on ``sock`` that the peer has not
    acknowledged within its timeout: the peer, or the path to it, has gone quiet (a peer whose
    window is closed still answers). None where unknown."""
    if _TCP_INFO is None or sock is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _RETRANSMITS_AT + 1)
    except (AttributeError, OSError, ValueError, TypeError):
        return None
    if len(info) <= _RETRANSMITS_AT:
        return None
    return bool(info[_RETRANSMITS_AT])
