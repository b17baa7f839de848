"""A timeline of a running flow: its stats sampled at an interval, bounded."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, final

import anyio
import attrs

from ._validate import check_count, check_number

if TYPE_CHECKING:
    from ._stats import FlowStats, StatsSource


@final
@attrs.frozen(kw_only=True)
class TimelinePoint:
    """One job at one instant of a :class:`Timeline`.

    .. versionadded:: 1.0
    """

    time: float  #: seconds since the run started
    job: str
    workers: int
    idle: int
    active: int
    blocked: int
    queue_depth: int
    completed: int
    errored: int
    throughput: float  #: items/s over the last couple of seconds


@final
class Timeline:
    """The samples a :func:`record` took: the newest ``max_samples`` snapshots.

    .. versionadded:: 1.0
    """

    __slots__ = ("_snapshots",)

    def __init__(self, max_samples: int) -> None:
        self._snapshots: deque[FlowStats] = deque(maxlen=max_samples)

    def add(self, stats: FlowStats) -> None:
        self._snapshots.append(stats)

    @property
    def snapshots(self) -> list[FlowStats]:
        """The recorded :class:`FlowStats`, oldest first."""
        return list(self._snapshots)

    @property
    def points(self) -> list[TimelinePoint]:
        """One :class:`TimelinePoint` per job per snapshot, oldest first."""
        return [
            TimelinePoint(
                time=stats.elapsed,
                job=job.name,
                workers=job.workers,
                idle=job.idle,
                active=job.active,
                blocked=job.blocked,
                queue_depth=job.queue_depth,
                completed=job.completed,
                errored=job.errored,
                throughput=job.throughput,
            )
            for stats in self._snapshots
            for job in stats.jobs.values()
        ]

    def __len__(self) -> int:
        return len(self._snapshots)

    def to_rows(self) -> list[dict[str, Any]]:
        return [attrs.asdict(point) for point in self.points]

    def to_json(self) -> str:
        """The points as a JSON array of objects."""
        return json.dumps(self.to_rows())

    def to_csv(self) -> str:
        """The points as CSV with a header line."""
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=[f.name for f in attrs.fields(TimelinePoint)])
        writer.writeheader()
        writer.writerows(self.to_rows())
        return out.getvalue()


def record(
    running: StatsSource, *, interval: float = 0.1, max_samples: int = 10_000
) -> contextlib.AbstractAsyncContextManager[Timeline]:
    """Sample ``running.stats()`` every ``interval`` seconds while the block runs.

    ``running`` is a :class:`RunningFlow` (from :meth:`Flow.start`) or the
    :class:`FlowResults` of :meth:`Flow.stream`.

    Example::

        async with flow.start() as running, record(running, interval=0.05) as timeline:
            ...
        Path("timeline.csv").write_text(timeline.to_csv())

    The timeline keeps the newest ``max_samples`` snapshots, and one more taken
    when the block ends. Sampling stops by itself once the flow is done.

    Raises:
        TypeError, ValueError: ``interval <= 0`` or ``max_samples < 1``.

    .. versionadded:: 1.0
    """
    check_number("interval", interval, low=0.0, low_open=True)
    check_count("max_samples", max_samples, 1)
    return _recording(running, interval, max_samples)


@contextlib.asynccontextmanager
async def _recording(
    running: StatsSource, interval: float, max_samples: int
) -> AsyncIterator[Timeline]:
    timeline = Timeline(max_samples)

    async def sample() -> None:
        while True:
            stats = running.stats()
            timeline.add(stats)
            if stats.done:
                return
            await anyio.sleep(interval)

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(sample, name="flowrhythm recorder")
        try:
            yield timeline
        finally:
            task_group.cancel_scope.cancel()
            timeline.add(running.stats())
