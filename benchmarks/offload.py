"""Offload benchmark: what ``executor="process"`` and ``executor="thread"`` buy.

Two scenarios, each on asyncio and on trio, each timed as baseline vs candidate
in the same event loop:

- **CPU-bound**: a pure-Python loop of about 5 ms a call over 400 items. Baseline:
  the function called inline in an async job with 1 worker (the event loop does
  the work). Candidate: the same function with ``executor="process"`` and 2
  workers. Target on a 2-core machine: speed-up >= 1.6.
- **Blocking I/O**: ``time.sleep(0.005)`` over 400 items with ``executor="thread"``:
  1 worker (baseline) vs 32 workers (candidate). Target: speed-up >= 20.

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
from dataclasses import dataclass, field
from typing import Any

import anyio

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


@dataclass
class Scenario:
    key: str
    name: str
    baseline: str
    candidate: str
    target: float
    make_baseline: Callable[[], Flow]
    make_candidate: Callable[[], Flow]
    warm_up: int  # items run through the candidate first (starts worker processes/threads)
    times: dict[str, dict[str, list[float]]] = field(default_factory=dict)


async def timed(flow: Flow, n: int) -> float:
    gc.collect()
    start = time.perf_counter()
    stats = await flow.run(range(n))
    elapsed = time.perf_counter() - start
    completed = stats.jobs["job"].completed
    if completed != n:
        raise RuntimeError(f"{completed} of {n} items completed")
    return elapsed


async def run_backend(backend: str, scenarios: Sequence[Scenario], n: int, repeat: int) -> None:
    """All repetitions of one backend in one event loop (anyio's worker processes
    belong to the event loop, so they are started once, by the warm-up)."""
    for scenario in scenarios:
        times = scenario.times.setdefault(backend, {"baseline": [], "candidate": []})
        await timed(scenario.make_candidate(), scenario.warm_up)
        for rep in range(repeat):
            # Alternate the order, so a slow patch of a noisy machine hits both alike.
            order = ["baseline", "candidate"] if rep % 2 == 0 else ["candidate", "baseline"]
            for which in order:
                make = scenario.make_baseline if which == "baseline" else scenario.make_candidate
                elapsed = await timed(make(), n)
                times[which].append(elapsed)
                print(
                    f"  {backend:7} {scenario.name:12} {which:9} #{rep + 1}: {elapsed:.3f} s",
                    file=sys.stderr,
                )


# -- the report ----------------------------------------------------------------------------


def print_table(scenarios: Sequence[Scenario], backends: Sequence[str], n: int) -> bool:
    """Print the results; return whether every target was met."""
    header: tuple[str, ...] = (
        "scenario",
        "backend",
        "baseline",
        "candidate",
        "base s",
        "cand s",
        "speed-up",
        "target",
        "result",
    )
    rows: list[tuple[str, ...]] = []
    all_met = True
    for scenario in scenarios:
        for backend in backends:
            times = scenario.times[backend]
            base = statistics.median(times["baseline"])
            cand = statistics.median(times["candidate"])
            ratio = base / cand
            met = ratio >= scenario.target
            all_met &= met
            rows.append(
                (
                    scenario.name,
                    backend,
                    scenario.baseline,
                    scenario.candidate,
                    f"{base:.3f}",
                    f"{cand:.3f}",
                    f"{ratio:.2f}x",
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
    scenarios = [
        Scenario(
            key="cpu",
            name="CPU-bound",
            baseline="inline, 1 worker",
            candidate=f'"process", {CPU_WORKERS} workers',
            target=TARGET_CPU_SPEEDUP,
            make_baseline=functools.partial(inline_flow, loops),
            make_candidate=functools.partial(process_flow, loops),
            warm_up=4 * CPU_WORKERS,
        ),
        Scenario(
            key="io",
            name="blocking I/O",
            baseline='"thread", 1 worker',
            candidate=f'"thread", {IO_WORKERS} workers',
            target=TARGET_IO_SPEEDUP,
            make_baseline=functools.partial(thread_flow, 1),
            make_candidate=functools.partial(thread_flow, IO_WORKERS),
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
