"""The demo behind ``python -m flowrhythm demo``: a simulated web crawl under the monitor.

Nothing touches the network. A source offers URLs at a rate that rises, holds
and falls again; ``fetch`` waits a made-up latency (log-normal around 30 ms,
now and then a slow response of a few hundred ms, about 3% failures) and
scales between 1 and 32 workers; ``parse`` does a little CPU work on two
workers; ``store`` writes to an in-memory "database" behind one shared
``anyio.Lock``; the error job counts the failures. Everything random is drawn
from the seed and the URL alone, so a run does not depend on how the tasks
happen to interleave.
"""

from __future__ import annotations

import hashlib
import io
import math
import random
import re
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, final

import anyio
import attrs

from ._capacity import Capacity, UtilizationCapacity
from ._errors import ErrorItem
from ._flow import Flow
from ._monitor import RECENT, default_console, monitor, render_stats

if TYPE_CHECKING:
    from rich.console import Console

    from ._stats import FlowStats, StatsSource

#: Seconds the source offers URLs by default.
DEFAULT_SECONDS = 20.0
#: URLs per second offered at the plateau by default.
DEFAULT_RATE = 350.0
#: Seconds between two refills of the source.
TICK = 0.01
#: The offered load starts (and ends) at this share of the peak.
FLOOR = 0.05
#: Shares of the duration spent rising, at the plateau and falling; the rest
#: stays at the floor.
RISE, PLATEAU, FALL = 0.3, 0.3, 0.25

MEDIAN_LATENCY = 0.03
SLOW_SHARE = 0.04
FAILURE_SHARE = 0.03

#: The title of the monitor's panel.
TITLE = "python -m flowrhythm demo"

LINK = re.compile(r'href="([^"]+)"')
TITLE_TAG = re.compile(r"<title>([^<]*)</title>")


class FetchError(Exception):
    """A simulated failed request (a 5xx answer or a reset connection)."""


@final
@attrs.frozen
class Page:
    url: str
    status: int
    body: str


@final
@attrs.frozen
class Parsed:
    url: str
    title: str
    digest: str
    links: tuple[str, ...]


def rate_at(elapsed: float, seconds: float, peak: float) -> float:
    """The offered load, in URLs per second, ``elapsed`` seconds into a demo of ``seconds``.

    It rises linearly from ``FLOOR * peak`` to ``peak`` over the first
    ``RISE`` of the time, holds for ``PLATEAU``, falls back to the floor over
    ``FALL``, and stays there to the end.
    """
    if seconds <= 0 or elapsed < 0 or elapsed >= seconds:
        return 0.0
    share = elapsed / seconds
    low = FLOOR * peak
    if share < RISE:
        return low + (peak - low) * share / RISE
    if share < RISE + PLATEAU:
        return peak
    if share < RISE + PLATEAU + FALL:
        return peak - (peak - low) * (share - RISE - PLATEAU) / FALL
    return low


def url_of(index: int) -> str:
    return f"https://shop.example/products/{index:06d}"


