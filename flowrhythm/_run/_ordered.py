"""Ordered output: a bounded reorder window shared by the workers of one job.

Each input gets a sequence number in the instant it leaves the job's queue
(workers take inputs without waiting while the queue has some; one worker at
a time waits for input, under :attr:`Reorder.lock`). A worker that finishes
out of turn parks its outputs and goes on with the next input; the worker that
finishes the head releases it and every parked output behind it, in order. At
most ``window`` (twice the job's ``max_workers``) inputs are running or
finished-but-unreleased at once: the worker that would take one more waits
(counted as *blocked*), so memory is bounded by the window, never by the
length of the stream. A job whose ``max_workers`` is 1 keeps its order by
itself and has no window.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, final

import anyio
from anyio import WouldBlock
from anyio.streams.memory import MemoryObjectReceiveStream

from ._worker import LEAVING, NOTHING, Taken, Worker

if TYPE_CHECKING:
    from .._stats import Counters


@final
class Reorder:
    """The reorder window of one job in one run (private)."""

    __slots__ = (
        "counters",
        "draining",
        "head",
        "lock",
        "next_seq",
        "parked",
        "receive",
        "receiving",
        "space",
        "window",
    )

    def __init__(
        self, window: int, counters: Counters, receive: MemoryObjectReceiveStream[Any]
    ) -> None:
        self.window = window
        self.counters = counters
        self.receive = receive  # the job's input queue
        self.next_seq = 0  # the number the next input gets
        self.head = 0  # the next number to release
        # seq -> (outputs, items completed by them)
        self.parked: dict[int, tuple[list[Any], int]] = {}
        self.draining = False
        self.space: anyio.Event | None = None
        # Held by the one worker that waits for the next input (see :meth:`take`).
        self.lock = anyio.Lock()
        # A worker is inside a waiting receive: the item it gets is not numbered yet.
        self.receiving = False

    def has_room(self) -> bool:
        return self.next_seq - self.head < self.window

    async def wait_for_room(self) -> None:
        """Wait (blocked) until the window can take one more input."""
        while not self.has_room():
            if self.space is None:
                self.space = anyio.Event()
            with self.counters.blocked_span():
                await self.space.wait()

    def number(self) -> int:
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
        self.parked[seq] = (outputs, completed)
        if not self.draining:  # else the worker draining the head will reach it
            await self.drain(forward)

    async def drain(self, forward: Callable[[Any], Awaitable[None]]) -> None:
        """Forward the head and every parked input behind it that is now in order."""
        self.draining = True
        counters = self.counters
        try:
            while self.head in self.parked:
                values, done = self.parked.pop(self.head)
                for value in values:
                    await forward(value)
                counters.completed += done
                counters.outputs_adjust += len(values) - done
                self.head += 1
                self.wake()
        finally:
            self.draining = False

    def wake(self) -> None:
        """The head moved on: let a worker waiting for room in the window go."""
        if self.space is not None:
            self.space.set()
            self.space = None

    async def take(self, worker: Worker) -> Any:
        """Take the next input: a numbered :class:`Taken`, or :data:`NOTHING` to leave.

        Raises :exc:`~anyio.EndOfStream` once the input has ended.

        Inputs are numbered (and counted as received) the instant they leave the
        queue. Without waiting, a worker takes one whenever the window has room and
        no worker is inside a waiting ``receive`` (whose item may already be on its
        way to it, not yet numbered). Otherwise it waits for room (blocked), then
        queues on the reorder lock (idle): the holder takes an input without waiting
        if one is there, or else waits for one, and numbers it. Quick takes never
        queue behind the lock, only behind a worker really waiting for input. A
        worker in here holds no item, so retiring it is safe throughout.
        """
        if worker.retirement:
            return NOTHING
        reorder = self
        receive = self.receive
        counters = self.counters
        if not reorder.receiving and reorder.next_seq - reorder.head < reorder.window:
            try:
                item = receive.receive_nowait()
            except WouldBlock:
                pass
            else:
                counters.received += 1
                return Taken(item, reorder.number())
        lock = reorder.lock
        worker.waiting = True
        try:
            while True:
                await reorder.wait_for_room()  # blocked while the window is full
                with counters.idle_span():
                    await lock.acquire()  # idle: another worker waits for input
                try:
                    if not reorder.has_room():
                        continue  # the window filled up meanwhile
                    try:
                        item = receive.receive_nowait()
                    except WouldBlock:
                        reorder.receiving = True
                        try:
                            with counters.idle_span():
                                item = await receive.receive()
                        finally:
                            reorder.receiving = False
                    counters.received += 1
                    seq = reorder.number()
                    break
                finally:
                    lock.release()
        finally:
            worker.waiting = False
        if worker.retirement is LEAVING:
            worker.rescued = Taken(item, seq)
            return NOTHING
        return Taken(item, seq)

    async def first(self) -> Taken:
        """The doorman's take: wait for the first input, count it and number it.

        Raises :exc:`~anyio.EndOfStream` if the input ends instead.
        """
        item = await self.receive.receive()
        # Counted and numbered the instant it leaves the queue: the new worker
        # may take a while to open, and the run may be cancelled.
        self.counters.received += 1
        return Taken(item, self.number())
