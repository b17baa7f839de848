"""Autoscaling benchmark: does the default UtilizationCapacity size a job well?

Every scenario runs a job whose processor does ``await anyio.sleep(0.01)`` (so one worker does
at most 100 items/s) behind an input queue of 128, autoscaled between 1 and 64 workers
(``initial_workers=1``) with the DEFAULT scaling knobs, next to fixed pools of the same job
measured in the same run, on asyncio and on trio:

* S1 saturating source: sustained throughput against a fixed pool of 64; time from start until
  the completion rate reaches 90 % of the fixed pool's.
* S2 steady 2,000 items/s: throughput, the worker count at steady state, and direction
  reversals (a scale-up followed by a scale-down, or the reverse). Steady state starts after a
  3 s warm-up: the pool ramps from 1 worker, pays off the backlog the paced source built up
  meanwhile (the ramp overshoots for that), and returns the overshoot after the 1 s cooldown.
* S3 step 500 -> 4,000 -> 500 items/s: rise time after the step up; after the step down, the
  job shrinks only after the cooldown and never below what the load needs. The timeline goes
  to ``benchmarks/results/s3_timeline.json``.
* S4 downstream bottleneck: the job feeds a sink fixed at 10 workers.
* S6 hidden limit: a shared ``anyio.Semaphore(8)`` inside the processor.
* Scaler cost: 10 chained identity jobs with the scaler running but unable to change the
  count, against the same jobs with fixed pools.
* The matrix (M): the workloads users bring, as ``tests/test_scaling_matrix.py`` runs them in
  virtual time, here in real time: saturating constant and log-normal (sigma 1) calls of
  1 ms to 1 s, a hidden ``Semaphore(8)`` at 10 ms and 500 ms, a job feeding one fixed at 4
  workers, a step 5/s -> 50/s -> 5/s of 500 ms calls, a chain of 5/200/50 ms, and calls that
  fail and back off; the default ``UtilizationCapacity(min_workers=1, max_workers=32,
  queue_length=128)`` against fixed-32 and the best fixed pool in the same run: throughput
  ratios, time to 90% of fixed-32's rate (in seconds and in call durations), peak and final
  workers, and how often the guard capped the job (a hidden limit).

Usage::

    python benchmarks/scaling.py [--backend asyncio|trio|both] [--quick] [--json PATH] [--check]
                                 [--only scenarios|matrix]

Progress goes to stderr, the tables to stdout. Every figure is printed with its target and
PASS or MISS; a MISS also prints the scaler's decisions (its ScalingEvent sequence).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from flowrhythm import Capacity, Flow, RunningFlow, ScalingEvent, UtilizationCapacity

# The matrix runs the very scenarios the test suite runs in virtual time.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import _scenarios as matrix_scenarios

SERVICE = 0.01  # seconds each item sleeps in the processor
QUEUE_LENGTH = 128
MAX_WORKERS = 64
SAMPLE_EVERY = 0.05  # seconds between two stats() snapshots
RATE_WINDOW = 0.1  # seconds of completions behind each sliding-window rate
PACE_TICK = 0.005  # a paced source sends what is due every 5 ms
SINK_WORKERS = 10  # S4
HIDDEN_LIMIT = 8  # S6
COST_JOBS = 10

DEFAULTS = UtilizationCapacity()  # the knobs under test: never tuned here
AUTO = UtilizationCapacity(
    min_workers=1, max_workers=MAX_WORKERS, initial_workers=1, queue_length=QUEUE_LENGTH
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TIMELINE_PATH = RESULTS_DIR / "s3_timeline.json"
MATRIX_PATH = RESULTS_DIR / "matrix.json"

JOB = "work"
SINK = "sink"


def fixed(n: int) -> UtilizationCapacity:
    return UtilizationCapacity(
        min_workers=n, max_workers=n, initial_workers=n, queue_length=QUEUE_LENGTH
    )


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ processors


async def sleeper(item: int) -> int:
    await anyio.sleep(SERVICE)
    return item


def limited(sem: anyio.Semaphore) -> Callable[[int], Awaitable[int]]:
    """The sleeper behind a limit the scaler cannot see: waiting for ``sem`` looks busy."""

    async def hidden_limit(item: int) -> int:
        async with sem:
            await anyio.sleep(SERVICE)
        return item

    return hidden_limit


async def identity(item: int) -> int:
    return item


# ------------------------------------------------------------------------------ sources

Feeder = Callable[[RunningFlow, float, list[int]], Coroutine[Any, Any, None]]
Profile = Sequence[tuple[float, float]]  # (start time, items/s) steps, in order


async def saturate(running: RunningFlow, t0: float, sent: list[int]) -> None:
    """Keep the first queue full: send as fast as the flow accepts."""
    item = 0
    while True:
        await running.send(item)
        item += 1
        sent[0] = item


def due(profile: Profile, t: float) -> float:
    """Items a paced source should have sent by time ``t`` (the integral of the profile)."""
    total = 0.0
    for index, (start, rate) in enumerate(profile):
        if t <= start:
            break
        end = profile[index + 1][0] if index + 1 < len(profile) else math.inf
        total += rate * (min(t, end) - start)
    return total


def paced(profile: Profile) -> Feeder:
    """Send on a schedule: every PACE_TICK, whatever is due by now (late items catch up)."""

    async def feed(running: RunningFlow, t0: float, sent: list[int]) -> None:
        tick = 0
        while True:
            tick += 1
            await anyio.sleep(max(t0 + tick * PACE_TICK - anyio.current_time(), 0.0))
            target = int(due(profile, anyio.current_time() - t0))
            while sent[0] < target:
                await running.send(sent[0])
                sent[0] += 1

    return feed


# ------------------------------------------------------------------------------ one traced run


@dataclass(frozen=True)
class Point:
    """One stats() snapshot of one job."""

    t: float
    workers: int
    active: int
    idle: int
    blocked: int
    queue_depth: int
    completed: int
    active_seconds: float  # worker-seconds spent in the processor so far
    sent: int


@dataclass(frozen=True)
class Event:
    """A ScalingEvent, with its time relative to the start of the run."""

    t: float
    job: str
    old: int
    new: int
    reason: str


@dataclass
class Trace:
    duration: float
    points: dict[str, list[Point]]
    events: list[Event]

    def of(self, job: str) -> list[Point]:
        return self.points[job]

    def events_of(self, job: str) -> list[Event]:
        return [e for e in self.events if e.job == job]


async def traced(flow: Flow, feeder: Feeder, duration: float) -> Trace:
    """Run ``flow`` fed by ``feeder`` for ``duration`` s, snapshotting stats() every 50 ms."""
    events: list[Event] = []
    points: dict[str, list[Point]] = {}
    sent = [0]
    t0 = anyio.current_time()

    def on_scale(event: ScalingEvent) -> None:
        events.append(Event(event.time - t0, event.job, event.old, event.new, event.reason))

    async with flow.start(on_scale=on_scale) as running, anyio.create_task_group() as tg:
        tg.start_soon(feeder, running, t0, sent)
        tick = 0
        while True:
            tick += 1
            await anyio.sleep(max(t0 + tick * SAMPLE_EVERY - anyio.current_time(), 0.0))
            now = anyio.current_time() - t0
            for name, job in running.stats().jobs.items():
                points.setdefault(name, []).append(
                    Point(
                        t=now,
                        workers=job.workers,
                        active=job.active,
                        idle=job.idle,
                        blocked=job.blocked,
                        queue_depth=job.queue_depth,
                        completed=job.completed,
                        active_seconds=job.active_seconds,
                        sent=sent[0],
                    )
                )
            if now >= duration:
                break
        tg.cancel_scope.cancel()
        running.stop()
    return Trace(duration, points, events)


def run_traced(backend: str, build: Callable[[], Flow], feeder: Feeder, duration: float) -> Trace:
    gc.collect()

    async def main() -> Trace:
        return await traced(build(), feeder, duration)

    return anyio.run(main, backend=backend)


# ------------------------------------------------------------------------------ measures


def window_rates(points: Sequence[Point]) -> list[tuple[float, float]]:
    """(end of window, completions/s over the last RATE_WINDOW s) for every snapshot."""
    rates: list[tuple[float, float]] = []
    start = 0
    for point in points:
        while start + 1 < len(points) and point.t - points[start + 1].t >= RATE_WINDOW - 1e-3:
            start += 1
        first = points[start]
        if point.t - first.t >= RATE_WINDOW - 1e-3:
            rates.append((point.t, (point.completed - first.completed) / (point.t - first.t)))
    return rates


def reach_time(points: Sequence[Point], level: float, after: float = 0.0) -> float | None:
    """Seconds after ``after`` until the window rate first reaches ``level``."""
    for t, rate in window_rates(points):
        if t >= after and rate >= level:
            return t - after
    return None


def between(points: Sequence[Point], start: float, end: float) -> list[Point]:
    return [p for p in points if start - 1e-9 <= p.t <= end + 1e-9]


def throughput(points: Sequence[Point], start: float, end: float) -> float:
    """Completions per second between the first snapshot at/after start and the last before end."""
    inside = between(points, start, end)
    first, last = inside[0], inside[-1]
    return (last.completed - first.completed) / (last.t - first.t)


def offered(points: Sequence[Point], start: float, end: float) -> float:
    inside = between(points, start, end)
    first, last = inside[0], inside[-1]
    return (last.sent - first.sent) / (last.t - first.t)


def busy(points: Sequence[Point]) -> float:
    """Average number of workers running the processor over the points' span."""
    first, last = points[0], points[-1]
    return (last.active_seconds - first.active_seconds) / (last.t - first.t)


