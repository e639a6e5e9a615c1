"""Blocking WebSocket client: ``connect_websocket``.

The opening handshake runs in the calling thread on a blocking socket whose timeout is
the time left of ``open_timeout``; the connection then goes non-blocking and the shared
reactor looks after it whenever the application is not inside ``recv()``.

With ``reconnect=`` the client is a ``ReconnectingWebSocket``: one supervisor thread per
client waits for the connection to end and reopens it (policy: :mod:`kn_sock.reconnect`).
"""

from __future__ import annotations

import json
import logging
import socket
import ssl as ssl_module
import threading
import time
from collections.abc import Mapping
from typing import Any, Iterator, Literal, overload

from ..exceptions import ConnectionClosed, ConnectionClosedError, InvalidHandshake, InvalidState, InvalidStatus
from ..handshake import MAX_REDIRECTS, ClientHandshake, redirect_options, redirect_target
from ..options import Options, check_blocking_callables, check_client_transport, checked_timeout, client_uri, make_options
from ..protocol import CLIENT, Protocol, State, exit_close_code
from ..proxy import ConnectAnswer, ProxyURI, connect_request, proxy_for
from ..reconnect import ReconnectingState, ReconnectPolicy, by_app, end_code, queueable, retryable_error
from .._unix import unix_connect
from ..uri import WebSocketURI
from .connection import PongWaiter, WebSocket

from .._option_types import ClientOptions
from .._types import SyncMessage, Unpack  # annotations (resolvable at run time too, e.g. get_type_hints)

__all__ = ["connect_websocket", "connect", "ReconnectingWebSocket"]

logger = logging.getLogger("kn_sock")


@overload
def connect_websocket(
    host_or_uri: str, port: int | None = None, path: str = "/", *, reconnect: Literal[False] | None = False, **options: Unpack[ClientOptions]
) -> WebSocket: ...
@overload
def connect_websocket(
    host_or_uri: str, port: int | None = None, path: str = "/", *, reconnect: Literal[True] | Mapping[str, Any] | ReconnectPolicy, **options: Unpack[ClientOptions]
) -> ReconnectingWebSocket: ...
@overload
def connect_websocket(
    host_or_uri: str, port: int | None = None, path: str = "/", *, reconnect: bool | Mapping[str, Any] | ReconnectPolicy | None, **options: Unpack[ClientOptions]
) -> WebSocket | ReconnectingWebSocket: ...
def connect_websocket(
    host_or_uri: str, port: int | None = None, path: str = "/", **options: Any
) -> WebSocket | ReconnectingWebSocket:
    """Open a blocking WebSocket client connection and return it once the handshake succeeded.

    Gives a ``WebSocket``; with ``reconnect=True`` (or a dict of ``ReconnectPolicy``
    arguments) a ``ReconnectingWebSocket`` with the same surface. With reconnect on, the
    first connection is retried per the policy too (refused connections, timeouts, 5xx),
    all attempts together bounded by ``open_timeout`` and ``max_attempts``; a refusal not
    worth retrying (e.g. 404) raises at once.

    Accepts ``connect_websocket("localhost", 8765)``, ``connect_websocket("localhost", 8765, "/chat")``
    and ``connect_websocket("ws://localhost:8765/chat")`` / ``"wss://..."``. Besides the
    options of SPEC.md: ``unix`` (connect to this Unix socket path instead; the URI still
    gives ``Host``, the path and TLS), ``sock`` (an already connected socket to use) or
    ``proxy`` (an HTTP proxy to tunnel through, ``"http://[user:password@]host[:port]"``, or
    True for the ``*_proxy`` environment variables; see :mod:`kn_sock.proxy`).

    Raises:
        InvalidURI: the URI is not a valid ws:// or wss:// URI (or ``proxy`` not an HTTP proxy URL).
        InvalidStatus: the server answered with another status than 101 (``status`` tells which).
        InvalidProxyStatus: the proxy refused the tunnel (``status``; 407: credentials).
        InvalidHandshake: any other failure of the opening handshake.
        TimeoutError: the connection and handshake took longer than ``open_timeout``.
        OSError: the TCP connection failed.
    """
    opts = make_options(options, allow=("sock", "unix", "ack", "proxy"))
    wsuri = client_uri(host_or_uri, port, path, opts)
    check_client_transport(opts)
    check_blocking_callables(on_connect=opts.on_connect)
    policy = ReconnectPolicy.from_option(opts.reconnect)
    if policy is None:
        if opts.extra.get("ack"):
            raise ValueError("ack= needs reconnect=")
        ws = _open(wsuri, opts)
        if opts.on_connect is not None:  # runs once, after the first (only) connection
            try:
                opts.on_connect(ws)
            except Exception:
                ws.close(1011, "on_connect failed")
                raise
            except BaseException:
                ws.abort()
                raise
        return ws
    rws = ReconnectingWebSocket(wsuri, opts, policy)
    rws._connect_first()
    return rws


