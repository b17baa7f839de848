"""Building a flow: chaining, locks, the error job, names, capacities, processor kinds."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import pytest
from _support import HANG_GUARD, collect, leaves, run, wait_until

from flowrhythm import (
    Capacity,
    ErrorItem,
    Flow,
    ProcessorFactory,
    UtilizationCapacity,
    job_capacity,
    job_name,
    workers,
)

pytestmark = pytest.mark.anyio

ONE = Capacity(min_workers=1, max_workers=1)
FOUR = Capacity(min_workers=4, max_workers=4)


async def inc(item: int) -> int:
    return item + 1


async def double(item: int) -> int:
    return item * 2


async def multiply(item: int, factor: int) -> int:
    return item * factor


async def report(error: ErrorItem) -> None:
    pass


async def alternative_report(error: ErrorItem) -> None:
    pass


class Doubler:
    async def double(self, item: int) -> int:
        return item * 2

    async def twice(self, item: int) -> AsyncIterator[int]:
        yield item
        yield item


class CallableDoubler:
    async def __call__(self, item: int) -> int:
        return item * 2


# -- chaining ------------------------------------------------------------------------------


async def test_every_builder_returns_the_flow() -> None:
    flow = Flow()
    assert flow.add(inc) is flow
    assert flow.add_job(double) is flow
    assert flow.add_job_with_lock(inc, anyio.Lock()) is flow
    assert flow.add_error_job(report) is flow


async def test_chained_calls_build_the_pipeline_in_order() -> None:
    flow = Flow().add(inc, capacity=ONE).add_job(double, capacity=ONE)
    assert await collect(flow, [1, 2, 3]) == [4, 6, 8]


async def test_second_error_job_is_refused() -> None:
    flow = Flow().add(inc).add_error_job(report)
    with pytest.raises(ValueError, match="error"):
        flow.add_error_job(alternative_report)


# -- add_job_with_lock ---------------------------------------------------------------------


class Concurrency:
    """Counts how many calls are inside a section at once."""

    def __init__(self) -> None:
        self.inside = 0
        self.most = 0

    def enter(self) -> None:
        self.inside += 1
        self.most = max(self.most, self.inside)

    def leave(self) -> None:
        self.inside -= 1

    def processor(self) -> Callable[[int], Awaitable[int]]:
        async def guarded(item: int) -> int:
            self.enter()
            # Let every other worker run as far as it can: without the resource
            # manager, all of them would be inside now.
            await anyio.wait_all_tasks_blocked()
            self.leave()
            return item

        return guarded


@pytest.mark.parametrize(
    ("make_manager", "limit"),
    [
        pytest.param(anyio.Lock, 1, id="lock"),
        pytest.param(lambda: anyio.Semaphore(2), 2, id="semaphore-2"),
        pytest.param(lambda: anyio.CapacityLimiter(3), 3, id="limiter-3"),
        # The control: a limit above the worker count lets all four in at once,
        # which proves the probe sees concurrency when there is some.
        pytest.param(lambda: anyio.CapacityLimiter(10), 4, id="limiter-10"),
    ],
)
async def test_lock_bounds_concurrency(
    make_manager: Callable[[], AbstractAsyncContextManager[Any]], limit: int
) -> None:
    probe = Concurrency()
    flow = Flow().add_job_with_lock(probe.processor(), make_manager(), capacity=FOUR)
    outputs = await collect(flow, range(12))
    assert Counter(outputs) == Counter(range(12))
    assert probe.most == limit
    assert probe.inside == 0


async def test_lock_is_held_for_the_whole_generator() -> None:
    probe = Concurrency()

    async def expand(item: int) -> AsyncIterator[int]:
        probe.enter()
        yield item
        await anyio.wait_all_tasks_blocked()
        yield item + 100
        probe.leave()

    flow = Flow().add_job_with_lock(expand, anyio.Lock(), capacity=FOUR)
    outputs = await collect(flow, range(8))
    assert Counter(outputs) == Counter([*range(8), *range(100, 108)])
    assert probe.most == 1


async def test_lock_is_shared_by_jobs() -> None:
    probe = Concurrency()
    lock = anyio.Lock()
    two = Capacity(min_workers=2, max_workers=2)
    flow = (
        Flow()
        .add_job_with_lock(probe.processor(), lock, capacity=two, name="first")
        .add_job_with_lock(probe.processor(), lock, capacity=two, name="second")
    )
    outputs = await collect(flow, range(10))
    assert Counter(outputs) == Counter(range(10))
    assert probe.most == 1


async def test_lock_is_shared_by_flows() -> None:
    probe = Concurrency()
    lock = anyio.Lock()
    first = Flow().add_job_with_lock(probe.processor(), lock, capacity=FOUR)
    second = Flow().add_job_with_lock(probe.processor(), lock, capacity=FOUR)
    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(first.run, range(8))
            tg.start_soon(second.run, range(8))
    assert probe.most == 1


async def test_lock_job_takes_name_and_capacity() -> None:
    flow = Flow().add_job_with_lock(
        inc, anyio.Lock(), capacity=Capacity(min_workers=2, max_workers=3), name="locked"
    )
    stats = await run(flow, range(4))
    assert list(stats.jobs) == ["locked"]
    assert (stats.jobs["locked"].min_workers, stats.jobs["locked"].max_workers) == (2, 3)
    assert stats.jobs["locked"].completed == 4


# -- names ---------------------------------------------------------------------------------


async def job_names(flow: Flow) -> set[str]:
    stats = await run(flow, range(2))
    return set(stats.jobs)


async def test_default_name_is_the_qualname() -> None:
    flow = Flow().add(inc).add(Doubler().double).add(functools.partial(multiply, factor=3))
    flow.add_error_job(report)
    assert await job_names(flow) == {"inc", "Doubler.double", "multiply", "report"}


async def test_repeated_default_names_get_a_suffix() -> None:
    flow = Flow().add(inc).add(inc).add(double).add(inc)
    assert await job_names(flow) == {"inc", "inc#2", "inc#3", "double"}


async def test_default_name_avoids_an_explicit_one() -> None:
    flow = Flow().add(double, name="inc").add(inc)
    assert await job_names(flow) == {"inc", "inc#2"}


async def test_job_name_beats_the_qualname() -> None:
    @job_name("fetcher")
    async def fetch(item: int) -> int:
        return item

    assert await job_names(Flow().add(fetch)) == {"fetcher"}


async def test_name_argument_beats_job_name() -> None:
    @job_name("fetcher")
    async def fetch(item: int) -> int:
        return item

    assert await job_names(Flow().add(fetch, name="explicit")) == {"explicit"}


async def test_error_job_names() -> None:
    @job_name("on-error")
    async def decorated_report(error: ErrorItem) -> None:
        pass

    assert await job_names(Flow().add(inc).add_error_job(report, name="errors")) == {
        "inc",
        "errors",
    }
    assert await job_names(Flow().add(inc).add_error_job(decorated_report)) == {
        "inc",
        "on-error",
    }


async def test_explicit_duplicate_name_is_refused() -> None:
    flow = Flow().add(inc, name="stage-x")
    with pytest.raises(ValueError, match="stage-x"):
        flow.add(double, name="stage-x")


async def test_duplicate_job_name_decorator_is_refused() -> None:
    @job_name("twin")
    async def first(item: int) -> int:
        return item

    @job_name("twin")
    async def second(item: int) -> int:
        return item

    flow = Flow().add(first)
    with pytest.raises(ValueError, match="twin"):
        flow.add(second)


async def test_explicit_name_may_not_repeat_a_default_one() -> None:
    flow = Flow().add(inc)
    with pytest.raises(ValueError, match="inc"):
        flow.add(double, name="inc")


async def test_refused_add_leaves_the_flow_unchanged() -> None:
    flow = Flow().add(inc, name="only", capacity=ONE)
    with pytest.raises(ValueError, match="only"):
        flow.add(double, name="only")
    with pytest.raises(TypeError):
        flow.add(42)  # type: ignore[call-overload]
    assert await collect(flow, [1, 2]) == [2, 3]


# -- capacity precedence -------------------------------------------------------------------


async def test_capacity_argument_beats_the_decorators() -> None:
    @workers(min=2, max=2)
    async def by_workers(item: int) -> int:
        return item

    @job_capacity(Capacity(min_workers=2, max_workers=2))
    async def by_capacity(item: int) -> int:
        return item

    three = Capacity(min_workers=3, max_workers=3)
    flow = (
        Flow()
        .add(by_workers, capacity=three, name="a")
        .add(by_capacity, capacity=three, name="b")
        .add(by_workers, name="c")
        .add(by_capacity, name="d")
    )
    stats = await run(flow, range(3))
    got = {name: (job.min_workers, job.max_workers) for name, job in stats.jobs.items()}
    assert got == {"a": (3, 3), "b": (3, 3), "c": (2, 2), "d": (2, 2)}


async def test_capacity_argument_beats_the_decorator_at_run_time() -> None:
    release = anyio.Event()

    @workers(min=2, max=2)
    async def hold(item: int) -> int:
        await release.wait()
        return item

    flow = Flow().add(hold, capacity=Capacity(min_workers=3, max_workers=3), name="hold")
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            for item in range(5):
                await running.send(item)
            await wait_until(lambda: running.stats().jobs["hold"].active == 3)
            assert running.stats().jobs["hold"].workers == 3
            release.set()


async def test_error_job_takes_a_capacity() -> None:
    flow = (
        Flow()
        .add(inc)
        .add_error_job(report, capacity=Capacity(min_workers=2, max_workers=4), name="errors")
    )
    stats = await run(flow, range(2))
    assert (stats.jobs["errors"].min_workers, stats.jobs["errors"].max_workers) == (2, 4)


# -- what is not a processor ---------------------------------------------------------------


def sync_inc(item: int) -> int:
    return item + 1


class SyncCallable:
    def __call__(self, item: int) -> int:
        return item


SYNC_PROCESSORS = [
    pytest.param(sync_inc, id="function"),
    pytest.param(lambda item: inc(item), id="lambda-returning-coroutine"),
    pytest.param(SyncCallable(), id="sync-call-object"),
    pytest.param(functools.partial(sync_inc), id="partial-of-sync"),
    pytest.param(Doubler, id="class"),
]

ADDERS: list[Any] = [
    pytest.param(lambda flow, p: flow.add(p), id="add"),
    pytest.param(lambda flow, p: flow.add_job(p), id="add_job"),
    pytest.param(lambda flow, p: flow.add_job_with_lock(p, anyio.Lock()), id="with_lock"),
    pytest.param(lambda flow, p: flow.add_error_job(p), id="error_job"),
]


@pytest.mark.parametrize("adder", ADDERS)
@pytest.mark.parametrize("processor", SYNC_PROCESSORS)
async def test_sync_callable_is_refused_with_advice(
    adder: Callable[[Flow, object], Flow], processor: object
) -> None:
    with pytest.raises(TypeError, match="executor="):
        adder(Flow(), processor)


@pytest.mark.parametrize("adder", ADDERS)
@pytest.mark.parametrize("processor", [42, "inc", None, [inc]])
async def test_non_callable_is_refused(
    adder: Callable[[Flow, object], Flow], processor: object
) -> None:
    with pytest.raises(TypeError):
        adder(Flow(), processor)


# -- every kind of processor ---------------------------------------------------------------


@asynccontextmanager
async def doubling_session() -> AsyncIterator[Callable[[int], Awaitable[int]]]:
    yield double


@asynccontextmanager
async def twice_session() -> AsyncIterator[Callable[[int], AsyncIterator[int]]]:
    yield Doubler().twice


async def twice(item: int) -> AsyncIterator[int]:
    yield item
    yield item


async def evens(item: int) -> AsyncIterator[int]:
    if item % 2 == 0:
        yield item


@pytest.mark.parametrize(
    ("processor", "expected"),
    [
        pytest.param(double, [i * 2 for i in range(10)], id="async-def"),
        pytest.param(Doubler().double, [i * 2 for i in range(10)], id="bound-method"),
        pytest.param(CallableDoubler(), [i * 2 for i in range(10)], id="async-call-object"),
        pytest.param(
            functools.partial(multiply, factor=2), [i * 2 for i in range(10)], id="partial"
        ),
        pytest.param(ProcessorFactory(doubling_session), [i * 2 for i in range(10)], id="factory"),
        pytest.param(twice, [i for i in range(10) for _ in (0, 1)], id="generator-fan-out"),
        pytest.param(
            Doubler().twice, [i for i in range(10) for _ in (0, 1)], id="generator-method"
        ),
        pytest.param(
            functools.partial(twice),
            [i for i in range(10) for _ in (0, 1)],
            id="generator-partial",
        ),
        pytest.param(
            ProcessorFactory(twice_session),
            [i for i in range(10) for _ in (0, 1)],
            id="factory-generator",
        ),
        pytest.param(evens, [0, 2, 4, 6, 8], id="generator-filter"),
    ],
)
async def test_processor_kinds(processor: Any, expected: list[int]) -> None:
    flow = Flow().add(processor, capacity=ONE, name="job")
    assert await collect(flow, range(10)) == expected
    stats = await run(flow, range(10))
    # Counters count input items, whatever the processor made of them.
    assert stats.jobs["job"].received == 10
    assert stats.jobs["job"].completed == 10


async def test_none_is_a_result_and_goes_downstream() -> None:
    received: list[object] = []

    async def to_none(item: int) -> None:
        return None

    async def record(item: object) -> str:
        received.append(item)
        return "seen"

    assert await collect(Flow().add(to_none), range(3)) == [None, None, None]
    assert await collect(Flow().add(to_none).add(record), range(3)) == ["seen"] * 3
    assert received == [None, None, None]


# -- ProcessorFactory lifecycle ------------------------------------------------------------


class Sessions:
    """A ProcessorFactory ``make`` that records every enter and exit."""

    def __init__(self, process: Callable[[int], Awaitable[int]] | None = None) -> None:
        self.entered = 0
        self.exited = 0
        self.busy = 0
        self.misuse = 0
        self.process = process

    def make(self) -> AbstractAsyncContextManager[Callable[[int], Awaitable[int]]]:
        return self.session()

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Callable[[int], Awaitable[int]]]:
        self.entered += 1
        closed = False

        async def process(item: int) -> int:
            if closed:
                self.misuse += 1
            self.busy += 1
            try:
                if self.process is not None:
                    return await self.process(item)
                return item
            finally:
                self.busy -= 1

        try:
            yield process
        finally:
            # A checkpoint on the way out: if the exit were not shielded from
            # the run's cancellation, it would stop here and never count.
            await anyio.lowlevel.checkpoint()
            closed = True
            self.exited += 1


THREE = Capacity(min_workers=3, max_workers=3)


async def sleep_forever(item: int) -> int:
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


async def test_factory_is_entered_and_exited_once_per_worker() -> None:
    sessions = Sessions()
    flow = Flow().add(ProcessorFactory(sessions.make), capacity=THREE)
    outputs = await collect(flow, range(20))
    assert Counter(outputs) == Counter(range(20))
    assert sessions.entered == 3
    assert sessions.exited == 3
    assert sessions.misuse == 0


async def test_factory_is_exited_when_the_run_is_stopped() -> None:
    sessions = Sessions(process=sleep_forever)
    flow = Flow().add(ProcessorFactory(sessions.make), capacity=THREE)
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            for item in range(3):
                await running.send(item)
            await wait_until(lambda: sessions.busy == 3)
            running.stop()
    assert sessions.entered == 3
    assert sessions.exited == 3


async def test_factory_is_exited_when_the_run_is_cancelled_from_outside() -> None:
    sessions = Sessions(process=sleep_forever)
    flow = Flow().add(ProcessorFactory(sessions.make), capacity=THREE)
    with anyio.fail_after(HANG_GUARD), anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(flow.run, range(3))
            await wait_until(lambda: sessions.busy == 3)
            scope.cancel()
    assert scope.cancelled_caught
    assert sessions.entered == 3
    assert sessions.exited == 3


async def test_factory_is_exited_when_the_run_fails() -> None:
    boom = ValueError("boom")

    async def fail_on_five(item: int) -> int:
        if item == 5:
            raise boom
        await anyio.lowlevel.checkpoint()
        return item

    sessions = Sessions(process=fail_on_five)
    flow = Flow().add(ProcessorFactory(sessions.make), capacity=THREE)
    with pytest.raises(ExceptionGroup) as excinfo:
        await run(flow, range(20))
    assert boom in leaves(excinfo.value)
    assert sessions.entered == 3
    assert sessions.exited == 3


async def test_factory_workers_are_exited_when_scaled_down() -> None:
    sessions = Sessions()
    capacity = UtilizationCapacity(
        min_workers=1, max_workers=3, initial_workers=3, cooldown=0, sampling=0.01
    )
    flow = Flow().add(ProcessorFactory(sessions.make), capacity=capacity, name="job")
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            # Idle, the job goes back to min_workers, closing two sessions.
            await wait_until(
                lambda: sessions.exited == 2 and running.stats().jobs["job"].workers == 1
            )
            assert sessions.entered == 3
    assert sessions.exited == sessions.entered


async def test_a_nested_function_is_named_by_itself() -> None:
    async def call_api(item: int) -> int:
        return item

    flow = Flow().add(call_api).add(call_api)
    assert await job_names(flow) == {"call_api", "call_api#2"}
