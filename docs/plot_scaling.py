"""Draw the S3 step-load timeline of ``benchmarks/scaling.py`` for the docs.

Reads ``benchmarks/results/s3_timeline.json`` (written by ``python benchmarks/scaling.py``)
and draws, against time, the offered and completed rates, the autoscaled job's workers, and
its queue depth, with the rate steps and the cooldown marked, into
``docs/_static/scaling_s3.png`` (committed: the docs page shows it).

Usage::

    python benchmarks/scaling.py            # writes the timeline (both backends)
    python docs/plot_scaling.py [--input PATH] [--output PATH] [--backend NAME]

matplotlib is needed only here (the ``docs`` dependency group).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

ROOT = Path(__file__).resolve().parent.parent
INPUT = ROOT / "benchmarks" / "results" / "s3_timeline.json"
OUTPUT = ROOT / "docs" / "_static" / "scaling_s3.png"

COLORS = {"asyncio": "tab:blue", "trio": "tab:orange"}


def window_rates(samples: Sequence[dict[str, Any]], window: float) -> tuple[list[float], ...]:
    """(times, completions/s over the last ``window`` s), as the benchmark measures them."""
    times: list[float] = []
    rates: list[float] = []
    start = 0
    for point in samples:
        while start + 1 < len(samples) and point["t"] - samples[start + 1]["t"] >= window - 1e-3:
            start += 1
        first = samples[start]
        span = point["t"] - first["t"]
        if span >= window - 1e-3:
            times.append(point["t"])
            rates.append((point["completed"] - first["completed"]) / span)
    return times, rates


def busy_workers(samples: Sequence[dict[str, Any]], window: float) -> tuple[list[float], ...]:
    """(times, workers running the processor, averaged over the last ``window`` s)."""
    times: list[float] = []
    busy: list[float] = []
    start = 0
    for point in samples:
        while start + 1 < len(samples) and point["t"] - samples[start + 1]["t"] >= window - 1e-3:
            start += 1
        first = samples[start]
        span = point["t"] - first["t"]
        if span >= window - 1e-3:
            times.append(point["t"])
            busy.append((point["active_seconds"] - first["active_seconds"]) / span)
    return times, busy


def offered_steps(timeline: dict[str, Any]) -> tuple[list[float], list[float]]:
    profile = timeline["profile"]
    times = [start for start, _ in profile] + [timeline["duration"]]
    rates = [rate for _, rate in profile] + [profile[-1][1]]
    return times, rates


def mark_steps(ax: Axes, timeline: dict[str, Any], label: bool) -> None:
    for start, rate in timeline["profile"][1:]:
        ax.axvline(start, color="0.35", linestyle="--", linewidth=0.9)
        if label:
            ax.annotate(
                f"{rate:,.0f}/s",
                xy=(start, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, -12),
                textcoords="offset points",
                fontsize=8,
                color="0.25",
            )
    down = timeline["step_down"]
    ax.axvspan(down, down + timeline["cooldown"], color="0.85", alpha=0.5, linewidth=0)


def plot(timelines: dict[str, dict[str, Any]], output: Path) -> None:
    first = next(iter(timelines.values()))
    fig = Figure(figsize=(8, 7))
    rate_ax, workers_ax, queue_ax = fig.subplots(3, 1, sharex=True, height_ratios=[1.1, 1.2, 0.9])
    step_t, step_rate = offered_steps(first)
    rate_ax.step(step_t, step_rate, where="post", color="black", linewidth=1.2, label="offered")
    for backend, timeline in timelines.items():
        color = COLORS.get(backend)
        samples = timeline["samples"]
        t = [s["t"] for s in samples]
        rt, rate = window_rates(samples, timeline["rate_window"])
        rate_ax.plot(rt, rate, color=color, linewidth=0.9, label=f"completed ({backend})")
        workers_ax.step(
            t, [s["workers"] for s in samples], where="post", color=color, label=backend
        )
        bt, busy = busy_workers(samples, timeline["rate_window"])
        workers_ax.plot(bt, busy, color=color, linewidth=0.8, linestyle=":")
        queue_ax.plot(t, [s["queue_depth"] for s in samples], color=color, linewidth=0.9)

    needed = first["profile"][0][1] * first["service_time"]
    workers_ax.axhline(needed, color="tab:green", linewidth=0.8, linestyle="-.")
    workers_ax.annotate(
        f"busy workers needed at {first['profile'][0][1]:,.0f}/s",
        xy=(0.995, needed),
        xycoords=("axes fraction", "data"),
        xytext=(0, 3),
        ha="right",
        textcoords="offset points",
        fontsize=7,
        color="tab:green",
    )
    for ax in (rate_ax, workers_ax, queue_ax):
        mark_steps(ax, first, label=ax is rate_ax)
        ax.grid(True, linewidth=0.3)
    rate_ax.set_ylabel("items/s")
    rate_ax.legend(loc="center left", fontsize=8)
    workers_ax.set_ylabel("workers")
    workers_ax.set_ylim(0, first["max_workers"] * 1.08)
    workers_ax.legend(
        loc="upper left", fontsize=8, title="workers (dotted: busy)", title_fontsize=8
    )
    queue_ax.set_ylabel("queue depth")
    queue_ax.set_ylim(0, first["queue_length"] * 1.08)
    queue_ax.set_xlabel("seconds")
    queue_ax.set_xlim(0, first["duration"])
    fig.suptitle(
        f"Step load 500 -> 4,000 -> 500 items/s: one job of sleep({first['service_time']:g}), "
        f"{first['min_workers']}-{first['max_workers']} workers, default UtilizationCapacity\n"
        f"(grey: the {first['cooldown']:g} s cooldown after the step down)",
        fontsize=9,
    )
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Plot the S3 scaling timeline.")
    parser.add_argument("--input", type=Path, default=INPUT)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument(
        "--backend", action="append", help="plot only this backend (repeatable; default: all)"
    )
    args = parser.parse_args(argv)
    try:
        data = json.loads(args.input.read_text(encoding="utf-8"))
    except FileNotFoundError:
        print(f"{args.input} not found: run python benchmarks/scaling.py first", file=sys.stderr)
        return 1
    timelines: dict[str, dict[str, Any]] = data["backends"]
    if args.backend:
        timelines = {k: v for k, v in timelines.items() if k in args.backend}
    if not timelines:
        print("no timeline to plot", file=sys.stderr)
        return 1
    plot(dict(sorted(timelines.items())), args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
