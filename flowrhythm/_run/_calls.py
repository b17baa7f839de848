"""How one call of a processor runs: the wrappers built from a job's options.

:func:`wrap` builds the processor a worker actually calls, from the outside in::

    retry -> rate limit -> resource manager -> concurrency slot -> timeout -> processor

so every attempt takes its own rate-limit slot, enters the resource manager (of
``add_job_with_lock``) and holds a concurrency slot again; waiting for any of
them is *blocked* time and does not count against the timeout; a timed-out
call can be retried; and the back-off between attempts is blocked time too,
holding neither the slot nor the resource manager. Only the layers a job uses
are built.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, final

import anyio

from .._adaptive import Held, JobSlots
from .._errors import Overloaded, StopProcessing

if TYPE_CHECKING:
    from .._options import JobOptions, Retry
    from .._stats import Counters


@final
class Exhausted(Exception):
    """Carries the final failure of a retried call and how many calls were made."""

    def __init__(self, exception: Exception, attempts: int) -> None:
        super().__init__(exception)
        self.exception = exception
        self.attempts = attempts


@final
class RateLimit:
    """A token bucket on call starts, shared by all the workers of one job in one run.

    Slots are handed out ``1 / rate`` seconds apart in the order they are asked
    for; a worker waiting for its slot counts as *blocked* (the limit, not the
    worker count, is the bottleneck, so the scaler does not grow the job).
    """

    __slots__ = ("counters", "interval", "next_slot")

    def __init__(self, rate: float, counters: Counters) -> None:
        self.interval = 1.0 / rate
        self.next_slot = -math.inf
        self.counters = counters

    async def acquire(self) -> None:
        now = anyio.current_time()
        slot = max(self.next_slot, now)
        self.next_slot = slot + self.interval
        if slot > now:
            with self.counters.blocked_span():
                await anyio.sleep(slot - now)


@final
class Accounted:
    """A resource manager whose waits count as *blocked*: more workers cannot help.

    Its exit sees how the call ended, but cannot swallow it: a failure is the
    item's, and a cancellation is the run's, whatever ``__aexit__`` returns.
    """

    __slots__ = ("counters", "manager")

    def __init__(self, manager: AbstractAsyncContextManager[Any], counters: Counters) -> None:
        self.manager = manager
        self.counters = counters

    async def __aenter__(self) -> Any:
        with self.counters.blocked_span():
            return await self.manager.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.manager.__aexit__(exc_type, exc, tb)


def wrap(
    fn: Callable[[Any], Any],
    is_gen: bool,
    options: JobOptions,
    counters: Counters,
    *,
    limit: RateLimit | None = None,
    lock: AbstractAsyncContextManager[Any] | None = None,
    interruptible: bool = True,
    slots: JobSlots | None = None,
) -> Callable[[Any], Any]:
    """The processor a worker calls, from the outside in::

        retry -> rate limit -> resource manager -> concurrency slot -> timeout -> processor

    ``limit`` is the job's rate limit in this run, shared by all its workers;
    ``lock`` the resource manager of ``add_job_with_lock``. Waiting for either,
    and a retry's back-off, count as blocked, and not against the timeout.
    ``interruptible`` is false for calls running in threads, processes or an
    executor, which cannot be cut short: their timeout is checked when they
    return, and a call that returned late is not retried (it ran to completion).
    ``slots`` is the job's ``concurrency=`` limit: each attempt holds one of its
    slots (a generator, until it ends); waiting for one counts as blocked too.

    Only the layers a job uses are built: a job without options gets its
    processor itself, and ``retry=`` alone adds one frame around the call.
    Everything that happens once per *attempt* is built by :func:`_attempt`.
    """
    retry = options.retry
    if lock is not None:
        lock = Accounted(lock, counters)
    if is_gen:
        if not options.wraps_calls and lock is None:
            return fn
        return _wrap_gen(fn, options, counters, limit, lock, slots)
    attempt = _attempt(fn, options.timeout, limit, lock, interruptible, retry is not None, slots)
    if retry is None:
        return attempt
    return _retrying(attempt, retry, counters)


@final
class _Late(Exception):
    """Inside a retried job: a call that could not be cut short returned after its timeout.

    It ran to completion, so it must not run again; :func:`_retrying` turns it
    into its :class:`TimeoutError` without retrying.
    """

    def __init__(self, error: TimeoutError) -> None:
        super().__init__(error)
        self.error = error


def _late_error(elapsed: float, timeout: float) -> TimeoutError:
    return TimeoutError(
        f"the call took {elapsed:.3g}s, longer than its timeout of {timeout:g}s; it ran in a "
        "thread, process or executor, where it could not be cut short, so it ran to completion: "
        "its result is discarded and it is not retried"
    )


def _attempt(
    fn: Callable[[Any], Any],
    timeout: float | None,
    limit: RateLimit | None,
    lock: AbstractAsyncContextManager[Any] | None,
    interruptible: bool,
    retried: bool,
    slots: JobSlots | None = None,
) -> Callable[[Any], Any]:
    """One attempt of a call: rate limit -> resource manager -> slot -> timeout -> processor.

    This is the one place where an attempt runs: a layer that acts once per
    attempt goes here, between the rate limit and the call.
    """
    call = fn
    if timeout is not None:
        if interruptible:

            async def call(item: Any) -> Any:
                with anyio.fail_after(timeout) as scope:
                    result = await fn(item)
                if scope.cancel_called:  # ran past the deadline without a checkpoint after it
                    raise TimeoutError(f"the call took longer than {timeout:g}s")
                return result

        else:

            async def call(item: Any) -> Any:
                started = anyio.current_time()
                result = await fn(item)
                elapsed = anyio.current_time() - started
                if elapsed > timeout:
                    error = _late_error(elapsed, timeout)
                    raise _Late(error) if retried else error
                return result

    if slots is not None:
        call = slots.around(call)
    if limit is None and lock is None:
        return call
    timed = call

    async def attempt(item: Any) -> Any:
        if limit is not None:
            await limit.acquire()
        if lock is None:
            return await timed(item)
        async with lock:
            return await timed(item)

    return attempt


async def _back_off(delay: float, counters: Counters) -> None:
    """Wait before the next attempt, counted as blocked: more workers cannot help."""
    counters.backing_off += 1
    try:
        with counters.blocked_span():
            await anyio.sleep(delay)
    finally:
        counters.backing_off -= 1
    counters.retried += 1


def _final(exc: Exception, attempt: int) -> Exception:
    """The exception that ends an item after ``attempt`` calls."""
    if attempt == 1 or isinstance(exc, StopProcessing):
        return exc
    return Exhausted(exc, attempt)


def _retrying(
    attempt: Callable[[Any], Any], retry: Retry, counters: Counters
) -> Callable[[Any], Any]:
    attempts = retry.attempts

    async def retried(item: Any) -> Any:
        n = 1
        while True:
            try:
                return await attempt(item)
            except _Late as late:
                raise _final(late.error, n) from None
            except Exception as exc:
                if n >= attempts or not retry.retries(exc):
                    final = _final(exc, n)
                    if final is exc:
                        raise
                    raise final from exc
                delay = retry_wait(retry, n, exc)  # at least an Overloaded's retry_after
            await _back_off(delay, counters)
            n += 1

    return retried


def _wrap_gen(
    fn: Callable[[Any], Any],
    options: JobOptions,
    counters: Counters,
    limit: RateLimit | None,
    lock: AbstractAsyncContextManager[Any] | None,
    slots: JobSlots | None = None,
) -> Callable[[Any], Any]:
    timeout = options.timeout
    retry = options.retry

    async def generate(item: Any) -> AsyncIterator[Any]:
        attempt = 1
        while True:
            if limit is not None:
                await limit.acquire()
            # the resource manager and the concurrency slot are held for the whole generator
            async with (
                lock or contextlib.nullcontext(),
                slots.hold() if slots is not None else contextlib.nullcontext(Held()) as held,
                contextlib.aclosing(fn(item)) as agen,
            ):
                try:
                    if timeout is None:
                        first = await agen.__anext__()
                    else:
                        with anyio.fail_after(timeout):
                            first = await agen.__anext__()
                except StopAsyncIteration:
                    return
                except Exception as exc:
                    held.report(exc)
                    if retry is None or attempt >= retry.attempts or not retry.retries(exc):
                        final = _final(exc, attempt)
                        if final is exc:
                            raise
                        raise final from exc
                    delay = retry_wait(retry, attempt, exc)
                else:
                    # past the first yield: never retried, never duplicated
                    yield first
                    if timeout is None and attempt == 1:  # nothing to add: pass values on
                        async for value in agen:
                            yield value
                        return
                    while True:
                        try:
                            if timeout is None:
                                value = await agen.__anext__()
                            else:
                                with anyio.fail_after(timeout):
                                    value = await agen.__anext__()
                        except StopAsyncIteration:
                            return
                        except Exception as exc:
                            final = _final(exc, attempt)
                            if final is exc:
                                raise
                            raise final from exc
                        yield value
            await _back_off(delay, counters)
            attempt += 1

    return generate


def retry_wait(retry: Retry, attempt: int, exc: BaseException) -> float:
    """Seconds before the attempt after ``attempt`` (counted from 1) that raised ``exc``.

    The back-off of ``retry``, or the ``retry_after`` of an :class:`Overloaded`
    if it is longer.
    """
    delay = retry.wait(attempt - 1)
    if isinstance(exc, Overloaded) and exc.retry_after is not None:
        delay = max(delay, exc.retry_after)
    return delay
