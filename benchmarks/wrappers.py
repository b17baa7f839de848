"""What the per-call wrappers cost: ``retry=`` on a call that never fails, and fan-out.

Two scenarios, each on asyncio and on trio, timed in the same event loop, interleaved
(the median of ``--repeat`` interleaved pairs, wall clock), each against a hand-written anyio equivalent:

- **retry**: ``ITEMS`` items through one job of one worker whose processor returns its
  item, with ``retry=Retry()``; the hand-written version is one task reading a memory
  stream and calling the function in a ``try``/retry loop.
- **plain**: the same job without ``retry=``, against the same hand-written loop: the
  reference for what the flow itself costs.
- **fan-out**: ``ITEMS`` items through one job whose async generator yields two values
  per input; the hand-written version iterates the generator in the task.

The column ``÷ anyio`` is flowrhythm's throughput over the hand-written one (1.0 = as fast).
Run ``python benchmarks/wrappers.py --help``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio

from flowrhythm import Flow, Retry

ITEMS = 100_000


async def identity(item: int) -> int:
    return item


async def twice(item: int) -> AsyncIterator[int]:
    yield item
    yield item


async def by_hand_retry(items: int) -> None:
    send, receive = anyio.create_memory_object_stream[int](100)
    out_send, out_receive = anyio.create_memory_object_stream[int](100)

    async def feed() -> None:
        async with send:
            for i in range(items):
                await send.send(i)

    async def work() -> None:
        async with receive, out_send:
            while True:
                try:
                    item = receive.receive_nowait()
                except anyio.WouldBlock:
                    try:
                        item = await receive.receive()
                    except anyio.EndOfStream:
                        return
                except anyio.EndOfStream:
                    return
                attempt = 1
                while True:
                    try:
                        result = await identity(item)
                    except Exception:
                        if attempt >= 3:
                            raise
                        attempt += 1
                        await anyio.sleep(0.1)
                    else:
                        break
                try:
                    out_send.send_nowait(result)
                except anyio.WouldBlock:
                    await out_send.send(result)

    async def drain() -> None:
        async with out_receive:
            async for _ in out_receive:
                pass

    async with anyio.create_task_group() as tg:
        tg.start_soon(feed)
        tg.start_soon(work)
        tg.start_soon(drain)


async def by_hand_fanout(items: int) -> None:
    send, receive = anyio.create_memory_object_stream[int](100)
    out_send, out_receive = anyio.create_memory_object_stream[int](100)

    async def feed() -> None:
        async with send:
            for i in range(items):
                await send.send(i)

    async def work() -> None:
        async with receive, out_send:
            while True:
                try:
                    item = receive.receive_nowait()
                except anyio.WouldBlock:
                    try:
                        item = await receive.receive()
                    except anyio.EndOfStream:
                        return
                except anyio.EndOfStream:
                    return
                async for value in twice(item):
                    try:
                        out_send.send_nowait(value)
                    except anyio.WouldBlock:
                        await out_send.send(value)

    async def drain() -> None:
        async with out_receive:
            async for _ in out_receive:
                pass

    async with anyio.create_task_group() as tg:
        tg.start_soon(feed)
        tg.start_soon(work)
        tg.start_soon(drain)


async def flow_retry(items: int) -> None:
    flow = Flow().add(identity, retry=Retry())
    async with flow.stream(range(items)) as results:
        async for _ in results:
            pass


async def flow_plain(items: int) -> None:
    flow = Flow().add(identity)
    async with flow.stream(range(items)) as results:
        async for _ in results:
            pass


async def flow_fanout(items: int) -> None:
    flow = Flow().add(twice)
    async with flow.stream(range(items)) as results:
        async for _ in results:
            pass


async def timed(fn: Callable[[int], Awaitable[None]], items: int) -> float:
    gc.collect()
    started = time.perf_counter()
    await fn(items)
    return time.perf_counter() - started


async def compare(
    flow_fn: Callable[[int], Awaitable[None]],
    hand_fn: Callable[[int], Awaitable[None]],
    items: int,
    repeat: int,
) -> float:
    """The median over ``repeat`` interleaved pairs of hand-written time / flowrhythm time."""
    ratios = []
    for _ in range(repeat):
        hand = await timed(hand_fn, items)
        ratios.append(hand / await timed(flow_fn, items))
    return statistics.median(ratios)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=ITEMS)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args(argv)
    print(f"{'scenario':<10} {'backend':<8} ÷ anyio")
    for backend in ("asyncio", "trio"):
        for name, flow_fn, hand_fn in (
            ("plain", flow_plain, by_hand_retry),
            ("retry", flow_retry, by_hand_retry),
            ("fan-out", flow_fanout, by_hand_fanout),
        ):
            ratio: Any = anyio.run(
                compare, flow_fn, hand_fn, args.items, args.repeat, backend=backend
            )
            print(f"{name:<10} {backend:<8} {ratio:.2f}", flush=True)
    print(
        f"python {sys.version.split()[0]}, {args.items} items, best of {args.repeat}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
