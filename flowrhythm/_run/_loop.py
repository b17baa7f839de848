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
from typing import TYPE_CHECKING, Any, cast

import anyio
from anyio import EndOfStream, WouldBlock
from anyio.lowlevel import checkpoint, checkpoint_if_cancelled

from .._errors import LastWorkItem, StopProcessing
from .._timing import FIRST_CALLS
from ._worker import LEAVING, NOTHING, YIELD_EVERY, Taken, Worker

if TYPE_CHECKING:
    from .._options import RouterSpec
    from ._job import Job


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
    if worker.retirement:
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
    if worker.retirement is LEAVING:
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
    scales = job.spec.capacity.scales

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
        if worker.retirement:
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
    """The worker loop of a batched job, or of an ordered job whose processor is a generator.

    The same steps as :func:`work`, with every input taken through the job's
    intake (:meth:`Batcher.take <flowrhythm._run._batch.Batcher.take>` or
    :meth:`Reorder.take <flowrhythm._run._ordered.Reorder.take>`) as one
    :class:`Taken`: numbered (ordered) and weighed (a batch counts as its
    items); an ordered job's outputs are parked until their turn. ``item`` is a
    :class:`Taken` handed over by the doorman or rescued, or :data:`NOTHING`.
    Kept apart so that plain jobs pay nothing for either.
    """
    counters = job.counters
    reorder = job.reorder
    intake = job.intake
    assert intake is not None  # plain jobs run `work`
    budget = YIELD_EVERY
    taken: Any = item

    while True:
        # -- take an input ------------------------------------------------------------
        if taken is NOTHING:
            try:
                taken = await intake.take(worker)
            except EndOfStream:
                job.input_ended = True
                return
            if taken is NOTHING:
                return
        item, seq, weight = taken.item, taken.seq, taken.weight

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
        taken = NOTHING

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
    if item.__class__ is Taken:  # rescued, or handed over by the doorman
        item, seq = item.item, item.seq

    while True:
        # -- take an input, numbered as it leaves the queue -----------------------------
        if item is NOTHING:
            if worker.retirement:
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
                try:
                    taken = await reorder.take(worker)
                except EndOfStream:
                    job.input_ended = True
                    return
                if taken is NOTHING:
                    return
                item, seq = taken.item, taken.seq
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
        if worker.retirement:
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
