"""Ordered jobs: exact order however the workers come and go, and a bounded window.

The reorder window holds at most ``2 x max_workers`` inputs taken but not yet
released. Every input is numbered the instant it leaves the job's queue, on
every path: taken by a worker without waiting, after waiting, or by the doorman
of a job woken from zero workers while its first worker is still opening.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest
from _support import HANG_GUARD, collect, run, wait_until
from anyio.lowlevel import checkpoint

import flowrhythm._run._ordered
from flowrhythm import (
    Capacity,
    ErrorItem,
    Flow,
    FlowStats,
    ProcessorFactory,
    ScalingSample,
    StopProcessing,
    UtilizationCapacity,
)

pytestmark = pytest.mark.anyio


class Flapping:
    """Every tick, the other extreme: max_workers, then min_workers (retirements galore)."""

    def __init__(self) -> None:
        self.ticks = 0

    def decide(self, sample: ScalingSample) -> int:
        self.ticks += 1
        return sample.max_workers if self.ticks % 2 else sample.min_workers


class Grow:
    """Always the most workers."""

    def decide(self, sample: ScalingSample) -> int:
        return sample.max_workers


class Sink:
    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def __call__(self, item: Any) -> None:
        self.seen.append(item)


def assert_balanced(stats: FlowStats) -> None:
    for name, job in stats.jobs.items():
        assert job.received == job.completed + job.skipped + job.errored, (name, job)


class _WatchedParking(dict[int, Any]):
    """A reorder window's ``parked`` dict that remembers its largest size."""

    worst = 0

    def __setitem__(self, key: int, value: Any) -> None:
        super().__setitem__(key, value)
        self.worst = max(self.worst, len(self))


@pytest.fixture
def parked(monkeypatch: pytest.MonkeyPatch) -> list[_WatchedParking]:
    """The parked outputs of every reorder window made while the test runs."""
    windows: list[_WatchedParking] = []
    original_init = flowrhythm._run._ordered.Reorder.__init__

    def watched_init(self: flowrhythm._run._ordered.Reorder, *args: Any) -> None:
        original_init(self, *args)
        self.parked = _WatchedParking()
        windows.append(self.parked)

    monkeypatch.setattr(flowrhythm._run._ordered.Reorder, "__init__", watched_init)
    return windows


# -- numbered as they leave the queue ------------------------------------------------------------


async def test_the_input_that_wakes_a_job_from_zero_stays_first() -> None:
    """The doorman numbers the waking input before the new worker has opened.

    The first worker's factory opens only once other workers (started meanwhile by the
    scaler) have taken later inputs: those must still come out after it.
    """
    opened = 0
    others_took = anyio.Event()
    flow_stats: list[Any] = []

    @contextlib.asynccontextmanager
    async def slow_first_open() -> AsyncIterator[Callable[[int], Any]]:
        nonlocal opened
        opened += 1
        if opened == 1:
            await others_took.wait()

        async def identity(item: int) -> int:
            if flow_stats and flow_stats[0]().jobs["ord"].received >= 5:
                others_took.set()
            return item

        yield identity

    capacity = UtilizationCapacity(
        min_workers=0, max_workers=4, queue_length=100, sampling=0.001, strategy=Grow
    )
    flow = Flow().add(
        ProcessorFactory(slow_first_open), capacity=capacity, name="ord", ordered=True
    )
    outputs: list[int] = []
    with anyio.fail_after(HANG_GUARD):
        async with flow.stream(range(40)) as results:
            flow_stats.append(results.stats)
            outputs = [out async for out in results]
    assert outputs == list(range(40))
    assert opened > 1  # other workers did start while the first one was opening


@pytest.mark.parametrize("seed", range(6))
async def test_four_fixed_workers_with_short_sampling_keep_order(seed: int) -> None:
    rng = random.Random(seed)

    async def jitter(item: int) -> int:
        for _ in range(rng.randrange(0, 4)):
            await checkpoint()
        return item

    capacity = UtilizationCapacity(
        min_workers=0,
        max_workers=4,
        initial_workers=4,
        queue_length=8,
        sampling=0.0001,
        strategy=Flapping,
    )
    flow = Flow().add(jitter, capacity=capacity, name="ord", ordered=True)
    assert await collect(flow, range(500)) == list(range(500))


