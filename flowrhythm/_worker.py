"""The worker loop: receive -> process -> forward. The hot path.

Every item crosses this loop once per job, so it takes the non-waiting path
first (``receive_nowait`` / ``send_nowait``), does O(1) bookkeeping with plain
attribute increments, and enters the scheduler only when it must wait: for
input (the worker is *idle*), to hand a result downstream (*blocked*), or inside
the processor (*active*). So that a busy worker never starves cancellation or
other tasks, it also yields every :data:`YIELD_EVERY` items that went through
without waiting.

A worker is retired only at a safe point: while it waits for input (its cancel
scope, which :meth:`Worker.retire` cancels only then), or after the item it is
processing. It is never cancelled while holding an item.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, cast, final

import anyio
from anyio import EndOfStream, WouldBlock
from anyio.lowlevel import checkpoint, checkpoint_if_cancelled

from ._errors import LastWorkItem, StopProcessing
from ._timing import FIRST_CALLS

if TYPE_CHECKING:
    from ._batch import Batcher
    from ._flow import RouterSpec
    from ._job import Job
    from ._ordered import Reorder

#: Items a worker may take without waiting before it yields to the scheduler.
YIELD_EVERY: Final = 64

#: Marks "no item" where ``None`` is a valid item.
NOTHING: Final[Any] = object()


@final
class Worker:
    """One worker task's handle: how a scaler retires it safely.

    Each worker runs in its own cancel scope. :meth:`retire` cancels that scope
    only while the worker waits for input, holding no item; otherwise it only
    asks the worker to leave after its current item. ``leaving`` means the
    retirement has taken effect and can no longer be withdrawn.
    """

    __slots__ = ("leaving", "rescued", "retiring", "scope", "waiting")

    def __init__(self, *, retirable: bool = True) -> None:
        # Only a worker of a scaling job can be retired, and so needs a scope.
        self.scope: anyio.CancelScope | None = anyio.CancelScope() if retirable else None
        self.waiting = False  # in the idle wait for input: safe to cancel
        self.retiring = False
        self.leaving = False
        # An item that arrived just as the worker was retired (see wait_for_item).
        self.rescued: Any = NOTHING

    @property
    def idle(self) -> bool:
        return self.waiting

    def retire(self) -> None:
        """Ask the worker to stop at its next safe point (never mid-item)."""
        self.retiring = True
        if self.waiting:
            self.leaving = True
            assert self.scope is not None, "a worker of a job that does not scale is retired"
            self.scope.cancel()

    def revive(self) -> bool:
        """Withdraw a retirement request that has not taken effect yet."""
        if self.retiring and not self.leaving:
            self.retiring = False
            return True
        return False

    def renew(self) -> None:
        """After a rescue: a fresh scope, and no longer retiring."""
        self.scope = anyio.CancelScope()
        self.retiring = self.leaving = False


async def _check_cancel(job: Job, exc: BaseException) -> None:
    """A processor raised the cancellation exception: was the worker cancelled?

    If an anyio cancel scope around it is cancelled, :func:`checkpoint_if_cancelled`
    raises the real cancellation. Otherwise either the processor raised it on its
    own, or the event loop cancelled the task outside anyio (asyncio's runner
    does so at shutdown): the caller re-raises it either way, and the run is
    marked failed, so that it can never end as a success with the item missing.
    """
    await checkpoint_if_cancelled()
    job.run.fail(
        RuntimeError(
            f"a processor of job {job.name!r} raised the cancellation exception while "
            "nothing cancelled it; its item would have been lost, so the run fails"
        ),
        exc,
    )


async def wait_for_item(job: Job, worker: Worker) -> Any:
    """The slow path of receiving: wait (idle) for the next item.

    Returns :data:`NOTHING` when the worker should leave: its input ended, or it
    was retired while it waited. The wait is the only place where a worker's
    cancel scope is cancelled; anyio neither hands an item to a receiver whose
    cancellation is pending nor cancels a task whose wait already completed, so
    if an item arrived in the same instant the retirement came, ``receive``
    returns it: then the item is kept in :attr:`Worker.rescued` for the worker
    task to process outside the cancelled scope.
    """
    if worker.retiring:
        return NOTHING
    counters = job.counters
    since = counters.enter_idle()
    worker.waiting = True
    try:
        item = await job.receive.receive()
    except EndOfStream:
        job.input_ended = True
        return NOTHING
    finally:
        worker.waiting = False
        counters.leave_idle(since)
    counters.received += 1  # counted the instant it leaves the queue
    if worker.leaving:
        worker.rescued = item
        return NOTHING
    return item


async def work(
    job: Job, worker: Worker, fn: Callable[[Any], Any], is_gen: bool, item: Any = NOTHING
) -> None:
    """Run one worker until its input ends, it is retired, or it fails.

    ``item`` is a first item already taken from the input (and counted as
    received) for this worker. Every input is counted as received the instant it
    leaves the queue.
    """
    counters = job.counters
    receive_nowait = job.receive.receive_nowait
    out = job.send
    send_nowait = out.send_nowait if out is not None else None
    cancelled_exc = anyio.get_cancelled_exc_class()
    last = LastWorkItem
    latency = counters.latency
    clock = counters.timer  # in step with the event loop's clock, virtual or real
    budget = YIELD_EVERY
    # A plain call is timed when ``budget & mask`` is 0: one fast call in
    # SAMPLE_EVERY, every call once they are slow (the mask is re-read after each
    # timed call). Only a job that scales follows its calls in flight and its
    # first calls: its scaler is what reads them.
    mask = latency.mask
    scales = job.scales

    if item is NOTHING:
        try:
            item = receive_nowait()
        except WouldBlock:
            item = await wait_for_item(job, worker)
        except EndOfStream:
            job.input_ended = True
            return
        else:
            counters.received += 1
        if item is NOTHING:
            return
    while True:
        # -- process and forward ---------------------------------------------
        if is_gen:
            if counters.received & latency.mask:
                await _process(job, fn, True, item, 1, None)
            else:
                started = clock()
                ordinal = counters.timed_calls
                counters.timed_calls = ordinal + 1
                counters.running += 1
                counters.running_since += started
                try:
                    await _process(job, fn, True, item, 1, None)
                finally:
                    counters.running -= 1
                    counters.running_since -= started
                    if ordinal < FIRST_CALLS:
                        counters.first_call(clock() - started)
                latency.add(clock() - started)
        else:
            try:
                if budget & mask:
                    result = await fn(item)
                elif not scales:  # timed: see flowrhythm._timing.Timings
                    started = clock()
                    result = await fn(item)
                    latency.add(clock() - started)
                    mask = latency.mask
                else:  # timed, and followed by the scaler
                    started = clock()
                    ordinal = counters.timed_calls
                    counters.timed_calls = ordinal + 1
                    counters.running += 1  # calls in flight, for their age
                    counters.running_since += started
                    try:
                        result = await fn(item)
                    finally:
                        counters.running -= 1
                        counters.running_since -= started
                        if ordinal < FIRST_CALLS:
                            counters.first_call(clock() - started)
                    latency.add(clock() - started)
                    mask = latency.mask
            except StopProcessing:
                counters.skipped += 1
            except Exception as exc:  # noqa: BLE001 - every failure is routed
                await job.fail(item, exc)
            except cancelled_exc as exc:
                await _check_cancel(job, exc)
                raise
            else:
                if result.__class__ is last:
                    job.end_input()
                    counters.outputs_adjust -= 1
                elif send_nowait is not None:
                    try:
                        send_nowait(result)
                    except WouldBlock:
                        since = counters.enter_blocked()
                        try:
                            await out.send(result)  # type: ignore[union-attr]
                        finally:
                            counters.leave_blocked(since)
                        budget = YIELD_EVERY
                counters.completed += 1

        # -- stay fair -----------------------------------------------------------
        budget -= 1
        if not budget:
            budget = YIELD_EVERY
            await checkpoint()

        # -- receive the next item: without waiting if one is there ---------------
        if worker.retiring:
            return  # asked to leave: this is the safe point after an item
        try:
            item = receive_nowait()
        except WouldBlock:
            item = await wait_for_item(job, worker)
            if item is NOTHING:
                return
            budget = YIELD_EVERY
        except EndOfStream:
            job.input_ended = True
            return
        else:
            counters.received += 1


async def work_general(
    job: Job, worker: Worker, fn: Callable[[Any], Any], is_gen: bool, item: Any = NOTHING
) -> None:
    """The worker loop of a job with ``ordered=`` or ``batch=``.

    The same steps as :func:`work`, plus a sequence number and a parked list of
    outputs per input (ordered), and item counts per batch (batch). Kept apart
    so that plain jobs pay nothing for either.
    """
    counters = job.counters
    reorder = job.reorder
    batcher = job.batcher
    batched = batcher is not None
    budget = YIELD_EVERY

    while True:
        # -- take an input ------------------------------------------------------------
        seq = 0
        if item is NOTHING:
            if batcher is not None:
                taken = await take_batch(job, worker, batcher, reorder)
            else:
                assert reorder is not None  # plain jobs run `work`
                taken = await take_in_order(job, worker, reorder)
            if taken is NOTHING:
                return
            if reorder is not None:
                item, seq = taken
            else:
                item = taken
        elif isinstance(item, Numbered):  # rescued, or handed over by the doorman
            item, seq = item.item, item.seq
        weight = len(item) if batched else 1

        # -- process: outputs go downstream now, or park until their turn ---------------
        outputs: list[Any] | None = [] if reorder is not None else None
        if counters.ended & counters.latency.mask:
            ok = await _process(job, fn, is_gen, item, weight, outputs)
        else:
            started = counters.timer()
            ordinal = counters.timed_calls
            counters.timed_calls = ordinal + 1
            counters.running += 1
            counters.running_since += started
            try:
                ok = await _process(job, fn, is_gen, item, weight, outputs)
            finally:
                counters.running -= 1
                counters.running_since -= started
                if ordinal < FIRST_CALLS:
                    counters.first_call(counters.timer() - started)
            counters.latency.add(counters.timer() - started)
        if reorder is not None:
            assert outputs is not None
            await reorder.release(seq, outputs, weight if ok else 0, job.forward)
        item = NOTHING

        budget -= 1
        if not budget:
            budget = YIELD_EVERY
            await checkpoint()


async def work_ordered(
    job: Job, worker: Worker, fn: Callable[[Any], Any], is_gen: bool, item: Any = NOTHING
) -> None:
    """The worker loop of an ordered job whose processor is a plain call.

    The steps of :func:`work`, with a number per input: an input whose turn it is
    when its call returns is handed on at once (the common case); one that
    finished out of turn is parked in the reorder window. Generators and
    batches run :func:`work_general`.
    """
    reorder = job.reorder
    assert reorder is not None
    counters = job.counters
    latency = counters.latency
    receive_nowait = job.receive.receive_nowait
    out = job.send
    send_nowait = out.send_nowait if out is not None else None
    parked = reorder.parked
    clock = counters.timer  # in step with the event loop's clock, virtual or real
    cancelled_exc = anyio.get_cancelled_exc_class()
    last = LastWorkItem
    budget = YIELD_EVERY
    seq = 0
    if isinstance(item, Numbered):  # rescued, or handed over by the doorman
        item, seq = item.item, item.seq

    while True:
        # -- take an input, numbered as it leaves the queue -----------------------------
        if item is NOTHING:
            if worker.retiring:
                return  # asked to leave: this is the safe point after an item
            if not reorder.receiving and reorder.next_seq - reorder.head < reorder.window:
                try:
                    item = receive_nowait()
                except WouldBlock:
                    pass
                except EndOfStream:
                    job.input_ended = True
                    return
                else:
                    counters.received += 1
                    seq = reorder.next_seq
                    reorder.next_seq = seq + 1
            if item is NOTHING:
                taken = await take_in_order(job, worker, reorder)
                if taken is NOTHING:
                    return
                item, seq = taken
                budget = YIELD_EVERY

        # -- process ------------------------------------------------------------------
        ok = True
        try:
            if counters.received & latency.mask:
                result = await fn(item)
            else:  # timed: see flowrhythm._timing.Timings
                started = clock()
                result = await fn(item)
                latency.add(clock() - started)
        except StopProcessing:
            counters.skipped += 1
            ok = False
        except Exception as exc:  # noqa: BLE001 - every failure is routed
            await job.fail(item, exc)
            ok = False
        except cancelled_exc as exc:
            await _check_cancel(job, exc)
            raise
        item = NOTHING

        # -- release in order: at once if this input is the head -----------------------
        if ok and result.__class__ is last:
            job.end_input()
            outputs: list[Any] = []
        elif ok:
            outputs = [result]
        else:
            outputs = []
        if seq != reorder.head or reorder.draining:
            await reorder.release(seq, outputs, 1 if ok else 0, job.forward)
        else:
            if outputs and send_nowait is not None:
                try:
                    send_nowait(result)
                except WouldBlock:
                    reorder.draining = True  # workers finishing meanwhile park
                    try:
                        await job.forward(result)
                    finally:
                        reorder.draining = False
                    budget = YIELD_EVERY
            if ok:
                counters.completed += 1
                if not outputs:
                    counters.outputs_adjust -= 1
            reorder.head = seq + 1
            reorder.wake()
            if reorder.head in parked:
                await reorder.drain(job.forward)

        # -- stay fair -----------------------------------------------------------------
        budget -= 1
        if not budget:
            budget = YIELD_EVERY
            await checkpoint()


@final
class Numbered:
    """An input and its sequence number, kept together across a rescue."""

    __slots__ = ("item", "seq")

    def __init__(self, item: Any, seq: int) -> None:
        self.item = item
        self.seq = seq


async def take_in_order(job: Job, worker: Worker, reorder: Reorder) -> Any:
    """Take the next input of an ordered job: ``(item, seq)``, or :data:`NOTHING`.

    Inputs are numbered (and counted as received) the instant they leave the
    queue. Without waiting, a worker takes one whenever the window has room and
    no worker is inside a waiting ``receive`` (whose item may already be on its
    way to it, not yet numbered). Otherwise it waits for room (blocked), then
    queues on the reorder lock (idle): the holder takes an input without waiting
    if one is there, or else waits for one, and numbers it. Quick takes never
    queue behind the lock, only behind a worker really waiting for input. A
    worker in here holds no item, so retiring it is safe throughout.
    """
    if worker.retiring:
        return NOTHING
    receive = job.receive
    counters = job.counters
    if not reorder.receiving and reorder.next_seq - reorder.head < reorder.window:
        try:
            item = receive.receive_nowait()
        except WouldBlock:
            pass
        except EndOfStream:
            job.input_ended = True
            return NOTHING
        else:
            counters.received += 1
            return item, reorder.take()
    lock = reorder.lock
    worker.waiting = True
    try:
        while True:
            await reorder.wait_for_room()  # blocked while the window is full
            since = counters.enter_idle()
            try:
                await lock.acquire()  # idle: another worker waits for input
            finally:
                counters.leave_idle(since)
            try:
                if not reorder.has_room():
                    continue  # the window filled up meanwhile
                try:
                    item = receive.receive_nowait()
                except WouldBlock:
                    reorder.receiving = True
                    since = counters.enter_idle()
                    try:
                        item = await receive.receive()
                    finally:
                        reorder.receiving = False
                        counters.leave_idle(since)
                counters.received += 1
                seq = reorder.take()
                break
            except EndOfStream:
                job.input_ended = True
                return NOTHING
            finally:
                lock.release()
    finally:
        worker.waiting = False
    if worker.leaving:
        worker.rescued = Numbered(item, seq)
        return NOTHING
    return item, seq


async def take_batch(job: Job, worker: Worker, batcher: Batcher, reorder: Reorder | None) -> Any:
    """Take the next batch of a batched job, or :data:`NOTHING` when the worker should leave.

    Returns the batch (a list), or ``(batch, seq)`` for an ordered job. Without
    waiting, a worker takes a full batch when nobody is gathering and the queue
    holds one (and, ordered, the reorder window has room). Otherwise it gathers
    under the gate: it waits for room in the window (blocked), the gate and the
    first item holding nothing (idle, and safe to retire), then completes the
    batch holding its items (idle, and not cancelled by a retirement). A batch
    is numbered before anyone else can take an input, and the window keeps the
    room it had while the gate is held: only the gate holder numbers.
    """
    if worker.retiring:
        return NOTHING
    counters = job.counters
    receive = job.receive
    gate = batcher.gate
    items: list[Any] = []
    if not gate.locked() and (reorder is None or reorder.has_room()):
        ended = batcher.take_ready(items, receive.receive_nowait)
        if len(items) == batcher.size or (ended and items):
            return items if reorder is None else (items, reorder.take())
        if ended:
            job.input_ended = True
            return NOTHING
        if items:
            gate.acquire_nowait()
    if not items:
        worker.waiting = True
        try:
            while True:
                if reorder is not None:
                    await reorder.wait_for_room()  # blocked while the window is full
                since = counters.enter_idle()
                try:
                    await gate.acquire()  # idle: another worker is gathering
                finally:
                    counters.leave_idle(since)
                if reorder is None or reorder.has_room():
                    break
                gate.release()  # the window filled up meanwhile
            since = counters.enter_idle()
            try:
                items.append(await receive.receive())
            except EndOfStream:
                gate.release()
                job.input_ended = True
                return NOTHING
            except BaseException:
                gate.release()
                raise
            finally:
                counters.leave_idle(since)
        finally:
            worker.waiting = False
        counters.received += 1
    try:
        if worker.leaving:
            # Retired in the instant the first item came: the worker's scope is
            # cancelled, so nothing may wait; the batch goes as it is.
            batcher.take_ready(items, receive.receive_nowait)
            worker.rescued = items if reorder is None else Numbered(items, reorder.take())
            return NOTHING
        since = counters.enter_idle()
        try:
            await batcher.complete(items, receive)
        finally:
            counters.leave_idle(since)
        return items if reorder is None else (items, reorder.take())
    finally:
        gate.release()


async def _process(
    job: Job,
    fn: Callable[[Any], Any],
    is_gen: bool,
    item: Any,
    weight: int,
    outputs: list[Any] | None,
) -> bool:
    """Run the processor over one input (or batch of ``weight`` items).

    With ``outputs`` (ordered), the outputs are collected there and counted when
    the reorder window releases them; otherwise they go downstream now and are
    counted here. Skipped and failed items are counted here. Returns whether
    the processing ended normally.
    """
    counters = job.counters
    try:
        if is_gen:
            async with contextlib.aclosing(fn(item)) as agen:
                async for out in agen:
                    if out.__class__ is LastWorkItem:
                        job.end_input()
                    elif outputs is not None:
                        outputs.append(out)
                    else:
                        counters.outputs_adjust += 1
                        await job.forward(out)
            if outputs is None:
                counters.outputs_adjust -= 1
        else:
            out = await fn(item)
            if out.__class__ is LastWorkItem:
                job.end_input()
                if outputs is None:
                    counters.outputs_adjust -= 1
            elif outputs is not None:
                outputs.append(out)
            else:
                await job.forward(out)
    except StopProcessing:
        counters.skipped += weight
        return False
    except Exception as exc:  # noqa: BLE001 - every failure is routed
        await job.fail(item, exc, weight)
        return False
    except anyio.get_cancelled_exc_class() as exc:
        await _check_cancel(job, exc)
        raise
    if outputs is None:
        counters.completed += weight
        counters.outputs_adjust += 1 - weight
    return True


async def work_router(
    job: Job, worker: Worker, fn: Callable[[Any], Any], is_gen: bool, item: Any = NOTHING
) -> None:
    """The worker loop of a router: classify each input and hand it to its arm.

    The steps of :func:`work`, with ``fn`` (the router's classify, awaited when
    ``is_gen``: it is ``async def``) in place of the processor, and the label's
    arm in place of the next job: the item itself goes on, with the same
    non-waiting send first. Kept apart so that plain jobs pay nothing for routing.
    """
    classify, is_async = fn, is_gen
    routes = job.routes
    assert routes is not None
    default_label = cast("RouterSpec", job.spec).default
    default = routes[default_label] if default_label is not None else None
    counters = job.counters
    receive_nowait = job.receive.receive_nowait
    cancelled_exc = anyio.get_cancelled_exc_class()
    latency = counters.latency
    clock = counters.timer
    budget = YIELD_EVERY

    if item is NOTHING:
        try:
            item = receive_nowait()
        except WouldBlock:
            item = await wait_for_item(job, worker)
        except EndOfStream:
            job.input_ended = True
            return
        else:
            counters.received += 1
        if item is NOTHING:
            return
    while True:
        # -- classify and hand the item to its arm -------------------------------
        try:
            timed = not counters.received & latency.mask
            if timed:
                started = clock()
            label = classify(item)
            if is_async:
                label = await label
            if timed:
                latency.add(clock() - started)
            route = routes.get(label, default)
            if route is None:
                raise LookupError(
                    f"router {job.name!r} has no arm for the label {label!r} (and no default)"
                )
        except StopProcessing:
            counters.skipped += 1
        except Exception as exc:  # noqa: BLE001 - every failure is routed
            await job.fail(item, exc)
        except cancelled_exc as exc:
            await _check_cancel(job, exc)
            raise
        else:
            out = route.send
            if out is not None:
                try:
                    out.send_nowait(item)
                except WouldBlock:
                    since = counters.enter_blocked()
                    try:
                        await out.send(item)
                    finally:
                        counters.leave_blocked(since)
                    budget = YIELD_EVERY
            route.passed += 1
            counters.completed += 1

        # -- stay fair -----------------------------------------------------------
        budget -= 1
        if not budget:
            budget = YIELD_EVERY
            await checkpoint()

        # -- receive the next item: without waiting if one is there ---------------
        if worker.retiring:
            return  # asked to leave: this is the safe point after an item
        try:
            item = receive_nowait()
        except WouldBlock:
            item = await wait_for_item(job, worker)
            if item is NOTHING:
                return
            budget = YIELD_EVERY
        except EndOfStream:
            job.input_ended = True
            return
        else:
            counters.received += 1
