"""Scaling scenarios run in virtual time: the workloads users bring, autoscaled and fixed.

Each scenario is an async function returning a :class:`Outcome`; run it with
``flowrhythm.testing.run_virtual`` on either backend. Call durations are
``anyio.sleep``s, so every time here is exact virtual time.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from flowrhythm import Capacity, Flow, Retry, ScalingEvent, UtilizationCapacity

#: The defaults a user starts from: the issue's reference configuration.
AUTO = UtilizationCapacity(min_workers=1, max_workers=32, queue_length=128)


def fixed(workers: int) -> Capacity:
    return Capacity(min_workers=workers, max_workers=workers, queue_length=128)


@dataclass
class Outcome:
    """What one run did: when each call ended, and the scaling events of the watched job."""

    elapsed: float
    ends: list[float]
    events: list[ScalingEvent] = field(default_factory=list)
    initial: int = 1

    @property
    def throughput(self) -> float:
        return len(self.ends) / self.elapsed

    def workers_at(self, time: float) -> int:
        workers = self.initial
        for event in self.events:
            if event.time > time:
                break
            workers = event.new
        return workers

    @property
    def peak(self) -> int:
        return max([self.initial, *(e.new for e in self.events)])

    @property
    def final(self) -> int:
        return self.workers_at(math.inf)

    def firings(self) -> list[ScalingEvent]:
        """Caps the guard applied: a confirmed hidden limit, or a step up that did not pay."""
        return [e for e in self.events if e.reason.startswith("limit")]

    def time_to(self, rate: float, window: float) -> float:
        """The first time the calls that ended over the last ``window`` came at ``rate``."""
        ends = sorted(self.ends)
        need = rate * window - 1e-9
        for i, t in enumerate(ends):
            if i + 1 - bisect.bisect_right(ends, t - window) >= need:
                return t
        return math.inf


def constant(seconds: float) -> Callable[[random.Random], float]:
    return lambda rng: seconds


def lognormal(mean: float, sigma: float = 1.0) -> Callable[[random.Random], float]:
    """Log-normal call durations with the given mean."""
    mu = math.log(mean) - sigma * sigma / 2
    return lambda rng: rng.lognormvariate(mu, sigma)


async def saturating(
    duration: Callable[[random.Random], float],
    capacity: Capacity,
    items: int,
    *,
    seed: int = 0,
    limit: int | None = None,
    limit_after: int = 0,
) -> Outcome:
    """A source that always has more: ``items`` calls, maybe behind a hidden semaphore
    (which the first ``limit_after`` calls pass by: a service that congests later)."""
    rng = random.Random(seed)
    durations = [duration(rng) for _ in range(items)]
    semaphore = anyio.Semaphore(limit) if limit is not None else None
    ends: list[float] = []

    async def call(i: int) -> None:
        if semaphore is not None and i >= limit_after:
            async with semaphore:
                await anyio.sleep(durations[i])
        else:
            await anyio.sleep(durations[i])
        ends.append(anyio.current_time())

    events: list[ScalingEvent] = []
    start = anyio.current_time()
    flow = Flow().add(call, name="call", capacity=capacity)
    await flow.run(range(items), on_scale=lambda e: events.append(e) if e.job == "call" else None)
    return Outcome(
        anyio.current_time() - start,
        [t - start for t in ends],
        [_shift(e, start) for e in events],
        capacity.initial_workers,
    )


async def downstream_bottleneck(capacity: Capacity, items: int) -> Outcome:
    """100 ms calls feeding a job fixed at 4 workers of 100 ms."""
    ends: list[float] = []

    async def call(i: int) -> int:
        await anyio.sleep(0.1)
        return i

    async def slow(i: int) -> None:
        await anyio.sleep(0.1)
        ends.append(anyio.current_time())

    events: list[ScalingEvent] = []
    start = anyio.current_time()
    flow = (
        Flow().add(call, name="call", capacity=capacity).add(slow, name="slow", capacity=fixed(4))
    )
    await flow.run(range(items), on_scale=lambda e: events.append(e) if e.job == "call" else None)
    return _outcome(start, ends, events, capacity)


async def step_load(capacity: Capacity, phases: list[tuple[float, float]]) -> Outcome:
    """500 ms calls arriving at ``rate`` per second for ``seconds``, phase after phase."""
    ends: list[float] = []
    latencies: list[float] = []

    async def call(sent: float) -> None:
        await anyio.sleep(0.5)
        now = anyio.current_time()
        ends.append(now)
        latencies.append(now - sent)

    events: list[ScalingEvent] = []
    start = anyio.current_time()
    flow = Flow().add(call, name="call", capacity=capacity)
    async with flow.start(on_scale=events.append) as running:
        for rate, seconds in phases:
            for _ in range(round(rate * seconds)):
                await running.send(anyio.current_time())
                await anyio.sleep(1 / rate)
    outcome = _outcome(start, ends, events, capacity)
    outcome.latencies = latencies  # type: ignore[attr-defined]
    return outcome


async def chain(capacities: list[Capacity], items: int) -> Outcome:
    """Three jobs of 5 ms, 200 ms and 50 ms; the events of the 200 ms job."""
    ends: list[float] = []

    def stage(seconds: float, last: bool = False) -> Callable[[int], Any]:
        async def call(i: int) -> int:
            await anyio.sleep(seconds)
            if last:
                ends.append(anyio.current_time())
            return i

        return call

    events: list[ScalingEvent] = []
    start = anyio.current_time()
    flow = (
        Flow()
        .add(stage(0.005), name="fast", capacity=capacities[0])
        .add(stage(0.2), name="slow", capacity=capacities[1])
        .add(stage(0.05, last=True), name="mid", capacity=capacities[2])
    )
    await flow.run(range(items), on_scale=lambda e: events.append(e) if e.job == "slow" else None)
    return _outcome(start, ends, events, capacities[1])


async def backing_off(capacity: Capacity, items: int) -> Outcome:
    """Every call fails at once and is retried after a back-off; the errors are kept."""
    ends: list[float] = []

    async def call(i: int) -> None:
        await anyio.sleep(0.01)
        raise ConnectionError("busy: try later")

    async def errors(error: Any) -> None:
        ends.append(anyio.current_time())

    events: list[ScalingEvent] = []
    start = anyio.current_time()
    flow = (
        Flow()
        .add(call, name="call", capacity=capacity, retry=Retry(attempts=4, backoff=0.5))
        .add_error_job(errors)
    )
    await flow.run(range(items), on_scale=lambda e: events.append(e) if e.job == "call" else None)
    return _outcome(start, ends, events, capacity)


def _outcome(
    start: float, ends: list[float], events: list[ScalingEvent], capacity: Capacity
) -> Outcome:
    """Times from the start of the run (a real clock starts anywhere)."""
    return Outcome(
        anyio.current_time() - start,
        [t - start for t in ends],
        [_shift(e, start) for e in events],
        capacity.initial_workers,
    )


def _shift(event: ScalingEvent, start: float) -> ScalingEvent:
    return ScalingEvent(
        job=event.job, time=event.time - start, old=event.old, new=event.new, reason=event.reason
    )
