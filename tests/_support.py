"""Plain helpers shared by the test modules (fixtures live in ``conftest.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Callable, Iterable
from typing import Any

import anyio
import sniffio
import trio

from flowrhythm import Flow, FlowStats

#: Seconds. A generous guard so that a broken run fails instead of hanging;
#: never a measurement.
HANG_GUARD = 10


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Let every other task run until ``predicate()`` holds (guarded against hangs)."""
    with anyio.fail_after(HANG_GUARD):
        while not predicate():
            await anyio.wait_all_tasks_blocked()


def leaves(exc: BaseException) -> list[BaseException]:
    """The non-group exceptions inside ``exc`` (``exc`` itself if it is not a group)."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in leaves(sub)]
    return [exc]


def running_tasks() -> object:
    """What is running besides the current task, to compare before/after a run.

    On asyncio, every unfinished task of the loop; on trio, the nurseries still open
    in the current task (a run cannot hide a task anywhere else without trio APIs).
    """
    if sniffio.current_async_library() == "asyncio":
        return frozenset(asyncio.all_tasks())
    return tuple(trio.lowlevel.current_task().child_nurseries)


async def collect(flow: Flow, source: Iterable[Any] | AsyncIterable[Any]) -> list[Any]:
    """Every output of the last job of ``flow`` over ``source``, in arrival order."""
    with anyio.fail_after(HANG_GUARD):
        async with flow.stream(source) as results:
            return [out async for out in results]


async def run(flow: Flow, source: Iterable[Any] | AsyncIterable[Any]) -> FlowStats:
    """``flow.run(source)`` under the hang guard."""
    with anyio.fail_after(HANG_GUARD):
        return await flow.run(source)
