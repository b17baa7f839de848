"""Scaling decisions, tested synchronously: synthetic samples in, worker counts out.

No event loop here. A strategy reads time only from its sample, so a run of ticks
is simulated by feeding samples with increasing ``time`` and feeding each decision
back as the next sample's ``workers`` (clamped to ``[min, max]``, as the runtime does).
Interval, service times, shares and the target utilization are powers of two (or
short sums of them) wherever the arithmetic is checked by hand, so the expected
numbers are exact.

The rules of :class:`UtilizationStrategy` checked here, with ``w`` workers:

* target utilization = ``lower + (upper - lower) * 2 / 3``;
* grow when utilization > upper, input is waiting (closed input or not), less than
  5% of the time is blocked and the downstream queue is less than half full, to
  ``ceil(demand / target + queue_depth * service / drain_time)``, at most
  ``max(2w, w + 4)`` per step (``w + max(1, w // 4)`` for a probe);
* after a step up, hold until the step is judged: an effective step (at least half
  the expected gain) lets growth go on, diminishing returns (10% to 50%) keep the
  workers but cap growth, an ineffective step (under 10%) goes back; both cap the
  job for ``probe_after * 2**failures`` seconds, then probe;
* shrink once the smoothed utilization has been below ``lower`` for the cooldown,
  by at most a quarter per tick, never below the highest recommendation
  (``smoothed busy / target``) of the last cooldown, and on while the smoothed
  utilization stays below the target.
"""

from __future__ import annotations

import functools
import itertools
import math
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
# 16 waiting drain in 0.5 s with 16/64/0.5 = 0.5 more: ceil(16.5) = 17.
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
        pytest.param({"queue_depth": 16}, {}, {}, 17, id="littles-law"),
        # 144 arrivals = 576/s: demand 9 > busy 8, so 9 / 0.5 + 0.5 = 18.5.
        pytest.param({"queue_depth": 16, "arrivals": 144}, {}, {}, 19, id="arrivals-dominate"),
        # Fewer arrivals than completions: the busy workers are the demand.
        pytest.param({"queue_depth": 16, "arrivals": 64}, {}, {}, 17, id="busy-dominates"),
        # The backlog term is workers as it is, not divided by the target:
        # 16 + 48/64/0.5 = 17.5 -> 18 (and not (8 + 1.5) / 0.5 = 19).
        pytest.param({"queue_depth": 48}, {}, {}, 18, id="backlog-in-workers"),
        # Draining in 0.25 s doubles the backlog term: 16 + 3 = 19.
        pytest.param({"queue_depth": 48}, {}, {"drain_time": 0.25}, 19, id="drain-time"),
        # Band [0.3, 0.75]: target 0.3 + 0.45 * 2/3 = 0.6, 8 / 0.6 + 0.5 = 13.8 -> 14
        # (the middle of the band, 0.525, would give 16).
        pytest.param(
            {"queue_depth": 16},
            {"lower_threshold": 0.3, "upper_threshold": 0.75},
            {},
            14,
            id="target-two-thirds-up-the-band",
        ),
        # The default band [0.4, 0.8]: 8.25 busy (82.5%, 132 items: 1/64 s each) at
        # the target 2/3: 8.25 * 3/2 + 0.5 = 12.875 -> 13 (the middle, 0.6, gives 15).
        pytest.param(
            {"busy": 8.25, "completed": 132, "queue_depth": 16},
            {"lower_threshold": 0.4, "upper_threshold": 0.8},
            {},
            13,
            id="default-band",
        ),
        # Items waiting in a closed input still count.
        pytest.param({"queue_depth": 16, "input_closed": True}, {}, {}, 17, id="input-closed"),
        # Nothing finished in the tick: service time is taken as the tick (0.25 s).
        # busy 2: 2 / 0.5 + 1 * 0.25 / 0.5 = 4.5 -> 5 (cap: max(4, 6)).
        pytest.param(
            {"workers": 2, "busy": 2.0, "completed": 0, "arrivals": 0, "queue_depth": 1},
            {},
            {},
            5,
            id="no-completion-yet",
        ),
        # Step cap: at most max(2 * 10, 10 + 4) = 20 per tick.
        pytest.param({"queue_depth": FLOOD}, {}, {}, 20, id="step-cap-double"),
        pytest.param(
            {"workers": 1, "busy": 1.0, "completed": 16, "queue_depth": FLOOD},
            {},
            {},
            5,
            id="step-cap-plus-four",
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
        # No input waiting. A closed input with items still waiting grows.
        pytest.param({"queue_depth": 0}, False, id="queue-empty"),
        pytest.param({"input_closed": True}, True, id="input-closed-items-waiting"),
        pytest.param({"input_closed": True, "queue_depth": 0}, False, id="input-closed-empty"),
        # Utilization must be above the upper threshold (0.625), not at it.
        pytest.param({"busy": 6.25}, False, id="at-upper-threshold"),
        pytest.param({"busy": 6.5}, True, id="above-upper-threshold"),
        pytest.param({"busy": 5.0}, False, id="in-band"),
    ],
)
def test_growth_conditions(changes: dict[str, Any], grows: bool) -> None:
    s = sample(**{**BASE, "queue_depth": 16, **changes})
    decision = count(UtilizationStrategy().decide(s))
    assert (decision > s.workers) is grows
    assert decision >= s.workers  # none of these samples is a reason to shrink


