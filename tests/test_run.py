"""Running a flow: run, stream and start; stopping, breaking out, reuse, no leftovers."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import anyio
import pytest
from _support import (
    HANG_GUARD,
    ONE,
    Sink,
    collect,
    inc,
    leaves,
    run,
    running_tasks,
    wait_until,
)

from flowrhythm import Capacity, ErrorItem, Flow, FlowStats, LastWorkItem, RunningFlow

pytestmark = pytest.mark.anyio

MANY = Capacity(min_workers=4, max_workers=4, queue_length=1)


async def double(item: int) -> int:
    await anyio.lowlevel.checkpoint()
    return item * 2


def composed(item: int) -> int:
    return (item + 1) * 2


def from_generator(items: Iterable[Any]) -> Iterator[Any]:
    yield from items


async def from_async_generator(items: Iterable[Any]) -> AsyncIterator[Any]:
    for item in items:
        await anyio.lowlevel.checkpoint()
        yield item


SOURCES = [
    pytest.param(list, id="list"),
    pytest.param(tuple, id="tuple"),
    pytest.param(from_generator, id="generator"),
    pytest.param(from_async_generator, id="async-generator"),
]


def pipeline(capacity: Capacity = ONE, sink: Sink | None = None) -> Flow:
    flow = Flow().add(inc, capacity=capacity, name="inc").add(double, capacity=capacity)
    if sink is not None:
        flow.add(sink, capacity=ONE, name="sink")
    return flow


# -- run -------------------------------------------------------------------------------------


@pytest.mark.parametrize("make_source", SOURCES)
async def test_run_takes_every_kind_of_source(make_source: Callable[[Any], Any]) -> None:
    sink = Sink()
    stats = await run(pipeline(sink=sink), make_source(range(10)))
    assert isinstance(stats, FlowStats)
    assert sink.seen == [composed(item) for item in range(10)]
    assert stats.jobs["inc"].received == 10
    assert stats.jobs["sink"].completed == 10


async def test_run_of_an_empty_source() -> None:
    sink = Sink()
    stats = await run(pipeline(sink=sink), [])
    assert sink.seen == []
    assert {name: job.received for name, job in stats.jobs.items()} == {
        "inc": 0,
        "double": 0,
        "sink": 0,
    }


# -- stream ----------------------------------------------------------------------------------


@pytest.mark.parametrize("make_source", SOURCES)
async def test_stream_keeps_order_with_one_worker_per_job(
    make_source: Callable[[Any], Any],
) -> None:
    outputs = await collect(pipeline(), make_source(range(30)))
    assert outputs == [composed(item) for item in range(30)]


@pytest.mark.parametrize("make_source", SOURCES)
async def test_stream_delivers_every_output_with_many_workers(
    make_source: Callable[[Any], Any],
) -> None:
    outputs = await collect(pipeline(MANY), make_source(range(50)))
    assert Counter(outputs) == Counter(composed(item) for item in range(50))


async def test_stream_of_an_empty_source() -> None:
    assert await collect(pipeline(), []) == []


async def test_leaving_stream_normally_waits_for_the_error_job() -> None:
    reported: list[int] = []

    async def fail_odd(item: int) -> int:
        if item % 2:
            raise ValueError(item)
        return item

    async def slow_report(error: ErrorItem) -> None:
        # Whatever else can still run, runs first: only a block that waits for
        # the error job sees this append.
        await anyio.wait_all_tasks_blocked()
        reported.append(error.item)

    flow = Flow().add(fail_odd, capacity=ONE).add_error_job(slow_report)
    assert await collect(flow, range(8)) == [0, 2, 4, 6]
    assert sorted(reported) == [1, 3, 5, 7]


async def test_break_out_of_stream_cancels_the_run() -> None:
    before = running_tasks()
    outputs: list[int] = []
    with anyio.fail_after(HANG_GUARD):
        async with pipeline().stream(itertools.count()) as results:
            async for out in results:
                outputs.append(out)
                if len(outputs) == 5:
                    break
    assert outputs == [composed(item) for item in range(5)]
    assert running_tasks() == before


async def test_break_out_of_stream_cancels_a_processor_sleeping_forever() -> None:
    cancelled: list[int] = []

    async def stuck_on_three(item: int) -> int:
        if item == 3:
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                cancelled.append(item)
                raise
        return item

    flow = Flow().add(inc, capacity=ONE).add(stuck_on_three, capacity=ONE)
    before = running_tasks()
    with anyio.fail_after(HANG_GUARD):
        async with flow.stream(range(10)) as results:
            async for out in results:
                if out == 2:
                    break
    assert cancelled == [3]
    assert running_tasks() == before


# -- start -----------------------------------------------------------------------------------


async def test_start_send_close_join() -> None:
    sink = Sink()
    with anyio.fail_after(HANG_GUARD):
        async with pipeline(sink=sink).start() as running:
            assert isinstance(running, RunningFlow)
            for item in range(5):
                await running.send(item)
            await running.close()
            stats = await running.join()
            assert isinstance(stats, FlowStats)
            assert sink.seen == [composed(item) for item in range(5)]
            assert stats.jobs["sink"].completed == 5
            assert isinstance(running.stats(), FlowStats)


async def test_sending_last_work_item_closes_the_input() -> None:
    sink = Sink()
    with anyio.fail_after(HANG_GUARD):
        async with pipeline(sink=sink).start() as running:
            await running.send(1)
            await running.send(LastWorkItem())
            stats = await running.join()
            with pytest.raises(anyio.ClosedResourceError):
                await running.send(2)
    assert sink.seen == [composed(1)]
    assert stats.jobs["sink"].received == 1


async def test_send_after_close_raises_closed_resource_error() -> None:
    with anyio.fail_after(HANG_GUARD):
        async with pipeline().start() as running:
            await running.send(1)
            await running.close()
            with pytest.raises(anyio.ClosedResourceError):
                await running.send(2)


async def test_send_after_a_processor_ended_the_input_raises_broken_resource_error() -> None:
    sink = Sink()

    async def stopper(item: object) -> object:
        return LastWorkItem() if item == "end" else item

    flow = Flow().add(stopper, capacity=ONE).add(sink, capacity=ONE)
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            await running.send(1)
            await running.send("end")
            await running.join()  # the flow ended its own input, so it drains
            with pytest.raises(anyio.BrokenResourceError):
                await running.send(2)
    assert sink.seen == [1]


async def test_send_after_stop_raises_broken_resource_error() -> None:
    # A producer outside the start block may still hold the handle after stop().
    with anyio.fail_after(HANG_GUARD):
        async with pipeline().start() as running:
            await running.send(1)
            running.stop()
    with pytest.raises(anyio.BrokenResourceError):
        await running.send(2)


async def test_send_waits_while_the_first_queue_is_full() -> None:
    release = anyio.Event()
    third_sent = anyio.Event()

    async def hold(item: int) -> int:
        await release.wait()
        return item

    flow = Flow().add(
        hold, capacity=Capacity(min_workers=1, max_workers=1, queue_length=1), name="hold"
    )
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running, anyio.create_task_group() as tg:
            await running.send(0)
            await wait_until(lambda: running.stats().jobs["hold"].active == 1)
            await running.send(1)  # fills the queue of length 1

            async def send_third() -> None:
                await running.send(2)
                third_sent.set()

            tg.start_soon(send_third)
            await anyio.wait_all_tasks_blocked()
            assert not third_sent.is_set()
            release.set()
            await third_sent.wait()


async def test_source_is_read_only_as_fast_as_the_first_job_accepts() -> None:
    release = anyio.Event()
    pulled = 0

    def endless() -> Iterator[int]:
        nonlocal pulled
        for item in itertools.count():
            pulled += 1
            yield item

    async def hold(item: int) -> int:
        await release.wait()
        return item

    flow = Flow().add(hold, capacity=Capacity(min_workers=1, max_workers=1, queue_length=2))
    with anyio.fail_after(HANG_GUARD):
        async with flow.stream(endless()) as results:
            await wait_until(lambda: pulled >= 1)
            await anyio.wait_all_tasks_blocked()
            # One in the worker, two in the queue, at most one held in between.
            assert pulled <= 4
            release.set()
            async for out in results:
                assert out == 0
                break


async def test_leaving_start_block_normally_closes_and_drains() -> None:
    sink = Sink()
    with anyio.fail_after(HANG_GUARD):
        async with pipeline(MANY, sink=sink).start() as running:
            for item in range(20):
                await running.send(item)
    assert Counter(sink.seen) == Counter(composed(item) for item in range(20))
    assert running.stats().jobs["sink"].completed == 20


async def test_leaving_start_block_with_an_exception_cancels_the_run() -> None:
    class Oops(Exception):
        pass

    oops = Oops()
    cancelled: list[int] = []
    started = anyio.Event()

    async def forever(item: int) -> int:
        try:
            started.set()
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.append(item)
            raise
        return item

    async def fail_inside_the_block() -> None:
        async with Flow().add(forever, name="forever").start() as running:
            await running.send(7)
            await started.wait()
            await wait_until(lambda: running.stats().jobs["forever"].active == 1)
            raise oops

    with anyio.fail_after(HANG_GUARD), pytest.raises((Oops, ExceptionGroup)) as excinfo:
        await fail_inside_the_block()
    assert leaves(excinfo.value) == [oops]
    assert cancelled == [7]


async def test_stop_cancels_a_processor_sleeping_forever() -> None:
    cancelled: list[int] = []
    started = anyio.Event()
    reached_end_of_block = False

    async def forever(item: int) -> int:
        try:
            started.set()
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.append(item)
            raise
        return item

    before = running_tasks()
    with anyio.fail_after(HANG_GUARD):
        async with Flow().add(forever, name="forever").start() as running:
            await running.send(7)
            await started.wait()
            await wait_until(lambda: running.stats().jobs["forever"].active == 1)
            running.stop()
            reached_end_of_block = True
    assert reached_end_of_block
    assert cancelled == [7]
    assert running_tasks() == before
    # The counters still say how many items were abandoned.
    job = running.stats().jobs["forever"]
    assert job.received == 1
    assert job.completed + job.skipped + job.errored == 0


async def test_stop_cancels_the_rest_of_the_block_like_cancel_scope_cancel() -> None:
    with anyio.fail_after(HANG_GUARD):
        async with pipeline().start() as running:
            running.stop()
            await anyio.sleep_forever()


# -- reuse -----------------------------------------------------------------------------------


async def test_same_flow_runs_twice_in_a_row() -> None:
    flow = pipeline()
    first = await run(flow, range(5))
    second = await run(flow, range(7))
    assert first.jobs["inc"].received == 5
    assert second.jobs["inc"].received == 7
    assert await collect(flow, range(3)) == [composed(item) for item in range(3)]
    assert await collect(flow, range(4)) == [composed(item) for item in range(4)]


async def test_same_flow_runs_twice_at_once() -> None:
    flow = pipeline()
    outputs: dict[str, list[int]] = {}
    stats: dict[str, FlowStats] = {}

    async def consume(key: str, source: Iterable[int]) -> None:
        outputs[key] = await collect(flow, source)

    async def run_it(key: str, source: Iterable[int]) -> None:
        stats[key] = await run(flow, source)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume, "a", range(30))
        tg.start_soon(consume, "b", range(100, 140))
        tg.start_soon(run_it, "c", range(11))
        tg.start_soon(run_it, "d", range(23))
    assert outputs["a"] == [composed(item) for item in range(30)]
    assert outputs["b"] == [composed(item) for item in range(100, 140)]
    assert stats["c"].jobs["inc"].received == 11
    assert stats["c"].jobs["double"].completed == 11
    assert stats["d"].jobs["inc"].received == 23
    assert stats["d"].jobs["double"].completed == 23


# -- nothing left behind ---------------------------------------------------------------------


async def test_nothing_left_after_run() -> None:
    before = running_tasks()
    await run(pipeline(MANY).add_error_job(Sink()), range(20))
    assert running_tasks() == before


async def test_nothing_left_after_stream() -> None:
    before = running_tasks()
    await collect(pipeline(MANY).add_error_job(Sink()), range(20))
    assert running_tasks() == before


async def test_nothing_left_after_start() -> None:
    before = running_tasks()
    with anyio.fail_after(HANG_GUARD):
        async with pipeline(MANY).add_error_job(Sink()).start() as running:
            for item in range(20):
                await running.send(item)
            assert running_tasks() != before
    assert running_tasks() == before


# -- edges -----------------------------------------------------------------------------------


async def test_none_is_an_ordinary_item() -> None:
    async def identity(item: object) -> object:
        return item

    flow = Flow().add(identity, capacity=ONE).add(identity, capacity=ONE)
    assert await collect(flow, [None, 0, None, ""]) == [None, 0, None, ""]


async def test_exception_inside_the_stream_block_cancels_the_run() -> None:
    class Oops(Exception):
        pass

    oops = Oops()
    before = running_tasks()

    async def fail_while_reading() -> None:
        async with pipeline().stream(itertools.count()) as results:
            async for out in results:
                assert out == composed(0)
                raise oops

    with anyio.fail_after(HANG_GUARD), pytest.raises((Oops, ExceptionGroup)) as excinfo:
        await fail_while_reading()
    assert leaves(excinfo.value) == [oops]
    assert running_tasks() == before


@pytest.mark.parametrize("make_source", SOURCES[2:])
async def test_a_failing_source_fails_the_run(make_source: Callable[[Any], Any]) -> None:
    # Not spelled out in the contract; "nothing is dropped silently" reads as:
    # the source's exception comes out of run, as a task's would from a task group.
    class SourceError(Exception):
        pass

    error = SourceError()

    def broken() -> Iterator[int]:
        yield 1
        yield 2
        raise error

    with pytest.RaisesGroup(SourceError, allow_unwrapped=True, flatten_subgroups=True):
        await run(pipeline(), make_source(broken()))
