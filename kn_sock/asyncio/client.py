"""asyncio WebSocket client: ``async_connect_websocket``, and the reconnecting client it
returns with ``reconnect=`` (see :mod:`kn_sock.reconnect` for the policy)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import ssl as ssl_module
from collections.abc import Mapping
from typing import Any, AsyncIterator, Literal, TypeVar, overload

from ..exceptions import ConnectionClosed, ConnectionClosedError, InvalidHandshake, InvalidStatus
from ..handshake import MAX_REDIRECTS, ClientHandshake, redirect_options, redirect_target
from ..options import Options, check_client_transport, checked_timeout, client_uri, make_options
from ..protocol import CLIENT, Protocol, State, exit_close_code
from ..proxy import ConnectAnswer, ProxyURI, connect_request, proxy_for
from ..reconnect import ReconnectingState, ReconnectPolicy, by_app, end_code, queueable, retryable_error
from .._unix import async_unix_connect
from ..uri import WebSocketURI
from ._compat import TLS_NO_LIMIT, cancelling
from ._compat import timeout as _timeout
from ._starter import Starter
from .connection import AsyncWebSocket

from .._option_types import ClientOptions
from .._types import Message, Unpack  # annotations (resolvable at run time too, e.g. get_type_hints)

__all__ = ["async_connect_websocket", "connect", "AsyncReconnectingWebSocket"]

logger = logging.getLogger("kn_sock")


class _ClientOpening:
    """Client side of the opening handshake for one connection."""

    __slots__ = ("wsuri", "opts", "fut", "hs")

    def __init__(
        self, wsuri: WebSocketURI, opts: Options, fut: asyncio.Future[AsyncWebSocket], hs: ClientHandshake
    ) -> None:
        self.wsuri = wsuri
        self.opts = opts
        self.fut = fut
        self.hs: ClientHandshake | None = hs

    def connection_made(self, ws: AsyncWebSocket) -> None:
        hs = self.hs
        assert hs is not None and ws.transport is not None
        ws.path = self.wsuri.path
        ws.request_headers = hs.request.headers
        ws.transport.write(hs.data_to_send())

    def data_received(self, ws: AsyncWebSocket, data: bytes) -> None:
        hs = self.hs
        if hs is None or self.fut.done():
            return
        try:
            response = hs.receive_data(data)
        except InvalidHandshake as exc:
            self.fut.set_exception(exc)
            if ws.transport is not None:
                ws.transport.close()
            return
        if response is None:
            return
        ws.response_headers = response.headers
        proto = Protocol.after(CLIENT, hs, self.opts)
        remainder = hs.remainder
        self.hs = None
        ws._handshake = None  # (ws -> this -> fut -> ws: a cycle keeping a closed client alive)
        self.fut.set_result(ws)
        ws.start(proto, remainder)

    def connection_lost(self, ws: AsyncWebSocket, exc: Exception | None) -> None:
        if not self.fut.done():
            error = InvalidHandshake(f"connection closed during the opening handshake: {exc or 'EOF'}")
            error.__cause__ = exc if exc is not None else EOFError("EOF")  # no HTTP status came
            self.fut.set_exception(error)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark a future's exception as retrieved (no 'exception was never retrieved' log)."""
    if not fut.cancelled():
        fut.exception()


async def _open(wsuri: WebSocketURI, opts: Options, timeout: Any = "default") -> AsyncWebSocket:
    """Connect to ``wsuri``, following up to ``MAX_REDIRECTS`` redirections, all within ``timeout``."""
    if timeout == "default":
        timeout = opts.open_timeout
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    for _ in range(MAX_REDIRECTS + 1):
        try:
            return await _open_once(wsuri, opts, timeout)
        except InvalidStatus as exc:
            if opts.extra.get("sock") is not None:  # a caller's socket goes to one place only
                raise
            target = redirect_target(wsuri, exc, unix=opts.extra.get("unix") is not None)
            if target is None:
                raise
            logger.info("%s redirected (HTTP %d) to %s", wsuri.shown, exc.status, target.shown)
            opts = redirect_options(opts, wsuri, target)  # (another origin: no credential headers)
            wsuri = target
        if deadline is not None:
            timeout = deadline - loop.time()
            if timeout <= 0:
                raise TimeoutError("timed out during the opening handshake")
    raise InvalidHandshake(f"more than {MAX_REDIRECTS} redirections")


