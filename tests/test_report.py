"""Reading stats: the bottleneck verdict (with hysteresis) and the plain-text report."""

from __future__ import annotations

import pytest

from flowrhythm import FlowStats, JobStats
from flowrhythm._report import (
    CONSUMER,
    SOURCE,
    BottleneckTracker,
    diagnose,
)


def job(
    name: str, active: float, idle: float, blocked: float = 0.0, **changes: object
) -> JobStats:
    """A job whose workers spent these worker-seconds in each state."""
    fields: dict[str, object] = {
        "name": name,
        "workers": 32,
        "idle": 0,
        "active": 0,
        "blocked": 0,
        "queue_depth": 0,
        "queue_length": 100,
        "min_workers": 1,
        "max_workers": 32,
        "received": 1000,
        "completed": 990,
        "skipped": 0,
        "errored": 10,
        "retried": 0,
        "scale_ups": 3,
        "scale_downs": 1,
        "active_seconds": active,
        "idle_seconds": idle,
        "blocked_seconds": blocked,
        "throughput": 100.0,
        "p50": 0.03,
        "p99": 0.2,
    }
    fields.update(changes)
    return JobStats(**fields)  # type: ignore[arg-type]


def stats(*jobs: JobStats, elapsed: float = 10.0, done: bool = False) -> FlowStats:
    return FlowStats(
        jobs={j.name: j for j in jobs}, items_in=1000, items_out=43, elapsed=elapsed, done=done
    )


# -- the verdict ---------------------------------------------------------------------------


def test_the_busiest_job_limits_the_flow() -> None:
    snapshot = stats(job("fetch", 4, 1, 5), job("parse", 9.7, 0.3, max_workers=1, min_workers=1))
    line = snapshot.bottleneck()
    assert line.startswith("parse: workers 97% active at max_workers=1")
    assert "upstream blocked 50% of the time" in line


def test_a_job_with_half_its_pool_idle_is_not_the_bottleneck() -> None:
    assert diagnose(stats(job("fetch", 5, 5), job("store", 1, 9))) == SOURCE
    assert stats(job("fetch", 5, 5)).bottleneck().startswith("the source: ")


def test_the_consumer_of_the_results() -> None:
    snapshot = stats(job("fetch", 2, 1, 0), job("store", 2, 1, 7))
    assert diagnose(snapshot) == CONSUMER
    assert snapshot.bottleneck().startswith("the consumer of the results: store blocked 70%")


def test_nothing_measured_yet() -> None:
    assert stats(job("fetch", 0, 0)).bottleneck() == "no work measured yet"


def test_a_job_near_half_busy_keeps_the_verdict_shown() -> None:
    # A steady load with fetch 51-59% active: the verdict does not flip with the noise.
    steady = [stats(job("fetch", a, 10 - a)) for a in (5.2, 5.8, 5.5, 5.9, 5.1)]
    assert {diagnose(s, previous=SOURCE) for s in steady} == {SOURCE}
    assert {diagnose(s, previous="fetch") for s in steady} == {"fetch"}
    # Below half active it is not the bottleneck, whatever was shown before.
    assert diagnose(stats(job("fetch", 4.9, 5.1)), previous="fetch") == SOURCE


def test_another_job_takes_over_only_when_clearly_busier() -> None:
    close = stats(job("fetch", 8, 2), job("parse", 8.5, 1.5))
    assert diagnose(close, previous="fetch") == "fetch"
    assert diagnose(close) == "parse"
    clear = stats(job("fetch", 8, 2), job("parse", 9.5, 0.5))
    assert diagnose(clear, previous="fetch") == "parse"


def verdicts(tracker: BottleneckTracker, snapshots: list[FlowStats]) -> list[tuple[float, str]]:
    return [(s.elapsed, tracker.update(s, None).split(":")[0]) for s in snapshots]


def test_the_tracker_shows_a_new_verdict_once_it_held() -> None:
    # The load rises at 3 s: fetch becomes busy, and is shown from 5 s on.
    snapshots = []
    for step in range(32):
        t = step / 4
        active = 2.0 if t < 3 else 9.0
        snapshots.append(stats(job("fetch", active, 10 - active), elapsed=t))
    shown = verdicts(BottleneckTracker(hold=2.0), snapshots)
    assert all(v == "the source" for t, v in shown if t < 5.0)
    assert all(v == "fetch" for t, v in shown if t >= 5.0)


