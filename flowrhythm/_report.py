"""Reading a :class:`FlowStats`: which job limits the flow, and a plain-text table.

The bottleneck is judged from the share of worker-time each job spent active,
idle and blocked over a stretch of the run. A job is a candidate only while its
workers are mostly busy: a job with half its pool waiting for input is not what
limits the flow. :class:`BottleneckTracker` adds the hysteresis a live view
needs, so that one steady load gets one verdict instead of two alternating ones.
"""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    from ._stats import FlowStats, JobStats

#: A job becomes the bottleneck once its workers are active at least this share
#: of the time...
BUSY_ENTER = 0.6
#: ...and stays it while they are active at least this share: a job with half
#: its pool waiting for input never limits the flow.
BUSY_STAY = 0.5
#: Another job must be this much busier to take over from the current one.
MARGIN = 0.10
#: The last job blocked more than this share of the time: the consumer limits.
CONSUMER_BLOCKED = 0.5
#: Seconds a new verdict must hold before a :class:`BottleneckTracker` shows it.
HOLD = 2.0

#: Worker-seconds: less than this over the stretch judged is no evidence yet.
MIN_EVIDENCE = 0.05

#: Verdict keys that are not job names (a job name is never empty).
NOTHING, SOURCE, CONSUMER = "", "\0source", "\0consumer"

#: What blocked time is made of, for the reader of a bottleneck line.
BLOCKED_ON = "full queue downstream, rate limit, lock or reorder window"


def _seconds(job: JobStats, before: JobStats | None) -> tuple[float, float, float]:
    """Worker-seconds (active, idle, blocked), since ``before`` if given."""
    active, idle, blocked = job.active_seconds, job.idle_seconds, job.blocked_seconds
    if before is not None:
        active -= before.active_seconds
        idle -= before.idle_seconds
        blocked -= before.blocked_seconds
    return active, idle, blocked


def _shares(job: JobStats, before: JobStats | None) -> tuple[float, float, float]:
    """Shares of worker-time (active, idle, blocked), since ``before`` if given."""
    active, idle, blocked = _seconds(job, before)
    total = active + idle + blocked
    if total <= 0:
        return 0.0, 0.0, 0.0
    return active / total, idle / total, blocked / total


def _jobs(stats: FlowStats) -> list[JobStats]:
    return [job for job in stats.jobs.values() if not job.error_job]


def diagnose(stats: FlowStats, since: FlowStats | None = None, previous: str = NOTHING) -> str:
    """The key of the verdict: a job's name, :data:`SOURCE`, :data:`CONSUMER` or :data:`NOTHING`.

    ``previous`` is the verdict shown so far; it is kept unless the figures
    clearly say otherwise (a busy job stays the bottleneck while its workers are
    active at least :data:`BUSY_STAY` of the time and no other job is busier by
    :data:`MARGIN`).
    """
    jobs = _jobs(stats)
    befores = [since.jobs.get(job.name) if since else None for job in jobs]
    evidence = sum(sum(_seconds(job, before)) for job, before in zip(jobs, befores, strict=True))
    if not jobs or evidence < MIN_EVIDENCE:
        return NOTHING
    shares = [_shares(job, before) for job, before in zip(jobs, befores, strict=True)]
    if shares[-1][2] > CONSUMER_BLOCKED:
        return CONSUMER
    actives = {job.name: share[0] for job, share in zip(jobs, shares, strict=True)}
    busiest = max(actives, key=actives.__getitem__)
    steady = previous in actives and actives[previous] >= BUSY_STAY
    if steady and actives[busiest] < actives[previous] + MARGIN:
        return previous
    if actives[busiest] >= BUSY_ENTER:
        return busiest
    return previous if steady else SOURCE


