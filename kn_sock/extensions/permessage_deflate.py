"""permessage-deflate (RFC 7692): negotiation and per-message compression.

Frames in, frames out: this module knows nothing of sockets or of the frame format. The
handshake code asks a factory for an offer or an answer; the protocol code then hands every
frame of a compressed message to :meth:`PerMessageDeflate.decompress` (incoming) or gets the
payload of every outgoing frame from :meth:`PerMessageDeflate.compress`.

Parameters are ``list[tuple[str, str | None]]``, already parsed from the
``Sec-WebSocket-Extensions`` header: values unquoted, ``None`` for a parameter without value.

Memory. A connection pays for zlib only while it uses it: both zlib objects are created on
first use, and dropped after every message when no context takeover applies. With the server
defaults (window bits 12, ``memLevel`` 4) the compressor needs
``(1 << (windowBits + 2)) + (1 << (memLevel + 9))`` = 24 KiB plus ~6 KiB of state, and the
decompressor a 4 KiB window plus ~7 KiB of state. Measured with tracemalloc (zlib allocates
through ``PyMem_RawMalloc``): ~1.5 KiB for a negotiated but idle connection, ~43 KiB retained
once it has received and sent a message, ~71 KiB when the client did not offer
``client_max_window_bits`` (a 15-bit, 32 KiB decompressor window), against ~303 KiB with
zlib's defaults (15 bits, ``memLevel`` 8). Hence the ~80 KiB-per-connection target and these
defaults (websockets uses ``memLevel`` 5: 8 KiB more a connection, for the same compressed
sizes here: 211,659 against 211,662 bytes for 3,000 JSON messages of 50-400 bytes).

Window bits 8. RFC 7692 allows 8..15, but zlib's ``deflateInit2`` rejects ``windowBits=8``
for raw deflate since 1.2.9 (madler/zlib#171), and older versions silently used a 9-bit
window while claiming 8. Hence:

* our decompressor never uses fewer than 9 bits (a larger window inflates anything a smaller
  one produced, and it tolerates peers that really used 9 bits while announcing 8);
* when we must compress with at most 8 bits we configure zlib with 9 bits. This is still
  valid for an 8-bit window: zlib's deflate never emits a distance beyond
  ``MAX_DIST = window size - 262`` (``MIN_LOOKAHEAD``), i.e. 250 bytes for 9 bits, below the
  256 bytes an 8-bit window holds (checked in the tests with a strict inflater).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

from ..exceptions import InvalidHandshake, InvalidHeader, PayloadTooBig, ProtocolError

__all__ = [
    "DEFAULT_COMPRESS_SETTINGS",
    "EXTENSION_NAME",
    "WORST_CASE_OVERHEAD",
    "ExtensionParams",
    "PerMessageDeflate",
    "ClientDeflateFactory",
    "ServerDeflateFactory",
]

EXTENSION_NAME = "permessage-deflate"

ExtensionParams = list[tuple[str, str | None]]

# RFC 7692 §7.2.1: a sender strips this empty stored block from the end of each message;
# §7.2.2: the receiver appends it back before inflating.
_TAIL = b"\x00\x00\xff\xff"

# RFC 7692 §7.2.3.6: an empty message compresses to a single 0x00 byte (an empty stored
# block with the 0x00 0x00 0xff 0xff tail stripped).
_EMPTY_MESSAGE = b"\x00"

# Below this size, appending the tail (one copy) is cheaper than a second decompress call.
# Deliberate micro-optimisation; both paths enforce max_size identically.
_SMALL_FRAME = 4096

# How much of a message at least a window long is deflated first, to tell whether the rest is
# worth deflating (see PerMessageDeflate.compress_message).
_PROBE = 1024

_KNOWN_PARAMS = frozenset(
    {
        "server_no_context_takeover",
        "client_no_context_takeover",
        "server_max_window_bits",
        "client_max_window_bits",
    }
)

# RFC 7692 §7.1.2: window bits are 8..15, written as plain decimal (no sign, no leading 0).
_WINDOW_BITS = {str(bits): bits for bits in range(8, 16)}
#: The window each side compresses with unless told otherwise: the server's default
#: ``server_max_window_bits`` / ``client_max_window_bits``, and what a client that offered
#: ``client_max_window_bits`` without a value (the default) uses.
_DEFAULT_WINDOW_BITS = 12

# Memory-lean defaults (see the module docstring): under ~80 KiB per connection.
DEFAULT_COMPRESS_SETTINGS: dict[str, Any] = {"memLevel": 4}


def WORST_CASE_OVERHEAD(n: int) -> int:  # noqa: N802 (name fixed by the frame parser)
    """The largest compressed size of an ``n``-byte message, however incompressible.

    The frame parser buffers at most this many compressed bytes for a message whose inflated
    size may be ``max_size``, so a message of exactly ``max_size`` is accepted whatever its
    compressed length.

    Why this bound: zlib's own conservative ``deflateBound()`` for any level, ``memLevel``,
    window and strategy is ``n + ((n + 7) >> 3) + ((n + 63) >> 6) + 5``: at worst every
    literal costs 9 bits in a fixed-Huffman block (the ``n / 8`` term) and blocks of at least
    64 bytes each cost a few header bytes (the ``n / 64`` term). Our formula is at least that
    (``(n + 7) >> 3 <= (n >> 3) + 1`` and likewise for ``>> 6``); the constant 64 also covers
    the 5–6 bytes a ``Z_SYNC_FLUSH`` adds (an empty stored block plus a partial byte) for the
    final frame and a handful of fragments. Measured with zlib 1.2.13 on random data, every
    level / memLevel / window / strategy stays below it (the worst ratio was 1.01 n + 10).

    Args:
        n: the uncompressed size in bytes (``max_size``).

    Returns:
        The bound in bytes.
    """
    return n + (n >> 3) + (n >> 6) + 64


def _check_window_bits(name: str, value: object) -> None:
    """Reject a configured window size outside RFC 7692's 8..15 (caller's mistake)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 8 <= value <= 15:
        raise ValueError(f"{name} must be an integer between 8 and 15, got {value!r}")


