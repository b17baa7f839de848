"""Paths benchmark: every way of driving a flow beside the same pipeline written by hand with anyio.

Each case runs a flowrhythm flow and a hand-written anyio program of the same shape (the same
jobs, workers, queue lengths and options, written the fast way: ``send_nowait`` /
``receive_nowait`` first, waiting only when a queue is full or empty, and a checkpoint every 64
items that went through without waiting, as a real library must). Both run in this process, in
the same event loop backend, interleaved repetition by repetition, and the table shows the
medians and flowrhythm's throughput divided by the hand-written one's (by wall clock and by
CPU time). ``--check`` fails when a target is missed.

The processors do nothing (``async def identity(x): return x``) except where the case says
otherwise, so the figures are the cost of the path itself: what flowrhythm adds per item, per
run or per option.

Run ``python benchmarks/paths.py --help`` for the options; ``benchmarks/README.md`` explains
the columns.
"""

from __future__ import annotations

import contextlib
import gc
import random
import sys
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any

import _bench
import anyio
from anyio import EndOfStream, WouldBlock
from anyio.lowlevel import checkpoint
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from flowrhythm import (
    Batch,
    Capacity,
    ErrorItem,
    Flow,
    ProcessorFactory,
    Retry,
    UtilizationCapacity,
)

YIELD_EVERY = 64
QUEUE = 100
HOPS = 3
DEFAULT_REPEAT = 7

Send = MemoryObjectSendStream[Any]
Receive = MemoryObjectReceiveStream[Any]
#: A case's program: given a size, run once and return how many items came out.
Program = Callable[[int], Awaitable[int]]


async def identity(x: Any) -> Any:
    return x


def fixed(workers: int, queue_length: int = QUEUE) -> Capacity:
    return Capacity(min_workers=workers, max_workers=workers, queue_length=queue_length)


class Lost(RuntimeError):
    """A program did not deliver what it should have."""


# ------------------------------------------------------------------------- hand-written pieces


async def feed(send: Send, items: Iterable[Any]) -> None:
    """A source task: nowait first, a checkpoint every YIELD_EVERY items."""
    async with send:
        budget = YIELD_EVERY
        for item in items:
            try:
                send.send_nowait(item)
            except WouldBlock:
                await send.send(item)
                budget = YIELD_EVERY
                continue
            budget -= 1
            if not budget:
                budget = YIELD_EVERY
                await checkpoint()


async def feed_async(send: Send, items: AsyncIterator[Any]) -> None:
    async with send:
        budget = YIELD_EVERY
        async for item in items:
            try:
                send.send_nowait(item)
            except WouldBlock:
                await send.send(item)
                budget = YIELD_EVERY
                continue
            budget -= 1
            if not budget:
                budget = YIELD_EVERY
                await checkpoint()


async def put(send: Send | None, value: Any) -> bool:
    """Hand ``value`` on; True if it had to wait."""
    if send is None:
        return False
    try:
        send.send_nowait(value)
    except WouldBlock:
        await send.send(value)
        return True
    return False


Call = Callable[[Any], Awaitable[Any]]


async def stage(receive: Receive, send: Send | None, call: Call, out: list[int]) -> None:
    """One worker: receive, ``await call(item)``, hand on (or count, as the last job)."""
    with receive, send if send is not None else contextlib.nullcontext():
        budget = YIELD_EVERY
        done = 0
        while True:
            try:
                item = receive.receive_nowait()
            except WouldBlock:
                try:
                    item = await receive.receive()
                except EndOfStream:
                    break
                budget = YIELD_EVERY
            except EndOfStream:
                break
            result = await call(item)
            done += 1
            if send is not None:
                try:
                    send.send_nowait(result)
                except WouldBlock:
                    await send.send(result)
                    budget = YIELD_EVERY
                    continue
            budget -= 1
            if not budget:
                budget = YIELD_EVERY
                await checkpoint()
        out.append(done)


