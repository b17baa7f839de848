"""Defects found from outside the suite (issue 12), each with the test that would have caught it.

Every async test runs on asyncio, trio and uvloop. What depends on time is asserted in
virtual time (trio's ``MockClock(autojump_threshold=0)``: sleeps return at once, and the
clock jumps when every task waits); what runs in threads uses real time only to let a
deadline pass, and asserts only counts and order, never durations.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import pytest
from _support import HANG_GUARD, leaves, run, wait_until
from trio.testing import MockClock

from flowrhythm import (
    Capacity,
    ErrorItem,
    Flow,
    ProcessorFactory,
    Retry,
    ScalingEvent,
    UtilizationCapacity,
)
from flowrhythm._options import JobOptions

pytestmark = pytest.mark.anyio

ONE = Capacity(min_workers=1, max_workers=1)


def virtual_time() -> pytest.MarkDecorator:
    """Run only on trio with an autojumping MockClock: the test is about time."""
    return pytest.mark.parametrize(
        "anyio_backend",
        [pytest.param(("trio", {"clock": MockClock(autojump_threshold=0)}), id="trio-mockclock")],
    )


class Boom(Exception):
    pass


class Errors:
    """An error job that records every ErrorItem."""

    def __init__(self) -> None:
        self.items: list[ErrorItem] = []

    async def __call__(self, error: ErrorItem) -> None:
        self.items.append(error)


class InFlight:
    """A blocking call that records how many calls run at once, and every item it ran.

    Each call takes ``seconds`` of real time (a thread cannot run in virtual time), so
    that a shorter ``timeout=`` always passes while it runs.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0
        self.ran: list[int] = []
        self.never = threading.Event()

    def __call__(self, item: int) -> int:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.ran.append(item)
        try:
            self.never.wait(self.seconds)  # stands for blocking work
        finally:
            with self.lock:
                self.now -= 1
        return item


# -- 4: an Executor instance with timeout= keeps the worker bound ---------------------------


async def test_an_executor_job_with_a_timeout_keeps_one_call_per_worker() -> None:
    calls = InFlight(0.05)
    errors = Errors()
    with ThreadPoolExecutor(4) as pool:
        flow = Flow().add(calls, ONE, name="job", executor=pool, timeout=0.005)
        stats = await run(flow.add_error_job(errors), range(4))
        # When run() returns, no call of the run is still running.
        assert calls.now == 0
    assert calls.most == 1  # one worker: one call in flight, never more
    assert sorted(calls.ran) == [0, 1, 2, 3]
    assert [(e.item, type(e.exception)) for e in errors.items] == [
        (i, TimeoutError) for i in range(4)
    ]
    assert stats.jobs["job"].errored == 4


async def test_a_cancelled_executor_job_waits_for_its_running_call() -> None:
    calls = InFlight(0.05)
    with ThreadPoolExecutor(4) as pool:
        flow = Flow().add(calls, Capacity(min_workers=2, max_workers=2), executor=pool)
        with anyio.fail_after(HANG_GUARD):
            async with flow.start() as running:
                for item in range(6):
                    await running.send(item)
                await wait_until(lambda: calls.now == 2)  # (the calls are in threads)
                running.stop()
        assert calls.now == 0  # the run waited for both running calls
        assert calls.most == 2


# -- 12: timeout= with threads, processes, executors never re-runs a call that finished ------


def executors() -> list[Any]:
    return [
        pytest.param("thread", id="thread"),
        pytest.param("pool", id="executor-instance"),
    ]


@pytest.mark.parametrize("kind", executors())
async def test_a_late_offloaded_call_fails_with_timeout_and_is_not_retried(kind: str) -> None:
    calls = InFlight(0.05)
    errors = Errors()
    with ThreadPoolExecutor(2) as pool:
        executor: Any = pool if kind == "pool" else kind
        flow = Flow().add(
            calls,
            ONE,
            name="job",
            executor=executor,
            timeout=0.005,
            retry=Retry(attempts=3, backoff=0.0),
        )
        stats = await run(flow.add_error_job(errors), [7])
    assert calls.ran == [7]  # ran once: its side effects happened once
    [error] = errors.items
    assert isinstance(error.exception, TimeoutError)
    assert "not retried" in str(error.exception)
    assert error.attempts == 1
    assert stats.jobs["job"].retried == 0


