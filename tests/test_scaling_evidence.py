"""The guard's evidence, the same in units of the call duration for 1 ms and for 5 s calls.

Three rules, each found by running the scaling matrix in real time:

* the calls still running count as evidence of the call duration, each by the share
  of a call it has run: workers started on a tick end their calls just after a
  later tick, never on it, and the ramp must not wait a tick for that (virtual
  time, both backends: calls a hair longer than a tick ramp as fast as a tick's);
* an event loop that wakes every timer late (a loop kept busy by many millisecond
  calls, a coarse timer) makes calls longer without any limit in the processor:
  the lateness the scaler sees in its own ticks explains that much of the
  lengthening, so the guard does not probe (synchronous samples, below);
* a worker count has settled once two generations of calls have ended since it
  changed (as many as ran before the change and as ran after): the calls that
  waited behind a queue built by the old count are then behind it, and the rate
  at each count is measured without their bias (virtual time, both backends);
* while the guard locates a limit it has already found, doubt about a step down
  ends after half as many calls as elsewhere, at the higher count: every call
  below the limit costs (virtual time, both backends).
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

import pytest
from _scenarios import AUTO, Outcome, constant, fixed, saturating

from flowrhythm import ScalingSample, UtilizationCapacity, UtilizationStrategy
from flowrhythm.testing import run_virtual

BACKENDS = ["asyncio", "trio"]
SAMPLING = 0.125  # exact in binary


def run(backend: str, *args: Any, **kwargs: Any) -> Outcome:
    outcome: Outcome = run_virtual(functools.partial(saturating, *args, **kwargs), backend=backend)  # type: ignore[arg-type]
    return outcome


# -- calls still running (virtual time) ---------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call", [0.001, 0.1, 5.0])
def test_calls_ending_just_after_a_tick_ramp_as_fast_as_on_it(backend: str, call: float) -> None:
    items = 3200
    times = []
    for duration in (call, call * 1.001):
        auto = run(backend, constant(duration), AUTO, items)
        fixed32 = run(backend, constant(duration), fixed(32), items)
        window = max(call, 0.1)
        t90 = auto.time_to(0.9 * fixed32.throughput, window)
        assert t90 <= max(0.5, 3 * call) + 1e-9
        times.append((t90 / duration, [(round(e.time, 6), e.new) for e in auto.events]))
    # The same ramp, at the same ticks, in the same number of call durations.
    assert times[0][1] == times[1][1]
    assert times[0][0] == pytest.approx(times[1][0], abs=0.1)


# -- the event loop's lateness (synchronous) --------------------------------------------------


def saturated_ticks(
    call: float,
    late: float,
    sampling: float,
    ticks: int,
    workers: int = 32,
    duration: float | None = None,
) -> list[str]:
    """``ticks`` ticks of a saturated job whose calls took ``call`` at first and now
    take ``duration`` (``call + late`` unless given), its scaler woken ``late`` after
    every ``SAMPLING`` from the second tick on; the reasons the strategy gave."""
    capacity = UtilizationCapacity(min_workers=1, max_workers=32, sampling=sampling)
    strategy = UtilizationStrategy()
    interval = SAMPLING + late
    duration = call + late if duration is None else duration
    reasons = []
    ended_total = 0
    time = 0.0
    for i in range(ticks):
        # The first tick on time, its calls as long as the first ones: a loop is not
        # late before the job has grown.
        this, took = (interval, duration) if i else (SAMPLING, call)
        time += this
        ended = max(round(workers * this / took), 1)
        ended_total += ended
        log = math.log(took)
        decision = strategy.decide(
            ScalingSample(
                job="job",
                time=time,
                interval=this,
                workers=workers,
                min_workers=1,
                max_workers=32,
                active=workers * this,
                idle=0.0,
                blocked=0.0,
                completed=ended,
                arrivals=ended,
                queue_depth=10_000,
                queue_length=128,
                capacity=capacity,
                calls=ended,
                call_seconds=ended * took,
                call_squares=ended * took * took,
                call_logs=ended * log,
                call_log_squares=ended * log * log,
                first_calls=32,
                first_call_logs=32 * math.log(call),
                first_call_log_squares=32 * math.log(call) ** 2,
                total_completed=ended_total,
                total_received=ended_total,
            )
        )
        if isinstance(decision, tuple):
            reasons.append(decision[1])
            workers = decision[0]
    return reasons


@pytest.mark.parametrize("call", [0.001, 5.0])
def test_calls_longer_by_the_loops_lateness_are_not_a_hidden_limit(call: float) -> None:
    # Every tick comes one call duration late, and calls take twice as long as the
    # first ones did: the loop, not the processor. No probe, over 400 ticks.
    assert saturated_ticks(call, late=call, sampling=SAMPLING, ticks=400) == []


@pytest.mark.parametrize("call", [0.001, 5.0])
def test_the_same_lengthening_on_time_sets_off_a_probe(call: float) -> None:
    # The same samples, but the scaler was asked for ticks that long: nothing was
    # late, so calls twice as long are evidence of a limit.
    reasons = saturated_ticks(call, late=call, sampling=SAMPLING + call, ticks=400)
    assert reasons
    assert reasons[0].startswith("probe: calls take 2.0x as long at 32 workers as they did")


@pytest.mark.parametrize("call", [0.001, 5.0])
def test_lateness_explains_only_its_share_of_the_lengthening(call: float) -> None:
    # Ticks a call duration late, calls four times as long as the first ones: the
    # loop explains twice, a limit the rest. The probe counts only the rest.
    reasons = saturated_ticks(call, late=call, sampling=SAMPLING, ticks=400, duration=4 * call)
    assert reasons
    assert reasons[0] == (
        "probe: calls take 2.0x as long at 32 workers as they did; "
        "about 16 seem to run at once: trying 20"
    )


# -- settling, and locating a limit (virtual time) -------------------------------------------


PLATEAU = re.compile(r"limit: (\d+) workers gave (\S+)/s where (\d+) gave (\S+)/s")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("call", "items"), [(0.001, 40_000), (0.5, 960)])
def test_each_count_is_judged_once_the_queue_it_inherited_is_gone(
    backend: str, call: float, items: int
) -> None:
    # Behind a hidden Semaphore(8) every count of 8 or more runs 8 calls at once:
    # each plateau verdict on the way down measures the same rate at both counts
    # (judged once as many calls ended as ran before and after the change; with only
    # as many as ran before, 15 workers gave 14.9/s where 20 gave 15.9/s at 500 ms).
    auto = run(backend, constant(call), AUTO, items, limit=8)
    verdicts = [PLATEAU.match(e.reason) for e in auto.events]
    plateaus = [m for m in verdicts if m is not None]
    assert len(plateaus) >= 2
    for m in plateaus:
        assert int(m[1]) >= 8
        # (within 2%: trio shuffles the order of tasks woken together; a call that
        # still waited behind the old count's queue would take 6% off and more)
        assert float(m[2]) == pytest.approx(float(m[4]), rel=0.02), m[0]


def probe_below(outcome: Outcome) -> tuple[float, float]:
    """When the guard stepped below the limit it had found, and when it knew."""
    found = next(i for i, e in enumerate(outcome.events) if e.reason.startswith("limit found"))
    probe = outcome.events[found - 1]
    assert probe.reason.startswith("probe: a limit at")
    assert probe.new < 8 <= probe.old
    return probe.time, outcome.events[found].time


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("call", "items"), [(0.001, 40_000), (0.5, 960)])
def test_a_step_below_a_found_limit_is_called_off_within_a_few_calls(
    backend: str, call: float, items: int
) -> None:
    auto = run(backend, constant(call), AUTO, items, limit=8)
    start, end = probe_below(auto)
    # Doubt ends after 4 * 32 calls at the lower count (7 calls at once: 128 / 7 call
    # durations), plus its settling (two generations of calls, and a service time);
    # or the scaler's ticks (0.1 s) the evidence needs. It took 256 calls, 37 call
    # durations of 500 ms, before.
    assert end - start <= max((128 / 7 + 3) * call, 3 * 0.1) + 1e-9
    assert auto.final >= 8


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("call", "items"), [(0.001, 40_000), (5.0, 1200)])
def test_a_service_that_congests_later_is_found_at_1_ms_and_at_5_s(
    backend: str, call: float, items: int
) -> None:
    # The service takes 8 calls at once only after its first 32: those are the job's
    # reference (a ramp of 5 s calls starts all 32 before any ends, so a limit there
    # from the start is in the reference too; the guard cannot see it).
    auto = run(backend, constant(call), AUTO, items, limit=8, limit_after=32)
    assert auto.firings()
    # Below 17 workers within 100 call durations (or five of the scaler's ticks), and
    # there ever after; never below what the limit lets through.
    assert all(e.new <= 16 for e in auto.events if e.time >= max(100 * call, 0.5))
    assert auto.final >= 8
    fixed32 = run(backend, constant(call), fixed(32), items, limit=8, limit_after=32)
    assert auto.throughput >= 0.95 * fixed32.throughput
