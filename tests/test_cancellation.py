"""Cancelling a whole run at random instants, and at the instants that matter most.

For each of :data:`INSTANTS` seeded instants per backend, a flow with scaling churn
(every job's worker count flips between its extremes every millisecond), a job that
scales to zero (its doorman), failing and skipped items, and a slow error job is run
in ``run``, ``stream`` or ``start`` mode, and the *caller's* cancel scope is cancelled
after a seeded number of scheduling rounds (or, for some, after a seeded short delay).
After every instant:

* cancellation propagated: the code after the run did not execute, unless the run had
  completed, and then completely;
* no task of the run is left (asyncio: ``asyncio.all_tasks()``; trio: every task
  reachable from the root task);
* no memory stream is left unclosed (a ``ResourceWarning`` after ``gc.collect()``);
* every ``ProcessorFactory`` context that was entered was exited;
* the counters add up: for every job ``in_flight >= 0`` and it is at most the job's
  workers; along the flow, what a job handed on is exactly what the next one took or
  still queues (no item vanishes uncounted); the items abandoned are bounded by the
  queue lengths plus workers plus one per job.

The number of scheduling rounds a run takes was measured (about one per item here), so
``k`` is drawn over that range: most instants fall inside the run, some after it.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import random
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Literal

import anyio
import pytest
from _support import HANG_GUARD
from anyio.lowlevel import checkpoint
from test_reliability import (
    Dial,
    Factory,
    Flapping,
    Gate,
    Sink,
    assert_balanced,
    assert_no_unclosed_streams,
    live_tasks,
    poll_until,
)

from flowrhythm import (
    Batch,
    Capacity,
    ErrorItem,
    Flow,
    FlowStats,
    ProcessorFactory,
    RunningFlow,
    ScalingEvent,
    ScalingSample,
    StopProcessing,
    UtilizationCapacity,
)
from flowrhythm.testing import run_virtual

pytestmark = pytest.mark.anyio

#: Random instants per backend (the run modes and sizes are drawn per instant).
INSTANTS = 200
#: Most items per run; a run takes about one scheduling round per item.
MAX_ITEMS = 300


@pytest.fixture(autouse=True)
def _no_unclosed_streams() -> Iterator[None]:
    yield
    assert_no_unclosed_streams()


@pytest.fixture
def frozen_heap() -> Iterator[None]:
    """Move every object alive now out of the collector's sight, so that the
    ``gc.collect()`` after each instant only looks at what that instant made."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class Boom(Exception):
    pass


# -- the flow under test -----------------------------------------------------------------------

CHURN: dict[str, Any] = {"sampling": 0.001, "strategy": Flapping}
CAPACITIES: dict[str, Capacity] = {
    "a": UtilizationCapacity(min_workers=1, max_workers=6, queue_length=2, **CHURN),
    "b": UtilizationCapacity(min_workers=0, max_workers=3, queue_length=0, **CHURN),
    "c": Capacity(min_workers=2, max_workers=2, queue_length=1),
    "sink": UtilizationCapacity(min_workers=1, max_workers=2, queue_length=1, **CHURN),
    "errors": Capacity(min_workers=1, max_workers=1, queue_length=1),
}


class Instant:
    """One flow to cancel, with everything needed to check it afterwards."""

    def __init__(self, rng: random.Random) -> None:
        pauses = [rng.randrange(0, 4) for _ in range(32)]

        async def work(item: int) -> int:
            for _ in range(pauses[item % 32]):
                await checkpoint()
            return item

        async def judge(item: int) -> int:
            await checkpoint()
            if item % 7 == 3:
                raise Boom(item)
            if item % 11 == 5:
                raise StopProcessing
            return item

        async def report(error: ErrorItem) -> None:
            for _ in range(3):  # slow: the instants often fall while it runs
                await checkpoint()
            self.reported.append(error.item)

        self.factories = [Factory(work), Factory(work)]
        self.sink = Sink()
        self.reported: list[Any] = []
        flow = Flow()
        flow.add(self.factories[0].factory, CAPACITIES["a"], name="a")
        flow.add(self.factories[1].factory, CAPACITIES["b"], name="b")
        flow.add(judge, CAPACITIES["c"], name="c")
        flow.add(self.sink, CAPACITIES["sink"], name="sink")
        flow.add_error_job(report, CAPACITIES["errors"], name="errors")
        self.flow = flow

    def check_factories(self) -> None:
        for factory in self.factories:
            assert factory.enters == factory.exits


