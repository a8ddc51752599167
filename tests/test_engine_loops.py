"""Repetition loops: found while streaming, the request stopped early, the tail cut, the page asked once more with
another strategy; a page that keeps looping ends truncated with the reason. Against the fake vLLM server over real
HTTP, with the real openai client."""

from __future__ import annotations

import random

import pytest
from prometheus_client import REGISTRY

from ocr.engines.loops import MAX_PERIOD, LoopDetector, find_loop
from ocr.models import OcrPage
from testing.documents import SAMPLES

from .conftest import image_text
from .contract import assert_contract

INTRO = "# Inventory\n\nStock at the end of March, by shelf.\n\n"
ROW = "<tr><td>9</td><td>empty</td></tr>"
GOOD = "# Inventory\n\nStock at the end of March, by shelf.\n\n<table><tr><td>9</td><td>empty</td></tr></table>"
#: The fake decodes at 1 ms a token: a loop is seen after ~700 tokens, long before the ~7,000 of max_tokens.
LOOPING = {"text": INTRO, "loop": ROW, "token_delay": 0.001}


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- the detector ------------------------------------------------------------------------------------------


def test_a_repeated_table_row_is_a_loop_and_the_cut_keeps_one_copy() -> None:
    text = INTRO + ROW * 100

    loop = find_loop(text, 2000)

    assert loop is not None and loop.period == len(ROW)
    assert loop.clean(text) == INTRO + ROW
    assert "repeated 100 times" in loop.describe(text)


def test_dots_and_long_sentences_loop_too() -> None:
    dots = "Contents\n" + "." * 2500
    sentence = "The quarterly figures were revised after the audit of the northern branch offices. "
    prose = "Summary: " + sentence * 40

    assert find_loop(dots, 2000).clean(dots) == "Contents\n."
    loop = find_loop(prose, 2000)
    assert loop is not None and loop.period == len(sentence)
    # The run starts at the space before the first sentence, so the copy kept is " The … offices.".
    assert loop.clean(prose) == "Summary: " + sentence.rstrip()


def test_text_without_a_long_repeated_tail_is_not_a_loop() -> None:
    random.seed(7)
    words = ["alpha", "beta", "<td>", "</td>", "row", "\n", "12", "total"]
    varied = " ".join(random.choice(words) for _ in range(4000))
    short_run = INTRO + ROW * 20  # 20 identical rows (660 characters): a real table may have them

    assert find_loop(varied, 2000) is None
    assert find_loop(short_run, 2000) is None
    assert find_loop(ROW * 100, 0) is None, "0 turns detection off"


def test_a_unit_longer_than_the_longest_period_is_not_taken_for_a_loop() -> None:
    random.seed(3)
    unit = "".join(random.choice("abcdefgh ") for _ in range(MAX_PERIOD + 50))

    assert find_loop(unit * 4, 2000) is None


def test_the_detector_sees_the_loop_while_it_streams() -> None:
    detector = LoopDetector(2000)
    fed = 0
    detector.feed(INTRO)
    while detector.loop is None:
        detector.feed(ROW[:10])
        detector.feed(ROW[10:])
        fed += len(ROW)
        assert fed < 4000, "not found within twice the threshold"

    assert detector.loop.clean(detector.text) == INTRO + ROW


# --- the engine, against the fake server --------------------------------------------------------------------


@pytest.fixture
def png() -> bytes:
    return SAMPLES["short"].render()


@pytest.fixture
def loops(fake_vllm, settings):
    settings.LLM_MAX_TOKENS = 100_000  # an upper bound: each request asks for what the context leaves
    settings.LLM_LOOP_CHARS = 2000
    return fake_vllm


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
async def test_a_looping_page_is_stopped_early_and_asked_again_with_a_stricter_ngram_ban(api, loops, png):
    stream_loops = metric("ocr_engine_loops_total", profile="deepseek-ocr", stage="stream")
    recovered = metric("ocr_engine_loop_retries_total", profile="deepseek-ocr", result="recovered")
    loop_endings = metric("ocr_engine_completions_total", profile="deepseek-ocr", finish_reason="loop")
    loops.push_script(LOOPING, {"text": GOOD})

    _, frames = await api.ocr("image", png, prompt="<|grounding|>Convert the document to markdown.")

    end = assert_contract(frames, "image")
    assert end["status"] == "done"
    assert image_text(frames) == GOOD, "the retry's text replaced the cut first attempt"
    page = await OcrPage.objects.aget(job_id=end["job_id"])
    assert page.text == GOOD and page.status == "done"
    first, second = loops.requests
    assert first["outcome"] == "aborted", "the looping request was cancelled, not run to its end"
    assert first["completion_tokens"] < first["max_tokens"] // 4
    assert loops.stats["aborted"] == 1 and loops.stats["completed"] == 1
    # The same request but for the n-gram arguments: DeepSeek's PDF script's size and a window three times as long.
    expected = dict(first["body"])
    expected["vllm_xargs"] = {"ngram_size": 20, "window_size": 270, "whitelist_token_ids": [128821, 128822]}
    assert second["body"] == expected
    assert end["usage"]["estimated"] is True, "the stopped request sent no usage"
    assert end["usage"]["completion_tokens"] >= first["completion_tokens"] // 2 + second["completion_tokens"]
    assert metric("ocr_engine_loops_total", profile="deepseek-ocr", stage="stream") == stream_loops + 1
    assert metric("ocr_engine_loop_retries_total", profile="deepseek-ocr", result="recovered") == recovered + 1
    assert metric("ocr_engine_completions_total", profile="deepseek-ocr", finish_reason="loop") == loop_endings + 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
