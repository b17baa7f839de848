"""Peak memory of flowrhythm: 1,000,000 items against 100,000 through 3 jobs.

Each measurement runs in a fresh interpreter (this script, with ``--child``), which
pushes ``range(N)`` through 3 identity jobs (one worker each, small input queues) with
``Flow.run`` and reports its peak resident set size from
``resource.getrusage(RUSAGE_SELF).ru_maxrss``. The source costs nothing to hold, so if
flowrhythm kept anything per item (a counter list, a task, a buffer) the large run
would peak higher. Target: large / small <= 1.10 on every backend.

Usage::

    python benchmarks/memory.py                      # both backends, 100,000 vs 1,000,000
    python benchmarks/memory.py --small 20000 --large 200000 --backend trio
    python benchmarks/memory.py --check              # exit 1 if a ratio misses the target

The peak includes the interpreter and the imports (tens of MiB), which is the same in
both runs: the ratio is what flowrhythm adds per item, diluted by that constant, and
the growth in KiB is printed too.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

TARGET = 1.10
JOBS = 3
QUEUE_LENGTH = 8


def child(backend: str, items: int) -> None:
    """Run once in this (fresh) process and print the measurement as JSON."""
    import anyio

    from flowrhythm import Capacity, Flow

    async def identity(item: Any) -> Any:
        return item

    async def main() -> tuple[int, float]:
        flow = Flow()
        capacity = Capacity(min_workers=1, max_workers=1, queue_length=QUEUE_LENGTH)
        for index in range(JOBS):
            flow.add(identity, capacity, name=f"job{index}")
        started = time.perf_counter()
        stats = await flow.run(range(items))
        elapsed = time.perf_counter() - started
        return stats.jobs[f"job{JOBS - 1}"].completed, elapsed

    completed, elapsed = anyio.run(main, backend=backend)
    if completed != items:
        raise SystemExit(f"only {completed} of {items} items came out")
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform == "darwin":
        maxrss //= 1024  # bytes there, KiB on Linux
    print(json.dumps({"backend": backend, "items": items, "maxrss_kib": maxrss, "s": elapsed}))


def measure(backend: str, items: int) -> dict[str, Any]:
    """Peak RSS of one run in a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, __file__, "--child", "--backend", backend, "--items", str(items)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        raise RuntimeError(f"{backend} {items:,} items failed:\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def backend_available(backend: str) -> bool:
    if backend == "asyncio":
        return True
    try:
        __import__(backend)
    except ImportError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=100_000, help="items of the small run")
    parser.add_argument("--large", type=int, default=1_000_000, help="items of the large run")
    parser.add_argument(
        "--backend", action="append", choices=["asyncio", "trio"], help="repeatable; default both"
    )
    parser.add_argument("--check", action="store_true", help=f"exit 1 if a ratio > {TARGET}")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--items", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    backends: list[str] = args.backend or ["asyncio", "trio"]

    if args.child:
        child(backends[0], args.items)
        return 0

    print(
        f"flowrhythm peak RSS: {JOBS} identity jobs, 1 worker each, queues of {QUEUE_LENGTH}; "
        f"Python {platform.python_version()} on {platform.machine()}, a fresh process per run"
    )
    print(f"{'backend':<8} {'items':>10} {'peak RSS':>11} {'run':>8}")
    results: list[dict[str, Any]] = []
    failed = False
    for backend in backends:
        if not backend_available(backend):
            print(f"{backend:<8} not installed: skipped")
            continue
        small = measure(backend, args.small)
        large = measure(backend, args.large)
        for run in (small, large):
            print(
                f"{backend:<8} {run['items']:>10,} {run['maxrss_kib'] / 1024:>7.1f} MiB"
                f" {run['s']:>7.2f}s"
            )
        ratio = large["maxrss_kib"] / small["maxrss_kib"]
        ok = ratio <= TARGET
        failed |= not ok
        growth = large["maxrss_kib"] - small["maxrss_kib"]
        print(
            f"{backend:<8} ratio {args.large:,} / {args.small:,} items = {ratio:.3f} "
            f"(growth {growth:+,} KiB; target <= {TARGET:.2f}: {'ok' if ok else 'MISSED'})"
        )
        results.append(
            {"backend": backend, "small": small, "large": large, "ratio": ratio, "ok": ok}
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({"target": TARGET, "results": results}, out, indent=2)
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
