"""The ledger: which source items a flow has finished, kept across runs.

The values and the store live here: :class:`Ledger`, its records, the
:class:`LedgerStore` protocol and the default SQLite store, and
:func:`current_key`. What a run does with a ledger (the feed, counting each
item's descendants, the flusher) is in :mod:`flowrhythm._run._ledger`.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sqlite3
import threading
import time
from collections.abc import (
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any, Final, Protocol, TypeAlias, final, runtime_checkable

import anyio
import anyio.to_thread
import attrs

from ._validate import check_number

#: A key: the stable identity of one source item.
Key: TypeAlias = str | int | bytes

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

    .. versionadded:: 1.0
    """

    #: the item's key.
    key: str | int | bytes
    #: whether the item (or one of its descendants) was handed to the error job; ``False``: it
    #: completed, or was skipped.
    failed: bool = False
    #: the failure's exception class name (``None`` if not failed).
    exception_type: str | None = None
    #: ``str()`` of the failure's exception (``None`` if not failed).
    message: str | None = None
    #: the name of the job where it failed (``None`` if not failed).
    job: str | None = None
    #: calls made for the failed input (more than 1 with ``retry=``); 0 for an item that did not
    #: fail.
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
    flight and those finished since the last completed write (records are
    written every 100 ms or 256 items; what finishes while a write is under
    way waits for the next one) run again. Side effects must be idempotent;
    :func:`current_key` gives a processor an idempotency key.

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


#: The roots (each with a ``key``) of the input a worker is processing: set by the run.
_current: contextvars.ContextVar[tuple[Any, ...]] = contextvars.ContextVar(
    "flowrhythm_current_roots"
)
#: The ledger's part of the run a worker belongs to (for Ledger.stage): set by the run.
_current_run: contextvars.ContextVar[Any] = contextvars.ContextVar("flowrhythm_ledger_run")


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
