"""A live view of a running flow in the terminal, or plain log lines where there is none.

:func:`monitor` samples ``running.stats()`` every ``interval`` seconds in a task
of its own, like :func:`record`, and shows each snapshot: a `rich`_ table that
redraws in place when the output is a terminal, one plain line per interval
otherwise. rich is optional (the ``monitor`` extra: ``pip install ".[monitor]"``
in a clone of flowrhythm) and imported only here, only when a monitor starts, so
flowrhythm itself imports without it.

.. _rich: https://rich.readthedocs.io/
"""

from __future__ import annotations

import contextlib
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Protocol, final

import anyio

from ._report import BottleneckTracker, format_seconds
from ._validate import check_number

if TYPE_CHECKING:
    # Public signatures spell rich's types in full (rich.console.Console), so
    # that the docs name them.
    import rich.console
    from rich.console import Console, ConsoleOptions, RenderResult
    from rich.live import Live
    from rich.table import Table
    from rich.text import Text

    from ._stats import FlowStats, JobStats, StatsSource

#: Seconds: the bottleneck line looks at what the jobs did over about this long.
RECENT = 5.0
#: Seconds between two frames of the live view, by default.
LIVE_INTERVAL = 0.25
#: Seconds between two plain lines, by default (a log should stay readable).
PLAIN_INTERVAL = 1.0

#: Cells of the workers bar (one per worker up to this many, scaled beyond).
WORKER_CELLS = 12
#: Cells of the queue bar.
QUEUE_CELLS = 8
#: Columns the panel around the table takes (borders and padding).
PANEL_FRAME = 4
#: Cells of the workers bar in the compact view.
COMPACT_CELLS = 8

FULL, EMPTY = "▮", "▯"


# -- one snapshot --------------------------------------------------------------------


def _cells(value: int, total: int, cells: int) -> int:
    """How many of ``cells`` to fill for ``value`` out of ``total`` (never 0 for value > 0)."""
    if total <= 0 or value <= 0:
        return 0
    filled = round(min(value, total) / total * cells)
    return max(filled, 1)


def workers_bar(job: JobStats, cells: int = WORKER_CELLS) -> Text:
    """The job's workers drawn within its maximum, e.g. ``▮▮▮▮▯▯▯▯ 4/8``.

    The bar is green for a job that scales, yellow once it reaches
    ``max_workers``, cyan for a fixed pool; empty cells below ``min_workers``
    (a job still starting, or one that has finished) are green, the others dim.
    """
    from rich.text import Text

    width = max(1, min(job.max_workers, cells))
    filled = _cells(job.workers, job.max_workers, width)
    floor = _cells(job.min_workers, job.max_workers, width)
    if job.max_workers > job.min_workers and job.workers >= job.max_workers:
        style = "bold yellow"
    elif job.max_workers > job.min_workers:
        style = "bold green"
    else:
        style = "cyan"
    text = Text(no_wrap=True, overflow="crop")
    text.append(FULL * filled, style=style)
    text.append(EMPTY * max(floor - filled, 0), style="green")
    text.append(EMPTY * (width - max(filled, floor)), style="dim")
    text.append(f" {job.workers}/{job.max_workers}")
    return text


def queue_bar(job: JobStats, cells: int = QUEUE_CELLS) -> Text:
    """The job's input queue: a bar of ``depth / length`` and the two numbers."""
    from rich.text import Text

    text = Text(no_wrap=True, overflow="crop")
    if job.queue_length <= 0:
        text.append("rendezvous", style="dim")
        return text
    share = min(job.queue_depth / job.queue_length, 1.0)
    if cells > 0:
        filled = _cells(job.queue_depth, job.queue_length, cells)
        style = "bold red" if share >= 0.9 else "yellow" if share >= 0.5 else "blue"
        text.append(FULL * filled, style=style)
        text.append(EMPTY * (cells - filled), style="dim")
        text.append(" ")
    text.append(f"{job.queue_depth}/{job.queue_length}")
    return text


