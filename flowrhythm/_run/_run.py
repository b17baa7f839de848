"""One run of a flow: one task group, the streams between jobs, and its handle.

Every run builds fresh jobs, streams and workers from the :class:`Flow`
definition, all inside one task group: when the run ends (normally, by
failure, or cancelled) nothing of it is left behind. Streams are created here
and every one of them is closed here, after the task group has exited.

End of input travels down the flow: the run closes the first job's input; each
job closes its output once its input has drained and its last worker has left.
The error job's input closes when every other job has finished.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast, final

import anyio
from anyio import BrokenResourceError, ClosedResourceError, EndOfStream, WouldBlock
from anyio.abc import TaskGroup
from anyio.lowlevel import checkpoint, checkpoint_if_cancelled, current_token
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._errors import ErrorItem, LastWorkItem
from .._ledger import LedgerError
from .._scaling import ScalingEvent
from .._stats import FinalJobs, FlowStats, JobStats
from .._timing import call_timer
from ._job import Job, Route
from ._ledger import LedgerResults, LedgerRun
from ._pool import Pool
from ._scaler import run_scaler
from ._worker import YIELD_EVERY

if TYPE_CHECKING:
    from .._ledger import Ledger
    from .._options import JobSpec, RouterSpec


def _last_queue_length(specs: Sequence[JobSpec | RouterSpec]) -> int:
    """The queue length of the flow's results: that of its last (plain) job."""
    spec = specs[-1]
    while spec.is_router:
        spec = cast("RouterSpec", spec)
        arms = [arm for arm in spec.arms.values() if arm]
        if not arms:
            return spec.capacity.queue_length
        spec = arms[0][-1]
    return spec.capacity.queue_length


