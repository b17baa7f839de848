"""Adaptive concurrency: a limit on calls in flight that finds a service's capacity.

Three layers, from the inside out:

- :class:`Controller` decides. It is pure and synchronous: told that a call
  ended cleanly or was pushed back, it moves a fractional limit, so it is tested
  with tables of events, like the scaler's strategies.
- :class:`Adaptive`, the public value given as ``concurrency=``, holds one
  controller and the slots it sizes (an :class:`anyio.CapacityLimiter` whose
  ``total_tokens`` the controller moves). Every job and every flow it is given
  to shares that one limit.
- :class:`JobSlots` is one job's view of it in one run: a worker waiting for a
  slot counts as *blocked*, attempts that raised :class:`Overloaded` are
  counted, and each attempt's outcome is reported to the controller.

The controller follows the loss-based limits that TCP, Netflix's
concurrency-limits (AIMD), Envoy's adaptive concurrency filter and Vector's ARC
made familiar, with BIC's search for the point of the last loss:

- *Slow start*: until the first overload, every clean completion adds one slot,
  so the limit doubles with each round of calls.
- *Cut*: an :class:`Overloaded` (or a :class:`TimeoutError`) sets the limit to
  0.75 times the calls then out (never more than 0.75 times the limit),
  floored at ``min``, at most once per round trip (the smoothed duration of
  clean calls): only a call started since the previous cut, and at least a
  round trip after it, can cut again. Completions of calls started
  before a cut are ignored, so the limit never grows on stale news. Within
  that round trip, a call started since the cut that is pushed back too
  lowers the limit to the other calls still out (a service that refuses new
  calls is full), so a service whose capacity fell is not hammered meanwhile.
  ``Retry-After`` plays no part here: it delays the item that carried it, and a
  long one can never freeze the limit (inspect_ai had that bug: a horizon
  pushed forward by every hint was never reached).
- *Increase*: below the last level the service did not push back (one slot
  under the calls out at the last cut), each clean completion adds
  ``2 * gap / limit`` slots (at least ``1 / limit``), so a round of calls
  closes most of the gap (a search in the manner of BIC TCP) and lands on it. Above it, the step per
  round starts at a quarter of a slot and doubles each round (capped at half
  the limit): the limit dwells a few rounds where the service was happy, yet
  finds a service that got faster in a few more. Each time the service
  refuses again at the same limit, the first step halves (down to 1/128 of a
  slot): a limit that has found the capacity tests it ever more rarely.
- *Slower*: the limit does not grow while the recent calls (smoothed over a
  few) take more than twice as long as usual (averaged over a thousand), as
  Netflix's Gradient2 compares a short and a long average: a service that
  queues calls instead of refusing them is not pushed further.
- *In use*: the limit grows only while at least half of it is in use, and never
  past twice the calls in flight; a job whose source is slower than the
  service does not inflate a limit it cannot test.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, final

import anyio
import attrs

from ._errors import Overloaded, StopProcessing
from ._validate import check_count

if TYPE_CHECKING:
    from ._stats import Counters

logger = logging.getLogger("flowrhythm")

#: The factor of a cut.
BACKOFF: Final = 0.75

#: How fast the limit closes the distance to the last good level: per completion,
#: ``CLOSE * gap / limit`` slots (so about ``1 - exp(-CLOSE)`` of it per round).
CLOSE: Final = 2.0

#: Slots per round at first above the last good limit (doubling each round).
PROBE: Final = 0.25

#: How many calls the usual duration of a call is averaged over.
LONG: Final = 1000

#: Calls this many times slower than usual (smoothed) stop the limit from growing.
SLOWER: Final = 2.0

#: The least first step of probing, after many refusals at the same limit.
PROBE_LEAST: Final = 1 / 128

#: How many limit changes an :class:`Adaptive` remembers.
HISTORY: Final = 1000

CLEAN: Final = "clean"
OVERLOADED: Final = "overloaded"
TIMEOUT: Final = "timeout"


@final
class Controller:
    """The decisions of an adaptive limit: outcomes in, a limit out (private).

    ``limit`` is fractional; the slots handed out are its integer part, kept in
    ``[low, high]``. ``epoch`` counts the cuts: a call carries the epoch it
    started in, and only calls of the current epoch move the limit.
    """

    __slots__ = (
        "acked",
        "backoff",
        "cut_at",
        "epoch",
        "high",
        "limit",
        "low",
        "peak",
        "probe",
        "probe_start",
        "rtt",
        "rtt_long",
        "samples",
        "slow_start",
    )

    def __init__(self, low: int, initial: int, high: int, backoff: float = BACKOFF) -> None:
        self.low = low
        self.high = high
        self.limit = float(initial)
        self.backoff = backoff
        self.epoch = 0
        self.slow_start = True
        self.peak: float | None = None  # the last limit known good: just below the last cut
        self.probe = PROBE  # slots per round above the peak
        self.probe_start = PROBE  # the first of those steps after a cut
        self.acked = 0.0  # clean completions in the current round
        self.rtt: float | None = None  # smoothed duration of clean calls
        self.rtt_long = 0.0  # the same, averaged over many more calls
        self.samples = 0  # clean calls timed
        self.cut_at = -math.inf

    @property
    def slots(self) -> int:
        return min(max(int(self.limit), self.low), self.high)

    def completed(self, epoch: int, in_flight: int, duration: float) -> str | None:
        """A call of ``epoch`` ended cleanly with ``in_flight`` calls (itself included) out.

        ``duration`` is how long it took. Returns why the limit grew, or ``None``.
        """
        rtt = self.rtt
        rtt = self.rtt = duration if rtt is None else rtt + (duration - rtt) / 8.0
        self.samples += 1
        long = self.rtt_long
        long = self.rtt_long = long + (duration - long) / min(self.samples, LONG)
        if epoch != self.epoch:
            return None  # started before the last cut: says nothing about the new limit
        if rtt > SLOWER * long:
            return None  # calls are getting slower: the service is queueing them
        limit = self.limit
        ceiling = min(2.0 * in_flight, float(self.high))
        if limit >= ceiling:
            return None  # not in use enough to learn anything (or at max)
        peak = self.peak
        if self.slow_start:
            per_round, reason = limit, "slow start"
        elif peak is not None and limit < peak:
            per_round, reason = max((peak - limit) * CLOSE, 1.0), "increase"
            ceiling = min(ceiling, peak)  # land on the peak, then probe past it
        else:
            per_round, reason = self.probe, "probe"
        self.limit = min(limit + per_round / limit, ceiling)
        if reason == "increase" and self.limit >= peak:  # type: ignore[operator]
            self.acked = 0.0  # landed: the probing rounds start now
            return reason
        self.acked += 1.0
        if self.acked >= limit:  # one round of calls ended
            self.acked = 0.0
            if reason == "probe":
                self.probe = min(self.probe * 2.0, max(self.limit / 2.0, 1.0))
        return reason

    def overloaded(self, epoch: int, in_flight: int, now: float) -> bool:
        """A call of ``epoch`` was pushed back at ``now`` with ``in_flight`` calls out.

        Returns whether the limit went down.
        """
        if epoch != self.epoch:
            return False  # the cut that call's overload called for has been made
        if self.rtt is not None and now - self.cut_at < self.rtt:
            # The last cut has not had a round trip to take effect; but a service
            # that refuses calls started since then is full: start no more calls
            # than the others still out.
            limit = self.limit
            self.limit = min(limit, max(float(in_flight - 1), float(self.low)))
            return self.limit < limit
        self.cut_at = now
        # The level the service refused is the calls out, which may be fewer than
        # the limit (refused calls come back fast and leave slots unused).
        level = min(self.limit, float(in_flight))
        peak = max(level - 1.0, float(self.low))
        if self.peak is not None and abs(peak - self.peak) < 1.0:
            # Refused where it was refused last time: that is the capacity; probe
            # past it more slowly (and so more rarely) each time.
            self.probe_start = max(self.probe_start / 2.0, PROBE_LEAST)
        else:
            self.probe_start = PROBE
        self.peak = peak
        self.limit = max(level * self.backoff, float(self.low))
        self.slow_start = False
        self.epoch += 1
        self.probe = self.probe_start
        self.acked = 0.0
        return True


@final
@attrs.frozen(kw_only=True)
class LimitChange:
    """One change of an :class:`Adaptive` limit.

    .. versionadded:: 1.0
    """

    #: the event loop's clock when it changed.
    time: float
    #: the limit before.
    old: int
    #: the limit after.
    new: int
    #: why it changed, in a word or two -- ``"slow start"``, ``"increase"`` or ``"probe"`` (calls
    #: ended cleanly while the limit was in use), ``"overloaded"`` or ``"timeout"`` (a call was
    #: pushed back, or took longer than its ``timeout=``).
    reason: str


@final
class Adaptive:
    """A limit on calls in flight to one remote service that finds its capacity by itself.

    Give it as ``concurrency=`` to the jobs that call the service: every call
    attempt holds one slot of the limit, and a worker waiting for a slot is
    *blocked* (the worker scaler does not grow a job the service holds back).
    Calls that end normally while at least half the limit is in use raise it —
    doubling per round of calls until the service first pushes back, then
    slowly; an :class:`Overloaded` raised by the processor, or a
    :class:`TimeoutError` (from ``timeout=``, say), cuts it by a quarter, at most once
    per round trip. It never leaves ``[min, max]``.

    One ``Adaptive`` given to several jobs, or several flows, is one limit that
    they share; it keeps what it learnt from one run to the next. It may serve
    runs in different event loops one after another, not at the same time.

    Args:
        min: the fewest slots, however hard the service pushes back.
        initial: the slots to start with (default: 4, within ``[min, max]``).
        max: the most slots.
        name: a name for log records and reprs.

    Raises:
        TypeError: a bound is not an ``int``.
        ValueError: ``min < 1``, ``min > max``, or ``initial`` outside
            ``[min, max]`` (naming the field).

    Example:

    >>> api = Adaptive(min=1, initial=4, max=256)
    >>> api.limit
    4

    .. versionadded:: 1.0
    """

    __slots__ = ("_changes", "_controller", "_in_flight", "_waiters", "max", "min", "name")

    def __init__(
        self,
        min: int = 1,
        initial: int | None = None,
        max: int = 256,
        *,
        name: str | None = None,
    ) -> None:
        check_count("min", min, 1)
        check_count("max", max, 1)
        if min > max:
            raise ValueError(f"min must be <= max, got min={min!r} and max={max!r}")
        if initial is None:
            initial = sorted((min, 4, max))[1]
        check_count("initial", initial, 1)
        if not min <= initial <= max:
            raise ValueError(
                f"initial must be within [min, max] = [{min}, {max}], got {initial!r}"
            )
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str, got {name!r}")
        self.min: int = min
        self.max: int = max
        self.name: str | None = name
        self._controller = Controller(min, initial, max)
        self._in_flight = 0
        self._waiters: deque[anyio.Event] = deque()
        self._changes: deque[LimitChange] = deque(maxlen=HISTORY)

    def __repr__(self) -> str:
        name = f"name={self.name!r}, " if self.name is not None else ""
        return (
            f"Adaptive({name}min={self.min}, max={self.max}, limit={self.limit}, "
            f"in_flight={self._in_flight})"
        )

    @property
    def limit(self) -> int:
        """How many calls may be in flight now (the current limit)."""
        return self._controller.slots

    @property
    def in_flight(self) -> int:
        """Calls holding a slot now."""
        return self._in_flight

    @property
    def changes(self) -> list[LimitChange]:
        """The latest changes of the limit (up to 1,000), oldest first, as :class:`LimitChange`."""
        return list(self._changes)

    # -- slots -------------------------------------------------------------------

    async def _acquire(self, counters: Counters) -> int:
        """Take a slot (waiting, blocked, if none is free); return the epoch."""
        if not self._waiters and self._in_flight < self._controller.slots:
            self._in_flight += 1
            return self._controller.epoch
        since = counters.enter_blocked()
        event = anyio.Event()
        self._waiters.append(event)
        try:
            await event.wait()
        except BaseException:
            if event.is_set():  # handed a slot in the instant it was cancelled
                self._in_flight -= 1
                self._wake()
            else:
                self._waiters.remove(event)
            raise
        finally:
            counters.leave_blocked(since)
        return self._controller.epoch

    def _wake(self) -> None:
        """Hand free slots to the waiters, first come first served."""
        waiters = self._waiters
        slots = self._controller.slots
        while waiters and self._in_flight < slots:
            self._in_flight += 1
            waiters.popleft().set()

    def _release(self, epoch: int, started: float, outcome: str | None) -> None:
        """Give a slot back and tell the controller how its call ended."""
        controller = self._controller
        old = controller.slots
        reason: str | None = None
        if outcome is not None:
            now = anyio.current_time()
            if outcome == CLEAN:
                reason = controller.completed(epoch, self._in_flight, now - started)
            elif controller.overloaded(epoch, self._in_flight, now):
                reason = outcome
        self._in_flight -= 1
        new = controller.slots
        if new != old:
            assert reason is not None
            self._changed(old, new, reason)
        self._wake()

    def _changed(self, old: int, new: int, reason: str) -> None:
        self._changes.append(
            LimitChange(time=anyio.current_time(), old=old, new=new, reason=reason)
        )
        logger.debug(
            "concurrency limit %s: %d -> %d (%s)", self.name or hex(id(self)), old, new, reason
        )


@final
class Held:
    """One attempt holding a slot: a failure handled inside it is reported here."""

    __slots__ = ("exc",)

    def __init__(self) -> None:
        self.exc: BaseException | None = None

    def report(self, exc: BaseException) -> None:
        self.exc = exc


@final
class JobSlots:
    """One job's use of an :class:`Adaptive` in one run (private)."""

    __slots__ = ("adaptive", "counters")

    def __init__(self, adaptive: Adaptive, counters: Counters) -> None:
        self.adaptive = adaptive
        self.counters = counters

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[Held]:
        """Hold one slot for one attempt, and report how the attempt ended.

        The attempt's outcome is the exception leaving the block, or the one
        given to :meth:`Held.report` inside it (for failures handled inside).
        """
        adaptive = self.adaptive
        epoch = await adaptive._acquire(self.counters)
        started = anyio.current_time()
        held = Held()
        try:
            yield held
        except BaseException as exc:
            adaptive._release(epoch, started, self._outcome(held.exc or exc))
            raise
        adaptive._release(epoch, started, self._outcome(held.exc))

    def _outcome(self, exc: BaseException | None) -> str | None:
        if exc is None or isinstance(exc, StopProcessing):
            return CLEAN  # the service answered
        if isinstance(exc, Overloaded):
            self.counters.overloaded += 1
            return OVERLOADED
        if isinstance(exc, TimeoutError):
            return TIMEOUT
        return None  # a failure that says nothing about load

    def around(self, call: Callable[[Any], Awaitable[Any]]) -> Callable[[Any], Awaitable[Any]]:
        """``call`` with each attempt holding a slot."""

        async def slotted(item: Any) -> Any:
            async with self.hold():
                return await call(item)

        return slotted

    def worker_cap(self) -> int:
        """Workers worth having: the limit, a little headroom, and those backing off."""
        limit = self.adaptive.limit
        return limit + max(2, limit // 8) + self.counters.backing_off
