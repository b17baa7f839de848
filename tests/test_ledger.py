"""The ledger: reruns skip finished items; lineage through fan-out, batches and arms."""

from __future__ import annotations

import contextlib
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Collection, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from _support import HANG_GUARD, leaves, wait_until

from flowrhythm import (
    Batch,
    Capacity,
    ErrorItem,
    Flow,
    FlowStats,
    LastWorkItem,
    Ledger,
    LedgerError,
    LedgerRecord,
    LedgerStore,
    Retry,
    StopProcessing,
    current_key,
)

pytestmark = pytest.mark.anyio


class MemoryStore:
    """A store in a dict, which also counts how often each key was written."""

    def __init__(self) -> None:
        self.records: dict[Any, LedgerRecord] = {}
        self.writes: Counter[Any] = Counter()
        self.opened = 0
        self.closed = 0

    def open(self) -> None:
        self.opened += 1

    def close(self) -> None:
        self.closed += 1

    def lookup(self, keys: Sequence[Any]) -> Collection[Any]:
        return {key for key in keys if key in self.records}

    def record(self, done: Sequence[Any], failed: Sequence[LedgerRecord]) -> None:
        for record in [*(LedgerRecord(key=key) for key in done), *failed]:
            self.records[record.key] = record
            self.writes[record.key] += 1

    def failed(self) -> list[LedgerRecord]:
        return [r for r in self.records.values() if r.failed]

    def forget(self, keys: Sequence[Any]) -> None:
        for key in keys:
            self.records.pop(key, None)


async def run(flow: Flow, source: Any, ledger: Ledger, **options: Any) -> FlowStats:
    with anyio.fail_after(HANG_GUARD):
        return await flow.run(source, ledger=ledger, **options)


def test_the_memory_store_is_a_ledger_store() -> None:
    assert isinstance(MemoryStore(), LedgerStore)


async def test_a_rerun_skips_the_finished_keys(tmp_path: Path) -> None:
    seen: list[int] = []

    async def double(x: int) -> int:
        return 2 * x

    async def sink(x: int) -> None:
        seen.append(x)

    flow = Flow().add(double).add(sink)
    ledger = Ledger.sqlite(tmp_path / "ledger.db", run="crawl-1")
    first = await run(flow, range(10), ledger, key=str)
    assert (first.items_in, first.resumed) == (10, 0)
    second = await run(flow, range(15), ledger, key=str)
    assert (second.items_in, second.resumed) == (5, 10)
    assert second.jobs["double"].received == 5
    assert sorted(seen) == [2 * n for n in [*range(10), *range(10, 15)]]
    # another run name in the same file starts from zero
    third = await run(flow, range(3), Ledger.sqlite(tmp_path / "ledger.db", run="crawl-2"))
    assert (third.items_in, third.resumed) == (3, 0)
    with contextlib.closing(sqlite3.connect(tmp_path / "ledger.db")) as db, db:
        rows = db.execute("SELECT run, count(*) FROM flowrhythm_ledger GROUP BY run").fetchall()
    assert dict(rows) == {"crawl-1": 15, "crawl-2": 3}


async def test_the_item_itself_is_the_key_by_default_and_async_sources_work() -> None:
    store = MemoryStore()

    async def source() -> AsyncIterator[str]:
        for n in range(700):  # more than one lookup batch
            yield f"u{n}"
            if n % 100 == 0:
                await anyio.lowlevel.checkpoint()

    async def noop(x: str) -> str:
        return x

    flow = Flow().add(noop)
    stats = await run(flow, source(), Ledger(store))
    assert stats.items_in == 700
    assert set(store.records) == {f"u{n}" for n in range(700)}
    assert store.opened == store.closed == 1
    again = await run(flow, source(), Ledger(store))
    assert (again.items_in, again.resumed) == (0, 700)


async def test_last_work_item_in_the_source_ends_the_input() -> None:
    store = MemoryStore()

    async def noop(x: int) -> int:
        return x

    stats = await run(Flow().add(noop), [1, 2, LastWorkItem(), 3], Ledger(store))
    assert stats.items_in == 2
    assert set(store.records) == {1, 2}


