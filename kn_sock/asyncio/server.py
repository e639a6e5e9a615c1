"""asyncio WebSocket server: ``start_async_websocket_server`` and ``AsyncWebSocketServer``."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
import time
from typing import Any, Awaitable, Callable, Union

from ..exceptions import ConnectionClosed, InvalidHandshake
from ..handshake import ServerHandshake
from ..options import (
    BACKLOG,
    Options,
    check_handler,
    check_listen_options,
    check_port,
    check_server_options,
    check_unix_path,
    make_options,
)
from .._option_types import AsyncServerOptions
from .._types import Unpack  # annotations (resolvable at run time too)
from .._unix import remove_stale_socket, remove_unix_socket, socket_inode
from ..protocol import SERVER, Protocol
from ._compat import TLS_NO_LIMIT, mark_coroutine_function
from ._starter import Starter
from .connection import AsyncWebSocket, tcp_transport, unsent_bytes

__all__ = ["AsyncWebSocketServer", "serve", "start_async_websocket_server"]

logger = logging.getLogger("kn_sock")


def _server_handshake(opts: Options) -> ServerHandshake:
    """The opening handshake of one connection (invalid headers / subprotocols raise here)."""
    return ServerHandshake(
        subprotocols=opts.subprotocols,
        origins=opts.origins,
        extra_headers=opts.headers,
        compression=opts.compression,
        **({"server_header": opts.server_header} if opts.server_header is not None else {}),
    )


class _AcceptErrorLimiter(logging.Filter):
    """Out of file descriptors, asyncio logs "socket.accept() out of system resource" up to
    ``backlog`` times per readiness of a listening socket, and retries as often (CPython's
    accept loop does not stop at EMFILE): thousands of tracebacks a second (audit 87: 2.3 MB
    in 7 s). This lets one through per second, saying how many it held back."""

    MESSAGE = "socket.accept() out of system resource"

    def __init__(self) -> None:
        super().__init__()
        self._last = -1e9
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        """False for all but one such record a second."""
        if not isinstance(record.msg, str) or not record.msg.startswith(self.MESSAGE):
            return True
        now = time.monotonic()
        if now - self._last < 1.0:
            self._held += 1
            return False
        self._last = now
        if self._held:
            record.msg = f"{record.msg}\n({self._held} more in the last second not logged)"
            record.args = ()
            self._held = 0
        return True


def _limit_accept_errors() -> None:
    """Install ``_AcceptErrorLimiter`` on asyncio's logger, once."""
    asyncio_logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _AcceptErrorLimiter) for f in asyncio_logger.filters):
        asyncio_logger.addFilter(_AcceptErrorLimiter())

#: ``await handler(websocket, path)`` or ``await handler(websocket)``.
Handler = Union[Callable[[AsyncWebSocket, str], Awaitable[Any]], Callable[[AsyncWebSocket], Awaitable[Any]]]

#: How long a connection refused with an HTTP answer is read (and the bytes dropped) after
#: the answer, waiting for the client to close (see ``_ServerOpening._answer``).
_LINGER = 1.0
#: The same when the server is closing: a client mid-handshake gets its 503 without holding
#: ``wait_closed()`` (and Ctrl-C) for long.
_SHUTDOWN_LINGER = 0.1
#: The longest an HTTP answer may take to reach its client when ``close_timeout`` is None.
_ANSWER_WAIT = 30.0


def _wants_path(handler: Callable[..., Any]) -> bool:
    """Tell whether ``handler`` takes ``(websocket, path)`` (the documented form) or ``(websocket)``."""
    try:
        params = list(inspect.signature(handler).parameters.values())
    except (TypeError, ValueError):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    return len(positional) >= 2


def _accepting(task: asyncio.Task[Any]) -> bool:
    """``task`` is asyncio's making of an accepted connection's transport, not started yet
    (``BaseSelectorEventLoop._accept_connection2``, 3.10-3.13)."""
    coro = task.get_coro()
    return (
        getattr(coro, "__name__", "") == "_accept_connection2"
        and inspect.iscoroutine(coro)
        and inspect.getcoroutinestate(coro) == inspect.CORO_CREATED
    )