async def pipeline(
    source: Callable[[Send], Coroutine[Any, Any, None]],
    calls: Sequence[Call],
    workers: int = 1,
    *,
    consumer: Callable[[Receive], Awaitable[int]] | None = None,
    worker: Callable[..., Coroutine[Any, Any, None]] = stage,
) -> int:
    """``source`` → one job per call (``workers`` tasks each) → discarded, or ``consumer``."""
    counts: list[int] = []
    consumed = 0
    async with anyio.create_task_group() as tg:
        send, receive = anyio.create_memory_object_stream[Any](QUEUE)
        tg.start_soon(source, send)
        for index, call in enumerate(calls):
            last = index == len(calls) - 1
            nxt: Send | None = None
            nxt_receive: Receive | None = None
            if not last or consumer is not None:
                nxt, nxt_receive = anyio.create_memory_object_stream[Any](QUEUE)
            for _ in range(workers):
                tg.start_soon(
                    worker,
                    receive.clone(),
                    nxt.clone() if nxt is not None else None,
                    call,
                    counts if last else [],
                )
            receive.close()
            if nxt is not None:
                nxt.close()
            if nxt_receive is not None:
                receive = nxt_receive
        if consumer is not None:
            consumed = await consumer(receive)
    return consumed if consumer is not None else sum(counts)


async def consume(receive: Receive) -> int:
    """Read every output in this task: nowait first, a checkpoint every YIELD_EVERY."""
    count = 0
    budget = YIELD_EVERY
    with receive:
        while True:
            budget -= 1
            if budget:
                try:
                    receive.receive_nowait()
                    count += 1
                    continue
                except WouldBlock:
                    pass
                except EndOfStream:
                    return count
            budget = YIELD_EVERY
            try:
                await receive.receive()
            except EndOfStream:
                return count
            count += 1


@dataclass
class OrderedStage:
    """The state an ordered pool of workers shares: numbering, a window, parked outputs."""

    window: int
    next_seq: int = 0
    head: int = 0
    parked: dict[int, Any] = field(default_factory=dict)
    draining: bool = False
    receiving: bool = False
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    room: anyio.Event | None = None

    async def take(self, receive: Receive) -> tuple[int, Any]:
        """The next input and its number (raises EndOfStream at the end)."""
        while True:
            if not self.receiving and self.next_seq - self.head < self.window:
                try:
                    item = receive.receive_nowait()
                except WouldBlock:
                    pass
                else:
                    seq = self.next_seq
                    self.next_seq += 1
                    return seq, item
            while self.next_seq - self.head >= self.window:
                if self.room is None:
                    self.room = anyio.Event()
                await self.room.wait()
            async with self.lock:
                if self.next_seq - self.head >= self.window:
                    continue
                try:
                    item = receive.receive_nowait()
                except WouldBlock:
                    self.receiving = True
                    try:
                        item = await receive.receive()
                    finally:
                        self.receiving = False
                seq = self.next_seq
                self.next_seq += 1
                return seq, item

    async def release(self, seq: int, value: Any, send: Send | None) -> None:
        self.parked[seq] = value
        if self.draining:
            return
        self.draining = True
        try:
            while self.head in self.parked:
                await put(send, self.parked.pop(self.head))
                self.head += 1
                if self.room is not None:
                    self.room.set()
                    self.room = None
        finally:
            self.draining = False


def ordered_worker_factory(window: int) -> Callable[..., Coroutine[Any, Any, None]]:
    """Workers of ordered pools: one shared state per pool (per receive stream)."""
    states: dict[int, OrderedStage] = {}

    async def worker(receive: Receive, send: Send | None, call: Call, out: list[int]) -> None:
        state = states.setdefault(id(receive._state), OrderedStage(window))
        with receive, send if send is not None else contextlib.nullcontext():
            done = 0
            budget = YIELD_EVERY
            while True:
                try:
                    seq, item = await state.take(receive)
                except EndOfStream:
                    break
                await state.release(seq, await call(item), send)
                done += 1
                budget -= 1
                if not budget:
                    budget = YIELD_EVERY
                    await checkpoint()
            out.append(done)

    return worker


