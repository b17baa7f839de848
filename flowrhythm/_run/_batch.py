"""Batching: the workers of a job gather their batches from its queue themselves.

A worker takes a batch without waiting when the queue holds one; otherwise it
gathers under :attr:`Batcher.gate`, so only one worker at a time waits for
input and each batch is a run of consecutive inputs. A batch leaves when it
is full, when ``timeout`` seconds have passed since its first item, or when
the input ends: the last partial batch is never lost. Items are counted as
``received`` as they are taken, so a cancelled run still accounts for a
half-gathered batch. There is no hand-over between tasks: a small batch costs
about what its items cost without batching.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, final

import anyio
from anyio import EndOfStream, WouldBlock
from anyio.lowlevel import checkpoint
from anyio.streams.memory import MemoryObjectReceiveStream

from ._worker import LEAVING, NOTHING, Taken, Worker

if TYPE_CHECKING:
    from .._options import Batch
    from .._stats import Counters
    from ._ordered import Reorder


@final
class Batcher:
    """The batching of one job in one run (private)."""

    __slots__ = ("counters", "gate", "receive", "reorder", "size", "timeout")

    def __init__(
        self,
        batch: Batch,
        counters: Counters,
        receive: MemoryObjectReceiveStream[Any],
        reorder: Reorder | None,
    ) -> None:
        self.size = batch.size
        self.timeout = batch.timeout
        self.counters = counters
        self.receive = receive  # the job's input queue
        self.reorder = reorder  # an ordered job's window: batches are numbered
        # Held by the one worker (or the doorman) that waits for input to gather.
        self.gate = anyio.Lock()

    def take_ready(self, items: list[Any], receive_nowait: Callable[[], Any]) -> bool:
        """Append what the queue holds, up to a full batch; return whether the input ended."""
        had = len(items)
        ended = False
        append = items.append
        try:
            for _ in range(self.size - had):
                append(receive_nowait())
        except WouldBlock:
            pass
        except EndOfStream:
            ended = True
        self.counters.received += len(items) - had
        return ended

    async def complete(self, items: list[Any], receive: MemoryObjectReceiveStream[Any]) -> None:
        """Fill ``items`` up to a full batch, for at most ``timeout`` (the gate held).

        When the queue runs dry it first yields once (the producer is often just
        one scheduling round behind), and only then waits, in a timeout scope.
        """
        size = self.size
        receive_nowait = receive.receive_nowait
        deadline = anyio.current_time() + self.timeout
        yielded = False  # since the last item arrived
        while True:
            had = len(items)
            if self.take_ready(items, receive_nowait) or len(items) == size:
                return
            if len(items) > had:
                yielded = False
            if not yielded:
                yielded = True
                await checkpoint()
                continue
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                return
            with anyio.move_on_after(remaining):
                try:
                    items.append(await receive.receive())
                except EndOfStream:
                    return
            if len(items) == had:
                return  # the timeout passed
            self.counters.received += 1
            yielded = False

    async def take(self, worker: Worker) -> Any:
        """Take the next batch: a :class:`Taken` (numbered, for an ordered job), or :data:`NOTHING`.

        Raises :exc:`~anyio.EndOfStream` once the input has ended with no item taken.

        Without waiting, a worker takes a full batch when nobody is gathering and
        the queue holds one (and, ordered, the reorder window has room).
        Otherwise it gathers under the gate: it waits for room in the window
        (blocked), the gate and the first item holding nothing (idle, and safe to
        retire), then completes the batch holding its items (idle, and not
        cancelled by a retirement). A batch is numbered before anyone else can
        take an input, and the window keeps the room it had while the gate is
        held: only the gate holder numbers.
        """
        if worker.retirement:
            return NOTHING
        batcher = self
        reorder = self.reorder
        counters = self.counters
        receive = self.receive
        gate = batcher.gate
        items: list[Any] = []
        if not gate.locked() and (reorder is None or reorder.has_room()):
            ended = batcher.take_ready(items, receive.receive_nowait)
            if len(items) == batcher.size or (ended and items):
                return self._taken(items)
            if ended:
                raise EndOfStream
            if items:
                gate.acquire_nowait()
        if not items:
            worker.waiting = True
            try:
                while True:
                    if reorder is not None:
                        await reorder.wait_for_room()  # blocked while the window is full
                    with counters.idle_span():
                        await gate.acquire()  # idle: another worker is gathering
                    if reorder is None or reorder.has_room():
                        break
                    gate.release()  # the window filled up meanwhile
                try:
                    with counters.idle_span():
                        items.append(await receive.receive())
                except BaseException:
                    gate.release()
                    raise
            finally:
                worker.waiting = False
            counters.received += 1
        try:
            if worker.retirement is LEAVING:
                # Retired in the instant the first item came: the worker's scope is
                # cancelled, so nothing may wait; the batch goes as it is.
                batcher.take_ready(items, receive.receive_nowait)
                worker.rescued = self._taken(items)
                return NOTHING
            with counters.idle_span():
                await batcher.complete(items, receive)
            return self._taken(items)
        finally:
            gate.release()

    async def first(self) -> Taken:
        """The doorman's take: gather the first batch under the gate, like a worker.

        Raises :exc:`~anyio.EndOfStream` if the input ends before its first item.
        """
        async with self.gate:
            items = [await self.receive.receive()]
            self.counters.received += 1
            await self.complete(items, self.receive)
            return self._taken(items)

    def _taken(self, items: list[Any]) -> Taken:
        """The batch as a worker carries it, numbered (only the gate holder numbers)."""
        return Taken(items, self.reorder.number() if self.reorder is not None else 0, len(items))
