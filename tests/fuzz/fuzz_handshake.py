"""atheris target: the opening handshake (RFC 6455 §4, RFC 7692 §5 negotiation).

Input layout: byte 0 picks the target (``% 4``: RequestParser, ResponseParser,
ServerHandshake, ClientHandshake), byte 1 the chunk size (1..256), the rest is the HTTP
bytes the peer sends, fed in chunks. For the ClientHandshake, ``{ACCEPT}`` in the input is
replaced by the right ``Sec-WebSocket-Accept`` value so the fuzzer gets past that check into
subprotocol and extension negotiation.

Oracle: the only exception is ``InvalidHandshake`` (or its subclasses), with an HTTP status
the server can answer; once raised, every later call raises the same error; ``reject_from``
always produces a response; an accepted handshake is self-consistent (the subprotocol is one
we offered, extensions are permessage-deflate objects with window bits in 8..15).

Run: ``python tests/fuzz/fuzz_handshake.py -max_total_time=60 [corpus_dir]``.
"""

from __future__ import annotations

import sys

from kn_sock.exceptions import InvalidHandshake
from kn_sock.extensions.permessage_deflate import PerMessageDeflate
from kn_sock.handshake import ClientHandshake, ServerHandshake
from kn_sock.http11 import MAX_BODY, RequestParser, ResponseParser, accept_key
from kn_sock.uri import parse_uri

__all__ = ["check", "seeds", "TestOneInput"]

SUBPROTOCOLS = ["chat", "superchat"]
SERVER_STATUSES = {400, 403, 405, 426, 431}
WSURI = parse_uri("ws://example.com:8080/chat?x=1")


def _chunks(stream: bytes, size: int) -> list[bytes]:
    return [stream[i : i + size] for i in range(0, len(stream), size)] or [b""]


def _feed(feed, pieces: list[bytes]):  # type: ignore[no-untyped-def]
    """Feed every piece; return (result, error). After an error, later feeds must re-raise it."""
    result = None
    for index, piece in enumerate(pieces):
        try:
            result = feed(piece)
        except InvalidHandshake as exc:
            for rest in pieces[index + 1 : index + 3]:
                try:
                    feed(rest)
                except InvalidHandshake as again:
                    assert again is exc, "a later call raised another error"
                else:
                    raise AssertionError("a later call did not raise the error again")
            return None, exc
    return result, None


def _check_server_error(exc: InvalidHandshake) -> None:
    assert exc.status in SERVER_STATUSES, (exc.status, str(exc))


def _request_parser(pieces: list[bytes]) -> None:
    request, error = _feed(RequestParser().feed, pieces)
    if error is not None:
        _check_server_error(error)
    elif request is not None:
        assert isinstance(request.method, str) and request.path and isinstance(request.path, str)


def _response_parser(pieces: list[bytes]) -> None:
    response, _ = _feed(ResponseParser().feed, pieces)
    if response is not None:
        assert 100 <= response.status <= 599 and len(response.body) <= MAX_BODY


def _server_handshake(pieces: list[bytes]) -> None:
    hs = ServerHandshake(subprotocols=SUBPROTOCOLS, origins=None if pieces[0][:1] != b"O" else ["https://ok"])
    request, error = _feed(hs.receive_data, pieces)
    if error is None and request is not None:
        try:
            response = hs.accept(request)
        except InvalidHandshake as exc:
            error = exc
        else:
            assert response.startswith(b"HTTP/1.1 101 ")
            assert hs.subprotocol is None or hs.subprotocol in SUBPROTOCOLS
            for ext in hs.extensions:
                assert isinstance(ext, PerMessageDeflate)
                assert 8 <= ext.local_max_window_bits <= 15 and 8 <= ext.remote_max_window_bits <= 15
    if error is not None:
        _check_server_error(error)
        answer = hs.reject_from(error)
        assert answer.startswith(f"HTTP/1.1 {error.status} ".encode())


def _client_handshake(stream: bytes, size: int) -> None:
    hs = ClientHandshake(WSURI, subprotocols=SUBPROTOCOLS)
    stream = stream.replace(b"{ACCEPT}", accept_key(hs.key).encode())
    assert hs.data_to_send().startswith(b"GET /chat?x=1 HTTP/1.1\r\n")
    response, error = _feed(hs.receive_data, _chunks(stream, size))
    if error is None and response is not None:
        assert response.status == 101
        assert hs.subprotocol is None or hs.subprotocol in SUBPROTOCOLS
        assert len(hs.extensions) <= 1
        for ext in hs.extensions:
            assert isinstance(ext, PerMessageDeflate)
            assert 8 <= ext.local_max_window_bits <= 15 and 8 <= ext.remote_max_window_bits <= 15


def check(data: bytes) -> None:
    """Run the target ``data[0]`` picks (layout in the module docstring); assert the oracle."""
    if len(data) < 2:
        return
    target, size, stream = data[0] % 4, data[1] + 1, data[2:]
    if target == 0:
        _request_parser(_chunks(stream, size))
    elif target == 1:
        _response_parser(_chunks(stream, size))
    elif target == 2:
        _server_handshake(_chunks(stream, size))
    else:
        _client_handshake(stream, size)


def seeds() -> list[bytes]:
    """Starting inputs: valid and typical invalid requests and responses for each target."""
    request = (
        b"GET /chat?x=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n"
        b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\nOrigin: https://ok\r\nSec-WebSocket-Protocol: superchat, chat\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits; server_max_window_bits=10, "
        b"permessage-deflate\r\n\r\n\x81\x80abcd"
    )
    response = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: {ACCEPT}\r\nSec-WebSocket-Protocol: chat\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; "
        b"client_max_window_bits=12; server_max_window_bits=9\r\n\r\n\x81\x02hi"
    )
    refused = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nnope!"
    plain_get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    out = []
    for target, stream in ((0, request), (1, response), (1, refused), (2, request), (2, plain_get), (3, response)):
        out += [bytes([target, 255]) + stream, bytes([target, 6]) + stream]
    out.append(bytes([2 + 4 * 0x13, 255]) + request)  # "O" (0x4f) selects the Origin check
    return out


def TestOneInput(data: bytes) -> None:  # noqa: N802 (atheris' name)
    check(data)


def main() -> None:
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
