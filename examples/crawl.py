"""A simulated web crawl: fetch -> parse -> store, with an error job, under the monitor.

Nothing touches the network: ``fetch`` waits a made-up latency and fails now and
then. ``fetch`` scales between 1 and 32 workers with the load; ``parse`` has two
workers; ``store`` writes to a dict behind one shared ``anyio.Lock``
(``add_job_with_lock``: workers waiting for the lock count as *blocked*); the
error job counts the failures. Run it with ``python examples/crawl.py`` (add
``trio`` to run it on trio); ``python -m flowrhythm demo`` is a longer version.
"""

from __future__ import annotations

import hashlib
import random
import re
import sys
from collections import Counter

import anyio

from flowrhythm import Capacity, ErrorItem, Flow, FlowStats, UtilizationCapacity, monitor


class FetchError(Exception):
    """A failed request (a 5xx answer, a reset connection)."""


def rng_for(url: str) -> random.Random:
    """The same random draws for the same URL, however the tasks interleave."""
    return random.Random(hashlib.sha256(url.encode()).digest())


async def fetch(url: str) -> str:
    rng = rng_for(url)
    await anyio.sleep(rng.lognormvariate(-3.5, 0.5))  # about 30 ms
    if rng.random() < 0.03:
        raise FetchError(f"503 from {url}")
    return f"<html><title>{url.rsplit('/', 1)[-1]}</title><a href='/next'></a></html>"


async def parse(page: str) -> tuple[str, str]:
    title = re.search(r"<title>(.*?)</title>", page)
    return (title.group(1) if title else "?"), hashlib.sha256(page.encode()).hexdigest()


class Crawl:
    def __init__(self) -> None:
        self.database: dict[str, str] = {}
        self.failures: Counter[str] = Counter()

    async def store(self, parsed: tuple[str, str]) -> None:
        title, digest = parsed
        self.database[title] = digest  # the lock makes this one writer at a time

    async def count_failure(self, error: ErrorItem) -> None:
        self.failures[type(error.exception).__name__] += 1

    def flow(self) -> Flow:
        return (
            Flow(name="crawl")
            .add(fetch, UtilizationCapacity(min_workers=1, max_workers=32, cooldown=1.0))
            .add(parse, Capacity(min_workers=2, max_workers=2))
            .add_job_with_lock(
                self.store, anyio.Lock(), Capacity(min_workers=2, max_workers=2), name="store"
            )
            .add_error_job(self.count_failure, name="failures")
        )


async def main(pages: int = 2000, show: bool = True) -> tuple[FlowStats, Crawl]:
    crawl = Crawl()
    urls = (f"https://shop.example/products/{i:05d}" for i in range(pages))
    flow = crawl.flow()
    if show:
        async with flow.start() as running, monitor(running):
            for url in urls:
                await running.send(url)
            await running.close()
            stats = await running.join()
    else:
        stats = await flow.run(urls)
    print(
        f"crawled {stats.items_in} URLs in {stats.elapsed:.1f}s: "
        f"{len(crawl.database)} pages stored, {sum(crawl.failures.values())} failed"
    )
    return stats, crawl


if __name__ == "__main__":
    anyio.run(main, backend=sys.argv[1] if len(sys.argv) > 1 else "asyncio")
