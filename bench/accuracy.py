"""Accuracy of the embedded engine: the app's engine path against RapidOCR called directly, same pixels, same run.

The set comes from ``testing.documents.accuracy_set`` (columns, skew, turned pages, small text, headings, tables,
forms, receipts, Chinese, born-digital and scanned PDFs), each page with its ground truth in reading order. Each
page is read twice, alternately, by one RapidOCR instance with the app's settings: bare (``RapidOCR(image)``,
its lines joined in its own order) and through ``LocalEngine.recognise`` (reading order, orientation, structure;
the Markdown it streams is turned into plain text before it is compared). PDF pages are rendered at the app's
144 DPI. CER counts spaces (``testing.cer``). Pages are read one at a time, so the times are latencies and the
pages per second are one page's worth of the machine.

Usage: ``python -m bench.accuracy [--fast] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, replace


@dataclass
class Result:
    name: str
    kind: str
    bare_cer: float
    app_cer: float
    bare_seconds: float
    app_seconds: float
    first_text_seconds: float | None
    text_layer: bool = False
    #: With the app's default configuration (``make_engine(like_bare=False)``), the page read alone.
    default_first_text_seconds: float | None = None

    @property
    def delta(self) -> float:
        return self.app_cer - self.bare_cer


def page_pixels(page):  # -> PIL.Image.Image
    return page_input(page)[0]


def page_input(page):  # -> tuple[PIL.Image.Image, list | None, float]
    """The page's pixels (a PDF rendered at 144 DPI), its trusted text layer as the app's intake reads it, and
    the seconds reading the layer took (counted in the app's time)."""
    from PIL import Image

    if page.kind == "image":
        return Image.open(io.BytesIO(page.data)).convert("RGB"), None, 0.0
    import pypdfium2 as pdfium

    from ocr.engines.textlayer import read_text_layer

    document = pdfium.PdfDocument(page.data)
    try:
        pdf_page = document[0]
        started = time.perf_counter()
        layer = read_text_layer(pdf_page, 144 / 72)
        seconds = time.perf_counter() - started
        return pdf_page.render(scale=144 / 72).to_pil().convert("RGB"), layer, seconds
    finally:
        document.close()


def make_engine(*, like_bare: bool = True):
    """The app's embedded engine. ``like_bare``: one page at a time on one ONNX Runtime thread, exactly as the
    bare baseline runs; otherwise the app's default configuration (a page read alone detects on every core)."""
    import django

    # Only the OCR settings are read; a development configuration needs no secrets.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "myocr.settings")
    os.environ.setdefault("DEBUG", "true")
    django.setup()
    from ocr.config import ocr_config
    from ocr.engines.local import LocalEngine

    config = replace(ocr_config(), engine="local")
    if like_bare:
        config = replace(config, local_threads=1, engine_concurrency=1)
    return LocalEngine(config)


def read_bare(engine, image) -> tuple[str, float]:
    import numpy as np

    pixels = np.ascontiguousarray(np.asarray(image)[:, :, ::-1])
    started = time.perf_counter()
    result = engine._rapidocr()(pixels)
    return "\n".join(result.txts or ()), time.perf_counter() - started


async def read_app(engine, image, number: int = 1, text_layer=None) -> tuple[str, float, float | None]:
    """The page's final text (Markdown), its time, and the time to its first delta."""
    from ocr.engines.base import PageImage

    text: list[str] = []
    first: list[float] = []
    started = time.perf_counter()

    def on_delta(delta: str, *, reset: bool = False) -> None:
        if not first:
            first.append(time.perf_counter() - started)
        if reset:
            text.clear()
        text.append(delta)

    page = PageImage(number=number, width=image.width, height=image.height, pixels=image, text_layer=text_layer)
    await engine.recognise(page, "", on_delta)
    return "".join(text), time.perf_counter() - started, first[0] if first else None


def run(
    *, fast: bool = False, names: set[str] | None = None, verbose: bool = False, latency: bool = False
) -> list[Result]:
    from ocr.rendering import plain_text
    from testing.cer import cer
    from testing.documents import accuracy_set

    engine = make_engine()
    default_engine = make_engine(like_bare=False) if latency else None
    pages = [page for page in accuracy_set(fast=fast) if not names or page.name in names]
    inputs = [page_input(page) for page in pages]
    images = [image for image, _, _ in inputs]

    async def main() -> list[Result]:
        await engine.warm_up()
        if default_engine is not None:
            await default_engine.warm_up()
            await read_app(default_engine, images[0])
        read_bare(engine, images[0])
        results = []
        for number, (page, (image, layer, layer_seconds)) in enumerate(zip(pages, inputs, strict=True)):
            # Alternate which reads first, so that neither always meets a warmer cache.
            if number % 2:
                markdown, app_seconds, first = await read_app(engine, image, text_layer=layer)
                bare, bare_seconds = read_bare(engine, image)
            else:
                bare, bare_seconds = read_bare(engine, image)
                markdown, app_seconds, first = await read_app(engine, image, text_layer=layer)
            app = plain_text(markdown)
            app_seconds += layer_seconds
            default_first = None
            if default_engine is not None:
                _, _, default_first = await read_app(default_engine, image, text_layer=layer)
            if verbose:
                print(f"--- {page.name}\n{markdown}\n", file=sys.stderr)
            results.append(
                Result(
                    page.name,
                    page.kind,
                    cer(bare, page.truth),
                    cer(app, page.truth),
                    bare_seconds,
                    app_seconds,
                    first,
                    layer is not None,
                    default_first,
                )
            )
        return results

    return asyncio.run(main())


def report(results: list[Result]) -> None:
    from bench.common import print_table

    rows = [
        (
            result.name,
            f"bare {result.bare_cer:6.1%}  app {result.app_cer:6.1%}  Δ {100 * result.delta:+6.1f} pt   "
            f"{result.bare_seconds:5.2f} s / {result.app_seconds:5.2f} s   first text "
            + (f"{result.first_text_seconds:4.2f} s" if result.first_text_seconds is not None else "  – "),
        )
        for result in results
    ]
    bare_mean = statistics.mean(result.bare_cer for result in results)
    app_mean = statistics.mean(result.app_cer for result in results)
    worst = max(results, key=lambda result: result.delta)
    ocred = [r for r in results if not r.text_layer] or results
    bare_rate = len(ocred) / sum(r.bare_seconds for r in ocred)
    app_rate = len(ocred) / sum(r.app_seconds for r in ocred)
    upright = [r for r in results if not r.name.startswith("rotated_") and not r.text_layer]
    upright_ratio = (len(upright) / sum(r.app_seconds for r in upright)) / (
        len(upright) / sum(r.bare_seconds for r in upright)
    )
    firsts = [result.first_text_seconds for result in results if result.first_text_seconds is not None]
    defaults = [r.default_first_text_seconds for r in results if r.default_first_text_seconds is not None]
    rows += [
        ("mean CER", f"bare {bare_mean:.2%}, app {app_mean:.2%} (app/bare {app_mean / max(bare_mean, 1e-9):.2f})"),
        ("worst file", f"{worst.name}: {100 * worst.delta:+.1f} points against bare (limit +1.0)"),
        (
            "pages/s, OCR",
            f"bare {bare_rate:.2f}, app {app_rate:.2f}, ratio {app_rate / bare_rate:.2f}× "
            f"({upright_ratio:.2f}× on upright image pages; turned pages are detected a second time upright)",
        ),
        (
            "first text",
            f"median {statistics.median(firsts):.2f} s, max {max(firsts):.2f} s after the page starts"
            if firsts
            else "–",
        ),
    ]
    layered = [r for r in results if r.text_layer]
    if layered:
        rows.append(
            (
                "text-layer pages",
                f"{len(layered)} read from the PDF's text: "
                f"{sum(r.bare_seconds for r in layered) / sum(r.app_seconds for r in layered):.0f}× bare's pages/s",
            )
        )
    if defaults:
        rows.append(
            (
                "first text, default",
                f"median {statistics.median(defaults):.2f} s, max {max(defaults):.2f} s with the app's default "
                "configuration (a page read alone detects on every core)",
            )
        )
    print_table(f"Embedded engine accuracy: {len(results)} pages, app vs bare RapidOCR, one page at a time", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fast", action="store_true", help="the smaller set the tests use")
    parser.add_argument("--page", action="append", help="only this page (repeatable)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument(
        "--no-latency", action="store_true", help="skip the first-text latency run in the default configuration"
    )
    parser.add_argument("--verbose", action="store_true", help="print each page's Markdown to stderr")
    args = parser.parse_args()
    results = run(fast=args.fast, names=set(args.page or ()), verbose=args.verbose, latency=not args.no_latency)
    report(results)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump([result.__dict__ for result in results], out, indent=2)


if __name__ == "__main__":
    main()
