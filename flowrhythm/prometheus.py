"""Metrics of a running flow for Prometheus, read at scrape time.

:class:`FlowCollector` is a custom collector for `prometheus_client`_: every
time Prometheus scrapes the registry it is registered with, it takes one
``stats()`` snapshot of the run and turns it into metric families. Nothing is
counted per item beyond what flowrhythm counts anyway, so it costs nothing
between scrapes.

prometheus_client is optional: install flowrhythm with the ``prometheus`` extra
(``pip install ".[prometheus]"`` in a clone).

Example::

    from prometheus_client import start_http_server

    from flowrhythm import Flow
    from flowrhythm.prometheus import FlowCollector

    flow = Flow(name="crawler").add(fetch).add(parse)
    start_http_server(9100)
    async with flow.start() as running:
        collector = FlowCollector(running, flow=flow)
        ...
    collector.unregister()

Every metric has the labels ``flow`` (the flow's name) and ``job``; the names
follow the Prometheus naming conventions (``_total`` for counters, base units
such as ``_seconds``). The docs page "Observing a run" lists them.

.. _prometheus_client: https://prometheus.github.io/client_python/

.. versionadded:: 1.0
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import final

import anyio
import anyio.from_thread
import anyio.lowlevel

try:
    from prometheus_client.core import (
        REGISTRY,
        CounterMetricFamily,
        GaugeMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector, CollectorRegistry
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "flowrhythm.prometheus needs prometheus_client: install flowrhythm with its "
        '"prometheus" extra (pip install ".[prometheus]" in a clone of flowrhythm)'
    ) from exc

from ._decorators import check_name
from ._flow import Flow
from ._stats import FlowStats, StatsSource

__all__ = ["FlowCollector"]

#: Label names of the per-job metrics.
JOB_LABELS = ("flow", "job")


def _flow_label(flow: object) -> str:
    name = getattr(flow, "name", flow) if not isinstance(flow, str) else flow
    if name is None:
        raise ValueError(
            "flow: the Flow has no name; give it one with Flow(name=...) or pass flow='...'"
        )
    return check_name(name, field="flow")


@final
class FlowCollector(Collector):
    """A Prometheus collector for one run of a flow.

    Create it inside the run (in the run's event loop); from then on, every
    scrape of ``registry`` reads ``running.stats()`` once. A scrape served by
    another thread (``prometheus_client.start_http_server``) asks the event
    loop for the snapshot, so the counters are always read where the run
    changes them. Once the run's event loop has ended, the collector reports
    the last snapshot it took.

    Args:
        running: the run: a :class:`~flowrhythm.RunningFlow`, or the results of
            :meth:`Flow.stream() <flowrhythm.Flow.stream>`.
        flow: keyword-only: the ``flow`` label — the :class:`~flowrhythm.Flow`
            (its ``name``) or a name. Give every flow scraped from one registry
            its own name: Prometheus rejects a scrape with repeated series.
        registry: keyword-only: the registry to register with (the default is
            prometheus_client's global ``REGISTRY``); ``None`` to register it
            yourself.

    Raises:
        TypeError: ``running`` has no ``stats()``, or the name is not a ``str``.
        ValueError: the name is empty, or the :class:`~flowrhythm.Flow` has none.
        anyio.NoEventLoopError: created outside an event loop.

    .. versionadded:: 1.0
    """

    def __init__(
        self,
        running: StatsSource,
        *,
        flow: Flow | str,
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        if not callable(getattr(running, "stats", None)):
            raise TypeError(f"running must have a stats() method, got {running!r}")
        self._running = running
        self._flow = _flow_label(flow)
        self._token = anyio.lowlevel.current_token()
        self._thread = threading.get_ident()
        self._last: FlowStats | None = None
        self._registry = registry
        if registry is not None:
            registry.register(self)

    @property
    def flow(self) -> str:
        """The value of the ``flow`` label."""
        return self._flow

    def unregister(self) -> None:
        """Remove the collector from the registry it registered with (if any)."""
        if self._registry is not None:
            self._registry.unregister(self)
            self._registry = None

    def describe(self) -> list[Metric]:
        # No fixed description: several flows (several collectors) may share the
        # metric names in one registry, told apart by the ``flow`` label.
        return []

    def snapshot(self) -> FlowStats | None:
        """The stats a scrape reports now; ``None`` if there are none to report."""
        if self._last is not None and self._last.done:
            return self._last  # the run has drained: its counters no longer change
        try:
            if threading.get_ident() == self._thread:
                stats = self._running.stats()
            else:
                stats = anyio.from_thread.run_sync(self._running.stats, token=self._token)
        except RuntimeError:
            # The run's event loop is gone (anyio.RunFinishedError, or called in
            # its thread after it ended): its last snapshot is all there is.
            return self._last
        self._last = stats
        return stats

    def collect(self) -> Iterator[Metric]:
        """The metric families of one snapshot (called by the registry at scrape time)."""
        stats = self.snapshot()
        if stats is None:
            return
        yield from families(stats, self._flow)


def families(stats: FlowStats, flow: str) -> list[Metric]:
    """The metric families of one snapshot, labelled with ``flow``."""

    def counter(
        name: str, documentation: str, labels: tuple[str, ...] = JOB_LABELS
    ) -> CounterMetricFamily:
        return CounterMetricFamily(f"flowrhythm_{name}", documentation, labels=labels)

    def gauge(
        name: str, documentation: str, labels: tuple[str, ...] = JOB_LABELS
    ) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"flowrhythm_{name}", documentation, labels=labels)

    received = counter("job_received", "Items taken from the job's input queue.")
    completed = counter("job_completed", "Items whose processing ended normally.")
    skipped = counter("job_skipped", "Items dropped by StopProcessing.")
    errored = counter("job_errored", "Items that failed (to the error job, or failing the run).")
    retried = counter("job_retried", "Calls made again by retry= (beyond each item's first).")
    scale_events = counter(
        "job_scale_events", "Scaling decisions, by direction.", (*JOB_LABELS, "direction")
    )
    worker_seconds = counter(
        "job_worker_seconds", "Worker-seconds spent in each state.", (*JOB_LABELS, "state")
    )
    workers = gauge("job_workers", "Workers now, by state.", (*JOB_LABELS, "state"))
    min_workers = gauge("job_min_workers", "The job's minimum worker count.")
    max_workers = gauge("job_max_workers", "The job's maximum worker count.")
    queue_depth = gauge("job_queue_depth", "Items waiting in the job's input queue.")
    queue_length = gauge("job_queue_length", "The capacity of the job's input queue.")
    processing = Metric(
        "flowrhythm_job_processing_seconds",
        "Processing time of an item, over the job's last 1,024 timed items.",
        "summary",
    )

    for job in stats.jobs.values():
        labels = [flow, job.name]
        received.add_metric(labels, job.received)
        completed.add_metric(labels, job.completed)
        skipped.add_metric(labels, job.skipped)
        errored.add_metric(labels, job.errored)
        retried.add_metric(labels, job.retried)
        scale_events.add_metric([*labels, "up"], job.scale_ups)
        scale_events.add_metric([*labels, "down"], job.scale_downs)
        for state, count, seconds in (
            ("idle", job.idle, job.idle_seconds),
            ("active", job.active, job.active_seconds),
            ("blocked", job.blocked, job.blocked_seconds),
        ):
            workers.add_metric([*labels, state], count)
            worker_seconds.add_metric([*labels, state], seconds)
        min_workers.add_metric(labels, job.min_workers)
        max_workers.add_metric(labels, job.max_workers)
        queue_depth.add_metric(labels, job.queue_depth)
        queue_length.add_metric(labels, job.queue_length)
        for quantile, value in (("0.5", job.p50), ("0.95", job.p95), ("0.99", job.p99)):
            if value is not None:
                processing.add_sample(
                    processing.name,
                    {"flow": flow, "job": job.name, "quantile": quantile},
                    value,
                )

    items_in = counter("flow_items_in", "Items that entered the first job.", ("flow",))
    items_in.add_metric([flow], stats.items_in)
    items_out = counter("flow_items_out", "Outputs of the last job.", ("flow",))
    items_out.add_metric([flow], stats.items_out)
    done = gauge("flow_done", "1 once every job has drained, 0 before.", ("flow",))
    done.add_metric([flow], 1 if stats.done else 0)

    return [
        received,
        completed,
        skipped,
        errored,
        retried,
        scale_events,
        worker_seconds,
        workers,
        min_workers,
        max_workers,
        queue_depth,
        queue_length,
        processing,
        items_in,
        items_out,
        done,
    ]