def worker_range(points: Sequence[Point]) -> tuple[int, int, float]:
    counts = [p.workers for p in points]
    return min(counts), max(counts), statistics.median(counts)


def reversals(events: Sequence[Event], start: float, end: float) -> int:
    """Scaling decisions in [start, end] that reverse the direction of the one before."""
    count = 0
    for before, event in itertools.pairwise(events):
        if start <= event.t <= end and (before.new - before.old) * (event.new - event.old) < 0:
            count += 1
    return count


def describe_events(events: Sequence[Event], limit: int = 40) -> list[str]:
    lines = [f"t={e.t:6.2f}s  {e.old:>2} -> {e.new:<2}  {e.reason}" for e in events[:limit]]
    if len(events) > limit:
        lines.append(f"... and {len(events) - limit} more")
    if not events:
        lines.append("(no scaling events)")
    return lines


# ------------------------------------------------------------------------------ results


@dataclass
class Check:
    metric: str
    value: float | None
    shown: str
    target: str
    ok: bool


@dataclass
class Scenario:
    key: str
    title: str
    checks: list[Check] = field(default_factory=list)
    info: list[str] = field(default_factory=list)
    events: dict[str, list[Event]] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)

    def check(self, metric: str, value: float | None, shown: str, target: str, ok: bool) -> None:
        self.checks.append(Check(metric, value, shown, target, ok))
        log(f"  {self.key} {metric}: {shown} (target {target}) {'PASS' if ok else 'MISS'}")

    def note(self, text: str) -> None:
        self.info.append(text)
        log(f"  {self.key} {text}")

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


