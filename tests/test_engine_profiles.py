"""Model profiles: DeepSeek-OCR and DeepSeek-OCR 2 count image tokens differently, and each request asks for the
output tokens the context leaves after that page's prompt. Exact requests against fakes of both models."""

from __future__ import annotations

import io
import logging
from typing import Any

import pytest
from PIL import Image
from prometheus_client import REGISTRY

from ocr.config import ocr_config
from ocr.engines import profiles
from ocr.engines.profiles import DEEPSEEK_OCR, DEEPSEEK_OCR_2, GENERIC, MARGIN, choose_profile
from ocr.engines.vllm import VllmEngine
from ocr.models import OcrPage
from testing.fake_vllm import FakeVllm, image_token_count

from .conftest import close_engine_clients
from .contract import assert_contract

OCR2 = "deepseek-ai/DeepSeek-OCR-2"
PROMPT = "<|grounding|>Convert the document to markdown."
#: The images with the most prompt tokens: DeepSeek-OCR's 1×6 grid of 640² tiles (933), DeepSeek-OCR 2's six
#: 768² tiles (1,121).
LARGEST_V1 = (640 * 1, 640 * 6)
LARGEST_V2 = (768 * 2, 768 * 3)
SIZES = [(500, 400), (640, 640), (641, 640), (1224, 1584), (1584, 1224), (800, 3000), (3000, 500), (768, 769)]


def png_of(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buffer, format="PNG")
    return buffer.getvalue()


# --- the accounting -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_each_profile_counts_image_tokens_as_its_model_does(size: tuple[int, int]) -> None:
    assert DEEPSEEK_OCR.image_tokens(*size) == image_token_count(*size)
    assert DEEPSEEK_OCR_2.image_tokens(*size) == image_token_count(*size, OCR2)
    assert GENERIC.image_tokens(*size) >= max(image_token_count(*size), image_token_count(*size, OCR2))


def test_the_largest_images_take_933_and_1121_tokens() -> None:
    assert DEEPSEEK_OCR.image_tokens(*LARGEST_V1) == 933
    assert DEEPSEEK_OCR_2.image_tokens(*LARGEST_V2) == 1121
    assert DEEPSEEK_OCR_2.image_tokens(*LARGEST_V1) == 257 + 144 * 6
    assert DEEPSEEK_OCR_2.image_tokens(700, 768) == 257, "no tiles up to 768 px"


def test_max_tokens_is_the_setting_or_what_the_context_leaves() -> None:
    prompt_tokens = 1 + 1121 + len(PROMPT.encode())
    assert DEEPSEEK_OCR_2.max_tokens(4096, *LARGEST_V2, PROMPT) == 4096
    assert DEEPSEEK_OCR_2.max_tokens(100_000, *LARGEST_V2, PROMPT) == 8192 - prompt_tokens - MARGIN
    assert DEEPSEEK_OCR_2.max_tokens(100_000, *LARGEST_V2, PROMPT, context=4096) == 4096 - prompt_tokens - MARGIN
    assert DEEPSEEK_OCR.max_tokens(100_000, 100, 100, "字" * 3000) == 1, "never below 1: vLLM says why"


@pytest.mark.parametrize(
    ("choice", "model", "expected"),
    [
        ("auto", "deepseek-ai/DeepSeek-OCR", DEEPSEEK_OCR),
        ("auto", "deepseek-ai/DeepSeek-OCR-2", DEEPSEEK_OCR_2),
        ("auto", "/models/deepseek_ocr2/", DEEPSEEK_OCR_2),
        ("auto", "ocr", GENERIC),
        ("deepseek-ocr-2", "ocr", DEEPSEEK_OCR_2),
        ("generic", "deepseek-ai/DeepSeek-OCR", GENERIC),
    ],
)
def test_the_profile_comes_from_the_setting_or_the_models_name(choice, model, expected) -> None:
    assert choose_profile(choice, model) is expected


# --- requests against the fakes -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_ocr2() -> Any:
    with FakeVllm.run_in_thread(model=OCR2) as fake:
        yield fake


