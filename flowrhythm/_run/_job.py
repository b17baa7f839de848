"""One job of one run: its streams, its counters, what its workers share, and its end.

A job reads its input stream with a pool of worker tasks (:mod:`._pool`) and
writes to the next job's input stream (or nowhere, for the last job of
``run``). The job closes its output once its input has ended and its last
worker has left, which is how end of input travels down the flow in order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, final

import anyio
import attrs
from anyio import BrokenResourceError, WouldBlock
from anyio.lowlevel import checkpoint_if_cancelled
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._adaptive import JobSlots
from .._errors import ErrorItem
from .._stats import Counters, JobRecord, JobStats, job_stats
from .._timing import RateWindow
from ._batch import Batcher
from ._calls import Exhausted, RateLimit
from ._ledger import LedgerRun, unwrap
from ._ordered import Reorder

if TYPE_CHECKING:
    from .._options import JobSpec, RouterSpec
    from .._scaling import ScalingEvent


class RunOfJob(Protocol):
    """What a job, its pool and its workers use of their run.

    The run itself (:class:`flowrhythm._run._run.Run`) is one; naming only this
    keeps the imports pointing one way, from the run down to its jobs.
    """

    clock: Callable[[], float]  #: the event loop's clock, looked up once per run
    timer: Callable[[], float]  #: what times the calls (see call_timer), chosen once per run
    started_at: float  #: the loop's time when the run started
    stopped: bool  #: the run was cancelled: stopped, failed or left early
    ended_at: float | None  #: when every job had drained
    error_job: Job | None
    jobs: list[Job]  #: the jobs of the flow in order, without the error job
    on_scale: Callable[[ScalingEvent], object] | None
    ledger: LedgerRun | None  #: the ledger's part of a run given one

    def job_finished(self) -> None: ...
    def end_input(self) -> None: ...
    def fail(self, error: Exception, cause: BaseException) -> None: ...


@final
@attrs.define(eq=False)
class Route:
    """Where a router sends the items of one label (private)."""

    #: the arm's input stream (``None``: the items are discarded)
    send: MemoryObjectSendStream[Any] | None
    #: an empty arm, whose items are the flow's outputs (counted in ``items_out``)
    through: bool
    #: the items sent
    passed: int = attrs.field(default=0, init=False)


@final
class Job:
    """The running instance of a :class:`JobSpec` (private)."""

    __slots__ = (
        "_scaler_scope",
        "batcher",
        "counters",
        "errors",
        "finished",
        "input_ended",
        "intake",
        "rate",
        "rate_limit",
        "receive",
        "reorder",
        "routes",
        "run",
        "send",
        "slots",
        "spec",
    )

    def __init__(
        self,
        run: RunOfJob,
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
        self.counters = Counters(run.clock, run.timer, run.started_at, spec.capacity.scales)
        self.input_ended = False
        self.finished = False
        self._scaler_scope: anyio.CancelScope | None = None  # made by the scaler
        self.rate = RateWindow(run.started_at)
        options = spec.options
        # One worker keeps the order by itself: such a job runs the plain loop.
        max_workers = spec.capacity.max_workers
        self.reorder = (
            Reorder(2 * max_workers, self.counters, receive)
            if options.ordered and max_workers > 1
            else None
        )
        self.batcher = (
            Batcher(options.batch, self.counters, receive, self.reorder)
            if options.batch is not None
            else None
        )
        # How the workers of an ordered or batched job take their inputs.
        self.intake: Batcher | Reorder | None = (
            self.batcher if self.batcher is not None else self.reorder
        )
        self.rate_limit = (
            RateLimit(options.max_per_second, self.counters)
            if options.max_per_second is not None
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
                with self.counters.blocked_span():
                    await stream.send(value)
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
        if self.run.ledger is not None:
            item = unwrap(item)  # the user's item, out of its ledger carrier
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
