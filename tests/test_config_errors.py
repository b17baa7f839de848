"""Bad configuration: every invalid value of every public option raises at construction.

Each table row is one invalid value of one field. As the docs promise: the
constructor (or ``Flow.add``, or the decorator) raises -- ``TypeError`` for a value of
the wrong type (``bool`` where a number is expected included: ``True`` is an ``int`` to
Python, never a worker count to a person), ``ValueError`` for a value out of range
(NaN, infinities where a finite number is needed, negatives, inverted ranges) -- and the
message names the field, so that the user finds the line to fix.
"""

from __future__ import annotations

import math
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import pytest

from flowrhythm import (
    Batch,
    Capacity,
    Flow,
    ProcessorFactory,
    QueueDepthStrategy,
    Retry,
    Strategy,
    UtilizationCapacity,
    UtilizationStrategy,
    job_capacity,
    job_name,
    record,
    workers,
)

NAN = math.nan
INF = math.inf


def param(kwargs: dict[str, Any], error: type[Exception], field: str, id: str) -> Any:
    return pytest.param(kwargs, error, field, id=id)


def raises_naming(error: type[Exception], field: str) -> pytest.RaisesExc[Exception]:
    """``error`` whose message names ``field`` (as a whole word)."""
    return pytest.raises(error, match=rf"\b{field}\b")


# -- the worker-count fields shared by Capacity and UtilizationCapacity ------------------------

COUNT_FIELDS = ("min_workers", "max_workers", "initial_workers", "queue_length")

BAD_COUNT_TYPES: list[Any] = [
    pytest.param(True, id="True"),
    pytest.param(False, id="False"),
    pytest.param(1.0, id="float"),
    pytest.param(NAN, id="nan"),
    pytest.param(INF, id="inf"),
    pytest.param("1", id="str"),
    pytest.param(None, id="None"),
]

INVALID_CAPACITY: list[Any] = [
    param({"min_workers": -1}, ValueError, "min_workers", "negative-min"),
    param({"max_workers": -1}, ValueError, "max_workers", "negative-max"),
    param({"max_workers": 0}, ValueError, "max_workers", "zero-max"),
    param({"min_workers": 0, "max_workers": 0}, ValueError, "max_workers", "zero-max-zero-min"),
    param({"initial_workers": -1}, ValueError, "initial_workers", "negative-initial"),
    param({"queue_length": -1}, ValueError, "queue_length", "negative-queue"),
    param({"min_workers": 5, "max_workers": 4}, ValueError, "min_workers", "inverted-range"),
    param(
        {"min_workers": 1, "max_workers": 4, "initial_workers": 5},
        ValueError,
        "initial_workers",
        "initial-above-max",
    ),
    param(
        {"min_workers": 2, "max_workers": 4, "initial_workers": 1},
        ValueError,
        "initial_workers",
        "initial-below-min",
    ),
    param(
        {"min_workers": 0, "initial_workers": 2},
        ValueError,
        "initial_workers",
        "initial-above-default-max",
    ),
]

