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
