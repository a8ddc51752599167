"""The NDJSON API with the vLLM engine, against the fake vLLM server over real HTTP and the real openai client."""

from __future__ import annotations

import hashlib

import pytest

from ocr.models import OcrJob, OcrPage
from testing.documents import SAMPLES, make_numbered_pdf

from .conftest import frames_of, image_text, page_text
from .contract import assert_contract

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]

TEXT = "# Invoice 42\n\nTotal: **12.50 EUR**\n\n<table><tr><td>a</td><td>b</td></tr></table>"


@pytest.fixture
def png() -> bytes:
    return SAMPLES["short"].render()


async def test_image_frames_follow_the_contract_and_carry_the_engines_text(api, fake_vllm, png):
    fake_vllm.set_default(text=TEXT)

    response, frames = await api.ocr("image", png, name="scan.png")

    assert response.status_code == 200
    end = assert_contract(frames, "image")
    assert end["status"] == "done"
    assert image_text(frames) == TEXT
    assert frames[0]["engine"] == "openai" and frames[0]["model"] == "deepseek-ai/DeepSeek-OCR"
    record = fake_vllm.requests[-1]
    assert end["usage"]["prompt_tokens"] == record["prompt_tokens"], "usage comes from vLLM's usage chunk"
    assert end["usage"]["completion_tokens"] == record["completion_tokens"]
    assert end["usage"]["estimated"] is False
    assert end["usage"]["completion_chars"] == len(TEXT)
    assert end["usage"]["input_bytes"] == len(png)


async def test_the_request_is_exactly_what_deepseek_ocr_needs(api, fake_vllm, png, settings):
    settings.LLM_MAX_TOKENS = 3000

    await api.ocr("image", png, prompt="<|grounding|>Convert the document to markdown.")

    record = fake_vllm.requests[-1]
    body = record["body"]
    assert record["path"] == "/v1/chat/completions"
    assert body["model"] == "deepseek-ai/DeepSeek-OCR"
    assert body["temperature"] == 0
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["skip_special_tokens"] is False
    assert body["vllm_xargs"] == {
        "ngram_size": 30,
        "window_size": 90,
        "whitelist_token_ids": [128821, 128822],
    }
    assert body["max_tokens"] == 3000
    [message] = body["messages"]
    assert message["role"] == "user"
    image_part, text_part = message["content"]
    assert image_part["type"] == "image_url" and image_part["image_url"]["url"].startswith("data:image/png;base64,")
    assert text_part == {"type": "text", "text": "<|grounding|>Convert the document to markdown."}
    [image] = record["images"]
    assert image["sha256"] == hashlib.sha256(png).hexdigest(), "a PNG upload is sent as it is"


async def test_older_servers_get_no_list_values_in_vllm_xargs(api, fake_vllm, png, settings):
    settings.LLM_NGRAM_WHITELIST = []

    _, frames = await api.ocr("image", png)

    assert assert_contract(frames, "image")["status"] == "done"
    assert fake_vllm.requests[-1]["body"]["vllm_xargs"] == {"ngram_size": 30, "window_size": 90}


async def test_pdf_pages_run_in_parallel_and_each_gets_start_and_end(api, fake_vllm, settings):
    settings.OCR_PAGE_CONCURRENCY = 3
    fake_vllm.set_default(tokens=20, token_delay=0.01)

    _, frames = await api.ocr("pdf", make_numbered_pdf(3), name="three.pdf")

    end = assert_contract(frames, "pdf")
    assert end["status"] == "done"
    assert fake_vllm.stats["max_in_flight"] == 3, "three pages in flight at once"
    starts = [i for i, f in enumerate(frames) if f["type"] == "page_start"]
    first_end = next(i for i, f in enumerate(frames) if f["type"] == "page_end")
    assert len(starts) == 3 and max(starts) < first_end, "all pages started before any ended"
    job = await OcrJob.objects.aget(pk=end["job_id"])
    pages = [page async for page in OcrPage.objects.filter(job=job).order_by("number")]
    assert [page.text for page in pages] == [page_text(frames, n) for n in (1, 2, 3)]
    assert job.prompt_tokens == sum(page.prompt_tokens for page in pages) == end["usage"]["prompt_tokens"] > 0
    assert all(record["images"][0]["width"] > 1000 for record in fake_vllm.requests), "rendered at 144 DPI"


async def test_page_concurrency_is_bounded_by_the_process_wide_engine_limit(api, fake_vllm, settings):
    settings.OCR_PAGE_CONCURRENCY = 8
    settings.OCR_ENGINE_CONCURRENCY = 2
    fake_vllm.set_default(tokens=10, token_delay=0.01)

    _, frames = await api.ocr("pdf", make_numbered_pdf(6))

    assert assert_contract(frames, "pdf")["status"] == "done"
    assert fake_vllm.stats["max_in_flight"] == 2