@final
class Crawl:
    """The jobs of the simulated crawl and what they leave behind.

    Args:
        seed: every random draw depends only on it and the URL.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.database: dict[str, str] = {}
        self.failures: Counter[str] = Counter()
        self.database_lock = anyio.Lock()

    def _random(self, url: str) -> random.Random:
        return random.Random(f"{self.seed}:{url}")

    async def urls(self, *, seconds: float, items: int | None, rate: float) -> AsyncIterator[str]:
        """URLs offered at :func:`rate_at` for ``seconds``, at most ``items`` of them."""
        start = last = anyio.current_time()
        credit = 0.0
        sent = 0
        while items is None or sent < items:
            now = anyio.current_time()
            elapsed = now - start
            if elapsed >= seconds:
                return
            credit += rate_at(elapsed, seconds, rate) * (now - last)
            last = now
            while credit >= 1 and (items is None or sent < items):
                credit -= 1
                yield url_of(sent)
                sent += 1
            await anyio.sleep(TICK)

    async def fetch(self, url: str) -> Page:
        """Wait a simulated network latency; fail now and then."""
        draw = self._random(url)
        latency = draw.lognormvariate(math.log(MEDIAN_LATENCY), 0.5)
        if draw.random() < SLOW_SHARE:
            latency += draw.uniform(0.15, 0.5)
        await anyio.sleep(latency)
        if draw.random() < FAILURE_SHARE:
            raise FetchError(f"GET {url}: 503 Service Unavailable")
        links = "".join(
            f'<li><a href="/products/{draw.randrange(1_000_000):06d}">item</a></li>'
            for _ in range(draw.randrange(5, 40))
        )
        body = (
            f"<html><head><title>Product {url.rsplit('/', 1)[-1]}</title></head>"
            f"<body><ul>{links}</ul><p>{'lorem ipsum ' * draw.randrange(20, 200)}</p>"
            "</body></html>"
        )
        return Page(url=url, status=200, body=body)

    async def parse(self, page: Page) -> Parsed:
        """A little CPU work: links, title and a content digest."""
        title = TITLE_TAG.search(page.body)
        return Parsed(
            url=page.url,
            title=title.group(1) if title else "",
            digest=hashlib.sha256(page.body.encode()).hexdigest(),
            links=tuple(LINK.findall(page.body)),
        )

    async def store(self, parsed: Parsed) -> str:
        """Write one row; the caller holds the database lock."""
        await anyio.sleep(0.0005)  # a round-trip to the database
        self.database[parsed.url] = parsed.digest
        return parsed.url

    async def count_failure(self, error: ErrorItem) -> None:
        """The error job: count failures by kind."""
        self.failures[type(error.exception).__name__] += 1

    def flow(self) -> Flow:
        """The crawl as a flow: fetch → parse → store, and the error job."""
        return (
            Flow()
            .add(
                self.fetch,
                UtilizationCapacity(
                    min_workers=1,
                    max_workers=32,
                    lower_threshold=0.4,
                    upper_threshold=0.8,
                    cooldown=1.0,
                    sampling=0.1,
                ),
                name="fetch",
            )
            .add(self.parse, Capacity(min_workers=2, max_workers=2), name="parse")
            .add_job_with_lock(
                self.store, self.database_lock, Capacity(min_workers=2, max_workers=2), "store"
            )
            .add_error_job(self.count_failure, name="failures")
        )


def svg_of(stats: FlowStats, since: FlowStats | None = None, *, width: int = 120) -> str:
    """One snapshot drawn as the monitor draws it, exported as an SVG image."""
    from rich.console import Console

    console = Console(
        record=True, width=width, file=io.StringIO(), force_terminal=True, color_system="truecolor"
    )
    console.print(render_stats(stats, since, title=TITLE))
    return console.export_svg(title="flowrhythm monitor", unique_id="flowrhythm-monitor")


@final
@attrs.define
class DemoResult:
    stats: FlowStats
    crawl: Crawl

    def summary(self) -> str:
        failures = ", ".join(f"{kind} {n}" for kind, n in sorted(self.crawl.failures.items()))
        return (
            f"crawled {self.stats.items_in} URLs in {self.stats.elapsed:.1f}s: "
            f"{len(self.crawl.database)} pages stored, "
            f"{sum(self.crawl.failures.values())} failed" + (f" ({failures})" if failures else "")
        )


async def run_demo(
    *,
    seconds: float = DEFAULT_SECONDS,
    items: int | None = None,
    rate: float = DEFAULT_RATE,
    seed: int = 0,
    plain: bool | None = None,
    console: Console | None = None,
    interval: float | None = None,
    svg: Path | None = None,
) -> DemoResult:
    """Run the crawl under :func:`monitor`; return its stats and what it stored.

    Args:
        seconds: how long the source offers URLs; the flow then drains.
        items: at most this many URLs.
        rate: URLs per second at the plateau.
        seed: the seed of every random draw.
        plain: passed to :func:`monitor`.
        console: passed to :func:`monitor` (a rich console on stderr by default).
        interval: seconds between two frames; by default 0.25 for the live view
            and 1 for plain lines.
        svg: write an SVG image of the monitor here, from the middle of the plateau.
    """
    crawl = Crawl(seed)
    flow = crawl.flow()
    if console is None and plain is not True:
        console = default_console()
    if interval is None:
        live = plain is False or (plain is None and console is not None and console.is_terminal)
        interval = 0.25 if live else 1.0
    frames: list[tuple[FlowStats, FlowStats | None]] = []

    async def capture(running: StatsSource, at: float) -> None:
        await anyio.sleep(max(at - RECENT, 0.0))
        before = running.stats()
        await anyio.sleep(min(RECENT, at))
        frames.append((running.stats(), before))

    async with flow.start() as running, anyio.create_task_group() as task_group:
        if svg is not None:
            task_group.start_soon(capture, running, (RISE + PLATEAU / 2) * seconds)
        async with monitor(running, interval=interval, console=console, plain=plain, title=TITLE):
            async for url in crawl.urls(seconds=seconds, items=items, rate=rate):
                await running.send(url)
            await running.close()
            stats = await running.join()
        task_group.cancel_scope.cancel()

    if svg is not None:
        frame = frames[0] if frames else (stats, None)
        await anyio.Path(svg).write_text(svg_of(*frame), encoding="utf-8")
    return DemoResult(stats, crawl)
