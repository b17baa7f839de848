"""A rate-limited HTTP API client: httpx, retries, a rate limit and an error job.

The example starts its own small HTTP API on 127.0.0.1 (in a thread), so it runs
anywhere. The API answers ``GET /items/<n>`` with JSON; like a real service it
is sometimes busy (``503``: worth retrying) and it does not know some items
(``404``: retrying cannot help). The flow:

* calls the API from up to 16 workers sharing one ``httpx.AsyncClient``, but
  never more than ``rate`` requests per second (``max_per_second=``);
* retries a busy answer with exponential back-off (``retry=Retry(...)``);
* hands every item that still fails to the error job, which records it.

Run it with ``python examples/api_client.py`` (add ``trio`` to run it on trio).
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anyio
import httpx

from flowrhythm import Capacity, ErrorItem, Flow, FlowStats, Retry


class ServiceBusy(Exception):
    """The API answered 429 or 503: try again later."""


class ItemApi(BaseHTTPRequestHandler):
    """``GET /items/<n>``: busy twice for every tenth item, unknown for every 25th."""

    calls: Counter[int]  # set per server by serve()
    lock: threading.Lock

    def do_GET(self) -> None:
        n = int(self.path.rsplit("/", 1)[-1])
        with self.lock:
            self.calls[n] += 1
            calls = self.calls[n]
        if n % 25 == 7:
            self.answer(404, {"error": f"no item {n}"})
        elif n % 10 == 3 and calls <= 2:
            self.answer(503, {"error": "busy"})
        else:
            self.answer(200, {"id": n, "square": n * n})

    def answer(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep the example's output clean


@contextlib.contextmanager
def serve() -> Iterator[str]:
    """Run the API on a free port of 127.0.0.1; yield its base URL."""
    handler = type("Handler", (ItemApi,), {"calls": Counter(), "lock": threading.Lock()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class Client:
    """The jobs: one call of the API per item, keeping the answers, and the error job."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.answers: list[dict[str, int]] = []
        self.failed: list[ErrorItem] = []

    async def get_item(self, n: int) -> dict[str, int]:
        response = await self.http.get(f"/items/{n}")
        if response.status_code in (429, 503):
            raise ServiceBusy(f"item {n}: {response.status_code}")
        response.raise_for_status()  # 404 and the like: not worth retrying
        answer: dict[str, int] = response.json()
        return answer

    async def keep(self, answer: dict[str, int]) -> None:
        self.answers.append(answer)

    async def record_failure(self, error: ErrorItem) -> None:
        self.failed.append(error)


async def main(items: int = 100, rate: float = 50.0) -> tuple[FlowStats, Client]:
    with serve() as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
            client = Client(http)
            flow = (
                Flow(name="api")
                .add(
                    client.get_item,
                    Capacity(min_workers=16, max_workers=16),
                    name="get_item",
                    max_per_second=rate,
                    retry=Retry(attempts=4, backoff=0.05, on=ServiceBusy),
                )
                .add(client.keep, name="keep")
                .add_error_job(client.record_failure, name="failures")
            )
            stats = await flow.run(range(items))
    get_item = stats.jobs["get_item"]
    print(
        f"{len(client.answers)} answers in {stats.elapsed:.1f}s "
        f"({get_item.retried} retries), {len(client.failed)} failed:"
    )
    for error in sorted(client.failed, key=lambda error: error.item):
        reason = str(error.exception).splitlines()[0]
        print(f"  item {error.item} after {error.attempts} attempt(s): {reason}")
    return stats, client


if __name__ == "__main__":
    anyio.run(main, backend=sys.argv[1] if len(sys.argv) > 1 else "asyncio")