@final
class Run:
    """The private state of one run."""

    def __init__(
        self,
        specs: Sequence[JobSpec | RouterSpec],
        error_spec: JobSpec | None,
        *,
        results: bool,
        on_scale: Callable[[ScalingEvent], object] | None = None,
    ) -> None:
        self.on_scale = on_scale
        self._streams: list[MemoryObjectSendStream[Any] | MemoryObjectReceiveStream[Any]] = []
        self.input: MemoryObjectSendStream[Any]
        self.results: MemoryObjectReceiveStream[Any] | None = None
        self.items_in = 0
        self.ended_by_flow = False
        self.input_closed = False
        self.stopped = False  # cancelled: stopped, failed or left early
        self.failure: Exception | None = None
        self.done = anyio.Event()  # every job drained
        self.over = False  # the run is over, however it ended
        self._settled: anyio.Event | None = None  # made by join: done, or over
        # The event loop's clock, looked up once for the run (and its jobs).
        self.clock: Callable[[], float] = current_token().backend_class.current_time
        self.started_at = self.clock()
        self.timer = call_timer(self.clock)  # times the jobs' calls (chosen once)
        self.ended_at: float | None = None
        self.task_group: TaskGroup | None = None
        self.feed_scope: anyio.CancelScope | None = None  # made by feed()
        self.ledger: LedgerRun | None = None  # set by open_run for a run with a ledger
        self.resumed = 0

        try:
            self._build(specs, error_spec, results)
        except BaseException:
            self.close_streams()
            raise
        self._unfinished = len(self.all_jobs)

    def _build(
        self, specs: Sequence[JobSpec | RouterSpec], error_spec: JobSpec | None, results: bool
    ) -> None:
        errors: MemoryObjectSendStream[ErrorItem] | None = None
        self.error_job: Job | None = None
        if error_spec is not None:
            errors, error_receive = self.new_stream(error_spec.capacity.queue_length)
            self.error_job = Job(self, error_spec, error_receive, None, None)

        self.input, receive = self.new_stream(specs[0].capacity.queue_length)
        self.jobs: list[Job] = []
        # Where the flow's outputs are counted: the last plain jobs, and the
        # routes of empty arms at the end of the flow.
        self.outlets: list[Job] = []
        self.through: list[Route] = []
        out = None
        if results:
            out, self.results = self.new_stream(_last_queue_length(specs))
        self._chain(specs, receive, out, errors, terminal=True)
        if errors is not None:
            errors.close()  # each job holds its own clone; the last one closes the input
        self.all_jobs = [*self.jobs, *([self.error_job] if self.error_job else [])]

    def _chain(
        self,
        specs: Sequence[JobSpec | RouterSpec],
        receive: MemoryObjectReceiveStream[Any],
        out: MemoryObjectSendStream[Any] | None,
        errors: MemoryObjectSendStream[ErrorItem] | None,
        *,
        terminal: bool,
    ) -> None:
        """Build the jobs of ``specs``: the first reads ``receive``, the last sends to ``out``.

        ``out`` (``None``: outputs discarded) belongs to this chain: its last job
        closes it. A router's arms are chains of their own, each sending to a
        clone of the router's ``out``, so that end of input goes on only once
        every arm has drained. ``terminal``: the chain's outputs are the flow's.
        """
        for index, spec in enumerate(specs):
            last = index + 1 == len(specs)
            send: MemoryObjectSendStream[Any] | None
            if last:
                send, next_receive = out, receive
            else:
                send, next_receive = self.new_stream(specs[index + 1].capacity.queue_length)
            job_errors = None
            if errors is not None:
                job_errors = errors.clone()
                self._streams.append(job_errors)
            if not spec.is_router:
                job = Job(self, spec, receive, send, job_errors)
                self.jobs.append(job)
                if last and terminal:
                    self.outlets.append(job)
            else:
                spec = cast("RouterSpec", spec)
                routes: dict[Any, Route] = {}
                self.jobs.append(Job(self, spec, receive, None, job_errors, routes))
                for label, arm in spec.arms.items():
                    arm_out = None
                    if send is not None:
                        arm_out = send.clone()
                        self._streams.append(arm_out)
                    if not arm:  # passes items through: straight to what follows
                        routes[label] = route = Route(arm_out, last and terminal)
                        if route.through:
                            self.through.append(route)
                        continue
                    arm_send, arm_receive = self.new_stream(arm[0].capacity.queue_length)
                    routes[label] = Route(arm_send, False)
                    self._chain(arm, arm_receive, arm_out, errors, terminal=last and terminal)
                if send is not None:
                    send.close()  # the arms hold clones of it
            receive = next_receive

    def new_stream(
        self, queue_length: int
    ) -> tuple[MemoryObjectSendStream[Any], MemoryObjectReceiveStream[Any]]:
        """A memory object stream that the run closes when it ends."""
        # Not create_memory_object_stream[Any](...): subscripting costs more than the call.
        send: MemoryObjectSendStream[Any]
        receive: MemoryObjectReceiveStream[Any]
        send, receive = anyio.create_memory_object_stream(queue_length)
        self._streams += (send, receive)
        return send, receive

    def close_streams(self) -> None:
        for stream in self._streams:
            stream.close()

    # -- lifecycle ---------------------------------------------------------------

    def start(self, task_group: TaskGroup) -> None:
        self.task_group = task_group
        for job in self.all_jobs:
            pool = Pool(job, task_group)
            pool.start()
            if pool.scales:
                task_group.start_soon(run_scaler, pool, name=f"flowrhythm {job.name} scaler")

    def job_finished(self) -> None:
        self._unfinished -= 1
        if self._unfinished == 0:
            self.ended_at = self.clock()
            self.done.set()
            self._settle()

    def _settle(self) -> None:
        if self._settled is not None:
            self._settled.set()

    async def settled(self) -> None:
        """Wait until every job has drained, or the run is over however it ended."""
        if not self.done.is_set() and not self.over:
            if self._settled is None:
                self._settled = anyio.Event()
            await self._settled.wait()

    def end_input(self) -> None:
        """The flow ends its own input: LastWorkItem from a source or processor."""
        if not self.input_closed:
            self.ended_by_flow = True
        self.close_input()
        if self.feed_scope is not None:
            self.feed_scope.cancel()

    def close_input(self) -> None:
        self.input_closed = True
        self.input.close()

    def fail(self, error: Exception, cause: BaseException) -> None:
        """Fail the run with ``error`` (raised when its task group has exited)."""
        if self.failure is None:
            error.__cause__ = cause
            self.failure = error
        self.cancel()

    def cancel(self) -> None:
        self.ended_by_flow = True
        self.stopped = True
        assert self.task_group is not None
        self.task_group.cancel_scope.cancel()

    def ended_now(self) -> None:
        """The run is over: its stats stop ageing (they keep the time it ended)."""
        if self.ended_at is None:
            self.ended_at = self.clock()

    async def feed(self, source: Iterable[Any] | AsyncIterable[Any]) -> None:
        """Take items from ``source`` only as fast as the first job accepts them.

        Only the flow's own input being closed (the flow ended it) stops the
        feed quietly; anything the source raises, ``ClosedResourceError``
        included, fails the run.
        """
        self.feed_scope = anyio.CancelScope()
        if self.input_closed:
            return  # ended before the feed began
        with self.feed_scope:
            try:
                if self.ledger is not None:
                    await self.ledger.feed(source)
                elif isinstance(source, AsyncIterable):
                    iterator = aiter(source)
                    try:
                        async for item in iterator:
                            if not await self._feed_one(item):
                                break
                    finally:
                        aclose = getattr(iterator, "aclose", None)
                        if aclose is not None:
                            with anyio.CancelScope(shield=True):
                                await aclose()
                else:
                    await self._feed_iterable(source)
            finally:
                self.close_input()

    async def _feed_iterable(self, source: Iterable[Any]) -> None:
        """:meth:`_feed_one` inlined over a plain iterable: the hot path of a run."""
        send_nowait = self.input.send_nowait
        budget = YIELD_EVERY
        for item in source:
            if item.__class__ is LastWorkItem:
                self.end_input()
                return
            try:
                send_nowait(item)
            except WouldBlock:
                try:
                    await self.input.send(item)
                except ClosedResourceError:
                    return  # the flow ended its input while we waited to send
                self.items_in += 1
                budget = YIELD_EVERY
                continue
            except ClosedResourceError:
                return  # the flow ended its input
            self.items_in += 1
            budget -= 1
            if not budget:
                budget = YIELD_EVERY
                await checkpoint()

    async def _feed_one(self, item: Any) -> bool:
        if item.__class__ is LastWorkItem:
            self.end_input()
            return False
        try:
            self.input.send_nowait(item)
        except WouldBlock:
            try:
                await self.input.send(item)
            except ClosedResourceError:
                return False  # the flow ended its input while we waited to send
        except ClosedResourceError:
            return False  # the flow ended its input
        else:
            self.items_in += 1
            if not self.items_in % YIELD_EVERY:
                await checkpoint()
            return True
        self.items_in += 1
        return True

    # -- observing ---------------------------------------------------------------

    def snapshot(self) -> FlowStats:
        end = self.ended_at
        jobs: Mapping[str, JobStats]
        if end is None:  # live: every job's snapshot now
            end = self.clock()
            jobs = {job.name: job.snapshot() for job in self.all_jobs}
        else:  # ended: its counters stay as they are, each job's snapshot is built when read
            drained = self.done.is_set()
            jobs = FinalJobs({job.name: job.record(end, drained) for job in self.all_jobs})
        items_out = sum(job.counters.outputs for job in self.outlets)
        for route in self.through:
            items_out += route.passed
        return FlowStats(
            jobs=jobs,
            items_in=self.items_in,
            items_out=items_out,
            elapsed=end - self.started_at,
            done=self.done.is_set(),
            resumed=self.resumed,
        )


