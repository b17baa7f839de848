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
    0.1 s, ``active + idle + blocked`` is about 0.4.

    Attributes:
        job: the job's name.
        time: the event loop's clock at this tick (the only clock a strategy reads).
        interval: seconds since the previous tick.
        workers: workers now (not counting those already asked to leave).
        min_workers: the job's minimum.
        max_workers: the job's maximum (or a lower cap the runtime applies).
        active: worker-seconds spent running the processor.
        idle: worker-seconds spent waiting for input.
        blocked: worker-seconds spent waiting to hand results downstream or for
            the job's resource manager: more workers cannot help with these.
        completed: items whose processing ended in the tick (completed,
            skipped or errored).
        arrivals: items that entered the job's input queue in the tick.
        queue_depth: items waiting in the input queue now.
        queue_length: the input queue's capacity.
        downstream_depth: items waiting in the next job's queue (``None`` for
            the last job).
        downstream_length: the next job's queue capacity (``None`` for the last job).
        input_closed: whether the job's input has ended.
        capacity: the job's :class:`Capacity` (thresholds, cooldown, dampening).

    .. versionadded:: 0.1
    """

    job: str
    time: float
    interval: float
    workers: int
    min_workers: int
    max_workers: int
    active: float
    idle: float
    blocked: float
    completed: int
    arrivals: int
    queue_depth: int
    queue_length: int
    downstream_depth: int | None = None
    downstream_length: int | None = None
    input_closed: bool = False
    capacity: Capacity = attrs.field(factory=UtilizationCapacity)

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


@runtime_checkable
class ScalingStrategy(Protocol):
    """The protocol of a scaling strategy.

    ``decide`` is synchronous, never awaits, and reads time only from the
    sample. It returns the number of workers it wants, or ``(count, reason)``;
    the runtime clamps it to ``[min_workers, max_workers]``.

    .. versionadded:: 0.1
    """

    def decide(self, sample: ScalingSample, /) -> Decision:
        """Return the wanted worker count, or ``(count, reason)``."""
        ...


def _knobs(sample: ScalingSample) -> UtilizationCapacity:
    return scaling_knobs(sample.capacity)


@final
class FixedStrategy:
    """Keep the job at its ``initial_workers``.

    .. versionadded:: 0.1
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

    .. versionadded:: 0.1
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
            return wanted, f"backlog {sample.queue_depth}"
        cooldown = _knobs(sample).cooldown
        self._window.append((sample.time, wanted))
        if sample.time - self._window[0][0] < cooldown:
            return sample.workers
        while self._window and sample.time - self._window[0][0] > cooldown:
            self._window.popleft()
        return max(w for _, w in self._window), f"backlog {sample.queue_depth} for {cooldown:g}s"


