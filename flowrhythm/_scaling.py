"""Scaling decisions: a sample of one job in, a target worker count out.

Everything here is pure and synchronous: a strategy never awaits and reads
time only from the sample, so it can be tested with synthetic samples. The
runtime (:mod:`flowrhythm._scaler`) takes the samples, clamps the decision to
``[min_workers, max_workers]`` and adds or retires workers.

A strategy is any object with ``decide(sample) -> int`` (or ``(int, reason)``).
A capacity names its strategy with a :class:`Strategy` member or a callable
returning a fresh strategy object; every job of every run gets its own, so a
strategy may keep state between ticks.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Protocol, final, runtime_checkable

import attrs

from ._capacity import Capacity, Strategy, UtilizationCapacity, scaling_knobs
from ._validate import check_count, check_number

#: What ``decide`` returns: a worker count, optionally with a reason for the log.
Decision = int | tuple[int, str]


@final
@attrs.frozen(kw_only=True)
class ScalingSample:
    """What a job did during one tick of its scaler.

    Seconds are worker-seconds within the tick: with 4 workers and a tick of
    0.1 s, ``active + idle + blocked`` is about 0.4. The ``call_*`` fields
    describe the calls of the processor that were timed (every call slower
    than 0.1 ms, one in 32 of the faster ones), so that a strategy can reason
    in units of the call duration, whatever it is.

    .. versionadded:: 1.0
    .. versionchanged:: 0.2
       The ``call_*``, ``running*``, ``retried``, ``errored``, ``total_*`` and
       ``downstream_busy`` / ``downstream_*workers`` fields.
    """

    #: the job's name.
    job: str
    #: the event loop's clock at this tick (the only clock a strategy reads).
    time: float
    #: seconds since the previous tick.
    interval: float
    #: workers now (not counting those already asked to leave).
    workers: int
    #: the job's minimum.
    min_workers: int
    #: the job's maximum (its capacity's ``max_workers``).
    max_workers: int
    #: worker-seconds spent running the processor.
    active: float
    #: worker-seconds spent waiting for input.
    idle: float
    #: worker-seconds spent waiting to hand results downstream, for the job's resource manager or
    #: rate limit, or in a retry's back-off: more workers cannot help with these.
    blocked: float
    #: items whose processing ended in the tick (completed, skipped or errored).
    completed: int
    #: items that entered the job's input queue in the tick.
    arrivals: int
    #: items waiting in the input queue now.
    queue_depth: int
    #: the input queue's capacity.
    queue_length: int
    #: items waiting in the next job's queue (``None`` for the last job).
    downstream_depth: int | None = None
    #: the next job's queue capacity (``None`` for the last job).
    downstream_length: int | None = None
    #: whether the job's input has ended.
    input_closed: bool = False
    #: the job's :class:`Capacity` (thresholds, cooldown, dampening).
    capacity: Capacity = attrs.field(factory=UtilizationCapacity)
    #: timed calls that returned in the tick.
    calls: int = 0
    #: their durations, summed.
    call_seconds: float = 0.0
    #: the squares of their durations, summed (for a variance).
    call_squares: float = 0.0
    #: the natural logarithms of their durations, summed (for a geometric mean, which a heavy tail
    #: does not sway).
    call_logs: float = 0.0
    #: the squares of those logarithms, summed.
    call_log_squares: float = 0.0
    #: the median duration of those calls (``None`` without any).
    call_p50: float | None = None
    #: their 90th percentile (``None`` without any).
    call_p90: float | None = None
    #: how many of the job's first 32 timed calls have ended (by the order they started, so the
    #: long ones count as much as the short).
    first_calls: int = 0
    #: the natural logarithms of their durations, summed.
    first_call_logs: float = 0.0
    #: the squares of those logarithms, summed.
    first_call_log_squares: float = 0.0
    #: timed calls still running at the tick.
    running: int = 0
    #: how long those calls have been running, summed (a worker busy for a second with nothing
    #: finished is evidence of a call of a second or more).
    running_age: float = 0.0
    #: retries made in the tick (calls beyond an item's first).
    retried: int = 0
    #: items that failed in the tick.
    errored: int = 0
    #: items whose processing ended since the job started.
    total_completed: int = 0
    #: items the job took from its input since it started.
    total_received: int = 0
    #: the share of the next job's worker-time spent running its processor in the tick (``None``
    #: for the last job).
    downstream_busy: float | None = None
    #: the next job's workers (``None`` for the last job).
    downstream_workers: int | None = None
    #: the next job's ``max_workers`` (``None`` for the last job).
    downstream_max_workers: int | None = None

    @property
    def utilization(self) -> float:
        """Share of the workers' time spent running the processor (blocked is not busy)."""
        total = self.active + self.idle + self.blocked
        return self.active / total if total > 0 else 0.0

    @property
    def blocked_share(self) -> float:
        """Share of the workers' time spent blocked."""
        total = self.active + self.idle + self.blocked
        return self.blocked / total if total > 0 else 0.0

    @property
    def busy(self) -> float:
        """Average number of workers running the processor during the tick."""
        return self.active / self.interval if self.interval > 0 else 0.0

    @property
    def throughput(self) -> float:
        """Items per second that ended during the tick."""
        return self.completed / self.interval if self.interval > 0 else 0.0

    @property
    def mean_call(self) -> float | None:
        """The mean duration of the calls timed in the tick (``None`` without any)."""
        return self.call_seconds / self.calls if self.calls else None

    @property
    def mean_running_age(self) -> float:
        """How long the calls still running have been running, on average."""
        return self.running_age / self.running if self.running else 0.0


