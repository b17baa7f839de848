"""The live monitor: rich view in a terminal, plain lines elsewhere, and without rich."""

from __future__ import annotations

import io
import subprocess
import sys

import anyio
import pytest
from _support import (
    HANG_GUARD,
    inc,
    leaves,
    not_a_terminal,
    running_tasks,
    swallow,
    wait_until,
)
from rich.console import Console

from flowrhythm import Capacity, Flow, FlowStats, JobStats, RunningFlow
from flowrhythm._monitor import (
    LiveDisplay,
    PlainDisplay,
    Recent,
    monitor,
    open_display,
    plain_line,
    render_stats,
    workers_bar,
)

pytestmark = pytest.mark.anyio


async def fail_on_three(item: int) -> int:
    if item == 3:
        raise ValueError(item)
    return item


def small_flow() -> Flow:
    return (
        Flow()
        .add(inc, Capacity(min_workers=1, max_workers=4), name="inc")
        .add(fail_on_three, Capacity(min_workers=2, max_workers=2), name="check")
        .add_error_job(swallow, name="errors")
    )


async def feed(running: RunningFlow, n: int = 10) -> FlowStats:
    for item in range(n):
        await running.send(item)
    await running.close()
    return await running.join()


def job_stats(**changes: object) -> JobStats:
    fields: dict[str, object] = {
        "name": "fetch",
        "workers": 4,
        "idle": 1,
        "active": 2,
        "blocked": 1,
        "queue_depth": 5,
        "queue_length": 10,
        "min_workers": 1,
        "max_workers": 8,
        "received": 100,
        "completed": 90,
        "skipped": 2,
        "errored": 3,
        "retried": 0,
        "scale_ups": 2,
        "scale_downs": 1,
        "active_seconds": 6.0,
        "idle_seconds": 3.0,
        "blocked_seconds": 1.0,
        "throughput": 42.5,
        "p50": 0.012,
    }
    fields.update(changes)
    return JobStats(**fields)  # type: ignore[arg-type]


def flow_stats(elapsed: float = 1.0, **changes: object) -> FlowStats:
    return FlowStats(
        jobs={"fetch": job_stats(**changes)},
        items_in=100,
        items_out=90,
        elapsed=elapsed,
        done=False,
    )


def terminal() -> Console:
    return Console(record=True, force_terminal=True, width=120, file=io.StringIO())


# -- pieces ---------------------------------------------------------------------------


def test_workers_bar_draws_workers_within_max() -> None:
    assert workers_bar(job_stats()).plain == "▮▮▮▮▯▯▯▯ 4/8"


def test_workers_bar_scales_beyond_its_cells() -> None:
    bar = workers_bar(job_stats(workers=16, max_workers=32), cells=8).plain
    assert bar == "▮▮▮▮▯▯▯▯ 16/32"


def test_workers_bar_shows_a_single_worker() -> None:
    bar = workers_bar(job_stats(workers=1, max_workers=100), cells=10).plain
    assert bar == "▮▯▯▯▯▯▯▯▯▯ 1/100"


def test_plain_line_names_every_job_and_the_bottleneck() -> None:
    line = plain_line(flow_stats())
    assert line.startswith(
        "[1.0s] 100 items in, 90 outputs of fetch | fetch w=4/8 i/a/b=1/2/1 q=5/10 42.5/s err=3 |"
    )
    assert "bottleneck: fetch" in line
    assert "\n" not in line


def test_a_throttled_job_shows_its_limit_and_refusals() -> None:
    """A job with concurrency=Adaptive(...) never looks like a healthy saturated one."""
    throttled = flow_stats(concurrency_limit=12, overloaded=7)
    line = plain_line(throttled)
    assert " limit=12 refused=7 " in line
    assert "limit=" not in plain_line(flow_stats())  # only for a job with a limit
    for width, header in [(200, "refused"), (70, "lim/ref")]:
        console = Console(record=True, force_terminal=True, width=width, file=io.StringIO())
        console.print(render_stats(throttled))
        text = console.export_text()
        assert header in text
        assert ("12/7" if width == 70 else "12") in text
        assert all(len(row) <= width for row in text.splitlines())
    console = terminal()
    console.print(render_stats(flow_stats()))
    assert "limit" not in console.export_text()  # no column without a limit


