"""Counters: private and mutable while a run goes, public and frozen in snapshots.

The worker loop updates a :class:`Counters` with plain attribute increments (it
is the hot path); the job's ``snapshot()`` (in :mod:`flowrhythm._run._job`)
reads it into the immutable :class:`JobStats` a user sees, in the way anyio's
memory streams pair mutable state with a ``statistics()`` value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Protocol, final

import attrs

from ._report import bottleneck, report
from ._timing import LOG_TINY, TINY, SummedTimings, Timings

if TYPE_CHECKING:
    from ._capacity import Capacity


@final
class _Span:
    """A stretch of a worker's time in one state: a context manager around a wait.

    The worker loop's own fast path brackets its rare waits by hand; every other
    wait (a lock, a gate, a rate-limit slot, a back-off) uses one of these.
    """

    __slots__ = ("_enter", "_leave", "_since")

    def __init__(self, enter: Callable[[], float], leave: Callable[[float], None]) -> None:
        self._enter = enter
        self._leave = leave

    def __enter__(self) -> None:
        self._since = self._enter()

    def __exit__(self, *exc_info: object) -> None:
        self._leave(self._since)


@final
class Counters:
    """The live state of one job in one run (private).

    Worker states are integrated over time with one clock read per state
    change, and only where a worker really waits (the fast path reads no
    clock). For ``n`` workers in a state, the seconds spent in it up to time
    ``t`` are ``<state>_seconds + n * t - <state>_since``: ``<state>_since``
    sums the start times of the waits still going on.
    """

    __slots__ = (
        "backing_off",
        "blocked",
        "blocked_seconds",
        "blocked_since",
        "clock",
        "completed",
        "errored",
        "first",
        "idle",
        "idle_seconds",
        "idle_since",
        "latency",
        "outputs_adjust",
        "overloaded",
        "received",
        "retried",
        "running",
        "running_since",
        "scale_downs",
        "scale_ups",
        "skipped",
        "timed_calls",
        "timer",
        "worker_seconds",
        "workers",
        "workers_since",
    )

    def __init__(
        self, clock: Callable[[], float], timer: Callable[[], float], now: float, scales: bool
    ) -> None:
        # clock: the event loop's; timer: what times calls (see call_timer);
        # now: the loop's time when the run started; scales: whether the job
        # has a scaler, which reads the sums of the call times.
        self.clock = clock
        self.timer = timer  # times calls: the loop's clock, or one in step with it
        self.workers = 0  # live worker tasks
        self.idle = 0  # workers waiting for input
        self.blocked = 0  # workers waiting to hand on a result, or for the resource manager
        self.received = 0
        self.completed = 0
        self.skipped = 0
        self.errored = 0
        self.retried = 0  # retries made (calls beyond the first)
        self.scale_ups = 0
        self.scale_downs = 0
        # Outputs handed downstream = completed + outputs_adjust. A plain call
        # has one output per completed item, so the hot path pays nothing; a
        # generator adds (yields - 1) per item, a LastWorkItem result adds -1.
        self.outputs_adjust = 0
        self.worker_seconds = 0.0
        self.workers_since = now
        self.idle_seconds = 0.0
        self.idle_since = 0.0
        self.blocked_seconds = 0.0
        self.blocked_since = 0.0
        # Processing times of sampled items (summed only for the scaler).
        self.latency: Timings = SummedTimings() if scales else Timings()
        # Timed calls still running, and the sum of their start times (by ``timer``):
        # their ages add up to ``running * timer() - running_since``.
        self.running = 0
        self.running_since = 0.0
        self.timed_calls = 0  # timed calls started
        # The first FIRST_CALLS timed calls that ended: count, sum and sum of squares
        # of the logarithms of their durations.
        self.first = [0, 0.0, 0.0]
        self.overloaded = 0  # attempts that raised Overloaded
        self.backing_off = 0  # workers waiting out a retry's back-off

    @property
    def outputs(self) -> int:
        return self.completed + self.outputs_adjust

    @property
    def ended(self) -> int:
        """Items whose processing ended, one way or another."""
        return self.completed + self.skipped + self.errored

    # -- state changes (off the fast path) ------------------------------------------

    def add_workers(self, n: int) -> None:
        now = self.clock()
        self.worker_seconds += self.workers * (now - self.workers_since)
        self.workers_since = now
        self.workers += n

    def enter_idle(self) -> float:
        now = self.clock()
        self.idle += 1
        self.idle_since += now
        return now

    def leave_idle(self, since: float) -> None:
        now = self.clock()
        self.idle -= 1
        self.idle_since -= since
        self.idle_seconds += now - since

    def enter_blocked(self) -> float:
        now = self.clock()
        self.blocked += 1
        self.blocked_since += now
        return now

    def leave_blocked(self, since: float) -> None:
        now = self.clock()
        self.blocked -= 1
        self.blocked_since -= since
        self.blocked_seconds += now - since

    def idle_span(self) -> _Span:
        """``with counters.idle_span():`` counts the block as idle time (off the hot path)."""
        return _Span(self.enter_idle, self.leave_idle)

    def blocked_span(self) -> _Span:
        """``with counters.blocked_span():`` counts the block as blocked time (off the hot path)."""
        return _Span(self.enter_blocked, self.leave_blocked)

    def first_call(self, seconds: float) -> None:
        """One of the job's first timed calls ended after ``seconds``."""
        log = math.log(seconds) if seconds > TINY else LOG_TINY
        first = self.first
        first[0] += 1
        first[1] += log
        first[2] += log * log

    def running_age(self, now: float) -> float:
        """The summed ages of the timed calls still running, at ``now`` (by ``timer``)."""
        return max(self.running * now - self.running_since, 0.0) if self.running else 0.0

    def seconds(self, now: float) -> tuple[float, float, float]:
        """Cumulative worker-seconds ``(active, idle, blocked)`` up to ``now``."""
        total = self.worker_seconds + self.workers * (now - self.workers_since)
        idle = self.idle_seconds + self.idle * now - self.idle_since
        blocked = self.blocked_seconds + self.blocked * now - self.blocked_since
        return max(total - idle - blocked, 0.0), max(idle, 0.0), max(blocked, 0.0)