INVALID_UTILIZATION: list[Any] = [
    *INVALID_CAPACITY,
    *(
        param({name: value}, error, name, f"{name}-{label}")
        for name in ("lower_threshold", "upper_threshold", "cooldown", "sampling", "dampening")
        for value, error, label in (
            (True, TypeError, "True"),
            ("0.5", TypeError, "str"),
            (None, TypeError, "None"),
            (NAN, ValueError, "nan"),
            (-INF, ValueError, "minus-inf"),
            (-0.5, ValueError, "negative"),
        )
    ),
    param({"lower_threshold": 1.5}, ValueError, "lower_threshold", "lower-above-1"),
    param({"upper_threshold": 1.5}, ValueError, "upper_threshold", "upper-above-1"),
    param({"upper_threshold": INF}, ValueError, "upper_threshold", "upper-inf"),
    param(
        {"lower_threshold": 0.6, "upper_threshold": 0.4},
        ValueError,
        "lower_threshold",
        "inverted-thresholds",
    ),
    param(
        {"lower_threshold": 0.5, "upper_threshold": 0.5},
        ValueError,
        "upper_threshold",
        "equal-thresholds",
    ),
    param({"sampling": 0}, ValueError, "sampling", "zero-sampling"),
    param({"sampling": 0.0}, ValueError, "sampling", "zero-float-sampling"),
    param({"dampening": 1.0}, ValueError, "dampening", "dampening-1"),
    param({"dampening": 2}, ValueError, "dampening", "dampening-2"),
    param({"strategy": "utilization"}, TypeError, "strategy", "strategy-str"),
    param({"strategy": 3}, TypeError, "strategy", "strategy-int"),
    param({"strategy": None}, TypeError, "strategy", "strategy-None"),
    param({"strategy": UtilizationStrategy()}, TypeError, "strategy", "strategy-instance"),
]


