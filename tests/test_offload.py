"""Offload: ``executor="thread"`` / ``"process"`` / a concurrent.futures.Executor.

Functions that run in other processes live in ``offload_helpers`` (they must be
importable there). Calls in flight are counted inside the function: with a
lock-protected counter for threads, with marker files for processes. Steps are
ordered with ``threading.Event`` s, or by waiting (in a thread) for marker files,
never with sleeps. The one allowed skip: the Dask tests need the optional extra
``flowrhythm[dask]`` (``distributed``).
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeAlias

import anyio
import pytest
from _support import HANG_GUARD, collect, leaves, run, wait_until
from offload_helpers import (
    GATE_GUARD,
    InFlight,
    Unpicklable,
    fail_on_three,
    gated_call,
    raise_unpicklable,
    release,
    return_unpicklable,
    running_markers,
    seen,
    square,
    wait_for_markers,
    where,
)

from flowrhythm import Capacity, ErrorItem, Flow, FlowStats, UtilizationCapacity

pytestmark = pytest.mark.anyio

Offload: TypeAlias = Literal["thread", "process"] | Executor

#: Every kind of ``executor=`` that runs on this machine (Dask has its own tests below).
KINDS = ["thread", "process", "thread-pool", "process-pool"]
IN_THREADS = {"thread", "thread-pool"}


def fixed(workers: int) -> Capacity:
    return Capacity(min_workers=workers, max_workers=workers)


class Errors:
    """An error job that records what it receives."""

    def __init__(self) -> None:
        self.items: list[ErrorItem] = []

    async def __call__(self, error: ErrorItem) -> None:
        self.items.append(error)


@pytest.fixture(scope="module")
def process_pool() -> Iterator[ProcessPoolExecutor]:
    """One pool for the module: starting processes is the slow part.

    Spawned, not forked: forking a process that runs threads is deprecated
    (a DeprecationWarning from Python 3.12 on), and the tests run threads.
    """
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def executor(kind: str, request: pytest.FixtureRequest) -> Iterator[Offload]:
    """What ``executor=`` gets for ``kind``."""
    if kind == "thread-pool":
        with ThreadPoolExecutor(8) as pool:
            yield pool
    elif kind == "process-pool":
        process_pool: ProcessPoolExecutor = request.getfixturevalue("process_pool")
        yield process_pool
    else:
        yield "thread" if kind == "thread" else "process"


# -- running calls ---------------------------------------------------------------------------


async def test_offloaded_job_delivers_every_result(kind: str, executor: Offload) -> None:
    flow = Flow().add(where, capacity=fixed(3), executor=executor).add(squared_item)
    outputs = await collect(flow, range(30))
    assert sorted(item for item, _, _ in outputs) == [square(item) for item in range(30)]
    pids = {pid for _, pid, _ in outputs}
    if kind in IN_THREADS:
        assert pids == {os.getpid()}
        assert threading.get_ident() not in {thread for _, _, thread in outputs}
    else:
        assert os.getpid() not in pids


async def squared_item(out: tuple[int, int, int]) -> tuple[int, int, int]:
    item, pid, thread = out
    return square(item), pid, thread


async def test_offloaded_jobs_mix_with_async_jobs_and_locks(executor: Offload) -> None:
    lock = anyio.Lock()
    flow = (
        Flow()
        .add(add_one, capacity=fixed(2))
        .add_job_with_lock(square, lock, capacity=fixed(3), executor=executor)
        .add(add_one)
    )
    outputs = await collect(flow, range(20))
    assert Counter(outputs) == Counter(square(item + 1) + 1 for item in range(20))


async def add_one(item: int) -> int:
    await anyio.lowlevel.checkpoint()
    return item + 1


async def test_the_error_job_can_be_offloaded() -> None:
    seen: list[ErrorItem] = []
    lock = threading.Lock()

    def report(error: ErrorItem) -> None:
        with lock:
            seen.append(error)

    async def fail_on_odd(item: int) -> int:
        if item % 2:
            raise ValueError(item)
        return item

    flow = (
        Flow()
        .add(fail_on_odd, capacity=fixed(2))
        .add_error_job(report, name="report", executor="thread")
    )
    stats = await run(flow, range(10))
    assert sorted(error.item for error in seen) == [1, 3, 5, 7, 9]
    assert stats.jobs["report"].completed == 5


# -- the worker count bounds the calls in flight ---------------------------------------------


@pytest.mark.parametrize(
    ("kind", "workers"),
    [
        pytest.param("thread", 3, id="thread"),
        # Past anyio's default thread limiter (40): the job's own limiter decides.
        pytest.param("thread", 50, id="thread-50"),
        pytest.param("thread-pool", 3, id="thread-pool"),
    ],
)
async def test_worker_count_bounds_calls_in_flight_in_threads(
    executor: Offload, workers: int
) -> None:
    calls = InFlight(expected=workers)
    flow = Flow().add(calls, capacity=fixed(workers), name="job", executor=executor)
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            for item in range(3 * workers):
                await running.send(item)
            # Every worker has a call in flight, and they all wait for the gate.
            assert await anyio.to_thread.run_sync(calls.full.wait, GATE_GUARD)
            calls.release.set()
            await running.close()
            stats = await running.join()
    assert stats.jobs["job"].completed == 3 * workers
    assert calls.calls == 3 * workers
    assert calls.peak == workers


@pytest.mark.parametrize(
    ("kind", "workers"),
    [
        # Past anyio's default process limiter (one process per CPU).
        pytest.param("process", (os.cpu_count() or 1) + 1, id="process"),
        pytest.param("process-pool", 3, id="process-pool"),  # the pool has 4 processes
    ],
)
async def test_worker_count_bounds_calls_in_flight_in_processes(
    executor: Offload, workers: int, tmp_path: Path
) -> None:
    n = 3 * workers
    flow = Flow().add(
        functools.partial(gated_call, tmp_path),
        capacity=fixed(workers),
        name="job",
        executor=executor,
    )
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            for item in range(n):
                await running.send(item)
            # Every worker has a call in flight, and they all wait for the release.
            assert await anyio.to_thread.run_sync(wait_for_markers, tmp_path, workers)
            release(tmp_path)
            await running.close()
            stats = await running.join()
    assert stats.jobs["job"].completed == n
    in_flight = seen(tmp_path)
    assert sorted(in_flight) == list(range(n))
    assert max(in_flight.values()) == workers


async def test_autoscaling_grows_an_offloaded_job_and_its_calls_in_flight() -> None:
    # Blocking calls (a gate, then time.sleep) keep every worker busy while input
    # waits: the job grows, and so does the number of calls it has in flight.
    calls = InFlight(expected=8, nap=0.001)
    capacity = UtilizationCapacity(min_workers=1, max_workers=8, sampling=0.01, cooldown=0.01)
    flow = Flow().add(calls, capacity=capacity, name="job", executor="thread")
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            for item in range(40):
                await running.send(item)
            assert await anyio.to_thread.run_sync(calls.full.wait, GATE_GUARD)
            assert running.stats().jobs["job"].workers == 8
            calls.release.set()
            await running.close()
            stats = await running.join()
    job = stats.jobs["job"]
    assert job.scale_ups >= 1
    assert job.completed == 40
    assert calls.peak == 8


# -- cancellation ----------------------------------------------------------------------------


class RecordingPool(ThreadPoolExecutor):
    """A thread pool that keeps every future it hands out."""

    def __init__(self, max_workers: int) -> None:
        super().__init__(max_workers)
        self.futures: list[Future[Any]] = []

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        future = super().submit(fn, *args, **kwargs)
        self.futures.append(future)
        return future


class BlockFirst:
    """Records the calls that started and returned; the first blocks until :attr:`release`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ran: list[int] = []
        self.returned: list[int] = []
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, item: int) -> int:
        with self.lock:
            self.ran.append(item)
            first = len(self.ran) == 1
        if first:
            self.started.set()
            self.release.wait(GATE_GUARD)
        with self.lock:
            self.returned.append(item)
        return item


