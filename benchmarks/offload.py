"""Offload benchmark: what ``executor="process"`` and ``executor="thread"`` buy.

Two scenarios, each on asyncio and on trio. Every case below is timed in the same event
loop, interleaved, and reported as a speed-up over the scenario's baseline:

- **CPU-bound**: a pure-Python loop of about 5 ms a call over 400 items. Baseline:
  the function called inline in an async job with 1 worker (the event loop does
  the work). flowrhythm: the same function with ``executor="process"`` and 2
  workers. Target on a 2-core machine: speed-up >= 1.6.
- **Blocking I/O**: ``time.sleep(0.005)`` over 400 items with ``executor="thread"``:
  1 worker (baseline) vs 32 workers. Target: speed-up >= 20.

Two more cases put the flowrhythm figure in context:

- **hand-written anyio**: the same number of tasks reading one memory object stream and
  calling ``anyio.to_process.run_sync`` / ``anyio.to_thread.run_sync`` with a capacity
  limiter of the same size: what anyio itself gives, one call per item. ``flowrhythm ÷
  anyio`` compares the two (1.00 = no overhead).
- **bare pool**: a warm ``ProcessPoolExecutor`` / ``ThreadPoolExecutor`` of the same size,
  each of its workers running its share of the items in one call: no event loop and no
  per-item hand-over, the ceiling this machine allows. On a 2-core machine whose event loop
  also needs the CPU, one call per item cannot reach it.

Run ``python benchmarks/offload.py --help`` for the options. The table goes to
stdout, progress to stderr. Worker processes import this file again (as
``__mp_main__``, like multiprocessing does) to find the offloaded function,
which is why everything runs under ``if __name__ == "__main__"``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_process
import anyio.to_thread

from flowrhythm import Capacity, Flow

DEFAULT_ITEMS = 400
DEFAULT_REPEAT = 3
CALL_SECONDS = 0.005  # the target duration of one CPU-bound call, and the I/O sleep

CPU_WORKERS = 2
IO_WORKERS = 32
TARGET_CPU_SPEEDUP = 1.6  # processes (2 workers) vs inline (1 worker), at least
TARGET_IO_SPEEDUP = 20.0  # threads: 32 workers vs 1, at least


# -- the work (module level, so that worker processes can import it) --------------------


def spin(loops: int, item: int) -> int:
    """CPU-bound: a pure-Python loop that holds the GIL all along."""
    total = item
    for i in range(loops):
        total = (total + i * i) % 1_000_003
    return total


def nap(item: int) -> int:
    """Blocking I/O stand-in: sleeps without using the CPU."""
    time.sleep(CALL_SECONDS)
    return item


def calibrate(seconds: float) -> int:
    """The number of ``spin`` loops that takes about ``seconds`` on this machine."""
    loops = 10_000
    while True:
        start = time.perf_counter()
        spin(loops, 0)
        elapsed = time.perf_counter() - start
        if elapsed >= 0.05:
            return max(1, round(loops * seconds / elapsed))
        loops *= 2


# -- the cases -----------------------------------------------------------------------------


def fixed(workers: int) -> Capacity:
    return Capacity(min_workers=workers, max_workers=workers, queue_length=2 * workers)


def inline_flow(loops: int) -> Flow:
    async def inline(item: int) -> int:
        return spin(loops, item)

    return Flow().add(inline, capacity=fixed(1), name="job")


def process_flow(loops: int) -> Flow:
    return Flow().add(
        functools.partial(spin, loops), capacity=fixed(CPU_WORKERS), name="job", executor="process"
    )


def thread_flow(workers: int) -> Flow:
    return Flow().add(nap, capacity=fixed(workers), name="job", executor="thread")


async def run_flow(make: Callable[[], Flow], n: int) -> None:
    stats = await make().run(range(n))
    completed = stats.jobs["job"].completed
    if completed != n:
        raise RuntimeError(f"{completed} of {n} items completed")


async def handwritten(call: Callable[[int], Awaitable[Any]], workers: int, n: int) -> None:
    """``workers`` tasks reading one memory object stream, one call per item."""
    send, receive = anyio.create_memory_object_stream[int](2 * workers)
    done = 0

    async def feed() -> None:
        async with send:
            for item in range(n):
                await send.send(item)

    async def work() -> None:
        nonlocal done
        async for item in receive:
            await call(item)
            done += 1

    async with receive, anyio.create_task_group() as tg:
        tg.start_soon(feed)
        for _ in range(workers):
            tg.start_soon(work)
    if done != n:
        raise RuntimeError(f"{done} of {n} items completed")


def in_processes(loops: int) -> Callable[[int], Awaitable[Any]]:
    fn = functools.partial(spin, loops)
    limiter = anyio.CapacityLimiter(CPU_WORKERS)

    async def call(item: int) -> Any:
        return await anyio.to_process.run_sync(fn, item, limiter=limiter)

    return call


def in_threads(workers: int) -> Callable[[int], Awaitable[Any]]:
    limiter = anyio.CapacityLimiter(workers)

    async def call(item: int) -> Any:
        return await anyio.to_thread.run_sync(nap, item, limiter=limiter)

    return call


def run_share(fn: Callable[[int], Any], items: range) -> int:
    """One bare-pool worker's share of the items, in one call."""
    for item in items:
        fn(item)
    return len(items)


