"""Cheap timing statistics: recent processing times and a recent-rate window.

The worker loop times every slow item and one fast item in :data:`SAMPLE_EVERY`
with :func:`time.perf_counter` and stores the duration in a fixed-size ring
(:class:`Timings`), which costs a few nanoseconds per item on average and
never grows; percentiles are computed from the ring only when a snapshot asks.
Processing times are wall-clock times, even under a mock event-loop clock.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Final, final

#: One fast item in this many is timed (a power of two: the loop tests ``n & mask``).
SAMPLE_EVERY: Final = 32
SAMPLE_MASK: Final = SAMPLE_EVERY - 1
#: Items slower than this are all timed: two clock reads are nothing next to them.
SLOW: Final = 100e-6
#: How many recent timings a job keeps (a power of two).
KEEP: Final = 1024


@final
class Timings:
    """The processing times of the last :data:`KEEP` timed items (a ring).

    The worker loop times an item when ``item_number & mask`` is zero: one fast
    item in :data:`SAMPLE_EVERY`, but every item once they take longer than
    :data:`SLOW`, where timing costs nothing in comparison. Recording is one
    store and one increment; percentiles are computed only when a snapshot
    asks, by sorting at most :data:`KEEP` floats.
    """

    __slots__ = ("count", "mask", "ring")

    def __init__(self) -> None:
        self.ring = [0.0] * KEEP
        self.count = 0
        self.mask = 0  # time the first items, to learn how slow they are

    def add(self, seconds: float) -> None:
        self.ring[self.count & (KEEP - 1)] = seconds
        self.count += 1
        self.mask = 0 if seconds > SLOW else SAMPLE_MASK

    def percentiles(self, *qs: float) -> tuple[float | None, ...]:
        """The ``qs``-th percentiles (0..100) in seconds; ``None`` with no data."""
        n = min(self.count, KEEP)
        if not n:
            return tuple(None for _ in qs)
        recent = sorted(self.ring[:n])
        return tuple(recent[min(max(math.ceil(n * q / 100.0), 1), n) - 1] for q in qs)


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
