"""Batching: one gatherer per job turns its input into lists for the workers.

The gatherer is the only reader of the job's input queue; the workers read
finished batches from a rendezvous stream (buffer 0), so a job gathers one
batch at a time for all its workers. A batch leaves when it is full, when
``timeout`` seconds have passed since its first item, or when the input ends:
the last partial batch is never lost. Items are counted as ``received`` as
the gatherer takes them, so a cancelled run still accounts for a half-gathered
batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
from anyio import EndOfStream, WouldBlock
from anyio.lowlevel import checkpoint
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._worker import NOTHING, YIELD_EVERY

if TYPE_CHECKING:
    from ._options import Batch
    from ._stats import Counters


async def gather(
    batch: Batch,
    source: MemoryObjectReceiveStream[Any],
    batches: MemoryObjectSendStream[list[Any]],
    counters: Counters,
) -> None:
    """Read ``source`` into lists of up to ``batch.size`` items, until it ends.

    Like the worker loop, it takes what is there without waiting first; it
    opens a timeout scope only for a batch that is not full yet, and yields to
    the scheduler at least every :data:`YIELD_EVERY` items.
    """
    size, timeout = batch.size, batch.timeout
    receive_nowait = source.receive_nowait
    taken = 0  # items taken since this task last waited
    with batches:
        while True:
            try:
                first = receive_nowait()
            except WouldBlock:
                try:
                    first = await source.receive()
                except EndOfStream:
                    return
                taken = 0
            except EndOfStream:
                return
            counters.received += 1
            items = [first]
            ended = False
            deadline: float | None = None
            while len(items) < size:
                try:
                    item = receive_nowait()
                except WouldBlock:
                    # Wait for more only until `timeout` after the first item; then
                    # drain what arrived meanwhile without waiting again.
                    if deadline is None:
                        deadline = anyio.current_time() + timeout
                    remaining = deadline - anyio.current_time()
                    if remaining <= 0:
                        break
                    item = NOTHING
                    with anyio.move_on_after(remaining):
                        try:
                            item = await source.receive()
                        except EndOfStream:
                            ended = True
                    taken = 0
                    if item is NOTHING:
                        break  # the timeout passed, or the input ended
                except EndOfStream:
                    ended = True
                    break
                items.append(item)
                counters.received += 1
            taken += len(items)
            try:
                batches.send_nowait(items)
            except WouldBlock:
                await batches.send(items)
                taken = 0
            if ended:
                return
            if taken >= YIELD_EVERY:
                taken = 0
                await checkpoint()
