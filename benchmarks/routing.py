"""Routing benchmark: what a router costs, and where autoscaling puts the workers of a routed flow.

1. **Cost.** ``--items`` items (default 200,000) through a router that sends even items to one
   arm and odd items to the other (one identity job each), both arms merging into one identity
   job — three hops per item — on asyncio and trio, median of ``--repeat`` interleaved runs of:

   * **flowrhythm routed**: ``Flow().add_router(parity, {0: identity, 1: identity}).add(identity)``;
   * **hand-written anyio**: the same shape written by hand with anyio memory object streams
     (``send_nowait`` / ``receive_nowait`` first, a checkpoint every 64 items, the arms sending
     to clones of the last stage's input);
   * **flowrhythm chain**: a plain chain of three identity jobs, the same number of hops.

   Target: flowrhythm routed >= 0.7 x the hand-written router's throughput (by CPU time). The
   routing cost is the routed flow's time per item minus the chain's.

2. **Scaling.** 400 items alternate between a fast arm (1 ms per item) and an arm 10 x slower
   (10 ms), each arm ``UtilizationCapacity(max_workers=16)`` (autoscaled) or one fixed worker
   (fixed), run in virtual time (:func:`flowrhythm.testing.run_virtual`, so the figures are exact
   and take no real time): the elapsed time, and each arm's peak worker count. Autoscaling moves
   the workers to the slow arm.

Usage::

    python benchmarks/routing.py [--items N] [--repeat R] [--backend B] [--json PATH] [--check]
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any, Literal, cast

import _bench
import anyio
from anyio import EndOfStream, WouldBlock
from anyio.lowlevel import checkpoint

from flowrhythm import Capacity, Flow, ScalingEvent, UtilizationCapacity
from flowrhythm.testing import run_virtual

TARGET = 0.7
QUEUE = 100


async def identity(item: int) -> int:
    return item


def parity(item: int) -> int:
    return item & 1


def routed_flow() -> Flow:
    queue = Capacity(queue_length=QUEUE)
    return (
        Flow()
        .add_router(parity, {0: identity, 1: identity}, name="route", capacity=queue)
        .add(identity, queue)
    )


def chain_flow() -> Flow:
    flow = Flow()
    for _ in range(3):
        flow.add(identity, Capacity(queue_length=QUEUE))
    return flow


async def run_flow(flow: Flow, n: int) -> _bench.Timing:
    start = _bench.now()
    await flow.run(range(n))
    return _bench.since(start)


async def run_hand_written(n: int) -> _bench.Timing:
    """The routed shape by hand: router -> arm 0 | arm 1 -> sink."""
    source_send, router_receive = anyio.create_memory_object_stream[int](QUEUE)
    arms = [anyio.create_memory_object_stream[int](QUEUE) for _ in range(2)]
    sink_send, sink_receive = anyio.create_memory_object_stream[int](QUEUE)

    async def router() -> None:
        sends = [send for send, _ in arms]
        count = 0
        with router_receive:
            try:
                while True:
                    try:
                        item = router_receive.receive_nowait()
                    except WouldBlock:
                        try:
                            item = await router_receive.receive()
                        except EndOfStream:
                            return
                    except EndOfStream:
                        return
                    send = sends[parity(item)]
                    try:
                        send.send_nowait(item)
                    except WouldBlock:
                        await send.send(item)
                    count += 1
                    if not count % 64:
                        await checkpoint()
            finally:
                for send in sends:
                    send.close()

    start = _bench.now()
    async with anyio.create_task_group() as tg:
        tg.start_soon(router)
        for _, receive in arms:
            tg.start_soon(_bench.fast_stage, receive, sink_send.clone(), identity)
        sink_send.close()
        tg.start_soon(_bench.fast_stage, sink_receive, None, identity)
        with source_send:
            for item in range(n):
                try:
                    source_send.send_nowait(item)
                except WouldBlock:
                    await source_send.send(item)
                if not item % 64:
                    await checkpoint()
    return _bench.since(start)


async def measure_cost(n: int, repeat: int) -> dict[str, _bench.Timing]:
    cases: list[tuple[str, Callable[[int], Awaitable[_bench.Timing]]]] = [
        ("flowrhythm routed", lambda n: run_flow(routed_flow(), n)),
        ("hand-written anyio", run_hand_written),
        ("flowrhythm chain", lambda n: run_flow(chain_flow(), n)),
    ]
    times: dict[str, list[_bench.Timing]] = {name: [] for name, _ in cases}
    for _, case in cases:
        await case(n // 20)  # warm-up
    for rep in range(repeat):
        for name, case in cases if rep % 2 == 0 else cases[::-1]:
            timing = await case(n)
            times[name].append(timing)
            print(f"  [{rep + 1}/{repeat}] {name:20} {timing.wall:.3f} s", file=sys.stderr)
    return {name: _bench.median_timing(values) for name, values in times.items()}


# -- scaling ----------------------------------------------------------------------------------

SCALING_ITEMS = 400


async def fast(item: int) -> int:
    await anyio.sleep(0.001)
    return item


async def slow(item: int) -> int:
    await anyio.sleep(0.010)
    return item


async def run_two_arms(autoscaled: bool) -> dict[str, Any]:
    def capacity() -> Capacity:
        if autoscaled:
            return UtilizationCapacity(min_workers=1, max_workers=16, queue_length=8)
        return Capacity(queue_length=8)

    flow = Flow().add_router(
        parity,
        {0: Flow().add(fast, capacity()), 1: Flow().add(slow, capacity())},
        name="route",
        capacity=Capacity(queue_length=8),
    )
    peak: dict[str, int] = {"route[0].fast": 1, "route[1].slow": 1}

    def on_scale(event: ScalingEvent) -> None:
        if event.job in peak:
            peak[event.job] = max(peak[event.job], event.new)

    stats = await flow.run(range(SCALING_ITEMS), on_scale=on_scale)
    return {
        "elapsed": stats.elapsed,
        "peak_fast": peak["route[0].fast"],
        "peak_slow": peak["route[1].slow"],
        "router_blocked_seconds": stats.jobs["route"].blocked_seconds,
    }


def main() -> int:
    _bench.printable_output()
    parser = _bench.parser(__doc__, repeat=7)
    parser.add_argument("--items", type=int, default=200_000, help="items per run")
    args = parser.parse_args()
    print(_bench.environment_line())

    ok = True
    cost_rows: list[list[str]] = []
    summaries: list[str] = []
    results: dict[str, Any] = {"cost": {}, "scaling": {}}
    for backend in _bench.backends_of(args):
        missing = _bench.backend_available(backend)
        if missing:
            print(f"{backend}: skipped ({missing})")
            continue
        medians = anyio.run(measure_cost, args.items, args.repeat, backend=backend)
        routed, hand, chain = (
            medians["flowrhythm routed"],
            medians["hand-written anyio"],
            medians["flowrhythm chain"],
        )
        ratio = hand.cpu / routed.cpu
        extra = (routed.cpu - chain.cpu) / args.items * 1e6
        passed = ratio >= TARGET
        ok &= passed
        for name, timing in medians.items():
            cost_rows.append(
                [
                    backend,
                    name,
                    f"{timing.wall / args.items * 1e6:.2f}",
                    f"{timing.cpu / args.items * 1e6:.2f}",
                ]
            )
        summaries.append(
            f"{backend}: flowrhythm routed ÷ hand-written anyio (cpu) {ratio:.2f}x "
            f"(target ≥ {TARGET}: {'ok' if passed else 'MISSED'}); "
            f"routing cost over a plain chain of as many hops: {extra:+.2f} µs/item"
        )
        cost_rows.append([])
        results["cost"][backend] = {
            "per_item_us": {k: v.cpu / args.items * 1e6 for k, v in medians.items()},
            "ratio_vs_hand_written": ratio,
            "routing_cost_us_per_item": extra,
        }

    print(
        f"\nCost: {args.items:,} items, router -> 2 arms -> 1 job (3 hops), "
        f"median of {args.repeat}\n"
    )
    print(
        _bench.format_table(
            ["backend", "case", "µs/item (wall)", "µs/item (cpu)"], cost_rows, right={2, 3}
        )
    )
    print()
    print("\n".join(summaries))

    scaling_rows: list[list[str]] = []
    for backend in _bench.backends_of(args):
        if _bench.backend_available(backend):
            continue
        for autoscaled in (False, True):
            figures = run_virtual(
                run_two_arms, autoscaled, backend=cast(Literal["asyncio", "trio"], backend)
            )
            label = "autoscaled" if autoscaled else "fixed"
            results["scaling"][f"{backend}/{label}"] = figures
            scaling_rows.append(
                [
                    backend,
                    label,
                    f"{figures['elapsed']:.3f}",
                    str(figures["peak_fast"]),
                    str(figures["peak_slow"]),
                    f"{figures['router_blocked_seconds']:.3f}",
                ]
            )
    print(
        f"\nScaling: {SCALING_ITEMS} items alternating between a 1 ms arm and a 10 ms arm "
        "(virtual time)\n"
    )
    print(
        _bench.format_table(
            [
                "backend",
                "arms",
                "elapsed s",
                "peak workers fast",
                "peak workers slow",
                "router blocked s",
            ],
            scaling_rows,
            right={2, 3, 4, 5},
        )
    )
    print(
        "\n"
        + _bench.markdown_table(["backend", "case", "µs/item (wall)", "µs/item (cpu)"], cost_rows)
    )
    if args.json:
        _bench.write_json(args.json, {"items": args.items, "repeat": args.repeat}, **results)
    if args.check and not ok:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
