"""flowrhythm.prometheus: a collector scraped over HTTP while a flow runs."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import anyio
import anyio.to_thread
import httpx
import pytest
from _support import (
    HANG_GUARD,
    swallow,
    wait_until,
)
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from flowrhythm import Capacity, Flow, Retry, StopProcessing
from flowrhythm.prometheus import FlowCollector

pytestmark = pytest.mark.anyio

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics_url(registry: CollectorRegistry) -> Iterator[str]:
    """A real Prometheus HTTP endpoint for ``registry`` on 127.0.0.1 (a free port)."""
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"http://127.0.0.1:{server.server_port}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def scrape(url: str) -> Samples:
    """GET the endpoint from another thread, as Prometheus would, and parse the text."""

    def get() -> str:
        response = httpx.get(url, timeout=HANG_GUARD)
        response.raise_for_status()
        return response.text

    text = await anyio.to_thread.run_sync(get)
    return parse(text)


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


class Flaky:
    """Fails item 1 once (then it passes), fails item 2 always; skips item 4."""

    def __init__(self) -> None:
        self.calls: dict[int, int] = {}

    async def __call__(self, item: int) -> int:
        self.calls[item] = self.calls.get(item, 0) + 1
        if item == 1 and self.calls[item] == 1:
            raise ConnectionError(item)
        if item == 2:
            raise ValueError(item)
        if item == 4:
            raise StopProcessing
        return item


async def test_scrape_over_http_during_and_after_a_run(
    registry: CollectorRegistry, metrics_url: str
) -> None:
    release = anyio.Event()

    async def fetch(item: int) -> int:
        if item == 9:
            await release.wait()
        return item

    flow = (
        Flow(name="crawler")
        .add(fetch, Capacity(min_workers=2, max_workers=2, queue_length=10))
        .add(
            Flaky(),
            Capacity(min_workers=1, max_workers=1),
            name="check",
            retry=Retry(attempts=2, backoff=0),
        )
        .add_error_job(swallow, name="errors")
    )
    with anyio.fail_after(HANG_GUARD):
        async with flow.start() as running:
            collector = FlowCollector(running, flow=flow, registry=registry)
            for item in [0, 1, 2, 3, 4, 9]:
                await running.send(item)
            await wait_until(lambda: running.stats().jobs["check"].received == 5)
            await wait_until(lambda: running.stats().jobs["errors"].completed == 1)

            during = await scrape(metrics_url)
            crawler = {"flow": "crawler"}
            fetch_job = {"flow": "crawler", "job": "fetch"}
            check = {"flow": "crawler", "job": "check"}
            assert value(during, "flowrhythm_flow_items_in_total", **crawler) == 6
            assert value(during, "flowrhythm_flow_done", **crawler) == 0
            assert value(during, "flowrhythm_job_received_total", **fetch_job) == 6
            assert value(during, "flowrhythm_job_completed_total", **fetch_job) == 5
            assert value(during, "flowrhythm_job_workers", state="active", **fetch_job) == 1
            assert value(during, "flowrhythm_job_workers", state="idle", **fetch_job) == 1
            assert value(during, "flowrhythm_job_max_workers", **fetch_job) == 2
            assert value(during, "flowrhythm_job_queue_length", **fetch_job) == 10
            assert value(during, "flowrhythm_job_queue_depth", **fetch_job) == 0
            assert value(during, "flowrhythm_job_completed_total", **check) == 3
            assert value(during, "flowrhythm_job_errored_total", **check) == 1
            assert value(during, "flowrhythm_job_skipped_total", **check) == 1
            # item 1 once, item 2 once (two attempts each)
            assert value(during, "flowrhythm_job_retried_total", **check) == 2
            assert value(during, "flowrhythm_job_scale_events_total", direction="up", **check) == 0
            assert value(during, "flowrhythm_job_processing_seconds", quantile="0.5", **check) >= 0
            assert value(during, "flowrhythm_job_worker_seconds_total", state="idle", **check) > 0
            release.set()

    after = await scrape(metrics_url)
    assert value(after, "flowrhythm_flow_done", flow="crawler") == 1
    assert value(after, "flowrhythm_flow_items_out_total", flow="crawler") == 4
    assert value(after, "flowrhythm_job_completed_total", flow="crawler", job="fetch") == 6
    collector.unregister()
    assert await scrape(metrics_url) == {}


async def test_two_flows_share_a_registry(registry: CollectorRegistry) -> None:
    async def inc(item: int) -> int:
        return item + 1

    flow_a = Flow(name="a").add(inc)
    flow_b = Flow(name="b").add(inc)
    with anyio.fail_after(HANG_GUARD):
        async with flow_a.start() as running_a, flow_b.start() as running_b:
            FlowCollector(running_a, flow=flow_a, registry=registry)
            FlowCollector(running_b, flow="b", registry=registry)
            for item in range(3):
                await running_a.send(item)
            await running_b.send(0)
            await wait_until(lambda: running_a.stats().jobs["inc"].completed == 3)
            await wait_until(lambda: running_b.stats().jobs["inc"].completed == 1)
            # A scrape in the event loop's own thread reads stats() directly.
            samples = parse(generate_latest(registry).decode())
    assert value(samples, "flowrhythm_job_completed_total", flow="a", job="inc") == 3
    assert value(samples, "flowrhythm_job_completed_total", flow="b", job="inc") == 1


def test_after_the_event_loop_ended_the_last_snapshot_is_reported() -> None:
    registry = CollectorRegistry()

    async def main() -> None:
        async def inc(item: int) -> int:
            return item + 1

        flow = Flow(name="short").add(inc)
        async with flow.start() as running:
            FlowCollector(running, flow=flow, registry=registry)
            await running.send(1)
            await wait_until(lambda: running.stats().jobs["inc"].completed == 1)
            generate_latest(registry)  # a scrape while the run goes on
            running.stop()

    anyio.run(main)
    result: list[bytes] = []
    thread = threading.Thread(target=lambda: result.append(generate_latest(registry)))
    thread.start()
    thread.join()
    samples = parse(result[0].decode())
    assert value(samples, "flowrhythm_job_completed_total", flow="short", job="inc") == 1
    assert value(samples, "flowrhythm_flow_done", flow="short") == 0  # it was stopped


async def test_bad_arguments() -> None:
    async def inc(item: int) -> int:
        return item + 1

    async with Flow().add(inc).start() as running:
        with pytest.raises(ValueError, match="no name"):
            FlowCollector(running, flow=Flow(), registry=None)
        with pytest.raises(ValueError, match="flow must not be empty"):
            FlowCollector(running, flow="", registry=None)
        with pytest.raises(TypeError, match="flow must be a str"):
            FlowCollector(running, flow=3, registry=None)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="stats"):
            FlowCollector(object(), flow="x", registry=None)  # type: ignore[arg-type]


def test_created_outside_an_event_loop_it_says_so() -> None:
    class Source:
        def stats(self) -> None: ...

    with pytest.raises(anyio.NoEventLoopError):
        FlowCollector(Source(), flow="x", registry=None)  # type: ignore[arg-type]


def test_flow_name_is_validated() -> None:
    assert Flow(name="crawler").name == "crawler"
    assert Flow().name is None
    with pytest.raises(TypeError, match="name must be a str"):
        Flow(name=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name must not be empty"):
        Flow(name="")


def test_metric_names_follow_the_prometheus_conventions() -> None:
    from flowrhythm import FlowStats, JobStats
    from flowrhythm.prometheus import families

    job = JobStats(
        name="j",
        workers=1,
        idle=1,
        active=0,
        blocked=0,
        queue_depth=0,
        queue_length=1,
        min_workers=1,
        max_workers=1,
        received=0,
        completed=0,
        skipped=0,
        errored=0,
        retried=0,
        scale_ups=0,
        scale_downs=0,
        active_seconds=0.0,
        idle_seconds=0.0,
        blocked_seconds=0.0,
    )
    stats = FlowStats(jobs={"j": job}, items_in=0, items_out=0, elapsed=0.0, done=False)
    for family in families(stats, "f"):
        assert family.name.startswith("flowrhythm_")
        for sample in family.samples:
            if family.type == "counter":
                assert sample.name.endswith("_total")
            assert sample.labels["flow"] == "f"
