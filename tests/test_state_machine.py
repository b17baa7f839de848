"""A hypothesis state machine drives a running flow, step by step, on asyncio and trio.

Each test case starts an event loop in a thread (:func:`anyio.from_thread.start_blocking_portal`)
and enters ``flow.start()`` there; the synchronous rules call into the loop through the
portal. Every processor holds its item on an :class:`anyio.Event` until a rule releases it
with a chosen outcome, so the model knows exactly which items are where. Rules: feed an
item, release an item (ok / fail / fail with an ExceptionGroup / skip), scale a job to a
target (a :class:`Dial` strategy ticking every millisecond), close the input, send after
closing, and cancel the run (``stop()``).

After every step the loop is left to settle (every task blocked), and the flow's counters
are checked against the model:

* per job, the items in flight (``received - completed - skipped - errored``) are exactly
  the items inside its processor plus its workers blocked handing one on;
* along the flow, what a job handed on is what the next job took or queues; ``items_in``
  is what the model sent; completed / skipped / errored equal the outcomes the model chose;
* every item went once to the sink, or once to the error job, or was skipped;
* the items in the flow stay within the in-flight bound (queue lengths + workers + 1 per
  job); a blocked ``send`` only while the first queue is full; no idle worker while its
  queue holds items; worker counts within ``[min_workers, max_workers]``, and at the
  dialled target once the scaler has ticked.

At the end, the run is drained (or was cancelled) and no task, stream or factory context
of it is left.
"""

from __future__ import annotations

import contextlib
import gc
from collections import Counter
from concurrent.futures import Future
from typing import ClassVar

import anyio
import anyio.abc
import anyio.from_thread
import hypothesis
import pytest
from _support import (
    HANG_GUARD,
    Dial,
    Factory,
    Gate,
    assert_no_unclosed_streams,
    outcome_of,
    settle,
    tasks_besides_this,
)
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from flowrhythm import (
    Capacity,
    ErrorItem,
    Flow,
    FlowStats,
    RunningFlow,
    UtilizationCapacity,
)

#: Examples per backend, and rules per example.
EXAMPLES = 60
STEPS = 40

OUTCOMES = ["ok", "ok", "ok", "fail", "group", "skip"]
QUEUES = {"A": 2, "B": 1, "sink": 1, "errors": 1}
BOUNDS = {"A": (1, 4), "B": (0, 3)}


