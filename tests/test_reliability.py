"""Adversarial reliability: scaling races, end of input, every kind of failure, backpressure.

Every async test runs on asyncio and on trio (``anyio_backend`` in ``conftest.py``).
Steps are ordered with per-item :class:`anyio.Event` gates and
:func:`anyio.wait_all_tasks_blocked`, never with sleeps; scaling is forced with a
:class:`Dial`, a strategy the test turns, ticking every millisecond. Every test ends
with :func:`assert_no_unclosed_streams`, and pytest runs with ``filterwarnings = error``
(the first tests check that this really catches a leaked stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import subprocess
import sys
import textwrap
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import sniffio
import trio
from _support import HANG_GUARD, leaves
from anyio.lowlevel import checkpoint

import flowrhythm._run._job
from flowrhythm import (
    Capacity,
    ErrorItem,
    Flow,
    FlowStats,
    ProcessorFactory,
    RunningFlow,
    ScalingSample,
    UtilizationCapacity,
    UtilizationStrategy,
)

ROOT = Path(__file__).resolve().parent.parent


class Boom(Exception):
    pass


class Other(Exception):
    pass


# -- helpers -----------------------------------------------------------------------------------


def assert_no_unclosed_streams() -> None:
    """Collect garbage and fail on any ResourceWarning (an unclosed memory stream)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    leaked = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaked, leaked


@pytest.fixture(autouse=True)
def _no_unclosed_streams() -> Iterator[None]:
    yield
    assert_no_unclosed_streams()


def live_tasks() -> set[object]:
    """Every unfinished task of the running event loop (trio: walked from the root task)."""
    if sniffio.current_async_library() == "asyncio":
        return set(asyncio.all_tasks())
    found: set[object] = set()
    root = trio.lowlevel.current_root_task()
    assert root is not None
    stack = [root]
    while stack:
        task = stack.pop()
        found.add(task)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return found


async def poll_until(predicate: Callable[[], bool], guard: float = HANG_GUARD) -> None:
    """Yield to the other tasks until ``predicate()`` holds (guarded against hangs).

    :func:`_support.wait_until` waits for every task to block, which anyio's asyncio
    backend checks by sleeping 0.1 s whenever one is runnable -- and a scaler ticking
    every millisecond always is. Here the condition is simply re-checked after every
    scheduling round.
    """
    with anyio.fail_after(guard):
        while not predicate():
            await checkpoint()


def assert_balanced(stats: FlowStats) -> None:
    for name, job in stats.jobs.items():
        assert job.received == job.completed + job.skipped + job.errored, (name, job)


def cancelled_exception() -> BaseException:
    """A fresh instance of the current backend's cancellation exception."""
    if sniffio.current_async_library() == "trio":
        return trio.Cancelled._create()
    return asyncio.CancelledError()


class Gate:
    """A processor that holds every item until the test releases it.

    ``inside`` maps each item being processed to the event that releases it, so the
    test knows exactly which items are in flight in this job.
    """

    def __init__(self, action: Callable[[Any], Any] = lambda item: item) -> None:
        self.inside: dict[Any, anyio.Event] = {}
        self.opened = False
        self.action = action
        self.entered = 0

    async def __call__(self, item: Any) -> Any:
        self.entered += 1
        if not self.opened:
            event = self.inside[item] = anyio.Event()
            try:
                await event.wait()
            finally:
                del self.inside[item]
        return self.action(item)

    def release(self, item: Any) -> None:
        self.inside[item].set()

    def open(self) -> None:
        """Release every held item, and let every later one through."""
        self.opened = True
        for event in self.inside.values():
            event.set()


class Sink:
    """The last job: records every item it receives (exactly-once checks)."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    async def __call__(self, item: Any) -> None:
        self.items.append(item)

    def assert_exactly_once(self, expected: Any) -> None:
        counts = Counter(self.items)
        assert sorted(counts) == sorted(expected)
        assert [item for item, n in counts.items() if n != 1] == []


class Dial:
    """A scaling strategy the test turns: ``decide`` returns ``target``, and counts ticks."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.ticks = 0
        self.samples: list[ScalingSample] = []
        self._tick: anyio.Event | None = None

    def decide(self, sample: ScalingSample) -> int:
        self.ticks += 1
        self.samples.append(sample)
        if self._tick is not None:
            self._tick.set()
            self._tick = None
        return self.target

    async def ticked(self, n: int = 2) -> None:
        """Wait for ``n`` more decisions: the first one after a change is then applied."""
        with anyio.fail_after(HANG_GUARD):
            for _ in range(n):
                self._tick = event = anyio.Event()
                await event.wait()

    def strategy(self) -> Dial:
        """The strategy factory of a capacity: every run of the flow gets this dial."""
        return self

    def capacity(self, **fields: Any) -> UtilizationCapacity:
        return UtilizationCapacity(sampling=0.001, strategy=self.strategy, **fields)


