"""Module-level functions for the offload tests (``tests/test_offload.py``).

Worker processes (anyio's, a ``ProcessPoolExecutor``'s, Dask's) receive the
function to call by pickle, that is by its module and name, so everything they
run must live in an importable module: this one. ``tests/`` is on ``sys.path``
in the test process (pytest's rootdir-relative import), anyio sends its
``sys.path`` to its worker processes, and spawned processes inherit it.

Cross-process coordination uses files in a directory the test owns: a call
leaves a marker while it runs, so the number of markers is the number of calls
in flight.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

#: Seconds. How long a gated call waits for its release before giving up, so a
#: broken test fails instead of hanging a worker process; never a measurement.
GATE_GUARD = 10.0


def square(item: int) -> int:
    return item * item


def where(item: int) -> tuple[int, int, int]:
    """The item and the ids of the process and the thread that ran the call."""
    return item, os.getpid(), threading.get_ident()


def fail_on_three(item: int) -> int:
    if item == 3:
        raise ValueError(f"bad item {item}")
    return item


class Unpicklable(Exception):
    """An exception that pickles but cannot be unpickled (its ``__init__`` needs two args)."""

    def __init__(self, item: int, why: str) -> None:
        super().__init__(f"item {item}: {why}")
        self.item = item
        self.why = why


def raise_unpicklable(item: int) -> int:
    if item == 3:
        raise Unpicklable(item, "cannot travel")
    return item


def return_unpicklable(item: int) -> object:
    return threading.Lock()


# -- counting calls in flight with files -------------------------------------------------


def running_markers(directory: Path) -> list[Path]:
    """The markers of the calls running now."""
    return list(directory.glob("running-*"))


def wait_for_markers(directory: Path, count: int) -> bool:
    """Block until ``count`` calls wait for the release (at most :data:`GATE_GUARD` seconds).

    Run it in a thread. A waiting call has already counted the calls in flight.
    """
    deadline = time.monotonic() + GATE_GUARD
    while len(list(directory.glob("waiting-*"))) < count:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def release(directory: Path) -> None:
    """Let the gated calls (those waiting and those to come) return."""
    (directory / "release").touch()


def gated_call(directory: Path, item: int) -> int:
    """Run one call that counts the calls in flight with files.

    Leaves ``running-<item>`` while it runs and writes ``seen-<item>`` with the
    number of calls running when it started (its own included). Then it leaves
    ``waiting-<item>`` too and waits until ``release`` exists (at most
    :data:`GATE_GUARD` seconds), and removes its markers.
    """
    running = directory / f"running-{item}"
    waiting = directory / f"waiting-{item}"
    running.touch()
    try:
        (directory / f"seen-{item}").write_text(str(len(running_markers(directory))))
        waiting.touch()
        deadline = time.monotonic() + GATE_GUARD
        while not (directory / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.002)
        return item
    finally:
        waiting.unlink(missing_ok=True)
        running.unlink()


def seen(directory: Path) -> dict[int, int]:
    """For each call that started: its item -> the number of calls in flight it saw."""
    return {
        int(path.name.removeprefix("seen-")): int(path.read_text())
        for path in directory.glob("seen-*")
    }


# -- counting calls in flight in this process (threads) ----------------------------------


class InFlight:
    """Counts the calls in flight in threads of this process, with a gate.

    Calls block until :attr:`release` is set, then sleep ``nap`` seconds;
    :attr:`full` is set once ``expected`` calls are in flight together.
    """

    def __init__(self, expected: int, nap: float = 0.0) -> None:
        self.expected = expected
        self.nap = nap
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.calls = 0
        self.full = threading.Event()
        self.release = threading.Event()

    def __call__(self, item: int) -> int:
        with self.lock:
            self.running += 1
            self.calls += 1
            self.peak = max(self.peak, self.running)
            if self.running >= self.expected:
                self.full.set()
        try:
            self.release.wait(GATE_GUARD)
            time.sleep(self.nap)
            return item
        finally:
            with self.lock:
                self.running -= 1
