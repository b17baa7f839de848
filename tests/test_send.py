"""``RunningFlow.send``: what it accepts, when it raises, and that it stays fair."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from _support import (
    HANG_GUARD,
    Sink,
    assert_balanced,
    fixed,
    identity,
    wait_until,
)
from anyio.lowlevel import checkpoint

from flowrhythm import Flow, LastWorkItem, RunningFlow

pytestmark = pytest.mark.anyio


async def test_every_item_sent_goes_through_in_order() -> None:
    """Sending with room in the queue and sending into a full queue both deliver everything."""
    sink = Sink()
    flow = Flow().add(identity, capacity=fixed(1, queue_length=3)).add(sink)
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            for item in range(1_000):
                await running.send(item)
            await running.close()
            stats = await running.join()
    assert sink.seen == list(range(1_000))
    assert stats.items_in == 1_000
    assert_balanced(stats)


async def test_send_after_close_raises_closed() -> None:
    with anyio.fail_after(HANG_GUARD):
        async with Flow().add(identity).start() as running:
            await running.send(1)
            await running.close()
            with pytest.raises(anyio.ClosedResourceError):
                await running.send(2)
            stats = await running.join()
    assert stats.items_in == 1


async def test_send_after_the_flow_ended_its_input_raises_broken() -> None:
    async def ender(item: int) -> Any:
        return LastWorkItem() if item == 0 else item

    with anyio.fail_after(HANG_GUARD):
        async with Flow().add(ender, name="ender").start() as running:
            await running.send(0)
            await wait_until(lambda: running.stats().jobs["ender"].completed == 1)
            with pytest.raises(anyio.BrokenResourceError):
                await running.send(1)
            stats = await running.join()
    assert stats.items_in == 1


@pytest.mark.parametrize("queue", ["room", "full"])
async def test_send_after_stop_from_another_task_raises_broken(queue: str) -> None:
    """A sender outside the run's block is refused once the run is stopped: nothing is counted."""
    release = anyio.Event()

    async def held(item: int) -> int:
        await release.wait()
        return item

    flow = Flow().add(
        held, capacity=fixed(1, queue_length=2 if queue == "full" else 100), name="held"
    )
    handle: list[RunningFlow] = []
    stopped = anyio.Event()

    async def the_run() -> None:
        async with flow.start() as running:
            handle.append(running)
            await running.send(0)
            await running.send(1)
            await anyio.sleep_forever()

    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(the_run)
            await wait_until(lambda: bool(handle) and handle[0].stats().jobs["held"].active == 1)
            running = handle[0]
            if queue == "full":
                await running.send(2)  # the queue of 2 is full now
            running.stop()
            stopped.set()
            with pytest.raises(anyio.BrokenResourceError):
                await running.send(99)
            items_in = running.stats().items_in
        with pytest.raises(anyio.BrokenResourceError):
            await running.send(100)  # and after the run is over
    assert items_in == (3 if queue == "full" else 2)
    assert running.stats().items_in == items_in


async def test_send_after_stop_inside_the_block_ends_the_block_quietly() -> None:
    went_on = False
    with anyio.fail_after(HANG_GUARD):
        async with Flow().add(identity).start() as running:
            await running.send(1)
            running.stop()
            await running.send(2)
            went_on = True  # pragma: no cover
    assert not went_on
    assert running.stats().items_in == 1
    with pytest.raises(anyio.BrokenResourceError):
        await running.send(3)


async def test_sending_in_a_loop_lets_another_task_run_every_few_dozen_items() -> None:
    """A flow of instant jobs fed by ``send`` in a loop: the sender never waits, yet it yields."""
    n = 5_000
    ticks = 0
    worst = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await checkpoint()

    flow = Flow().add(identity, capacity=fixed(1, queue_length=n)).add(identity, name="second")
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            async with anyio.create_task_group() as tg:
                tg.start_soon(ticker)
                await checkpoint()
                seen, since = ticks, 0
                for item in range(n):
                    await running.send(item)
                    if ticks != seen:
                        seen, since = ticks, 0
                    since += 1
                    worst = max(worst, since)
                tg.cancel_scope.cancel()
            await running.close()
            stats = await running.join()
    assert stats.items_in == n
    assert_balanced(stats)
    # The sender yields every 64 items; trio may run it twice in a row (it shuffles each
    # batch of ready tasks).
    assert 1 < worst <= 2 * 64
