"""Calling flowrhythm from plain ``asyncio.run(...)`` and ``trio.run(...)`` programs."""

from __future__ import annotations

import asyncio
from collections import Counter

import anyio
import trio

from flowrhythm import Capacity, ErrorItem, Flow, FlowStats

TWO = Capacity(min_workers=2, max_workers=2)


async def inc(item: int) -> int:
    await anyio.lowlevel.checkpoint()
    return item + 1


async def fail_on_seven(item: int) -> int:
    if item == 7:
        raise ValueError(item)
    return item * 10


def build(errors: list[ErrorItem]) -> Flow:
    async def report(error: ErrorItem) -> None:
        errors.append(error)

    return (
        Flow()
        .add(inc, capacity=TWO, name="inc")
        .add(fail_on_seven, capacity=TWO, name="check")
        .add_error_job(report, name="errors")
    )


async def exercise(flow: Flow) -> tuple[FlowStats, list[int], FlowStats]:
    """Use run, stream and start in one program, as a user of either loop would."""
    stats = await flow.run(range(10))
    async with flow.stream(range(10)) as results:
        outputs = [out async for out in results]
    async with flow.start() as running:
        for item in range(10):
            await running.send(item)
        await running.close()
        joined = await running.join()
    return stats, outputs, joined


def check(
    stats: FlowStats, outputs: list[int], joined: FlowStats, errors: list[ErrorItem]
) -> None:
    expected = Counter((item + 1) * 10 for item in range(10) if item + 1 != 7)
    assert Counter(outputs) == expected
    for result in (stats, joined):
        assert result.jobs["inc"].completed == 10
        assert result.jobs["check"].completed == 9
        assert result.jobs["check"].errored == 1
        assert result.jobs["errors"].completed == 1
    assert [(error.item, error.job) for error in errors] == [(7, "check")] * 3


def test_from_asyncio_run() -> None:
    errors: list[ErrorItem] = []
    stats, outputs, joined = asyncio.run(exercise(build(errors)))
    check(stats, outputs, joined, errors)


def test_from_trio_run() -> None:
    errors: list[ErrorItem] = []
    stats, outputs, joined = trio.run(exercise, build(errors))
    check(stats, outputs, joined, errors)


def test_same_flow_from_both_loops() -> None:
    errors: list[ErrorItem] = []
    flow = build(errors)
    first = asyncio.run(exercise(flow))
    second = trio.run(exercise, flow)
    assert first[0].jobs["inc"].completed == second[0].jobs["inc"].completed == 10
    assert len(errors) == 6


def test_flow_built_outside_any_event_loop_runs_with_anyio_run() -> None:
    # The definition needs no running loop; each run makes its own streams.
    errors: list[ErrorItem] = []
    flow = build(errors)
    for backend in ("asyncio", "trio"):
        _, outputs, joined = anyio.run(exercise, flow, backend=backend)
        assert Counter(outputs) == Counter((item + 1) * 10 for item in range(10) if item + 1 != 7)
        assert joined.jobs["errors"].completed == 1
