"""flowrhythm.testing.run_virtual: the same program, the same timeline, in no real time.

run_virtual starts its own event loop, so these are plain synchronous tests,
parametrised over the two backends it supports.
"""

from __future__ import annotations

import itertools
import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import pytest
from _support import VIRTUAL_BACKENDS

from flowrhythm import Capacity, Flow, Retry, ScalingEvent, UtilizationCapacity
from flowrhythm.testing import run_virtual


def runtime_errors(group: BaseException) -> list[BaseException]:
    """The RuntimeErrors inside (nested) exception groups."""
    if isinstance(group, BaseExceptionGroup):
        return [e for sub in group.exceptions for e in runtime_errors(sub)]
    return [group] if isinstance(group, RuntimeError) else []


@pytest.mark.parametrize("backend", VIRTUAL_BACKENDS)
@pytest.mark.timeout(30)  # a real hour would never finish: the clock must jump
def test_an_hour_of_sleep_takes_no_real_time(backend: str) -> None:
    async def main() -> float:
        start = anyio.current_time()
        await anyio.sleep(3600)
        return anyio.current_time() - start

    assert run_virtual(main, backend=backend) == 3600  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", VIRTUAL_BACKENDS)
def test_the_clock_starts_at_zero_and_stands_still_while_tasks_run(backend: str) -> None:
    async def main() -> list[float]:
        seen = [anyio.current_time()]
        for _ in range(1000):
            await anyio.lowlevel.checkpoint()
        seen.append(anyio.current_time())
        await anyio.sleep(0.25)
        seen.append(anyio.current_time())
        return seen

    assert run_virtual(main, backend=backend) == [0.0, 0.0, 0.25]  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", VIRTUAL_BACKENDS)
def test_timeouts_fire_at_their_virtual_deadline(backend: str) -> None:
    async def main() -> tuple[float, float]:
        with anyio.move_on_after(5) as scope:
            await anyio.sleep(10)
        assert scope.cancelled_caught
        moved = anyio.current_time()
        with pytest.raises(TimeoutError):
            with anyio.fail_after(2.5):
                await anyio.Event().wait()
        return moved, anyio.current_time()

    assert run_virtual(main, backend=backend) == (5.0, 7.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", VIRTUAL_BACKENDS)
def test_arguments_and_result_pass_through(backend: str) -> None:
    async def add(a: int, b: int) -> int:
        await anyio.sleep(1)
        return a + b

    assert run_virtual(add, 2, 3, backend=backend) == 5  # type: ignore[arg-type]


def test_an_unknown_backend_is_refused() -> None:
    async def main() -> None:
        pass

    with pytest.raises(ValueError, match="backend"):
        run_virtual(main, backend="curio")  # type: ignore[arg-type]


async def scaled_run(seed: int) -> list[tuple[Any, ...]]:
    """A flow that scales, retries and is rate limited; its whole timeline."""
    rng = random.Random(seed)
    durations = [rng.lognormvariate(-3, 1) for _ in range(400)]
    timeline: list[tuple[Any, ...]] = []

    def on_scale(event: ScalingEvent) -> None:
        timeline.append(("scale", event.job, round(event.time, 9), event.old, event.new))

    failed: set[int] = set()

    async def call(i: int) -> int:
        await anyio.sleep(durations[i])
        if i % 50 == 7 and i not in failed:
            failed.add(i)
            raise ConnectionError(i)
        return i

    async def sink(i: int) -> None:
        timeline.append(("done", i, round(anyio.current_time(), 9)))

    flow = (
        Flow()
        .add(
            call,
            name="call",
            capacity=UtilizationCapacity(min_workers=1, max_workers=16),
            retry=Retry(attempts=2, backoff=0.5, jitter=False),
        )
        .add(sink, capacity=Capacity(min_workers=1), max_per_second=200)
    )
    stats = await flow.run(range(400), on_scale=on_scale)
    timeline.append(("end", round(anyio.current_time(), 9), stats.jobs["call"].retried))
    return timeline


@pytest.mark.parametrize("backend", VIRTUAL_BACKENDS)
def test_the_same_program_gives_the_same_timeline(backend: str) -> None:
    first = run_virtual(scaled_run, 1, backend=backend)  # type: ignore[arg-type]
    second = run_virtual(scaled_run, 1, backend=backend)  # type: ignore[arg-type]
    assert first == second
    assert any(entry[0] == "scale" for entry in first)
    assert first[-1][2] == 8  # every eighth-of-fifty item failed once and was retried
    assert sorted(entry[1] for entry in first if entry[0] == "done") == list(range(400))


@pytest.mark.parametrize("backend", VIRTUAL_BACKENDS)
def test_retry_back_off_and_rate_limit_run_on_the_virtual_clock(backend: str) -> None:
    async def main() -> tuple[list[float], float]:
        calls: list[float] = []

        async def flaky(item: int) -> int:
            calls.append(anyio.current_time())
            if len(calls) < 3:
                raise ConnectionError("try again")
            return item

        await Flow().add(flaky, retry=Retry(attempts=3, backoff=2, jitter=False)).run([1])
        starts: list[float] = []

        async def limited(item: int) -> None:
            starts.append(anyio.current_time())

        begin = anyio.current_time()
        await Flow().add(limited, capacity=Capacity(min_workers=4), max_per_second=2).run(range(5))
        return calls, starts[-1] - begin

    calls, limited_span = run_virtual(main, backend=backend)  # type: ignore[arg-type]
    assert [round(b - a, 9) for a, b in itertools.pairwise(calls)] == [2.0, 4.0]
    assert limited_span == pytest.approx(2.0)  # five calls at 2 a second: 0, .5, 1, 1.5, 2


@pytest.mark.parametrize("backend", VIRTUAL_BACKENDS)
def test_processing_times_follow_the_virtual_clock(backend: str) -> None:
    async def main() -> tuple[float | None, float | None]:
        async def call(item: float) -> None:
            await anyio.sleep(item)

        stats = await Flow().add(call, name="call").run([0.2] * 9 + [3.0])
        job = stats.jobs["call"]
        return job.p50, job.p99

    assert run_virtual(main, backend=backend) == pytest.approx((0.2, 3.0))  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", VIRTUAL_BACKENDS)
@pytest.mark.parametrize("executor", ["thread", "process", "pool"])
def test_offloading_is_refused(backend: str, executor: str) -> None:
    with ThreadPoolExecutor(1) as pool:
        spec: Any = pool if executor == "pool" else executor

        async def main() -> None:
            await Flow().add(abs, executor=spec).run([-1, 2])

        with pytest.raises(BaseExceptionGroup) as caught:
            run_virtual(main, backend=backend)  # type: ignore[arg-type]
    (error,) = runtime_errors(caught.value)
    assert "run_virtual" in str(error)
    assert "executor=" in str(error)


@pytest.mark.parametrize("backend", VIRTUAL_BACKENDS)
def test_offloading_works_again_after_a_virtual_run(backend: str) -> None:
    async def virtual() -> None:
        await anyio.sleep(1)

    run_virtual(virtual, backend=backend)  # type: ignore[arg-type]

    async def real() -> Any:
        return await Flow().add(abs, executor="thread").run([-1, 2])

    stats = anyio.run(real, backend=backend)
    assert stats.jobs["abs"].completed == 2
