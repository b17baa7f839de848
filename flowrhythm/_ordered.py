"""Ordered output: a bounded reorder window shared by the workers of one job.

Each input gets a sequence number when a worker takes it. A worker that
finishes out of turn parks its outputs and goes on with the next input; the
worker that finishes the head releases it and every parked output behind it,
in order. At most ``window`` (the job's ``max_workers``) inputs are running or
finished-but-unreleased at once, counting the workers already waiting for an
input: a worker that would exceed it waits (counted as *blocked*), so memory
is bounded by the window, never by the length of the stream.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, final

import anyio

if TYPE_CHECKING:
    from ._stats import Counters


@final
class Reorder:
    """The reorder window of one job in one run (private)."""

    __slots__ = (
        "counters",
        "draining",
        "head",
        "next_seq",
        "parked",
        "pending",
        "space",
        "window",
    )

    def __init__(self, window: int, counters: Counters) -> None:
        self.window = window
        self.counters = counters
        self.next_seq = 0  # the number the next input gets
        self.head = 0  # the next number to release
        self.pending = 0  # workers past the gate, waiting for an input
        self.parked: dict[int, list[Any]] = {}
        self.draining = False
        self.space: anyio.Event | None = None

    async def enter(self) -> None:
        """Wait for room in the window, then hold a place for the next input."""
        while self.next_seq - self.head + self.pending >= self.window:
            if self.space is None:
                self.space = anyio.Event()
            since = self.counters.enter_blocked()
            try:
                await self.space.wait()
            finally:
                self.counters.leave_blocked(since)
        self.pending += 1

    def leave(self) -> None:
        """Give the place back without an input (end of input, retirement)."""
        self.pending -= 1
        self._wake()

    def take(self) -> int:
        """The place becomes the next input: return its sequence number."""
        self.pending -= 1
        seq = self.next_seq
        self.next_seq = seq + 1
        return seq

    def number(self) -> int:
        """A sequence number for an input taken without :meth:`enter` (the doorman's)."""
        seq = self.next_seq
        self.next_seq = seq + 1
        return seq

    async def release(
        self, seq: int, outputs: list[Any], forward: Callable[[Any], Awaitable[None]]
    ) -> None:
        """Input ``seq`` is done: forward everything that is now in order."""
        self.parked[seq] = outputs
        if self.draining:
            return  # the worker draining the head will reach it
        self.draining = True
        try:
            while self.head in self.parked:
                for value in self.parked.pop(self.head):
                    await forward(value)
                self.head += 1
                self._wake()
        finally:
            self.draining = False

    def _wake(self) -> None:
        if self.space is not None:
            self.space.set()
            self.space = None
