"""Draw the autoscaling picture of the docs from the real-time matrix of ``benchmarks/scaling.py``.

Reads ``benchmarks/results/matrix.json`` (written by ``python benchmarks/scaling.py --only
matrix``) and draws, for a job of 10 ms calls and a job of 1 s calls side by side, with time
counted in call durations: the autoscaled job's workers (top), and its completion rate as a
share of fixed-32's (bottom), on every backend the file holds, into
``docs/_static/scaling_matrix.png`` (committed: the docs page shows it).

Usage::

    python benchmarks/scaling.py --only matrix     # writes the matrix (both backends)
    python docs/plot_scaling.py [--input PATH] [--output PATH]

matplotlib is needed only here (the ``docs`` dependency group).
"""

from __future__ import annotations

import argparse
import bisect
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

ROOT = Path(__file__).resolve().parent.parent
INPUT = ROOT / "benchmarks" / "results" / "matrix.json"
OUTPUT = ROOT / "docs" / "_static" / "scaling_matrix.png"

COLORS = {"asyncio": "tab:blue", "trio": "tab:orange"}
CASES = (("constant 10 ms", 0.01, "10 ms calls"), ("constant 1000 ms", 1.0, "1 s calls"))
#: How far the picture goes, in call durations.
SPAN = 40.0


def rate_share(
    ends: Sequence[float], base: float, window: float, step: float
) -> tuple[list[float], ...]:
    """(times, calls ended over the last ``window`` s / ``base`` per second), every ``step`` s."""
    times: list[float] = []
    shares: list[float] = []
    t = window
    last = ends[-1] if ends else 0.0
    while t <= last:
        done = bisect.bisect_right(ends, t) - bisect.bisect_right(ends, t - window)
        times.append(t)
        shares.append(done / window / base)
        t += step
    return times, shares


def draw(matrix: dict[str, list[dict[str, Any]]], output: Path) -> None:
    figure = Figure(figsize=(10, 5.6), layout="constrained")
    axes = figure.subplots(2, len(CASES), sharex=True)
    for column, (case, call, title) in enumerate(CASES):
        top, bottom = axes[0][column], axes[1][column]
        for backend, rows in matrix.items():
            row = next((r for r in rows if r["case"] == case and r.get("timeline")), None)
            if row is None:
                continue
            timeline = row["timeline"]
            color = COLORS.get(backend, "tab:gray")
            steps = timeline["workers"]
            xs = [t / call for t, _ in steps] + [SPAN]
            ys = [n for _, n in steps] + [steps[-1][1]]
            top.step(xs, ys, where="post", color=color, label=f"autoscaled ({backend})")
            fixed_ends = timeline["fixed32_ends"]
            base = len(fixed_ends) / max(fixed_ends[-1], 1e-9)
            window = max(call, 0.1)
            times, shares = rate_share(timeline["auto_ends"], base, window, window / 10)
            bottom.plot([t / call for t in times], shares, color=color, label=backend)
        top.axhline(32, color="black", linestyle="--", linewidth=0.8, label="fixed-32")
        top.set_title(title)
        top.set_ylim(0, 36)
        bottom.axhline(0.9, color="gray", linestyle=":", linewidth=0.8, label="90%")
        bottom.axhline(1.0, color="black", linestyle="--", linewidth=0.8)
        bottom.set_ylim(0, 1.2)
        bottom.set_xlim(0, SPAN)
        bottom.set_xlabel("time, in call durations")
        if column == 0:
            top.set_ylabel("workers")
            bottom.set_ylabel("rate ÷ fixed-32's")
        top.legend(loc="lower right", fontsize="small")
    figure.suptitle(
        "Default UtilizationCapacity(max_workers=32), saturating source, real time "
        "(the 10 ms job's scaler first decides at 0.1 s: 10 calls)",
        fontsize="medium",
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--input", type=Path, default=INPUT)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    try:
        matrix = json.loads(args.input.read_text(encoding="utf-8"))
    except OSError as exc:
        print(f"cannot read {args.input}: {exc}; run benchmarks/scaling.py first", file=sys.stderr)
        return 1
    draw(matrix, args.output)
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
