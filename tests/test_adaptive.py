"""Adaptive concurrency against fake remote services, in virtual time, and its contract.

The fake services are what a job with ``concurrency=`` meets in the wild: one with a
capacity (it answers ``Overloaded`` at once above that many calls in flight), one that
changes its capacity, a token bucket answering with ``Retry-After``, one that refuses
everything with a 90 s ``Retry-After``. The scenarios run in virtual time, so a run of
hundreds of seconds takes a moment and the same run gives the same timeline; the
assertions are about the limit, the calls in flight and the throughput, in units of the
service's latency ``L``.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import anyio
import anyio.lowlevel
import hypothesis
import pytest
from _support import HANG_GUARD, running_tasks, wait_until
from hypothesis import strategies as st

from flowrhythm import (
    Adaptive,
    Capacity,
    ErrorItem,
    Flow,
    LimitChange,
    Overloaded,
    Retry,
    UtilizationCapacity,
)
from flowrhythm.testing import run_virtual

T = TypeVar("T")

Backend = Literal["asyncio", "trio"]

#: The backends the virtual-time scenarios run on.
VIRTUAL_BACKENDS: list[Backend] = ["asyncio", "trio"]

#: Retry overloaded calls for as long as a scenario lasts.
PATIENT = Retry(attempts=10_000, backoff=0.05, max_backoff=1.0)


def virtual(fn: Callable[[], Awaitable[T]], backend: Backend) -> T:
    """Run ``fn()`` in virtual time: sleeps take no real time, the clock jumps."""
    return run_virtual(fn, backend=backend)


def fixed(workers: int) -> Capacity:
    return Capacity(min_workers=workers, max_workers=workers, queue_length=10)


# -- fake services -----------------------------------------------------------------


@dataclass
class Service:
    """A remote service that serves ``capacity`` calls at once, each taking about ``latency`` s.

    Above its capacity it answers at once with :class:`Overloaded`. Latencies vary by
    ±``jitter`` (seeded: the same run gives the same timeline).
    """

    capacity: int
    latency: float = 1.0
    jitter: float = 0.2
    retry_after: float | None = None
    adaptive: Adaptive | None = None
    rng: random.Random = field(default_factory=lambda: random.Random(1))
    in_flight: int = 0
    peak: int = 0
    calls: int = 0
    overloads: int = 0
    served: int = 0
    over_limit: int = 0  # calls started while more calls than the limit were out

    async def __call__(self, item: Any) -> Any:
        self.calls += 1
        if self.adaptive is not None and self.adaptive.in_flight > self.adaptive.limit:
            self.over_limit += 1
        if self.in_flight >= self.capacity:
            self.overloads += 1
            raise Overloaded(retry_after=self.retry_after)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await anyio.sleep(self.latency * self.rng.uniform(1 - self.jitter, 1 + self.jitter))
        finally:
            self.in_flight -= 1
        self.served += 1
        return item


@dataclass
class Sample:
    time: float
    limit: int
    served: int
    in_flight: int


@asynccontextmanager
async def sampled(
    service: Any, api: Adaptive, every: float, steps: dict[float, int] | None = None
) -> AsyncIterator[list[Sample]]:
    """Sample the limit and the service every ``every`` seconds; apply capacity ``steps``."""
    samples: list[Sample] = []

    async def sample() -> None:
        start = anyio.current_time()
        while True:
            now = anyio.current_time() - start
            for at, capacity in (steps or {}).items():
                if math.isclose(now, at):
                    service.capacity = capacity
            samples.append(Sample(now, api.limit, service.served, service.in_flight))
            await anyio.sleep(every)

    async with anyio.create_task_group() as tg:
        tg.start_soon(sample)
        yield samples
        tg.cancel_scope.cancel()


def between(samples: list[Sample], start: float, end: float) -> list[Sample]:
    return [s for s in samples if start <= s.time <= end]


def served_per_second(samples: list[Sample], start: float, end: float) -> float:
    window = between(samples, start, end)
    first, last = window[0], window[-1]
    return (last.served - first.served) / (last.time - first.time)


# -- finding the capacity ------------------------------------------------------------


@pytest.mark.parametrize("backend", VIRTUAL_BACKENDS)
def test_the_limit_finds_the_capacity(backend: Backend) -> None:
    capacity, latency = 32, 1.0

    async def main() -> None:
        service = Service(capacity, latency)
        api = Adaptive(min=1, initial=4, max=256)
        service.adaptive = api
        flow = Flow().add(service, capacity=fixed(128), concurrency=api, retry=PATIENT)
        async with sampled(service, api, latency / 4) as samples:
            stats = await flow.run(range(capacity * 60))

        settled = between(samples, 20 * latency, 50 * latency)
        limits = [s.limit for s in settled]
        assert 0.7 * capacity <= min(limits), limits
        assert max(limits) <= 1.3 * capacity, limits
        rate = served_per_second(samples, 20 * latency, 50 * latency)
        assert rate >= 0.9 * capacity / latency, rate
        assert service.overloads <= 0.05 * service.calls, (service.overloads, service.calls)
        assert service.over_limit == 0
        job = stats.jobs["Service"]
        assert job.completed == capacity * 60 == service.served
        assert job.overloaded == service.overloads
        assert job.concurrency_limit == api.limit
        assert api.in_flight == 0

    virtual(main, backend)


@pytest.mark.parametrize("backend", VIRTUAL_BACKENDS)
def test_the_limit_follows_a_capacity_that_changes(backend: Backend) -> None:
    latency = 1.0
    steps = {40.0: 8, 80.0: 64}

    async def main() -> None:
        service = Service(32, latency)
        api = Adaptive(min=1, initial=4, max=256)
        flow = Flow().add(service, capacity=fixed(128), concurrency=api, retry=PATIENT)
        async with sampled(service, api, latency / 4, steps) as samples:
            await flow.run(range(32 * 40 + 8 * 40 + 64 * 40))

        for start, end, capacity in [(20, 40, 32), (40 + 30, 80, 8), (80 + 30, 120, 64)]:
            window = between(samples, start * latency, end * latency - 0.01)
            limits = [s.limit for s in window]
            assert 0.7 * capacity <= min(limits), (capacity, limits)
            assert max(limits) <= 1.3 * capacity, (capacity, limits)
        assert service.overloads <= 0.05 * service.calls, (service.overloads, service.calls)

    virtual(main, backend)


@dataclass
class TokenBucket:
    """A service allowing ``rate`` calls per second (bursts of ``burst``), with Retry-After."""

    rate: float
    burst: float
    latency: float
    tokens: float = 0.0
    updated: float = 0.0
    calls: int = 0
    overloads: int = 0
    served: int = 0
    in_flight: int = 0
    capacity: int = 0  # unused: a bucket has no capacity in calls
    rng: random.Random = field(default_factory=lambda: random.Random(1))

    async def __call__(self, item: Any) -> Any:
        now = anyio.current_time()
        self.tokens = min(self.tokens + (now - self.updated) * self.rate, self.burst)
        self.updated = now
        self.calls += 1
        if self.tokens < 1:
            self.overloads += 1
            raise Overloaded(retry_after=(1 - self.tokens) / self.rate)
        self.tokens -= 1
        self.in_flight += 1
        try:
            await anyio.sleep(self.latency * self.rng.uniform(0.8, 1.2))
        finally:
            self.in_flight -= 1
        self.served += 1
        return item


@pytest.mark.parametrize("backend", VIRTUAL_BACKENDS)
def test_a_token_bucket_is_kept_busy(backend: Backend) -> None:
    rate, latency = 50.0, 0.5

    async def main() -> None:
        service = TokenBucket(rate=rate, burst=10, latency=latency, tokens=10)
        service.updated = anyio.current_time()
        api = Adaptive(min=1, initial=4, max=256)
        flow = Flow().add(service, capacity=fixed(128), concurrency=api, retry=PATIENT)
        async with sampled(service, api, 0.25) as samples:
            await flow.run(range(int(rate * 60)))
        assert served_per_second(samples, 10, 50) >= 0.9 * rate
        assert service.overloads <= 0.1 * service.calls, (service.overloads, service.calls)

    virtual(main, backend)


@pytest.mark.parametrize("backend", VIRTUAL_BACKENDS)
def test_a_long_retry_after_never_freezes_the_limit(backend: Backend) -> None:
    # Every call is answered after 2 s with "429, Retry-After: 90" until t=300 s:
    # a 429 every 2 s or so, each with a hint far longer than the gap between them.
    until = 300.0
    attempts: defaultdict[int, list[float]] = defaultdict(list)

    async def main() -> None:
        start = anyio.current_time()

        async def refusing(item: int) -> int:
            attempts[item].append(anyio.current_time() - start)
            await anyio.sleep(2.0)
            if anyio.current_time() - start < until:
                raise Overloaded(retry_after=90)
            return item

        api = Adaptive(min=1, initial=16, max=64)
        flow = Flow().add(
            refusing, capacity=fixed(64), name="refusing", concurrency=api, retry=PATIENT
        )
        limits: list[tuple[float, int]] = []

        async def watch() -> None:
            while True:
                limits.append((anyio.current_time() - start, api.limit))
                await anyio.sleep(1.0)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            stats = await flow.run(range(64))
            tg.cancel_scope.cancel()

        cuts = [c for c in api.changes if c.reason == "overloaded"]
        assert len(cuts) >= 6  # 16 -> 12 -> 9 -> ... -> 1
        assert all(c.new < c.old for c in cuts)
        assert dict(limits)[40.0] == 1  # walked down to min within 40 s, not frozen
        # Each item's next attempt waited the 90 s the service asked for.
        for times in attempts.values():
            assert all(b - a >= 90 + 2 for a, b in itertools.pairwise(times))
        # Once the service answers again, the limit grows again.
        assert api.limit > 1
        assert stats.jobs["refusing"].completed == 64

    virtual(main, backend)


@pytest.mark.parametrize("backend", VIRTUAL_BACKENDS)
def test_a_limit_the_job_does_not_use_does_not_grow(backend: Backend) -> None:
    latency = 1.0

    async def main() -> None:
        service = Service(1000, latency)
        api = Adaptive(min=1, initial=4, max=256)

        async def slow_source() -> AsyncIterator[int]:
            for item in range(400):
                yield item
                await anyio.sleep(latency / 4)  # about 4 calls in flight

        flow = Flow().add(service, capacity=fixed(64), concurrency=api)
        async with sampled(service, api, latency / 4) as samples:
            await flow.run(slow_source())
        assert max(s.limit for s in samples) <= 2 * service.peak
        assert service.peak <= 8

    virtual(main, backend)


@pytest.mark.parametrize("backend", VIRTUAL_BACKENDS)
def test_one_adaptive_is_one_limit_for_several_jobs_and_flows(backend: Backend) -> None:
    async def main() -> None:
        api = Adaptive(min=1, initial=6, max=6)
        service = Service(1000, 1.0, adaptive=api)

        async def first(item: int) -> int:
            return int(await service(item))

        async def second(item: int) -> int:
            return int(await service(item))

        one = Flow().add(first, capacity=fixed(8), concurrency=api)
        one.add(second, capacity=fixed(8), concurrency=api)
        other = Flow().add(second, capacity=fixed(8), concurrency=api)
        async with anyio.create_task_group() as tg:
            tg.start_soon(one.run, range(100))
            tg.start_soon(other.run, range(100))
        assert service.over_limit == 0
        assert service.peak == 6  # the limit is reached, never passed
        assert service.served == 300
        assert api.in_flight == 0

    virtual(main, backend)


# -- retry, Retry-After and routing ----------------------------------------------------


@pytest.mark.parametrize("backend", VIRTUAL_BACKENDS)
def test_retry_after_delays_the_next_attempt_holding_no_slot(backend: Backend) -> None:
    async def main() -> None:
        api = Adaptive(min=1, initial=1, max=1)
        times: list[float] = []
        held_while_waiting: list[int] = []

        async def pushy(item: int) -> int:
            times.append(anyio.current_time())
            if len(times) == 1:
                raise Overloaded(retry_after=5)
            return item

        async def watch() -> None:
            await anyio.sleep(2.5)
            held_while_waiting.append(api.in_flight)

        retry = Retry(backoff=0.01, jitter=False)
        flow = Flow().add(pushy, name="pushy", concurrency=api, retry=retry)
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            stats = await flow.run([1])
        assert times[1] - times[0] == pytest.approx(5.0)
        assert held_while_waiting == [0]
        job = stats.jobs["pushy"]
        assert (job.completed, job.retried, job.overloaded) == (1, 1, 1)

    virtual(main, backend)


@pytest.mark.parametrize("backend", VIRTUAL_BACKENDS)
def test_a_timeout_cuts_the_limit(backend: Backend) -> None:
    async def main() -> None:
        api = Adaptive(min=1, initial=10, max=10)
        slow = True

        async def call(item: int) -> int:
            await anyio.sleep(10 if slow else 1)
            return item

        flow = Flow().add(call, capacity=fixed(10), concurrency=api, timeout=5, retry=PATIENT)
        async with flow.start() as running:
            for item in range(10):
                await running.send(item)
            await anyio.sleep(6)
            slow = False
        assert [c.reason for c in api.changes][:1] == ["timeout"]
        assert api.changes[0].old == 10

    virtual(main, backend)


pytestmark_anyio = pytest.mark.anyio


@pytestmark_anyio
async def test_without_retry_overloaded_is_routed_like_any_exception() -> None:
    api = Adaptive()
    errors: list[ErrorItem] = []

    async def pushy(item: int) -> int:
        raise Overloaded(retry_after=3)

    async def plain(item: int) -> int:
        return item

    async def report(error: ErrorItem) -> None:
        errors.append(error)

    flow = Flow().add(plain, name="plain").add(pushy, name="pushy", concurrency=api)
    flow.add_error_job(report)
    with anyio.fail_after(HANG_GUARD):
        stats = await flow.run([1, 2])
    assert [(e.item, type(e.exception), e.attempts) for e in errors] == [
        (1, Overloaded, 1),
        (2, Overloaded, 1),
    ]
    assert isinstance(errors[0].exception, Overloaded)
    assert errors[0].exception.retry_after == 3
    pushy_stats = stats.jobs["pushy"]
    assert (pushy_stats.errored, pushy_stats.overloaded) == (2, 2)
    assert pushy_stats.concurrency_limit == api.limit
    plain_stats = stats.jobs["plain"]
    assert (plain_stats.concurrency_limit, plain_stats.overloaded) == (None, 0)


@pytestmark_anyio
async def test_waiting_for_a_slot_is_blocked_not_active() -> None:
    api = Adaptive(min=1, initial=1, max=1)
    release = anyio.Event()
    started = 0

    async def call(item: int) -> int:
        nonlocal started
        started += 1
        await release.wait()
        return item

    flow = Flow().add(call, capacity=fixed(3), name="call", concurrency=api)
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            for item in range(3):
                await running.send(item)
            await wait_until(lambda: running.stats().jobs["call"].blocked == 2)
            job = running.stats().jobs["call"]
            assert (job.active, job.blocked, started, api.in_flight) == (1, 2, 1, 1)
            release.set()
            await running.close()
            stats = await running.join()
    assert stats.jobs["call"].completed == 3
    assert api.in_flight == 0


@pytestmark_anyio
async def test_a_generator_holds_its_slot_until_it_ends() -> None:
    api = Adaptive(min=1, initial=1, max=1)
    out: list[int] = []
    tries: Counter[int] = Counter()
    in_flight = peak = 0

    async def expand(item: int) -> AsyncIterator[int]:
        nonlocal in_flight, peak
        tries[item] += 1
        if tries[item] == 1:
            raise Overloaded(retry_after=0)
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            yield item
            await anyio.lowlevel.checkpoint()
            yield -item
        finally:
            in_flight -= 1

    async def sink(item: int) -> None:
        out.append(item)

    flow = (
        Flow()
        .add(expand, capacity=fixed(3), name="expand", concurrency=api, retry=Retry(backoff=0))
        .add(sink)
    )
    with anyio.fail_after(HANG_GUARD):
        stats = await flow.run([1, 2, 3])
    assert sorted(out) == [-3, -2, -1, 1, 2, 3]
    assert peak == 1
    assert stats.jobs["expand"].overloaded == 3
    assert api.in_flight == 0


# -- the worker scaler -----------------------------------------------------------------


@pytest.mark.parametrize("backend", VIRTUAL_BACKENDS)
def test_workers_follow_the_limit(backend: Backend) -> None:
    async def main() -> None:
        api = Adaptive(min=1, initial=4, max=4)
        capacity = UtilizationCapacity(
            min_workers=1, initial_workers=32, max_workers=64, sampling=0.1, cooldown=0.0
        )
        service = Service(1000, 1.0)
        flow = Flow().add(service, capacity=capacity, name="call", concurrency=api)
        workers: list[int] = []
        async with flow.start() as running:

            async def feed() -> None:
                for item in range(400):
                    await running.send(item)
                await running.close()

            async with anyio.create_task_group() as tg:
                tg.start_soon(feed)
                for _ in range(50):
                    await anyio.sleep(1.0)
                    workers.append(running.stats().jobs["call"].workers)
        # 4 slots plus a little headroom: the 26 others could only wait
        assert max(workers[10:]) <= 4 + 2
        assert service.peak == 4

    virtual(main, backend)


# -- many runs, many loops, observation ------------------------------------------------


def test_one_adaptive_serves_runs_in_different_event_loops_one_after_another() -> None:
    api = Adaptive(min=1, initial=2, max=64)

    async def main() -> None:
        async def call(item: int) -> int:
            await anyio.lowlevel.checkpoint()
            return item

        await Flow().add(call, capacity=fixed(16), concurrency=api).run(range(200))

    anyio.run(main, backend="asyncio")
    grown = api.limit
    assert grown > 2
    anyio.run(main, backend="trio")
    assert api.limit >= grown
    assert api.in_flight == 0


@pytest.mark.parametrize("backend", VIRTUAL_BACKENDS)
def test_limit_changes_are_recorded_and_logged(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        api = Adaptive(min=1, initial=2, max=64, name="api")
        service = Service(8, 1.0)
        await (
            Flow().add(service, capacity=fixed(16), concurrency=api, retry=PATIENT).run(range(200))
        )
        changes = api.changes
        assert all(isinstance(c, LimitChange) for c in changes)
        assert {"slow start", "overloaded"} <= {c.reason for c in changes}
        assert changes[0] == LimitChange(time=changes[0].time, old=2, new=3, reason="slow start")
        assert [c.time for c in changes] == sorted(c.time for c in changes)

    with caplog.at_level(logging.DEBUG, logger="flowrhythm"):
        virtual(main, backend)
    messages = [r.getMessage() for r in caplog.records if "concurrency limit" in r.getMessage()]
    assert "concurrency limit api: 2 -> 3 (slow start)" in messages


# -- hypothesis: in flight, delivery, cancellation -------------------------------------


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(
    capacity=st.integers(1, 12),
    initial=st.integers(1, 8),
    workers=st.integers(1, 12),
    items=st.integers(0, 60),
    failing=st.frozensets(st.integers(0, 59), max_size=5),
    cancel_at=st.none() | st.floats(0.0, 20.0),
    seed=st.integers(0, 1000),
    backend=st.sampled_from(VIRTUAL_BACKENDS),
)
def test_in_flight_never_passes_the_limit_and_nothing_is_lost(
    capacity: int,
    initial: int,
    workers: int,
    items: int,
    failing: frozenset[int],
    cancel_at: float | None,
    seed: int,
    backend: Backend,
) -> None:
    api = Adaptive(min=1, initial=min(initial, 8), max=8)
    service = Service(capacity, 1.0, jitter=0.9, rng=random.Random(seed), adaptive=api)
    outputs: Counter[int] = Counter()
    errors: Counter[int] = Counter()

    async def call(item: int) -> int:
        if item in failing:
            raise ValueError(item)
        return int(await service(item))

    async def sink(item: int) -> None:
        outputs[item] += 1

    async def report(error: ErrorItem) -> None:
        errors[error.item] += 1

    flow = (
        Flow()
        .add(call, capacity=fixed(workers), concurrency=api, retry=Retry(attempts=5, backoff=0.1))
        .add(sink)
        .add_error_job(report)
    )

    async def main() -> None:
        before = running_tasks()
        with anyio.move_on_after(math.inf if cancel_at is None else cancel_at):
            await flow.run(range(items))
        assert running_tasks() == before

    virtual(main, backend)
    assert service.over_limit == 0
    assert api.in_flight == 0
    assert not api._waiters
    assert all(n == 1 for n in (outputs + errors).values())
    assert not set(outputs) & set(errors)
    if cancel_at is None:
        assert set(outputs) | set(errors) == set(range(items))


# -- validation, and Retry-After -------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"min": 0}, ValueError, "min"),
        ({"min": -1}, ValueError, "min"),
        ({"min": 5, "max": 4}, ValueError, "min"),
        ({"max": 0}, ValueError, "max"),
        ({"min": 2, "initial": 1, "max": 4}, ValueError, "initial"),
        ({"min": 1, "initial": 9, "max": 4}, ValueError, "initial"),
        ({"min": 1.5}, TypeError, "min"),
        ({"max": 10.0}, TypeError, "max"),
        ({"initial": "4"}, TypeError, "initial"),
        ({"min": True}, TypeError, "min"),
        ({"name": 3}, TypeError, "name"),
    ],
)
def test_invalid_adaptive_names_the_field(
    kwargs: dict[str, Any], error: type[Exception], field: str
) -> None:
    with pytest.raises(error, match=rf"^{field}\b"):
        Adaptive(**kwargs)


def test_adaptive_defaults_and_positional_bounds() -> None:
    assert Adaptive().limit == 4
    assert (Adaptive(2, 3, 5).min, Adaptive(2, 3, 5).limit, Adaptive(2, 3, 5).max) == (2, 3, 5)
    assert Adaptive(max=2).limit == 2
    assert Adaptive(min=10, max=20).limit == 10
    assert "limit=4" in repr(Adaptive())


@pytest.mark.parametrize("method", ["add", "add_job", "add_job_with_lock", "add_error_job"])
@pytest.mark.parametrize("value", [4, "adaptive", anyio.CapacityLimiter(4)])
def test_concurrency_must_be_an_adaptive(method: str, value: object) -> None:
    async def job(item: int) -> int:
        return item

    args: tuple[Any, ...] = (job, anyio.Lock()) if method == "add_job_with_lock" else (job,)
    with pytest.raises(TypeError, match=r"^concurrency must be an Adaptive"):
        getattr(Flow(), method)(*args, concurrency=value)


@pytest.mark.parametrize("method", ["add", "add_job", "add_job_with_lock", "add_error_job"])
def test_every_add_takes_concurrency(method: str) -> None:
    async def job(item: int) -> int:
        return item

    args: tuple[Any, ...] = (job, anyio.Lock()) if method == "add_job_with_lock" else (job,)
    getattr(Flow(), method)(*args, concurrency=Adaptive())


@pytest.mark.parametrize(
    ("value", "error"), [(-1, ValueError), (math.nan, ValueError), ("3", TypeError)]
)
def test_invalid_retry_after(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=r"^retry_after"):
        Overloaded(retry_after=value)  # type: ignore[arg-type]


def test_overloaded_message() -> None:
    assert str(Overloaded()) == "the service is overloaded"
    assert str(Overloaded(retry_after=2)) == "the service is overloaded; retry after 2s"
    assert str(Overloaded(message="429 Too Many Requests")) == "429 Too Many Requests"
    assert Overloaded(retry_after=2).retry_after == 2.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "120"}, 120.0),
        ({"retry-after": " 3 "}, 3.0),
        ({"RETRY-AFTER": "1.5"}, 1.5),
        ({"Retry-After": b"7"}, 7.0),
        ({"Retry-After": "0"}, 0.0),
        ({}, None),
        ({"Retry-After": "-5"}, None),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "inf"}, None),
        ({"Retry-After": 5}, None),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # a date long past
    ],
)
def test_retry_after_from_headers(headers: dict[str, Any], expected: float | None) -> None:
    assert Overloaded.from_headers(headers).retry_after == expected


def test_retry_after_as_an_http_date() -> None:
    from flowrhythm._errors import retry_after_seconds

    now = 1445412400.0  # 2015-10-21 07:26:40 GMT
    headers = {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}
    assert retry_after_seconds(headers, now=now) == 80.0


class Headers(Mapping[str, str]):
    """Headers as HTTP clients hold them: ``get`` ignores case, iteration keeps it."""

    def __init__(self, items: dict[str, str]) -> None:
        self.items_ = items

    def __getitem__(self, key: str) -> str:
        for name, value in self.items_.items():
            if name.lower() == key.lower():
                return value
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.items_)

    def __len__(self) -> int:
        return len(self.items_)


def test_retry_after_from_a_client_s_headers() -> None:
    headers = Headers({"retry-after": "9"})
    assert Overloaded.from_headers(headers, "429").retry_after == 9.0
    assert str(Overloaded.from_headers(headers, "429")) == "429"
