"""Capacity: how many workers a job runs and how long its input queue is."""

from __future__ import annotations

import enum
import inspect
from collections.abc import Callable
from typing import Any

import attrs

from ._validate import count, number


class Strategy(enum.Enum):
    """How a job's worker count is chosen while it runs.

    .. versionadded:: 1.0
    """

    #: The default. Grow while the workers are busy and input is waiting, by
    #: Little's law from the measured call duration; shrink after the cooldown
    #: when they are mostly idle. Time blocked on a full downstream queue, a
    #: rate limit, the resource manager or a retry's back-off is not busy, and a
    #: blocked job never grows. Judged by evidence in completed calls, so it
    #: holds for any call duration. See :class:`UtilizationStrategy`.
    UTILIZATION = "utilization"
    #: One worker per ten items waiting or in progress. See :class:`QueueDepthStrategy`.
    QUEUE_DEPTH = "queue_depth"
    #: Stay at ``initial_workers``. See :class:`FixedStrategy`.
    FIXED = "fixed"


def _default_max(self: Any) -> Any:
    minimum = self.min_workers
    if isinstance(minimum, int) and not isinstance(minimum, bool):
        return max(minimum, 1)
    return 1


def _default_initial(self: Any) -> Any:
    return self.min_workers


@attrs.frozen(kw_only=True)
class Capacity:
    """Worker counts and the input queue length of one job.

    Args:
        min_workers: the fewest workers the job runs while its input is open
            (``0`` allowed: a worker starts when input arrives).
        max_workers: the most workers; defaults to ``max(min_workers, 1)``.
            A job scales whenever ``max_workers > min_workers``.
        initial_workers: workers at start; defaults to ``min_workers``.
        queue_length: the job's input buffer. A full queue makes the upstream
            job's workers wait (backpressure). ``0`` makes every hand-over a
            rendezvous.

    Raises:
        TypeError: a field is not an ``int``.
        ValueError: a count is negative, ``max_workers < 1``,
            ``min_workers > max_workers``, or ``initial_workers`` is outside
            ``[min_workers, max_workers]``.

    .. versionadded:: 1.0
    """

    min_workers: int = attrs.field(default=1, validator=count(0))
    max_workers: int = attrs.field(
        default=attrs.Factory(_default_max, takes_self=True), validator=count(1)
    )
    initial_workers: int = attrs.field(
        default=attrs.Factory(_default_initial, takes_self=True), validator=count(0)
    )
    queue_length: int = attrs.field(default=100, validator=count(0))

    def __attrs_post_init__(self) -> None:
        if self.min_workers > self.max_workers:
            raise ValueError(
                f"min_workers ({self.min_workers}) must not exceed "
                f"max_workers ({self.max_workers})"
            )
        if not self.min_workers <= self.initial_workers <= self.max_workers:
            raise ValueError(
                f"initial_workers ({self.initial_workers}) must be within "
                f"[min_workers, max_workers] = [{self.min_workers}, {self.max_workers}]"
            )

    @property
    def scales(self) -> bool:
        """Whether the job's worker count moves while it runs."""
        return self.max_workers > self.min_workers


@attrs.frozen(kw_only=True)
class UtilizationCapacity(Capacity):
    """A :class:`Capacity` with the knobs of :attr:`Strategy.UTILIZATION`.

    Args:
        lower_threshold: below this utilization (for ``cooldown``) the job shrinks.
        upper_threshold: above this utilization, with input waiting, the job grows.
        cooldown: seconds utilization must stay low before the job shrinks.
        sampling: seconds between two decisions of the job's scaler. Growth
            and the guard against hidden limits judge by completed calls, not by
            a number of ticks, so this sets how often the evidence is looked at,
            not how much of it a decision needs.
        dampening: smoothing of the signals used for shrinking, in ``[0, 1)``;
            ``0`` means no smoothing.
        strategy: a :class:`Strategy` member, or a callable with no arguments
            returning a fresh strategy object (an object with
            ``decide(sample) -> int``; pass the class itself, or a
            :func:`functools.partial` of it). Every job of every run gets its
            own strategy object.

    Utilization is the share of the job's worker-time spent running the processor.

    Raises:
        TypeError: a field has the wrong type.
        ValueError: a threshold is outside ``[0, 1]``,
            ``lower_threshold >= upper_threshold``, ``cooldown < 0``,
            ``sampling <= 0`` or ``dampening`` is outside ``[0, 1)``; or any
            :class:`Capacity` check fails.

    .. versionadded:: 1.0
    """

    lower_threshold: float = attrs.field(default=0.4, validator=number(low=0.0, high=1.0))
    upper_threshold: float = attrs.field(default=0.8, validator=number(low=0.0, high=1.0))
    cooldown: float = attrs.field(default=1.0, validator=number(low=0.0))
    sampling: float = attrs.field(default=0.1, validator=number(low=0.0, low_open=True))
    dampening: float = attrs.field(
        default=0.5, validator=number(low=0.0, high=1.0, high_open=True)
    )
    strategy: Strategy | Callable[[], Any] = attrs.field(default=Strategy.UTILIZATION)

    @strategy.validator
    def _check_strategy(self, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, Strategy) and not callable(value):
            raise TypeError(
                f"strategy must be a Strategy or a callable returning a strategy, got {value!r}"
            )
        if inspect.iscoroutinefunction(value):
            raise TypeError(
                f"strategy must be a synchronous callable returning a strategy, got the "
                f"async function {value!r}"
            )

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.lower_threshold >= self.upper_threshold:
            raise ValueError(
                f"lower_threshold ({self.lower_threshold}) must be below "
                f"upper_threshold ({self.upper_threshold})"
            )


class _Computed:
    """A default computed from other fields, shown as its formula in signatures."""

    def __init__(self, formula: str) -> None:
        self._formula = formula

    def __repr__(self) -> str:
        return self._formula


def _show_computed_defaults(cls: type) -> None:
    # attrs writes a Factory default as its NOTHING sentinel: help(Capacity)
    # would show "max_workers: int = NOTHING".
    # (From __init__, not the class: a subclass would inherit __signature__.)
    init: Any = vars(cls)["__init__"]
    signature = inspect.signature(init)
    computed = {"max_workers": "max(min_workers, 1)", "initial_workers": "min_workers"}
    init.__signature__ = signature.replace(
        parameters=[
            p.replace(default=_Computed(computed[p.name])) if p.name in computed else p
            for p in signature.parameters.values()
        ]
    )
    parameters = list(init.__signature__.parameters.values())[1:]  # without self
    cls.__signature__ = init.__signature__.replace(parameters=parameters)  # type: ignore[attr-defined]


_show_computed_defaults(Capacity)
_show_computed_defaults(UtilizationCapacity)

DEFAULT_CAPACITY = Capacity()


def scaling_knobs(capacity: Capacity) -> UtilizationCapacity:
    """The scaling settings of a capacity: its own, or the defaults."""
    if isinstance(capacity, UtilizationCapacity):
        return capacity
    return _DEFAULT_KNOBS


_DEFAULT_KNOBS = UtilizationCapacity()
