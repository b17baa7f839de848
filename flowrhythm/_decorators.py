"""Decorators that attach a job's name or capacity to its processor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ._capacity import Capacity
from ._validate import check_count

_P = TypeVar("_P")

NAME_ATTR = "__flowrhythm_job_name__"
CAPACITY_ATTR = "__flowrhythm_job_capacity__"


def check_name(name: object, *, field: str = "name") -> str:
    """Validate a job name: a non-empty ``str``."""
    if not isinstance(name, str):
        raise TypeError(f"{field} must be a str, got {name!r}")
    if not name:
        raise ValueError(f"{field} must not be empty")
    return name


def _attach(processor: _P, attr: str, value: object, decorator: str) -> _P:
    if attr == CAPACITY_ATTR and attr in getattr(processor, "__dict__", {}):
        raise ValueError(
            f"@{decorator}: {processor!r} already has a capacity from "
            "@job_capacity or @workers; use one of them"
        )
    try:
        setattr(processor, attr, value)
    except (AttributeError, TypeError):
        raise TypeError(
            f"@{decorator} cannot be applied to {processor!r}; "
            "pass name=/capacity= to Flow.add instead"
        ) from None
    return processor


def job_name(name: str) -> Callable[[_P], _P]:
    """Give the job built from the decorated processor a name.

    ``Flow.add(..., name=...)`` beats it; it beats the processor's ``__qualname__``.

    Raises:
        TypeError: ``name`` is not a ``str``.
        ValueError: ``name`` is empty.

    .. versionadded:: 1.0
    """
    check_name(name)

    def decorate(processor: _P) -> _P:
        return _attach(processor, NAME_ATTR, name, "job_name")

    return decorate


def job_capacity(capacity: Capacity) -> Callable[[_P], _P]:
    """Give the job built from the decorated processor a :class:`Capacity`.

    ``Flow.add(..., capacity=...)`` beats it.

    Raises:
        TypeError: ``capacity`` is not a :class:`Capacity`.

    .. versionadded:: 1.0
    """
    if not isinstance(capacity, Capacity):
        raise TypeError(f"capacity must be a Capacity, got {capacity!r}")

    def decorate(processor: _P) -> _P:
        return _attach(processor, CAPACITY_ATTR, capacity, "job_capacity")

    return decorate


def workers(
    min: int = 1, max: int | None = None, initial: int | None = None
) -> Callable[[_P], _P]:
    """Set the worker counts of the job built from the decorated processor.

    Shorthand for ``@job_capacity(Capacity(min_workers=min, max_workers=max,
    initial_workers=initial))``; ``max`` defaults to ``max(min, 1)`` and
    ``initial`` to ``min``.

    Raises:
        TypeError, ValueError: as :class:`Capacity` does, naming ``min``,
            ``max`` or ``initial``.

    .. versionadded:: 1.0
    """
    check_count("min", min, 0)
    if max is not None:
        check_count("max", max, 1)
    if initial is not None:
        check_count("initial", initial, 0)
    fields: dict[str, Any] = {"min_workers": min}
    if max is not None:
        if min > max:
            raise ValueError(f"min ({min}) must not exceed max ({max})")
        fields["max_workers"] = max
    if initial is not None:
        top = max if max is not None else (min if min > 0 else 1)
        if not min <= initial <= top:
            raise ValueError(f"initial ({initial}) must be within [min, max] = [{min}, {top}]")
        fields["initial_workers"] = initial
    capacity = Capacity(**fields)

    def decorate(processor: _P) -> _P:
        return _attach(processor, CAPACITY_ATTR, capacity, "workers")

    return decorate
