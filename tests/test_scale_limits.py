"""Scale: 10,000 workers in one job, and memory that stays flat as the item count grows.

Nothing here measures time: each test runs under a generous hang guard
(:data:`BIG_GUARD`) so that a pathological slow-down (quadratic start-up or teardown)
fails instead of hanging. Peak RSS for 1,000,000 items against 100,000 is measured by
``benchmarks/memory.py`` in fresh processes; here a cheaper, robust version compares
the peak count of allocated memory blocks over 20,000 and 200,000 items.
"""

from __future__ import annotations

import gc
import sys
from typing import Any

import anyio
import pytest
from _support import (
    Dial,
    Factory,
    Gate,
    Sink,
    assert_balanced,
    live_tasks,
    not_in_debug_mode,
    poll_until,
)
from anyio.lowlevel import checkpoint

from flowrhythm import Capacity, Flow

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_unclosed_streams")]

WORKERS = 10_000
#: Seconds: a hang guard for the big runs, far above what they need on a slow machine.
BIG_GUARD = 90


async def hop(item: int) -> int:
    await checkpoint()
    return item


@not_in_debug_mode()
async def test_ten_thousand_workers_start_run_and_tear_down() -> None:
    factory = Factory(hop)
    sink = Sink()
    flow = Flow().add(
        factory.factory,
        Capacity(min_workers=WORKERS, max_workers=WORKERS, queue_length=16),
        name="wide",
    )
    flow.add(sink, name="sink")
    before = live_tasks()
    with anyio.fail_after(BIG_GUARD):
        stats = await flow.run(range(2 * WORKERS))
    assert live_tasks() <= before
    assert factory.enters == factory.exits == WORKERS
    sink.assert_exactly_once(range(2 * WORKERS))
    assert_balanced(stats)
    assert stats.jobs["wide"].workers == 0


@not_in_debug_mode()
async def test_ten_thousand_idle_workers_are_stopped() -> None:
    factory = Factory(hop)
    flow = Flow().add(
        factory.factory, Capacity(min_workers=WORKERS, max_workers=WORKERS), name="wide"
    )
    before = live_tasks()
    with anyio.fail_after(BIG_GUARD):
        async with flow.start() as running:
            await poll_until(lambda: running.stats().jobs["wide"].idle == WORKERS, BIG_GUARD)
            running.stop()
    assert live_tasks() <= before
    assert factory.enters == factory.exits == WORKERS


@not_in_debug_mode()
async def test_one_job_scales_to_ten_thousand_workers_and_back() -> None:
    dial = Dial(1)
    gate = Gate()
    sink = Sink()
    flow = Flow().add(
        gate, dial.capacity(min_workers=1, max_workers=WORKERS, queue_length=WORKERS), name="g"
    )
    flow.add(sink, name="sink")
    before = live_tasks()
    with anyio.fail_after(BIG_GUARD):
        async with flow.start() as running:
            for item in range(WORKERS):
                await running.send(item)
            dial.target = WORKERS
            # every worker holds one
            await poll_until(lambda: len(gate.inside) == WORKERS, BIG_GUARD)
            assert running.stats().jobs["g"].workers == WORKERS
            dial.target = 1
            await dial.ticked()
            assert running.stats().jobs["g"].workers == WORKERS  # none interrupted
            gate.open()
            await poll_until(lambda: running.stats().jobs["g"].workers == 1, BIG_GUARD)
            await running.close()
            stats = await running.join()
    assert live_tasks() <= before
    sink.assert_exactly_once(range(WORKERS))
    assert_balanced(stats)
    assert stats.jobs["g"].scale_ups >= 1
    assert stats.jobs["g"].scale_downs >= 1


# -- memory ------------------------------------------------------------------------------------

SMALL, LARGE = 20_000, 200_000


async def peak_blocks(items: int) -> int:
    """Peak growth of CPython's allocated memory blocks during a run of ``items``.

    ``sys.getallocatedblocks()`` (live pymalloc blocks) is read every 256 items by the
    last of 3 jobs with small queues, so the run goes at full speed (``tracemalloc``
    would make it several times slower).
    """
    peak = 0

    async def identity(item: Any) -> Any:
        return item

    async def tail(item: int) -> int:
        nonlocal peak
        if not item % 256:
            peak = max(peak, sys.getallocatedblocks())
        return item

    flow = Flow()
    one = Capacity(min_workers=1, max_workers=1, queue_length=8)
    flow.add(identity, one, name="j0").add(identity, one, name="j1").add(tail, one, name="j2")
    await flow.run(range(1000))  # warm up: first-use allocations are not per item
    gc.collect()
    start = sys.getallocatedblocks()
    stats = await flow.run(range(items))
    assert stats.jobs["j2"].completed == items
    return peak - start


@not_in_debug_mode()
async def test_memory_stays_flat_as_the_item_count_grows() -> None:
    """Ten times the items must not take anywhere near ten times the memory.

    Measured (2 cores, CPython 3.11): about 2,300-3,800 blocks over 20,000 items and
    3,400-3,600 over 200,000 -- the rings of recent processing times fill up (1,024
    floats per job) and then memory is flat. Anything kept per item would add 180,000
    blocks or more between the two.
    """
    assert sys.getallocatedblocks() > 0  # pymalloc is in use: the count means something
    small = await peak_blocks(SMALL)
    large = await peak_blocks(LARGE)
    assert large <= 2 * small + 4096, (small, large)
