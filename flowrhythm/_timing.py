"""Cheap timing statistics: recent processing times and a recent-rate window.

The worker loop times every slow item and one fast item in :data:`SAMPLE_EVERY`
with the event loop's clock (see :func:`call_timer`) and stores the duration in a fixed-size ring (:class:`Timings`), which
costs a few nanoseconds per item on average and never grows; percentiles are
computed from the ring only when a snapshot asks. Processing times follow the
loop's clock, so they are right in virtual time too
(:func:`flowrhythm.testing.run_virtual`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from time import perf_counter
from typing import Final, final

#: Set by :func:`flowrhythm.testing.run_virtual` for the tasks it runs.
VIRTUAL_TIME: Final[ContextVar[bool]] = ContextVar("flowrhythm_virtual_time", default=False)


def refuse_offload_in_virtual_time() -> None:
    """Raise if the current task runs under a virtual clock: offloaded calls run in real time.

    Raises:
        RuntimeError: under :func:`flowrhythm.testing.run_virtual`.
    """
    if VIRTUAL_TIME.get():
        raise RuntimeError(
            "a job with executor= cannot run under flowrhythm.testing.run_virtual: "
            "threads and processes run in real time, which the virtual clock cannot "
            "follow; test the offloaded function on its own, or run the flow with anyio.run"
        )


#: One fast item in this many is timed (a power of two: the loop tests ``n & mask``).
SAMPLE_EVERY: Final = 32
SAMPLE_MASK: Final = SAMPLE_EVERY - 1
#: Items slower than this are all timed: two clock reads are nothing next to them.
SLOW: Final = 100e-6
#: A job's first timed calls, kept apart (however they end) as the reference
#: for "calls take longer now": they were timed before any scaling, and counting
#: them by start, not by end, keeps the long ones among them.
FIRST_CALLS: Final = 32
#: Durations below this count as this much in logarithms (a call can take no time at all).
TINY: Final = 1e-9
LOG_TINY: Final = math.log(TINY)
#: How many recent timings a job keeps (a power of two).
KEEP: Final = 1024


def call_timer(clock: Callable[[], float]) -> Callable[[], float]:
    """The clock that times calls: the event loop's ``clock``, read as cheaply as possible.

    :func:`anyio.current_time` costs about a microsecond; :func:`time.perf_counter`
    a tenth of that, and it runs at the same rate as a real event-loop clock. So
    the timer is :func:`~time.perf_counter` when the loop's clock is seen to move
    in real time, and the loop's clock itself when it is virtual (it stands
    still while a task runs) or too coarse to tell: durations are then measured
    in the loop's time, as everything else is. Chosen once per run.
    """
    if VIRTUAL_TIME.get():
        return clock
    before = clock()
    return perf_counter if clock() > before else clock


class Timings:
    """The processing times of the last :data:`KEEP` timed items (a ring).

    The worker loop times an item when ``item_number & mask`` is zero: one fast
    item in :data:`SAMPLE_EVERY`, but every item once they take longer than
    :data:`SLOW`, where timing costs nothing in comparison. Recording is one
    store and one increment; percentiles are computed only when a snapshot
    asks, by sorting at most :data:`KEEP` floats.

    The sums over every timed duration (``total``, ``squares``, ``logs``,
    ``log_squares``) are what a job's scaler reads; only :class:`SummedTimings`,
    the timings of a job that scales, keeps them. Here they stay 0.
    """

    __slots__ = ("count", "log_squares", "logs", "mask", "ring", "squares", "total")

    def __init__(self) -> None:
        # Grows to KEEP entries, then wraps: a run that times a few items
        # (or none) never builds the whole ring.
        self.ring: list[float] = []
        self.count = 0
        self.mask = 0  # time the first items, to learn how slow they are
        # Sums over every timed duration: of the seconds, of their squares, and
        # of their logarithms and squared logarithms (a geometric mean and its spread).
        self.total = 0.0
        self.squares = 0.0
        self.logs = 0.0
        self.log_squares = 0.0

    def add(self, seconds: float) -> None:
        count = self.count
        if count < KEEP:
            self.ring.append(seconds)
        else:
            self.ring[count & (KEEP - 1)] = seconds
        self.count = count + 1
        self.mask = 0 if seconds > SLOW else SAMPLE_MASK

    def since(self, count: int) -> list[float]:
        """The durations timed after the first ``count`` (at most the last :data:`KEEP`)."""
        n = min(self.count - count, KEEP)
        if n <= 0:
            return []
        end = self.count & (KEEP - 1)
        start = (self.count - n) & (KEEP - 1)
        ring = self.ring
        return ring[start:end] if start < end else ring[start:] + ring[:end]

    def percentiles(self, *qs: float) -> tuple[float | None, ...]:
        """The ``qs``-th percentiles (0..100) in seconds; ``None`` with no data."""
        n = len(self.ring)  # min(count, KEEP)
        if not n:
            return (None,) * len(qs)
        recent = sorted(self.ring)
        return tuple([recent[min(max(math.ceil(n * q / 100.0), 1), n) - 1] for q in qs])


@final
class SummedTimings(Timings):
    """:class:`Timings` that also sums every timed duration: those of a job that scales.

    Its scaler compares the sums between two ticks: the mean call time, its
    spread, and the geometric mean (from the logarithms).
    """

    __slots__ = ()

    def add(self, seconds: float) -> None:
        count = self.count
        if count < KEEP:
            self.ring.append(seconds)
        else:
            self.ring[count & (KEEP - 1)] = seconds
        self.count = count + 1
        self.total += seconds
        self.squares += seconds * seconds
        log = math.log(seconds) if seconds > TINY else LOG_TINY
        self.logs += log
        self.log_squares += log * log
        self.mask = 0 if seconds > SLOW else SAMPLE_MASK


@final
class RateWindow:
    """Items per second over the last ``span`` seconds, from a handful of points."""

    __slots__ = ("points", "span")

    def __init__(self, start: float, span: float = 2.0) -> None:
        self.span = span
        # Until a second point exists, the rate is the average since the start.
        self.points: deque[tuple[float, int]] = deque([(start, 0)])

    def rate(self, now: float, count: int) -> float:
        points = self.points
        if now - points[-1][0] >= self.span / 8:
            points.append((now, count))
        while len(points) > 2 and now - points[1][0] >= self.span:
            points.popleft()
        then, before = points[0]
        return (count - before) / (now - then) if now > then else 0.0
