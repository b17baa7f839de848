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
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, final

import anyio
import attrs

from ._offload import ExecutorSpec, check_offload, offloaded
from ._validate import function_of

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
    an async callable or an async generator function. The exit runs in a
    shielded cancel scope, so it happens even when the run is cancelled.

    Example::

        @contextlib.asynccontextmanager
        async def connected():
            async with await connect() as conn:
                async def query(item):
                    return await conn.fetch(item)
                yield query

        flow.add(ProcessorFactory(connected))

    Args:
        make: a callable with no arguments returning an async context manager.

    Raises:
        TypeError: ``make`` is not callable.

    .. versionadded:: 0.1
    """

    make: Callable[[], AbstractAsyncContextManager[Any]] = attrs.field(
        validator=attrs.validators.is_callable()
    )

    @make.validator
    def _check_make(self, attribute: attrs.Attribute[Any], value: object) -> None:
        if inspect.iscoroutinefunction(value):
            raise TypeError(
                f"make must return an async context manager when called, not be an async "
                f"function: {value!r} (decorate it with @contextlib.asynccontextmanager)"
            )


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


@final
@attrs.frozen
class Stage:
    """The normalised processor of one job definition."""

    processor: Any
    lock: AbstractAsyncContextManager[Any] | None = None
    is_generator: bool = False
    executor: ExecutorSpec | None = None

    @classmethod
    def build(cls, processor: object, lock: object = None, executor: object = None) -> Stage:
        if lock is not None and not (
            callable(getattr(lock, "__aenter__", None))
            and callable(getattr(lock, "__aexit__", None))
        ):
            raise TypeError(
                f"resource_manager must be an async context manager "
                f"(such as anyio.Lock()), got {lock!r}"
            )
        if executor is not None:
            if isinstance(processor, ProcessorFactory):
                raise TypeError("executor= takes a synchronous callable, not a ProcessorFactory")
            check_offload(processor, executor)
            return cls(processor, lock, False, executor)  # type: ignore[arg-type]
        if isinstance(processor, ProcessorFactory):
            return cls(processor, lock)  # type: ignore[arg-type]
        is_gen = kind(processor)
        return cls(processor, lock, is_gen)  # type: ignore[arg-type]

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
                fn = offloaded(fn, self.executor, limiter)
            yield fn, self.is_generator
            return

        manager = self.processor.make()
        if not (hasattr(manager, "__aenter__") and hasattr(manager, "__aexit__")):
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
            with anyio.CancelScope(shield=True):
                await manager.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        else:
            with anyio.CancelScope(shield=True):
                await manager.__aexit__(None, None, None)
