"""``python -m flowrhythm demo``: the simulated crawl, its command line and its picture."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from _support import (
    HANG_GUARD,
    not_a_terminal,
)

from flowrhythm.__main__ import main
from flowrhythm._demo import FLOOR, Crawl, FetchError, rate_at, run_demo, url_of


def no_tty_env() -> dict[str, str]:
    """The environment without the variables that make rich assume a terminal."""
    env = dict(os.environ)
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        env.pop(name, None)
    return env


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_demo_runs_without_a_terminal(backend: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flowrhythm", "demo", "--seconds", "3", "--backend", backend],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=no_tty_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("crawled ")
    assert f"({backend})" in done.stdout
    assert "fetch w=" in done.stderr  # plain lines, one per second
    assert "bottleneck: " in done.stderr  # and the report at the end
    assert "\x1b[" not in done.stderr  # no terminal control codes


def test_no_command_prints_the_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "demo" in capsys.readouterr().err


def test_module_without_arguments_exits_2() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flowrhythm"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "usage:" in done.stderr


@pytest.mark.parametrize(
    "args", [["--seconds", "0"], ["--seconds", "nan"], ["--items", "0"], ["--backend", "curio"]]
)
def test_bad_arguments_are_refused(args: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["demo", *args])
    assert caught.value.code == 2


def test_rate_profile_rises_holds_and_falls() -> None:
    seconds, peak = 10.0, 100.0
    rates = [rate_at(t / 10, seconds, peak) for t in range(100)]
    assert rates[0] == pytest.approx(FLOOR * peak)
    assert max(rates) == pytest.approx(peak)
    top = rates.index(max(rates))
    assert rates[: top + 1] == sorted(rates[: top + 1])
    assert rates[top:] == sorted(rates[top:], reverse=True)
    assert rates[-1] == pytest.approx(FLOOR * peak)
    assert rate_at(seconds, seconds, peak) == 0.0


@pytest.mark.anyio
async def test_a_url_always_gets_the_same_answer() -> None:
    async def answer(crawl: Crawl, url: str) -> object:
        try:
            return await crawl.fetch(url)
        except FetchError as error:
            return str(error)

    urls = [url_of(i) for i in range(5)]
    with anyio.fail_after(HANG_GUARD):
        first = [await answer(Crawl(seed=7), url) for url in urls]
        again = [await answer(Crawl(seed=7), url) for url in urls]
    assert first == again


@pytest.mark.anyio
async def test_demo_crawls_every_url_once() -> None:
    out = io.StringIO()
    with anyio.fail_after(HANG_GUARD):
        result = await run_demo(seconds=5, items=60, rate=500, console=not_a_terminal(out))
    stats, crawl = result.stats, result.crawl
    assert stats.done
    assert stats.items_in == 60
    assert len(crawl.database) + sum(crawl.failures.values()) == 60
    for job in stats.jobs.values():
        assert job.received == job.completed + job.skipped + job.errored
    assert stats.jobs["failures"].received == sum(crawl.failures.values())
    assert result.summary().startswith("crawled 60 URLs")
    assert "fetch w=" in out.getvalue()


@pytest.mark.anyio
async def test_demo_writes_an_svg_of_the_monitor(tmp_path: Path) -> None:
    path = tmp_path / "monitor.svg"
    with anyio.fail_after(HANG_GUARD):
        await run_demo(
            seconds=1, rate=200, plain=True, console=not_a_terminal(io.StringIO()), svg=path
        )
    svg = path.read_text(encoding="utf-8")
    assert svg.startswith("<svg")
    assert "fetch" in svg
    assert "bottleneck" in svg