def count_a_call(directory: str, item: int) -> int:
    """Leave one marker file per call (a process call cannot touch the test's memory)."""
    import time

    Path(directory, f"{item}-{time.monotonic_ns()}").touch()
    time.sleep(0.3)
    return item


async def test_a_late_process_call_is_not_retried(tmp_path: Path) -> None:
    errors = Errors()
    # Start anyio's worker process first, so that the timeout meets a running call.
    await run(Flow().add(abs, executor="process"), [0])
    flow = Flow().add(
        functools.partial(count_a_call, str(tmp_path)),
        name="job",
        executor="process",
        timeout=0.1,
        retry=Retry(attempts=3, backoff=0.0),
    )
    await run(flow.add_error_job(errors), [5])
    assert len([marker async for marker in anyio.Path(tmp_path).iterdir()]) == 1
    assert [(e.item, type(e.exception), e.attempts) for e in errors.items] == [
        (5, TimeoutError, 1)
    ]


async def test_an_offloaded_call_that_fails_is_still_retried() -> None:
    ran: list[int] = []

    def fails_twice(item: int) -> int:
        ran.append(item)
        if len(ran) < 3:
            raise Boom(item)
        return item * 10

    flow = Flow().add(
        fails_twice, name="job", executor="thread", timeout=60.0, retry=Retry(backoff=0.0)
    )
    stats = await run(flow, [1])
    assert ran == [1, 1, 1]
    assert stats.jobs["job"].completed == 1


async def test_a_late_call_after_failed_attempts_reports_every_attempt() -> None:
    ran: list[int] = []
    errors = Errors()
    gate = threading.Event()

    def fails_then_is_late(item: int) -> int:
        ran.append(item)
        if len(ran) == 1:
            raise Boom(item)
        gate.wait(0.05)
        return item

    flow = Flow().add(
        fails_then_is_late,
        name="job",
        executor="thread",
        timeout=0.005,
        retry=Retry(attempts=5, backoff=0.0),
    )
    await run(flow.add_error_job(errors), [3])
    assert ran == [3, 3]
    [error] = errors.items
    assert (type(error.exception), error.attempts) == (TimeoutError, 2)


# -- 7: Retry arithmetic stays bounded ------------------------------------------------------


async def test_eleven_hundred_attempts_report_the_last_real_error() -> None:
    calls = 0
    errors = Errors()

    async def always_fails(item: int) -> int:
        nonlocal calls
        calls += 1
        raise Boom(calls)

    flow = Flow().add(always_fails, name="job", retry=Retry(attempts=1100, backoff=0.0))
    stats = await run(flow.add_error_job(errors), [1])
    [error] = errors.items
    assert isinstance(error.exception, Boom)
    assert error.exception.args == (1100,)  # the last call's failure
    assert error.attempts == 1100
    assert stats.jobs["job"].retried == 1099


@virtual_time()
async def test_eleven_hundred_attempts_with_a_back_off_wait_max_backoff_each() -> None:
    errors = Errors()
    times: list[float] = []

    async def always_fails(item: int) -> int:
        times.append(anyio.current_time())
        raise Boom(item)

    retry = Retry(attempts=1100, backoff=0.5, max_backoff=2.0, jitter=False)
    await Flow().add(always_fails, retry=retry).add_error_job(errors).run([1])  # virtual time
    [error] = errors.items
    assert error.attempts == 1100
    waits = [b - a for a, b in itertools.pairwise(times)]
    assert waits[:3] == [0.5, 1.0, 2.0]
    assert all(math.isclose(wait, 2.0) for wait in waits[2:])


