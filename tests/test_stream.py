"""``flow.stream()``: its results handle, read, observed, stopped and closed early."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import anyio
import pytest
from _support import (
    HANG_GUARD,
    ErrorLog,
    assert_balanced,
    fixed,
    identity,
    running_tasks,
    wait_until,
)
from anyio.lowlevel import checkpoint
from rich.console import Console

from flowrhythm import (
    Batch,
    ErrorItem,
    Flow,
    FlowResults,
    monitor,
    record,
)

pytestmark = pytest.mark.anyio


# -- reading ---------------------------------------------------------------------------------


async def test_results_come_in_arrival_order_and_complete() -> None:
    """Outputs are handed out in the order the last job handed them on, every one of them."""
    n = 2_000
    handed: list[int] = []

    async def last(item: int) -> int:
        for _ in range(item % 3):
            await checkpoint()  # the workers finish out of input order
        handed.append(item)  # the queue has room: handed on right after this
        return item

    flow = Flow().add(identity, capacity=fixed(2)).add(last, capacity=fixed(4, queue_length=n))
    with anyio.fail_after(HANG_GUARD):
        async with flow.stream(range(n)) as results:
            assert isinstance(results, FlowResults)
            outputs = [out async for out in results]
    assert outputs == handed
    assert sorted(outputs) == list(range(n))
    assert outputs != list(range(n))  # the control: arrival order is not input order


async def test_results_of_a_generator_last_job_are_complete() -> None:
    async def twice(item: int) -> AsyncIterator[int]:
        yield item
        yield -item

    with anyio.fail_after(HANG_GUARD):
        async with Flow().add(twice, capacity=fixed(3)).stream(range(500)) as results:
            outputs = [out async for out in results]
            stats = results.stats()
    assert sorted(outputs) == sorted([*range(500), *(-i for i in range(500))])
    assert stats.items_out == 1_000


async def test_results_end_and_stay_ended() -> None:
    with anyio.fail_after(HANG_GUARD):
        async with Flow().add(identity).stream(range(3)) as results:
            assert [out async for out in results] == [0, 1, 2]
            assert [out async for out in results] == []
            with pytest.raises(anyio.EndOfStream):
                await results.receive()


async def test_receive_takes_one_output() -> None:
    with anyio.fail_after(HANG_GUARD):
        async with Flow().add(identity).stream(range(3)) as results:
            assert await results.receive() == 0
            assert [out async for out in results] == [1, 2]


async def test_results_cannot_be_constructed() -> None:
    with pytest.raises(TypeError, match=r"flow\.stream"):
        FlowResults()


async def test_reading_ready_outputs_still_lets_other_tasks_run() -> None:
    """A consumer that always finds outputs waiting yields every few dozen of them."""
    n = 3_000
    ticks = 0
    worst = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await checkpoint()

    flow = Flow().add(identity, capacity=fixed(1, queue_length=n))
    with anyio.fail_after(HANG_GUARD):
        async with flow.stream(range(n)) as results, anyio.create_task_group() as tg:
            await wait_until(lambda: results.stats().jobs["identity"].completed == n)
            tg.start_soon(ticker)
            await checkpoint()
            seen, since = ticks, 0
            async for _ in results:
                if ticks != seen:
                    seen, since = ticks, 0
                since += 1
                worst = max(worst, since)
            tg.cancel_scope.cancel()
    # Without waiting for each output, yet never for long: the consumer yields every 64
    # outputs, and trio may run it twice in a row (it shuffles each batch of ready tasks).
    assert 1 < worst <= 2 * 64


# -- observing --------------------------------------------------------------------------------


async def test_stats_of_a_stream_run() -> None:
    release = anyio.Event()

    async def held(item: int) -> int:
        if item == 5:
            await release.wait()
        return item

    flow = Flow().add(identity, name="first").add(held, capacity=fixed(1), name="held")
    with anyio.fail_after(HANG_GUARD):
        async with flow.stream(range(10)) as results:
            assert [await results.receive() for _ in range(5)] == [0, 1, 2, 3, 4]
            await wait_until(lambda: results.stats().jobs["held"].active == 1)
            live = results.stats()
            assert not live.done
            assert not results.done
            assert live.items_in == 10
            assert live.jobs["held"].received == 6
            assert live.jobs["held"].in_flight == 1
            assert live.items_out == 5
            release.set()
            assert [out async for out in results] == [5, 6, 7, 8, 9]
        final = results.stats()
    assert final.done
    assert results.stats().done
    assert final.items_out == 10
    assert_balanced(final)


async def test_monitor_and_record_accept_the_results() -> None:
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False)
    with anyio.fail_after(HANG_GUARD):
        async with (
            Flow().add(identity, name="job").stream(range(50)) as results,
            monitor(results, console=console, interval=0.001),
            record(results, interval=0.001) as timeline,
        ):
            outputs = [out async for out in results]
    assert outputs == list(range(50))
    assert timeline.snapshots[-1].items_out == 50
    assert "job" in out.getvalue()


# -- leaving early ---------------------------------------------------------------------------

LAST_JOBS = ["plain", "generator", "batched"]


def flow_with_last_job(kind: str, errors: ErrorLog) -> Flow:
    async def plain(item: int) -> int:
        return item

    async def generator(item: int) -> AsyncIterator[int]:
        yield item
        yield item

    async def batched(batch: list[int]) -> list[int]:
        return batch

    flow = Flow().add(identity, capacity=fixed(2, queue_length=4))
    if kind == "plain":
        flow.add(plain, capacity=fixed(2, queue_length=2), name="last")
    elif kind == "generator":
        flow.add(generator, capacity=fixed(2, queue_length=2), name="last")
    else:
        flow.add(
            batched, capacity=fixed(2, queue_length=2), name="last", batch=Batch(size=2, timeout=0)
        )
    flow.add_error_job(errors)
    return flow


@pytest.mark.parametrize("kind", LAST_JOBS)
@pytest.mark.parametrize("how", ["async-with", "aclose", "close"])
async def test_closing_the_results_midway_cancels_the_run_cleanly(kind: str, how: str) -> None:
    """Closing the results and carrying on is leaving early: no failure, no error items."""
    errors = ErrorLog()
    flow = flow_with_last_job(kind, errors)
    before = running_tasks()
    went_on = False
    with anyio.fail_after(HANG_GUARD):
        async with flow.stream(range(10_000)) as results:
            if how == "async-with":
                async with results:
                    async for _ in results:
                        break
            else:
                async for _ in results:
                    break
                if how == "aclose":
                    await results.aclose()
                else:
                    results.close()  # not a checkpoint: the block carries on until the next
            for _ in range(100):  # the run's tasks try to hand on more outputs meanwhile
                await checkpoint()
            went_on = True  # pragma: no cover
    assert not went_on  # the run was cancelled, and the block with it
    assert errors.errors == []
    stats = results.stats()
    assert not stats.done
    assert stats.jobs["last"].errored == 0
    assert running_tasks() == before
    with pytest.raises(anyio.ClosedResourceError):
        await results.receive()


@pytest.mark.parametrize("kind", LAST_JOBS)
async def test_closing_the_results_from_another_task_cancels_the_run(kind: str) -> None:
    errors = ErrorLog()
    flow = flow_with_last_job(kind, errors)
    ten = anyio.Event()
    read = 0
    with anyio.fail_after(HANG_GUARD):
        async with flow.stream(range(10_000)) as results, anyio.create_task_group() as tg:

            async def close_soon() -> None:
                await ten.wait()
                await results.aclose()

            tg.start_soon(close_soon)
            async for _ in results:  # the reader meets the closed results: it has left
                read += 1
                if read == 10:
                    ten.set()
                await checkpoint()
            pytest.fail("the results ended although the run was cancelled")  # pragma: no cover
    assert read >= 10
    assert errors.errors == []
    assert not results.stats().done


@pytest.mark.parametrize("kind", LAST_JOBS)
async def test_abandoned_results_cancel_the_run(kind: str) -> None:
    errors = ErrorLog()
    flow = flow_with_last_job(kind, errors)
    with anyio.fail_after(HANG_GUARD):
        async with flow.stream(range(10_000)) as results:
            async for _ in results:
                break
    assert errors.errors == []
    assert not results.stats().done


async def test_closing_ended_results_waits_for_the_rest_of_the_run() -> None:
    """``async with results:`` around a complete read is not leaving early."""
    errors = ErrorLog()

    async def odd_fails(item: int) -> int:
        if item % 2:
            raise ValueError(item)
        return item

    async def slow_report(error: ErrorItem) -> None:
        for _ in range(5):
            await checkpoint()
        await errors(error)

    flow = Flow().add(odd_fails).add_error_job(slow_report)
    with anyio.fail_after(HANG_GUARD):
        async with flow.stream(range(20)) as results, results:
            outputs = [out async for out in results]
    assert outputs == list(range(0, 20, 2))
    assert sorted(e.item for e in errors.errors) == list(range(1, 20, 2))
    assert results.stats().done


async def test_stop_through_the_results() -> None:
    release = anyio.Event()

    async def stuck(item: int) -> int:
        if item == 3:
            await release.wait()
        return item

    flow = Flow().add(stuck, capacity=fixed(1), name="stuck")
    went_on = False
    with anyio.fail_after(HANG_GUARD):
        async with flow.stream(range(10)) as results:
            assert [await results.receive() for _ in range(3)] == [0, 1, 2]
            await wait_until(lambda: results.stats().jobs["stuck"].active == 1)
            results.stop()
            await checkpoint()
            went_on = True  # pragma: no cover
    assert not went_on  # stop() ended the block
    stats = results.stats()
    assert not stats.done
    assert stats.jobs["stuck"].in_flight == 1
