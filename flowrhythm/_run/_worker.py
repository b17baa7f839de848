"""A worker's handle, and the markers every worker loop shares.

A worker is one task reading its job's input. The scaler retires workers only
at a safe point, through the handle: while the worker waits for input (its
cancel scope is cancelled then), or after the item it is processing.
"""

from __future__ import annotations

from typing import Any, Final, final

import anyio

#: Items a worker may take without waiting before it yields to the scheduler.
YIELD_EVERY: Final = 64

#: Marks "no item" where ``None`` is a valid item.
NOTHING: Final[Any] = object()


@final
class Worker:
    """One worker task's handle: how a scaler retires it safely.

    Each worker runs in its own cancel scope. :meth:`retire` cancels that scope
    only while the worker waits for input, holding no item; otherwise it only
    asks the worker to leave after its current item. ``leaving`` means the
    retirement has taken effect and can no longer be withdrawn.
    """

    __slots__ = ("leaving", "rescued", "retiring", "scope", "waiting")

    def __init__(self, *, retirable: bool = True) -> None:
        # Only a worker of a scaling job can be retired, and so needs a scope.
        self.scope: anyio.CancelScope | None = anyio.CancelScope() if retirable else None
        self.waiting = False  # in the idle wait for input: safe to cancel
        self.retiring = False
        self.leaving = False
        # An item that arrived just as the worker was retired (see wait_for_item).
        self.rescued: Any = NOTHING

    @property
    def idle(self) -> bool:
        return self.waiting

    def retire(self) -> None:
        """Ask the worker to stop at its next safe point (never mid-item)."""
        self.retiring = True
        if self.waiting:
            self.leaving = True
            assert self.scope is not None, "a worker of a job that does not scale is retired"
            self.scope.cancel()

    def revive(self) -> bool:
        """Withdraw a retirement request that has not taken effect yet."""
        if self.retiring and not self.leaving:
            self.retiring = False
            return True
        return False

    def renew(self) -> None:
        """After a rescue: a fresh scope, and no longer retiring."""
        self.scope = anyio.CancelScope()
        self.retiring = self.leaving = False

