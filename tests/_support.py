"""Plain helpers shared by the test modules (fixtures live in ``conftest.py``).

This is the one home of what more than one test module uses; a test module never
imports another test module (``test_structure.py`` checks it). Functions that run in
other processes live in ``offload_helpers.py`` instead: a worker process imports them
by module and name, and that module keeps their import light.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import io
import warnings
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import anyio
import pytest
import sniffio
import trio
import trio.testing
from anyio.lowlevel import checkpoint
from rich.console import Console
from trio.testing import MockClock

from flowrhythm import (
    Capacity,
    ErrorItem,
    Flow,
    FlowStats,
    ProcessorFactory,
    RunningFlow,
    ScalingSample,
    StopProcessing,
    UtilizationCapacity,
)

#: Seconds. A generous guard so that a broken run fails instead of hanging;
#: never a measurement.
HANG_GUARD = 10

#: The repository's root directory.
ROOT = Path(__file__).resolve().parent.parent

# -- running a flow ------------------------------------------------------------------------------


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Let every other task run until ``predicate()`` holds (guarded against hangs)."""
    with anyio.fail_after(HANG_GUARD):
        while not predicate():
            await anyio.wait_all_tasks_blocked()


async def poll_until(predicate: Callable[[], bool], guard: float | None = None) -> None:
    """Yield to the other tasks until ``predicate()`` holds (guarded against hangs).

    :func:`wait_until` waits for every task to block, which anyio's asyncio
    backend checks by sleeping 0.1 s whenever one is runnable -- and a scaler ticking
    every millisecond always is. Here the condition is simply re-checked after every
    scheduling round.
    """
    with anyio.fail_after(HANG_GUARD if guard is None else guard):
        while not predicate():
            await checkpoint()


async def settle() -> None:
    """Return once every other task of the loop is blocked (the flow is quiescent).

    anyio's ``wait_all_tasks_blocked`` on asyncio sleeps 0.1 s each time it finds a
    runnable task; with scalers ticking every millisecond that is nearly always, so
    on asyncio the same check is made after every scheduling round instead.
    """
    with anyio.fail_after(HANG_GUARD):
        if sniffio.current_async_library() == "trio":
            await trio.testing.wait_all_tasks_blocked()
            return
        this = asyncio.current_task()
        while True:
            await asyncio.sleep(0)
            if all(
                task is this
                or (
                    (waiter := getattr(task, "_fut_waiter", None)) is not None
                    and not waiter.done()
                )
                for task in asyncio.all_tasks()
            ):
                return


async def collect(flow: Flow, source: Iterable[Any] | AsyncIterable[Any]) -> list[Any]:
    """Every output of the last job of ``flow`` over ``source``, in arrival order."""
    with anyio.fail_after(HANG_GUARD):
        async with flow.stream(source) as results:
            return [out async for out in results]


async def run(flow: Flow, source: Iterable[Any] | AsyncIterable[Any]) -> FlowStats:
    """``flow.run(source)`` under the hang guard."""
    with anyio.fail_after(HANG_GUARD):
        return await flow.run(source)


async def feed(running: RunningFlow, items: Any, close: bool = True) -> None:
    """Send every item of ``items`` into ``running``, then close its input (unless told not to)."""
    for item in items:
        await running.send(item)
    if close:
        await running.close()


# -- what a run leaves behind ----------------------------------------------------------------------


def leaves(exc: BaseException) -> list[BaseException]:
    """The non-group exceptions inside ``exc`` (``exc`` itself if it is not a group)."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in leaves(sub)]
    return [exc]


def running_tasks() -> object:
    """What is running besides the current task, to compare before/after a run.

    On asyncio, every unfinished task of the loop; on trio, the nurseries still open
    in the current task (a run cannot hide a task anywhere else without trio APIs).
    """
    if sniffio.current_async_library() == "asyncio":
        return frozenset(asyncio.all_tasks())
    return tuple(trio.lowlevel.current_task().child_nurseries)


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


async def tasks_besides_this() -> set[object]:
    """:func:`live_tasks` without the task that asks."""
    this: object = (
        trio.lowlevel.current_task()
        if sniffio.current_async_library() == "trio"
        else asyncio.current_task()
    )
    return live_tasks() - {this}


def assert_no_unclosed_streams() -> None:
    """Collect garbage and fail on any ResourceWarning (an unclosed memory stream).

    A module applies it after each of its tests with
    ``pytest.mark.usefixtures("no_unclosed_streams")`` (the fixture is in ``conftest.py``).
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    leaked = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaked, leaked


def assert_balanced(stats: FlowStats) -> None:
    """Every job's input ended once: completed, skipped or errored."""
    for name, job in stats.jobs.items():
        assert job.received == job.completed + job.skipped + job.errored, (name, job)


# -- backends and clocks ----------------------------------------------------------------------------------------


