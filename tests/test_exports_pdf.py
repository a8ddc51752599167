"""``result.pdf``: the original pages with an invisible text layer, read back with poppler's pdftotext and PDFium.

The embedded engine reads real rendered documents; DeepSeek-OCR's grounding output is stored as the engine writes
it. What a reader of the PDF gets (pdftotext's text, word boxes, page sizes) is compared with what was recognised.
"""

from __future__ import annotations

import io
import re
import subprocess
from html import unescape

import pikepdf
import pypdfium2 as pdfium
import pytest
from django.core.files.base import ContentFile
from django.test import Client
from PIL import Image

from ocr.models import OcrJob, OcrPage
from ocr.rendering import render_page
from testing.cer import cer
from testing.documents import SAMPLES, make_image_pdf

from .conftest import image_text

pytestmark = [pytest.mark.django_db(transaction=True)]

WORD = re.compile(
    r'<word xMin="(?P<x1>[\d.]+)" yMin="(?P<y1>[\d.]+)" xMax="(?P<x2>[\d.]+)" yMax="(?P<y2>[\d.]+)">'
    r"(?P<text>.*?)</word>"
)
PAGE = re.compile(r'<page width="(?P<width>[\d.]+)" height="(?P<height>[\d.]+)">(?P<body>.*?)</page>', re.DOTALL)


def pdftotext(data: bytes, *options: str) -> str:
    """What poppler's pdftotext reads from ``data`` (the Makefile's system-deps installs poppler-utils)."""
    result = subprocess.run(["pdftotext", *options, "-", "-"], input=data, capture_output=True, check=True)
    return result.stdout.decode("utf-8")


def page_words(data: bytes) -> list[tuple[float, float, list[tuple[str, tuple[float, float, float, float]]]]]:
    """Per page: its unrotated width and height (pt) and its words with boxes (pt from the top left, as shown)."""
    pages = []
    for page in PAGE.finditer(pdftotext(data, "-bbox")):
        words = [
            (unescape(word["text"]), (float(word["x1"]), float(word["y1"]), float(word["x2"]), float(word["y2"])))
            for word in WORD.finditer(page["body"])
        ]
        pages.append((float(page["width"]), float(page["height"]), words))
    return pages


def page_sizes(data: bytes) -> list[tuple[float, float]]:
    pdf = pdfium.PdfDocument(data)
    try:
        sizes = []
        for index in range(len(pdf)):
            page = pdf[index]
            sizes.append(page.get_size())
            # Opens and renders without an error, every page.
            page.render(scale=0.25).close()
            page.close()
        return sizes
    finally:
        pdf.close()


def image_streams(data: bytes) -> list[bytes]:
    """The encoded bytes of every image on every page, in page order."""
    with pikepdf.open(io.BytesIO(data)) as pdf:
        return [
            image.read_raw_bytes()
            for page in pdf.pages
            for image in _images(page.obj.get("/Resources", pikepdf.Dictionary()))
        ]


def _images(resources: pikepdf.Object) -> list[pikepdf.Stream]:
    found = []
    for _name, xobject in (resources.get("/XObject") or pikepdf.Dictionary()).items():
        if xobject.get("/Subtype") == "/Image":
            found.append(xobject)
        elif xobject.get("/Subtype") == "/Form":
            found.extend(_images(xobject.get("/Resources", pikepdf.Dictionary())))
    return found


def inside(word: tuple[float, float, float, float], box: tuple[float, float, float, float], slack: float) -> bool:
    return (
        word[0] >= box[0] - slack
        and word[1] >= box[1] - slack
        and word[2] <= box[2] + slack
        and word[3] <= box[3] + slack
    )


def points(box: list[int] | tuple[int, ...], width: float, height: float) -> tuple[float, float, float, float]:
    """A 0–999 box in points from the top left of a ``width`` × ``height`` page."""
    return (box[0] / 999 * width, box[1] / 999 * height, box[2] / 999 * width, box[3] / 999 * height)


@pytest.mark.usefixtures("local_engine")
async def test_a_scanned_pdf_keeps_its_pages_and_gets_the_recognised_lines_as_searchable_text(api):
    original = make_image_pdf([SAMPLES["english"].render(), SAMPLES["mixed"].render()])
    _, frames = await api.ocr("pdf", original, name="scan.pdf")
    assert frames[-1]["status"] == "done"
    job_id = frames[-1]["job_id"]

    response = await api.get(f"/api/jobs/{job_id}/result.pdf")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    assert 'filename="scan.pdf"' in response["Content-Disposition"]
    result = response.content
    assert page_sizes(result) == page_sizes(original)
    assert image_streams(result) == image_streams(original), "the scanned images are copied, not re-encoded"
    stored = [page async for page in OcrPage.objects.filter(job_id=job_id).order_by("number")]
    for page in stored:
        recognised = render_page(page.text, page.layout).plain
        extracted = pdftotext(result, "-f", str(page.number), "-l", str(page.number))
        assert cer(extracted, recognised) < 0.02, f"page {page.number}: {extracted!r}"
    # Each word a reader selects lies on the line the engine recognised it on.
    for page, (width, height, words) in zip(stored, page_words(result), strict=True):
        lines = [points(line["box"], width, height) for line in page.layout]
        assert len(words) >= 10
        for text, box in words:
            assert any(inside(box, line, slack=1.0) for line in lines), f"page {page.number}: {text!r} at {box}"


