"""The adaptive limit's decisions, driven synchronously with tables of outcomes.

The controller is pure: told how calls ended (and with how many calls out), it moves a
fractional limit. These tests play rounds of calls at it, the way the async limiter would.
"""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowrhythm._adaptive import BACKOFF, Controller


def play_round(c: Controller, in_flight: int | None = None, duration: float = 1.0) -> None:
    """One round of clean completions: as many as the limit, with the limit in use."""
    calls = c.slots
    busy = calls if in_flight is None else in_flight
    for _ in range(calls):
        c.completed(c.epoch, busy, duration)


def test_slow_start_doubles_per_round() -> None:
    c = Controller(1, 4, 1000)
    limits = []
    for _ in range(4):
        play_round(c)
        limits.append(c.slots)
    assert limits == [8, 16, 32, 64]
    assert c.slow_start


@pytest.mark.parametrize(
    ("in_flight", "expected"),
    [
        (1, 4),  # a quarter in use: no growth at all
        (2, 4),  # half in use: would grow, but never past twice the calls out
        (3, 6),
        (4, 8),
    ],
)
def test_an_unused_limit_does_not_grow(in_flight: int, expected: int) -> None:
    c = Controller(1, 4, 1000)
    for _ in range(10):
        play_round(c, in_flight=in_flight)
    assert c.slots == expected
    assert c.limit <= 2 * in_flight or c.limit == 4


def test_a_cut_multiplies_by_the_backoff_and_ends_slow_start() -> None:
    c = Controller(1, 40, 1000)
    assert c.overloaded(c.epoch, 40, now=0.0)
    assert c.limit == pytest.approx(40 * BACKOFF)
    assert not c.slow_start
    assert c.peak == 39


@pytest.mark.parametrize(("low", "initial"), [(1, 1), (5, 6), (10, 10)])
def test_cuts_stop_at_min(low: int, initial: int) -> None:
    c = Controller(low, initial, 100)
    for step in range(20):
        c.overloaded(c.epoch, initial, now=float(step))
    assert c.slots == low
    assert c.limit == low


def test_calls_started_before_a_cut_neither_cut_again_nor_raise() -> None:
    c = Controller(1, 40, 1000)
    old = c.epoch
    assert c.overloaded(old, 40, now=0.0)
    after_cut = c.limit
    for _ in range(39):  # the rest of the round: overloads and clean completions alike
        assert not c.overloaded(old, 40, now=0.0)
        assert c.completed(old, 40, 1.0) is None
    assert c.limit == after_cut


def test_at_most_one_cut_per_round_trip() -> None:
    c = Controller(1, 40, 1000)
    play_round(c, duration=2.0)  # round trip about 2 s
    assert c.overloaded(c.epoch, 40, now=10.0)
    cut = c.limit
    # A call started after the cut and pushed back within the round trip does
    # not cut again; it only stops new calls beyond those still out.
    assert c.overloaded(c.epoch, 20, now=11.0)
    assert c.limit == 19
    assert not c.overloaded(c.epoch, 25, now=11.5)
    assert c.limit == 19 < cut
    # A round trip later, a cut again.
    assert c.overloaded(c.epoch, 19, now=12.5)
    assert c.limit == pytest.approx(19 * BACKOFF)


def test_increase_lands_on_the_last_good_limit_then_probes_slowly() -> None:
    c = Controller(1, 33, 1000)
    c.slow_start = False
    assert c.overloaded(c.epoch, 33, now=0.0)  # last good: 32
    limits = []
    for _ in range(10):
        play_round(c)
        limits.append(c.limit)
    assert limits[0] > 24.75 + 4  # most of the gap is closed in the first round
    landed = next(n for n, limit in enumerate(limits) if limit >= 32)
    assert landed <= 3
    # Above it: a quarter, a half, one, two slots per round (about: a round is as
    # many completions as the limit), so it dwells at 32 for two rounds or more.
    steps = [b - a for a, b in itertools.pairwise(limits[landed:])]
    assert steps[0] <= 0.5
    ratios = [b / a for a, b in itertools.pairwise(steps[:4])]
    assert ratios == pytest.approx([2, 2, 2], rel=0.1)
    assert all(int(limit) == 32 for limit in limits[landed : landed + 2])


def test_probing_finds_a_much_faster_service_in_a_few_rounds() -> None:
    c = Controller(1, 9, 1000)
    c.overloaded(c.epoch, 9, now=0.0)  # last good: 8
    rounds = 0
    while c.slots < 64:
        play_round(c)
        rounds += 1
    assert rounds <= 15


def test_the_limit_never_passes_max() -> None:
    c = Controller(1, 4, 10)
    for _ in range(10):
        play_round(c)
    assert c.slots == 10
    assert c.limit <= 10


@given(
    low=st.integers(1, 5),
    span=st.integers(0, 60),
    events=st.lists(
        st.tuples(st.booleans(), st.integers(0, 80), st.floats(0.0, 5.0), st.booleans()),
        max_size=300,
    ),
)
def test_the_limit_stays_within_its_bounds(
    low: int, span: int, events: list[tuple[bool, int, float, bool]]
) -> None:
    high = low + span
    c = Controller(low, low, high)
    now = 0.0
    for ok, in_flight, duration, stale in events:
        now += duration
        epoch = c.epoch - 1 if stale else c.epoch
        if ok:
            c.completed(epoch, in_flight, duration)
        else:
            c.overloaded(epoch, in_flight, now)
        assert low <= c.slots <= high
        assert low <= c.limit <= high
        assert math.isfinite(c.limit)


def test_a_cut_starts_from_the_calls_out_not_an_unused_limit() -> None:
    c = Controller(1, 40, 1000)
    assert c.overloaded(c.epoch, 20, now=0.0)  # refused with 20 calls out
    assert c.limit == pytest.approx(20 * BACKOFF)
    assert c.peak == 19


def test_calls_getting_slower_stop_the_limit_from_growing() -> None:
    c = Controller(1, 10, 1000)
    c.slow_start = False
    c.overloaded(c.epoch, 10, now=0.0)
    for _ in range(200):
        c.completed(c.epoch, 10, 1.0)  # the usual duration: 1 s
    grown = c.limit
    assert grown > 10
    reasons = [c.completed(c.epoch, 10, 4.0) for _ in range(40)]  # now 4 s each
    assert reasons[-1] is None
    assert reasons.count(None) >= 30
    assert c.limit - grown < 1


def test_refusals_at_the_same_level_make_probing_slower() -> None:
    c = Controller(1, 17, 1000)
    c.slow_start = False
    starts = []
    for step in range(8):
        c.overloaded(c.epoch, 17, now=float(step * 100))
        starts.append(c.probe)
        c.limit = 17.0  # as if it had climbed back to the same level
    assert starts[0] == 0.25
    assert starts[1:4] == [0.125, 0.0625, 0.03125]
    assert min(starts) == pytest.approx(1 / 128)
    c.limit = 40.0
    c.overloaded(c.epoch, 40, now=1000.0)  # refused somewhere else: start over
    assert c.probe == 0.25