def test_blocked_job_never_grows_over_many_ticks() -> None:
    sim = Simulation(UtilizationStrategy(), knobs(cooldown=100.0), workers=2)
    for _ in range(100):
        assert sim.tick(busy=lambda w: 0.9 * w, blocked=0.1, queue_depth=FLOOD) == 2


@pytest.mark.parametrize("input_closed", [False, True])
def test_step_caps_take_1_to_64_in_five_ticks(input_closed: bool) -> None:
    # Each tick every worker finishes 8 items: a step up doubles the throughput, so
    # it is judged effective at the next tick (8w >= 20 items, 0.125 s >= 2/64 s),
    # and in that same tick the job steps up again.
    sim = Simulation(UtilizationStrategy(), knobs(), workers=1)
    path = [sim.workers]
    while sim.workers < 64:
        path.append(sim.tick(queue_depth=FLOOD, input_closed=input_closed))
        assert len(path) < 10, path
    assert path == [1, 5, 10, 20, 40, 64]
    for before, after in itertools.pairwise(path):
        assert after - before <= max(before, 4)


def test_growth_is_judged_from_samples_not_from_history() -> None:
    # The same sample gives the same growth on a fresh strategy and on a used one.
    used = UtilizationStrategy()
    for i in range(5):
        used.decide(sample(workers=10, busy=5.0, time=i * INTERVAL))
    s = sample(**{**BASE, "queue_depth": 16, "time": 5 * INTERVAL})
    assert count(used.decide(s)) == count(UtilizationStrategy().decide(s)) == 17


# -- UtilizationStrategy: a step up is held until it is judged ------------------------------


def guarded(**options: Any) -> Simulation:
    """4 busy workers completing 32 items a tick (256/s, 1/64 s each), then one step to 8.

    The step is expected to add 256/s; it is judged against the 256/s of that tick.
    """
    strategy = UtilizationStrategy(**options)
    sim = Simulation(strategy, knobs(), workers=4)
    assert sim.tick(queue_depth=FLOOD, completed=32) == 8
    return sim


@pytest.mark.parametrize(
    ("completed", "workers"),
    [
        pytest.param(20, 4, id="worse"),  # 160/s
        pytest.param(32, 4, id="no-gain"),
        pytest.param(35, 4, id="gain-9pct"),  # +24/s: less than 10% of +256/s
        pytest.param(36, 8, id="gain-12pct"),  # +32/s: diminishing returns, keep the 8
        pytest.param(47, 8, id="gain-47pct"),  # +120/s: still less than half
        pytest.param(48, 16, id="gain-50pct"),  # +128/s: effective, and it grows on at once
        pytest.param(64, 16, id="gain-100pct"),
    ],
)
def test_verdict_of_a_step(completed: int, workers: int) -> None:
    sim = guarded()
    assert sim.tick(queue_depth=FLOOD, completed=completed) == workers
    if workers == 4:
        gain = completed * 8 - 256
        assert sim.reasons[-1] == (
            f"ineffective: 4 -> 8 workers raised throughput by {gain}/s "
            "of an expected 256/s; capped for 2s"
        )
    else:
        assert "ineffective" not in sim.reasons[-1]


