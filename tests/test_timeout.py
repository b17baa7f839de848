"""``timeout=``: each call (or each step of a generator) cancelled in time, with retry, offloaded.

Exact timing is asserted only on trio's ``MockClock``; on real clocks the tests order their
steps with events and ``wait_all_tasks_blocked``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import AsyncIterator

import anyio
import pytest
from _support import (
    ErrorLog,
    Sink,
    collect,
    exact,
    fixed,
    run,
    timed,
    virtual_time_only,
)
from anyio.lowlevel import checkpoint

from flowrhythm import (
    ErrorItem,
    Flow,
    Retry,
)

pytestmark = pytest.mark.anyio


async def test_timeout_cancels_the_call_runs_its_cleanup_and_routes_timeout_error() -> None:
    cleaned: list[int] = []
    errors = ErrorLog()

    async def hangs_on_3(item: int) -> int:
        try:
            if item == 3:
                await anyio.sleep_forever()
            return item
        finally:
            cleaned.append(item)

    flow = Flow().add(hangs_on_3, capacity=fixed(2), name="hang", timeout=0.01)
    flow.add_error_job(errors)
    outputs = await collect(flow, range(6))
    assert sorted(outputs) == [0, 1, 2, 4, 5]
    assert sorted(cleaned) == list(range(6))
    [error] = errors.errors
    assert (error.item, type(error.exception), error.attempts) == (3, TimeoutError, 1)


@timed()
async def test_timeout_composes_with_retry() -> None:
    scale = 1.0 if exact() else 0.01
    cleaned = 0
    errors = ErrorLog()
    failed_at: list[float] = []

    async def hangs(item: int) -> int:
        nonlocal cleaned
        try:
            await anyio.sleep_forever()
        finally:
            cleaned += 1
        return item

    async def on_error(error: ErrorItem) -> None:
        failed_at.append(anyio.current_time() - t0)
        await errors(error)

    retry = Retry(attempts=3, backoff=0.5 * scale, jitter=False)
    flow = Flow().add(hangs, name="hangs", timeout=scale, retry=retry).add_error_job(on_error)
    t0 = anyio.current_time()
    stats = await run(flow, [1])
    [error] = errors.errors
    assert (type(error.exception), error.attempts) == (TimeoutError, 3)
    assert cleaned == 3
    assert stats.jobs["hangs"].retried == 2
    if exact():  # 1 + 0.5 + 1 + 1.0 + 1
        assert failed_at == pytest.approx([4.5])


async def test_a_timed_out_call_may_succeed_on_retry() -> None:
    calls: Counter[int] = Counter()

    async def hangs_once(item: int) -> int:
        calls[item] += 1
        if calls[item] == 1:
            await anyio.sleep_forever()
        return item

    sink = Sink()
    flow = Flow().add(
        hangs_once, name="h", capacity=fixed(4), timeout=0.01, retry=Retry(backoff=0)
    )
    stats = await run(flow.add(sink), range(8))
    assert sorted(sink.seen) == list(range(8))
    job = stats.jobs["h"]
    assert (job.retried, job.completed, job.errored) == (8, 8, 0)


@virtual_time_only()
async def test_timeout_applies_to_each_step_of_a_generator() -> None:
    errors = ErrorLog()

    async def steps(item: str) -> AsyncIterator[str]:
        await anyio.sleep(0.6)
        yield f"{item}-a"
        await anyio.sleep(0.6)  # 1.2 s in all, but no step is longer than 1 s
        yield f"{item}-b"
        if item == "slow":
            await anyio.sleep(1.5)
            yield f"{item}-c"

    retry = Retry(attempts=3, backoff=0)
    flow = Flow().add(steps, name="steps", timeout=1.0, retry=retry).add_error_job(errors)
    outputs = await collect(flow, ["fast", "slow"])
    assert outputs == ["fast-a", "fast-b", "slow-a", "slow-b"]
    [error] = errors.errors
    # It failed after its first yield: routed, never retried (no output twice).
    assert (error.item, type(error.exception), error.attempts) == ("slow", TimeoutError, 1)


async def test_a_generator_that_hangs_after_yielding_is_routed_not_retried() -> None:
    errors = ErrorLog()

    async def hangs_after_one(item: int) -> AsyncIterator[int]:
        yield item
        await anyio.sleep_forever()
        yield item + 100

    flow = Flow().add(hangs_after_one, name="g", timeout=0.01, retry=Retry(backoff=0))
    flow.add_error_job(errors)
    assert await collect(flow, [1, 2]) == [1, 2]
    assert sorted((e.item, type(e.exception), e.attempts) for e in errors.errors) == [
        (1, TimeoutError, 1),
        (2, TimeoutError, 1),
    ]


@timed()
async def test_waiting_for_a_rate_limit_slot_does_not_count_against_the_timeout() -> None:
    errors = ErrorLog()

    async def quick(item: int) -> int:
        await checkpoint()
        return item

    # 16 workers start at once; the last waits 0.75 s for its slot, far past the timeout.
    flow = Flow().add(quick, capacity=fixed(16), name="q", max_per_second=20, timeout=0.2)
    flow.add_error_job(errors)
    stats = await run(flow, range(16))
    assert errors.errors == []
    assert stats.jobs["q"].completed == 16


@virtual_time_only()
async def test_waiting_for_the_resource_manager_does_not_count_against_the_timeout() -> None:
    """Like a rate-limit slot, the lock wait is *blocked* time, not the call."""
    errors = ErrorLog()

    async def takes_50ms(item: int) -> int:
        await anyio.sleep(0.05)
        return item

    flow = Flow().add_job_with_lock(
        takes_50ms, anyio.Lock(), capacity=fixed(4), name="locked", timeout=0.12
    )
    stats = await run(flow.add_error_job(errors), range(8))
    assert [e.item for e in errors.errors] == []
    assert stats.jobs["locked"].completed == 8


async def test_timeout_of_a_call_offloaded_to_a_thread() -> None:
    gate = threading.Event()
    errors = ErrorLog()

    def blocks(item: int) -> int:
        gate.wait(1.0)  # released as soon as the timeout is seen (or after 1 s)
        return item

    async def on_error(error: ErrorItem) -> None:
        gate.set()
        await errors(error)

    flow = Flow().add(blocks, name="blocks", executor="thread", timeout=0.01)
    flow.add_error_job(on_error)
    await run(flow, [1])
    gate.set()
    assert [(e.item, type(e.exception)) for e in errors.errors] == [(1, TimeoutError)]


async def test_timeout_of_a_call_offloaded_to_a_process() -> None:
    errors = ErrorLog()
    # Start anyio's worker process first, so that the timeout meets a running call.
    await run(Flow().add(time.sleep, executor="process"), [0])
    flow = Flow().add(time.sleep, name="sleep", executor="process", timeout=0.5)
    await run(flow.add_error_job(errors), [1.5])
    assert [(e.item, type(e.exception)) for e in errors.errors] == [(1.5, TimeoutError)]
