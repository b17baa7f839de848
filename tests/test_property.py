"""Property: in random flows, every input ends exactly once and the counters balance."""

from __future__ import annotations

import random
from collections import Counter

import anyio
import attrs
import pytest
from _support import (
    HANG_GUARD,
    Boom,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from flowrhythm import (
    Capacity,
    ErrorItem,
    Flow,
    FlowStats,
    RouteToErrorQueue,
    StopProcessing,
)

PASS, SKIP, FAIL, ROUTE = "pass", "skip", "fail", "route"


@attrs.frozen
class JobPlan:
    """One random job: its capacity and how it treats each item."""

    workers: int
    queue_length: int
    seed: int
    skip_share: int  # out of 10
    fail_share: int  # out of 10
    checkpoint: bool

    def action(self, item: int) -> str:
        """What this job does with ``item``: decided by the item and the seed only."""
        roll = random.Random(self.seed * 1_000_003 + item).randrange(10)
        if roll < self.skip_share:
            return SKIP
        if roll < self.skip_share + self.fail_share:
            return FAIL if roll % 2 else ROUTE
        return PASS

    def capacity(self) -> Capacity:
        return Capacity(
            min_workers=self.workers, max_workers=self.workers, queue_length=self.queue_length
        )


job_plans = st.builds(
    JobPlan,
    workers=st.integers(1, 4),
    queue_length=st.integers(0, 5),
    seed=st.integers(0, 2**32 - 1),
    skip_share=st.integers(0, 3),
    fail_share=st.integers(0, 3),
    checkpoint=st.booleans(),
)


@attrs.define
class Record:
    delivered: list[int] = attrs.Factory(list)
    skipped: list[tuple[int, str]] = attrs.Factory(list)
    errors: list[tuple[int, str, type[BaseException]]] = attrs.Factory(list)


def name_of(index: int) -> str:
    return f"job{index}"


def build(plans: list[JobPlan], error_plan: JobPlan, record: Record, *, with_sink: bool) -> Flow:
    flow = Flow()
    for index, plan in enumerate(plans):

        async def process(item: int, plan: JobPlan = plan, name: str = name_of(index)) -> int:
            if plan.checkpoint:
                await anyio.lowlevel.checkpoint()
            action = plan.action(item)
            if action == SKIP:
                record.skipped.append((item, name))
                raise StopProcessing
            if action == FAIL:
                raise Boom(item)
            if action == ROUTE:
                raise RouteToErrorQueue(item)
            return item

        flow.add(process, capacity=plan.capacity(), name=name_of(index))

    if with_sink:

        async def sink(item: int) -> None:
            record.delivered.append(item)

        flow.add(sink, capacity=Capacity(min_workers=1, max_workers=1, queue_length=0))

    async def report(error: ErrorItem) -> None:
        if error_plan.checkpoint:
            await anyio.lowlevel.checkpoint()
        record.errors.append((error.item, error.job, type(error.exception)))

    flow.add_error_job(report, capacity=error_plan.capacity(), name="errors")
    return flow


def expected_fates(plans: list[JobPlan], items: range) -> tuple[list[int], Record]:
    """Walk each item down the jobs: the first job that does not pass it decides."""
    expected = Record()
    reached: list[list[int]] = [[] for _ in plans]
    for item in items:
        for index, plan in enumerate(plans):
            reached[index].append(item)
            action = plan.action(item)
            if action == SKIP:
                expected.skipped.append((item, name_of(index)))
                break
            if action in (FAIL, ROUTE):
                kind = Boom if action == FAIL else RouteToErrorQueue
                expected.errors.append((item, name_of(index), kind))
                break
        else:
            expected.delivered.append(item)
    return [len(items) for items in reached], expected


def check_counters(stats: FlowStats, plans: list[JobPlan], expected: Record, n: int) -> None:
    reached, _ = expected_fates(plans, range(n))
    for index, count in enumerate(reached):
        job = stats.jobs[name_of(index)]
        skipped = sum(1 for _, name in expected.skipped if name == name_of(index))
        errored = sum(1 for _, name, _ in expected.errors if name == name_of(index))
        assert (job.received, job.skipped, job.errored) == (count, skipped, errored)
        assert job.completed == count - skipped - errored
    assert stats.jobs["errors"].received == len(expected.errors)
    for name, job in stats.jobs.items():
        assert job.received == job.completed + job.skipped + job.errored, name


async def scenario(
    plans: list[JobPlan], error_plan: JobPlan, n: int, use_stream: bool
) -> tuple[Record, FlowStats | None]:
    record = Record()
    flow = build(plans, error_plan, record, with_sink=not use_stream)
    stats: FlowStats | None = None
    with anyio.fail_after(HANG_GUARD):
        if use_stream:
            async with flow.stream(range(n)) as results:
                record.delivered.extend([out async for out in results])
        else:
            stats = await flow.run(range(n))
    return record, stats


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=50, deadline=None)
@given(
    plans=st.lists(job_plans, min_size=1, max_size=4),
    error_plan=job_plans,
    n=st.integers(0, 60),
    use_stream=st.booleans(),
)
def test_every_item_ends_exactly_once(
    backend: str, plans: list[JobPlan], error_plan: JobPlan, n: int, use_stream: bool
) -> None:
    record, stats = anyio.run(scenario, plans, error_plan, n, use_stream, backend=backend)

    # Exactly once: each input is delivered, skipped or handed to the error job.
    endings: Counter[int] = Counter(record.delivered)
    endings.update(item for item, _ in record.skipped)
    endings.update(item for item, _, _ in record.errors)
    assert endings == Counter(range(n))

    # ... and at the place its plan says.
    _, expected = expected_fates(plans, range(n))
    assert sorted(record.delivered) == expected.delivered
    assert sorted(record.skipped) == expected.skipped
    assert sorted(record.errors, key=lambda error: error[0]) == expected.errors
    if all(plan.workers == 1 for plan in plans):
        # One worker per job: first in, first out.
        assert record.delivered == expected.delivered

    if stats is not None:
        check_counters(stats, plans, expected, n)
