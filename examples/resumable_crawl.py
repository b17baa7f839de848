"""A crawl you can interrupt with Ctrl-C and resume: run it again and it goes on where it stopped.

Nothing touches the network: ``fetch`` waits a made-up latency and fails for a few
URLs. Pages are stored in an SQLite database with an upsert (storing a page twice
is harmless: the side effect is idempotent), and the ledger of finished URLs is
kept in the same file. Press Ctrl-C during the run, then run it again::

    python examples/resumable_crawl.py            # Ctrl-C after a few seconds
    python examples/resumable_crawl.py            # resumes: skips the finished URLs
    FIXED=1 python examples/resumable_crawl.py --replay   # the site fixed: retry the failures

Add ``trio`` to run it on trio; ``--db PATH`` chooses the database (default
``crawl.db``), ``--pages N`` the number of URLs, ``--stop-after N`` sends the
process a Ctrl-C (SIGINT) after N pages were stored.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import signal
import sqlite3

import anyio

from flowrhythm import Capacity, ErrorItem, Flow, FlowStats, Ledger, current_key

FAILING = 7  # every 7th URL fails (the site answers 503) unless FIXED is set


class FetchError(Exception):
    """A failed request."""


async def fetch(url: str) -> tuple[str, str]:
    rng = random.Random(hashlib.sha256(url.encode()).digest())
    await anyio.sleep(rng.uniform(0.001, 0.004))
    if int(url.rsplit("/", 1)[-1]) % FAILING == FAILING - 1 and not os.environ.get("FIXED"):
        raise FetchError(f"503 from {url}")
    return url, f"<html>{url}</html>"


class Store:
    """Pages into SQLite, with an upsert keyed by the URL (the ledger's key)."""

    def __init__(self, path: str, stop_after: int | None) -> None:
        self.db = sqlite3.connect(path, check_same_thread=False)
        self.db.execute("CREATE TABLE IF NOT EXISTS pages (url TEXT PRIMARY KEY, html TEXT)")
        self.stored = 0
        self.stop_after = stop_after

    async def __call__(self, page: tuple[str, str]) -> None:
        url, html = page
        assert current_key() == url
        with self.db:
            self.db.execute(
                "INSERT INTO pages VALUES (?, ?) ON CONFLICT (url) DO UPDATE SET html = excluded.html",
                (url, html),
            )
        self.stored += 1
        if self.stored == self.stop_after:
            os.kill(os.getpid(), signal.SIGINT)  # as if Ctrl-C was pressed
            await anyio.sleep(1)  # the interrupt arrives here


async def report(error: ErrorItem) -> None:
    pass  # the ledger records the failure; Ledger.failed() gives it back


async def main(
    db: str = "crawl.db", pages: int = 2000, stop_after: int | None = None, replay: bool = False
) -> FlowStats:
    store = Store(db, stop_after)
    flow = Flow()
    flow.add(fetch, capacity=Capacity(min_workers=16, max_workers=16))
    flow.add(store, name="store")
    flow.add_error_job(report)
    ledger = Ledger.sqlite(db, run="crawl")
    urls = [f"https://example.org/page/{n}" for n in range(pages)]
    if replay:
        failures = await ledger.failed()
        await ledger.forget(f.key for f in failures)
        urls = [str(f.key) for f in failures]
    try:
        stats = await flow.run(urls, ledger=ledger)
    finally:
        store.db.close()
    failed = len(await ledger.failed())
    print(
        f"stored {stats.jobs['store'].completed} pages, skipped {stats.resumed} "
        f"already done, {failed} failed so far (--replay retries them)"
    )
    return stats


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backend", nargs="?", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument("--db", default="crawl.db")
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--stop-after", type=int, default=None)
    parser.add_argument("--replay", action="store_true")
    args = parser.parse_args()
    try:
        anyio.run(main, args.db, args.pages, args.stop_after, args.replay, backend=args.backend)
    except* KeyboardInterrupt:  # on trio it may come inside the run's exception group
        with contextlib.closing(sqlite3.connect(args.db)) as done, done:
            (count,) = done.execute("SELECT count(*) FROM flowrhythm_ledger").fetchone()
        print(f"interrupted: {count} URLs recorded as finished; run again to resume")
