"""What the ledger costs and what it saves: overhead, resume lookups, a resumed crawl.

Three measurements, each on asyncio and on trio, in the same event loop:

- **overhead**: ``ITEMS`` items through 3 jobs at about 10,000 items/s (the first job
  sleeps 1 ms per item on 10 workers), with a SQLite ledger and without one, interleaved;
  the figure is the median wall-clock ratio (target: at most 5% slower), and the extra CPU
  time per item.
- **resume lookup**: a ledger already holding ``LOOKUP_KEYS`` keys, and a run over the same
  keys: everything is skipped, so the run is the lookups (target: at least 200,000 keys/s).
- **resumed crawl**: a crawl of ``CRAWL`` URLs (a 4 ms fetch on 16 workers), run fresh; then
  the same crawl stopped once half of its URLs were stored and run again: the second run
  should take about half the time of a fresh one.

Run ``python benchmarks/ledger.py --help``.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from typing import Any

import _bench
import anyio

from flowrhythm import Capacity, Flow, Ledger

ITEMS = 20_000
LOOKUP_KEYS = 200_000
CRAWL = 2_000
OVERHEAD_TARGET = 1.05
LOOKUP_TARGET = 200_000.0


async def sleepy(item: int) -> int:
    await anyio.sleep(0.001)
    return item


async def identity(item: int) -> int:
    return item


async def sink(item: int) -> None:
    pass


def three_jobs() -> Flow:
    flow = Flow()
    flow.add(sleepy, capacity=Capacity(min_workers=10, max_workers=10))
    flow.add(identity)
    flow.add(sink)
    return flow


async def timed(run: Any) -> tuple[float, float]:
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    await run()
    return time.perf_counter() - wall, time.process_time() - cpu


async def overhead(repeat: int, folder: str) -> dict[str, float]:
    flow = three_jobs()
    ratios, extra_cpu, rates = [], [], []
    for index in range(repeat):
        ledger = Ledger.sqlite(os.path.join(folder, f"overhead-{index}.db"))

        async def without() -> None:
            await flow.run(range(ITEMS))

        async def with_ledger(ledger: Ledger = ledger) -> None:
            await flow.run(range(ITEMS), ledger=ledger)

        plain_wall, plain_cpu = await timed(without)
        ledger_wall, ledger_cpu = await timed(with_ledger)
        ratios.append(ledger_wall / plain_wall)
        extra_cpu.append((ledger_cpu - plain_cpu) / ITEMS * 1e6)
        rates.append(ITEMS / plain_wall)
    return {
        "rate": statistics.median(rates),
        "ratio": statistics.median(ratios),
        "extra_cpu_us": statistics.median(extra_cpu),
    }


def fill(path: str, keys: int) -> None:
    Ledger.sqlite(path, run="lookup").store.open()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executemany(
            "INSERT OR REPLACE INTO flowrhythm_ledger VALUES ('lookup', ?, 0, NULL, NULL, NULL, 0, 0)",
            ((f"https://example.org/{n}",) for n in range(keys)),
        )


async def lookup(repeat: int, folder: str) -> dict[str, float]:
    path = os.path.join(folder, "lookup.db")
    await anyio.to_thread.run_sync(fill, path, LOOKUP_KEYS)
    flow = Flow().add(identity)
    urls = [f"https://example.org/{n}" for n in range(LOOKUP_KEYS)]
    rates = []
    for _ in range(repeat):
        ledger = Ledger.sqlite(path, run="lookup")

        async def rerun(ledger: Ledger = ledger) -> None:
            stats = await flow.run(urls, ledger=ledger)
            assert stats.resumed == LOOKUP_KEYS, stats

        wall, _ = await timed(rerun)
        rates.append(LOOKUP_KEYS / wall)
    return {"keys_per_second": statistics.median(rates)}


class Progress:
    """How many URLs the crawl stored, and an event set at half of them."""

    def __init__(self) -> None:
        self.stored = 0
        self.half = anyio.Event()

    async def store(self, url: str) -> None:
        self.stored += 1
        if self.stored == CRAWL // 2:
            self.half.set()


async def fetch(url: str) -> str:
    await anyio.sleep(0.004)
    return url


async def crawl(repeat: int, folder: str) -> dict[str, float]:
    progress = Progress()
    flow = Flow().add(fetch, capacity=Capacity(min_workers=16, max_workers=16))
    flow.add(progress.store, name="store")
    urls = [f"https://example.org/{n}" for n in range(CRAWL)]
    fresh_times, resumed_times = [], []
    for index in range(repeat):

        async def fresh(index: int = index) -> None:
            await flow.run(urls, ledger=Ledger.sqlite(os.path.join(folder, f"fresh-{index}.db")))

        wall, _ = await timed(fresh)
        fresh_times.append(wall)

        ledger = Ledger.sqlite(os.path.join(folder, f"crawl-{index}.db"))
        progress.stored, progress.half = 0, anyio.Event()
        async with anyio.create_task_group() as task_group:

            async def until_half(ledger: Ledger = ledger) -> None:
                await flow.run(urls, ledger=ledger)

            task_group.start_soon(until_half)
            await progress.half.wait()
            task_group.cancel_scope.cancel()  # the crash, at 50%

        async def resumed(ledger: Ledger = ledger) -> None:
            stats = await flow.run(urls, ledger=ledger)
            assert stats.resumed >= CRAWL // 2 - 16, stats

        wall, _ = await timed(resumed)
        resumed_times.append(wall)
    fresh_time = statistics.median(fresh_times)
    resumed_time = statistics.median(resumed_times)
    return {"fresh": fresh_time, "resumed": resumed_time, "ratio": resumed_time / fresh_time}


async def measure(repeat: int) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as folder:
        return {
            "overhead": await overhead(repeat, folder),
            "lookup": await lookup(repeat, folder),
            "crawl": await crawl(repeat, folder),
        }


def main() -> int:
    _bench.printable_output()
    args = _bench.parser(__doc__, repeat=3).parse_args()
    print(_bench.environment_line())
    rows: list[list[str]] = []
    results: dict[str, Any] = {}
    missed = False
    for backend in _bench.backends_of(args):
        why = _bench.backend_available(backend)
        if why is not None:
            print(f"{backend}: skipped, {why}")
            continue
        figures = anyio.run(measure, args.repeat, backend=backend)
        results[backend] = figures
        over, look, resume = figures["overhead"], figures["lookup"], figures["crawl"]
        ok_over = over["ratio"] <= OVERHEAD_TARGET
        ok_look = look["keys_per_second"] >= LOOKUP_TARGET
        ok_crawl = resume["ratio"] <= 0.6
        missed |= not (ok_over and ok_look and ok_crawl)
        rows += [
            [
                backend,
                f"overhead at {over['rate']:,.0f} items/s, 3 jobs",
                f"x{over['ratio']:.3f} wall, +{over['extra_cpu_us']:.1f} µs CPU/item",
                "≤ x1.05",
                "met" if ok_over else "MISSED",
            ],
            [
                backend,
                f"resume lookup, {LOOKUP_KEYS:,} keys done",
                f"{look['keys_per_second']:,.0f} keys/s",
                "≥ 200,000",
                "met" if ok_look else "MISSED",
            ],
            [
                backend,
                f"crawl of {CRAWL:,} killed at 50%, resumed",
                f"{resume['resumed']:.2f} s vs {resume['fresh']:.2f} s fresh (x{resume['ratio']:.2f})",
                "about x0.5",
                "met" if ok_crawl else "MISSED",
            ],
            [],
        ]
    headers = ["backend", "case", "measured", "target", ""]
    print(_bench.format_table(headers, rows, right=set()))
    if args.json:
        _bench.write_json(args.json, {"items": ITEMS, "repeat": args.repeat}, results=results)
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
