"""``max_per_second=``: call starts spaced exactly, per run, with retries, and how it meets scaling.

Exact timing is asserted only on trio's ``MockClock``; on real clocks the tests order their
steps with events and ``wait_all_tasks_blocked``.
"""

from __future__ import annotations

import anyio
import pytest
from _support import (
    HANG_GUARD,
    Boom,
    fixed,
    run,
    timed,
    virtual_time_only,
    wait_until,
)
from anyio.lowlevel import checkpoint

from flowrhythm import (
    Flow,
    Retry,
    ScalingEvent,
    UtilizationCapacity,
)

pytestmark = pytest.mark.anyio


@virtual_time_only()
@pytest.mark.parametrize("workers", [1, 4, 16])
async def test_rate_limit_spaces_call_starts_exactly(workers: int) -> None:
    starts: list[float] = []

    async def call(item: int) -> int:
        starts.append(anyio.current_time() - t0)
        await anyio.sleep(0.1)
        return item

    flow = Flow().add(call, capacity=fixed(workers), max_per_second=5)
    t0 = anyio.current_time()
    await run(flow, range(10))
    assert starts == pytest.approx([0.2 * i for i in range(10)])
    assert sum(start < 1.0 for start in starts) == 5  # 5 per second, whatever the workers


@virtual_time_only()
async def test_rate_limit_holds_when_calls_last_longer_than_the_interval() -> None:
    starts: list[float] = []
    running = peak = 0

    async def slow(item: int) -> int:
        nonlocal running, peak
        starts.append(anyio.current_time() - t0)
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.45)
        running -= 1
        return item

    flow = Flow().add(slow, capacity=fixed(8), max_per_second=10)
    t0 = anyio.current_time()
    await run(flow, range(20))
    assert starts == pytest.approx([0.1 * i for i in range(20)])
    assert peak == 5  # 0.45 s calls started every 0.1 s: five at a time, not eight


@virtual_time_only()
async def test_every_retry_takes_a_rate_limit_slot() -> None:
    starts: list[tuple[int, float]] = []
    failed = False

    async def first_fails(item: int) -> int:
        nonlocal failed
        starts.append((item, round(anyio.current_time() - t0, 6)))
        if not failed:
            failed = True
            raise Boom(item)
        return item

    flow = Flow().add(first_fails, max_per_second=5, retry=Retry(backoff=0))
    t0 = anyio.current_time()
    await run(flow, range(3))
    assert starts == [(0, 0.0), (0, 0.2), (1, 0.4), (2, 0.6)]


@virtual_time_only()
async def test_the_rate_limit_is_per_run() -> None:
    starts: dict[str, list[float]] = {"a": [], "b": []}

    async def call(item: tuple[str, int]) -> None:
        starts[item[0]].append(anyio.current_time() - t0)

    flow = Flow().add(call, capacity=fixed(2), max_per_second=4)
    t0 = anyio.current_time()
    async with anyio.create_task_group() as tg:
        for run_name in starts:
            tg.start_soon(run, flow, [(run_name, i) for i in range(4)])
    assert starts == {
        "a": pytest.approx([0, 0.25, 0.5, 0.75]),
        "b": pytest.approx([0, 0.25, 0.5, 0.75]),
    }


async def test_waiting_for_a_slot_counts_as_blocked_and_stop_cancels_it() -> None:
    started = anyio.Event()

    async def holds(item: int) -> int:
        started.set()
        await anyio.sleep_forever()
        return item

    flow = Flow().add(holds, capacity=fixed(2), name="r", max_per_second=0.001)
    with anyio.fail_after(HANG_GUARD):  # the second slot is 1000 s away
        async with flow.start() as running:
            await running.send(1)
            await running.send(2)
            await started.wait()
            await wait_until(lambda: running.stats().jobs["r"].blocked == 1)
            job = running.stats().jobs["r"]
            assert (job.active, job.blocked, job.idle, job.received) == (1, 1, 0, 2)
            running.stop()
    assert running.stats().jobs["r"].in_flight == 2


@timed()
async def test_a_job_held_back_by_its_rate_limit_does_not_grow() -> None:
    events: list[ScalingEvent] = []

    async def quick(item: int) -> int:
        await checkpoint()
        return item

    capacity = UtilizationCapacity(min_workers=1, max_workers=16, sampling=0.02)
    flow = Flow().add(quick, capacity=capacity, name="limited", max_per_second=200)
    with anyio.fail_after(HANG_GUARD):
        stats = await flow.run(range(100), on_scale=events.append)
    job = stats.jobs["limited"]
    assert [e for e in events if e.new > e.old] == []
    assert job.scale_ups == 0
    assert job.blocked_seconds > job.active_seconds
    assert job.completed == 100


@virtual_time_only()
@pytest.mark.parametrize(("rate", "limited"), [(50, True), (100_000, False)])
async def test_a_rate_limited_job_grows_only_until_the_limit_binds(
    rate: float, limited: bool
) -> None:
    events: list[ScalingEvent] = []

    async def takes_50ms(item: int) -> int:
        await anyio.sleep(0.05)
        return item

    # 50 calls/s of 50 ms each keep 2.5 workers busy: more cannot go faster. The
    # control, with a rate limit that never binds, grows all the way.
    capacity = UtilizationCapacity(min_workers=1, max_workers=16, sampling=0.1)
    flow = Flow().add(takes_50ms, capacity=capacity, name="job", max_per_second=rate)
    with anyio.fail_after(HANG_GUARD):
        stats = await flow.run(range(200), on_scale=events.append)
    assert stats.jobs["job"].completed == 200
    if limited:
        assert all(e.new <= 5 for e in events), events
    else:
        assert max(e.new for e in events) == 16, events
