"""Blocking WebSocket server: ``start_websocket_server`` and ``WebSocketServer``.

Threads: the serving thread accepts connections; each accepted connection gets ONE thread,
which runs the opening handshake on a blocking socket whose timeout is what is left of
``open_timeout`` (so a silent or trickling TCP peer holds it at most that long), then the
user's ``handler(ws, address)``, then closes the connection (1000, or 1011 if the handler
raised). Everything else (reading while the handler is not in ``recv()``, pings, keepalive,
close timeouts) runs in the one shared reactor thread of :mod:`kn_sock._reactor`.

Handler threads are daemon threads created with a small stack, ``thread_stack_size``
(default 256 KiB; 0 or None keeps the interpreter's default), so that thousands of
connections fit in memory.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import logging
import os
import select
import selectors
import socket
import ssl as ssl_module
import sys
import threading
import time
from typing import Any, Callable, Iterator, Union
from typing import Protocol as _Interface

from .._option_types import ServerOptions
from .._types import Unpack  # annotations (resolvable at run time too)
from .._unix import remove_stale_socket, remove_unix_socket, socket_inode
from ..exceptions import ConnectionClosed, InvalidHandshake
from ..handshake import ServerHandshake
from ..options import (
    BACKLOG,
    check_blocking_callables,
    check_listen_options,
    check_port,
    check_server_options,
    check_unix_path,
    make_options,
)
from ..protocol import SERVER, Protocol
from .client import _set_timeout
from .connection import _HAS_POLL, WebSocket

__all__ = ["WebSocketServer", "start_websocket_server"]

logger = logging.getLogger("kn_sock")

#: Default stack size of handler threads (see the module docstring).
DEFAULT_THREAD_STACK_SIZE = 256 * 1024
#: How long a connection refused with an HTTP answer is read (and the bytes dropped) after
#: the answer, waiting for the client to close (see ``WebSocketServer._answer``).
_LINGER = 1.0

#: How long a connection accepted just before ``shutdown()`` is given to read its 503.
_SHUTDOWN_ANSWER_TIME = 0.1
#: How long ``shutdown()`` waits for closing handshakes (1001) before dropping connections.
SHUTDOWN_GRACE = 0.3
#: A longer shutdown_grace is as good as no limit (threading's waits refuse more than ~9e9 s).
_GRACE_MAX = 1e9
#: What the whole shutdown may take beyond the grace (start_websocket_server: 0.5 s in all,
#: with up to _EVENT_POLL before the event is seen).
_SHUTDOWN_SLACK = 0.03
#: The time dropping one connection is expected to take at shutdown (seconds; see _close_all).
_DROP_COST = 0.0002
#: How often ``serve_forever`` checks a ``shutdown_event``.
_EVENT_POLL = 0.025

#: The interpreter's switch interval while ``shutdown()`` runs (see ``_quick_gil_handoff``).
_SHUTDOWN_SWITCH = 0.0001

_stack_lock = threading.Lock()
_switch_lock = threading.Lock()
_switch_users = 0
_switch_saved = 0.005
_switch_set = 0.0


@contextlib.contextmanager
def _quick_gil_handoff() -> Iterator[None]:
    """While a server shuts down, the GIL changes hands every 0.1 ms instead of every 5 ms:
    the shutdown (and the reactor reading the 1001 answers) releases the GIL at each system
    call and waits that long each time behind handler threads busy in Python code (measured,
    10 CPU-bound handlers: 1.0 to 2.7 s to shut down, SPEC's bound being 0.5 s; 0.12 to 0.36 s
    with this). Process-wide, so nested and concurrent shutdowns share one saved value."""
    global _switch_users, _switch_saved, _switch_set
    with _switch_lock:
        if _switch_users == 0:
            _switch_saved = sys.getswitchinterval()
            sys.setswitchinterval(min(_switch_saved, _SHUTDOWN_SWITCH))
            _switch_set = sys.getswitchinterval()
        _switch_users += 1
    try:
        yield
    finally:
        with _switch_lock:
            _switch_users -= 1
            # (Unless the application set an interval of its own meanwhile: that one stays.)
            if _switch_users == 0 and sys.getswitchinterval() == _switch_set:
                sys.setswitchinterval(_switch_saved)


#: ``ws``: the connection whose handler this thread runs (``shutdown()`` called from a handler).
_handler_thread = threading.local()


def _spawn(target: Callable[..., Any], args: tuple[Any, ...], stack_size: int | None, name: str) -> None:
    """Start a daemon thread with ``stack_size`` bytes of stack (the setting is process-wide, hence the lock)."""
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    if not stack_size:
        thread.start()
        return
    with _stack_lock:
        old = threading.stack_size(stack_size)
        try:
            thread.start()
        finally:
            threading.stack_size(old)


#: ``handler(ws, address)`` or ``handler(ws)``, returning nothing (an ``async def`` is refused).
Handler = Union[Callable[[WebSocket, Any], None], Callable[[WebSocket], None]]


class EventLike(_Interface):
    """What ``shutdown_event`` must offer: a ``threading.Event`` (or a multiprocessing one)."""

    def is_set(self) -> bool: ...


def _wants_address(handler: Callable[..., Any]) -> bool:
    """Tell whether ``handler`` takes ``(ws, address)`` (the documented form) or just ``(ws)``."""
    try:
        params = list(inspect.signature(handler).parameters.values())
    except (TypeError, ValueError):
        return True
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    return len([p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]) >= 2


#: port 0 on several addresses: how many ports to try before keeping the addresses one got.
_PORT_DRAWS = 5
#: Binding errors meaning "no such address family here": that address is left out.
_NO_FAMILY = frozenset({errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT})


def _port_number(port: int | str | None) -> int:
    """The port as a number: None → 0, digits or a service name (``"http"``) resolved (TCP
    service numbers are the same for every family: asking for IPv4's is enough)."""
    if not port:
        return 0
    if isinstance(port, int):
        return port
    return int(socket.getaddrinfo(None, port, socket.AF_INET, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)[0][4][1])


def _tcp_addresses(host: str | None, port: int) -> list[tuple[int, tuple[Any, ...]]]:
    """The ``(family, sockaddr)`` pairs to listen on, as asyncio's servers do: every address of
    ``host`` (``localhost`` is often ``::1`` and ``127.0.0.1``), or for None / ``""`` all
    interfaces, IPv4 and (where the machine has it) IPv6, IPv4 clients keeping plain IPv4
    addresses."""
    if not host:
        addresses: list[tuple[int, tuple[Any, ...]]] = [(socket.AF_INET, ("0.0.0.0", port))]
        if socket.has_ipv6:
            addresses.append((socket.AF_INET6, ("::", port)))
        return addresses
    addresses = []
    for family, _, _, _, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
        if family in (socket.AF_INET, socket.AF_INET6) and (family, sockaddr) not in addresses:
            addresses.append((family, sockaddr))
    return addresses


def _listen_on_all(
    addresses: list[tuple[int, tuple[Any, ...]]], port: int, backlog: int, reuse_port: bool, last_draw: bool
) -> list[socket.socket]:
    """Listening sockets on every address, one port for all (port 0: the first one's).

    An address whose family the machine lacks (no IPv6: the socket cannot be made, or ``::1``
    is not there) is left out, logged at DEBUG; other errors raise, as in asyncio. With
    port 0, a port taken on another address gives [] (draw another), except on the last
    draw, which keeps the addresses it got (logged). Raises the error when no address can be
    bound, or when the port asked for is taken.
    """
    listeners: list[socket.socket] = []
    chosen = port
    error: OSError | None = None
    try:
        for family, sockaddr in addresses:
            try:
                sock = socket.create_server(
                    (sockaddr[0], chosen, *sockaddr[2:]), family=family, backlog=backlog, reuse_port=reuse_port
                )
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    if port or not listeners:
                        raise  # the port asked for is taken
                    if not last_draw:
                        for listener in listeners:
                            listener.close()
                        return []  # port 0: that port is taken on this address; draw again
                    logger.warning("port %d is taken on %s: not listening there", chosen, sockaddr[0])
                elif exc.errno in _NO_FAMILY or family == socket.AF_INET6 and exc.errno == errno.EADDRNOTAVAIL:
                    logger.debug("not listening on %s: %s", sockaddr[0], exc)  # no IPv6 here (as asyncio)
                else:
                    raise  # (an address of the host that is not this machine's, say: as asyncio)
                error = error or exc
                continue
            listeners.append(sock)
            chosen = sock.getsockname()[1]
    except BaseException:
        for listener in listeners:
            listener.close()
        raise
    if not listeners:
        assert error is not None
        raise error
    return listeners


class WebSocketServer:
    """A listening blocking WebSocket server calling ``handler(ws, address)`` in a thread per connection.

    Binds at construction (``.port`` gives the port, so ``port=0`` works). ``serve_forever()``
    accepts until ``shutdown()``; as a context manager it shuts down on exit.

    Args:
        host: Address to bind (``"::1"`` for IPv6; None or ``""`` for all interfaces).
        port: TCP port; 0 picks a free one.
        handler: ``handler(ws, address)`` (or ``handler(ws)``), run in its own thread.
        **options: The connection options of SPEC.md, plus ``unix`` (path of a Unix socket to
            listen on instead of TCP), ``backlog``, ``reuse_port``, ``thread_stack_size``
            and ``shutdown_grace`` (seconds ``shutdown()`` waits for 1001 closing handshakes).
    """

    def __init__(self, host: str | None, port: int | None, handler: Handler, **options: Unpack[ServerOptions]) -> None:
        """Bind and listen."""
        unix = options.pop("unix", None)
        check_unix_path(unix)
        self._unix: str | bytes | None = None if unix is None else os.fspath(unix)  # (socket.bind takes no Path)
        self._unix_inode: int | None = None  # of the socket file we bound, removed by shutdown
        listen: dict[str, Any] = {k: options.pop(k) for k in ("backlog", "reuse_port", "thread_stack_size",  # type: ignore[misc]
                                                             "shutdown_grace") if k in options}
        check_listen_options(listen)  # (here, not in the accept loop or in shutdown(): audit)
        backlog: int = BACKLOG if listen.get("backlog") is None else listen["backlog"]
        reuse_port = bool(listen.get("reuse_port"))
        self._stack_size: int | None = listen.get("thread_stack_size", DEFAULT_THREAD_STACK_SIZE)
        self._grace: float = min(listen.get("shutdown_grace", SHUTDOWN_GRACE), _GRACE_MAX)
        self.options = make_options(options)
        check_server_options(self.options)
        check_blocking_callables(handler=handler, process_request=self.options.process_request)
        if self._unix is None:
            check_port(port)
        self.handler: Callable[..., Any] = handler  # (its arity decides the call: _wants_address)
        self._wants_address = _wants_address(handler)
        self._lock = threading.Lock()
        #: Notified when a handler returns while shutting down (``_close_all`` waits for them).
        self._handler_left = threading.Condition(self._lock)
        self.connections: set[WebSocket] = set()
        #: Connections whose own handler called ``shutdown()``: not waited for.
        self._in_shutdown: set[WebSocket] = set()
        self._pending: set[socket.socket] = set()
        #: Handshakes past their point of no return (out of ``_pending``), their connections
        #: not yet in ``connections``: ``_close_all`` waits for them too.
        self._upgrading = 0
        #: When ``_close_all`` drops the connections still open (None until it runs): one
        #: that comes in after its snapshot closes by then too, not a grace later.
        self._drop_at: float | None = None
        #: The sockets of ``_pending`` past their TLS handshake, reading the upgrade request:
        #: they wait on ``_halt_r`` too (``_tls_wait``), which ``_close_all`` makes readable,
        #: so that they get their 503 (shutting the socket down under a TLS read would
        #: break the session, and no answer could go out).
        self._tls_up: set[socket.socket] = set()
        self._halt_r: socket.socket | None = None
        self._halt_w: socket.socket | None = None
        self._closing = False
        self._closed_all = False
        self._serving_ident: int | None = None
        self._stopped = threading.Event()
        self._shutdown_event: EventLike | None = None
        self._accept_failures = 0  # accept() errors in a row (EMFILE...): logged once a run
        self._new_handshake()  # invalid options raise here, not in every connection
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        try:
            self._listeners = self._bind(host, port, backlog, reuse_port)
        except BaseException:
            self._wake_r.close()
            self._wake_w.close()
            raise
        if self.options.ssl is not None:
            self._halt_r, self._halt_w = socket.socketpair()
        self.socket = self._listeners[0]
        name = self.socket.getsockname()
        self._port = int(name[1]) if isinstance(name, tuple) else None  # kept once closed

    def _bind(self, host: str | None, port: int | None, backlog: int, reuse_port: bool) -> list[socket.socket]:
        if self._unix is not None:
            path = self._unix
            remove_stale_socket(path)  # a previous run's
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(path)
                self._unix_inode = socket_inode(path)
                sock.listen(backlog)
            except BaseException:
                sock.close()
                raise
            return [sock]
        number = _port_number(port)
        addresses = _tcp_addresses(host, number)
        for draw in range(_PORT_DRAWS):
            listeners = _listen_on_all(addresses, number, backlog, reuse_port, last_draw=draw == _PORT_DRAWS - 1)
            if listeners:
                return listeners
        raise AssertionError("unreachable: the last draw keeps what it could bind")  # pragma: no cover

    # ------------------------------------------------------------ properties

    @property
    def port(self) -> int:
        """The bound TCP port (useful with ``port=0``); still known once the server is closed."""
        if self._port is None:
            raise RuntimeError("the server is not listening on TCP")
        return self._port

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets."""
        return tuple(self._listeners)

    # ------------------------------------------------------------ serving

    def serve_forever(self, poll_interval: float | None = None) -> None:
        """Accept connections until ``shutdown()`` (or the ``shutdown_event``); then close them all."""
        if self._closed_all:
            return  # shut down already (as the asyncio server's after close())
        self._serving_ident = threading.get_ident()
        self._stopped.clear()
        event = self._shutdown_event
        if event is not None:
            poll_interval = _EVENT_POLL if poll_interval is None else min(poll_interval, _EVENT_POLL)
        sel = selectors.DefaultSelector()
        try:
            for listener in self._listeners:
                listener.setblocking(False)
                sel.register(listener, selectors.EVENT_READ, True)
            sel.register(self._wake_r, selectors.EVENT_READ, False)
            while not self._closing and not (event is not None and event.is_set()):
                for key, _ in sel.select(poll_interval):
                    if key.data:
                        self._accept_all(key.fileobj)  # type: ignore[arg-type]
                    else:
                        _drain(self._wake_r)
        finally:
            sel.close()
            self._close_all()
            self._serving_ident = None
            self._stopped.set()

    def _accept_all(self, listener: socket.socket) -> None:
        while not self._closing:
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: back off instead of spinning
                # Logged once per run of failures, not ten times a second (audit: a flood).
                if not self._accept_failures:
                    logger.error("accept() failed: %s (retrying every 0.1 s)", exc)
                self._accept_failures += 1
                time.sleep(0.1)
                return
            if self._accept_failures:
                logger.warning("accepting again after %d failed accept() calls", self._accept_failures)
                self._accept_failures = 0
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                _spawn(self._serve_connection, (sock, address), self._stack_size, f"kn_sock-handler-{address}")
            except RuntimeError as exc:  # can't start a new thread
                logger.error("cannot start a handler thread for %s: %s", address, exc)
                sock.close()

    def _serve_connection(self, sock: socket.socket, address: Any) -> None:
        """Handler thread: handshake, then the user's handler, then close."""
        with self._lock:
            closing = self._closing
            if not closing:
                self._pending.add(sock)
        if closing:  # accepted just before shutdown(): 503, as to a handshake in progress
            if self.options.ssl is None:
                logger.info("rejected opening handshake from %s: HTTP 503 server is shutting down", address)
                answer = self._new_handshake().reject_from(InvalidHandshake("server is shutting down", status=503))
                self._answer(sock, answer, time.monotonic() + _SHUTDOWN_ANSWER_TIME, _SHUTDOWN_ANSWER_TIME)
            else:
                sock.close()
            return
        ws = None
        try:
            ws = self._handshake(sock, address)
        except (socket.timeout, TimeoutError):
            logger.info("opening handshake with %s timed out", address)
        except OSError as exc:
            logger.info("opening handshake with %s failed: %s", address, exc)
        except BaseException:  # (in this thread, SystemExit would leave the socket open)
            logger.exception("opening handshake with %s failed", address)
        finally:
            with self._lock:
                self._pending.discard(sock)
        if ws is None:
            sock.close()
            return
        with self._lock:
            closing = self._closing
            self.connections.add(ws)
            self._upgrading -= 1
            drop_at = self._drop_at
        try:
            if closing:
                ws._start_close(1001)
                ws.wait_closed(self._grace if drop_at is None else max(0.0, drop_at - time.monotonic()))
                ws.abort()
            else:
                _handler_thread.ws = ws
                self._run_handler(ws, address)
        finally:
            with self._lock:
                self.connections.discard(ws)
                if self._closing:
                    self._handler_left.notify_all()

    def _handshake(self, sock: socket.socket, address: Any) -> WebSocket | None:
        """The opening handshake on ``sock`` (in ``_pending``): the connection, or None if refused.

        The socket leaves ``_pending`` (whose sockets ``_close_all`` shuts down to wake their
        threads) when the 101 answer is about to be sent: from then on the connection is
        ours to close with 1001 (``_serve_connection``), never to drop.
        """
        opts = self.options
        timeout = opts.open_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        if opts.ssl is None:
            return self._upgrade(sock, address, deadline)
        _set_timeout(sock, deadline)
        # The handshake runs after ``tls`` replaces ``sock`` in _pending: wrap_socket detaches
        # ``sock`` at once, so shutdown() could not wake a thread in the TLS handshake (EBADF).
        tls = opts.ssl.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with self._lock:
            self._pending.discard(sock)
            self._pending.add(tls)
            closing = self._closing
        ws = None
        try:
            if closing:
                return None
            tls.do_handshake()
            with self._lock:
                if not self._closing:  # (else _upgrade answers 503 without waiting)
                    self._tls_up.add(tls)
            ws = self._upgrade(tls, address, deadline)
        finally:
            if ws is None:
                # ``sock`` was detached by wrap_socket: only ``tls`` can close the descriptor.
                with self._lock:
                    self._pending.discard(tls)
                    self._tls_left(tls)
                tls.close()
        return ws

    def _tls_read(self, sock: Any, deadline: float | None) -> bytes:
        """TLS: the next bytes of the upgrade request. Non-blocking reads, each after a wait
        for the socket or ``shutdown()`` (``_tls_wait``), so that neither a TLS record that
        comes in pieces nor a silent client keeps the thread from answering 503."""
        while True:
            self._tls_wait(sock, deadline, False)
            sock.settimeout(0.0)
            try:
                data: bytes = sock.recv(65536)
                return data
            except ssl_module.SSLWantReadError:  # a partial record: wait for the rest
                continue
            except ssl_module.SSLWantWriteError:  # (TLS has something to send first)
                self._tls_wait(sock, deadline, True)

    def _tls_wait(self, sock: Any, deadline: float | None, write: bool) -> None:
        """Wait until ``sock`` is readable (or writable), or raise: ``shutdown()`` started
        (503), ``deadline`` passed (socket.timeout)."""
        if self._closing:
            raise InvalidHandshake("server is shutting down", status=503)
        if not write and sock.pending():
            return
        halt = self._halt_r  # open while ``sock`` is in _tls_up (see _tls_left)
        assert halt is not None
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        if _HAS_POLL:
            poller = select.poll()
            poller.register(sock, select.POLLOUT if write else select.POLLIN)
            poller.register(halt, select.POLLIN)
            ready = poller.poll(None if timeout is None else int(timeout * 1000 + 0.999))
        else:  # pragma: no cover - no poll() (Windows)
            r, w, _ = select.select([halt] if write else [sock, halt], [sock] if write else [], [], timeout)
            ready = r + w
        if self._closing:
            raise InvalidHandshake("server is shutting down", status=503)
        if not ready:
            raise socket.timeout("timed out")

    def _tls_left(self, sock: Any) -> None:
        """``sock`` no longer reads its upgrade request (``_lock`` held): once the server is
        closed and no thread waits on ``_halt_r`` any more, close it."""
        self._tls_up.discard(sock)
        if self._closed_all and not self._tls_up:
            self._close_halt()

    def _close_halt(self) -> None:
        for s in (self._halt_r, self._halt_w):
            if s is not None:
                s.close()
        self._halt_r = self._halt_w = None

    def _new_handshake(self) -> ServerHandshake:
        opts = self.options
        kwargs: dict[str, Any] = {"server_header": opts.server_header} if opts.server_header is not None else {}
        return ServerHandshake(
            subprotocols=opts.subprotocols,
            origins=opts.origins,
            extra_headers=opts.headers,
            compression=opts.compression,
            **kwargs,
        )

    def _upgrade(self, sock: Any, address: Any, deadline: float | None) -> WebSocket | None:
        """Read the upgrade request and answer it (``_handshake`` after TLS, if any)."""
        opts = self.options
        hs = self._new_handshake()
        request = None
        try:
            while request is None:
                if type(sock) is socket.socket:
                    _set_timeout(sock, deadline)
                    data = sock.recv(65536)
                else:
                    data = self._tls_read(sock, deadline)
                if not data:
                    if self._closing and type(sock) is socket.socket:  # woken by shutdown()
                        raise InvalidHandshake("server is shutting down", status=503)
                    sock.close()
                    return None
                request = hs.receive_data(data)
            if self._closing:
                raise InvalidHandshake("server is shutting down", status=503)
            hook = opts.process_request
            if hook is not None and self._process_request(sock, hs, hook, request, deadline):
                return None
            response = hs.accept(request)
            with self._lock:
                # The point of no return (see the docstring of _handshake): a shutdown that
                # started before it answers 503 (or has already dropped the socket); one that
                # starts after it finds the connection in ``connections`` or sees it come in.
                closing = self._closing
                if not closing:
                    self._pending.discard(sock)
                    self._tls_left(sock)
                    self._upgrading += 1  # (until _serve_connection adds the connection)
            if closing:
                raise InvalidHandshake("server is shutting down", status=503)
        except InvalidHandshake as exc:
            logger.info("rejected opening handshake from %s: HTTP %d %s", address, exc.status, exc)
            self._answer(sock, hs.reject_from(exc), deadline)
            return None
        try:
            _set_timeout(sock, deadline)
            sock.sendall(response)
            ws = WebSocket(sock, Protocol.after(SERVER, hs, opts), opts)
            hs.hand_over(ws, request)
            ws._start(hs.remainder)
        except BaseException:
            with self._lock:
                self._upgrading -= 1
                if self._closing:
                    self._handler_left.notify_all()
            raise
        return ws

    def _process_request(self, sock: socket.socket, hs: ServerHandshake, hook: Any, request: Any, deadline: Any) -> bool:
        """Run the ``process_request`` hook; True if it answered with plain HTTP (sent here)."""
        try:
            answer = hook(request.path, request.headers)
            if answer is None:
                return False
            # A malformed answer (not a triple, status 101, bad headers) is the hook's
            # failure too: answer 500 rather than drop the client without a word.
            status, headers, body = answer
            response = hs.reject(int(status), headers, body or b"")
        except BaseException:  # (SystemExit too: in this thread it would only end the thread, unanswered)
            logger.exception("process_request failed")
            raise InvalidHandshake("process_request failed", status=500) from None
        self._answer(sock, response, deadline)
        return True

    @staticmethod
    def _answer(sock: socket.socket, data: bytes, deadline: float | None, linger: float = _LINGER) -> None:
        """Send a plain HTTP answer and close.

        Half-close first, then read and drop what the client still sends (a request body,
        the rest of an oversized head) until it closes too, for at most ``_LINGER`` seconds:
        closing with unread bytes would make the kernel reset the connection, which can
        destroy the answer before the client reads it.
        """
        try:
            _set_timeout(sock, deadline)
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            end = time.monotonic() + linger
            while (left := end - time.monotonic()) > 0:
                sock.settimeout(left)
                if not sock.recv(65536):
                    break
        except OSError:
            pass
        sock.close()

    def _run_handler(self, ws: WebSocket, address: Any) -> None:
        code = 1000
        try:
            if self._wants_address:
                self.handler(ws, address if address else ws.remote_address)
            else:
                self.handler(ws)
        except ConnectionClosed as exc:
            if ws.open:  # not this connection's: another one's (a relay to a peer that left)
                logger.exception("connection handler failed for %s", address)
                code = 1011
            else:  # the peer went away while the handler was sending: not a server error
                logger.debug("connection %s closed during the handler: %s", address, exc)
        except BaseException:  # SystemExit too: it only ends this thread, leaving the connection open
            logger.exception("connection handler failed for %s", address)
            code = 1011
        try:
            ws.close(code)
        except Exception:  # pragma: no cover - close never raises on purpose
            logger.exception("error while closing %s", address)

    # ------------------------------------------------------------ stopping

    def shutdown(self) -> None:
        """Stop accepting and close every connection with 1001; those still open after
        ``shutdown_grace`` (shortened with many connections, so dropping them fits too) are
        dropped. Waits for ``serve_forever`` to return."""
        self._closing = True
        own = getattr(_handler_thread, "ws", None)
        if own is not None:  # a handler stopping its server: _close_all does not wait for it
            with self._lock:
                self._in_shutdown.add(own)
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass
        serving = self._serving_ident
        if serving is None:
            self._close_all()
        elif serving != threading.get_ident():
            self._stopped.wait()
        # else: called inside serve_forever's own thread, from a signal handler (SIGTERM):
        # serve_forever sees the wake-up byte once the handler returns and closes everything
        # itself. Closing now would close the selector's sockets under the select() the
        # signal interrupted, which Python then retries on them: it never returned (audit).

    close = shutdown

    def _close_all(self) -> None:
        with _quick_gil_handoff():
            self._close_all_now()

    def _close_all_now(self) -> None:
        with self._lock:
            self._closing = True
            if self._closed_all:
                return
            self._closed_all = True
            conns = list(self.connections)
            # The grace ends early enough for the wake-ups below to finish by ``end`` too: each
            # wakes a handler thread that competes for the GIL (~0.1 ms a connection here, twice
            # that on a loaded machine: counted at 0.2 ms; SPEC: start_websocket_server returns
            # within 0.5 s). A connection that comes in after this list is dropped by the same
            # ``deadline`` (``_drop_at``, set with the list).
            t0 = time.monotonic()
            end = t0 + self._grace + _SHUTDOWN_SLACK
            deadline = self._drop_at = end - min(len(conns) * _DROP_COST, self._grace)
            # Plain TCP: only the reading side, so that the woken thread answers 503 (as the
            # asyncio server does). TLS past its handshake: left alone, woken through
            # ``_halt_r`` (_tls_wait). TLS still in its handshake: both sides (no answer can
            # go out), on the descriptor (SSLSocket.shutdown would also drop the TLS object
            # under a thread about to use it).
            pending = [
                (sock, socket.SHUT_RD if type(sock) is socket.socket else socket.SHUT_RDWR)
                for sock in self._pending
                if sock not in self._tls_up
            ]
            if self._halt_w is not None:
                try:
                    self._halt_w.send(b"\0")  # never read: _halt_r stays readable
                except OSError:  # pragma: no cover
                    pass
                if not self._tls_up:
                    self._close_halt()
        for listener in self._listeners:
            try:
                listener.close()
            except OSError:  # pragma: no cover
                pass
        if self._unix is not None and self._unix_inode is not None:
            remove_unix_socket(self._unix, self._unix_inode)
            self._unix_inode = None
        for sock, how in pending:  # handshakes in progress: wake their threads
            try:
                socket.socket.shutdown(sock, how)
            except OSError:
                pass
        for ws in conns:
            ws._start_close(1001)
        for ws in conns:
            ws._done.wait(max(0.0, deadline - time.monotonic()))
        # Dropped in two passes: every connection first (~10 us each), then, in a thread of
        # their own, the wake-ups of the handler threads blocked on their sockets, waited for
        # until ``end`` at most. Woken one by one during the drops, those threads competed
        # with them for the GIL, running their handlers' ends: 1,500 silent peers took 0.31 s
        # here (0.03 s for the drops alone) and 0.53 s in a loaded CI run, over SPEC's 0.5 s.
        dropped = [ws for ws in conns if not ws._done.is_set()]
        for ws in dropped:
            ws._abort_asleep()
        if dropped:
            waker = threading.Thread(target=_wake_readers, args=(dropped,), name="kn_sock-shutdown-wake", daemon=True)
            try:
                waker.start()
            except RuntimeError:  # no thread to be had (out of resources, interpreter exiting)
                _wake_readers(dropped)
            else:
                waker.join(max(0.0, end - time.monotonic()))  # (past it, the wake-ups go on after we return)
        # The handlers' ends (their code after the connection closed: logs, clean-up) run
        # before we return, as far as the deadline allows (audit: the CLI's last log lines
        # were lost at exit), and connections that came in past the snapshot above (their
        # handshake past its point of no return: audit 29S) close by then too.
        with self._handler_left:
            self._handler_left.wait_for(
                lambda: self.connections <= self._in_shutdown and not self._upgrading, max(0.0, end - time.monotonic())
            )
        for s in (self._wake_r, self._wake_w):
            s.close()

    def __enter__(self) -> "WebSocketServer":
        """The server itself, shut down on exit."""
        return self

    def __exit__(self, *exc: Any) -> None:
        """Shut the server down on leaving the ``with`` block."""
        self.shutdown()

    def __repr__(self) -> str:
        return f"<WebSocketServer {self.socket.getsockname() if not self._closed_all else 'closed'}>"


def _wake_readers(dropped: list[WebSocket]) -> None:
    """Wake the threads blocked reading the sockets of connections dropped at shutdown."""
    for ws in dropped:
        with ws._lock:
            ws._wake_reader()


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            pass
    except OSError:
        pass


def start_websocket_server(
    host: str | None, port: int | None, handler: Handler, shutdown_event: EventLike | None = None, **options: Unpack[ServerOptions]
) -> None:
    """Serve WebSocket connections, calling ``handler(ws, address)`` in a thread per connection.

    Blocks until ``shutdown_event`` (a ``threading.Event``) is set — then returns within 0.5 s,
    every connection having been sent a 1001 close — or, without one, until KeyboardInterrupt.
    """
    server = WebSocketServer(host, port, handler, **options)
    server._shutdown_event = shutdown_event
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        logger.info("server interrupted")
    finally:
        server.shutdown()