def describe(key: str, stats: FlowStats, since: FlowStats | None = None) -> str:
    """The verdict ``key`` as one line, with the figures of ``stats`` (since ``since``)."""
    jobs = _jobs(stats)
    if key == NOTHING or not jobs:
        return "no jobs" if not jobs else "no work measured yet"

    def shares_of(index: int) -> tuple[float, float, float]:
        job = jobs[index]
        return _shares(job, since.jobs.get(job.name) if since else None)

    if key == CONSUMER:
        return (
            f"the consumer of the results: {jobs[-1].name} blocked {shares_of(-1)[2]:.0%} "
            "of the time handing results on"
        )
    if key == SOURCE:
        return (
            f"the source: jobs wait for input ({jobs[0].name} idle {shares_of(0)[1]:.0%} "
            "of the time)"
        )
    index = next(i for i, job in enumerate(jobs) if job.name == key)
    job = jobs[index]
    active, _, blocked = shares_of(index)
    line = f"{job.name}: workers {active:.0%} active"
    if job.min_workers == job.max_workers:
        line += f" at max_workers={job.max_workers}"
    elif stats.done or job.workers == 0:
        # The workers have left (the run is over, or the job has drained): say
        # what the job had over the stretch judged.
        before = since.jobs.get(key) if since else None
        seconds = sum(_seconds(job, before))
        span = stats.elapsed - (since.elapsed if since else 0.0)
        average = seconds / span if span > 0 else 0.0
        line += f", {average:.1f} workers on average (max_workers={job.max_workers})"
    elif job.workers >= job.max_workers:
        line += f" at max_workers={job.max_workers}"
    else:
        line += f" with {job.workers} of {job.max_workers} workers"
    if blocked >= 0.2:
        line += f", blocked {blocked:.0%} ({BLOCKED_ON})"
    retried = job.retried - (before.retried if since and (before := since.jobs.get(key)) else 0)
    if retried:
        line += f", {retried} retries"
    if not stats.done and job.queue_length and job.queue_depth >= job.queue_length:
        line += f", queue full ({job.queue_depth}/{job.queue_length})"
    if index > 0:
        upstream_blocked = shares_of(index - 1)[2]
        if upstream_blocked >= 0.05:
            line += f", upstream blocked {upstream_blocked:.0%} of the time"
    return line


def bottleneck(stats: FlowStats, since: FlowStats | None = None) -> str:
    """One line naming the job that limits the flow, and why."""
    return describe(diagnose(stats, since), stats, since)


@final
class BottleneckTracker:
    """The bottleneck line of a live view: the same verdict until another one holds.

    Each :meth:`update` judges the newest snapshot against an earlier one
    (``since``). A verdict different from the one shown replaces it only after
    it has been the verdict for :data:`HOLD` seconds of the run; the figures in
    the line are always the newest. Once the run is done, the line describes
    the whole run.
    """

    __slots__ = ("_candidate", "_candidate_since", "_hold", "_shown")

    def __init__(self, hold: float = HOLD) -> None:
        self._hold = hold
        self._shown = NOTHING
        self._candidate = NOTHING
        self._candidate_since = 0.0

    def update(self, stats: FlowStats, since: FlowStats | None) -> str:
        if stats.done:
            return bottleneck(stats)
        key = diagnose(stats, since, self._shown)
        if key == self._shown or self._shown == NOTHING or not self._plausible(stats, since):
            # The verdict shown no longer fits the figures at all (a job whose
            # workers are now mostly idle): replace it at once.
            self._shown = self._candidate = key
        elif key != self._candidate:
            self._candidate, self._candidate_since = key, stats.elapsed
        elif stats.elapsed - self._candidate_since >= self._hold:
            self._shown = key
        return describe(self._shown, stats, since)

    def _plausible(self, stats: FlowStats, since: FlowStats | None) -> bool:
        job = stats.jobs.get(self._shown)
        if job is None:
            return self._shown in (SOURCE, CONSUMER)
        before = since.jobs.get(job.name) if since else None
        return _shares(job, before)[0] >= BUSY_STAY


def format_seconds(value: float | None) -> str:
    """A duration for people: µs, ms or s; ``-`` for none."""
    if value is None:
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.0f}µs"
    if value < 1:
        return f"{value * 1e3:.1f}ms"
    return f"{value:.2f}s"


def _average_workers(job: JobStats, elapsed: float) -> float:
    seconds = job.active_seconds + job.idle_seconds + job.blocked_seconds
    return seconds / elapsed if elapsed > 0 else float(job.workers)


