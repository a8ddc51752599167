"""Bad uploads get a clear 4xx JSON error before any stream starts, and no job is created."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from ocr.models import OcrJob
from testing.documents import BAD_INPUTS, ODD_GOOD_INPUTS, giant_page_pdf, make_numbered_pdf

from .conftest import Api
from .contract import assert_contract

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("local_engine")]

# What the API answers for each kind of library-level problem.
EXPECTED = {
    "empty": (400, {"empty_file"}),
    "unidentified": (None, {"unsupported_type", "wrong_kind", "corrupt_file"}),  # 422 when the magic matches
    "decode": (422, {"corrupt_file"}),
    "verify": (422, {"corrupt_file"}),
    "pixels": (422, {"image_too_large"}),
    "side": (422, {"bad_dimensions"}),
    "pdf_open": (None, {"corrupt_file", "unsupported_type", "wrong_kind", "empty_pdf"}),
    "pdf_password": (422, {"encrypted_pdf"}),
    "pdf_page_count": (422, {"too_many_pages"}),
}

REFUSED = [
    (bad, endpoint)
    for bad in BAD_INPUTS.values()
    if bad.check in EXPECTED
    for endpoint in (("image", "pdf") if bad.endpoint == "both" else (bad.endpoint,))
]


def test_at_least_fifteen_kinds_of_bad_input_are_tried():
    assert len({bad.name for bad, _ in REFUSED}) >= 15


@pytest.mark.parametrize(("bad", "endpoint"), REFUSED, ids=[f"{b.name}-{e}" for b, e in REFUSED])
async def test_bad_upload_is_refused_with_a_clear_error(api: Api, bad, endpoint):
    response = await api.post_file(endpoint, bad.data, name=bad.filename)

    status, codes = EXPECTED[bad.check]
    assert not response.streaming, "refused before the stream starts"
    assert 400 <= response.status_code < 500
    if status is not None:
        assert response.status_code == status, response.json()
    error = response.json()["error"]
    assert error["code"] in codes, error
    assert len(error["message"]) > 10
    assert await OcrJob.objects.acount() == 0


async def test_the_client_content_type_and_file_name_are_not_trusted(api: Api):
    response = await api.post_file("image", b"<html><body>hi</body></html>", name="photo.png")

    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_type"


async def test_a_pdf_sent_to_the_image_endpoint_is_pointed_to_the_pdf_endpoint(api: Api):
    response = await api.post_file("image", make_numbered_pdf(1), name="doc.pdf")

    assert response.status_code == 415
    error = response.json()["error"]
    assert error["code"] == "wrong_kind" and "/api/ocr/pdf" in error["message"]


async def test_an_upload_over_the_size_limit_is_refused(api: Api, settings):
    settings.OCR_MAX_UPLOAD_BYTES = 1000

    response = await api.post_file("pdf", make_numbered_pdf(3), name="doc.pdf")

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large"


async def test_a_pdf_over_the_page_limit_is_refused(api: Api, settings):
    settings.OCR_MAX_PDF_PAGES = 2

    response = await api.post_file("pdf", make_numbered_pdf(3), name="doc.pdf")

    assert response.status_code == 422
    assert response.json()["error"] == {
        "code": "too_many_pages",
        "message": "The PDF has 3 pages; the limit is 2.",
    }


async def test_a_request_without_a_file_field_is_refused(api: Api):
    response = await api.client.post("/api/ocr/image", {"prompt": "hi"}, headers=api.headers())

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "missing_file"


async def test_a_prompt_that_is_too_long_is_refused(api: Api):
    response = await api.post_file("image", ODD_GOOD_INPUTS["jpeg_named_png"].factory(), prompt="x" * 5000)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_prompt"


@pytest.mark.parametrize(
    ("endpoint", "field", "value", "code"),
    [
        ("/api/ocr/image", "prompt", "read\x00this", "invalid_prompt"),
        ("/api/ocr/pdf", "text_layer", "ocr\x00", "invalid_text_layer"),
        ("/api/jobs", "callback_url", "https://example.com/\x00hook", "invalid_callback_url"),
        ("/api/jobs", "callback_url", "   ", "invalid_callback_url"),
    ],
)
async def test_a_field_with_a_nul_character_or_only_spaces_gets_that_field_s_code(
    api: Api, endpoint, field, value, code
):
    """The codes are the contract: a NUL character in a field is that field's error, not a generic one."""
    upload = SimpleUploadedFile("page.png", ODD_GOOD_INPUTS["jpeg_named_png"].factory())
    response = await api.client.post(endpoint, {"file": upload, field: value}, headers=api.headers())

    assert response.status_code == 400, response.content[:300]
    assert response.json()["error"]["code"] == code


async def test_a_giant_pdf_page_is_rendered_within_the_pixel_cap(api: Api, settings):
    settings.OCR_MAX_RENDER_PIXELS = 1_000_000

    _, frames = await api.ocr("pdf", giant_page_pdf(), name="poster.pdf")

    end = assert_contract(frames, "pdf")
    assert end["status"] in ("done", "failed")  # a blank poster has no text; the point is it was rendered
    page = await (await OcrJob.objects.aget(pk=end["job_id"])).pages.aget(number=1)
    assert page.width * page.height <= 1_000_000


@pytest.mark.parametrize("good", ODD_GOOD_INPUTS.values(), ids=list(ODD_GOOD_INPUTS))
async def test_unusual_but_valid_uploads_are_read(api: Api, good):
    from testing.cer import cer

    from .conftest import image_text, page_text

    _, frames = await api.ocr(good.endpoint, good.factory(), name=good.filename)

    end = assert_contract(frames, good.endpoint)
    assert end["status"] == "done"
    if good.endpoint == "image":
        assert cer(image_text(frames), good.pages[0]) < 0.02
    else:
        for number, expected in enumerate(good.pages, start=1):
            assert cer(page_text(frames, number), expected) < 0.02