LINKS = [("a", "b", "completed"), ("b", "c", "completed"), ("c", "sink", "completed")]
ERROR_LINKS = [("c", "errors", "errored")]


def handed_over_twice(stats: FlowStats, up: str, down: str, counter: str) -> int:
    """Items ``down`` took (or queues) beyond what ``up`` counts as handed on.

    Exactly 0 in a run that ended normally. In a cancelled run, anyio's memory streams
    can hand an item to a receiver while the sender's ``send()`` raises the
    cancellation (anyio#728/#729, see :func:`test_an_item_caught_mid_hand_over_...`), so
    the sender still counts it in flight: at most one such item per worker of ``up``.
    """
    jobs = stats.jobs
    taken = jobs[down].received + jobs[down].queue_depth
    return int(taken - getattr(jobs[up], counter))


def check_counters(stats: FlowStats) -> int:
    """Counters of a cancelled (or finished) run of :class:`Instant` add up.

    Returns how many items were counted by two jobs (see :func:`handed_over_twice`).
    """
    jobs = stats.jobs
    for name, job in jobs.items():
        assert job.received == job.completed + job.skipped + job.errored + job.in_flight
        assert 0 <= job.in_flight <= CAPACITIES[name].max_workers, (name, job)
    # what entered the flow is what the first job took or still queues; the feeder's
    # (or the caller's) send() of one more item may have been cancelled as the item
    # was taken (the same anyio hand-over race as handed_over_twice)
    assert 0 <= jobs["a"].received + jobs["a"].queue_depth - stats.items_in <= 1
    if stats.done:
        assert stats.items_in == jobs["a"].received
    twice = 0
    for up, down, counter in LINKS + ERROR_LINKS:
        extra = handed_over_twice(stats, up, down, counter)
        assert 0 <= extra <= jobs[up].in_flight, (up, down, extra)  # nothing vanished
        if stats.done:
            assert extra == 0
        twice += extra
    # the items taken but not finished: in the workers and in the queues
    held = sum(job.in_flight + job.queue_depth for job in jobs.values()) - twice
    assert held <= sum(c.queue_length + c.max_workers + 1 for c in CAPACITIES.values())
    return twice


def check_complete(stats: FlowStats, instant: Instant, n: int) -> None:
    """A run that was not cancelled (it ended first) ended every item exactly once."""
    assert stats.done
    assert_balanced(stats)
    expected = [i for i in range(n) if i % 7 != 3 and i % 11 != 5]
    instant.sink.assert_exactly_once(expected)
    assert sorted(instant.reported) == [i for i in range(n) if i % 7 == 3]
    check_counters(stats)


async def cancel_after(rounds: int, scope: anyio.CancelScope) -> None:
    for _ in range(rounds):
        await checkpoint()
    scope.cancel()