@runtime_checkable
class ScalingStrategy(Protocol):
    """The protocol of a scaling strategy.

    ``decide`` is synchronous, never awaits, and reads time only from the
    sample. It returns the number of workers it wants, or ``(count, reason)``;
    the runtime clamps it to ``[min_workers, max_workers]``.

    .. versionadded:: 1.0
    """

    def decide(self, sample: ScalingSample, /) -> Decision:
        """Return the wanted worker count, or ``(count, reason)``."""
        ...


def _knobs(sample: ScalingSample) -> UtilizationCapacity:
    return scaling_knobs(sample.capacity)


@final
class FixedStrategy:
    """Keep the job at its ``initial_workers``.

    .. versionadded:: 1.0
    """

    def decide(self, sample: ScalingSample, /) -> Decision:
        return sample.capacity.initial_workers


@final
class QueueDepthStrategy:
    """Size the pool from the backlog, like KEDA's queue-length scaler.

    Wants one worker per ``items_per_worker`` items waiting or in progress;
    grows at once, shrinks only after the wanted count has stayed lower for the
    capacity's ``cooldown``, to the highest count wanted over that window.

    Args:
        items_per_worker: backlog one worker is expected to handle.

    .. versionadded:: 1.0
    """

    def __init__(self, items_per_worker: float = 10.0) -> None:
        if isinstance(items_per_worker, bool) or not isinstance(items_per_worker, int | float):
            raise TypeError(f"items_per_worker must be a number, got {items_per_worker!r}")
        if not items_per_worker > 0 or math.isinf(items_per_worker):
            raise ValueError(f"items_per_worker must be > 0, got {items_per_worker!r}")
        self.items_per_worker = float(items_per_worker)
        self._window: deque[tuple[float, int]] = deque()

    def decide(self, sample: ScalingSample, /) -> Decision:
        wanted = math.ceil((sample.queue_depth + sample.busy) / self.items_per_worker)
        if wanted >= sample.workers:
            self._window.clear()
            if wanted == sample.workers:
                return wanted
            return wanted, f"backlog {sample.queue_depth}"
        cooldown = _knobs(sample).cooldown
        self._window.append((sample.time, wanted))
        if sample.time - self._window[0][0] < cooldown:
            return sample.workers
        while self._window and sample.time - self._window[0][0] > cooldown:
            self._window.popleft()
        return max(w for _, w in self._window), f"backlog {sample.queue_depth} for {cooldown:g}s"


#: How many standard deviations the guard's confidence bounds span.
CONFIDENCE = 2.0
#: Completed calls the service-time estimate is measured over (at least, when there are).
SERVICE_CALLS = 32
#: Completed calls behind the estimate for a step straight to the target: fewer,
#: and one step at most doubles the workers (plus three).
STRAIGHT_CALLS = 8
#: The first calls of a job: the reference for "calls take longer now".
REFERENCE_CALLS = 32
#: Recent calls compared with the reference.
RECENT_CALLS = 64
#: Calls this many times as long as the reference (with confidence) suggest a hidden limit.
SUSPECT_RATIO = 1.5
#: Ticks of evidence kept.
KEEP_TICKS = 512
#: Ticks over which the event loop's lateness is averaged.
LATE_TICKS = 8


