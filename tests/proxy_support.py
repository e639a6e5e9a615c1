"""A small HTTP CONNECT proxy for the tests of ``proxy=`` (threads; 127.0.0.1 only)."""

from __future__ import annotations

import socket
import threading
from typing import Any


class ConnectProxy:
    """Accepts CONNECT requests and relays bytes both ways; ``requests`` keeps each request head.

    Args:
        credentials: the ``Proxy-Authorization`` value it requires (else 407), or None.
        refuse: a status to answer every request with (e.g. 403, 502), or None.
        silent: accept, read the request, and never answer.
        drop_first: close the first requests' connections without an answer.
    """

    def __init__(self, credentials: str | None = None, refuse: int | None = None, silent: bool = False,
                 drop_first: int = 0) -> None:
        self.credentials = credentials
        self.refuse = refuse
        self.silent = silent
        self.drop_first = drop_first  # requests closed without an answer before serving
        self.requests: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self._sockets.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        head = b""
        try:
            while b"\r\n\r\n" not in head:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
        except OSError:
            return
        self.requests.append(head)
        if self.silent:
            return
        if len(self.requests) <= self.drop_first:
            conn.close()
            return
        lines = head.split(b"\r\n")
        method, target, _ = lines[0].split(b" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:] if line)}
        if self.refuse is not None:
            conn.sendall(b"HTTP/1.1 %d Refused\r\nContent-Length: 4\r\n\r\nnope" % self.refuse)
            conn.close()
            return
        if self.credentials is not None and headers.get(b"proxy-authorization") != self.credentials.encode():
            conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n"
                         b"Content-Length: 0\r\n\r\n")
            conn.close()
            return
        if method != b"CONNECT":
            conn.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            conn.close()
            return
        host, _, port = target.rpartition(b":")
        try:
            upstream = socket.create_connection((host.strip(b"[]").decode(), int(port)), timeout=10)
        except OSError:
            conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            conn.close()
            return
        self._sockets.append(upstream)
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        conn.settimeout(None)
        upstream.settimeout(None)
        threading.Thread(target=self._pipe, args=(conn, upstream), daemon=True).start()
        self._pipe(upstream, conn)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()
        for sock in self._sockets:
            try:
                sock.close()
            except OSError:
                pass

    def __enter__(self) -> "ConnectProxy":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