def _check_compress_settings(settings: dict[str, Any] | None) -> dict[str, Any]:
    """Return the settings to pass to ``zlib.compressobj`` (window bits are negotiated)."""
    if settings is None:
        return dict(DEFAULT_COMPRESS_SETTINGS)
    if "wbits" in settings:
        raise ValueError("compress_settings must not set wbits: it is negotiated")
    return dict(settings)


def _parse_params(params: Sequence[tuple[str, str | None]]) -> dict[str, str | None]:
    """Check names and repetitions of permessage-deflate parameters.

    Raises:
        ValueError: a parameter is unknown or repeated (RFC 7692 §7: the offer or response is
            then invalid). The factories turn this into a decline or a handshake failure.
    """
    seen: dict[str, str | None] = {}
    for name, value in params:
        if name not in _KNOWN_PARAMS:
            raise ValueError(f"unknown parameter {name!r}")
        if name in seen:
            raise ValueError(f"duplicate parameter {name!r}")
        seen[name] = value
    for name in ("server_no_context_takeover", "client_no_context_takeover"):
        if name in seen and seen[name] is not None:
            raise ValueError(f"{name} must not have a value, got {seen[name]!r}")
    value = seen.get("server_max_window_bits", "8")
    if value not in _WINDOW_BITS:
        raise ValueError(f"invalid server_max_window_bits {value!r}")
    value = seen.get("client_max_window_bits")
    if value is not None and value not in _WINDOW_BITS:
        raise ValueError(f"invalid client_max_window_bits {value!r}")
    return seen


def _window(value: str | None) -> int | None:
    return None if value is None else _WINDOW_BITS[value]