@dataclass(frozen=True)
class Plan:
    """Durations (s) and repetitions; --quick shortens them."""

    s1: float  # each run of S1
    s2_measure: float  # S2 after its warm-up
    s3_low: float  # S3 at 500/s before the step up
    s3_high: float  # S3 at 4,000/s
    s3_tail: float  # S3 at 500/s after the step down (> cooldown, to see the shrink)
    s4: float
    s6: float
    repeat: int  # S1, S4, S6: runs of each variant (interleaved)
    cost_items: int
    cost_pairs: int
    warmup: float = 2.0  # S4/S6: seconds before "steady"
    s2_warmup: float = 3.0  # S2: ramp, backlog payoff, and the cooldown before steady state
    settle: float = 1.0  # S1/S4/S6: throughput is measured from here (the ramp excluded)


FULL = Plan(
    s1=3.0,
    s2_measure=10.0,
    s3_low=2.5,
    s3_high=3.0,
    s3_tail=7.0,
    s4=3.5,
    s6=4.5,
    repeat=2,
    cost_items=20_000,
    cost_pairs=12,
)
QUICK = Plan(
    s1=2.0,
    s2_measure=4.0,
    s3_low=1.5,
    s3_high=2.0,
    s3_tail=6.5,
    s4=3.0,
    s6=4.0,
    repeat=1,
    cost_items=10_000,
    cost_pairs=5,
)


# ------------------------------------------------------------------------------ scenarios


def one_job(capacity: Capacity) -> Callable[[], Flow]:
    return lambda: Flow().add(sleeper, capacity=capacity, name=JOB)


def interleaved(
    backend: str,
    variants: Sequence[tuple[str, Callable[[], Flow]]],
    feeder: Feeder,
    duration: float,
    repeat: int,
) -> dict[str, list[Trace]]:
    """``repeat`` runs of every variant, in the order A B, B A, A B, ...

    A slow patch of a noisy machine then hits every variant alike.
    """
    traces: dict[str, list[Trace]] = {name: [] for name, _ in variants}
    for rep in range(repeat):
        for name, build in variants if rep % 2 == 0 else reversed(variants):
            traces[name].append(run_traced(backend, build, feeder, duration))
    return traces


def rates_text(rates: Sequence[float]) -> str:
    return "/".join(f"{r:.0f}" for r in rates)


def s1_saturating(backend: str, plan: Plan) -> Scenario:
    sc = Scenario("S1", "saturating source")
    d, settle = plan.s1, plan.settle
    runs = interleaved(
        backend,
        [("fixed", one_job(fixed(MAX_WORKERS))), ("auto", one_job(AUTO))],
        saturate,
        d,
        plan.repeat,
    )
    base_rates = [throughput(t.of(JOB), settle, d) for t in runs["fixed"]]
    auto_rates = [throughput(t.of(JOB), settle, d) for t in runs["auto"]]
    base_rate, auto_rate = statistics.median(base_rates), statistics.median(auto_rates)
    ratio = auto_rate / base_rate
    sc.check(
        f"throughput t=[{settle:g},{d:g}]s / fixed-64",
        ratio,
        f"{ratio:.3f} ({auto_rate:.0f}/{base_rate:.0f} /s)",
        ">= 0.95",
        ratio >= 0.95,
    )
    ramps = [reach_time(t.of(JOB), 0.9 * base_rate) for t in runs["auto"]]
    ramp = None if None in ramps else max(r for r in ramps if r is not None)
    sc.check(
        "time to 90% of fixed-64 rate (slowest run)",
        ramp,
        seconds(ramp),
        "<= 1.00 s",
        ramp is not None and ramp <= 1.0,
    )
    base_ramps = [reach_time(t.of(JOB), 0.9 * base_rate) for t in runs["fixed"]]
    whole = statistics.median(t.of(JOB)[-1].completed for t in runs["auto"]) / statistics.median(
        t.of(JOB)[-1].completed for t in runs["fixed"]
    )
    lo, hi, _ = worker_range([p for t in runs["auto"] for p in between(t.of(JOB), settle, d)])
    sc.note(
        f"per run (/s): fixed-64 {rates_text(base_rates)}, autoscaled {rates_text(auto_rates)} "
        f"(workers {lo}-{hi} after {settle:g} s); ramps {', '.join(map(seconds, ramps))}"
    )
    sc.note(
        f"fixed-64 reaches 90% at {', '.join(map(seconds, base_ramps))} by the same "
        f"{RATE_WINDOW:g} s window (the lag of the measure itself); whole-run items "
        f"autoscaled / fixed-64 over {d:g} s = {whole:.3f}"
    )
    for i, trace in enumerate(runs["auto"], 1):
        sc.events[f"{JOB} (run {i})"] = trace.events_of(JOB)
    sc.figures = {"fixed64_rates": base_rates, "auto_rates": auto_rates, "ramps": ramps}
    return sc


def s2_steady(backend: str, plan: Plan) -> Scenario:
    sc = Scenario("S2", "steady 2,000 items/s")
    rate = 2000.0
    warm, end = plan.s2_warmup, plan.s2_warmup + plan.s2_measure
    trace = run_traced(backend, one_job(AUTO), paced([(0.0, rate)]), end)
    points = trace.of(JOB)
    got = throughput(points, warm, end)
    sc.check(
        f"throughput t=[{warm:g},{end:g}]s",
        got,
        f"{got:.0f} /s",
        f"{rate:.0f} +-3%",
        abs(got - rate) <= 0.03 * rate,
    )
    lo, hi, median = worker_range(between(points, warm, end))
    sc.check(
        f"workers after {warm:g} s warm-up",
        median,
        f"{lo}-{hi} (median {median:g})",
        "all in [26, 38]",
        26 <= lo and hi <= 38,
    )
    events = trace.events_of(JOB)
    flips = reversals(events, warm, end)
    sc.check(
        f"direction reversals t=[{warm:g},{end:g}]s",
        flips,
        str(flips),
        "0",
        flips == 0,
    )
    after = [e for e in events if e.t >= warm]
    sc.note(
        f"offered {offered(points, warm, end):.0f} /s; "
        f"mean busy workers {busy(between(points, warm, end)):.1f}; "
        f"scaling events after warm-up: {len(after)} (of {len(events)})"
    )
    sc.events[JOB] = events
    return sc


