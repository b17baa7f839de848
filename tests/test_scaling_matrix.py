"""The default scaling against fixed pools, on the workloads users bring, in virtual time.

Every scenario runs the default ``UtilizationCapacity(min_workers=1, max_workers=32,
queue_length=128)`` and fixed pools on the same calls, on asyncio and on trio, with
``flowrhythm.testing.run_virtual``: call durations are ``anyio.sleep``s, so every time
and count here is exact, and the assertions are about behaviour, not the machine.

These take seconds of real time in all (a one-millisecond job must run for a few
seconds to be judged over many of its scaler's ticks); they are marked ``matrix``
and run with the rest of the suite (deselect them with ``-m "not matrix"``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import pytest
from _scenarios import (
    AUTO,
    Outcome,
    backing_off,
    chain,
    constant,
    downstream_bottleneck,
    fixed,
    lognormal,
    saturating,
    step_load,
)
from _support import VIRTUAL_BACKENDS

from flowrhythm.testing import run_virtual

pytestmark = pytest.mark.matrix

DURATIONS = [0.001, 0.01, 0.1, 1.0, 5.0]


def run(backend: str, scenario: Callable[..., Any], *args: Any, **kwargs: Any) -> Outcome:
    outcome: Outcome = run_virtual(functools.partial(scenario, *args, **kwargs), backend=backend)  # type: ignore[arg-type]
    return outcome


def calls_for(seconds: float) -> int:
    """Calls for 32 workers to run ``max(100 call durations, 2 s)``: long enough for the
    ratio to be judged over many call durations and many scaler ticks (a job starts
    with one worker and its scaler first decides after 0.1 s, which is 100 calls of
    1 ms)."""
    return 32 * math.ceil(max(100.0, 2.0 / seconds))


# -- saturating sources --------------------------------------------------------------------


def check_saturating(auto: Outcome, fixed32: Outcome, seconds: float) -> None:
    assert auto.throughput >= 0.95 * fixed32.throughput
    window = max(seconds, 0.1)
    assert auto.time_to(0.9 * fixed32.throughput, window) <= max(0.5, 3 * seconds) + 1e-9
    assert auto.firings() == []


@pytest.mark.parametrize("backend", VIRTUAL_BACKENDS)
@pytest.mark.parametrize("seconds", DURATIONS)
def test_constant_calls_reach_the_rate_of_a_fixed_pool(backend: str, seconds: float) -> None:
    items = calls_for(seconds)
    auto = run(backend, saturating, constant(seconds), AUTO, items)
    fixed32 = run(backend, saturating, constant(seconds), fixed(32), items)
    check_saturating(auto, fixed32, seconds)
    assert auto.peak == 32


@pytest.mark.parametrize("backend", VIRTUAL_BACKENDS)
@pytest.mark.parametrize("seconds", DURATIONS)
def test_heavy_tailed_calls_reach_the_rate_of_a_fixed_pool(backend: str, seconds: float) -> None:
    # Log-normal with sigma = 1 and this mean: a tenth of the calls take over 2.2x the
    # mean, one in a hundred over 5.6x.
    items = calls_for(seconds)
    auto = run(backend, saturating, lognormal(seconds), AUTO, items, seed=7)
    fixed32 = run(backend, saturating, lognormal(seconds), fixed(32), items, seed=7)
    check_saturating(auto, fixed32, seconds)


# -- hidden limits ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", VIRTUAL_BACKENDS)
def test_a_hidden_limit_on_fast_calls_is_found(backend: str) -> None:
    # 10 ms calls inside an anyio.Semaphore(8) the scaler knows nothing about.
    items = 8000  # 10 s at 8 calls at once
    auto = run(backend, saturating, constant(0.01), AUTO, items, limit=8)
    fixed32 = run(backend, saturating, constant(0.01), fixed(32), items, limit=8)
    assert auto.throughput >= 0.95 * fixed32.throughput
    assert auto.firings()
    assert all(e.reason for e in auto.events)
    # Steady state: after the first second (100 call durations), never above 16.
    assert all(e.new <= 16 for e in auto.events if e.time >= 1.0)
    assert auto.final <= 16
    assert auto.final >= 8  # and not below what the limit lets through


@pytest.mark.parametrize("backend", VIRTUAL_BACKENDS)
def test_a_hidden_limit_on_slow_calls_is_found_within_100_call_durations(backend: str) -> None:
    # 500 ms calls inside an anyio.Semaphore(8): at 32 workers every call takes 2 s.
    items = 1200  # 75 s at 16 calls a second
    auto = run(backend, saturating, constant(0.5), AUTO, items, limit=8)
    fixed32 = run(backend, saturating, constant(0.5), fixed(32), items, limit=8)
    assert auto.throughput >= 0.95 * fixed32.throughput
    assert auto.workers_at(50.0) <= 16  # 100 call durations of 500 ms
    assert all(e.new <= 16 for e in auto.events if e.time >= 50.0)
    assert auto.firings()
    assert auto.final >= 8


@pytest.mark.parametrize("backend", VIRTUAL_BACKENDS)
@pytest.mark.parametrize("seconds", [0.01, 0.1, 1.0])
def test_without_a_hidden_limit_the_guard_never_fires(backend: str, seconds: float) -> None:
    # Heavy-tailed calls over 20 seeds: noise must never pass for a plateau.
    items = 32 * 50
    for seed in range(20):
        auto = run(backend, saturating, lognormal(seconds), AUTO, items, seed=seed)
        assert auto.firings() == [], (seed, auto.firings())
        assert auto.final == 32, (seed, auto.events)


# -- shapes of flows --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", VIRTUAL_BACKENDS)
def test_a_job_feeding_a_fixed_bottleneck_stays_small(backend: str) -> None:
    # 100 ms calls feeding a job fixed at 4 workers of 100 ms: 4 upstream are enough.
    auto = run(backend, downstream_bottleneck, AUTO, 1000)
    fixed32 = run(backend, downstream_bottleneck, fixed(32), 1000)
    assert auto.peak <= 8
    assert auto.throughput >= 0.95 * fixed32.throughput


@pytest.mark.parametrize("backend", VIRTUAL_BACKENDS)
def test_a_step_in_load_is_followed_up_and_down(backend: str) -> None:
    # 500 ms calls at 5/s for 20 s, 50/s for 20 s, then 5/s for 40 s.
    phases = [(5.0, 20.0), (50.0, 20.0), (5.0, 40.0)]
    auto = run(backend, step_load, AUTO, phases)
    fixed32 = run(backend, step_load, fixed(32), phases)
    # 50/s of 500 ms calls keep 25 workers busy: the job gets there within 3 s.
    assert auto.workers_at(23.0) >= 25
    # It shrinks only after the load falls, and after the cooldown (1 s).
    shrinks = [e for e in auto.events if e.new < e.old]
    assert shrinks
    assert min(e.time for e in shrinks) >= 40.0 + AUTO.cooldown
    # ... and never below what 5/s needs (2.5 busy workers, at the target utilization).
    assert auto.final >= 3
    assert min(e.new for e in auto.events if e.time >= 20.0) >= 3
    # Calls waited no longer than with 32 workers all along, give or take a call.
    latency = sorted(auto.latencies)  # type: ignore[attr-defined]
    latency32 = sorted(fixed32.latencies)  # type: ignore[attr-defined]
    assert latency[int(0.95 * len(latency))] <= latency32[int(0.95 * len(latency32))] + 0.5
    assert len(auto.ends) == len(fixed32.ends)


@pytest.mark.parametrize("backend", VIRTUAL_BACKENDS)
def test_a_chain_of_three_jobs_keeps_up_with_fixed_pools(backend: str) -> None:
    # 5 ms, 200 ms and 50 ms: the 200 ms job sets the pace and must grow to 32.
    items = 3000
    auto = run(backend, chain, [AUTO, AUTO, AUTO], items)
    fixed32 = run(backend, chain, [fixed(32)] * 3, items)
    assert auto.throughput >= 0.95 * fixed32.throughput
    assert auto.peak == 32


@pytest.mark.parametrize("backend", VIRTUAL_BACKENDS)
def test_calls_that_fail_and_back_off_do_not_grow_the_job(backend: str) -> None:
    # Every call fails at once and waits in a retry's back-off: waiting is not work.
    auto = run(backend, backing_off, AUTO, 64)
    assert auto.peak == 1
    assert len(auto.ends) == 64