@pytest.mark.parametrize("retry", [0, 1, 10, 1023, 1024, 1100, 5000, 10**30], ids=str)
def test_retry_wait_never_overflows(retry: int) -> None:
    expected = 0.1 * 2**retry if retry < 10 else 7.0
    assert Retry(backoff=0.1, max_backoff=7.0, jitter=False).wait(retry) == min(expected, 7.0)
    assert Retry(backoff=0.0, jitter=False).wait(retry) == 0.0
    assert 0.0 <= Retry(backoff=1e300, max_backoff=1e308).wait(retry) <= 1e308
    assert Retry(backoff=5e-324, max_backoff=1.0, jitter=False).wait(retry) <= 1.0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("backoff", 10**400),
        ("max_backoff", 10**400),
        ("backoff", math.inf),
        ("max_backoff", math.nan),
    ],
    ids=["backoff-10**400", "max_backoff-10**400", "backoff-inf", "max_backoff-nan"],
)
def test_retry_refuses_numbers_beyond_floats(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        Retry(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timeout", 10**400),
        ("timeout", math.inf),
        ("max_per_second", 10**400),
        ("max_per_second", math.inf),
        ("max_per_second", 5e-324),  # 1 / rate is no longer a number of seconds
    ],
    ids=["timeout-10**400", "timeout-inf", "rate-10**400", "rate-inf", "rate-5e-324"],
)
def test_job_options_refuse_numbers_beyond_floats(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        JobOptions.build(**{field: value})
    with pytest.raises(ValueError, match=field):
        Flow().add(abs, executor="thread", **{field: value})  # type: ignore[call-overload]


@virtual_time()
async def test_a_huge_timeout_and_a_slow_rate_are_plain_numbers() -> None:
    async def identity(item: int) -> int:
        await anyio.sleep(1.0)
        return item

    flow = Flow().add(identity, name="job", timeout=1e300, max_per_second=1e-300)
    async with flow.start() as running:
        await running.send(1)
        await running.send(2)
        await anyio.sleep(3600.0)
        job = running.stats().jobs["job"]
        assert (job.completed, job.blocked) == (1, 1)  # the second slot is 1e300 s away
        running.stop()


# -- 8: add_job_with_lock refuses what is not an async context manager instance -------------


async def noop(item: int) -> int:
    return item


@contextlib.asynccontextmanager
async def session() -> AsyncIterator[None]:
    yield


@pytest.mark.parametrize(
    ("manager", "match"),
    [
        pytest.param(anyio.Lock, r"class Lock \(did you mean Lock\(\)\?\)", id="anyio.Lock"),
        pytest.param(anyio.Semaphore, r"class Semaphore", id="anyio.Semaphore"),
        pytest.param(None, "resource_manager must be an async context manager", id="None"),
        pytest.param(threading.Lock(), "resource_manager", id="threading.Lock()"),
        pytest.param(session, "resource_manager", id="asynccontextmanager-function"),
        pytest.param(session(), "entered only once", id="asynccontextmanager-object"),
    ],
)
def test_add_job_with_lock_refuses_a_wrong_resource_manager(manager: object, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        Flow().add_job_with_lock(noop, manager)  # type: ignore[call-overload]


async def test_add_job_with_lock_accepts_instances_that_enter_many_times() -> None:
    class Counting:
        def __init__(self) -> None:
            self.entered = 0

        async def __aenter__(self) -> None:
            self.entered += 1

        async def __aexit__(self, *exc: object) -> None:
            return None

    counting = Counting()
    flow = Flow()
    flow.add_job_with_lock(noop, anyio.Lock(), name="lock")
    flow.add_job_with_lock(noop, anyio.Semaphore(2), name="semaphore")
    flow.add_job_with_lock(noop, anyio.CapacityLimiter(3), name="limiter")
    flow.add_job_with_lock(noop, counting, name="counting")
    stats = await run(flow, range(5))
    assert counting.entered == 5
    assert all(job.completed == 5 for job in stats.jobs.values())


# -- 9: ProcessorFactory refuses an async generator function ---------------------------------


async def forgot_the_decorator() -> AsyncIterator[Callable[[int], Any]]:
    yield noop


class GeneratorFactory:
    async def __call__(self) -> AsyncIterator[Callable[[int], Any]]:
        yield noop


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(forgot_the_decorator, id="function"),
        pytest.param(functools.partial(forgot_the_decorator), id="partial"),
        pytest.param(GeneratorFactory(), id="__call__"),
    ],
)
def test_processor_factory_refuses_an_async_generator_function(make: Any) -> None:
    with pytest.raises(TypeError, match=r"asynccontextmanager"):
        ProcessorFactory(make)


def test_processor_factory_accepts_a_decorated_function_and_a_class() -> None:
    class Manager:
        async def __aenter__(self) -> Callable[[int], Any]:
            return noop

        async def __aexit__(self, *exc: object) -> None:
            return None

    ProcessorFactory(contextlib.asynccontextmanager(forgot_the_decorator))
    ProcessorFactory(Manager)


# -- 10: an async on_scale callback is refused, not silently dropped -------------------------


