"""Testing flows in virtual time.

:func:`run_virtual` runs an async function like :func:`anyio.run`, but on an
event loop whose clock is virtual: it stands still while any task can run, and
jumps straight to the next deadline when every task is waiting. Sleeps,
timeouts, retry back-offs, rate limits and scaling ticks take no real time, and
the same program gives the same timeline on every run, so a test can assert
exact times and worker counts.

On trio this is :class:`trio.testing.MockClock` with ``autojump_threshold=0``;
on asyncio it is an event loop whose ``time()`` is virtual and whose selector
advances it to the next timer when nothing is ready.

.. versionadded:: 1.0
"""

from __future__ import annotations

import contextlib
import itertools
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal, TypeVar, TypeVarTuple, Unpack

import anyio

from ._timing import VIRTUAL_TIME

if TYPE_CHECKING:
    import asyncio

__all__ = ["run_virtual"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

BACKENDS = ("asyncio", "trio")


def run_virtual(
    fn: Callable[[Unpack[Ts]], Awaitable[T]],
    *args: *Ts,
    backend: Literal["asyncio", "trio"] = "asyncio",
) -> T:
    """Run ``fn(*args)`` to completion in virtual time and return its result.

    The clock starts at 0 and moves only when every task waits for time to
    pass: then it jumps to the earliest deadline. Everything that reads the
    event loop's clock follows it: :func:`anyio.sleep`, :func:`anyio.fail_after`,
    :func:`anyio.current_time`, and flowrhythm's scaling ticks, retry back-offs,
    rate limits and processing-time statistics. Work that waits on the outside
    world (sockets, threads) still takes real time, and the virtual clock does
    not see it: keep a test under :func:`run_virtual` inside the event loop.

    Args:
        fn: an async function.
        *args: positional arguments for ``fn``.
        backend: ``"asyncio"`` or ``"trio"``.

    Returns:
        What ``fn(*args)`` returned.

    Raises:
        ValueError: ``backend`` is not ``"asyncio"`` or ``"trio"``.
        RuntimeError: a job of a flow run under it offloads its calls
            (``executor=``): a thread or a process runs in real time, which a
            virtual clock cannot follow.

    .. versionadded:: 1.0
    """
    if backend not in BACKENDS:
        raise ValueError(f'backend must be "asyncio" or "trio", got {backend!r}')

    async def main() -> T:
        token = VIRTUAL_TIME.set(True)
        try:
            return await fn(*args)
        finally:
            VIRTUAL_TIME.reset(token)

    if backend == "trio":
        import trio.testing

        with _trio_in_order():
            return anyio.run(
                main,
                backend="trio",
                backend_options={"clock": trio.testing.MockClock(autojump_threshold=0)},
            )
    return anyio.run(
        main, backend="asyncio", backend_options={"loop_factory": _virtual_event_loop}
    )


@contextlib.contextmanager
def _trio_in_order() -> Iterator[None]:
    """Make trio's choices among tasks ready at the same instant repeatable.

    trio deliberately varies the order in which it runs the tasks that are ready
    together: it reverses each batch at random, and breaks ties between equal
    deadlines by the objects' addresses. Both would give the same program a
    different timeline on each run. For the run, its scheduler's random
    generator is seeded (as trio does itself under Hypothesis), and ties are
    broken in the order the deadlines were set. Should a trio release move
    these internals, the run still works, only without this guarantee.
    """
    from trio._core import _run

    rng = getattr(_run, "_r", None)
    state = rng.getstate() if isinstance(rng, random.Random) else None
    had_id = "id" in vars(_run)
    old_id = vars(_run).get("id")
    if state is not None:
        rng.seed(0)  # type: ignore[union-attr]
    order = itertools.count()
    _run.id = lambda obj: next(order)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if had_id:
            _run.id = old_id  # type: ignore[attr-defined]
        else:
            del _run.id  # type: ignore[attr-defined]
        if state is not None:
            rng.setstate(state)  # type: ignore[union-attr]


def _virtual_event_loop() -> asyncio.AbstractEventLoop:
    """A new asyncio event loop whose clock jumps to the next timer when nothing is ready.

    asyncio's loop asks its selector to wait for I/O at most until the next
    timer is due. Here the selector only polls; if nothing is ready, it moves
    the virtual clock forward by the time it was allowed to wait, which is
    exactly the time to the next timer, and the loop then runs that timer. With
    no timer at all (``timeout`` is ``None``) it waits for real, as only the
    outside world can wake the loop then.
    """
    import asyncio
    import selectors

    clock = [0.0]

    class VirtualSelector(selectors.DefaultSelector):
        def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
            if timeout is None:
                return super().select(None)
            events = super().select(0)
            if not events and timeout > 0:
                clock[0] += timeout
            return events

    class VirtualEventLoop(asyncio.SelectorEventLoop):
        def time(self) -> float:
            return clock[0]

        def run_in_executor(self, executor: Any, func: Any, *args: Any) -> Any:  # type: ignore[override]
            raise RuntimeError(
                "run_in_executor under flowrhythm.testing.run_virtual: a thread runs in "
                "real time, which the virtual clock cannot follow"
            )

    return VirtualEventLoop(VirtualSelector())