async def test_stop_cancels_calls_queued_in_the_executor_and_waits_for_the_running_one() -> None:
    pool = RecordingPool(1)
    calls = BlockFirst()
    flow = Flow().add(calls, capacity=fixed(4), name="job", executor=pool)
    ended = False
    try:
        with anyio.fail_after(HANG_GUARD):
            async with flow.start() as running:
                for item in range(4):
                    await running.send(item)
                # One call runs in the pool's only thread; three wait in its queue.
                await wait_until(lambda: len(pool.futures) == 4)
                assert await anyio.to_thread.run_sync(calls.started.wait, GATE_GUARD)
                running_call, *queued = pool.futures
                # The running call is released once the three queued calls are cancelled:
                # the run must cancel them, and then wait for the running one.
                cancelled: list[Future[Any]] = []

                def on_done(future: Future[Any]) -> None:
                    if future.cancelled():
                        cancelled.append(future)
                    if len(cancelled) == len(queued):
                        calls.release.set()

                for future in queued:
                    future.add_done_callback(on_done)
                running.stop()
            ended = True
        # The stopped run ended only once its running call had returned.
        assert running_call.done()
        assert calls.returned == [calls.ran[0]]
        assert len(cancelled) == 3
    finally:
        calls.release.set()
        # In a thread, so that a failing assertion above cannot hang the event loop
        # (test_shutting_down_the_executor_after_a_stop_does_not_block_on_the_loop).
        await anyio.to_thread.run_sync(pool.shutdown)
    assert ended
    assert calls.ran == [calls.ran[0]]