@final
class UtilizationStrategy:
    """The default strategy: grow by Little's law, shrink slowly, find hidden limits.

    It judges a job by evidence measured in completed calls and call durations,
    so it behaves the same, in units of the call duration, for a millisecond
    call and for a five-second one.

    * **Service time** is the mean duration of the last 32 timed
      calls (active worker-time per completed item before any call was
      timed), however many ticks that takes, and at least the mean age of the
      calls still running: a worker busy for a second with nothing finished is
      evidence of a call of a second or more. Time blocked on a full downstream
      queue, a rate limit, the resource manager or a retry's back-off is not
      active.
    * **Grow** while utilization is above ``upper_threshold``, input is waiting,
      less than ``blocked_limit`` of the time is blocked, the next job is
      neither backed up (its queue half full) nor saturated (all its workers
      busy at its ``max_workers``), and retries are not a quarter of the calls.
      The target is the larger of ``demand / target`` and ``backlog /
      drain_time`` workers, with ``target`` two thirds of the way up the band.
      By Little's law, demand is arrival rate * service time (over the last
      four ticks or four service times, whichever is more), or the busy workers
      if more while the input queue is at least half full and not draining, and
      so holds the source back; the backlog drains within ``drain_time`` call
      durations. With fewer than 8 calls behind the estimate (those that
      ended, and those running, each by the share of a call it has run) a
      step is at most ``max(2 * workers, workers + 3)``; with
      that many it goes straight to the target. A next job at its maximum
      bounds a step to what it can take at its upper threshold (from its busy
      share and this job's output rate).
    * **Shrink** only after utilization, smoothed by ``dampening``, has stayed
      below ``lower_threshold`` for the cooldown; then step toward the highest
      recommendation seen over that window (smoothed busy workers / target), at
      most a quarter of the workers per tick, for as long as utilization stays
      below the target.
    * **Hidden limits** (a semaphore in the processor, a service that queues
      calls): more workers then make every call longer and bring nothing. Once
      the worker count has settled (a service time since it changed, and as
      many calls ended as were running before and after the change) and
      64 calls take at least 1.5 times as long as the job's first 32 calls
      did (geometric means, with confidence, and the first calls' duration
      counted with as much more as the event loop now wakes the scaler later
      than it did then: a busy loop makes every call longer, and fewer
      workers would not make it wake sooner), the job probes down to about ``1.25 *`` the concurrency the durations
      suggest. If, with ``min_judged`` calls at the lower count, the throughput
      (busy workers over the mean call duration) lost less than
      ``ineffective_gain`` of what the removed workers should have carried, with
      confidence, the limit is confirmed: the job stays there, capped, and
      probes on down by quarters until a step down costs throughput (still
      unsure after ``4 * min_judged`` calls there, it keeps the higher
      count: every call below the limit costs). A capped
      job tries a step of +25% after ``probe_after`` service times, doubling up
      to ``max_probe_after`` while steps keep failing. A refuted suspicion goes
      straight back and waits ``probe_after`` service times (doubling) before
      the next. No verdict comes while workers are on their first call, and the
      guard never fires while call durations stay as they were (or grow by
      no more than the event loop's lateness). Every probe
      and cap is a scaling event with its reason.

    Args:
        drain_time: call durations within which a backlog should drain.
        blocked_limit: share of blocked worker-time above which the job never grows.
        ineffective_gain: share of the expected gain (or loss) below which a
            change of worker count made no difference.
        min_judged: completed calls a verdict needs at least.
        probe_after: service times a capped job waits before it tries a step up,
            and a refuted suspicion waits before the next.
        max_probe_after: the longest such wait, in service times.

    .. versionadded:: 1.0
    .. versionchanged:: 0.2
       Judged by evidence in completed calls and call durations; ``drain_time``,
       ``probe_after`` and ``max_probe_after`` are in service times, not seconds.
    """

    def __init__(
        self,
        *,
        drain_time: float = 4.0,
        blocked_limit: float = 0.05,
        ineffective_gain: float = 0.5,
        min_judged: int = 32,
        probe_after: float = 50.0,
        max_probe_after: float = 2000.0,
    ) -> None:
        self.drain_time = check_number("drain_time", drain_time, low=0.0, low_open=True)
        self.blocked_limit = check_number("blocked_limit", blocked_limit, low=0.0, high=1.0)
        self.ineffective_gain = check_number(
            "ineffective_gain", ineffective_gain, low=0.0, high=1.0
        )
        check_count("min_judged", min_judged, 1)
        self.min_judged = min_judged
        self.probe_after = check_number("probe_after", probe_after, low=0.0)
        self.max_probe_after = check_number("max_probe_after", max_probe_after, low=0.0)
        if self.probe_after > self.max_probe_after:
            raise ValueError(
                f"probe_after ({probe_after}) must not exceed max_probe_after ({max_probe_after})"
            )
        self._smoothed_busy: float | None = None
        self._smoothed_utilization: float | None = None
        self._window: deque[tuple[float, int]] = deque()  # (time, recommendation)
        self._low_since: float | None = None
        self._shrinking = False
        # Evidence: recent ticks, call durations, the current worker count's record.
        self._ticks: deque[_Tick] = deque(maxlen=KEEP_TICKS)
        # Call durations in logarithms: (calls, sum, sum of squares) of the first
        # calls (the reference), and per tick over the recent ones.
        self._reference = _Logs()
        # The least the event loop has woken the scaler late: the loop's own lateness,
        # which the first calls had too (one tick's is a poor measure of it).
        self._least_late = math.inf
        self._recent: deque[_Logs] = deque()
        self._level = _Level(0, 0.0)
        # The guard.
        self._probe: _Probe | None = None  # a probe down or up, until judged
        self._cap: int | None = None
        self._cap_until = 0.0
        self._failures = 0
        self._suspect_after = 0.0
        self._refuted = 0
        self._descending = False  # a limit was found: probe on down until it is located

    # -- evidence ---------------------------------------------------------------------

    def _observe(self, sample: ScalingSample) -> None:
        kept = _Tick(sample, _knobs(sample).sampling)
        self._ticks.append(kept)
        self._least_late = min(self._least_late, kept.late)
        if not sample.calls:
            return
        tick = _Logs(sample.calls, sample.call_logs, sample.call_log_squares)
        tick.seconds = sample.call_seconds
        if sample.first_calls >= REFERENCE_CALLS and self._reference.n < REFERENCE_CALLS:
            self._reference = _Logs(
                sample.first_calls, sample.first_call_logs, sample.first_call_log_squares
            )
        recent = self._recent
        recent.append(tick)
        while len(recent) > 1 and sum(t.n for t in recent) - recent[0].n >= RECENT_CALLS:
            recent.popleft()

    def _service(self, sample: ScalingSample) -> tuple[float | None, int]:
        """Seconds one call takes, and the calls behind the estimate.

        The mean duration of the last :data:`SERVICE_CALLS` calls timed (or
        active worker-time per completed item before any call was timed), and at
        least the mean age of the calls still running. Behind it: the calls that
        ended, and the calls running, each counted by the share of a call it has run.
        """
        active = 0.0
        ended = 0
        for tick in reversed(self._ticks):
            active += tick.active
            ended += tick.ended
            if ended >= SERVICE_CALLS:
                break
        calls = 0
        seconds = 0.0
        for logs in reversed(self._recent):
            calls += logs.n
            seconds += logs.seconds
            if calls >= SERVICE_CALLS:
                break
        measured = seconds / calls if calls else (active / ended if ended else None)
        age = sample.mean_running_age
        if measured is None:
            return (age if age > 0 else None), 0
        # A call that has run as long as calls take is as good a sample of the
        # duration as one that ended (it tells at least as much): the calls
        # running count by how much of a call they have seen. Calls started
        # when the scaler grew the job end just after one of its later ticks,
        # not on it, so without them a ramp would wait a tick for its evidence.
        seen = min(age / measured, 1.0) if measured > 0 else 1.0
        return max(measured, age), ended + math.floor(sample.running * seen)

    def _late(self) -> float:
        """How late the event loop has woken the scaler: the median over the last ticks.

        Every timer of a busy event loop fires that much late, a call's
        included: with millisecond calls and a loop kept busy by many workers,
        calls take longer for that alone (in virtual time the lateness is zero).
        The median, so that one stall of the machine does not sway it.
        """
        ticks = self._ticks
        late = sorted(ticks[-i].late for i in range(1, min(LATE_TICKS, len(ticks)) + 1))
        return late[len(late) // 2] if late else 0.0

    def _suspicion(self) -> tuple[float, float]:
        """Do recent calls take longer than the first ones did, with confidence?

        Compares geometric means (a heavy tail does not sway them): returns
        ``(bound, scale)``, the ratio of the recent to the first calls' geometric
        mean, less :data:`CONFIDENCE` standard errors, and the plain ratio. The
        event loop's lateness, beyond the least it has ever been, is added to
        the first calls' duration: a loop that wakes every timer
        late (a busy loop, a coarse timer) makes calls longer without any limit
        in the processor, and fewer workers would not make it wake sooner.
        """
        reference = self._reference
        recent = _Logs()
        for tick in self._recent:
            recent.add(tick)
        if reference.n < REFERENCE_CALLS or recent.n < RECENT_CALLS:
            return 0.0, 1.0
        spread = math.sqrt(
            max(reference.squared_deviations() / (reference.n - 1), 0.0)
            + recent.squared_deviations() / (recent.n - 1)
        )
        difference = recent.mean() - reference.mean()
        error = spread * math.sqrt(1 / reference.n + 1 / recent.n)
        late = max(self._late() - self._least_late, 0.0)
        if late > 0:
            first = math.exp(reference.mean())
            difference -= math.log((first + late) / first)
        return math.exp(difference - CONFIDENCE * error), math.exp(difference)

    # -- deciding -----------------------------------------------------------------------

    def decide(self, sample: ScalingSample, /) -> Decision:
        knobs = _knobs(sample)
        workers = sample.workers
        lower, upper = knobs.lower_threshold, knobs.upper_threshold
        target = lower + (upper - lower) * 2 / 3
        utilization = sample.utilization
        busy = sample.busy
        d = knobs.dampening
        if self._smoothed_busy is None or self._smoothed_utilization is None:
            self._smoothed_busy, self._smoothed_utilization = busy, utilization
        else:
            self._smoothed_busy = d * self._smoothed_busy + (1 - d) * busy
            self._smoothed_utilization = d * self._smoothed_utilization + (1 - d) * utilization
        self._observe(sample)
        service, evidence = self._service(sample)
        settle = max(service or 0.0, sample.interval)

        saturated = (
            utilization > upper
            and sample.queue_depth > 0
            and sample.blocked_share < self.blocked_limit
        )
        level = self._level
        if workers != level.workers:
            # Settled once a service time has passed and as many calls have
            # ended as were running before and after, together: the calls in
            # flight at the change, and the calls that queued behind them (in
            # a hidden limit's queue built by the old count), are behind it.
            level = self._level = _Level(workers, sample.time, workers + level.workers)
        else:
            level.seen += sample.completed
        settled = sample.time - level.since >= settle and level.seen >= level.pending
        if settled and saturated:
            level.add(sample)

        # -- the guard: a probe waiting for its verdict ----------------------------------------
        if self._probe is not None:
            verdict = self._judge(sample, service or sample.interval, settled, saturated)
            if verdict is not None:
                return verdict
            if self._probe is not None:
                return workers  # hold while the evidence comes in
        if self._cap is not None and sample.time >= self._cap_until:
            probe = self._probe_up(sample, service or sample.interval, settled)
            if probe is not None:
                return probe
        if (
            (self._cap is None or self._descending)
            and settled
            and saturated
            and sample.time >= self._suspect_after
            and level.calls >= 2 * self.min_judged
        ):
            probe = self._probe_down(sample)
            if probe is not None:
                return probe

        # -- grow -----------------------------------------------------------------------
        downstream_full = (
            sample.downstream_length is not None
            and sample.downstream_depth is not None
            and sample.downstream_length > 0
            and sample.downstream_depth * 2 >= sample.downstream_length
        )
        # The next job at its maximum: its busy share says how much more it can take.
        downstream_busy = (
            sample.downstream_busy
            if sample.downstream_workers is not None
            and sample.downstream_max_workers is not None
            and sample.downstream_workers >= sample.downstream_max_workers
            else None
        )
        downstream_saturated = downstream_busy is not None and downstream_busy > upper
        # The recent past, four service times of it: retries, and the arrival rate.
        retried = ended = arrivals = 0
        seconds = 0.0
        recent_arrivals, recent_seconds = 0, 0.0  # over the last four ticks
        for i, tick in enumerate(reversed(self._ticks)):
            if sample.time - tick.time >= 4 * settle:
                break
            retried += tick.retried
            ended += tick.ended
            arrivals += tick.arrivals
            seconds += tick.interval
            if i < 4:
                recent_arrivals, recent_seconds = arrivals, seconds
        failing = retried > 0 and retried * 4 >= retried + ended
        if saturated and not downstream_full and not downstream_saturated and not failing:
            self._low_since = None
            self._shrinking = False
            self._window.clear()
            if self._cap is not None and workers >= self._cap:
                return workers
            per_call = service if service is not None else sample.interval
            # Arrivals over the recent past, or over the last four ticks if more: a
            # rise in load shows within a few ticks, whatever a call takes.
            rate = max(
                arrivals / seconds if seconds > 0 else 0.0,
                recent_arrivals / recent_seconds if recent_seconds > 0 else 0.0,
            )
            # Arrivals tell the demand, unless the input queue is backed up (at
            # least half full, and not draining): then the source is held back,
            # and the busy workers are the least the demand can be.
            before = self._ticks[-2].depth if len(self._ticks) > 1 else 0
            backed_up = (
                sample.queue_depth * 2 >= sample.queue_length and sample.queue_depth >= before
            )
            demand = max(busy, rate * per_call) if backed_up else rate * per_call
            # Enough for the demand at the target utilization, or enough to drain the
            # backlog within drain_time calls, whichever is more: while a backlog
            # drains, the headroom above the target carries the arrivals.
            wanted = math.ceil(max(demand / target, sample.queue_depth / self.drain_time))
            ceiling = sample.max_workers
            if downstream_busy is not None:
                if downstream_busy > 0 and sample.completed:
                    # What the next job takes at its upper threshold, by Little's law
                    # in workers of this job.
                    room = sample.throughput * upper / downstream_busy
                    ceiling = min(ceiling, max(math.ceil(room * per_call / target), workers))
                else:
                    evidence = 0  # nothing reached it yet: no word on its capacity
            if evidence < STRAIGHT_CALLS:
                ceiling = min(ceiling, max(2 * workers, workers + 3))
            if self._cap is not None:
                ceiling = min(ceiling, self._cap)
            new = min(wanted, ceiling)
            if new > workers:
                return new, (
                    f"utilization {utilization:.0%} > {upper:.0%} with {sample.queue_depth} "
                    f"waiting, {per_call:.3g}s a call"
                )
            return workers

        # -- shrink -----------------------------------------------------------------------
        cooldown = knobs.cooldown
        smoothed_utilization = self._smoothed_utilization
        low = smoothed_utilization < lower
        if workers <= sample.min_workers or not (
            low or (self._shrinking and smoothed_utilization < target)
        ):
            self._low_since = None
            self._shrinking = False
            self._window.clear()
            return workers
        # (rounded, so that an exponentially decaying average reaches zero)
        recommended = max(math.ceil(round(self._smoothed_busy / target, 2)), sample.min_workers)
        if self._low_since is None:
            self._low_since = sample.time
        self._window.append((sample.time, recommended))
        while sample.time - self._window[0][0] > cooldown:
            self._window.popleft()
        if not self._shrinking and sample.time - self._low_since < cooldown:
            return workers
        self._shrinking = True
        floor = max(max(r for _, r in self._window), workers - max(1, workers // 4))
        if floor < workers:
            return floor, (
                f"utilization {smoothed_utilization:.0%} < {lower:.0%} for {cooldown:g}s"
            )
        self._shrinking = False
        return workers

    # -- the guard --------------------------------------------------------------------

    def _probe_down(self, sample: ScalingSample) -> Decision | None:
        """Calls take longer than they did, or a limit was just found: try fewer workers."""
        workers = sample.workers
        level = self._level
        if self._descending:
            to = math.ceil(0.75 * workers)
            why = f"probe: a limit at {workers} workers; trying {to}"
        else:
            ratio, scale = self._suspicion()
            if ratio < SUSPECT_RATIO:
                return None
            concurrency = workers / scale
            # (rounded first: a ratio of 4 may come out of the logarithms as 3.9999999)
            to = min(math.ceil(round(1.25 * concurrency, 6)), math.ceil(0.75 * workers))
            why = (
                f"probe: calls take {scale:.1f}x as long at {workers} workers as they did; "
                f"about {concurrency:.0f} seem to run at once: trying {max(to, 1)}"
            )
        to = max(to, sample.min_workers, 1)
        if to >= workers:
            self._descending = False
            return None
        self._probe = _Probe(workers, to, level, sample.time, down=True)
        return to, why

    def _probe_up(self, sample: ScalingSample, service: float, settled: bool) -> Decision | None:
        """The cap has run out: try a step of +25% from a settled, saturated count."""
        workers = sample.workers
        level = self._level
        if not settled or level.calls < 2 * self.min_judged or not sample.queue_depth:
            return None
        self._cap = None
        self._descending = False
        to = min(workers + max(1, workers // 4), sample.max_workers)
        if to <= workers:
            return None
        self._probe = _Probe(workers, to, level, sample.time, down=False)
        return to, f"probe: capped at {workers} for a while; trying {to}"

    def _judge(
        self, sample: ScalingSample, service: float, settled: bool, saturated: bool
    ) -> Decision | None:
        """The verdict on the probe, once the evidence is in; ``None`` meanwhile.

        Each count's throughput is measured by Little's law, as the busy
        workers over the mean call duration, both over the calls that ended
        once the count had settled: no call cut by the window counts, so the
        only noise is the calls' own spread.
        """
        probe = self._probe
        assert probe is not None
        workers = sample.workers
        if workers != probe.to or (not saturated and sample.queue_depth == 0):
            self._probe = None  # the pool or the load changed: no verdict
            self._descending = False
            if not probe.down:
                self._cap, self._cap_until = probe.frm, sample.time  # try again later
            return None
        level = self._level
        if not settled or level.calls < self.min_judged:
            return None
        before = probe.level
        rate, old_rate = level.rate(), before.rate()
        noise = CONFIDENCE * (level.spread() + before.spread())
        expected = old_rate * probe.to / probe.frm  # if every worker carried its share
        # A plateau: the change of worker count moved the rate by less than
        # ineffective_gain of what it should have, with confidence.
        threshold = old_rate + self.ineffective_gain * (expected - old_rate)
        # Still unsure after many calls: the smaller change is kept (back up
        # after a probe down, back down after a step up of +25%).
        unsure = level.calls >= 8 * self.min_judged
        if probe.down and self._descending:
            # Locating a limit already found: every call below it costs, so doubt
            # ends sooner, at the higher count (a step of a quarter down from just
            # above the limit loses little, and would take long to tell).
            unsure = level.calls >= 4 * self.min_judged
        if probe.down:
            plateau = rate * (1 - noise) >= threshold
            clear = rate * (1 + noise) < threshold or unsure
        else:
            plateau = rate * (1 + noise) < threshold or unsure
            clear = rate * (1 - noise) >= threshold
        if not plateau and not clear:
            return None
        self._probe = None
        if plateau:
            keep = min(probe.frm, probe.to)
            self._cap = keep
            if probe.down:
                # Fewer workers did as well: the limit may be lower still.
                self._descending = True
                self._cap_until = math.inf
                self._suspect_after = sample.time
                return keep, (
                    f"limit: {probe.to} workers gave {rate:.3g}/s where {probe.frm} gave "
                    f"{old_rate:.3g}/s; capped at {keep}"
                )
            delay = min(self.probe_after * 2**self._failures, self.max_probe_after) * service
            self._failures += 1
            self._cap_until = sample.time + delay
            return keep, (
                f"limit: {probe.frm} -> {probe.to} workers raised throughput from "
                f"{old_rate:.3g}/s to {rate:.3g}/s of an expected {expected:.3g}/s; "
                f"capped at {keep} for {delay:.3g}s"
            )
        if probe.down:
            if self._descending:
                # Found it: the limit lies between the two counts; keep the higher.
                self._descending = False
                delay = min(self.probe_after * 2**self._failures, self.max_probe_after) * service
                self._cap, self._cap_until = probe.frm, sample.time + delay
                return probe.frm, (
                    f"limit found: {probe.to} workers gave {rate:.3g}/s of the "
                    f"{old_rate:.3g}/s of {probe.frm}; capped at {probe.frm} for {delay:.3g}s"
                )
            self._refuted += 1
            self._suspect_after = sample.time + service * min(
                self.probe_after * 2**self._refuted, self.max_probe_after
            )
            return probe.frm, (
                f"no limit: {probe.to} workers gave {rate:.3g}/s of the "
                f"{old_rate:.3g}/s of {probe.frm}; back to {probe.frm}"
            )
        self._failures = 0  # the step up paid: grow freely again
        return workers


@final
class _Tick:
    """What the strategy keeps of one sample."""

    __slots__ = ("active", "arrivals", "depth", "ended", "interval", "late", "retried", "time")

    def __init__(self, sample: ScalingSample, sampling: float) -> None:
        self.time = sample.time
        self.late = max(sample.interval - sampling, 0.0)  # how late the loop woke the scaler
        self.depth = sample.queue_depth
        self.interval = sample.interval
        self.active = sample.active
        self.ended = sample.completed
        self.arrivals = sample.arrivals
        self.retried = sample.retried


@final
class _Logs:
    """Sums over call durations in logarithms."""

    __slots__ = ("n", "seconds", "squares", "sum")

    def __init__(self, n: int = 0, logs: float = 0.0, squares: float = 0.0) -> None:
        self.n = n
        self.sum = logs
        self.squares = squares
        self.seconds = 0.0

    def add(self, other: _Logs) -> None:
        self.n += other.n
        self.sum += other.sum
        self.squares += other.squares
        self.seconds += other.seconds

    def mean(self) -> float:
        return self.sum / self.n

    def squared_deviations(self) -> float:
        return max(self.squares - self.sum * self.sum / self.n, 0.0) if self.n else 0.0


@final
class _Level:
    """The record of the current worker count, over the saturated ticks once it has settled."""

    __slots__ = (
        "active",
        "call_seconds",
        "call_squares",
        "calls",
        "pending",
        "seconds",
        "seen",
        "since",
        "workers",
    )

    def __init__(self, workers: int, since: float, pending: int = 0) -> None:
        self.workers = workers
        self.since = since
        self.pending = pending  # calls to end before the count has settled
        self.seen = 0  # calls ended since the change
        self.seconds = 0.0
        self.active = 0.0
        self.calls = 0
        self.call_seconds = 0.0
        self.call_squares = 0.0

    def add(self, sample: ScalingSample) -> None:
        self.seconds += sample.interval
        self.active += sample.active
        self.calls += sample.calls
        self.call_seconds += sample.call_seconds
        self.call_squares += sample.call_squares

    def rate(self) -> float:
        """Calls per second by Little's law: busy workers over the mean call duration."""
        if not self.calls or self.call_seconds <= 0 or self.seconds <= 0:
            return 0.0
        return (self.active / self.seconds) / (self.call_seconds / self.calls)

    def spread(self) -> float:
        """The relative standard error of :meth:`rate` (at least 1%)."""
        if self.calls < 2 or self.call_seconds <= 0:
            return 1.0
        mean = self.call_seconds / self.calls
        variance = max(self.call_squares / self.calls - mean * mean, 0.0)
        return max(math.sqrt(variance / self.calls) / mean, 0.01)


@final
class _Probe:
    """A change of worker count made to test for a limit, until judged."""

    __slots__ = ("down", "frm", "level", "since", "to")

    def __init__(self, frm: int, to: int, level: _Level, since: float, *, down: bool) -> None:
        self.frm = frm
        self.to = to
        self.level = level
        self.since = since
        self.down = down


def make_strategy(spec: Strategy | Callable[[], ScalingStrategy]) -> ScalingStrategy:
    """A fresh strategy object for one job of one run."""
    if spec is Strategy.UTILIZATION:
        return UtilizationStrategy()
    if spec is Strategy.QUEUE_DEPTH:
        return QueueDepthStrategy()
    if spec is Strategy.FIXED:
        return FixedStrategy()
    strategy = spec()
    if not callable(getattr(strategy, "decide", None)):
        raise TypeError(f"strategy factory {spec!r} returned {strategy!r}, which has no decide()")
    return strategy


@final
@attrs.frozen(kw_only=True)
class ScalingEvent:
    """One scaling decision: a change of a job's worker count, or a cap on it.

    A strategy that keeps the count but gives a new reason (the default
    strategy does so when it confirms a hidden limit and caps the job where it
    is) makes an event with ``old == new``; it counts as neither a scale-up nor
    a scale-down. The same reason again, with the count kept, makes none.

    .. versionadded:: 1.0
    """

    #: the job's name.
    job: str
    #: the event loop's clock when it was decided.
    time: float
    #: workers before.
    old: int
    #: workers after.
    new: int
    #: why, in words.
    reason: str