async def cancel_one(backend_rng: random.Random) -> tuple[bool, int, int]:
    """Run one instant.

    Returns whether the cancellation hit the running flow, the items sent, and the
    items counted in flight by two jobs.
    """
    rng = random.Random(backend_rng.getrandbits(64))
    instant = Instant(rng)
    mode = rng.choice(["run", "stream", "start", "start"])
    n = rng.randrange(0, MAX_ITEMS)
    rounds = rng.randrange(0, 2 * n + 20)  # a run takes about one round per item
    delay = rng.uniform(0, 0.02) if rng.random() < 0.1 else None
    before = live_tasks()
    finished = False  # the run ended by itself before the cancellation reached it
    returned: FlowStats | None = None
    handle: list[RunningFlow] = []

    async def body() -> None:
        nonlocal finished, returned
        if mode == "run":
            returned = await instant.flow.run(range(n))
        elif mode == "stream":
            async with instant.flow.stream(range(n)) as results:
                async for _ in results:
                    await checkpoint()
        else:
            async with instant.flow.start() as running:
                handle.append(running)
                for item in range(n):
                    await running.send(item)
                await running.close()
                returned = await running.join()
        finished = True
        await anyio.sleep_forever()  # wait here for the cancellation

    with anyio.fail_after(HANG_GUARD):
        with anyio.CancelScope() as outer:
            async with anyio.create_task_group() as group:
                if delay is None:
                    group.start_soon(cancel_after, rounds, outer)
                else:
                    outer.deadline = anyio.current_time() + delay
                await body()
        assert outer.cancelled_caught  # propagated to its scope, not swallowed on the way

    assert live_tasks() <= before
    instant.check_factories()
    twice = check_counters(handle[0].stats()) if handle else 0
    if finished:
        if returned is not None:
            check_complete(returned, instant, n)
        if handle:
            check_complete(handle[0].stats(), instant, n)
    assert_no_unclosed_streams()
    return not finished, n, twice


async def test_cancel_the_run_at_random_instants(
    anyio_backend: str, frozen_heap: None, record_property: Callable[[str, object], None]
) -> None:
    rng = random.Random(f"flowrhythm-cancel-{anyio_backend}")
    hits = items = doubles = 0
    for _ in range(INSTANTS):
        hit, n, twice = await cancel_one(rng)
        hits += hit
        items += n
        doubles += twice
    record_property("instants", INSTANTS)
    record_property("instants_that_hit_a_running_flow", hits)
    record_property("items_sent", items)
    record_property("items_counted_in_flight_by_two_jobs", doubles)
    # the instants must mostly fall inside a run, or this test proves little
    assert hits >= INSTANTS // 2, hits


# -- the same, through batched and ordered jobs ---------------------------------------------------

OPTION_INSTANTS = 100
BATCH_SIZE = 3
OPTION_CAPACITIES: dict[str, Capacity] = {
    "batch": UtilizationCapacity(min_workers=0, max_workers=3, queue_length=2, **CHURN),
    "split": Capacity(min_workers=1, max_workers=1, queue_length=1),
    "ordered": UtilizationCapacity(min_workers=1, max_workers=4, queue_length=1, **CHURN),
    "sink": Capacity(min_workers=1, max_workers=1, queue_length=1),
    "errors": Capacity(min_workers=1, max_workers=1, queue_length=1),
}
#: The most items a job may hold: the reorder window (2 x max_workers) counts batches of a
#: batched job.
OPTION_HELD = {"batch": 2 * 3 * BATCH_SIZE, "split": 1, "ordered": 2 * 4, "sink": 1, "errors": 1}


class OptionsInstant:
    """Ordered batches, split again, through an ordered autoscaled job, with failures."""

    def __init__(self, rng: random.Random) -> None:
        pauses = [rng.randrange(0, 4) for _ in range(32)]

        async def gathered(batch: list[int]) -> list[int]:
            for _ in range(pauses[batch[0] % 32]):
                await checkpoint()
            if any(item % 13 == 4 for item in batch):
                raise Boom(batch)
            return batch

        async def split(batch: list[int]) -> AsyncIterator[int]:
            for item in batch:
                yield item

        async def work(item: int) -> int:
            for _ in range(pauses[item % 32]):
                await checkpoint()
            return item

        async def report(error: ErrorItem) -> None:
            await checkpoint()
            self.failed_batches.append(error.item)

        self.sink = Sink()
        self.failed_batches: list[list[int]] = []
        c = OPTION_CAPACITIES
        flow = Flow()
        flow.add(
            gathered,
            c["batch"],
            name="batch",
            ordered=True,
            batch=Batch(size=BATCH_SIZE, timeout=0.001),
        )
        flow.add(split, c["split"], name="split")
        flow.add(work, c["ordered"], name="ordered", ordered=True)
        flow.add(self.sink, c["sink"], name="sink")
        flow.add_error_job(report, c["errors"], name="errors")
        self.flow = flow

    def check(self, stats: FlowStats, n: int) -> None:
        seen = self.sink.items
        assert seen == sorted(set(seen))  # in input order, none twice
        for batch in self.failed_batches:  # whole batches of consecutive items, each guilty
            assert 1 <= len(batch) <= BATCH_SIZE
            assert batch == list(range(batch[0], batch[0] + len(batch)))
            assert any(item % 13 == 4 for item in batch)
        failed = [item for batch in self.failed_batches for item in batch]
        assert not set(seen) & set(failed)
        for name, job in stats.jobs.items():
            assert job.received == job.completed + job.skipped + job.errored + job.in_flight
            assert 0 <= job.in_flight <= OPTION_HELD[name], (name, job)
        if stats.done:
            assert_balanced(stats)
            assert sorted(seen + failed) == list(range(n))