async def test_failed_items_are_recorded_with_their_attempts_and_can_be_replayed(
    tmp_path: Path,
) -> None:
    broken = {3, 7}
    handled: list[ErrorItem] = []

    async def fetch(x: int) -> int:
        if x in broken:
            raise ConnectionError(f"no answer for {x}")
        return x

    async def dead_letters(error: ErrorItem) -> None:
        handled.append(error)

    flow = Flow().add(fetch, retry=Retry(attempts=3, backoff=0)).add_error_job(dead_letters)
    ledger = Ledger.sqlite(tmp_path / "l.db")
    await run(flow, range(10), ledger)
    # the error job sees the user's item, not a carrier
    assert sorted(e.item for e in handled) == [3, 7]
    failures = await ledger.failed()
    assert sorted(f.key for f in failures) == [3, 7]
    for failure in failures:
        assert failure.failed
        assert failure.exception_type == "ConnectionError"
        assert failure.message == f"no answer for {failure.key!r}"
        assert failure.job == "fetch"
        assert failure.attempts == 3
    # a rerun does not retry them: they have ended
    rerun = await run(flow, range(10), ledger)
    assert rerun.resumed == 10
    # fixed: forget them, replay them
    broken.clear()
    await ledger.forget(f.key for f in failures)
    replay = await run(flow, [f.key for f in failures], ledger)
    assert (replay.items_in, replay.resumed) == (2, 0)
    assert await ledger.failed() == []


async def test_skipped_items_are_done() -> None:
    store = MemoryStore()

    async def odd_only(x: int) -> int:
        if x % 2 == 0:
            raise StopProcessing
        return x

    async def sink(x: int) -> None:
        pass

    await run(Flow().add(odd_only).add(sink), range(6), Ledger(store))
    assert set(store.records) == set(range(6))
    assert not any(r.failed for r in store.records.values())


async def test_without_an_error_job_a_failure_fails_the_run_and_the_key_stays_open() -> None:
    store = MemoryStore()

    async def fails_on_two(x: int) -> int:
        if x == 2:
            raise ValueError("two")
        return x

    flow = Flow().add(fails_on_two)
    with pytest.raises(ExceptionGroup) as caught:
        await run(flow, range(5), Ledger(store))
    assert [type(e) for e in leaves(caught.value)] == [ValueError]
    assert 2 not in store.records


async def test_current_key_names_the_source_item_of_every_descendant() -> None:
    keys: list[tuple[Any, Any]] = []

    async def split(url: str) -> AsyncIterator[str]:
        for part in range(2):
            yield f"{url}#{part}"

    async def sink(part: str) -> None:
        keys.append((part, current_key()))

    flow = Flow().add(split).add(sink)
    await run(flow, ["a", "b"], Ledger(MemoryStore()), key=str.upper)
    assert sorted(keys) == [("a#0", "A"), ("a#1", "A"), ("b#0", "B"), ("b#1", "B")]


def test_current_key_outside_a_ledger_run_raises_lookup_error() -> None:
    with pytest.raises(LookupError, match="inside a processor of a run given a ledger"):
        current_key()


async def test_a_key_is_done_only_when_every_fanned_out_output_has_ended() -> None:
    """Cancel the run while one output of key 2 is held: every other key is recorded."""
    store = MemoryStore()
    held = anyio.Event()
    finished: list[str] = []

    async def split(x: int) -> AsyncIterator[str]:
        for part in range(3):
            yield f"{x}.{part}"

    async def sink(part: str) -> None:
        if part == "2.1":
            held.set()
            await anyio.sleep_forever()
        finished.append(part)

    flow = Flow().add(split).add(sink, capacity=Capacity(min_workers=2, max_workers=2))
    async with anyio.create_task_group() as task_group:

        async def go() -> None:
            await flow.run(range(5), ledger=Ledger(store))

        task_group.start_soon(go)
        with anyio.fail_after(HANG_GUARD):
            await held.wait()
        await wait_until(lambda: len(finished) == 14)
        task_group.cancel_scope.cancel()
    # the cancelled run wrote what had finished, and only that
    assert set(store.records) == {0, 1, 3, 4}
    assert store.opened == store.closed == 1