class PerMessageDeflate:
    """One connection's permessage-deflate state, for the frames of both directions.

    "Local" is what we send (our compressor), "remote" what the peer sends (our
    decompressor). Built by :class:`ClientDeflateFactory` / :class:`ServerDeflateFactory`.

    Attributes:
        name: ``"permessage-deflate"``.
        is_server: which side of the connection we are.
        local_no_context_takeover: we reset our compressor after every message.
        remote_no_context_takeover: the peer resets its compressor after every message, so we
            may (and do) drop our decompressor after every message.
        local_max_window_bits: the largest LZ77 window we may use (8..15).
        remote_max_window_bits: the largest LZ77 window the peer may use (8..15).
        compress_settings: extra ``zlib.compressobj`` arguments (``level``, ``memLevel``…).
        params: the parameters of the server's response that set up this agreement.
    """

    name = EXTENSION_NAME

    def __init__(
        self,
        *,
        is_server: bool,
        local_no_context_takeover: bool = False,
        remote_no_context_takeover: bool = False,
        local_max_window_bits: int = 15,
        remote_max_window_bits: int = 15,
        compress_settings: dict[str, Any] | None = None,
        params: Sequence[tuple[str, str | None]] | None = None,
    ) -> None:
        _check_window_bits("local_max_window_bits", local_max_window_bits)
        _check_window_bits("remote_max_window_bits", remote_max_window_bits)
        self.is_server = is_server
        self.local_no_context_takeover = bool(local_no_context_takeover)
        self.remote_no_context_takeover = bool(remote_no_context_takeover)
        self.local_max_window_bits = local_max_window_bits
        self.remote_max_window_bits = remote_max_window_bits
        self.compress_settings = _check_compress_settings(compress_settings)
        self.params: ExtensionParams = list(params) if params is not None else []
        # zlib objects: created lazily (an idle connection costs no zlib memory).
        self._compressor: Any = None
        self._decompressor: Any = None
        # Per incoming message: inflated bytes so far, compressed bytes so far.
        self._inflated = 0
        self._compressed = 0

    def __repr__(self) -> str:
        return (
            f"PerMessageDeflate(is_server={self.is_server}, "
            f"local_no_context_takeover={self.local_no_context_takeover}, "
            f"remote_no_context_takeover={self.remote_no_context_takeover}, "
            f"local_max_window_bits={self.local_max_window_bits}, "
            f"remote_max_window_bits={self.remote_max_window_bits})"
        )

    def response_params(self) -> ExtensionParams:
        """The parameters of the server's response that this agreement came from."""
        return list(self.params)

    # -- incoming -------------------------------------------------------------------------

    def _new_decompressor(self) -> Any:
        # Never fewer than 9 bits: see "Window bits 8" in the module docstring.
        return zlib.decompressobj(wbits=-max(9, self.remote_max_window_bits))

    def reset_decompress_state(self) -> None:
        """Forget the message being inflated and the decompressor (e.g. after an error)."""
        self._decompressor = None
        self._inflated = 0
        self._compressed = 0

    def decompress(self, data: bytes | bytearray | memoryview, fin: bool, max_size: int | None) -> bytes:
        """Inflate one frame of a compressed message (the first one had RSV1 set).

        Call it for every data frame of the message, in order. The inflated size of the whole
        message is checked *while* inflating: zlib is never asked for more than
        ``max_size - inflated_so_far + 1`` bytes, so a zip bomb costs at most ``max_size + 1``
        bytes of output before it is refused.

        Args:
            data: the frame's (unmasked) payload.
            fin: whether this is the message's last frame; then the 0x00 0x00 0xff 0xff tail is
                inflated too (RFC 7692 §7.2.2).
            max_size: the largest inflated message allowed; ``None`` for no limit.

        Returns:
            The bytes this frame inflates to.

        Raises:
            PayloadTooBig: the inflated message would exceed ``max_size`` (close code 1009).
            ProtocolError: the data is not a valid deflate stream (close code 1002).
        """
        decompressor = self._decompressor
        if decompressor is None:
            decompressor = self._decompressor = self._new_decompressor()
        self._compressed += len(data)
        if fin and self._compressed == 0:
            # Lenient: a sender that sends a zero-length payload for an empty message
            # instead of RFC 7692 §7.2.3.6's single 0x00 byte.
            data = _EMPTY_MESSAGE
        try:
            if fin and len(data) < _SMALL_FRAME:
                output = self._inflate(decompressor, bytes(data) + _TAIL, max_size)
            else:
                output = self._inflate(decompressor, data, max_size)
                if fin:
                    output += self._inflate(decompressor, _TAIL, max_size)
        except zlib.error as exc:
            self.reset_decompress_state()
            raise ProtocolError(f"invalid compressed data: {exc}", 1002) from exc
        except ProtocolError:
            self.reset_decompress_state()
            raise
        if fin:
            self._inflated = 0
            self._compressed = 0
            # A stream that ended with a BFINAL block cannot be continued: the next message
            # starts a fresh stream (RFC 7692 §7.2.3.4).
            if self.remote_no_context_takeover or decompressor.eof:
                self._decompressor = None
        return output

    def _inflate(self, decompressor: Any, data: bytes | bytearray | memoryview, max_size: int | None) -> bytes:
        if max_size is None:
            output: bytes = decompressor.decompress(data)
        else:
            budget = max_size - self._inflated
            if budget < 0:  # max_size lowered mid-message; 0 would mean "unlimited" to zlib
                raise PayloadTooBig(f"message exceeds max_size ({max_size} bytes) once inflated")
            # One byte more than allowed: getting it proves the message is too big, and
            # zlib stops there (the rest stays in unconsumed_tail, never inflated).
            output = decompressor.decompress(data, budget + 1)
            if len(output) > budget:
                raise PayloadTooBig(f"message exceeds max_size ({max_size} bytes) once inflated")
        if decompressor.eof and len(decompressor.unused_data) > len(_TAIL) + 1:
            # After a final (BFINAL) block a sender following RFC 7692 §7.2.1 step 2 leaves
            # one byte (an empty stored block's header, §7.2.3.4), then comes our tail.
            raise ProtocolError("invalid compressed data: bytes after the end of the deflate stream", 1002)
        self._inflated += len(output)
        return output

    # -- outgoing -------------------------------------------------------------------------

    def _new_compressor(self) -> Any:
        # 8 → 9: see "Window bits 8" in the module docstring (distances stay ≤ 250 bytes).
        return zlib.compressobj(wbits=-max(9, self.local_max_window_bits), **self.compress_settings)

    def compress(self, data: bytes | bytearray | memoryview, fin: bool = True) -> bytes:
        """Deflate one fragment of an outgoing message.

        Each fragment ends with a ``Z_SYNC_FLUSH`` so that it can be sent at once; on the last
        one the trailing 0x00 0x00 0xff 0xff is removed (RFC 7692 §7.2.1).

        Args:
            data: the fragment's payload.
            fin: whether this is the message's last fragment.

        Returns:
            The payload to send; the caller sets RSV1 on the message's first frame only.
        """
        compressor = self._compressor
        if compressor is None:
            compressor = self._compressor = self._new_compressor()
        output: bytes = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        if fin:
            # A sync flush always ends with an empty stored block; zlib emits one even when
            # it has nothing else to flush, so an empty message yields exactly b"\x00"
            # (RFC 7692 §7.2.3.6).
            if output.endswith(_TAIL):
                output = output[:-4]
            if not output:
                output = _EMPTY_MESSAGE
            if self.local_no_context_takeover:
                self._compressor = None
        return output

    def compress_message(self, data: bytes | bytearray | memoryview) -> bytes | None:
        """Deflate a whole message, or return None when it should go uncompressed.

        A message at least as long as our window that deflate does not shrink (random bytes,
        media, data compressed already) is better sent as it is (RFC 7692 §6: an endpoint may
        send any message uncompressed): the peer skips inflating it, and its size limit sees
        the message's own length, not deflate's overhead (websockets applies ``max_size`` to
        the compressed frame, refusing an incompressible message of exactly ``max_size``).
        Such a message is told by its first ``_PROBE`` bytes, deflated first (and ended with
        a ``Z_BLOCK`` flush, which adds no bytes of its own): when they do not shrink, the rest
        is not deflated at all. Deflating incompressible data is deflate's slowest case
        (~3.8 ms a 64 KiB message here, ~60 us the probe), and a prefix foretells the whole
        well (within 0.04 of its ratio on random, binary, JSON and base64 data here); when
        the probe shrinks, its output is the start of the message's own, so nothing is lost.
        The compressor starts afresh after an uncompressed message, so that it never refers
        back to bytes the peer did not inflate; being that long, the message had filled the
        window, so no context worth keeping is lost.
        """
        size = data.nbytes if type(data) is memoryview else len(data)  # (items of a typed array)
        if size < 1 << max(9, self.local_max_window_bits):
            return self.compress(data, True)
        compressor = self._compressor
        if compressor is None:
            compressor = self._compressor = self._new_compressor()
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")  # (bytes: a typed array's slices would count items)
        head: bytes = compressor.compress(view[:_PROBE]) + compressor.flush(zlib.Z_BLOCK)
        if len(head) >= _PROBE:
            self._compressor = None
            return None
        output = head + self.compress(view[_PROBE:], True)
        if len(output) >= size:
            self._compressor = None
            return None
        return output


