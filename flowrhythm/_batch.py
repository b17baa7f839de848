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
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

if TYPE_CHECKING:
    from ._options import Batch
    from ._stats import Counters


async def gather(
    batch: Batch,
    source: MemoryObjectReceiveStream[Any],
    batches: MemoryObjectSendStream[list[Any]],
    counters: Counters,
) -> None:
    """Read ``source`` into lists of up to ``batch.size`` items, until it ends."""
    size, timeout = batch.size, batch.timeout
    with batches:
        while True:
            try:
                first = await source.receive()
            except EndOfStream:
                return
            counters.received += 1
            items = [first]
            ended = False
            with anyio.move_on_after(timeout):
                while len(items) < size:
                    try:
                        items.append(source.receive_nowait())
                    except WouldBlock:
                        try:
                            items.append(await source.receive())
                        except EndOfStream:
                            ended = True
                            break
                    except EndOfStream:
                        ended = True
                        break
                    counters.received += 1
            await batches.send(items)
            if ended:
                return