def bare_pool(pool: Executor, fn: Callable[[int], Any], workers: int, n: int) -> None:
    shares = [range(k, n, workers) for k in range(workers)]
    done = sum(pool.map(run_share, [fn] * workers, shares))
    if done != n:
        raise RuntimeError(f"{done} of {n} items completed")


CASES = ("baseline", "flowrhythm", "anyio", "bare pool")


@dataclass
class Scenario:
    key: str
    name: str
    baseline: str
    candidate: str
    target: float
    # case name -> an async function of the item count
    cases: dict[str, Callable[[int], Awaitable[None]]]
    warm_up: int  # items run through every case first (starts worker processes/threads)
    times: dict[str, dict[str, list[float]]] = field(default_factory=dict)


async def timed(case: Callable[[int], Awaitable[None]], n: int) -> float:
    gc.collect()
    start = time.perf_counter()
    await case(n)
    return time.perf_counter() - start


async def run_backend(backend: str, scenarios: Sequence[Scenario], n: int, repeat: int) -> None:
    """All repetitions of one backend in one event loop (anyio's worker processes
    belong to the event loop, so they are started once, by the warm-up)."""
    for scenario in scenarios:
        times = scenario.times.setdefault(backend, {case: [] for case in scenario.cases})
        for case in scenario.cases.values():
            await timed(case, scenario.warm_up)
        names = list(scenario.cases)
        for rep in range(repeat):
            # Rotate the order, so a slow patch of a noisy machine hits every case alike.
            shift = rep % len(names)
            for which in names[shift:] + names[:shift]:
                elapsed = await timed(scenario.cases[which], n)
                times[which].append(elapsed)
                print(
                    f"  {backend:7} {scenario.name:12} {which:10} #{rep + 1}: {elapsed:.3f} s",
                    file=sys.stderr,
                )


# -- the report ----------------------------------------------------------------------------