async def test_a_page_that_keeps_looping_ends_truncated_with_the_clean_text_and_the_reason(api, loops, png):
    looped = metric("ocr_engine_loop_retries_total", profile="deepseek-ocr", result="looped")
    cut_off = metric("ocr_engine_errors_total", code="engine_cut_off")
    loops.push_script(LOOPING, LOOPING)

    _, frames = await api.ocr("image", png)

    end = assert_contract(frames, "image")
    assert end["status"] == "partial" and end["error"]["code"] == "engine_cut_off"
    message = end["error"]["message"]
    assert "repetition loop" in message and f"“{ROW}” repeated" in message and "looped again" in message
    assert image_text(frames) == INTRO + ROW, "one copy of the row, no repeated tail"
    page = await OcrPage.objects.aget(job_id=end["job_id"])
    assert (page.status, page.finish_reason, page.text) == ("truncated", "length", INTRO + ROW)
    assert page.error_message == message
    assert [r["outcome"] for r in loops.requests] == ["aborted", "aborted"]
    assert metric("ocr_engine_loop_retries_total", profile="deepseek-ocr", result="looped") == looped + 1
    assert metric("ocr_engine_errors_total", code="engine_cut_off") == cut_off + 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
async def test_without_the_ngram_processor_the_retry_uses_the_plain_prompt(api, loops, png, settings):
    settings.LLM_NGRAM_SIZE = 0
    loops.push_script(LOOPING, {"text": GOOD})

    _, frames = await api.ocr("image", png, prompt="<|grounding|>Convert the document to markdown.")

    assert assert_contract(frames, "image")["status"] == "done"
    first, second = loops.requests
    assert "vllm_xargs" not in first["body"] and "vllm_xargs" not in second["body"]
    assert first["body"]["messages"][0]["content"][1]["text"] == "<|grounding|>Convert the document to markdown."
    assert second["body"]["messages"][0]["content"][1]["text"] == "Free OCR."
    assert second["body"]["max_tokens"] > first["body"]["max_tokens"], "a shorter prompt leaves more room"


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
async def test_when_the_retry_fails_the_first_attempts_clean_text_is_kept(api, loops, png):
    failed = metric("ocr_engine_loop_retries_total", profile="deepseek-ocr", result="failed")
    loops.push_script(LOOPING, {"fail_status": 400, "fail_message": "bad luck"})

    _, frames = await api.ocr("image", png)

    end = assert_contract(frames, "image")
    assert end["status"] == "partial" and "bad luck" in end["error"]["message"]
    assert image_text(frames) == INTRO + ROW
    page = await OcrPage.objects.aget(job_id=end["job_id"])
    assert (page.status, page.text) == ("truncated", INTRO + ROW)
    assert metric("ocr_engine_loop_retries_total", profile="deepseek-ocr", result="failed") == failed + 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
async def test_a_page_cut_off_without_a_loop_is_not_retried(api, loops, png, settings):
    settings.LLM_MAX_TOKENS = 40
    loops.set_default(tokens=200)

    _, frames = await api.ocr("image", png)

    end = assert_contract(frames, "image")
    assert end["error"]["code"] == "engine_cut_off" and "token limit" in end["error"]["message"]
    assert len(loops.requests) == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
async def test_with_detection_off_a_loop_runs_to_the_token_limit_as_before(api, loops, png, settings):
    settings.LLM_LOOP_CHARS = 0
    settings.LLM_MAX_TOKENS = 1000
    loops.set_default(text=INTRO, loop=ROW)

    _, frames = await api.ocr("image", png)

    end = assert_contract(frames, "image")
    page = await OcrPage.objects.aget(job_id=end["job_id"])
    assert (page.status, page.finish_reason) == ("truncated", "length")
    assert "token limit" in page.error_message
    [record] = loops.requests
    assert record["outcome"] == "completed" and record["completion_tokens"] == 1000
