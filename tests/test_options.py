"""Job options: ordered, retry, timeout, max_per_second and batch, on asyncio and trio.

Every option is checked for its behaviour, its error and cancellation paths, and how it
meets autoscaling and end of input; a property test mixes them at random. Exact timing is
asserted only on trio's ``MockClock`` (autojump: sleeps return at once, in virtual time);
on real clocks the tests assert only what cannot depend on how loaded the machine is, and
order their steps with events and ``wait_all_tasks_blocked``.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import hypothesis
import pytest
import sniffio
import trio
from _support import HANG_GUARD, collect, leaves, run, wait_until
from anyio.lowlevel import checkpoint
from hypothesis import strategies as st
from trio.testing import MockClock

import flowrhythm._run._ordered
from flowrhythm import (
    Batch,
    Capacity,
    ErrorItem,
    Flow,
    FlowStats,
    LastWorkItem,
    Retry,
    RouteToErrorQueue,
    RunningFlow,
    ScalingEvent,
    StopProcessing,
    UtilizationCapacity,
)

pytestmark = pytest.mark.anyio

ONE = Capacity(min_workers=1, max_workers=1)
NEVER = 3600.0  # seconds: a batch timeout or back-off that never fires within a test


def fixed(workers: int, queue_length: int = 100) -> Capacity:
    return Capacity(min_workers=workers, max_workers=workers, queue_length=queue_length)


def scaling(low: int, high: int, queue_length: int = 100) -> UtilizationCapacity:
    """A capacity that rescales every 2 ms and shrinks without a cooldown."""
    return UtilizationCapacity(
        min_workers=low, max_workers=high, queue_length=queue_length, sampling=0.002, cooldown=0.0
    )


def mock_trio() -> Any:
    return pytest.param(("trio", {"clock": MockClock(autojump_threshold=0)}), id="trio-mockclock")


def timed() -> pytest.MarkDecorator:
    """Run on asyncio (real clock) and on trio with an autojumping MockClock."""
    return pytest.mark.parametrize(
        "anyio_backend", [pytest.param("asyncio", id="asyncio"), mock_trio()]
    )


def virtual_time_only() -> pytest.MarkDecorator:
    """Run only on trio's MockClock: the test asserts exact times."""
    return pytest.mark.parametrize("anyio_backend", [mock_trio()])


def exact() -> bool:
    """Whether this run has a virtual clock, so times can be asserted exactly."""
    return sniffio.current_async_library() == "trio" and isinstance(
        trio.lowlevel.current_clock(), MockClock
    )


class Boom(Exception):
    pass


class ErrorLog:
    """An error job that records every ErrorItem (or every list of them, when batched)."""

    def __init__(self) -> None:
        self.errors: list[ErrorItem] = []
        self.calls = 0

    async def __call__(self, error: ErrorItem | list[ErrorItem]) -> None:
        self.calls += 1
        self.errors.extend(error if isinstance(error, list) else [error])


