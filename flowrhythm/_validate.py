"""Small validators shared by the public config values.

Each raises at the line the user wrote (the constructor call), with a message
that names the field. ``bool`` is refused where a number is expected: ``True``
is an ``int`` to Python, never a worker count to a person.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any

import attrs


def count(minimum: int) -> Any:
    """An attrs validator: an ``int`` (not ``bool``) that is ``>= minimum``."""

    def check(inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
        check_count(attribute.name, value, minimum)

    return check


def check_count(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        if minimum == 0:
            raise ValueError(f"{name} must not be negative, got {value!r}")
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


def check_number(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    allow_inf: bool = False,
) -> float:
    """Check a real number against a range; return it as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float
        raise ValueError(f"{name} must be a finite number, got {value!r}") from None
    if math.isnan(number) or (math.isinf(number) and not allow_inf):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (number < low or (low_open and number == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low:g}, got {value!r}")
    if high is not None and (number > high or (high_open and number == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high:g}, got {value!r}")
    return number


def number(**bounds: Any) -> Any:
    """An attrs validator wrapping :func:`check_number`."""

    def check(inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
        check_number(attribute.name, value, **bounds)

    return check


def function_of(obj: object) -> object:
    """The function that runs when ``obj`` is called (through partials and ``__call__``)."""
    while isinstance(obj, functools.partial):
        obj = obj.func
    if inspect.isroutine(obj) or inspect.isclass(obj):
        return obj
    return getattr(type(obj), "__call__", None)  # noqa: B004 - the class attribute