async def test_a_failure_in_one_output_marks_its_source_item_failed() -> None:
    store = MemoryStore()

    async def split(x: int) -> AsyncIterator[int]:
        for part in range(3):
            yield 10 * x + part

    async def store_part(part: int) -> None:
        if part == 21:
            raise KeyError(part)

    async def dead_letters(error: ErrorItem) -> None:
        assert error.item == 21

    flow = Flow().add(split).add(store_part).add_error_job(dead_letters)
    await run(flow, range(4), Ledger(store))
    assert set(store.records) == {0, 1, 2, 3}
    assert [r.key for r in store.failed()] == [2]
    assert store.records[2].job == "store_part"
    assert store.records[2].exception_type == "KeyError"


async def test_batches_carry_several_source_items() -> None:
    store = MemoryStore()
    batches: list[list[int]] = []
    keys_seen: list[Any] = []

    async def split(x: int) -> AsyncIterator[int]:
        for part in range(3):
            yield 10 * x + part

    async def save(parts: list[int]) -> int:
        batches.append(parts)
        keys_seen.append(current_key())
        if 31 in parts:
            raise OSError("disk full")
        return len(parts)

    async def after(n: int) -> None:
        pass

    async def dead_letters(error: ErrorItem) -> None:
        pass

    flow = (
        Flow()
        .add(split)
        .add(save, batch=Batch(size=4, timeout=0))
        .add(after)
        .add_error_job(dead_letters)
    )
    stats = await run(flow, range(6), Ledger(store))
    assert sorted(p for b in batches for p in b) == sorted(
        10 * x + p for x in range(6) for p in range(3)
    )
    assert set(store.records) == set(range(6))
    # the failed batch marks every source item it held as failed
    failed_batch = next(b for b in batches if 31 in b)
    assert {r.key for r in store.failed()} == {p // 10 for p in failed_batch}
    multi = [k for k in keys_seen if isinstance(k, tuple)]
    assert all(len(set(k)) == len(k) for k in multi)
    assert stats.items_in == 6


async def test_routed_arms_count_their_items() -> None:
    store = MemoryStore()
    stored: list[Any] = []

    def kind(x: int) -> str:
        if x == 9:
            raise StopProcessing
        return ["short", "long", "through"][x % 3]

    async def fan(x: int) -> AsyncIterator[int]:
        yield x
        yield x + 100

    async def plus(x: int) -> int:
        return x + 1000

    async def sink(x: int) -> None:
        stored.append((x, current_key()))

    arms = {"short": Flow().add(plus), "long": Flow().add(fan).add(plus), "through": Flow()}
    flow = Flow().add_router(kind, arms).add(sink)
    await run(flow, range(12), Ledger(store))
    assert set(store.records) == set(range(12))
    assert len(stored) == 4 + 2 * 4 + 3  # short, long (fanned out), through; 9 skipped

    # a router at the end of a run: every arm's outputs are discarded there
    store2 = MemoryStore()
    await run(Flow().add_router(kind, arms), range(12), Ledger(store2))
    assert set(store2.records) == set(range(12))


async def test_stream_records_an_output_once_the_reader_asks_for_the_next() -> None:
    store = MemoryStore()

    async def noop(x: int) -> int:
        return x

    flow = Flow().add(noop)
    ledger = Ledger(store)
    with anyio.fail_after(HANG_GUARD):
        async with flow.stream(range(5), ledger=ledger) as results:
            got = [out async for out in results]
    assert got == [0, 1, 2, 3, 4]
    assert set(store.records) == set(range(5))
    # leaving early: the last output read is not recorded (it may not be done)
    store2 = MemoryStore()
    with anyio.fail_after(HANG_GUARD):
        async with flow.stream(range(100), ledger=Ledger(store2)) as results:
            read = []
            async for out in results:
                read.append(out)
                if len(read) == 3:
                    break
    assert set(store2.records) == {0, 1}
    assert results.stats().resumed == 0


class BrokenStore(MemoryStore):
    def __init__(self, fail_in: str) -> None:
        super().__init__()
        self.fail_in = fail_in

    def lookup(self, keys: Sequence[Any]) -> Collection[Any]:
        if self.fail_in == "lookup":
            raise RuntimeError("connection reset")
        return super().lookup(keys)

    def record(self, done: Sequence[Any], failed: Sequence[LedgerRecord]) -> None:
        if self.fail_in == "record":
            raise RuntimeError("disk full")
        super().record(done, failed)

    def open(self) -> None:
        if self.fail_in == "open":
            raise RuntimeError("refused")
        super().open()


@pytest.mark.parametrize(
    ("fail_in", "doing"),
    [("lookup", "look keys up"), ("record", "record finished items"), ("open", "open")],
)
async def test_a_store_error_fails_the_run_and_never_reaches_the_error_job(
    fail_in: str, doing: str
) -> None:
    routed: list[ErrorItem] = []

    async def noop(x: int) -> int:
        return x

    async def dead_letters(error: ErrorItem) -> None:
        routed.append(error)

    flow = Flow().add(noop).add_error_job(dead_letters)
    with pytest.raises(ExceptionGroup) as caught:
        await run(flow, range(10), Ledger(BrokenStore(fail_in)))
    [error] = leaves(caught.value)
    assert isinstance(error, LedgerError)
    assert f"failed to {doing}" in str(error)
    assert routed == []


async def test_a_corrupt_database_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    path.write_bytes(b"this is not an sqlite database, but text" * 100)

    async def noop(x: int) -> int:
        return x

    with pytest.raises(ExceptionGroup) as caught:
        await run(Flow().add(noop), range(3), Ledger.sqlite(path))
    [error] = leaves(caught.value)
    assert isinstance(error, LedgerError)
    assert "is corrupt or not an SQLite database" in str(error)
    with pytest.raises(LedgerError, match="corrupt"):
        await Ledger.sqlite(path).failed()


async def test_a_locked_database_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = Ledger.sqlite(path, timeout=0)
    assert await ledger.failed() == []  # creates the table
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock

        async def noop(x: int) -> int:
            return x

        with pytest.raises(ExceptionGroup) as caught:
            await run(Flow().add(noop), range(3), ledger)
        [error] = leaves(caught.value)
        assert isinstance(error, LedgerError)
        assert "is locked by another connection or process" in str(error)
    finally:
        other.execute("ROLLBACK")
        other.close()
    # once the lock is gone the same ledger works
    stats = await run(Flow().add(noop), range(3), ledger)
    assert stats.items_in == 3


async def test_a_key_of_the_wrong_type_fails_the_run_naming_key() -> None:
    async def noop(x: int) -> int:
        return x

    with pytest.raises(ExceptionGroup) as caught:
        await run(Flow().add(noop), [[1, 2]], Ledger(MemoryStore()))
    [error] = leaves(caught.value)
    assert isinstance(error, TypeError)
    assert "key must be a str, int or bytes" in str(error)


def test_bad_arguments_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="path must be"):
        Ledger.sqlite(12)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="run must be a str"):
        Ledger.sqlite(tmp_path / "l.db", run=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="run must be a non-empty str"):
        Ledger.sqlite(tmp_path / "l.db", run="")
    with pytest.raises(ValueError, match="timeout must be >= 0"):
        Ledger.sqlite(tmp_path / "l.db", timeout=-1)
    with pytest.raises(TypeError, match="timeout must be a number"):
        Ledger.sqlite(tmp_path / "l.db", timeout=True)
    with pytest.raises(
        TypeError, match=r"store must implement the LedgerStore protocol \(missing: "
    ):
        Ledger(object())  # type: ignore[arg-type]


