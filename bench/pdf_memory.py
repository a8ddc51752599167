"""Memory on large PDFs: the server's peak RSS growth over idle while it streams a long PDF.

Pages are rendered lazily and only ``OCR_PAGE_CONCURRENCY`` of them are in memory at a time, so the growth
must not depend on the page count. Usage: ``python -m bench.pdf_memory [--pages 200 500]``.
"""

from __future__ import annotations

import argparse
import asyncio

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
from testing.documents import SAMPLES, make_numbered_pdf

LIMIT_BYTES = 300 * 1024 * 1024


async def measure(port: int, token: str, pid: int, pages: int) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {token}"}
    # Warm up: engine client, code paths, a small PDF, so "idle" means a server that has worked before.
    content_type, body = multipart("warm.pdf", make_numbered_pdf(2))
    await stream_request(port, "/api/ocr/pdf", body=body, content_type=content_type, headers=headers)
    content_type, image = multipart("warm.png", SAMPLES["short"].render())
    await stream_request(port, "/api/ocr/image", body=image, content_type=content_type, headers=headers)
    idle = rss_bytes(pid)
    content_type, body = multipart("big.pdf", make_numbered_pdf(pages))
    async with RssSampler(pid) as sampler:
        result = await stream_request(
            port, "/api/ocr/pdf", body=body, content_type=content_type, headers=headers, delta_marker=b'"page_delta"'
        )
    if not result.ok:
        raise RuntimeError(f"the {pages}-page job failed: {result.error}")
    return {
        "pages": pages,
        "upload_bytes": len(body),
        "idle": idle,
        "peak": sampler.peak,
        "growth": sampler.peak - idle,
        "seconds": result.finished - result.started,
        "status": result.end["status"] if result.end else "?",
    }


def run(page_counts: list[int], concurrency: int = 16) -> list[dict[str, float]]:
    results = []
    with fake_engine(tokens=40, token_delay=0.005) as engine:
        engine.start()
        for pages in page_counts:
            app = app_server(
                {
                    "LLM_BASE_URL": engine.ready_url.replace("/health", "/v1"),
                    "OCR_PAGE_CONCURRENCY": str(concurrency),
                    "OCR_MAX_PDF_PAGES": str(max(page_counts)),
                    "OCR_WARMUP": "false",
                },
                name=f"pdf{pages}",
            )
            with app.process:
                app.process.start()
                results.append(asyncio.run(measure(app.port, app.token, app.process.pid, pages)))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pages", type=int, nargs="+", default=[200, 500])
    args = parser.parse_args()
    results = run(args.pages)
    rows = []
    for result in results:
        verdict = "ok" if result["growth"] <= LIMIT_BYTES else "OVER LIMIT"
        rows.append(
            (
                f"{result['pages']} pages ({mb(result['upload_bytes'])} upload)",
                f"idle {mb(result['idle'])}, peak {mb(result['peak'])}, growth {mb(result['growth'])} "
                f"(limit {mb(LIMIT_BYTES)}: {verdict}), {result['seconds']:.1f} s, status {result['status']}",
            )
        )
    print_table("PDF memory: server peak RSS over idle while streaming (vLLM engine = fake, concurrency 16)", rows)


if __name__ == "__main__":
    main()