async def on_scale_async(event: ScalingEvent) -> None:
    raise AssertionError("never called")


async def test_an_async_on_scale_is_refused_by_run_stream_and_start() -> None:
    flow = Flow().add(noop)
    with pytest.raises(TypeError, match="on_scale must be a plain"):
        await flow.run([1], on_scale=on_scale_async)
    with pytest.raises(TypeError, match="on_scale must be a plain"):
        flow.stream([1], on_scale=on_scale_async)
    with pytest.raises(TypeError, match="on_scale must be a plain"):
        flow.start(on_scale=functools.partial(on_scale_async))


async def test_a_plain_on_scale_still_runs() -> None:
    events: list[ScalingEvent] = []
    flow = Flow().add(noop, Capacity(min_workers=0, max_workers=1))
    await run(flow, [1])
    await flow.run([1], on_scale=events.append)
    assert events  # the job woke from zero workers


# -- the ProcessorFactory exit has a deadline --------------------------------------------------


class HangingExit:
    """A factory whose exit never returns unless cancelled."""

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.exits = 0
        self.cancelled_exits = 0

    @contextlib.asynccontextmanager
    async def make(self) -> AsyncIterator[Callable[[int], Any]]:
        self.entered.set()
        try:
            yield noop
        finally:
            self.exits += 1
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                self.cancelled_exits += 1
                raise


@virtual_time()
async def test_a_hanging_factory_exit_gives_up_at_its_deadline_on_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hanging = HangingExit()
    flow = Flow().add(ProcessorFactory(hanging.make, exit_timeout=5.0))
    async with flow.start() as running:
        await hanging.entered.wait()
        stopped_at = anyio.current_time()
        running.stop()
    assert anyio.current_time() - stopped_at == 5.0
    assert (hanging.exits, hanging.cancelled_exits) == (1, 1)
    assert "exit_timeout of 5s" in caplog.text