async def test_bad_run_options_name_the_field() -> None:
    async def noop(x: int) -> int:
        return x

    async def async_key(x: int) -> int:
        return x

    flow = Flow().add(noop)
    ledger = Ledger(MemoryStore())
    with pytest.raises(TypeError, match=r"ledger must be a flowrhythm\.Ledger"):
        await flow.run([1], ledger="crawl.db")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key is only used with a ledger"):
        await flow.run([1], key=str)
    with pytest.raises(TypeError, match="key must be a plain"):
        await flow.run([1], ledger=ledger, key=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key must be a plain"):
        await flow.run([1], ledger=ledger, key=async_key)
    with pytest.raises(TypeError, match=r"ledger must be a flowrhythm\.Ledger"):
        flow.stream([1], ledger=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key must be a str, int or bytes"):
        await ledger.forget([1.5])  # type: ignore[list-item]


# -- the same-transaction mode -------------------------------------------------------------


def pages_table(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE IF NOT EXISTS pages (part TEXT, source INTEGER)")


def pages_of(path: Path) -> list[tuple[str, int]]:
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        return sorted(db.execute("SELECT part, source FROM pages").fetchall())


async def test_staged_rows_are_committed_with_the_record_of_their_item(tmp_path: Path) -> None:
    path = tmp_path / "crawl.db"
    pages_table(path)
    ledger = Ledger.sqlite(path)
    held = anyio.Event()
    staged: list[str] = []

    async def split(x: int) -> AsyncIterator[str]:
        for part in range(2):
            yield f"{x}.{part}"

    async def sink(part: str) -> None:
        if part == "3.1":
            held.set()
            await anyio.sleep_forever()
        ledger.stage("INSERT INTO pages VALUES (?, ?)", (part, current_key()))
        staged.append(part)

    flow = Flow().add(split).add(sink, capacity=Capacity(min_workers=2, max_workers=2))
    async with anyio.create_task_group() as task_group:

        async def go() -> None:
            await flow.run(range(5), ledger=ledger)

        task_group.start_soon(go)
        with anyio.fail_after(HANG_GUARD):
            await held.wait()
        await wait_until(lambda: len(staged) == 9)  # every part but the held one
        task_group.cancel_scope.cancel()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        recorded = {row[0] for row in db.execute("SELECT key FROM flowrhythm_ledger")}
    # a staged row exists exactly when its source item is recorded: 3.0 was staged, but
    # item 3 never finished, so neither its row nor its record was committed
    assert {source for _, source in pages_of(path)} == recorded
    assert recorded == {0, 1, 2, 4}

    # the rerun finishes item 3 (and writes its rows once)
    async def sink_again(part: str) -> None:
        ledger.stage("INSERT INTO pages VALUES (?, ?)", (part, current_key()))

    stats = await run(Flow().add(split).add(sink_again), range(5), ledger)
    assert stats.resumed == len(recorded)
    assert pages_of(path) == sorted((f"{x}.{p}", x) for x in range(5) for p in range(2))


async def test_a_failing_staged_statement_fails_the_run_with_no_record(tmp_path: Path) -> None:
    path = tmp_path / "crawl.db"
    ledger = Ledger.sqlite(path)

    async def sink(x: int) -> None:
        ledger.stage("INSERT INTO no_such_table VALUES (?)", (x,))

    with pytest.raises(ExceptionGroup) as caught:
        await run(Flow().add(sink), range(3), ledger)
    [error] = leaves(caught.value)
    assert isinstance(error, LedgerError)
    assert "no such table" in str(error)
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        assert db.execute("SELECT count(*) FROM flowrhythm_ledger").fetchone() == (0,)


async def test_stage_needs_an_sqlite_ledger_and_a_run() -> None:
    ledger = Ledger(MemoryStore())
    with pytest.raises(TypeError, match=r"needs a ledger kept in SQLite"):
        ledger.stage("INSERT INTO t VALUES (1)")


def test_stage_outside_a_run_raises_lookup_error(tmp_path: Path) -> None:
    ledger = Ledger.sqlite(tmp_path / "l.db")
    with pytest.raises(LookupError, match="inside a processor of a run given this ledger"):
        ledger.stage("INSERT INTO t VALUES (1)")
    with pytest.raises(TypeError, match="sql must be a str"):
        ledger.stage(b"INSERT")  # type: ignore[arg-type]


async def test_current_key_in_a_thread_and_an_ordered_job() -> None:
    store = MemoryStore()
    seen: list[tuple[int, Any]] = []

    def blocking(x: int) -> int:
        seen.append((x, current_key()))  # runs in a worker thread
        return x

    async def shuffle(x: int) -> int:
        await anyio.sleep(0 if x % 2 else 0.001)
        return x

    flow = (
        Flow()
        .add(blocking, executor="thread")
        .add(shuffle, ordered=True, capacity=Capacity(min_workers=4, max_workers=4))
    )
    with anyio.fail_after(HANG_GUARD):
        async with flow.stream(range(20), ledger=Ledger(store), key=lambda x: f"k{x}") as results:
            outputs = [out async for out in results]
    assert outputs == list(range(20))
    assert sorted(seen) == [(x, f"k{x}") for x in range(20)]
    assert set(store.records) == {f"k{x}" for x in range(20)}