@final
class UtilizationStrategy:
    """The default strategy: grow fast by Little's law, shrink slowly, know when to stop.

    * **Utilization** is the share of worker-time spent running the processor.
      Time blocked on a full downstream queue (or on the resource manager, or a
      rate limit) is not busy; while it is a noticeable share (``blocked_limit``)
      or the downstream queue is at least half full, the job never grows: the
      bottleneck is elsewhere, and more workers cannot help.
    * **Grow** when utilization is above ``upper_threshold`` and input is
      waiting, to ``demand / target + backlog * service_time / drain_time``
      workers (Little's law), where demand is the larger of the busy workers and
      arrival rate * service time, and ``target`` lies two thirds of the way up
      the band ``[lower_threshold, upper_threshold]``. Each step is at most
      ``max(2 * workers, workers + 4)``, so 1 -> 64 takes a handful of ticks.
    * **Shrink** only after utilization, smoothed by ``dampening``, has stayed
      below ``lower_threshold`` for the ``cooldown``; then step toward the
      highest recommendation seen over that window (smoothed busy workers /
      target), at most a quarter of the workers per tick, for as long as
      utilization stays below the target. Every step lands inside the band.
    * **Ineffective scaling**: after a step up the job holds until the new
      workers have had time to finish items (at least ``min_judged`` items and
      twice the service time). If throughput rose by less than
      ``ineffective_gain`` (10%) of what they should have brought — a hidden
      limit such as a semaphore or a rate-limited API — the job goes back to the
      previous size and stays capped there; if it rose by less than half, the
      job keeps the workers but grows no further. Either way it probes again
      (one step of +25%, judged over a longer window) after ``probe_after``
      seconds, doubling on every disappointing step up to ``max_probe_after``.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        *,
        drain_time: float = 0.5,
        blocked_limit: float = 0.05,
        ineffective_gain: float = 0.1,
        min_judged: int = 20,
        probe_after: float = 2.0,
        max_probe_after: float = 60.0,
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
        self._step: _Step | None = None  # the last step up, until judged
        self._cap: int | None = None
        self._cap_until = 0.0
        self._probing = False
        self._failures = 0

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
        rate_now = sample.throughput  # measured at the current worker count

        if self._step is not None:
            verdict = self._judge(sample)
            if verdict is not None or self._step is not None:
                return verdict if verdict is not None else workers  # hold while judging
        if self._cap is not None and sample.time >= self._cap_until:
            self._cap = None
            self._probing = True  # the next step up is a small probe

        # -- grow -----------------------------------------------------------------
        downstream_full = (
            sample.downstream_length is not None
            and sample.downstream_depth is not None
            and sample.downstream_length > 0
            and sample.downstream_depth * 2 >= sample.downstream_length
        )
        if (
            utilization > upper
            and sample.queue_depth > 0
            and sample.blocked_share < self.blocked_limit
            and not downstream_full
        ):
            self._low_since = None
            self._shrinking = False
            self._window.clear()
            # service time per item; with no completion the items outlast the tick
            service = sample.active / sample.completed if sample.completed else sample.interval
            demand = max(busy, sample.arrivals / sample.interval * service)
            backlog = sample.queue_depth * service / self.drain_time
            wanted = math.ceil(demand / target + backlog)
            if self._probing:
                ceiling = workers + max(1, workers // 4)
            else:
                ceiling = max(2 * workers, workers + 4)
            if self._cap is not None:
                ceiling = min(ceiling, self._cap)
            new = min(wanted, ceiling, sample.max_workers)
            if new > workers:
                self._step = _Step(workers, new, rate_now, service)
                return new, (
                    f"utilization {utilization:.0%} > {upper:.0%} "
                    f"with {sample.queue_depth} waiting" + (" (probe)" if self._probing else "")
                )
            return workers

        # -- shrink -----------------------------------------------------------------
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
        while sample.time - self._window[0][0] > knobs.cooldown:
            self._window.popleft()
        if not self._shrinking and sample.time - self._low_since < knobs.cooldown:
            return workers
        self._shrinking = True
        floor = max(max(r for _, r in self._window), workers - max(1, workers // 4))
        if floor < workers:
            return floor, (
                f"utilization {smoothed_utilization:.0%} < {lower:.0%} for {knobs.cooldown:g}s"
            )
        self._shrinking = False
        return workers

    def _judge(self, sample: ScalingSample) -> Decision | None:
        """Did the last step up pay? If not, go back and cap the job for a while.

        Returns a decision once judged to be ineffective, ``None`` otherwise;
        ``self._step`` stays set while the verdict is still out.
        """
        step = self._step
        assert step is not None
        if sample.workers != step.after or step.before <= 0:
            self._step = None  # something else changed the pool: no verdict
            return None
        if sample.queue_depth == 0:
            self._step = None  # input ran out: more workers were not needed, the test is void
            return None
        step.completed += sample.completed
        step.seconds += sample.interval
        # A probe changes the pool by a little: judge it over a longer window.
        at_least = 2 * step.service + (3 * sample.interval if self._probing else 0.0)
        ready = step.completed >= self.min_judged and step.seconds >= at_least
        if not ready and step.seconds < 10 * max(sample.interval, step.service):
            return None  # not enough evidence yet: hold
        self._step = None
        rate = step.completed / step.seconds
        expected_gain = step.rate_before * (step.after - step.before) / step.before
        gain = rate - step.rate_before
        probing, self._probing = self._probing, False
        if expected_gain <= 0 or gain >= 0.5 * expected_gain:
            self._failures = 0  # clearly worth it
            return None
        delay = min(self.probe_after * 2**self._failures, self.max_probe_after)
        self._failures += 1
        self._cap_until = sample.time + delay
        if gain >= self.ineffective_gain * expected_gain:
            # Diminishing returns: keep the workers, but grow no further for a while.
            self._cap = step.after
            return None
        self._cap = step.before
        return step.before, (
            f"ineffective{' probe' if probing else ''}: {step.before} -> {step.after} workers "
            f"raised throughput by {gain:.0f}/s of an expected {expected_gain:.0f}/s; "
            f"capped for {delay:g}s"
        )


@final
class _Step:
    """A step up waiting for its verdict."""

    __slots__ = ("after", "before", "completed", "rate_before", "seconds", "service")

    def __init__(self, before: int, after: int, rate_before: float, service: float) -> None:
        self.before = before
        self.after = after
        self.rate_before = rate_before
        self.service = service
        self.completed = 0
        self.seconds = 0.0


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