@pytest.mark.parametrize("field", COUNT_FIELDS)
@pytest.mark.parametrize("value", BAD_COUNT_TYPES)
@pytest.mark.parametrize("cls", [Capacity, UtilizationCapacity])
def test_capacity_count_of_the_wrong_type(cls: type[Capacity], field: str, value: object) -> None:
    # a float (even 1.0, NaN or infinity), a bool, a str or None is not a count
    with raises_naming(TypeError, field):
        cls(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(("kwargs", "error", "field"), INVALID_CAPACITY)
def test_invalid_capacity(kwargs: dict[str, Any], error: type[Exception], field: str) -> None:
    with raises_naming(error, field):
        Capacity(**kwargs)


@pytest.mark.parametrize(("kwargs", "error", "field"), INVALID_UTILIZATION)
def test_invalid_utilization_capacity(
    kwargs: dict[str, Any], error: type[Exception], field: str
) -> None:
    with raises_naming(error, field):
        UtilizationCapacity(**kwargs)


def test_capacity_fields_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        Capacity(1, 2)  # type: ignore[call-arg]


async def _async_factory() -> UtilizationStrategy:
    return UtilizationStrategy()


def test_async_strategy_factory_is_refused_at_construction() -> None:
    """``strategy=`` is called with no arguments and must *return* a strategy.

    An ``async def`` returns a coroutine, never a strategy: like a synchronous
    processor, it can be told apart at construction (``inspect.iscoroutinefunction``)
    instead of failing every run later, with a "coroutine was never awaited" warning.
    """
    with raises_naming(TypeError, "strategy"):
        UtilizationCapacity(strategy=_async_factory)


@pytest.mark.parametrize("member", list(Strategy))
def test_every_strategy_member_is_accepted(member: Strategy) -> None:
    assert UtilizationCapacity(min_workers=0, max_workers=3, strategy=member).strategy is member


# -- QueueDepthStrategy and UtilizationStrategy ------------------------------------------------


@pytest.mark.parametrize(
    ("value", "error"),
    [
        pytest.param(0, ValueError, id="zero"),
        pytest.param(-1, ValueError, id="negative"),
        pytest.param(NAN, ValueError, id="nan"),
        pytest.param(INF, ValueError, id="inf"),
        pytest.param(True, TypeError, id="True"),
        pytest.param("10", TypeError, id="str"),
        pytest.param(None, TypeError, id="None"),
    ],
)
def test_invalid_items_per_worker(value: object, error: type[Exception]) -> None:
    with raises_naming(error, "items_per_worker"):
        QueueDepthStrategy(items_per_worker=value)  # type: ignore[arg-type]


INVALID_UTILIZATION_STRATEGY: list[Any] = [
    param({"drain_time": 0}, ValueError, "drain_time", "drain-time-zero"),
    param({"drain_time": -1.0}, ValueError, "drain_time", "drain-time-negative"),
    param({"drain_time": NAN}, ValueError, "drain_time", "drain-time-nan"),
    param({"drain_time": True}, TypeError, "drain_time", "drain-time-True"),
    param({"blocked_limit": -0.1}, ValueError, "blocked_limit", "blocked-limit-negative"),
    param({"blocked_limit": 1.5}, ValueError, "blocked_limit", "blocked-limit-above-1"),
    param({"blocked_limit": NAN}, ValueError, "blocked_limit", "blocked-limit-nan"),
    param({"ineffective_gain": -1.0}, ValueError, "ineffective_gain", "gain-negative"),
    param({"ineffective_gain": "x"}, TypeError, "ineffective_gain", "gain-str"),
    param({"probe_after": -1.0}, ValueError, "probe_after", "probe-negative"),
    param({"probe_after": NAN}, ValueError, "probe_after", "probe-nan"),
    param({"max_probe_after": -1.0}, ValueError, "max_probe_after", "max-probe-negative"),
    param(
        {"probe_after": 10.0, "max_probe_after": 1.0},
        ValueError,
        "max_probe_after",
        "inverted-probe-range",
    ),
]


@pytest.mark.parametrize(("kwargs", "error", "field"), INVALID_UTILIZATION_STRATEGY)
def test_invalid_utilization_strategy(
    kwargs: dict[str, Any], error: type[Exception], field: str
) -> None:
    """``UtilizationStrategy`` is public and takes options: they are validated too.

    Today none is: ``UtilizationStrategy(drain_time=0)`` constructs, and the first
    scale-up decision divides by zero inside the scaler, failing the run.
    """
    with raises_naming(error, field):
        UtilizationStrategy(**kwargs)


# -- decorators --------------------------------------------------------------------------------

INVALID_WORKERS: list[Any] = [
    *(
        param({name: value}, TypeError, name, f"{name}-{label}")
        for name in ("min", "max", "initial")
        for value, label in ((True, "True"), (1.5, "float"), (NAN, "nan"), ("2", "str"))
    ),
    param({"min": -1}, ValueError, "min", "negative-min"),
    param({"max": 0}, ValueError, "max", "zero-max"),
    param({"max": -2}, ValueError, "max", "negative-max"),
    param({"initial": -1}, ValueError, "initial", "negative-initial"),
    param({"min": 4, "max": 2}, ValueError, "min", "inverted-range"),
    param({"min": 1, "max": 3, "initial": 4}, ValueError, "initial", "initial-above-max"),
    param({"min": 2, "max": 3, "initial": 1}, ValueError, "initial", "initial-below-min"),
    param({"min": 0, "initial": 2}, ValueError, "initial", "initial-above-default-max"),
]


@pytest.mark.parametrize(("kwargs", "error", "field"), INVALID_WORKERS)
def test_invalid_workers_decorator(
    kwargs: dict[str, Any], error: type[Exception], field: str
) -> None:
    with raises_naming(error, field):
        workers(**kwargs)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        pytest.param("", ValueError, id="empty"),
        pytest.param(None, TypeError, id="None"),
        pytest.param(1, TypeError, id="int"),
        pytest.param(b"name", TypeError, id="bytes"),
    ],
)
def test_invalid_job_name(value: object, error: type[Exception]) -> None:
    with raises_naming(error, "name"):
        job_name(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(None, id="None"),
        pytest.param(4, id="int"),
        pytest.param({"max_workers": 4}, id="dict"),
        pytest.param(Capacity, id="class"),
        pytest.param(UtilizationStrategy(), id="strategy"),
    ],
)
def test_invalid_job_capacity(value: object) -> None:
    with raises_naming(TypeError, "capacity"):
        job_capacity(value)  # type: ignore[arg-type]


# -- Retry and Batch ---------------------------------------------------------------------------

