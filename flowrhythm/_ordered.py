"""Ordered output: a bounded reorder buffer shared by the workers of one job.

Each input gets a sequence number in the instant it leaves the job's queue
(one worker at a time waits for input, under :attr:`Reorder.lock`). A worker
that finishes out of turn parks its outputs in the buffer and goes on with the
next input; the worker that finishes the head releases it and every parked
output behind it, in order. The buffer holds at most ``window`` (the job's
``max_workers``) parked inputs: a worker that finishes out of turn while it is
full keeps its outputs and waits (counted as *blocked*) until the buffer has
room or its input is the head. So at most ``2 * max_workers`` inputs are
running, parked or held at once, however long the stream.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, final

import anyio

if TYPE_CHECKING:
    from ._stats import Counters


@final
class Reorder:
    """The reorder buffer of one job in one run (private)."""

    __slots__ = ("counters", "head", "lock", "next_seq", "parked", "space", "window")

    def __init__(self, window: int, counters: Counters) -> None:
        self.window = window
        self.counters = counters
        self.next_seq = 0  # the number the next input gets
        self.head = 0  # the next number to release
        # seq -> (outputs, items completed by them)
        self.parked: dict[int, tuple[list[Any], int]] = {}
        self.space: anyio.Event | None = None
        # Held by the one worker that waits for the next input (see take_in_order).
        self.lock = anyio.Lock()

    def take(self) -> int:
        """Number the input just taken from the queue."""
        seq = self.next_seq
        self.next_seq = seq + 1
        return seq

    async def release(
        self,
        seq: int,
        outputs: list[Any],
        completed: int,
        forward: Callable[[Any], Awaitable[None]],
    ) -> None:
        """Input ``seq`` is done: forward everything that is now in order.

        ``completed`` items (the input, or a batch's items, if its processing
        ended normally) are counted as completed once their outputs are handed
        on: until then they are still in flight.
        """
        if seq != self.head:
            if len(self.parked) >= self.window:
                await self._wait_for_room(seq)
            if seq != self.head:
                self.parked[seq] = (outputs, completed)
                return  # the worker that releases the head will reach it
        # ``seq`` is the head. Nobody else is releasing: the head moves only below,
        # and a worker releasing it goes on for as long as the next one is parked.
        counters = self.counters
        while True:
            for value in outputs:
                await forward(value)
            counters.completed += completed
            counters.outputs_adjust += len(outputs) - completed
            self.head += 1
            self._wake()
            parked = self.parked.pop(self.head, None)
            if parked is None:
                return
            outputs, completed = parked

    async def _wait_for_room(self, seq: int) -> None:
        """Hold ``seq``'s outputs (blocked) until the buffer has room or it is the head."""
        counters = self.counters
        since = counters.enter_blocked()
        try:
            while seq != self.head and len(self.parked) >= self.window:
                if self.space is None:
                    self.space = anyio.Event()
                await self.space.wait()
        finally:
            counters.leave_blocked(since)

    def _wake(self) -> None:
        if self.space is not None:
            self.space.set()
            self.space = None