@pytest.fixture
def ocr2(fake_ocr2, settings) -> Any:
    fake_ocr2.reset()
    settings.OCR_ENGINE = "openai"
    settings.LLM_BASE_URL = fake_ocr2.base_url
    settings.LLM_MODEL = OCR2
    settings.OCR_ENGINE_FIRST_TOKEN_TIMEOUT = 5.0
    settings.OCR_ENGINE_IDLE_TIMEOUT = 2.0
    settings.OCR_ENGINE_TOTAL_TIMEOUT = 30.0
    yield fake_ocr2
    fake_ocr2.reset()
    close_engine_clients()


def assert_fits(record: dict[str, Any], image_tokens: int) -> None:
    assert record["status"] == 200, record.get("error")
    assert record["images"][0]["tokens"] == image_tokens
    expected = 8192 - (1 + image_tokens + len(PROMPT.encode())) - MARGIN
    assert record["body"]["max_tokens"] == expected
    assert record["prompt_tokens"] + record["body"]["max_tokens"] <= 8192


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
async def test_deepseek_ocr_the_largest_image_asks_for_what_the_context_leaves(api, fake_vllm, settings):
    settings.LLM_MAX_TOKENS = 100_000
    fake_vllm.set_default(tokens=30)

    _, frames = await api.ocr("image", png_of(*LARGEST_V1), prompt=PROMPT)

    assert assert_contract(frames, "image")["status"] == "done"
    assert_fits(fake_vllm.requests[-1], 933)


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
async def test_deepseek_ocr2_the_largest_image_asks_for_what_the_context_leaves(api, ocr2, settings):
    settings.LLM_MAX_TOKENS = 100_000
    ocr2.set_default(tokens=30)

    _, frames = await api.ocr("image", png_of(*LARGEST_V2), prompt=PROMPT)

    end = assert_contract(frames, "image")
    assert end["status"] == "done"
    assert frames[0]["model"] == OCR2
    record = ocr2.requests[-1]
    assert_fits(record, 1121)
    assert record["body"]["model"] == OCR2
    assert end["usage"]["prompt_tokens"] == record["prompt_tokens"]
    assert REGISTRY.get_sample_value("ocr_engine_model_info", {"profile": "deepseek-ocr-2", "model": OCR2}) == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
async def test_deepseek_ocr2_a_v1_budget_would_overflow_where_the_fitted_one_does_not(api, ocr2, settings):
    # 7,200 fits DeepSeek-OCR's largest image (933 tokens) but not DeepSeek-OCR 2's (1,121).
    settings.LLM_MAX_TOKENS = 7200
    ocr2.set_default(tokens=30)

    _, frames = await api.ocr("image", png_of(*LARGEST_V2), prompt=PROMPT)

    assert assert_contract(frames, "image")["status"] == "done"
    record = ocr2.requests[-1]
    assert record["prompt_tokens"] + 7200 > 8192, "the unfitted budget would have been refused"
    assert_fits(record, 1121)


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
async def test_a_small_budget_is_sent_as_it_is(api, ocr2, settings):
    settings.LLM_MAX_TOKENS = 3000

    _, frames = await api.ocr("image", png_of(*LARGEST_V2), prompt=PROMPT)

    end = assert_contract(frames, "image")
    assert ocr2.requests[-1]["body"]["max_tokens"] == 3000
    page = await OcrPage.objects.aget(job_id=end["job_id"])
    assert page.status == "done"


async def test_a_served_name_is_resolved_from_the_servers_model_card(settings, caplog) -> None:
    with FakeVllm.run_in_thread(model="ocr", root=OCR2, max_model_len=6000) as fake:
        settings.OCR_ENGINE = "openai"
        settings.LLM_BASE_URL = fake.base_url
        settings.LLM_MODEL = "ocr"
        with caplog.at_level(logging.WARNING, logger="ocr.engines.vllm"):
            engine = VllmEngine(ocr_config())
        assert engine.profile is profiles.GENERIC
        assert "LLM_MODEL=ocr is not a model this app knows" in caplog.text
        try:
            await engine.warm_up()
        finally:
            await engine.aclose()
        assert engine.profile is profiles.DEEPSEEK_OCR_2
        assert engine.context == 6000
