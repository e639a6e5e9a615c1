"""Helpers shared by the blocking-layer tests (this module holds no tests itself).

- ``running_server(handler, **options)``: a ``WebSocketServer`` on 127.0.0.1 port 0 serving
  in a thread, shut down on exit; ``echo``, the handler most tests serve;
- ``raw_client(port)``: a TCP socket that completed the opening handshake by hand, with
  ``send_frame`` / ``recv_frame`` helpers (for peers that misbehave on purpose);
- ``raw_server()``: a listening socket whose ``accept_ws()`` completes the server handshake
  by hand and then does whatever the test says (usually nothing).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from typing import Any, Callable, Iterator

from kn_sock._pure import build_frame
from kn_sock.handshake import ClientHandshake, ServerHandshake
from kn_sock.sync import WebSocketServer
from kn_sock.uri import parse_uri

__all__ = ["echo", "running_server", "RawPeer", "raw_client", "raw_server", "wait_for"]


def echo(ws: Any, address: Any) -> None:
    """A blocking server handler that sends every message back."""
    for message in ws:
        ws.send(message)


@contextlib.contextmanager
def running_server(handler: Callable[..., Any], **options: Any) -> Iterator[WebSocketServer]:
    """A server on 127.0.0.1:0 serving in a daemon thread; shut down (and joined) on exit."""
    server = WebSocketServer(options.pop("host", "127.0.0.1"), 0, handler, **options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(5)
        assert not thread.is_alive()


def bio_tls_client(port: int, context: Any, server_hostname: str, timeout: float = 5.0) -> tuple[Any, Any, Any, Any]:
    """A TLS client over memory BIOs, its handshake done, holding back its last flight (in
    ``outgoing``): (tcp socket, SSLObject, incoming BIO, outgoing BIO). The caller decides
    when the TLS bytes go out, and how many (part of a record)."""
    import ssl

    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    while True:
        try:
            tls.do_handshake()
            return raw, tls, incoming, outgoing
        except ssl.SSLWantReadError:
            raw.sendall(outgoing.read())
            incoming.write(raw.recv(65536))


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released): for servers that
    cannot be given port 0 (a child process told its port, nginx)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_to_eof(sock: Any, size: int = 4096) -> bytes:
    """Everything ``sock`` (a socket or a TLS socket) receives until the peer's EOF."""
    data = b""
    while chunk := sock.recv(size):
        data += chunk
    return data


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll ``predicate`` until it is true (for state that has no event to wait on)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.005)


class RawPeer:
    """A socket that speaks WebSocket frames by hand."""

    def __init__(self, sock: socket.socket, client: bool, pending: bytes = b"") -> None:
        self.sock = sock
        self.client = client
        self.buf = bytearray(pending)
        self.chunk = 65536  # bytes asked of each recv()
        self.pause = 0.0  # seconds slept before each recv(): a slow reader

    def send_frame(self, opcode: int, payload: bytes = b"", fin: bool = True) -> None:
        mask = os.urandom(4) if self.client else None
        self.sock.sendall(build_frame(opcode, payload, fin, False, mask))

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            if self.pause:
                time.sleep(self.pause)
            data = self.sock.recv(self.chunk)
            if not data:
                raise EOFError
            self.buf += data
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def recv_header(self) -> tuple[int, int, bytes | None]:
        """Return (first byte, payload length, masking key or None) of the next frame."""
        b0, b1 = self._read(2)
        length = b1 & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._read(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read(8))
        return b0, length, self._read(4) if b1 & 0x80 else None

    def recv_frame(self) -> tuple[int, bytes]:
        """Return (opcode, payload) of the next frame (frames from the peer are never masked here)."""
        b0, length, key = self.recv_header()
        payload = self._read(length)
        if key is not None:
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        return b0 & 0x0F, payload

    def close(self) -> None:
        self.sock.close()


def raw_client(port: int, path: str = "/", timeout: float = 5.0, compression: str | None = None) -> RawPeer:
    """Connect and complete the opening handshake by hand; no keepalive, no automatic pongs."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    hs = ClientHandshake(parse_uri("127.0.0.1", port, path), compression=compression)
    sock.sendall(hs.data_to_send())
    while hs.receive_data(sock.recv(65536)) is None:
        pass
    return RawPeer(sock, True, hs.remainder)


class RawServer:
    """A listening socket (on 127.0.0.1 unless given one) whose peers are handled by hand."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0)) if sock is None else sock
        self.sock.settimeout(5)
        self.port = self.sock.getsockname()[1] if sock is None else None

    def accept_ws(self, compression: str | None = None, first_frames: bytes = b"") -> RawPeer:
        """Accept one client and answer its upgrade, ``first_frames`` in the same write."""
        conn, _ = self.sock.accept()
        conn.settimeout(5)
        hs = ServerHandshake(compression=compression)
        request = None
        while request is None:
            request = hs.receive_data(conn.recv(65536))
        conn.sendall(hs.accept(request) + first_frames)
        return RawPeer(conn, False, hs.remainder)

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def raw_server() -> Iterator[RawServer]:
    server = RawServer()
    try:
        yield server
    finally:
        server.close()


# Redirections and the credentials in ``headers=`` (both clients' tests).
CREDENTIALS = {"Authorization": "Bearer secret", "Cookie": "session=abc", "X-Api-Key": "kept"}


def credentials_seen(headers: Any) -> str:
    """What a server reports of the credential headers it received."""
    return repr([headers.get("Authorization"), headers.get("Cookie"), headers.get("X-Api-Key")])


def credential_redirects(target_port: int) -> Callable[[str, Any], Any]:
    """A ``process_request`` hook: ``/same`` redirects within the origin, ``/other`` to
    ``localhost:target_port`` (another origin than 127.0.0.1)."""

    def hook(path: str, headers: Any) -> Any:
        if path == "/same":
            return 302, {"Location": "/here"}, b""
        if path == "/other":
            return 302, {"Location": f"ws://localhost:{target_port}/there"}, b""
        return None

    return hook


def resolving(monkeypatch: Any, name: str, addresses: list[str | tuple[str, int]]) -> None:
    """``socket.getaddrinfo(name, port)`` gives ``addresses`` in order (as /etc/hosts' ``::1
    localhost`` line does): an IP with the port asked for, or an ``(ip, port)`` pair as is."""
    real = socket.getaddrinfo

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != name:
            return real(host, port, *args, **kwargs)
        infos = []
        for address in addresses:
            ip, port_of = (address, port) if isinstance(address, str) else address
            infos += real(ip, port_of, *args, **kwargs)
        return infos

    monkeypatch.setattr(socket, "getaddrinfo", fake)


def assert_ended_by(closed: BaseException, end: str) -> None:
    """``closed`` (a ConnectionClosedError) has what ended the connection as its cause: the
    ProtocolError we failed it for (``end="error"``, a 1002), the peer's ``"reset"``, or its
    ``"fin"`` with no close frame (both layers' tests)."""
    from kn_sock.exceptions import ProtocolError

    cause = closed.__cause__
    if end == "error":
        assert isinstance(cause, ProtocolError) and cause.code == 1002
    else:
        assert isinstance(cause, ConnectionResetError if end == "reset" else EOFError)
        assert "no close frame received or sent" in str(closed)
    assert closed.__suppress_context__  # (as raise ... from)
