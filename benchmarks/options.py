"""Options benchmark: what ``ordered=True`` costs and what ``batch=`` buys.

Three scenarios, each on asyncio and on trio, each timed as baseline vs candidate in the same
event loop (best of ``--repeat`` runs, wall clock):

- **ordered**: 3,000 items through one job of 16 workers whose processor sleeps a random
  0-2 ms (``await anyio.sleep(delay)``, the same delays for both flows). Baseline: the job
  without options. Candidate: the same job with ``ordered=True``, whose reorder window of
  ``2 * max_workers`` inputs makes workers wait once a slow head item has filled it.
  Target: ordered throughput >= 0.85 x unordered.
- **batch, identity**: 200,000 items through one job of 1 worker. Baseline: an identity
  processor (``async def identity(x): return x``), one call per item. Candidate: the same job
  with ``batch=Batch(size=100)`` and a processor that returns ``len(batch)``: one call and
  one output per 100 items. The call costs almost nothing here, so this measures what the
  gathering costs per item. Target: batched throughput >= 1 x unbatched.
- **batch, identity, size 10**: the same with ``Batch(size=10)``: ten times as many batches,
  so ten times the cost per batch, for the same items.
- **batch, one await per call**: the same, but each call awaits once
  (``await anyio.lowlevel.checkpoint()``), standing in for a call that does I/O (a database
  insert, an HTTP request): what batching is for. Target: batched >= 3 x unbatched.

Every candidate is also written by hand with anyio, in the same run: ``anyio_ordered`` (a pool
of tasks releasing outputs in input order through a window of ``2 * workers`` inputs) and
``anyio_batched`` (one task: a batch is the item it waited for and whatever is queued behind it).
The last column, ``÷ anyio``, compares flowrhythm with that hand-written version.

Run ``python benchmarks/options.py --help`` for the options; ``--quick`` is a smaller run
for a first look. The table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import functools
import gc
import platform
import random
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio import EndOfStream, WouldBlock
from anyio.lowlevel import checkpoint
from anyio.streams.memory import MemoryObjectSendStream

from flowrhythm import Batch, Capacity, Flow

ORDERED_ITEMS = 3_000
ORDERED_WORKERS = 16
MAX_DELAY = 0.002  # seconds: the processor sleeps uniform(0, MAX_DELAY)
BATCH_ITEMS = 200_000
BATCH_SIZE = 100
SMALL_BATCH_SIZE = 10  # a small batch: what one hand-over per batch costs
DEFAULT_REPEAT = 3

TARGET_ORDERED = 0.85  # ordered / unordered throughput, at least
TARGET_BATCH_IDENTITY = 1.0  # batched / unbatched throughput per item, at least
TARGET_BATCH_AWAIT = 3.0  # the same, when every call awaits once


@dataclass
class Scenario:
    """A baseline flow and a candidate flow over the same items, and the target ratio."""

    name: str
    baseline: str
    candidate: str
    target: float
    items: int
    make_baseline: Callable[[], Flow]
    make_candidate: Callable[[], Flow]
    # The candidate written by hand with anyio: takes the source, returns the items done.
    handwritten: Callable[[Any], Awaitable[int]]
    source: Callable[[int], Any]
    # backend -> (baseline, candidate, hand-written) seconds, best of the repeats
    seconds: dict[str, tuple[float, float, float]] = field(default_factory=dict)


class BenchmarkError(RuntimeError):
    """A flow under test did not process every item."""


# -- hand-written anyio references ----------------------------------------------------------


async def feed(send: MemoryObjectSendStream[Any], source: Any) -> None:
    """Send every item, without waiting while there is room (yielding now and then)."""
    async with send:
        for n, item in enumerate(source, 1):
            try:
                send.send_nowait(item)
            except WouldBlock:
                await send.send(item)
            else:
                if not n % 64:
                    await checkpoint()


async def anyio_ordered(fn: Callable[[Any], Awaitable[Any]], workers: int, source: Any) -> int:
    """``workers`` tasks; outputs released in input order; at most ``2 * workers`` inputs
    running or finished but not yet released (the window of ``ordered=True``)."""
    send, receive = anyio.create_memory_object_stream[tuple[int, Any]](100)
    window = anyio.Semaphore(2 * workers)
    finished: dict[int, Any] = {}
    head = 0

    async def numbered() -> None:
        async with send:
            for seq, item in enumerate(source):
                await window.acquire()
                await send.send((seq, item))

    async def work() -> None:
        nonlocal head
        async for seq, item in receive:
            finished[seq] = await fn(item)
            while head in finished:
                del finished[head]  # released downstream, in order
                head += 1
                window.release()

    async with receive, anyio.create_task_group() as tg:
        tg.start_soon(numbered)
        for _ in range(workers):
            tg.start_soon(work)
    return head


async def anyio_batched(fn: Callable[[list[Any]], Awaitable[Any]], size: int, source: Any) -> int:
    """One task: a batch is the first item it waits for and what is queued behind it."""
    send, receive = anyio.create_memory_object_stream[Any](100)
    done = 0

    async def work() -> None:
        nonlocal done
        ended = False
        while not ended:
            try:
                batch = [await receive.receive()]
            except EndOfStream:
                return
            try:
                while len(batch) < size:
                    batch.append(receive.receive_nowait())
            except WouldBlock:
                pass
            except EndOfStream:
                ended = True
            await fn(batch)
            done += len(batch)

    async with receive, anyio.create_task_group() as tg:
        tg.start_soon(feed, send, source)
        tg.start_soon(work)
    return done


# -- ordered --------------------------------------------------------------------------------


def ordered_scenario(items: int) -> Scenario:
    rng = random.Random(2024)
    delays = [rng.uniform(0, MAX_DELAY) for _ in range(items)]

    async def jitter(item: int) -> int:
        await anyio.sleep(delays[item])
        return item

    def make(ordered: bool) -> Flow:
        capacity = Capacity(min_workers=ORDERED_WORKERS, max_workers=ORDERED_WORKERS)
        return Flow().add(jitter, capacity=capacity, name="job", ordered=ordered)

    return Scenario(
        name="ordered",
        baseline=f"{ORDERED_WORKERS} workers",
        candidate=f"{ORDERED_WORKERS} workers, ordered=True",
        target=TARGET_ORDERED,
        items=items,
        make_baseline=lambda: make(False),
        make_candidate=lambda: make(True),
        handwritten=functools.partial(anyio_ordered, jitter, ORDERED_WORKERS),
        source=range,
    )


# -- batch ----------------------------------------------------------------------------------


async def identity(item: int) -> int:
    return item


async def count(batch: list[int]) -> int:
    return len(batch)


async def identity_awaiting(item: int) -> int:
    await checkpoint()
    return item


async def count_awaiting(batch: list[int]) -> int:
    await checkpoint()
    return len(batch)


def batch_scenario(items: int, awaiting: bool, size: int = BATCH_SIZE) -> Scenario:
    one = Capacity(min_workers=1, max_workers=1)
    plain, batched = (identity_awaiting, count_awaiting) if awaiting else (identity, count)
    name = "batch, one await per call" if awaiting else "batch, identity"
    return Scenario(
        name=name if size == BATCH_SIZE else f"{name}, size {size}",
        baseline="1 call per item",
        candidate=f"batch=Batch(size={size})",
        target=TARGET_BATCH_AWAIT if awaiting else TARGET_BATCH_IDENTITY,
        items=items,
        make_baseline=lambda: Flow().add(plain, capacity=one, name="job"),
        make_candidate=lambda: Flow().add(
            batched, capacity=one, name="job", batch=Batch(size=size, timeout=0.05)
        ),
        handwritten=functools.partial(anyio_batched, batched, size),
        source=range,
    )


# -- running --------------------------------------------------------------------------------


async def timed(flow: Flow, source: Any, items: int) -> float:
    gc.collect()
    start = time.perf_counter()
    stats = await flow.run(source)
    elapsed = time.perf_counter() - start
    job = stats.jobs["job"]
    if job.completed != items:
        raise BenchmarkError(f"{job.completed} of {items} items completed")
    return elapsed


async def timed_handwritten(scenario: Scenario, items: int) -> float:
    gc.collect()
    start = time.perf_counter()
    done = await scenario.handwritten(scenario.source(items))
    elapsed = time.perf_counter() - start
    if done != items:
        raise BenchmarkError(f"hand-written: {done} of {items} items done")
    return elapsed


async def run_backend(backend: str, scenarios: Sequence[Scenario], repeat: int) -> None:
    for scenario in scenarios:
        # warm up every case once (imports, first-call costs), then alternate
        warm = min(scenario.items, 1_000)
        await timed(scenario.make_baseline(), scenario.source(warm), warm)
        await timed(scenario.make_candidate(), scenario.source(warm), warm)
        await timed_handwritten(scenario, warm)
        base: list[float] = []
        cand: list[float] = []
        hand: list[float] = []
        n = scenario.items
        for _ in range(repeat):
            base.append(await timed(scenario.make_baseline(), scenario.source(n), n))
            cand.append(await timed(scenario.make_candidate(), scenario.source(n), n))
            hand.append(await timed_handwritten(scenario, n))
        scenario.seconds[backend] = (min(base), min(cand), min(hand))
        print(
            f"{backend:7} {scenario.name:26} baseline {min(base):.3f} s, "
            f"candidate {min(cand):.3f} s, hand-written {min(hand):.3f} s",
            file=sys.stderr,
        )


# -- report ---------------------------------------------------------------------------------


def print_table(scenarios: Sequence[Scenario], backends: Sequence[str]) -> bool:
    print(
        f"flowrhythm options benchmark — Python {platform.python_version()}, "
        f"{platform.machine()}, best of the repeats (wall clock)"
    )
    print()
    header = (
        "| scenario | backend | items | baseline | items/s | candidate | items/s "
        "| ratio | target | result | anyio items/s | ÷ anyio |"
    )
    print(header)
    print("|" + " --- |" * (header.count("|") - 1))
    all_met = True
    for scenario in scenarios:
        for backend in backends:
            base, cand, hand = scenario.seconds[backend]
            ratio = base / cand  # candidate throughput / baseline throughput
            met = ratio >= scenario.target
            all_met &= met
            print(
                f"| {scenario.name} | {backend} | {scenario.items:,} "
                f"| {scenario.baseline} | {scenario.items / base:,.0f} "
                f"| {scenario.candidate} | {scenario.items / cand:,.0f} "
                f"| {ratio:.2f} | >= {scenario.target:g} | {'PASS' if met else 'MISS'} "
                f"| {scenario.items / hand:,.0f} | {hand / cand:.2f} |"
            )
    print()
    print("ratio = candidate throughput / baseline throughput (items per second)")
    print("÷ anyio = candidate throughput / the candidate written by hand with anyio")
    return all_met


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="a fifth of the items and one repeat: a first look"
    )
    parser.add_argument("--repeat", type=int, default=None, help="runs per flow (best is kept)")
    parser.add_argument(
        "--backend", action="append", choices=["asyncio", "trio"], help="default: both"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    backends: list[str] = args.backend or ["asyncio", "trio"]
    scale = 5 if args.quick else 1
    repeat = args.repeat or (1 if args.quick else DEFAULT_REPEAT)
    scenarios = [
        ordered_scenario(ORDERED_ITEMS // scale),
        batch_scenario(BATCH_ITEMS // scale, awaiting=False),
        batch_scenario(BATCH_ITEMS // scale, awaiting=False, size=SMALL_BATCH_SIZE),
        batch_scenario(BATCH_ITEMS // scale, awaiting=True),
    ]
    for backend in backends:
        anyio.run(run_backend, backend, scenarios, repeat, backend=backend)
    all_met = print_table(scenarios, backends)
    return 1 if args.check and not all_met else 0


if __name__ == "__main__":
    sys.exit(main())
