"""PDF pipeline: a generated PDF through the app, the fake engine taking about 0.5 s per page.

Reports the time from the end of the upload to the first ``page_delta``, the total time against the ideal
``ceil(pages / concurrency) × page time`` (what a perfect scheduler with free rendering would take), and the
server's peak RSS growth. Usage: ``python -m bench.pdf_pipeline [--pages 100 500] [--concurrency 16]``.
"""

from __future__ import annotations

import argparse
import asyncio
import math

from bench.common import (
    RssSampler,
    app_server,
    fake_engine,
    mb,
    multipart,
    print_table,
    rss_bytes,
    stream_request,
)
from testing.documents import make_numbered_pdf

TOKENS = 100
TOKEN_DELAY = 0.005
PAGE_SECONDS = TOKENS * TOKEN_DELAY


async def one_job(port: int, token: str, pid: int, pages: int) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {token}"}
    content_type, warm = multipart("warm.pdf", make_numbered_pdf(2))
    await stream_request(port, "/api/ocr/pdf", body=warm, content_type=content_type, headers=headers)
    idle = rss_bytes(pid)
    content_type, body = multipart("book.pdf", make_numbered_pdf(pages))
    async with RssSampler(pid) as sampler:
        result = await stream_request(
            port,
            "/api/ocr/pdf",
            body=body,
            content_type=content_type,
            headers=headers,
            delta_marker=b'"page_delta"',
        )
    if not result.ok:
        raise RuntimeError(f"the {pages}-page job failed: {result.error}")
    return {
        "first_delta": (result.first_delta or result.finished) - result.started,
        "total": result.finished - result.started,
        "growth": sampler.peak - idle,
        "status": result.end["status"],
        "pages_done": result.end.get("pages_done", 0),
    }


def run(page_counts: list[int], concurrency: int) -> list[tuple[int, dict[str, float]]]:
    results = []
    with fake_engine(tokens=TOKENS, token_delay=TOKEN_DELAY) as engine:
        engine.start()
        for pages in page_counts:
            app = app_server(
                {
                    "LLM_BASE_URL": engine.ready_url.replace("/health", "/v1"),
                    "OCR_PAGE_CONCURRENCY": str(concurrency),
                    "OCR_MAX_PDF_PAGES": str(max(page_counts)),
                },
                name=f"pipeline{pages}",
            )
            with app.process:
                app.process.start()
                results.append((pages, asyncio.run(one_job(app.port, app.token, app.process.pid, pages))))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pages", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    rows = []
    for pages, result in run(args.pages, args.concurrency):
        ideal = math.ceil(pages / args.concurrency) * PAGE_SECONDS
        rows.append(
            (
                f"{pages} pages",
                f"first page_delta {result['first_delta']:.2f} s (target ≤ 1 s), total {result['total']:.2f} s = "
                f"{result['total'] / ideal:.2f}× ideal {ideal:.2f} s (target ≤ 1.25×), "
                f"peak RSS growth {mb(result['growth'])} (target ≤ 300 MB), "
                f"{result['status']} {result['pages_done']:.0f}/{pages}",
            )
        )
    print_table(
        f"PDF pipeline: {PAGE_SECONDS:.1f} s per page at the engine, per-job concurrency {args.concurrency}", rows
    )


if __name__ == "__main__":
    main()