def print_table(scenarios: Sequence[Scenario], backends: Sequence[str], n: int) -> bool:
    """Print the results; return whether every target was met."""
    header: tuple[str, ...] = (
        "scenario",
        "backend",
        "baseline",
        "flowrhythm",
        "base s",
        "speed-up",
        "anyio",
        "bare pool",
        "flowrhythm ÷ anyio",
        "target",
        "result",
    )
    rows: list[tuple[str, ...]] = []
    all_met = True
    for scenario in scenarios:
        for backend in backends:
            median = {case: statistics.median(t) for case, t in scenario.times[backend].items()}
            base = median["baseline"]
            ratio = base / median["flowrhythm"]
            met = ratio >= scenario.target
            all_met &= met
            rows.append(
                (
                    scenario.name,
                    backend,
                    scenario.baseline,
                    scenario.candidate,
                    f"{base:.3f}",
                    f"{ratio:.2f}x",
                    f"{base / median['anyio']:.2f}x",
                    f"{base / median['bare pool']:.2f}x",
                    f"{median['anyio'] / median['flowrhythm']:.2f}",
                    f">= {scenario.target:g}x",
                    "PASS" if met else "MISS",
                )
            )
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    print(
        f"\nflowrhythm offload benchmark: {n} items, median of the repetitions "
        f"(Python {platform.python_version()}, {os.cpu_count()} CPUs, load average {load})\n"
    )
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))
    print(
        "\nspeed-up, anyio, bare pool: the baseline's time ÷ the case's time. anyio: the same "
        "worker count, hand-written.\nbare pool: a warm executor of that size, each worker "
        "running its share in one call (the machine's ceiling)."
    )
    return all_met


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=DEFAULT_ITEMS, help="items per timed run")
    parser.add_argument(
        "--repeat", type=int, default=DEFAULT_REPEAT, help="timed runs per case (median shown)"
    )
    parser.add_argument(
        "--backend",
        action="append",
        choices=["asyncio", "trio"],
        help="run one backend only (repeatable; default: both)",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=["cpu", "io"],
        help="run one scenario only (repeatable; default: both)",
    )
    parser.add_argument(
        "--check", action="store_true", help="exit with status 1 when a target is missed"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    backends: list[str] = args.backend or ["asyncio", "trio"]
    loops = calibrate(CALL_SECONDS)
    print(f"calibrated: {loops} loops ~ {CALL_SECONDS * 1000:g} ms a call", file=sys.stderr)
    chosen = set(args.scenario or ["cpu", "io"])
    with (
        ProcessPoolExecutor(CPU_WORKERS) as processes,
        ThreadPoolExecutor(IO_WORKERS) as threads,
    ):
        spin_loops = functools.partial(spin, loops)
        scenarios = [
            Scenario(
                key="cpu",
                name="CPU-bound",
                baseline="inline, 1 worker",
                candidate=f'"process", {CPU_WORKERS} workers',
                target=TARGET_CPU_SPEEDUP,
                cases={
                    "baseline": functools.partial(run_flow, functools.partial(inline_flow, loops)),
                    "flowrhythm": functools.partial(
                        run_flow, functools.partial(process_flow, loops)
                    ),
                    "anyio": lambda n: handwritten(in_processes(loops), CPU_WORKERS, n),
                    "bare pool": lambda n: anyio.to_thread.run_sync(
                        bare_pool, processes, spin_loops, CPU_WORKERS, n
                    ),
                },
                warm_up=4 * CPU_WORKERS,
            ),
            Scenario(
                key="io",
                name="blocking I/O",
                baseline='"thread", 1 worker',
                candidate=f'"thread", {IO_WORKERS} workers',
                target=TARGET_IO_SPEEDUP,
                cases={
                    "baseline": functools.partial(run_flow, functools.partial(thread_flow, 1)),
                    "flowrhythm": functools.partial(
                        run_flow, functools.partial(thread_flow, IO_WORKERS)
                    ),
                    "anyio": lambda n: handwritten(in_threads(IO_WORKERS), IO_WORKERS, n),
                    "bare pool": lambda n: anyio.to_thread.run_sync(
                        bare_pool, threads, nap, IO_WORKERS, n
                    ),
                },
                warm_up=2 * IO_WORKERS,
            ),
        ]
        scenarios = [scenario for scenario in scenarios if scenario.key in chosen]
        for backend in backends:
            runner: Callable[..., Awaitable[Any]] = run_backend
            anyio.run(runner, backend, scenarios, args.items, args.repeat, backend=backend)
    all_met = print_table(scenarios, backends, args.items)
    return 1 if args.check and not all_met else 0


if __name__ == "__main__":
    sys.exit(main())
