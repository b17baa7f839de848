"""The keyword job options of ``Flow.add``: their values, validation, and wrappers.

``Retry`` and ``Batch`` are public values; :class:`JobOptions` gathers every
option of one job. :func:`wrap` builds the processor a worker actually calls,
from the outside in::

    retry -> rate limit -> resource manager -> timeout -> call

so every attempt takes its own rate-limit slot and enters the resource manager
(of ``add_job_with_lock``) again; waiting for either is *blocked* time and does
not count against the timeout; a timed-out call can be retried; and the
back-off between attempts is blocked time too, holding neither the slot nor the
resource manager.
``ordered`` and ``batch`` change how items move rather than how one call runs;
they live in :mod:`flowrhythm._ordered` and :mod:`flowrhythm._batch`.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, final

import anyio
import attrs

from ._adaptive import Adaptive, Held, JobSlots, retry_wait
from ._errors import RouteToErrorQueue, StopProcessing
from ._validate import check_number, count, number

if TYPE_CHECKING:
    from ._stats import Counters


def _exception_types(value: object) -> tuple[type[BaseException], ...]:
    types = value if isinstance(value, tuple) else (value,)
    if not types or not all(isinstance(t, type) and issubclass(t, Exception) for t in types):
        raise TypeError(f"on must be an Exception subclass or a tuple of them, got {value!r}")
    return types


@final
@attrs.frozen(kw_only=True)
class Retry:
    """Retry a failing call with exponential back-off.

    A failing call is retried up to ``attempts`` calls in all, waiting
    ``backoff * 2**n`` seconds before retry ``n`` (the first retry waits
    ``backoff``), capped at ``max_backoff``; with ``jitter`` each wait is
    scaled by a random factor in ``[0.75, 1.25)`` (still capped), so retries
    of many items do not fall into step. Only exceptions matching ``on`` are
    retried; :class:`StopProcessing` and :class:`RouteToErrorQueue` never are.
    After the last attempt the item goes the usual error way, and
    :attr:`ErrorItem.attempts` says how many calls were made. A generator is
    retried only if it fails before its first yield. A worker waiting in the
    back-off counts as *blocked*, not active, so a failing job does not grow;
    an offloaded call that returned after its ``timeout`` is never retried.

    Raises:
        TypeError, ValueError: ``attempts < 1``, negative ``backoff`` /
            ``max_backoff``, or ``on`` not exception classes.

    .. versionadded:: 1.0
    """

    attempts: int = attrs.field(default=3, validator=count(1))
    backoff: float = attrs.field(default=0.1, validator=number(low=0.0))
    max_backoff: float = attrs.field(default=10.0, validator=number(low=0.0))
    jitter: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    on: tuple[type[BaseException], ...] = attrs.field(
        default=(Exception,), converter=_exception_types
    )

    def wait(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (0 for the first).

        The doubling stops at ``max_backoff``: ``2.0 ** retry`` alone would
        overflow past the 1,024th retry.
        """
        try:
            delay = min(math.ldexp(self.backoff, retry), self.max_backoff)  # backoff * 2**retry
        except OverflowError:
            delay = self.max_backoff
        if self.jitter:
            delay = min(delay * random.uniform(0.75, 1.25), self.max_backoff)
        return delay

    def retries(self, exc: BaseException) -> bool:
        return isinstance(exc, self.on) and not isinstance(exc, StopProcessing | RouteToErrorQueue)


@final
@attrs.frozen(kw_only=True)
class Batch:
    """Hand the processor lists of up to ``size`` items.

    A batch is sent as soon as it is full, ``timeout`` seconds after its first
    item arrived, or when the input ends (the last partial batch is never lost).
    One job gathers one batch at a time for all its workers. The processor's
    return value goes downstream as one item; a failing batch is routed as one
    :class:`ErrorItem` whose ``item`` is the list. Counters count items.

    Raises:
        TypeError, ValueError: ``size < 1`` or a negative ``timeout``.

    .. versionadded:: 1.0
    """

    size: int = attrs.field(default=100, validator=count(1))
    timeout: float = attrs.field(default=0.05, validator=number(low=0.0))


@final
@attrs.frozen(kw_only=True)
class JobOptions:
    """Every keyword option of one job (private); all off by default."""

    ordered: bool = False
    retry: Retry | None = None
    timeout: float | None = None
    max_per_second: float | None = None
    batch: Batch | None = None
    concurrency: Adaptive | None = None

    @classmethod
    def build(
        cls,
        *,
        ordered: object = False,
        retry: object = None,
        timeout: object = None,
        max_per_second: object = None,
        batch: object = None,
        concurrency: object = None,
    ) -> JobOptions:
        if not isinstance(ordered, bool):
            raise TypeError(f"ordered must be a bool, got {ordered!r}")
        if retry is not None and not isinstance(retry, Retry):
            raise TypeError(f"retry must be a Retry, got {retry!r}")
        if batch is not None and not isinstance(batch, Batch):
            raise TypeError(f"batch must be a Batch, got {batch!r}")
        if concurrency is not None and not isinstance(concurrency, Adaptive):
            raise TypeError(f"concurrency must be an Adaptive, got {concurrency!r}")
        if timeout is not None:
            timeout = check_number("timeout", timeout, low=0.0, low_open=True)
        if max_per_second is not None:
            max_per_second = check_number("max_per_second", max_per_second, low=0.0, low_open=True)
            if math.isinf(1.0 / max_per_second):
                raise ValueError(
                    f"max_per_second is too small to space calls, got {max_per_second!r}"
                )
        return cls(
            ordered=ordered,
            retry=retry,
            timeout=timeout,
            max_per_second=max_per_second,
            batch=batch,
            concurrency=concurrency,
        )

    @property
    def wraps_calls(self) -> bool:
        """Whether ``retry``, ``timeout``, ``max_per_second`` or ``concurrency`` wrap each call."""
        return (
            self.retry is not None
            or self.timeout is not None
            or self.max_per_second is not None
            or self.concurrency is not None
        )


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
            since = self.counters.enter_blocked()
            try:
                await anyio.sleep(slot - now)
            finally:
                self.counters.leave_blocked(since)


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
        since = self.counters.enter_blocked()
        try:
            return await self.manager.__aenter__()
        finally:
            self.counters.leave_blocked(since)

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
    since = counters.enter_blocked()
    counters.backing_off += 1
    try:
        await anyio.sleep(delay)
    finally:
        counters.backing_off -= 1
        counters.leave_blocked(since)
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
