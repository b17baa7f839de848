"""Hop benchmark: the per-item cost of moving items between pipeline jobs.

Pushes N items (default 200,000) through 3 identity jobs (1 worker each, queue length 100)
and reports items/s and microseconds per item per hop for flowrhythm, for two hand-written
anyio memory-stream pipelines of the same shape (idiomatic and fast-path), and for the peers a
user might pick instead (aiostream and pypeln on asyncio, slurry on trio), all in one run.
It then checks that flowrhythm's peak RSS does not grow with the number of items.

Run ``python benchmarks/hop.py --help`` for the options; ``benchmarks/README.md`` explains
the columns.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import _bench
import anyio
from _bench import Timing, backend_available, describe_error, format_table, version_of
from anyio.lowlevel import checkpoint
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

HOPS = 3
QUEUE_LENGTH = 100
YIELD_EVERY = 64
DEFAULT_ITEMS = 200_000
DEFAULT_REPEAT = 5
DEFAULT_MEM_SMALL = 100_000
DEFAULT_MEM_LARGE = 1_000_000
WARMUP_ITEMS = 5_000

TARGET_FAST_PATH_RATIO = 0.5  # flowrhythm throughput / fast-path baseline throughput, at least
TARGET_RSS_RATIO = 1.10  # peak RSS with the large count / with the small count, at most

FLOWRHYTHM = "flowrhythm"
FAST_PATH = "anyio-fast-path"
IDIOMATIC = "anyio-idiomatic"


_now = _bench.now
_since = _bench.since


# A case runs the pipeline on n items inside the event loop and returns how long that took.
Runner = Callable[[int], Awaitable[Timing]]


async def identity(x: int) -> int:
    return x


class BenchmarkError(RuntimeError):
    """A pipeline under test did not deliver every item."""


def _expect(name: str, got: int, n: int) -> None:
    if got != n:
        raise BenchmarkError(f"{name}: {got} items came out, expected {n}")


# --------------------------------------------------------------------------- flowrhythm


def load_flowrhythm() -> Runner:
    from flowrhythm import Capacity, Flow

    def build() -> Flow:
        flow = Flow()
        for _ in range(HOPS):
            flow.add(
                identity,
                capacity=Capacity(min_workers=1, max_workers=1, queue_length=QUEUE_LENGTH),
            )
        return flow

    async def run(n: int) -> Timing:
        flow = build()
        start = _now()
        stats = await flow.run(range(n))
        elapsed = _since(start)
        jobs = list(stats.jobs.values())
        _expect(f"{FLOWRHYTHM} (jobs)", len(jobs), HOPS)
        for job in jobs:
            _expect(f"{FLOWRHYTHM} (completed)", job.completed, n)
        return elapsed

    return run


# ------------------------------------------------------------------ anyio baselines
#
# Both baselines have exactly the shape of the flowrhythm flow under `Flow.run`: a source task
# feeds the first job's bounded queue; each of the 3 jobs is one worker task that reads its
# queue and awaits identity(); the first two write the result into the next job's queue, and
# the last one is the sink: like `Flow.run`, which discards the last job's outputs, it only
# counts them.  Every queue is an anyio memory object stream of QUEUE_LENGTH items.

Send = MemoryObjectSendStream[int]
Receive = MemoryObjectReceiveStream[int]
Source = Callable[[int, Send], Coroutine[Any, Any, None]]
Stage = Callable[[Receive, Send], Coroutine[Any, Any, None]]
Sink = Callable[[Receive, list[int]], Coroutine[Any, Any, None]]


async def _run_baseline(name: str, n: int, source: Source, stage: Stage, sink: Sink) -> Timing:
    queues = [anyio.create_memory_object_stream[int](QUEUE_LENGTH) for _ in range(HOPS)]
    count = [0]
    start = _now()
    async with anyio.create_task_group() as tg:
        tg.start_soon(source, n, queues[0][0])
        for hop in range(HOPS - 1):
            tg.start_soon(stage, queues[hop][1], queues[hop + 1][0])
        tg.start_soon(sink, queues[HOPS - 1][1], count)
    elapsed = _since(start)
    _expect(name, count[0], n)
    return elapsed


async def _idiomatic_source(n: int, send: Send) -> None:
    async with send:
        for item in range(n):
            await send.send(item)


async def _idiomatic_stage(receive: Receive, send: Send) -> None:
    async with receive, send:
        async for item in receive:
            await send.send(await identity(item))


async def _idiomatic_sink(receive: Receive, count: list[int]) -> None:
    async with receive:
        async for item in receive:
            await identity(item)
            count[0] += 1


async def run_idiomatic(n: int) -> Timing:
    return await _run_baseline(IDIOMATIC, n, _idiomatic_source, _idiomatic_stage, _idiomatic_sink)


# Fast path: try the non-blocking call first and await only when the queue is full (send) or
# empty (receive).  A task that never has to wait would starve the others, so each task also
# yields to the scheduler once every YIELD_EVERY items it moved without waiting, as a real
# library must.


async def _fast_source(n: int, send: Send) -> None:
    async with send:
        since_yield = 0
        for item in range(n):
            try:
                send.send_nowait(item)
            except anyio.WouldBlock:
                await send.send(item)
                since_yield = 0
                continue
            since_yield += 1
            if since_yield >= YIELD_EVERY:
                await checkpoint()
                since_yield = 0


async def _fast_stage(receive: Receive, send: Send) -> None:
    async with receive, send:
        since_yield = 0
        while True:
            try:
                item = receive.receive_nowait()
            except anyio.WouldBlock:
                try:
                    item = await receive.receive()
                except anyio.EndOfStream:
                    return
                since_yield = 0
            except anyio.EndOfStream:
                return
            result = await identity(item)
            try:
                send.send_nowait(result)
            except anyio.WouldBlock:
                await send.send(result)
                since_yield = 0
                continue
            since_yield += 1
            if since_yield >= YIELD_EVERY:
                await checkpoint()
                since_yield = 0


async def _fast_sink(receive: Receive, count: list[int]) -> None:
    async with receive:
        done = 0
        since_yield = 0
        while True:
            try:
                item = receive.receive_nowait()
            except anyio.WouldBlock:
                try:
                    item = await receive.receive()
                except anyio.EndOfStream:
                    break
                since_yield = 0
            except anyio.EndOfStream:
                break
            await identity(item)
            done += 1
            since_yield += 1
            if since_yield >= YIELD_EVERY:
                await checkpoint()
                since_yield = 0
        count[0] = done


async def run_fast_path(n: int) -> Timing:
    return await _run_baseline(FAST_PATH, n, _fast_source, _fast_stage, _fast_sink)


# ------------------------------------------------------------------------------ peers
#
# Each peer is used the way its documentation shows, with 3 identity stages of 1 worker and,
# where the library has a setting for it, queues of QUEUE_LENGTH items.


async def _agen(n: int) -> AsyncIterator[int]:
    for item in range(n):
        yield item


def load_aiostream() -> Runner:
    from aiostream import (  # type: ignore[import-not-found, unused-ignore]
        pipe,
        stream,
    )

    async def run(n: int) -> Timing:
        xs = stream.iterate(range(n))
        for _ in range(HOPS):
            # (aiostream's stubs want a map function that also takes *args: ignore.)
            xs = xs | pipe.map(identity, task_limit=1)  # type: ignore[arg-type, unused-ignore]
        count = 0
        start = _now()
        async with xs.stream() as items:
            async for _ in items:
                count += 1
        elapsed = _since(start)
        _expect("aiostream", count, n)
        return elapsed

    return run


def load_pypeln() -> Runner:
    import pypeln as pl  # type: ignore[import-untyped, import-not-found, unused-ignore]

    async def run(n: int) -> Timing:
        # An async source: given a plain iterable, pypeln reads it in a worker thread and
        # hands each item over with run_coroutine_threadsafe, which is not what a hop costs.
        stage: Any = _agen(n)
        for _ in range(HOPS):
            stage = pl.task.map(identity, stage, workers=1, maxsize=QUEUE_LENGTH)
        count = 0
        start = _now()
        async for _ in stage:
            count += 1
        elapsed = _since(start)
        _expect("pypeln", count, n)
        return elapsed

    return run


def load_slurry() -> Runner:
    from slurry import Pipeline  # type: ignore[import-untyped, import-not-found, unused-ignore]
    from slurry.environments import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
        TrioSection,
    )

    class AsyncMap(TrioSection):  # type: ignore[misc, unused-ignore]
        """slurry's Map takes a plain function; an async job is a section of one's own."""

        def __init__(self, func: Callable[[int], Awaitable[int]]) -> None:
            self.func = func

        async def refine(
            self, input: AsyncIterator[int], output: Callable[[int], Awaitable[None]]
        ) -> None:
            async for item in input:
                await output(await self.func(item))

    async def run(n: int) -> Timing:
        # slurry links its sections with unbuffered trio channels: no queue-length setting.
        sections = [AsyncMap(identity) for _ in range(HOPS)]
        count = 0
        start = _now()
        async with Pipeline.create(_agen(n), *sections) as pipeline:
            tap = pipeline.tap(max_buffer_size=QUEUE_LENGTH)
            async for _ in tap:
                count += 1
        elapsed = _since(start)
        _expect("slurry", count, n)
        return elapsed

    return run


# ------------------------------------------------------------------------------ cases


@dataclass(frozen=True)
class CaseSpec:
    key: str
    label: str
    backends: tuple[str, ...]
    load: Callable[[], Runner]
    package: str | None  # distribution name, for the version column
    install: str = "pip install -r benchmarks/requirements.txt"


CASES: tuple[CaseSpec, ...] = (
    CaseSpec(
        FLOWRHYTHM,
        "flowrhythm",
        ("asyncio", "trio"),
        load_flowrhythm,
        "flowrhythm",
        "pip install -e .",
    ),
    CaseSpec(
        FAST_PATH, "anyio streams, fast path", ("asyncio", "trio"), lambda: run_fast_path, None
    ),
    CaseSpec(
        IDIOMATIC, "anyio streams, idiomatic", ("asyncio", "trio"), lambda: run_idiomatic, None
    ),
    CaseSpec("aiostream", "aiostream pipe.map", ("asyncio",), load_aiostream, "aiostream"),
    CaseSpec("pypeln", "pypeln pl.task.map", ("asyncio",), load_pypeln, "pypeln"),
    CaseSpec(
        "slurry",
        "slurry Pipeline",
        ("trio",),
        load_slurry,
        "slurry",
        # Every slurry release pins trio<0.22, older than anyio's trio backend accepts.
        "pip install --no-deps -r benchmarks/requirements-nodeps.txt",
    ),
)


@dataclass
class Case:
    spec: CaseSpec
    backend: str
    runner: Runner | None  # None: could not be loaded (see error)
    times: list[float] = field(default_factory=list)  # wall clock, s
    cpu_times: list[float] = field(default_factory=list)  # process CPU time, s
    error: str | None = None

    @property
    def name(self) -> str:
        return f"{self.backend}/{self.spec.key}"


def measure(case: Case, n: int) -> Timing:
    assert case.runner is not None
    gc.collect()
    return anyio.run(case.runner, n, backend=case.backend)


def build_cases(
    backends: Sequence[str], only: set[str] | None, notes: list[str]
) -> tuple[list[Case], set[str]]:
    cases: list[Case] = []
    required = {FLOWRHYTHM, FAST_PATH}
    failed_required: set[str] = set()
    for backend in backends:
        why = backend_available(backend)
        if why is not None:
            notes.append(f"{backend}: skipped, {why}")
            continue
        for spec in CASES:
            if backend not in spec.backends or (only is not None and spec.key not in only):
                continue
            try:
                runner = spec.load()
            except Exception as exc:  # noqa: BLE001 - a failing case is reported, not fatal
                error = describe_error(exc)
                notes.append(
                    f"{backend}/{spec.key}: skipped, could not import ({error});"
                    f" to install: {spec.install}"
                )
                if spec.key in required:
                    failed_required.add(f"{backend}/{spec.key}")
                cases.append(Case(spec, backend, None, error=f"not importable ({error})"))
                continue
            cases.append(Case(spec, backend, runner))
    return cases, failed_required


def run_throughput(cases: list[Case], n: int, repeat: int, notes: list[str]) -> None:
    # Warm up every case (imports, caches, first-run allocations); a case that fails here is
    # dropped with a note instead of failing the benchmark.
    for case in cases:
        if case.error is not None:
            continue
        try:
            measure(case, min(n, WARMUP_ITEMS))
        except Exception as exc:  # noqa: BLE001 - a failing case is reported, not fatal
            case.error = describe_error(exc)
            notes.append(f"{case.name}: skipped, failed during warm-up ({case.error})")
    live = [case for case in cases if case.error is None]
    # Interleave the repetitions and rotate the order, so that a slow patch of this (noisy)
    # machine hits every case alike instead of one case's whole series.
    for rep in range(repeat):
        shift = rep % len(live) if live else 0
        for case in live[shift:] + live[:shift]:
            if case.error is not None:
                continue
            try:
                elapsed = measure(case, n)
            except Exception as exc:  # noqa: BLE001 - a failing case is reported, not fatal
                case.error = describe_error(exc)
                notes.append(f"{case.name}: failed in repetition {rep + 1} ({case.error})")
                continue
            case.times.append(elapsed.wall)
            case.cpu_times.append(elapsed.cpu)
            print(
                f"  [{rep + 1}/{repeat}] {case.name:<26} {elapsed.wall:7.3f} s"
                f"  {us_per_hop(elapsed.wall, n):7.2f} µs/item/hop"
                f"  (cpu {us_per_hop(elapsed.cpu, n):.2f})",
                file=sys.stderr,
                flush=True,
            )


def us_per_hop(elapsed: float, n: int) -> float:
    return elapsed / (n * HOPS) * 1e6


# ------------------------------------------------------------------------------ memory


def rss_child(backend: str, n: int) -> None:
    """Entry point of the fresh subprocess that measures one memory case."""
    runner = load_flowrhythm()
    elapsed = anyio.run(runner, n, backend=backend)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform == "darwin":  # bytes there, KiB on Linux
        maxrss //= 1024
    print(
        json.dumps({"backend": backend, "items": n, "maxrss_kib": maxrss, "elapsed": elapsed.wall})
    )


def measure_rss(backend: str, n: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--rss-child", backend, "--items", str(n)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchmarkError(f"child exited with {proc.returncode}: {tail}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def run_memory(
    backends: Sequence[str], small: int, large: int, notes: list[str]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for backend in backends:
        why = backend_available(backend)
        if why is not None:
            continue
        try:
            low = measure_rss(backend, small)
            high = measure_rss(backend, large)
        except Exception as exc:  # noqa: BLE001 - a failing case is reported, not fatal
            notes.append(f"memory/{backend}: failed ({describe_error(exc)})")
            rows.append({"backend": backend, "error": describe_error(exc)})
            continue
        ratio = high["maxrss_kib"] / low["maxrss_kib"]
        rows.append(
            {
                "backend": backend,
                "small_items": small,
                "large_items": large,
                "small_maxrss_kib": low["maxrss_kib"],
                "large_maxrss_kib": high["maxrss_kib"],
                "growth_kib": high["maxrss_kib"] - low["maxrss_kib"],
                "ratio": ratio,
                "target_max": TARGET_RSS_RATIO,
                "ok": ratio <= TARGET_RSS_RATIO,
            }
        )
        print(
            f"  [memory] {backend:<8} {small:>9,} items: {low['maxrss_kib'] / 1024:7.1f} MiB"
            f"   {large:>9,} items: {high['maxrss_kib'] / 1024:7.1f} MiB",
            file=sys.stderr,
            flush=True,
        )
    return rows


# ------------------------------------------------------------------------------ report


def summarize(cases: list[Case], n: int) -> list[dict[str, Any]]:
    flowrhythm: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    for case in cases:
        if case.times:
            median = statistics.median(case.times)
            cpu_median = statistics.median(case.cpu_times)
            row: dict[str, Any] = {
                "backend": case.backend,
                "case": case.spec.key,
                "label": case.spec.label,
                "version": version_of(case.spec.package),
                "repetitions": len(case.times),
                "times_s": case.times,
                "median_s": median,
                "items_per_s": n / median,
                "us_per_item_per_hop": us_per_hop(median, n),
                "us_per_item_per_hop_min": us_per_hop(min(case.times), n),
                "us_per_item_per_hop_max": us_per_hop(max(case.times), n),
                "cpu_times_s": case.cpu_times,
                "cpu_median_s": cpu_median,
                "cpu_us_per_item_per_hop": us_per_hop(cpu_median, n),
                "error": case.error,
            }
            if case.spec.key == FLOWRHYTHM:
                flowrhythm[case.backend] = row
        else:
            row = {
                "backend": case.backend,
                "case": case.spec.key,
                "label": case.spec.label,
                "version": version_of(case.spec.package),
                "error": case.error or "no measurement",
            }
        rows.append(row)
    for row in rows:
        fr = flowrhythm.get(row["backend"])
        if fr is not None and "items_per_s" in row and row["case"] != FLOWRHYTHM:
            # flowrhythm's throughput / this row's: > 1 means flowrhythm is faster.
            row["flowrhythm_ratio"] = row["median_s"] / fr["median_s"]
            row["flowrhythm_ratio_cpu"] = row["cpu_median_s"] / fr["cpu_median_s"]
            if row["case"] == FAST_PATH:
                row["target_min"] = TARGET_FAST_PATH_RATIO
                row["ok"] = row["flowrhythm_ratio"] >= TARGET_FAST_PATH_RATIO
    return rows


def print_table(
    rows: list[dict[str, Any]],
    memory: list[dict[str, Any]],
    notes: list[str],
    n: int,
    repeat: int,
) -> None:
    print()
    print(
        f"Hop benchmark: {n:,} items through {HOPS} identity jobs "
        f"(1 worker each, queue length {QUEUE_LENGTH}), median of {repeat} repetitions"
    )
    print(_bench.environment_line())
    versions = ", ".join(
        f"{name} {version_of(name)}"
        for name in ("flowrhythm", "anyio", "trio", "aiostream", "pypeln", "slurry")
    )
    print(f"Versions: {versions}")
    print()
    headers = [
        "backend",
        "implementation",
        "items/s",
        "µs/item/hop",
        "min-max",
        "flowrhythm ÷ this",
        "target",
        "cpu µs/item/hop",
        "÷ by cpu",
    ]
    cells: list[list[str]] = []
    for row in rows:
        if cells and cells[-1] and cells[-1][0] != row["backend"]:
            cells.append([])
        first = [row["backend"], row["label"]]
        if "items_per_s" not in row:
            cells.append([*first, "-", "-", "-", "-", "skipped (see notes)", "-", "-"])
            continue
        ratio = f"{row['flowrhythm_ratio']:.2f}x" if "flowrhythm_ratio" in row else ""
        ratio_cpu = f"{row['flowrhythm_ratio_cpu']:.2f}x" if "flowrhythm_ratio" in row else ""
        target = ""
        if "target_min" in row:
            target = f"≥ {row['target_min']:.2f}: {'ok' if row['ok'] else 'MISSED'}"
        cells.append(
            [
                *first,
                f"{row['items_per_s']:,.0f}",
                f"{row['us_per_item_per_hop']:.2f}",
                f"{row['us_per_item_per_hop_min']:.2f}-{row['us_per_item_per_hop_max']:.2f}",
                ratio,
                target,
                f"{row['cpu_us_per_item_per_hop']:.2f}",
                ratio_cpu,
            ]
        )
    print(format_table(headers, cells, right={2, 3, 4, 5, 7, 8}))
    if memory:
        print()
        print(
            "Peak RSS of flowrhythm, same 3 jobs (a fresh process per count, getrusage ru_maxrss)"
        )
        print()
        mem_cells: list[list[str]] = []
        for mem in memory:
            if "ratio" not in mem:
                mem_cells.append([mem["backend"], "-", "-", "-", "-", f"failed: {mem['error']}"])
                continue
            verdict = "ok" if mem["ok"] else "MISSED"
            mem_cells.append(
                [
                    mem["backend"],
                    f"{mem['small_maxrss_kib'] / 1024:.1f} MiB",
                    f"{mem['large_maxrss_kib'] / 1024:.1f} MiB",
                    f"{mem['growth_kib'] / 1024:+.1f} MiB",
                    f"{mem['ratio']:.3f}",
                    f"≤ {mem['target_max']:.2f}: {verdict}",
                ]
            )
        small = memory[0].get("small_items", 0)
        large = memory[0].get("large_items", 0)
        mem_headers = [
            "backend",
            f"{small:,} items",
            f"{large:,} items",
            "growth",
            "ratio",
            "target",
        ]
        print(format_table(mem_headers, mem_cells, right={1, 2, 3, 4}))
    if notes:
        print()
        print("Notes:")
        for note in notes:
            print(f"  - {note}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _bench.parser(__doc__, repeat=DEFAULT_REPEAT)
    parser.add_argument("--items", type=int, default=DEFAULT_ITEMS, help="items per run")
    parser.add_argument(
        "--only",
        action="append",
        choices=[spec.key for spec in CASES],
        help="run only this implementation (repeatable; default: all)",
    )
    parser.add_argument(
        "--mem-small", type=int, default=DEFAULT_MEM_SMALL, help="items, small memory run"
    )
    parser.add_argument(
        "--mem-large", type=int, default=DEFAULT_MEM_LARGE, help="items, large memory run"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the memory check")
    parser.add_argument("--rss-child", metavar="BACKEND", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.items < 1 or args.repeat < 1 or args.mem_small < 1 or args.mem_large < 1:
        parser.error("--items, --repeat, --mem-small and --mem-large must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _bench.printable_output()
    if args.rss_child:
        rss_child(args.rss_child, args.items)
        return 0
    backends = _bench.backends_of(args)
    only = set(args.only) if args.only else None
    notes: list[str] = []

    cases, failed_required = build_cases(backends, only, notes)
    run_throughput(cases, args.items, args.repeat, notes)
    rows = summarize(cases, args.items)

    memory: list[dict[str, Any]] = []
    run_mem = not args.no_memory and (only is None or FLOWRHYTHM in only)
    if run_mem and not any(f"{b}/{FLOWRHYTHM}" in failed_required for b in backends):
        memory = run_memory(backends, args.mem_small, args.mem_large, notes)

    print_table(rows, memory, notes, args.items, args.repeat)

    if args.json:
        config = {
            "items": args.items,
            "repeat": args.repeat,
            "hops": HOPS,
            "queue_length": QUEUE_LENGTH,
            "workers_per_job": 1,
            "yield_every": YIELD_EVERY,
            "backends": backends,
        }
        _bench.write_json(args.json, config, results=rows, memory=memory, notes=notes)

    flowrhythm_failed = bool(failed_required) or any(
        case.spec.key in (FLOWRHYTHM, FAST_PATH) and case.error is not None for case in cases
    )
    memory_failed = any("error" in mem for mem in memory)
    missed = any(row.get("ok") is False for row in rows) or any(
        mem.get("ok") is False for mem in memory
    )
    if flowrhythm_failed or memory_failed or (args.check and missed):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