def _table(stats: FlowStats, compact: bool) -> Table:
    """The jobs as a table; ``compact`` merges the worker states and drops some columns."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1, 0, 0),
        pad_edge=False,
        header_style="bold",
    )
    table.add_column("job", no_wrap=True, overflow="ellipsis", max_width=24)
    table.add_column("workers", no_wrap=True)
    if compact:
        table.add_column("idle/act/blk", justify="right", no_wrap=True)
    else:
        table.add_column("idle", justify="right")
        table.add_column("active", justify="right")
        table.add_column("blocked", justify="right")
    table.add_column("queue", no_wrap=True)
    table.add_column("items/s", justify="right")
    if not compact:
        table.add_column("done", justify="right")
    if compact:
        table.add_column("err/retry", justify="right", no_wrap=True)
    else:
        table.add_column("errors", justify="right")
        table.add_column("retries", justify="right")
        table.add_column("p50", justify="right")
    # Jobs calling a remote service through concurrency=Adaptive(...): the limit it
    # has found and how many attempts the service refused, so that a throttled job
    # never looks like a healthy saturated one. Shown only when some job has one.
    adaptive = any(job.concurrency_limit is not None for job in stats.jobs.values())
    if adaptive:
        table.add_column("lim/ref" if compact else "limit", justify="right", no_wrap=True)
        if not compact:
            table.add_column("refused", justify="right")
    for job in stats.jobs.values():
        name = Text(job.name, style="bold")
        if job.error_job:
            name.append(" (err)", style="dim")
        active = Text(str(job.active), style="green" if job.active else "")
        blocked = Text(str(job.blocked), style="red" if job.blocked else "")
        errors = Text(str(job.errored), style="red" if job.errored else "dim")
        retries = Text(str(job.retried), style="yellow" if job.retried else "dim")
        throughput = f"{job.throughput:.1f}"
        limit = Text("-" if job.concurrency_limit is None else str(job.concurrency_limit))
        refused = Text(str(job.overloaded), style="red" if job.overloaded else "dim")
        if compact:
            states = Text.assemble(str(job.idle), "/", active, "/", blocked)
            table.add_row(
                name,
                workers_bar(job, COMPACT_CELLS),
                states,
                queue_bar(job, 0),
                throughput,
                Text.assemble(errors, "/", retries),
                *([Text.assemble(limit, "/", refused)] if adaptive else []),
            )
        else:
            table.add_row(
                name,
                workers_bar(job, WORKER_CELLS),
                str(job.idle),
                active,
                blocked,
                queue_bar(job, QUEUE_CELLS),
                throughput,
                str(job.completed),
                errors,
                retries,
                format_seconds(job.p50),
                *([limit, refused] if adaptive else []),
            )
    return table


def totals(stats: FlowStats) -> tuple[str, str]:
    """What enters the flow and what leaves it, each labelled with what it counts.

    The last job's outputs are not items: a batched or fan-out job hands on
    fewer or more outputs than it received items.
    """
    jobs = [job for job in stats.jobs.values() if not job.error_job]
    last = f" of {jobs[-1].name}" if jobs else ""
    return f"{stats.items_in} items in", f"{stats.items_out} outputs{last}"


def _footer(stats: FlowStats, line: str) -> Text:
    from rich.text import Text

    text = Text("\n")
    text.append("bottleneck ", style="bold")
    text.append(line)
    text.append("\n")
    items_in, outputs = totals(stats)
    text.append(items_in, style="bold")
    text.append(" · ")
    text.append(outputs, style="bold")
    errors = sum(job.errored for job in stats.jobs.values() if not job.error_job)
    if errors:
        text.append(" · ")
        text.append(f"{errors} failed", style="red")
    text.append(f" · {stats.elapsed:.1f}s")
    if stats.done:
        text.append(" · done", style="bold green")
    return text


@final
class StatsView:
    """A rich renderable of one :class:`FlowStats` (what :func:`render_stats` returns).

    When the full table does not fit the console, it draws a compact one:
    shorter workers bars, no queue bar, fewer columns.
    """

    __slots__ = ("line", "stats", "title")

    def __init__(self, stats: FlowStats, line: str, title: str) -> None:
        self.stats = stats
        self.line = line
        self.title = title

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        from rich.console import Group
        from rich.measure import Measurement
        from rich.panel import Panel

        table = _table(self.stats, compact=False)
        needed = Measurement.get(console, options, table).maximum + PANEL_FRAME
        if needed > options.max_width:
            table = _table(self.stats, compact=True)
        body = Group(table, _footer(self.stats, self.line))
        yield Panel(body, title=self.title, title_align="left", expand=False)


def render_stats(
    stats: FlowStats, since: FlowStats | None = None, *, title: str = "flowrhythm"
) -> rich.console.RenderableType:
    """One snapshot as a rich renderable: the view :func:`monitor` shows.

    Example::

        from rich.console import Console

        console = Console(record=True, width=120)
        console.print(render_stats(running.stats()))
        svg = console.export_svg(title="my flow")

    Args:
        stats: the snapshot to draw.
        since: an earlier snapshot of the same run; the bottleneck line then
            describes what happened since it (see :meth:`FlowStats.bottleneck`).
        title: the panel's title.

    Needs rich (the ``monitor`` extra: ``pip install ".[monitor]"`` in a clone of
    flowrhythm); it is imported when the
    renderable is drawn.

    .. versionadded:: 1.0
    """
    return StatsView(stats, stats.bottleneck(since), title)


def plain_line(stats: FlowStats, since: FlowStats | None = None, line: str | None = None) -> str:
    """One snapshot as one line of text, for logs: every job, then the bottleneck.

    For example ``[3.0s] 812 items in, 790 outputs of store | fetch w=12/32
    i/a/b=2/10/0 q=3/100 265.0/s err=9 retry=4 | ... | bottleneck: fetch: ...``
    (``retry=`` only for a job that retried; ``limit=`` and ``refused=`` for a
    job with ``concurrency=Adaptive(...)``). ``line`` is the bottleneck line to
    show; by default ``stats.bottleneck(since)``.
    """
    items_in, outputs = totals(stats)
    parts = [
        f"[{stats.elapsed:.1f}s] {items_in}, {outputs}",
        *(
            f"{job.name} w={job.workers}/{job.max_workers} "
            f"i/a/b={job.idle}/{job.active}/{job.blocked} "
            f"q={job.queue_depth}/{job.queue_length} "
            f"{job.throughput:.1f}/s err={job.errored}"
            + (f" retry={job.retried}" if job.retried else "")
            + (
                f" limit={job.concurrency_limit} refused={job.overloaded}"
                if job.concurrency_limit is not None
                else ""
            )
            for job in stats.jobs.values()
        ),
        f"bottleneck: {stats.bottleneck(since) if line is None else line}",
    ]
    line = " | ".join(parts)
    return line + " (done)" if stats.done else line


# -- the recent past -----------------------------------------------------------------


@final
class Recent:
    """Snapshots of the last ``window`` seconds, to compare the newest one with."""

    __slots__ = ("_samples", "_window")

    def __init__(self, window: float = RECENT) -> None:
        self._window = window
        self._samples: deque[FlowStats] = deque()

    def push(self, stats: FlowStats) -> FlowStats | None:
        """Add ``stats``; return the newest earlier snapshot at least ``window`` older.

        Until there is one that old, the oldest snapshot; ``None`` for the first.
        """
        samples = self._samples
        samples.append(stats)
        cutoff = stats.elapsed - self._window
        while len(samples) > 2 and samples[1].elapsed <= cutoff:
            samples.popleft()
        first = samples[0]
        return None if first is stats else first


# -- displays ------------------------------------------------------------------------


class Display(Protocol):
    #: Seconds between two frames when the monitor is not told.
    interval: float

    def show(self, stats: FlowStats, line: str) -> None: ...

    def close(self, stats: FlowStats | None, line: str) -> None: ...


@final
class PlainDisplay:
    """One line per snapshot; :meth:`FlowStats.report` at the end."""

    __slots__ = ("_width", "_write")

    interval = PLAIN_INTERVAL

    def __init__(self, write: Callable[[str], None], width: int | None = None) -> None:
        self._write = write
        self._width = width

    def show(self, stats: FlowStats, line: str) -> None:
        self._write(plain_line(stats, line=line))

    def close(self, stats: FlowStats | None, line: str) -> None:
        if stats is not None:
            self._write(stats.report(width=self._width))


@final
class LiveDisplay:
    """A rich ``Live`` that redraws the view in place, refreshed only by the monitor task."""

    __slots__ = ("_console", "_live", "_title")

    interval = LIVE_INTERVAL

    def __init__(self, console: Console, title: str) -> None:
        from rich.live import Live
        from rich.text import Text

        self._console = console
        self._title = title
        # auto_refresh=False: no refresh thread; every redraw happens in the
        # monitor's task, so a rendering error surfaces there.
        self._live: Live = Live(
            Text("flowrhythm: starting…"),
            console=console,
            auto_refresh=False,
            transient=False,
        )
        self._live.start()

    def show(self, stats: FlowStats, line: str) -> None:
        self._live.update(StatsView(stats, line, self._title), refresh=True)

    def close(self, stats: FlowStats | None, line: str) -> None:
        from rich.rule import Rule
        from rich.text import Text

        try:
            if stats is not None:
                self.show(stats, line)  # the last frame stays on the screen
        finally:
            self._live.stop()
        if stats is not None:
            self._console.print(Rule("summary", style="dim"))
            self._console.print(Text(stats.report(width=self._console.width)), soft_wrap=True)


def default_console() -> Console | None:
    """A rich console on standard error; ``None`` when rich cannot be imported."""
    try:
        from rich.console import Console
    except ImportError:
        return None
    return Console(stderr=True)


def _write_to(console: Console | None) -> Callable[[str], None]:
    if console is None:

        def write(line: str) -> None:
            print(line, file=sys.stderr, flush=True)

        return write

    def write_console(line: str) -> None:
        console.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)

    return write_console


def open_display(console: Console | None, plain: bool | None, title: str) -> Display:
    """The display :func:`monitor` uses: live where it can and may, plain otherwise."""
    rich_console = console if console is not None or plain is True else default_console()
    if plain is False and rich_console is None:
        raise ImportError(
            'monitor(plain=False) needs rich: install flowrhythm with its "monitor" extra '
            '(pip install ".[monitor]" in a clone of flowrhythm)'
        )
    width = console.width if console is not None else None
    if rich_console is None or plain is True:
        return PlainDisplay(_write_to(rich_console), width)
    if plain is None and not rich_console.is_terminal:
        return PlainDisplay(_write_to(rich_console), width)
    return LiveDisplay(rich_console, title)


# -- the monitor ---------------------------------------------------------------------


@contextlib.asynccontextmanager
async def monitor(
    running: StatsSource,
    *,
    interval: float | None = None,
    console: rich.console.Console | None = None,
    plain: bool | None = None,
    title: str = "flowrhythm",
) -> AsyncIterator[None]:
    """Show the flow's stats while the block runs, then a summary.

    Example::

        async with flow.start() as running, monitor(running):
            async for url in urls:
                await running.send(url)

    In a terminal, a live table redraws in place every ``interval`` seconds
    (a quarter of a second by default): per job, its workers within
    ``[min_workers, max_workers]``, how many are idle, active and blocked, its
    queue, items per second, items done, errors, retries and the median
    processing time; under it the bottleneck line (judged over the last five
    seconds or so, and changed only once a new verdict has held for two) and
    the totals. When the block ends, the last frame stays and
    :meth:`FlowStats.report` is printed under it.

    Without a terminal (CI, a pipe, a file), or without rich installed, or with
    ``plain=True``, it prints instead one line per ``interval`` (one second by
    default) summarising every job, and the report at the end. The output goes
    to ``console`` — by default a rich console on standard error, or standard
    error itself without rich.

    Sampling runs in a task of the monitor's own task group, cancelled when the
    block ends; it stops by itself once the flow is done. An exception raised
    while drawing is not swallowed: it fails the block.

    Args:
        running: the flow to watch: a :class:`RunningFlow` (from :meth:`Flow.start`)
            or the :class:`FlowResults` of :meth:`Flow.stream`.
        interval: seconds between two frames (or lines); by default 0.25
            for the live view and 1 for plain lines.
        console: a ``rich.console.Console`` to draw on.
        plain: ``None`` (the default) to choose by itself; ``True`` for plain
            lines always; ``False`` for the live view always (rich required; on
            a console that is not a terminal rich then shows only the last frame).
        title: the title of the live view's panel.

    Raises:
        TypeError, ValueError: ``interval`` is neither ``None`` nor a number ``> 0``.
        ImportError: ``plain=False`` and rich cannot be imported.

    .. versionadded:: 1.0
    """
    if interval is not None:
        check_number("interval", interval, low=0.0, low_open=True)
    recent = Recent()
    tracker = BottleneckTracker()
    display = open_display(console, plain, title)
    seconds = display.interval if interval is None else interval

    async def refresh() -> None:
        while True:
            stats = running.stats()
            display.show(stats, tracker.update(stats, recent.push(stats)))
            if stats.done:
                return
            await anyio.sleep(seconds)

    ended_normally = False
    try:
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(refresh, name="flowrhythm monitor")
            try:
                yield
            finally:
                task_group.cancel_scope.cancel()
        ended_normally = True
    finally:
        with _quiet_unless(ended_normally):
            final = running.stats()
            display.close(final, tracker.update(final, recent.push(final)))


@contextlib.contextmanager
def _quiet_unless(ended_normally: bool) -> Iterator[None]:
    """Let an error of the summary through, unless an exception is already on its way."""
    try:
        yield
    except Exception:
        if ended_normally:
            raise
