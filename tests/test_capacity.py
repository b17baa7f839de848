"""Capacity / UtilizationCapacity validation and the capacity decorators."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from _support import HANG_GUARD, wait_until

from flowrhythm import (
    Capacity,
    Flow,
    Strategy,
    UtilizationCapacity,
    job_capacity,
    job_name,
    workers,
)

Processor = Callable[[int], Awaitable[int]]

# -- invalid values: ValueError naming the field(s) --------------------------------------

INVALID_CAPACITY: list[Any] = [
    pytest.param({"min_workers": -1}, ("min_workers",), id="negative-min"),
    pytest.param({"max_workers": -1}, ("max_workers",), id="negative-max"),
    pytest.param({"max_workers": 0}, ("max_workers",), id="zero-max"),
    pytest.param({"initial_workers": -1}, ("initial_workers",), id="negative-initial"),
    pytest.param({"queue_length": -1}, ("queue_length",), id="negative-queue"),
    pytest.param(
        {"min_workers": 3, "max_workers": 2}, ("min_workers", "max_workers"), id="min-above-max"
    ),
    pytest.param(
        {"min_workers": 1, "max_workers": 3, "initial_workers": 4},
        ("initial_workers",),
        id="initial-above-max",
    ),
    pytest.param(
        {"min_workers": 2, "max_workers": 3, "initial_workers": 1},
        ("initial_workers",),
        id="initial-below-min",
    ),
]

INVALID_UTILIZATION: list[Any] = [
    pytest.param({"lower_threshold": -0.1}, ("lower_threshold",), id="lower-negative"),
    pytest.param({"lower_threshold": 1.5}, ("lower_threshold",), id="lower-above-1"),
    pytest.param({"lower_threshold": math.nan}, ("lower_threshold",), id="lower-nan"),
    pytest.param(
        {"lower_threshold": 0.0, "upper_threshold": -0.1},
        ("upper_threshold",),
        id="upper-negative",
    ),
    pytest.param({"upper_threshold": 1.1}, ("upper_threshold",), id="upper-above-1"),
    pytest.param(
        {"lower_threshold": 0.5, "upper_threshold": 0.5},
        ("lower_threshold", "upper_threshold"),
        id="lower-equals-upper",
    ),
    pytest.param(
        {"lower_threshold": 0.6, "upper_threshold": 0.4},
        ("lower_threshold", "upper_threshold"),
        id="lower-above-upper",
    ),
    pytest.param({"cooldown": -1}, ("cooldown",), id="negative-cooldown"),
    pytest.param({"cooldown": -0.001}, ("cooldown",), id="negative-float-cooldown"),
    pytest.param({"sampling": 0}, ("sampling",), id="zero-sampling"),
    pytest.param({"sampling": -0.5}, ("sampling",), id="negative-sampling"),
    pytest.param({"dampening": -0.1}, ("dampening",), id="negative-dampening"),
    pytest.param({"dampening": 1.0}, ("dampening",), id="dampening-1"),
    pytest.param({"dampening": 1.5}, ("dampening",), id="dampening-above-1"),
    # UtilizationCapacity is a Capacity: the worker checks apply too.
    pytest.param(
        {"min_workers": 3, "max_workers": 2}, ("min_workers", "max_workers"), id="min-above-max"
    ),
    pytest.param({"queue_length": -1}, ("queue_length",), id="negative-queue"),
]


@pytest.mark.parametrize(("kwargs", "fields"), INVALID_CAPACITY)
def test_capacity_rejects_invalid_values(kwargs: dict[str, Any], fields: tuple[str, ...]) -> None:
    with pytest.raises(ValueError) as excinfo:  # noqa: PT011 - the message is checked below
        Capacity(**kwargs)
    for field in fields:
        assert field in str(excinfo.value)


@pytest.mark.parametrize(("kwargs", "fields"), INVALID_CAPACITY + INVALID_UTILIZATION)
def test_utilization_capacity_rejects_invalid_values(
    kwargs: dict[str, Any], fields: tuple[str, ...]
) -> None:
    with pytest.raises(ValueError) as excinfo:  # noqa: PT011 - the message is checked below
        UtilizationCapacity(**kwargs)
    for field in fields:
        assert field in str(excinfo.value)


# -- wrong types: TypeError naming the field ---------------------------------------------

WRONG_COUNT_TYPES: list[Any] = [
    pytest.param(True, id="bool-true"),
    pytest.param(False, id="bool-false"),
    pytest.param(2.0, id="float"),
    pytest.param("2", id="str"),
    pytest.param(None, id="none"),
]


@pytest.mark.parametrize(
    "field", ["min_workers", "max_workers", "initial_workers", "queue_length"]
)
@pytest.mark.parametrize("value", WRONG_COUNT_TYPES)
def test_capacity_counts_must_be_ints(field: str, value: Any) -> None:
    with pytest.raises(TypeError, match=field):
        Capacity(**{field: value})


@pytest.mark.parametrize(
    "field", ["lower_threshold", "upper_threshold", "cooldown", "sampling", "dampening"]
)
@pytest.mark.parametrize("value", ["0.5", None, [0.5]])
def test_utilization_numbers_must_be_numbers(field: str, value: Any) -> None:
    with pytest.raises(TypeError, match=field):
        UtilizationCapacity(**{field: value})


# -- valid values and defaults -----------------------------------------------------------


def test_initial_workers_defaults_to_min_workers() -> None:
    assert Capacity(min_workers=2, max_workers=5).initial_workers == 2
    assert Capacity(min_workers=0, max_workers=3).initial_workers == 0
    assert UtilizationCapacity(min_workers=3, max_workers=4).initial_workers == 3


def test_explicit_fields_are_kept() -> None:
    capacity = Capacity(min_workers=1, max_workers=6, initial_workers=4, queue_length=7)
    assert capacity.min_workers == 1
    assert capacity.max_workers == 6
    assert capacity.initial_workers == 4
    assert capacity.queue_length == 7


def test_boundary_values_are_accepted() -> None:
    Capacity(min_workers=0, max_workers=1, initial_workers=0, queue_length=0)
    Capacity(min_workers=4, max_workers=4, initial_workers=4)
    capacity = UtilizationCapacity(
        lower_threshold=0.0, upper_threshold=1.0, cooldown=0, sampling=0.001, dampening=0.0
    )
    assert capacity.lower_threshold == 0.0
    assert capacity.upper_threshold == 1.0
    assert capacity.cooldown == 0
    assert capacity.dampening == 0.0


def test_utilization_capacity_is_a_capacity() -> None:
    capacity = UtilizationCapacity(min_workers=1, max_workers=3, cooldown=2.5)
    assert isinstance(capacity, Capacity)
    assert capacity.max_workers == 3
    assert capacity.cooldown == 2.5


def test_capacity_is_immutable() -> None:
    capacity = Capacity(min_workers=1, max_workers=2)
    with pytest.raises(AttributeError):
        capacity.max_workers = 5  # type: ignore[misc]
    assert capacity.max_workers == 2


def test_utilization_is_a_strategy() -> None:
    assert isinstance(Strategy.UTILIZATION, Strategy)


# -- decorators --------------------------------------------------------------------------


async def _double(item: int) -> int:
    return item * 2


@pytest.mark.parametrize(
    "decorator",
    [
        pytest.param(job_name("doubler"), id="job_name"),
        pytest.param(job_capacity(Capacity(min_workers=2, max_workers=2)), id="job_capacity"),
        pytest.param(workers(min=1, max=3, initial=2), id="workers"),
    ],
)
def test_decorators_keep_the_processor_usable(decorator: Any) -> None:
    async def process(item: int) -> int:
        return item + 1

    decorated = decorator(process)
    assert anyio.run(decorated, 41) == 42


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"min": 3, "max": 2}, "min", id="min-above-max"),
        pytest.param({"min": -1}, "min", id="negative-min"),
        pytest.param({"min": 0, "max": 0}, "max", id="zero-max"),
        pytest.param({"min": 1, "max": 3, "initial": 5}, "initial", id="initial-above-max"),
        pytest.param({"min": 2, "max": 3, "initial": 1}, "initial", id="initial-below-min"),
    ],
)
def test_workers_rejects_invalid_counts(kwargs: dict[str, int], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        workers(**kwargs)(_double)


@pytest.mark.parametrize("value", WRONG_COUNT_TYPES)
def test_workers_rejects_wrong_types(value: object) -> None:
    with pytest.raises(TypeError, match="min"):
        workers(min=value)(_double)  # type: ignore[arg-type]


def test_job_capacity_rejects_a_non_capacity() -> None:
    with pytest.raises(TypeError):
        job_capacity({"min_workers": 2})(_double)  # type: ignore[arg-type]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("decorator", "expected"),
    [
        pytest.param(workers(min=2, max=5, initial=3), (2, 5), id="workers"),
        pytest.param(
            job_capacity(Capacity(min_workers=1, max_workers=4, queue_length=3)),
            (1, 4),
            id="job_capacity",
        ),
        pytest.param(workers(min=3, max=3), (3, 3), id="workers-fixed"),
    ],
)
async def test_decorated_capacity_reaches_the_job(
    decorator: Callable[[Processor], Processor], expected: tuple[int, int]
) -> None:
    async def process(item: int) -> int:
        return item

    work = decorator(process)

    with anyio.fail_after(HANG_GUARD):
        stats = await Flow().add(work, name="work").run(range(5))
    job = stats.jobs["work"]
    assert (job.min_workers, job.max_workers) == expected


# -- capacities in a running flow ----------------------------------------------------------


@pytest.mark.anyio
async def test_job_starts_with_initial_workers() -> None:
    release = anyio.Event()

    @workers(min=1, max=3, initial=3)
    async def hold(item: int) -> int:
        await release.wait()
        return item

    flow = Flow().add(hold, name="hold")
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            for item in range(3):
                await running.send(item)
            await wait_until(lambda: running.stats().jobs["hold"].active == 3)
            job = running.stats().jobs["hold"]
            # All three were there from the start: none was added by scaling.
            assert job.workers == 3
            assert job.scale_ups == 0
            release.set()


@pytest.mark.anyio
@pytest.mark.parametrize(
    "capacity",
    [
        pytest.param(Capacity(min_workers=0, max_workers=1), id="min-0"),
        pytest.param(
            Capacity(min_workers=0, max_workers=3, queue_length=0), id="min-0-rendezvous"
        ),
        pytest.param(Capacity(min_workers=1, max_workers=4, queue_length=2), id="scaling"),
        pytest.param(
            UtilizationCapacity(min_workers=1, max_workers=4, sampling=0.01, cooldown=0.01),
            id="utilization",
        ),
        pytest.param(Capacity(min_workers=2, max_workers=2, queue_length=0), id="fixed"),
    ],
)
async def test_every_capacity_processes_every_item(capacity: Capacity) -> None:
    async def work(item: int) -> int:
        await anyio.lowlevel.checkpoint()
        return item * 3

    flow = Flow().add(work, capacity=capacity, name="work")
    with anyio.fail_after(HANG_GUARD):
        async with flow.stream(range(40)) as results:
            outputs = [out async for out in results]
    assert Counter(outputs) == Counter(item * 3 for item in range(40))