def s3_step(backend: str, plan: Plan) -> tuple[Scenario, dict[str, Any]]:
    sc = Scenario("S3", "step 500 -> 4,000 -> 500 items/s")
    low, high = 500.0, 4000.0
    t_up = plan.s3_low
    t_down = t_up + plan.s3_high
    end = t_down + plan.s3_tail
    profile = [(0.0, low), (t_up, high), (t_down, low)]
    trace = run_traced(backend, one_job(AUTO), paced(profile), end)
    points = trace.of(JOB)
    events = trace.events_of(JOB)

    rise = reach_time(points, 0.9 * high, after=t_up)
    sc.check(
        "after step up: 90% of 4,000/s within",
        rise,
        seconds(rise),
        "<= 0.50 s",
        rise is not None and rise <= 0.5,
    )
    shrinks = [e for e in events if e.t >= t_down and e.new < e.old]
    delay = shrinks[0].t - t_down if shrinks else None
    cooldown = DEFAULTS.cooldown
    sc.check(
        "after step down: first shrink at",
        delay,
        "none" if delay is None else f"+{delay:.2f} s",
        f">= cooldown ({cooldown:g} s), and happens",
        delay is not None and delay >= cooldown,
    )
    needed = math.ceil(low * SERVICE)
    tail = between(points, t_down, end)
    floor = min(p.workers for p in tail)
    sc.check(
        "after step down: fewest workers",
        floor,
        str(floor),
        f">= {needed} (busy at 500/s)",
        floor >= needed,
    )
    peak = max(p.workers for p in points)
    before = [p.workers for p in between(points, t_up - 0.5, t_up)]
    busy_tail = busy(between(points, t_down + 1.0, end))
    end_workers = points[-1].workers
    sc.note(
        f"workers before the step {min(before)}-{max(before)}, peak {peak}, at the end "
        f"{end_workers}; mean busy at 500/s from 1 s after the step down {busy_tail:.1f}; "
        f"peak queue {max(p.queue_depth for p in points)}"
    )
    sc.note(
        f"throughput: {throughput(points, t_up + 0.5, t_down):.0f} /s in "
        f"[{t_up + 0.5:g},{t_down:g}]s, {throughput(points, t_down + 0.5, end):.0f} /s in "
        f"[{t_down + 0.5:g},{end:g}]s"
    )
    sc.events[JOB] = events
    timeline = {
        "backend": backend,
        "recorded": datetime.now(UTC).isoformat(timespec="seconds"),
        "service_time": SERVICE,
        "queue_length": QUEUE_LENGTH,
        "min_workers": AUTO.min_workers,
        "max_workers": AUTO.max_workers,
        "cooldown": cooldown,
        "profile": [list(step) for step in profile],
        "step_up": t_up,
        "step_down": t_down,
        "duration": end,
        "rate_window": RATE_WINDOW,
        "samples": [
            {
                "t": round(p.t, 4),
                "workers": p.workers,
                "active": p.active,
                "active_seconds": round(p.active_seconds, 4),
                "queue_depth": p.queue_depth,
                "completed": p.completed,
                "sent": p.sent,
            }
            for p in points
        ],
        "events": [asdict(e) for e in events],
    }
    return sc, timeline


def s4_downstream(backend: str, plan: Plan) -> Scenario:
    sc = Scenario("S4", f"downstream bottleneck (sink fixed at {SINK_WORKERS})")
    d, settle, warm = plan.s4, plan.settle, plan.warmup

    def two_jobs(first: Capacity) -> Callable[[], Flow]:
        return lambda: (
            Flow()
            .add(sleeper, capacity=first, name=JOB)
            .add(sleeper, capacity=fixed(SINK_WORKERS), name=SINK)
        )

    runs = interleaved(
        backend,
        [("fixed", two_jobs(fixed(MAX_WORKERS))), ("auto", two_jobs(AUTO))],
        saturate,
        d,
        plan.repeat,
    )
    right = run_traced(backend, two_jobs(fixed(21)), saturate, d)
    base_rates = [throughput(t.of(SINK), settle, d) for t in runs["fixed"]]
    auto_rates = [throughput(t.of(SINK), settle, d) for t in runs["auto"]]
    base_rate, auto_rate = statistics.median(base_rates), statistics.median(auto_rates)
    ratio = auto_rate / base_rate
    peak = max(p.workers for t in runs["auto"] for p in t.of(JOB))
    sc.check("peak workers (whole run, every run)", peak, str(peak), "<= 32", peak <= 32)
    steady = [worker_range(between(t.of(JOB), warm, d)) for t in runs["auto"]]
    median = max(m for _, _, m in steady)
    sc.check(
        f"steady workers after {warm:g} s (median, worst run)",
        median,
        f"{median:g} ({', '.join(f'{lo}-{hi}' for lo, hi, _ in steady)})",
        "<= 21",
        median <= 21,
    )
    sc.check(
        f"throughput t=[{settle:g},{d:g}]s / fixed-64",
        ratio,
        f"{ratio:.3f} ({auto_rate:.0f}/{base_rate:.0f} /s)",
        ">= 0.98",
        ratio >= 0.98,
    )
    right_rate = throughput(right.of(SINK), settle, d)
    blocked = statistics.mean(p.blocked for t in runs["auto"] for p in between(t.of(JOB), warm, d))
    sc.note(
        f"per run (/s): fixed-64 {rates_text(base_rates)}, autoscaled {rates_text(auto_rates)}, "
        f"fixed-21 {right_rate:.0f} ({right_rate / base_rate:.3f} of fixed-64); autoscaled "
        f"job's mean blocked workers after {warm:g} s: {blocked:.1f}"
    )
    for i, trace in enumerate(runs["auto"], 1):
        sc.events[f"{JOB} (run {i})"] = trace.events_of(JOB)
    return sc