@final
@attrs.frozen(kw_only=True)
class JobStats:
    """A snapshot of one job.

    Once a run has ended normally, ``received == completed + skipped + errored``;
    after a cancelled run, the difference is the number of abandoned items.

    .. versionadded:: 1.0
    """

    #: the job's name.
    name: str
    #: live workers.
    workers: int
    #: workers waiting for input.
    idle: int
    #: workers running the processor (``workers - idle - blocked``).
    active: int
    #: workers waiting to hand a result (or an error) downstream, or waiting for the job's
    #: resource manager: more workers cannot help them.
    blocked: int
    #: items waiting in the job's input queue.
    queue_depth: int
    #: the capacity of the job's input queue.
    queue_length: int
    #: the job's configured minimum.
    min_workers: int
    #: the job's configured maximum.
    max_workers: int
    #: items taken from the input queue.
    received: int
    #: items whose processing ended normally (their output, if any, was handed downstream).
    completed: int
    #: items dropped by :class:`StopProcessing`.
    skipped: int
    #: items that failed (handed to the error job, or failing the run).
    errored: int
    #: retries made by ``retry=`` (calls beyond each item's first).
    retried: int
    #: scaling decisions that added workers.
    scale_ups: int
    #: scaling decisions that removed workers.
    scale_downs: int
    #: worker-seconds spent running the processor so far.
    active_seconds: float
    #: worker-seconds spent waiting for input so far.
    idle_seconds: float
    #: worker-seconds spent blocked so far.
    blocked_seconds: float
    #: items per second that ended over the last two seconds or so.
    throughput: float = 0.0
    #: median processing time of an item, in seconds, over the last 1,024 timed items (every item
    #: slower than 100 µs, one in 32 of faster ones); ``None`` before the first.
    p50: float | None = None
    #: the 95th percentile of the processing time, likewise.
    p95: float | None = None
    #: the 99th percentile of the processing time, likewise.
    p99: float | None = None
    #: whether this is the flow's error job.
    error_job: bool = False
    #: the current limit of the job's ``concurrency=`` (an :class:`Adaptive`), or ``None`` without
    #: one.
    concurrency_limit: int | None = None
    #: attempts that raised :class:`Overloaded` while holding a slot of the job's ``concurrency=``
    #: limit (0 without one).
    overloaded: int = 0

    @property
    def utilization(self) -> float:
        """Share of worker-time spent running the processor so far."""
        total = self.active_seconds + self.idle_seconds + self.blocked_seconds
        return self.active_seconds / total if total > 0 else 0.0

    @property
    def in_flight(self) -> int:
        """Items received but not yet ended (abandoned, if the run was cancelled)."""
        return self.received - self.completed - self.skipped - self.errored


#: What a job's snapshot is built from (see :func:`job_stats`).
JobRecord = tuple[str, Counters, float, int, "Capacity", float, bool, "int | None"]


