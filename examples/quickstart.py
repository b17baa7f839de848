"""The quickstart: two jobs, an endless source, and a processor that ends the input."""

import itertools

import anyio

from flowrhythm import Flow, LastWorkItem, job_name


@job_name("Stage 1")
async def first_stage(item: int) -> int:
    return item + 1


@job_name("Stage 2")
async def second_stage(item: int) -> int | LastWorkItem:
    if item >= 5:
        return LastWorkItem()  # ends the input; items already inside still finish
    return item + 1


async def main() -> None:
    flow = Flow()
    flow.add(first_stage)
    flow.add(second_stage)
    async with flow.stream(itertools.count()) as results:
        async for value in results:
            print("Result:", value)


if __name__ == "__main__":
    anyio.run(main)  # or anyio.run(main, backend="trio"), asyncio.run(main()), trio.run(main)
