"""End of input: LastWorkItem sent, yielded by a source, or returned by a processor."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
from _support import (
    HANG_GUARD,
    Sink,
    assert_balanced,
    collect,
    inc,
    run,
    wait_until,
)

from flowrhythm import Capacity, Flow, LastWorkItem

pytestmark = pytest.mark.anyio

ONE = Capacity(min_workers=1, max_workers=1, queue_length=0)


def no_last_work_item(outputs: list[Any]) -> bool:
    return not any(isinstance(out, LastWorkItem) for out in outputs)


# -- sent ------------------------------------------------------------------------------------


async def test_items_inside_are_processed_after_last_work_item_is_sent() -> None:
    release = anyio.Event()
    sink = Sink()

    async def hold(item: int) -> int:
        await release.wait()
        return item

    flow = Flow().add(hold, capacity=Capacity(min_workers=2, max_workers=2), name="hold")
    flow.add(sink, capacity=ONE, name="sink")
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            for item in range(5):
                await running.send(item)
            await wait_until(lambda: running.stats().jobs["hold"].active == 2)
            await running.send(LastWorkItem())
            release.set()
            stats = await running.join()
    assert sorted(sink.seen) == [0, 1, 2, 3, 4]
    assert no_last_work_item(sink.seen)
    assert stats.jobs["sink"].completed == 5
    assert_balanced(stats)


# -- yielded by a source ---------------------------------------------------------------------


async def test_last_work_item_in_a_list_source() -> None:
    flow = Flow().add(inc, capacity=ONE)
    assert await collect(flow, [0, 1, LastWorkItem(), 2, 3]) == [1, 2]


async def test_source_is_not_read_after_last_work_item() -> None:
    resumed_after_last = False

    def source() -> Iterator[Any]:
        nonlocal resumed_after_last
        yield 1
        yield 2
        yield LastWorkItem()
        resumed_after_last = True
        yield 3

    outputs = await collect(Flow().add(inc, capacity=ONE), source())
    assert outputs == [2, 3]
    assert not resumed_after_last


async def test_async_source_is_not_read_after_last_work_item() -> None:
    resumed_after_last = False

    async def source() -> AsyncIterator[Any]:
        nonlocal resumed_after_last
        yield 1
        yield 2
        yield LastWorkItem()
        resumed_after_last = True
        yield 3

    outputs = await collect(Flow().add(inc, capacity=ONE), source())
    assert outputs == [2, 3]
    assert not resumed_after_last


async def test_last_work_item_ends_an_endless_source() -> None:
    def endless() -> Iterator[Any]:
        for item in itertools.count():
            yield LastWorkItem() if item == 25 else item

    sink = Sink()
    flow = Flow().add(inc, capacity=Capacity(min_workers=3, max_workers=3)).add(sink)
    stats = await run(flow, endless())
    assert sorted(sink.seen) == list(range(1, 26))
    assert_balanced(stats)


# -- returned by a processor -----------------------------------------------------------------


async def test_processor_returning_last_work_item_ends_an_endless_source() -> None:
    async def stop_at_three(item: int) -> Any:
        return LastWorkItem() if item == 3 else item

    sink = Sink()
    flow = (
        Flow()
        .add(stop_at_three, capacity=ONE, name="stopper")
        .add(inc, capacity=ONE, name="inc")
        .add(sink, capacity=ONE, name="sink")
    )
    stats = await run(flow, itertools.count())
    assert no_last_work_item(sink.seen)
    # Everything before the end arrives, in order; the end itself never does;
    # what was already inside the flow after it is still processed.
    assert sink.seen[:3] == [1, 2, 3]
    assert 4 not in sink.seen
    assert all(out > 4 for out in sink.seen[3:])
    # Items taken stay within the queues and workers (plus one per job).
    assert stats.jobs["stopper"].received <= 4 + 3
    assert_balanced(stats)


async def test_processor_in_a_later_job_returning_last_work_item() -> None:
    async def stop_at_ten(item: int) -> Any:
        return LastWorkItem() if item == 10 else item

    sink = Sink()
    flow = (
        Flow()
        .add(inc, capacity=ONE, name="inc")
        .add(stop_at_ten, capacity=ONE, name="stopper")
        .add(sink, capacity=ONE, name="sink")
    )
    stats = await run(flow, itertools.count())
    assert no_last_work_item(sink.seen)
    assert sink.seen[:9] == list(range(1, 10))
    assert 10 not in sink.seen
    assert_balanced(stats)
    # Nothing that entered was lost: each input of the stopper either reached
    # the sink or was the one that ended the input.
    assert stats.jobs["stopper"].completed == len(sink.seen) + 1


async def test_items_already_inside_are_processed_after_a_processor_ends_the_input() -> None:
    release = anyio.Event()
    sink = Sink()

    async def stopper(item: Any) -> Any:
        return LastWorkItem() if item == "end" else item

    async def hold(item: Any) -> Any:
        await release.wait()
        return item

    flow = (
        Flow()
        .add(stopper, capacity=ONE, name="stopper")
        .add(hold, capacity=Capacity(min_workers=1, max_workers=1, queue_length=5), name="hold")
        .add(sink, capacity=ONE, name="sink")
    )
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            await running.send(1)
            await running.send(2)
            await wait_until(lambda: running.stats().jobs["hold"].received == 1)
            await running.send("end")
            await wait_until(lambda: running.stats().jobs["stopper"].completed == 3)
            release.set()
            stats = await running.join()
    assert sink.seen == [1, 2]
    assert stats.jobs["hold"].completed == 2
    assert_balanced(stats)
