"""examples/resumable_crawl.py: interrupted with a real SIGINT, resumed, failures replayed."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "resumable_crawl.py"


def crawl(db: Path, backend: str, *args: str, fixed: bool = False) -> str:
    env = dict(os.environ)
    env.pop("FIXED", None)
    if fixed:
        env["FIXED"] = "1"
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), backend, "--db", str(db), "--pages", "300", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_crawl_resumes_after_ctrl_c(tmp_path: Path, backend: str) -> None:
    db = tmp_path / "crawl.db"
    out = crawl(db, backend, "--stop-after", "100")
    assert out.startswith("interrupted: ")
    recorded = int(out.split()[1])
    assert recorded >= 100  # stored pages, and failed URLs, are recorded

    out = crawl(db, backend)
    assert f"skipped {recorded} already done" in out
    failing = len([n for n in range(300) if n % 7 == 6])
    assert out.endswith(f"{failing} failed so far (--replay retries them)")

    out = crawl(db, backend, "--replay", fixed=True)
    assert (
        out
        == f"stored {failing} pages, skipped 0 already done, 0 failed so far (--replay retries them)"
    )
    with contextlib.closing(sqlite3.connect(db)) as connection, connection:
        assert connection.execute("SELECT count(*) FROM pages").fetchone() == (300,)
        keys = connection.execute("SELECT count(*) FROM flowrhythm_ledger").fetchone()
    assert keys == (300,)