@pytest.mark.usefixtures("local_engine")
async def test_a_chinese_photo_becomes_one_page_with_the_jpeg_as_it_was_and_its_text(api):
    photo = SAMPLES["chinese"].render(fmt="JPEG")
    _, frames = await api.ocr("image", photo, name="照片.jpg")
    assert frames[-1]["status"] == "done"

    response = await api.get(f"/api/jobs/{frames[-1]['job_id']}/result.pdf")

    assert response.status_code == 200
    result = response.content
    assert cer(pdftotext(result), image_text(frames)) < 0.02
    assert cer(pdftotext(result), SAMPLES["chinese"].text) < 0.02
    assert image_streams(result) == [photo], "the JPEG is embedded as uploaded"
    with Image.open(io.BytesIO(photo)) as image:
        dpi = image.info.get("dpi", (96, 96))[0] or 96
        expected = (image.width * 72 / dpi, image.height * 72 / dpi)
    assert page_sizes(result) == [pytest.approx(expected, abs=0.01)]


GROUNDED = (
    "<|ref|>title<|/ref|><|det|>[[100, 60, 600, 110]]<|/det|>\n# 季度报告 Quarterly report\n\n"
    "<|ref|>text<|/ref|><|det|>[[100, 200, 900, 300]]<|/det|>\n"
    "Sales rose in every region.\n销售额在各个地区均有增长。\n\n"
    "<|ref|>table<|/ref|><|det|>[[100, 400, 900, 500]]<|/det|>\n"
    "<table><tr><td>North</td><td>12</td></tr><tr><td>South</td><td>15</td></tr></table>\n"
)


def grounded_job(owner, data: bytes, texts: list[str], **fields) -> OcrJob:
    job = OcrJob(
        owner=owner,
        kind="pdf",
        source="api",
        status="done",
        file_name="report.pdf",
        content_type="application/pdf",
        engine="openai",
        model="deepseek-ai/DeepSeek-OCR",
        page_count=len(texts),
        pages_done=len(texts),
        **fields,
    )
    job.upload.save("upload", ContentFile(data), save=False)
    job.save()
    for number, text in enumerate(texts, start=1):
        OcrPage.objects.create(job=job, number=number, status="done", text=text)
    return job


def rotated(data: bytes, page_index: int) -> bytes:
    with pikepdf.open(io.BytesIO(data)) as pdf:
        pdf.pages[page_index].Rotate = 90
        buffer = io.BytesIO()
        pdf.save(buffer)
        return buffer.getvalue()


def test_grounding_blocks_are_placed_on_their_boxes_in_reading_order_even_on_a_rotated_page(alice, api):
    blank = make_image_pdf([_png(1200, 800)] * 3)
    original = rotated(blank, 1)
    plain = "A page without boxes.\n没有框的一页。"
    job = grounded_job(alice, original, [GROUNDED, GROUNDED, plain])

    response = Client().get(f"/api/jobs/{job.pk}/result.pdf", headers=api.headers())

    assert response.status_code == 200
    result = response.content
    assert page_sizes(result) == page_sizes(original)
    expected_text = render_page(GROUNDED).plain
    for number in (1, 2):
        # Reading order: the blocks as the engine wrote them, on the upright page too (-raw: the order of the text in
        # the file, which copy-and-paste follows; the default mode would read the table's stretched row as columns).
        extracted = pdftotext(result, "-raw", "-f", str(number), "-l", str(number))
        assert cer(extracted, expected_text) < 0.02, number
    assert cer(pdftotext(result, "-f", "3", "-l", "3"), plain) < 0.02
    blocks = render_page(GROUNDED).blocks
    # pdftotext gives the words as displayed but the page's size unrotated: the size as displayed is PDFium's.
    for (width, height), (_, _, words) in zip(page_sizes(result)[:2], page_words(result)[:2], strict=True):
        boxes = [points(block.boxes[0], width, height) for block in blocks]
        for text, box in words:
            assert any(inside(box, block, slack=1.0) for block in boxes), f"{text!r} at {box} ({width}×{height})"


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buffer, format="PNG")
    return buffer.getvalue()


def test_without_the_upload_result_pdf_is_refused_and_the_text_formats_still_work(alice, api):
    job = grounded_job(alice, make_image_pdf([_png(600, 400)]), [GROUNDED])
    job.upload.delete(save=False)
    OcrJob.objects.filter(pk=job.pk).update(upload="")

    refused = Client().get(f"/api/jobs/{job.pk}/result.pdf", headers=api.headers())
    browser = Client()
    browser.force_login(alice)
    page = browser.get(f"/jobs/{job.pk}/result.pdf", follow=True)

    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "upload_gone"
    assert Client().get(f"/api/jobs/{job.pk}/result.md", headers=api.headers()).status_code == 200
    assert page.redirect_chain == [(f"/jobs/{job.pk}/", 302)]
    html = page.content.decode()
    assert "there is no searchable PDF" in html
    assert "result.pdf" not in html, "no link to a PDF that cannot be made"


def test_the_job_page_links_the_searchable_pdf(alice):
    job = grounded_job(alice, make_image_pdf([_png(600, 400)]), [GROUNDED])
    browser = Client()
    browser.force_login(alice)

    html = browser.get(f"/jobs/{job.pk}/").content.decode()
    download = browser.get(f"/jobs/{job.pk}/result.pdf")

    assert f'href="/jobs/{job.pk}/result.pdf"' in html
    assert download.status_code == 200
    assert download["Content-Type"] == "application/pdf"
    assert cer(pdftotext(download.content, "-raw"), render_page(GROUNDED).plain) < 0.02
