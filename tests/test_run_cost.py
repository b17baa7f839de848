"""What the cheaper start-up and tear-down of a run must keep: exact stats, and the same blocks.

A run's final stats build each job's snapshot only when it is read; the timings
of a job that does not scale keep no sums; ``run()``, ``start()`` and
``stream()`` are plain classes instead of generator context managers. None of
that may show: these tests read the stats every way a user can, before and
after other runs, and leave the blocks every way there is.
"""

from __future__ import annotations

import copy
import pickle
from typing import Any

import anyio
import pytest
from _support import HANG_GUARD, leaves, run, running_tasks, wait_until

from flowrhythm import (
    Adaptive,
    Capacity,
    ErrorItem,
    Flow,
    FlowStats,
    JobStats,
    Overloaded,
    StopProcessing,
)
from flowrhythm._stats import Counters
from flowrhythm._timing import KEEP, SAMPLE_EVERY, SummedTimings, Timings, call_timer
from flowrhythm.testing import run_virtual

pytestmark = pytest.mark.anyio


async def inc(item: int) -> int:
    return item + 1


async def odd_only(item: int) -> int:
    if item % 2 == 0:
        raise StopProcessing
    return item


async def fail_on_five(item: int) -> int:
    if item == 5:
        raise ValueError("five")
    return item


async def discard(error: ErrorItem) -> None:
    return None


def three_jobs() -> Flow:
    flow = Flow()
    flow.add(inc, name="inc", capacity=Capacity(min_workers=2, max_workers=2))
    flow.add(odd_only, name="odd")
    flow.add(fail_on_five, name="five")
    flow.add_error_job(discard, name="errors")
    return flow


def check_three_jobs(stats: FlowStats, n: int) -> None:
    """The stats of ``three_jobs()`` over ``range(n)``: every counter exact."""
    assert list(stats.jobs) == ["inc", "odd", "five", "errors"]
    assert len(stats.jobs) == 4
    assert stats.items_in == n
    odd = n // 2  # inc(0..n-1) = 1..n: the odd ones are kept
    assert stats.jobs["inc"].received == stats.jobs["inc"].completed == n
    assert stats.jobs["odd"].received == n
    assert stats.jobs["odd"].skipped == n - odd
    assert stats.jobs["odd"].completed == odd
    assert stats.jobs["five"].errored == 1
    assert stats.jobs["five"].completed == odd - 1
    assert stats.jobs["errors"].completed == 1
    assert stats.jobs["errors"].error_job
    assert stats.items_out == odd - 1
    assert stats.done
    for job in stats.jobs.values():
        assert isinstance(job, JobStats)
        assert job.received == job.completed + job.skipped + job.errored
        assert job.workers == job.idle == job.active == job.blocked == 0
        assert job.queue_depth == 0
        assert job.p50 is not None  # the first call of every job is timed


def check_mapping(stats: FlowStats) -> None:
    """``stats.jobs`` behaves as the dict it stands for, however it is read."""
    jobs = stats.jobs
    plain = {name: jobs[name] for name in jobs}
    assert jobs == plain
    assert plain == jobs
    assert dict(jobs.items()) == plain
    assert list(jobs.values()) == list(plain.values())
    assert "inc" in jobs
    assert "nothing" not in jobs
    assert jobs.get("nothing") is None
    with pytest.raises(KeyError):
        jobs["nothing"]
    assert jobs["inc"] is jobs["inc"]  # built once
    assert repr(jobs) == repr(plain)
    assert copy.copy(stats) == stats
    assert copy.deepcopy(stats) == stats
    again = pickle.loads(pickle.dumps(stats))
    assert again == stats
    assert again.jobs == plain


async def test_the_stats_run_returns_are_exact_however_read() -> None:
    flow = three_jobs()
    first = await run(flow, range(20))
    check_three_jobs(first, 20)
    check_mapping(first)
    # A second run of the same flow changes nothing in the first one's stats.
    pending = await run(flow, range(40))  # not read until after another run
    await run(flow, range(6))
    check_three_jobs(pending, 40)
    check_three_jobs(first, 20)


async def test_reading_one_job_reads_that_job_only_and_the_rest_stays_exact() -> None:
    flow = three_jobs()
    stats = await run(flow, range(10))
    assert stats.jobs["five"].errored == 1  # one job read first
    await run(flow, range(30))
    check_three_jobs(stats, 10)


async def test_join_and_stats_after_the_drain_agree() -> None:
    flow = three_jobs()
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            for item in range(16):
                await running.send(item)
            await running.close()
            joined = await running.join()
            after = running.stats()
    check_three_jobs(joined, 16)
    check_three_jobs(after, 16)
    assert joined == after
    check_mapping(joined)