#: asyncio in debug mode: it reports where a coroutine never awaited was made, loop calls
#: from other threads, and callbacks that block the loop. It records a stack for every
#: callback it schedules, which makes a run about three times slower.
ASYNCIO_DEBUG: Any = pytest.param(("asyncio", {"debug": True}), id="asyncio-debug")

#: Every backend an async test runs on (the ``anyio_backend`` fixture in ``conftest.py``):
#: asyncio, trio, asyncio in debug mode, and asyncio on uvloop where it is installed.
BACKENDS: list[Any] = [
    pytest.param("asyncio", id="asyncio"),
    pytest.param("trio", id="trio"),
    ASYNCIO_DEBUG,
]
if importlib.util.find_spec("uvloop") is not None:
    BACKENDS.append(pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"))

#: How much longer the hang guard is in asyncio's debug mode (``conftest.py`` applies it).
DEBUG_GUARD_FACTOR = 3


def backend_id(anyio_backend: Any) -> str:
    """A backend's id in :data:`BACKENDS`: ``asyncio``, ``trio``, ``asyncio-debug`` or ``uvloop``."""
    if isinstance(anyio_backend, tuple):
        name, options = anyio_backend
        if options.get("use_uvloop"):
            return "uvloop"
        return "asyncio-debug" if options.get("debug") else str(name)
    return str(anyio_backend)


def not_in_debug_mode() -> pytest.MarkDecorator:
    """Every backend but asyncio's debug mode: for a test of volume.

    A test that pushes thousands of items or workers, or repeats a run at many random
    instants, takes no path in debug mode that the smaller tests do not take, and costs
    there about three times as long; it runs on the other backends only.
    """
    return pytest.mark.parametrize(
        "anyio_backend", [backend for backend in BACKENDS if backend is not ASYNCIO_DEBUG]
    )


#: The backends ``flowrhythm.testing.run_virtual`` runs a test on, in virtual time.
VIRTUAL_BACKENDS = ["asyncio", "trio"]


def mock_trio() -> Any:
    """The trio backend with a fresh autojumping ``MockClock`` (sleeps return at once)."""
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


# -- capacities ------------------------------------------------------------------------------------

ONE = Capacity(min_workers=1, max_workers=1)
THREE = Capacity(min_workers=3, max_workers=3)
NEVER = 3600.0  # seconds: a batch timeout or back-off that never fires within a test


def fixed(workers: int, queue_length: int = 100) -> Capacity:
    return Capacity(min_workers=workers, max_workers=workers, queue_length=queue_length)


def scaling(low: int, high: int, queue_length: int = 100) -> UtilizationCapacity:
    """A capacity that rescales every 2 ms and shrinks without a cooldown."""
    return UtilizationCapacity(
        min_workers=low, max_workers=high, queue_length=queue_length, sampling=0.002, cooldown=0.0
    )


class Flapping:
    """Every tick, the other extreme: max_workers, then min_workers (retirements galore)."""

    def __init__(self) -> None:
        self.ticks = 0

    def decide(self, sample: ScalingSample) -> int:
        self.ticks += 1
        return sample.max_workers if self.ticks % 2 else sample.min_workers


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


# -- processors ------------------------------------------------------------------------------------


class Boom(Exception):
    """The failure a test processor raises."""


async def identity(item: Any) -> Any:
    return item


async def inc(item: int) -> int:
    return item + 1


def sync_inc(item: int) -> int:
    return item + 1


async def swallow(error: ErrorItem) -> None:
    """An error job that drops every error."""


def outcome_of(plan: dict[int, str], item: int) -> int:
    """What a processor does with ``item``: return it, fail, fail in a group, or skip it."""
    match plan[item]:
        case "fail":
            raise Boom(item)
        case "group":
            raise ExceptionGroup("group", [Boom(item)])
        case "skip":
            raise StopProcessing
    return item


class Sink:
    """A last job that records what reaches it (in ``seen``)."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def __call__(self, item: Any) -> None:
        self.seen.append(item)

    def assert_exactly_once(self, expected: Any) -> None:
        counts = Counter(self.seen)
        assert sorted(counts) == sorted(expected)
        assert [item for item, n in counts.items() if n != 1] == []


class ErrorLog:
    """An error job that records every ErrorItem (or every list of them, when batched)."""

    def __init__(self) -> None:
        self.errors: list[ErrorItem] = []
        self.calls = 0

    async def __call__(self, error: ErrorItem | list[ErrorItem]) -> None:
        self.calls += 1
        self.errors.extend(error if isinstance(error, list) else [error])


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


# -- output ----------------------------------------------------------------------------------------


def not_a_terminal(out: io.StringIO) -> Console:
    """A console on ``out`` that is no terminal, whatever FORCE_COLOR and the like say."""
    return Console(file=out, width=200, force_terminal=False)