async def test_a_hanging_factory_exit_does_not_hold_an_outer_cancel_scope(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hanging = HangingExit()
    flow = Flow().add(ProcessorFactory(hanging.make, exit_timeout=0.01))
    with (
        caplog.at_level(logging.WARNING, logger="flowrhythm"),
        anyio.fail_after(HANG_GUARD),
        anyio.CancelScope() as outer,
    ):
        async with flow.start():
            await hanging.entered.wait()
            outer.cancel()
            await anyio.sleep_forever()
    assert outer.cancelled_caught
    assert (hanging.exits, hanging.cancelled_exits) == (1, 1)
    assert "took longer than its exit_timeout" in caplog.text


@virtual_time()
async def test_a_slow_factory_exit_within_its_deadline_completes() -> None:
    done: list[float] = []

    @contextlib.asynccontextmanager
    async def make() -> AsyncIterator[Callable[[int], Any]]:
        try:
            yield noop
        finally:
            await anyio.sleep(9.0)  # e.g. flushing a buffer
            done.append(anyio.current_time())

    flow = Flow().add(ProcessorFactory(make))  # default deadline: 10 s
    await flow.run(range(3))
    assert len(done) == 1


@pytest.mark.parametrize("value", [0, -1.0, math.inf, "5"])
def test_exit_timeout_is_validated(value: object) -> None:
    error = TypeError if isinstance(value, str) else ValueError
    with pytest.raises(error, match="exit_timeout"):
        ProcessorFactory(session, exit_timeout=value)  # type: ignore[arg-type]


def test_exit_timeout_none_waits_for_ever() -> None:
    assert ProcessorFactory(session, exit_timeout=None).exit_timeout is None


# -- a retry's back-off is blocked time, not active -----------------------------------------


@virtual_time()
async def test_a_job_whose_calls_back_off_does_not_grow() -> None:
    errors = Errors()

    async def always_fails(item: int) -> int:
        await anyio.sleep(0.01)
        raise Boom(item)

    capacity = UtilizationCapacity(min_workers=1, max_workers=8, sampling=0.05, cooldown=0.0)
    retry = Retry(attempts=4, backoff=1.0, jitter=False)
    flow = Flow().add(always_fails, capacity, name="job", retry=retry)
    stats = await flow.add_error_job(errors).run(range(20))  # virtual time
    job = stats.jobs["job"]
    assert job.scale_ups == 0
    assert job.errored == 20
    # Nearly all the time went to back-off (7 s per item), and it counts as blocked.
    assert job.blocked_seconds > 10 * job.active_seconds


async def test_back_off_is_blocked_while_it_waits() -> None:
    failed = anyio.Event()

    async def fails(item: int) -> int:
        failed.set()
        raise Boom(item)

    flow = Flow().add(fails, name="job", retry=Retry(backoff=3600.0))
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            await running.send(1)
            await failed.wait()
            await anyio.wait_all_tasks_blocked()
            job = running.stats().jobs["job"]
            assert (job.active, job.blocked) == (0, 1)
            running.stop()


# -- flowrhythm's own errors stay its own -------------------------------------------------------


async def test_a_processor_raising_closed_resource_error_is_routed_as_its_own_failure() -> None:
    # The processor's own anyio error is the user's failure: routed, with its attempts.
    errors = Errors()

    async def closed(item: int) -> int:
        raise anyio.ClosedResourceError

    flow = Flow().add(closed, name="job", retry=Retry(attempts=2, backoff=0.0))
    await run(flow.add_error_job(errors), [1])
    assert [(type(e.exception), e.attempts) for e in errors.items] == [
        (anyio.ClosedResourceError, 2)
    ]


async def test_retry_without_an_error_job_fails_the_run_with_the_last_error() -> None:
    calls = Counter[int]()

    async def fails(item: int) -> int:
        calls[item] += 1
        raise Boom(calls[item])

    flow = Flow().add(fails, retry=Retry(attempts=3, backoff=0.0))
    with pytest.raises(BaseExceptionGroup) as caught:
        await run(flow, [1])
    [leaf] = leaves(caught.value)
    assert isinstance(leaf, Boom)
    assert leaf.args == (3,)


async def test_a_factory_whose_make_returns_a_class_fails_with_a_clear_error() -> None:
    class Manager:
        async def __aenter__(self) -> Callable[[int], Any]:
            return noop

        async def __aexit__(self, *exc: object) -> None:
            return None

    flow = Flow().add(ProcessorFactory(lambda: Manager))  # type: ignore[arg-type,return-value]
    with pytest.raises(BaseExceptionGroup) as caught:
        await run(flow, [1])
    [leaf] = leaves(caught.value)
    assert isinstance(leaf, TypeError)
    assert "must return an async context manager" in str(leaf)


async def test_an_executor_call_still_queued_at_its_timeout_is_cancelled_and_retried() -> None:
    calls = InFlight(0.0)
    errors = Errors()
    busy = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        pool.submit(busy.wait, HANG_GUARD)  # the pool's only thread is taken
        try:
            flow = Flow().add(
                calls,
                name="job",
                executor=pool,
                timeout=0.01,
                retry=Retry(attempts=2, backoff=0.0),
            )
            await run(flow.add_error_job(errors), [4])
        finally:
            busy.set()
    assert calls.ran == []  # never started: cancelled in the queue, twice
    [error] = errors.items
    assert isinstance(error.exception, TimeoutError)
    assert "did not start" in str(error.exception)
    assert error.attempts == 2


class Swallowing:
    """A resource manager whose exit returns True: it would swallow any exception."""

    def __init__(self) -> None:
        self.seen: list[type[BaseException] | None] = []

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, exc_type: type[BaseException] | None, *rest: object) -> bool:
        self.seen.append(exc_type)
        return True


async def test_a_resource_manager_sees_a_failure_but_cannot_swallow_it() -> None:
    manager = Swallowing()
    errors = Errors()

    async def fails(item: int) -> int:
        raise Boom(item)

    stats = await run(
        Flow().add_job_with_lock(fails, manager, name="job").add_error_job(errors), [1]
    )
    assert manager.seen == [Boom]
    assert [type(e.exception) for e in errors.items] == [Boom]
    assert stats.jobs["job"].errored == 1


async def test_a_resource_manager_cannot_swallow_the_cancellation_of_the_run() -> None:
    manager = Swallowing()
    entered = anyio.Event()

    async def waits(item: int) -> int:
        entered.set()
        await anyio.sleep_forever()
        return item

    flow = Flow().add_job_with_lock(waits, manager, name="job")
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            await running.send(1)
            await entered.wait()
            running.stop()
    assert manager.seen == [anyio.get_cancelled_exc_class()]
    job = running.stats().jobs["job"]
    assert (job.received, job.completed, job.in_flight) == (1, 0, 1)  # abandoned, not "done"