def _negotiated_failure(message: str) -> InvalidHandshake:
    return InvalidHandshake(f"permessage-deflate: {message}", status=400)


class ClientDeflateFactory:
    """The client's permessage-deflate offer and its check of the server's response.

    Args:
        server_no_context_takeover: ask the server to reset its compressor after every message.
        client_no_context_takeover: announce that we reset ours after every message.
        server_max_window_bits: ask the server to use at most this window (8..15).
        client_max_window_bits: ``True`` to let the server limit our window (offered without
            value), an int 8..15 to announce our own limit, ``None`` (or ``False``) to leave it
            out, which also forbids the server to limit it.
        compress_settings: extra ``zlib.compressobj`` arguments (default ``{"memLevel": 4}``).

    Raises:
        ValueError: a setting is out of range, or ``compress_settings`` sets ``wbits``.
    """

    name = EXTENSION_NAME

    def __init__(
        self,
        *,
        server_no_context_takeover: bool = False,
        client_no_context_takeover: bool = False,
        server_max_window_bits: int | None = None,
        client_max_window_bits: int | bool | None = True,
        compress_settings: dict[str, Any] | None = None,
    ) -> None:
        if client_max_window_bits is False:
            client_max_window_bits = None  # int | bool | None: False reads as "don't offer"
        if server_max_window_bits is not None:
            _check_window_bits("server_max_window_bits", server_max_window_bits)
        if client_max_window_bits is not None and client_max_window_bits is not True:
            _check_window_bits("client_max_window_bits", client_max_window_bits)
        self.server_no_context_takeover = server_no_context_takeover
        self.client_no_context_takeover = client_no_context_takeover
        self.server_max_window_bits = server_max_window_bits
        self.client_max_window_bits = client_max_window_bits
        self.compress_settings = _check_compress_settings(compress_settings)

    def offer(self) -> ExtensionParams:
        """The parameters of our offer (RFC 7692 §7.1)."""
        params: ExtensionParams = []
        if self.server_no_context_takeover:
            params.append(("server_no_context_takeover", None))
        if self.client_no_context_takeover:
            params.append(("client_no_context_takeover", None))
        if self.server_max_window_bits is not None:
            params.append(("server_max_window_bits", str(self.server_max_window_bits)))
        if self.client_max_window_bits is True:
            params.append(("client_max_window_bits", None))
        elif self.client_max_window_bits is not None:
            params.append(("client_max_window_bits", str(self.client_max_window_bits)))
        return params

    def accept_response(self, params: Sequence[tuple[str, str | None]]) -> PerMessageDeflate:
        """Check the server's response to our offer and build the extension.

        Args:
            params: the parameters of the ``permessage-deflate`` element of the response.

        Returns:
            The connection's :class:`PerMessageDeflate`.

        Raises:
            InvalidHeader: a parameter is unknown, repeated or has an invalid value.
            InvalidHandshake: the response is valid but does not answer our offer
                (RFC 7692 §7.1: the client must then fail the connection).
        """
        try:
            seen = _parse_params(params)
        except ValueError as exc:
            raise InvalidHeader(f"Sec-WebSocket-Extensions: permessage-deflate: {exc}", status=400) from None

        # §7.1.1.1: the server accepts server_no_context_takeover by echoing it.
        server_nct = "server_no_context_takeover" in seen
        if self.server_no_context_takeover and not server_nct:
            raise _negotiated_failure("server_no_context_takeover was requested but not accepted")
        # §7.1.1.2: the server may ask for client_no_context_takeover even if not offered.
        client_nct = self.client_no_context_takeover or "client_no_context_takeover" in seen

        # §7.1.2.1: a requested limit must be answered with a value no greater.
        server_bits = _window(seen.get("server_max_window_bits"))
        if self.server_max_window_bits is not None:
            if server_bits is None:
                raise _negotiated_failure("server_max_window_bits was requested but not accepted")
            if server_bits > self.server_max_window_bits:
                raise _negotiated_failure(
                    f"server_max_window_bits={server_bits} exceeds the requested {self.server_max_window_bits}"
                )

        # §7.1.2.2: only if offered, always with a value, never above an offered value.
        if "client_max_window_bits" in seen:
            client_bits = _window(seen["client_max_window_bits"])
            if self.client_max_window_bits is None:
                raise _negotiated_failure("client_max_window_bits in the response but not in the offer")
            if client_bits is None:
                raise InvalidHeader(
                    "Sec-WebSocket-Extensions: permessage-deflate: client_max_window_bits needs a value",
                    status=400,
                )
            if self.client_max_window_bits is not True and client_bits > self.client_max_window_bits:
                raise _negotiated_failure(
                    f"client_max_window_bits={client_bits} exceeds the offered {self.client_max_window_bits}"
                )
        elif self.client_max_window_bits is None or self.client_max_window_bits is True:
            client_bits = 15
        else:
            client_bits = self.client_max_window_bits
        if self.client_max_window_bits is True:
            # A limit is an upper bound (§7.1.2.2): with none of our own, compress with the
            # server side's default window, 12 bits (~30 KiB of compressor, not ~140 KiB), as
            # documented, whatever the server allows (audit: aiohttp's servers allow 15).
            client_bits = min(client_bits, _DEFAULT_WINDOW_BITS)

        return PerMessageDeflate(
            is_server=False,
            local_no_context_takeover=client_nct,
            remote_no_context_takeover=server_nct,
            local_max_window_bits=client_bits,
            remote_max_window_bits=server_bits if server_bits is not None else 15,
            compress_settings=self.compress_settings,
            params=params,
        )