async def test_an_item_held_for_a_starting_worker_is_counted_when_the_run_is_cancelled() -> None:
    """The doorman's hand-over: the run is stopped while the new worker is still opening."""
    never = anyio.Event()

    @contextlib.asynccontextmanager
    async def never_opens() -> AsyncIterator[Callable[[int], Any]]:
        await never.wait()

        async def identity(item: int) -> int:  # pragma: no cover - never opened
            return item

        yield identity  # pragma: no cover

    for ordered in (False, True):
        capacity = Capacity(min_workers=0, max_workers=2, queue_length=4)
        flow = Flow().add(
            ProcessorFactory(never_opens), capacity=capacity, name="job", ordered=ordered
        )
        with anyio.fail_after(HANG_GUARD):
            async with flow.start() as running:
                await running.send(1)
                await wait_until(lambda: running.stats().jobs["job"].workers == 1)
                await anyio.wait_all_tasks_blocked()
                running.stop()
        stats = running.stats()
        job = stats.jobs["job"]
        assert stats.items_in == 1
        assert (job.received, job.in_flight, job.queue_depth) == (1, 1, 0), ordered


# -- exact order under churn, with the window bounded ----------------------------------------------


@pytest.mark.parametrize("seed", range(4))
async def test_exact_order_under_random_delays_retirements_and_wake_from_zero(
    seed: int, parked: list[_WatchedParking]
) -> None:
    rng = random.Random(seed)
    workers = 4
    worst_in_flight = 0
    errors: list[ErrorItem] = []
    stats_of: list[Callable[[], FlowStats]] = []

    async def jitter(item: int) -> int:
        nonlocal worst_in_flight
        if stats_of:
            job = stats_of[0]().jobs["ord"]
            worst_in_flight = max(worst_in_flight, job.in_flight)
        for _ in range(rng.choice([0, 0, 0, 1, 3, 8])):
            await checkpoint()
        if item % 17 == 3:
            raise StopProcessing
        if item % 19 == 5:
            raise ValueError(item)
        return item

    async def report(error: ErrorItem) -> None:
        errors.append(error)

    capacity = UtilizationCapacity(
        min_workers=0, max_workers=workers, queue_length=4, sampling=0.0005, strategy=Flapping
    )
    flow = Flow().add(jitter, capacity=capacity, name="ord", ordered=True)
    flow.add_error_job(report)

    async def trickle() -> AsyncIterator[int]:
        for item in range(600):
            if rng.random() < 0.02:  # pauses long enough for the job to fall back to zero
                await anyio.sleep(0.002)
            yield item

    with anyio.fail_after(HANG_GUARD):
        async with flow.stream(trickle()) as results:
            stats_of.append(results.stats)
            outputs = [out async for out in results]
        stats = results.stats()
    expected = [i for i in range(600) if i % 17 != 3 and i % 19 != 5]
    assert outputs == expected
    assert sorted(e.item for e in errors) == [i for i in range(600) if i % 17 != 3 and i % 19 == 5]
    assert_balanced(stats)
    # The window: at most 2 x max_workers inputs taken and not released, and so at most
    # that many parked (the head's own entry counted as it is released).
    assert worst_in_flight <= 2 * workers
    (window,) = parked
    assert window.worst <= 2 * workers
    assert window == {}


async def test_a_stuck_head_stops_the_job_at_twice_max_workers(
    parked: list[_WatchedParking],
) -> None:
    release = anyio.Event()
    sink = Sink()

    async def stuck_head(item: int) -> int:
        if item == 0:
            await release.wait()
        return item

    workers = 3
    capacity = Capacity(min_workers=workers, max_workers=workers, queue_length=5)
    flow = Flow().add(stuck_head, capacity=capacity, name="ord", ordered=True).add(sink)
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running, anyio.create_task_group() as tg:

            async def feed() -> None:
                for item in range(200):
                    await running.send(item)
                await running.close()

            tg.start_soon(feed)
            await wait_until(lambda: running.stats().jobs["ord"].blocked == workers - 1)
            await anyio.wait_all_tasks_blocked()
            job = running.stats().jobs["ord"]
            assert job.received == 2 * workers  # the head and 5 finished behind it
            assert job.queue_depth == 5
            (window,) = parked
            assert len(window) == 2 * workers - 1
            assert sink.seen == []
            release.set()
        stats = await running.join()
    assert sink.seen == list(range(200))
    assert_balanced(stats)


async def test_one_worker_keeps_order_by_itself_through_retirements(
    parked: list[_WatchedParking],
) -> None:
    rng = random.Random(1)

    async def jitter(item: int) -> int:
        for _ in range(rng.randrange(0, 3)):
            await checkpoint()
        return item

    capacity = UtilizationCapacity(
        min_workers=0, max_workers=1, queue_length=2, sampling=0.0005, strategy=Flapping
    )
    flow = Flow().add(jitter, capacity=capacity, name="ord", ordered=True)
    stats = await run(flow.add(Sink(), name="sink"), range(300))
    assert stats.jobs["sink"].completed == 300
    assert parked == []  # no reorder window: one worker is in order by itself
    assert await collect(Flow().add(jitter, capacity=capacity, ordered=True), range(300)) == list(
        range(300)
    )
