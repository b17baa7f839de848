"""The workers of one job in one run: started, counted, retired and resized in one place.

A :class:`Pool` is the only thing that changes a job's worker count. Each way
has one method: :meth:`Pool.add` starts a worker, :meth:`Pool.shrink` asks
workers to leave at their next safe point (see :class:`Worker`),
:meth:`Pool.grow` withdraws such requests first and then starts workers, and a
worker task that ends leaves through its ``finally``. Every change of size the
scaler or the doorman decides is reported once, by :meth:`Pool.resized`: it
counts the scale-up or scale-down, logs it, and hands the
:class:`~flowrhythm.ScalingEvent` to the run's ``on_scale``.

With no worker, nobody would read the job's input: the pool's *doorman* waits
for the first input and starts a worker carrying it. That is how a job with
``min_workers=0`` wakes up, and how end of input still travels downstream
through a job that has no worker at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast, final

import anyio
from anyio import BrokenResourceError, EndOfStream
from anyio.abc import TaskGroup

from .._processors import ProcessorFactory
from .._scaling import ScalingEvent
from ._calls import wrap
from ._loop import work, work_general, work_ordered, work_router
from ._worker import ASKED, LEAVING, NOTHING, Worker

if TYPE_CHECKING:
    from .._options import JobSpec, RouterSpec
    from ._job import Job

logger = logging.getLogger("flowrhythm")


@final
class Pool:
    """The worker tasks of one job in one run (private)."""

    __slots__ = ("doorman", "job", "limiter", "retiring", "scales", "task_group", "workers")

    def __init__(self, job: Job, task_group: TaskGroup) -> None:
        self.job = job
        self.task_group = task_group
        self.scales = job.spec.capacity.scales
        self.workers: dict[Worker, None] = {}  # a set kept in order: same run, same choices
        self.retiring = 0  # live workers asked to leave (ASKED or LEAVING)
        self.doorman = False
        # Offloaded calls: one limiter per job, its size following the worker count.
        self.limiter = (
            anyio.CapacityLimiter(max(job.spec.capacity.initial_workers, 1))
            if job.routes is None and cast("JobSpec", job.spec).stage.executor is not None
            else None
        )

    @property
    def size(self) -> int:
        """Workers that are staying: live ones not asked to leave."""
        return len(self.workers) - self.retiring

    def start(self) -> None:
        """Start the job's initial workers, or its doorman if it starts with none."""
        job = self.job
        initial = job.spec.capacity.initial_workers
        if initial:
            # Counted from the run's start, the counters' origin: no clock read.
            job.counters.workers = initial
            name = f"flowrhythm {job.name}"
            for _ in range(initial):
                worker = Worker(retirable=self.scales)
                self.workers[worker] = None
                self.task_group.start_soon(self._worker_task, worker, NOTHING, name=name)
            self._size_limiter()
        else:
            self._start_doorman()

    # -- changing the size: one method each way ------------------------------------

    def add(self, item: Any = NOTHING) -> None:
        """Start one more worker (counted at once, so stats never lag).

        ``item``, if given, is an input already taken for the new worker.
        """
        worker = Worker(retirable=self.scales)
        self.workers[worker] = None
        self.job.counters.add_workers(1)
        self._size_limiter()
        self.task_group.start_soon(
            self._worker_task, worker, item, name=f"flowrhythm {self.job.name}"
        )

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
        room = self.job.spec.capacity.max_workers - len(self.workers)
        for _ in range(min(n - added, room)):
            self.add()
            added += 1
        return added

    def shrink(self, n: int) -> None:
        """Ask ``n`` workers to leave at their next safe point, idle ones first."""
        staying = [w for w in self.workers if not w.retirement]
        staying.sort(key=lambda w: not w.idle)
        for worker in staying[:n]:
            worker.retire()
            self.retiring += 1
        self._size_limiter()

    def resize(self, target: int, reason: str) -> None:
        """Grow or shrink to ``target`` workers, and report the change."""
        old = self.size
        if target > old:
            self.grow(target - old)
        elif target < old:
            self.shrink(old - target)
        if self.size != old:
            self.resized(old, self.size, reason)

    def resized(self, old: int, new: int, reason: str) -> None:
        """Report one scaling decision: count it, log it, and tell the user's ``on_scale``.

        ``old == new`` is a decision that keeps the count with a new reason (a
        cap, or a verdict): it is reported but counts as neither way.
        """
        job = self.job
        counters = job.counters
        if new > old:
            counters.scale_ups += 1
        elif new < old:
            counters.scale_downs += 1
        run = job.run
        event = ScalingEvent(job=job.name, time=run.clock(), old=old, new=new, reason=reason)
        logger.debug("job %s: workers %d -> %d (%s)", job.name, old, new, reason or "strategy")
        if run.on_scale is not None:
            run.on_scale(event)

    def _size_limiter(self) -> None:
        if self.limiter is not None:
            self.limiter.total_tokens = max(self.size, 1)

    # -- the doorman --------------------------------------------------------------

    def _start_doorman(self) -> None:
        if not self.doorman:
            self.doorman = True
            self.task_group.start_soon(self._doorman, name=f"flowrhythm {self.job.name} doorman")

    async def _doorman(self) -> None:
        """With no worker, wait for the first input and start a worker carrying it.

        For a batched job the doorman gathers the first batch, under the batch
        gate like a worker, and the new worker carries the batch. It runs only
        while the job has no worker; the scaler leaves such a job alone.
        """
        job = self.job
        intake = job.intake
        try:
            if intake is None:
                item = await job.receive.receive()
                # Counted the instant it leaves the queue: the new worker may
                # take a while to open, and the run may be cancelled.
                job.counters.received += 1
            else:  # numbered, or gathered into the first batch, by the intake
                item = await intake.first()
        except EndOfStream:
            job.input_ended = True
            if not self.workers:
                job.finish()
            return
        finally:
            self.doorman = False
        self.resized(0, 1, "input arrived")
        self.add(item)

    # -- one worker task -------------------------------------------------------------

    async def _worker_task(self, worker: Worker, item: Any) -> None:
        job = self.job
        try:
            if job.routes is not None:
                router = cast("RouterSpec", job.spec)
                await self._work(worker, router.classify, router.is_async, item)
                return
            stage = cast("JobSpec", job.spec).stage
            if stage.executor is None and not isinstance(stage.processor, ProcessorFactory):
                # A plain processor: nothing to open per worker.
                await self._work(worker, stage.processor, stage.is_generator, item)
            else:
                async with stage.open(self.limiter) as (fn, is_gen):
                    await self._work(worker, fn, is_gen, item)
        finally:
            self.workers.pop(worker, None)
            retired = worker.retirement in (ASKED, LEAVING)  # ASKED: it never opened
            if retired:
                self.retiring -= 1
            job.counters.add_workers(-1)
            self._size_limiter()
            if not self.workers:
                if job.input_ended:
                    job.finish()
                elif retired:
                    self._start_doorman()  # scaled down to zero: wait for input

    async def _work(
        self, worker: Worker, fn: Callable[[Any], Any], is_gen: bool, item: Any
    ) -> None:
        """Run the worker's loop with the processor it opened, until it leaves.

        A router's worker runs :func:`work_router` with its ``classify`` as ``fn``
        (and whether it is ``async def`` as ``is_gen``).
        """
        job = self.job
        if job.routes is not None:
            loop = work_router
        else:
            spec = cast("JobSpec", job.spec)
            stage = spec.stage
            fn = wrap(
                fn,
                is_gen,
                spec.options,
                job.counters,
                limit=job.rate_limit,
                lock=stage.lock,
                interruptible=stage.executor is None,
                slots=job.slots,
            )
            if job.batcher is not None or (job.reorder is not None and is_gen):
                loop = work_general
            elif job.reorder is not None:
                loop = work_ordered
            else:
                loop = work
        if job.run.ledger is not None and job is not job.run.error_job:
            fn, is_gen = job.run.ledger.wrap(job, fn, is_gen)
        try:
            while True:
                scope = worker.scope
                try:
                    if scope is None:  # never retired: the job does not scale
                        await loop(job, worker, fn, is_gen, item)
                    else:
                        with scope:
                            await loop(job, worker, fn, is_gen, item)
                except BrokenResourceError:  # a hand-on found its reader gone
                    await job.downstream_gone()
                    raise
                item, worker.rescued = worker.rescued, NOTHING
                if item is NOTHING:
                    break
                # Retired in the very instant an item arrived for it: the
                # retirement loses, the item is processed here.
                worker.renew()
                self.retiring -= 1
        finally:
            worker.stop()