async def cancel_one_with_options(backend_rng: random.Random) -> bool:
    rng = random.Random(backend_rng.getrandbits(64))
    instant = OptionsInstant(rng)
    n = rng.randrange(0, MAX_ITEMS)
    rounds = rng.randrange(0, n + 20)  # sends go in without a round each
    before = live_tasks()
    finished = False
    handle: list[RunningFlow] = []

    async def body() -> None:
        nonlocal finished
        async with instant.flow.start() as running:
            handle.append(running)
            for item in range(n):
                await running.send(item)
            await running.close()
            await running.join()
        finished = True
        await anyio.sleep_forever()

    with anyio.fail_after(HANG_GUARD):
        with anyio.CancelScope() as outer:
            async with anyio.create_task_group() as group:
                group.start_soon(cancel_after, rounds, outer)
                await body()
        assert outer.cancelled_caught

    assert live_tasks() <= before
    instant.check(handle[0].stats(), n)
    assert_no_unclosed_streams()
    return not finished


async def test_cancel_batched_and_ordered_jobs_at_random_instants(
    anyio_backend: str, frozen_heap: None
) -> None:
    rng = random.Random(f"flowrhythm-cancel-options-{anyio_backend}")
    hits = sum([await cancel_one_with_options(rng) for _ in range(OPTION_INSTANTS)])
    assert hits >= OPTION_INSTANTS // 2, hits


# -- the instants that matter most -------------------------------------------------------------


def conserved(stats: FlowStats, chain: list[str]) -> None:
    """Along ``chain``, what a job handed on was taken, or is queued, by the next one."""
    jobs = stats.jobs
    for up, down in itertools.pairwise(chain):
        assert jobs[up].completed == jobs[down].received + jobs[down].queue_depth, (up, down)
    for job in jobs.values():
        assert job.in_flight >= 0


DEFECT_HAND_OVER = pytest.mark.xfail(
    strict=True,
    reason="flowrhythm/_run/_loop.py work() and _run/_job.py Job.forward(): a worker blocked in "
    "`await send.send(result)` when the run is cancelled may see the cancellation although "
    "the next job's receive_nowait() already took the item (anyio memory streams: "
    "agronholm/anyio#728, PR #729 unmerged): the item is then counted in flight in both "
    "jobs, so the counters over-count the abandoned items. The same race makes "
    "RunningFlow.send and the source feeder (_run/_run.py Run.feed) skip "
    "items_in += 1 for an item the first job did take. Fix upstream (receive_nowait "
    "skipping senders with a pending cancellation), or document the over-count",
)


