"""The public façade: one flat namespace over private modules."""

from __future__ import annotations

import types

import pytest

import flowrhythm

#: The names the documented public API promises at the top level.
CONTRACT_NAMES = {
    "Capacity",
    "ErrorItem",
    "Flow",
    "FlowStats",
    "JobStats",
    "LastWorkItem",
    "ProcessorFactory",
    "RouteToErrorQueue",
    "RunningFlow",
    "StopProcessing",
    "Strategy",
    "UtilizationCapacity",
    "job_capacity",
    "job_name",
    "workers",
}


def test_all_is_sorted() -> None:
    assert flowrhythm.__all__ == sorted(flowrhythm.__all__)


def test_all_has_no_duplicates() -> None:
    assert len(flowrhythm.__all__) == len(set(flowrhythm.__all__))


def test_all_matches_the_public_names() -> None:
    public = {
        name
        for name, value in vars(flowrhythm).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(flowrhythm.__all__) == public


def test_contract_names_are_exported() -> None:
    assert CONTRACT_NAMES <= set(flowrhythm.__all__)


@pytest.mark.parametrize("name", sorted(flowrhythm.__all__))
def test_export_presents_the_public_module(name: str) -> None:
    assert getattr(flowrhythm, name).__module__ == "flowrhythm"


def test_control_exceptions_are_exceptions() -> None:
    # Both are routed/caught as ordinary exceptions, never BaseException-only.
    assert issubclass(flowrhythm.StopProcessing, Exception)
    assert issubclass(flowrhythm.RouteToErrorQueue, Exception)
    assert not issubclass(flowrhythm.LastWorkItem, BaseException)


def test_error_item_carries_its_fields() -> None:
    exc = ValueError("boom")
    error = flowrhythm.ErrorItem(item=41, exception=exc, job="parse")
    assert error.item == 41
    assert error.exception is exc
    assert error.job == "parse"


def test_the_testing_submodule_is_public() -> None:
    import flowrhythm.testing

    assert flowrhythm.testing.__all__ == ["run_virtual"]
    assert callable(flowrhythm.testing.run_virtual)
    assert flowrhythm.testing.run_virtual.__module__ == "flowrhythm.testing"


#: The names of adaptive concurrency, for remote services.
ADAPTIVE_NAMES = {"Adaptive", "LimitChange", "Overloaded"}


def test_adaptive_names_are_exported() -> None:
    assert ADAPTIVE_NAMES <= set(flowrhythm.__all__)
    # Overloaded is routed and retried as an ordinary exception.
    assert issubclass(flowrhythm.Overloaded, Exception)
