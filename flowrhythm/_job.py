"""One job of one run: its streams, its workers, its counters, and its end.

A job reads its input stream with a pool of worker tasks and writes to the next
job's input stream (or nowhere, for the last job of ``run``). Workers are added
with :meth:`Job.add_worker` and removed with :meth:`Job.retire_worker` while the
run goes; the job closes its output once its input has ended and its last
worker has left, which is how end of input travels down the flow in order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast, final

import anyio
from anyio import BrokenResourceError, EndOfStream, WouldBlock
from anyio.abc import TaskGroup
from anyio.lowlevel import checkpoint_if_cancelled
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._adaptive import JobSlots
from ._batch import Batcher
from ._errors import ErrorItem
from ._options import Exhausted, RateLimit, wrap
from ._ordered import Reorder
from ._processors import ProcessorFactory
from ._scaler import run_scaler
from ._stats import Counters, JobRecord, JobStats, job_stats
from ._timing import RateWindow
from ._worker import NOTHING, Numbered, Worker, work, work_general, work_ordered, work_router

if TYPE_CHECKING:
    from ._flow import JobSpec, RouterSpec
    from ._runtime import Run


@final
class Route:
    """Where a router sends the items of one label (private).

    ``send`` is the arm's input stream (``None``: the outputs are discarded);
    ``passed`` counts the items sent; ``through`` marks an empty arm whose items
    are the flow's outputs (counted in ``items_out``).
    """

    __slots__ = ("passed", "send", "through")

    def __init__(self, send: MemoryObjectSendStream[Any] | None, through: bool) -> None:
        self.send = send
        self.passed = 0
        self.through = through


@final
class Job:
    """The running instance of a :class:`JobSpec` (private)."""

    __slots__ = (
        "_scaler_scope",
        "batcher",
        "counters",
        "doorman",
        "errors",
        "finished",
        "input_ended",
        "limiter",
        "rate",
        "rate_limit",
        "receive",
        "reorder",
        "retiring",
        "routes",
        "run",
        "scales",
        "send",
        "slots",
        "spec",
        "task_group",
        "workers",
    )

    def __init__(
        self,
        run: Run,
        spec: JobSpec | RouterSpec,
        receive: MemoryObjectReceiveStream[Any],
        send: MemoryObjectSendStream[Any] | None,
        errors: MemoryObjectSendStream[ErrorItem] | None,
        routes: dict[Any, Route] | None = None,
    ) -> None:
        self.run = run
        self.spec = spec
        self.receive = receive  # the job's input queue
        self.send = send
        self.errors = errors
        # A router's outputs: label -> where that arm's items go (None: a plain job).
        self.routes = routes
        self.scales = spec.capacity.scales
        self.counters = Counters(run.clock, run.timer, run.started_at, self.scales)
        self.workers: dict[Worker, None] = {}  # a set kept in order: same run, same choices
        self.retiring = 0  # live workers asked to leave
        self.doorman = False
        self.input_ended = False
        self.finished = False
        self.task_group: TaskGroup | None = None
        self._scaler_scope: anyio.CancelScope | None = None  # made by the scaler
        self.rate = RateWindow(run.started_at)
        # Offloaded calls: one limiter per job, its size following the worker count.
        options = spec.options
        # One worker keeps the order by itself: such a job runs the plain loop.
        max_workers = spec.capacity.max_workers
        self.reorder = (
            Reorder(2 * max_workers, self.counters)
            if options.ordered and max_workers > 1
            else None
        )
        self.batcher = Batcher(options.batch, self.counters) if options.batch is not None else None
        self.rate_limit = (
            RateLimit(options.max_per_second, self.counters)
            if options.max_per_second is not None
            else None
        )
        self.limiter = (
            anyio.CapacityLimiter(max(spec.capacity.initial_workers, 1))
            if routes is None and cast("JobSpec", spec).stage.executor is not None
            else None
        )
        self.slots = (
            JobSlots(options.concurrency, self.counters)
            if options.concurrency is not None
            else None
        )

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def scaler_scope(self) -> anyio.CancelScope:
        """The scaler's cancel scope, cancelled when the job finishes (made on first use)."""
        if self._scaler_scope is None:
            self._scaler_scope = anyio.CancelScope()
            if self.finished:
                self._scaler_scope.cancel()
        return self._scaler_scope

    # -- workers ----------------------------------------------------------------

    @property
    def worker_count(self) -> int:
        """Workers that are staying: live ones not asked to leave."""
        return len(self.workers) - self.retiring

    def start(self, task_group: TaskGroup) -> None:
        """Start the job's initial workers (and its scaler) in the run's task group."""
        self.task_group = task_group
        initial = self.spec.capacity.initial_workers
        if initial:
            # Counted from the run's start, the counters' origin: no clock read.
            self.counters.workers = initial
            name = f"flowrhythm {self.spec.name}"
            for _ in range(initial):
                worker = Worker(retirable=self.scales)
                self.workers[worker] = None
                task_group.start_soon(self._worker_task, worker, NOTHING, name=name)
            self._size_limiter()
        else:
            self._start_doorman()
        if self.scales:
            task_group.start_soon(run_scaler, self, name=f"flowrhythm {self.name} scaler")

    def add_worker(self, item: Any = NOTHING) -> None:
        """Start one more worker (counted at once, so stats never lag).

        ``item``, if given, is an input already taken for the new worker.
        """
        assert self.task_group is not None
        worker = Worker(retirable=self.scales)
        self.workers[worker] = None
        self.counters.add_workers(1)
        self._size_limiter()
        self.task_group.start_soon(self._worker_task, worker, item, name=f"flowrhythm {self.name}")

    def grow(self, n: int) -> int:
        """Add up to ``n`` workers, first withdrawing retirements; never past max_workers."""
        added = 0
        for worker in self.workers:
            if added == n:
                break
            if worker.revive():
                self.retiring -= 1
                added += 1
        self._size_limiter()
        room = self.spec.capacity.max_workers - len(self.workers)
        for _ in range(min(n - added, room)):
            self.add_worker()
            added += 1
        return added

    def shrink(self, n: int) -> None:
        """Ask ``n`` workers to leave at their next safe point, idle ones first."""
        staying = [w for w in self.workers if not w.retiring]
        staying.sort(key=lambda w: not w.idle)
        for worker in staying[:n]:
            worker.retire()
            self.retiring += 1
        self._size_limiter()

    def _size_limiter(self) -> None:
        if self.limiter is not None:
            self.limiter.total_tokens = max(self.worker_count, 1)

    def _start_doorman(self) -> None:
        if not self.doorman:
            self.doorman = True
            assert self.task_group is not None
            self.task_group.start_soon(self._doorman, name=f"flowrhythm {self.name} doorman")

    async def _doorman(self) -> None:
        """With no worker, wait for the first input and start a worker carrying it.

        For a batched job the doorman gathers the first batch, under the batch
        gate like a worker, and the new worker carries the batch.

        Without a worker nobody would read the input: the doorman is how a job
        with ``min_workers=0`` wakes up as soon as input arrives, and how end of
        input still reaches downstream when the job has no worker at all. It
        runs only while the job has no worker; the scaler leaves such a job alone.
        """
        batcher = self.batcher
        reorder = self.reorder
        try:
            if batcher is None:
                item = await self.receive.receive()
                # Counted and numbered the instant it leaves the queue: the new
                # worker may take a while to open, and the run may be cancelled.
                self.counters.received += 1
                if reorder is not None:
                    item = Numbered(item, reorder.take())
            else:  # a batched job: the doorman gathers the first batch
                async with batcher.gate:
                    items = [await self.receive.receive()]
                    self.counters.received += 1
                    await batcher.complete(items, self.receive)
                    item = items if reorder is None else Numbered(items, reorder.take())
        except EndOfStream:
            self.input_ended = True
            if not self.workers:
                self.finish()
            return
        finally:
            self.doorman = False
        self.counters.scale_ups += 1
        self.run.scaled(self, 0, 1, "input arrived")
        self.add_worker(item)

    async def _worker_task(self, worker: Worker, item: Any) -> None:
        try:
            if self.routes is not None:
                router = cast("RouterSpec", self.spec)
                await self._work(worker, router.classify, router.is_async, item)
                return
            stage = cast("JobSpec", self.spec).stage
            if stage.executor is None and not isinstance(stage.processor, ProcessorFactory):
                # A plain processor: nothing to open per worker.
                await self._work(worker, stage.processor, stage.is_generator, item)
            else:
                async with stage.open(self.limiter) as (fn, is_gen):
                    await self._work(worker, fn, is_gen, item)
        finally:
            self.workers.pop(worker, None)
            if worker.retiring:
                self.retiring -= 1
            self.counters.add_workers(-1)
            self._size_limiter()
            if not self.workers:
                if self.input_ended:
                    self.finish()
                elif worker.retiring:
                    self._start_doorman()  # scaled down to zero: wait for input

    async def _work(
        self, worker: Worker, fn: Callable[[Any], Any], is_gen: bool, item: Any
    ) -> None:
        """Run the worker's loop with the processor it opened, until it leaves.

        A router's worker runs :func:`work_router` with its ``classify`` as ``fn``
        (and whether it is ``async def`` as ``is_gen``).
        """
        spec = self.spec
        if self.routes is not None:
            loop = work_router
        else:
            stage = cast("JobSpec", spec).stage
            fn = wrap(
                fn,
                is_gen,
                spec.options,
                self.counters,
                limit=self.rate_limit,
                lock=stage.lock,
                interruptible=stage.executor is None,
                slots=self.slots,
            )
            if self.batcher is not None or (self.reorder is not None and is_gen):
                loop = work_general
            elif self.reorder is not None:
                loop = work_ordered
            else:
                loop = work
        try:
            while True:
                scope = worker.scope
                try:
                    if scope is None:  # never retired: the job does not scale
                        await loop(self, worker, fn, is_gen, item)
                    else:
                        with scope:
                            await loop(self, worker, fn, is_gen, item)
                except BrokenResourceError:  # a hand-on found its reader gone
                    await self.downstream_gone()
                    raise
                item, worker.rescued = worker.rescued, NOTHING
                if item is NOTHING:
                    break
                # Retired in the very instant an item arrived for it: the
                # retirement loses, the item is processed here.
                worker.renew()
                self.retiring -= 1
        finally:
            worker.leaving = True

    def finish(self) -> None:
        """Input ended and drained, no worker left: end the job's output."""
        if self.finished:
            return
        self.finished = True
        if self._scaler_scope is not None:  # a scope never made needs no cancel
            self._scaler_scope.cancel()
        if self.send is not None:
            self.send.close()
        if self.routes is not None:
            for route in self.routes.values():
                if route.send is not None:
                    route.send.close()
        if self.errors is not None:
            self.errors.close()
        self.run.job_finished()

    # -- what workers call off the fast path -------------------------------------

    def end_input(self) -> None:
        """A processor returned (or yielded) :class:`LastWorkItem`."""
        self.run.end_input()

    async def forward(self, value: Any) -> None:
        """Hand one output downstream, waiting (blocked) only if the queue is full."""
        if self.send is not None:
            await self._hand_on(self.send, value)

    async def _hand_on(self, stream: MemoryObjectSendStream[Any], value: Any) -> None:
        """Send without waiting if there is room; otherwise wait, counted as blocked."""
        try:
            try:
                stream.send_nowait(value)
            except WouldBlock:
                since = self.counters.enter_blocked()
                try:
                    await stream.send(value)
                finally:
                    self.counters.leave_blocked(since)
        except BrokenResourceError:
            await self.downstream_gone()
            raise

    async def downstream_gone(self) -> None:
        """A hand-on found its stream's reader gone: the consumer closed its results.

        Closing the results cancels the run (leaving early): the cancellation is
        raised here, so that the hand-over error is never taken for the
        processor's failure. Returns only if the run was not cancelled.
        """
        if self.run.stopped:
            await checkpoint_if_cancelled()

    async def fail(self, item: Any, exc: Exception, weight: int = 1) -> None:
        """Route a failed item to the error job, or fail the run if there is none.

        ``weight`` is how many items failed (a batch counts as its items).
        """
        attempts = 1
        if isinstance(exc, Exhausted):  # retried: report the last failure itself
            attempts = exc.attempts
            exc = exc.exception
        errors = self.errors
        if errors is None:
            self.counters.errored += weight
            if (
                isinstance(item, ErrorItem)
                and self is self.run.error_job
                and exc.__cause__ is None
                and exc.__context__ is None
            ):
                exc.__context__ = item.exception  # keep the failure it was handling
            raise exc
        error = ErrorItem(item=item, exception=exc, job=self.name, attempts=attempts)
        await self._hand_on(errors, error)
        self.counters.errored += weight

    # -- observing ----------------------------------------------------------------

    def snapshot(self) -> JobStats:
        ended_at = self.run.ended_at
        return job_stats(*self.record(self.run.clock() if ended_at is None else ended_at))

    def record(self, now: float, drained: bool = False) -> JobRecord:
        """What the job's snapshot at ``now`` is built from (``drained``: its queue is empty)."""
        c = self.counters
        return (
            self.spec.name,
            c,
            now,
            0 if drained else self.receive.statistics().current_buffer_used,
            self.spec.capacity,
            self.rate.rate(now, c.ended),
            self is self.run.error_job,
            self.slots.adaptive.limit if self.slots is not None else None,
        )
