"""Shared helpers for the asyncio tests: servers on 127.0.0.1 port 0, raw peers, frames, TLS.

Not a test module (no ``test_`` prefix): the asyncio test modules import from it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import ipaddress
import os
import shutil
import socket
import ssl
import struct
import subprocess
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest

from kn_sock import _pure
from kn_sock.asyncio.server import start_async_websocket_server
from kn_sock.frames import parse_close
from kn_sock.http11 import accept_key

#: Bound on every wait in the asyncio tests.
TIMEOUT = 5.0

# --------------------------------------------------------------------------- waiting


def default_loop() -> bool:
    """True on asyncio's own event loop, False on uvloop (``KN_SOCK_TEST_LOOP=uvloop``):
    for the few assertions about how kn_sock meets the loop rather than what it does."""
    return "uvloop" not in type(asyncio.get_running_loop()).__module__


async def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Wait (bounded) until ``predicate()`` holds; for states no event announces."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


# --------------------------------------------------------------------------- servers


@contextlib.asynccontextmanager
async def serving(handler: Callable[..., Awaitable[Any]], **options: Any) -> AsyncIterator[Any]:
    """Run a kn_sock server on 127.0.0.1:0 for the block; close it (bounded) afterwards."""
    server = await start_async_websocket_server("127.0.0.1", 0, handler, **options)
    try:
        yield server
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), TIMEOUT)


async def echo(websocket: Any, path: str) -> None:
    """The documented echo handler, without the prefix."""
    async for message in websocket:
        await websocket.send(message)


# --------------------------------------------------------------------------- raw peers

KEY = base64.b64encode(b"0123456789abcdef").decode()


def upgrade_request(path: str = "/", headers: dict[str, str] | None = None, method: str = "GET") -> bytes:
    """A client upgrade request as bytes; ``headers`` override / add (value None removes)."""
    base = {
        "Host": "127.0.0.1",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": KEY,
        "Sec-WebSocket-Version": "13",
    }
    base.update(headers or {})
    lines = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in base.items() if v is not None]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def stalled_client(port: int) -> socket.socket:
    """A blocking TCP client that completes the handshake with a 4 KiB receive buffer, reading
    the reply byte by byte, and then leaves every frame unread until the test reads them."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", port))
    sock.sendall(upgrade_request())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101")
    return sock


async def http_exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` and read the answer until the server closes: (status, headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        data = await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


class RawPeer:
    """One end of a TCP connection speaking WebSocket frames by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mask: bool) -> None:
        self.reader = reader
        self.writer = writer
        self.mask = mask

    def send_frame(self, opcode: int, payload: bytes = b"", fin: bool = True) -> None:
        key = os.urandom(4) if self.mask else None
        self.writer.write(_pure.build_frame(opcode, payload, fin, False, key))

    async def read_frame(self) -> tuple[int, bytes]:
        """Read one frame (unmasked or masked); return (opcode, payload)."""
        b0, b1 = await self.reader.readexactly(2)
        length = b1 & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        key = await self.reader.readexactly(4) if b1 & 0x80 else None
        payload = await self.reader.readexactly(length)
        if key is not None:
            payload = _pure.apply_mask(payload, key)
        return b0 & 0x0F, payload

    async def read_close(self) -> tuple[int, str]:
        """Skip frames until a close frame; return its (code, reason)."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                opcode, payload = await self.read_frame()
                if opcode == 8:
                    return parse_close(payload)

    async def at_eof(self) -> bool:
        """Read until the other side closes TCP (bounded); True when it did."""
        async with asyncio.timeout(TIMEOUT):
            while await self.reader.read(65536):
                pass
        return True

    def close(self) -> None:
        self.writer.close()


async def raw_client(port: int, path: str = "/", headers: dict[str, str] | None = None) -> RawPeer:
    """Open a TCP connection to ``port`` and complete the opening handshake by hand."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(upgrade_request(path, headers))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 101"), head
    return RawPeer(reader, writer, mask=True)


@contextlib.asynccontextmanager
async def raw_server(
    answer: bool = True, first_frames: bytes = b"", ssl: Any = None, split: bool = False
) -> AsyncIterator[tuple[int, asyncio.Queue[RawPeer]]]:
    """A server on 127.0.0.1:0 that answers the upgrade by hand (``answer``, followed in the
    same write by ``first_frames``, or in a write of their own with ``split``: over TLS, a
    record of their own) and then only does what the test does with the ``RawPeer`` it puts
    in the queue."""
    peers: asyncio.Queue[RawPeer] = asyncio.Queue()
    writers = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        head = await reader.readuntil(b"\r\n\r\n")
        if answer:
            key = next(
                line.split(b":", 1)[1].strip().decode()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            head = (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept_key(key).encode() + b"\r\n\r\n"
            )
            if split:
                writer.write(head)
                writer.write(first_frames)
            else:
                writer.write(head + first_frames)
        await peers.put(RawPeer(reader, writer, mask=False))

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=ssl)
    try:
        yield server.sockets[0].getsockname()[1], peers
    finally:
        server.close()
        for writer in writers:
            writer.transport.abort()
        await server.wait_closed()


# --------------------------------------------------------------------------- TLS


def make_tls_contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A self-signed certificate for 127.0.0.1 made now: (server context, client context).

    Uses ``cryptography`` when importable, else the ``openssl`` binary; skips otherwise.
    """
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    try:
        _make_cert_cryptography(cert, key)
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither cryptography nor openssl is available to make a certificate")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
            check=True,
            capture_output=True,
        )
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    return server_ctx, client_ctx


def _make_cert_cryptography(cert_path: Path, key_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
