"""One job of one run: its streams, its workers, its counters, and its end.

A job reads its input stream with a pool of worker tasks and writes to the next
job's input stream (or nowhere, for the last job of ``run``). Workers are added
with :meth:`Job.add_worker` and removed with :meth:`Job.retire_worker` while the
run goes; the job closes its output once its input has ended and its last
worker has left, which is how end of input travels down the flow in order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, final

from anyio import EndOfStream, WouldBlock
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._errors import ErrorItem
from ._stats import Counters, JobStats
from ._worker import NOTHING, Worker, work

if TYPE_CHECKING:
    from ._flow import JobSpec
    from ._runtime import Run


@final
class Job:
    """The running instance of a :class:`JobSpec` (private)."""

    __slots__ = (
        "counters",
        "errors",
        "finished",
        "input_ended",
        "receive",
        "run",
        "scales",
        "send",
        "spec",
        "task_group",
        "workers",
    )

    def __init__(
        self,
        run: Run,
        spec: JobSpec,
        receive: MemoryObjectReceiveStream[Any],
        send: MemoryObjectSendStream[Any] | None,
        errors: MemoryObjectSendStream[ErrorItem] | None,
    ) -> None:
        self.run = run
        self.spec = spec
        self.receive = receive
        self.send = send
        self.errors = errors
        self.counters = Counters()
        self.scales = spec.capacity.scales
        self.workers: set[Worker] = set()
        self.input_ended = False
        self.finished = False
        self.task_group: TaskGroup | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    # -- workers ----------------------------------------------------------------

    def start(self, task_group: TaskGroup) -> None:
        """Start the job's initial workers in the run's task group."""
        self.task_group = task_group
        initial = self.spec.capacity.initial_workers
        for _ in range(initial):
            self.add_worker()
        if not initial:
            task_group.start_soon(self._doorman, name=f"flowrhythm {self.name} doorman")

    def add_worker(self, item: Any = NOTHING) -> None:
        """Start one more worker (counted at once, so stats never lag).

        ``item``, if given, is an input already taken for the new worker.
        """
        assert self.task_group is not None
        worker = Worker()
        self.workers.add(worker)
        self.counters.workers += 1
        self.task_group.start_soon(self._worker_task, worker, item, name=f"flowrhythm {self.name}")

    async def _doorman(self) -> None:
        """With no worker, wait for the first input and start a worker carrying it.

        Without a worker nobody would read the input: the doorman is how a job
        with ``min_workers=0`` wakes up, and how end of input still reaches
        downstream when the job has no worker at all.
        """
        try:
            item = await self.receive.receive()
        except EndOfStream:
            self.input_ended = True
            if not self.workers:
                self.finish()
            return
        self.add_worker(item)

    def retire_worker(self) -> bool:
        """Ask one worker to leave at its next safe point; idle workers first."""
        candidates = [w for w in self.workers if not w.retiring]
        if not candidates:
            return False
        idle = [w for w in candidates if w.idle_scope is not None]
        (idle or candidates)[0].retire()
        return True

    async def _worker_task(self, worker: Worker, item: Any) -> None:
        try:
            async with self.spec.stage.open() as (fn, is_gen):
                await work(self, worker, fn, is_gen, item)
        finally:
            self.workers.discard(worker)
            self.counters.workers -= 1
            if self.input_ended and not self.workers:
                self.finish()

    def finish(self) -> None:
        """Input ended and drained, no worker left: end the job's output."""
        if self.finished:
            return
        self.finished = True
        if self.send is not None:
            self.send.close()
        if self.errors is not None:
            self.errors.close()
        self.run.job_finished()

    # -- what workers call off the fast path -------------------------------------

    def end_input(self) -> None:
        """A processor returned (or yielded) :class:`LastWorkItem`."""
        self.run.end_input()

    async def forward(self, value: Any) -> None:
        """Hand one output downstream, waiting (blocked) only if the queue is full."""
        send = self.send
        if send is None:
            return
        try:
            send.send_nowait(value)
        except WouldBlock:
            self.counters.blocked += 1
            try:
                await send.send(value)
            finally:
                self.counters.blocked -= 1

    async def fail(self, item: Any, exc: Exception) -> None:
        """Route a failed item to the error job, or fail the run if there is none."""
        errors = self.errors
        if errors is None:
            self.counters.errored += 1
            raise exc
        error = ErrorItem(item=item, exception=exc, job=self.name)
        try:
            errors.send_nowait(error)
        except WouldBlock:
            self.counters.blocked += 1
            try:
                await errors.send(error)
            finally:
                self.counters.blocked -= 1
        self.counters.errored += 1

    # -- observing ----------------------------------------------------------------

    def snapshot(self) -> JobStats:
        c = self.counters
        capacity = self.spec.capacity
        workers = c.workers
        return JobStats(
            name=self.name,
            workers=workers,
            idle=c.idle,
            active=max(workers - c.idle - c.blocked, 0),
            blocked=c.blocked,
            queue_depth=self.receive.statistics().current_buffer_used,
            queue_length=capacity.queue_length,
            min_workers=capacity.min_workers,
            max_workers=capacity.max_workers,
            received=c.received,
            completed=c.completed,
            skipped=c.skipped,
            errored=c.errored,
            scale_ups=c.scale_ups,
            scale_downs=c.scale_downs,
        )
