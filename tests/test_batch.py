"""``batch=``: batches by size and timeout, flushed at end of input, failures, retry, order, scaling.

Exact timing is asserted only on trio's ``MockClock``; on real clocks the tests order their
steps with events and ``wait_all_tasks_blocked``.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator

import anyio
import pytest
from _support import (
    HANG_GUARD,
    NEVER,
    Boom,
    ErrorLog,
    Sink,
    assert_balanced,
    collect,
    feed,
    fixed,
    leaves,
    run,
    scaling,
    virtual_time_only,
    wait_until,
)

from flowrhythm import (
    Batch,
    Flow,
    LastWorkItem,
    Retry,
    StopProcessing,
)

pytestmark = pytest.mark.anyio


async def test_batches_fill_up_to_size_and_the_last_partial_one_is_kept() -> None:
    async def as_list(batch: list[int]) -> list[int]:
        return batch

    flow = Flow().add(as_list, name="b", batch=Batch(size=10, timeout=NEVER))
    assert await collect(flow, range(25)) == [
        list(range(10)),
        list(range(10, 20)),
        list(range(20, 25)),
    ]
    stats = await run(flow, range(25))
    job = stats.jobs["b"]
    assert (job.received, job.completed) == (25, 25)  # items, not calls
    assert stats.items_out == 3  # one output per batch
    assert_balanced(stats)


@pytest.mark.parametrize("how", ["send", "source", "close"])
async def test_end_of_input_flushes_the_partial_batch_at_once(how: str) -> None:
    sink = Sink()

    async def as_list(batch: list[int]) -> list[int]:
        return batch

    flow = Flow().add(as_list, name="b", batch=Batch(size=10, timeout=NEVER)).add(sink)
    if how == "source":
        stats = await run(flow, [0, 1, 2, LastWorkItem(), 3])
    else:
        with anyio.fail_after(HANG_GUARD):  # far shorter than the batch timeout
            async with flow.start() as running:
                for item in range(3):
                    await running.send(item)
                await (running.send(LastWorkItem()) if how == "send" else running.close())
                stats = await running.join()
    assert sink.seen == [[0, 1, 2]]
    assert_balanced(stats)


async def test_a_processor_ending_the_input_flushes_a_later_batch_job() -> None:
    sink = Sink()

    async def until_5(item: int) -> int | LastWorkItem:
        return LastWorkItem() if item == 5 else item

    async def as_list(batch: list[int]) -> list[int]:
        return batch

    flow = (
        Flow()
        .add(until_5, capacity=fixed(1, queue_length=0))
        .add(as_list, name="b", batch=Batch(size=100, timeout=NEVER))
        .add(sink)
    )
    await run(flow, range(1000))
    [batch] = sink.seen
    assert batch[:5] == [0, 1, 2, 3, 4]
    assert 5 not in batch


@virtual_time_only()
async def test_batch_timeout_runs_from_the_first_item() -> None:
    calls: list[tuple[list[int], float]] = []

    async def record(batch: list[int]) -> None:
        calls.append((batch, round(anyio.current_time() - t0, 6)))

    flow = Flow().add(record, batch=Batch(size=10, timeout=1.0))
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            t0 = anyio.current_time()
            await running.send(0)
            await anyio.sleep(0.5)
            await running.send(1)
            await anyio.sleep(0.7)  # t = 1.2: [0, 1] left at t = 1.0
            await running.send(2)
            await anyio.sleep(2.0)  # t = 3.2: [2] left at t = 2.2
            await running.send(3)
            await running.close()  # [3] leaves at once
    assert calls == [([0, 1], 1.0), ([2], 2.2), ([3], 3.2)]


async def test_failing_batch_is_one_error_item_with_the_list() -> None:
    errors = ErrorLog()

    async def picky(batch: list[int]) -> int:
        if 5 in batch:
            raise Boom(batch)
        if 9 in batch:
            raise StopProcessing
        return len(batch)

    flow = Flow().add(picky, name="b", batch=Batch(size=4, timeout=NEVER)).add_error_job(errors)
    assert await collect(flow, range(10)) == [4]
    stats = await run(flow, range(10))
    [error, _] = errors.errors  # one per run
    assert (error.item, error.job, error.attempts) == ([4, 5, 6, 7], "b", 1)
    job = stats.jobs["b"]
    assert (job.received, job.completed, job.errored, job.skipped) == (10, 4, 4, 2)


async def test_failing_batch_without_error_job_fails_the_run() -> None:
    async def boom(batch: list[int]) -> int:
        raise Boom(batch)

    with pytest.raises(BaseExceptionGroup) as info:
        await run(Flow().add(boom, batch=Batch(size=3, timeout=NEVER)), range(3))
    [exc] = leaves(info.value)
    assert isinstance(exc, Boom)
    assert exc.args == ([0, 1, 2],)


async def test_batch_with_retry_retries_the_whole_batch() -> None:
    errors = ErrorLog()
    calls: Counter[tuple[int, ...]] = Counter()

    async def picky(batch: list[int]) -> list[int]:
        calls[tuple(batch)] += 1
        if 0 in batch and calls[tuple(batch)] == 1:
            raise Boom("once")
        if 3 in batch:
            raise Boom("always")
        return batch

    retry = Retry(attempts=3, backoff=0)
    flow = Flow().add(picky, name="b", batch=Batch(size=3, timeout=NEVER), retry=retry)
    outputs = await collect(flow.add_error_job(errors), range(6))
    assert outputs == [[0, 1, 2]]
    assert [(e.item, e.attempts) for e in errors.errors] == [([3, 4, 5], 3)]
    assert calls == {(0, 1, 2): 2, (3, 4, 5): 3}


async def test_a_generator_after_a_batch_job_splits_the_batches_again() -> None:
    async def as_list(batch: list[int]) -> list[int]:
        return batch

    async def split(batch: list[int]) -> AsyncIterator[int]:
        for item in batch:
            yield item

    flow = (
        Flow().add(as_list, name="b", batch=Batch(size=10, timeout=NEVER)).add(split, name="split")
    )
    assert await collect(flow, range(25)) == list(range(25))
    stats = await run(flow, range(25))
    assert (stats.jobs["split"].received, stats.items_out) == (3, 25)


async def test_a_batch_generator_processor_counts_items() -> None:
    async def split(batch: list[int]) -> AsyncIterator[int]:
        for item in batch:
            if item % 4:
                yield item

    flow = Flow().add(split, name="b", batch=Batch(size=8, timeout=NEVER))
    assert await collect(flow, range(20)) == [i for i in range(20) if i % 4]
    stats = await run(flow, range(20))
    assert (stats.jobs["b"].received, stats.jobs["b"].completed) == (20, 20)
    assert stats.items_out == 15


async def test_batches_are_runs_of_consecutive_inputs_while_the_job_scales() -> None:
    """One worker at a time gathers, so no two batches interleave, from 0 to 4 workers."""
    rng = random.Random(13)
    batches: list[list[int]] = []

    async def jitter(batch: list[int]) -> None:
        batches.append(batch)
        await anyio.sleep(rng.uniform(0, 0.002))

    flow = Flow().add(jitter, capacity=scaling(0, 4), name="b", batch=Batch(size=5, timeout=0))
    stats = await run(flow, range(500))
    assert sorted(item for batch in batches for item in batch) == list(range(500))
    for batch in batches:  # each batch is a run of consecutive inputs, at most `size` long
        assert 1 <= len(batch) <= 5
        assert batch == list(range(batch[0], batch[0] + len(batch)))
    job = stats.jobs["b"]
    assert (job.received, job.completed) == (500, 500)


async def test_idle_workers_do_not_split_a_trickle_into_small_batches() -> None:
    """Four idle workers, items arriving one at a time: one worker gathers them all."""
    batches: list[list[int]] = []

    async def record(batch: list[int]) -> None:
        batches.append(batch)

    flow = Flow().add(record, capacity=fixed(4), name="b", batch=Batch(size=4, timeout=NEVER))
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            for item in range(8):
                await running.send(item)
                await anyio.wait_all_tasks_blocked()
                job = running.stats().jobs["b"]
                assert job.received == item + 1
                assert job.idle == 4  # the gatherer waits for more, the others for the gate
            await running.close()
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7]]


async def test_ordered_batches_leave_in_input_order() -> None:
    rng = random.Random(17)

    async def jitter(batch: list[int]) -> list[int]:
        await anyio.sleep(rng.uniform(0, 0.002))
        return batch

    flow = Flow().add(
        jitter, capacity=fixed(4), name="b", ordered=True, batch=Batch(size=3, timeout=0.001)
    )
    outputs = await collect(flow, range(300))
    assert [item for batch in outputs for item in batch] == list(range(300))


async def test_ordered_batches_stop_at_the_window_behind_a_slow_head() -> None:
    """The reorder window counts batches: 4 workers, the first batch stuck, 8 batches taken."""
    release = anyio.Event()
    sink = Sink()

    async def slow_head(batch: list[int]) -> list[int]:
        if batch[0] == 0:
            await release.wait()
        return batch

    flow = (
        Flow()
        .add(slow_head, capacity=fixed(4), name="b", ordered=True, batch=Batch(size=2))
        .add(sink)
    )
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running, anyio.create_task_group() as tg:
            tg.start_soon(feed, running, range(100))
            await wait_until(lambda: running.stats().jobs["b"].blocked == 3)
            await anyio.wait_all_tasks_blocked()
            job = running.stats().jobs["b"]
            assert job.received == 8 * 2
            assert (job.active, job.blocked, job.idle) == (1, 3, 0)
            assert sink.seen == []
            release.set()
        stats = await running.join()
    assert [item for batch in sink.seen for item in batch] == list(range(100))
    assert_balanced(stats)


async def test_stop_while_a_batch_is_gathering_counts_its_items() -> None:
    calls = 0

    async def never_full(batch: list[int]) -> None:
        nonlocal calls
        calls += 1

    flow = Flow().add(never_full, name="b", batch=Batch(size=10, timeout=NEVER))
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            for item in range(3):
                await running.send(item)
            await wait_until(lambda: running.stats().jobs["b"].received == 3)
            running.stop()
    job = running.stats().jobs["b"]
    assert calls == 0
    assert (job.received, job.in_flight) == (3, 3)


async def test_stuck_batches_hold_one_batch_per_worker_and_leave_the_rest_queued() -> None:
    """Workers gather their own batches: nothing is taken beyond the batches in hand."""
    release = anyio.Event()

    async def stuck(batch: list[int]) -> int:
        await release.wait()
        return len(batch)

    flow = Flow().add(stuck, capacity=fixed(2, queue_length=30), name="b", batch=Batch(size=10))
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running, anyio.create_task_group() as tg:
            tg.start_soon(feed, running, range(1000))
            await wait_until(lambda: running.stats().jobs["b"].queue_depth == 30)
            await anyio.wait_all_tasks_blocked()
            job = running.stats().jobs["b"]
            assert (job.received, job.queue_depth) == (2 * 10, 30)
            assert (job.active, job.completed) == (2, 0)
            running.stop()
    job = running.stats().jobs["b"]
    assert (job.received, job.in_flight) == (20, 20)  # every taken item is accounted for


async def test_a_batched_error_job_gets_lists_of_error_items() -> None:
    errors = ErrorLog()

    async def odd_fails(item: int) -> int:
        if item % 2:
            raise Boom(item)
        return item

    flow = Flow().add(odd_fails, capacity=fixed(3))
    flow.add_error_job(errors, name="errors", batch=Batch(size=100, timeout=NEVER))
    stats = await run(flow, range(10))
    assert errors.calls == 1  # one list, flushed when the error job's input ended
    assert sorted(e.item for e in errors.errors) == [1, 3, 5, 7, 9]
    job = stats.jobs["errors"]
    assert (job.received, job.completed) == (5, 5)