@DEFECT_HAND_OVER
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_item_caught_mid_hand_over_is_counted_once() -> None:
    """Reproduced deterministically on asyncio; trio has the same race, but its scheduler
    runs the woken tasks in a random order, so there it shows up only sometimes (the
    random instants above count it: ``items_counted_in_flight_by_two_jobs``)."""
    down, sink = Gate(), Sink()
    flow = Flow().add(identity, Capacity(min_workers=1, max_workers=1), name="up")
    flow.add(down, Capacity(min_workers=1, max_workers=1, queue_length=0), name="down")
    flow.add(sink, name="sink")
    with anyio.fail_after(HANG_GUARD), anyio.CancelScope() as outer:
        async with flow.start() as running:
            await running.send(0)
            await running.send(1)
            # down holds 0 in its processor; up holds 1, blocked on the rendezvous queue
            await poll_until(
                lambda: len(down.inside) == 1 and running.stats().jobs["up"].blocked == 1
            )
            down.release(0)  # down's worker will take 1 from up's waiting send ...
            outer.cancel()  # ... in the same round as the cancellation reaches up
            await anyio.sleep_forever()
    stats = running.stats()
    assert stats.jobs["down"].received == 2  # item 1 reached down
    assert stats.jobs["up"].completed == 2  # fails: up counts 1 completed, 1 in flight
    conserved(stats, ["up", "down", "sink"])


async def test_cancel_while_the_error_job_runs() -> None:
    report = Gate()

    async def fail(item: int) -> int:
        raise Boom(item)

    factory = Factory(fail)
    flow = Flow().add(factory.factory, Capacity(min_workers=2, max_workers=2), name="f")
    flow.add_error_job(report, Capacity(queue_length=1), name="errors")
    before = live_tasks()
    with anyio.fail_after(HANG_GUARD), anyio.CancelScope() as outer:
        async with flow.start() as running:
            async with anyio.create_task_group() as feeder:
                feeder.start_soon(running.send, 0)
                feeder.start_soon(running.send, 1)
            # the error job holds item 0's error; item 1's waits in its queue
            await poll_until(
                lambda: len(report.inside) == 1 and running.stats().jobs["f"].errored == 2
            )
            outer.cancel()
            await checkpoint()
        raise AssertionError("the cancellation did not propagate")
    assert outer.cancelled_caught
    assert live_tasks() <= before
    assert factory.enters == factory.exits == 2
    stats = running.stats()
    assert stats.jobs["errors"].in_flight == 1  # abandoned inside the error job
    assert stats.jobs["f"].errored == 2
    assert stats.jobs["errors"].received + stats.jobs["errors"].queue_depth == 2


class CancelWhenGrowing:
    """A strategy that cancels ``scope`` in the very decision that grows the job.

    It waits for ``armed`` (set once every item was sent), so that the scaler's
    first ticks cannot cut the sending short on a fast loop (uvloop).
    """

    def __init__(self, scope: anyio.CancelScope, armed: anyio.Event | None = None) -> None:
        self.scope = scope
        self.armed = armed

    def decide(self, sample: ScalingSample) -> int:
        if sample.queue_depth and (self.armed is None or self.armed.is_set()):
            self.scope.cancel()
            return sample.max_workers
        return sample.workers


@pytest.mark.parametrize("slow_enter", [False, True], ids=["instant-enter", "slow-enter"])
async def test_cancel_while_a_scale_up_is_in_progress(slow_enter: bool) -> None:
    entering = Gate()
    enters = exits = 0
    worker_gate = Gate()

    @contextlib.asynccontextmanager
    async def make() -> AsyncIterator[Callable[[Any], Any]]:
        nonlocal enters, exits
        enters += 1
        try:
            if slow_enter and enters > 1:  # the new workers are still opening
                await entering(enters)
            yield worker_gate
        finally:
            exits += 1

    before = live_tasks()
    armed = anyio.Event()
    with anyio.fail_after(HANG_GUARD), anyio.CancelScope() as outer:
        capacity = UtilizationCapacity(
            min_workers=1,
            max_workers=8,
            queue_length=10,
            sampling=0.001,
            strategy=lambda: CancelWhenGrowing(outer, armed),
        )
        flow = Flow().add(ProcessorFactory(make), capacity, name="grows")
        async with flow.start() as running:
            for item in range(10):
                await running.send(item)
            armed.set()
            await anyio.sleep_forever()
    assert outer.cancelled_caught
    assert live_tasks() <= before
    assert enters == exits
    stats = running.stats()
    assert stats.jobs["grows"].scale_ups == 1
    assert stats.items_in == 10
    conserved(stats, ["grows"])
    job = stats.jobs["grows"]
    assert job.received + job.queue_depth == 10
    assert job.in_flight == job.received  # every item taken was abandoned, none lost


