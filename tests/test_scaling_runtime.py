"""Autoscaling end to end: the per-job scaler around real workers, on asyncio and trio.

Properties that depend on time are checked exactly only on trio's ``MockClock``
(autojump: every sleep returns at once, in virtual time); on real clocks the same
tests assert only what cannot depend on how loaded the machine is, and wait with
events under a generous hang guard.
"""

from __future__ import annotations

import collections
import itertools
import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import hypothesis
import pytest
import sniffio
import trio
from _support import HANG_GUARD, leaves, wait_until
from hypothesis import strategies as st
from trio.testing import MockClock

from flowrhythm import (
    Capacity,
    ErrorItem,
    Flow,
    FlowStats,
    ProcessorFactory,
    ScalingEvent,
    ScalingSample,
    StopProcessing,
    Strategy,
    UtilizationCapacity,
    UtilizationStrategy,
)
from flowrhythm.testing import run_virtual

pytestmark = pytest.mark.anyio


def timed() -> pytest.MarkDecorator:
    """Run on asyncio (real clock) and on trio with a fresh autojumping MockClock."""
    return pytest.mark.parametrize(
        "anyio_backend",
        [
            pytest.param("asyncio", id="asyncio"),
            pytest.param(
                ("trio", {"clock": MockClock(autojump_threshold=0)}), id="trio-mockclock"
            ),
        ],
    )


def exact() -> bool:
    """Whether the current run has a virtual clock, so timing can be asserted exactly."""
    return sniffio.current_async_library() == "trio" and isinstance(
        trio.lowlevel.current_clock(), MockClock
    )


class Recorder:
    """An ``on_scale`` callback: keeps every event, and wakes whoever waits for one."""

    def __init__(self) -> None:
        self.events: list[ScalingEvent] = []
        self._waiting: list[tuple[Callable[[ScalingEvent], bool], anyio.Event]] = []

    def __call__(self, event: ScalingEvent) -> None:
        self.events.append(event)
        for predicate, wake in self._waiting:
            if predicate(event):
                wake.set()

    def of(self, job: str) -> list[ScalingEvent]:
        return [e for e in self.events if e.job == job]

    async def wait(
        self, predicate: Callable[[ScalingEvent], bool], since: int = 0
    ) -> ScalingEvent:
        """The first event from index ``since`` on that satisfies ``predicate``."""
        wake = anyio.Event()
        entry = (predicate, wake)
        self._waiting.append(entry)
        try:
            with anyio.fail_after(HANG_GUARD):
                while not any(predicate(e) for e in self.events[since:]):
                    await wake.wait()
        finally:
            self._waiting.remove(entry)
        return next(e for e in self.events[since:] if predicate(e))


def check_events(events: list[ScalingEvent], stats: FlowStats) -> None:
    """Every event stays within its job's bounds and is counted in its job's stats."""
    for name, job in stats.jobs.items():
        mine = [e for e in events if e.job == name]
        for e in mine:
            assert job.min_workers <= e.old <= job.max_workers, e
            assert job.min_workers <= e.new <= job.max_workers, e
            assert isinstance(e.reason, str)
            assert e.old != e.new or e.reason, e  # a kept count is an event with a reason
        assert job.scale_ups == sum(e.new > e.old for e in mine), name
        assert job.scale_downs == sum(e.new < e.old for e in mine), name
    times = [e.time for e in events]
    assert times == sorted(times)


def check_counters(stats: FlowStats) -> None:
    for name, job in stats.jobs.items():
        assert job.received == job.completed + job.skipped + job.errored, name


async def io(item: int) -> int:
    await anyio.sleep(0.01)
    return item


class Spy:
    """The default strategy, recording every sample it is given and its decision."""

    made: list[Spy]

    def __init__(self) -> None:
        self.inner = UtilizationStrategy()
        self.ticks: list[tuple[ScalingSample, int]] = []
        Spy.made.append(self)

    def decide(self, sample: ScalingSample, /) -> Any:
        decision = self.inner.decide(sample)
        wanted = decision[0] if isinstance(decision, tuple) else decision
        self.ticks.append((sample, wanted))
        return decision


@pytest.fixture
def spies() -> list[Spy]:
    """The :class:`Spy` strategies made during one test, in order."""
    Spy.made = []
    return Spy.made


# -- growing ----------------------------------------------------------------------------