def test_recent_compares_with_a_snapshot_about_two_seconds_old() -> None:
    recent = Recent(window=2.0)
    snapshots = [flow_stats(elapsed=t / 2) for t in range(10)]  # 0.0, 0.5, ... 4.5
    assert recent.push(snapshots[0]) is None
    assert recent.push(snapshots[1]) is snapshots[0]  # nothing old enough yet: the oldest
    for snapshot in snapshots[2:]:
        since = recent.push(snapshot)
    assert since is snapshots[5]  # 4.5 - 2.0 = 2.5


def test_render_stats_draws_every_job() -> None:
    console = terminal()
    console.print(render_stats(flow_stats(), title="crawl"))
    text = console.export_text()
    assert "crawl" in text
    assert "▮▮▮▮▯▯▯▯ 4/8" in text
    assert "42.5" in text
    assert "bottleneck" in text


def test_render_stats_is_compact_in_a_narrow_console() -> None:
    console = Console(record=True, force_terminal=True, width=70, file=io.StringIO())
    console.print(render_stats(flow_stats()))
    text = console.export_text()
    assert "idle/act/blk" in text
    assert all(len(line) <= 70 for line in text.splitlines())


def test_display_choice() -> None:
    assert isinstance(open_display(not_a_terminal(io.StringIO()), None, "t"), PlainDisplay)
    assert isinstance(open_display(terminal(), True, "t"), PlainDisplay)
    live = open_display(terminal(), None, "t")
    assert isinstance(live, LiveDisplay)
    live.close(None, "")


# -- the monitor around a run -----------------------------------------------------------


async def test_plain_lines_on_a_non_terminal_console() -> None:
    out = io.StringIO()
    console = not_a_terminal(out)
    with anyio.fail_after(HANG_GUARD):
        async with small_flow().start() as running, monitor(running, console=console):
            await wait_until(lambda: "items in" in out.getvalue())
            stats = await feed(running)
    text = out.getvalue()
    first = text.splitlines()[0]
    assert first.startswith("[")
    assert "inc w=" in first
    assert "check w=" in first
    assert "bottleneck:" in first
    assert stats.report(width=console.width) in text  # the summary at the end


async def test_live_view_on_a_recording_terminal_exports_svg() -> None:
    console = terminal()
    with anyio.fail_after(HANG_GUARD):
        async with (
            small_flow().start() as running,
            monitor(running, console=console, interval=0.01, title="small"),
        ):
            stats = await feed(running)
    text = console.export_text(clear=False)
    assert "small" in text
    assert "summary" in text
    assert stats.report(width=console.width).splitlines()[-1] in text
    svg = console.export_svg(title="monitor")
    assert svg.startswith("<svg")
    assert "check" in svg


async def test_monitor_task_ends_with_the_block() -> None:
    with anyio.fail_after(HANG_GUARD):
        async with small_flow().start() as running:
            before = running_tasks()
            async with monitor(running, console=not_a_terminal(io.StringIO())):
                await wait_until(lambda: running.stats().jobs["inc"].idle == 1)
            assert running_tasks() == before
            await feed(running)


async def test_monitor_stops_sampling_once_the_flow_is_done() -> None:
    out = io.StringIO()
    with anyio.fail_after(HANG_GUARD):
        async with (
            small_flow().start() as running,
            monitor(running, console=not_a_terminal(out), interval=0.01),
        ):
            await feed(running)
            await wait_until(lambda: "(done)" in out.getvalue())
            lines = out.getvalue()
            await anyio.sleep(0.05)
            assert out.getvalue() == lines  # no line after the done one


async def test_monitor_prints_the_summary_when_the_run_is_stopped() -> None:
    out = io.StringIO()
    with anyio.fail_after(HANG_GUARD):
        async with (
            small_flow().start() as running,
            monitor(running, console=not_a_terminal(out)),
        ):
            await running.send(1)
            running.stop()
            await anyio.sleep_forever()
    assert "received" in out.getvalue()


