"""Scaling decisions, tested synchronously: synthetic samples in, worker counts out.

No event loop here. A strategy reads time only from its sample, so a run of ticks
is simulated by feeding samples with increasing ``time`` and feeding each decision
back as the next sample's ``workers`` (clamped to ``[min, max]``, as the runtime does).
Interval, service times, shares and the target utilization are powers of two (or
short sums of them) wherever the arithmetic is checked by hand, so the expected
numbers are exact.

The rules of :class:`UtilizationStrategy` checked here, with ``w`` workers:

* target utilization = ``lower + (upper - lower) * 2 / 3``;
* the service time is the mean duration of the last 32 timed calls (active time per
  completed item when none is timed), at least the mean age of the calls running;
* grow when utilization > upper, input is waiting (closed input or not), less than
  5% of the time is blocked, the downstream queue is less than half full, the next
  job is not saturated and retries are under a quarter of the calls, to
  ``ceil(demand / target + queue_depth / drain_time)`` (drain_time in call
  durations), straight there with 8 completed calls behind the estimate, at most
  ``max(2w, w + 3)`` per step before;
* hidden limits: once the count has settled (a service time, and as many calls
  ended as were running before and after the change), recent calls taking 1.5x as long as the job's first calls
  (with confidence) set off a probe down to 1.25x the concurrency they suggest; a
  probe that keeps the throughput (by Little's law, with confidence) confirms the
  limit and descends by quarters; one that loses it goes back; a capped job tries
  +25% after ``probe_after`` service times, doubling while it fails;
* shrink once the smoothed utilization has been below ``lower`` for the cooldown,
  by at most a quarter per tick, never below the highest recommendation
  (``smoothed busy / target``) of the last cooldown, and on while the smoothed
  utilization stays below the target.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from typing import Any

import attrs
import pytest

from flowrhythm import (
    Capacity,
    FixedStrategy,
    QueueDepthStrategy,
    ScalingSample,
    ScalingStrategy,
    Strategy,
    UtilizationCapacity,
    UtilizationStrategy,
)
from flowrhythm._scaling import make_strategy

#: Seconds between two ticks in every simulation.
INTERVAL = 0.125
#: Seconds one item takes in the simulated processor (1/64: exact in binary).
SERVICE = 1 / 64
#: Enough backlog that growth is limited by the step cap, never by the formula.
FLOOD = 10_000


def knobs(**overrides: Any) -> UtilizationCapacity:
    """The band [0.25, 0.625] puts the target two thirds of the way up at exactly 0.5."""
    settings: dict[str, Any] = {
        "min_workers": 1,
        "max_workers": 64,
        "lower_threshold": 0.25,
        "upper_threshold": 0.625,
        "cooldown": 1.0,
        "dampening": 0.0,
    }
    settings.update(overrides)
    return UtilizationCapacity(**settings)


def sample(
    *,
    workers: int,
    capacity: Capacity | None = None,
    time: float = 0.0,
    interval: float = INTERVAL,
    busy: float | None = None,
    blocked: float = 0.0,
    completed: int | None = None,
    arrivals: int = 0,
    queue_depth: int = 0,
    **fields: Any,
) -> ScalingSample:
    """A tick of ``workers`` workers: ``busy`` of them active on average, ``blocked``
    a share of the worker-time blocked, the rest idle. Defaults: all busy, and
    ``completed`` as many items as the busy time fits at :data:`SERVICE`.
    """
    capacity = capacity if capacity is not None else knobs()
    total = workers * interval
    active = (workers if busy is None else busy) * interval
    blocked_seconds = blocked * total
    if completed is None:
        completed = round(active / SERVICE)
    return ScalingSample(
        job="job",
        time=time,
        interval=interval,
        workers=workers,
        min_workers=capacity.min_workers,
        max_workers=capacity.max_workers,
        active=active,
        idle=max(total - active - blocked_seconds, 0.0),
        blocked=blocked_seconds,
        completed=completed,
        arrivals=arrivals,
        queue_depth=queue_depth,
        queue_length=100,
        capacity=capacity,
        **fields,
    )


def count(decision: int | tuple[int, str]) -> int:
    return decision[0] if isinstance(decision, tuple) else decision


def reason(decision: int | tuple[int, str]) -> str:
    return decision[1] if isinstance(decision, tuple) else ""


class Simulation:
    """Ticks of one job: each decision, clamped as the runtime clamps it, is fed back."""

    def __init__(
        self, strategy: ScalingStrategy, capacity: UtilizationCapacity, workers: int
    ) -> None:
        self.strategy = strategy
        self.capacity = capacity
        self.workers = workers
        self.time = 0.0
        self.reasons: list[str] = []

    def tick(self, **signals: Any) -> int:
        """One tick; ``signals`` may be callables of the current worker count."""
        self.time += INTERVAL
        values = {k: v(self.workers) if callable(v) else v for k, v in signals.items()}
        decision = self.strategy.decide(
            sample(workers=self.workers, capacity=self.capacity, time=self.time, **values)
        )
        self.reasons.append(reason(decision))
        low, high = self.capacity.min_workers, self.capacity.max_workers
        self.workers = min(max(count(decision), low), high)
        return self.workers

    def until(self, time: float, **signals: Any) -> list[tuple[float, int]]:
        """Tick until ``time`` (inclusive); the ``(time, workers)`` after every tick."""
        path = []
        while self.time + INTERVAL <= time:
            path.append((self.time + INTERVAL, self.tick(**signals)))
        return path


# -- the sample --------------------------------------------------------------------


def test_sample_derived_values() -> None:
    s = ScalingSample(
        job="j",
        time=1.0,
        interval=0.25,
        workers=4,
        min_workers=1,
        max_workers=8,
        active=0.5,
        idle=0.25,
        blocked=0.25,
        completed=10,
        arrivals=3,
        queue_depth=0,
        queue_length=10,
    )
    assert s.utilization == 0.5  # blocked is not busy
    assert s.blocked_share == 0.25
    assert s.busy == 2.0
    assert s.throughput == 40.0
    assert isinstance(s.capacity, UtilizationCapacity)


def test_sample_without_time_has_zero_rates() -> None:
    s = sample(workers=2, interval=0.0, busy=0.0, completed=0)
    assert (s.utilization, s.blocked_share, s.busy, s.throughput) == (0.0, 0.0, 0.0, 0.0)


def test_utilization_capacity_defaults() -> None:
    c = UtilizationCapacity()
    assert (c.lower_threshold, c.upper_threshold) == (0.4, 0.8)
    assert (c.cooldown, c.sampling, c.dampening) == (1.0, 0.1, 0.5)
    assert c.strategy is Strategy.UTILIZATION


# -- UtilizationStrategy: growing ------------------------------------------------------

# Ten workers over a tick of 0.25 s, 80% busy (busy = 8), 128 items done: the service
# time is 2.0 s / 128 = 1/64 s. With 128 arrivals (512/s) demand by Little's law is
# 512 * 1/64 = 8 workers, which at the target utilization of 0.5 is 16 workers; the
# 16 waiting would drain within 4 call durations with 16 / 4 = 4: the larger, 16.
BASE: dict[str, Any] = {
    "workers": 10,
    "interval": 0.25,
    "busy": 8.0,
    "completed": 128,
    "arrivals": 128,
}


@pytest.mark.parametrize(
    ("changes", "capacity", "options", "expected"),
    [
        pytest.param({"queue_depth": 16}, {}, {}, 16, id="littles-law"),
        # 144 arrivals = 576/s: demand 9, so 9 / 0.5 = 18.
        pytest.param({"queue_depth": 16, "arrivals": 144}, {}, {}, 18, id="arrivals-dominate"),
        # Fewer arrivals than completions, but the queue (100) is half full: the
        # source is held back, and the 8 busy workers are the demand: 16.
        pytest.param({"queue_depth": 50, "arrivals": 64}, {}, {}, 16, id="busy-when-backed-up"),
        # A backlog of 80 drains within 4 call durations with 20 workers: more than 16.
        pytest.param({"queue_depth": 80}, {}, {}, 20, id="backlog-dominates"),
        # Draining within 2 call durations doubles the backlog term: 48 / 2 = 24.
        pytest.param({"queue_depth": 48}, {}, {"drain_time": 2}, 24, id="drain-time"),
        # Band [0.3, 0.75]: target 0.3 + 0.45 * 2/3 = 0.6, 8 / 0.6 = 13.3 -> 14.
        pytest.param(
            {"queue_depth": 16},
            {"lower_threshold": 0.3, "upper_threshold": 0.75},
            {},
            14,
            id="target-two-thirds-up-the-band",
        ),
        # The default band [0.4, 0.8]: 8.25 busy (82.5%, 132 items: 1/64 s each), a
        # demand of 8 at the target 2/3: 12.
        pytest.param(
            {"busy": 8.25, "completed": 132, "queue_depth": 16},
            {"lower_threshold": 0.4, "upper_threshold": 0.8},
            {},
            12,
            id="default-band",
        ),
        # Items waiting in a closed input still count.
        pytest.param({"queue_depth": 16, "input_closed": True}, {}, {}, 16, id="input-closed"),
        # Nothing finished and nothing timed yet: one tick stands in for the call.
        # 8 arrivals in 0.25 s of 0.25 s calls: demand 8, 16 wanted, within the step
        # cap max(4, 2 + 3) = 5.
        pytest.param(
            {"workers": 2, "busy": 2.0, "completed": 0, "arrivals": 8, "queue_depth": 1},
            {},
            {},
            5,
            id="no-completion-yet",
        ),
        # With 128 calls behind the estimate, straight to what is needed.
        pytest.param({"queue_depth": FLOOD}, {}, {}, 64, id="straight-to-max"),
        # With fewer than 8, at most max(2w, w + 3) per step.
        pytest.param(
            {"workers": 1, "busy": 1.0, "completed": 4, "queue_depth": FLOOD},
            {},
            {},
            4,
            id="thin-evidence-plus-three",
        ),
        pytest.param(
            {"workers": 10, "busy": 10.0, "completed": 7, "queue_depth": FLOOD},
            {},
            {},
            20,
            id="thin-evidence-double",
        ),
        pytest.param({"queue_depth": FLOOD}, {"max_workers": 12}, {}, 12, id="max-workers"),
    ],
)
def test_grows_by_littles_law(
    changes: dict[str, Any], capacity: dict[str, Any], options: dict[str, Any], expected: int
) -> None:
    strategy = UtilizationStrategy(**options)
    decision = strategy.decide(sample(**{**BASE, **changes, "capacity": knobs(**capacity)}))
    assert count(decision) == expected
    assert "utilization" in reason(decision)


#: A next job at its maximum, all busy: more output would only queue up there.
SATURATED_DOWNSTREAM = {
    "downstream_workers": 4,
    "downstream_max_workers": 4,
    "downstream_busy": 1.0,
}


@pytest.mark.parametrize(
    ("changes", "grows"),
    [
        pytest.param({}, True, id="control"),
        # Blocked time is not busy; a noticeable share of it (5%) stops growth.
        pytest.param({"blocked": 0.04}, True, id="blocked-4pct"),
        pytest.param({"blocked": 0.05}, False, id="blocked-5pct"),
        pytest.param({"blocked": 0.1}, False, id="blocked-10pct"),
        pytest.param({"blocked": 0.2}, False, id="blocked-20pct"),
        # A downstream queue at least half full: the bottleneck is downstream.
        pytest.param({"downstream_depth": 49, "downstream_length": 100}, True, id="down-49"),
        pytest.param({"downstream_depth": 50, "downstream_length": 100}, False, id="down-50"),
        pytest.param({"downstream_depth": 100, "downstream_length": 100}, False, id="down-100"),
        pytest.param({"downstream_depth": 1, "downstream_length": 2}, False, id="down-1-of-2"),
        pytest.param({"downstream_depth": 1, "downstream_length": 1}, False, id="down-1-of-1"),
        pytest.param({"downstream_depth": 0, "downstream_length": 1}, True, id="down-0-of-1"),
        pytest.param({"downstream_depth": 0, "downstream_length": 0}, True, id="rendezvous"),
        # The next job saturated: at its maximum and busier than the upper threshold.
        pytest.param(SATURATED_DOWNSTREAM, False, id="down-saturated"),
        pytest.param(
            {**SATURATED_DOWNSTREAM, "downstream_max_workers": 8}, True, id="down-can-grow"
        ),
        pytest.param({**SATURATED_DOWNSTREAM, "downstream_busy": 0.6}, True, id="down-in-band"),
        # Calls failing and retried: a quarter of the attempts or more are retries.
        # (128 items ended: 42 retries are under a quarter of 170 attempts, 43 are not.)
        pytest.param({"retried": 42}, True, id="retries-under-25pct"),
        pytest.param({"retried": 43}, False, id="retries-25pct"),
        pytest.param({"retried": 128}, False, id="retries-half"),
        # No input waiting. A closed input with items still waiting grows.
        pytest.param({"queue_depth": 0}, False, id="queue-empty"),
        pytest.param({"input_closed": True}, True, id="input-closed-items-waiting"),
        pytest.param({"input_closed": True, "queue_depth": 0}, False, id="input-closed-empty"),
        # Utilization must be above the upper threshold (0.625), not at it.
        pytest.param({"busy": 6.25}, False, id="at-upper-threshold"),
        pytest.param({"busy": 6.5}, True, id="above-upper-threshold"),
        pytest.param({"busy": 5.0}, False, id="in-band"),
        # Arrivals below what the workers do, and the queue not backed up: busy as
        # they are, the demand is what arrives (256/s: 4 busy, 8 wanted), no more.
        pytest.param({"arrivals": 64}, False, id="arrivals-below-capacity"),
    ],
)
def test_growth_conditions(changes: dict[str, Any], grows: bool) -> None:
    s = sample(**{**BASE, "queue_depth": 16, **changes})
    decision = count(UtilizationStrategy().decide(s))
    assert (decision > s.workers) is grows
    assert decision >= s.workers  # none of these samples is a reason to shrink


@pytest.mark.parametrize(
    ("downstream_busy", "expected"),
    [
        # BASE ends 512 items/s of 1/64 s. A next job at its maximum, 40% busy, takes
        # 512 * 0.625 / 0.4 = 800/s at its upper threshold: 800 / 64 / 0.5 = 25 workers.
        pytest.param(0.4, 25, id="room-for-25"),
        pytest.param(0.2, 50, id="room-for-50"),
        # Busy past its upper threshold: saturated, no growth at all.
        pytest.param(0.7, 10, id="saturated"),
        # Nothing reached it yet: no word on its capacity, so a cautious step.
        pytest.param(0.0, 20, id="no-word-yet"),
    ],
)
def test_a_next_job_at_its_maximum_bounds_the_step(downstream_busy: float, expected: int) -> None:
    s = sample(
        **{
            **BASE,
            "queue_depth": FLOOD,
            "downstream_workers": 4,
            "downstream_max_workers": 4,
            "downstream_busy": downstream_busy,
        }
    )
    assert count(UtilizationStrategy().decide(s)) == expected


def test_blocked_job_never_grows_over_many_ticks() -> None:
    sim = Simulation(UtilizationStrategy(), knobs(cooldown=100.0), workers=2)
    for _ in range(100):
        assert sim.tick(busy=lambda w: 0.9 * w, blocked=0.1, queue_depth=FLOOD) == 2


@pytest.mark.parametrize("input_closed", [False, True])
def test_thin_evidence_doubles_rich_evidence_goes_straight(input_closed: bool) -> None:
    # Each worker ends a call a tick. Until 8 calls have ended the job at most
    # doubles (plus three) per tick: 1 + 4 calls; then (13) straight to 64.
    sim = Simulation(UtilizationStrategy(), knobs(), workers=1)
    path = [sim.workers]
    while sim.workers < 64:
        path.append(sim.tick(completed=lambda w: w, queue_depth=FLOOD, input_closed=input_closed))
        assert len(path) < 10, path
    assert path == [1, 4, 8, 64]
    for before, after in itertools.pairwise(path[:-1]):
        assert after - before <= max(before, 3)


def test_the_service_time_is_measured_over_completed_calls_not_one_tick() -> None:
    # One-second calls, ticks of 1/8 s: ticks end 0 or a burst of 32 calls. The
    # mean duration of the last 32 calls is the service time, not a tick's share.
    strategy = UtilizationStrategy()
    time = 0.0
    decision: Any = None
    for tick in range(48):
        time += INTERVAL
        ended = 32 if tick % 8 == 7 else 0  # 32 workers end a call every second
        decision = strategy.decide(
            sample(
                workers=32,
                time=time,
                busy=32.0,
                completed=ended,
                arrivals=ended,
                queue_depth=0,
                calls=ended,
                call_seconds=float(ended),
            )
        )
    # 32 busy, arrivals 32/s of 1 s calls: demand 32 at the target 0.5 wants 64,
    # but nothing waits: no growth, and nothing is low: no shrink.
    assert count(decision) == 32
    strategy.decide(
        sample(workers=32, time=time + INTERVAL, busy=32.0, completed=0, queue_depth=FLOOD)
    )
    # The estimate is 1 s a call, not a tick's 0.125 s.
    assert "1s a call" in reason(
        strategy.decide(
            sample(workers=32, time=time + 2 * INTERVAL, busy=32.0, completed=0, queue_depth=1)
        )
    )


def test_the_age_of_calls_still_running_is_evidence_of_their_length() -> None:
    # Nothing has ended yet, but 4 calls have run for 2 s each: a call takes 2 s at least.
    decision = UtilizationStrategy().decide(
        sample(workers=4, busy=4.0, completed=0, queue_depth=FLOOD, running=4, running_age=8.0)
    )
    assert count(decision) == 8  # thin evidence: at most doubling
    assert "2s a call" in reason(decision)


# -- UtilizationStrategy: hidden limits --------------------------------------------------------

#: Seconds a call takes without contention, in the limit simulations below.
CALL = 1 / 64


def limited(limit: int, call: float = CALL) -> Callable[[int], dict[str, Any]]:
    """The signals of a saturated job whose calls share a hidden semaphore of ``limit``.

    Every worker is busy (waiting on the semaphore is inside the call), calls end at
    ``limit / call`` per second whatever the worker count, and each takes
    ``call * max(1, workers / limit)``. Every call is timed; the job's first 32 calls
    took ``call`` each.
    """

    def signals(workers: int) -> dict[str, Any]:
        duration = call * max(1.0, workers / limit)
        ended = round(min(workers, limit) / call * INTERVAL)
        log = math.log(duration)
        return {
            "busy": float(workers),
            "completed": ended,
            "arrivals": ended,
            "queue_depth": FLOOD,
            "calls": ended,
            "call_seconds": ended * duration,
            "call_squares": ended * duration * duration,
            "call_logs": ended * log,
            "call_log_squares": ended * log * log,
            "first_calls": 32,
            "first_call_logs": 32 * math.log(call),
            "first_call_log_squares": 32 * math.log(call) ** 2,
        }

    return signals


def run_limited(
    sim: Simulation, limit: int, ticks: int, *, until_probe: bool = False
) -> list[tuple[int, str]]:
    """Tick ``ticks`` times (or until the first probe); every decision that came with a
    reason, as ``(workers, reason)``."""
    events = []
    for _ in range(ticks):
        workers = sim.tick(**{k: _per_worker(limit, k) for k in limited(limit)(1)})
        if sim.reasons[-1]:
            events.append((workers, sim.reasons[-1]))
            if until_probe and sim.reasons[-1].startswith("probe"):
                break
    return events


def _per_worker(limit: int, key: str) -> Callable[[int], Any]:
    return lambda workers: limited(limit)(workers)[key]


def test_calls_taking_longer_at_more_workers_set_off_a_probe_down() -> None:
    # 32 workers behind a semaphore of 8: calls take 4x as long as the first ones did.
    sim = Simulation(UtilizationStrategy(), knobs(max_workers=32), workers=32)
    events = run_limited(sim, 8, 8)
    # The count must settle first: a service time (4/64 s) and 32 calls ended since
    # the last change; then 64 calls at this count; then the probe, to 1.25 * 8.
    assert events[0] == (
        10,
        (
            "probe: calls take 4.0x as long at 32 workers as they did; "
            "about 8 seem to run at once: trying 10"
        ),
    )


def test_a_probe_that_keeps_the_rate_confirms_the_limit_and_descends() -> None:
    sim = Simulation(UtilizationStrategy(), knobs(max_workers=32), workers=32)
    events = run_limited(sim, 8, 60)
    reasons = [r for _, r in events]
    counts = [w for w, _ in events]
    # 10 workers did as well as 32: a limit. Then on down by quarters while the rate
    # holds: 10 -> 8 holds (8 run at once), 8 -> 6 loses a quarter: back to 8.
    assert counts[:6] == [10, 10, 8, 8, 6, 8]
    assert reasons[1].startswith("limit: 10 workers gave 512/s where 32 gave 512/s")
    assert reasons[2] == "probe: a limit at 10 workers; trying 8"
    assert reasons[4] == "probe: a limit at 8 workers; trying 6"
    assert reasons[5].startswith("limit found: 6 workers gave 384/s of the 512/s of 8")
    assert sim.workers == 8


def test_a_capped_job_tries_a_quarter_more_after_probe_after_service_times() -> None:
    sim = Simulation(UtilizationStrategy(probe_after=8), knobs(max_workers=32), workers=32)
    events = run_limited(sim, 8, 120)
    # Found at 8 (as above), capped for 8 service times of 1/64 s.
    found = next(i for i, (_, r) in enumerate(events) if r.startswith("limit found"))
    assert events[found][1].endswith("capped at 8 for 0.125s")
    ups = [e for e in events[found + 1 :] if e[1].startswith("probe")]
    backs = [e for e in events[found + 1 :] if e[1].startswith("limit")]
    assert ups[0] == (10, "probe: capped at 8 for a while; trying 10")
    assert set(ups) == {ups[0]}
    assert {w for w, _ in backs} == {8}
    assert backs[0][1].startswith(
        "limit: 8 -> 10 workers raised throughput from 512/s to 512/s of an expected 640/s"
    )
    # Each failed step up doubles the wait (in service times, here 10/8 of 1/64 s).
    waits = [float(r.rsplit("for ", 1)[1].rstrip("s")) for _, r in backs]
    assert len(waits) >= 4
    assert waits[0] == pytest.approx(8 * 1.25 / 64, rel=0.01)
    for before, after in itertools.pairwise(waits):
        assert after == pytest.approx(2 * before, rel=0.01)


def test_without_a_change_in_durations_the_guard_never_probes() -> None:
    # 32 workers, no limit: calls take as long as the first ones did, over 500 ticks.
    sim = Simulation(UtilizationStrategy(), knobs(max_workers=32), workers=32)
    events = run_limited(sim, 64, 500)
    assert events == []
    assert sim.workers == 32


def test_a_probe_that_loses_throughput_goes_straight_back() -> None:
    # Calls take 4x as long as the first ones, but not because of a limit: the
    # rate drops with fewer workers. Back to 32, and no suspicion for a while.
    strategy = UtilizationStrategy()
    sim = Simulation(strategy, knobs(max_workers=32), workers=32)

    def signals(workers: int) -> dict[str, Any]:
        duration = 4 * CALL
        ended = round(workers / duration * INTERVAL)
        log = math.log(duration)
        return {
            "busy": float(workers),
            "completed": ended,
            "arrivals": ended,
            "queue_depth": FLOOD,
            "calls": ended,
            "call_seconds": ended * duration,
            "call_squares": ended * duration * duration,
            "call_logs": ended * log,
            "call_log_squares": ended * log * log,
            "first_calls": 32,
            "first_call_logs": 32 * math.log(CALL),
            "first_call_log_squares": 32 * math.log(CALL) ** 2,
        }

    reasons = []
    times = []
    for _ in range(100):
        sim.tick(**{k: (lambda w, k=k: signals(w)[k]) for k in signals(1)})
        if sim.reasons[-1]:
            reasons.append((sim.workers, sim.reasons[-1]))
            times.append(sim.time)
    assert reasons[0][0] == 10  # about 8 at once, by the durations: 1.25 * 8
    assert reasons[1] == (32, "no limit: 10 workers gave 160/s of the 512/s of 32; back to 32")
    assert reasons[2][0] == 10  # the same suspicion, tested again ...
    # ... only after probe_after * 2 = 100 service times of 4/64 s, and refuted again.
    assert times[2] - times[1] >= 100 * 4 * CALL
    assert reasons[3][1].startswith("no limit")
    assert all(not r.startswith("limit") for _, r in reasons)


def test_no_verdict_while_new_workers_are_on_their_first_call() -> None:
    # After the probe to 10, calls of 4/64 s from the 32 are still ending: no verdict
    # until a service time has passed and as many calls as were running before and
    # after the change (32 + 10) ended.
    sim = Simulation(UtilizationStrategy(), knobs(max_workers=32), workers=32)
    run_limited(sim, 8, 50, until_probe=True)
    assert sim.workers == 10
    since = sim.time
    quiet = dict.fromkeys(("completed", "calls"), 0)
    for _ in range(20):
        sim.tick(busy=10.0, queue_depth=FLOOD, **quiet)  # nothing ends
        assert sim.workers == 10
        assert sim.reasons[-1] == ""
    assert sim.time - since > 2.0


def test_a_probe_is_void_when_the_queue_runs_dry() -> None:
    sim = Simulation(UtilizationStrategy(), knobs(max_workers=32), workers=32)
    run_limited(sim, 8, 50, until_probe=True)
    assert sim.workers == 10
    sim.tick(busy=2.0, queue_depth=0)  # the input ran out: no verdict, no cap
    strategy = sim.strategy
    assert isinstance(strategy, UtilizationStrategy)
    assert strategy._probe is None
    assert strategy._cap is None


# -- UtilizationStrategy: shrinking ------------------------------------------------------


def test_no_shrink_before_the_cooldown() -> None:
    # 8 workers, 0.8 busy (10%): low from the first tick at t = 0.125.
    sim = Simulation(UtilizationStrategy(), knobs(cooldown=1.0), workers=8)
    path = sim.until(1.125, busy=0.8)
    assert path[:-1] == [(t, 8) for t, _ in path[:-1]]
    assert path[-1] == (1.125, 6)  # first shrink exactly one cooldown later, by a quarter
    assert sim.reasons[-1] == "utilization 10% < 25% for 1s"


def test_a_busy_tick_restarts_the_cooldown() -> None:
    sim = Simulation(UtilizationStrategy(), knobs(cooldown=1.0), workers=8)
    assert {w for _, w in sim.until(0.75, busy=0.8)} == {8}
    assert sim.tick(busy=4.0) == 8  # 50%: in the band, no longer low (t = 0.875)
    path = sim.until(2.0, busy=0.8)  # low again from t = 1.0
    assert [t for t, w in path if w < 8] == [2.0]


def test_a_tick_that_wants_to_grow_restarts_the_cooldown() -> None:
    # At max_workers a busy tick with input waiting cannot grow, but it is no low tick.
    sim = Simulation(UtilizationStrategy(), knobs(max_workers=8, cooldown=1.0), workers=8)
    assert {w for _, w in sim.until(0.5, busy=0.8)} == {8}  # low since t = 0.125
    assert sim.tick(queue_depth=FLOOD) == 8  # t = 0.625
    path = sim.until(2.0, busy=0.8)  # low again from t = 0.75
    assert [t for t, w in path if w < 8] == [1.75, 1.875, 2.0]


@pytest.mark.parametrize("dampening", [0.0, 0.5, 0.9])
def test_shrink_at_most_a_quarter_per_tick(dampening: float) -> None:
    sim = Simulation(UtilizationStrategy(), knobs(cooldown=0.0, dampening=dampening), 64)
    path = [64]
    while sim.workers > 1:
        path.append(sim.tick(busy=0.0))
        assert len(path) < 100
    for before, after in itertools.pairwise(path):
        assert before - max(1, before // 4) <= after <= before
    if dampening == 0.0:
        # Idle and no smoothing: every tick takes exactly the quarter.
        assert path == [64, 48, 36, 27, 21, 16, 12, 9, 7, 6, 5, 4, 3, 2, 1]


def test_shrinking_goes_on_while_utilization_is_below_the_target() -> None:
    # 16 workers, 2 busy: the recommendation is 2 / 0.5 = 4 workers. Once shrinking,
    # the job goes on past the lower threshold (7 workers: 29%) down to the target
    # (4 workers: 50%), instead of stopping just inside the band.
    sim = Simulation(UtilizationStrategy(), knobs(cooldown=1.0), workers=16)
    assert {w for _, w in sim.until(1.0, busy=2.0)} == {16}
    assert sim.until(2.0, busy=2.0) == [
        (1.125, 12),
        (1.25, 9),
        (1.375, 7),  # 2 / 9 = 22%: still low
        (1.5, 6),  # 2 / 7 = 29%: in the band, below the target
        (1.625, 5),
        (1.75, 4),
        (1.875, 4),  # 2 / 4 = 50%: the target, done
        (2.0, 4),
    ]


def test_utilization_at_the_target_ends_the_shrink() -> None:
    sim = Simulation(UtilizationStrategy(), knobs(cooldown=1.0), workers=16)
    sim.until(1.25, busy=2.0)
    assert sim.workers == 9
    assert sim.tick(busy=4.5) == 9  # 4.5 / 9 = 50% at t = 1.375: the shrink ends
    # Low again from t = 1.5: a full cooldown before the next step, max(4, 9 - 2).
    path = sim.until(2.5, busy=2.0)
    assert {w for t, w in path if t < 2.5} == {9}
    assert path[-1] == (2.5, 7)


def test_below_the_target_but_not_low_never_starts_a_shrink() -> None:
    sim = Simulation(UtilizationStrategy(), knobs(cooldown=0.0), workers=16)
    assert {sim.tick(busy=6.0) for _ in range(50)} == {16}  # 37.5%: in the band


def test_shrink_holds_at_the_highest_recommendation_in_the_window() -> None:
    # 16 workers, 0.2 busy (recommends 1), but 3.5 busy at t = 1.0 (recommends 7;
    # still low: 3.5 / 16 < 0.25). Cooldown 2 s, low since t = 0.125.
    sim = Simulation(UtilizationStrategy(), knobs(cooldown=2.0), workers=16)
    path = sim.until(2.0, busy=lambda w: 3.5 if sim.time == 1.0 else 0.2)
    assert {w for _, w in path} == {16}
    path = sim.until(4.0, busy=0.2)
    assert path == [
        (2.125, 12),  # a quarter of 16
        (2.25, 9),
        (2.375, 7),  # the spike at t = 1.0 is still in the window
        (2.5, 7),
        (2.625, 7),
        (2.75, 7),
        (2.875, 7),
        (3.0, 7),  # 3.0 - 1.0 = cooldown: still in
        (3.125, 6),  # the spike has left the window
        (3.25, 5),
        (3.375, 4),
        (3.5, 3),
        (3.625, 2),
        (3.75, 1),
        (3.875, 1),
        (4.0, 1),
    ]


@pytest.mark.parametrize(("busy", "stops_at"), [(1.0, 2), (1.002, 2), (1.006, 3)])
def test_the_recommendation_is_rounded_to_hundredths_before_the_ceiling(
    busy: float, stops_at: int
) -> None:
    # 1.002 / 0.5 = 2.004 rounds to 2.0: 2 workers; 2.012 rounds to 2.01: 3 workers.
    sim = Simulation(UtilizationStrategy(), knobs(cooldown=0.0), workers=8)
    path = [sim.tick(busy=busy) for _ in range(10)]
    assert path == [6, 5, 4, 3] + [stops_at] * 6


def test_smoothing_starts_from_the_first_sample() -> None:
    # Dampening 0.5, cooldown 0. The first tick (8 of 16 busy) sets both smoothed
    # signals: utilization 0.5, busy 8. Then idle: utilization 0.25 (not below the
    # lower threshold), 0.125 (below: shrink), ...; busy 4, 2, 1, 0.5: the
    # recommendations are 4, 2, 1, 1 (busy / 0.5), below the quarter steps.
    sim = Simulation(UtilizationStrategy(), knobs(cooldown=0.0, dampening=0.5), workers=16)
    path = [sim.tick(busy=8.0)] + [sim.tick(busy=0.0) for _ in range(10)]
    assert path == [16, 16, 12, 9, 7, 6, 5, 4, 3, 2, 1]


def test_dampening_smooths_a_spike_out_of_the_recommendation() -> None:
    # As in the window test, with dampening 0.5: the spike smooths to 0.5 * 0.2 +
    # 0.5 * 3.5 = 1.85, which recommends ceil(1.85 / 0.5) = 4 instead of 7.
    sim = Simulation(UtilizationStrategy(), knobs(cooldown=2.0, dampening=0.5), workers=16)
    sim.until(2.0, busy=lambda w: 3.5 if sim.time == 1.0 else 0.2)
    path = sim.until(3.0, busy=0.2)
    assert [w for _, w in path] == [12, 9, 7, 6, 5, 4, 4, 4]


def test_dampening_slows_the_fall_after_load_ends() -> None:
    def fall(dampening: float) -> list[int]:
        capacity = knobs(cooldown=0.0, dampening=dampening)
        sim = Simulation(UtilizationStrategy(), capacity, workers=16)
        for _ in range(10):
            sim.tick(busy=8.0)  # 50%: in the band; the smoothed signals settle at 8 and 0.5
        path = []
        while sim.workers > 1:
            path.append(sim.tick(busy=0.0))
            assert len(path) < 500
        return path

    sharp, smooth = fall(0.0), fall(0.9)
    assert sharp == [12, 9, 7, 6, 5, 4, 3, 2, 1]
    # Dampening 0.9: the smoothed utilization 0.5 * 0.9**n first drops below 0.25 at
    # n = 7; the smoothed busy 8 * 0.9**n then recommends ceil(16 * 0.9**n) workers:
    # 8, 7, 7, 6, 6 at n = 7..11, so the quarter steps rule until 7 and the
    # recommendation after (6 at n = 10 and 11).
    assert smooth[:11] == [16] * 6 + [12, 9, 7, 6, 6]
    # It reaches 1 when 16 * 0.9**n <= 1.0 (to hundredths): n = 27.
    assert len(smooth) == 27
    padded = sharp + [1] * (len(smooth) - len(sharp))
    assert all(s >= p for s, p in zip(smooth, padded, strict=True))


def test_dampening_smooths_the_utilization_that_gates_shrinking() -> None:
    # Utilization is the smoothed share of the job's workers that are busy.
    # Utilization alternating 10% / 30% averages 20%, below the lower threshold (25%):
    # with dampening 0.5 the smoothed utilization runs 0.1, 0.2, 0.15, 0.225, 0.1625,
    # ..., always below 0.25, so the job shrinks one cooldown after the first tick.
    # The smoothed busy (0.8, 1.6, 1.2, 1.8, ...) recommends at most 4 in the window.
    # With no dampening the 30% ticks are not low: no shrink ever.
    def path(dampening: float) -> list[int]:
        capacity = knobs(cooldown=1.0, dampening=dampening)
        sim = Simulation(UtilizationStrategy(), capacity, workers=8)
        ticks = [0.8, 2.4] * 12  # busy workers of 8: 10%, 30%, ...
        return [sim.tick(busy=busy * sim.workers / 8) for busy in ticks]

    assert set(path(0.0)) == {8}
    assert path(0.5)[:12] == [8] * 8 + [6, 5, 4, 4]


def test_never_shrinks_below_min_workers() -> None:
    sim = Simulation(UtilizationStrategy(), knobs(min_workers=3, cooldown=0.0), workers=3)
    assert {sim.tick(busy=0.0) for _ in range(50)} == {3}
    decision = UtilizationStrategy().decide(sample(workers=3, capacity=sim.capacity, busy=0.0))
    assert count(decision) == 3


def test_idle_job_returns_to_min_workers() -> None:
    sim = Simulation(UtilizationStrategy(), knobs(min_workers=2, cooldown=1.0), workers=40)
    path = sim.until(10.0, busy=0.0)
    assert all(w == 40 for t, w in path if t < 1.125)
    assert path[-1][1] == 2
    assert min(w for _, w in path) == 2


@pytest.mark.parametrize("dampening", [0.0, 0.5, 0.9])
def test_zero_and_back(dampening: float) -> None:
    capacity = knobs(min_workers=0, max_workers=8, cooldown=1.0, dampening=dampening)
    sim = Simulation(UtilizationStrategy(), capacity, workers=1)
    for _ in range(4):
        sim.tick(busy=0.5)  # 50%: in the band
    busy_until = sim.time
    path = sim.until(busy_until + 20.0, busy=0.0)
    zero_at = next(t for t, w in path if w == 0)
    assert zero_at >= busy_until + 1.0  # not before the cooldown
    assert path[-1][1] == 0
    # Input arrives again (the runtime's doorman starts one worker): it grows.
    again = sample(workers=1, capacity=capacity, time=sim.time + INTERVAL, queue_depth=FLOOD)
    assert count(sim.strategy.decide(again)) == 8  # straight to the maximum


# -- QueueDepthStrategy --------------------------------------------------------------


@pytest.mark.parametrize(
    ("items_per_worker", "queue_depth", "busy", "expected"),
    [
        (10.0, 25, 5.0, 3),  # ceil(30 / 10)
        (10.0, 26, 4.0, 3),
        (10.0, 27, 4.0, 4),  # ceil(31 / 10): grows to 4
        (10.0, 1000, 4.0, 101),  # no step cap: the runtime clamps to max_workers
        (2, 7, 1.0, 4),
        (0.5, 3, 1.0, 8),
    ],
)
def test_queue_depth_wants_one_worker_per_backlog_share(
    items_per_worker: float, queue_depth: int, busy: float, expected: int
) -> None:
    strategy = QueueDepthStrategy(items_per_worker)
    s = sample(workers=3, busy=busy, queue_depth=queue_depth, capacity=knobs(max_workers=8))
    assert count(strategy.decide(s)) == expected


def test_queue_depth_shrinks_after_the_cooldown_to_the_window_max() -> None:
    sim = Simulation(QueueDepthStrategy(), knobs(cooldown=1.0), workers=8)
    # 2 busy and 28 waiting want ceil(30 / 10) = 3, then only 2 busy want 1.
    path = sim.until(0.125, busy=2.0, queue_depth=28) + sim.until(2.5, busy=2.0)
    assert all(w == 8 for t, w in path if t < 1.125)
    assert (1.125, 3) in path  # the 3 wanted at t = 0.125 is still in the window
    assert (1.25, 1) in path
    assert path[-1] == (2.5, 1)


def test_queue_depth_backlog_resets_the_cooldown() -> None:
    sim = Simulation(QueueDepthStrategy(), knobs(cooldown=1.0), workers=4)
    sim.until(0.875, busy=1.0)
    assert sim.tick(busy=4.0, queue_depth=5) == 4  # wants ceil(9 / 10) = 1 < 4: still low
    assert sim.tick(busy=4.0, queue_depth=60) == 7  # wants 7: grows at once, resets
    path = sim.until(sim.time + 1.125, busy=1.0)  # low again from the next tick
    assert {w for _, w in path[:-1]} == {7}
    assert path[-1][1] == 1


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0, ValueError),
        (-1.5, ValueError),
        (math.inf, ValueError),
        (math.nan, ValueError),
        ("10", TypeError),
        (True, TypeError),
        (None, TypeError),
    ],
)
def test_queue_depth_rejects_bad_items_per_worker(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="items_per_worker"):
        QueueDepthStrategy(value)


# -- FixedStrategy ------------------------------------------------------------------


@pytest.mark.parametrize("busy", [0.0, 2.0, 4.0])
@pytest.mark.parametrize("queue_depth", [0, FLOOD])
def test_fixed_stays_at_initial_workers(busy: float, queue_depth: int) -> None:
    capacity = knobs(min_workers=1, max_workers=8, initial_workers=3, strategy=Strategy.FIXED)
    strategy = FixedStrategy()
    for workers in (1, 3, 8):
        s = sample(workers=workers, busy=min(busy, workers), queue_depth=queue_depth)
        assert strategy.decide(attrs.evolve(s, capacity=capacity)) == 3


# -- strategies from a capacity ---------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        (Strategy.UTILIZATION, UtilizationStrategy),
        (Strategy.QUEUE_DEPTH, QueueDepthStrategy),
        (Strategy.FIXED, FixedStrategy),
    ],
)
def test_make_strategy_for_every_member(spec: Strategy, kind: type[Any]) -> None:
    first, second = make_strategy(spec), make_strategy(spec)
    assert type(first) is type(second) is kind
    assert first is not second  # a strategy keeps state: one per job per run
    assert isinstance(first, ScalingStrategy)


def test_default_strategy_is_utilization() -> None:
    assert UtilizationCapacity().strategy is Strategy.UTILIZATION
    assert isinstance(make_strategy(UtilizationCapacity().strategy), UtilizationStrategy)


class Halve:
    def __init__(self, floor: int = 0) -> None:
        self.floor = floor

    def decide(self, sample: ScalingSample, /) -> int:
        return max(sample.workers // 2, self.floor)


def test_make_strategy_with_a_custom_class() -> None:
    first, second = make_strategy(Halve), make_strategy(Halve)
    assert isinstance(first, Halve)
    assert first is not second
    assert isinstance(first, ScalingStrategy)
    assert first.decide(sample(workers=8)) == 4


def test_make_strategy_with_a_partial_and_a_lambda() -> None:
    strategy = make_strategy(functools.partial(Halve, floor=3))
    assert isinstance(strategy, Halve)
    assert strategy.decide(sample(workers=4)) == 3
    tuned = make_strategy(lambda: QueueDepthStrategy(items_per_worker=2))
    assert isinstance(tuned, QueueDepthStrategy)
    assert tuned.items_per_worker == 2.0


@pytest.mark.parametrize("made", [None, 3, object(), type("NoDecide", (), {"decide": 1})()])
def test_make_strategy_rejects_a_factory_without_decide(made: object) -> None:
    def factory() -> Any:
        return made

    with pytest.raises(TypeError, match="decide"):
        make_strategy(factory)


def test_capacity_rejects_a_strategy_that_is_not_callable() -> None:
    with pytest.raises(TypeError, match="strategy"):
        UtilizationCapacity(strategy="utilization")  # type: ignore[arg-type]


def test_plain_capacity_uses_default_knobs() -> None:
    # A Capacity without scaling knobs is judged with UtilizationCapacity's defaults:
    # upper threshold 0.8 (8 busy of 10 is at it, not above: no growth), target 2/3
    # (as the "default-band" case above: 12, where knobs() would give 16).
    capacity = Capacity(min_workers=1, max_workers=64)
    at = sample(**{**BASE, "queue_depth": 16, "capacity": capacity})
    assert count(UtilizationStrategy().decide(at)) == 10
    changes = {"busy": 8.25, "completed": 132, "queue_depth": 16, "capacity": capacity}
    assert count(UtilizationStrategy().decide(sample(**{**BASE, **changes}))) == 12
