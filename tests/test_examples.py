"""Every program in examples/ runs: as a script, and (where it can) on every backend.

The README's quickstart is examples/quickstart.py.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from _support import (
    ROOT,
)

EXAMPLES = ROOT / "examples"
QUICKSTART = EXAMPLES / "quickstart.py"

pytestmark = pytest.mark.anyio


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_quickstart_is_the_example_file() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    assert QUICKSTART.read_text(encoding="utf-8") in blocks


async def test_quickstart_prints_the_results(capsys: pytest.CaptureFixture[str]) -> None:
    await load(QUICKSTART).main()
    assert capsys.readouterr().out.splitlines() == [f"Result: {n}" for n in range(2, 6)]


def run_script(path: Path, *args: str) -> str:
    """Run ``path`` as ``python path args...`` with no terminal; return its standard output."""
    done = subprocess.run(
        [sys.executable, str(path), *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_quickstart_runs_as_a_script() -> None:
    assert run_script(QUICKSTART).splitlines() == [f"Result: {n}" for n in range(2, 6)]


def test_every_example_is_tested_and_linked_from_the_docs() -> None:
    tested = {"quickstart", "crawl", "api_client", "process_pool", "sqlite_sink", "routed_crawl"}
    tested.add("resumable_crawl")  # tested in test_ledger_example.py
    assert {path.stem for path in EXAMPLES.glob("*.py")} == tested
    docs = (ROOT / "docs" / "examples.md").read_text(encoding="utf-8")
    for name in tested - {"quickstart"}:
        assert f"../examples/{name}.py" in docs


# -- the crawl -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_crawl_runs_as_a_script(backend: str) -> None:
    out = run_script(EXAMPLES / "crawl.py", backend)
    assert out.startswith("crawled 2000 URLs in ")
    assert out.rstrip().endswith("1920 pages stored, 80 failed")


async def test_crawl(capsys: pytest.CaptureFixture[str]) -> None:
    stats, crawl = await load(EXAMPLES / "crawl.py").main(pages=300, show=False)
    failed = sum(crawl.failures.values())
    assert stats.jobs["failures"].completed == failed
    assert len(crawl.database) + failed == 300
    assert stats.jobs["store"].completed == len(crawl.database)
    assert capsys.readouterr().out.startswith("crawled 300 URLs")


# -- the routed crawl ----------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_routed_crawl_runs_as_a_script(backend: str) -> None:
    lines = run_script(EXAMPLES / "routed_crawl.py", backend).splitlines()
    assert lines[:7] == [
        "fetch",
        "route (router)",
        "  ['html']",
        "    route[html].parse_html",
        "  ['pdf']",
        "    route[pdf].ocr",
        "    route[pdf].parse_pdf",
    ]
    assert lines[-1] == "crawled 500 URLs: 400 HTML pages and 98 PDFs stored, 2 failed"


async def test_routed_crawl_sends_each_kind_to_its_arm(capsys: pytest.CaptureFixture[str]) -> None:
    stats, crawl = await load(EXAMPLES / "routed_crawl.py").main(pages=100)
    assert stats.jobs["route[html].parse_html"].received == 80
    assert stats.jobs["route[pdf].ocr"].received == 20
    assert all(url.endswith(".pdf") for url in crawl.stored if "scanned" in crawl.stored[url])
    assert len(crawl.stored) + sum(crawl.failures.values()) == 100
    assert set(crawl.failures) <= {"route[pdf].ocr: DamagedScan"}
    for job in stats.jobs.values():
        assert job.received == job.completed + job.skipped + job.errored
    assert capsys.readouterr().out.rstrip().endswith("failed")


# -- the HTTP API client -------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_api_client_runs_as_a_script(backend: str) -> None:
    lines = run_script(EXAMPLES / "api_client.py", backend).splitlines()
    assert lines[0].startswith("96 answers in ")
    assert lines[0].endswith("(20 retries), 4 failed:")
    assert [line.split(" after ")[0] for line in lines[1:]] == [
        f"  item {n}" for n in (7, 32, 57, 82)
    ]
    assert all("404 Not Found" in line for line in lines[1:])


async def test_api_client_retries_busy_answers_and_routes_the_rest() -> None:
    stats, client = await load(EXAMPLES / "api_client.py").main(items=50, rate=1000.0)
    assert sorted(answer["id"] for answer in client.answers) == [
        n for n in range(50) if n % 25 != 7
    ]
    assert all(answer["square"] == answer["id"] ** 2 for answer in client.answers)
    assert sorted(error.item for error in client.failed) == [7, 32]
    assert all(error.attempts == 1 for error in client.failed)  # a 404 is not retried
    assert stats.jobs["get_item"].retried == 2 * 5  # items 3, 13, 23, 33, 43: busy twice


# -- the process pool, from trio.run -------------------------------------------------------


def test_process_pool_runs_as_a_script() -> None:
    out = run_script(EXAMPLES / "process_pool.py")
    assert out.startswith("40 checksums from ")
    assert "worker processes" in out


# -- the SQLite sink -----------------------------------------------------------------------


def test_sqlite_sink_runs_as_a_script(tmp_path: Path) -> None:
    out = run_script(EXAMPLES / "sqlite_sink.py", str(tmp_path / "readings.db"))
    assert out.startswith("4950 rows stored in ")
    assert out.rstrip().endswith("transactions, 50 lines rejected")
    with contextlib.closing(sqlite3.connect(tmp_path / "readings.db")) as db:
        assert db.execute("SELECT COUNT(*) FROM readings").fetchone() == (4950,)


async def test_sqlite_sink(tmp_path: Path) -> None:
    stats = await load(EXAMPLES / "sqlite_sink.py").main(tmp_path / "r.db", count=1000)
    assert stats.jobs["rejected"].completed == 10
    assert stats.jobs["insert"].completed == 990  # items, not calls
    assert 5 <= stats.items_out <= 990  # one output per batch of at most 200
    with contextlib.closing(sqlite3.connect(tmp_path / "r.db")) as db:
        rows = db.execute("SELECT sensor, value FROM readings ORDER BY value").fetchall()
    assert len(rows) == 990
    assert rows[0] == ("sensor-0", 0.0)
