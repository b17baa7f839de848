"""CPU-bound work in a process pool, read with ``stream()`` from a plain trio program.

``checksum`` is ordinary synchronous, CPU-bound Python: run on the event loop it
would stall every other task. ``executor=pool`` runs each call in a worker
process of a :class:`concurrent.futures.ProcessPoolExecutor`; the job's worker
count (here, one per process) bounds how many calls are in flight. The program
is plain trio: flowrhythm runs on it through anyio, nothing to configure.

Run it with ``python examples/process_pool.py``. The processes are started with
"spawn", so the function must be importable: keep it at module level and guard
the entry point with ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Executor, ProcessPoolExecutor

import trio

from flowrhythm import Capacity, Flow

PROCESSES = 2


def checksum(n: int) -> tuple[int, int, int]:
    """A deliberately slow sum of squares; returns (n, result, the worker's pid)."""
    total = 0
    for i in range(n * 2_000):
        total = (total + i * i) % 1_000_003
    return n, total, os.getpid()


async def main(pool: Executor, items: int = 40) -> dict[int, int]:
    flow = Flow().add(
        checksum,
        Capacity(min_workers=PROCESSES, max_workers=PROCESSES),
        executor=pool,
        ordered=True,  # outputs in input order, although the calls overlap
    )
    results: dict[int, int] = {}
    pids: set[int] = set()
    async with flow.stream(range(items)) as outputs:
        async for n, total, pid in outputs:
            results[n] = total
            pids.add(pid)
    print(
        f"{len(results)} checksums from {len(pids)} worker processes; the last: {results[items - 1]}"
    )
    return results


if __name__ == "__main__":
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=PROCESSES, mp_context=context) as pool:
        trio.run(main, pool)