class FlowMachine(RuleBasedStateMachine):
    """One running flow: A (1..4 workers) -> B (0..3 workers) -> sink, and an error job."""

    backend: ClassVar[str]
    #: What ran, per backend (for the record: examples, rules, items fed).
    examples: ClassVar[Counter[str]] = Counter()
    steps: ClassVar[Counter[str]] = Counter()
    items: ClassVar[Counter[str]] = Counter()

    def __init__(self) -> None:
        super().__init__()
        # Hide every object alive now from the collector (until teardown), so that the
        # gc.collect() of the leak check there looks only at what this example made.
        gc.freeze()
        self.stack = contextlib.ExitStack()
        self.stack.callback(gc.unfreeze)
        self.portal = self.stack.enter_context(
            anyio.from_thread.start_blocking_portal(backend=self.backend)
        )
        self.plan: dict[str, dict[int, str]] = {"A": {}, "B": {}}
        self.gates = {
            "A": Gate(lambda item: outcome_of(self.plan["A"], item)),
            "B": Gate(lambda item: outcome_of(self.plan["B"], item)),
        }
        self.factories = {name: Factory(gate) for name, gate in self.gates.items()}
        self.dials = {"A": Dial(2), "B": Dial(0)}
        self.delivered: list[int] = []
        self.errors: list[ErrorItem] = []
        self.sent: set[int] = set()
        self.refused: set[int] = set()  # sends that raised ClosedResourceError
        self.pending: dict[int, Future[None]] = {}
        self.next_item = 0
        self.feeds = 0
        self.closed = False
        self.stopped = False

        async def sink(item: int) -> None:
            self.delivered.append(item)

        async def report(error: ErrorItem) -> None:
            self.errors.append(error)

        flow = Flow()
        for name in ("A", "B"):
            low, high = BOUNDS[name]
            dial = self.dials[name]
            flow.add(
                self.factories[name].factory,
                UtilizationCapacity(
                    min_workers=low,
                    max_workers=high,
                    initial_workers=dial.target,
                    queue_length=QUEUES[name],
                    sampling=0.001,
                    strategy=dial.strategy,
                ),
                name=name,
            )
        flow.add(sink, Capacity(queue_length=QUEUES["sink"]), name="sink")
        flow.add_error_job(report, Capacity(queue_length=QUEUES["errors"]), name="errors")
        self.tasks_before = self.portal.call(tasks_besides_this)
        self.leave = self.portal.call(anyio.Event)
        self.left_quietly = False
        self.block, self.running = self.portal.start_task(self.hold, flow)
        self.examples[self.backend] += 1

    async def hold(self, flow: Flow, *, task_status: anyio.abc.TaskStatus[RunningFlow]) -> None:
        """The user's ``async with flow.start() as running:`` block, until told to leave."""
        async with flow.start() as running:
            task_status.started(running)
            await self.leave.wait()  # stop() cancels this wait: the block ends quietly
        self.left_quietly = True

    # -- plumbing ------------------------------------------------------------------------------

    def settle(self) -> None:
        self.portal.call(settle)
        for item, future in list(self.pending.items()):
            if not future.done():
                continue
            del self.pending[item]
            error = future.exception()
            if error is None:
                self.sent.add(item)
            else:
                assert isinstance(error, anyio.ClosedResourceError), error
                assert self.closed
                self.refused.add(item)

    async def applied(self, job: str) -> None:
        """Wait until the scaler has decided twice (so the new target was applied).

        A job with no worker at all (B, resting at 0) is skipped by its scaler until
        its doorman starts one: then there is nothing to wait for.
        """
        dial, ticks = self.dials[job], 0
        with anyio.fail_after(HANG_GUARD):
            while ticks < 2:
                with anyio.move_on_after(0.01):  # ten sampling periods
                    await dial.ticked(1)
                    ticks += 1
                    continue
                if not self.running.stats().jobs[job].workers:
                    return

    def stats(self) -> FlowStats:
        stats: FlowStats = self.portal.call(self.running.stats)
        return stats

    def inside(self, job: str) -> set[int]:
        return set(self.portal.call(lambda: list(self.gates[job].inside)))

    # -- rules ---------------------------------------------------------------------------------

    @initialize()
    def started(self) -> None:
        self.settle()

    # Preconditions depend only on the rules run so far, never on how the tasks were
    # scheduled: hypothesis replays a case and expects the same rules to be enabled.

    @precondition(lambda self: not self.closed and not self.stopped)
    @rule()
    def feed(self) -> None:
        self.feeds += 1
        if len(self.pending) >= 3:  # enough sends waiting on a full queue
            return
        item, self.next_item = self.next_item, self.next_item + 1
        self.pending[item] = self.portal.start_task_soon(self.running.send, item)
        self.items[self.backend] += 1
        self.step()

    @precondition(lambda self: not self.stopped)
    @rule(
        job=st.sampled_from(["A", "B"]),
        outcome=st.sampled_from(OUTCOMES),
        pick=st.integers(0, 2**16),
    )
    def release(self, job: str, outcome: str, pick: int) -> None:
        # Which items a job holds can differ between replays of a case (it depends on
        # which worker took which item), so the item is picked by index, not drawn.
        inside = sorted(self.inside(job))
        if not inside:
            return
        item = inside[pick % len(inside)]
        self.plan[job][item] = outcome
        self.portal.call(self.gates[job].release, item)
        self.step()

    @precondition(lambda self: not self.stopped and not self.closed)
    @rule(job=st.sampled_from(["A", "B"]), workers=st.integers(-1, 6))
    def scale(self, job: str, workers: int) -> None:
        dial = self.dials[job]
        dial.target = workers
        self.portal.call(self.applied, job)
        self.step()
        low, high = BOUNDS[job]
        wanted = min(max(workers, low), high)
        stats = self.stats().jobs[job]
        busy = stats.active + stats.blocked
        if stats.workers:  # (B may rest at 0 workers: its doorman waits for input)
            # retiring workers still busy with their item are the only excess
            assert wanted <= stats.workers <= wanted + busy, (wanted, stats)

    @precondition(lambda self: not self.stopped and not self.closed and self.feeds >= 8)
    @rule()
    def close_input(self) -> None:
        self.portal.call(self.running.close)
        self.closed = True
        self.step()

    @rule()
    def wait(self) -> None:
        """Let the flow run (the scalers tick) and check it again."""
        self.step()

    @precondition(lambda self: not self.stopped and self.closed)
    @rule()
    def send_after_close(self) -> None:
        with pytest.raises(anyio.ClosedResourceError):
            self.portal.call(self.running.send, -1)

    @precondition(lambda self: not self.stopped and self.feeds >= 8)
    @rule()
    def cancel(self) -> None:
        self.portal.call(self.running.stop)
        self.block.result(timeout=HANG_GUARD)
        assert self.left_quietly  # stop(): the block exits without raising
        self.stopped = True
        self.step()
        self.check_cancelled()

    def step(self) -> None:
        self.steps[self.backend] += 1
        if not self.stopped:
            self.settle()

    # -- checks --------------------------------------------------------------------------------

    @invariant()
    def counters_match_the_model(self) -> None:
        if self.stopped:
            return
        stats = self.stats()
        jobs = stats.jobs
        inside = {job: self.inside(job) for job in ("A", "B")}
        for job in ("A", "B"):
            counters = jobs[job]
            released = self.plan[job]
            ok = sum(1 for item, o in released.items() if o == "ok")
            # what the model released, and what is still inside the processor
            assert counters.received == len(released) + len(inside[job])
            assert counters.skipped == sum(1 for o in released.values() if o == "skip")
            assert counters.errored == sum(1 for o in released.values() if o in ("fail", "group"))
            assert counters.completed + counters.blocked == ok
            assert counters.in_flight == len(inside[job]) + counters.blocked
            assert not inside[job] & set(released)
            # a worker waits for input only while its queue is empty
            assert counters.idle == 0 or counters.queue_depth == 0, counters
            low, high = BOUNDS[job]
            assert counters.workers <= high
            if not self.closed:
                assert counters.workers >= low
        # B's doorman starts a worker as soon as an item waits
        assert jobs["B"].queue_depth == 0 or jobs["B"].workers > 0
        # along the flow, nothing vanishes and nothing appears
        assert stats.items_in == len(self.sent)
        assert jobs["A"].received + jobs["A"].queue_depth == len(self.sent)
        assert jobs["A"].completed == jobs["B"].received + jobs["B"].queue_depth
        assert jobs["B"].completed == jobs["sink"].received + jobs["sink"].queue_depth
        errored = jobs["A"].errored + jobs["B"].errored
        assert errored == jobs["errors"].received + jobs["errors"].queue_depth
        # every item once: delivered, or reported, or skipped
        assert set(self.delivered) <= {item for item, o in self.plan["B"].items() if o == "ok"}
        assert len(self.delivered) == len(set(self.delivered)) == jobs["sink"].completed
        reported = [error.item for error in self.errors]
        assert len(reported) == len(set(reported)) == jobs["errors"].completed
        for error in self.errors:
            assert self.plan[error.job][error.item] in ("fail", "group")
        # backpressure: a send waits only while the first queue is full
        if self.pending:
            assert jobs["A"].queue_depth == QUEUES["A"]
        # the in-flight bound: items taken but not finished
        finished = len(self.delivered) + len(self.errors) + sum(j.skipped for j in jobs.values())
        bound = sum(QUEUES.values()) + sum(j.workers for j in jobs.values()) + len(jobs)
        assert len(self.sent) - finished <= bound

    def check_cancelled(self) -> None:
        stats = self.stats()
        jobs = stats.jobs
        for name, job in jobs.items():
            assert job.in_flight >= 0, name
            assert job.workers == 0, name
        # a send cancelled with the run may still have delivered its item (anyio#728)
        assert (
            0 <= jobs["A"].received + jobs["A"].queue_depth - stats.items_in <= len(self.pending)
        )
        held = sum(job.in_flight + job.queue_depth for job in jobs.values())
        bound = sum(QUEUES.values()) + sum(high for _, high in BOUNDS.values()) + 2 + len(jobs)
        assert held <= bound + 2  # + items counted by two jobs (anyio#728): one per worker
        for factory in self.factories.values():
            assert factory.enters == factory.exits
        # a send that waited when the run was stopped fails: the flow ended its input
        for future in self.pending.values():
            error = future.exception(timeout=HANG_GUARD)
            assert error is None or isinstance(error, anyio.BrokenResourceError), error
        with pytest.raises(anyio.BrokenResourceError):
            self.portal.call(self.running.send, -1)

    def teardown(self) -> None:
        try:
            if not self.stopped:
                self.drain()
        finally:
            if not self.stopped:
                with contextlib.suppress(BaseException):
                    self.portal.call(self.running.stop)
                    self.block.result(timeout=HANG_GUARD)
            tasks = self.portal.call(tasks_besides_this)
            del self.running, self.block, self.leave
            try:
                assert_no_unclosed_streams()
            finally:
                self.stack.close()
        assert tasks <= self.tasks_before

    def drain(self) -> None:
        if not self.closed:
            self.portal.call(self.running.close)
            self.closed = True
        for job in ("A", "B"):
            self.portal.call(self.gates[job].open)
            for item in range(self.next_item):
                self.plan[job].setdefault(item, "ok")

        async def join() -> FlowStats:
            with anyio.fail_after(HANG_GUARD):
                joined: FlowStats = await self.running.join()
                return joined

        stats: FlowStats = self.portal.call(join)
        self.settle()
        assert not self.pending
        self.portal.call(self.leave.set)
        self.block.result(timeout=HANG_GUARD)
        assert self.left_quietly
        self.stopped = True
        for job_name, job_stats in stats.jobs.items():
            assert (
                job_stats.received == job_stats.completed + job_stats.skipped + job_stats.errored
            )
            assert job_stats.workers == 0, job_name
        skipped = {item for job in ("A", "B") for item, o in self.plan[job].items() if o == "skip"}
        reported = [error.item for error in self.errors]
        everything = sorted(self.delivered + reported + sorted(skipped & self.sent))
        assert everything == sorted(self.sent)  # each item ended exactly once
        assert stats.items_in == len(self.sent)
        for factory in self.factories.values():
            assert factory.enters == factory.exits


SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)


class AsyncioFlowMachine(FlowMachine):
    backend = "asyncio"


class TrioFlowMachine(FlowMachine):
    backend = "trio"


TestFlowOnAsyncio = AsyncioFlowMachine.TestCase
TestFlowOnAsyncio.settings = SETTINGS
TestFlowOnTrio = TrioFlowMachine.TestCase
TestFlowOnTrio.settings = SETTINGS
