"""``python -m flowrhythm``: the command line (for now, one command: ``demo``).

Without a command it prints the help and exits with status 2, as a command
line does when it is called wrongly.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio

from ._demo import DEFAULT_RATE, DEFAULT_SECONDS, run_demo


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flowrhythm",
        description="flowrhythm: asynchronous job pipelines with auto-scaling workers.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run a simulated web crawl under the live monitor",
        description=(
            "Run a simulated web crawl (fetch -> parse -> store, with an error job) "
            "under the live monitor: the offered load rises, holds and falls, and the "
            "fetch job scales up and back down. Nothing touches the network. Without a "
            "terminal (or with --plain) it prints one line per second instead. The "
            "monitor writes to standard error; the last line, on standard output, "
            "sums up the crawl."
        ),
    )
    demo.add_argument(
        "--seconds",
        type=_positive_float,
        default=DEFAULT_SECONDS,
        metavar="S",
        help=f"how long URLs are offered; the flow then drains (default {DEFAULT_SECONDS:g})",
    )
    demo.add_argument(
        "--items",
        type=_positive_int,
        default=None,
        metavar="N",
        help="at most this many URLs (default: no limit)",
    )
    demo.add_argument(
        "--rate",
        type=_positive_float,
        default=DEFAULT_RATE,
        metavar="R",
        help=f"URLs per second at the peak of the load (default {DEFAULT_RATE:g})",
    )
    demo.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default="asyncio",
        help="the event loop to run on (default asyncio)",
    )
    demo.add_argument("--plain", action="store_true", help="plain log lines even in a terminal")
    demo.add_argument("--seed", type=int, default=0, help="seed of the simulation (default 0)")
    demo.add_argument(
        "--svg",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write an SVG picture of the monitor, from the middle of the run",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.backend == "trio" and importlib.util.find_spec("trio") is None:
        parser.error(
            '--backend trio needs trio: install flowrhythm with its "demo" extra '
            '(pip install ".[demo]" in a clone of flowrhythm), or pip install trio'
        )
    if args.svg is not None and importlib.util.find_spec("rich") is None:
        parser.error(
            '--svg needs rich: install flowrhythm with its "demo" extra '
            '(pip install ".[demo]" in a clone of flowrhythm)'
        )
    demo = functools.partial(
        run_demo,
        seconds=args.seconds,
        items=args.items,
        rate=args.rate,
        seed=args.seed,
        plain=True if args.plain else None,
        svg=args.svg,
    )
    try:
        result = anyio.run(demo, backend=args.backend)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(f"{result.summary()} ({args.backend})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