@pytest.mark.parametrize(("completed", "workers"), [(43, 5), (44, 10)])
def test_a_gain_of_exactly_ten_percent_is_not_ineffective(completed: int, workers: int) -> None:
    # 5 workers at 320/s step to 10, expecting +320/s; 44 items in a tick are 352/s,
    # +32/s: exactly 10%, diminishing returns (keep 10). 43 items: +24/s, back to 5.
    sim = Simulation(UtilizationStrategy(), knobs(), workers=5)
    assert sim.tick(queue_depth=FLOOD, completed=40) == 10
    assert sim.tick(queue_depth=FLOOD, completed=completed) == workers


def test_a_step_is_held_until_enough_items_are_judged() -> None:
    sim = guarded()
    held = {"queue_depth": FLOOD, "completed": 19}
    # Without a step to judge, this tick would grow 8 -> 16 ...
    fresh = UtilizationStrategy().decide(sample(workers=8, time=sim.time + INTERVAL, **held))
    assert count(fresh) == 16
    # ... but 19 items are fewer than min_judged (20): hold.
    assert sim.tick(**held) == 8
    assert sim.reasons[-1] == ""
    # 19 + 45 = 64 items in 0.25 s: 256/s, no gain.
    assert sim.tick(queue_depth=FLOOD, completed=45) == 4
    assert "raised throughput by 0/s of an expected 256/s" in sim.reasons[-1]


def test_the_judgement_window_spans_the_held_ticks() -> None:
    sim = guarded()
    assert sim.tick(queue_depth=FLOOD, completed=19) == 8
    # 19 + 109 = 128 items in 0.25 s: 512/s, the full gain: on to max(16, 12) = 16.
    assert sim.tick(queue_depth=FLOOD, completed=109) == 16


def test_a_step_is_not_judged_before_twice_the_service_time() -> None:
    # 4 workers finish 4 items in a tick: 0.125 s each, 32/s; a step to 8 is judged
    # after 2 * 0.125 = 0.25 s, two ticks, however many items the first one brings.
    sim = Simulation(UtilizationStrategy(), knobs(), workers=4)
    assert sim.tick(queue_depth=FLOOD, completed=4) == 8
    assert sim.tick(queue_depth=FLOOD, completed=40) == 8  # 40 >= 20 items, but 0.125 s
    # 80 items in 0.25 s: 320/s, far more than the +32/s expected: grows on. (Had it
    # been judged on the first tick, it would have grown then.)
    assert sim.tick(queue_depth=FLOOD, completed=40) == 16


@pytest.mark.parametrize(
    ("completions", "path"),
    [
        # Items take 0.5 s (four ticks): the 8 new workers finish their first items
        # four ticks after the step, and from then on the job does twice as much.
        # 2+2+2+4+4+4+4+4 = 26 items in 1.0 s (= 2 service times) at the 8th tick:
        # 26/s, +10/s of an expected +16/s: effective.
        ([2, 2, 2, 4, 4, 4, 4, 4, 4, 4], [16] * 10),
        # Nothing changes: 20 items only at the 10th tick (1.25 s), 16/s: no gain.
        ([2] * 10, [16] * 9 + [8]),
    ],
)
def test_a_step_is_judged_only_once_the_new_workers_could_finish_an_item(
    completions: list[int], path: list[int]
) -> None:
    sim = Simulation(UtilizationStrategy(), knobs(max_workers=16), workers=8)
    assert sim.tick(queue_depth=FLOOD, completed=2) == 16  # 16/s, 0.5 s per item
    assert [sim.tick(queue_depth=FLOOD, completed=done) for done in completions] == path
    if path[-1] == 8:
        assert sim.reasons[-1] == (
            "ineffective: 8 -> 16 workers raised throughput by 0/s of an expected 16/s; "
            "capped for 2s"
        )
    else:
        assert not any(sim.reasons[1:])


@pytest.mark.parametrize(
    ("completed", "ticks", "rate"),
    [
        # 1/64 s per item, 256/s: judged after 10 ticks (10 * 0.125 s) at most.
        (32, 10, 256),
        # 0.25 s per item, 16/s: after 10 service times, 2.5 s = 20 ticks.
        (2, 20, 16),
    ],
)
def test_a_step_is_judged_after_ten_service_times_or_ticks_at_most(
    completed: int, ticks: int, rate: int
) -> None:
    sim = Simulation(UtilizationStrategy(), knobs(), workers=4)
    assert sim.tick(queue_depth=FLOOD, completed=completed) == 8
    path = [sim.tick(queue_depth=FLOOD, completed=0) for _ in range(ticks)]
    assert path == [8] * (ticks - 1) + [4]  # never 20 items: judged when time runs out
    assert f"by -{rate}/s of an expected {rate}/s" in sim.reasons[-1]


