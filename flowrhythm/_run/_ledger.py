"""The ledger's part of one run: the feed, the roots of every item, the flusher.

A run given a :class:`~flowrhythm.Ledger` reads every source item's key, looks
the keys up in batches off the event loop, and feeds only the items not yet
recorded. Each fed item travels through the jobs inside a :class:`Carried`
that names its *roots* (the source items it descends from); a root counts its
outstanding descendants (+n for n outputs, -1 for each input consumed), and
when the count reaches zero the root is finished: recorded as done, or as
failed if any descendant was handed to the error job. Records are written in
batches by a flusher task, in a worker thread, every :data:`FLUSH_MARKS`
records or :data:`FLUSH_SECONDS` seconds, and once more when the run ends
however it ended.

Only a run with a ledger pays for any of this: its jobs call a wrapped
processor, built once per worker; a run without one builds nothing here.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterable, AsyncIterator, Callable, Collection, Iterable
from typing import Any, Final, Protocol, final

import anyio
from anyio import EndOfStream, WouldBlock
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._errors import LastWorkItem, StopProcessing
from .._ledger import (
    Key,
    Ledger,
    LedgerError,
    LedgerRecord,
    SQLiteStore,
    _check_key,
    _current,
    _current_run,
)
from ._calls import Exhausted

#: Keys looked up in one query.
LOOKUP_BATCH: Final = 500
#: Records that wake the flusher before its interval is up.
FLUSH_MARKS: Final = 256
#: The longest a finished item's record waits before it is written.
FLUSH_SECONDS: Final = 0.1


class RunOfLedger(Protocol):
    """What the ledger uses of its run (the run itself is one)."""

    resumed: int

    def fail(self, error: Exception, cause: BaseException) -> None: ...
    def end_input(self) -> None: ...
    async def _feed_one(self, item: Any) -> bool: ...


class JobOfLedger(Protocol):
    """What the ledger uses of a job (the job itself is one)."""

    @property
    def name(self) -> str: ...

    send: Any
    errors: Any
    batcher: Any
    routes: Any
    spec: Any


def _identity(item: Any) -> Any:
    return item


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

    def __init__(self, ledger: Ledger, key: Callable[[Any], Any] | None, run: RunOfLedger) -> None:
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

    def failed(self, roots: tuple[Root, ...], exc: Exception, job: JobOfLedger) -> None:
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
        """Feed the items of ``source`` whose keys are not recorded.

        A task reads the source in batches and looks their keys up (in a worker
        thread) one batch ahead, while this one feeds the batch before: the
        first job never waits for a lookup, only for the source.
        """
        send, receive = anyio.create_memory_object_stream[Any](1)
        failure: list[BaseException] = []
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(self._look_up, source, send, failure)
            with receive:
                async for looked_up in receive:
                    if not await self._feed_batch(*looked_up):
                        break
            task_group.cancel_scope.cancel()
        if failure:
            raise failure[0]

    async def _look_up(
        self,
        source: Iterable[Any] | AsyncIterable[Any],
        send: MemoryObjectSendStream[Any],
        failure: list[BaseException],
    ) -> None:
        """Read ``source`` in batches; send each with its keys and those already recorded."""
        try:
            with send:
                if not isinstance(source, AsyncIterable):
                    iterator = iter(source)
                    while batch := list(itertools.islice(iterator, LOOKUP_BATCH)):
                        if not await self._send_looked_up(batch, send):
                            return
                    return
                items, items_receive = anyio.create_memory_object_stream[Any](LOOKUP_BATCH)
                async with anyio.create_task_group() as task_group:
                    task_group.start_soon(self._pump, source, items, failure)
                    with items_receive:
                        while True:
                            try:
                                batch = [await items_receive.receive()]
                            except EndOfStream:
                                break
                            while len(batch) < LOOKUP_BATCH:
                                try:
                                    batch.append(items_receive.receive_nowait())
                                except (WouldBlock, EndOfStream):
                                    break
                            if not await self._send_looked_up(batch, send):
                                break
                    task_group.cancel_scope.cancel()
        except Exception as exc:  # noqa: BLE001 - raised by the feed, as a plain source's is
            failure.append(exc)

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
                    try:  # without waiting while the batch has room: no switch per item
                        send.send_nowait(item)
                    except WouldBlock:
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

    async def _send_looked_up(self, batch: list[Any], send: MemoryObjectSendStream[Any]) -> bool:
        """Look the keys of ``batch`` up; hand it on. False: the source ended its input."""
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
        done: Collection[Key] = ()
        if keys:
            done = await self.ledger._call("look keys up", self.ledger._store.lookup, keys)
        await send.send((batch, keys, done, ended))
        return not ended

    async def _feed_batch(
        self, batch: list[Any], keys: list[Key], done: Collection[Key], ended: bool
    ) -> bool:
        run = self.run
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

    def wrap(self, job: JobOfLedger, fn: Callable[[Any], Any], is_gen: bool) -> tuple[Any, bool]:
        """The job's processor (or classify), taking and giving carriers."""
        _current_run.set(self)  # in the worker's own context: Ledger.stage finds its run
        if job.routes is not None:
            return self._wrap_classify(job, fn, is_gen), True
        discard = job.send is None
        if is_gen:
            return self._wrap_generator(job, fn, discard), True
        return self._wrap_call(job, fn, discard), False

    def _wrap_call(self, job: JobOfLedger, fn: Callable[[Any], Any], discard: bool) -> Any:
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

    def _wrap_generator(self, job: JobOfLedger, fn: Callable[[Any], Any], discard: bool) -> Any:
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

    def _wrap_classify(
        self, job: JobOfLedger, classify: Callable[[Any], Any], is_async: bool
    ) -> Any:
        consumed, failed, set_current = self.consumed, self.failed, _current.set
        errors = job.errors is not None
        routes: dict[Any, Any] = job.routes
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