class Factory:
    """A ProcessorFactory that counts its contexts and what each exit saw."""

    def __init__(self, processor: Callable[[Any], Any]) -> None:
        self.processor = processor
        self.enters = 0
        self.exits = 0
        self.exit_exceptions: list[BaseException] = []

    @contextlib.asynccontextmanager
    async def _make(self) -> AsyncIterator[Callable[[Any], Any]]:
        self.enters += 1
        try:
            yield self.processor
        except BaseException as exc:
            self.exit_exceptions.append(exc)
            raise
        finally:
            self.exits += 1

    @property
    def factory(self) -> ProcessorFactory:
        return ProcessorFactory(self._make)


async def feed(running: RunningFlow, items: Any, close: bool = True) -> None:
    for item in items:
        await running.send(item)
    if close:
        await running.close()


# -- filterwarnings = error really catches a leaked stream ------------------------------------


def test_pytest_turns_warnings_into_errors(pytestconfig: pytest.Config) -> None:
    assert "error" in pytestconfig.getini("filterwarnings")


def leak_a_stream_in_a_cycle() -> None:
    """Drop an unclosed receive stream that only the garbage collector can free."""
    send, receive = anyio.create_memory_object_stream[int](1)
    send.close()
    holder: list[Any] = [receive]
    holder.append(holder)


def test_a_leaked_memory_stream_warns() -> None:
    leak_a_stream_in_a_cycle()
    with pytest.warns(ResourceWarning, match="Unclosed <MemoryObjectReceiveStream"):
        gc.collect()


def test_the_leak_check_catches_a_leaked_stream() -> None:
    leak_a_stream_in_a_cycle()
    with pytest.raises(AssertionError, match="Unclosed <MemoryObjectReceiveStream"):
        assert_no_unclosed_streams()


