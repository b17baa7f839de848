"""The exceptions and marker values a processor uses to steer its item.

::

    Exception
     ├── StopProcessing      skip this item; it is counted as ``skipped``
     ├── RouteToErrorQueue   send this item to the error job as an ErrorItem
     └── Overloaded          the remote service pushed back: cut the limit, retry later

    LastWorkItem             a value, not an exception: ends the flow's input
    ErrorItem                what the error job receives

Any other :class:`Exception` raised by a processor is routed like
:class:`RouteToErrorQueue`. A :class:`BaseException` that is not an
:class:`Exception` (cancellation, :class:`KeyboardInterrupt`, :class:`SystemExit`)
is never routed: it propagates.
"""

from __future__ import annotations

import datetime
import email.utils
import math
import time
from collections.abc import Mapping
from typing import Any, final

import attrs

from ._validate import check_number


class StopProcessing(Exception):
    """Raised by a processor to drop the current item.

    The item is counted as ``skipped`` and the flow goes on. It is not a failure
    and never reaches the error job.

    .. versionadded:: 1.0
    """


class RouteToErrorQueue(Exception):
    """Raised by a processor to hand the current item to the error job.

    The error job receives ``ErrorItem(item=..., exception=<this exception>,
    job=<job name>)``. With no error job the run fails with this exception.

    .. versionadded:: 1.0
    """


@final
class LastWorkItem:
    """End of input.

    Sent with :meth:`RunningFlow.send`, yielded by a source, or returned (or
    yielded) by a processor, it ends the flow's input: nothing more is taken from
    the source, every item already inside the flow is still processed, then each
    job drains and closes in order. It is never delivered as an output.

    .. versionadded:: 1.0
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

    .. versionadded:: 1.0
    """

    #: the input item the failing job was processing (for a batch job, the list of items).
    item: Any
    #: the exception the processor raised.
    exception: Exception
    #: the name of the job that failed.
    job: str
    #: how many calls of the processor were made for this item.
    attempts: int = 1


class Overloaded(Exception):
    """Raised by a processor when the remote service pushed back ("too many").

    Raise it for an HTTP 429 or 503, a "rate limit exceeded" error of an SDK,
    or any answer that means *slow down*. In a job with ``concurrency=``
    (an :class:`Adaptive` limit) it cuts the limit; with ``retry=`` it is a
    failing attempt like any other, but the item's next attempt waits at least
    ``retry_after`` seconds, holding no slot of the limit meanwhile. Without
    ``retry=`` it is routed (or fails the run) like any exception.

    Args:
        retry_after: the seconds the service asked to wait before this item
            is tried again (its ``Retry-After``), or ``None``.
        message: what to show for the exception; the default says how long.

    Raises:
        TypeError, ValueError: ``retry_after`` is not a non-negative number.

    Example::

        response = await client.post(url, json=prompt)
        if response.status_code in (429, 503):
            raise Overloaded.from_headers(response.headers)

    .. versionadded:: 1.0
    """

    def __init__(self, retry_after: float | None = None, message: str | None = None) -> None:
        if retry_after is not None:
            retry_after = check_number("retry_after", retry_after, low=0.0)
        if message is None:
            message = (
                "the service is overloaded"
                if retry_after is None
                else f"the service is overloaded; retry after {retry_after:g}s"
            )
        super().__init__(message)
        self.retry_after: float | None = retry_after

    @classmethod
    def from_headers(cls, headers: Mapping[str, Any], message: str | None = None) -> Overloaded:
        """An :class:`Overloaded` whose ``retry_after`` comes from a ``Retry-After`` header.

        ``headers`` is any mapping of header names to values (``httpx.Headers``,
        ``aiohttp``'s, a plain ``dict``); the name is matched without regard to
        case. The value is either seconds (``"120"``) or an HTTP date
        (``"Wed, 21 Oct 2015 07:28:00 GMT"``, counted from the system clock).
        A missing or unreadable header gives ``retry_after=None``; a date in
        the past gives ``0``.

        Example:

        >>> Overloaded.from_headers({"retry-after": "3"}).retry_after
        3.0
        >>> Overloaded.from_headers({}).retry_after is None
        True

        .. versionadded:: 1.0
        """
        return cls(retry_after=retry_after_seconds(headers), message=message)


def retry_after_seconds(headers: Mapping[str, Any], now: float | None = None) -> float | None:
    """The seconds a ``Retry-After`` header in ``headers`` asks for, or ``None``.

    ``now`` is the wall clock (``time.time()``) an HTTP date is measured from.
    """
    value = headers.get("Retry-After")
    if value is None:
        value = next(
            (v for k, v in headers.items() if isinstance(k, str) and k.lower() == "retry-after"),
            None,
        )
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str):
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP date is always GMT
        when = when.replace(tzinfo=datetime.UTC)
    if now is None:
        now = time.time()
    return max(when.timestamp() - now, 0.0)
