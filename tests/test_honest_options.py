"""What the embedded engine cannot do is not offered, and what it did is said: presets it cannot follow are
disabled with the reason, a prompt it never saw is not shown, and a page read from a PDF's text layer says so."""

from __future__ import annotations

import pytest
from django.test import Client

from ocr.forms import UploadForm
from ocr.models import OcrJob, OcrPage
from testing.documents import SAMPLES, make_numbered_pdf

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def alice_client(alice) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def upload(preset: str, text: str = "") -> UploadForm:
    from django.core.files.uploadedfile import SimpleUploadedFile

    image = SimpleUploadedFile("page.png", SAMPLES["short"].render(), content_type="image/png")
    return UploadForm({"preset": preset, "text": text}, {"file": image})


@pytest.mark.parametrize("preset", ["describe", "figure", "locate", "custom"])
def test_the_embedded_engine_refuses_presets_it_cannot_follow(preset, local_engine):
    form = upload(preset, text="total")
    assert not form.is_valid()
    assert "DeepSeek-OCR engine" in " ".join(form.errors["preset"])


@pytest.mark.parametrize("preset", ["default", "markdown", "document", "image_layout"])
def test_the_embedded_engine_takes_the_presets_it_can_follow(preset, local_engine):
    assert upload(preset).is_valid()


def test_the_vllm_engine_takes_every_preset(fake_vllm):
    assert upload("describe").is_valid() and upload("locate", text="total").is_valid()


def test_the_upload_page_disables_what_the_embedded_engine_cannot_do(alice_client, local_engine):
    content = alice_client.get("/").content.decode()
    assert content.count('class="preset preset--unavailable"') == 4
    assert 'value="describe" disabled' in content and 'value="default" checked' in content


def test_the_upload_page_offers_every_preset_with_the_vllm_engine(alice_client, fake_vllm):
    assert "preset--unavailable" not in alice_client.get("/").content.decode()


def test_a_job_page_does_not_show_a_prompt_the_embedded_engine_never_saw(alice, alice_client):
    job = OcrJob.objects.create(
        owner=alice, kind="image", status="done", file_name="a.png", content_type="image/png",
        engine="local", prompt="<|grounding|>Convert the document to markdown.",
    )  # fmt: skip
    assert "grounding" not in alice_client.get(f"/jobs/{job.pk}/").content.decode()
    OcrJob.objects.filter(pk=job.pk).update(engine="openai")
    assert "grounding" in alice_client.get(f"/jobs/{job.pk}/").content.decode()


async def test_a_born_digital_pdf_is_read_from_its_text_layer_and_says_so(api, local_engine, alice):
    response, frames = await api.ocr("pdf", make_numbered_pdf(2), name="born-digital.pdf")
    assert response.status_code == 200
    ends = [frame for frame in frames if frame["type"] == "page_end"]
    assert [frame.get("source") for frame in ends] == ["text_layer", "text_layer"]
    job_id = frames[0]["job_id"]
    sources = [page.source async for page in OcrPage.objects.filter(job_id=job_id).order_by("number")]
    assert sources == ["text_layer", "text_layer"]
    stored = (await api.get(f"/api/jobs/{job_id}")).json()
    assert [page["source"] for page in stored["pages_detail"]] == ["text_layer", "text_layer"]


def test_the_job_page_says_a_page_was_read_from_the_text_layer(alice, alice_client):
    job = OcrJob.objects.create(
        owner=alice, kind="pdf", status="done", file_name="a.pdf", content_type="application/pdf", engine="local",
        page_count=2,
    )  # fmt: skip
    OcrPage.objects.create(job=job, number=1, status="done", text="born digital", source="text_layer")
    OcrPage.objects.create(job=job, number=2, status="done", text="scanned")
    content = alice_client.get(f"/jobs/{job.pk}/").content.decode()
    assert content.count('data-source="text_layer"') == 1


def test_the_live_header_says_running_once_a_runner_takes_a_queued_job(alice):
    from ocr.fragments import LiveRenderer
    from ocr.live import Batch

    job = OcrJob.objects.create(
        owner=alice, kind="pdf", status="queued", file_name="a.pdf", content_type="application/pdf",
        engine="openai", page_count=1, detached=True,
    )  # fmt: skip
    renderer = LiveRenderer(job=job, csrf_token="token")
    html = renderer.render(Batch(1, [{"type": "start", "job_id": str(job.pk)}, {"type": "page_start", "page": 1}]))
    assert 'data-job-status="running"' in html and 'data-job-status="queued"' not in html
    assert "badge--running" in html


async def test_a_request_may_ask_to_ocr_every_page_of_a_born_digital_pdf(api, local_engine):
    from django.core.files.uploadedfile import SimpleUploadedFile

    form = {"file": SimpleUploadedFile("a.pdf", make_numbered_pdf(1)), "text_layer": "ocr"}
    response = await api.client.post("/api/ocr/pdf", form, headers=api.headers())
    assert response.status_code == 200
    body = b"".join([chunk async for chunk in response.streaming_content])
    [end] = [line for line in body.splitlines() if b'"page_end"' in line]
    assert b'"source"' not in end, "OCRed, not read from the text layer"


async def test_an_unknown_text_layer_choice_is_refused(api, local_engine):
    from django.core.files.uploadedfile import SimpleUploadedFile

    form = {"file": SimpleUploadedFile("a.pdf", make_numbered_pdf(1)), "text_layer": "maybe"}
    response = await api.client.post("/api/ocr/pdf", form, headers=api.headers())
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_text_layer"


def test_the_upload_page_offers_the_text_layer_choice_with_the_embedded_engine(alice_client, local_engine):
    content = alice_client.get("/").content.decode()
    assert 'name="text_layer" value="auto"' in content and 'name="text_layer" value="ocr"' in content