class Sink:
    """A last job that records what reaches it."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def __call__(self, item: Any) -> None:
        self.seen.append(item)


def assert_balanced(stats: FlowStats) -> None:
    for name, job in stats.jobs.items():
        assert job.received == job.completed + job.skipped + job.errored, name


async def feed(running: RunningFlow, items: range) -> None:
    for item in items:
        await running.send(item)
    await running.close()


# -- invalid values --------------------------------------------------------------------------


async def noop(item: Any) -> Any:
    return item


def wrong(value: object) -> Any:
    """A deliberately mistyped argument, hidden from the type checker."""
    return value


@pytest.mark.parametrize(
    ("make", "field"),
    [
        pytest.param(lambda: Retry(attempts=0), "attempts", id="attempts-0"),
        pytest.param(lambda: Retry(attempts=-1), "attempts", id="attempts-negative"),
        pytest.param(lambda: Retry(backoff=-0.1), "backoff", id="backoff-negative"),
        pytest.param(lambda: Retry(max_backoff=-1.0), "max_backoff", id="max_backoff-negative"),
        pytest.param(lambda: Retry(backoff=math.nan), "backoff", id="backoff-nan"),
        pytest.param(lambda: Batch(size=0), "size", id="size-0"),
        pytest.param(lambda: Batch(timeout=-0.01), "timeout", id="batch-timeout-negative"),
        pytest.param(lambda: Flow().add(noop, timeout=0), "timeout", id="timeout-0"),
        pytest.param(lambda: Flow().add(noop, timeout=-1.0), "timeout", id="timeout-negative"),
        pytest.param(lambda: Flow().add(noop, timeout=math.nan), "timeout", id="timeout-nan"),
        pytest.param(lambda: Flow().add(noop, max_per_second=0), "max_per_second", id="rate-0"),
        pytest.param(
            lambda: Flow().add(noop, max_per_second=-5.0), "max_per_second", id="rate-negative"
        ),
    ],
)
def test_invalid_values_raise_value_error_naming_the_field(
    make: Callable[[], object], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        make()


@pytest.mark.parametrize(
    ("make", "field"),
    [
        pytest.param(lambda: Retry(attempts=wrong(2.0)), "attempts", id="attempts-float"),
        pytest.param(lambda: Retry(attempts=True), "attempts", id="attempts-bool"),
        pytest.param(lambda: Retry(on=KeyboardInterrupt), "on", id="on-base-exception"),
        pytest.param(lambda: Retry(on=()), "on", id="on-empty"),
        pytest.param(lambda: Retry(on="ValueError"), "on", id="on-string"),
        pytest.param(lambda: Retry(jitter=wrong(1)), "jitter", id="jitter-int"),
        pytest.param(lambda: Batch(size=wrong(10.0)), "size", id="size-float"),
        pytest.param(lambda: Batch(timeout=wrong("1")), "timeout", id="batch-timeout-string"),
        pytest.param(lambda: Flow().add(noop, ordered=wrong(1)), "ordered", id="ordered-int"),
        pytest.param(lambda: Flow().add(noop, retry=wrong(3)), "retry", id="retry-int"),
        pytest.param(lambda: Flow().add(noop, batch=wrong(100)), "batch", id="batch-int"),
        pytest.param(lambda: Flow().add(noop, timeout=wrong("1")), "timeout", id="timeout-string"),
        pytest.param(
            lambda: Flow().add(noop, max_per_second=True), "max_per_second", id="rate-bool"
        ),
    ],
)
def test_wrong_types_raise_type_error_naming_the_field(
    make: Callable[[], object], field: str
) -> None:
    with pytest.raises(TypeError, match=field):
        make()


@pytest.mark.parametrize("method", ["add", "add_job", "add_job_with_lock", "add_error_job"])
@pytest.mark.parametrize(
    ("option", "error"),
    [
        pytest.param({"timeout": 0}, ValueError, id="timeout"),
        pytest.param({"max_per_second": -1}, ValueError, id="max_per_second"),
        pytest.param({"ordered": "yes"}, TypeError, id="ordered"),
        pytest.param({"retry": 3}, TypeError, id="retry"),
        pytest.param({"batch": 10}, TypeError, id="batch"),
    ],
)
def test_every_add_method_checks_its_options(
    method: str, option: dict[str, Any], error: type[Exception]
) -> None:
    flow = Flow()
    args: tuple[Any, ...] = (noop, anyio.Lock()) if method == "add_job_with_lock" else (noop,)
    with pytest.raises(error, match=next(iter(option))):
        getattr(flow, method)(*args, **option)
    # Nothing was added: the flow still has no jobs, and no error job.
    with pytest.raises(ValueError, match="no jobs"):
        anyio.run(flow.run, [])
    flow.add_error_job(noop)


def test_defaults() -> None:
    assert Retry() == Retry(attempts=3, backoff=0.1, max_backoff=10.0, jitter=True, on=Exception)
    assert Retry().on == (Exception,)
    assert Retry(on=ValueError).on == (ValueError,)
    assert Batch() == Batch(size=100, timeout=0.05)
    assert ErrorItem(item=1, exception=Boom(), job="j").attempts == 1


# -- ordered ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "capacity",
    [pytest.param(fixed(16), id="16-workers"), pytest.param(scaling(1, 16), id="scaling-1-16")],
)
async def test_ordered_keeps_input_order_with_many_workers_and_random_delays(
    capacity: Capacity,
) -> None:
    rng = random.Random(3)

    async def jitter(item: int) -> int:
        await anyio.sleep(rng.uniform(0, 0.001))
        return item

    flow = Flow().add(jitter, capacity=capacity, ordered=True)
    assert await collect(flow, range(400)) == list(range(400))


@pytest.mark.parametrize("queue_length", [0, 1, 2, 100])
async def test_ordered_keeps_input_order_when_the_processor_never_waits(
    queue_length: int,
) -> None:
    """A processor that returns without awaiting (a cache hit, a pure function)."""

    async def at_once(item: int) -> int:
        return item

    flow = Flow().add(at_once, capacity=fixed(2, queue_length), ordered=True)
    assert await collect(flow, range(200)) == list(range(200))


async def test_unordered_job_with_the_same_delays_does_reorder() -> None:
    """The control for the test above: without ``ordered`` the delays do shuffle outputs."""
    rng = random.Random(3)

    async def jitter(item: int) -> int:
        await anyio.sleep(rng.uniform(0, 0.001))
        return item

    outputs = await collect(Flow().add(jitter, capacity=fixed(16)), range(400))
    assert sorted(outputs) == list(range(400))
    assert outputs != list(range(400))


async def test_slow_head_does_not_stop_the_others_until_the_window_is_full() -> None:
    release = anyio.Event()
    sink = Sink()

    async def slow_head(item: int) -> int:
        if item == 0:
            await release.wait()
        return item

    flow = Flow().add(slow_head, capacity=fixed(4), name="ord", ordered=True).add(sink)
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running, anyio.create_task_group() as tg:
            tg.start_soon(feed, running, range(1000))
            await wait_until(lambda: running.stats().jobs["ord"].blocked == 3)
            await anyio.wait_all_tasks_blocked()
            job = running.stats().jobs["ord"]
            # The three other workers finished items and then stopped at the window:
            # 8 inputs taken (= 2 x max_workers), none released, the rest waits.
            assert job.received == 8
            assert (job.active, job.blocked, job.idle) == (1, 3, 0)
            assert sink.seen == []
            assert job.queue_depth == job.queue_length  # backpressure, not buffering
            release.set()
        stats = await running.join()
    assert sink.seen == list(range(1000))
    assert_balanced(stats)


async def test_ordered_window_stays_bounded_while_the_job_scales() -> None:
    """Inputs taken minus outputs handed on never exceed 2 x max_workers (+1 in the hand-over)."""
    rng = random.Random(5)
    window = 4
    taken = 0
    sink = Sink()
    worst = 0

    async def jitter(item: int) -> int:
        nonlocal taken, worst
        taken += 1
        worst = max(worst, taken - len(sink.seen))
        await anyio.sleep(rng.choice([0, 0, 0.0002, 0.001, 0.003]))
        return item

    flow = (
        Flow()
        .add(jitter, capacity=scaling(1, window), name="ord", ordered=True)
        .add(sink, capacity=fixed(1, queue_length=0))
    )
    stats = await run(flow, range(600))
    assert sink.seen == list(range(600))
    # One output may have been handed to the sink's worker but not yet recorded by it.
    assert worst <= 2 * window + 1
    assert_balanced(stats)


class _WatchedParking(dict[int, Any]):
    """A reorder window's ``parked`` dict that remembers its largest size."""

    worst = 0

    def __setitem__(self, key: int, value: Any) -> None:
        super().__setitem__(key, value)
        self.worst = max(self.worst, len(self))


