"""Flow: the reusable definition of a pipeline.

A :class:`Flow` only records job definitions (:class:`JobSpec`); every run
(:meth:`Flow.run`, :meth:`Flow.stream`, :meth:`Flow.start`) builds fresh jobs,
streams and workers from them, so one flow can be run many times, one after
another or at once.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Never, final, overload

import attrs

from ._adaptive import Adaptive
from ._capacity import DEFAULT_CAPACITY, Capacity
from ._decorators import CAPACITY_ATTR, NAME_ATTR, check_name
from ._monitor import monitor
from ._offload import ExecutorSpec
from ._options import Batch, JobOptions, JobSpec, Retry, RouterSpec, requalified, spec_names
from ._processors import NO_LOCK, ProcessorFactory, Stage, decorated, default_name
from ._run._run import FlowResults, RunningFlow, open_run, start_run, stream_run
from ._scaling import ScalingEvent
from ._stats import FlowStats
from ._validate import check_number, function_of


def _walk(specs: list[JobSpec | RouterSpec], depth: int = 0) -> list[tuple[int, str]]:
    """The shape of a flow, one ``(depth, text)`` line per job, arms indented."""
    lines: list[tuple[int, str]] = []
    for spec in specs:
        if isinstance(spec, RouterSpec):
            lines.append((depth, f"{spec.name} (router)"))
            for label, arm in spec.arms.items():
                mark = " (default)" if spec.default is not None and label == spec.default else ""
                lines.append((depth + 1, f"[{label!r}]{mark}"))
                if arm:
                    lines += _walk(list(arm), depth + 2)
                else:
                    lines.append((depth + 2, "(passes items through)"))
        else:
            lines.append((depth, spec.name))
    return lines


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

    .. versionadded:: 1.0
    """

    #: The flow's name, for metrics (the ``flow`` label of :mod:`flowrhythm.prometheus`).
    #: ``None`` for an unnamed flow.
    name: str | None = attrs.field(default=None, kw_only=True)
    _jobs: list[JobSpec | RouterSpec] = attrs.field(init=False, factory=list)
    _error_job: JobSpec | None = attrs.field(init=False, default=None)

    @name.validator
    def _check_flow_name(self, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is not None:
            check_name(value)

    # -- building ------------------------------------------------------------------

    @overload
    def add(
        self,
        processor: Callable[[Any], Awaitable[Any]]
        | Callable[[Any], AsyncIterator[Any]]
        | ProcessorFactory,
        capacity: Capacity | None = ...,
        name: str | None = ...,
        *,
        executor: None = ...,
        ordered: bool = ...,
        retry: Retry | None = ...,
        timeout: float | None = ...,
        max_per_second: float | None = ...,
        batch: Batch | None = ...,
        concurrency: Adaptive | None = ...,
    ) -> Flow: ...

    @overload
    def add(
        self,
        processor: Callable[[Any], Any],
        capacity: Capacity | None = ...,
        name: str | None = ...,
        *,
        executor: ExecutorSpec,
        ordered: bool = ...,
        retry: Retry | None = ...,
        timeout: float | None = ...,
        max_per_second: float | None = ...,
        batch: Batch | None = ...,
        concurrency: Adaptive | None = ...,
    ) -> Flow: ...

    @overload
    def add(self, processor: Flow) -> Flow: ...

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
                many workers (a reorder window of at most ``2 * max_workers`` inputs).
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

        ``processor`` may also be another :class:`Flow`: copies of its job
        definitions are folded in here (later changes to it do not affect this
        flow), a job name already used here getting a suffix (``clean#2``). It
        takes no other argument, and must have no error job.

        Raises:
            TypeError: ``processor`` is not an async callable (a synchronous
                callable without ``executor=`` included; with ``executor=``, an
                async one), or ``capacity`` / ``name`` / ``executor`` has the
                wrong type.
            ValueError: an explicit ``name`` is already used in this flow, or an
                option has an invalid value (naming the option), or a folded
                flow has an error job.
        """
        if isinstance(processor, Flow):
            given = {
                "capacity": capacity,
                "name": name,
                "executor": executor,
                "retry": retry,
                "timeout": timeout,
                "max_per_second": max_per_second,
                "batch": batch,
                "concurrency": concurrency,
            }
            for key, value in [*given.items(), ("ordered", ordered or None)]:
                if value is not None:
                    raise TypeError(
                        f"{key}= cannot be given when adding a Flow: its jobs keep their own"
                    )
            self._fold(processor)
            return self
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

    @overload
    def add_job_with_lock(
        self,
        processor: Callable[[Any], Awaitable[Any]]
        | Callable[[Any], AsyncIterator[Any]]
        | ProcessorFactory,
        resource_manager: AbstractAsyncContextManager[Any],
        capacity: Capacity | None = ...,
        name: str | None = ...,
        *,
        executor: None = ...,
        ordered: bool = ...,
        retry: Retry | None = ...,
        timeout: float | None = ...,
        max_per_second: float | None = ...,
        batch: Batch | None = ...,
        concurrency: Adaptive | None = ...,
    ) -> Flow: ...

    @overload
    def add_job_with_lock(
        self,
        processor: Callable[[Any], Any],
        resource_manager: AbstractAsyncContextManager[Any],
        capacity: Capacity | None = ...,
        name: str | None = ...,
        *,
        executor: ExecutorSpec,
        ordered: bool = ...,
        retry: Retry | None = ...,
        timeout: float | None = ...,
        max_per_second: float | None = ...,
        batch: Batch | None = ...,
        concurrency: Adaptive | None = ...,
    ) -> Flow: ...

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

    @overload
    def add_error_job(
        self,
        processor: Callable[[Any], Awaitable[Any]]
        | Callable[[Any], AsyncIterator[Any]]
        | ProcessorFactory,
        capacity: Capacity | None = ...,
        name: str | None = ...,
        *,
        executor: None = ...,
        ordered: bool = ...,
        retry: Retry | None = ...,
        timeout: float | None = ...,
        max_per_second: float | None = ...,
        batch: Batch | None = ...,
        concurrency: Adaptive | None = ...,
    ) -> Flow: ...

    @overload
    def add_error_job(
        self,
        processor: Callable[[Any], Any],
        capacity: Capacity | None = ...,
        name: str | None = ...,
        *,
        executor: ExecutorSpec,
        ordered: bool = ...,
        retry: Retry | None = ...,
        timeout: float | None = ...,
        max_per_second: float | None = ...,
        batch: Batch | None = ...,
        concurrency: Adaptive | None = ...,
    ) -> Flow: ...

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

    def add_router(
        self,
        classify: Callable[[Any], Any],
        arms: Mapping[Any, Any],
        default: Any = None,
        name: str | None = None,
        capacity: Capacity | None = None,
        **job_options: Never,
    ) -> Flow:
        """Append a router: a job that hands each item to one arm, chosen by a label.

        Example::

            flow.add_router(kind_of, {
                "html": Flow().add(parse_html),
                "pdf": Flow().add(ocr).add(parse_pdf),
            }, default="html")
            flow.add(store)  # every arm's outputs feed `store`

        The router's workers call ``classify(item)`` (a plain or ``async def``
        function returning a label) and hand the item to that label's arm, as a
        job hands an output to the next one (a full arm makes the router's worker
        wait: blocked time). Every arm's outputs go to the job added after the
        router; if the router is last, they are the flow's outputs. Order across
        arms is not kept. End of input reaches each arm once the router has
        drained, and the next job once every arm has.

        A label with no arm goes to ``default``; without one, the item fails
        with a :class:`LookupError` naming the label (to the error job, or
        failing the run). An exception in ``classify`` is routed like a
        processor's, :class:`StopProcessing` skips the item.

        Arm jobs are named after the router and label: the job ``parse_html``
        of the arm ``"html"`` of the router ``route`` is ``route[html].parse_html``
        (``route['html'].parse_html`` when the label is not a plain name); an
        arm inside an arm is qualified twice.

        Args:
            classify: returns the label of an item.
            arms: label -> :class:`Flow` (its jobs become this flow's jobs; an
                empty ``Flow()`` passes items through unchanged) or processor (a
                one-job arm, named after it).
            default: the label of the arm taking items whose label has no arm.
            name: the router's name (default: ``classify``'s name).
            capacity: the router's workers and input queue.

        Raises:
            TypeError: ``classify`` is not callable, ``arms`` is not a mapping,
                an arm is neither a Flow nor a processor, or a job option (such
                as ``ordered=``: order across arms is not kept) is given.
            ValueError: ``arms`` is empty, ``default`` is not one of its labels,
                an arm flow has an error job, or ``name`` is taken.
        """
        for key in job_options:
            raise TypeError(
                f"add_router takes no job option {key}=: a router only picks an arm "
                "(give options to the arms' jobs; order across arms is not kept)"
            )
        if not callable(classify):
            raise TypeError(f"classify must be callable, got {classify!r}")
        function = function_of(classify)
        if inspect.isasyncgenfunction(function):
            raise TypeError(
                f"classify must return a label (a plain or async def function), got {classify!r}"
            )
        if not isinstance(arms, Mapping):
            raise TypeError(f"arms must be a mapping of label -> Flow or processor, got {arms!r}")
        if not arms:
            raise ValueError("arms must not be empty: give at least one label -> arm")
        if default is not None and default not in arms:
            raise ValueError(
                f"default must be one of the arms' labels {list(arms)!r}, got {default!r}"
            )
        router_name = self._name(classify, name)
        taken = {n for spec in self._jobs for n in spec_names(spec)} | {router_name}
        if self._error_job is not None:
            taken.add(self._error_job.name)
        built: dict[Any, tuple[JobSpec | RouterSpec, ...]] = {}
        for label, arm in arms.items():
            if isinstance(arm, Flow):
                arm._check_foldable("an arm")
                specs = list(arm._jobs)
            else:
                specs = [Flow().add(arm)._jobs[0]]
            tag = label if isinstance(label, str) and label.isidentifier() else repr(label)
            prefix = f"{router_name}[{tag}]."
            qualified = tuple(requalified(s, "", prefix) for s in specs)
            for spec in qualified:
                for n in spec_names(spec):
                    if n in taken:
                        raise ValueError(f"job name {n!r} is already used in this flow")
                    taken.add(n)
            built[label] = qualified
        self._jobs.append(
            RouterSpec(
                name=router_name,
                classify=classify,
                is_async=inspect.iscoroutinefunction(function),
                arms=built,
                default=default,
                capacity=_capacity(classify, capacity),
            )
        )
        return self

    def describe(self) -> str:
        """The flow's shape as text: one line per job, a router's arms indented.

        Example::

            >>> print(flow.describe())  # doctest: +SKIP
            fetch
            kind_of (router)
              ['html'] (default)
                kind_of[html].parse_html
              ['pdf']
                kind_of[pdf].parse_pdf
            store
        """
        lines = _walk(list(self._jobs))
        if self._error_job is not None:
            lines.append((0, f"{self._error_job.name} (error job)"))
        return "\n".join("  " * depth + text for depth, text in lines)

    def _check_foldable(self, what: str) -> None:
        if self._error_job is not None:
            raise ValueError(
                f"a Flow with an error job ({self._error_job.name!r}) cannot be used as {what}: "
                "a flow has one error job; add it to the outer flow"
            )

    def _fold(self, other: Flow) -> None:
        """Fold copies of ``other``'s job definitions in, renaming those already taken."""
        other._check_foldable("a job")
        taken = {n for spec in self._specs() for n in spec_names(spec)}
        for spec in list(other._jobs):
            candidate, n = spec, 1
            while any(x in taken for x in spec_names(candidate)):
                n += 1
                new = f"{spec.name}#{n}"
                candidate = (
                    spec.renamed(new)
                    if isinstance(spec, RouterSpec)
                    else attrs.evolve(spec, name=new)
                )
            taken.update(spec_names(candidate))
            self._jobs.append(candidate)

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
        taken = {n for spec in self._specs() for n in spec_names(spec)}
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

    def _specs(self) -> list[JobSpec | RouterSpec]:
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
