"""The exceptions and marker values a processor uses to steer its item.

::

    Exception
     ├── StopProcessing      skip this item; it is counted as ``skipped``
     └── RouteToErrorQueue   send this item to the error job as an ErrorItem

    LastWorkItem             a value, not an exception: ends the flow's input
    ErrorItem                what the error job receives

Any other :class:`Exception` raised by a processor is routed like
:class:`RouteToErrorQueue`. A :class:`BaseException` that is not an
:class:`Exception` (cancellation, :class:`KeyboardInterrupt`, :class:`SystemExit`)
is never routed: it propagates.
"""

from __future__ import annotations

from typing import Any, final

import attrs


class StopProcessing(Exception):
    """Raised by a processor to drop the current item.

    The item is counted as ``skipped`` and the flow goes on. It is not a failure
    and never reaches the error job.

    .. versionadded:: 0.1
    """


class RouteToErrorQueue(Exception):
    """Raised by a processor to hand the current item to the error job.

    The error job receives ``ErrorItem(item=..., exception=<this exception>,
    job=<job name>)``. With no error job the run fails with this exception.

    .. versionadded:: 0.1
    """


@final
class LastWorkItem:
    """End of input.

    Sent with :meth:`RunningFlow.send`, yielded by a source, or returned (or
    yielded) by a processor, it ends the flow's input: nothing more is taken from
    the source, every item already inside the flow is still processed, then each
    job drains and closes in order. It is never delivered as an output.

    .. versionadded:: 0.1
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "LastWorkItem()"

    def __eq__(self, other: object) -> bool:
        return type(other) is LastWorkItem

    def __hash__(self) -> int:
        return hash(LastWorkItem)


@final
@attrs.frozen
class ErrorItem:
    """What the error job receives for an item that failed.

    Attributes:
        item: the input item the failing job was processing (for a batch job,
            the list of items).
        exception: the exception the processor raised.
        job: the name of the job that failed.
        attempts: how many calls of the processor were made for this item.

    .. versionadded:: 0.1
    """

    item: Any
    exception: Exception
    job: str
    attempts: int = 1