async def test_ordered_window_never_parks_more_than_it_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Slow items among fast ones: finished outputs wait, never more than 2 x max_workers."""
    buffers: list[_WatchedParking] = []
    original_init = flowrhythm._run._ordered.Reorder.__init__

    def watched_init(self: flowrhythm._run._ordered.Reorder, *args: Any) -> None:
        original_init(self, *args)
        self.parked = _WatchedParking()
        buffers.append(self.parked)

    monkeypatch.setattr(flowrhythm._run._ordered.Reorder, "__init__", watched_init)
    rng = random.Random(11)
    sink = Sink()

    async def jitter(item: int) -> int:
        await anyio.sleep(0.005 if rng.random() < 0.05 else 0)
        return item

    flow = Flow().add(jitter, capacity=scaling(1, 4), name="ord", ordered=True).add(sink)
    stats = await run(flow, range(800))
    assert sink.seen == list(range(800))
    (buffer,) = buffers
    assert buffer == {}
    # Slow heads did hold finished outputs back, and never more than the window
    # (2 x max_workers inputs, the head itself counted as it is released).
    assert 2 <= buffer.worst <= 2 * 4
    assert_balanced(stats)


async def test_ordered_generator_keeps_each_inputs_outputs_together() -> None:
    rng = random.Random(7)

    async def fan_out(item: int) -> AsyncIterator[tuple[int, int]]:
        for part in range(item % 3 + 1):
            await anyio.sleep(rng.uniform(0, 0.0005))
            yield item, part

    flow = Flow().add(fan_out, capacity=fixed(8), name="fan", ordered=True)
    outputs = await collect(flow, range(120))
    assert outputs == [(i, part) for i in range(120) for part in range(i % 3 + 1)]


async def test_ordered_failures_and_skips_leave_the_rest_in_order() -> None:
    rng = random.Random(9)
    errors = ErrorLog()

    async def picky(item: int) -> int:
        await anyio.sleep(rng.uniform(0, 0.0005))
        if item % 7 == 0:
            raise StopProcessing
        if item % 5 == 0:
            raise Boom(item)
        return item

    flow = Flow().add(picky, capacity=fixed(8), name="picky", ordered=True)
    flow.add_error_job(errors)
    outputs = await collect(flow, range(200))
    assert outputs == [i for i in range(200) if i % 7 and i % 5]
    assert sorted(e.item for e in errors.errors) == [i for i in range(200) if i % 7 and not i % 5]


async def test_ordered_end_of_input_delivers_everything_sent() -> None:
    sink = Sink()
    rng = random.Random(11)

    async def jitter(item: int) -> int:
        await anyio.sleep(rng.uniform(0, 0.001))
        return item

    flow = Flow().add(jitter, capacity=scaling(0, 6), name="ord", ordered=True).add(sink)
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            for item in range(50):
                await running.send(item)
            await running.send(LastWorkItem())
            stats = await running.join()
    assert sink.seen == list(range(50))
    assert_balanced(stats)


async def test_stop_with_a_blocked_head_abandons_the_window_and_counts_it() -> None:
    release = anyio.Event()
    sink = Sink()

    async def slow_head(item: int) -> int:
        if item == 0:
            await release.wait()
        return item

    flow = Flow().add(slow_head, capacity=fixed(4), name="ord", ordered=True).add(sink)
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            for item in range(10):
                await running.send(item)
            await wait_until(lambda: running.stats().jobs["ord"].blocked == 3)
            running.stop()
    job = running.stats().jobs["ord"]
    assert sink.seen == []
    assert job.received == 8
    # None of the 8 outputs was handed downstream: all 8 items are abandoned.
    assert job.in_flight == 8, job


# -- retry --------------------------------------------------------------------------------------


async def test_retry_until_success_counts_retries() -> None:
    calls: Counter[int] = Counter()
    sink = Sink()

    async def flaky(item: int) -> int:
        calls[item] += 1
        if calls[item] <= item % 3:  # fails item % 3 times, then succeeds
            raise Boom(item)
        return item

    flow = Flow().add(flaky, name="flaky", retry=Retry(attempts=3, backoff=0)).add(sink)
    stats = await run(flow, range(30))
    assert sink.seen == list(range(30))
    job = stats.jobs["flaky"]
    assert job.retried == sum(i % 3 for i in range(30))
    assert (job.received, job.completed, job.errored) == (30, 30, 0)


async def test_exhausted_retries_route_the_last_failure_with_attempts() -> None:
    errors = ErrorLog()
    calls = 0

    async def always(item: int) -> int:
        nonlocal calls
        calls += 1
        raise Boom(f"call {calls}")

    flow = Flow().add(always, name="always", retry=Retry(attempts=3, backoff=0))
    flow.add_error_job(errors)
    stats = await run(flow, [1])
    [error] = errors.errors
    assert (error.item, error.job, error.attempts) == (1, "always", 3)
    assert isinstance(error.exception, Boom)
    assert error.exception.args == ("call 3",)
    job = stats.jobs["always"]
    assert (job.retried, job.errored, job.completed) == (2, 1, 0)


async def test_exhausted_retries_without_error_job_fail_the_run_with_the_exception() -> None:
    async def always(item: int) -> int:
        raise Boom(item)

    flow = Flow().add(always, retry=Retry(attempts=2, backoff=0))
    with pytest.raises(BaseExceptionGroup) as info:
        await run(flow, [7])
    assert [type(e) for e in leaves(info.value)] == [Boom]


async def test_retry_only_the_exceptions_named_by_on() -> None:
    errors = ErrorLog()
    calls: Counter[str] = Counter()

    async def mixed(item: str) -> str:
        calls[item] += 1
        if item == "key":
            raise KeyError(item)  # not retried
        if item == "conn-then-key":
            if calls[item] == 1:
                raise ConnectionError(item)
            raise KeyError(item)  # the retry fails with an exception not in `on`
        if item == "conn" and calls[item] < 3:
            raise ConnectionError(item)
        return item

    flow = Flow().add(mixed, name="mixed", retry=Retry(attempts=5, backoff=0, on=ConnectionError))
    flow.add_error_job(errors)
    stats = await run(flow, ["key", "conn-then-key", "conn"])
    routed = {e.item: (type(e.exception), e.attempts) for e in errors.errors}
    assert routed == {"key": (KeyError, 1), "conn-then-key": (KeyError, 2)}
    assert calls == {"key": 1, "conn-then-key": 2, "conn": 3}
    job = stats.jobs["mixed"]
    assert (job.retried, job.completed, job.errored) == (3, 1, 2)


async def test_stop_processing_and_route_to_error_queue_are_never_retried() -> None:
    errors = ErrorLog()
    calls: Counter[str] = Counter()

    async def steer(item: str) -> str:
        calls[item] += 1
        if item == "skip":
            raise StopProcessing
        raise RouteToErrorQueue(item)

    flow = Flow().add(steer, name="steer", retry=Retry(attempts=3, backoff=0, on=Exception))
    flow.add_error_job(errors)
    stats = await run(flow, ["skip", "route"])
    assert calls == {"skip": 1, "route": 1}
    [error] = errors.errors
    assert (error.item, type(error.exception), error.attempts) == ("route", RouteToErrorQueue, 1)
    job = stats.jobs["steer"]
    assert (job.retried, job.skipped, job.errored) == (0, 1, 1)


@pytest.mark.parametrize("kind", ["call", "generator"])
async def test_stop_processing_on_a_retry_skips_the_item(kind: str) -> None:
    """A retried call that raises StopProcessing skips its item like a first call does."""
    errors = ErrorLog()
    calls: Counter[int] = Counter()

    async def flaky_then_skip(item: int) -> int:
        calls[item] += 1
        if calls[item] == 1:
            raise Boom(item)
        raise StopProcessing

    async def flaky_then_skip_gen(item: int) -> AsyncIterator[int]:
        yield await flaky_then_skip(item)

    processor = flaky_then_skip if kind == "call" else flaky_then_skip_gen
    flow = Flow().add(processor, name="job", retry=Retry(attempts=3, backoff=0))
    flow.add_error_job(errors)
    stats = await run(flow, [1])
    assert errors.errors == []
    job = stats.jobs["job"]
    assert (job.skipped, job.errored, job.retried) == (1, 0, 1)


async def test_route_to_error_queue_on_a_retry_is_routed_with_its_attempts() -> None:
    errors = ErrorLog()
    calls = 0

    async def flaky_then_route(item: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise Boom(item)
        raise RouteToErrorQueue(item)

    flow = Flow().add(flaky_then_route, retry=Retry(attempts=3, backoff=0))
    await run(flow.add_error_job(errors), [1])
    [error] = errors.errors
    assert (type(error.exception), error.attempts) == (RouteToErrorQueue, 2)
    assert calls == 2


@virtual_time_only()
async def test_backoff_doubles_from_backoff_up_to_max_backoff() -> None:
    starts: list[float] = []
    errors = ErrorLog()

    async def always(item: int) -> int:
        starts.append(anyio.current_time() - t0)
        raise Boom(item)

    retry = Retry(attempts=6, backoff=0.1, max_backoff=0.5, jitter=False)
    flow = Flow().add(always, name="always", retry=retry).add_error_job(errors)
    t0 = anyio.current_time()
    stats = await run(flow, [1])
    # waits: 0.1, 0.2, 0.4, then capped at 0.5, 0.5
    assert starts == pytest.approx([0.0, 0.1, 0.3, 0.7, 1.2, 1.7])
    assert [e.attempts for e in errors.errors] == [6]
    assert stats.jobs["always"].retried == 5


@virtual_time_only()
@pytest.mark.parametrize(
    ("max_backoff", "highest"), [pytest.param(10.0, 1.25, id="uncapped"), (1.1, 1.1)]
)
async def test_jitter_spreads_waits_within_a_quarter_and_under_the_cap(
    max_backoff: float, highest: float
) -> None:
    starts: dict[int, list[float]] = {}

    async def fails_once(item: int) -> int:
        starts.setdefault(item, []).append(anyio.current_time())
        if len(starts[item]) == 1:
            raise Boom(item)
        return item

    retry = Retry(attempts=2, backoff=1.0, max_backoff=max_backoff, jitter=True)
    flow = Flow().add(fails_once, capacity=fixed(20), retry=retry)
    await run(flow, range(20))
    waits = [second - first for first, second in starts.values()]
    # (a difference of two clock readings: allow for float rounding at the bounds)
    assert all(0.75 - 1e-9 <= wait <= highest + 1e-9 for wait in waits), waits
    assert len(set(waits)) > 1  # not in step


async def test_backoff_counts_as_blocked_and_stop_cancels_it_promptly() -> None:
    called = anyio.Event()
    errors = ErrorLog()

    async def failing(item: int) -> int:
        called.set()
        raise Boom(item)

    retry = Retry(attempts=5, backoff=NEVER, jitter=False)
    flow = Flow().add(failing, name="failing", retry=retry).add_error_job(errors)
    with anyio.fail_after(HANG_GUARD):  # far shorter than the back-off
        async with flow.start() as running:
            await running.send(1)
            await called.wait()
            await anyio.wait_all_tasks_blocked()
            job = running.stats().jobs["failing"]
            assert (job.active, job.idle, job.blocked) == (0, 0, 1)  # more workers cannot help
            running.stop()
    job = running.stats().jobs["failing"]
    assert (job.received, job.retried, job.in_flight) == (1, 0, 1)
    assert errors.errors == []


async def test_items_retrying_when_the_input_ends_still_finish() -> None:
    calls: Counter[int] = Counter()
    sink = Sink()

    async def fails_once(item: int) -> int:
        calls[item] += 1
        if calls[item] == 1:
            raise Boom(item)
        return item

    flow = Flow().add(fails_once, capacity=scaling(0, 3), name="retry", retry=Retry(backoff=0.001))
    flow.add(sink)
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            for item in range(6):
                await running.send(item)
            await running.close()
            stats = await running.join()
    assert sorted(sink.seen) == list(range(6))
    assert stats.jobs["retry"].retried == 6
    assert_balanced(stats)


async def test_a_generator_is_retried_only_before_its_first_yield() -> None:
    calls: Counter[str] = Counter()
    errors = ErrorLog()

    async def gen(item: str) -> AsyncIterator[str]:
        calls[item] += 1
        if item in ("early", "both") and calls[item] == 1:
            raise Boom("before the first yield")
        yield f"{item}-a"
        if item in ("late", "both"):
            raise Boom("after the first yield")
        yield f"{item}-b"

    flow = Flow().add(gen, name="gen", retry=Retry(attempts=3, backoff=0)).add_error_job(errors)
    outputs = await collect(flow, ["early", "late", "both"])
    assert Counter(outputs) == Counter(["early-a", "early-b", "late-a", "both-a"])
    assert calls == {"early": 2, "late": 1, "both": 2}
    assert {e.item: e.attempts for e in errors.errors} == {"late": 1, "both": 2}


# -- timeout ------------------------------------------------------------------------------------


async def test_timeout_cancels_the_call_runs_its_cleanup_and_routes_timeout_error() -> None:
    cleaned: list[int] = []
    errors = ErrorLog()

    async def hangs_on_3(item: int) -> int:
        try:
            if item == 3:
                await anyio.sleep_forever()
            return item
        finally:
            cleaned.append(item)

    flow = Flow().add(hangs_on_3, capacity=fixed(2), name="hang", timeout=0.01)
    flow.add_error_job(errors)
    outputs = await collect(flow, range(6))
    assert sorted(outputs) == [0, 1, 2, 4, 5]
    assert sorted(cleaned) == list(range(6))
    [error] = errors.errors
    assert (error.item, type(error.exception), error.attempts) == (3, TimeoutError, 1)


@timed()
async def test_timeout_composes_with_retry() -> None:
    scale = 1.0 if exact() else 0.01
    cleaned = 0
    errors = ErrorLog()
    failed_at: list[float] = []

    async def hangs(item: int) -> int:
        nonlocal cleaned
        try:
            await anyio.sleep_forever()
        finally:
            cleaned += 1
        return item

    async def on_error(error: ErrorItem) -> None:
        failed_at.append(anyio.current_time() - t0)
        await errors(error)

    retry = Retry(attempts=3, backoff=0.5 * scale, jitter=False)
    flow = Flow().add(hangs, name="hangs", timeout=scale, retry=retry).add_error_job(on_error)
    t0 = anyio.current_time()
    stats = await run(flow, [1])
    [error] = errors.errors
    assert (type(error.exception), error.attempts) == (TimeoutError, 3)
    assert cleaned == 3
    assert stats.jobs["hangs"].retried == 2
    if exact():  # 1 + 0.5 + 1 + 1.0 + 1
        assert failed_at == pytest.approx([4.5])


async def test_a_timed_out_call_may_succeed_on_retry() -> None:
    calls: Counter[int] = Counter()

    async def hangs_once(item: int) -> int:
        calls[item] += 1
        if calls[item] == 1:
            await anyio.sleep_forever()
        return item

    sink = Sink()
    flow = Flow().add(
        hangs_once, name="h", capacity=fixed(4), timeout=0.01, retry=Retry(backoff=0)
    )
    stats = await run(flow.add(sink), range(8))
    assert sorted(sink.seen) == list(range(8))
    job = stats.jobs["h"]
    assert (job.retried, job.completed, job.errored) == (8, 8, 0)


@virtual_time_only()
async def test_timeout_applies_to_each_step_of_a_generator() -> None:
    errors = ErrorLog()

    async def steps(item: str) -> AsyncIterator[str]:
        await anyio.sleep(0.6)
        yield f"{item}-a"
        await anyio.sleep(0.6)  # 1.2 s in all, but no step is longer than 1 s
        yield f"{item}-b"
        if item == "slow":
            await anyio.sleep(1.5)
            yield f"{item}-c"

    retry = Retry(attempts=3, backoff=0)
    flow = Flow().add(steps, name="steps", timeout=1.0, retry=retry).add_error_job(errors)
    outputs = await collect(flow, ["fast", "slow"])
    assert outputs == ["fast-a", "fast-b", "slow-a", "slow-b"]
    [error] = errors.errors
    # It failed after its first yield: routed, never retried (no output twice).
    assert (error.item, type(error.exception), error.attempts) == ("slow", TimeoutError, 1)


async def test_a_generator_that_hangs_after_yielding_is_routed_not_retried() -> None:
    errors = ErrorLog()

    async def hangs_after_one(item: int) -> AsyncIterator[int]:
        yield item
        await anyio.sleep_forever()
        yield item + 100

    flow = Flow().add(hangs_after_one, name="g", timeout=0.01, retry=Retry(backoff=0))
    flow.add_error_job(errors)
    assert await collect(flow, [1, 2]) == [1, 2]
    assert sorted((e.item, type(e.exception), e.attempts) for e in errors.errors) == [
        (1, TimeoutError, 1),
        (2, TimeoutError, 1),
    ]


@timed()
async def test_waiting_for_a_rate_limit_slot_does_not_count_against_the_timeout() -> None:
    errors = ErrorLog()

    async def quick(item: int) -> int:
        await checkpoint()
        return item

    # 16 workers start at once; the last waits 0.75 s for its slot, far past the timeout.
    flow = Flow().add(quick, capacity=fixed(16), name="q", max_per_second=20, timeout=0.2)
    flow.add_error_job(errors)
    stats = await run(flow, range(16))
    assert errors.errors == []
    assert stats.jobs["q"].completed == 16


@virtual_time_only()
async def test_waiting_for_the_resource_manager_does_not_count_against_the_timeout() -> None:
    """Like a rate-limit slot, the lock wait is *blocked* time, not the call."""
    errors = ErrorLog()

    async def takes_50ms(item: int) -> int:
        await anyio.sleep(0.05)
        return item

    flow = Flow().add_job_with_lock(
        takes_50ms, anyio.Lock(), capacity=fixed(4), name="locked", timeout=0.12
    )
    stats = await run(flow.add_error_job(errors), range(8))
    assert [e.item for e in errors.errors] == []
    assert stats.jobs["locked"].completed == 8


async def test_timeout_of_a_call_offloaded_to_a_thread() -> None:
    gate = threading.Event()
    errors = ErrorLog()

    def blocks(item: int) -> int:
        gate.wait(1.0)  # released as soon as the timeout is seen (or after 1 s)
        return item

    async def on_error(error: ErrorItem) -> None:
        gate.set()
        await errors(error)

    flow = Flow().add(blocks, name="blocks", executor="thread", timeout=0.01)
    flow.add_error_job(on_error)
    await run(flow, [1])
    gate.set()
    assert [(e.item, type(e.exception)) for e in errors.errors] == [(1, TimeoutError)]


async def test_timeout_of_a_call_offloaded_to_a_process() -> None:
    errors = ErrorLog()
    # Start anyio's worker process first, so that the timeout meets a running call.
    await run(Flow().add(time.sleep, executor="process"), [0])
    flow = Flow().add(time.sleep, name="sleep", executor="process", timeout=0.5)
    await run(flow.add_error_job(errors), [1.5])
    assert [(e.item, type(e.exception)) for e in errors.errors] == [(1.5, TimeoutError)]


# -- max_per_second -----------------------------------------------------------------------------


@virtual_time_only()
@pytest.mark.parametrize("workers", [1, 4, 16])
async def test_rate_limit_spaces_call_starts_exactly(workers: int) -> None:
    starts: list[float] = []

    async def call(item: int) -> int:
        starts.append(anyio.current_time() - t0)
        await anyio.sleep(0.1)
        return item

    flow = Flow().add(call, capacity=fixed(workers), max_per_second=5)
    t0 = anyio.current_time()
    await run(flow, range(10))
    assert starts == pytest.approx([0.2 * i for i in range(10)])
    assert sum(start < 1.0 for start in starts) == 5  # 5 per second, whatever the workers


@virtual_time_only()
async def test_rate_limit_holds_when_calls_last_longer_than_the_interval() -> None:
    starts: list[float] = []
    running = peak = 0

    async def slow(item: int) -> int:
        nonlocal running, peak
        starts.append(anyio.current_time() - t0)
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.45)
        running -= 1
        return item

    flow = Flow().add(slow, capacity=fixed(8), max_per_second=10)
    t0 = anyio.current_time()
    await run(flow, range(20))
    assert starts == pytest.approx([0.1 * i for i in range(20)])
    assert peak == 5  # 0.45 s calls started every 0.1 s: five at a time, not eight


@virtual_time_only()
async def test_every_retry_takes_a_rate_limit_slot() -> None:
    starts: list[tuple[int, float]] = []
    failed = False

    async def first_fails(item: int) -> int:
        nonlocal failed
        starts.append((item, round(anyio.current_time() - t0, 6)))
        if not failed:
            failed = True
            raise Boom(item)
        return item

    flow = Flow().add(first_fails, max_per_second=5, retry=Retry(backoff=0))
    t0 = anyio.current_time()
    await run(flow, range(3))
    assert starts == [(0, 0.0), (0, 0.2), (1, 0.4), (2, 0.6)]


@virtual_time_only()
async def test_the_rate_limit_is_per_run() -> None:
    starts: dict[str, list[float]] = {"a": [], "b": []}

    async def call(item: tuple[str, int]) -> None:
        starts[item[0]].append(anyio.current_time() - t0)

    flow = Flow().add(call, capacity=fixed(2), max_per_second=4)
    t0 = anyio.current_time()
    async with anyio.create_task_group() as tg:
        for run_name in starts:
            tg.start_soon(run, flow, [(run_name, i) for i in range(4)])
    assert starts == {
        "a": pytest.approx([0, 0.25, 0.5, 0.75]),
        "b": pytest.approx([0, 0.25, 0.5, 0.75]),
    }


async def test_waiting_for_a_slot_counts_as_blocked_and_stop_cancels_it() -> None:
    started = anyio.Event()

    async def holds(item: int) -> int:
        started.set()
        await anyio.sleep_forever()
        return item

    flow = Flow().add(holds, capacity=fixed(2), name="r", max_per_second=0.001)
    with anyio.fail_after(HANG_GUARD):  # the second slot is 1000 s away
        async with flow.start() as running:
            await running.send(1)
            await running.send(2)
            await started.wait()
            await wait_until(lambda: running.stats().jobs["r"].blocked == 1)
            job = running.stats().jobs["r"]
            assert (job.active, job.blocked, job.idle, job.received) == (1, 1, 0, 2)
            running.stop()
    assert running.stats().jobs["r"].in_flight == 2


@timed()
async def test_a_job_held_back_by_its_rate_limit_does_not_grow() -> None:
    events: list[ScalingEvent] = []

    async def quick(item: int) -> int:
        await checkpoint()
        return item

    capacity = UtilizationCapacity(min_workers=1, max_workers=16, sampling=0.02)
    flow = Flow().add(quick, capacity=capacity, name="limited", max_per_second=200)
    with anyio.fail_after(HANG_GUARD):
        stats = await flow.run(range(100), on_scale=events.append)
    job = stats.jobs["limited"]
    assert [e for e in events if e.new > e.old] == []
    assert job.scale_ups == 0
    assert job.blocked_seconds > job.active_seconds
    assert job.completed == 100


@virtual_time_only()
@pytest.mark.parametrize(("rate", "limited"), [(50, True), (100_000, False)])
async def test_a_rate_limited_job_grows_only_until_the_limit_binds(
    rate: float, limited: bool
) -> None:
    events: list[ScalingEvent] = []

    async def takes_50ms(item: int) -> int:
        await anyio.sleep(0.05)
        return item

    # 50 calls/s of 50 ms each keep 2.5 workers busy: more cannot go faster. The
    # control, with a rate limit that never binds, grows all the way.
    capacity = UtilizationCapacity(min_workers=1, max_workers=16, sampling=0.1)
    flow = Flow().add(takes_50ms, capacity=capacity, name="job", max_per_second=rate)
    with anyio.fail_after(HANG_GUARD):
        stats = await flow.run(range(200), on_scale=events.append)
    assert stats.jobs["job"].completed == 200
    if limited:
        assert all(e.new <= 5 for e in events), events
    else:
        assert max(e.new for e in events) == 16, events


# -- batch --------------------------------------------------------------------------------------


async def test_batches_fill_up_to_size_and_the_last_partial_one_is_kept() -> None:
    async def as_list(batch: list[int]) -> list[int]:
        return batch

    flow = Flow().add(as_list, name="b", batch=Batch(size=10, timeout=NEVER))
    assert await collect(flow, range(25)) == [
        list(range(10)),
        list(range(10, 20)),
        list(range(20, 25)),
    ]
    stats = await run(flow, range(25))
    job = stats.jobs["b"]
    assert (job.received, job.completed) == (25, 25)  # items, not calls
    assert stats.items_out == 3  # one output per batch
    assert_balanced(stats)


@pytest.mark.parametrize("how", ["send", "source", "close"])
async def test_end_of_input_flushes_the_partial_batch_at_once(how: str) -> None:
    sink = Sink()

    async def as_list(batch: list[int]) -> list[int]:
        return batch

    flow = Flow().add(as_list, name="b", batch=Batch(size=10, timeout=NEVER)).add(sink)
    if how == "source":
        stats = await run(flow, [0, 1, 2, LastWorkItem(), 3])
    else:
        with anyio.fail_after(HANG_GUARD):  # far shorter than the batch timeout
            async with flow.start() as running:
                for item in range(3):
                    await running.send(item)
                await (running.send(LastWorkItem()) if how == "send" else running.close())
                stats = await running.join()
    assert sink.seen == [[0, 1, 2]]
    assert_balanced(stats)


async def test_a_processor_ending_the_input_flushes_a_later_batch_job() -> None:
    sink = Sink()

    async def until_5(item: int) -> int | LastWorkItem:
        return LastWorkItem() if item == 5 else item

    async def as_list(batch: list[int]) -> list[int]:
        return batch

    flow = (
        Flow()
        .add(until_5, capacity=fixed(1, queue_length=0))
        .add(as_list, name="b", batch=Batch(size=100, timeout=NEVER))
        .add(sink)
    )
    await run(flow, range(1000))
    [batch] = sink.seen
    assert batch[:5] == [0, 1, 2, 3, 4]
    assert 5 not in batch


@virtual_time_only()
async def test_batch_timeout_runs_from_the_first_item() -> None:
    calls: list[tuple[list[int], float]] = []

    async def record(batch: list[int]) -> None:
        calls.append((batch, round(anyio.current_time() - t0, 6)))

    flow = Flow().add(record, batch=Batch(size=10, timeout=1.0))
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            t0 = anyio.current_time()
            await running.send(0)
            await anyio.sleep(0.5)
            await running.send(1)
            await anyio.sleep(0.7)  # t = 1.2: [0, 1] left at t = 1.0
            await running.send(2)
            await anyio.sleep(2.0)  # t = 3.2: [2] left at t = 2.2
            await running.send(3)
            await running.close()  # [3] leaves at once
    assert calls == [([0, 1], 1.0), ([2], 2.2), ([3], 3.2)]


async def test_failing_batch_is_one_error_item_with_the_list() -> None:
    errors = ErrorLog()

    async def picky(batch: list[int]) -> int:
        if 5 in batch:
            raise Boom(batch)
        if 9 in batch:
            raise StopProcessing
        return len(batch)

    flow = Flow().add(picky, name="b", batch=Batch(size=4, timeout=NEVER)).add_error_job(errors)
    assert await collect(flow, range(10)) == [4]
    stats = await run(flow, range(10))
    [error, _] = errors.errors  # one per run
    assert (error.item, error.job, error.attempts) == ([4, 5, 6, 7], "b", 1)
    job = stats.jobs["b"]
    assert (job.received, job.completed, job.errored, job.skipped) == (10, 4, 4, 2)


async def test_failing_batch_without_error_job_fails_the_run() -> None:
    async def boom(batch: list[int]) -> int:
        raise Boom(batch)

    with pytest.raises(BaseExceptionGroup) as info:
        await run(Flow().add(boom, batch=Batch(size=3, timeout=NEVER)), range(3))
    [exc] = leaves(info.value)
    assert isinstance(exc, Boom)
    assert exc.args == ([0, 1, 2],)


async def test_batch_with_retry_retries_the_whole_batch() -> None:
    errors = ErrorLog()
    calls: Counter[tuple[int, ...]] = Counter()

    async def picky(batch: list[int]) -> list[int]:
        calls[tuple(batch)] += 1
        if 0 in batch and calls[tuple(batch)] == 1:
            raise Boom("once")
        if 3 in batch:
            raise Boom("always")
        return batch

    retry = Retry(attempts=3, backoff=0)
    flow = Flow().add(picky, name="b", batch=Batch(size=3, timeout=NEVER), retry=retry)
    outputs = await collect(flow.add_error_job(errors), range(6))
    assert outputs == [[0, 1, 2]]
    assert [(e.item, e.attempts) for e in errors.errors] == [([3, 4, 5], 3)]
    assert calls == {(0, 1, 2): 2, (3, 4, 5): 3}


async def test_a_generator_after_a_batch_job_splits_the_batches_again() -> None:
    async def as_list(batch: list[int]) -> list[int]:
        return batch

    async def split(batch: list[int]) -> AsyncIterator[int]:
        for item in batch:
            yield item

    flow = (
        Flow().add(as_list, name="b", batch=Batch(size=10, timeout=NEVER)).add(split, name="split")
    )
    assert await collect(flow, range(25)) == list(range(25))
    stats = await run(flow, range(25))
    assert (stats.jobs["split"].received, stats.items_out) == (3, 25)


async def test_a_batch_generator_processor_counts_items() -> None:
    async def split(batch: list[int]) -> AsyncIterator[int]:
        for item in batch:
            if item % 4:
                yield item

    flow = Flow().add(split, name="b", batch=Batch(size=8, timeout=NEVER))
    assert await collect(flow, range(20)) == [i for i in range(20) if i % 4]
    stats = await run(flow, range(20))
    assert (stats.jobs["b"].received, stats.jobs["b"].completed) == (20, 20)
    assert stats.items_out == 15


async def test_batches_are_runs_of_consecutive_inputs_while_the_job_scales() -> None:
    """One worker at a time gathers, so no two batches interleave, from 0 to 4 workers."""
    rng = random.Random(13)
    batches: list[list[int]] = []

    async def jitter(batch: list[int]) -> None:
        batches.append(batch)
        await anyio.sleep(rng.uniform(0, 0.002))

    flow = Flow().add(jitter, capacity=scaling(0, 4), name="b", batch=Batch(size=5, timeout=0))
    stats = await run(flow, range(500))
    assert sorted(item for batch in batches for item in batch) == list(range(500))
    for batch in batches:  # each batch is a run of consecutive inputs, at most `size` long
        assert 1 <= len(batch) <= 5
        assert batch == list(range(batch[0], batch[0] + len(batch)))
    job = stats.jobs["b"]
    assert (job.received, job.completed) == (500, 500)


async def test_idle_workers_do_not_split_a_trickle_into_small_batches() -> None:
    """Four idle workers, items arriving one at a time: one worker gathers them all."""
    batches: list[list[int]] = []

    async def record(batch: list[int]) -> None:
        batches.append(batch)

    flow = Flow().add(record, capacity=fixed(4), name="b", batch=Batch(size=4, timeout=NEVER))
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            for item in range(8):
                await running.send(item)
                await anyio.wait_all_tasks_blocked()
                job = running.stats().jobs["b"]
                assert job.received == item + 1
                assert job.idle == 4  # the gatherer waits for more, the others for the gate
            await running.close()
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7]]


async def test_ordered_batches_leave_in_input_order() -> None:
    rng = random.Random(17)

    async def jitter(batch: list[int]) -> list[int]:
        await anyio.sleep(rng.uniform(0, 0.002))
        return batch

    flow = Flow().add(
        jitter, capacity=fixed(4), name="b", ordered=True, batch=Batch(size=3, timeout=0.001)
    )
    outputs = await collect(flow, range(300))
    assert [item for batch in outputs for item in batch] == list(range(300))


async def test_ordered_batches_stop_at_the_window_behind_a_slow_head() -> None:
    """The reorder window counts batches: 4 workers, the first batch stuck, 8 batches taken."""
    release = anyio.Event()
    sink = Sink()

    async def slow_head(batch: list[int]) -> list[int]:
        if batch[0] == 0:
            await release.wait()
        return batch

    flow = (
        Flow()
        .add(slow_head, capacity=fixed(4), name="b", ordered=True, batch=Batch(size=2))
        .add(sink)
    )
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running, anyio.create_task_group() as tg:
            tg.start_soon(feed, running, range(100))
            await wait_until(lambda: running.stats().jobs["b"].blocked == 3)
            await anyio.wait_all_tasks_blocked()
            job = running.stats().jobs["b"]
            assert job.received == 8 * 2
            assert (job.active, job.blocked, job.idle) == (1, 3, 0)
            assert sink.seen == []
            release.set()
        stats = await running.join()
    assert [item for batch in sink.seen for item in batch] == list(range(100))
    assert_balanced(stats)


async def test_stop_while_a_batch_is_gathering_counts_its_items() -> None:
    calls = 0

    async def never_full(batch: list[int]) -> None:
        nonlocal calls
        calls += 1

    flow = Flow().add(never_full, name="b", batch=Batch(size=10, timeout=NEVER))
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            for item in range(3):
                await running.send(item)
            await wait_until(lambda: running.stats().jobs["b"].received == 3)
            running.stop()
    job = running.stats().jobs["b"]
    assert calls == 0
    assert (job.received, job.in_flight) == (3, 3)


async def test_stuck_batches_hold_one_batch_per_worker_and_leave_the_rest_queued() -> None:
    """Workers gather their own batches: nothing is taken beyond the batches in hand."""
    release = anyio.Event()

    async def stuck(batch: list[int]) -> int:
        await release.wait()
        return len(batch)

    flow = Flow().add(stuck, capacity=fixed(2, queue_length=30), name="b", batch=Batch(size=10))
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running, anyio.create_task_group() as tg:
            tg.start_soon(feed, running, range(1000))
            await wait_until(lambda: running.stats().jobs["b"].queue_depth == 30)
            await anyio.wait_all_tasks_blocked()
            job = running.stats().jobs["b"]
            assert (job.received, job.queue_depth) == (2 * 10, 30)
            assert (job.active, job.completed) == (2, 0)
            running.stop()
    job = running.stats().jobs["b"]
    assert (job.received, job.in_flight) == (20, 20)  # every taken item is accounted for


async def test_a_batched_error_job_gets_lists_of_error_items() -> None:
    errors = ErrorLog()

    async def odd_fails(item: int) -> int:
        if item % 2:
            raise Boom(item)
        return item

    flow = Flow().add(odd_fails, capacity=fixed(3))
    flow.add_error_job(errors, name="errors", batch=Batch(size=100, timeout=NEVER))
    stats = await run(flow, range(10))
    assert errors.calls == 1  # one list, flushed when the error job's input ended
    assert sorted(e.item for e in errors.errors) == [1, 3, 5, 7, 9]
    job = stats.jobs["errors"]
    assert (job.received, job.completed) == (5, 5)


async def test_options_on_a_job_with_a_resource_manager() -> None:
    calls: Counter[int] = Counter()
    rng = random.Random(23)
    held = peak = 0

    async def flaky(item: int) -> int:
        nonlocal held, peak
        calls[item] += 1
        held += 1
        peak = max(peak, held)
        await anyio.sleep(rng.uniform(0, 0.0005))
        held -= 1
        if calls[item] == 1 and item % 4 == 0:
            raise Boom(item)
        return item

    flow = Flow().add_job_with_lock(
        flaky,
        anyio.Semaphore(2),
        capacity=fixed(6),
        name="locked",
        ordered=True,
        retry=Retry(backoff=0),
    )
    sink = Sink()
    stats = await run(flow.add(sink), range(60))
    assert sink.seen == list(range(60))
    assert peak <= 2
    assert stats.jobs["locked"].retried == 15


async def test_a_retried_error_job() -> None:
    calls = 0

    async def bad(item: int) -> int:
        raise Boom(item)

    async def report(error: ErrorItem) -> None:
        nonlocal calls
        calls += 1
        if calls % 2:  # fails once per error
            raise KeyError(calls)

    flow = Flow().add(bad).add_error_job(report, name="errors", retry=Retry(backoff=0))
    stats = await run(flow, range(3))
    assert stats.jobs["errors"].retried == 3
    assert stats.jobs["errors"].completed == 3


async def test_an_error_job_failing_every_retry_fails_the_run_with_its_exception() -> None:
    calls = 0

    async def bad(item: int) -> int:
        raise Boom(item)

    async def report(error: ErrorItem) -> None:
        nonlocal calls
        calls += 1
        raise KeyError(calls)

    flow = Flow().add(bad).add_error_job(report, retry=Retry(attempts=3, backoff=0))
    with pytest.raises(BaseExceptionGroup) as info:
        await run(flow, [1])
    [exc] = leaves(info.value)
    assert isinstance(exc, KeyError)
    assert exc.args == (3,)


# -- all together -------------------------------------------------------------------------------


async def test_every_option_on_one_autoscaling_job() -> None:
    rng = random.Random(19)
    errors = ErrorLog()
    calls: Counter[tuple[int, ...]] = Counter()

    async def busy(batch: list[int]) -> list[int]:
        calls[tuple(batch)] += 1
        await anyio.sleep(rng.uniform(0, 0.001))
        if 77 in batch:
            raise Boom(batch)
        if 50 in batch and calls[tuple(batch)] == 1:
            await anyio.sleep_forever()  # times out once
        return batch

    flow = Flow().add(
        busy,
        capacity=scaling(1, 8),
        name="all",
        ordered=True,
        retry=Retry(attempts=2, backoff=0.001),
        timeout=0.05,
        max_per_second=5000,
        batch=Batch(size=4, timeout=0.001),
    )
    flow.add_error_job(errors)
    outputs = await collect(flow, range(300))
    delivered = [item for batch in outputs for item in batch]
    assert delivered == sorted(delivered)  # ordered
    [error] = errors.errors
    assert 77 in error.item
    assert error.attempts == 2
    assert Counter(delivered + error.item) == Counter(range(300))


# -- a property over random mixes of options ----------------------------------------------------


@dataclass(frozen=True)
class JobPlan:
    """One job of a random flow: its options and which items it skips, fails or hangs on."""

    ordered: bool
    attempts: int | None  # retry attempts, or no retry
    timeout: str | None  # "large" never fires; "small" fires for the items in `hang`
    batch: tuple[int, float] | None  # (size, timeout)
    generator: bool
    min_workers: int
    max_workers: int
    queue_length: int
    skip: frozenset[int]
    fail: frozenset[int]
    flaky: frozenset[int]  # fail on the first call only
    hang: frozenset[int]


@dataclass(frozen=True)
class Scenario:
    items: int
    jobs: tuple[JobPlan, ...]
    error_batch: bool
    seed: int


@st.composite
def job_plans(draw: st.DrawFn, items: int) -> JobPlan:
    some_items = st.frozensets(st.integers(0, max(items - 1, 0)), max_size=3) if items else None

    def subset() -> frozenset[int]:
        return draw(some_items) if some_items is not None else frozenset()

    timeout = draw(st.sampled_from([None, "large", "small"]))
    low = draw(st.integers(0, 2))
    return JobPlan(
        ordered=draw(st.booleans()),
        attempts=draw(st.none() | st.integers(1, 3)),
        timeout=timeout,
        batch=draw(st.none() | st.tuples(st.integers(1, 4), st.sampled_from([0.0, 0.001, 0.01]))),
        generator=draw(st.booleans()),
        min_workers=low,
        max_workers=draw(st.integers(max(low, 1), 4)),
        queue_length=draw(st.integers(0, 3)),
        skip=subset(),
        fail=subset(),
        flaky=subset(),
        hang=subset() if timeout == "small" else frozenset(),
    )


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    items = draw(st.integers(0, 40))
    count = draw(st.integers(1, 3))
    return Scenario(
        items=items,
        jobs=tuple(draw(job_plans(items)) for _ in range(count)),
        error_batch=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


def flatten(value: Any) -> Iterator[int]:
    if isinstance(value, list):
        for inner in value:
            yield from flatten(inner)
    else:
        yield value


class Ledger:
    """Where every input ended: delivered, skipped, or handed to the error job."""

    def __init__(self) -> None:
        self.delivered: list[int] = []
        self.skipped: list[int] = []
        self.errored: list[int] = []
        self.calls: Counter[tuple[int, tuple[int, ...]]] = Counter()


def make_processor(index: int, plan: JobPlan, ledger: Ledger, seed: int) -> Any:
    async def fate(value: Any) -> None:
        keys = tuple(flatten(value))
        found = set(keys)
        if found & plan.skip:  # checked first, so never on a retry
            ledger.skipped.extend(keys)
            raise StopProcessing
        ledger.calls[index, keys] += 1
        if found & plan.hang:
            await anyio.sleep_forever()
        if found & plan.fail:
            raise Boom(keys)
        if found & plan.flaky and ledger.calls[index, keys] == 1:
            raise Boom(keys)
        if (sum(keys) + 7 * index + seed) % 3 == 0:
            await anyio.sleep(0.0005)
        else:
            await checkpoint()

    async def call(value: Any) -> Any:
        await fate(value)
        return value

    async def gen(value: Any) -> AsyncIterator[Any]:
        await fate(value)
        for out in value if isinstance(value, list) else [value]:
            yield out

    return gen if plan.generator else call


def build(scenario: Scenario, ledger: Ledger) -> Flow:
    flow = Flow()
    for index, plan in enumerate(scenario.jobs):
        if plan.max_workers > plan.min_workers:
            capacity: Capacity = scaling(plan.min_workers, plan.max_workers, plan.queue_length)
        else:
            capacity = fixed(plan.max_workers, plan.queue_length)
        flow.add(
            make_processor(index, plan, ledger, scenario.seed),
            capacity=capacity,
            name=f"job{index}",
            ordered=plan.ordered,
            retry=Retry(attempts=plan.attempts, backoff=0) if plan.attempts else None,
            timeout={None: None, "large": 5.0, "small": 0.01}[plan.timeout],
            batch=Batch(size=plan.batch[0], timeout=plan.batch[1]) if plan.batch else None,
        )

    async def deliver(value: Any) -> None:
        ledger.delivered.extend(flatten(value))

    async def route(error: ErrorItem | list[ErrorItem]) -> None:
        for one in error if isinstance(error, list) else [error]:
            ledger.errored.extend(flatten(one.item))

    flow.add(deliver, name="deliver")
    flow.add_error_job(
        route, name="errors", batch=Batch(size=3, timeout=0.001) if scenario.error_batch else None
    )
    return flow


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@hypothesis.settings(deadline=None, max_examples=25)
@hypothesis.given(scenario=scenarios())
def test_every_input_ends_exactly_once_whatever_the_options(
    backend: str, scenario: Scenario
) -> None:
    ledger = Ledger()
    flow = build(scenario, ledger)

    async def main() -> FlowStats:
        with anyio.fail_after(HANG_GUARD):
            return await flow.run(range(scenario.items))

    stats = anyio.run(main, backend=backend)
    ended = Counter(ledger.delivered + ledger.skipped + ledger.errored)
    assert ended == Counter(range(scenario.items))
    assert_balanced(stats)
    if all(plan.ordered for plan in scenario.jobs):
        assert ledger.delivered == sorted(ledger.delivered)
