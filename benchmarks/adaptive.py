"""Adaptive concurrency benchmark: a real HTTP service with a hidden concurrency cap.

The benchmark starts a small ASGI app under uvicorn on 127.0.0.1, in its own process. The app
serves 16 requests at once, each taking ``--latency`` seconds (100 ms by default);
above the cap it answers at once with ``429 Too Many Requests`` and ``Retry-After: 1``. It
does not publish its cap.

The client is a flowrhythm job calling it with httpx, ``--requests`` requests per run (fixed
N below 16 sends ``requests * N / 16``, so that every run lasts about as long), and
raising ``Overloaded.from_headers(response.headers)`` on a 429, with
``retry=Retry(attempts=100, backoff=0.05, max_backoff=1.0)``:

- **fixed N** (N = 1, 2, 4, ..., 64): a job of exactly N workers, no ``concurrency=``: what a
  user who picks a number gets.
- **adaptive**: ``concurrency=Adaptive(min=1, initial=4, max=256)`` and
  ``Capacity(max_workers=256)`` (scaling workers, the default strategy): what a user who does
  not know the cap gets.

Two scenarios, each on asyncio and on trio, every configuration in the same process, each run
``--repeat`` times (3) interleaved with the others, keeping the median:

- **steady**: the cap is 16 throughout.
- **cap changes**: the cap is 16 for the first half of the requests, then 6.

Targets (adaptive against the fixed sweep of the same scenario and backend): throughput
>= 0.9 x the best fixed value; 429s <= 5% of requests; throughput >= 2 x the worse of fixed
4 and fixed 64. Throughput is requests that succeeded per second of wall clock, from the 10th
to the 90th percent of the run's requests: the steady state, without the adaptive limit's
first second (slow start from 4) or the last requests (an item refused near the end waits out
its ``Retry-After: 1``, ten times a request). The table also gives the whole run's figure.
"429s" is the share of all requests sent that were refused.

Run ``python benchmarks/adaptive.py --help`` for the options; ``--quick`` is a smaller run.
The table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import platform
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from flowrhythm import Adaptive, Capacity, Flow, Overloaded, Retry

CAP = 16
LATENCY = 0.1
REQUESTS = 1_200
REPEAT = 3
FIXED = [1, 2, 4, 8, 16, 32, 64]
CHANGED_CAP = 6

TARGET_BEST = 0.9  # adaptive / best fixed throughput, at least
TARGET_429 = 0.05  # share of requests refused, at most
TARGET_BAD = 2.0  # adaptive / worse of fixed 4 and fixed 64, at least

RETRY = Retry(attempts=100, backoff=0.05, max_backoff=1.0)


# -- the service -----------------------------------------------------------------------


def make_app(latency: float) -> Any:
    """An ASGI app with a hidden cap; ``/control`` sets the cap and reads the counters."""
    state = {"cap": CAP, "in_flight": 0, "served": 0, "refused": 0, "switch_at": 0, "then": CAP}

    async def send_json(send: Any, status: int, body: dict[str, Any], headers: list[Any]) -> None:
        payload = json.dumps(body).encode()
        headers = [(b"content-type", b"application/json"), *headers]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["path"] == "/control":
            query = dict(
                pair.split("=") for pair in scope["query_string"].decode().split("&") if pair
            )
            if query:
                state.update({key: int(value) for key, value in query.items()})
                state.update(served=0, refused=0)
            await send_json(send, 200, state, [])
            return
        if state["switch_at"] and state["served"] >= state["switch_at"]:
            state["cap"], state["switch_at"] = state["then"], 0
        if state["in_flight"] >= state["cap"]:
            state["refused"] += 1
            await send_json(send, 429, {"error": "too many requests"}, [(b"retry-after", b"1")])
            return
        state["in_flight"] += 1
        try:
            await anyio.sleep(latency)
        finally:
            state["in_flight"] -= 1
        state["served"] += 1
        await send_json(send, 200, {"ok": True}, [])

    return app


def serve(port: int, latency: float) -> None:
    import uvicorn

    uvicorn.run(
        make_app(latency),
        host="127.0.0.1",
        port=port,
        log_level="error",
        access_log=False,
        backlog=4096,
        timeout_keep_alive=60,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def service(latency: float) -> Iterator[str]:
    """Run the service in a child process; yield its base URL."""
    port = free_port()
    process = multiprocessing.get_context("spawn").Process(
        target=serve, args=(port, latency), daemon=True
    )
    process.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/control", timeout=1.0)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or not process.is_alive():
                    raise RuntimeError("the benchmark service did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.join(10)


# -- the client ------------------------------------------------------------------------


@dataclass
class Result:
    scenario: str
    backend: str
    config: str
    seconds: float
    served: int
    refused: int
    steady: float  # requests/s from the 10th to the 90th percent of the run's requests

    @property
    def throughput(self) -> float:
        return self.served / self.seconds

    @property
    def refused_share(self) -> float:
        return self.refused / max(self.served + self.refused, 1)


async def measure(
    url: str, config: str, requests: int, switch: bool, limit: Adaptive | None = None
) -> tuple[float, float, int, int, Adaptive | None]:
    async with httpx.AsyncClient(
        base_url=url,
        limits=httpx.Limits(max_connections=300, max_keepalive_connections=300),
        timeout=60.0,
    ) as client:
        await client.get(
            "/control",
            params={
                "cap": CAP,
                "switch_at": requests // 2 if switch else 0,
                "then": CHANGED_CAP,
            },
        )

        done = 0
        marks: dict[int, float] = {}
        first, last = requests // 10, requests - requests // 10

        async def call(item: int) -> int:
            nonlocal done
            response = await client.get("/work")
            if response.status_code == 429:
                raise Overloaded.from_headers(response.headers)
            response.raise_for_status()
            done += 1
            if done in (first, last):
                marks[done] = time.perf_counter()
            return item

        flow = Flow()
        if config == "adaptive":
            limit = Adaptive(min=1, initial=4, max=256)
            flow.add(call, capacity=Capacity(max_workers=256), concurrency=limit, retry=RETRY)
        else:
            workers = int(config.split()[1])
            flow.add(
                call, capacity=Capacity(min_workers=workers, max_workers=workers), retry=RETRY
            )
        started = time.perf_counter()
        stats = await flow.run(range(requests))
        seconds = time.perf_counter() - started
        counts = (await client.get("/control")).json()
    assert stats.jobs["call"].completed == requests
    steady = (last - first) / (marks[last] - marks[first])
    return seconds, steady, counts["served"], counts["refused"], limit


def run(args: argparse.Namespace) -> list[Result]:
    """Every configuration ``--repeat`` times, interleaved; the median run of each."""
    results: list[Result] = []
    configs = [f"fixed {n}" for n in FIXED] + ["adaptive"]
    with service(args.latency) as url:
        for scenario, switch in [("steady", False), ("cap changes", True)]:
            for backend in args.backends:
                runs: dict[str, list[Result]] = {config: [] for config in configs}
                for _ in range(args.repeat):
                    for config in configs:
                        requests = args.requests
                        if config != "adaptive":
                            share = min(int(config.split()[1]), CAP) / CAP
                            requests = max(int(requests * share), 50)
                        seconds, steady, served, refused, limit = anyio.run(
                            measure, url, config, requests, switch, backend=backend
                        )
                        result = Result(
                            scenario, backend, config, seconds, served, refused, steady
                        )
                        runs[config].append(result)
                        extra = f" (limit ended at {limit.limit})" if limit is not None else ""
                        print(
                            f"{scenario:12} {backend:8} {config:9} {result.steady:7.1f}/s "
                            f"(whole run {result.throughput:7.1f}/s) "
                            f"429s {result.refused_share:6.1%}{extra}",
                            file=sys.stderr,
                        )
                for config in configs:
                    ordered = sorted(runs[config], key=lambda r: r.steady)
                    results.append(ordered[len(ordered) // 2])
    return results


def report(results: list[Result]) -> bool:
    ok = True
    print(
        f"Adaptive concurrency: median of interleaved runs, Python {platform.python_version()}, "
        f"cap {CAP} (then {CHANGED_CAP} in 'cap changes'), latency {LATENCY * 1000:.0f} ms, "
        f"{platform.system()} {platform.machine()}\n"
    )
    print("| scenario | backend | configuration | requests/s | whole run | 429s | ÷ best fixed |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    groups: dict[tuple[str, str], list[Result]] = {}
    for result in results:
        groups.setdefault((result.scenario, result.backend), []).append(result)
    verdicts = []
    for (scenario, backend), group in groups.items():
        fixed = {r.config: r for r in group if r.config != "adaptive"}
        adaptive = next(r for r in group if r.config == "adaptive")
        best = max(fixed.values(), key=lambda r: r.steady)
        bad = min(fixed["fixed 4"].steady, fixed["fixed 64"].steady)
        for r in group:
            marker = " **" if r is adaptive else ""
            print(
                f"| {scenario} | {backend} | {r.config}{marker} | {r.steady:.0f} | "
                f"{r.throughput:.0f} | {r.refused_share:.1%} | {r.steady / best.steady:.2f} |"
            )
        checks = [
            (adaptive.steady / best.steady, TARGET_BEST, ">=", f"÷ best ({best.config})"),
            (adaptive.refused_share, TARGET_429, "<=", "429 share"),
            (adaptive.steady / bad, TARGET_BAD, ">=", "÷ worse of fixed 4 / 64"),
        ]
        for value, target, op, what in checks:
            good = value >= target if op == ">=" else value <= target
            ok &= good
            verdicts.append(
                f"{scenario}, {backend}: adaptive {what} = {value:.2f} "
                f"(target {op} {target}) {'ok' if good else 'MISSED'}"
            )
    print()
    for line in verdicts:
        print(line)
    return ok


def main() -> None:
    global LATENCY
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=REQUESTS, help="requests per run")
    parser.add_argument(
        "--latency", type=float, default=LATENCY, help="seconds per request (default 0.1)"
    )
    parser.add_argument(
        "--backends", nargs="+", default=["asyncio", "trio"], choices=["asyncio", "trio"]
    )
    parser.add_argument(
        "--repeat", type=int, default=REPEAT, help="runs of each configuration (median kept)"
    )
    parser.add_argument("--quick", action="store_true", help="a smaller run for a first look")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.repeat = 320, 1
    LATENCY = args.latency
    ok = report(run(args))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
