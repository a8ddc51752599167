"""Relay overhead: the app's NDJSON API against a client talking to the (fake) vLLM engine directly.

The fake engine streams 300 deltas per request, 5 ms apart. The baseline is a minimal raw-socket client that
posts the same chat request to the engine and reads its SSE stream: the zero-overhead relay. Both sides use the
same low-CPU client, because client, server and engine share two cores. A third run sends the same burst to
``/healthz``: what Daphne, Django and the middleware cost with no database, upload or engine, the floor under
any OCR request's first frame.

Usage: ``python -m bench.relay [--concurrency 50 200] [--requests-per-client 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time
from dataclasses import dataclass

from bench.common import (
    RssSampler,
    StreamResult,
    app_server,
    cpu_seconds,
    fake_engine,
    mb,
    multipart,
    percentile,
    print_table,
    stream_request,
)
from testing.documents import SAMPLES

TOKENS = 300
TOKEN_DELAY = 0.005


@dataclass
class Run:
    name: str
    concurrency: int
    results: list[StreamResult]
    wall: float
    server_cpu: float
    peak_rss: int

    @property
    def ok(self) -> list[StreamResult]:
        return [r for r in self.results if r.ok]

    @property
    def errors(self) -> int:
        return len(self.results) - len(self.ok)

    def ttff(self, q: float) -> float:
        """Time to the first frame (the app's ``start``; the engine's role chunk)."""
        return percentile([r.first_frame - r.started for r in self.ok if r.first_frame], q)

    def ttft(self, q: float) -> float:
        """Time to the first text (the app's first ``delta``; the engine's first content)."""
        return percentile([r.first_delta - r.started for r in self.ok if r.first_delta], q)

    def latency(self, q: float) -> float:
        return percentile([r.finished - r.started for r in self.ok], q)

    @property
    def deltas(self) -> int:
        return len(self.ok) * TOKENS

    def answer(self, q: float) -> float:
        """Time to the whole answer (for the no-op requests of the floor)."""
        return percentile([r.finished - r.started for r in self.ok], q)

    def floor_summary(self) -> str:
        return (
            f"answer p50/p95 {self.answer(50) * 1000:.0f}/{self.answer(95) * 1000:.0f} ms, errors {self.errors}, "
            f"server CPU {self.server_cpu / len(self.results) * 1000:.2f} ms per request"
        )

    def summary(self) -> str:
        per_delta = self.server_cpu / self.deltas * 1e6 if self.deltas else float("nan")
        return (
            f"wall {self.wall:.2f} s, {len(self.results) / self.wall:.1f} req/s, "
            f"TTFF p50/p95 {self.ttff(50) * 1000:.0f}/{self.ttff(95) * 1000:.0f} ms, "
            f"first text p50/p95 {self.ttft(50) * 1000:.0f}/{self.ttft(95) * 1000:.0f} ms, "
            f"latency p50/p95/p99 {self.latency(50):.2f}/{self.latency(95):.2f}/{self.latency(99):.2f} s, "
            f"errors {self.errors}, server CPU {self.server_cpu:.2f} s ({per_delta:.0f} µs/delta, "
            f"{self.server_cpu / len(self.results) * 1000:.1f} ms/request), "
            f"peak RSS {mb(self.peak_rss)}"
        )


async def load(pid: int, requests: int, concurrency: int, send) -> tuple[list[StreamResult], float, float, int]:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(requests):
        queue.put_nowait(index)
    results: list[StreamResult] = []

    async def worker() -> None:
        while not queue.empty():
            queue.get_nowait()
            results.append(await send())

    cpu_before = cpu_seconds(pid)
    async with RssSampler(pid, interval=0.1) as sampler:
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return results, wall, cpu_seconds(pid) - cpu_before, sampler.peak


def engine_request(image: bytes) -> bytes:
    url = "data:image/png;base64," + base64.b64encode(image).decode()
    return json.dumps(
        {
            "model": "deepseek-ai/DeepSeek-OCR",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": url}},
                        {"type": "text", "text": "Free OCR."},
                    ],
                }
            ],
            "temperature": 0.0,
            "max_tokens": 4096,
            "stream": True,
            "stream_options": {"include_usage": True},
            "skip_special_tokens": False,
            "vllm_xargs": {"ngram_size": 30, "window_size": 90, "whitelist_token_ids": [128821, 128822]},
        }
    ).encode()


def run(concurrencies: list[int], per_client: int, workers: int = 1) -> list[tuple[Run, Run, Run]]:
    image = SAMPLES["short"].render()
    pairs = []
    with fake_engine(tokens=TOKENS, token_delay=TOKEN_DELAY) as engine:
        engine.start()
        engine_port = int(engine.ready_url.split(":")[2].split("/")[0])
        app = app_server(
            {"LLM_BASE_URL": f"http://127.0.0.1:{engine_port}/v1", "OCR_WARMUP": "true"}, name="relay", workers=workers
        )
        with app.process:
            app.process.start()
            headers = {"Authorization": f"Bearer {app.token}"}
            content_type, form = multipart("page.png", image)
            body = engine_request(image)

            async def direct() -> StreamResult:
                result = await stream_request(
                    engine_port,
                    "/v1/chat/completions",
                    body=body,
                    content_type="application/json",
                    delta_marker=b'"delta":{"content":"',
                )
                if result.status == 200 and result.deltas:
                    result.end = {"type": "end"}  # the baseline's stream ends with [DONE], not an end frame
                    result.error = None
                return result

            async def relayed() -> StreamResult:
                return await stream_request(
                    app.port,
                    "/api/ocr/image",
                    body=form,
                    content_type=content_type,
                    headers=headers,
                    delta_marker=b'"delta"',
                )

            async def no_op() -> StreamResult:
                result = await stream_request(app.port, "/healthz", method="GET")
                if result.status == 200:
                    result.end = {}  # a plain JSON answer, not a stream ending in an end frame
                    result.error = None
                return result

            asyncio.run(load(app.process.pid, 10, 10, relayed))  # warm both paths
            for concurrency in concurrencies:
                requests = concurrency * per_client
                results, wall, cpu, rss = asyncio.run(load(engine.pid, requests, concurrency, direct))
                baseline = Run("direct", concurrency, results, wall, cpu, rss)
                results, wall, cpu, rss = asyncio.run(load(app.process.pid, requests, concurrency, relayed))
                through_app = Run("app", concurrency, results, wall, cpu, rss)
                results, wall, cpu, rss = asyncio.run(load(app.process.pid, requests, concurrency, no_op))
                floor = Run("floor", concurrency, results, wall, cpu, rss)
                pairs.append((baseline, through_app, floor))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--requests-per-client", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="server processes on one socket (deploy/serve.py)")
    args = parser.parse_args()
    rows = []
    for baseline, app, floor in run(args.concurrency, args.requests_per_client, args.workers):
        n = baseline.concurrency
        rows.append((f"{n} streams, direct to engine", baseline.summary()))
        rows.append((f"{n} streams, through the app", app.summary()))
        rows.append(
            (
                f"{n} streams, ratio",
                f"wall {app.wall / baseline.wall:.2f}× (target ≤ 1.2× at 50), "
                f"TTFF p95 +{(app.ttff(95) - baseline.ttff(95)) * 1000:.0f} ms (target ≤ +50 ms at 50, "
                f"< 1 s at 200), app CPU {app.server_cpu / app.deltas * 1e6:.0f} µs/delta (target ≤ 60)",
            )
        )
        # What the framework alone costs under the same burst: Daphne, Django and our middleware answering
        # /healthz, which touches no database and no engine. No OCR request can be answered faster.
        rows.append((f"{n} requests, /healthz (floor)", floor.floor_summary()))
    print_table(
        f"Relay: {TOKENS} deltas per request, {TOKEN_DELAY * 1000:.0f} ms apart, {args.workers} server process(es)",
        rows,
    )


if __name__ == "__main__":
    main()