def s6_hidden_limit(backend: str, plan: Plan) -> Scenario:
    sc = Scenario("S6", f"hidden limit (Semaphore({HIDDEN_LIMIT}) inside the processor)")
    d, settle, warm = plan.s6, plan.settle, plan.warmup

    def build(capacity: Capacity) -> Callable[[], Flow]:
        # called inside the run: each run is a fresh event loop with its own semaphore
        return lambda: Flow().add(
            limited(anyio.Semaphore(HIDDEN_LIMIT)), capacity=capacity, name=JOB
        )

    runs = interleaved(
        backend,
        [("fixed", build(fixed(MAX_WORKERS))), ("auto", build(AUTO))],
        saturate,
        d,
        plan.repeat,
    )
    right = run_traced(backend, build(fixed(16)), saturate, d)
    base_rates = [throughput(t.of(JOB), settle, d) for t in runs["fixed"]]
    auto_rates = [throughput(t.of(JOB), settle, d) for t in runs["auto"]]
    base_rate, auto_rate = statistics.median(base_rates), statistics.median(auto_rates)
    ratio = auto_rate / base_rate
    sc.check(
        f"throughput t=[{settle:g},{d:g}]s / fixed-64",
        ratio,
        f"{ratio:.3f} ({auto_rate:.0f}/{base_rate:.0f} /s)",
        ">= 0.97",
        ratio >= 0.97,
    )
    after = [worker_range(between(t.of(JOB), warm, d)) for t in runs["auto"]]
    peak = max(hi for _, hi, _ in after)
    sc.check(
        f"workers after {warm:g} s warm-up (every run)",
        peak,
        f"peak {peak} ({', '.join(f'{lo}-{hi} median {m:g}' for lo, hi, m in after)})",
        "peak <= 16",
        peak <= 16,
    )
    right_rate = throughput(right.of(JOB), settle, d)
    whole = max(p.workers for t in runs["auto"] for p in t.of(JOB))
    sc.note(
        f"per run (/s): fixed-64 {rates_text(base_rates)}, autoscaled {rates_text(auto_rates)}, "
        f"fixed-16 {right_rate:.0f} ({right_rate / base_rate:.3f} of fixed-64); autoscaled "
        f"peak over the whole run {whole}"
    )
    for i, trace in enumerate(runs["auto"], 1):
        sc.events[f"{JOB} (run {i})"] = trace.events_of(JOB)
    return sc


@dataclass(frozen=True)
class CostRun:
    wall: float  # seconds, inside the event loop
    cpu: float  # seconds of this process's CPU time
    decisions: int  # scaling decisions made (must stay 0)


def cost_run(backend: str, capacity: Capacity, n: int) -> CostRun:
    """n items through COST_JOBS chained identity jobs."""
    gc.collect()

    async def main() -> CostRun:
        flow = Flow()
        for _ in range(COST_JOBS):
            flow.add(identity, capacity=capacity)
        decisions = [0]

        def on_scale(event: ScalingEvent) -> None:
            decisions[0] += 1

        cpu, wall = time.process_time(), anyio.current_time()
        stats = await flow.run(range(n), on_scale=on_scale)
        wall, cpu = anyio.current_time() - wall, time.process_time() - cpu
        for job in stats.jobs.values():
            if job.completed != n:
                raise RuntimeError(f"job {job.name}: {job.completed} of {n} items completed")
        return CostRun(wall, cpu, decisions[0])

    return anyio.run(main, backend=backend)