def rate(job: JobStats, elapsed: float) -> float:
    """Items per second that ended (completed, skipped or errored) over the whole run."""
    ended = job.completed + job.skipped + job.errored
    return ended / elapsed if elapsed > 0 else 0.0


#: The report's columns: header, cell of a job, and the order in which they are
#: dropped when the table is too wide (higher first; 0 is never dropped).
Column = tuple[str, Callable[["JobStats", float], str], int]


def _share(index: int) -> Callable[[JobStats, float], str]:
    return lambda job, elapsed: f"{_shares(job, None)[index]:.0%}"


COLUMNS: Sequence[Column] = (
    (
        "workers",
        lambda job, elapsed: (
            f"{_average_workers(job, elapsed):.1f} [{job.min_workers}..{job.max_workers}]"
        ),
        0,
    ),
    ("active", _share(0), 0),
    ("idle", _share(1), 5),
    ("blocked", _share(2), 0),
    ("received", lambda job, elapsed: str(job.received), 2),
    ("completed", lambda job, elapsed: str(job.completed), 0),
    ("skipped", lambda job, elapsed: str(job.skipped), 4),
    ("errored", lambda job, elapsed: str(job.errored), 0),
    ("retried", lambda job, elapsed: str(job.retried), 1),
    ("items/s", lambda job, elapsed: f"{rate(job, elapsed):.1f}", 0),
    ("p50", lambda job, elapsed: format_seconds(job.p50), 3),
    ("p99", lambda job, elapsed: format_seconds(job.p99), 6),
    ("queue", lambda job, elapsed: f"{job.queue_depth}/{job.queue_length}", 7),
)

#: The narrowest width :func:`report` lays its table out for (a narrower one is taken as this).
MIN_WIDTH = 72
#: Job names longer than this are shortened before any column is left out.
NAME_WIDTH = 24


def _layout(rows: list[list[str]], width: int) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
    lines.insert(1, "-" * min(len(lines[0]), width))
    return lines


def report(stats: FlowStats, width: int | None = None) -> str:
    """All jobs as a plain-text table of run averages, then the totals and the bottleneck.

    The table fits in ``width`` columns (by default the terminal's width, or
    100 without a terminal): the least useful columns go first, then long job
    names are shortened.
    """
    if width is None:
        width = shutil.get_terminal_size((100, 24)).columns
    width = max(width, MIN_WIDTH)
    columns = list(COLUMNS)
    names = [job.name + (" (errors)" if job.error_job else "") for job in stats.jobs.values()]

    def table(columns: Sequence[Column], names: Sequence[str]) -> list[str]:
        rows = [["job", *(header for header, _, _ in columns)]]
        for name, job in zip(names, stats.jobs.values(), strict=True):
            rows.append([name, *(cell(job, stats.elapsed) for _, cell, _ in columns)])
        return _layout(rows, width)

    def shorten(names: Sequence[str], keep: int) -> list[str]:
        return [name if len(name) <= keep else name[: keep - 1] + "…" for name in names]

    lines = table(columns, names)
    if max(map(len, lines)) > width:
        names = shorten(names, NAME_WIDTH)
        lines = table(columns, names)
    while max(map(len, lines)) > width and any(drop for _, _, drop in columns):
        highest = max(drop for _, _, drop in columns)
        columns = [column for column in columns if column[2] != highest]
        lines = table(columns, names)
    excess = max(map(len, lines)) - width
    if excess > 0:
        longest = max(map(len, names))
        names = shorten(names, max(longest - excess, 8))
        lines = table(columns, names)

    jobs = _jobs(stats)
    last = f" of {jobs[-1].name}" if jobs else ""
    totals = (
        f"{stats.items_in} items in, {stats.items_out} outputs{last} in {stats.elapsed:.2f}s"
        + (" (done)" if stats.done else "")
    )
    lines.append("")
    lines.extend(textwrap.wrap(totals, width))
    lines.extend(textwrap.wrap(f"bottleneck: {bottleneck(stats)}", width, subsequent_indent="  "))
    return "\n".join(lines)
