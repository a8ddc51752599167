"""The embedded engine on real pages, with the real RapidOCR models: streaming within a page, orientation.

Pages come from ``testing.documents.accuracy_set``; CER is ``testing.cer`` on the Markdown turned plain.
"""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image

from bench.accuracy import make_engine, page_pixels, read_app, read_bare
from ocr.engines import local
from ocr.engines.base import PageImage
from ocr.rendering import plain_text
from testing.cer import cer
from testing.documents import accuracy_set


@pytest.fixture(scope="module")
def engine():
    return make_engine()


def page(name: str):
    return next(item for item in accuracy_set(fast=True) if item.name == name)


async def test_a_page_streams_its_lines_in_reading_order_then_its_structure(engine):
    sample = page("two_columns")
    image = page_pixels(sample)
    calls: list[tuple[str, bool]] = []

    def on_delta(text: str, *, reset: bool = False) -> None:
        calls.append((text, reset))

    completion = await engine.recognise(PageImage(1, image.width, image.height, pixels=image), "", on_delta)

    streamed = [text for text, reset in calls if not reset]
    # Several batches, the first of them only the first lines of the page: the title, then the left column.
    assert len(streamed) >= 3
    assert streamed[0].splitlines()[0] == "Annual Report of the River Archive"
    assert len(streamed[0].splitlines()) <= local.FIRST_BATCH
    assert "".join(streamed).splitlines()[1].startswith("The archive holds letters")
    # Then one reset with the structured page, which is what the page keeps.
    markdown, reset = calls[-1]
    assert reset
    assert [reset for _, reset in calls].count(True) == 1
    assert re.match(r"#{1,2} Annual Report of the River Archive\n\n", markdown)
    assert markdown.count("\n\n") >= 6  # title, 6 paragraphs, footer
    assert cer(plain_text(markdown), sample.truth) < 0.01
    assert completion.layout and len(completion.layout) == len("".join(streamed).splitlines())


async def test_an_upright_line_the_classifier_calls_upside_down_is_read_upright(engine):
    sample = page("one_column")
    image = page_pixels(sample)
    import numpy as np

    pixels = np.ascontiguousarray(np.asarray(image)[:, :, ::-1])
    ocr = engine._rapidocr()
    _, crops = local._detect(ocr, ocr._load_det_model(), pixels)
    sure, _ = local._classify(ocr, crops)
    assert any(sure), "the premise: RapidOCR's classifier turns at least one upright line of this page round"
    bare, _ = read_bare(engine, image)
    assert cer(bare, sample.truth) > 0.02  # and the bare engine reads that line as garbage

    markdown, _, _ = await read_app(engine, image)
    assert cer(plain_text(markdown), sample.truth) < 0.005


@pytest.mark.parametrize("name", ["rotated_90", "rotated_180", "rotated_270"])
async def test_a_turned_page_is_read_upright_with_boxes_on_the_turned_page(engine, name):
    sample = page(name)
    image = Image.open(io.BytesIO(sample.data)).convert("RGB")
    calls: list[str] = []
    completion = await engine.recognise(
        PageImage(1, image.width, image.height, pixels=image), "", lambda text, reset=False: calls.append(text)
    )
    assert cer(plain_text(calls[-1]), sample.truth) < 0.01
    # The boxes are drawn over the page as it was uploaded: turned a quarter, a text line is tall and thin.
    x1, y1, x2, y2 = max(completion.layout, key=lambda item: len(item["text"]))["box"]
    if name == "rotated_180":
        assert x2 - x1 > y2 - y1
    else:
        assert y2 - y1 > 3 * (x2 - x1)


async def test_an_empty_page_gives_no_text_and_no_error(engine):
    image = Image.new("RGB", (640, 480), "white")
    calls: list[str] = []
    completion = await engine.recognise(
        PageImage(1, 640, 480, pixels=image), "", lambda text, reset=False: calls.append(text)
    )
    assert calls == []
    assert completion.layout == []


async def open_pdf_page(data: bytes, text_layer: str) -> PageImage:
    from dataclasses import replace

    from ocr import intake
    from ocr.config import ocr_config

    config = replace(ocr_config(), engine="local", pdf_text_layer=text_layer)
    document = await intake.open_upload(
        intake.Upload(data=data, file_name="doc.pdf"), expected_kind="pdf", config=config
    )
    try:
        return await document.page(1, pixels=True)
    finally:
        await document.aclose()


async def test_a_born_digital_pdf_page_is_read_from_its_text_layer(engine):
    sample = page("pdf_born_digital")
    pdf_page = await open_pdf_page(sample.data, "auto")
    assert pdf_page.text_layer
    calls: list[str] = []
    completion = await engine.recognise(pdf_page, "", lambda text, reset=False: calls.append(text))
    assert completion.source == "text_layer"
    assert len(calls) == 1
    assert cer(plain_text(calls[0]), sample.truth) == 0.0
    # The boxes are where the text is drawn: the title's box lies in the top sixth of the page.
    title = next(item for item in completion.layout if item["text"] == "Notes on the Shipping Records")
    assert 0 < title["box"][1] < title["box"][3] < 999 / 6


async def test_ocr_is_forced_or_needed_when_the_text_layer_cannot_be_used():
    born_digital = page("pdf_born_digital").data
    assert (await open_pdf_page(born_digital, "ocr")).text_layer is None
    # A scan: one page-sized image, no text.
    assert (await open_pdf_page(page("pdf_scanned").data, "auto")).text_layer is None


def test_a_garbage_text_layer_is_not_trusted():
    from ocr.engines.textlayer import clean_share

    assert clean_share("\ufffd\ufffd\ufffd ab") < 0.9
    assert clean_share("\ue000\ue001\ue002\ue003 a") < 0.9
    assert clean_share("Plain text, 中文。") == 1.0
    assert clean_share("   ") == 0.0
