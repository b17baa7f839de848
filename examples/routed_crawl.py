"""A simulated crawl that routes: HTML pages and PDF documents take different arms.

fetch -> route -> {html: parse_html, pdf: ocr -> parse_pdf} -> store, with an error job.
Nothing touches the network: ``fetch`` waits a made-up latency; one URL in five is a PDF,
whose OCR is ten times slower than parsing HTML, and a few PDFs are scans too damaged to read
(they go to the error job). ``ocr`` scales between 1 and 16 workers, so the workers go where
the slow work is. The flow's shape is printed first (:meth:`Flow.describe`), the final report
last. Run it with ``python examples/routed_crawl.py`` (add ``trio`` to run it on trio).
"""

from __future__ import annotations

import hashlib
import random
import sys
from collections import Counter

import anyio

from flowrhythm import Capacity, ErrorItem, Flow, FlowStats, UtilizationCapacity


class DamagedScan(Exception):
    """A PDF whose scan cannot be read."""


def rng_for(url: str) -> random.Random:
    """The same random draws for the same URL, however the tasks interleave."""
    return random.Random(hashlib.sha256(url.encode()).digest())


async def fetch(url: str) -> dict[str, str]:
    await anyio.sleep(rng_for(url).uniform(0.001, 0.004))
    kind = "pdf" if url.endswith(".pdf") else "html"
    return {"url": url, "kind": kind, "body": f"<{kind} of {url}>"}


def kind_of(doc: dict[str, str]) -> str:
    return doc["kind"]


async def parse_html(doc: dict[str, str]) -> tuple[str, str]:
    await anyio.sleep(0.001)
    return doc["url"], f"text of {doc['url']}"


async def ocr(doc: dict[str, str]) -> dict[str, str]:
    await anyio.sleep(0.010)  # ten times slower than parsing HTML
    if rng_for(doc["url"]).random() < 0.05:
        raise DamagedScan(doc["url"])
    return {**doc, "text": f"scanned text of {doc['url']}"}


async def parse_pdf(doc: dict[str, str]) -> tuple[str, str]:
    return doc["url"], doc["text"]


class Crawl:
    def __init__(self) -> None:
        self.stored: dict[str, str] = {}
        self.failures: Counter[str] = Counter()

    async def store(self, page: tuple[str, str]) -> None:
        url, text = page
        self.stored[url] = text

    async def count_failure(self, error: ErrorItem) -> None:
        self.failures[f"{error.job}: {type(error.exception).__name__}"] += 1

    def flow(self) -> Flow:
        return (
            Flow(name="routed_crawl")
            .add(fetch, Capacity(min_workers=8, max_workers=8))
            .add_router(
                kind_of,
                {
                    "html": parse_html,
                    "pdf": Flow()
                    .add(ocr, UtilizationCapacity(min_workers=1, max_workers=16, cooldown=0.2))
                    .add(parse_pdf),
                },
                name="route",
            )
            .add(self.store, name="store")
            .add_error_job(self.count_failure, name="failures")
        )


async def main(pages: int = 500) -> tuple[FlowStats, Crawl]:
    crawl = Crawl()
    urls = [
        f"https://docs.example/{i:04d}" + (".pdf" if i % 5 == 0 else ".html") for i in range(pages)
    ]
    flow = crawl.flow()
    print(flow.describe())
    stats = await flow.run(urls)
    print(stats.report())
    html = stats.jobs["route[html].parse_html"].completed
    pdf = stats.jobs["route[pdf].parse_pdf"].completed
    print(
        f"crawled {stats.items_in} URLs: {html} HTML pages and {pdf} PDFs stored, "
        f"{sum(crawl.failures.values())} failed"
    )
    return stats, crawl


if __name__ == "__main__":
    anyio.run(main, backend=sys.argv[1] if len(sys.argv) > 1 else "asyncio")
