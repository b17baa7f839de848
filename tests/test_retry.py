"""``retry=``: attempts, back-off and jitter, what is retried and what never is, retried error jobs.

Exact timing is asserted only on trio's ``MockClock`` (autojump: sleeps return at once, in
virtual time); on real clocks the tests assert only what cannot depend on how loaded the
machine is, and order their steps with events and ``wait_all_tasks_blocked``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import anyio
import pytest
from _support import (
    HANG_GUARD,
    NEVER,
    Boom,
    ErrorLog,
    Sink,
    assert_balanced,
    collect,
    fixed,
    leaves,
    run,
    scaling,
    virtual_time_only,
)

from flowrhythm import (
    ErrorItem,
    Flow,
    Retry,
    RouteToErrorQueue,
    StopProcessing,
)

pytestmark = pytest.mark.anyio


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
