"""Wire-format constants of RFC 6455: opcodes, close codes and the close frame payload."""

from __future__ import annotations

import struct
from enum import IntEnum

from .exceptions import ProtocolError

__all__ = [
    "Opcode",
    "CloseCode",
    "OP_CONT",
    "OP_TEXT",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "is_valid_close_code",
    "parse_close",
    "build_close",
]

OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA


class Opcode(IntEnum):
    """Frame opcodes (RFC 6455 §5.2)."""

    CONT = OP_CONT
    TEXT = OP_TEXT
    BINARY = OP_BINARY
    CLOSE = OP_CLOSE
    PING = OP_PING
    PONG = OP_PONG


class CloseCode(IntEnum):
    """Close status codes (RFC 6455 §7.4.1 and the IANA registry)."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RCVD = 1005  # never on the wire
    ABNORMAL_CLOSURE = 1006  # never on the wire
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015  # never on the wire


# Codes a close frame may carry (RFC 6455 §7.4.1, §7.4.2; 1012-1014 registered by IANA).
_WIRE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})
_unpack_code = struct.Struct("!H").unpack_from
_pack_code = struct.Struct("!H").pack


def is_valid_close_code(code: int) -> bool:
    """Tell whether ``code`` may appear in a close frame (1000-1003, 1007-1014, 3000-4999)."""
    return code in _WIRE_CODES or 3000 <= code <= 4999


def parse_close(payload: bytes) -> tuple[int, str]:
    """Decode a close frame payload into ``(code, reason)``; 1005 when it carries no code.

    Raises:
        ProtocolError: 1002 for a 1-byte payload or a code not allowed on the wire,
            1007 when the reason is not valid UTF-8 (RFC 6455 §5.5.1).
    """
    n = len(payload)
    if n == 0:
        return 1005, ""  # a plain int, as every other code (CloseCode members compare equal)
    if n == 1:
        raise ProtocolError("close frame payload of 1 byte", 1002)
    (code,) = _unpack_code(payload)
    if not is_valid_close_code(code):
        raise ProtocolError(f"invalid close code {code}", 1002)
    try:
        reason = bytes(payload[2:]).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("invalid UTF-8 in close reason", 1007) from None
    return code, reason


def build_close(code: int, reason: str = "") -> bytes:
    """Encode a close frame payload; 1005 means "no status" and gives an empty payload.

    Raises:
        ValueError: for a code that may not be sent or a reason over 123 bytes of UTF-8.
        TypeError: a code that is not an int, a reason that is not a str.
    """
    if not isinstance(code, int):
        raise TypeError(f"close code must be an int, not {type(code).__name__}")
    if code == CloseCode.NO_STATUS_RCVD:
        if reason:
            raise ValueError("a reason needs a close code")
        return b""
    if not is_valid_close_code(code):
        raise ValueError(f"invalid close code {code}")
    if not isinstance(reason, str):
        raise TypeError(f"close reason must be str, not {type(reason).__name__}")
    data = reason.encode("utf-8")
    if len(data) > 123:
        raise ValueError("close reason must be at most 123 bytes of UTF-8")
    return _pack_code(code) + data
