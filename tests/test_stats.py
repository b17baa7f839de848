"""Metrics: FlowStats / JobStats snapshots, live worker states, the counter invariant."""

from __future__ import annotations

import anyio
import pytest
from _support import (
    HANG_GUARD,
    inc,
    run,
    wait_until,
)

from flowrhythm import (
    Capacity,
    ErrorItem,
    Flow,
    FlowStats,
    JobStats,
    RouteToErrorQueue,
    StopProcessing,
)

pytestmark = pytest.mark.anyio

FIELDS = (
    "workers",
    "idle",
    "active",
    "blocked",
    "queue_depth",
    "received",
    "completed",
    "skipped",
    "errored",
    "scale_ups",
    "scale_downs",
)


async def sort_out(item: int) -> int:
    if item % 5 == 0:
        raise StopProcessing
    if item % 5 == 1:
        raise RouteToErrorQueue
    if item % 5 == 2:
        raise ValueError(item)
    return item


async def report(error: ErrorItem) -> None:
    await anyio.lowlevel.checkpoint()


def mixed_flow() -> Flow:
    return (
        Flow()
        .add(inc, capacity=Capacity(min_workers=2, max_workers=2), name="inc")
        .add(sort_out, capacity=Capacity(min_workers=3, max_workers=3, queue_length=1))
        .add(inc, capacity=Capacity(min_workers=1, max_workers=1), name="last")
        .add_error_job(report, name="errors")
    )


async def test_stats_cover_every_job_with_every_field() -> None:
    stats = await run(mixed_flow(), range(20))
    assert isinstance(stats, FlowStats)
    assert set(stats.jobs) == {"inc", "sort_out", "last", "errors"}
    for name, job in stats.jobs.items():
        assert isinstance(job, JobStats), name
        for field in FIELDS:
            value = getattr(job, field)
            assert isinstance(value, int), (name, field)
            assert not isinstance(value, bool), (name, field)
            assert value >= 0, (name, field)


async def test_counters_after_a_normal_run() -> None:
    stats = await run(mixed_flow(), range(50))
    # sort_out sees 1..50: per residue class of 5, ten items each.
    counts = {
        name: (job.received, job.completed, job.skipped, job.errored)
        for name, job in stats.jobs.items()
    }
    assert counts == {
        "inc": (50, 50, 0, 0),
        "sort_out": (50, 20, 10, 20),
        "last": (20, 20, 0, 0),
        "errors": (20, 20, 0, 0),
    }
    for name, job in stats.jobs.items():
        assert job.received == job.completed + job.skipped + job.errored, name
        assert job.queue_depth == 0, name


async def test_fixed_capacity_never_scales() -> None:
    stats = await run(mixed_flow(), range(30))
    for name, job in stats.jobs.items():
        assert (job.scale_ups, job.scale_downs) == (0, 0), name


async def test_busy_workers_are_active() -> None:
    release = anyio.Event()

    async def hold(item: int) -> int:
        await release.wait()
        return item

    flow = Flow().add(
        hold, capacity=Capacity(min_workers=3, max_workers=3, queue_length=5), name="hold"
    )
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            for item in range(5):
                await running.send(item)
            await wait_until(lambda: running.stats().jobs["hold"].active == 3)
            await anyio.wait_all_tasks_blocked()
            job = running.stats().jobs["hold"]
            assert (job.workers, job.active, job.idle, job.blocked) == (3, 3, 0, 0)
            assert job.queue_depth == 2
            assert (job.completed, job.skipped, job.errored) == (0, 0, 0)
            release.set()
            await running.close()
            stats = await running.join()
    assert stats.jobs["hold"].completed == 5


async def test_workers_waiting_on_a_full_downstream_queue_are_blocked() -> None:
    release = anyio.Event()

    async def hold(item: int) -> int:
        await release.wait()
        return item

    flow = (
        Flow()
        .add(inc, capacity=Capacity(min_workers=2, max_workers=2), name="upstream")
        .add(hold, capacity=Capacity(min_workers=1, max_workers=1, queue_length=0), name="hold")
    )
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            for item in range(3):
                await running.send(item)
            await wait_until(lambda: running.stats().jobs["upstream"].blocked == 2)
            await anyio.wait_all_tasks_blocked()
            stats = running.stats()
            upstream = stats.jobs["upstream"]
            assert (upstream.workers, upstream.blocked, upstream.active, upstream.idle) == (
                2,
                2,
                0,
                0,
            )
            hold_job = stats.jobs["hold"]
            assert (hold_job.active, hold_job.blocked, hold_job.queue_depth) == (1, 0, 0)
            release.set()
            await running.close()
            final = await running.join()
    assert final.jobs["hold"].completed == 3


async def test_workers_without_input_are_idle() -> None:
    two = Capacity(min_workers=2, max_workers=2)
    flow = Flow().add(inc, capacity=two, name="first").add(inc, capacity=two, name="second")
    flow.add_error_job(report, capacity=two, name="errors")
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            await wait_until(lambda: all(job.idle == 2 for job in running.stats().jobs.values()))
            for name, job in running.stats().jobs.items():
                assert (job.workers, job.idle, job.active, job.blocked) == (2, 2, 0, 0), name
                assert job.queue_depth == 0, name


async def test_a_snapshot_does_not_change_afterwards() -> None:
    release = anyio.Event()

    async def hold(item: int) -> int:
        await release.wait()
        return item

    flow = Flow().add(hold, capacity=Capacity(min_workers=2, max_workers=2), name="hold")
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            for item in range(4):
                await running.send(item)
            await wait_until(lambda: running.stats().jobs["hold"].active == 2)
            snapshot = running.stats()
            release.set()
            await running.close()
            final = await running.join()
    assert snapshot.jobs["hold"].completed == 0
    assert snapshot.jobs["hold"].active == 2
    assert final.jobs["hold"].completed == 4


async def test_stats_are_available_before_any_input() -> None:
    with anyio.fail_after(HANG_GUARD):
        async with Flow().add(inc, name="inc").start() as running:
            stats = running.stats()
            assert isinstance(stats, FlowStats)
            assert stats.jobs["inc"].received == 0