def _cancelling() -> bool:
    """Whether the current task has been asked to cancel (Python 3.11+; False before, where
    only our own flags tell)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling()) if cancelling is not None else False


class _ServerOpening:
    """Per-connection opening handshake on the server side, bounded by ``open_timeout``."""

    __slots__ = ("server", "hs", "timer", "task", "cancelled", "tls_task", "deadline")

    def __init__(self, server: "AsyncWebSocketServer") -> None:
        self.server = server
        self.hs: ServerHandshake | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        self.cancelled = False  # process_request's task cancelled by us (the server closing, the client gone)
        self.tls_task: asyncio.Task[Any] | None = None  # TLS: the task that ran the TLS handshake
        self.deadline: float | None = None  # TLS: open_timeout's end, counted from the TCP accept

    def connection_made(self, ws: AsyncWebSocket) -> None:
        server = self.server
        if self.tls_task is not None:
            # TLS is up: the connection is ours from now on (close() answers it 503); its
            # task ends by itself. Cancelled now, asyncio would close the transport a second
            # time, which detaches it from its TLS layer, out of our reach (audit 56).
            server._tls_pending.pop(self.tls_task, None)
            self.tls_task = None
        opts = server.options
        server.connections.add(ws)
        self.hs = server._new_handshake()
        if opts.open_timeout is not None:
            # After TLS, what is left of open_timeout (it was started anew: audit).
            when = self.deadline if self.deadline is not None else server.loop.time() + opts.open_timeout
            self.timer = server.loop.call_at(when, self._timeout, ws)
        if server.closing:
            self._reject(ws, InvalidHandshake("server is shutting down", status=503))

    def _timeout(self, ws: AsyncWebSocket) -> None:
        self.timer = None
        if ws.protocol is None and ws.transport is not None:
            logger.info("opening handshake with %s timed out", ws.remote_address)
            ws.transport.abort()

    def data_received(self, ws: AsyncWebSocket, data: bytes) -> None:
        hs = self.hs
        if hs is None or self.task is not None:
            return
        try:
            request = hs.receive_data(data)
        except InvalidHandshake as exc:
            self._reject(ws, exc)
            return
        if request is None:
            return
        if self.server.options.process_request is None:
            self._accept(ws, request)
        else:
            if ws.transport is not None:
                ws.transport.pause_reading()
            self.task = self.server.loop.create_task(self._process_request(ws, request))

    async def _process_request(self, ws: AsyncWebSocket, request: Any) -> None:
        hook = self.server.options.process_request
        response = None
        try:
            answer = hook(request.path, request.headers)  # type: ignore[misc]
            if inspect.isawaitable(answer):
                answer = await answer
            if self.hs is None or ws.transport is None:
                return  # answered meanwhile (the server closed: 503), or the client left
            if answer is not None:
                # A malformed answer (not a triple, status 101, bad headers) is the hook's
                # failure too: answer 500 rather than leave the client hanging.
                status, headers, body = answer
                if isinstance(body, str):
                    body = body.encode("utf-8")
                response = self.hs.reject(int(status), headers, body or b"")
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError) and (self.cancelled or _cancelling()):
                raise  # our cancellation (see shut_down), or the loop's: not the hook's failure
            # Anything else the hook raises is its failure, CancelledError included (from a
            # future it awaited that someone else cancelled): 500, not silence until open_timeout.
            logger.exception("process_request failed")
            if self.hs is not None:
                self._reject(ws, InvalidHandshake("process_request failed", status=500))
            if not isinstance(exc, (Exception, asyncio.CancelledError)):
                raise  # KeyboardInterrupt, SystemExit: answered, and on their way
            return
        if ws.transport is None:
            return
        if response is not None:
            self._answer(ws, response)
            return
        if self.server.closing:  # closed by the hook itself (see shut_down)
            self._reject(ws, InvalidHandshake("server is shutting down", status=503), _SHUTDOWN_LINGER)
            return
        ws.transport.resume_reading()
        self._accept(ws, request)

    def shut_down(self, ws: AsyncWebSocket) -> None:
        """The server is closing while this handshake runs: answer 503, stop ``process_request``."""
        task = self.task
        if task is not None and not task.done():
            try:
                current = asyncio.current_task()
            except RuntimeError:  # close() with the loop stopped (after run_forever, say)
                current = None
            if task is current:
                return  # the hook closed the server itself: its answer goes out (else a 503)
            self.cancelled = True
            task.cancel()
        transport = ws.transport
        if transport is not None:
            transport.resume_reading()  # paused for process_request: the linger reads to EOF
        self._reject(ws, InvalidHandshake("server is shutting down", status=503), _SHUTDOWN_LINGER)

    def _reject(self, ws: AsyncWebSocket, exc: InvalidHandshake, linger: float = _LINGER) -> None:
        logger.info("rejected opening handshake from %s: HTTP %d %s", ws.remote_address, exc.status, exc)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        transport = ws.transport
        if transport is not None:
            if self.hs is not None:
                self._answer(ws, self.hs.reject_from(exc), linger)
            else:
                transport.close()
        self.hs = None

    def _answer(self, ws: AsyncWebSocket, data: bytes, linger: float = _LINGER) -> None:
        """Send a plain HTTP answer and end the connection.

        Half-close first, then read and drop what the client still sends (a request body,
        the rest of an oversized head) until it closes too, for at most ``linger`` seconds:
        closing with unread bytes would make the kernel reset the connection, which can
        destroy the answer before the client reads it. TLS has no half-close: close (see
        ``_linger_end`` for the end of either).
        """
        self.hs = None  # from now on, whatever arrives is dropped (data_received)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        transport = ws.transport
        assert transport is not None
        transport.write(data)
        loop = self.server.loop
        # A client still reading the answer gets until close_timeout after it; one that read
        # it all is let go after ``linger`` (see _linger_end).
        limit = self.server.options.close_timeout
        wait = linger if self.server.closing else max(linger, _ANSWER_WAIT if limit is None else limit)
        if not transport.can_write_eof():  # TLS: no half-close
            transport.close()  # (asyncio flushes, sends close_notify, waits for the client's)
        else:
            try:
                transport.write_eof()
            except OSError:  # the client is gone already (ENOTCONN): nothing to linger for
                transport.abort()
                return
            transport.resume_reading()
        self.timer = loop.call_later(linger, self._linger_end, transport, loop.time() + wait)

    def _linger_end(self, transport: Any, deadline: float) -> None:
        """``linger`` after an HTTP answer: let the connection go, gently if the answer is out
        (plain TCP: close; TLS: close the TCP transport below, without waiting any more for
        the client's close_notify, which asyncio would for up to 30 s, 3.10 for ever). An
        answer still being sent waits, until ``deadline``: then abort."""
        self.timer = None
        if unsent_bytes(transport):
            if self.server.loop.time() < deadline:
                self.timer = self.server.loop.call_later(0.1, self._linger_end, transport, deadline)
            else:
                transport.abort()
            return
        if transport.can_write_eof():
            transport.close()
            return
        inner = tcp_transport(transport)
        if inner is not None:
            inner.close()
        else:
            transport.abort()

    def end_linger(self, ws: AsyncWebSocket) -> None:
        """The server is closing while an HTTP answer lingers: end it now. Plain TCP: close
        (what was written still arrives); TLS: abort (no waiting for close_notify)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        transport = ws.transport
        if transport is not None:
            if transport.can_write_eof() and not unsent_bytes(transport):
                transport.close()
            else:
                transport.abort()

    def _accept(self, ws: AsyncWebSocket, request: Any) -> None:
        hs = self.hs
        assert hs is not None
        try:
            response = hs.accept(request)
        except InvalidHandshake as exc:
            self._reject(ws, exc)
            return
        if ws.transport is None:
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        ws.transport.write(response)
        hs.hand_over(ws, request)
        proto = Protocol.after(SERVER, hs, self.server.options)
        remainder = hs.remainder
        self.hs = None
        ws.start(proto, remainder)
        self.server._start_handler(ws)

    def connection_lost(self, ws: AsyncWebSocket, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.task is not None and not self.task.done():
            self.cancelled = True
            self.task.cancel()
        self.server.connections.discard(ws)


class _TLSAccept(asyncio.Protocol):
    """A TLS server's new TCP connection, before any byte is read from it.

    The server runs each TLS handshake itself (``loop.connect_accepted_socket``, on a
    duplicate of the accepted socket) rather than through ``create_server(ssl=)``, which drops
    a failed or timed-out TLS handshake without a word (outside asyncio's debug mode): here
    it is logged, as the blocking server does.
    """

    __slots__ = ("server",)

    def __init__(self, server: "AsyncWebSocketServer") -> None:
        self.server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        server = self.server
        sock = transport.get_extra_info("socket")
        tls_sock = None
        if sock is not None and not server.closing:
            try:
                tls_sock = socket.socket(fileno=os.dup(sock.fileno()))
            except OSError as exc:
                logger.warning("cannot take over the connection from %s for TLS: %s", transport.get_extra_info("peername"), exc)
        # Nothing has been read yet (connection_made comes first): the duplicate takes over.
        transport.abort()  # type: ignore[attr-defined]
        if tls_sock is not None:
            timeout = server.options.open_timeout
            deadline = None if timeout is None else server.loop.time() + timeout
            task = server.loop.create_task(server._start_tls(tls_sock, deadline))
            server.tasks.add(task)
            server._tls_pending[task] = tls_sock
            task.add_done_callback(server._tls_done)


class AsyncWebSocketServer:
    """A listening asyncio WebSocket server; ``async with`` closes it on exit."""

    def __init__(self, handler: Handler, options: Options, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Prepare the server; ``start()`` binds it."""
        self.handler: Callable[..., Awaitable[Any]] = handler  # (its arity decides the call: _wants_path)
        self.options = options
        self.loop = loop or asyncio.get_running_loop()
        self.connections: set[AsyncWebSocket] = set()
        self._stopped: asyncio.Future[None] | None = None  # serve_forever()'s, once called
        self.tasks: set[asyncio.Task[None]] = set()
        self.closing = False
        self._server: asyncio.base_events.Server | None = None
        self._unix: tuple[Any, int] | None = None  # (path, inode) of the Unix socket bound
        self._port: int | None = None  # the bound TCP port, kept once closed
        #: TLS handshakes in progress: their tasks, and the sockets they run on.
        self._tls_pending: dict[asyncio.Task[None], socket.socket] = {}
        self._wants_path = _wants_path(handler)
        check_server_options(options)
        self._new_handshake()  # invalid options raise here, not in every connection_made

    def _new_handshake(self) -> ServerHandshake:
        return _server_handshake(self.options)

    def _factory(self) -> AsyncWebSocket:
        ws = AsyncWebSocket(SERVER, self.options, self.loop)
        ws._handshake = _ServerOpening(self)
        return ws

    def _tls_factory(self) -> _TLSAccept:
        return _TLSAccept(self)

    async def _start_tls(self, sock: socket.socket, deadline: float | None) -> None:
        """Run the TLS handshake of a new connection (bounded by ``open_timeout``, which ends
        at ``deadline`` for the whole opening handshake); the connection's protocol starts
        once it succeeds. A failure is logged (INFO) and dropped."""
        try:
            peer = sock.getpeername()
        except OSError:
            peer = None
        task = asyncio.current_task()

        def factory() -> AsyncWebSocket:
            ws = self._factory()
            ws._handshake.tls_task = task
            ws._handshake.deadline = deadline
            return ws

        # (asyncio wants a positive timeout: a deadline already past drops at its first check)
        timeout = TLS_NO_LIMIT if deadline is None else max(deadline - self.loop.time(), 1e-3)
        try:
            await self.loop.connect_accepted_socket(factory, sock, ssl=self.options.ssl, ssl_handshake_timeout=timeout)
        except asyncio.CancelledError:
            sock.close()
            raise
        except Exception as exc:
            if not self.closing:  # (close() drops the handshakes in progress)
                logger.info("TLS handshake with %s failed: %s", peer, str(exc) or type(exc).__name__)
            sock.close()

    def _tls_done(self, task: asyncio.Task[None]) -> None:
        sock = self._tls_pending.pop(task, None)
        self.tasks.discard(task)
        if sock is not None and task.cancelled():
            sock.close()  # (cancelled before its first step, the task never closed it)

    async def start(self, host: str | None, port: int | None, **kwargs: Any) -> "AsyncWebSocketServer":
        """Bind and listen (``unix=path`` for a Unix socket); return self."""
        # TLS: each connection's handshake is run by _start_tls (logged when it fails; a
        # silent client is dropped after open_timeout there too).
        factory: Callable[[], asyncio.BaseProtocol] = self._factory if self.options.ssl is None else self._tls_factory
        _limit_accept_errors()
        if kwargs.get("backlog") is None:
            kwargs["backlog"] = BACKLOG
        unix = kwargs.pop("unix", None)
        if unix is not None:
            remove_stale_socket(unix)  # (asyncio would remove a live server's file too)
            self._server = await self.loop.create_unix_server(factory, unix, **kwargs)
            inode = socket_inode(unix)
            if inode is not None:
                self._unix = (unix, inode)  # removed by close() (asyncio < 3.13 leaves it)
        else:
            check_port(port)
            self._server = await self.loop.create_server(factory, host, port, **kwargs)
            if not port and "sock" not in kwargs:
                await self._same_port_everywhere(host, factory, kwargs)
        for sock in self.sockets:
            name = sock.getsockname()
            if isinstance(name, tuple):
                self._port = int(name[1])
                break
        return self

    async def _same_port_everywhere(self, host: str | None, factory: Any, kwargs: dict[str, Any]) -> None:
        """With port 0 and several addresses (``host=None``: IPv4 and IPv6), bind one port on all."""
        for _ in range(5):
            assert self._server is not None
            ports = {sock.getsockname()[1] for sock in self._server.sockets}
            if len(ports) <= 1:
                return
            chosen = self._server.sockets[0].getsockname()[1]
            self._server.close()
            try:
                self._server = await self.loop.create_server(factory, host, chosen, **kwargs)
            except OSError:  # taken on another family meanwhile: draw again
                self._server = await self.loop.create_server(factory, host, 0, **kwargs)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets (none once closing)."""
        return tuple(self._server.sockets) if self._server is not None and not self.closing else ()

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``); still known once the server is closed."""
        if self._port is None:
            raise RuntimeError("the server is not listening on TCP")
        return self._port

    def __repr__(self) -> str:
        sockets = self.sockets
        where = sockets[0].getsockname() if sockets else ("closed" if self.closing else "not listening")
        return f"<AsyncWebSocketServer {where}>"

    def _start_handler(self, ws: AsyncWebSocket) -> None:
        task = self.loop.create_task(self._run_handler(ws))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run_handler(self, ws: AsyncWebSocket) -> None:
        code = 1000
        cancelled: asyncio.CancelledError | None = None
        try:
            running = self.handler(ws, ws.path) if self._wants_path else self.handler(ws)
            if not inspect.isawaitable(running):
                raise TypeError(f"the handler must be an async function (async def): it returned "
                                f"{type(running).__name__}, not an awaitable")
            await running
        except asyncio.CancelledError as exc:
            cancelled = exc  # closed with 1001, then the cancellation goes on (asyncio's rule)
            code = 1001
        except ConnectionClosed as exc:
            if ws.open:  # not this connection's: another one's (a relay to a peer that left)
                logger.exception("connection handler failed for %s", ws.remote_address)
                code = 1011
            else:  # the peer went away while the handler was sending: not a server error
                logger.debug("connection %s closed during the handler: %s", ws.remote_address, exc)
        except Exception:
            logger.exception("connection handler failed for %s", ws.remote_address)
            code = 1011
        try:
            await ws.close(code)
        except Exception:  # pragma: no cover - close never raises on purpose
            logger.exception("error while closing %s", ws.remote_address)
        if cancelled is not None:
            raise cancelled

    def close(self, close_connections: bool = True) -> None:
        """Stop listening and close every connection with 1001 (going away)."""
        self.closing = True
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)  # serve_forever() returns
        if self._server is not None:
            self._stop_listening()
        if self._unix is not None:
            remove_unix_socket(*self._unix)
            self._unix = None
        if close_connections:
            for task, sock in list(self._tls_pending.items()):  # in their TLS handshake: drop them
                # By ending the socket: the handshake fails at once and asyncio closes its
                # transport. Not by cancelling the task: a handshake that completes later in
                # this loop iteration makes the connection ours (503), and the cancellation,
                # arriving after, would make asyncio close that transport a second time,
                # which detaches it from its TLS layer, out of reach until asyncio's 30 s
                # shutdown timeout (audit 58).
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:  # (not connected any more, or no longer this socket's)
                    task.cancel()
            for ws in list(self.connections):
                if ws.protocol is None:
                    opening = ws._handshake
                    try:
                        if opening.hs is not None:  # mid-handshake: a 503, as websockets answers
                            opening.shut_down(ws)
                        else:  # answered already, lingering until the client closes (``_answer``)
                            opening.end_linger(ws)
                    except Exception as exc:  # one connection's trouble never stops close()
                        logger.debug("closing the handshake with %s: %s", ws.remote_address, exc)
                        ws.abort()
                else:
                    task = self.loop.create_task(ws.close(1001))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)

    def _stop_listening(self) -> None:
        """Close the listening sockets. Selector loops, with connections accepted whose
        transports asyncio has not made yet (tasks that have not run): stop accepting now, but
        let asyncio's server go one loop iteration later, so that they are still attached to
        it and get their 503 (``connection_made``); closed at once, it fails their transport
        creation and leaves each socket open, the client waiting for ``open_timeout``
        (asyncio's own race). Otherwise, at once (a loop stopped right after close() would
        never run a deferred close: the port would stay open)."""
        server = self._server
        assert server is not None
        loop = self.loop
        if (
            isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop)
            and loop.is_running()
            and any(_accepting(task) for task in asyncio.all_tasks(loop))
        ):
            for sock in server.sockets:
                fd = sock.fileno()
                loop.remove_reader(fd)
                # Not listening any more from now on, even if the loop stops before the
                # deferred close (a signal handler's close(); loop.stop()): shut down through
                # a duplicate (asyncio owns the socket object), which ends the listening state.
                try:
                    with socket.socket(fileno=os.dup(fd)) as dup:
                        dup.shutdown(socket.SHUT_RD)
                except OSError:  # (not on every platform: the deferred close does it)
                    pass
            loop.call_soon(server.close)
        else:
            server.close()

    async def wait_closed(self) -> None:
        """Wait until the server and every connection are closed."""
        if self._server is not None:
            await self._server.wait_closed()
        while True:
            # What is still open or running, judged here: a finished task leaves ``tasks``
            # through a done callback that runs on a later loop iteration, and gather() of
            # finished awaitables (Python 3.12+) completes without ever yielding to the loop.
            waits: list[Awaitable[None]] = [ws.wait_closed() for ws in self.connections if not ws._closed_fut.done()]
            waits += [task for task in self.tasks if not task.done()]
            if not waits:
                return
            # Shielded: cancelling this wait (wait_for(server.wait_closed(), t)) must not
            # cancel the handlers or the closing handshakes it waits for.
            await asyncio.shield(asyncio.gather(*waits, return_exceptions=True))

    async def serve_forever(self) -> None:
        """Serve until ``close()`` (then return once closed) or until cancelled (close, re-raise)."""
        if self._stopped is None:
            self._stopped = self.loop.create_future()
            if self.closing:
                self._stopped.set_result(None)
        try:
            await asyncio.shield(self._stopped)  # shared by every caller: one's cancel is its own
        finally:
            self.close()
            await self.wait_closed()

    async def __aenter__(self) -> "AsyncWebSocketServer":
        """The server itself, closed on exit."""
        return self

    async def __aexit__(self, *exc: Any) -> None:
        """Close the server and wait until it is closed, on leaving the ``async with`` block."""
        self.close()
        await self.wait_closed()


class serve(Starter[AsyncWebSocketServer]):
    """``start_async_websocket_server(...)``: await it for a started server, or use it with
    ``async with`` (closed on exit), as websockets' ``serve()``; also a coroutine."""

    def __init__(self, host: str | None, port: int | None, handler: Handler, **options: Unpack[AsyncServerOptions]) -> None:
        """Validate the options now; bind and listen when awaited."""
        # (private: a forgotten ``await`` must not leave a ``.port`` or ``.close()`` that seems to work)
        self._listen = {k: options.pop(k) for k in ("unix", "reuse_port", "reuse_address", "backlog", "sock") if k in options}
        check_unix_path(self._listen.get("unix"))  # (at the call, as the blocking server)
        check_listen_options(self._listen)
        check_handler(handler)
        self._options = make_options(options)
        check_server_options(self._options)
        _server_handshake(self._options)  # (headers, server_header...: refused at the call, not when awaited)
        self._host, self._port, self._handler = host, port, handler

    async def _start(self) -> AsyncWebSocketServer:
        server = AsyncWebSocketServer(self._handler, self._options)
        return await server.start(self._host, self._port, **self._listen)


def start_async_websocket_server(host: str | None, port: int | None, handler: Handler, **options: Unpack[AsyncServerOptions]) -> serve:
    """Start an asyncio WebSocket server calling ``await handler(websocket, path)`` per connection.

    ``server = await start_async_websocket_server(...)`` (a started, listening server), or
    ``async with start_async_websocket_server(...) as server:`` (closed on exit). Unknown or
    invalid options raise at once (TypeError / ValueError); binding errors when awaited.
    """
    return serve(host, port, handler, **options)


mark_coroutine_function(start_async_websocket_server)  # SPEC.md calls it a coroutine
