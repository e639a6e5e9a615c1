"""A tiny JSON-RPC 2.0 over WebSocket: an asyncio server with a few methods, and a client.

    python examples/json_rpc.py                       server and client in one process (port 0)
    python examples/json_rpc.py server [host] [port]  only the server (default: localhost 8765)
    python examples/json_rpc.py client [host] [port]  only the client

Each request is one text message, ``{"jsonrpc": "2.0", "method": ..., "params": ..., "id": n}``;
the answer carries the same ``id`` and either ``result`` or ``error`` (JSON-RPC 2.0 §5). A
request without ``id`` is a notification: it is run, and never answered (§4.1), not even with
an error. Batches (a JSON array of requests) are not supported: answered "Invalid Request".
Requests are handled concurrently, so answers may come back out of order: the client
matches them by ``id``.
"""

import asyncio
import itertools
import json
import math
import sys

from kn_sock import ConnectionClosed, async_connect_websocket, start_async_websocket_server

# ------------------------------------------------------------------ server


async def add(a, b):
    return a + b


async def echo(*args):
    return list(args)


async def sleep_then(seconds, value):
    await asyncio.sleep(max(0.0, min(float(seconds), 1.0)))  # (max() also turns NaN into 0)
    return value


METHODS = {"add": add, "echo": echo, "sleep_then": sleep_then}


def error(code, message, id_=None):
    return {"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": id_}


def not_json(name):
    raise ValueError(f"{name} is not JSON")  # Python's json module would accept NaN and Infinity


def valid_id(id_):
    """JSON-RPC 2.0 §4: an id is a string, a number or null."""
    if isinstance(id_, float):
        return math.isfinite(id_)  # (1e999 parses as inf, which JSON cannot carry back)
    return id_ is None or isinstance(id_, str) or (isinstance(id_, int) and not isinstance(id_, bool))


async def dispatch(text):
    """The answer to one request (a dict to send), or None: a notification (no "id") is never
    answered (§4.1), even when it fails."""
    try:
        request = json.loads(text, parse_constant=not_json)
    except (ValueError, RecursionError):  # (RecursionError: nested too deep)
        return error(-32700, "Parse error")
    if (
        not isinstance(request, dict)  # (a batch, a JSON array, is not supported here)
        or request.get("jsonrpc") != "2.0"
        or not isinstance(request.get("method"), str)
        or not isinstance(request.get("params", []), (list, dict))
        or not valid_id(request.get("id"))
    ):
        id_ = request.get("id") if isinstance(request, dict) else None
        return error(-32600, "Invalid Request", id_ if valid_id(id_) else None)
    notification = "id" not in request
    id_ = request.get("id")
    method = METHODS.get(request["method"])
    if method is None:
        return None if notification else error(-32601, "Method not found", id_)
    params = request.get("params", [])
    try:
        result = await (method(**params) if isinstance(params, dict) else method(*params))
    except Exception as exc:  # report it, keep serving
        if notification:
            print(f"notification {request['method']} failed: {exc!r}", file=sys.stderr, flush=True)
            return None
        if isinstance(exc, TypeError):  # wrong number, names or types of arguments
            return error(-32602, f"Invalid params: {exc}", id_)
        return error(-32603, f"Internal error: {exc}", id_)  # a bug in a method
    return None if notification else {"jsonrpc": "2.0", "result": result, "id": id_}


async def rpc_handler(websocket, path):
    async def answer(text):
        # Whatever the request, this task ends normally: no "Task exception was never retrieved".
        try:
            response = await dispatch(text)
            if response is None:
                return
            try:
                reply = json.dumps(response, allow_nan=False)
            except (TypeError, ValueError) as exc:  # a result JSON cannot carry (an overflow to inf)
                reply = json.dumps(error(-32603, f"Internal error: {exc}", response["id"]))
            await websocket.send(reply)
        except ConnectionClosed:
            pass  # the client left before its answer was ready
        except Exception as exc:  # a bug in this example: say so, keep serving the others
            print(f"request failed: {exc!r}", file=sys.stderr, flush=True)

    tasks = set()
    async for message in websocket:
        task = asyncio.create_task(answer(message))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


# ------------------------------------------------------------------ client


class RpcClient:
    """Calls methods over one connection; answers are matched to requests by ``id``."""

    def __init__(self, websocket):
        self.ws = websocket
        self.ids = itertools.count(1)
        self.pending = {}
        self.reader = asyncio.create_task(self._read())

    async def _read(self):
        async for message in self.ws:
            try:
                response = json.loads(message)
            except ValueError:
                continue
            if not isinstance(response, dict):
                continue
            future = self.pending.pop(response.get("id"), None)
            if future is not None and not future.done():
                future.set_result(response)
        for future in self.pending.values():
            future.set_exception(ConnectionError("connection closed"))

    async def call(self, method, *params, timeout=5.0):
        id_ = next(self.ids)
        future = asyncio.get_running_loop().create_future()
        self.pending[id_] = future
        await self.ws.send_json({"jsonrpc": "2.0", "method": method, "params": list(params), "id": id_})
        response = await asyncio.wait_for(future, timeout)
        if "error" in response:
            raise RuntimeError(f"{method}: {response['error']['message']} ({response['error']['code']})")
        return response["result"]


async def run_client(host, port):
    async with async_connect_websocket(host, port) as ws:
        rpc = RpcClient(ws)
        print("add(2, 3) =", await rpc.call("add", 2, 3), flush=True)
        print("echo('a', 1) =", await rpc.call("echo", "a", 1), flush=True)
        slow, fast = await asyncio.gather(rpc.call("sleep_then", 0.2, "slow"), rpc.call("add", 40, 2))
        print(f"concurrent: sleep_then -> {slow!r}, add -> {fast!r}", flush=True)
        try:
            await rpc.call("divide", 1, 0)
        except RuntimeError as exc:
            print("error:", exc, flush=True)


# ------------------------------------------------------------------ main


async def main(mode, host, port):
    if mode == "client":
        await run_client(host, port)
        return
    server = await start_async_websocket_server(host, port, rpc_handler)
    print(f"JSON-RPC server on ws://{host}:{server.port}/", flush=True)
    async with server:
        if mode == "server":
            await server.serve_forever()
        else:
            await run_client(host, server.port)


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "both"
    if mode not in ("both", "server", "client"):
        sys.exit(f"usage: {sys.argv[0]} [both|server|client] [host] [port]")
    host = sys.argv[2] if len(sys.argv) > 2 else ("127.0.0.1" if mode == "both" else "localhost")
    port = int(sys.argv[3]) if len(sys.argv) > 3 else (0 if mode == "both" else 8765)
    try:
        asyncio.run(main(mode, host, port))
    except KeyboardInterrupt:
        pass