async def _tunnel(loop: asyncio.AbstractEventLoop, proxy: ProxyURI, wsuri: WebSocketURI, opts: Options) -> socket.socket:
    """Connect to the HTTP proxy and ask it for a tunnel to ``wsuri``'s server (CONNECT); the
    socket, to hand to ``create_connection`` (bounded by the caller's ``open_timeout``)."""
    infos = await loop.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM)
    error: OSError | None = None
    for family, type_, proto, _, address in infos:
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        break
    else:
        raise error or OSError(f"cannot resolve the proxy {proxy.shown}")
    try:
        answer = ConnectAnswer(proxy)
        await loop.sock_sendall(sock, connect_request(proxy, wsuri, opts.user_agent))
        while not answer.feed(await loop.sock_recv(sock, 65536)):
            pass
    except BaseException:
        sock.close()
        raise
    logger.debug("tunnel to %s:%d through %s", wsuri.host, wsuri.port, proxy.shown)
    return sock


async def _open_once(wsuri: WebSocketURI, opts: Options, timeout: float | None) -> AsyncWebSocket:
    """One connection attempt: TCP (+ TLS) and the opening handshake with ``wsuri``."""
    loop = asyncio.get_running_loop()
    hs = ClientHandshake.from_options(wsuri, opts)
    ssl = opts.ssl
    if wsuri.secure and not ssl:
        ssl = True
    if ssl is True:
        ssl = ssl_module.create_default_context()
    fut: asyncio.Future[AsyncWebSocket] = loop.create_future()

    def factory() -> AsyncWebSocket:
        ws = AsyncWebSocket(CLIENT, opts, loop)
        ws._handshake = _ClientOpening(wsuri, opts, fut, hs)
        return ws

    transport = None
    try:
        async with _timeout(timeout):
            host = wsuri.host[1:-1] if wsuri.host.startswith("[") else wsuri.host
            # (open_timeout bounds the TLS handshake with the rest: asyncio's own limit, off)
            tls: dict[str, Any] = {"ssl": ssl, "server_hostname": host, "ssl_handshake_timeout": TLS_NO_LIMIT} if ssl else {}
            sock = opts.extra.get("sock")
            unix = opts.extra.get("unix")
            if sock is not None:
                transport, ws = await loop.create_connection(factory, sock=sock, **tls)
            elif unix is not None:
                usock = await async_unix_connect(unix)  # (asyncio's own takes a full backlog for success)
                try:
                    transport, ws = await loop.create_unix_connection(factory, sock=usock, **tls)
                except BaseException:
                    usock.close()  # (if asyncio had not: closing twice is harmless)
                    raise
            elif (proxy := proxy_for(wsuri, opts.extra.get("proxy"))) is not None:
                psock = await _tunnel(loop, proxy, wsuri, opts)
                try:
                    transport, ws = await loop.create_connection(factory, sock=psock, **tls)
                except BaseException:
                    psock.close()
                    raise
            else:
                transport, ws = await loop.create_connection(factory, host, wsuri.port, **tls)
            return await fut
    except BaseException as exc:
        if transport is not None:
            transport.abort()
        if fut.done():
            if not fut.cancelled():
                fut.exception()
        else:
            # The connection may still fail after we have gone (asyncio closing a transport
            # it had just made when the cancel came): nobody is left to read that error.
            fut.add_done_callback(_retrieve)
        if isinstance(exc, TimeoutError):  # asyncio.timeout's says nothing; the blocking client's words
            raise TimeoutError("timed out during the opening handshake") from None
        raise


_W = TypeVar("_W")  # what the connection is: AsyncWebSocket, or the reconnecting one


