"""A hypothesis state machine drives ``flow.stream(source)``, ordered and unordered, on asyncio and trio.

It widens :mod:`test_state_machine` (which feeds a run by hand with ``start()``) to what
only a source and a consumer can do: the **source raises mid-way**, the run is **stopped
from another task** than the one reading the results (a cancel scope around the block,
cancelled there), and the middle job rests at
``min_workers=0`` with a **slow ProcessorFactory** (each worker's factory opens only when a
rule lets it), so items wait on a job that is waking up; and the consumer **leaves through
its results** (``aclose()`` or ``stop()`` on them, from another task).

The flow: source -> A (2 workers, holds every item until a rule releases it with an
outcome: ok / fail / skip) -> B (0..2 workers, a slow factory, identity) -> results, and an
error job. Each case runs once with ``ordered=True`` on A and B and once without.

After every step: no item is delivered twice, only items A let through are delivered, and
with ``ordered=True`` they arrive in input order; counters never go negative and worker
counts stay within bounds. At the end the run is drained, or it failed with the source's
own exception, or it was stopped and ended quietly; then every item fed ended exactly once
(drained), every factory context entered was exited, and no task or stream of the run is left.
"""

from __future__ import annotations

import contextlib
import gc
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import anyio
import anyio.abc
import anyio.from_thread
import hypothesis
from _support import (
    HANG_GUARD,
    Gate,
    assert_no_unclosed_streams,
    leaves,
    outcome_of,
    settle,
    tasks_besides_this,
)
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from flowrhythm import Capacity, ErrorItem, Flow, ProcessorFactory, UtilizationCapacity

EXAMPLES = 30
STEPS = 30
OUTCOMES = ["ok", "ok", "ok", "fail", "skip"]
B_MAX = 2

#: What the controlled source is told to do instead of yielding an item.
RAISE = "raise"


class SourceBroke(Exception):
    """The source's own failure: the run must fail with it, never swallow it."""


class SlowFactory:
    """A ProcessorFactory whose every worker waits, before it opens, until a rule opens it."""

    def __init__(self) -> None:
        self.enters = 0
        self.exits = 0
        self.waiting: list[anyio.Event] = []
        self.opened = False

    @contextlib.asynccontextmanager
    async def make(self) -> AsyncIterator[Callable[[int], Any]]:
        if not self.opened:
            event = anyio.Event()
            self.waiting.append(event)
            try:
                await event.wait()
            finally:
                self.waiting.remove(event)
        self.enters += 1

        async def identity(item: int) -> int:
            return item

        try:
            yield identity
        finally:
            self.exits += 1

    def open_waiting(self) -> None:
        for event in self.waiting:
            event.set()

    def open_for_good(self) -> None:
        self.opened = True
        self.open_waiting()


