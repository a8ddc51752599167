"""Embedded engine: pages through the app with the ``local`` engine against RapidOCR called directly.

The baseline renders the same PDF pages in one process and runs them through one RapidOCR instance shared by
one thread per core, each with one ONNX Runtime thread: the best arrangement measured on these machines
(``shared/reference/embedded-ocr.md`` §7). Usage: ``python -m bench.embedded [--pages 20]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor

from bench.common import app_server, cpu_seconds, multipart, print_table, stream_request
from testing.documents import make_pdf

LINES = [
    "Optical character recognition turns images into text.",
    "This page was generated for the engine benchmark.",
    "Each line keeps the recogniser busy for a while.",
    "The quick brown fox jumps over the lazy dog.",
    "Numbers such as 2024 and 3.14 appear now and then.",
    "A second paragraph starts here with more words.",
]


def document(pages: int) -> bytes:
    return make_pdf([[f"Page {number}", *LINES] for number in range(1, pages + 1)])


def direct(pdf: bytes, threads: int) -> tuple[float, int]:
    """Pages per second of RapidOCR on the pre-rendered pages, and the lines it found."""
    import numpy as np
    import pypdfium2 as pdfium
    from rapidocr import RapidOCR

    import ocr.engines.local  # noqa: F401  (it keeps onnxruntime's telemetry off; imported before rapidocr loads it)

    document = pdfium.PdfDocument(pdf)
    images = [np.asarray(page.render(scale=144 / 72).to_pil().convert("RGB"))[:, :, ::-1] for page in document]
    engine = RapidOCR(
        params={
            "Global.log_level": "error",
            "EngineConfig.onnxruntime.intra_op_num_threads": 1,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        }
    )
    engine(images[0])  # load the models, as the app's warm-up does
    with ThreadPoolExecutor(threads) as pool:
        started = time.perf_counter()
        results = list(pool.map(engine, images))
        elapsed = time.perf_counter() - started
    return len(images) / elapsed, sum(len(result.txts or ()) for result in results)


async def through_app(port: int, token: str, pdf: bytes) -> tuple[float, int]:
    headers = {"Authorization": f"Bearer {token}"}
    content_type, body = multipart("pages.pdf", pdf)
    result = await stream_request(
        port,
        "/api/ocr/pdf",
        body=body,
        content_type=content_type,
        headers=headers,
        keep_lines=True,
        delta_marker=b'"page_delta"',
    )
    if not result.ok or result.end["status"] != "done":
        raise RuntimeError(f"embedded job failed: {result.error or result.end}")
    return result.end["usage"]["pages"] / (result.finished - result.started), result.end["pages_done"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pages", type=int, default=20)
    args = parser.parse_args()
    threads = os.cpu_count() or 1
    pdf = document(args.pages)
    app = app_server({"OCR_ENGINE": "local", "OCR_PAGE_CONCURRENCY": str(threads)}, name="embedded")
    with app.process:
        app.process.start()
        asyncio.run(through_app(app.port, app.token, document(2)))  # the models are warm
        cpu_before = cpu_seconds(app.process.pid)
        app_rate, pages_done = asyncio.run(through_app(app.port, app.token, pdf))
        app_cpu = cpu_seconds(app.process.pid) - cpu_before
    direct_rate, _ = direct(pdf, threads)
    print_table(
        f"Embedded engine: {args.pages} PDF pages at 144 DPI, {threads} worker threads, 1 ONNX Runtime thread each",
        [
            ("RapidOCR directly", f"{direct_rate:.2f} pages/s"),
            (
                "through the app",
                f"{app_rate:.2f} pages/s ({pages_done} pages, server CPU {app_cpu:.1f} s, "
                f"{app_cpu / (args.pages / app_rate):.2f} cores busy)",
            ),
            ("ratio", f"{app_rate / direct_rate:.2f}× (target ≥ 0.9×)"),
        ],
    )


if __name__ == "__main__":
    main()