def scaler_cost(backend: str, plan: Plan) -> Scenario:
    sc = Scenario("cost", f"scaler cost ({COST_JOBS} chained identity jobs)")
    # The scaler runs (min 1 < max 2) but cannot change the count: every job starts at its
    # maximum, so it cannot grow, and each run is far shorter than the cooldown, so it cannot
    # shrink. The baseline is the same flow with fixed pools of 2 (no scaler at all).
    # The flow is CPU-bound, so its throughput is items per CPU second of this process, which
    # the load of other processes moves less than wall-clock time. Runs alternate
    # (A B, B A, ...) and each pair gives one ratio: slow drifts of the machine cancel out.
    scaled = UtilizationCapacity(
        min_workers=1, max_workers=2, initial_workers=2, queue_length=QUEUE_LENGTH
    )
    pinned = fixed(2)
    n = plan.cost_items
    cost_run(backend, scaled, n // 4)  # warm-up
    cost_run(backend, pinned, n // 4)
    pairs: list[tuple[CostRun, CostRun]] = []
    for rep in range(plan.cost_pairs):
        if rep % 2:
            other = cost_run(backend, pinned, n)
            pairs.append((cost_run(backend, scaled, n), other))
        else:
            first = cost_run(backend, scaled, n)
            pairs.append((first, cost_run(backend, pinned, n)))
    cpu_ratios = [a.cpu / b.cpu for a, b in pairs]
    cost = statistics.median(cpu_ratios) - 1  # extra CPU per item = lost throughput share
    lost = 1 - 1 / (1 + cost)
    q1, _, q3 = statistics.quantiles(cpu_ratios, n=4)
    sc.check(
        f"throughput cost, CPU time (median of {len(pairs)} pairs)",
        lost,
        f"{lost:.1%} (CPU/item {cost:+.1%}, IQR {q1 - 1:+.0%}..{q3 - 1:+.0%})",
        "<= 3%",
        lost <= 0.03,
    )
    decisions = sum(r.decisions for pair in pairs for r in pair)
    sc.check("scaling decisions in timed runs", decisions, str(decisions), "0", decisions == 0)
    wall = statistics.median(a.wall / b.wall for a, b in pairs) - 1
    fixed_rate = n / statistics.median(b.cpu for _, b in pairs)
    longest = max(r.wall for pair in pairs for r in pair)
    sc.note(
        f"{n} items x {COST_JOBS} jobs x 2 workers per run; {COST_JOBS / DEFAULTS.sampling:.0f} "
        f"scaler ticks/s; fixed pools {fixed_rate:.0f} items/CPU-s; wall-clock time per item "
        f"{wall:+.1%}; longest run {longest:.2f} s (cooldown {DEFAULTS.cooldown:g} s)"
    )
    sc.figures = {"pairs": [[asdict(a), asdict(b)] for a, b in pairs]}
    return sc


# ------------------------------------------------------------------------------ the matrix


@dataclass
class MatrixRow:
    case: str
    call: float  # seconds a call takes (the mean, for log-normal calls)
    auto_rate: float
    fixed32_rate: float
    best_rate: float
    best: str
    t90: float | None  # seconds until the rate reached 90% of fixed-32's
    peak: int
    final: int
    firings: int
    note: str = ""
    # For docs/plot_scaling.py (the constant 10 ms and 1 s cases): the autoscaled job's
    # (time, workers) steps, and when each call ended, autoscaled and fixed-32.
    timeline: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio32(self) -> float:
        return self.auto_rate / self.fixed32_rate

    @property
    def ratio_best(self) -> float:
        return self.auto_rate / self.best_rate


@dataclass(frozen=True)
class MatrixPlan:
    """Seconds of calls each saturating run is sized for (at 32 workers), by call duration."""

    seconds: dict[float, float]
    hidden_slow: float  # the 500 ms hidden limit: long enough for the probe to find it
    step: tuple[tuple[float, float], ...]
    items_downstream: int
    items_chain: int
    items_backoff: int


MATRIX_FULL = MatrixPlan(
    seconds={0.001: 3.0, 0.01: 4.0, 0.1: 10.0, 0.5: 40.0, 1.0: 20.0},
    hidden_slow=60.0,
    step=((5.0, 5.0), (50.0, 10.0), (5.0, 10.0)),
    items_downstream=600,
    items_chain=2000,
    items_backoff=12,
)
MATRIX_QUICK = MatrixPlan(
    seconds={0.001: 2.0, 0.01: 3.0, 0.1: 6.0, 0.5: 30.0, 1.0: 12.0},
    hidden_slow=45.0,
    step=((5.0, 4.0), (50.0, 6.0), (5.0, 6.0)),
    items_downstream=300,
    items_chain=1000,
    items_backoff=6,
)
M_AUTO = matrix_scenarios.AUTO
#: The cases docs/plot_scaling.py draws.
PLOTTED = ("constant 10 ms", "constant 1000 ms")


def m_run(backend: str, scenario: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    gc.collect()

    async def main() -> Any:
        return await scenario(*args, **kwargs)

    return anyio.run(main, backend=backend)


#: Rounds of each short saturating case (calls up to 10 ms, runs of a few seconds): on a
#: shared machine the rate of one few-second run swings by 10-15% from one run to the
#: next, autoscaled or fixed alike, so the pools take turns and their rates are pooled.
SHORT_ROUNDS = 3


def m_saturating(
    backend: str, case: str, duration: Any, call: float, seconds: float, limit: int | None = None
) -> MatrixRow:
    items = max(64, round((limit or 32) * seconds / call))  # a hidden limit: fewer calls
    best = 8 if limit is not None else 32
    names = ["auto", "fixed32", "best"] if best != 32 else ["auto", "fixed32"]
    capacities = {
        "auto": M_AUTO,
        "fixed32": matrix_scenarios.fixed(32),
        "best": matrix_scenarios.fixed(best),
    }
    rounds = SHORT_ROUNDS if call <= 0.01 else 1
    runs: dict[str, list[Any]] = {name: [] for name in names}
    for i in range(rounds):  # interleaved, each pool first in turn
        for name in names[i % len(names) :] + names[: i % len(names)]:
            runs[name].append(
                m_run(
                    backend,
                    matrix_scenarios.saturating,
                    duration,
                    capacities[name],
                    items,
                    seed=1,
                    limit=limit,
                )
            )

    def pooled(name: str) -> float:
        return sum(len(r.ends) for r in runs[name]) / sum(r.elapsed for r in runs[name])

    auto, fixed32 = runs["auto"][0], runs["fixed32"][0]
    auto_rate, fixed32_rate = pooled("auto"), pooled("fixed32")
    best_rate = pooled("best") if "best" in runs else fixed32_rate
    t90s = [
        a.time_to(0.9 * f.throughput, max(call, 0.1))
        for a, f in zip(runs["auto"], runs["fixed32"], strict=True)
    ]
    t90 = statistics.median(t90s)
    return MatrixRow(
        case,
        call,
        auto_rate,
        fixed32_rate,
        max(best_rate, fixed32_rate),
        f"fixed-{best}",
        None if math.isinf(t90) else t90,
        max(r.peak for r in runs["auto"]),
        max(r.final for r in runs["auto"]),
        sum(len(r.firings()) for r in runs["auto"]),
        f"{items} calls" + (f", {rounds} rounds" if rounds > 1 else ""),
        {
            "workers": [(0.0, auto.initial), *((e.time, e.new) for e in auto.events)],
            "auto_ends": sorted(auto.ends),
            "fixed32_ends": sorted(fixed32.ends),
            "elapsed": auto.elapsed,
        }
        if case in PLOTTED
        else {},
    )


def m_other(backend: str, plan: MatrixPlan) -> list[MatrixRow]:
    rows = []
    n = plan.items_downstream
    auto = m_run(backend, matrix_scenarios.downstream_bottleneck, M_AUTO, n)
    fixed32 = m_run(backend, matrix_scenarios.downstream_bottleneck, matrix_scenarios.fixed(32), n)
    four = m_run(backend, matrix_scenarios.downstream_bottleneck, matrix_scenarios.fixed(4), n)
    rows.append(
        MatrixRow(
            "downstream fixed at 4",
            0.1,
            auto.throughput,
            fixed32.throughput,
            max(four.throughput, fixed32.throughput),
            "fixed-4",
            None,
            auto.peak,
            auto.final,
            len(auto.firings()),
            f"{n} calls",
        )
    )
    phases = [list(p) for p in plan.step]
    auto = m_run(backend, matrix_scenarios.step_load, M_AUTO, phases)
    fixed32 = m_run(backend, matrix_scenarios.step_load, matrix_scenarios.fixed(32), phases)
    low = plan.step[0][1]
    rise = next((e.time - low for e in auto.events if e.new >= 25), None)
    p95 = sorted(auto.latencies)[int(0.95 * len(auto.latencies))]
    p95_32 = sorted(fixed32.latencies)[int(0.95 * len(fixed32.latencies))]
    rows.append(
        MatrixRow(
            "step 5/s -> 50/s -> 5/s",
            0.5,
            len(auto.ends) / auto.elapsed,
            len(fixed32.ends) / fixed32.elapsed,
            len(fixed32.ends) / fixed32.elapsed,
            "fixed-32",
            rise,
            auto.peak,
            auto.final,
            len(auto.firings()),
            f"p95 latency {p95:.2f} s (fixed-32 {p95_32:.2f} s); 25 workers "
            f"{'never' if rise is None else f'{rise:.1f} s after the rise'}",
        )
    )
    n = plan.items_chain
    auto = m_run(backend, matrix_scenarios.chain, [M_AUTO] * 3, n)
    fixed32 = m_run(backend, matrix_scenarios.chain, [matrix_scenarios.fixed(32)] * 3, n)
    rows.append(
        MatrixRow(
            "chain 5/200/50 ms",
            0.2,
            auto.throughput,
            fixed32.throughput,
            fixed32.throughput,
            "fixed-32",
            auto.time_to(0.9 * fixed32.throughput, 0.2),
            auto.peak,
            auto.final,
            len(auto.firings()),
            f"{n} items; workers of the 200 ms job",
        )
    )
    n = plan.items_backoff
    auto = m_run(backend, matrix_scenarios.backing_off, M_AUTO, n)
    rows.append(
        MatrixRow(
            "failing calls backing off",
            0.01,
            auto.throughput,
            auto.throughput,
            auto.throughput,
            "-",
            None,
            auto.peak,
            auto.final,
            len(auto.firings()),
            f"{n} items, 4 attempts each",
        )
    )
    return rows


def run_matrix(backend: str, plan: MatrixPlan) -> list[MatrixRow]:
    log(f"[{backend}] matrix")
    rows: list[MatrixRow] = []
    cases: list[tuple[str, Any, float, float, int | None]] = [
        (f"constant {c * 1000:g} ms", matrix_scenarios.constant(c), c, plan.seconds[c], None)
        for c in (0.001, 0.01, 0.1, 1.0)
    ]
    cases += [
        (f"log-normal {c * 1000:g} ms", matrix_scenarios.lognormal(c), c, plan.seconds[c], None)
        for c in (0.01, 0.1, 1.0)
    ]
    cases.append(
        ("Semaphore(8), 10 ms", matrix_scenarios.constant(0.01), 0.01, plan.seconds[0.01], 8)
    )
    cases.append(
        ("Semaphore(8), 500 ms", matrix_scenarios.constant(0.5), 0.5, plan.hidden_slow, 8)
    )
    for case, duration, call, seconds_, limit in cases:
        started = time.perf_counter()
        row = m_saturating(backend, case, duration, call, seconds_, limit)
        rows.append(row)
        log(
            f"  M {case}: {row.ratio32:.3f} of fixed-32, {row.ratio_best:.3f} of best, "
            f"t90 {seconds(row.t90)}, peak {row.peak}, final {row.final}, "
            f"guard {row.firings} ({time.perf_counter() - started:.0f} s)"
        )
    rows.extend(m_other(backend, plan))
    return rows


def matrix_misses(rows: Sequence[MatrixRow]) -> list[str]:
    """The matrix rows that miss their target (the same targets as the virtual-time tests)."""
    misses = []
    for r in rows:
        wanted: list[tuple[bool, str]] = []
        if r.case.startswith(("constant", "log-normal")):
            wanted.append((r.ratio32 >= 0.95, f"{r.ratio32:.3f} of fixed-32 < 0.95"))
            limit = max(0.5, 3 * r.call)
            reached = r.t90 is not None and r.t90 <= limit
            wanted.append((reached, f"90% of fixed-32's rate not within {limit:g} s"))
            wanted.append((r.firings == 0, f"the guard fired {r.firings} times without a limit"))
        elif r.case.startswith("Semaphore"):
            wanted.append((r.ratio32 >= 0.95, f"{r.ratio32:.3f} of fixed-32 < 0.95"))
            wanted.append((r.final <= 16, f"{r.final} workers at the end > 16"))
        elif r.case.startswith("downstream"):
            wanted.append((r.peak <= 8, f"peak {r.peak} workers > 8"))
        elif r.case.startswith("chain"):
            wanted.append((r.ratio32 >= 0.95, f"{r.ratio32:.3f} of fixed-32 < 0.95"))
            wanted.append((r.firings == 0, f"the guard fired {r.firings} times without a limit"))
        elif r.case.startswith("step"):
            rise = r.t90  # seconds from the rise until 25 workers
            wanted.append(
                (rise is not None and rise <= 3.0, "25 workers not within 3 s of the rise")
            )
            wanted.append((r.firings == 0, f"the guard fired {r.firings} times without a limit"))
        elif r.case.startswith("failing"):
            wanted.append((r.peak == 1, f"grew to {r.peak} workers while backing off"))
        misses += [f"{r.case}: {why}" for ok, why in wanted if not ok]
    return misses


def print_matrix(backend: str, rows: Sequence[MatrixRow]) -> None:
    header = (
        "case",
        "/fixed-32",
        "/best",
        "best",
        "t90",
        "t90 calls",
        "peak",
        "final",
        "guard",
        "note",
    )
    table = [
        (
            r.case,
            f"{r.ratio32:.3f}",
            f"{r.ratio_best:.3f}",
            r.best,
            seconds(r.t90),
            "-" if r.t90 is None else f"{r.t90 / r.call:.1f}",
            str(r.peak),
            str(r.final),
            str(r.firings),
            r.note,
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
    print(f"\n== {backend}: the matrix (real time) " + "=" * 20)
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    print("  ".join("-" * w for w in widths))
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


# ------------------------------------------------------------------------------ report


def print_table(backend: str, scenarios: Sequence[Scenario]) -> None:
    rows = [
        (sc.key, c.metric, c.shown, c.target, "PASS" if c.ok else "MISS")
        for sc in scenarios
        for c in sc.checks
    ]
    header = ("", "figure", "value", "target", "")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    line = "  ".join("-" * w for w in widths)
    print(f"\n== {backend} " + "=" * (len(line) - len(backend) - 4))
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    print(line)
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    for sc in scenarios:
        for text in sc.info:
            print(f"  {sc.key}: {text}")
    for sc in scenarios:
        if sc.ok:
            continue
        for job, events in sc.events.items():
            print(f"\n  {sc.key} MISS, scaling events of job {job!r}:")
            for text in describe_events(events):
                print(f"    {text}")


def write_timeline(timelines: dict[str, dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    merged: dict[str, Any] = {"backends": {}}
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(old, dict) and isinstance(old.get("backends"), dict):
                merged = old
        except (OSError, ValueError):
            pass
    merged["backends"].update(timelines)
    path.write_text(json.dumps(merged, indent=1), encoding="utf-8")


def run_backend(backend: str, plan: Plan) -> tuple[list[Scenario], dict[str, Any]]:
    log(f"[{backend}]")
    started = time.perf_counter()
    s1 = s1_saturating(backend, plan)
    s2 = s2_steady(backend, plan)
    s3, timeline = s3_step(backend, plan)
    results = [s1, s2, s3, s4_downstream(backend, plan), s6_hidden_limit(backend, plan)]
    results.append(scaler_cost(backend, plan))
    log(f"[{backend}] {time.perf_counter() - started:.0f} s")
    return results, timeline


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--backend", choices=["asyncio", "trio", "both"], default="both")
    parser.add_argument("--quick", action="store_true", help="shorter runs (less precise)")
    parser.add_argument("--json", metavar="PATH", help="also write every result as JSON here")
    parser.add_argument(
        "--timeline",
        metavar="PATH",
        default=str(TIMELINE_PATH),
        help="where the S3 timeline goes",
    )
    parser.add_argument("--check", action="store_true", help="exit with 1 when a target is missed")
    parser.add_argument(
        "--only",
        choices=["scenarios", "matrix"],
        help="run only S1-S6 and the scaler cost, or only the matrix",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    backends = ["asyncio", "trio"] if args.backend == "both" else [args.backend]
    report: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "quick": args.quick,
        "plan": asdict(plan),
        "defaults": {
            k: getattr(DEFAULTS, k)
            for k in ("lower_threshold", "upper_threshold", "cooldown", "sampling", "dampening")
        },
        "backends": {},
    }
    all_results: dict[str, list[Scenario]] = {}
    timelines: dict[str, dict[str, Any]] = {}
    matrices: dict[str, list[MatrixRow]] = {}
    for backend in backends:
        if args.only != "matrix":
            results, timeline = run_backend(backend, plan)
            all_results[backend] = results
            timelines[backend] = timeline
            report["backends"][backend] = [asdict(sc) for sc in results]
        if args.only != "scenarios":
            matrices[backend] = run_matrix(backend, MATRIX_QUICK if args.quick else MATRIX_FULL)
            report.setdefault("matrix", {})[backend] = [asdict(r) for r in matrices[backend]]
    for backend, results in all_results.items():
        print_table(backend, results)
    for backend, rows in matrices.items():
        print_matrix(backend, rows)
    if matrices:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        MATRIX_PATH.write_text(json.dumps(report.get("matrix"), indent=1), encoding="utf-8")
        print(f"\nmatrix written to {MATRIX_PATH}")
    if timelines:
        write_timeline(timelines, Path(args.timeline))
        print(f"\nS3 timeline written to {args.timeline}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
        print(f"JSON written to {args.json}")
    missed = sum(not c.ok for results in all_results.values() for sc in results for c in sc.checks)
    for backend, rows in matrices.items():
        for miss in matrix_misses(rows):
            print(f"MISSED ({backend}, matrix) {miss}")
            missed += 1
    print(f"\n{missed} target(s) missed" if missed else "\nall targets met")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