async def test_a_page_cut_off_by_the_token_limit_is_recorded_not_hidden(api, fake_vllm, png):
    fake_vllm.set_default(finish_reason="length", tokens=30)

    _, frames = await api.ocr("image", png)

    end = assert_contract(frames, "image")
    assert end["status"] == "partial"
    assert end["error"]["code"] == "engine_cut_off"
    page = await OcrPage.objects.aget(job_id=end["job_id"])
    assert page.status == "truncated" and page.finish_reason == "length"
    assert page.text == image_text(frames) != ""


async def test_one_failed_page_makes_a_partial_job_with_that_pages_error(api, fake_vllm, settings):
    settings.OCR_PAGE_CONCURRENCY = 1
    fake_vllm.push_script({}, {"fail_status": 500, "fail_message": "CUDA out of memory"}, {})

    _, frames = await api.ocr("pdf", make_numbered_pdf(3))

    end = assert_contract(frames, "pdf")
    assert end["status"] == "partial"
    page_ends = {f["page"]: f for f in frames_of(frames, "page_end")}
    assert [page_ends[n]["status"] for n in (1, 2, 3)] == ["done", "failed", "done"]
    assert page_ends[2]["error"]["code"] == "engine_error"
    assert "CUDA out of memory" in page_ends[2]["error"]["message"]
    job = await OcrJob.objects.aget(pk=end["job_id"])
    assert (job.status, job.pages_done, job.pages_failed) == ("partial", 2, 1)


async def test_a_server_without_usage_reports_gives_estimated_usage(api, fake_vllm, png):
    fake_vllm.set_default(include_usage=False, tokens=12)

    _, frames = await api.ocr("image", png)

    end = assert_contract(frames, "image")
    assert end["status"] == "done"
    assert end["usage"]["estimated"] is True
    assert end["usage"]["completion_tokens"] == 12
    assert end["usage"]["prompt_tokens"] == 0


FAULTS = {
    "http_500_before_stream": ({"fail_status": 500}, "engine_error"),
    "http_400_before_stream": ({"fail_status": 400, "fail_message": "image too large"}, "engine_bad_request"),
    "http_503_before_stream": ({"fail_status": 503}, "engine_unavailable"),
    "error_chunk_mid_stream": ({"tokens": 50, "error_after": 5}, "engine_error"),
    "dropped_connection": ({"tokens": 50, "drop_after": 5}, "engine_error"),
    "stall_past_idle_timeout": ({"tokens": 50, "stall_after": 5, "stall_seconds": 30}, "engine_timeout"),
    "no_first_token": ({"first_token_delay": 30}, "engine_timeout"),
}


@pytest.mark.parametrize("fault", FAULTS, ids=list(FAULTS))
async def test_an_engine_fault_ends_in_a_well_formed_failed_stream(api, fake_vllm, png, settings, fault):
    behaviour, code = FAULTS[fault]
    settings.OCR_ENGINE_FIRST_TOKEN_TIMEOUT = 1.0
    settings.OCR_ENGINE_IDLE_TIMEOUT = 0.5
    # 503 is retried; make every attempt fail.
    fake_vllm.set_default(**behaviour)

    _, frames = await api.ocr("image", png)

    end = assert_contract(frames, "image")
    assert end["status"] == "failed"
    assert frames[-2]["error"]["code"] == code
    job = await OcrJob.objects.aget(pk=end["job_id"])
    assert (job.status, job.error_code) == ("failed", code)
    page = await OcrPage.objects.aget(job=job)
    assert page.status == "failed"
    assert page.text == image_text(frames), "text streamed before the failure is kept"
    if behaviour.get("error_after") or behaviour.get("drop_after") or behaviour.get("stall_after"):
        assert page.text, "the failure came mid-stream, after some text"


async def test_an_engine_that_is_down_ends_in_a_failed_stream(api, fake_vllm, png, settings):
    settings.LLM_BASE_URL = "http://127.0.0.1:9/v1"  # discard port: nothing listens

    _, frames = await api.ocr("image", png)

    end = assert_contract(frames, "image")
    assert end["status"] == "failed"
    assert frames[-2]["error"]["code"] == "engine_unavailable"
    assert (await OcrJob.objects.aget(pk=end["job_id"])).status == "failed"


async def test_an_engine_that_refuses_503_once_is_retried(api, fake_vllm, png):
    fake_vllm.push_script({"fail_status": 503})
    fake_vllm.set_default(text=TEXT)

    _, frames = await api.ocr("image", png)

    assert assert_contract(frames, "image")["status"] == "done"
    assert image_text(frames) == TEXT
