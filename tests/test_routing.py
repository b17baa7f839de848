"""Routing and composition: routers, arms merged back, flows folded into flows."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from _support import HANG_GUARD, collect, run
from anyio.lowlevel import checkpoint
from hypothesis import given, settings
from hypothesis import strategies as st
from test_reliability import assert_no_unclosed_streams, live_tasks

from flowrhythm import (
    Adaptive,
    Capacity,
    ErrorItem,
    Flow,
    FlowStats,
    LastWorkItem,
    StopProcessing,
    UtilizationCapacity,
)
from flowrhythm.testing import run_virtual

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _no_unclosed_streams() -> Iterator[None]:
    yield
    assert_no_unclosed_streams()


def balanced(stats: FlowStats) -> None:
    """Every job counted each input it received exactly once."""
    for name, job in stats.jobs.items():
        assert job.received == job.completed + job.skipped + job.errored, name


async def double(x: int) -> int:
    return 2 * x


async def negate(x: int) -> int:
    return -x


async def inc(x: int) -> int:
    return x + 1


def parity(x: int) -> str:
    return "even" if x % 2 == 0 else "odd"


async def async_parity(x: int) -> str:
    await checkpoint()
    return parity(x)


# -- the basics -----------------------------------------------------------------------------


@pytest.mark.parametrize("classify", [parity, async_parity])
async def test_each_item_goes_to_its_arm_and_the_arms_merge_into_the_next_job(
    classify: Any,
) -> None:
    flow = (
        Flow()
        .add_router(classify, {"even": Flow().add(double), "odd": Flow().add(negate).add(inc)})
        .add(inc)
    )
    out = await collect(flow, range(20))
    assert sorted(out) == sorted(2 * x + 1 if x % 2 == 0 else -x + 2 for x in range(20))
    stats = await run(flow, range(20))
    balanced(stats)
    r = classify.__name__  # the router's default name
    assert list(stats.jobs) == [r, f"{r}[even].double", f"{r}[odd].negate", f"{r}[odd].inc", "inc"]
    router = stats.jobs[r]
    assert router.received == router.completed == 20
    assert stats.items_out == 20


async def test_a_router_last_gives_every_arms_outputs_and_counts_them() -> None:
    flow = Flow().add_router(parity, {"even": Flow(), "odd": negate}, name="route")
    assert sorted(await collect(flow, range(10))) == sorted(
        x if x % 2 == 0 else -x for x in range(10)
    )
    stats = await run(flow, range(10))
    assert stats.items_out == 10
    assert list(stats.jobs) == ["route", "route[odd].negate"]
    balanced(stats)


async def test_an_empty_arm_in_the_middle_passes_items_through() -> None:
    flow = Flow().add_router(parity, {"even": Flow(), "odd": negate}).add(double)
    assert sorted(await collect(flow, range(6))) == sorted(
        2 * x if x % 2 == 0 else -2 * x for x in range(6)
    )


async def test_an_unknown_label_goes_to_the_default_arm() -> None:
    flow = Flow().add_router(lambda x: x % 3, {0: inc, 1: negate}, default=0, name="r")
    out = await collect(flow, range(9))
    assert sorted(out) == sorted(-x if x % 3 == 1 else x + 1 for x in range(9))


async def test_an_unknown_label_without_default_is_an_error_item_naming_it() -> None:
    errors: list[ErrorItem] = []

    async def report(error: ErrorItem) -> None:
        errors.append(error)

    flow = Flow().add_router(lambda x: x % 3, {0: inc, 1: negate}, name="r")
    flow.add_error_job(report)
    stats = await run(flow, range(9))
    assert sorted(e.item for e in errors) == [2, 5, 8]
    assert all(isinstance(e.exception, LookupError) for e in errors)
    assert "2" in str(errors[0].exception)
    assert {e.job for e in errors} == {"r"}
    assert stats.jobs["r"].errored == 3
    balanced(stats)


async def test_an_unknown_label_without_an_error_job_fails_the_run() -> None:
    flow = Flow().add_router(parity, {"even": inc}, name="r")
    with pytest.raises(ExceptionGroup) as caught:
        await run(flow, range(4))
    assert isinstance(caught.value.exceptions[0], LookupError)
    assert "'odd'" in str(caught.value.exceptions[0])


async def test_classify_failing_or_skipping_is_routed_like_a_processor() -> None:
    errors: list[ErrorItem] = []

    async def report(error: ErrorItem) -> None:
        errors.append(error)

    def classify(x: int) -> str:
        if x == 3:
            raise ValueError("bad item")
        if x == 4:
            raise StopProcessing
        return "a"

    flow = Flow().add_router(classify, {"a": inc}, name="r").add_error_job(report)
    stats = await run(flow, range(6))
    assert [(e.item, type(e.exception)) for e in errors] == [(3, ValueError)]
    assert stats.jobs["r"].skipped == 1
    assert stats.items_out == 4
    balanced(stats)


async def test_last_work_item_in_an_arm_ends_the_whole_input() -> None:
    async def stop_at_5(x: int) -> Any:
        return LastWorkItem() if x == 5 else x

    async def endless() -> Any:
        n = 0
        while True:
            yield n
            n += 1

    flow = Flow().add_router(parity, {"even": inc, "odd": stop_at_5})
    stats = await run(flow, endless())
    assert stats.done
    balanced(stats)


# -- hypothesis: outputs are exactly the union of the arms' outputs ----------------------------

#: An arm job: (kind, parameter, workers); kinds: add, skip (x % p == 0), fail (x % p == 1).
job_plan = st.tuples(
    st.sampled_from(["add", "skip", "fail"]), st.integers(2, 5), st.integers(1, 3)
)
arm_plan = st.lists(job_plan, max_size=3)


def arm_flow(plans: list[tuple[str, int, int]]) -> Flow:
    flow = Flow()
    for kind, p, workers in plans:

        async def step(pair: tuple[int, int], kind: str = kind, p: int = p) -> tuple[int, int]:
            item, value = pair
            await checkpoint()
            if kind == "skip" and value % p == 0:
                raise StopProcessing
            if kind == "fail" and value % p == 1:
                raise ValueError(item)
            return item, value + (p if kind == "add" else 0)

        flow.add(step, capacity=Capacity(initial_workers=workers, max_workers=workers))
    return flow


def arm_fate(plans: list[tuple[str, int, int]], value: int) -> int | str:
    for kind, p, _ in plans:
        if kind == "skip" and value % p == 0:
            return "skipped"
        if kind == "fail" and value % p == 1:
            return "errored"
        if kind == "add":
            value += p
    return value


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=40, deadline=None)
@given(
    arms=st.lists(arm_plan, min_size=1, max_size=3),
    labels=st.integers(1, 4),
    use_default=st.booleans(),
    n=st.integers(0, 40),
    router_workers=st.integers(1, 3),
    nested=st.booleans(),
)
def test_outputs_are_exactly_the_union_of_each_arms_outputs(
    backend: str,
    arms: list[list[tuple[str, int, int]]],
    labels: int,
    use_default: bool,
    n: int,
    router_workers: int,
    nested: bool,
) -> None:
    def label_of(pair: tuple[int, int]) -> int:
        return pair[0] % labels

    arm_flows: dict[int, Flow] = {i: arm_flow(plans) for i, plans in enumerate(arms)}
    if nested:  # the first arm routes again, on the item's parity
        arm_flows[0] = Flow().add_router(
            lambda pair: pair[0] % 2, {0: arm_flow(arms[0]), 1: Flow()}, name="inner"
        )
    default = 0 if use_default else None
    errors: list[ErrorItem] = []

    async def report(error: ErrorItem) -> None:
        errors.append(error)

    async def scenario() -> FlowStats:
        flow = Flow().add_router(
            label_of,
            arm_flows,
            default=default,
            name="route",
            capacity=Capacity(initial_workers=router_workers, max_workers=router_workers),
        )
        flow.add_error_job(report)
        with anyio.fail_after(HANG_GUARD):
            async with flow.start() as running:
                for item in range(n):
                    await running.send((item, item))
                await running.close()
                return await running.join()

    async def streamed() -> list[Any]:
        flow = Flow().add_router(label_of, arm_flows, default=default, name="route")
        flow.add_error_job(report)
        with anyio.fail_after(HANG_GUARD):
            async with flow.stream([(i, i) for i in range(n)]) as results:
                return [out async for out in results]

    stats = anyio.run(scenario, backend=backend)
    balanced(stats)
    errors.clear()
    delivered = anyio.run(streamed, backend=backend)

    expected: Counter[tuple[int, int]] = Counter()
    failed = set()
    for item in range(n):
        label = item % labels
        if label not in arm_flows:
            if default is None:
                failed.add(item)
                continue
            label = default
        plans = arms[label]
        if nested and label == 0 and item % 2 == 1:
            fate: int | str = item  # the inner router's empty arm
        else:
            fate = arm_fate(plans, item)
        if fate == "errored":
            failed.add(item)
        elif fate != "skipped":
            assert isinstance(fate, int)
            expected[(item, fate)] += 1
    assert Counter(delivered) == expected
    assert {e.item[0] for e in errors} == failed
    assert stats.items_out == sum(expected.values())


# -- drain, scaling, cancellation --------------------------------------------------------------


async def test_drain_with_many_workers_per_arm() -> None:
    async def slow(x: int) -> int:
        await checkpoint()
        return x

    many = Capacity(initial_workers=8, max_workers=8, queue_length=2)
    flow = (
        Flow()
        .add_router(
            lambda x: x % 3,
            {0: Flow().add(slow, many), 1: Flow().add(slow, many), 2: Flow()},
            capacity=many,
            name="r",
        )
        .add(slow, many)
    )
    assert sorted(await collect(flow, range(500))) == list(range(500))
    stats = await run(flow, range(500))
    assert stats.done
    assert stats.items_out == 500
    balanced(stats)


async def test_cancellation_at_random_instants_leaves_no_task_and_no_stream() -> None:
    rng = random.Random(16)
    flow = (
        Flow()
        .add(inc)
        .add_router(
            parity,
            {
                "even": Flow().add(double, Capacity(initial_workers=3, max_workers=3)),
                "odd": Flow().add_router(lambda x: x % 3, {0: negate, 1: Flow()}, default=1),
            },
            name="r",
        )
        .add(inc)
    )
    for _ in range(60):
        n = rng.randrange(0, 200)
        rounds = rng.randrange(0, 2 * n + 20)
        before = live_tasks()
        with anyio.fail_after(HANG_GUARD):
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as group:

                    async def cancel_later(rounds: int = rounds) -> None:
                        for _ in range(rounds):
                            await checkpoint()
                        scope.cancel()

                    group.start_soon(cancel_later)
                    if rng.random() < 0.5:
                        await flow.run(range(n))
                    else:
                        async with flow.stream(range(n)) as results:
                            async for _ in results:
                                await checkpoint()
                    await anyio.sleep_forever()
        assert live_tasks() <= before
        assert_no_unclosed_streams()


def test_a_slow_arm_blocks_the_router_and_only_that_arm_grows() -> None:
    async def fast(x: int) -> int:
        await anyio.sleep(0.001)
        return x

    async def slow(x: int) -> int:
        await anyio.sleep(0.05)
        return x

    def scaling() -> UtilizationCapacity:
        return UtilizationCapacity(
            min_workers=1, max_workers=16, queue_length=4, sampling=0.1, cooldown=0.2
        )

    async def main() -> FlowStats:
        flow = Flow().add_router(
            parity,
            {"even": Flow().add(fast, scaling()), "odd": Flow().add(slow, scaling())},
            name="r",
            capacity=Capacity(queue_length=4),
        )
        return await flow.run(range(2000))

    for backend in ("asyncio", "trio"):
        stats = run_virtual(main, backend=backend)
        balanced(stats)
        assert stats.jobs["r"].blocked_seconds > 0
        slow_arm, fast_arm = stats.jobs["r[odd].slow"], stats.jobs["r[even].fast"]
        assert slow_arm.scale_ups > 0
        assert slow_arm.scale_ups > fast_arm.scale_ups
        assert stats.bottleneck().startswith("r[odd].slow:")


# -- composition -----------------------------------------------------------------------------


async def test_folding_a_flow_twice_gives_independent_jobs() -> None:
    part = Flow().add(inc).add(double)
    flow = Flow().add(part).add(part)
    part.add(negate)  # later changes to the folded flow do not reach this one
    assert flow.describe().splitlines() == ["inc", "double", "inc#2", "double#2"]
    stats = await run(flow, range(5))
    assert list(stats.jobs) == ["inc", "double", "inc#2", "double#2"]
    assert sorted(await collect(flow, range(3))) == [2 * (2 * (x + 1) + 1) for x in range(3)]
    balanced(stats)


async def test_folding_a_flow_with_a_router_twice_renames_its_arm_jobs() -> None:
    part = Flow().add_router(parity, {"even": inc, "odd": Flow()}, name="r")
    flow = Flow().add(part).add(part)
    stats = await run(flow, range(4))
    assert list(stats.jobs) == ["r", "r[even].inc", "r#2", "r#2[even].inc"]
    assert stats.items_out == 4


async def test_routers_nest_and_describe_shows_the_shape() -> None:
    inner = Flow().add_router(lambda x: x % 3, {0: negate, 1: Flow()}, default=1, name="mod3")
    flow = Flow().add(inc).add_router(parity, {"even": inner, "odd": double}, name="r")
    assert flow.describe().splitlines() == (
        [
            "inc",
            "r (router)",
            "  ['even']",
            "    r[even].mod3 (router)",
            "      [0]",
            "        r[even].mod3[0].negate",
            "      [1] (default)",
            "        (passes items through)",
            "  ['odd']",
            "    r[odd].double",
        ]
    )
    out = await collect(flow, range(12))

    def expect(x: int) -> int:
        y = x + 1
        if y % 2:
            return 2 * y
        return -y if y % 3 == 0 else y

    assert sorted(out) == sorted(expect(x) for x in range(12))


# -- bad values ------------------------------------------------------------------------------


def test_bad_values_raise_at_add_router_time() -> None:
    with pytest.raises(ValueError, match="arms must not be empty"):
        Flow().add_router(parity, {})
    with pytest.raises(ValueError, match="default"):
        Flow().add_router(parity, {"even": inc}, default="odd")
    with pytest.raises(TypeError, match="classify"):
        Flow().add_router("parity", {"even": inc})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="arms"):
        Flow().add_router(parity, [inc])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ordered"):
        Flow().add_router(parity, {"even": inc}, ordered=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Flow().add_router(parity, {"even": lambda x: x})
    with_errors = Flow().add(inc).add_error_job(inc)
    with pytest.raises(ValueError, match="error job"):
        Flow().add_router(parity, {"even": with_errors})
    with pytest.raises(ValueError, match="error job"):
        Flow().add(with_errors)
    with pytest.raises(TypeError, match="capacity"):
        Flow().add(Flow().add(inc), capacity=Capacity())  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="concurrency"):
        Flow().add(Flow().add(inc), concurrency=Adaptive(1, 1, 4))  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="already used"):
        Flow().add(inc, name="r").add_router(parity, {"even": inc}, name="r")
    with pytest.raises(ValueError, match="already used"):
        Flow().add(inc, name="r[even].inc").add_router(parity, {"even": inc}, name="r")