class AlwaysGrow:
    def decide(self, sample: ScalingSample) -> int:
        return sample.max_workers


async def cancel_at_the_first_tick() -> tuple[FlowStats, list[tuple[int, int, bool]], float]:
    """Cancel a run in the very round its scaler's first tick wakes up.

    The canceller's sleep is set before the scaler's, both end at the same virtual
    instant, so the canceller runs first while the scaler's sleep has already
    returned: on asyncio the cancellation then reaches the scaler only at its next
    checkpoint (trio raises it out of the sleep itself).
    """
    outer = anyio.CancelScope()
    cancelled_at: list[float] = []
    decided: list[tuple[int, int, bool]] = []  # (old, new, run cancelled by then)

    async def cancel_the_run() -> None:
        await anyio.sleep(1.0)
        cancelled_at.append(anyio.current_time())
        outer.cancel()

    def on_scale(event: ScalingEvent) -> None:
        decided.append((event.old, event.new, outer.cancel_called))

    capacity = UtilizationCapacity(
        min_workers=1, max_workers=2, queue_length=10, sampling=1.0, strategy=AlwaysGrow
    )
    flow = Flow().add(Gate(), capacity, name="a")  # holds every item it takes
    with anyio.fail_after(HANG_GUARD), outer:
        async with anyio.create_task_group() as group:
            group.start_soon(cancel_the_run)
            async with flow.start(on_scale=on_scale) as running:
                for item in range(10):
                    await running.send(item)
                await anyio.sleep_forever()
    assert outer.cancelled_caught
    return running.stats(), decided, cancelled_at[0]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_scaling_tick_that_wakes_as_the_run_is_cancelled_starts_no_worker(
    backend: Literal["asyncio", "trio"],
) -> None:
    """Such a tick used to grow the job: its new workers took items from the queue only
    to abandon them, and once a worker had left with its item, the job ended with more
    items in flight than it has workers (the random instants above saw 7 in a job of 6)."""
    stats, decided, cancelled_at = run_virtual(cancel_at_the_first_tick, backend=backend)
    assert cancelled_at == 1.0  # the instant of the scaler's first tick
    assert all(not cancelled for _, _, cancelled in decided), decided
    job = stats.jobs["a"]
    assert job.received + job.queue_depth == 10
    assert job.in_flight == job.received <= job.max_workers  # every item taken was abandoned


async def test_cancel_while_the_doorman_waits_and_while_it_hands_over() -> None:
    gate = Gate()
    flow = Flow().add(identity, Capacity(min_workers=1, max_workers=1, queue_length=0), name="a")
    flow.add(gate, Capacity(min_workers=0, max_workers=2, queue_length=0), name="zero")
    for sent in (0, 1, 2):
        before = live_tasks()
        with anyio.fail_after(HANG_GUARD), anyio.CancelScope() as outer:
            async with flow.start() as running:
                for item in range(sent):
                    await running.send(item)
                await anyio.wait_all_tasks_blocked()
                outer.cancel()
                await anyio.sleep_forever()
        assert outer.cancelled_caught
        assert live_tasks() <= before
        conserved(running.stats(), ["a", "zero"])


async def identity(item: Any) -> Any:
    return item


async def test_cancel_while_a_batch_is_half_gathered() -> None:
    seen: list[list[int]] = []

    async def take(batch: list[int]) -> int:
        seen.append(batch)
        return len(batch)

    flow = Flow().add(take, Capacity(queue_length=100), batch=Batch(size=10, timeout=30), name="b")
    with anyio.fail_after(HANG_GUARD), anyio.CancelScope() as outer:
        async with flow.start() as running:
            for item in range(25):
                await running.send(item)
            await poll_until(lambda: len(seen) == 2)
            await anyio.wait_all_tasks_blocked()
            outer.cancel()
            await anyio.sleep_forever()
    job = running.stats().jobs["b"]
    assert (job.received, job.completed, job.in_flight) == (25, 20, 5)


