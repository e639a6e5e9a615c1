"""``Waiter``, the future ``recv()`` awaits: a future for asyncio, resumable inline.

Run under both twins (``backend`` fixture). What matters: it behaves like an
``asyncio.Future`` to the task machinery (results, exceptions, cancellation, callbacks,
contexts), and ``resolve`` + ``wake_now`` from a protocol callback resumes the awaiting task
before the loop runs anything else, but never inside another running task.
"""

from __future__ import annotations

import asyncio
import contextvars
from types import ModuleType
from typing import Any

import pytest

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


async def test_is_a_future_for_asyncio(backend: ModuleType) -> None:
    loop = asyncio.get_running_loop()
    w = backend.Waiter(loop)
    assert asyncio.isfuture(w)
    assert w.get_loop() is loop
    assert not w.done() and not w.cancelled()
    assert repr(w) == "<Waiter pending>"
    loop.call_soon(w.set_result, "hello")
    assert await w == "hello"
    assert w.done() and w.result() == "hello" and w.exception() is None
    assert repr(w) == "<Waiter finished>"
    assert await w == "hello"  # awaiting a done waiter returns at once


async def test_pending_and_double_completion(backend: ModuleType) -> None:
    w = backend.Waiter(asyncio.get_running_loop())
    with pytest.raises(asyncio.InvalidStateError):
        w.result()
    with pytest.raises(asyncio.InvalidStateError):
        w.exception()
    w.set_result(1)
    for complete in (lambda: w.set_result(2), lambda: w.set_exception(ValueError()), lambda: w.resolve(3)):
        with pytest.raises(asyncio.InvalidStateError):
            complete()
    assert w.cancel() is False
    assert w.result() == 1


async def test_exceptions(backend: ModuleType) -> None:
    loop = asyncio.get_running_loop()
    w = backend.Waiter(loop)
    loop.call_soon(w.set_exception, ValueError)  # a class is instantiated
    with pytest.raises(ValueError):
        await w
    assert isinstance(w.exception(), ValueError)
    assert repr(w) == "<Waiter failed>"
    w2 = backend.Waiter(loop)
    with pytest.raises(TypeError):
        w2.set_exception(StopIteration())
    with pytest.raises(TypeError):
        w2.set_exception("not an exception")
    assert not w2.done()


async def test_task_cancellation_reaches_the_waiter(backend: ModuleType) -> None:
    loop = asyncio.get_running_loop()
    w = backend.Waiter(loop)
    task = asyncio.ensure_future(_await(w))
    await asyncio.sleep(0)
    task.cancel("stop it")
    with pytest.raises(asyncio.CancelledError):
        await task
    assert w.cancelled() and repr(w) == "<Waiter cancelled>"
    with pytest.raises(asyncio.CancelledError):
        w.result()
    assert w.cancel() is False


async def test_wait_for_timeout_cancels_the_waiter(backend: ModuleType) -> None:
    w = backend.Waiter(asyncio.get_running_loop())
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(_await(w), 0.01)
    assert w.cancelled()


async def test_other_callbacks_go_through_the_loop(backend: ModuleType) -> None:
    loop = asyncio.get_running_loop()
    w = backend.Waiter(loop)
    seen: list[Any] = []
    ctx = contextvars.copy_context()
    ctx.run(VAR.set, "ctx")

    def first(fut: Any) -> None:
        seen.append(("first", fut))

    def second(fut: Any) -> None:
        seen.append(("second", VAR.get()))

    w.add_done_callback(first)
    w.add_done_callback(second, context=ctx)
    w.add_done_callback(first)
    assert w.remove_done_callback(first) == 2
    w.set_result(None)
    assert seen == []  # never synchronously
    await asyncio.sleep(0)
    assert seen == [("second", "ctx")]
    w.add_done_callback(first)  # already done: scheduled
    await asyncio.sleep(0)
    assert seen[-1] == ("first", w)