class _RunBlock:
    """The ``async with`` of one run: build it, run it in a task group, end it (private).

    What its ``async with`` hands out depends on the subclass: the :class:`Run`
    itself (``Flow.run``), a :class:`RunningFlow` or a :class:`FlowResults`.
    Written as classes rather than generator context managers, which cost a few
    microseconds per run each, and a short run pays its start-up in full.
    """

    __slots__ = (
        "_error_spec",
        "_ledger",
        "_on_scale",
        "_results",
        "_source",
        "_specs",
        "_task_group",
        "run",
    )

    run: Run
    _task_group: TaskGroup

    def __init__(
        self,
        specs: Sequence[JobSpec | RouterSpec],
        error_spec: JobSpec | None,
        *,
        source: Iterable[Any] | AsyncIterable[Any] | None = None,
        results: bool = False,
        on_scale: Callable[[ScalingEvent], object] | None = None,
        ledger: tuple[Ledger, Callable[[Any], Any] | None] | None = None,
    ) -> None:
        self._ledger = ledger
        self._specs = specs
        self._error_spec = error_spec
        self._source = source
        self._results = results
        self._on_scale = on_scale

    async def _enter(self) -> Run:
        """Build the run and start it (its source first: the workers then find items waiting)."""
        run = self.run = Run(
            self._specs, self._error_spec, results=self._results, on_scale=self._on_scale
        )
        if self._ledger is not None:
            run.ledger = LedgerRun(*self._ledger, run)
            try:
                await run.ledger.open()
            except LedgerError as exc:
                self._ended()
                raise ExceptionGroup("the flowrhythm run failed", [exc]) from None
        task_group = self._task_group = anyio.create_task_group()
        try:
            await task_group.__aenter__()
        except BaseException:
            self._ended()
            raise
        try:
            if self._source is not None:
                task_group.start_soon(run.feed, self._source, name="flowrhythm source")
            run.start(task_group)
            if run.ledger is not None:
                task_group.start_soon(run.ledger.flusher, name="flowrhythm ledger")
        except BaseException as exc:
            await self._leave(type(exc), exc, exc.__traceback__)
            raise
        return run

    async def _leave(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        """Leave the task group (waiting for every task of the run), then end the run.

        Returns whether the exception, if any, is swallowed: the run's own
        cancellation is (stopped, failed or left early). A failure of the run is
        raised here, in an :class:`ExceptionGroup` as anyio's task groups raise.
        """
        run = self.run
        if run.ledger is not None:
            run.ledger.stop()  # the flusher writes what it has and leaves
        try:
            swallowed = await self._task_group.__aexit__(exc_type, exc, tb)
        finally:
            self._ended()
            if run.ledger is not None:  # the final write, however the run ended
                error = await run.ledger.close()
                if error is not None and run.failure is None:
                    run.failure = error
        if run.failure is not None:
            raise ExceptionGroup("the flowrhythm run failed", [run.failure])
        return swallowed

    def _ended(self) -> None:
        run = self.run
        run.ended_now()
        run.close_streams()
        run.over = True
        run._settle()


@final
class _OpenRun(_RunBlock, contextlib.AbstractAsyncContextManager[Run]):
    """``async with`` a run for the body of the block (``Flow.run``)."""

    __slots__ = ()

    async def __aenter__(self) -> Run:
        return await self._enter()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return await self._leave(exc_type, exc, tb)


def open_run(
    specs: Sequence[JobSpec | RouterSpec],
    error_spec: JobSpec | None,
    *,
    source: Iterable[Any] | AsyncIterable[Any] | None = None,
    results: bool = False,
    on_scale: Callable[[ScalingEvent], object] | None = None,
    ledger: tuple[Ledger, Callable[[Any], Any] | None] | None = None,
) -> contextlib.AbstractAsyncContextManager[Run]:
    """Build a run and keep it going for the body of the ``async with``."""
    return _OpenRun(
        specs, error_spec, source=source, results=results, on_scale=on_scale, ledger=ledger
    )


@final
class RunningFlow:
    """The handle of a flow started with :meth:`Flow.start`.

    Obtained only from ``async with flow.start() as running:``. Leaving the block
    normally closes the input and waits for the flow to drain; leaving it with an
    exception, or calling :meth:`stop`, cancels the run.

    .. versionadded:: 1.0
    """

    __slots__ = ("_run",)
    _run: Run

    def __init__(self) -> None:
        raise TypeError("RunningFlow is obtained from `async with flow.start() as running:`")

    @classmethod
    def _create(cls, run: Run) -> RunningFlow:
        self = object.__new__(cls)
        self._run = run
        return self

    async def send(self, item: Any) -> None:
        """Send ``item`` into the first job, waiting while its queue is full.

        Sending :class:`LastWorkItem` is the same as :meth:`close`. While the
        first job's queue has room the item goes in without a trip through the
        scheduler; a caller sending in a loop still yields to other tasks every
        few dozen items.

        Raises:
            anyio.ClosedResourceError: the input was closed with :meth:`close`.
            anyio.BrokenResourceError: the flow ended its input itself (a
                processor returned :class:`LastWorkItem`), or the run was
                stopped, failed or cancelled (inside the run's own block, the
                cancellation itself is raised then, and the block exits).
        """
        if item.__class__ is LastWorkItem:
            await self.close()
            return
        run = self._run
        if run.stopped:
            # Inside the run's own block the cancellation comes first (the block
            # then exits quietly); anywhere else the send fails.
            await checkpoint_if_cancelled()
            raise _broken()
        try:
            run.input.send_nowait(item)
        except WouldBlock:
            try:
                await run.input.send(item)
            except ClosedResourceError:
                if run.ended_by_flow:
                    raise _broken() from None
                raise
            run.items_in += 1
            return
        except ClosedResourceError:
            if run.ended_by_flow:
                raise _broken() from None
            raise
        run.items_in += 1
        if not run.items_in % YIELD_EVERY:
            await checkpoint()

    async def close(self) -> None:
        """End the input: items already sent are still processed, then the flow drains."""
        self._run.close_input()
        await checkpoint()

    async def join(self) -> FlowStats:
        """Wait until every job has drained (after :meth:`close`); return the stats.

        If the run ends otherwise — stopped, cancelled or failed — ``join`` returns
        its final stats then (with ``done`` false) instead of waiting forever; a
        failure itself is raised where the run's ``async with`` block ends.
        """
        run = self._run
        await run.settled()
        return run.snapshot()

    def stop(self) -> None:
        """Cancel the run now: unfinished items are abandoned.

        A plain call, like :meth:`anyio.CancelScope.cancel`; afterwards the
        ``async with`` block exits without raising.
        """
        self._run.cancel()

    def stats(self) -> FlowStats:
        """A live snapshot of the run's counters and worker states."""
        return self._run.snapshot()

    @property
    def done(self) -> bool:
        """Whether every job has drained."""
        return self._run.done.is_set()


def _broken() -> BrokenResourceError:
    return BrokenResourceError(
        "the flow has ended its input (a processor returned LastWorkItem, "
        "or the run was stopped, failed or cancelled)"
    )


@final
class FlowResults:
    """The outputs of a run started with :meth:`Flow.stream`, as they come.

    Obtained only from ``async with flow.stream(source) as results:``. An async
    iterator over the last job's outputs: while outputs are waiting it hands
    them out without a trip through the scheduler (yielding to other tasks
    every few dozen outputs), so reading them costs about what :meth:`Flow.run`
    costs. It also observes and controls its run, like a :class:`RunningFlow`:
    :meth:`stats` and :meth:`stop`; :func:`monitor` and :func:`record` accept it.

    Closing it (``await results.aclose()``, or leaving ``async with results:``)
    before the outputs have ended is leaving early: the run is cancelled, as by
    :meth:`stop`, and no item is routed to the error job because of it.

    .. versionadded:: 1.0
    """

    __slots__ = ("_budget", "_receive", "_run")
    _run: Run
    _receive: MemoryObjectReceiveStream[Any]
    _budget: int

    def __init__(self) -> None:
        raise TypeError(
            "FlowResults is obtained from `async with flow.stream(source) as results:`"
        )

    @classmethod
    def _create(cls, run: Run, receive: MemoryObjectReceiveStream[Any]) -> FlowResults:
        self = object.__new__(cls)
        self._run = run
        self._receive = receive
        self._budget = YIELD_EVERY
        return self

    def __aiter__(self) -> FlowResults:
        return self

    async def __anext__(self) -> Any:
        budget = self._budget - 1
        if budget:
            self._budget = budget
            try:
                return self._receive.receive_nowait()
            except WouldBlock:
                pass
            except EndOfStream:
                raise StopAsyncIteration from None
            except ClosedResourceError:
                await self._closed()
                raise
        self._budget = YIELD_EVERY
        try:
            return await self.receive()  # a checkpoint, then the wait
        except EndOfStream:
            raise StopAsyncIteration from None

    async def receive(self) -> Any:
        """The next output, waiting for it if none is there.

        Raises:
            anyio.EndOfStream: the outputs have ended.
            anyio.ClosedResourceError: the results were closed (inside the
                run's block the cancellation of the run comes first).
        """
        try:
            return await self._receive.receive()
        except ClosedResourceError:
            await self._closed()
            raise

    async def _closed(self) -> None:
        """Read after closing: inside the run's block, the run's cancellation comes first."""
        if self._run.stopped:
            await checkpoint_if_cancelled()

    def _ended(self) -> bool:
        """Whether every output has been handed out (the last job has finished)."""
        statistics = self._receive.statistics()
        return not statistics.open_send_streams and not statistics.current_buffer_used

    def close(self) -> None:
        """Stop reading; before the outputs have ended, this cancels the run."""
        if not self._ended():
            self._run.cancel()  # leaving early
        self._receive.close()

    async def aclose(self) -> None:
        """Stop reading; before the outputs have ended, this cancels the run."""
        self.close()
        await checkpoint()

    async def __aenter__(self) -> FlowResults:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def stop(self) -> None:
        """Cancel the run now: unfinished items are abandoned (see :meth:`RunningFlow.stop`)."""
        self._run.cancel()

    def stats(self) -> FlowStats:
        """A live snapshot of the run's counters and worker states."""
        return self._run.snapshot()

    @property
    def done(self) -> bool:
        """Whether every job has drained."""
        return self._run.done.is_set()


@final
class _StartRun(_RunBlock, contextlib.AbstractAsyncContextManager[RunningFlow]):
    """``async with flow.start() as running``: leaving normally closes the input and drains."""

    __slots__ = ()

    async def __aenter__(self) -> RunningFlow:
        return RunningFlow._create(await self._enter())

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc_type is not None:
            return await self._leave(exc_type, exc, tb)
        # Left normally: end the input and wait for the drain.
        run = self.run
        try:
            run.close_input()
            if not run.done.is_set():
                await run.done.wait()
        except BaseException as error:
            if await self._leave(type(error), error, error.__traceback__):
                return False  # the run's own cancellation (stopped or failed while draining)
            raise
        return await self._leave(None, None, None)


def start_run(
    specs: Sequence[JobSpec | RouterSpec],
    error_spec: JobSpec | None,
    on_scale: Callable[[ScalingEvent], object] | None = None,
) -> contextlib.AbstractAsyncContextManager[RunningFlow]:
    return _StartRun(specs, error_spec, on_scale=on_scale)


@final
class _StreamRun(_RunBlock, contextlib.AbstractAsyncContextManager[FlowResults]):
    """``async with flow.stream(source) as results``: leaving before the results end cancels."""

    __slots__ = ("results",)

    results: FlowResults

    async def __aenter__(self) -> FlowResults:
        run = await self._enter()
        assert run.results is not None
        receive = run.results
        if run.ledger is not None:
            receive = cast("MemoryObjectReceiveStream[Any]", LedgerResults(receive, run.ledger))
        self.results = FlowResults._create(run, receive)
        return self.results

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc_type is None and not self.results._ended():
            self.run.cancel()  # left before the results ended: stop the run
        return await self._leave(exc_type, exc, tb)


def stream_run(
    specs: Sequence[JobSpec | RouterSpec],
    error_spec: JobSpec | None,
    source: Iterable[Any] | AsyncIterable[Any],
    on_scale: Callable[[ScalingEvent], object] | None = None,
    ledger: tuple[Ledger, Callable[[Any], Any] | None] | None = None,
) -> contextlib.AbstractAsyncContextManager[FlowResults]:
    return _StreamRun(
        specs, error_spec, source=source, results=True, on_scale=on_scale, ledger=ledger
    )