def job_stats(
    name: str,
    c: Counters,
    now: float,
    queue_depth: int,
    capacity: Capacity,
    throughput: float,
    error_job: bool,
    concurrency_limit: int | None,
) -> JobStats:
    """The :class:`JobStats` of the job counted by ``c``, at ``now`` (the loop's time)."""
    workers = c.workers
    idle = c.idle
    blocked = c.blocked
    active_seconds, idle_seconds, blocked_seconds = c.seconds(now)
    p50, p95, p99 = c.latency.percentiles(50, 95, 99)
    return JobStats(
        name=name,
        workers=workers,
        idle=idle,
        active=max(workers - idle - blocked, 0),
        blocked=blocked,
        queue_depth=queue_depth,
        queue_length=capacity.queue_length,
        min_workers=capacity.min_workers,
        max_workers=capacity.max_workers,
        received=c.received,
        completed=c.completed,
        skipped=c.skipped,
        errored=c.errored,
        retried=c.retried,
        scale_ups=c.scale_ups,
        scale_downs=c.scale_downs,
        active_seconds=active_seconds,
        idle_seconds=idle_seconds,
        blocked_seconds=blocked_seconds,
        throughput=throughput,
        p50=p50,
        p95=p95,
        p99=p99,
        error_job=error_job,
        concurrency_limit=concurrency_limit,
        overloaded=c.overloaded,
    )


@final
class FinalJobs(Mapping[str, JobStats]):
    """The jobs of a run that has ended, each :class:`JobStats` built when first read (private).

    Once a run has ended its counters never change again, so a job's snapshot
    built later is the one built at the end; what can still change elsewhere
    (the queue, the rate window, a shared :class:`Adaptive`) is read at the end,
    in the records. ``run()`` and ``join()`` return their stats this way: a
    caller that reads one job, or none, builds that much. A job's record is
    dropped once its snapshot is built; copies and pickles are plain dicts.
    """

    __slots__ = ("_built", "_names", "_pending")

    def __init__(self, pending: dict[str, JobRecord]) -> None:
        self._pending = pending
        self._names = tuple(pending)
        self._built: dict[str, JobStats] = {}

    def __getitem__(self, name: str) -> JobStats:
        try:
            return self._built[name]
        except KeyError:
            pass
        record = self._pending.get(name)
        if record is None:
            return self._built[name]  # built meanwhile (another thread), or no such job
        # setdefault, then pop: two threads reading the same job both get one snapshot.
        stats = self._built.setdefault(name, job_stats(*record))
        self._pending.pop(name, None)
        return stats

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __repr__(self) -> str:
        return repr(dict(self.items()))

    def __reduce__(self) -> tuple[type[dict[str, JobStats]], tuple[dict[str, JobStats]]]:
        return dict, (dict(self.items()),)


@final
@attrs.frozen(kw_only=True)
class FlowStats:
    """A snapshot of a whole run.

    .. versionadded:: 1.0
    """

    #: job name to :class:`JobStats`, in flow order, the error job last. A read-only mapping; in
    #: the stats of a run that has ended (what ``run()`` and ``join()`` return) each job's
    #: :class:`JobStats` is built when first read, from counters that no longer change. It
    #: compares equal to the dict of the same entries, and copies and pickles as one.
    jobs: Mapping[str, JobStats]
    #: items that entered the first job.
    items_in: int
    #: outputs the last job handed on (to ``stream``'s results, or discarded by ``run`` /
    #: ``start``).
    items_out: int
    #: seconds since the run started (until it ended, once it has).
    elapsed: float
    #: whether every job has drained.
    done: bool
    #: source items skipped because a ledger had them recorded as finished by an earlier run (not
    #: counted in ``items_in``).
    resumed: int = 0

    def bottleneck(self, since: FlowStats | None = None) -> str:
        """Which job limits the flow, and why, in one line a person can read.

        For example ``"parse: workers 100% active at max_workers=8, upstream
        blocked 71% of the time"``. It looks at the share of worker-time each
        job spent active, idle and blocked — since the run started, or since
        the earlier snapshot ``since`` — and names the busiest job, as long as
        its workers are busy more than half of the time (a job with half its
        pool idle does not limit the flow); otherwise the source (the jobs wait
        for input), or the consumer of the results (the last job is blocked
        handing them on). Once the run is done, the worker figure is the
        run's average.

        .. versionadded:: 1.0
        """
        return bottleneck(self, since)

    def report(self, width: int | None = None) -> str:
        """All jobs as a plain-text table of run averages, with totals and the bottleneck.

        Per job: the average worker count and its range, the shares of worker
        time spent active, idle and blocked, the counters, items per second
        over the whole run, and the median and 99th percentile processing time.

        Args:
            width: the widest line allowed; by default the terminal's width (100
                columns without a terminal). The least useful columns are left
                out of a narrow table.

        .. versionadded:: 1.0
        """
        return report(self, width)


class StatsSource(Protocol):
    """Anything with ``stats() -> FlowStats``: what :func:`monitor`, :func:`record` and the
    Prometheus collector read.

    A :class:`RunningFlow` (from :meth:`Flow.start`), or the :class:`FlowResults`
    of :meth:`Flow.stream`.

    .. versionadded:: 1.0
    """

    def stats(self) -> FlowStats: ...