async def test_a_rendering_error_fails_the_block(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(stats: FlowStats, since: FlowStats | None = None, line: str | None = None) -> str:
        raise RuntimeError("cannot draw")

    async def watch_forever() -> None:
        async with (
            small_flow().start() as running,
            monitor(running, console=not_a_terminal(io.StringIO())),
        ):
            await anyio.sleep_forever()

    monkeypatch.setattr("flowrhythm._monitor.plain_line", broken)
    with anyio.fail_after(HANG_GUARD), pytest.raises(BaseExceptionGroup) as caught:
        await watch_forever()
    assert any(isinstance(leaf, RuntimeError) for leaf in leaves(caught.value))


async def test_interval_must_be_positive() -> None:
    async with small_flow().start() as running:
        with pytest.raises(ValueError, match="interval"):
            async with monitor(running, interval=0):
                pass


# -- without rich -------------------------------------------------------------------------


@pytest.fixture
def no_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every ``import rich...`` fail, as if rich were not installed."""
    for name in list(sys.modules):
        if name == "rich" or name.startswith("rich."):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "rich", None)


@pytest.mark.usefixtures("no_rich")
async def test_without_rich_plain_lines_go_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    with anyio.fail_after(HANG_GUARD):
        async with small_flow().start() as running, monitor(running):
            stats = await feed(running)
    err = capsys.readouterr().err
    assert "inc w=" in err
    assert stats.report() in err


@pytest.mark.usefixtures("no_rich")
async def test_without_rich_the_live_view_cannot_be_forced() -> None:
    async with small_flow().start() as running:
        with pytest.raises(ImportError, match='"monitor" extra'):
            async with monitor(running, plain=False):
                pass


def test_flowrhythm_imports_without_rich() -> None:
    code = (
        "import sys; sys.modules['rich'] = None\n"
        "import flowrhythm, flowrhythm._monitor, flowrhythm._demo, flowrhythm.__main__\n"
        "assert not any(name.startswith('rich') and sys.modules[name] for name in sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- Flow.run(progress=True) ----------------------------------------------------------------


async def test_run_with_progress_shows_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    with anyio.fail_after(HANG_GUARD):
        stats = await small_flow().run(range(10), progress=True)
    err = capsys.readouterr().err
    assert stats.done
    assert stats.report().splitlines()[0] in err  # the summary, on stderr


async def test_run_with_progress_still_fails_when_a_job_fails(
    capsys: pytest.CaptureFixture[str],
) -> None:
    flow = Flow().add(fail_on_three, name="check")
    with anyio.fail_after(HANG_GUARD), pytest.raises(BaseExceptionGroup) as caught:
        await flow.run(range(10), progress=True)
    assert any(isinstance(leaf, ValueError) for leaf in leaves(caught.value))
    assert "check" in capsys.readouterr().err


async def test_progress_must_be_a_bool_or_a_positive_number() -> None:
    with pytest.raises(TypeError, match="progress"):
        await small_flow().run(range(3), progress="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="progress"):
        await small_flow().run(range(3), progress=0)


def test_the_default_interval_is_a_second_for_plain_lines_and_a_quarter_live() -> None:
    assert open_display(not_a_terminal(io.StringIO()), None, "t").interval == 1.0
    live = open_display(terminal(), None, "t")
    assert live.interval == 0.25
    live.close(None, "")


def plain_lines_of_a_ten_second_run(progress: bool | float) -> list[str]:
    """The plain lines of ``run(progress=...)`` over a run of ten virtual seconds."""
    import contextlib

    import trio
    import trio.testing

    async def slow(item: int) -> int:
        await anyio.sleep(1)
        return item

    err = io.StringIO()

    async def main() -> None:
        with contextlib.redirect_stderr(err):
            await Flow().add(slow).run(range(10), progress=progress)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return [line for line in err.getvalue().splitlines() if line.startswith("[")]


@pytest.mark.usefixtures("no_rich")
def test_run_progress_off_a_terminal_prints_a_line_a_second() -> None:
    lines = plain_lines_of_a_ten_second_run(True)
    assert lines[0].startswith("[0.0s]")
    assert lines[-1].startswith("[10.0s]")
    assert len(lines) == 11  # 0 s, 1 s, ... 10 s


@pytest.mark.usefixtures("no_rich")
def test_run_progress_sets_the_interval() -> None:
    lines = plain_lines_of_a_ten_second_run(2.5)
    assert [line.split("]")[0] for line in lines] == ["[0.0s", "[2.5s", "[5.0s", "[7.5s", "[10.0s"]