async def test_stop_waits_for_the_running_thread_call_and_starts_no_other() -> None:
    # anyio cannot kill a thread: the run ends once the running call returns.
    calls = BlockFirst()
    flow = Flow().add(calls, capacity=fixed(1), name="job", executor="thread")
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            for item in range(4):
                await running.send(item)
            assert await anyio.to_thread.run_sync(calls.started.wait, GATE_GUARD)
            running.stop()
            calls.release.set()
    # The run ended after the call returned, and started no other.
    assert calls.returned == [0]
    assert calls.ran == [0]


async def test_stop_waits_for_the_running_process_call_and_starts_no_other(
    tmp_path: Path,
) -> None:
    flow = Flow().add(
        functools.partial(gated_call, tmp_path), capacity=fixed(1), executor="process"
    )
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            for item in range(4):
                await running.send(item)
            assert await anyio.to_thread.run_sync(wait_for_markers, tmp_path, 1)
            running.stop()
            release(tmp_path)
    # The call removes its marker just before it returns: the run waited for it.
    assert running_markers(tmp_path) == []
    assert seen(tmp_path) == {0: 1}


async def test_shutting_down_the_executor_after_a_stop_does_not_block_on_the_loop() -> None:
    pool = RecordingPool(1)
    calls = BlockFirst()
    flow = Flow().add(calls, capacity=fixed(1), name="job", executor=pool)
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            await running.send(0)
            assert await anyio.to_thread.run_sync(calls.started.wait, GATE_GUARD)
            running.stop()
            calls.release.set()  # the stopped run waits for its running call
    # The call's completion reached the loop while the run waited for it; nothing
    # is left for the pool's thread to hand to this thread (the loop's), which
    # could be blocked in pool.shutdown() or in `with pool:`.
    [thread] = pool._threads  # the pool's only thread, to join with a guard
    pool.shutdown(wait=False)
    # What pool.shutdown() does, with a guard instead of a deadlock if it fails.
    thread.join(HANG_GUARD)
    finished = not thread.is_alive()
    await anyio.to_thread.run_sync(pool.shutdown)  # let it finish either way
    assert finished


# -- errors ----------------------------------------------------------------------------------


async def test_an_error_goes_to_the_error_job_as_the_original_exception(
    executor: Offload,
) -> None:
    errors = Errors()
    flow = Flow().add(fail_on_three, capacity=fixed(2), name="job", executor=executor)
    flow.add_error_job(errors)
    stats = await run(flow, range(6))
    [error] = errors.items
    assert error.item == 3
    assert error.job == "job"
    assert type(error.exception) is ValueError
    assert str(error.exception) == "bad item 3"
    assert stats.jobs["job"].errored == 1
    assert stats.jobs["job"].completed == 5


