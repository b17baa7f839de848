"""A SQLite sink: rows written in batches, in a thread, by one writer.

``parse`` turns lines of text into rows. ``insert`` is synchronous ``sqlite3``
code: ``executor="thread"`` runs it in a worker thread so the event loop never
waits on the disk, and ``batch=Batch(size=200, timeout=0.05)`` hands it up to 200
rows per call — one transaction each, instead of one per row. One worker makes
it the only writer of the database. Lines that do not parse go to the error job.

Run it with ``python examples/sqlite_sink.py [path]`` (default: a temporary file).
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
from pathlib import Path

import anyio

from flowrhythm import Batch, Capacity, ErrorItem, Flow, FlowStats

SCHEMA = "CREATE TABLE IF NOT EXISTS readings (sensor TEXT, value REAL)"


async def parse(line: str) -> tuple[str, float]:
    sensor, value = line.split(",")  # ValueError for a malformed line: the error job
    return sensor.strip(), float(value)


class Sink:
    """The database side: one connection, used by one worker thread at a time."""

    def __init__(self, path: Path) -> None:
        # The job's one worker may run each call in a different anyio worker
        # thread, one call at a time: the connection is never used concurrently.
        self.connection = sqlite3.connect(path, check_same_thread=False)
        self.connection.execute(SCHEMA)
        self.rejected: list[ErrorItem] = []

    def insert(self, rows: list[tuple[str, float]]) -> int:
        with self.connection:  # one transaction per batch
            self.connection.executemany("INSERT INTO readings VALUES (?, ?)", rows)
        return len(rows)

    async def reject(self, error: ErrorItem) -> None:
        self.rejected.append(error)

    def close(self) -> None:
        self.connection.close()


def lines(count: int) -> list[str]:
    """Sensor readings as text; every 100th line is malformed."""
    return ["garbage" if i % 100 == 99 else f"sensor-{i % 7}, {i * 0.5}" for i in range(count)]


async def main(path: Path, count: int = 5_000) -> FlowStats:
    sink = Sink(path)
    try:
        flow = (
            Flow(name="ingest")
            .add(parse, Capacity(min_workers=1, max_workers=4))
            .add(
                sink.insert,
                Capacity(min_workers=1, max_workers=1),
                name="insert",
                executor="thread",
                batch=Batch(size=200, timeout=0.05),
            )
            .add_error_job(sink.reject, name="rejected")
        )
        stats = await flow.run(lines(count))
        (stored,) = sink.connection.execute("SELECT COUNT(*) FROM readings").fetchone()
    finally:
        sink.close()
    # The last job's outputs are its calls' results: one per batch, one per transaction.
    print(
        f"{stored} rows stored in {stats.items_out} transactions, "
        f"{len(sink.rejected)} lines rejected"
    )
    return stats


if __name__ == "__main__":
    if len(sys.argv) > 1:
        anyio.run(main, Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as directory:
            anyio.run(main, Path(directory) / "readings.db")