def test_a_step_is_void_when_the_queue_runs_dry() -> None:
    sim = guarded()
    # No verdict: more workers were not needed. Nothing waits, nobody is idle: stay.
    assert sim.tick(queue_depth=0, completed=32) == 8
    # No step is pending any more (judged, this would go back to 4): a new step up.
    assert sim.tick(queue_depth=FLOOD, completed=32) == 16
    # Judged on its own; no failure was counted for the void one (capped for 2 s).
    assert sim.tick(queue_depth=FLOOD, completed=32) == 8
    assert sim.reasons[-1] == (
        "ineffective: 8 -> 16 workers raised throughput by 0/s of an expected 256/s; capped for 2s"
    )


def test_a_step_is_void_when_the_pool_is_not_what_was_decided() -> None:
    sim = guarded()
    sim.workers = 6  # say the runtime could only add two
    # 256/s, no gain: judged, the step to 8 would go back to 4. But it is not judged,
    # nor held: a step from 6 at once, max(2 * 6, 6 + 4) = 12.
    assert sim.tick(queue_depth=FLOOD, completed=32) == 12
    assert sim.tick(queue_depth=FLOOD, completed=32) == 6  # 256/s again: back
    assert sim.reasons[-1] == (
        "ineffective: 6 -> 12 workers raised throughput by 0/s of an expected 256/s; capped for 2s"
    )


# -- UtilizationStrategy: caps and probes after a disappointing step -------------------------


def test_an_ineffective_step_caps_the_job_at_the_old_count() -> None:
    sim = guarded()
    assert sim.tick(queue_depth=FLOOD, completed=32) == 4  # at t = 0.25: capped for 2 s
    path = sim.until(2.25, queue_depth=FLOOD, completed=32)
    assert {w for t, w in path if t < 2.25} == {4}
    assert path[-1] == (2.25, 5)  # the cap has expired: a probe, 4 + max(1, 4 // 4)
    assert sim.reasons[-1].endswith("(probe)")


def test_the_cap_holds_from_below_too() -> None:
    sim = guarded()
    assert sim.tick(queue_depth=FLOOD, completed=32) == 4
    # However few workers the job has, it grows to the cap and no further.
    one = sample(workers=1, time=sim.time + INTERVAL, queue_depth=FLOOD, completed=8)
    assert count(sim.strategy.decide(one)) == 4  # max(2, 1 + 4) = 5, capped at 4


def test_diminishing_returns_keep_the_workers_and_cap_growth() -> None:
    sim = guarded()
    assert sim.tick(queue_depth=FLOOD, completed=40) == 8  # +64/s of +256/s: 25%
    path = sim.until(2.25, queue_depth=FLOOD, completed=40)
    assert {w for t, w in path if t < 2.25} == {8}  # neither back nor further
    assert path[-1] == (2.25, 10)  # then a probe, 8 + 8 // 4
    assert sim.reasons[-1].endswith("(probe)")


@pytest.mark.parametrize(
    ("workers", "step", "back_at", "probe"),
    [
        (1, 5, 0.5, 2),  # 8 items a tick: judged once 24 >= 20 items are in, at t = 0.5
        (4, 8, 0.25, 5),
        (8, 16, 0.25, 10),
        (40, 64, 0.25, 50),  # the step is max_workers; the probe is a quarter of 40
    ],
)
def test_a_probe_adds_a_quarter(workers: int, step: int, back_at: float, probe: int) -> None:
    sim = Simulation(UtilizationStrategy(probe_after=0.5), knobs(), workers=workers)
    done = 8 * workers  # all busy, 1/64 s per item; never more, whatever the workers
    assert sim.tick(queue_depth=FLOOD, completed=done) == step
    path = sim.until(back_at, queue_depth=FLOOD, completed=done)
    assert path[-1] == (back_at, workers)  # no gain: back
    assert {w for _, w in path[:-1]} <= {step}
    path = sim.until(back_at + 0.5, queue_depth=FLOOD, completed=done)
    assert path == [(back_at + t, workers) for t in (0.125, 0.25, 0.375)] + [
        (back_at + 0.5, probe)
    ]