class connect(Starter[_W]):
    """``async_connect_websocket(...)``: await it for a connection, or use it with ``async with``.

    It is also a coroutine (``send``/``throw``/``close``), so ``asyncio.create_task``,
    ``TaskGroup.create_task`` and ``asyncio.run`` take it, as they take aiohttp's ``ws_connect()``.
    """

    @overload
    def __init__(
        self: "connect[AsyncWebSocket]",
        host_or_uri: str,
        port: int | None = None,
        path: str = "/",
        *,
        reconnect: Literal[False] | None = False,
        **options: Unpack[ClientOptions],
    ) -> None: ...
    @overload
    def __init__(
        self: "connect[AsyncReconnectingWebSocket]",
        host_or_uri: str,
        port: int | None = None,
        path: str = "/",
        *,
        reconnect: Literal[True] | Mapping[str, Any] | ReconnectPolicy,
        **options: Unpack[ClientOptions],
    ) -> None: ...
    @overload
    def __init__(
        self: "connect[AsyncWebSocket | AsyncReconnectingWebSocket]",
        host_or_uri: str,
        port: int | None = None,
        path: str = "/",
        *,
        reconnect: bool | Mapping[str, Any] | ReconnectPolicy | None,
        **options: Unpack[ClientOptions],
    ) -> None: ...
    def __init__(self, host_or_uri: str, port: int | None = None, path: str = "/", **options: Any) -> None:
        """Validate the URI and options now; connect when awaited."""
        self._options = make_options(options, allow=("ack", "sock", "unix", "proxy"))
        self._wsuri = client_uri(host_or_uri, port, path, self._options)
        check_client_transport(self._options)
        self._policy = ReconnectPolicy.from_option(self._options.reconnect)
        if self._options.extra.get("ack") and self._policy is None:
            raise ValueError("ack= needs reconnect=")
        ClientHandshake.from_options(self._wsuri, self._options)  # bad subprotocols / headers / origin raise here

    async def _start(self) -> Any:
        if self._policy is None:
            ws = await _open(self._wsuri, self._options)
            if self._options.on_connect is not None:
                await _first_on_connect(ws, self._options.on_connect)
            return ws
        rws = AsyncReconnectingWebSocket(self._wsuri, self._options, self._policy)
        await rws._connect_first()
        return rws

    @property
    def ws(self) -> _W | None:
        """The connection, once entered with ``async with``."""
        result: _W | None = self._result
        return result


async def _first_on_connect(ws: AsyncWebSocket, on_connect: Any) -> None:
    """Without ``reconnect=``, ``on_connect(ws)`` runs once, after the first (only) connection:
    if it raises, the connection is closed (1011) and the connect call raises it."""
    try:
        await _maybe_await(on_connect(ws))
    except Exception:
        await ws.close(1011, "on_connect failed")
        raise
    except BaseException:
        ws.abort()
        raise


@overload
def async_connect_websocket(
    host_or_uri: str, port: int | None = None, path: str = "/", *, reconnect: Literal[False] | None = False, **options: Unpack[ClientOptions]
) -> connect[AsyncWebSocket]: ...
@overload
def async_connect_websocket(
    host_or_uri: str, port: int | None = None, path: str = "/", *, reconnect: Literal[True] | Mapping[str, Any] | ReconnectPolicy, **options: Unpack[ClientOptions]
) -> connect[AsyncReconnectingWebSocket]: ...
@overload
def async_connect_websocket(
    host_or_uri: str, port: int | None = None, path: str = "/", *, reconnect: bool | Mapping[str, Any] | ReconnectPolicy | None, **options: Unpack[ClientOptions]
) -> connect[AsyncWebSocket | AsyncReconnectingWebSocket]: ...
def async_connect_websocket(host_or_uri: str, port: int | None = None, path: str = "/", **options: Any) -> connect[Any]:
    """Open an asyncio WebSocket client connection: ``await`` it or use ``async with``.

    Gives an ``AsyncWebSocket``; with ``reconnect=True`` (or a dict of ``ReconnectPolicy``
    arguments) an ``AsyncReconnectingWebSocket`` with the same surface. Besides the options
    of SPEC.md: ``unix`` (connect to this Unix socket path instead; the URI still gives
    ``Host``, the path and TLS), ``sock`` (an already connected socket to use) or ``proxy``
    (an HTTP proxy to tunnel through, ``"http://[user:password@]host[:port]"``, or True for the
    ``*_proxy`` environment variables; see :mod:`kn_sock.proxy`).

    Raises:
        InvalidURI: (at once) the URI is not a valid ws:// or wss:// URI (or ``proxy`` not an
            HTTP proxy URL).
        InvalidProxyStatus: the proxy refused the tunnel (``status``; 407: credentials).
        TypeError: (at once) an unknown option.
        InvalidStatus / InvalidHandshake: the server refused the upgrade (with reconnect on:
            a refusal that is not worth retrying, see ``retryable_error``).
        TimeoutError: no connection within ``open_timeout`` (with reconnect on: the time
            for every initial attempt together).
        OSError: the TCP connection failed (with reconnect on: every attempt allowed failed).
    """
    return connect(host_or_uri, port, path, **options)