async def test_wake_now_resumes_the_task_before_anything_else(backend: ModuleType) -> None:
    loop = asyncio.get_running_loop()
    w = backend.Waiter(loop)
    order: list[str] = []
    VAR.set("outer")

    async def consumer() -> None:
        VAR.set("consumer")
        got = await w
        order.append(f"resumed {got} in {asyncio.current_task() is task} {VAR.get()}")

    task = asyncio.ensure_future(consumer())
    await asyncio.sleep(0)  # consumer waits

    def protocol_callback() -> None:  # like buffer_updated: no task running
        loop.call_soon(order.append, "later callback")
        w.resolve("msg")
        order.append("resolved")
        w.wake_now()
        order.append("callback returns")

    loop.call_soon(protocol_callback)
    await task
    assert order == ["resolved", "resumed msg in True consumer", "callback returns", "later callback"]
    assert VAR.get() == "outer"


async def test_wake_now_inside_a_task_goes_through_the_loop(backend: ModuleType) -> None:
    loop = asyncio.get_running_loop()
    w = backend.Waiter(loop)
    order: list[str] = []

    async def consumer() -> None:
        await w
        order.append("resumed")

    task = asyncio.ensure_future(consumer())
    await asyncio.sleep(0)
    w.resolve(1)
    w.wake_now()  # this test is itself a task: no nesting
    order.append("after wake_now")
    await task
    assert order == ["after wake_now", "resumed"]


async def test_wake_now_is_harmless_when_nobody_waits(backend: ModuleType) -> None:
    w = backend.Waiter(asyncio.get_running_loop())
    w.wake_now()  # pending, no task: nothing happens
    w.resolve(5)
    w.wake_now()
    assert await w == 5


async def _await(w: Any) -> Any:
    return await w


async def test_await_and_the_iterator_protocol_agree(backend: ModuleType) -> None:
    """``await`` (the interpreter's send slot in the Cython twin) and explicit iteration
    (``__next__`` / ``send``) give the same outcomes: suspend on itself, then the result or
    the exception, for waiters completed before or while being awaited."""
    loop = asyncio.get_running_loop()
    done = backend.Waiter(loop)
    done.set_result("early")
    assert await done == "early"
    it = done.__await__()
    with pytest.raises(StopIteration) as stop:
        next(it)
    assert stop.value.value == "early"

    pending = backend.Waiter(loop)
    it = pending.__await__()
    assert next(it) is pending and pending._asyncio_future_blocking
    pending.set_result(None)
    with pytest.raises(StopIteration) as stop:
        it.send(None)
    assert stop.value.value is None

    failed = backend.Waiter(loop)
    failed.set_exception(KeyError("k"))
    with pytest.raises(KeyError):
        await failed
    with pytest.raises(KeyError):
        next(failed.__await__())

    cancelled = backend.Waiter(loop)
    cancelled.cancel("why")
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    with pytest.raises(asyncio.CancelledError):
        next(cancelled.__await__())


async def test_wake_now_hands_a_plain_callback_the_waiter_itself(backend: ModuleType) -> None:
    """Whatever wake_now passes to a task's wake-up internally, any other first callback gets
    the waiter (with its result), and a task resumed by it gets the result."""
    loop = asyncio.get_running_loop()
    w = backend.Waiter(loop)
    seen: list[Any] = []
    w.add_done_callback(lambda fut: seen.append((fut, fut.result())))

    def deliver() -> None:  # a protocol callback: no task is running
        w.resolve("value")
        w.wake_now()

    loop.call_soon(deliver)
    await asyncio.sleep(0.01)
    assert seen == [(w, "value")]

    w2 = backend.Waiter(loop)
    task = asyncio.ensure_future(_await(w2))
    await asyncio.sleep(0)

    def deliver2() -> None:
        w2.resolve("for the task")
        w2.wake_now()

    loop.call_soon(deliver2)
    assert await task == "for the task"
