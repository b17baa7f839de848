"""Every accepted kind of processor, turned into one internal shape.

A job's processor is one of:

* an async callable ``async def f(item) -> result`` (functions, bound methods,
  objects with ``async def __call__``, :func:`functools.partial` of those);
* an async generator function ``async def f(item): yield ...`` (fan-out/filter);
* a :class:`ProcessorFactory`, entered once per worker, yielding one of the above.

:class:`Stage` is what the runtime sees: per worker, :meth:`Stage.open` yields a
``(function, is_generator)`` pair; the job wraps the resource manager of
``add_job_with_lock`` and the job options around it (:func:`flowrhythm._options.wrap`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, final

import anyio
import attrs

from ._offload import ExecutorSpec, check_offload, offloaded
from ._validate import check_number, function_of

logger = logging.getLogger("flowrhythm")

#: Seconds a ProcessorFactory's exit may take, by default (``exit_timeout``).
EXIT_TIMEOUT: Final = 10.0

#: A processor after normalisation: a coroutine function, or an async generator
#: function (then ``is_generator`` is true).
Call = Callable[[Any], Awaitable[Any]]
GenCall = Callable[[Any], AsyncGenerator[Any, None]]


@final
@attrs.frozen
class ProcessorFactory:
    """A per-worker processor: ``make()`` returns an async context manager.

    Each worker of the job enters ``make()`` once when it starts and exits it
    once when it stops (scaled down, end of run, error or cancellation), so a
    per-worker resource (a connection, a session, a model) is opened and closed
    exactly once per worker. What the context manager yields is the processor:
    an async callable or an async generator function.

    The exit runs in a shielded cancel scope, so it happens even when the run
    is cancelled, for at most ``exit_timeout`` seconds: an exit that takes
    longer is cancelled, a warning is logged (logger ``"flowrhythm"``), and the
    worker goes on leaving, so a hanging exit cannot hold up
    :meth:`RunningFlow.stop` or an outer cancel scope forever. ``None`` waits
    for the exit however long it takes.

    Example::

        @contextlib.asynccontextmanager
        async def connected():
            async with await connect() as conn:
                async def query(item):
                    return await conn.fetch(item)
                yield query

        flow.add(ProcessorFactory(connected))

    Args:
        make: a callable with no arguments returning an async context manager
            (a function decorated with :func:`contextlib.asynccontextmanager`,
            a class with ``__aenter__`` / ``__aexit__``...).
        exit_timeout: seconds the shielded exit may take (default 10), or
            ``None`` for no limit.

    Raises:
        TypeError: ``make`` is not callable, or is itself an async function or
            an async generator function (``@asynccontextmanager`` forgotten).
        ValueError: ``exit_timeout`` is not a positive number.

    .. versionadded:: 1.0
    """

    make: Callable[[], AbstractAsyncContextManager[Any]] = attrs.field(
        validator=attrs.validators.is_callable()
    )
    exit_timeout: float | None = attrs.field(default=EXIT_TIMEOUT, kw_only=True)

    @make.validator
    def _check_make(self, attribute: attrs.Attribute[Any], value: object) -> None:
        function = function_of(value)
        if inspect.isasyncgenfunction(function):
            raise TypeError(
                f"make must return an async context manager when called, not be an async "
                f"generator function: {value!r} (decorate it with "
                "@contextlib.asynccontextmanager)"
            )
        if inspect.iscoroutinefunction(function):
            raise TypeError(
                f"make must return an async context manager when called, not be an async "
                f"function: {value!r} (decorate it with @contextlib.asynccontextmanager)"
            )

    @exit_timeout.validator
    def _check_exit_timeout(self, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is not None:
            check_number("exit_timeout", value, low=0.0, low_open=True)


def default_name(processor: object) -> str:
    """The job name a processor gets when neither ``name=`` nor ``@job_name`` is given."""
    target = processor.make if isinstance(processor, ProcessorFactory) else processor
    while isinstance(target, functools.partial):
        target = target.func
    name = getattr(target, "__qualname__", None)
    if not isinstance(name, str):
        name = type(target).__qualname__
    # A function defined inside another is named by itself: "call_api", not
    # "main.<locals>.call_api".
    return name.rpartition("<locals>.")[2]


def decorated(processor: object, attr: str) -> Any:
    """What a decorator attached to ``processor`` (or to a factory's ``make``)."""
    value = getattr(processor, attr, None)
    if value is None and isinstance(processor, ProcessorFactory):
        value = getattr(processor.make, attr, None)
    return value


def kind(processor: object, *, what: str = "processor") -> bool:
    """Classify an async processor; return ``True`` for an async generator function.

    Raises:
        TypeError: not callable, or a synchronous callable (with how to run it).
    """
    if not callable(processor):
        raise TypeError(f"{what} must be an async callable, got {processor!r}")
    function = function_of(processor)
    if inspect.isasyncgenfunction(function):
        return True
    if inspect.iscoroutinefunction(function):
        return False
    raise TypeError(
        f"{what} {processor!r} is not an async callable. A processor is an "
        "`async def` function (or an async generator function, or a "
        "ProcessorFactory). To run blocking or CPU-bound synchronous code, pass "
        'executor="thread" (or executor="process", or a concurrent.futures.Executor) '
        "to Flow.add."
    )


#: ``Stage.build`` without a resource manager (``None`` is a wrong one).
NO_LOCK: Final[Any] = object()


def check_resource_manager(manager: object) -> None:
    """Refuse what is not an async context manager *instance* (``add_job_with_lock``).

    A class (``anyio.Lock`` without its parentheses) has ``__aenter__`` and
    ``__aexit__`` too, as plain functions: calling them would fail on every
    item at run time, so it is refused here with the fix.

    Raises:
        TypeError: ``manager`` is ``None``, a class, lacks ``__aenter__`` /
            ``__aexit__``, or is a single-use ``@asynccontextmanager`` object.
    """
    if isinstance(manager, type):
        raise TypeError(
            f"resource_manager must be an async context manager instance, got the class "
            f"{manager.__qualname__} (did you mean {manager.__qualname__}()?)"
        )
    aenter = getattr(type(manager), "__aenter__", None)
    aexit = getattr(type(manager), "__aexit__", None)
    if not (callable(aenter) and callable(aexit)):
        raise TypeError(
            f"resource_manager must be an async context manager (such as anyio.Lock()), "
            f"got {manager!r}"
        )
    if isinstance(manager, contextlib._AsyncGeneratorContextManager):
        raise TypeError(
            f"resource_manager is entered once per call, but {manager!r} comes from an "
            "@asynccontextmanager function and can be entered only once; pass one that "
            "can be entered many times (anyio.Lock(), anyio.Semaphore(n), "
            "anyio.CapacityLimiter(n)), or open per-worker resources with a ProcessorFactory"
        )


@final
@attrs.frozen
class Stage:
    """The normalised processor of one job definition."""

    processor: Any
    lock: AbstractAsyncContextManager[Any] | None = None
    is_generator: bool = False
    executor: ExecutorSpec | None = None
    #: ``timeout=`` of the job: how long an Executor call may wait in its queue.
    start_timeout: float | None = None

    @classmethod
    def build(
        cls,
        processor: object,
        lock: object = NO_LOCK,
        executor: object = None,
        start_timeout: float | None = None,
    ) -> Stage:
        """Normalise a processor; ``lock`` is the resource manager of ``add_job_with_lock``."""
        if lock is not NO_LOCK:
            check_resource_manager(lock)
        manager = None if lock is NO_LOCK else lock
        if executor is not None:
            if isinstance(processor, ProcessorFactory):
                raise TypeError("executor= takes a synchronous callable, not a ProcessorFactory")
            check_offload(processor, executor)
            return cls(processor, manager, False, executor, start_timeout)  # type: ignore[arg-type]
        if isinstance(processor, ProcessorFactory):
            return cls(processor, manager)  # type: ignore[arg-type]
        is_gen = kind(processor)
        return cls(processor, manager, is_gen)  # type: ignore[arg-type]

    @contextlib.asynccontextmanager
    async def open(
        self, limiter: anyio.CapacityLimiter | None = None
    ) -> AsyncIterator[tuple[Any, bool]]:
        """Per worker: yield ``(function, is_generator)``; enter/exit a factory.

        The function is the processor itself (offloaded if ``executor=``); the
        resource manager and the job options are wrapped around it by the job.
        """
        if not isinstance(self.processor, ProcessorFactory):
            fn = self.processor
            if self.executor is not None:
                assert limiter is not None
                fn = offloaded(fn, self.executor, limiter, self.start_timeout)
            yield fn, self.is_generator
            return

        manager = self.processor.make()
        if isinstance(manager, type) or not (
            hasattr(type(manager), "__aenter__") and hasattr(type(manager), "__aexit__")
        ):
            raise TypeError(
                f"ProcessorFactory.make() must return an async context manager, got {manager!r}"
            )
        processor = await manager.__aenter__()
        try:
            is_gen = kind(processor, what="the processor yielded by ProcessorFactory")
            yield processor, is_gen
        except BaseException as exc:
            # The worker's exception (or cancellation) always propagates: a
            # factory may observe it but not swallow it.
            await self._exit(manager, exc)
            raise
        else:
            await self._exit(manager, None)

    async def _exit(self, manager: Any, exc: BaseException | None) -> None:
        """Exit a factory's context shielded from cancellation, within its ``exit_timeout``."""
        assert isinstance(self.processor, ProcessorFactory)
        timeout = self.processor.exit_timeout
        with anyio.CancelScope(shield=True) as scope:
            if timeout is not None:
                scope.deadline = anyio.current_time() + timeout
            if exc is None:
                await manager.__aexit__(None, None, None)
            else:
                await manager.__aexit__(type(exc), exc, exc.__traceback__)
        if scope.cancelled_caught:
            logger.warning(
                "the exit of a ProcessorFactory (%r) took longer than its exit_timeout of %gs: "
                "it was cancelled and the worker left without it",
                self.processor.make,
                timeout,
            )
