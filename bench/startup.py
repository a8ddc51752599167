"""Start-up: from starting the server to its first answered request, and what the first OCR request costs.

The embedded engine loads its models in a background thread at start; ``/healthz`` answers 503 until they are
loaded and 200 after. The first OCR request, sent as soon as ``/healthz`` says ready, should cost about what
the later ones cost. Usage: ``python -m bench.startup [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

from bench.common import app_server, multipart, print_table, stream_request
from testing.documents import SAMPLES


async def ocr_latencies(port: int, token: str, count: int) -> list[float]:
    headers = {"Authorization": f"Bearer {token}"}
    content_type, body = multipart("page.png", SAMPLES["short"].render())
    latencies = []
    for _ in range(count):
        result = await stream_request(port, "/api/ocr/image", body=body, content_type=content_type, headers=headers)
        if not result.ok:
            raise RuntimeError(f"OCR request failed: {result.error}")
        latencies.append(result.finished - result.started)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3, help="server starts to measure")
    parser.add_argument("--requests", type=int, default=6, help="OCR requests after each start")
    args = parser.parse_args()
    answered, ready, first, later = [], [], [], []
    for index in range(args.repeat):
        app = app_server({"OCR_ENGINE": "local"}, name=f"startup{index}")
        with app.process:
            app.process.start()
            answered.append(app.process.answered_after)
            ready.append(app.process.ready_after)
            latencies = asyncio.run(ocr_latencies(app.port, app.token, args.requests))
            first.append(latencies[0])
            later.extend(latencies[1:])
    typical = statistics.median(later)
    print_table(
        f"Start-up: embedded engine, {args.repeat} server starts",
        [
            (
                "start to first answered request",
                f"median {statistics.median(answered):.2f} s, max {max(answered):.2f} s (target ≤ 5 s)",
            ),
            (
                "start to ready (/healthz 200, engine warm)",
                f"median {statistics.median(ready):.2f} s, max {max(ready):.2f} s",
            ),
            ("first OCR request", f"median {statistics.median(first):.2f} s"),
            ("later OCR requests", f"median {typical:.2f} s"),
            ("first / later", f"{statistics.median(first) / typical:.2f}× (target ≤ 1.2×)"),
        ],
    )


if __name__ == "__main__":
    main()