@timed()
async def test_io_bound_job_grows_past_half_of_max() -> None:
    grown = anyio.Event()
    record = Recorder()

    def on_scale(event: ScalingEvent) -> None:
        record(event)
        if event.new > 16:
            grown.set()

    async def saturate() -> AsyncIterator[int]:
        n = 0
        while not grown.is_set():  # as fast as the job takes them
            yield n
            n += 1

    capacity = UtilizationCapacity(min_workers=1, max_workers=32)
    flow = Flow().add(io, capacity=capacity)
    with anyio.fail_after(HANG_GUARD):
        stats = await flow.run(saturate(), on_scale=on_scale)
    check_events(record.events, stats)
    check_counters(stats)
    assert max(e.new for e in record.events) > 16
    if exact():
        # 0.1 s: one worker did 10 items of 10 ms, enough evidence (8 calls) to go
        # straight to what Little's law wants. The queue (100) is full, so the
        # source is held back: the demand is at least the 110 arrivals of the tick
        # (1,100/s * 0.01 s = 11 busy, 16.5 at the target), and the backlog drains
        # within 4 calls with 100 / 4 = 25 workers: the larger, 25.
        assert [(e.old, e.new) for e in record.events[:1]] == [(1, 25)]
        assert record.events[0].time == pytest.approx(0.1)


@timed()
async def test_fast_job_blocked_by_a_slow_one_does_not_grow() -> None:
    async def fast(item: int) -> int:
        return item

    async def slow(item: int) -> int:
        await anyio.sleep(0.005)
        return item

    record = Recorder()
    flow = (
        Flow()
        .add(
            fast,
            name="fast",
            # A short input queue keeps the input open (and waiting) for most of the run.
            capacity=UtilizationCapacity(
                min_workers=1, max_workers=16, sampling=0.01, queue_length=4
            ),
        )
        .add(slow, name="slow", capacity=Capacity(min_workers=1, max_workers=1, queue_length=1))
    )
    with anyio.fail_after(HANG_GUARD):
        stats = await flow.run(range(100), on_scale=record)
    check_events(record.events, stats)
    assert all(e.new <= 2 for e in record.of("fast")), record.events
    assert stats.jobs["fast"].blocked_seconds > stats.jobs["fast"].active_seconds
    if exact():
        assert record.of("fast") == []


@timed()
async def test_job_waiting_for_its_lock_does_not_keep_growing() -> None:
    async def locked(item: int) -> int:
        await anyio.sleep(0.005)
        return item

    record = Recorder()
    # Ticks of 0.1 s see about 20 items each: enough to judge a step.
    capacity = UtilizationCapacity(min_workers=1, max_workers=16, sampling=0.1, queue_length=4)
    flow = Flow().add_job_with_lock(locked, anyio.Lock(), capacity=capacity, name="locked")
    with anyio.fail_after(HANG_GUARD):
        stats = await flow.run(range(100), on_scale=record)
    check_events(record.events, stats)
    # One worker alone never waits for the lock, so one step up is all the strategy
    # can take before it sees the waits; then the workers are blocked on the lock
    # (more than 5% of the time): no growth.
    assert all(e.new <= 5 for e in record.events), record.events
    if exact():
        # One worker does an item in 0.005 s: 19 items end in the first tick (the
        # 20th just after it), 24 arrive, 4 wait in the full queue: Little's law
        # wants ceil(max(240/s * 0.005 s * 3/2, 4 / 4)) = 2. Then the lock blocks.
        assert [(e.old, e.new) for e in record.events] == [(1, 2)]
        assert record.events[0].time == pytest.approx(0.1)


@timed()
async def test_a_closed_input_with_items_waiting_still_grows(spies: list[Spy]) -> None:
    # A job whose input keeps waiting while all its workers are busy grows toward
    # max_workers. The whole input fits in the queue, so it is closed at
    # once; the items waiting in it still need workers.
    capacity = UtilizationCapacity(min_workers=1, max_workers=8, queue_length=100, strategy=Spy)
    flow = Flow().add(io, name="io", capacity=capacity)
    record = Recorder()
    with anyio.fail_after(HANG_GUARD):
        stats = await flow.run(range(100), on_scale=record)
    check_events(record.events, stats)
    assert stats.jobs["io"].completed == 100
    (spy,) = spies
    grew = [sample for sample, wanted in spy.ticks if wanted > sample.workers]
    assert grew, spy.ticks
    assert all(sample.input_closed and sample.queue_depth > 0 for sample in grew)
    assert record.events[0].old == 1
    assert record.events[0].new > 1
    if exact():
        # 0.1 s: the 100 items arrived in the tick; 10 done (0.01 s each): enough
        # evidence to go straight to what is needed, far above max_workers (8).
        assert [(e.old, e.new) for e in record.events] == [(1, 8)]
        assert record.events[0].time == pytest.approx(0.1)
        assert [sample.time for sample in grew] == [e.time for e in record.events]