async def test_an_error_fails_the_run_without_an_error_job(executor: Offload) -> None:
    flow = Flow().add(fail_on_three, capacity=fixed(2), executor=executor)
    with pytest.raises(ExceptionGroup) as excinfo:
        await run(flow, range(6))
    [error] = [leaf for leaf in leaves(excinfo.value) if isinstance(leaf, Exception)]
    assert type(error) is ValueError
    assert str(error) == "bad item 3"


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("thread"),
        # Nothing is pickled on the way back from a thread pool: no RuntimeError.
        pytest.param("thread-pool"),
    ],
)
async def test_an_unpicklable_exception_from_a_thread_arrives_as_it_is(executor: Offload) -> None:
    errors = Errors()
    flow = Flow().add(raise_unpicklable, executor=executor).add_error_job(errors)
    await run(flow, range(6))
    [error] = errors.items
    assert type(error.exception) is Unpicklable
    assert error.exception.why == "cannot travel"


@pytest.mark.parametrize("kind", ["process", "process-pool"])
async def test_an_unpicklable_exception_from_a_process_is_a_runtime_error_naming_it(
    executor: Offload,
) -> None:
    errors = Errors()
    flow = Flow().add(raise_unpicklable, capacity=fixed(2), executor=executor)
    flow.add_error_job(errors)
    stats = await run(flow, range(6))
    [error] = errors.items
    assert error.item == 3
    assert type(error.exception) is RuntimeError
    assert "offload_helpers.Unpicklable" in str(error.exception)
    assert "cannot travel" in str(error.exception)
    assert stats.jobs["raise_unpicklable"].completed == 5


@pytest.mark.parametrize("kind", ["process", "process-pool"])
async def test_an_unpicklable_result_from_a_process_is_an_error(executor: Offload) -> None:
    errors = Errors()
    flow = Flow().add(return_unpicklable, executor=executor).add_error_job(errors)
    await run(flow, range(2))
    assert sorted(error.item for error in errors.items) == [0, 1]
    for error in errors.items:
        assert "pickle" in str(error.exception)


# -- validation at add time ------------------------------------------------------------------


def sync_inc(item: int) -> int:
    return item + 1


async def async_inc(item: int) -> int:
    return item + 1


async def async_gen(item: int) -> Any:
    yield item


def sync_gen(item: int) -> Iterator[int]:
    yield item


ADDERS = [
    pytest.param(lambda flow, fn, **kw: flow.add(fn, **kw), id="add"),
    pytest.param(
        lambda flow, fn, **kw: flow.add_job_with_lock(fn, anyio.Lock(), **kw), id="with_lock"
    ),
    pytest.param(lambda flow, fn, **kw: flow.add_error_job(fn, **kw), id="error_job"),
]


@pytest.mark.parametrize("add", ADDERS)
def test_a_sync_callable_without_executor_says_to_pass_one(add: Any) -> None:
    with pytest.raises(TypeError, match='executor="thread"') as excinfo:
        add(Flow(), sync_inc)
    assert 'executor="process"' in str(excinfo.value)


@pytest.mark.parametrize("add", ADDERS)
def test_every_way_to_add_takes_an_executor(add: Any) -> None:
    flow = Flow()
    assert add(flow, sync_inc, executor="thread") is flow


@pytest.mark.parametrize("add", ADDERS)
@pytest.mark.parametrize("bad", ["threads", "", "dask", "Process"])
def test_an_unknown_executor_name_is_a_value_error(add: Any, bad: str) -> None:
    with pytest.raises(ValueError, match="executor") as excinfo:
        add(Flow(), sync_inc, executor=bad)
    assert repr(bad) in str(excinfo.value)