async def test_stats_of_a_stream_before_during_and_after() -> None:
    flow = three_jobs()
    with anyio.fail_after(HANG_GUARD):
        async with flow.stream(range(12)) as results:
            before = results.stats()
            outputs = [out async for out in results]
            await wait_until(lambda: results.done)
            ended = results.stats()
        final = results.stats()
    assert before.items_out == 0 or before.items_out <= len(outputs)
    assert sorted(outputs) == [1, 3, 7, 9, 11]
    check_three_jobs(ended, 12)
    check_three_jobs(final, 12)
    assert ended == final


async def test_live_stats_are_taken_when_asked() -> None:
    """A snapshot of a live run is a value: later items do not change it."""
    gate = anyio.Event()

    async def held(item: int) -> int:
        if item == 3:
            await gate.wait()
        return item

    flow = Flow()
    flow.add(held, name="held")
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            for item in range(5):
                await running.send(item)
            await wait_until(lambda: running.stats().jobs["held"].completed == 3)
            live = running.stats()
            gate.set()
            await running.close()
            final = await running.join()
    assert live.jobs["held"].completed == 3
    assert live.jobs["held"].active == 1
    assert not live.done
    assert final.jobs["held"].completed == 5
    assert final.done


async def test_a_stopped_run_keeps_its_counts_in_its_stats() -> None:
    gate = anyio.Event()

    async def held(item: int) -> int:
        await gate.wait()
        return item

    flow = Flow()
    flow.add(held, name="held", capacity=Capacity(min_workers=2, max_workers=2))
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            for item in range(5):
                await running.send(item)
            await wait_until(lambda: running.stats().jobs["held"].received == 2)
            running.stop()
    stats = await running.join()  # the run is over: its final stats at once
    assert stats == running.stats()
    job = stats.jobs["held"]
    assert not stats.done
    assert job.received == 2
    assert job.completed == 0
    assert job.in_flight == 2
    assert job.queue_depth == 3  # left in the queue, read when the run ended
    assert stats.items_in == 5


async def test_a_shared_adaptive_limit_is_read_when_the_run_ends() -> None:
    """The concurrency limit in a run's stats is the one at its end, not when read."""
    limit = Adaptive(min=1, initial=8, max=64)

    async def call(item: int) -> int:
        return item

    async def pushed_back(item: int) -> int:
        raise Overloaded

    calm = Flow()
    calm.add(call, name="calm", concurrency=limit)
    stats = await run(calm, range(4))

    busy = Flow()
    busy.add(pushed_back, name="busy", concurrency=limit)
    busy.add_error_job(discard)
    await run(busy, range(4))
    assert limit.limit != 8  # the second run did cut the shared limit
    assert stats.jobs["calm"].concurrency_limit == 8


async def test_jobs_that_do_not_scale_keep_no_sums_and_scaling_ones_do() -> None:
    clock = anyio.current_time
    timer = call_timer(clock)
    fixed = Counters(clock, timer, clock(), False)
    scaling = Counters(clock, timer, clock(), True)
    assert type(fixed.latency) is Timings
    assert type(scaling.latency) is SummedTimings
    for seconds in (0.5, 2.0, 0.0):
        fixed.latency.add(seconds)
        scaling.latency.add(seconds)
    assert fixed.latency.percentiles(50) == scaling.latency.percentiles(50) == (0.5,)
    assert fixed.latency.total == 0.0
    assert scaling.latency.total == 2.5
    assert scaling.latency.squares == 4.25


def test_the_ring_grows_then_wraps() -> None:
    timings = Timings()
    assert timings.percentiles(50, 99) == (None, None)
    assert timings.since(0) == []
    for n in range(1, 2 * KEEP + 10):
        timings.add(float(n))
        if n in (1, 10, KEEP - 1, KEEP, KEEP + 1, 2 * KEEP + 9):
            recent = [float(k) for k in range(max(1, n - KEEP + 1), n + 1)]
            assert timings.since(0) == recent
            assert timings.since(n - 3) == recent[-3:]
            assert timings.since(n) == []
            assert timings.percentiles(0, 100) == (recent[0], recent[-1])
            assert len(timings.ring) == min(n, KEEP)
    assert timings.mask == 0  # slow items: every one is timed


async def test_call_timer_follows_the_clock_it_is_given() -> None:
    assert call_timer(lambda: 1.0)() == 1.0  # a clock that stands still is used itself


async def test_an_exception_from_the_start_block_comes_out_of_the_task_group() -> None:
    """As from any anyio task group the block is in: the body's exception, in a group."""
    flow = Flow()
    flow.add(inc)
    before = running_tasks()

    async def body() -> None:
        async with flow.start() as running:
            await running.send(1)
            raise KeyError("mine")

    with pytest.raises(BaseExceptionGroup) as caught:
        await body()
    [leaf] = leaves(caught.value)
    assert isinstance(leaf, KeyError)
    assert leaf.args == ("mine",)
    assert running_tasks() == before