def test_the_tracker_drops_a_job_at_once_when_its_workers_go_idle() -> None:
    snapshots = []
    for step in range(32):
        t = step / 4
        active = 9.0 if t < 3 else 2.0
        snapshots.append(stats(job("fetch", active, 10 - active), elapsed=t))
    shown = verdicts(BottleneckTracker(hold=2.0), snapshots)
    assert all(v == "fetch" for t, v in shown if t < 3.0)
    assert all(v == "the source" for t, v in shown if t >= 3.0)


def test_the_tracker_ignores_a_flicker() -> None:
    # Every third sample parse looks busier than fetch, or fetch looks busy
    # while the source limits: neither lasts long enough to be shown.
    busy = []
    quiet = []
    for step in range(40):
        flicker = step % 3 == 2
        t = step / 4
        parse = 9.9 if flicker else 6.0
        busy.append(stats(job("fetch", 8.5, 1.5), job("parse", parse, 10 - parse), elapsed=t))
        fetch = 7.0 if flicker else 3.0
        quiet.append(stats(job("fetch", fetch, 10 - fetch), elapsed=t))
    assert {v for _, v in verdicts(BottleneckTracker(hold=2.0), busy)} == {"fetch"}
    assert {v for _, v in verdicts(BottleneckTracker(hold=2.0), quiet)} == {"the source"}


def test_no_evidence_no_verdict() -> None:
    tiny = stats(job("fetch", 0.001, 0.0))
    assert tiny.bottleneck() == "no work measured yet"


def test_after_the_run_the_line_uses_the_run_s_figures() -> None:
    # 32 workers at most, 0 now (the run is over), 16 on average over 10 s.
    done = stats(job("fetch", 150, 10, workers=0), elapsed=10.0, done=True)
    line = done.bottleneck()
    assert "0 of 32" not in line
    assert "16.0 workers on average (max_workers=32)" in line
    assert BottleneckTracker().update(done, None) == line


def test_the_line_shows_retries_and_blocked_time() -> None:
    snapshot = stats(job("call_api", 6, 1, 3, retried=120, workers=8))
    line = snapshot.bottleneck()
    assert "with 8 of 32 workers" in line
    assert "blocked 30% (full queue downstream, rate limit, lock or reorder window)" in line
    assert "120 retries" in line


# -- the report ----------------------------------------------------------------------------


def a_run(done: bool = True) -> FlowStats:
    return stats(
        job("fetch", 150, 40, 10, workers=0, retried=7),
        job("parse_and_normalise_the_pages", 19, 1, 0, workers=0, min_workers=2, max_workers=2),
        job("store", 9, 1, 0, workers=0, min_workers=1, max_workers=1, completed=43),
        job("failures", 0, 10, 0, workers=0, min_workers=1, max_workers=1, error_job=True),
        elapsed=10.0,
        done=done,
    )


@pytest.mark.parametrize("width", [200, 120, 100, 80, 72])
def test_the_report_fits_the_width(width: int) -> None:
    text = a_run().report(width=width)
    assert all(len(line) <= width for line in text.splitlines()), text
    assert "fetch" in text
    assert "failures" in text


def test_a_wide_report_has_every_column() -> None:
    header = a_run().report(width=200).splitlines()[0].split()
    assert header == [
        "job",
        "workers",
        "active",
        "idle",
        "blocked",
        "received",
        "completed",
        "skipped",
        "errored",
        "retried",
        "items/s",
        "p50",
        "p99",
        "queue",
    ]


def test_a_narrow_report_keeps_the_essentials() -> None:
    header = a_run().report(width=80).splitlines()[0].split()
    for column in ("job", "workers", "active", "blocked", "completed", "errored", "items/s"):
        assert column in header


def test_the_report_shows_run_averages() -> None:
    lines = a_run().report(width=200).splitlines()
    fetch = next(line for line in lines if line.startswith("fetch"))
    assert "20.0 [1..32]" in fetch  # 200 worker-seconds over 10 s
    assert "100.0" in fetch  # (990 + 0 + 10) items ended over 10 s, not the last 2 s
    assert "75%" in fetch  # active share over the run


def test_the_totals_say_what_they_count() -> None:
    text = a_run().report(width=100)
    assert "1000 items in, 43 outputs of store in 10.00s (done)" in text
