"""The per-job scaler: a thin async loop around a pure strategy.

One scaler task runs for each job whose ``max_workers > min_workers``, inside
the run's task group. Every ``sampling`` seconds it turns the job's counters
into a frozen :class:`ScalingSample`, asks the strategy for a worker count,
clamps it to ``[min_workers, max_workers]``, and adds workers (each in its own
task, retired through its own cancel scope) or asks some to leave at their next
safe point. It stops when the job's input has ended; the job cancels it when it
finishes, so a run never waits for a scaler's sleep.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

from .._capacity import scaling_knobs
from .._scaling import ScalingSample, make_strategy

if TYPE_CHECKING:
    from ._job import Job
    from ._pool import Pool


def _target(decision: Any, job: str) -> tuple[int, str]:
    reason = ""
    if isinstance(decision, tuple) and len(decision) == 2 and isinstance(decision[1], str):
        decision, reason = decision
    if isinstance(decision, bool) or not isinstance(decision, int):
        raise TypeError(
            f"scaling strategy of job {job!r} returned {decision!r}; "
            "decide() must return an int or (int, reason)"
        )
    return decision, reason


async def run_scaler(pool: Pool) -> None:
    """Scale ``pool``'s job until its input ends."""
    job = pool.job
    capacity = job.spec.capacity
    knobs = scaling_knobs(capacity)
    strategy = make_strategy(knobs.strategy)
    counters = job.counters
    clock = counters.clock
    receive = job.receive
    downstream = job.send
    low, high = capacity.min_workers, capacity.max_workers

    with job.scaler_scope:
        then = clock()
        active0, idle0, blocked0 = counters.seconds(then)
        ended0 = counters.ended
        received0 = counters.received
        retried0, errored0 = counters.retried, counters.errored
        timed0 = counters.latency.count
        total0, squares0 = counters.latency.total, counters.latency.squares
        logs0, log_squares0 = counters.latency.logs, counters.latency.log_squares
        depth0 = receive.statistics().current_buffer_used
        following = _next_job(job)
        down0 = following.counters.seconds(then)[0] if following is not None else 0.0
        said = ""  # the last reason given: a kept count makes an event only with a new one
        while True:
            await anyio.sleep(knobs.sampling)
            # The tick may wake in the very round its run is cancelled: then it
            # must not start workers, which would take items from the queue
            # only to abandon them (more than the job's workers could hold).
            await anyio.lowlevel.checkpoint_if_cancelled()
            if job.input_ended:
                break
            now = clock()
            active, idle, blocked = counters.seconds(now)
            ended, received = counters.ended, counters.received
            depth = receive.statistics().current_buffer_used
            workers = pool.size
            down = downstream.statistics() if downstream is not None else None
            latency = counters.latency
            timed = latency.count
            durations = sorted(latency.since(timed0))
            interval = max(now - then, 1e-9)
            down_busy = None
            down_active = 0.0
            if following is not None:
                fc = following.counters
                down_active = fc.seconds(now)[0]
                down_total = fc.workers * interval
                down_busy = min((down_active - down0) / down_total, 1.0) if down_total else 0.0
            sample = ScalingSample(
                job=job.name,
                time=now,
                interval=interval,
                workers=workers,
                min_workers=low,
                max_workers=high,
                active=max(active - active0, 0.0),
                idle=max(idle - idle0, 0.0),
                blocked=max(blocked - blocked0, 0.0),
                completed=ended - ended0,
                arrivals=max(received - received0 + depth - depth0, 0),
                queue_depth=depth,
                queue_length=capacity.queue_length,
                downstream_depth=down.current_buffer_used if down is not None else None,
                downstream_length=int(down.max_buffer_size) if down is not None else None,
                input_closed=not receive.statistics().open_send_streams,
                capacity=capacity,
                calls=timed - timed0,
                call_seconds=max(latency.total - total0, 0.0),
                call_squares=max(latency.squares - squares0, 0.0),
                call_logs=latency.logs - logs0,
                call_log_squares=max(latency.log_squares - log_squares0, 0.0),
                call_p50=_quantile(durations, 0.5),
                call_p90=_quantile(durations, 0.9),
                first_calls=int(counters.first[0]),
                first_call_logs=counters.first[1],
                first_call_log_squares=counters.first[2],
                running=counters.running,
                running_age=counters.running_age(counters.timer()),
                retried=counters.retried - retried0,
                errored=counters.errored - errored0,
                total_completed=ended,
                total_received=received,
                downstream_busy=down_busy,
                downstream_workers=following.counters.workers if following is not None else None,
                downstream_max_workers=(
                    following.spec.capacity.max_workers if following is not None else None
                ),
            )
            then, active0, idle0, blocked0 = now, active, idle, blocked
            ended0, received0, depth0 = ended, received, depth
            retried0, errored0 = counters.retried, counters.errored
            timed0, total0, squares0 = timed, latency.total, latency.squares
            logs0, log_squares0 = latency.logs, latency.log_squares
            down0 = down_active
            if not pool.workers:
                continue  # the doorman starts the first worker when input arrives
            target, reason = _target(strategy.decide(sample), job.name)
            if job.slots is not None:
                # Aim at the concurrency limit and a little headroom while items wait:
                # more workers could only wait for a slot, fewer leave slots unused.
                cap = job.slots.worker_cap()
                if target > cap or (target < cap and depth > 0):
                    target, reason = cap, "the concurrency limit"
            target = min(max(target, low), high)
            if target != workers:
                pool.resize(target, reason)
            elif reason and reason != said:
                pool.resized(workers, workers, reason)  # a cap, or a verdict
            if target != workers or reason:
                said = reason


def _next_job(job: Job) -> Job | None:
    """The job that takes this job's outputs, if any."""
    jobs = job.run.jobs
    for i, other in enumerate(jobs[:-1]):
        if other is job:
            return jobs[i + 1]
    return None


def _quantile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]
