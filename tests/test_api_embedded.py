"""The NDJSON API end to end with the embedded RapidOCR engine on real rendered documents."""

from __future__ import annotations

import pytest

from ocr.models import OcrJob, OcrPage
from testing.cer import cer
from testing.documents import SAMPLES, make_pdf

from .conftest import image_text, page_text
from .contract import assert_contract

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("local_engine")]


async def test_image_streams_the_real_text_of_the_page(api):
    sample = SAMPLES["english"]
    response, frames = await api.ocr("image", sample.render(), name="letter.png")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-ndjson; charset=utf-8"
    end = assert_contract(frames, "image")
    assert end["status"] == "done"
    assert cer(image_text(frames), sample.text) < 0.02
    assert frames[0]["engine"] == "local"
    assert end["usage"]["input_bytes"] == len(sample.render())
    assert end["usage"]["completion_chars"] == len(image_text(frames))
    assert end["usage"]["estimated"] is True, "RapidOCR has no tokenizer: token counts are estimates"


async def test_chinese_text_is_read_with_a_low_error_rate(api):
    sample = SAMPLES["chinese"]
    _, frames = await api.ocr("image", sample.render(fmt="JPEG"), name="zh.jpg")

    assert assert_contract(frames, "image")["status"] == "done"
    assert cer(image_text(frames), sample.text) < 0.02


async def test_three_page_pdf_streams_three_pages_of_real_text(api):
    pages = [
        list(SAMPLES["short"].lines),
        list(SAMPLES["mixed"].lines),
        ["Third page", "The end of the file."],
    ]
    pdf = make_pdf(pages)

    _, frames = await api.ocr("pdf", pdf, name="three.pdf")

    end = assert_contract(frames, "pdf")
    assert end["status"] == "done"
    assert frames[0]["pages"] == 3
    for number, lines in enumerate(pages, start=1):
        assert cer(page_text(frames, number), "\n".join(lines)) < 0.02, f"page {number}"
    job = await OcrJob.objects.aget(pk=end["job_id"])
    assert job.status == "done" and job.pages_done == 3
    stored = [page async for page in OcrPage.objects.filter(job=job).order_by("number")]
    assert [page.text for page in stored] == [page_text(frames, n) for n in (1, 2, 3)]
    assert all(page.layout for page in stored), "line boxes are kept for drawing"
    assert all(0 <= value <= 999 for page in stored for line in page.layout for value in line["box"])


async def test_the_prompt_is_recorded_even_though_the_embedded_engine_ignores_it(api):
    _, frames = await api.ocr("image", SAMPLES["short"].render(), prompt="Describe this image in detail.")

    end = assert_contract(frames, "image")
    job = await OcrJob.objects.aget(pk=end["job_id"])
    assert job.prompt == "Describe this image in detail."
    assert end["usage"]["prompt_chars"] == len("Describe this image in detail.")
