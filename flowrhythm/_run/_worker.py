"""A worker's handle, and the markers every worker loop shares.

A worker is one task reading its job's input. The scaler retires workers only
at a safe point, through the handle: while the worker waits for input (its
cancel scope is cancelled then), or after the item it is processing.
"""

from __future__ import annotations

import enum
from typing import Any, Final, final

import anyio
import attrs

#: Items a worker may take without waiting before it yields to the scheduler.
YIELD_EVERY: Final = 64

#: Marks "no item" where ``None`` is a valid item.
NOTHING: Final[Any] = object()


class Retirement(enum.IntEnum):
    """Where a worker stands on leaving: one field, changed only by its pool.

    ``STAYING`` is false and every other state true, so the hot path asks
    ``if worker.retirement:`` once per item.
    """

    STAYING = 0  #: not asked to leave
    ASKED = 1  #: asked to leave after its current item; the pool may withdraw it
    LEAVING = 2  #: asked, and it took effect: final
    DONE = 3  #: its loop ended by itself (input ended, or it failed): final


STAYING: Final = Retirement.STAYING
ASKED: Final = Retirement.ASKED
LEAVING: Final = Retirement.LEAVING
DONE: Final = Retirement.DONE


@final
class Worker:
    """One worker task's handle: how its pool retires it safely.

    Each worker of a scaling job runs in its own cancel scope. :meth:`retire`
    cancels that scope only while the worker waits for input, holding no item
    (the retirement is then ``LEAVING`` at once); otherwise the worker is only
    ``ASKED`` to leave after its current item, which the pool can withdraw with
    :meth:`revive` until the worker acts on it.
    """

    __slots__ = ("rescued", "retirement", "scope", "waiting")

    def __init__(self, *, retirable: bool = True) -> None:
        # Only a worker of a scaling job can be retired, and so needs a scope.
        self.scope: anyio.CancelScope | None = anyio.CancelScope() if retirable else None
        self.waiting = False  # in the idle wait for input: safe to cancel
        self.retirement = STAYING
        # An item that arrived just as the worker was retired (see wait_for_item).
        self.rescued: Any = NOTHING

    @property
    def idle(self) -> bool:
        return self.waiting

    def retire(self) -> None:
        """Ask the worker to stop at its next safe point (never mid-item)."""
        if self.waiting:
            self.retirement = LEAVING
            assert self.scope is not None, "a worker of a job that does not scale is retired"
            self.scope.cancel()
        else:
            self.retirement = ASKED

    def revive(self) -> bool:
        """Withdraw a retirement request that has not taken effect yet."""
        if self.retirement is ASKED:
            self.retirement = STAYING
            return True
        return False

    def renew(self) -> None:
        """After a rescue: a fresh scope, and staying."""
        self.scope = anyio.CancelScope()
        self.retirement = STAYING

    def stop(self) -> None:
        """Its loop has ended: a retirement asked for now takes effect; nothing can revive it."""
        self.retirement = LEAVING if self.retirement else DONE


@final
@attrs.define(eq=False)
class Taken:
    """One input as a worker of an ordered or batched job took it.

    It travels as one object from the intake to the worker, across a rescue,
    and from the doorman to the first worker.
    """

    #: the input (a list, for a batch)
    item: Any
    #: its number in an ordered job's sequence (0 otherwise)
    seq: int = 0
    #: how many items it counts for (a batch's length)
    weight: int = 1