connect = connect_websocket


class _Attempt:
    """A reconnection attempt that ``close()`` can cut short from another thread."""

    __slots__ = ("sock", "cancelled")

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.cancelled = False

    def started(self, sock: socket.socket) -> None:
        """The attempt's socket exists (TCP connected): cancellable from now on."""
        self.sock = sock
        if self.cancelled:
            raise InvalidHandshake("connection attempt cancelled")

    def cancel(self) -> None:
        """Wake the attempt's blocking handshake (it fails at once), or make it fail when it starts."""
        self.cancelled = True
        sock = self.sock
        if sock is not None:
            try:  # on the descriptor (SSLSocket.shutdown would drop the TLS object under the attempt)
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass


def _open(wsuri: WebSocketURI, opts: Options, timeout: Any = "default", attempt: _Attempt | None = None) -> WebSocket:
    """Connect to ``wsuri``, following up to ``MAX_REDIRECTS`` redirections, all within ``timeout``."""
    if timeout == "default":
        timeout = opts.open_timeout
    if opts.extra.get("sock") is not None:  # a caller's socket goes to one place only
        return _open_once(wsuri, opts, timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    for _ in range(MAX_REDIRECTS + 1):
        try:
            return _open_once(wsuri, opts, timeout, attempt)
        except InvalidStatus as exc:
            target = redirect_target(wsuri, exc, unix=opts.extra.get("unix") is not None)
            if target is None:
                raise
            logger.info("%s redirected (HTTP %d) to %s", wsuri.shown, exc.status, target.shown)
            opts = redirect_options(opts, wsuri, target)  # (another origin: no credential headers)
            wsuri = target
        if deadline is not None:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                raise TimeoutError("timed out during the opening handshake")
    raise InvalidHandshake(f"more than {MAX_REDIRECTS} redirections")


def _tunnel(sock: socket.socket, proxy: ProxyURI, wsuri: WebSocketURI, opts: Options, deadline: float | None) -> None:
    """Ask the HTTP proxy connected on ``sock`` for a tunnel to ``wsuri``'s server (CONNECT)."""
    answer = ConnectAnswer(proxy)
    _set_timeout(sock, deadline)
    sock.sendall(connect_request(proxy, wsuri, opts.user_agent))
    while True:
        _set_timeout(sock, deadline)
        if answer.feed(sock.recv(65536)):
            logger.debug("tunnel to %s:%d through %s", wsuri.host, wsuri.port, proxy.shown)
            return


def _open_once(wsuri: WebSocketURI, opts: Options, timeout: float | None, attempt: _Attempt | None = None) -> WebSocket:
    """One connection attempt: TCP (+ TLS) and the opening handshake with ``wsuri``."""
    if timeout is not None and timeout <= 0:  # (a socket timeout of 0 means non-blocking)
        raise TimeoutError("timed out during the opening handshake")
    deadline = None if timeout is None else time.monotonic() + timeout
    host = wsuri.host[1:-1] if wsuri.host.startswith("[") else wsuri.host
    hs = ClientHandshake.from_options(wsuri, opts)  # (before connecting: bad options raise at once)
    sock: socket.socket | None = opts.extra.get("sock")
    try:
        if sock is None:
            unix = opts.extra.get("unix")
            proxy = proxy_for(wsuri, opts.extra.get("proxy"))
            if proxy is not None:
                sock = _tcp_connect(proxy.host, proxy.port, deadline)
            elif unix is None:
                sock = _tcp_connect(host, wsuri.port, deadline)
            else:
                sock = unix_connect(unix, timeout)
            if attempt is not None:
                attempt.started(sock)
            if proxy is not None:
                _tunnel(sock, proxy, wsuri, opts, deadline)
        else:
            sock.settimeout(timeout)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ssl = opts.ssl
        if wsuri.secure and not ssl:
            ssl = True
        if ssl:
            context = ssl_module.create_default_context() if ssl is True else ssl
            _set_timeout(sock, deadline)
            # Handshake once ``attempt`` knows the TLS socket (wrap_socket detaches the TCP one).
            sock = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
            if attempt is not None:
                attempt.started(sock)
            sock.do_handshake()
        response = None
        try:
            _set_timeout(sock, deadline)
            sock.sendall(hs.data_to_send())
            while response is None:
                _set_timeout(sock, deadline)
                data = sock.recv(65536)
                if not data:
                    raise InvalidHandshake("connection closed during the opening handshake: EOF") from EOFError("EOF")
                response = hs.receive_data(data)
        except socket.timeout:
            raise
        except OSError as exc:
            # A reset (or a TLS alert) mid-handshake: the same error as the asyncio client's.
            raise InvalidHandshake(f"connection closed during the opening handshake: {exc}") from exc
        ws = WebSocket(sock, Protocol.after(CLIENT, hs, opts), opts)
    except socket.timeout:
        if sock is not None:
            sock.close()
        raise TimeoutError("timed out during the opening handshake") from None
    except BaseException:
        if sock is not None:
            sock.close()
        raise
    ws.path = wsuri.path
    ws.request_headers = hs.request.headers
    ws.response_headers = response.headers
    ws._start(hs.remainder)
    return ws


def _tcp_connect(host: str, port: int, deadline: float | None) -> socket.socket:
    """``socket.create_connection`` with one deadline for all of the host's addresses (which
    gives each its own timeout: a host with three unreachable addresses took three times
    ``open_timeout``; audit). Raises the last address's error when none connects, as it does."""
    last: OSError | None = None
    for family, kind, proto, _, sockaddr in _resolve(host, port, deadline):
        sock = socket.socket(family, kind, proto)
        try:
            _set_timeout(sock, deadline)
            sock.connect(sockaddr)
            last = None  # (an earlier address's error: its traceback holds this frame, a cycle)
            return sock
        except socket.timeout:  # the deadline has come: no time for the other addresses
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            last = exc
        except BaseException:
            sock.close()
            raise
    if last is not None:
        try:
            raise last
        finally:
            last = None  # (as above)
    raise OSError(f"getaddrinfo({host!r}) gave no address")


def _resolve(host: str, port: int, deadline: float | None) -> list[Any]:
    """``getaddrinfo`` bounded by ``deadline`` (a resolver that does not answer took its own
    time, 5 s per attempt and server, past ``open_timeout``, which the asyncio client bounds):
    a name is resolved in a thread of its own, left to end by itself if the deadline comes."""
    try:  # an IP address: no lookup, no thread
        return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
    except socket.gaierror:
        pass
    if deadline is None:
        return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    outcome: list[Any] = []
    done = threading.Event()

    def lookup() -> None:
        try:
            outcome.append(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM))
        except BaseException as exc:  # (handed to the caller; without its traceback, which holds
            outcome.append(exc.with_traceback(None))  # this frame, whose cell holds outcome: a cycle)
        done.set()

    threading.Thread(target=lookup, name=f"kn_sock-resolve-{host}", daemon=True).start()
    if not done.wait(max(0.0, deadline - time.monotonic())):
        raise socket.timeout(f"timed out resolving {host!r}")
    result = outcome.pop()
    if isinstance(result, BaseException):
        try:
            raise result
        finally:
            result = None  # (its traceback holds this frame: no cycle)
    return result  # type: ignore[no-any-return]


