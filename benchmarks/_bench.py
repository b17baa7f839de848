"""What the benchmark scripts share: timing, arguments, tables and JSON output.

Each script in this directory imports it (``import _bench``; Python puts the
script's own directory on ``sys.path``). It holds no benchmark of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import io
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from anyio import EndOfStream, WouldBlock
from anyio.lowlevel import checkpoint
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

BACKENDS = ("asyncio", "trio")


@dataclass(frozen=True)
class Timing:
    """Seconds one run took: wall clock, and CPU time of this process.

    Every pipeline here runs in one thread, so its CPU time is the work it did; unlike the
    wall clock it does not count the time other programs on a busy machine held the CPU.
    """

    wall: float
    cpu: float


def now() -> tuple[float, float]:
    """A start mark for :func:`since`."""
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> Timing:
    return Timing(time.perf_counter() - start[0], time.process_time() - start[1])


def median_timing(timings: Sequence[Timing]) -> Timing:
    return Timing(
        statistics.median(t.wall for t in timings), statistics.median(t.cpu for t in timings)
    )


def version_of(package: str | None) -> str:
    """The installed version of ``package`` (``None``: anyio's), or ``-``."""
    if package is None:
        return f"anyio {importlib.metadata.version('anyio')}"
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return describe_error(exc.exceptions[0])
    return f"{type(exc).__name__}: {exc}"


def backend_available(backend: str) -> str | None:
    """None when the backend can run, else why not."""
    if backend == "trio":
        try:
            import trio  # noqa: F401
        except ImportError as exc:
            return f"trio is not installed ({exc})"
    return None


def environment() -> dict[str, Any]:
    """The machine and the versions, for the JSON output."""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "flowrhythm": version_of("flowrhythm"),
        "anyio": version_of("anyio"),
        "trio": version_of("trio"),
    }


def environment_line() -> str:
    return (
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"
    )


def parser(doc: str | None, *, repeat: int) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark has.

    ``--repeat``, ``--backend`` (repeatable; default both), ``--json PATH`` and ``--check``.
    """
    result = argparse.ArgumentParser(
        description=doc.splitlines()[0] if doc else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    result.add_argument("--repeat", type=int, default=repeat, help="timed repetitions per case")
    result.add_argument(
        "--backend",
        action="append",
        choices=BACKENDS,
        help="backend to run (repeatable; default: both)",
    )
    result.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    result.add_argument(
        "--check",
        action="store_true",
        help="exit with status 1 when a target is missed (otherwise only failures do)",
    )
    return result


def backends_of(args: argparse.Namespace) -> list[str]:
    return list(args.backend or BACKENDS)


def printable_output() -> None:
    """Keep "µ", "÷" and "≥" printable on any console or pipe."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    """Plain-text table; the columns whose index is in ``right`` are right-aligned.

    An empty row separates groups.
    """
    widths = [len(h) for h in headers]
    for row in filter(None, rows):
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        if not cells:
            return ""
        parts = [
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The same table in Markdown (for the README and the docs)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows if row]
    return "\n".join(lines)


def write_json(path: str, config: dict[str, Any], **sections: Any) -> None:
    """Write ``{"config", "environment", **sections}`` to ``path`` and say so."""
    report = {"config": config, "environment": environment(), **sections}
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2)
        fh.write("\n")
    print(f"\nJSON written to {path}")


async def fast_stage(
    receive: MemoryObjectReceiveStream[Any],
    send: MemoryObjectSendStream[Any] | None,
    fn: Callable[[Any], Awaitable[Any]],
) -> None:
    """The hand-written reference stage: ``receive_nowait``/``send_nowait`` first, then wait;
    a checkpoint every 64 items. Closes its streams when its input ends."""
    count = 0
    with receive, send if send is not None else contextlib.nullcontext():
        while True:
            try:
                item = receive.receive_nowait()
            except WouldBlock:
                try:
                    item = await receive.receive()
                except EndOfStream:
                    return
            except EndOfStream:
                return
            item = await fn(item)
            if send is not None:
                try:
                    send.send_nowait(item)
                except WouldBlock:
                    await send.send(item)
            count += 1
            if not count % 64:
                await checkpoint()