async def test_cancel_while_an_ordered_job_parks_outputs_counts_them_as_abandoned() -> None:
    gate = Gate()
    sink = Sink()
    flow = Flow().add(gate, Capacity(min_workers=3, max_workers=3), ordered=True, name="o")
    flow.add(sink, name="sink")
    with anyio.fail_after(HANG_GUARD), anyio.CancelScope() as outer:
        async with flow.start() as running:
            for item in range(3):
                await running.send(item)
            await poll_until(lambda: len(gate.inside) == 3)
            gate.release(1)
            gate.release(2)  # 1 and 2 are done, parked behind 0
            await anyio.wait_all_tasks_blocked()
            outer.cancel()
            await anyio.sleep_forever()
    assert sink.items == []
    stats = running.stats()
    assert stats.jobs["o"].in_flight == 3  # all three were abandoned in the ordered job
    conserved(stats, ["o", "sink"])


async def test_cancelling_one_run_leaves_a_concurrent_run_of_the_same_flow_alone() -> None:
    dials = iter([Dial(4), Dial(4)])
    gate = Gate()
    sinks = [Sink(), Sink()]

    async def to_sink(item: tuple[int, int]) -> None:
        await sinks[item[0]](item[1])

    flow = Flow()
    capacity = UtilizationCapacity(
        min_workers=1, max_workers=4, sampling=0.001, strategy=lambda: next(dials)
    )
    flow.add(gate, capacity, name="gate").add(to_sink, name="sink")
    all_inside = anyio.Event()
    results: list[FlowStats] = []

    async def one(index: int) -> None:
        async with flow.start() as running:
            for item in range(3):
                await running.send((index, item))
            await all_inside.wait()
            if index == 0:
                running.stop()
                await checkpoint()
                raise AssertionError("stop() did not end the block")
            await running.close()
            results.append(await running.join())

    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as group:
            group.start_soon(one, 0)
            group.start_soon(one, 1)
            await poll_until(lambda: len(gate.inside) == 6)
            all_inside.set()
            await anyio.wait_all_tasks_blocked()
            gate.open()
    assert sinks[0].items == []
    sinks[1].assert_exactly_once(range(3))
    assert_balanced(results[0])


# -- stop() --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
async def test_stop_at_a_random_instant_exits_quietly_and_counts_add_up(seed: int) -> None:
    rng = random.Random(seed)
    instant = Instant(rng)
    n = rng.randrange(1, MAX_ITEMS)
    rounds = rng.randrange(0, n)
    before = live_tasks()
    after_block = False
    with anyio.fail_after(HANG_GUARD):
        async with instant.flow.start() as running, anyio.create_task_group() as group:

            async def stop_later() -> None:
                for _ in range(rounds):
                    await checkpoint()
                running.stop()

            group.start_soon(stop_later)
            for item in range(n):
                await running.send(item)
            await running.close()
            await running.join()
        after_block = True
    assert after_block  # stop() ends the block without raising
    assert live_tasks() <= before
    instant.check_factories()
    stats = running.stats()
    check_counters(stats)
    with pytest.raises(anyio.BrokenResourceError):
        await running.send(n)
    if stats.done:
        check_complete(stats, instant, n)


@pytest.mark.parametrize("where", ["other-task", "after-the-block"])
async def test_join_after_stop_does_not_hang(where: str) -> None:
    gate = Gate()
    flow = Flow().add(gate)
    joined: list[FlowStats] = []

    async def join(running: RunningFlow) -> None:
        joined.append(await running.join())

    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as group:
            async with flow.start() as running:
                await running.send(1)
                if where == "other-task":
                    group.start_soon(join, running)
                    await anyio.wait_all_tasks_blocked()
                running.stop()
            if where == "after-the-block":
                group.start_soon(join, running)
            await anyio.wait_all_tasks_blocked()  # the run is over: nothing left to wait for
            waiting = not joined
            group.cancel_scope.cancel()
    assert not waiting, "join() still waits after the run was stopped"
    assert not joined[0].done