def test_a_probe_is_judged_over_three_more_ticks() -> None:
    sim = guarded(probe_after=0.5)
    assert sim.tick(queue_depth=FLOOD, completed=32) == 4  # at t = 0.25, capped for 0.5 s
    assert sim.until(0.75, queue_depth=FLOOD, completed=32)[-1] == (0.75, 5)
    # 5 workers do 320/s, the full +64/s. A plain step would be judged at the next
    # tick; a probe needs 2/64 + 3 * 0.125 s: four ticks. Effective: it grows on,
    # by a full step again, max(2 * 5, 5 + 4) = 10.
    path = sim.until(1.25, queue_depth=FLOOD, completed=40)
    assert path == [(0.875, 5), (1.0, 5), (1.125, 5), (1.25, 10)]


@pytest.mark.parametrize(
    ("probe_after", "max_probe_after", "gaps"),
    [
        (0.5, 4.0, [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]),
        (2.0, 60.0, [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]),
    ],
)
def test_failed_probes_double_the_back_off(
    probe_after: float, max_probe_after: float, gaps: list[float]
) -> None:
    sim = guarded(probe_after=probe_after, max_probe_after=max_probe_after)
    failures: list[float] = []
    probes: list[float] = []
    while len(probes) < len(gaps):
        before = sim.workers
        after = sim.tick(queue_depth=FLOOD, completed=32)  # never pays
        if after < before:
            failures.append(sim.time)
        elif after > before:
            assert (before, after) == (4, 5)
            probes.append(sim.time)
        assert sim.time < 1000
    assert [p - f for f, p in zip(failures, probes, strict=True)] == gaps
    # The first failure is the step to 8, judged at the next tick; every probe is
    # judged four ticks after it.
    assert failures[0] == 0.25
    assert [f - p for p, f in zip(probes, failures[1:], strict=False)] == [0.5] * (len(gaps) - 1)
    assert sim.reasons[-1].endswith("(probe)")


def test_a_successful_probe_resets_the_back_off() -> None:
    sim = guarded(probe_after=0.5)
    assert sim.tick(queue_depth=FLOOD, completed=32) == 4  # failure 1: capped 0.5 s
    assert sim.until(0.75, queue_depth=FLOOD, completed=32)[-1] == (0.75, 5)  # probe
    assert sim.until(1.25, queue_depth=FLOOD, completed=32)[-1] == (1.25, 4)  # failure 2
    assert sim.reasons[-1] == (
        "ineffective probe: 4 -> 5 workers raised throughput by 0/s of an expected 64/s; "
        "capped for 1s"
    )
    assert sim.until(2.25, queue_depth=FLOOD, completed=32)[-1] == (2.25, 5)  # probe
    path = sim.until(2.75, queue_depth=FLOOD, completed=40)  # it pays this time
    assert path == [(2.375, 5), (2.5, 5), (2.625, 5), (2.75, 10)]
    assert sim.tick(queue_depth=FLOOD, completed=40) == 5  # 10 did not: back off again
    assert sim.reasons[-1] == (
        "ineffective: 5 -> 10 workers raised throughput by 0/s of an expected 320/s; "
        "capped for 0.5s"  # from the start
    )


def test_diminishing_returns_count_as_a_failure() -> None:
    sim = guarded(probe_after=0.5)
    assert sim.tick(queue_depth=FLOOD, completed=40) == 8  # failure 1: capped 0.5 s at 8
    assert sim.until(0.75, queue_depth=FLOOD, completed=40)[-1] == (0.75, 10)  # probe
    assert sim.until(1.25, queue_depth=FLOOD, completed=40)[-1] == (1.25, 8)  # failure 2
    assert sim.reasons[-1] == (
        "ineffective probe: 8 -> 10 workers raised throughput by 0/s of an expected 80/s; "
        "capped for 1s"
    )
    path = sim.until(2.25, queue_depth=FLOOD, completed=40)
    assert {w for t, w in path if t < 2.25} == {8}
    assert path[-1] == (2.25, 10)


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
    assert count(sim.strategy.decide(again)) == 5


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
    # (as the "default-band" case above: 13, where knobs() would give 17).
    capacity = Capacity(min_workers=1, max_workers=64)
    at = sample(**{**BASE, "queue_depth": 16, "capacity": capacity})
    assert count(UtilizationStrategy().decide(at)) == 10
    changes = {"busy": 8.25, "completed": 132, "queue_depth": 16, "capacity": capacity}
    assert count(UtilizationStrategy().decide(sample(**{**BASE, **changes}))) == 13
