"""What the statistics cost: flowrhythm with its accounting on vs the same engine without it.

200,000 items (``--items``) through 3 identity jobs (1 worker each, queues of 100), on asyncio
and on trio, median of ``--repeat`` interleaved runs:

* **stats on**: flowrhythm as shipped: counters, worker-state time accounting (one clock read per
  real wait), processing-time sampling (one fast item in 32), all of ``JobStats``;
* **stats off**: the same engine with the time accounting patched out in this process (the idle
  and blocked bookkeeping keeps its counts but reads no clock; no item is timed) — the engine
  without the accounting;
* **fast path**: the hand-written anyio pipeline of ``benchmarks/hop.py`` (``send_nowait`` /
  ``receive_nowait`` first, a checkpoint every 64 items), for reference.

Target: stats on >= 0.90 x the throughput of stats off. Usage::

    python benchmarks/accounting.py [--items N] [--repeat R]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import _bench
import anyio
from anyio import WouldBlock
from anyio.lowlevel import checkpoint

import flowrhythm
from flowrhythm import _stats, _timing

TARGET = 0.90


async def identity(item: int) -> int:
    return item


def flow() -> flowrhythm.Flow:
    built = flowrhythm.Flow()
    for _ in range(3):
        built.add(identity, capacity=flowrhythm.Capacity(queue_length=100))
    return built


async def run_flowrhythm(n: int) -> float:
    start = time.perf_counter()
    await flow().run(range(n))
    return time.perf_counter() - start


async def run_fast_path(n: int) -> float:
    streams = [anyio.create_memory_object_stream[int](100) for _ in range(3)]

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for index in range(3):
            send = streams[index + 1][0] if index < 2 else None
            tg.start_soon(_bench.fast_stage, streams[index][1], send, identity)
        first = streams[0][0]
        with first:
            for item in range(n):
                try:
                    first.send_nowait(item)
                except WouldBlock:
                    await first.send(item)
                if not item % 64:
                    await checkpoint()
    return time.perf_counter() - start


class StatsOff:
    """Patch the time accounting out of this process while the block runs."""

    def __enter__(self) -> None:
        c = _stats.Counters
        self.saved = (c.enter_idle, c.leave_idle, c.enter_blocked, c.leave_blocked)
        self.mask = _timing.SAMPLE_MASK

        def enter_idle(self: _stats.Counters) -> float:
            self.idle += 1
            return 0.0

        def leave_idle(self: _stats.Counters, since: float) -> None:
            self.idle -= 1

        def enter_blocked(self: _stats.Counters) -> float:
            self.blocked += 1
            return 0.0

        def leave_blocked(self: _stats.Counters, since: float) -> None:
            self.blocked -= 1

        c.enter_idle, c.leave_idle = enter_idle, leave_idle  # type: ignore[method-assign]
        c.enter_blocked, c.leave_blocked = enter_blocked, leave_blocked  # type: ignore[method-assign]
        self.timings_init = _timing.Timings.__init__

        def never_timed(timings: _timing.Timings) -> None:
            self.timings_init(timings)
            timings.mask = (1 << 62) - 1  # item numbers below 2**62 are never timed

        _timing.Timings.__init__ = never_timed  # type: ignore[method-assign]
        _timing.Timings.add = lambda timings, seconds: None  # type: ignore[method-assign]

    def __exit__(self, *exc_info: object) -> None:
        c = _stats.Counters
        c.enter_idle, c.leave_idle, c.enter_blocked, c.leave_blocked = self.saved  # type: ignore[method-assign]
        _timing.Timings.__init__ = self.timings_init  # type: ignore[method-assign]
        del _timing.Timings.add


async def measure(n: int, repeat: int) -> dict[str, list[float]]:
    original_add = _timing.Timings.add
    times: dict[str, list[float]] = {"stats on": [], "stats off": [], "fast path": []}
    cases: list[tuple[str, Callable[[int], Awaitable[float]]]] = [
        ("stats on", run_flowrhythm),
        ("stats off", run_flowrhythm),
        ("fast path", run_fast_path),
    ]
    await run_flowrhythm(n // 10)  # warm-up
    for rep in range(repeat):
        order = cases if rep % 2 == 0 else cases[::-1]
        for name, case in order:
            if name == "stats off":
                with StatsOff():
                    elapsed = await case(n)
                _timing.Timings.add = original_add  # type: ignore[method-assign]
            else:
                elapsed = await case(n)
            times[name].append(elapsed)
            print(f"  {name:9} #{rep + 1}: {elapsed:.3f} s", file=sys.stderr)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    ok = True
    print(f"{'backend':8} {'case':10} {'µs/item/hop':>12} {'vs stats off':>13}")
    for backend in ("asyncio", "trio"):
        times = anyio.run(measure, args.items, args.repeat, backend=backend)
        medians = {name: statistics.median(values) for name, values in times.items()}
        for name, elapsed in medians.items():
            per_hop = elapsed / args.items / 3 * 1e6
            ratio = medians["stats off"] / elapsed
            print(f"{backend:8} {name:10} {per_hop:12.3f} {ratio:12.2f}x")
        cost = medians["stats off"] / medians["stats on"]
        passed = cost >= TARGET
        ok &= passed
        print(
            f"{backend:8} throughput with stats / without: {cost:.2f} "
            f"(target >= {TARGET}) {'PASS' if passed else 'MISS'}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