INVALID_RETRY: list[Any] = [
    param({"attempts": 0}, ValueError, "attempts", "attempts-zero"),
    param({"attempts": -3}, ValueError, "attempts", "attempts-negative"),
    param({"attempts": True}, TypeError, "attempts", "attempts-True"),
    param({"attempts": 2.0}, TypeError, "attempts", "attempts-float"),
    param({"attempts": NAN}, TypeError, "attempts", "attempts-nan"),
    param({"attempts": None}, TypeError, "attempts", "attempts-None"),
    *(
        param({name: value}, error, name, f"{name}-{label}")
        for name in ("backoff", "max_backoff")
        for value, error, label in (
            (-0.1, ValueError, "negative"),
            (-INF, ValueError, "minus-inf"),
            (NAN, ValueError, "nan"),
            (True, TypeError, "True"),
            ("1", TypeError, "str"),
            (None, TypeError, "None"),
        )
    ),
    param({"jitter": 1}, TypeError, "jitter", "jitter-int"),
    param({"jitter": "yes"}, TypeError, "jitter", "jitter-str"),
    param({"jitter": None}, TypeError, "jitter", "jitter-None"),
    param({"on": ValueError()}, TypeError, "on", "on-instance"),
    param({"on": int}, TypeError, "on", "on-not-an-exception"),
    param({"on": KeyboardInterrupt}, TypeError, "on", "on-base-exception"),
    param({"on": ()}, TypeError, "on", "on-empty"),
    param({"on": (ValueError, "x")}, TypeError, "on", "on-mixed"),
    param({"on": [ValueError]}, TypeError, "on", "on-list"),
    param({"backoff": INF}, ValueError, "backoff", "backoff-inf"),
]


@pytest.mark.parametrize(("kwargs", "error", "field"), INVALID_RETRY)
def test_invalid_retry(kwargs: dict[str, Any], error: type[Exception], field: str) -> None:
    with raises_naming(error, field):
        Retry(**kwargs)


INVALID_BATCH: list[Any] = [
    param({"size": 0}, ValueError, "size", "size-zero"),
    param({"size": -1}, ValueError, "size", "size-negative"),
    param({"size": True}, TypeError, "size", "size-True"),
    param({"size": 10.0}, TypeError, "size", "size-float"),
    param({"size": NAN}, TypeError, "size", "size-nan"),
    param({"size": None}, TypeError, "size", "size-None"),
    param({"timeout": -0.01}, ValueError, "timeout", "timeout-negative"),
    param({"timeout": NAN}, ValueError, "timeout", "timeout-nan"),
    param({"timeout": -INF}, ValueError, "timeout", "timeout-minus-inf"),
    param({"timeout": True}, TypeError, "timeout", "timeout-True"),
    param({"timeout": "0.1"}, TypeError, "timeout", "timeout-str"),
    param({"timeout": None}, TypeError, "timeout", "timeout-None"),
]


@pytest.mark.parametrize(("kwargs", "error", "field"), INVALID_BATCH)
def test_invalid_batch(kwargs: dict[str, Any], error: type[Exception], field: str) -> None:
    with raises_naming(error, field):
        Batch(**kwargs)


# -- Flow.add / add_job / add_job_with_lock / add_error_job options ----------------------------


async def identity(item: Any) -> Any:
    return item


def sync_identity(item: Any) -> Any:
    return item


