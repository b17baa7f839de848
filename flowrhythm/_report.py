"""Reading a :class:`FlowStats`: which job limits the flow, and a plain-text table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._stats import FlowStats, JobStats


def _shares(job: JobStats, before: JobStats | None) -> tuple[float, float, float]:
    """Shares of worker-time (active, idle, blocked), since ``before`` if given."""
    active, idle, blocked = job.active_seconds, job.idle_seconds, job.blocked_seconds
    if before is not None:
        active -= before.active_seconds
        idle -= before.idle_seconds
        blocked -= before.blocked_seconds
    total = active + idle + blocked
    if total <= 0:
        return 0.0, 0.0, 0.0
    return active / total, idle / total, blocked / total


def bottleneck(stats: FlowStats, since: FlowStats | None = None) -> str:
    """One line naming the job that limits the flow, and why."""
    jobs = [job for job in stats.jobs.values() if not job.error_job]
    if not jobs:
        return "no jobs"
    shares = [_shares(job, since.jobs.get(job.name) if since else None) for job in jobs]
    if all(active == idle == blocked == 0.0 for active, idle, blocked in shares):
        return "no work measured yet"

    last_blocked = shares[-1][2]
    if last_blocked > 0.5:
        return (
            f"the consumer of the results: {jobs[-1].name} blocked {last_blocked:.0%} "
            "of the time handing results on"
        )
    index = max(range(len(jobs)), key=lambda i: shares[i][0])
    job, active = jobs[index], shares[index][0]
    if active < 0.5 and shares[0][1] > 0.5:
        return (
            f"the source: jobs wait for input ({jobs[0].name} idle {shares[0][1]:.0%} of the time)"
        )
    if job.workers >= job.max_workers or job.min_workers == job.max_workers:
        line = f"{job.name}: workers {active:.0%} active at max_workers={job.max_workers}"
    else:
        line = f"{job.name}: workers {active:.0%} active with {job.workers} of {job.max_workers}"
    if job.queue_length and job.queue_depth >= job.queue_length:
        line += f", queue full ({job.queue_depth}/{job.queue_length})"
    if index > 0:
        upstream_blocked = shares[index - 1][2]
        if upstream_blocked >= 0.05:
            line += f", upstream blocked {upstream_blocked:.0%} of the time"
    return line


def format_seconds(value: float | None) -> str:
    """A duration for people: µs, ms or s; ``-`` for none."""
    if value is None:
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.0f}µs"
    if value < 1:
        return f"{value * 1e3:.1f}ms"
    return f"{value:.2f}s"


def report(stats: FlowStats) -> str:
    """All jobs as a plain-text table, then totals and the bottleneck line."""
    header = (
        "job",
        "workers",
        "idle",
        "active",
        "blocked",
        "queue",
        "received",
        "completed",
        "skipped",
        "errored",
        "items/s",
        "p50",
        "p99",
    )
    rows: list[Sequence[str]] = [header]
    for job in stats.jobs.values():
        active, idle, blocked = _shares(job, None)
        rows.append(
            (
                job.name + (" (errors)" if job.error_job else ""),
                f"{job.workers} [{job.min_workers}..{job.max_workers}]",
                f"{idle:.0%}",
                f"{active:.0%}",
                f"{blocked:.0%}",
                f"{job.queue_depth}/{job.queue_length}",
                str(job.received),
                str(job.completed),
                str(job.skipped),
                str(job.errored),
                f"{job.throughput:.1f}",
                format_seconds(job.p50),
                format_seconds(job.p99),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("")
    lines.append(
        f"{stats.items_in} in, {stats.items_out} out in {stats.elapsed:.2f}s"
        + (" (done)" if stats.done else "")
    )
    lines.append(f"bottleneck: {bottleneck(stats)}")
    return "\n".join(lines)
