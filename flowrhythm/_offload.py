"""Running synchronous jobs off the event loop: threads, processes, any Executor.

``flow.add(fn, executor=...)`` turns a synchronous ``fn`` into an async
processor. The job's workers each await one call at a time, so the worker count
bounds the calls in flight; each job of a run also has one
:class:`anyio.CapacityLimiter` whose size follows its worker count, so anyio's
global default limiters (40 threads, one process per CPU) never become a hidden
cap on a job that scaled past them.

For a :class:`concurrent.futures.Executor` (a ``ProcessPoolExecutor``, a Dask
``Client.get_executor()``...) no thread is held per call: the future's
completion is bridged back to the event loop with anyio's from-thread tools.
Cancelling the call cancels the future if it has not started; a call already
running cannot be cut short, so it is waited for (as anyio waits for a thread):
no call outlives its run.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import pickle
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, Final, Literal

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_process
import anyio.to_thread

from ._timing import refuse_offload_in_virtual_time
from ._validate import function_of

#: What ``executor=`` accepts besides an Executor instance.
EXECUTOR_NAMES: Final = ("thread", "process")
ExecutorSpec = Literal["thread", "process"] | Executor


def check_offload(fn: object, executor: object) -> None:
    """Validate ``fn`` and ``executor=`` at ``add`` time.

    Raises:
        TypeError: ``executor`` is not "thread", "process" or an Executor, or
            ``fn`` is not a plain synchronous callable.
        ValueError: ``executor`` is an unknown name.
    """
    if isinstance(executor, str):
        if executor not in EXECUTOR_NAMES:
            raise ValueError(
                f'executor must be "thread", "process" or a concurrent.futures.Executor, '
                f"got {executor!r}"
            )
    elif not isinstance(executor, Executor):
        raise TypeError(
            f'executor must be "thread", "process" or a concurrent.futures.Executor, '
            f"got {executor!r}"
        )
    if not callable(fn):
        raise TypeError(f"processor must be callable, got {fn!r}")
    function = function_of(fn)
    if inspect.iscoroutinefunction(function):
        raise TypeError(
            f"{fn!r} is an async callable: executor= runs synchronous code; "
            "add the async callable without executor="
        )
    if inspect.isasyncgenfunction(function):
        raise TypeError(f"{fn!r} is an async generator function: it cannot take executor=")
    if inspect.isgeneratorfunction(function):
        raise TypeError(
            f"{fn!r} is a generator function: an offloaded call must return its result "
            "(return a list, and split it with an async generator job next)"
        )
    if executor == "process":
        try:
            pickle.dumps(fn)
        except Exception as exc:  # noqa: BLE001 - any pickling failure means the same
            raise TypeError(
                f'executor="process" needs a picklable callable (a module-level function), '
                f"but {fn!r} does not pickle: {exc}"
            ) from None


def call_and_check(fn: Callable[[Any], Any], item: Any, caller: int = -1) -> Any:
    """Run ``fn(item)``, maybe in another process; make sure a failure can travel back.

    An exception that does not pickle would otherwise turn into an unrelated
    pickling error (or worse); it comes back as a :class:`RuntimeError` that
    names it. In the caller's own process (``caller`` is its pid: a thread
    pool, Dask without processes) the exception is left as it is.
    """
    try:
        return fn(item)
    except Exception as exc:
        if os.getpid() == caller:
            raise
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception as pickling:  # noqa: BLE001 - any pickling failure means the same
            raise RuntimeError(
                f"{type(exc).__module__}.{type(exc).__qualname__}: {exc} "
                f"(raised in another process; the exception itself could not be "
                f"sent back: {pickling!r})"
            ) from None
        raise


def offloaded(
    fn: Callable[[Any], Any],
    executor: ExecutorSpec,
    limiter: anyio.CapacityLimiter,
    start_timeout: float | None = None,
) -> Callable[[Any], Any]:
    """The async processor that runs ``fn`` through ``executor``.

    ``start_timeout`` (the job's ``timeout=``) bounds how long a call may wait
    in an Executor's queue: one that has not started by then is cancelled
    there and fails with :class:`TimeoutError` (it never ran, so it may be
    retried).
    """
    refuse_offload_in_virtual_time()
    if executor == "thread":

        async def in_thread(item: Any) -> Any:
            return await anyio.to_thread.run_sync(fn, item, limiter=limiter)

        return in_thread

    if executor == "process":

        async def in_process(item: Any) -> Any:
            return await anyio.to_process.run_sync(call_and_check, fn, item, limiter=limiter)

        return in_process

    assert isinstance(executor, Executor)
    pool = executor
    pid = os.getpid()

    async def in_executor(item: Any) -> Any:
        async with limiter:
            return await wait_future(pool.submit(call_and_check, fn, item, pid), start_timeout)

    return in_executor


async def wait_future(future: Future[Any], start_timeout: float | None = None) -> Any:
    """Await a :class:`concurrent.futures.Future` without holding a thread.

    On cancellation the future is cancelled if it has not started. A call
    already running cannot be cut short: it is waited for, shielded, and its
    result dropped, so that no call outlives the worker that made it (and the
    job's worker count keeps bounding the calls in flight) -- as anyio does for
    a thread.

    Raises:
        TimeoutError: the call had not started ``start_timeout`` seconds after
            it was submitted; it was cancelled in the executor's queue.
    """
    if not future.done():
        done = anyio.Event()
        token = anyio.lowlevel.current_token()
        loop_thread = threading.get_ident()

        def wake(_: Future[Any]) -> None:
            if threading.get_ident() == loop_thread:
                done.set()  # completed (or cancelled) in the loop's own thread
                return
            # If the event loop has finished meanwhile, nobody waits for the result.
            with contextlib.suppress(Exception):
                anyio.from_thread.run_sync(done.set, token=token)

        future.add_done_callback(wake)
        try:
            if start_timeout is not None:
                with anyio.move_on_after(start_timeout):
                    await done.wait()
                if not done.is_set() and future.cancel():  # still queued: it never runs
                    raise TimeoutError(
                        f"the call did not start within its timeout of {start_timeout:g}s: "
                        "it waited in the executor's queue, and was cancelled there"
                    )
            await done.wait()
        except BaseException:
            if not future.cancel():  # running: wait until it has finished
                with anyio.CancelScope(shield=True):
                    await done.wait()
            raise
    return future.result()
