"""Counters: private and mutable while a run goes, public and frozen in snapshots.

The worker loop updates a :class:`Counters` with plain attribute increments (it
is the hot path); :meth:`Counters.snapshot` builds the immutable
:class:`JobStats` a user sees, in the way anyio's memory streams pair mutable
state with a ``statistics()`` value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import final

import attrs


@final
class Counters:
    """The live state of one job in one run (private)."""

    __slots__ = (
        "blocked",
        "completed",
        "errored",
        "idle",
        "outputs_adjust",
        "received",
        "scale_downs",
        "scale_ups",
        "skipped",
        "workers",
    )

    def __init__(self) -> None:
        self.workers = 0  # live worker tasks
        self.idle = 0  # workers waiting for input
        self.blocked = 0  # workers waiting to hand a result downstream
        self.received = 0
        self.completed = 0
        self.skipped = 0
        self.errored = 0
        self.scale_ups = 0
        self.scale_downs = 0
        # Outputs handed downstream = completed + outputs_adjust. A plain call
        # has one output per completed item, so the hot path pays nothing; a
        # generator adds (yields - 1) per item, a LastWorkItem result adds -1.
        self.outputs_adjust = 0

    @property
    def outputs(self) -> int:
        return self.completed + self.outputs_adjust


@final
@attrs.frozen(kw_only=True)
class JobStats:
    """A snapshot of one job.

    Attributes:
        name: the job's name.
        workers: live workers.
        idle: workers waiting for input.
        active: workers running the processor (``workers - idle - blocked``).
        blocked: workers waiting to hand a result (or an error) downstream.
        queue_depth: items waiting in the job's input queue.
        queue_length: the capacity of the job's input queue.
        min_workers: the job's configured minimum.
        max_workers: the job's configured maximum.
        received: items taken from the input queue.
        completed: items whose processing ended normally (their output, if
            any, was handed downstream).
        skipped: items dropped by :class:`StopProcessing`.
        errored: items that failed (handed to the error job, or failing the run).
        scale_ups: scaling decisions that added workers.
        scale_downs: scaling decisions that removed workers.

    Once a run has ended normally, ``received == completed + skipped + errored``;
    after a cancelled run, the difference is the number of abandoned items.

    .. versionadded:: 0.1
    """

    name: str
    workers: int
    idle: int
    active: int
    blocked: int
    queue_depth: int
    queue_length: int
    min_workers: int
    max_workers: int
    received: int
    completed: int
    skipped: int
    errored: int
    scale_ups: int
    scale_downs: int

    @property
    def in_flight(self) -> int:
        """Items received but not yet ended (abandoned, if the run was cancelled)."""
        return self.received - self.completed - self.skipped - self.errored


@final
@attrs.frozen(kw_only=True)
class FlowStats:
    """A snapshot of a whole run.

    Attributes:
        jobs: job name to :class:`JobStats`, in flow order, the error job last.
        items_in: items that entered the first job.
        items_out: outputs the last job handed on (to ``stream``'s results,
            or discarded by ``run`` / ``start``).
        elapsed: seconds since the run started (until it ended, once it has).
        done: whether every job has drained.

    .. versionadded:: 0.1
    """

    jobs: Mapping[str, JobStats]
    items_in: int
    items_out: int
    elapsed: float
    done: bool