# ------------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    size: int  # items per run (or runs, for the start-up cases)
    unit: str
    target: float
    flowrhythm: Callable[[int], Awaitable[int]]
    anyio: Callable[[int], Awaitable[int]]
    expect: Callable[[int], int] = lambda n: n
    reference: str = "hand-written anyio"


def three(**options: Any) -> Flow:
    flow = Flow()
    for _ in range(HOPS):
        flow.add(identity, capacity=fixed(1), **options)
    return flow


async def fr_run(n: int) -> int:
    stats = await three().run(range(n))
    return stats.jobs[list(stats.jobs)[-1]].completed


async def hw_run(n: int) -> int:
    return await pipeline(lambda send: feed(send, range(n)), [identity] * HOPS)


async def agen(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


async def fr_agen(n: int) -> int:
    stats = await three().run(agen(n))
    return stats.jobs[list(stats.jobs)[-1]].completed


async def hw_agen(n: int) -> int:
    return await pipeline(lambda send: feed_async(send, agen(n)), [identity] * HOPS)


async def fr_stream(n: int) -> int:
    count = 0
    async with three().stream(range(n)) as results:
        async for _ in results:
            count += 1
    return count


async def hw_stream(n: int) -> int:
    return await pipeline(lambda send: feed(send, range(n)), [identity] * HOPS, consumer=consume)


async def fr_send(n: int) -> int:
    async with three().start() as running:
        for i in range(n):
            await running.send(i)
        await running.close()
        stats = await running.join()
    return stats.jobs[list(stats.jobs)[-1]].completed


async def hw_send(n: int) -> int:
    # The caller sends from its own task: the source is this task, not a task of its own.
    counts: list[int] = []
    async with anyio.create_task_group() as tg:
        streams = [anyio.create_memory_object_stream[Any](QUEUE) for _ in range(HOPS)]
        for hop in range(HOPS):
            nxt = streams[hop + 1][0] if hop + 1 < HOPS else None
            tg.start_soon(stage, streams[hop][1], nxt, identity, counts if nxt is None else [])
        await feed(streams[0][0], range(n))
    return sum(counts)


def ordered_flow(workers: int) -> Flow:
    flow = Flow()
    for _ in range(HOPS):
        flow.add(identity, capacity=fixed(workers), ordered=True)
    return flow


async def fr_ordered8(n: int) -> int:
    count = 0
    last = -1
    async with ordered_flow(8).stream(range(n)) as results:
        async for out in results:
            if out != last + 1:
                raise Lost(f"out of order: {out} after {last}")
            last = out
            count += 1
    return count


async def hw_ordered8(n: int) -> int:
    return await pipeline(
        lambda send: feed(send, range(n)),
        [identity] * HOPS,
        workers=8,
        consumer=consume,
        worker=ordered_worker_factory(2 * 8),
    )


async def fr_ordered1(n: int) -> int:
    stats = await ordered_flow(1).run(range(n))
    return stats.jobs[list(stats.jobs)[-1]].completed


async def fr_workers8(n: int) -> int:
    flow = Flow()
    for _ in range(HOPS):
        flow.add(identity, capacity=fixed(8))
    stats = await flow.run(range(n))
    return stats.jobs[list(stats.jobs)[-1]].completed


async def hw_workers8(n: int) -> int:
    return await pipeline(lambda send: feed(send, range(n)), [identity] * HOPS, workers=8)


STARTUP_ITEMS = 10


async def fr_startup_run(runs: int) -> int:
    flow = three()
    total = 0
    for _ in range(runs):
        stats = await flow.run(range(STARTUP_ITEMS))
        total += stats.jobs[list(stats.jobs)[-1]].completed
    return total


async def hw_startup_run(runs: int) -> int:
    total = 0
    for _ in range(runs):
        total += await pipeline(lambda send: feed(send, range(STARTUP_ITEMS)), [identity] * HOPS)
    return total


async def fr_startup_send(runs: int) -> int:
    flow = three()
    total = 0
    for _ in range(runs):
        async with flow.start() as running:
            for i in range(STARTUP_ITEMS):
                await running.send(i)
            await running.close()
            stats = await running.join()
        total += stats.jobs[list(stats.jobs)[-1]].completed
    return total


async def hw_startup_send(runs: int) -> int:
    total = 0
    for _ in range(runs):
        total += await hw_send(STARTUP_ITEMS)
    return total


async def twice(x: Any) -> AsyncGenerator[Any, None]:
    yield x
    yield x


async def fr_generator(n: int) -> int:
    flow = Flow().add(twice, capacity=fixed(1)).add(identity, capacity=fixed(1))
    stats = await flow.run(range(n))
    return stats.jobs[list(stats.jobs)[-1]].completed


async def gen_stage(
    receive: Receive, send: Send, call: Callable[[Any], AsyncGenerator[Any, None]], out: list[int]
) -> None:
    """A worker whose processor is an async generator: every value it yields goes on."""
    with receive, send:
        budget = YIELD_EVERY
        done = 0
        while True:
            try:
                item = receive.receive_nowait()
            except WouldBlock:
                try:
                    item = await receive.receive()
                except EndOfStream:
                    break
                budget = YIELD_EVERY
            except EndOfStream:
                break
            async with contextlib.aclosing(call(item)) as values:
                async for value in values:
                    if await put(send, value):
                        budget = YIELD_EVERY
            done += 1
            budget -= 1
            if not budget:
                budget = YIELD_EVERY
                await checkpoint()
        out.append(done)


async def hw_generator(n: int) -> int:
    counts: list[int] = []
    async with anyio.create_task_group() as tg:
        s1, r1 = anyio.create_memory_object_stream[Any](QUEUE)
        s2, r2 = anyio.create_memory_object_stream[Any](QUEUE)
        tg.start_soon(feed, s1, range(n))
        tg.start_soon(gen_stage, r1, s2, twice, [])
        tg.start_soon(stage, r2, None, identity, counts)
    return sum(counts)


def retrying(call: Call, attempts: int = 3, backoff: float = 0.1) -> Call:
    """What a hand-written retry around a call looks like (exponential back-off)."""

    async def retried(item: Any) -> Any:
        for attempt in range(attempts):
            try:
                return await call(item)
            except Exception:
                if attempt + 1 == attempts:
                    raise
                await anyio.sleep(backoff * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    return retried


async def fr_retry(n: int) -> int:
    stats = await three(retry=Retry()).run(range(n))
    return stats.jobs[list(stats.jobs)[-1]].completed


async def hw_retry(n: int) -> int:
    return await pipeline(lambda send: feed(send, range(n)), [retrying(identity)] * HOPS)


async def fr_lock(n: int) -> int:
    flow = Flow()
    for _ in range(HOPS):
        flow.add_job_with_lock(identity, anyio.Lock(), capacity=fixed(1))
    stats = await flow.run(range(n))
    return stats.jobs[list(stats.jobs)[-1]].completed


def locked(call: Call) -> Call:
    lock = anyio.Lock()

    async def with_lock(item: Any) -> Any:
        async with lock:
            return await call(item)

    return with_lock


async def hw_lock(n: int) -> int:
    return await pipeline(
        lambda send: feed(send, range(n)), [locked(identity) for _ in range(HOPS)]
    )


@contextlib.asynccontextmanager
async def opened() -> AsyncIterator[Call]:
    yield identity


async def fr_factory(n: int) -> int:
    flow = Flow()
    for _ in range(HOPS):
        flow.add(ProcessorFactory(opened), capacity=fixed(1))
    stats = await flow.run(range(n))
    return stats.jobs[list(stats.jobs)[-1]].completed


async def factory_stage(receive: Receive, send: Send | None, call: Call, out: list[int]) -> None:
    async with opened() as processor:
        await stage(receive, send, processor, out)


async def hw_factory(n: int) -> int:
    return await pipeline(
        lambda send: feed(send, range(n)), [identity] * HOPS, worker=factory_stage
    )


class Boom(Exception):
    pass


async def fails(x: Any) -> Any:
    raise Boom(x)


async def discard(error: Any) -> None:
    pass


async def fr_errors(n: int) -> int:
    flow = Flow().add(fails, capacity=fixed(1)).add_error_job(discard, capacity=fixed(1))
    stats = await flow.run(range(n))
    return stats.jobs["discard"].completed


async def hw_errors(n: int) -> int:
    counts: list[int] = []

    async def failing_stage(receive: Receive, errors: Send) -> None:
        with receive, errors:
            budget = YIELD_EVERY
            while True:
                try:
                    item = receive.receive_nowait()
                except WouldBlock:
                    try:
                        item = await receive.receive()
                    except EndOfStream:
                        return
                    budget = YIELD_EVERY
                except EndOfStream:
                    return
                try:
                    await fails(item)
                except Exception as exc:  # noqa: BLE001
                    error = ErrorItem(item=item, exception=exc, job="fails", attempts=1)
                    if await put(errors, error):
                        budget = YIELD_EVERY
                        continue
                budget -= 1
                if not budget:
                    budget = YIELD_EVERY
                    await checkpoint()

    async with anyio.create_task_group() as tg:
        s1, r1 = anyio.create_memory_object_stream[Any](QUEUE)
        s2, r2 = anyio.create_memory_object_stream[Any](QUEUE)
        tg.start_soon(feed, s1, range(n))
        tg.start_soon(failing_stage, r1, s2)
        tg.start_soon(stage, r2, None, discard, counts)
    return sum(counts)


BATCH = 100


async def fr_batch(n: int) -> int:
    flow = Flow().add(identity, capacity=fixed(1), batch=Batch(size=BATCH, timeout=0.05))
    stats = await flow.run(range(n))
    return stats.jobs["identity"].completed


async def hw_batch(n: int) -> int:
    """One task: a batch is what is queued (up to BATCH), completed for at most 0.05 s."""
    done = 0

    async def batcher(receive: Receive) -> None:
        nonlocal done
        with receive:
            ended = False
            while not ended:
                try:
                    batch = [await receive.receive()]
                except EndOfStream:
                    return
                deadline = anyio.current_time() + 0.05
                yielded = False
                while len(batch) < BATCH:
                    try:
                        batch.append(receive.receive_nowait())
                        yielded = False
                        continue
                    except EndOfStream:
                        ended = True
                        break
                    except WouldBlock:
                        pass
                    if not yielded:
                        yielded = True
                        await checkpoint()
                        continue
                    with anyio.move_on_after(max(deadline - anyio.current_time(), 0)):
                        try:
                            batch.append(await receive.receive())
                            yielded = False
                            continue
                        except EndOfStream:
                            ended = True
                    break
                await identity(batch)
                done += len(batch)

    async with anyio.create_task_group() as tg:
        send, receive = anyio.create_memory_object_stream[Any](QUEUE)
        tg.start_soon(feed, send, range(n))
        tg.start_soon(batcher, receive)
    return done


async def fr_timeout(n: int) -> int:
    stats = await three(timeout=10.0).run(range(n))
    return stats.jobs[list(stats.jobs)[-1]].completed


def timed_out(call: Call, seconds: float) -> Call:
    async def with_timeout(item: Any) -> Any:
        with anyio.fail_after(seconds):
            return await call(item)

    return with_timeout


async def hw_timeout(n: int) -> int:
    return await pipeline(lambda send: feed(send, range(n)), [timed_out(identity, 10.0)] * HOPS)


RATE = 1e9  # never reached: the cost of the check itself


async def fr_rate(n: int) -> int:
    stats = await three(max_per_second=RATE).run(range(n))
    return stats.jobs[list(stats.jobs)[-1]].completed


def rate_limited(call: Call, rate: float) -> Call:
    """A token bucket of one second's worth of calls, refilled from the loop clock."""
    bucket = {"tokens": rate, "at": anyio.current_time()}

    async def limited(item: Any) -> Any:
        now = anyio.current_time()
        tokens = min(rate, bucket["tokens"] + (now - bucket["at"]) * rate)
        bucket["at"] = now
        if tokens < 1:
            await anyio.sleep((1 - tokens) / rate)
            tokens = 1
        bucket["tokens"] = tokens - 1
        return await call(item)

    return limited


async def hw_rate(n: int) -> int:
    calls = [rate_limited(identity, RATE) for _ in range(HOPS)]
    return await pipeline(lambda send: feed(send, range(n)), calls)


async def fr_autoscaled(n: int) -> int:
    flow = Flow()
    for _ in range(HOPS):
        flow.add(identity, capacity=UtilizationCapacity(min_workers=1, max_workers=8))
    stats = await flow.run(range(n))
    return stats.jobs[list(stats.jobs)[-1]].completed


MANY = 10_000


async def fr_many(n: int) -> int:
    stats = await Flow().add(identity, capacity=fixed(MANY)).run(range(n))
    return stats.jobs["identity"].completed


async def hw_many(n: int) -> int:
    return await pipeline(lambda send: feed(send, range(n)), [identity], workers=MANY)


DELAYS = 2_000


def delays() -> list[float]:
    rng = random.Random(42)
    return [rng.uniform(0, 0.002) for _ in range(DELAYS)]


async def fr_ordered16(n: int, *, ordered: bool = True) -> int:
    wait = delays()

    async def sleepy(item: int) -> int:
        await anyio.sleep(wait[item % DELAYS])
        return item

    flow = Flow().add(sleepy, capacity=fixed(16), name="sleepy", ordered=ordered)
    stats = await flow.run(range(n))
    return stats.jobs["sleepy"].completed


async def fr_unordered16(n: int) -> int:
    return await fr_ordered16(n, ordered=False)


CASES: tuple[Case, ...] = (
    Case("run", "`run()`, 3 jobs x 1 worker", 40_000, "items", 0.8, fr_run, hw_run),
    Case("agen", "`run()` of an async generator source", 40_000, "items", 0.7, fr_agen, hw_agen),
    Case(
        "stream",
        "`stream()` read with `async for`",
        40_000,
        "items",
        0.7,
        fr_stream,
        hw_stream,
    ),
    Case("send", "`start()` + `await send(x)` per item", 40_000, "items", 0.7, fr_send, hw_send),
    Case(
        "ordered8",
        "`ordered=True`, 3 jobs x 8 workers",
        20_000,
        "items",
        0.7,
        fr_ordered8,
        hw_ordered8,
    ),
    Case(
        "ordered1", "`ordered=True`, 3 jobs x 1 worker", 40_000, "items", 0.7, fr_ordered1, hw_run
    ),
    Case("workers8", "3 jobs x 8 workers", 20_000, "items", 0.7, fr_workers8, hw_workers8),
    Case(
        "startup-run",
        "start-up: `run()` of 3 jobs over 10 items",
        300,
        "runs",
        0.6,
        fr_startup_run,
        hw_startup_run,
        expect=lambda runs: runs * STARTUP_ITEMS,
    ),
    Case(
        "startup-send",
        "start-up: `start()` + 10 x `send()` + `join()`",
        300,
        "runs",
        0.6,
        fr_startup_send,
        hw_startup_send,
        expect=lambda runs: runs * STARTUP_ITEMS,
    ),
    Case(
        "generator",
        "generator job, 2 outputs per input",
        20_000,
        "items",
        0.7,
        fr_generator,
        hw_generator,
        expect=lambda n: 2 * n,
    ),
    Case("retry", "`retry=Retry()`, never failing", 40_000, "items", 0.7, fr_retry, hw_retry),
    Case("lock", "`add_job_with_lock(…, anyio.Lock())`", 40_000, "items", 0.7, fr_lock, hw_lock),
    Case("factory", "`ProcessorFactory`", 40_000, "items", 0.7, fr_factory, hw_factory),
    Case(
        "errors", "every item fails to the error job", 20_000, "items", 0.7, fr_errors, hw_errors
    ),
    Case("batch", "`batch=Batch(100)`", 100_000, "items", 0.7, fr_batch, hw_batch),
    Case("timeout", "`timeout=10`", 40_000, "items", 0.7, fr_timeout, hw_timeout),
    Case("rate", "`max_per_second=` (never reached)", 40_000, "items", 0.7, fr_rate, hw_rate),
    Case(
        "autoscaled",
        "autoscaled instant jobs (1-8 workers)",
        40_000,
        "items",
        0.7,
        fr_autoscaled,
        hw_run,
    ),
    Case("many", "one job of 10,000 workers", 40_000, "items", 0.7, fr_many, hw_many),
    Case(
        "ordered16",
        "`ordered=True` ÷ unordered, 16 workers, random 0-2 ms",
        1_000,
        "items",
        0.85,
        fr_ordered16,
        fr_unordered16,
        reference="the same job unordered",
    ),
)


# ------------------------------------------------------------------------------- measuring


@dataclass
class Result:
    case: Case
    backend: str
    flowrhythm: list[_bench.Timing] = field(default_factory=list)
    reference: list[_bench.Timing] = field(default_factory=list)
    error: str | None = None

    def ratios(self) -> tuple[float, float]:
        fr = _bench.median_timing(self.flowrhythm)
        ref = _bench.median_timing(self.reference)
        return ref.wall / fr.wall, ref.cpu / fr.cpu


async def timed(program: Program, size: int, expected: int) -> _bench.Timing:
    gc.collect()
    start = _bench.now()
    got = await program(size)
    elapsed = _bench.since(start)
    if got != expected:
        raise Lost(f"{got} items came out, expected {expected}")
    return elapsed


def measure(results: list[Result], repeat: int, scale: float) -> None:
    for result in results:  # warm up (and check) both programs
        case = result.case
        size = max(1, int(case.size * scale) // 10)
        try:
            for program in (case.flowrhythm, case.anyio):
                anyio.run(timed, program, size, case.expect(size), backend=result.backend)
        except Exception as exc:  # noqa: BLE001 - a failing case is reported, not fatal
            result.error = _bench.describe_error(exc)
    live = [r for r in results if r.error is None]
    for rep in range(repeat):
        shift = rep % len(live) if live else 0
        for result in live[shift:] + live[:shift]:
            case = result.case
            size = max(1, int(case.size * scale))
            pair = [(case.flowrhythm, result.flowrhythm), (case.anyio, result.reference)]
            if rep % 2:
                pair.reverse()
            try:
                for program, timings in pair:
                    timings.append(
                        anyio.run(timed, program, size, case.expect(size), backend=result.backend)
                    )
            except Exception as exc:  # noqa: BLE001 - a failing case is reported, not fatal
                result.error = _bench.describe_error(exc)
                continue
            wall, _ = result.ratios()
            print(
                f"  [{rep + 1}/{repeat}] {result.backend:<7} {case.key:<13} ratio so far {wall:.2f}",
                file=sys.stderr,
                flush=True,
            )


HEADERS = [
    "case",
    "reference",
    "backend",
    "flowrhythm",
    "reference",
    "÷ (wall)",
    "÷ (cpu)",
    "target",
]


def rows_of(results: list[Result], scale: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for result in results:
        case = result.case
        row: dict[str, Any] = {
            "case": case.key,
            "label": case.label,
            "reference": case.reference,
            "backend": result.backend,
            "size": max(1, int(case.size * scale)),
            "unit": case.unit,
            "target_min": case.target,
            "error": result.error,
        }
        if result.error is None and result.flowrhythm:
            wall, cpu = result.ratios()
            fr = _bench.median_timing(result.flowrhythm)
            ref = _bench.median_timing(result.reference)
            row.update(
                flowrhythm_s=fr.wall,
                flowrhythm_cpu_s=fr.cpu,
                reference_s=ref.wall,
                reference_cpu_s=ref.cpu,
                ratio=wall,
                ratio_cpu=cpu,
                ok=cpu >= case.target,
                flowrhythm_times_s=[t.wall for t in result.flowrhythm],
                reference_times_s=[t.wall for t in result.reference],
            )
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]], backends: list[str]) -> tuple[str, str]:
    """The plain-text table (every figure) and the Markdown summary (ratios per backend)."""
    cells: list[list[str]] = []
    order = {case.key: index for index, case in enumerate(CASES)}
    for row in sorted(rows, key=lambda row: order[row["case"]]):  # each case's backends together
        if cells and cells[-1] and cells[-1][0] != row["label"]:
            cells.append([])
        if "ratio" not in row:
            cells.append(
                [row["label"], row["reference"], row["backend"], "-", "-", "-", "-", row["error"]]
            )
            continue
        per = 1e6 / row["size"]
        unit = "µs/run" if row["unit"] == "runs" else "µs/item"
        verdict = "ok" if row["ok"] else "MISSED"
        cells.append(
            [
                row["label"],
                row["reference"],
                row["backend"],
                f"{row['flowrhythm_s'] * per:.2f} {unit}",
                f"{row['reference_s'] * per:.2f} {unit}",
                f"{row['ratio']:.2f}",
                f"{row['ratio_cpu']:.2f}",
                f"≥ {row['target_min']:.2f}: {verdict}",
            ]
        )
    text = _bench.format_table(HEADERS, cells, right={3, 4, 5, 6})
    by_case: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_case.setdefault(row["label"], {})[row["backend"]] = row
    md_rows = []
    for label, per_backend in by_case.items():
        figures = []
        for backend in backends:
            row = per_backend.get(backend, {})
            figures.append(f"{row['ratio_cpu']:.2f}\u00d7" if "ratio_cpu" in row else "-")
        target = next(iter(per_backend.values()))["target_min"]
        md_rows.append([label, *figures, f"≥ {target:.2f}"])
    markdown = _bench.markdown_table(["path", *backends, "target"], md_rows)
    return text, markdown


def main(argv: Sequence[str] | None = None) -> int:
    parser = _bench.parser(__doc__, repeat=DEFAULT_REPEAT)
    parser.add_argument(
        "--only",
        action="append",
        choices=[case.key for case in CASES],
        help="run only this case (repeatable; default: all)",
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every case's size by this"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.scale <= 0:
        parser.error("--repeat and --scale must be positive")
    _bench.printable_output()
    backends = _bench.backends_of(args)
    notes: list[str] = []
    results: list[Result] = []
    for backend in backends:
        why = _bench.backend_available(backend)
        if why is not None:
            notes.append(f"{backend}: skipped, {why}")
            continue
        results += [
            Result(case, backend) for case in CASES if not args.only or case.key in args.only
        ]
    measure(results, args.repeat, args.scale)
    rows = rows_of(results, args.scale)
    text, markdown = table(rows, backends)
    print()
    print(
        f"Paths benchmark: flowrhythm ÷ its reference (throughput; > 1: flowrhythm faster), "
        f"median of {args.repeat} interleaved repetitions"
    )
    print(_bench.environment_line())
    print()
    print(text)
    print()
    print("By CPU time, as Markdown:")
    print()
    print(markdown)
    for note in notes:
        print(f"  - {note}")
    if args.json:
        config = {
            "repeat": args.repeat,
            "scale": args.scale,
            "queue_length": QUEUE,
            "yield_every": YIELD_EVERY,
            "backends": backends,
        }
        _bench.write_json(args.json, config, results=rows, notes=notes)
    failed = any(row["error"] for row in rows)
    missed = any(row.get("ok") is False for row in rows)
    return 1 if failed or (args.check and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
