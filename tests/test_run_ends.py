"""How a run ends: a source that fails is a failure, and stopped runs stop ageing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
from _support import (
    HANG_GUARD,
    identity,
    leaves,
    wait_until,
)

from flowrhythm import Capacity, Flow, FlowStats, RunningFlow

pytestmark = pytest.mark.anyio


# -- a source that raises ClosedResourceError ----------------------------------------------------


def closing_iterable() -> Iterator[int]:
    yield 1
    yield 2
    raise anyio.ClosedResourceError


async def closing_async_iterable() -> AsyncIterator[int]:
    yield 1
    yield 2
    raise anyio.ClosedResourceError


@pytest.mark.parametrize("make", [closing_iterable, closing_async_iterable])
async def test_a_source_raising_closed_resource_error_fails_the_run(make: Any) -> None:
    """Only the flow's own input being closed may end the feed quietly."""
    with anyio.fail_after(HANG_GUARD), pytest.raises(ExceptionGroup) as caught:
        await Flow().add(identity).run(make())
    assert [type(leaf) for leaf in leaves(caught.value)] == [anyio.ClosedResourceError]


async def test_a_source_raising_closed_resource_error_fails_a_stream() -> None:
    outputs: list[int] = []
    with anyio.fail_after(HANG_GUARD), pytest.raises(ExceptionGroup) as caught:
        async with Flow().add(identity).stream(closing_async_iterable()) as results:
            outputs.extend([out async for out in results])
    assert [type(leaf) for leaf in leaves(caught.value)] == [anyio.ClosedResourceError]


async def test_a_memory_stream_source_closed_by_its_owner_fails_the_run() -> None:
    send, receive = anyio.create_memory_object_stream[int](10)
    got: list[int] = []

    async def record(item: int) -> int:
        got.append(item)
        return item

    async def owner() -> None:
        async with send:
            for item in range(3):
                await send.send(item)
            await wait_until(lambda: len(got) == 3)
            receive.close()  # the owner closes the stream the flow is reading

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(owner)
            await Flow().add(record).run(receive)

    with anyio.fail_after(HANG_GUARD), pytest.raises(ExceptionGroup) as caught:
        await main()
    assert anyio.ClosedResourceError in [type(leaf) for leaf in leaves(caught.value)]
    assert got == [0, 1, 2]


# -- stopped runs stop ageing ----------------------------------------------------------------------


async def test_the_stats_of_a_stopped_run_stop_ageing() -> None:
    never = anyio.Event()

    async def stuck(item: int) -> int:
        await never.wait()
        return item  # pragma: no cover

    flow = Flow().add(stuck, capacity=Capacity(min_workers=1, max_workers=1), name="stuck")
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            await running.send(1)
            await wait_until(lambda: running.stats().jobs["stuck"].active == 1)
            running.stop()
        first = running.stats()
        await anyio.sleep(0.01)
        second = running.stats()
    assert not first.done
    assert first.elapsed == second.elapsed
    assert first.jobs["stuck"].throughput == second.jobs["stuck"].throughput
    assert first.jobs["stuck"].active_seconds == second.jobs["stuck"].active_seconds
    assert first == second


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("how", ["drained", "stopped"])
def test_stats_after_the_event_loop_has_ended(backend: str, how: str) -> None:
    """A run's stats can still be read once its event loop is gone, however it ended."""

    async def main() -> RunningFlow:
        never = anyio.Event()

        async def maybe_stuck(item: int) -> int:
            if how == "stopped":
                await never.wait()
            return item

        flow = Flow().add(maybe_stuck, name="job")
        async with flow.start() as running:
            await running.send(1)
            if how == "stopped":
                await wait_until(lambda: running.stats().jobs["job"].active == 1)
                running.stop()
        return running

    running = anyio.run(main, backend=backend)
    first: FlowStats = running.stats()
    second = running.stats()
    assert first == second
    assert first.done is (how == "drained")
    assert first.items_in == 1
