"""The ledger: which source items a flow has finished, kept across runs.

A run given a :class:`Ledger` reads every source item's key, looks the keys up
in batches off the event loop, and feeds only the items not yet recorded. Each
fed item travels through the jobs inside a small carrier that names its *root*
(the source item it descends from); a root counts its outstanding descendants
(+n for n outputs, -1 for each input consumed), and when the count reaches zero
the root is finished: recorded as done, or as failed if any descendant was
handed to the error job. Records are written in batches by a flusher task, in a
worker thread, every :data:`FLUSH_MARKS` records or :data:`FLUSH_SECONDS`
seconds, and once more when the run ends however it ended.

Only a run with a ledger pays for any of this: its jobs call a wrapped
processor, built once per worker; a run without one builds nothing here.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import os
import sqlite3
import threading
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeAlias, final, runtime_checkable

import anyio
import anyio.to_thread
import attrs
from anyio import EndOfStream, WouldBlock
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._errors import LastWorkItem, StopProcessing
from ._options import Exhausted
from ._validate import check_number

if TYPE_CHECKING:
    from ._job import Job, Route
    from ._runtime import Run

#: A key: the stable identity of one source item.
Key: TypeAlias = str | int | bytes

#: Keys looked up in one query.
LOOKUP_BATCH: Final = 500
#: Records that wake the flusher before its interval is up.
FLUSH_MARKS: Final = 256
#: The longest a finished item's record waits before it is written.
FLUSH_SECONDS: Final = 0.1

_KEY_TYPES: Final = (str, int, bytes)


class LedgerError(Exception):
    """The ledger's store failed: it could not be opened, read or written.

    Raised inside the run's :class:`ExceptionGroup` (a ledger error fails the run:
    a record that cannot be written is never dropped quietly), or directly by
    :meth:`Ledger.failed` and :meth:`Ledger.forget`. It is never routed to the
    error job: it is not the item's failure.

    .. versionadded:: 1.0
    """


@final
@attrs.frozen(kw_only=True)
class LedgerRecord:
    """What the ledger holds about one finished source item.

    Attributes:
        key: the item's key.
        failed: whether the item (or one of its descendants) was handed to the
            error job; ``False``: it completed, or was skipped.
        exception_type: the failure's exception class name (``None`` if not failed).
        message: ``str()`` of the failure's exception (``None`` if not failed).
        job: the name of the job where it failed (``None`` if not failed).
        attempts: calls made for the failed input (more than 1 with ``retry=``);
            0 for an item that did not fail.

    .. versionadded:: 1.0
    """

    key: str | int | bytes
    failed: bool = False
    exception_type: str | None = None
    message: str | None = None
    job: str | None = None
    attempts: int = 0


@runtime_checkable
class LedgerStore(Protocol):
    """Where a :class:`Ledger` keeps its records: implement it to plug in another database.

    Every method is a plain (blocking) function: flowrhythm calls it in a worker
    thread, never on the event loop, and never two calls at once. ``open`` is
    called before the first run or query that uses the ledger, ``close`` after
    the last one ends; both may be called again later.

    .. versionadded:: 1.0
    """

    def open(self) -> None:
        """Connect (and create the tables if needed)."""

    def close(self) -> None:
        """Disconnect."""

    def lookup(self, keys: Sequence[Key]) -> Collection[Key]:
        """Which of ``keys`` are recorded (done or failed): at most a few hundred at once."""
        ...

    def record(self, done: Sequence[Key], failed: Sequence[LedgerRecord]) -> None:
        """Record the keys of ``done`` items and the ``failed`` ones, in one transaction.

        All of them, or none (then raise). A key already recorded is replaced.
        """

    def failed(self) -> list[LedgerRecord]:
        """Every record with ``failed`` true, in the order they were written."""
        ...

    def forget(self, keys: Sequence[Key]) -> None:
        """Remove the records of ``keys`` (unknown keys are ignored)."""


@final
class SQLiteStore:
    """The default store: one table in an SQLite database, one ``run`` name per ledger.

    WAL journal mode, so a reader (another process looking at the progress)
    never blocks the run's writes.
    """

    def __init__(self, path: str, run: str, timeout: float) -> None:
        self.path = path
        self.run = run
        self.timeout = timeout
        self.connection: sqlite3.Connection | None = None

    def _error(self, exc: sqlite3.Error, doing: str) -> LedgerError:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return LedgerError(
                f"the ledger database {self.path!r} is locked by another connection or "
                f"process (waited {self.timeout:g}s to {doing}): {text}"
            )
        if isinstance(exc, sqlite3.DatabaseError) and (
            "not a database" in text or "malformed" in text or "corrupt" in text
        ):
            return LedgerError(
                f"the ledger database {self.path!r} is corrupt or not an SQLite database "
                f"(found while trying to {doing}): {text}"
            )
        return LedgerError(f"the ledger database {self.path!r} failed to {doing}: {text}")

    @contextlib.contextmanager
    def _doing(self, doing: str) -> Iterator[sqlite3.Connection]:
        if self.connection is None:
            self.open()
        assert self.connection is not None
        try:
            yield self.connection
        except sqlite3.Error as exc:
            raise self._error(exc, doing) from exc

    def open(self) -> None:
        if self.connection is not None:
            return
        try:
            connection = sqlite3.connect(
                self.path, timeout=self.timeout, check_same_thread=False, isolation_level=None
            )
        except sqlite3.Error as exc:
            raise self._error(exc, "open it") from exc
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(
                "CREATE TABLE IF NOT EXISTS flowrhythm_ledger ("
                " run TEXT NOT NULL, key NOT NULL, failed INTEGER NOT NULL,"
                " exception_type TEXT, message TEXT, job TEXT, attempts INTEGER NOT NULL,"
                " recorded_at REAL NOT NULL, PRIMARY KEY (run, key)) WITHOUT ROWID"
            )
        except sqlite3.Error as exc:
            connection.close()
            raise self._error(exc, "open it") from exc
        self.connection = connection

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def lookup(self, keys: Sequence[Key]) -> Collection[Key]:
        with self._doing("look keys up") as connection:
            marks = ",".join("?" * len(keys))
            rows = connection.execute(
                f"SELECT key FROM flowrhythm_ledger WHERE run = ? AND key IN ({marks})",
                (self.run, *keys),
            ).fetchall()
        return {row[0] for row in rows}

    def record(self, done: Sequence[Key], failed: Sequence[LedgerRecord]) -> None:
        self.record_with(done, failed, ())

    def record_with(
        self,
        done: Sequence[Key],
        failed: Sequence[LedgerRecord],
        statements: Sequence[tuple[str, Any]],
    ) -> None:
        """Run ``statements`` and record the items, in one transaction."""
        now = time.time()
        run = self.run
        with self._doing("record finished items") as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                for sql, parameters in statements:
                    connection.execute(sql, parameters)
                connection.executemany(
                    "INSERT OR REPLACE INTO flowrhythm_ledger"
                    " (run, key, failed, attempts, recorded_at) VALUES (?, ?, 0, 0, ?)",
                    [(run, key, now) for key in done],
                )
                if failed:
                    connection.executemany(
                        "INSERT OR REPLACE INTO flowrhythm_ledger VALUES (?, ?, 1, ?, ?, ?, ?, ?)",
                        [
                            (run, r.key, r.exception_type, r.message, r.job, r.attempts, now)
                            for r in failed
                        ],
                    )
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def failed(self) -> list[LedgerRecord]:
        with self._doing("read the failed items") as connection:
            rows = connection.execute(
                "SELECT key, exception_type, message, job, attempts FROM flowrhythm_ledger"
                " WHERE run = ? AND failed ORDER BY recorded_at",
                (self.run,),
            ).fetchall()
        return [
            LedgerRecord(
                key=key,
                failed=True,
                exception_type=kind,
                message=message,
                job=job,
                attempts=attempts,
            )
            for key, kind, message, job, attempts in rows
        ]

    def forget(self, keys: Sequence[Key]) -> None:
        with self._doing("forget keys") as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.executemany(
                    "DELETE FROM flowrhythm_ledger WHERE run = ? AND key = ?",
                    [(self.run, key) for key in keys],
                )
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")


def _check_store(store: object) -> None:
    missing = [
        name
        for name in ("open", "close", "lookup", "record", "failed", "forget")
        if not callable(getattr(store, name, None))
    ]
    if missing:
        raise TypeError(
            f"store must implement the LedgerStore protocol (missing: {', '.join(missing)}), "
            f"got {store!r}"
        )


@final
class Ledger:
    """A record of the source items a flow has finished, so that a rerun skips them.

    Give it to a run with a key function — a stable identity per source item::

        ledger = Ledger.sqlite("crawl.db", run="crawl-1")
        stats = await flow.run(urls, ledger=ledger, key=lambda url: url)

    A rerun over the same source skips the keys already recorded (counted in
    :attr:`FlowStats.resumed`). An item is recorded once it and every output
    descending from it have ended: completed at the last job (or read from
    ``stream``'s results), skipped, or handed to the error job — then it is
    recorded as failed, and :meth:`failed` gives it back.

    The guarantee is *at-least-once*: after a crash, the items that were in
    flight and those finished in the last unwritten interval (at most 100 ms
    or 256 records) run again. Side effects must be idempotent; :func:`current_key` gives a
    processor an idempotency key.

    Args:
        store: where the records are kept (see :class:`LedgerStore`);
            :meth:`sqlite` makes the default one.

    Raises:
        TypeError: ``store`` does not implement :class:`LedgerStore`.

    .. versionadded:: 1.0
    """

    __slots__ = ("_lock", "_store", "_users")

    def __init__(self, store: LedgerStore) -> None:
        _check_store(store)
        self._store = store
        self._lock = threading.RLock()
        self._users = 0

    @classmethod
    def sqlite(
        cls, path: str | os.PathLike[str], *, run: str = "default", timeout: float = 5.0
    ) -> Ledger:
        """A ledger kept in an SQLite database file (created if missing).

        Args:
            path: the database file. It may be the same database the flow writes
                its own rows to.
            run: the name of this ledger inside the file: one file can hold the
                ledgers of several crawls.
            timeout: seconds to wait for a lock held by another connection
                before failing with :class:`LedgerError`.

        Raises:
            TypeError, ValueError: an argument of the wrong type, an empty ``run``,
                a negative ``timeout``.
        """
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"path must be a str or os.PathLike, got {path!r}")
        path = os.fspath(path)
        if not isinstance(path, str):
            raise TypeError(f"path must be a text path, got {path!r}")
        if not isinstance(run, str):
            raise TypeError(f"run must be a str, got {run!r}")
        if not run:
            raise ValueError("run must be a non-empty str, got ''")
        seconds = check_number("timeout", timeout, low=0.0)
        return cls(SQLiteStore(path, run, seconds))

    @property
    def store(self) -> LedgerStore:
        """The store the records are kept in."""
        return self._store

    def __repr__(self) -> str:
        return f"Ledger({self._store!r})"

    # -- the store, always in a worker thread, one call at a time -------------------

    def _acquire(self) -> None:
        with self._lock:
            if not self._users:
                self._store.open()
            self._users += 1

    def _release(self) -> None:
        with self._lock:
            self._users -= 1
            if not self._users:
                self._store.close()

    def _locked(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._lock:
            return fn(*args)

    async def _call(self, doing: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await anyio.to_thread.run_sync(self._locked, fn, *args)
        except LedgerError:
            raise
        except Exception as exc:
            raise LedgerError(
                f"the ledger's store failed to {doing}: {type(exc).__name__}: {exc}"
            ) from exc

    def _once(self, fn: Callable[..., Any], *args: Any) -> Any:
        self._acquire()
        try:
            return self._locked(fn, *args)
        finally:
            self._release()

    def stage(self, sql: str, parameters: Sequence[Any] | Mapping[str, Any] = ()) -> None:
        """Stage an SQL statement, committed in the transaction that records the current item.

        Call it inside a processor (usually the last job, the sink) of a run given
        this ledger, kept in SQLite (:meth:`sqlite`): instead of writing its rows
        itself, the sink stages them, and they are committed in the same
        transaction as the record of the source item they descend from, once
        that item has finished. A crash then loses both or neither: for these
        rows the run is effectively exactly-once. The statement runs on the
        ledger's own connection to its database; an error in it fails the run
        (with :class:`LedgerError`), and the records of that transaction are
        not written.

        For an input that descends from several source items (a batch), the
        statement is committed with the record of the last of them to finish;
        the others may be recorded before it, so a crash in between runs them
        again (at-least-once).

        Raises:
            TypeError: the ledger is not kept in SQLite, or ``sql`` is not a ``str``.
            LookupError: not inside a processor of a run given this ledger.
        """
        if not isinstance(self._store, SQLiteStore):
            raise TypeError(
                "Ledger.stage() needs a ledger kept in SQLite (Ledger.sqlite(...)), "
                f"this one is kept in {self._store!r}"
            )
        if not isinstance(sql, str):
            raise TypeError(f"sql must be a str, got {sql!r}")
        run = _current_run.get(None)
        if run is None or run.ledger is not self:
            raise LookupError(
                "Ledger.stage() is only available inside a processor of a run given this ledger"
            )
        run.stage(sql, parameters)

    async def failed(self) -> list[LedgerRecord]:
        """The items recorded as failed, to replay once the cause is fixed.

        To replay them, :meth:`forget` their keys and run their items again::

            failures = await ledger.failed()
            await ledger.forget(f.key for f in failures)
            await flow.run([f.key for f in failures], ledger=ledger)

        Raises:
            LedgerError: the store could not be read.
        """
        result: list[LedgerRecord] = await self._call(
            "read the failed items", self._once, self._store.failed
        )
        return result

    async def forget(self, keys: Iterable[Key]) -> None:
        """Remove the records of ``keys``: a later run processes those items again.

        Raises:
            TypeError: a key is not a ``str``, ``int`` or ``bytes``.
            LedgerError: the store could not be written.
        """
        chosen = list(keys)
        for key in chosen:
            _check_key(key, key)
        await self._call("forget keys", self._once, self._store.forget, chosen)


def _check_key(key: object, item: object) -> None:
    if key.__class__ not in _KEY_TYPES:
        raise TypeError(
            f"key must be a str, int or bytes (a stable identity of the source item), "
            f"got {key!r} for the item {item!r}"
        )


def _identity(item: Any) -> Any:
    return item


# -- one run with a ledger -----------------------------------------------------------


@final
class Root:
    """One fed source item, and how many of its descendants are still going."""

    __slots__ = ("failure", "key", "outstanding", "staged")

    def __init__(self, key: Key) -> None:
        self.key = key
        self.outstanding = 1
        self.failure: LedgerRecord | None = None
        # SQL statements staged with Ledger.stage, committed with this item's record.
        self.staged: list[Staged] | None = None


@final
class Staged:
    """One staged statement, waiting for the last of its source items to finish."""

    __slots__ = ("parameters", "remaining", "sql")

    def __init__(self, sql: str, parameters: Any, remaining: int) -> None:
        self.sql = sql
        self.parameters = parameters
        self.remaining = remaining


@final
class Carried:
    """An item on its way through the jobs, with the roots it descends from."""

    __slots__ = ("item", "roots")

    def __init__(self, item: Any, roots: tuple[Root, ...]) -> None:
        self.item = item
        self.roots = roots


_current: contextvars.ContextVar[tuple[Root, ...]] = contextvars.ContextVar(
    "flowrhythm_current_roots"
)
_current_run: contextvars.ContextVar[LedgerRun] = contextvars.ContextVar("flowrhythm_ledger_run")


def current_key() -> Any:
    """The key of the source item the current input descends from.

    Call it inside a processor (or a router's classify) of a run given a
    ledger, for example to send an idempotency key to a remote API. An input
    that descends from several source items (a batch, or an output of one)
    gives a tuple of their keys. It works in ``async def`` processors and in
    processors run in threads; a processor run in another process cannot see it.

    Raises:
        LookupError: not inside a processor of a run with a ledger.

    .. versionadded:: 1.0
    """
    roots = _current.get(None)
    if roots is None:
        raise LookupError(
            "current_key() is only available inside a processor of a run given a ledger "
            "(flow.run(source, ledger=..., key=...))"
        )
    if len(roots) == 1:
        return roots[0].key
    return tuple(root.key for root in roots)


def unwrap(item: Any) -> Any:
    """The user's item inside a carrier (or a batch of them); anything else as it is."""
    if item.__class__ is Carried:
        return item.item
    if item.__class__ is list and item and item[0].__class__ is Carried:
        return [c.item for c in item]
    return item


def _roots_of(batch: list[Carried]) -> tuple[Root, ...]:
    return tuple(dict.fromkeys(root for c in batch for root in c.roots))


@final
class LedgerRun:
    """The ledger's part of one run: the feed, the roots, the flusher (private)."""

    def __init__(self, ledger: Ledger, key: Callable[[Any], Any] | None, run: Run) -> None:
        self.ledger = ledger
        self.key = key if key is not None else _identity
        self.run = run
        self.done: list[Key] = []  # finished keys not written yet
        self.failures: list[LedgerRecord] = []
        self.statements: list[tuple[str, Any]] = []  # staged, their items finished
        self.opened = False
        self.broken = False
        self.stopping = False
        self._wake = anyio.Event()

    # -- open, flush, close -----------------------------------------------------------

    async def open(self) -> None:
        await self.ledger._call("open", self.ledger._acquire)
        self.opened = True

    def stop(self) -> None:
        """The run's body is over: the flusher writes what it has and leaves."""
        self.stopping = True
        self._wake.set()

    async def flusher(self) -> None:
        while not self.stopping:
            with anyio.move_on_after(FLUSH_SECONDS):
                await self._wake.wait()
            if self._wake.is_set() and not self.stopping:
                self._wake = anyio.Event()
            await self.flush()

    async def _write(self) -> None:
        """Write what has finished since the last write (raises LedgerError)."""
        done, failures, statements = self.done, self.failures, self.statements
        if not (done or failures or statements) or self.broken:
            return
        self.done, self.failures, self.statements = [], [], []
        store = self.ledger._store
        if statements:
            assert isinstance(store, SQLiteStore)
            await self.ledger._call(
                "record finished items with their staged statements",
                store.record_with,
                done,
                failures,
                statements,
            )
        else:
            await self.ledger._call("record finished items", store.record, done, failures)

    async def flush(self) -> None:
        try:
            await self._write()
        except LedgerError as exc:
            self.broken = True
            self.run.fail(exc, exc.__cause__ or exc)

    async def close(self) -> LedgerError | None:
        """The final write and the store's release; returns the error, if any."""
        error: LedgerError | None = None
        with anyio.CancelScope(shield=True):
            try:
                await self._write()
            except LedgerError as exc:
                error = exc
            if self.opened:
                self.opened = False
                try:
                    await self.ledger._call("close", self.ledger._release)
                except LedgerError as exc:
                    error = error or exc
        return error

    # -- the roots ------------------------------------------------------------------------

    def finish(self, root: Root) -> None:
        if root.staged is not None:
            for staged in root.staged:
                staged.remaining -= 1
                if not staged.remaining:
                    self.statements.append((staged.sql, staged.parameters))
        if root.failure is None:
            done = self.done
            done.append(root.key)
            if len(done) >= FLUSH_MARKS:
                self._wake.set()
        else:
            self.failures.append(root.failure)

    def consumed(self, roots: tuple[Root, ...]) -> None:
        """One input of these roots ended without passing anything on."""
        for root in roots:
            root.outstanding -= 1
            if not root.outstanding:
                self.finish(root)

    def failed(self, roots: tuple[Root, ...], exc: Exception, job: Job) -> None:
        attempts = 1
        if isinstance(exc, Exhausted):
            attempts = exc.attempts
            exc = exc.exception
        for root in roots:
            if root.failure is None:
                root.failure = LedgerRecord(
                    key=root.key,
                    failed=True,
                    exception_type=type(exc).__qualname__,
                    message=str(exc),
                    job=job.name,
                    attempts=attempts,
                )
        self.consumed(roots)

    # -- the feed ------------------------------------------------------------------------

    async def feed(self, source: Iterable[Any] | AsyncIterable[Any]) -> None:
        """Feed the items of ``source`` whose keys are not recorded, in batches."""
        if not isinstance(source, AsyncIterable):
            iterator = iter(source)
            while batch := list(itertools.islice(iterator, LOOKUP_BATCH)):
                if not await self._feed_batch(batch):
                    return
            return
        send, receive = anyio.create_memory_object_stream[Any](LOOKUP_BATCH)
        failure: list[BaseException] = []
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(self._pump, source, send, failure)
            with receive:
                while True:
                    try:
                        batch = [await receive.receive()]
                    except EndOfStream:
                        break
                    while len(batch) < LOOKUP_BATCH:
                        try:
                            batch.append(receive.receive_nowait())
                        except (WouldBlock, EndOfStream):
                            break
                    if not await self._feed_batch(batch):
                        break
            task_group.cancel_scope.cancel()
        if failure:
            raise failure[0]

    async def _pump(
        self,
        source: AsyncIterable[Any],
        send: MemoryObjectSendStream[Any],
        failure: list[BaseException],
    ) -> None:
        iterator = aiter(source)
        try:
            with send:
                async for item in iterator:
                    await send.send(item)
                    if item.__class__ is LastWorkItem:
                        break
        except Exception as exc:  # noqa: BLE001 - raised by the feed, as a plain source's is
            failure.append(exc)
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()

    async def _feed_batch(self, batch: list[Any]) -> bool:
        run = self.run
        ended = False
        for index, item in enumerate(batch):
            if item.__class__ is LastWorkItem:
                del batch[index:]
                ended = True
                break
        key_of = self.key
        keys = []
        for item in batch:
            key = key_of(item)
            _check_key(key, item)
            keys.append(key)
        done: Collection[Key] = set()
        if keys:
            done = await self.ledger._call("look keys up", self.ledger._store.lookup, keys)
        for item, key in zip(batch, keys, strict=True):
            if key in done:
                run.resumed += 1
                continue
            if not await run._feed_one(Carried(item, (Root(key),))):
                return False
        if ended:
            run.end_input()
            return False
        return True

    # -- the jobs -----------------------------------------------------------------------------

    def stage(self, sql: str, parameters: Any) -> None:
        roots = _current.get(None)
        if roots is None:
            raise LookupError(
                "Ledger.stage() is only available inside a processor of a run given this ledger"
            )
        staged = Staged(sql, parameters, len(roots))
        for root in roots:
            if root.staged is None:
                root.staged = [staged]
            else:
                root.staged.append(staged)

    def wrap(self, job: Job, fn: Callable[[Any], Any], is_gen: bool) -> tuple[Any, bool]:
        """The job's processor (or classify), taking and giving carriers."""
        _current_run.set(self)  # in the worker's own context: Ledger.stage finds its run
        if job.routes is not None:
            return self._wrap_classify(job, fn, is_gen), True
        discard = job.send is None
        if is_gen:
            return self._wrap_generator(job, fn, discard), True
        return self._wrap_call(job, fn, discard), False

    def _wrap_call(self, job: Job, fn: Callable[[Any], Any], discard: bool) -> Any:
        consumed, failed, set_current = self.consumed, self.failed, _current.set
        errors = job.errors is not None
        batched = job.batcher is not None
        last = LastWorkItem

        async def call(taken: Any) -> Any:
            if batched:
                item, roots = [c.item for c in taken], _roots_of(taken)
            else:
                item, roots = taken.item, taken.roots
            set_current(roots)
            try:
                out = await fn(item)
            except StopProcessing:
                if batched:
                    consumed_all(taken)
                else:
                    consumed(roots)
                raise
            except Exception as exc:
                if errors:
                    if batched:
                        for c in taken:
                            failed(c.roots, exc, job)
                    else:
                        failed(roots, exc, job)
                raise
            if batched:
                # one output for the batch: each root gains it, loses its inputs
                if not (discard or out.__class__ is last):
                    for root in roots:
                        root.outstanding += 1
                consumed_all(taken)
                return out if discard or out.__class__ is last else Carried(out, roots)
            if discard or out.__class__ is last:
                consumed(roots)
                return out
            taken.item = out  # one input, one output: the carrier goes on with it
            return taken

        def consumed_all(taken: list[Carried]) -> None:
            for c in taken:
                consumed(c.roots)

        return call

    def _wrap_generator(self, job: Job, fn: Callable[[Any], Any], discard: bool) -> Any:
        consumed, failed, set_current = self.consumed, self.failed, _current.set
        errors = job.errors is not None
        batched = job.batcher is not None
        last = LastWorkItem

        async def generate(taken: Any) -> AsyncIterator[Any]:
            inputs: list[Carried] = taken if batched else [taken]
            if batched:
                item, roots = [c.item for c in inputs], _roots_of(inputs)
            else:
                item, roots = taken.item, taken.roots
            set_current(roots)
            try:
                async with contextlib.aclosing(fn(item)) as agen:
                    async for out in agen:
                        if discard or out.__class__ is last:
                            yield out
                            continue
                        for root in roots:
                            root.outstanding += 1
                        yield Carried(out, roots)
                        set_current(roots)
            except StopProcessing:
                for c in inputs:
                    consumed(c.roots)
                raise
            except Exception as exc:
                if errors:
                    for c in inputs:
                        failed(c.roots, exc, job)
                raise
            for c in inputs:
                consumed(c.roots)

        return generate

    def _wrap_classify(self, job: Job, classify: Callable[[Any], Any], is_async: bool) -> Any:
        consumed, failed, set_current = self.consumed, self.failed, _current.set
        errors = job.errors is not None
        routes: dict[Any, Route] = job.routes  # type: ignore[assignment]
        default_label = getattr(job.spec, "default", None)
        default = routes[default_label] if default_label is not None else None

        async def classify_carried(taken: Carried) -> Any:
            roots = taken.roots
            set_current(roots)
            try:
                label = classify(taken.item)
                if is_async:
                    label = await label
                route = routes.get(label, default)
                if route is None:
                    raise LookupError(
                        f"router {job.name!r} has no arm for the label {label!r} (and no default)"
                    )
            except StopProcessing:
                consumed(roots)
                raise
            except Exception as exc:
                if errors:
                    failed(roots, exc, job)
                raise
            if route.send is None:
                consumed(roots)  # the arm discards it: it ends here
            return label

        return classify_carried


@final
class LedgerResults:
    """``stream``'s results stream as its reader sees it: carriers opened.

    An output counts as consumed (its roots may be finished) when the reader
    asks for the next one, or the outputs end: by then the reader has done what
    it does with it. The last output read before leaving early is not recorded.
    """

    __slots__ = ("_ledger", "_pending", "_receive")

    def __init__(self, receive: MemoryObjectReceiveStream[Any], ledger: LedgerRun) -> None:
        self._receive = receive
        self._ledger = ledger
        self._pending: tuple[Root, ...] | None = None

    def _settle(self) -> None:
        if self._pending is not None:
            roots, self._pending = self._pending, None
            self._ledger.consumed(roots)

    def _open(self, carried: Any) -> Any:
        if carried.__class__ is Carried:
            self._pending = carried.roots
            return carried.item
        return carried

    def receive_nowait(self) -> Any:
        self._settle()
        return self._open(self._receive.receive_nowait())

    async def receive(self) -> Any:
        self._settle()
        return self._open(await self._receive.receive())

    def statistics(self) -> Any:
        return self._receive.statistics()

    def close(self) -> None:
        self._receive.close()
