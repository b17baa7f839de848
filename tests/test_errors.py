"""Exceptions: skipping, routing to the error job, failing the run, propagating."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest
from _support import (
    HANG_GUARD,
    ONE,
    THREE,
    Boom,
    assert_balanced,
    collect,
    inc,
    run,
    wait_until,
)

from flowrhythm import Capacity, ErrorItem, Flow, RouteToErrorQueue, StopProcessing

pytestmark = pytest.mark.anyio


class Abort(BaseException):
    """Stands for KeyboardInterrupt / SystemExit without endangering the test run."""


class ErrorLog:
    """An error job that records every ErrorItem."""

    def __init__(self) -> None:
        self.errors: list[ErrorItem] = []

    async def __call__(self, error: ErrorItem) -> str:
        self.errors.append(error)
        return "discarded"


def raises_inside_group(exc: BaseException) -> pytest.RaisesGroup[Any]:
    """Expect exactly ``exc`` (the same object) inside a (possibly nested) ExceptionGroup."""
    return pytest.RaisesGroup(
        pytest.RaisesExc(type(exc), check=lambda raised: raised is exc), flatten_subgroups=True
    )


# -- StopProcessing --------------------------------------------------------------------------


async def skip_odd(item: int) -> int:
    if item % 2:
        raise StopProcessing
    return item


async def test_stop_processing_skips_the_item() -> None:
    log = ErrorLog()
    flow = Flow().add(skip_odd, capacity=ONE, name="skip").add(inc, capacity=ONE, name="inc")
    flow.add_error_job(log, name="errors")
    assert await collect(flow, range(10)) == [1, 3, 5, 7, 9]
    stats = await run(flow, range(10))
    assert stats.jobs["skip"].skipped == 5
    assert stats.jobs["skip"].completed == 5
    assert stats.jobs["inc"].received == 5
    assert stats.jobs["errors"].received == 0
    assert log.errors == []
    assert_balanced(stats)


async def test_stop_processing_is_not_a_failure_without_an_error_job() -> None:
    stats = await run(Flow().add(skip_odd, name="skip"), range(6))
    assert stats.jobs["skip"].skipped == 3
    assert stats.jobs["skip"].errored == 0


async def test_stop_processing_in_a_generator_skips_the_item() -> None:
    async def expand(item: int) -> AsyncIterator[int]:
        if item == 2:
            raise StopProcessing
        yield item

    stats = await run(Flow().add(expand, name="expand"), range(4))
    assert stats.jobs["expand"].skipped == 1
    assert stats.jobs["expand"].completed == 3


# -- routed to the error job -----------------------------------------------------------------


@pytest.mark.parametrize(
    "make_exception",
    [
        pytest.param(RouteToErrorQueue, id="route-to-error-queue"),
        pytest.param(ValueError, id="value-error"),
        pytest.param(Boom, id="custom-exception"),
    ],
)
async def test_exception_is_routed_to_the_error_job(
    make_exception: Callable[[str], Exception],
) -> None:
    raised: dict[int, Exception] = {}

    async def fail_multiples_of_three(item: int) -> int:
        if item % 3 == 0:
            raised[item] = make_exception(f"item {item}")
            raise raised[item]
        return item

    log = ErrorLog()
    flow = (
        Flow()
        .add(inc, capacity=ONE, name="inc")
        .add(fail_multiples_of_three, capacity=THREE)
        .add_error_job(log)
    )
    outputs = await collect(flow, range(12))
    # The flow goes on: every other item is delivered.
    assert Counter(outputs) == Counter(item + 1 for item in range(12) if (item + 1) % 3 != 0)
    assert sorted(error.item for error in log.errors) == [3, 6, 9, 12]
    for error in log.errors:
        assert isinstance(error, ErrorItem)
        # The item is the input of the failing job, not the original source item.
        assert error.exception is raised[error.item]
        assert error.job == fail_multiples_of_three.__name__


async def test_error_counters() -> None:
    async def fail_even(item: int) -> int:
        if item % 2 == 0:
            raise Boom
        return item

    flow = (
        Flow().add(fail_even, capacity=THREE, name="work").add_error_job(ErrorLog(), name="errors")
    )
    stats = await run(flow, range(10))
    assert stats.jobs["work"].errored == 5
    assert stats.jobs["work"].completed == 5
    assert stats.jobs["errors"].received == 5
    assert stats.jobs["errors"].completed == 5
    assert_balanced(stats)


async def test_error_item_names_the_explicitly_named_job() -> None:
    async def fail(item: int) -> int:
        raise Boom(item)

    log = ErrorLog()
    flow = Flow().add(inc, name="first").add(fail, name="second").add_error_job(log)
    await run(flow, [1])
    assert [(error.item, error.job) for error in log.errors] == [(2, "second")]


async def test_failing_generator_is_routed_with_its_input() -> None:
    async def expand(item: int) -> AsyncIterator[int]:
        yield item
        if item == 2:
            raise Boom(item)
        yield item

    log = ErrorLog()
    flow = Flow().add(expand, name="expand").add_error_job(log, name="errors")
    stats = await run(flow, range(4))
    assert [(error.item, error.job, type(error.exception)) for error in log.errors] == [
        (2, "expand", Boom)
    ]
    assert stats.jobs["expand"].errored == 1
    assert stats.jobs["expand"].completed == 3
    assert_balanced(stats)


# -- no error job: the run fails -------------------------------------------------------------


@pytest.mark.parametrize("exception_type", [Boom, RouteToErrorQueue])
async def test_without_an_error_job_run_raises(exception_type: type[Exception]) -> None:
    exc = exception_type("boom")

    async def fail_on_five(item: int) -> int:
        if item == 5:
            raise exc
        return item

    with raises_inside_group(exc):
        await run(Flow().add(fail_on_five, capacity=THREE), range(20))


async def test_without_an_error_job_stream_raises() -> None:
    exc = Boom("boom")

    async def fail_on_five(item: int) -> int:
        if item == 5:
            raise exc
        return item

    with raises_inside_group(exc):
        await collect(Flow().add(fail_on_five), range(20))


async def test_without_an_error_job_join_raises() -> None:
    exc = Boom("boom")

    async def fail(item: int) -> int:
        raise exc

    async def send_and_join() -> None:
        async with Flow().add(fail).start() as running:
            await running.send(1)
            await running.join()

    with anyio.fail_after(HANG_GUARD), raises_inside_group(exc):
        await send_and_join()


async def test_failure_cancels_the_rest_of_the_run() -> None:
    exc = Boom("boom")
    cancelled: list[int] = []
    waiting = anyio.Event()

    async def sleeper_or_failure(item: int) -> int:
        if item == 0:
            try:
                waiting.set()
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                cancelled.append(item)
                raise
        await waiting.wait()
        raise exc

    flow = Flow().add(sleeper_or_failure, capacity=Capacity(min_workers=2, max_workers=2))
    with raises_inside_group(exc):
        await run(flow, itertools.count())
    assert cancelled == [0]


async def test_failing_error_job_fails_the_run() -> None:
    exc = Boom("in the error job")

    async def fail(item: int) -> int:
        raise ValueError(item)

    async def bad_report(error: ErrorItem) -> None:
        raise exc

    with raises_inside_group(exc):
        await run(Flow().add(fail).add_error_job(bad_report), range(3))


async def test_flow_runs_again_after_a_failed_run() -> None:
    async def fail_on_five(item: int) -> int:
        if item == 5:
            raise Boom
        return item

    flow = Flow().add(fail_on_five, capacity=ONE)
    with pytest.RaisesGroup(Boom, flatten_subgroups=True):
        await run(flow, range(10))
    assert await collect(flow, range(5)) == [0, 1, 2, 3, 4]


# -- BaseException propagates ----------------------------------------------------------------


async def test_base_exception_propagates_and_is_never_routed() -> None:
    log = ErrorLog()

    async def abort_on_three(item: int) -> int:
        if item == 3:
            raise Abort
        return item

    flow = Flow().add(abort_on_three, capacity=ONE).add_error_job(log)
    with (
        anyio.fail_after(HANG_GUARD),
        pytest.RaisesGroup(Abort, allow_unwrapped=True, flatten_subgroups=True),
    ):
        await flow.run(itertools.count())
    assert log.errors == []


async def test_base_exception_in_the_error_job_propagates() -> None:
    async def fail(item: int) -> int:
        raise Boom

    async def aborting_report(error: ErrorItem) -> None:
        raise Abort

    flow = Flow().add(fail).add_error_job(aborting_report)
    with (
        anyio.fail_after(HANG_GUARD),
        pytest.RaisesGroup(Abort, allow_unwrapped=True, flatten_subgroups=True),
    ):
        await flow.run(range(3))


async def test_stray_cancellation_fails_the_run() -> None:
    # A processor that raises the backend's cancellation exception although
    # nothing cancelled it must not make the run a success with the item missing.
    async def leak_cancellation(item: int) -> int:
        if item != 2:
            return item
        with anyio.CancelScope() as scope:
            scope.cancel()
            try:
                await anyio.lowlevel.checkpoint()
            except anyio.get_cancelled_exc_class() as exc:
                stray = exc
        raise stray

    outcome: BaseException | None = None
    with anyio.move_on_after(HANG_GUARD) as guard:
        try:
            await Flow().add(leak_cancellation, capacity=ONE).run(range(5))
        except BaseException as exc:  # noqa: BLE001 - any failure is the expected outcome
            outcome = exc
    assert not guard.cancel_called, "the run hung"
    assert outcome is not None, "the run ended as a success with an item missing"


async def test_cancelled_run_counts_abandoned_items() -> None:
    started = anyio.Event()

    async def forever(item: int) -> int:
        started.set()
        await anyio.sleep_forever()
        return item

    flow = Flow().add(forever, capacity=ONE, name="forever")
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            await running.send(1)
            await started.wait()
            await wait_until(lambda: running.stats().jobs["forever"].active == 1)
            running.stop()
    job = running.stats().jobs["forever"]
    assert job.received - job.completed - job.skipped - job.errored == 1


async def test_error_item_names_a_suffixed_default_name() -> None:
    async def fail_on_two(item: int) -> int:
        if item == 2:
            raise Boom(item)
        return item

    log = ErrorLog()
    flow = Flow().add(fail_on_two, capacity=ONE).add(fail_on_two, capacity=ONE).add_error_job(log)
    await run(flow, [1, 2, 3, 1])
    # Only item 2 fails, in the first job: its name is the function's own.
    assert [error.job for error in log.errors] == [fail_on_two.__name__]

    async def dec(item: int) -> int:
        return item - 1

    log2 = ErrorLog()
    flow2 = (
        Flow()
        .add(fail_on_two, capacity=ONE)
        .add(dec, capacity=ONE)
        .add(fail_on_two, capacity=ONE)
        .add_error_job(log2)
    )
    stats = await run(flow2, [3])
    # 3 passes the first job, becomes 2, fails in the second fail_on_two job.
    assert [error.job for error in log2.errors] == [f"{fail_on_two.__name__}#2"]
    assert stats.jobs[f"{fail_on_two.__name__}#2"].errored == 1
