"""Flow: the reusable definition of a pipeline.

A :class:`Flow` only records job definitions (:class:`JobSpec`); every run
(:meth:`Flow.run`, :meth:`Flow.stream`, :meth:`Flow.start`) builds fresh jobs,
streams and workers from them, so one flow can be run many times, one after
another or at once.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from typing import Any, final

import attrs

from ._adaptive import Adaptive
from ._capacity import DEFAULT_CAPACITY, Capacity
from ._decorators import CAPACITY_ATTR, NAME_ATTR, check_name
from ._monitor import monitor
from ._offload import ExecutorSpec
from ._options import Batch, JobOptions, Retry
from ._processors import NO_LOCK, Stage, decorated, default_name
from ._runtime import FlowResults, RunningFlow, open_run, start_run, stream_run
from ._scaler import ScalingEvent
from ._stats import FlowStats
from ._validate import check_number, function_of


@final
@attrs.frozen
class JobSpec:
    """One job as defined on a flow (private)."""

    name: str
    stage: Stage
    capacity: Capacity
    options: JobOptions = attrs.field(factory=JobOptions)


def _capacity(processor: object, capacity: object) -> Capacity:
    if capacity is None:
        attached: Capacity | None = decorated(processor, CAPACITY_ATTR)
        return attached if attached is not None else DEFAULT_CAPACITY
    if not isinstance(capacity, Capacity):
        raise TypeError(f"capacity must be a Capacity, got {capacity!r}")
    return capacity


#: A callback for scaling events.
OnScale = Callable[[ScalingEvent], object]


def _check_callback(on_scale: object) -> None:
    """``on_scale`` is a plain function: it runs inside the scaler, which must not wait."""
    if on_scale is None:
        return
    if not callable(on_scale):
        raise TypeError(f"on_scale must be callable, got {on_scale!r}")
    function = function_of(on_scale)
    if inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function):
        raise TypeError(
            f"on_scale must be a plain (non-async) function, got {on_scale!r}: it is called "
            "in the scaler, which must never wait. To do async work per event, hand the "
            "event with send_nowait to an unbounded memory object stream "
            "(anyio.create_memory_object_stream(math.inf)) read by a task of your own"
        )


def _check_source(source: object) -> None:
    if not isinstance(source, Iterable | AsyncIterable):
        raise TypeError(f"source must be an iterable or an async iterable, got {source!r}")


@final
@attrs.define(eq=False)
class Flow:
    """A pipeline definition: jobs chained by bounded queues, and an error job.

    Example::

        flow = Flow()
        flow.add(fetch)                                    # job 1
        flow.add(parse, capacity=Capacity(max_workers=8))  # job 2, fed by job 1
        flow.add_job_with_lock(store, db_lock)             # job 3, fed by job 2
        flow.add_error_job(report)                         # receives ErrorItem
        stats = await flow.run(urls)

    A flow is a reusable definition: every run builds fresh jobs, streams and
    workers from it, so the same flow can run many times, one after another or
    at once.

    Args:
        name: keyword-only: the flow's name, which metrics carry as their
            ``flow`` label (see :mod:`flowrhythm.prometheus`).

    Raises:
        TypeError, ValueError: ``name`` is not a non-empty ``str``.

    .. versionadded:: 0.1
    """

    #: The flow's name, for metrics (the ``flow`` label of :mod:`flowrhythm.prometheus`).
    #: ``None`` for an unnamed flow.
    name: str | None = attrs.field(default=None, kw_only=True)
    _jobs: list[JobSpec] = attrs.field(init=False, factory=list)
    _error_job: JobSpec | None = attrs.field(init=False, default=None)

    @name.validator
    def _check_flow_name(self, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is not None:
            check_name(value)

    # -- building ------------------------------------------------------------------

    def add(
        self,
        processor: Any,
        capacity: Capacity | None = None,
        name: str | None = None,
        *,
        executor: ExecutorSpec | None = None,
        ordered: bool = False,
        retry: Retry | None = None,
        timeout: float | None = None,
        max_per_second: float | None = None,
        batch: Batch | None = None,
        concurrency: Adaptive | None = None,
    ) -> Flow:
        """Append a job fed by the previous one; return the flow (calls chain).

        Args:
            processor: an ``async def`` function (or bound method, or object with
                ``async def __call__``, or :func:`functools.partial` of those), an
                async generator function (fans out: every value it yields goes
                downstream), or a :class:`ProcessorFactory`.
            capacity: worker counts and queue length; beats ``@job_capacity`` /
                ``@workers`` on the processor, which beat the default
                ``Capacity()`` (one worker, a queue of 100).
            name: the job's name; beats ``@job_name``, which beats the
                processor's ``__qualname__`` (without the enclosing function of
                a nested one: ``call_api``, not ``main.<locals>.call_api``).
                Explicit names must be unique; a
                repeated default name gets a suffix (``inc``, ``inc#2``).
            executor: run a *synchronous* ``processor`` off the event loop:
                ``"thread"`` (anyio worker threads), ``"process"`` (anyio worker
                processes; the callable must pickle), or any
                :class:`concurrent.futures.Executor` (a ``ProcessPoolExecutor``, a
                Dask ``Client.get_executor()``). The job's worker count bounds the
                calls in flight; cancelling the run cancels calls not yet started.
            ordered: outputs leave in the order the inputs arrived, even with
                many workers (a reorder window of at most ``max_workers`` inputs).
            retry: a :class:`Retry`: retry failing calls with exponential back-off.
            timeout: seconds; a longer call is cancelled and fails with
                :class:`TimeoutError` (for a generator: each step). An offloaded
                call cannot be cut short: one that returns late fails with
                :class:`TimeoutError` and is not retried (it ran to completion).
            max_per_second: start at most this many calls per second, however
                many workers the job has (per run).
            batch: a :class:`Batch`: the processor receives lists of items.
            concurrency: an :class:`Adaptive` limit on calls in flight, shared
                by every job and flow it is given to: each call attempt holds
                one slot (a worker waiting for one is blocked), and the limit
                follows the remote service's capacity (see :class:`Overloaded`).

        Raises:
            TypeError: ``processor`` is not an async callable (a synchronous
                callable without ``executor=`` included; with ``executor=``, an
                async one), or ``capacity`` / ``name`` / ``executor`` has the
                wrong type.
            ValueError: an explicit ``name`` is already used in this flow, or an
                option has an invalid value (naming the option).
        """
        options = JobOptions.build(
            ordered=ordered,
            retry=retry,
            timeout=timeout,
            max_per_second=max_per_second,
            batch=batch,
            concurrency=concurrency,
        )
        self._jobs.append(self._spec(processor, capacity, name, NO_LOCK, executor, options))
        return self

    #: The seed's name for :meth:`add`.
    add_job = add

    def add_job_with_lock(
        self,
        processor: Any,
        resource_manager: AbstractAsyncContextManager[Any],
        capacity: Capacity | None = None,
        name: str | None = None,
        *,
        executor: ExecutorSpec | None = None,
        ordered: bool = False,
        retry: Retry | None = None,
        timeout: float | None = None,
        max_per_second: float | None = None,
        batch: Batch | None = None,
        concurrency: Adaptive | None = None,
    ) -> Flow:
        """Append a job whose every call runs inside ``async with resource_manager:``.

        The resource manager is any async context manager that may be entered many
        times (``anyio.Lock()``, ``anyio.Semaphore(3)``, ``anyio.CapacityLimiter(5)``);
        it may be shared by several jobs and several flows. For a generator
        processor it is held for the whole generator.

        Raises:
            TypeError: as :meth:`add`, or ``resource_manager`` is not an async
                context manager.
            ValueError: as :meth:`add`.
        """
        options = JobOptions.build(
            ordered=ordered,
            retry=retry,
            timeout=timeout,
            max_per_second=max_per_second,
            batch=batch,
            concurrency=concurrency,
        )
        self._jobs.append(
            self._spec(processor, capacity, name, resource_manager, executor, options)
        )
        return self

    def add_error_job(
        self,
        processor: Any,
        capacity: Capacity | None = None,
        name: str | None = None,
        *,
        executor: ExecutorSpec | None = None,
        ordered: bool = False,
        retry: Retry | None = None,
        timeout: float | None = None,
        max_per_second: float | None = None,
        batch: Batch | None = None,
        concurrency: Adaptive | None = None,
    ) -> Flow:
        """Set the job that receives an :class:`ErrorItem` for every failed item.

        What it returns is discarded. An exception it raises fails the run.

        Raises:
            ValueError: the flow already has an error job.
            TypeError: as :meth:`add`.
        """
        if self._error_job is not None:
            raise ValueError(f"the flow already has an error job ({self._error_job.name!r})")
        options = JobOptions.build(
            ordered=ordered,
            retry=retry,
            timeout=timeout,
            max_per_second=max_per_second,
            batch=batch,
            concurrency=concurrency,
        )
        self._error_job = self._spec(processor, capacity, name, NO_LOCK, executor, options)
        return self

    def _spec(
        self,
        processor: Any,
        capacity: object,
        name: object,
        lock: object,
        executor: object,
        options: JobOptions,
    ) -> JobSpec:
        stage = Stage.build(processor, lock, executor, options.timeout)
        return JobSpec(self._name(processor, name), stage, _capacity(processor, capacity), options)

    def _name(self, processor: object, name: object) -> str:
        taken = {spec.name for spec in self._specs()}
        if name is None:
            name = decorated(processor, NAME_ATTR)
        if name is not None:
            check_name(name)
            if name in taken:
                raise ValueError(f"job name {name!r} is already used in this flow")
            return name  # type: ignore[return-value]
        base = default_name(processor)
        candidate, n = base, 1
        while candidate in taken:
            n += 1
            candidate = f"{base}#{n}"
        return candidate

    def _specs(self) -> list[JobSpec]:
        return [*self._jobs, *([self._error_job] if self._error_job else [])]

    def _check_runnable(self) -> None:
        if not self._jobs:
            raise ValueError("the flow has no jobs: add one with Flow.add")

    # -- running -------------------------------------------------------------------

    async def run(
        self,
        source: Iterable[Any] | AsyncIterable[Any],
        *,
        on_scale: OnScale | None = None,
        progress: bool | float = False,
    ) -> FlowStats:
        """Run the flow over ``source`` until it drains; the outputs are discarded.

        The source (an iterable or async iterable) is read only as fast as the
        first job accepts items. A :class:`LastWorkItem` in it ends the input.

        Args:
            source: the items.
            on_scale: a plain (non-async) function, called with a
                :class:`ScalingEvent` for every change of a job's worker count
                (an exception from it fails the run).
            progress: ``True`` to show the run with :func:`monitor` (a live
                table in a terminal, a plain line every second on standard
                error otherwise) and print :meth:`FlowStats.report` when it
                ends; a number instead of ``True`` sets the seconds between two
                frames or lines.

        Returns:
            The final :class:`FlowStats`.

        Raises:
            ExceptionGroup: a processor failed with no error job to take the item,
                or the error job failed (the exception is inside the group).
            TypeError, ValueError: ``progress`` is neither a bool nor a number
                ``> 0``, or ``on_scale`` is not a plain function (an ``async
                def`` one is refused: it is called in the scaler, which must
                not wait).
        """
        self._check_runnable()
        _check_source(source)
        _check_callback(on_scale)
        interval = None
        if not isinstance(progress, bool):
            interval = check_number("progress", progress, low=0.0, low_open=True)
        async with open_run(
            list(self._jobs), self._error_job, source=source, on_scale=on_scale
        ) as run:
            if progress is not False:
                async with monitor(RunningFlow._create(run), interval=interval):
                    await run.done.wait()
        return run.snapshot()

    def stream(
        self, source: Iterable[Any] | AsyncIterable[Any], *, on_scale: OnScale | None = None
    ) -> AbstractAsyncContextManager[FlowResults]:
        """Run the flow over ``source``, yielding the last job's outputs as they come.

        Example::

            async with flow.stream(urls) as results:
                async for page in results:
                    print(page)

        ``results`` is a :class:`FlowResults`: it also has ``stats()`` and
        ``stop()``. The results end when the last job's outputs end; leaving the
        block normally then waits for the rest of the run (the error job
        included). Leaving it early (a ``break``), or closing the results before
        they end, cancels the run.
        """
        self._check_runnable()
        _check_source(source)
        _check_callback(on_scale)
        return stream_run(list(self._jobs), self._error_job, source, on_scale)

    def start(
        self, *, on_scale: OnScale | None = None
    ) -> AbstractAsyncContextManager[RunningFlow]:
        """Start the flow and feed it by hand through a :class:`RunningFlow`.

        Example::

            async with flow.start() as running:
                for item in items:
                    await running.send(item)
                await running.close()
                stats = await running.join()

        Leaving the block normally closes the input and waits for the drain;
        leaving it with an exception, or calling :meth:`RunningFlow.stop`,
        cancels the run.
        """
        self._check_runnable()
        _check_callback(on_scale)
        return start_run(list(self._jobs), self._error_job, on_scale)
