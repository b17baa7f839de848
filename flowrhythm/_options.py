"""The keyword job options of ``Flow.add``: their values, validated, and job definitions.

``Retry`` and ``Batch`` are public values; :class:`JobOptions` gathers every
option of one job; :class:`JobSpec` and :class:`RouterSpec` are a job and a
router as defined on a flow. How the options act in a run lives in
:mod:`flowrhythm._run`: calls (retry, rate limit, resource manager, concurrency,
timeout) in ``_calls.py``, ``ordered`` in ``_ordered.py``, ``batch`` in
``_batch.py``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any, ClassVar, final

import attrs

from ._adaptive import Adaptive
from ._capacity import Capacity
from ._errors import RouteToErrorQueue, StopProcessing
from ._processors import Stage
from ._validate import check_number, count, number


def _exception_types(value: object) -> tuple[type[BaseException], ...]:
    types = value if isinstance(value, tuple) else (value,)
    if not types or not all(isinstance(t, type) and issubclass(t, Exception) for t in types):
        raise TypeError(f"on must be an Exception subclass or a tuple of them, got {value!r}")
    return types


@final
@attrs.frozen(kw_only=True)
class Retry:
    """Retry a failing call with exponential back-off.

    A failing call is retried up to ``attempts`` calls in all, waiting
    ``backoff * 2**n`` seconds before retry ``n`` (the first retry waits
    ``backoff``), capped at ``max_backoff``; with ``jitter`` each wait is
    scaled by a random factor in ``[0.75, 1.25)`` (still capped), so retries
    of many items do not fall into step. Only exceptions matching ``on`` are
    retried; :class:`StopProcessing` and :class:`RouteToErrorQueue` never are.
    After the last attempt the item goes the usual error way, and
    :attr:`ErrorItem.attempts` says how many calls were made. A generator is
    retried only if it fails before its first yield. A worker waiting in the
    back-off counts as *blocked*, not active, so a failing job does not grow;
    an offloaded call that returned after its ``timeout`` is never retried.

    Raises:
        TypeError, ValueError: ``attempts < 1``, negative ``backoff`` /
            ``max_backoff``, or ``on`` not exception classes.

    .. versionadded:: 1.0
    """

    attempts: int = attrs.field(default=3, validator=count(1))
    backoff: float = attrs.field(default=0.1, validator=number(low=0.0))
    max_backoff: float = attrs.field(default=10.0, validator=number(low=0.0))
    jitter: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    on: tuple[type[BaseException], ...] = attrs.field(
        default=(Exception,), converter=_exception_types
    )

    def wait(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (0 for the first).

        The doubling stops at ``max_backoff``: ``2.0 ** retry`` alone would
        overflow past the 1,024th retry.
        """
        try:
            delay = min(math.ldexp(self.backoff, retry), self.max_backoff)  # backoff * 2**retry
        except OverflowError:
            delay = self.max_backoff
        if self.jitter:
            delay = min(delay * random.uniform(0.75, 1.25), self.max_backoff)
        return delay

    def retries(self, exc: BaseException) -> bool:
        return isinstance(exc, self.on) and not isinstance(exc, StopProcessing | RouteToErrorQueue)


@final
@attrs.frozen(kw_only=True)
class Batch:
    """Hand the processor lists of up to ``size`` items.

    A batch is sent as soon as it is full, ``timeout`` seconds after its first
    item arrived, or when the input ends (the last partial batch is never lost).
    One job gathers one batch at a time for all its workers. The processor's
    return value goes downstream as one item; a failing batch is routed as one
    :class:`ErrorItem` whose ``item`` is the list. Counters count items.

    Raises:
        TypeError, ValueError: ``size < 1`` or a negative ``timeout``.

    .. versionadded:: 1.0
    """

    size: int = attrs.field(default=100, validator=count(1))
    timeout: float = attrs.field(default=0.05, validator=number(low=0.0))


@final
@attrs.frozen(kw_only=True)
class JobOptions:
    """Every keyword option of one job (private); all off by default."""

    ordered: bool = False
    retry: Retry | None = None
    timeout: float | None = None
    max_per_second: float | None = None
    batch: Batch | None = None
    concurrency: Adaptive | None = None

    @classmethod
    def build(
        cls,
        *,
        ordered: object = False,
        retry: object = None,
        timeout: object = None,
        max_per_second: object = None,
        batch: object = None,
        concurrency: object = None,
    ) -> JobOptions:
        if not isinstance(ordered, bool):
            raise TypeError(f"ordered must be a bool, got {ordered!r}")
        if retry is not None and not isinstance(retry, Retry):
            raise TypeError(f"retry must be a Retry, got {retry!r}")
        if batch is not None and not isinstance(batch, Batch):
            raise TypeError(f"batch must be a Batch, got {batch!r}")
        if concurrency is not None and not isinstance(concurrency, Adaptive):
            raise TypeError(f"concurrency must be an Adaptive, got {concurrency!r}")
        if timeout is not None:
            timeout = check_number("timeout", timeout, low=0.0, low_open=True)
        if max_per_second is not None:
            max_per_second = check_number("max_per_second", max_per_second, low=0.0, low_open=True)
            if math.isinf(1.0 / max_per_second):
                raise ValueError(
                    f"max_per_second is too small to space calls, got {max_per_second!r}"
                )
        return cls(
            ordered=ordered,
            retry=retry,
            timeout=timeout,
            max_per_second=max_per_second,
            batch=batch,
            concurrency=concurrency,
        )

    @property
    def wraps_calls(self) -> bool:
        """Whether ``retry``, ``timeout``, ``max_per_second`` or ``concurrency`` wrap each call."""
        return (
            self.retry is not None
            or self.timeout is not None
            or self.max_per_second is not None
            or self.concurrency is not None
        )


@final
@attrs.frozen
class JobSpec:
    """One job as defined on a flow (private)."""

    is_router: ClassVar[bool] = False
    name: str
    stage: Stage
    capacity: Capacity
    options: JobOptions = attrs.field(factory=JobOptions)


@final
@attrs.frozen
class RouterSpec:
    """A router as defined on a flow (private): a job whose workers pick an arm per item.

    ``arms`` maps each label to the job definitions of its arm, their names
    already qualified (``route[html].parse``); an empty arm passes items through.
    """

    is_router: ClassVar[bool] = True
    name: str
    classify: Callable[[Any], Any]
    is_async: bool
    arms: dict[Any, tuple[JobSpec | RouterSpec, ...]]
    default: Any
    capacity: Capacity
    options: JobOptions = attrs.field(factory=JobOptions)

    def names(self) -> list[str]:
        """The router's name and every name inside its arms, in flow order."""
        return [
            self.name,
            *(n for arm in self.arms.values() for spec in arm for n in spec_names(spec)),
        ]

    def renamed(self, name: str) -> RouterSpec:
        """The same router under another name, its arm jobs qualified anew."""
        old, new = f"{self.name}[", f"{name}["
        arms = {
            label: tuple(requalified(spec, old, new) for spec in arm)
            for label, arm in self.arms.items()
        }
        return attrs.evolve(self, name=name, arms=arms)


def spec_names(spec: JobSpec | RouterSpec) -> list[str]:
    return spec.names() if isinstance(spec, RouterSpec) else [spec.name]


def requalified(spec: JobSpec | RouterSpec, old: str, new: str) -> JobSpec | RouterSpec:
    name = new + spec.name[len(old) :] if spec.name.startswith(old) else spec.name
    if isinstance(spec, RouterSpec):
        return spec.renamed(name)
    return attrs.evolve(spec, name=name)