INVALID_JOB_OPTIONS: list[Any] = [
    *(
        param({name: value}, error, name, f"{name}-{label}")
        for name in ("timeout", "max_per_second")
        for value, error, label in (
            (0, ValueError, "zero"),
            (0.0, ValueError, "zero-float"),
            (-1, ValueError, "negative"),
            (NAN, ValueError, "nan"),
            (-INF, ValueError, "minus-inf"),
            (True, TypeError, "True"),
            ("1", TypeError, "str"),
        )
    ),
    param({"ordered": 1}, TypeError, "ordered", "ordered-int"),
    param({"ordered": "yes"}, TypeError, "ordered", "ordered-str"),
    param({"ordered": None}, TypeError, "ordered", "ordered-None"),
    param({"retry": 3}, TypeError, "retry", "retry-int"),
    param({"retry": Retry}, TypeError, "retry", "retry-class"),
    param({"retry": {"attempts": 3}}, TypeError, "retry", "retry-dict"),
    param({"retry": Batch()}, TypeError, "retry", "retry-batch"),
    param({"batch": 10}, TypeError, "batch", "batch-int"),
    param({"batch": Batch}, TypeError, "batch", "batch-class"),
    param({"batch": Retry()}, TypeError, "batch", "batch-retry"),
    param({"name": ""}, ValueError, "name", "name-empty"),
    param({"name": 1}, TypeError, "name", "name-int"),
    param({"name": b"job"}, TypeError, "name", "name-bytes"),
    param({"capacity": 4}, TypeError, "capacity", "capacity-int"),
    param({"capacity": {"max_workers": 4}}, TypeError, "capacity", "capacity-dict"),
    param({"capacity": Capacity}, TypeError, "capacity", "capacity-class"),
    param({"executor": "threads"}, ValueError, "executor", "executor-unknown-name"),
    param({"executor": ""}, ValueError, "executor", "executor-empty"),
    param({"executor": 1}, TypeError, "executor", "executor-int"),
    param({"executor": ThreadPoolExecutor}, TypeError, "executor", "executor-class"),
    param({"executor": True}, TypeError, "executor", "executor-True"),
]

ADDERS: list[Any] = [
    pytest.param(lambda flow, fn, kw: flow.add(fn, **kw), id="add"),
    pytest.param(lambda flow, fn, kw: flow.add_job(fn, **kw), id="add_job"),
    pytest.param(
        lambda flow, fn, kw: flow.add_job_with_lock(fn, anyio.Lock(), **kw),
        id="add_job_with_lock",
    ),
    pytest.param(lambda flow, fn, kw: flow.add_error_job(fn, **kw), id="add_error_job"),
]

Adder = Callable[[Flow, Any, dict[str, Any]], Flow]


@pytest.mark.parametrize("adder", ADDERS)
@pytest.mark.parametrize(("kwargs", "error", "field"), INVALID_JOB_OPTIONS)
def test_invalid_job_option(
    adder: Adder, kwargs: dict[str, Any], error: type[Exception], field: str
) -> None:
    flow = Flow()
    # an executor option needs a synchronous callable, every other one an async one
    fn = sync_identity if "executor" in kwargs else identity
    with raises_naming(error, field):
        adder(flow, fn, kwargs)


@pytest.mark.parametrize("adder", ADDERS)
@pytest.mark.parametrize(
    "processor",
    [
        pytest.param(sync_identity, id="sync-function"),
        pytest.param(lambda item: identity(item), id="lambda-returning-a-coroutine"),
        pytest.param(print, id="builtin"),
        pytest.param(int, id="class"),
        pytest.param(threading.Lock(), id="not-callable"),
        pytest.param(None, id="None"),
        pytest.param("identity", id="str"),
    ],
)
def test_processor_that_is_not_async_is_refused(adder: Adder, processor: object) -> None:
    with pytest.raises(TypeError, match="async"):
        adder(Flow(), processor, {})


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_async_processor_with_an_executor_is_refused(executor: str) -> None:
    with raises_naming(TypeError, "executor"):
        Flow().add(identity, executor=executor)  # type: ignore[call-overload]


def test_lock_that_is_not_an_async_context_manager_is_refused() -> None:
    with raises_naming(TypeError, "resource_manager"):
        Flow().add_job_with_lock(identity, threading.Lock())  # type: ignore[call-overload]


def test_second_error_job_is_refused() -> None:
    flow = Flow().add_error_job(identity)
    with pytest.raises(ValueError, match="error job"):
        flow.add_error_job(identity)


async def _async_make() -> Any:  # an async def is not a factory of context managers
    return None


