"""What a type checker says about adding a job (``mypy --strict tests`` checks this file).

A synchronous function needs ``executor=``: the overloads of ``Flow.add`` and
``Flow.add_job_with_lock`` make a type checker flag the line that forgets it
(an unused ``type: ignore`` is an error under ``--strict``, so these lines
fail the type check if the overloads stop flagging them), and the same line
raises :exc:`TypeError` at run time.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import pytest

from flowrhythm import Flow, ProcessorFactory


def parse(item: str) -> int:
    return len(item)


async def fetch(item: str) -> str:
    return item


async def split(item: str) -> AsyncIterator[str]:
    yield item


class Fetch:
    async def __call__(self, item: str) -> str:
        return item


def test_a_synchronous_function_without_executor_is_flagged_and_refused() -> None:
    with pytest.raises(TypeError, match="executor"):
        Flow().add(parse)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="executor"):
        Flow().add_job_with_lock(parse, anyio.Lock())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="executor"):
        Flow().add_error_job(parse)  # type: ignore[arg-type]


def test_every_kind_of_processor_type_checks() -> None:
    @contextlib.asynccontextmanager
    async def opened() -> AsyncIterator[Callable[[str], Awaitable[str]]]:
        yield fetch

    factory = ProcessorFactory(opened)
    flow = (
        Flow()
        .add(fetch)
        .add(split)
        .add(Fetch())
        .add(factory)
        .add(parse, executor="thread")
        .add_job_with_lock(fetch, anyio.Lock())
        .add_job_with_lock(parse, anyio.Lock(), executor="thread")
    )
    Flow().add(flow).add_error_job(fetch)
    Flow().add_error_job(parse, executor="thread")
    assert len(flow.describe().splitlines()) == 7
