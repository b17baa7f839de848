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

if TYPE_CHECKING:
    from ._options import Batch
    from ._stats import Counters


@final
class Batcher:
    """The batching of one job in one run (private)."""

    __slots__ = ("counters", "gate", "size", "timeout")

    def __init__(self, batch: Batch, counters: Counters) -> None:
        self.size = batch.size
        self.timeout = batch.timeout
        self.counters = counters
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