def test_a_test_that_leaks_a_stream_fails_under_the_project_config(tmp_path: Path) -> None:
    """Run pytest on a test that leaks a stream, with this project's pytest configuration."""
    (tmp_path / "test_leak.py").write_text(
        textwrap.dedent(
            """
            import gc
            import anyio

            def test_leak():
                send, receive = anyio.create_memory_object_stream(1)
                del send, receive
                gc.collect()
            """
        )
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-c",
            str(ROOT / "pyproject.toml"),
            "--rootdir",
            str(tmp_path),
            "-p",
            "no:cacheprovider",
            "-q",
            str(tmp_path / "test_leak.py"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed" in result.stdout
    assert "ResourceWarning" in result.stdout


# -- scaling down never interrupts an item -----------------------------------------------------


@pytest.mark.anyio
async def test_scale_down_while_workers_are_mid_item_delivers_each_item_once() -> None:
    dial = Dial(4)
    gate, sink = Gate(), Sink()
    flow = Flow().add(gate, dial.capacity(min_workers=1, max_workers=4, initial_workers=4))
    flow.add(sink, name="sink")
    async with flow.start() as running:
        await feed(running, range(4), close=False)
        await poll_until(lambda: len(gate.inside) == 4)
        dial.target = 1
        await dial.ticked()
        gate_stats = running.stats().jobs["Gate"]
        assert gate_stats.scale_downs >= 1
        assert gate_stats.workers == 4  # asked to leave, but none is interrupted mid-item
        assert len(gate.inside) == 4
        for item in range(4):
            gate.release(item)

            def released(n: int = item + 1) -> bool:
                return running.stats().jobs["Gate"].completed == n

            await poll_until(released)
        await poll_until(lambda: running.stats().jobs["Gate"].workers == 1)
        await feed(running, range(4, 8))
        gate.open()
        stats = await running.join()
    sink.assert_exactly_once(range(8))
    assert_balanced(stats)


@pytest.mark.anyio
async def test_scale_down_then_up_revives_busy_workers_instead_of_adding() -> None:
    dial = Dial(4)
    gate, sink = Gate(), Sink()
    flow = Flow().add(gate, dial.capacity(min_workers=1, max_workers=4, initial_workers=4))
    flow.add(sink, name="sink")
    async with flow.start() as running:
        await feed(running, range(4), close=False)
        await poll_until(lambda: len(gate.inside) == 4)
        dial.target = 1
        await dial.ticked()
        dial.target = 4
        await dial.ticked()
        assert running.stats().jobs["Gate"].workers == 4  # never above max_workers
        gate.open()
        await poll_until(lambda: running.stats().jobs["Gate"].completed == 4)
        assert running.stats().jobs["Gate"].workers == 4  # revived: nobody left
        await feed(running, range(4, 20))
        stats = await running.join()
    sink.assert_exactly_once(range(20))
    assert_balanced(stats)


@pytest.mark.anyio
async def test_scale_down_while_workers_are_blocked_sending_delivers_each_item_once() -> None:
    dial = Dial(4)
    down, sink = Gate(), Sink()
    flow = Flow().add(
        identity, dial.capacity(min_workers=1, max_workers=4, initial_workers=4), name="up"
    )
    flow.add(down, Capacity(min_workers=1, max_workers=1, queue_length=0), name="down")
    flow.add(sink, name="sink")
    async with flow.start() as running:
        await feed(running, range(6), close=False)
        # down holds item 0; up's 4 workers hold 1..4, blocked on the rendezvous queue (and
        # the worker that handed item 0 over has taken item 4: 5 received)
        await poll_until(
            lambda: (
                len(down.inside) == 1
                and running.stats().jobs["up"].blocked == 4
                and running.stats().jobs["up"].received == 5
            )
        )
        dial.target = 1
        await dial.ticked()
        up = running.stats().jobs["up"]
        assert (up.workers, up.blocked, up.scale_downs > 0) == (4, 4, True)
        down.open()
        await poll_until(lambda: running.stats().jobs["sink"].completed == 6)
        await poll_until(lambda: running.stats().jobs["up"].workers == 1)
        await running.close()
        stats = await running.join()
    sink.assert_exactly_once(range(6))
    assert_balanced(stats)
    assert stats.jobs["up"].completed == 6


class RetireOnArrival:
    """Hands an item to the idle worker and retires that worker in the same instant.

    ``decide`` runs synchronously in the scaler: it puts an item into the job's queue
    without waiting (white-box: ``RunningFlow._run.input``), which gives it straight to
    the worker waiting for input, then asks for 0 workers, which retires that worker
    before it has run again.
    """

    def __init__(self) -> None:
        self.running: RunningFlow | None = None
        self.sent = 0

    def decide(self, sample: ScalingSample) -> int:
        if self.running is not None and sample.workers == 1 and sample.idle and self.sent < 20:
            self.running._run.input.send_nowait(self.sent)
            self.sent += 1
            return 0
        return sample.workers


@pytest.mark.anyio
@pytest.mark.parametrize("ordered", [False, True], ids=["plain", "ordered"])
async def test_an_item_arriving_as_its_worker_is_retired_is_processed_once(ordered: bool) -> None:
    """The retirement loses the race: the worker processes the item (measured: all 20
    hand-overs take this path on both backends)."""
    strategy = RetireOnArrival()
    factory, sink = Factory(identity), Sink()
    capacity = UtilizationCapacity(
        min_workers=0, max_workers=1, initial_workers=1, sampling=0.001, strategy=lambda: strategy
    )
    flow = Flow().add(factory.factory, capacity, name="job", ordered=ordered)
    flow.add(sink, name="sink")
    async with flow.start() as running:
        strategy.running = running
        await poll_until(lambda: strategy.sent == 20 and len(sink.items) == 20)
        await running.close()
        stats = await running.join()
    sink.assert_exactly_once(range(20))
    if ordered:
        assert sink.items == list(range(20))
    assert stats.jobs["job"].received == 20
    assert_balanced(stats)
    assert factory.enters == factory.exits


async def identity(item: Any) -> Any:
    return item


class Flapping:
    """Every tick, the other extreme: max_workers, then min_workers, then max..."""

    def __init__(self) -> None:
        self.ticks = 0

    def decide(self, sample: ScalingSample) -> int:
        self.ticks += 1
        return sample.max_workers if self.ticks % 2 else sample.min_workers


@pytest.mark.anyio
@pytest.mark.parametrize("seed", range(12))
async def test_scale_churn_racing_the_end_of_input_delivers_each_item_once(seed: int) -> None:
    rng = random.Random(seed)
    n = 0 if seed == 0 else rng.randrange(1, 400)
    pauses = [rng.randrange(0, 4) for _ in range(64)]

    async def work(item: int) -> int:
        for _ in range(pauses[item % 64]):
            await checkpoint()
        return item

    factories = [Factory(work) for _ in range(3)]
    sink = Sink()
    churn: dict[str, Any] = {"sampling": 0.001, "strategy": Flapping}
    flow = Flow()
    flow.add(
        factories[0].factory,
        UtilizationCapacity(min_workers=1, max_workers=16, queue_length=2, **churn),
        name="a",
    )
    flow.add(
        factories[1].factory,
        UtilizationCapacity(min_workers=0, max_workers=8, queue_length=0, **churn),
        name="b",
    )
    flow.add(
        factories[2].factory,
        UtilizationCapacity(min_workers=2, max_workers=5, queue_length=1, **churn),
        name="c",
    )
    flow.add(sink, name="sink")
    before = live_tasks()
    with anyio.fail_after(HANG_GUARD):
        stats = await flow.run(range(n))
    assert live_tasks() <= before
    sink.assert_exactly_once(range(n))
    assert_balanced(stats)
    for factory in factories:
        assert factory.enters == factory.exits
    for name in "abc":
        assert stats.jobs[name].workers == 0


# -- end of input with many workers per job ----------------------------------------------------


@pytest.mark.anyio
async def test_end_of_input_with_many_workers_reaches_each_job_exactly_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every worker exits, and each job ends its output once, after its last worker left.

    White-box: ``Job.finish`` is wrapped to record each call (the public effects --
    all items delivered, the run drained, every factory exited -- are checked too).
    """
    finishes: list[tuple[str, int, bool]] = []
    original = flowrhythm._run._job.Job.finish

    def finish(job: Any) -> None:
        finishes.append((job.name, job.counters.workers, job.finished))
        original(job)

    monkeypatch.setattr(flowrhythm._run._job.Job, "finish", finish)

    async def hop(item: int) -> int:
        if item % 3:
            await checkpoint()
        return item

    factories = [Factory(hop) for _ in range(3)]
    sink = Sink()
    flow = Flow()
    for index, (workers, queue) in enumerate([(64, 1), (50, 0), (33, 3)]):
        flow.add(
            factories[index].factory,
            Capacity(min_workers=workers, max_workers=workers, queue_length=queue),
            name=f"job{index}",
        )
    flow.add(sink, Capacity(min_workers=7, max_workers=7, queue_length=0), name="sink")
    errors = Sink()
    flow.add_error_job(errors, Capacity(min_workers=5, max_workers=5), name="errors")
    before = live_tasks()
    with anyio.fail_after(HANG_GUARD):
        async with flow.stream(range(3000)) as results:
            outputs = [out async for out in results]
    assert live_tasks() <= before
    assert outputs == [None] * 3000
    sink.assert_exactly_once(range(3000))
    assert [factory.enters for factory in factories] == [64, 50, 33]
    assert [factory.exits for factory in factories] == [64, 50, 33]
    effective = [(name, workers) for name, workers, already in finishes if not already]
    assert effective == [
        ("job0", 0),
        ("job1", 0),
        ("job2", 0),
        ("sink", 0),
        ("errors", 0),
    ]


# -- a processor raising -----------------------------------------------------------------------


class ErrorLog:
    def __init__(self) -> None:
        self.errors: list[ErrorItem] = []

    async def __call__(self, error: ErrorItem) -> None:
        self.errors.append(error)


@pytest.mark.anyio
async def test_an_exception_is_routed_exactly_once() -> None:
    async def fail_threes(item: int) -> int:
        if item % 3 == 0:
            raise Boom(item)
        return item

    log, sink = ErrorLog(), Sink()
    flow = Flow().add(fail_threes, Capacity(min_workers=4, max_workers=4), name="f")
    flow.add(sink, name="sink").add_error_job(log, name="errors")
    with anyio.fail_after(HANG_GUARD):
        stats = await flow.run(range(300))
    assert sorted(e.item for e in log.errors) == list(range(0, 300, 3))
    assert all(type(e.exception) is Boom and e.job == "f" for e in log.errors)
    assert all(e.exception.args == (e.item,) for e in log.errors)
    sink.assert_exactly_once([i for i in range(300) if i % 3])
    assert stats.jobs["f"].errored == 100
    assert stats.jobs["errors"].received == 100
    assert_balanced(stats)


@pytest.mark.anyio
async def test_an_exception_group_is_routed_once_and_except_star_still_works() -> None:
    groups: dict[int, ExceptionGroup[Exception]] = {}

    async def fail_as_group(item: int) -> int:
        if item % 2:
            groups[item] = ExceptionGroup("two", [Boom(item), Other(item)])
            raise groups[item]
        return item

    log = ErrorLog()
    flow = Flow().add(fail_as_group, Capacity(min_workers=3, max_workers=3), name="g")
    flow.add_error_job(log, name="errors")
    with anyio.fail_after(HANG_GUARD):
        stats = await flow.run(range(50))
    assert sorted(e.item for e in log.errors) == list(range(1, 50, 2))
    assert stats.jobs["g"].errored == 25
    for error in log.errors:
        assert error.exception is groups[error.item]  # routed as it is, not wrapped
        booms: list[BaseException] = []
        others: list[BaseException] = []
        try:
            raise error.exception
        except* Boom as caught:
            booms.extend(caught.exceptions)
        except* Other as caught:
            others.extend(caught.exceptions)
        assert [b.args for b in booms] == [(error.item,)]
        assert [o.args for o in others] == [(error.item,)]


@pytest.mark.anyio
async def test_an_exception_group_without_error_job_fails_the_run_findable_with_except_star() -> (
    None
):
    group = ExceptionGroup("inner", [Boom(1)])

    async def fail(item: int) -> int:
        raise group

    caught: list[BaseException] = []
    with anyio.fail_after(HANG_GUARD):
        try:
            await Flow().add(fail).run(range(5))
        except* Boom as found:
            caught.extend(leaves(found))
    assert len(caught) == 1
    assert caught[0] is group.exceptions[0]


@pytest.mark.anyio
async def test_a_base_exception_group_is_not_routed() -> None:
    class Abort(BaseException):
        pass

    async def fail(item: int) -> int:
        raise BaseExceptionGroup("base", [Abort()])

    log = ErrorLog()
    flow = Flow().add(fail).add_error_job(log)
    with anyio.fail_after(HANG_GUARD), pytest.RaisesGroup(Abort, flatten_subgroups=True):
        await flow.run(range(5))
    assert log.errors == []


# KeyboardInterrupt and SystemExit, measured in a fresh event loop: on asyncio a
# KeyboardInterrupt/SystemExit raised in a task leaves the event loop at once (asyncio
# re-raises them from Task.__step), so it cannot be caught inside an async test.
#
# What the caller of ``anyio.run(main)`` / ``asyncio.run`` / ``trio.run`` sees when a
# processor raises one of them (measured here):
#   asyncio: the bare exception (``KeyboardInterrupt()`` / ``SystemExit()``); asyncio's
#            runner then cancels every remaining task of the run.
#   trio:    ``BaseExceptionGroup("Exceptions from Trio nursery", [KeyboardInterrupt()])``
#            (or ``[SystemExit()]``): the run's task group raises it as anyio does.
# Either way it is never routed to the error job, and every worker is torn down (its
# ProcessorFactory context is exited).


def _measure_interrupt(
    backend: str, exc_type: type[BaseException]
) -> tuple[BaseException, Factory, ErrorLog]:
    """Run a flow whose item 2 raises ``exc_type`` while items 0 and 1 are being processed.

    Items 0 and 1 spin through checkpoints (a busy processor: runnable, not waiting) -- as
    in any pipeline doing work at that instant.
    """
    busy: list[int] = []
    both_busy: list[anyio.Event] = []

    async def work(item: int) -> int:
        if item < 2:
            busy.append(item)
            if len(busy) == 2:
                both_busy[0].set()
            while True:
                await checkpoint()
        if item == 2:
            await both_busy[0].wait()
            raise exc_type
        return item

    factory, log = Factory(work), ErrorLog()
    flow = Flow().add(factory.factory, Capacity(min_workers=3, max_workers=3), name="work")
    flow.add(identity, Capacity(min_workers=2, max_workers=2), name="next")
    flow.add_error_job(log, name="errors")

    async def main() -> None:
        both_busy.append(anyio.Event())
        await flow.run(range(100))

    with pytest.raises(BaseException) as info:  # noqa: PT011 - the form is what is measured
        anyio.run(main, backend=backend)
    return info.value, factory, log


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_and_system_exit_are_not_routed_and_tear_the_run_down(
    backend: str, exc_type: type[BaseException]
) -> None:
    raised, factory, log = _measure_interrupt(backend, exc_type)
    if backend == "asyncio":
        assert type(raised) is exc_type
    else:
        assert type(raised) is BaseExceptionGroup
        assert [type(leaf) for leaf in leaves(raised)] == [exc_type]
    assert log.errors == []
    assert factory.enters == factory.exits == 3


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_after_an_interrupt_the_other_workers_see_cancellation_not_an_error(
    backend: str, exc_type: type[BaseException]
) -> None:
    """asyncio's runner cancels the remaining tasks natively (``Task.cancel()``) after a
    KeyboardInterrupt/SystemExit; a worker must not take that real cancellation for one
    its processor raised by itself (it used to turn it into a RuntimeError, logged as
    "unhandled exception during asyncio.run() shutdown")."""
    _, factory, _ = _measure_interrupt(backend, exc_type)
    seen = {type(exc).__name__ for exc in factory.exit_exceptions}
    assert "RuntimeError" not in seen, seen
    assert seen <= {exc_type.__name__, "CancelledError", "Cancelled"}


SPURIOUS_SHAPES = ["plain", "generator", "ordered", "batch", "retry-timeout", "factory"]


def _spurious_flow(shape: str, raise_it: Callable[[], BaseException]) -> Flow:
    async def plain(item: Any) -> Any:
        if item == 7 or item == [7]:
            raise raise_it()
        return item

    async def generator(item: Any) -> AsyncIterator[Any]:
        yield item
        if item == 7:
            raise raise_it()

    @contextlib.asynccontextmanager
    async def make() -> AsyncIterator[Callable[[Any], Any]]:
        yield plain

    flow = Flow()
    options: dict[str, Any] = {}
    processor: Any = plain
    if shape == "generator":
        processor = generator
    elif shape == "ordered":
        options["ordered"] = True
    elif shape == "batch":
        from flowrhythm import Batch

        options["batch"] = Batch(size=1, timeout=0)
    elif shape == "retry-timeout":
        from flowrhythm import Retry

        options["retry"] = Retry(attempts=3, backoff=0)
        options["timeout"] = 5
    elif shape == "factory":
        processor = ProcessorFactory(make)
    return flow.add(processor, Capacity(min_workers=2, max_workers=2), name="job", **options)


@pytest.mark.anyio
@pytest.mark.parametrize("with_error_job", [False, True], ids=["no-error-job", "error-job"])
@pytest.mark.parametrize("shape", SPURIOUS_SHAPES)
async def test_a_cancellation_exception_raised_while_not_cancelled_fails_the_run(
    shape: str, with_error_job: bool
) -> None:
    flow = _spurious_flow(shape, cancelled_exception)
    log = ErrorLog()
    if with_error_job:
        flow.add_error_job(log, name="errors")
    with (
        anyio.fail_after(HANG_GUARD),
        pytest.RaisesGroup(
            pytest.RaisesExc(RuntimeError, match="cancellation"), flatten_subgroups=True
        ),
    ):
        await flow.run(range(20))
    assert log.errors == []


@pytest.mark.anyio
async def test_a_leaked_real_cancellation_fails_the_run() -> None:
    """The cancellation of a scope *inside* the processor, re-raised outside that scope."""

    async def leak(item: int) -> int:
        saved: BaseException | None = None
        with anyio.CancelScope() as scope:
            scope.cancel()
            try:
                await anyio.sleep(1)
            except anyio.get_cancelled_exc_class() as exc:
                saved = exc
        if item == 3 and saved is not None:
            raise saved
        return item

    with anyio.fail_after(HANG_GUARD), pytest.RaisesGroup(RuntimeError, flatten_subgroups=True):
        await Flow().add(leak).run(range(10))


@pytest.mark.anyio
async def test_the_error_job_raising_the_cancellation_exception_fails_the_run() -> None:
    async def report(error: ErrorItem) -> None:
        raise cancelled_exception()

    async def fail(item: int) -> int:
        raise Boom(item)

    flow = Flow().add(fail).add_error_job(report)
    with anyio.fail_after(HANG_GUARD), pytest.RaisesGroup(RuntimeError, flatten_subgroups=True):
        await flow.run(range(10))


# -- the error job raising -----------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("error_queue", [0, 1, 100])
async def test_an_error_job_that_raises_fails_the_run_without_hanging(error_queue: int) -> None:
    class ReportFailed(Exception):
        pass

    async def fail(item: int) -> int:
        raise Boom(item)

    async def report(error: ErrorItem) -> None:
        raise ReportFailed(error.item)

    flow = Flow().add(fail, Capacity(min_workers=4, max_workers=4, queue_length=1), name="f")
    flow.add_error_job(report, Capacity(queue_length=error_queue), name="errors")
    before = live_tasks()
    with (
        anyio.fail_after(HANG_GUARD),
        pytest.RaisesGroup(ReportFailed, flatten_subgroups=True) as info,
    ):
        await flow.run(range(1000))
    assert live_tasks() <= before
    assert len(leaves(info.value)) == 1


@pytest.mark.anyio
async def test_an_error_job_that_re_raises_fails_the_run_with_the_original_error() -> None:
    originals: list[Boom] = []

    async def fail(item: int) -> int:
        originals.append(Boom(item))
        raise originals[-1]

    async def report(error: ErrorItem) -> None:
        raise error.exception

    flow = Flow().add(fail).add_error_job(report)
    with anyio.fail_after(HANG_GUARD), pytest.RaisesGroup(Boom, flatten_subgroups=True) as info:
        await flow.run(range(10))
    (leaf,) = leaves(info.value)
    assert leaf is originals[0]


@pytest.mark.anyio
async def test_an_error_job_that_raises_keeps_the_original_error() -> None:
    """The run fails with the error job's exception, chained to the failure it handled."""
    original = Boom("the item's failure")

    async def fail(item: int) -> int:
        raise original

    async def report(error: ErrorItem) -> None:
        raise ConnectionError("the error sink is down")

    flow = Flow().add(fail).add_error_job(report)
    with (
        anyio.fail_after(HANG_GUARD),
        pytest.RaisesGroup(ConnectionError, flatten_subgroups=True) as info,
    ):
        await flow.run(range(1))
    (leaf,) = leaves(info.value)
    chain = [leaf.__cause__, leaf.__context__]
    assert original in chain


# -- a slow error job with a small queue: backpressure, no deadlock ---------------------------


class CountingUtilization:
    """The default strategy, counting its ticks (to wait for the scaler by events)."""

    def __init__(self) -> None:
        self.inner = UtilizationStrategy()
        self.dial = Dial(0)
        self.decisions: list[int] = []

    def decide(self, sample: ScalingSample) -> Any:
        self.dial.decide(sample)
        decision = self.inner.decide(sample)
        self.decisions.append(decision if isinstance(decision, int) else decision[0])
        return decision


@pytest.mark.anyio
async def test_a_slow_error_job_with_a_small_queue_applies_backpressure() -> None:
    counting = CountingUtilization()

    async def fail(item: int) -> int:
        raise Boom(item)

    routed: list[Any] = []
    report = Gate(lambda error: routed.append(error.item))
    flow = Flow().add(
        fail,
        UtilizationCapacity(
            min_workers=3, max_workers=8, queue_length=2, sampling=0.001, strategy=lambda: counting
        ),
        name="f",
    )
    flow.add_error_job(report, Capacity(queue_length=1), name="errors")
    async with flow.start() as running, anyio.create_task_group() as feeder:
        feeder.start_soon(feed, running, range(200))
        # the error job holds 1 item, 1 waits in its queue, f's 3 workers are blocked
        # handing theirs on, 2 wait in f's queue, and the feeder waits with the next one
        await poll_until(
            lambda: (
                len(report.inside) == 1
                and running.stats().jobs["f"].blocked == 3
                and running.stats().items_in == 1 + 1 + 3 + 2
            )
        )
        await counting.dial.ticked(5)
        stats = running.stats()
        assert stats.items_in == 1 + 1 + 3 + 2  # the feeder still waits with the next one
        assert stats.jobs["f"].workers == 3  # blocked workers are not busy: no growth
        assert stats.jobs["f"].scale_ups == 0
        report.open()
        stats = await running.join()
    assert stats.jobs["errors"].received == stats.jobs["f"].errored == 200
    assert sorted(routed) == list(range(200))
    assert_balanced(stats)


@pytest.mark.anyio
async def test_a_slow_error_job_fed_by_many_jobs_never_deadlocks() -> None:
    async def fail_odd(item: int) -> int:
        if item % 2:
            raise Boom(item)
        return item

    errors: list[ErrorItem] = []

    async def slow_report(error: ErrorItem) -> None:
        for _ in range(3):
            await checkpoint()
        errors.append(error)

    flow = Flow()
    for index in range(4):
        flow.add(
            fail_odd,
            Capacity(min_workers=3, max_workers=3, queue_length=index % 2),
            name=f"j{index}",
        )
    flow.add_error_job(slow_report, Capacity(min_workers=1, max_workers=1, queue_length=0))
    with anyio.fail_after(HANG_GUARD):
        stats = await flow.run(range(2000))
    assert sorted(e.item for e in errors) == list(range(1, 2000, 2))
    assert [e.job for e in errors].count("j0") == 1000
    assert_balanced(stats)


# -- a failing scaler fails the run ------------------------------------------------------------


class StrategyFailed(Exception):
    pass


class Raising:
    def __init__(self) -> None:
        self.ticks = 0

    def decide(self, sample: ScalingSample) -> int:
        self.ticks += 1
        if self.ticks == 3:
            raise StrategyFailed
        return sample.workers


class ReturnsFloat:
    def decide(self, sample: ScalingSample) -> Any:
        return 2.0


class ReturnsBool:
    def decide(self, sample: ScalingSample) -> Any:
        return True


class ReturnsNone:
    def decide(self, sample: ScalingSample) -> Any:
        return None


def factory_raising() -> Any:
    raise StrategyFailed


def factory_without_decide() -> Any:
    return object()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("strategy", "error"),
    [
        pytest.param(Raising, StrategyFailed, id="decide-raises"),
        pytest.param(ReturnsFloat, TypeError, id="returns-float"),
        pytest.param(ReturnsBool, TypeError, id="returns-bool"),
        pytest.param(ReturnsNone, TypeError, id="returns-None"),
        pytest.param(factory_raising, StrategyFailed, id="factory-raises"),
        pytest.param(factory_without_decide, TypeError, id="factory-without-decide"),
    ],
)
async def test_a_failing_strategy_fails_the_run_instead_of_freezing_the_worker_count(
    strategy: Callable[[], Any], error: type[Exception]
) -> None:
    gate = Gate()
    capacity = UtilizationCapacity(min_workers=1, max_workers=4, sampling=0.001, strategy=strategy)
    flow = Flow().add(gate, capacity)
    with anyio.fail_after(HANG_GUARD), pytest.RaisesGroup(error, flatten_subgroups=True):
        async with flow.start() as running:
            await feed(running, range(3), close=False)
            await anyio.sleep_forever()  # the items are held: only a failure ends this


@pytest.mark.anyio
async def test_an_on_scale_callback_that_raises_fails_the_run() -> None:
    def on_scale(event: Any) -> None:
        raise StrategyFailed(event)

    dial = Dial(3)
    flow = Flow().add(Gate(), dial.capacity(min_workers=1, max_workers=4))
    with anyio.fail_after(HANG_GUARD), pytest.RaisesGroup(StrategyFailed, flatten_subgroups=True):
        async with flow.start(on_scale=on_scale) as running:
            await feed(running, range(3), close=False)
            await anyio.sleep_forever()


@pytest.mark.anyio
@pytest.mark.parametrize(("wanted", "expected"), [(10**9, 4), (-(10**9), 1)])
async def test_a_strategy_out_of_range_is_clamped(wanted: int, expected: int) -> None:
    dial = Dial(wanted)
    gate = Gate()
    flow = Flow().add(gate, dial.capacity(min_workers=1, max_workers=4, initial_workers=2))
    async with flow.start() as running:
        await dial.ticked()
        assert running.stats().jobs["Gate"].workers == expected
        gate.open()