async def test_an_exception_from_the_stream_block_comes_out_of_the_task_group() -> None:
    flow = Flow()
    flow.add(inc)
    before = running_tasks()

    async def body() -> None:
        async with flow.stream(range(1000)) as results:
            async for _ in results:
                raise KeyError("mine")

    with pytest.raises(BaseExceptionGroup) as caught:
        await body()
    [leaf] = leaves(caught.value)
    assert isinstance(leaf, KeyError)
    assert leaf.args == ("mine",)
    assert running_tasks() == before


async def test_a_failing_run_raises_its_group_from_every_block() -> None:
    async def boom(item: int) -> int:
        raise ValueError("boom")

    flow = Flow()
    flow.add(boom)
    with pytest.raises(ExceptionGroup) as from_run:
        await run(flow, range(3))

    async def start() -> None:
        async with flow.start() as running:
            await running.send(1)

    async def stream() -> None:
        async with flow.stream(range(3)) as results:
            async for _ in results:
                pass

    with pytest.raises(ExceptionGroup) as from_start:
        await start()
    with pytest.raises(ExceptionGroup) as from_stream:
        await stream()
    for caught in (from_run, from_start, from_stream):
        assert [type(leaf) for leaf in leaves(caught.value)] == [ValueError]


async def test_stop_inside_the_drain_exits_quietly() -> None:
    """Stopped while leaving the start block normally (waiting for the drain)."""
    gate = anyio.Event()

    async def held(item: int) -> int:
        await gate.wait()
        return item

    flow = Flow()
    flow.add(held)
    handle: list[Any] = []

    async def stopper() -> None:
        await wait_until(lambda: bool(handle) and handle[0].stats().jobs["held"].received == 1)
        handle[0].stop()

    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(stopper)
            async with flow.start() as running:
                handle.append(running)
                await running.send(1)
            # the block waited for the drain, was stopped, and exited without raising
    assert not handle[0].done


async def test_cancelled_from_outside_while_draining_propagates() -> None:
    gate = anyio.Event()

    async def held(item: int) -> int:
        await gate.wait()
        return item

    flow = Flow()
    flow.add(held)
    before = running_tasks()
    with anyio.move_on_after(HANG_GUARD) as outer:
        async with anyio.create_task_group() as tg:

            async def cancel_soon() -> None:
                await wait_until(lambda: bool(box) and box[0].stats().jobs["held"].received == 1)
                tg.cancel_scope.cancel()

            box: list[Any] = []
            tg.start_soon(cancel_soon)
            async with flow.start() as running:
                box.append(running)
                await running.send(1)
            pytest.fail("the block should have been cancelled while draining")
    assert not outer.cancelled_caught  # cancelled by the task group, not the guard
    assert running_tasks() == before


# -- which calls are timed: every slow one, one fast one in SAMPLE_EVERY ----------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("scales", [False, True])
def test_every_slow_call_is_timed(backend: str, scales: bool) -> None:
    """Slow calls (virtual seconds) are all timed, in a job that scales or not."""
    durations = [1.0] * 40 + [5.0]

    async def slow(seconds: float) -> float:
        await anyio.sleep(seconds)
        return seconds

    async def main() -> JobStats:
        flow = Flow()
        capacity = Capacity(min_workers=1, max_workers=2 if scales else 1)
        flow.add(slow, name="slow", capacity=capacity)
        stats = await flow.run(durations)
        return stats.jobs["slow"]

    job = run_virtual(main, backend=backend)  # type: ignore[arg-type]
    assert job.completed == len(durations)
    assert job.p50 == pytest.approx(1.0)
    assert job.p99 == pytest.approx(5.0)  # the last call, timed like every slow one


@pytest.mark.parametrize("scales", [False, True])
async def test_fast_calls_are_sampled_one_in_32(scales: bool) -> None:
    """A stream of instant calls times the first, then one in SAMPLE_EVERY."""
    flow = Flow()
    flow.add(inc, name="inc", capacity=Capacity(min_workers=1, max_workers=2 if scales else 1))
    n = 20 * SAMPLE_EVERY
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            for item in range(n):
                await running.send(item)
            await running.close()
            stats = await running.join()
            job = running._run.jobs[0]  # what the stats are built from
    timed = job.counters.latency.count
    assert stats.jobs["inc"].completed == n
    assert stats.jobs["inc"].p50 is not None
    # The first call, then one in SAMPLE_EVERY; a call right after a wait for
    # input is timed too (the loop's count restarts), and the caller here
    # may hand over one item at a time.
    assert n // SAMPLE_EVERY <= timed <= n
    assert timed == len(job.counters.latency.ring)
