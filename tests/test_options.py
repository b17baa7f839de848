"""Job options together: every option's values checked, options on a resource-managed job,
every option on one job, and a property over random mixes of options.

Each option has its own module (``test_ordered``, ``test_retry``, ``test_timeout``,
``test_rate_limit``, ``test_batch``); this one checks what they share.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import hypothesis
import pytest
from _support import (
    HANG_GUARD,
    Boom,
    ErrorLog,
    Sink,
    assert_balanced,
    collect,
    fixed,
    run,
    scaling,
)
from anyio.lowlevel import checkpoint
from hypothesis import strategies as st

from flowrhythm import (
    Batch,
    Capacity,
    ErrorItem,
    Flow,
    FlowStats,
    Retry,
    StopProcessing,
)

pytestmark = pytest.mark.anyio


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