def _current_task() -> asyncio.Task[Any] | None:
    """The running task, None outside one (``abort()`` is a plain method)."""
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


async def _maybe_await(value: Any) -> None:
    if inspect.isawaitable(value):
        await value


def _writable(ws: AsyncWebSocket) -> bool:
    """Whether a message sent on ``ws`` now is handed to its TCP connection (not lost unsent):
    open, with a transport that is not closing (a failed write closes it before asyncio
    reports the loss, one loop iteration later)."""
    transport = ws.transport
    return ws.open and transport is not None and not transport.is_closing()


class AsyncReconnectingWebSocket(ReconnectingState):
    """An asyncio client connection that reopens itself (``reconnect=`` option, SPEC.md "Reconnection").

    The surface of ``AsyncWebSocket``: ``send``, ``recv``, ``async for``, ``send_json`` /
    ``recv_json``, ``ping``, ``pong``, ``close``, ``async with``; other attributes
    (``subprotocol``, ``remote_address``, ``latency``, ``response_headers``, ...) are those
    of the current connection, ``connection``.

    - ``recv()`` waits across reconnections; it returns None only once no reconnection
      will follow (``closed``).
    - ``send()`` while disconnected (or while queued messages are still being flushed)
      queues the message, at most ``max_pending``; the queue goes out in order after
      ``on_connect``. A message handed to a connection that then died is not sent again,
      unless ``ack=`` is on (see ``ack``).
    - ``on_connect(conn)`` (a function or coroutine function) gets each new underlying
      ``AsyncWebSocket`` before the queued messages are flushed, so what it sends
      (re-subscriptions) goes first; ``recv()`` takes the new connection's messages only
      once it has returned (what on_connect reads, a re-subscription's answer, is its own).
    - ``connected``, ``reconnects`` (successful reconnections), ``last_close_code`` (how
      the previous connection ended), ``close_code`` / ``close_reason`` (the current one's).
    """

    @property
    def on_message(self) -> Any:
        """The current connection's ``on_message`` (the callback style belongs to one
        connection: set it on ``connection``, again in ``on_connect`` after each reconnection)."""
        return self._ws.on_message

    @on_message.setter
    def on_message(self, callback: Any) -> None:
        # Accepted silently, it did nothing: messages still went to recv() (audit).
        raise AttributeError(
            "a reconnecting client has no on_message of its own: set it on the current connection "
            "(ws.connection.on_message, in on_connect so that it is set again after each reconnection)"
        )

    def __init__(self, wsuri: WebSocketURI, opts: Options, policy: ReconnectPolicy) -> None:
        self._wsuri = wsuri
        self._opts = opts
        self._policy = policy
        self._init_state(opts.max_pending, opts.extra.get("ack"))
        self._task: asyncio.Task[None] | None = None
        self._changed: asyncio.Future[None] | None = None

    def _notify(self) -> None:
        fut = self._changed
        if fut is not None:
            self._changed = None
            if not fut.done():
                fut.set_result(None)

    def _closed_error(self) -> ConnectionClosed:
        ws = self._ws
        if ws is not None and ws.protocol is not None:
            return ws.protocol.closed_exception()
        return ConnectionClosedError(1006, "", "the connection is closed and will not reconnect")

    def _will_reconnect(self, ws: AsyncWebSocket) -> bool:
        """Unless ``ws`` is still open: will the supervisor reopen it?"""
        proto = ws.protocol
        if proto is None or proto.state is State.OPEN and ws.transport is not None:
            return True
        return not self._closing and proto.state is State.CLOSED and self._policy.reopens(ws)

    # ------------------------------------------------------------ connecting

    async def _connect_first(self) -> None:
        """The first connection: retried per the policy while ``open_timeout`` lasts."""
        policy = self._policy
        policy.start(self._opts.open_timeout)
        while True:
            try:
                ws = await _open(self._wsuri, self._opts, policy.remaining())
                break
            except Exception as exc:
                if not retryable_error(exc):
                    raise
                delay = policy.next_delay()
                if delay is None:
                    raise
                logger.info("connecting to %s failed (%s); retrying in %.3f s", self._wsuri.shown, exc, delay)
                await asyncio.sleep(delay)
        policy.reset()
        self._ws = ws
        connected = True
        try:
            await _maybe_await(self._opts.on_connect(ws)) if self._opts.on_connect else None
        except ConnectionClosed:
            if ws.open:  # not this connection's end (another one's): on_connect failed
                self._final = True
                await ws.close(1011)
                raise
            # The connection ended under on_connect (a server answering 1013 "try again
            # later", say): as after any retryable end, the supervisor reconnects.
            try:  # how it ended decides (the closing is bounded by close_timeout)
                async with _timeout(None if self._opts.close_timeout is None else self._opts.close_timeout + 1):
                    await ws._wait_ended()
            except TimeoutError:  # pragma: no cover - the close timer fires first
                pass
            if self._closing or not self._policy.reopens(ws):
                self._final = True
                raise
            logger.info("connection to %s lost during on_connect: reconnecting", self._wsuri.shown)
            connected = False
        except Exception:
            self._final = True
            await ws.close(1011)
            raise
        except BaseException:
            # Cancelled (a timeout around the connect call): drop it now, as without
            # reconnect=; a closing handshake here waited up to close_timeout (audit).
            self._final = True
            ws.abort()
            raise
        self.connected = connected
        self._task = asyncio.get_running_loop().create_task(self._supervise())

    async def _supervise(self) -> None:
        """Watch the connection; reopen it when it ends in a way worth a retry."""
        setup_failed = False  # on_connect raised: reconnect whatever the close code
        try:
            while True:
                ws = self._ws
                assert ws is not None
                await ws._wait_ended()  # the closing handshake, not TCP: a server may hold TCP open
                self.connected = False
                code = self.last_close_code = end_code(ws.protocol)
                if self._closing:
                    break
                if not setup_failed and not self._policy.reopens(ws):
                    logger.info("connection to %s closed with %d%s: not reconnecting", self._wsuri.shown, code, by_app(ws))
                    break
                self._outbox.requeue()
                logger.info("connection to %s lost (%d): reconnecting", self._wsuri.shown, code)
                new = await self._reconnect()
                if new is None:
                    break
                self._replaced(ws)
                self._ws = new
                on_connect = self._opts.on_connect
                if on_connect is not None:
                    self._settling = new
                    self._settling_runner = asyncio.current_task()
                else:
                    self.reconnects += 1  # successful reconnections (see below)
                self._notify()
                setup_failed = lost = False
                if on_connect is not None:
                    usable = False
                    try:
                        await _maybe_await(on_connect(new))
                        usable = True
                    except Exception as exc:
                        setup_failed = self._setup_failed(exc, new)
                        lost = not setup_failed  # ended under it: its close code decides (above)
                    finally:
                        self._settling = None
                        if usable:  # counted as recv() may take the session's messages
                            self.reconnects += 1
                        self._notify()
                if setup_failed:
                    await new._close(1011, "on_connect failed")  # not the application's close: reconnect
                    continue
                if lost:
                    continue
                self._policy.reset()
                await self._flush(new)
        finally:
            self._final = True
            self.connected = False
            self._drop_outbox()
            self._notify()

    async def _reconnect(self) -> AsyncWebSocket | None:
        """Attempts with backoff until one succeeds (the connection) or the policy gives up (None)."""
        policy = self._policy
        while not self._closing:
            delay = policy.next_delay()
            if delay is None:
                logger.warning("giving up reconnecting to %s after %d attempts", self._wsuri.shown, policy.attempts)
                return None
            logger.info("reconnecting to %s in %.3f s (attempt %d)", self._wsuri.shown, delay, policy.attempts)
            await asyncio.sleep(delay)
            if self._closing:
                return None
            try:
                ws = await _open(self._wsuri, self._opts)
            except Exception as exc:
                if not retryable_error(exc):
                    logger.warning("reconnecting to %s refused (%s): giving up", self._wsuri.shown, exc)
                    return None
                logger.info("reconnection attempt %d to %s failed: %s", policy.attempts, self._wsuri.shown, exc)
                continue
            logger.info("reconnected to %s", self._wsuri.shown)  # (the policy is reset once on_connect succeeded)
            return ws
        return None

    async def _flush(self, ws: AsyncWebSocket) -> None:
        """Send the queued messages in order; ``connected`` once the queue is empty."""
        outbox = self._outbox
        pending = outbox.pending
        while pending:
            if ws._frag_done is not None:  # a fragmented message on_connect's task is sending
                await ws._wait_fragmented()
                continue
            if not _writable(ws):
                return  # died again: the supervisor sees it and reconnects
            message = pending.popleft()
            # Open and no await before the write: this message is handed to TCP now.
            outbox.sent(message)
            try:
                await ws.send(message)
            except ConnectionClosed:
                pass  # died while draining: the frame was handed over, not re-sent
            except Exception:  # pragma: no cover - queueable() checked it; never end the client
                logger.exception("queued message for %s could not be sent: dropped", self._wsuri.shown)
        self.connected = True

    async def _wait_change(self, timeout: float | None) -> None:
        if self._changed is None:
            self._changed = asyncio.get_running_loop().create_future()
        async with _timeout(timeout):
            await asyncio.shield(self._changed)

    # ------------------------------------------------------------ the connection's surface

    async def send(self, message: Message, compress: bool | None = None) -> None:
        """Send now when connected, else queue (see the class docstring).

        Raises:
            ConnectionClosed: closed for good, or ``max_pending`` messages already wait.
            TypeError: a message of another type.
        """
        if self._final or self._closing:
            raise self._closed_error()
        outbox = self._outbox
        ws = self._ws
        while ws is not None and ws._frag_done is not None and self.connected and _writable(ws):
            # Another task's fragmented message goes first. Waited here, not in ws.send(): if
            # the connection dies meanwhile, this message (never written) is queued below
            # rather than lost with the dead connection's ConnectionClosed (audit).
            await ws._wait_fragmented()
            if self._final or self._closing:
                raise self._closed_error()
            ws = self._ws
        if self.connected and ws is not None and _writable(ws) and not outbox.pending:
            if outbox.ack is not None:
                outbox.check_room()
                if hasattr(message, "__aiter__"):
                    message = [part async for part in message]  # type: ignore[assignment]  # its fragments, listed
                message = queueable(message)
                outbox.sent(message)
            try:
                await ws.send(message, compress)
            except ConnectionClosed:
                if ws.transport is not None or not self._policy.reopens(ws):
                    raise
            return
        if self.connected and ws is not None and ws.protocol is not None and not self._will_reconnect(ws):
            raise ws.protocol.closed_exception()  # ended for good; the supervisor has not noticed yet
        if hasattr(message, "__aiter__"):
            message = [part async for part in message]  # type: ignore[assignment]  # its fragments, listed
        outbox.add(queueable(message))

    async def send_json(self, obj: Any) -> None:
        """Send ``obj`` as a JSON text message (queued while disconnected)."""
        import json

        await self.send(json.dumps(obj))

    async def recv(self, timeout: float | None = None) -> str | bytes | None:
        """Return the next message, waiting across reconnections; None once closed for good.

        Raises:
            TimeoutError: no message within ``timeout`` seconds.
            ValueError / TypeError: ``timeout`` is NaN / not a number.
        """
        if timeout is not None:
            timeout = checked_timeout(timeout)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            # What ended connections received comes first, in order.
            message = self._take_ended() if self._ended else None
            ws = self._ws
            assert ws is not None
            if message is None and ws is self._settling and asyncio.current_task() is not self._settling_runner:
                # on_connect is running with this new connection: what it brings first is
                # on_connect's to read; wait until it returns.
                left = None if deadline is None else max(0.0, deadline - loop.time())
                try:
                    await self._wait_change(left)
                except TimeoutError:
                    raise TimeoutError("no message received in time") from None
                continue
            if message is None:
                left = None if deadline is None else max(0.0, deadline - loop.time())
                message = await ws.recv(left)
            if message is not None:
                if self._outbox.ack is not None:
                    self._outbox.received(message)
                return message
            if self._ended:
                continue
            if self._final:
                return None
            if self._ws is ws:
                left = None if deadline is None else max(0.0, deadline - loop.time())
                try:
                    await self._wait_change(left)
                except TimeoutError:
                    raise TimeoutError("no message received in time") from None

    async def recv_json(self, timeout: float | None = None) -> Any:
        """Receive a message and decode it as JSON; None once closed for good."""
        import json

        message = await self.recv(timeout)
        return None if message is None else json.loads(message)

    def ack(self, n: int = 1) -> int:
        """Ack mode: the ``n`` oldest unacknowledged messages arrived; return how many were dropped.

        Raises:
            InvalidState: the client was not opened with ``ack=``.
        """
        if self._outbox.ack is None:
            from ..exceptions import InvalidState

            raise InvalidState("ack() needs the ack= option")
        return self._outbox.acknowledge(n)

    def __aiter__(self) -> AsyncIterator[str | bytes]:
        """``async for message in ws`` continues across reconnections."""
        return self

    async def __anext__(self) -> str | bytes:
        """The next message; StopAsyncIteration once the connection is closed."""
        message = await self.recv()
        if message is None:
            raise StopAsyncIteration
        return message

    async def ping(self, data: bytes | str = b"") -> asyncio.Future[float]:
        """Ping the current connection.

        Raises:
            ConnectionClosed: disconnected (reconnecting) or closed for good.
        """
        if not self.open:
            raise self._closed_error() if self._final else ConnectionClosedError(1006, "", "reconnecting")
        return await self._ws.ping(data)  # type: ignore[union-attr]

    async def pong(self, data: bytes | str = b"") -> None:
        """Send an unsolicited pong on the current connection.

        Raises:
            ConnectionClosed: disconnected (reconnecting) or closed for good.
        """
        if not self.open:
            raise self._closed_error() if self._final else ConnectionClosedError(1006, "", "reconnecting")
        await self._ws.pong(data)  # type: ignore[union-attr]

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close for good: stop reconnecting, close the current connection; queued messages are dropped."""
        self._closing = True
        task = self._task
        ws = self._ws
        if ws is not None:
            await ws.close(code, reason)
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                if cancelling(asyncio.current_task()):
                    raise
        ws = self._ws  # a connection opened meanwhile
        if ws is not None and not ws.closed:
            await ws.close(code, reason)
        self._final = True
        self.connected = False
        self._drop_outbox()  # (already done, unless this runs in the supervisor's own task)
        self._notify()

    def abort(self) -> None:
        """Drop the current TCP connection at once, without a closing handshake; closed for good.

        An abort is the client's own doing, so like ``close()`` it is never followed by a
        reconnection (SPEC.md "Reconnection"): ``recv()`` returns None from then on and
        queued messages are dropped.
        """
        # Before the drop: the supervisor that the drop wakes up must see it and not reconnect.
        self._closing = True
        ws = self._ws
        if ws is not None:
            ws.abort()
        task = self._task
        if task is not None and not task.done() and task is not _current_task():
            task.cancel()  # a reconnection under way (backoff, handshake) stops here
        self._final = True
        self.connected = False
        self._drop_outbox()
        self._notify()

    async def wait_closed(self) -> None:
        """Wait until closed for good, the last connection's TCP included."""
        while not self._final:
            await self._wait_change(None)
        if self._ws is not None:
            await self._ws.wait_closed()

    async def __aenter__(self) -> "AsyncReconnectingWebSocket":
        """The connection itself, closed on exit."""
        return self

    async def __aexit__(self, exc_type: Any, *exc: Any) -> None:
        """Close the connection on leaving the ``async with`` block: 1000, or 1011 if it
        raised (1001 if cancelled)."""
        await self.close(exit_close_code(exc_type))

    def __repr__(self) -> str:
        state = "connected" if self.connected else "closed" if self._final else "reconnecting"
        return f"<AsyncReconnectingWebSocket {self._wsuri.shown} {state} reconnects={self.reconnects}>"