class ServerDeflateFactory:
    """The server's answer to a client's permessage-deflate offer.

    Args:
        server_no_context_takeover: reset our compressor after every message (and say so).
        client_no_context_takeover: require the client to reset its compressor.
        server_max_window_bits: the largest window we compress with (``None``: 15, unsaid).
            A smaller value requested by the client wins.
        client_max_window_bits: the window we ask the client to keep to, when the client's
            offer lets us (``None``: no request).
        require_client_max_window_bits: decline offers without ``client_max_window_bits``
            (they force a 32 KiB decompression window on us).
        compress_settings: extra ``zlib.compressobj`` arguments (default ``{"memLevel": 4}``).

    Raises:
        ValueError: a setting is out of range, or ``compress_settings`` sets ``wbits``.
    """

    name = EXTENSION_NAME

    def __init__(
        self,
        *,
        server_no_context_takeover: bool = False,
        client_no_context_takeover: bool = False,
        server_max_window_bits: int | None = _DEFAULT_WINDOW_BITS,
        client_max_window_bits: int | None = _DEFAULT_WINDOW_BITS,
        require_client_max_window_bits: bool = False,
        compress_settings: dict[str, Any] | None = None,
    ) -> None:
        if server_max_window_bits is not None:
            _check_window_bits("server_max_window_bits", server_max_window_bits)
        if client_max_window_bits is not None:
            _check_window_bits("client_max_window_bits", client_max_window_bits)
        self.server_no_context_takeover = server_no_context_takeover
        self.client_no_context_takeover = client_no_context_takeover
        self.server_max_window_bits = server_max_window_bits
        self.client_max_window_bits = client_max_window_bits
        self.require_client_max_window_bits = require_client_max_window_bits
        self.compress_settings = _check_compress_settings(compress_settings)

    def accept_offer(
        self, params: Sequence[tuple[str, str | None]]
    ) -> tuple[ExtensionParams, PerMessageDeflate] | None:
        """Answer one client offer, or decline it.

        Args:
            params: the parameters of one ``permessage-deflate`` element of the request.

        Returns:
            ``(response_params, extension)``, or ``None`` to decline this offer (RFC 7692 §5:
            invalid, unknown or repeated parameters, or an offer we cannot accept); the server
            then tries the client's next offer or proceeds without compression.
        """
        try:
            seen = _parse_params(params)
        except ValueError:
            return None

        server_nct = self.server_no_context_takeover or "server_no_context_takeover" in seen
        client_nct = self.client_no_context_takeover or "client_no_context_takeover" in seen

        # §7.1.2.1: honour a smaller requested window; we may state ours unasked.
        requested = _window(seen.get("server_max_window_bits"))
        server_bits = self.server_max_window_bits
        if requested is not None:
            server_bits = requested if server_bits is None else min(requested, server_bits)

        # §7.1.2.2: we may only limit the client's window if its offer has the parameter;
        # without it the client may use 15 bits and we must inflate 15-bit windows.
        answer_client_bits: int | None = None
        if "client_max_window_bits" not in seen:
            if self.require_client_max_window_bits:
                return None
            client_bits = 15
        else:
            offered = _window(seen["client_max_window_bits"])
            if self.client_max_window_bits is None:
                client_bits = 15 if offered is None else offered
            else:
                client_bits = self.client_max_window_bits
                if offered is not None:
                    client_bits = min(offered, client_bits)
                answer_client_bits = client_bits

        response: ExtensionParams = []
        if server_nct:
            response.append(("server_no_context_takeover", None))
        if client_nct:
            response.append(("client_no_context_takeover", None))
        if server_bits is not None:
            response.append(("server_max_window_bits", str(server_bits)))
        if answer_client_bits is not None:
            response.append(("client_max_window_bits", str(answer_client_bits)))

        extension = PerMessageDeflate(
            is_server=True,
            local_no_context_takeover=server_nct,
            remote_no_context_takeover=client_nct,
            local_max_window_bits=server_bits if server_bits is not None else 15,
            remote_max_window_bits=client_bits,
            compress_settings=self.compress_settings,
            params=response,
        )
        return response, extension