# -- shrinking ----------------------------------------------------------------------------


@timed()
async def test_idle_job_returns_to_min_workers_after_the_cooldown() -> None:
    items = 400
    done = 0
    all_done = anyio.Event()

    async def work(item: int) -> int:
        nonlocal done
        await anyio.sleep(0.01)
        done += 1
        if done == items:
            all_done.set()
        return item

    record = Recorder()
    sampling, cooldown = 0.02, 0.2
    capacity = UtilizationCapacity(
        min_workers=2, max_workers=16, sampling=sampling, cooldown=cooldown
    )
    flow = Flow().add(work, name="work", capacity=capacity)
    async with flow.start(on_scale=record) as running:
        for i in range(items):
            await running.send(i)
        with anyio.fail_after(HANG_GUARD):
            await all_done.wait()
        idle_since = anyio.current_time()
        grown = max(e.new for e in record.events)
        assert grown > 2  # input kept waiting while both workers were busy
        back = await record.wait(lambda e: e.new == 2 and e.old > 2)
        await wait_until(lambda: running.stats().jobs["work"].workers == 2)
        assert record.events[-1].new == 2  # and it stays there while idle
        assert all(e.new < e.old for e in record.events if e.time > idle_since)
        if exact():
            # A shrink for low utilization comes a full cooldown after the last
            # growth (steps back by the ineffective-scaling guard are not that).
            for down in record.events:
                if down.new < down.old and "ineffective" not in down.reason:
                    last_up = max(
                        e.time for e in record.events if e.time <= down.time and e.new > e.old
                    )
                    assert down.time - last_up >= cooldown, down
            # Dampening 0.5: the smoothed utilization is below 0.4 at the latest two
            # ticks after the tick in which the work ended (1 -> 0.5 -> 0.25), and the
            # first shrink comes one cooldown later.
            downs = [e for e in record.events if e.time > idle_since]
            assert idle_since + cooldown <= downs[0].time <= idle_since + cooldown + 4 * sampling
            # From there on a quarter leaves every tick: the recommendations (the
            # smoothed busy workers / (2/3), which halve every idle tick from under
            # 0.4 * workers) are all below the quarter steps.
            for e in downs:
                assert e.new == max(2, e.old - max(1, e.old // 4)), downs
            for before, after in itertools.pairwise(downs):
                assert after.time - before.time == pytest.approx(sampling), downs
            assert downs[-1] is back
        await running.close()
        stats = await running.join()
    check_events(record.events, stats)
    assert stats.jobs["work"].completed == items


async def test_a_worker_retired_while_busy_leaves_after_its_item() -> None:
    # _run/_loop.py: "A worker is retired only at a safe point: while it waits for
    # input, or after the item it is processing." Four workers hold an item each
    # when the scaler asks three to leave; once those items end, only the one
    # staying worker may start another item.
    gate, armed = anyio.Event(), anyio.Event()
    holding = 0
    opened: list[int] = []  # one entry per worker, in start order
    starts: list[int] = []  # which worker started each item after the gate opened

    class Scripted:
        def decide(self, sample: ScalingSample, /) -> int:
            return 1 if armed.is_set() else sample.workers

    class PerWorker:
        """Each worker's processor knows which worker it belongs to."""

        def __init__(self) -> None:
            self.worker = len(opened)
            opened.append(self.worker)

        async def __aenter__(self) -> Callable[[int], Any]:
            return self.process

        async def __aexit__(self, *exc_info: object) -> None:
            pass

        async def process(self, item: int) -> int:
            nonlocal holding
            if gate.is_set():
                starts.append(self.worker)
            else:
                holding += 1
                await gate.wait()
            await anyio.lowlevel.checkpoint()
            return item

    record = Recorder()
    capacity = UtilizationCapacity(
        min_workers=1, max_workers=4, initial_workers=4, sampling=0.002, strategy=Scripted
    )
    flow = Flow().add(ProcessorFactory(PerWorker), name="job", capacity=capacity)
    async with flow.start(on_scale=record) as running:
        for i in range(24):
            await running.send(i)
        await wait_until(lambda: holding == 4)
        armed.set()
        await record.wait(lambda e: (e.old, e.new) == (4, 1))
        await anyio.wait_all_tasks_blocked()
        # Asked to leave, none was cancelled: all four still hold their items.
        assert running.stats().jobs["job"].workers == 4
        assert holding == 4
        gate.set()
        await running.close()
        stats = await running.join()
    assert stats.jobs["job"].completed == 24
    assert len(starts) == 20
    assert len(set(starts)) == 1, collections.Counter(starts)


async def test_workers_asked_to_leave_while_waiting_for_input_leave_at_once() -> None:
    # A worker waiting for input holds no item: its cancel scope is cancelled and it
    # leaves without waiting for input that may never come.
    armed = anyio.Event()
    opened = closed = 0

    class Scripted:
        def decide(self, sample: ScalingSample, /) -> int:
            return 1 if armed.is_set() else sample.workers

    class Session:
        async def __aenter__(self) -> Callable[[int], Any]:
            nonlocal opened
            opened += 1
            return io

        async def __aexit__(self, *exc_info: object) -> None:
            nonlocal closed
            closed += 1

    record = Recorder()
    capacity = UtilizationCapacity(
        min_workers=1, max_workers=4, initial_workers=4, sampling=0.002, strategy=Scripted
    )
    flow = Flow().add(ProcessorFactory(Session), name="job", capacity=capacity)
    async with flow.start(on_scale=record) as running:
        await wait_until(lambda: running.stats().jobs["job"].idle == 4)
        armed.set()
        await record.wait(lambda e: (e.old, e.new) == (4, 1))
        await wait_until(lambda: running.stats().jobs["job"].workers == 1)
        assert (opened, closed) == (4, 3)  # the three left, each closing its session
        await running.send(7)  # the one that stayed still works
        await running.close()
        stats = await running.join()
    assert (opened, closed) == (4, 4)
    assert (stats.jobs["job"].completed, stats.jobs["job"].scale_downs) == (1, 1)


@timed()
async def test_samples_never_have_negative_seconds_or_counts(spies: list[Spy]) -> None:
    # The scaler takes differences of cumulative counters (worker-seconds active,
    # idle and blocked); float rounding must not make a tick's share negative. A job
    # with idle workers (no input for a while), then busy ones blocked by a slow
    # downstream job, then idle again.
    items, done = 60, 0
    all_done = anyio.Event()

    async def slow(item: int) -> int:
        nonlocal done
        await anyio.sleep(0.005)
        done += 1
        if done == items:
            all_done.set()
        return item

    fast = UtilizationCapacity(
        min_workers=1, max_workers=6, initial_workers=3, sampling=0.01, strategy=Spy
    )
    flow = (
        Flow()
        .add(io, name="io", capacity=fast)
        .add(slow, name="slow", capacity=Capacity(min_workers=1, max_workers=1, queue_length=1))
    )
    async with flow.start() as running:
        await anyio.sleep(0.05)
        for i in range(items):
            await running.send(i)
        with anyio.fail_after(HANG_GUARD):
            await all_done.wait()
        await anyio.sleep(0.05)
        await running.close()
        stats = await running.join()
    assert stats.jobs["slow"].completed == items
    (spy,) = spies
    samples = [sample for sample, _ in spy.ticks]
    assert len(samples) > 10
    for s in samples:
        assert min(s.active, s.idle, s.blocked) >= 0.0, s
        assert min(s.completed, s.arrivals, s.queue_depth) >= 0, s
        assert 0.0 <= s.utilization <= 1.0, s
        assert 0.0 <= s.blocked_share <= 1.0, s
    assert any(s.idle > 0 for s in samples)
    assert any(s.blocked > 0 for s in samples)


# -- bounds ----------------------------------------------------------------------------------


class Wild:
    """Wants anything, in or out of bounds: the runtime must clamp it."""

    def __init__(self) -> None:
        self.rng = random.Random(7)

    def decide(self, sample: ScalingSample, /) -> int:
        return self.rng.choice([-10, 0, 1, 2, 3, 4, 5, 1000])


async def test_decisions_are_clamped_to_min_and_max() -> None:
    wants = iter([1000, -5, 3, 1000, 0])

    class Scripted:
        def decide(self, sample: ScalingSample, /) -> tuple[int, str]:
            return next(wants, sample.workers), "scripted"

    record = Recorder()
    capacity = UtilizationCapacity(min_workers=2, max_workers=6, sampling=0.005, strategy=Scripted)
    flow = Flow().add(io, capacity=capacity)
    async with flow.start(on_scale=record) as running:
        await record.wait(lambda e: e.new == 2, since=3)
        await running.close()
        stats = await running.join()
    assert [(e.old, e.new, e.reason) for e in record.events] == [
        (2, 6, "scripted"),
        (6, 2, "scripted"),
        (2, 3, "scripted"),
        (3, 6, "scripted"),
        (6, 2, "scripted"),
    ]
    check_events(record.events, stats)


async def test_worker_counts_stay_within_bounds_while_input_is_open() -> None:
    rng = random.Random(3)

    async def jitter(item: int) -> int:
        await anyio.sleep(rng.choice([0, 0, 0.001, 0.003]))
        return item

    fast: dict[str, Any] = {"sampling": 0.002, "cooldown": 0.0}
    flow = (
        Flow()
        .add(
            jitter, name="util", capacity=UtilizationCapacity(min_workers=2, max_workers=6, **fast)
        )
        .add(
            jitter,
            name="wild",
            capacity=UtilizationCapacity(min_workers=1, max_workers=4, strategy=Wild, **fast),
        )
        .add(
            jitter,
            name="zero",
            capacity=UtilizationCapacity(
                min_workers=0, max_workers=3, queue_length=2, strategy=Strategy.QUEUE_DEPTH, **fast
            ),
        )
    )
    bounds = {"util": (2, 6), "wild": (1, 4), "zero": (0, 3)}
    seen = {name: set[int]() for name in bounds}
    record = Recorder()
    sending = True

    async def watch(running: Any) -> None:
        while sending:
            for name, job in running.stats().jobs.items():
                low, high = bounds[name]
                assert low <= job.workers <= high, (name, job.workers)
                seen[name].add(job.workers)
            await anyio.sleep(0.0005)

    with anyio.fail_after(HANG_GUARD):
        async with flow.start(on_scale=record) as running, anyio.create_task_group() as tg:
            tg.start_soon(watch, running)
            for i in range(600):
                await running.send(i)
            sending = False
        stats = running.stats()
    check_events(record.events, stats)
    check_counters(stats)
    assert stats.jobs["zero"].completed == 600
    assert len(seen["wild"]) > 1  # it did move (and was clamped: see check_events)
    assert record.of("wild")


async def test_fixed_strategy_never_scales() -> None:
    record = Recorder()
    capacity = UtilizationCapacity(
        min_workers=1, max_workers=8, initial_workers=3, sampling=0.002, strategy=Strategy.FIXED
    )
    flow = Flow().add(io, capacity=capacity)
    with anyio.fail_after(HANG_GUARD):
        stats = await flow.run(range(100), on_scale=record)
    assert record.events == []
    assert (stats.jobs["io"].scale_ups, stats.jobs["io"].scale_downs) == (0, 0)


# -- min_workers = 0 ----------------------------------------------------------------------


@timed()
async def test_zero_workers_wake_on_input_and_return_to_zero() -> None:
    arrived = anyio.Event()

    async def tail(item: int) -> int:
        arrived.set()
        return item

    record = Recorder()
    sampling, cooldown = 0.01, 0.05
    # No dampening, so that the idle ticks recommend zero at once (smoothing would
    # remember the busy tick for a few more ticks).
    capacity = UtilizationCapacity(
        min_workers=0, max_workers=4, sampling=sampling, cooldown=cooldown, dampening=0.0
    )
    flow = Flow().add(io, name="zero", capacity=capacity).add(tail, name="tail")
    async with flow.start(on_scale=record) as running:
        await anyio.wait_all_tasks_blocked()
        assert running.stats().jobs["zero"].workers == 0
        for round_ in range(2):
            since = len(record.events)
            sent_at = anyio.current_time()
            await running.send(round_)
            woke = await record.wait(lambda e: e.job == "zero", since=since)
            assert (woke.old, woke.new, woke.reason) == (0, 1, "input arrived")
            with anyio.fail_after(HANG_GUARD):
                await arrived.wait()
            arrived = anyio.Event()
            done_at = anyio.current_time()
            slept = await record.wait(lambda e: e.new == 0, since=since)
            await wait_until(lambda: running.stats().jobs["zero"].workers == 0)
            if exact():
                assert woke.time == sent_at  # at once, not even one sampling later
                assert done_at + cooldown <= slept.time <= done_at + cooldown + 2 * sampling
        # End of input still goes through a job that has no worker at all.
        await running.close()
        with anyio.fail_after(HANG_GUARD):
            stats = await running.join()
    check_events(record.events, stats)
    zero = stats.jobs["zero"]
    assert (zero.workers, zero.received, zero.scale_ups, zero.scale_downs) == (0, 2, 2, 2)
    assert stats.jobs["tail"].completed == 2


async def drop(item: int) -> int:
    raise StopProcessing


@pytest.mark.parametrize("position", ["middle", "last"])
async def test_end_of_input_passes_a_job_that_never_had_a_worker(position: str) -> None:
    zero = UtilizationCapacity(min_workers=0, max_workers=3, sampling=0.002)
    flow = Flow().add(drop, name="drop").add(io, name="zero", capacity=zero)
    if position == "middle":
        flow.add(io, name="tail")
    record = Recorder()
    with anyio.fail_after(HANG_GUARD):
        async with flow.stream(range(20), on_scale=record) as results:
            outputs = [out async for out in results]
    assert outputs == []
    assert record.events == []
    with anyio.fail_after(HANG_GUARD):
        stats = await flow.run([], on_scale=record)
    assert stats.done
    assert stats.jobs["zero"].received == 0
    assert record.events == []


async def test_zero_worker_job_with_items_left_when_input_ends() -> None:
    capacity = UtilizationCapacity(min_workers=0, max_workers=2, sampling=0.002, cooldown=0.0)
    flow = Flow().add(io, name="first").add(io, name="zero", capacity=capacity)
    with anyio.fail_after(HANG_GUARD):
        async with flow.stream(range(30)) as results:
            outputs = [out async for out in results]
    assert sorted(outputs) == list(range(30))


# -- strategies that misbehave ---------------------------------------------------------------


class Boom(Exception):
    pass


async def forever() -> AsyncIterator[int]:
    yield 1
    await anyio.sleep_forever()
    yield 2  # pragma: no cover


async def test_a_strategy_that_raises_fails_the_run() -> None:
    class Broken:
        def decide(self, sample: ScalingSample, /) -> int:
            raise Boom(sample.job)

    capacity = UtilizationCapacity(min_workers=1, max_workers=4, sampling=0.002, strategy=Broken)
    flow = Flow().add(io, name="job", capacity=capacity)
    with anyio.fail_after(HANG_GUARD), pytest.raises(ExceptionGroup) as caught:
        await flow.run(forever())
    booms = [exc for exc in leaves(caught.value) if isinstance(exc, Boom)]
    assert len(booms) == 1
    assert booms[0].args == ("job",)


@pytest.mark.parametrize(
    "decision", [2.0, "2", None, True, (2, 3), [2, "why"], (2, "why", "extra")]
)
async def test_a_strategy_returning_a_non_int_fails_with_type_error(decision: Any) -> None:
    class Sloppy:
        def decide(self, sample: ScalingSample, /) -> Any:
            return decision

    capacity = UtilizationCapacity(min_workers=1, max_workers=4, sampling=0.002, strategy=Sloppy)
    flow = Flow().add(io, name="sloppy", capacity=capacity)
    with anyio.fail_after(HANG_GUARD), pytest.raises(ExceptionGroup) as caught:
        await flow.run(forever())
    errors = leaves(caught.value)
    assert [type(exc) for exc in errors] == [TypeError]
    assert "sloppy" in str(errors[0])


async def test_a_strategy_may_return_a_count_with_a_reason() -> None:
    class Explained:
        def decide(self, sample: ScalingSample, /) -> tuple[int, str]:
            return 3, "because"

    record = Recorder()
    capacity = UtilizationCapacity(
        min_workers=1, max_workers=4, sampling=0.002, strategy=Explained
    )
    flow = Flow().add(io, name="job", capacity=capacity)
    async with flow.start(on_scale=record) as running:
        event = await record.wait(lambda e: True)
        await running.close()
    assert (event.job, event.old, event.new, event.reason) == ("job", 1, 3, "because")


def test_a_kept_count_with_a_new_reason_is_an_event() -> None:
    # A cap without a change of count is still a decision worth an event; the same
    # reason again is not.
    class Capping:
        def __init__(self) -> None:
            self.ticks = 0

        def decide(self, sample: ScalingSample, /) -> tuple[int, str] | int:
            self.ticks += 1
            if self.ticks <= 3:
                return sample.workers, "capped at 1"
            if self.ticks == 4:
                return 2, "grow"
            return sample.workers, "capped at 2"

    async def main() -> tuple[list[ScalingEvent], FlowStats]:
        events: list[ScalingEvent] = []
        capacity = UtilizationCapacity(min_workers=1, max_workers=4, strategy=Capping)

        async def slow(item: int) -> int:
            await anyio.sleep(1.0)
            return item

        stats = (
            await Flow()
            .add(slow, name="job", capacity=capacity)
            .run(range(3), on_scale=events.append)
        )
        return events, stats

    for backend in ("asyncio", "trio"):
        events, stats = run_virtual(main, backend=backend)
        check_events(events, stats)
        assert [(e.old, e.new, e.reason) for e in events] == [
            (1, 1, "capped at 1"),
            (1, 2, "grow"),
            (2, 2, "capped at 2"),
        ]
        assert (stats.jobs["job"].scale_ups, stats.jobs["job"].scale_downs) == (1, 0)


async def test_custom_strategy_gets_a_fresh_instance_per_job_per_run() -> None:
    created: list[Any] = []
    this_run: list[Any] = []
    decided = anyio.Event()

    class Recording:
        def __init__(self) -> None:
            self.jobs: set[str] = set()
            created.append(self)
            this_run.append(self)

        def decide(self, sample: ScalingSample, /) -> int:
            self.jobs.add(sample.job)
            if {job for s in this_run for job in s.jobs} == {"a", "b"}:
                decided.set()
            return sample.workers

    async def source() -> AsyncIterator[int]:
        for i in range(5):
            yield i
        await decided.wait()  # both jobs' strategies have decided at least once

    capacity = UtilizationCapacity(
        min_workers=1, max_workers=2, sampling=0.002, strategy=Recording
    )
    flow = Flow().add(io, name="a", capacity=capacity).add(io, name="b", capacity=capacity)
    for _ in range(2):
        this_run.clear()
        decided = anyio.Event()
        with anyio.fail_after(HANG_GUARD):
            await flow.run(source())
        assert len(this_run) == 2
        assert sorted(job for s in this_run for job in s.jobs) == ["a", "b"]
    assert len(created) == 4
    assert len({id(s) for s in created}) == 4


# -- scaling never loses or duplicates an item -------------------------------------------------


class Oscillate:
    """Swings between min and max workers on every tick: the harshest scaler."""

    def __init__(self) -> None:
        self.up = True

    def decide(self, sample: ScalingSample, /) -> tuple[int, str]:
        self.up = not self.up
        return (sample.max_workers if self.up else sample.min_workers), "oscillate"


async def test_scale_down_never_loses_or_duplicates_items() -> None:
    rng = random.Random(11)
    opened = closed = 0
    sink: list[int] = []

    async def jitter(item: int) -> int:
        await anyio.sleep(rng.choice([0, 0, 0.0005, 0.001, 0.002]))
        return item

    async def collect(item: int) -> None:
        sink.append(item)

    class Session:
        """A per-worker resource: entered when a worker starts, exited when it leaves."""

        async def __aenter__(self) -> Callable[[int], Any]:
            nonlocal opened
            opened += 1
            return jitter

        async def __aexit__(self, *exc_info: object) -> None:
            nonlocal closed
            closed += 1

    def aggressive(**counts: int) -> UtilizationCapacity:
        return UtilizationCapacity(sampling=0.002, cooldown=0.0, strategy=Oscillate, **counts)

    flow = (
        Flow()
        .add(jitter, name="a", capacity=aggressive(min_workers=1, max_workers=8))
        .add(
            ProcessorFactory(Session),
            name="b",
            capacity=aggressive(min_workers=0, max_workers=6, queue_length=2),
        )
        .add(jitter, name="c", capacity=aggressive(min_workers=2, max_workers=5, queue_length=0))
        .add(jitter, name="d", capacity=aggressive(min_workers=1, max_workers=4), ordered=True)
        .add(collect, name="sink")
    )
    record = Recorder()
    items = 800
    with anyio.fail_after(HANG_GUARD * 3):
        stats = await flow.run(range(items), on_scale=record)
    assert collections.Counter(sink) == collections.Counter(range(items))
    check_events(record.events, stats)
    check_counters(stats)
    for name in "abcd":
        job = stats.jobs[name]
        assert (job.received, job.completed) == (items, items), name
        assert job.scale_ups > 0, name
        assert job.scale_downs > 0, name
    assert opened == closed >= 2


# -- random flows under the harshest scaling -----------------------------------------------------


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    """1-3 jobs with random worker bounds, queues, strategies and per-item fates."""
    items = draw(st.integers(min_value=0, max_value=40))
    jobs = []
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        low = draw(st.integers(min_value=0, max_value=3))
        high = draw(st.integers(min_value=max(low, 1), max_value=5))
        jobs.append(
            {
                "min_workers": low,
                "max_workers": high,
                "initial_workers": draw(st.integers(min_value=low, max_value=high)),
                "queue_length": draw(st.integers(min_value=0, max_value=4)),
                "strategy": draw(
                    st.sampled_from([Strategy.UTILIZATION, Strategy.QUEUE_DEPTH, Oscillate])
                ),
                "ordered": draw(st.booleans()),
                "delay": draw(st.sampled_from([0.0, 0.0005, 0.001])),
                # pass, skip (StopProcessing) or raise (routed to the error job)
                "fates": draw(st.lists(st.sampled_from("pppsr"), min_size=items, max_size=items)),
            }
        )
    low = draw(st.integers(min_value=0, max_value=2))
    errors = {"min_workers": low, "max_workers": draw(st.integers(max(low, 1), 3))}
    return {"items": items, "jobs": jobs, "errors": errors}


async def run_scenario(scenario: dict[str, Any]) -> None:
    jobs: list[dict[str, Any]] = scenario["jobs"]
    names = [f"job{index}" for index in range(len(jobs))]
    skipped: list[tuple[str, int]] = []
    errored: list[tuple[str, int]] = []
    delivered: list[int] = []

    def processor(name: str, fates: list[str], delay: float) -> Callable[[int], Any]:
        async def process(item: int) -> int:
            await anyio.sleep(delay)
            if fates[item] == "s":
                skipped.append((name, item))
                raise StopProcessing
            if fates[item] == "r":
                raise ValueError(item)
            return item

        return process

    async def sink(item: int) -> None:
        delivered.append(item)

    async def report(error: ErrorItem) -> None:
        assert isinstance(error.exception, ValueError)
        assert error.exception.args == (error.item,)
        errored.append((error.job, error.item))

    def aggressive(**settings: Any) -> UtilizationCapacity:
        return UtilizationCapacity(sampling=0.002, cooldown=0.0, **settings)

    flow = Flow()
    for name, job in zip(names, jobs, strict=True):
        flow.add(
            processor(name, job["fates"], job["delay"]),
            name=name,
            ordered=job["ordered"],
            capacity=aggressive(
                min_workers=job["min_workers"],
                max_workers=job["max_workers"],
                initial_workers=job["initial_workers"],
                queue_length=job["queue_length"],
                strategy=job["strategy"],
            ),
        )
    flow.add(sink, name="sink")
    flow.add_error_job(report, name="errors", capacity=aggressive(**scenario["errors"]))

    record = Recorder()
    with anyio.fail_after(HANG_GUARD * 2):
        stats = await flow.run(range(scenario["items"]), on_scale=record)
    backend = sniffio.current_async_library()
    hypothesis.target(float(len(record.events)), label=f"scaling events on {backend}")

    # Where each item should end: at the first job that skips or fails it.
    expect_skipped: list[tuple[str, int]] = []
    expect_errored: list[tuple[str, int]] = []
    expect_delivered: list[int] = []
    reached = collections.Counter[str]()
    for item in range(scenario["items"]):
        for name, job in zip(names, jobs, strict=True):
            reached[name] += 1
            fate = job["fates"][item]
            if fate != "p":
                (expect_skipped if fate == "s" else expect_errored).append((name, item))
                break
        else:
            expect_delivered.append(item)
    assert collections.Counter(delivered) == collections.Counter(expect_delivered)
    assert collections.Counter(skipped) == collections.Counter(expect_skipped)
    assert collections.Counter(errored) == collections.Counter(expect_errored)

    check_counters(stats)
    check_events(record.events, stats)
    for name in names:
        job_stats = stats.jobs[name]
        assert job_stats.received == reached[name], name
        assert job_stats.skipped == sum(n == name for n, _ in expect_skipped), name
        assert job_stats.errored == sum(n == name for n, _ in expect_errored), name
    assert stats.jobs["sink"].received == len(expect_delivered)
    assert stats.jobs["errors"].received == len(expect_errored)


@hypothesis.settings(deadline=None, max_examples=30)
@hypothesis.given(scenario=scenarios())
def test_random_flows_end_every_item_exactly_once(scenario: dict[str, Any]) -> None:
    for backend in ("asyncio", "trio"):
        anyio.run(run_scenario, scenario, backend=backend)


# -- logging --------------------------------------------------------------------------------


async def test_every_change_is_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="flowrhythm")
    capacity = UtilizationCapacity(
        min_workers=0, max_workers=2, sampling=0.002, cooldown=0.0, dampening=0.0
    )
    flow = Flow().add(io, name="zero", capacity=capacity)
    record = Recorder()
    async with flow.start(on_scale=record) as running:
        await running.send(1)
        await record.wait(lambda e: e.new == 0)
        await running.close()
        stats = await running.join()
    check_events(record.events, stats)
    logged = [r for r in caplog.records if r.name == "flowrhythm"]
    assert len(logged) == len(record.events) >= 2
    for entry, event in zip(logged, record.events, strict=True):
        assert entry.levelno == logging.DEBUG
        message = entry.getMessage()
        assert event.job in message
        assert f"{event.old} -> {event.new}" in message
        assert event.reason in message
    assert "input arrived" in logged[0].getMessage()