@pytest.mark.parametrize(
    "make",
    [pytest.param(None, id="None"), pytest.param(3, id="int"), pytest.param("x", id="str")],
)
def test_processor_factory_needs_a_callable(make: object) -> None:
    with raises_naming(TypeError, "make"):
        ProcessorFactory(make)  # type: ignore[arg-type]


def test_processor_factory_of_an_async_function_is_refused_at_construction() -> None:
    """``make()`` must return an async context manager; an ``async def`` returns a coroutine.

    Today it is accepted, and every worker of every run then fails with "must return an
    async context manager", dropping the coroutine un-awaited (a RuntimeWarning, which
    ``filterwarnings = error`` turns into a second failure).
    """
    with raises_naming(TypeError, "make"):
        ProcessorFactory(_async_make)  # type: ignore[arg-type]


async def call(flow: Flow, method: str, *args: Any, **kwargs: Any) -> None:
    """Call ``flow.run`` / ``flow.stream`` / ``flow.start`` (never entering the run)."""
    if method == "run":
        await flow.run(*args, **kwargs)
    else:
        getattr(flow, method)(*args, **kwargs)
    raise AssertionError(f"flow.{method} accepted {args} {kwargs}")


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["run", "stream", "start"])
@pytest.mark.parametrize("on_scale", [42, "log", UtilizationStrategy()])
async def test_on_scale_must_be_callable(method: str, on_scale: object) -> None:
    args: tuple[Any, ...] = () if method == "start" else ([],)
    with raises_naming(TypeError, "on_scale"):
        await call(Flow().add(identity), method, *args, on_scale=on_scale)


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["run", "stream"])
@pytest.mark.parametrize("source", [None, 42, identity])
async def test_source_must_be_iterable(method: str, source: object) -> None:
    with raises_naming(TypeError, "source"):
        await call(Flow().add(identity), method, source)


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["run", "stream", "start"])
async def test_flow_without_jobs_is_refused(method: str) -> None:
    args: tuple[Any, ...] = () if method == "start" else ([],)
    with pytest.raises(ValueError, match="no jobs"):
        await call(Flow(), method, *args)


# -- record(interval, max_samples) -------------------------------------------------------------

INVALID_RECORD: list[Any] = [
    param({"interval": 0}, ValueError, "interval", "interval-zero"),
    param({"interval": -0.1}, ValueError, "interval", "interval-negative"),
    param({"interval": NAN}, ValueError, "interval", "interval-nan"),
    param({"interval": True}, TypeError, "interval", "interval-True"),
    param({"interval": "0.1"}, TypeError, "interval", "interval-str"),
    param({"max_samples": 0}, ValueError, "max_samples", "max-samples-zero"),
    param({"max_samples": -5}, ValueError, "max_samples", "max-samples-negative"),
    param({"max_samples": True}, TypeError, "max_samples", "max-samples-True"),
    param({"max_samples": 10.0}, TypeError, "max_samples", "max-samples-float"),
]


@pytest.fixture
async def running() -> AsyncIterator[Any]:
    async with Flow().add(identity).start() as running:
        yield running


@pytest.mark.anyio
@pytest.mark.parametrize(("kwargs", "error", "field"), INVALID_RECORD)
async def test_invalid_record_options_refused_on_entry(
    running: Any, kwargs: dict[str, Any], error: type[Exception], field: str
) -> None:
    with raises_naming(error, field):
        async with record(running, **kwargs):
            pass


@pytest.mark.parametrize(("kwargs", "error", "field"), INVALID_RECORD)
def test_invalid_record_options_refused_at_construction(
    kwargs: dict[str, Any], error: type[Exception], field: str
) -> None:
    """``record(...)`` is the constructor of the recorder: it checks its arguments there,
    not only at ``async with`` (as it once did, being an ``@asynccontextmanager``)."""
    with raises_naming(error, field):
        record(object(), **kwargs)  # type: ignore[arg-type]
