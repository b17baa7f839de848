"""Batching: one gatherer per job turns its input into lists for the workers.

The gatherer is the only reader of the job's input queue, so each batch is a
run of consecutive inputs. The workers read finished batches from a stream
that holds ``queue_length // size`` of them: the gatherer may run ahead of the
workers by up to a queue's worth of items, since one hand-over per batch costs
more than a small batch saves. A batch leaves when it is full, when
``timeout`` seconds have passed since its first item, or when the input ends:
the last partial batch is never lost. Items are counted as ``received`` as
the gatherer takes them, so a cancelled run still accounts for a half-gathered
batch, and for finished batches no worker has taken yet.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
from anyio import EndOfStream, WouldBlock
from anyio.lowlevel import checkpoint
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._worker import YIELD_EVERY

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

    Like the worker loop, it takes what is there without waiting first. When
    the queue runs dry before a batch is full it first yields once (the
    producer is often just one scheduling round behind), and only then waits,
    in a timeout scope, until ``timeout`` after the batch's first item. It
    yields to the scheduler at least every :data:`YIELD_EVERY` items.
    """
    size, timeout = batch.size, batch.timeout
    receive = source.receive
    receive_nowait = source.receive_nowait
    taken = 0  # items taken since this task last yielded
    with batches:
        while True:
            try:
                items = [receive_nowait()]
            except WouldBlock:
                try:
                    items = [await receive()]
                except EndOfStream:
                    return
                taken = 0
            except EndOfStream:
                return
            counters.received += 1
            ended = False
            yielded = False  # since the last item arrived
            deadline: float | None = None
            while True:
                had = len(items)
                ended = _take_ready(items, size, receive_nowait)
                if len(items) > had:
                    counters.received += len(items) - had
                    yielded = False
                if ended or len(items) == size:
                    break
                taken = 0
                if not yielded:
                    yielded = True
                    await checkpoint()
                    continue
                if deadline is None:
                    deadline = anyio.current_time() + timeout
                with anyio.move_on_after(deadline - anyio.current_time()):
                    try:
                        items.append(await receive())
                    except EndOfStream:
                        ended = True
                if ended or len(items) == had:
                    break  # the input ended, or the timeout passed
                counters.received += 1
                yielded = False
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


def _take_ready(items: list[Any], size: int, receive_nowait: Callable[[], Any]) -> bool:
    """Append what the queue holds, up to ``size`` items; return whether the input ended."""
    append = items.append
    try:
        for _ in range(size - len(items)):
            append(receive_nowait())
    except WouldBlock:
        pass
    except EndOfStream:
        return True
    return False