class StreamMachine(RuleBasedStateMachine):
    backend: ClassVar[str]
    ordered: ClassVar[bool]
    runs: ClassVar[Counter[str]] = Counter()

    def __init__(self) -> None:
        super().__init__()
        gc.freeze()
        self.stack = contextlib.ExitStack()
        self.stack.callback(gc.unfreeze)
        self.portal = self.stack.enter_context(
            anyio.from_thread.start_blocking_portal(backend=self.backend)
        )
        self.plan: dict[int, str] = {}
        self.gate = Gate(lambda item: outcome_of(self.plan, item))
        self.factory = SlowFactory()
        self.delivered: list[int] = []
        self.errors: list[ErrorItem] = []
        self.fed: list[int] = []
        self.source_done = False
        self.source_raised = False
        self.stopped = False
        self.failure: BaseException | None = None
        self.scope = self.portal.call(anyio.CancelScope)
        self.feed_send, self.feed_receive = anyio.create_memory_object_stream[int | str](
            float("inf")
        )

        async def report(error: ErrorItem) -> None:
            self.errors.append(error)

        flow = Flow()
        flow.add(
            self.gate,
            Capacity(min_workers=2, max_workers=2, queue_length=2),
            name="A",
            ordered=self.ordered,
        )
        flow.add(
            ProcessorFactory(self.factory.make),
            UtilizationCapacity(
                min_workers=0, max_workers=B_MAX, queue_length=1, sampling=0.001, cooldown=0.0
            ),
            name="B",
            ordered=self.ordered,
        )
        flow.add_error_job(report, Capacity(queue_length=1), name="errors")
        self.tasks_before = self.portal.call(tasks_besides_this)
        self.block, self.results = self.portal.start_task(self.consume, flow)
        self.runs[f"{self.backend}-{'ordered' if self.ordered else 'unordered'}"] += 1

    async def source(self) -> AsyncIterator[int]:
        async with self.feed_receive:
            async for item in self.feed_receive:
                if item == RAISE:
                    raise SourceBroke("the source broke mid-way")
                assert isinstance(item, int)
                yield item

    async def consume(self, flow: Flow, *, task_status: anyio.abc.TaskStatus[Any]) -> None:
        """The user's ``async with flow.stream(source) as results: async for ...`` block."""
        try:
            with self.scope:
                async with flow.stream(self.source()) as results:
                    task_status.started(results)
                    async for out in results:
                        self.delivered.append(out)
        except BaseExceptionGroup as group:
            self.failure = group

    # -- plumbing --------------------------------------------------------------------------

    def settle(self) -> None:
        self.portal.call(settle)

    @property
    def over(self) -> bool:
        return self.block.done()

    # -- rules -----------------------------------------------------------------------------

    @initialize()
    def started(self) -> None:
        self.settle()

    @precondition(lambda self: not self.source_done and not self.stopped)
    @rule()
    def feed(self) -> None:
        item = len(self.fed)
        self.fed.append(item)
        self.portal.call(self.feed_send.send_nowait, item)
        self.settle()

    @precondition(lambda self: not self.stopped)
    @rule(outcome=st.sampled_from(OUTCOMES), pick=st.integers(0, 2**16))
    def release(self, outcome: str, pick: int) -> None:
        inside = sorted(self.portal.call(lambda: list(self.gate.inside)))
        if not inside:
            return
        item = inside[pick % len(inside)]
        self.plan[item] = outcome
        self.portal.call(self.gate.release, item)
        self.settle()

    @precondition(lambda self: not self.stopped)
    @rule()
    def open_factory(self) -> None:
        """Let every B worker that is opening its factory finish opening."""
        self.portal.call(self.factory.open_waiting)
        self.settle()

    @precondition(lambda self: not self.source_done and not self.stopped and len(self.fed) >= 3)
    @rule()
    def source_raises(self) -> None:
        self.portal.call(self.feed_send.send_nowait, RAISE)
        self.source_done = self.source_raised = True
        self.settle()

    @precondition(lambda self: not self.source_done and not self.stopped)
    @rule()
    def end_source(self) -> None:
        self.portal.call(self.feed_send.close)
        self.source_done = True
        self.settle()

    @precondition(lambda self: not self.stopped and len(self.fed) >= 3)
    @rule()
    def stop_from_another_task(self) -> None:
        """Cancel the stream block from a task of its own, not the one reading the results."""

        async def stopper() -> None:
            await anyio.lowlevel.checkpoint()
            self.scope.cancel()

        was_over = self.over
        self.portal.call(stopper)
        self.block.result(timeout=HANG_GUARD)
        self.stopped = True
        if not was_over:
            assert self.failure is None, self.failure  # stop(): the block ends quietly
        self.check_ended()

    @precondition(lambda self: not self.stopped)
    @rule(how=st.sampled_from(["aclose", "stop"]))
    def leave_through_the_results(self, how: str) -> None:
        """Close the results (``await results.aclose()``) or ``results.stop()``, from another task.

        Either is leaving early: the run is cancelled and the block ends quietly — no
        failure, and no item goes to the error job that its processor did not fail.
        """
        results = self.results
        was_over = self.over
        if how == "aclose":
            self.portal.call(results.aclose)
        else:
            self.portal.call(results.stop)
        self.block.result(timeout=HANG_GUARD)
        self.stopped = True
        if not was_over and not self.source_raised:
            assert self.failure is None, self.failure
        self.outputs_are_sound()
        self.check_ended()

    @rule()
    def wait(self) -> None:
        self.settle()

    # -- checks ----------------------------------------------------------------------------

    @invariant()
    def outputs_are_sound(self) -> None:
        delivered = list(self.delivered)
        assert len(delivered) == len(set(delivered)), delivered
        assert all(self.plan.get(item) == "ok" for item in delivered), (delivered, self.plan)
        if self.ordered:
            assert delivered == sorted(delivered), delivered
        reported = [error.item for error in self.errors]
        assert len(reported) == len(set(reported))
        assert all(self.plan.get(item) == "fail" for item in reported)
        if self.failure is not None:
            # the only way this run may fail: the source's own exception
            assert self.source_raised
            assert [type(leaf) for leaf in leaves(self.failure)] == [SourceBroke], self.failure

    def check_ended(self) -> None:
        assert self.over
        assert self.factory.enters == self.factory.exits

    def teardown(self) -> None:
        try:
            if not self.over:
                self.drain()
            self.check_ended()
        finally:
            if not self.over:
                with contextlib.suppress(BaseException):
                    self.portal.call(self.scope.cancel)
                    self.block.result(timeout=HANG_GUARD)
            self.portal.call(self.feed_send.close)
            self.portal.call(self.feed_receive.close)
            tasks = self.portal.call(tasks_besides_this)
            del self.results, self.block
            try:
                assert_no_unclosed_streams()
            finally:
                self.stack.close()
        assert tasks <= self.tasks_before

    def drain(self) -> None:
        if not self.source_done:
            self.portal.call(self.feed_send.close)
            self.source_done = True
        for item in self.fed:
            self.plan.setdefault(item, "ok")
        self.portal.call(self.gate.open)
        self.portal.call(self.factory.open_for_good)
        self.block.result(timeout=HANG_GUARD)
        self.outputs_are_sound()
        if self.source_raised:
            assert self.failure is not None, "the source raised, and the run ended as a success"
            return
        assert self.failure is None, self.failure
        skipped = {item for item, outcome in self.plan.items() if outcome == "skip"}
        ended = sorted(self.delivered + [e.item for e in self.errors] + sorted(skipped))
        assert ended == self.fed  # every item fed ended exactly once


SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)


class AsyncioUnordered(StreamMachine):
    backend, ordered = "asyncio", False


class AsyncioOrdered(StreamMachine):
    backend, ordered = "asyncio", True


class TrioUnordered(StreamMachine):
    backend, ordered = "trio", False


class TrioOrdered(StreamMachine):
    backend, ordered = "trio", True


TestStreamOnAsyncio = AsyncioUnordered.TestCase
TestStreamOnAsyncio.settings = SETTINGS
TestStreamOrderedOnAsyncio = AsyncioOrdered.TestCase
TestStreamOrderedOnAsyncio.settings = SETTINGS
TestStreamOnTrio = TrioUnordered.TestCase
TestStreamOnTrio.settings = SETTINGS
TestStreamOrderedOnTrio = TrioOrdered.TestCase
TestStreamOrderedOnTrio.settings = SETTINGS