def _set_timeout(sock: socket.socket, deadline: float | None) -> None:
    """Give the next blocking call the time left until ``deadline``."""
    if deadline is None:
        sock.settimeout(None)
        return
    left = deadline - time.monotonic()
    if left <= 0:
        raise socket.timeout("timed out")
    sock.settimeout(left)


class ReconnectingWebSocket(ReconnectingState):
    """A blocking client connection that reopens itself (``reconnect=`` option, SPEC.md "Reconnection").

    The surface of ``WebSocket``: ``send``, ``recv``, ``for``, ``send_json`` / ``recv_json``,
    ``ping``, ``pong``, ``close``, ``with``; other attributes (``subprotocol``,
    ``remote_address``, ``latency``, ...) are those of the current connection, ``connection``.

    - ``recv()`` blocks across reconnections; it returns None only once no reconnection
      will follow (``closed``).
    - ``send()`` while disconnected (or while queued messages are still being flushed)
      queues the message, at most ``max_pending``; the queue goes out in order after
      ``on_connect``. A message handed to a connection that then died is not sent again,
      unless ``ack=`` is on (see ``ack``).
    - ``on_connect(conn)`` runs in the supervisor thread with each new underlying
      ``WebSocket`` before the queued messages are flushed, so what it sends goes first;
      ``recv()`` takes the new connection's messages only once it has returned (what
      on_connect reads, the answer to a re-subscription, is its own).
    - ``connected``, ``reconnects`` (successful reconnections), ``last_close_code`` (how
      the previous connection ended), ``close_code`` / ``close_reason`` (the current one's).

    Every method may be called from any thread.
    """

    def __init__(self, wsuri: WebSocketURI, opts: Options, policy: ReconnectPolicy) -> None:
        self._wsuri = wsuri
        self._opts = opts
        self._policy = policy
        self._init_state(opts.max_pending, opts.extra.get("ack"))
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._attempt: _Attempt | None = None  # the reconnection attempt in progress (close() cuts it short)
        self._thread: threading.Thread | None = None

    def _closed_error(self) -> ConnectionClosed:
        ws = self._ws
        if ws is not None:
            return ws.protocol.closed_exception()
        return ConnectionClosedError(1006, "", "the connection is closed and will not reconnect")

    def _will_reconnect(self, ws: WebSocket) -> bool:
        """``ws`` is not open: will the supervisor reopen it?"""
        return (
            not self._closing
            and ws.protocol.state is State.CLOSED
            and self._policy.reopens(ws)
        )

    # ------------------------------------------------------------ connecting (supervisor thread)

    def _connect_first(self) -> None:
        """The first connection, in the caller's thread: retried per the policy while ``open_timeout`` lasts."""
        policy = self._policy
        policy.start(self._opts.open_timeout)
        while True:
            try:
                ws = _open(self._wsuri, self._opts, policy.remaining())
                break
            except Exception as exc:
                if not retryable_error(exc):
                    raise
                delay = policy.next_delay()
                if delay is None:
                    raise
                logger.info("connecting to %s failed (%s); retrying in %.3f s", self._wsuri.shown, exc, delay)
                time.sleep(delay)
        policy.reset()
        self._ws = ws
        connected = True
        if self._opts.on_connect is not None:
            try:
                self._opts.on_connect(ws)
            except ConnectionClosed:
                if ws.open:  # not this connection's end (another one's): on_connect failed
                    self._final = True
                    ws.close(1011)
                    raise
                # The connection ended under on_connect (a server answering 1013 "try again
                # later", say): as after any retryable end, the supervisor reconnects.
                ws._wait_ended()  # how it ended decides (bounded by close_timeout)
                if self._closing or not self._policy.reopens(ws):
                    self._final = True
                    raise
                logger.info("connection to %s lost during on_connect: reconnecting", self._wsuri.shown)
                connected = False
            except Exception:
                self._final = True
                ws.close(1011)
                raise
            except BaseException:  # KeyboardInterrupt...: drop it now, as without reconnect=
                self._final = True
                ws.abort()
                raise
        self.connected = connected
        self._thread = threading.Thread(target=self._supervise, name="kn_sock-reconnect", daemon=True)
        self._thread.start()

    def _supervise(self) -> None:
        """Watch the connection; reopen it when it ends in a way worth a retry."""
        cond = self._cond
        setup_failed = False  # on_connect raised: reconnect whatever the close code
        try:
            while True:
                ws = self._ws
                assert ws is not None
                ws._wait_ended()  # the closing handshake, not TCP: a server may hold TCP open
                with cond:
                    self.connected = False
                    code = self.last_close_code = end_code(ws.protocol)
                    if self._closing:
                        return
                    if not setup_failed and not self._policy.reopens(ws):
                        logger.info("connection to %s closed with %d%s: not reconnecting", self._wsuri.shown, code, by_app(ws))
                        return
                    self._outbox.requeue()
                logger.info("connection to %s lost (%d): reconnecting", self._wsuri.shown, code)
                new = self._reconnect()
                if new is None:
                    return
                on_connect = self._opts.on_connect
                with cond:
                    closing = self._closing
                    if not closing:
                        self._replaced(ws)
                        self._ws = new
                        if on_connect is not None:
                            self._settling = new
                            self._settling_runner = threading.get_ident()
                        else:
                            self.reconnects += 1  # successful reconnections (see below)
                        cond.notify_all()
                if closing:
                    new.close()
                    return
                setup_failed = lost = False
                if on_connect is not None:
                    usable = False
                    try:
                        on_connect(new)
                        usable = True
                    except Exception as exc:
                        setup_failed = self._setup_failed(exc, new)
                        lost = not setup_failed  # ended under it: its close code decides (above)
                    finally:
                        with cond:
                            self._settling = None
                            if usable:  # counted as recv() may take the session's messages
                                self.reconnects += 1
                            cond.notify_all()
                if setup_failed:
                    new._close(1011, "on_connect failed")  # not the application's close: reconnect
                    continue
                if lost:
                    continue
                self._policy.reset()
                self._flush(new)
        except BaseException:  # pragma: no cover - a bug: say so, and do not leave recv() hanging
            logger.exception("reconnecting client for %s failed", self._wsuri.shown)
        finally:
            with cond:
                self._final = True
                self.connected = False
                self._drop_outbox()
                cond.notify_all()

    def _reconnect(self) -> WebSocket | None:
        """Attempts with backoff until one succeeds (the connection) or the policy gives up (None)."""
        policy = self._policy
        while not self._closing:
            delay = policy.next_delay()
            if delay is None:
                logger.warning("giving up reconnecting to %s after %d attempts", self._wsuri.shown, policy.attempts)
                return None
            logger.info("reconnecting to %s in %.3f s (attempt %d)", self._wsuri.shown, delay, policy.attempts)
            if self._stop.wait(delay):
                return None
            with self._cond:
                if self._closing:
                    return None
                attempt = self._attempt = _Attempt()
            try:
                ws = _open(self._wsuri, self._opts, attempt=attempt)
            except Exception as exc:
                if self._closing:
                    return None  # close() cut the attempt short
                if not retryable_error(exc):
                    logger.warning("reconnecting to %s refused (%s): giving up", self._wsuri.shown, exc)
                    return None
                logger.info("reconnection attempt %d to %s failed: %s", policy.attempts, self._wsuri.shown, exc)
                continue
            finally:
                self._attempt = None
            if self._closing:  # close() came as the attempt succeeded
                ws.close()
                return None
            logger.info("reconnected to %s", self._wsuri.shown)  # (the policy is reset once on_connect succeeded)
            return ws
        return None

    def _flush(self, ws: WebSocket) -> None:
        """Send the queued messages in order; ``connected`` once the queue is empty."""
        cond = self._cond
        outbox = self._outbox
        while True:
            with cond:
                if not outbox.pending:
                    self.connected = True
                    cond.notify_all()
                    return
                message = outbox.pending.popleft()
                outbox.sent(message)
            try:
                sent = ws._send_if_open(message)
            except Exception:  # pragma: no cover - queueable() checked it; never end the client
                logger.exception("queued message for %s could not be sent: dropped", self._wsuri.shown)
                continue
            if not sent:
                with cond:  # died again: back in front; the supervisor loop reconnects
                    if outbox.ack is not None:
                        outbox.unacked.pop()
                    outbox.pending.appendleft(message)
                return

    # ------------------------------------------------------------ the connection's surface

    def send(self, message: SyncMessage) -> None:
        """Send now when connected, else queue (see the class docstring).

        Raises:
            ConnectionClosed: closed for good, or ``max_pending`` messages already wait.
            TypeError: a message of another type.
        """
        outbox = self._outbox
        with self._cond:
            if self._final or self._closing:
                raise self._closed_error()
            ws = self._ws
            assert ws is not None
            if not (self.connected and not outbox.pending):
                outbox.add(queueable(message))
                return
            if outbox.ack is not None:
                outbox.check_room()
                message = queueable(message)
                outbox.sent(message)  # stays there: re-sent after a disconnection
        if ws._send_if_open(message):
            return
        if outbox.ack is not None:
            return  # in ``unacked``: sent after the reconnection
        with self._cond:
            if not self._will_reconnect(ws):
                raise ws.protocol.closed_exception()
            if self._ws is ws or not self.connected:
                # The supervisor's flush (under _cond, until the queue is empty) sends it.
                outbox.add(queueable(message))
                return
        # Reconnected while this thread waited (behind another thread's fragmented message)
        # and the flush is over: queued now, it would wait for the next disconnection and
        # hold every later send() behind it (audit). Send it on the new connection.
        self.send(message)

    def send_json(self, obj: Any) -> None:
        """Send ``obj`` as a JSON text message (queued while disconnected)."""
        self.send(json.dumps(obj))

    def recv(self, timeout: float | None = None) -> str | bytes | None:
        """Return the next message, blocking across reconnections; None once closed for good.

        Raises:
            TimeoutError: no message within ``timeout`` seconds.
            ValueError / TypeError: ``timeout`` is NaN / not a number.
        """
        if timeout is not None:
            timeout = checked_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        cond = self._cond
        while True:
            # _ws first: the supervisor queues an ended connection in _ended before it replaces
            # _ws (both under cond), so a new _ws seen here has its predecessor's messages in
            # _ended below (audit: read the other way round, a reconnection in between let the
            # new connection's first message overtake them).
            ws = self._ws
            message = None
            if self._ended:  # what ended connections received comes first, in order
                with cond:
                    message = self._take_ended()
            if message is None and ws is self._settling and not self._final and threading.get_ident() != self._settling_runner:
                # on_connect is running with this new connection: what it brings first is
                # on_connect's to read; wait until it returns.
                with cond:
                    while self._settling is ws and not self._final:
                        left = None if deadline is None else deadline - time.monotonic()
                        if left is not None and left <= 0:
                            raise TimeoutError("no message received in time")
                        cond.wait(left)
                continue
            if message is None:
                assert ws is not None
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                message = ws.recv(left)
            if message is not None:
                if self._outbox.ack is not None:
                    with cond:
                        self._outbox.received(message)
                return message
            with cond:
                while not self._final and self._ws is ws:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError("no message received in time")
                    cond.wait(left)
                if self._final and self._ws is ws and not self._ended:
                    return None

    def recv_json(self, timeout: float | None = None) -> Any:
        """Receive a message and decode it as JSON; None once closed for good."""
        message = self.recv(timeout)
        return None if message is None else json.loads(message)

    def ack(self, n: int = 1) -> int:
        """Ack mode: the ``n`` oldest unacknowledged messages arrived; return how many were dropped.

        Raises:
            InvalidState: the client was not opened with ``ack=``.
        """
        if self._outbox.ack is None:
            raise InvalidState("ack() needs the ack= option")
        with self._cond:
            return self._outbox.acknowledge(n)

    def __iter__(self) -> Iterator[str | bytes]:
        """``for message in ws`` continues across reconnections."""
        while (message := self.recv()) is not None:
            yield message

    def ping(self, data: bytes | str = b"") -> PongWaiter:
        """Ping the current connection.

        Raises:
            ConnectionClosed: disconnected (reconnecting) or closed for good.
        """
        ws = self._ws
        if not self.open or ws is None:
            raise self._closed_error() if self._final else ConnectionClosedError(1006, "", "reconnecting")
        return ws.ping(data)

    def pong(self, data: bytes | str = b"") -> None:
        """Send an unsolicited pong on the current connection.

        Raises:
            ConnectionClosed: disconnected (reconnecting) or closed for good.
        """
        ws = self._ws
        if not self.open or ws is None:
            raise self._closed_error() if self._final else ConnectionClosedError(1006, "", "reconnecting")
        ws.pong(data)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close for good: stop reconnecting, close the current connection; queued messages are dropped."""
        with self._cond:
            self._closing = True
            ws = self._ws
            attempt = self._attempt
        self._stop.set()
        if attempt is not None:
            attempt.cancel()
        if ws is not None:
            ws.close(code, reason)
        with self._cond:
            self._final = True
            self.connected = False
            self._drop_outbox()  # (the reconnecting thread may be asleep in its backoff)
            self._cond.notify_all()

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait until closed for good, the last connection's TCP included; True if it is."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if not self._cond.wait_for(lambda: self._final, timeout):
                return False
            ws = self._ws
        if ws is None:
            return True
        return ws.wait_closed(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> "ReconnectingWebSocket":
        """The connection itself, closed on exit."""
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        """Close the connection on leaving the ``with`` block: 1000, or 1011 if it raised
        (1001 for KeyboardInterrupt / SystemExit)."""
        self.close(exit_close_code(exc_type))

    def __repr__(self) -> str:
        state = "connected" if self.connected else "closed" if self._final else "reconnecting"
        return f"<ReconnectingWebSocket {self._wsuri.shown} {state} reconnects={self.reconnects}>"