@pytest.mark.parametrize("add", ADDERS)
@pytest.mark.parametrize(
    "bad", [pytest.param(object(), id="object"), pytest.param(4, id="int"), ThreadPoolExecutor]
)
def test_an_executor_that_is_not_an_executor_is_a_type_error(add: Any, bad: object) -> None:
    with pytest.raises(TypeError, match="executor"):
        add(Flow(), sync_inc, executor=bad)


@pytest.mark.parametrize("add", ADDERS)
@pytest.mark.parametrize("executor", ["thread", "process"])
@pytest.mark.parametrize(
    ("fn", "match"),
    [
        pytest.param(async_inc, "async callable", id="async-function"),
        pytest.param(functools.partial(async_inc), "async callable", id="async-partial"),
        pytest.param(async_gen, "async generator", id="async-generator"),
        pytest.param(sync_gen, "generator function", id="sync-generator"),
    ],
)
def test_executor_takes_only_a_plain_sync_callable(
    add: Any, executor: str, fn: object, match: str
) -> None:
    with pytest.raises(TypeError, match=match):
        add(Flow(), fn, executor=executor)


def test_an_async_callable_object_with_an_executor_is_a_type_error() -> None:
    class Job:
        async def __call__(self, item: int) -> int:
            return item

    with ThreadPoolExecutor(1) as pool, pytest.raises(TypeError, match="async"):
        Flow().add(Job(), executor=pool)


@pytest.mark.parametrize(
    "fn",
    [
        pytest.param(lambda item: item, id="lambda"),
        pytest.param(functools.partial(lambda item: item), id="partial-of-lambda"),
    ],
)
def test_process_needs_a_picklable_callable(fn: object) -> None:
    with pytest.raises(TypeError, match="picklable"):
        Flow().add(fn, executor="process")  # type: ignore[call-overload]
    # Threads take it.
    Flow().add(fn, executor="thread")  # type: ignore[call-overload]


def test_process_takes_a_partial_of_a_module_level_function(tmp_path: Path) -> None:
    Flow().add(functools.partial(gated_call, tmp_path), executor="process")


def test_a_not_callable_processor_with_an_executor_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="callable"):
        Flow().add(42, executor="thread")  # type: ignore[call-overload]


# -- Dask (the optional extra flowrhythm[dask]) ----------------------------------------------


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    """A real two-process Dask cluster on this machine, for the module."""
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


async def test_dask_executor_runs_calls_on_the_cluster(dask_client: Any) -> None:
    flow = Flow().add(where, capacity=fixed(4), executor=dask_client.get_executor())
    flow.add(squared_item)
    outputs = await collect(flow, range(40))
    assert sorted(item for item, _, _ in outputs) == [square(item) for item in range(40)]
    worker_pids = set(dask_client.run(os.getpid).values())
    assert len(worker_pids) == 2
    assert {pid for _, pid, _ in outputs} <= worker_pids


async def test_dask_executor_routes_errors(dask_client: Any) -> None:
    errors = Errors()
    flow = Flow().add(
        fail_on_three, capacity=fixed(2), name="job", executor=dask_client.get_executor()
    )
    flow.add_error_job(errors)
    stats = await run(flow, range(6))
    [error] = errors.items
    assert error.item == 3
    assert error.job == "job"
    assert type(error.exception) is ValueError
    assert str(error.exception) == "bad item 3"
    assert stats.jobs["job"].completed == 5


async def test_dask_executor_bounds_calls_in_flight(dask_client: Any, tmp_path: Path) -> None:
    # The cluster runs two calls at once; the job's single worker allows one.
    flow = Flow().add(
        functools.partial(gated_call, tmp_path),
        capacity=fixed(1),
        name="job",
        executor=dask_client.get_executor(pure=False),
    )
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            for item in range(4):
                await running.send(item)
            assert await anyio.to_thread.run_sync(wait_for_markers, tmp_path, 1)
            release(tmp_path)
            await running.close()
            stats: FlowStats = await running.join()
    assert stats.jobs["job"].completed == 4
    in_flight = seen(tmp_path)
    assert sorted(in_flight) == [0, 1, 2, 3]
    assert max(in_flight.values()) == 1
