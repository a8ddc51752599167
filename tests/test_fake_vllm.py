"""The fake vLLM server speaks vLLM's DeepSeek-OCR wire format to the real ``openai`` client.

Every test talks HTTP on 127.0.0.1 to a fresh server; no Django needed.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import math
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from testing import fake_vllm_text as sample
from testing.fake_vllm import (
    DEFAULT_MODEL,
    Behaviour,
    FakeVllm,
    estimate_text_tokens,
    image_token_count,
)

MODEL = DEFAULT_MODEL
TEXT = 'Invoice "Q1"\n\nC:\\data — 25 °C, 3 µg/L\t<table><tr><td>1</td></tr></table>\n'
PROMPT = "Free OCR."
ROOT = Path(__file__).resolve().parent.parent


def data_url(width: int = 640, height: int = 640) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def ocr_messages(text: str = PROMPT, image: str | None = None) -> list[dict[str, Any]]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": image or data_url()}},
                {"type": "text", "text": text},
            ],
        }
    ]


def expected_prompt_tokens(text: str = PROMPT, images: int = 1) -> int:
    """BOS + 273 per small image + text estimate of the rendered ``<image>\\n``-prefixed prompt."""
    rendered = "\n" * images + text
    return 1 + 273 * images + estimate_text_tokens(rendered)


@pytest.fixture
async def fake() -> AsyncIterator[FakeVllm]:
    async with FakeVllm(tokens=40) as server:
        yield server


@pytest.fixture
async def client(fake: FakeVllm) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=fake.base_url, api_key="unused", max_retries=0, timeout=10) as c:
        yield c


async def http(method: str, url: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.request(method, url, **kwargs) as response:
        return response.status, dict(response.headers), await response.read()


async def drain(stream: AsyncIterator[Any], into: list[Any]) -> None:
    """Collect chunks into ``into`` so a test can inspect them after the stream raised."""
    async for chunk in stream:
        into.append(chunk)


def parse_events(raw: bytes) -> list[Any]:
    """Split an SSE body into decoded ``data:`` payloads, asserting vLLM's exact framing."""
    text = raw.decode()
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    payloads: list[Any] = []
    for event in events:
        assert event.startswith("data: "), event
        assert "\n" not in event
        body = event[len("data: ") :]
        payloads.append(body if body == "[DONE]" else json.loads(body))
        if body != "[DONE]":
            # Compact separators and raw UTF-8, as pydantic's model_dump_json writes them.
            assert body == json.dumps(payloads[-1], separators=(",", ":"), ensure_ascii=False)
    return payloads


# --- streaming -----------------------------------------------------------------------


async def test_stream_with_usage_yields_role_content_finish_usage(fake: FakeVllm, client: AsyncOpenAI) -> None:
    fake.set_default(text=TEXT)
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=ocr_messages(),
        stream=True,
        stream_options={"include_usage": True},
        temperature=0.0,
        max_tokens=2048,
        extra_body={"skip_special_tokens": False, "vllm_xargs": {"ngram_size": 30, "window_size": 90}},
    )
    chunks = [chunk async for chunk in stream]

    first, *content, finish, usage = chunks
    assert first.choices[0].delta.role == "assistant"
    assert first.choices[0].delta.content == ""
    assert first.choices[0].finish_reason is None
    assert all(c.choices[0].finish_reason is None for c in content)
    assert finish.choices[0].finish_reason == "stop"
    assert finish.choices[0].delta.content == ""
    assert usage.choices == []
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == TEXT
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].id.startswith("chatcmpl-")
    assert {c.model for c in chunks} == {MODEL}
    assert {c.object for c in chunks} == {"chat.completion.chunk"}

    completion_tokens = len(sample.tokenize(TEXT)) + 1  # + EOS
    assert len(content) == completion_tokens - 1
    assert usage.usage is not None
    assert usage.usage.completion_tokens == completion_tokens
    assert usage.usage.prompt_tokens == expected_prompt_tokens()
    assert usage.usage.total_tokens == usage.usage.prompt_tokens + completion_tokens


async def test_stream_bytes_are_framed_exactly_like_vllm(fake: FakeVllm, client: AsyncOpenAI) -> None:
    fake.set_default(text=TEXT)
    async with client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=ocr_messages(), stream=True, stream_options={"include_usage": True}
    ) as response:
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.headers["transfer-encoding"] == "chunked"
        raw = b"".join([part async for part in response.iter_bytes()])

    events = parse_events(raw)
    assert events[-1] == "[DONE]"
    role, *content, finish, usage = events[:-1]
    assert list(role) == ["id", "object", "created", "model", "choices"]
    assert role["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    ]
    assert content[0]["choices"] == [
        {"index": 0, "delta": {"content": content[0]["choices"][0]["delta"]["content"]}, "logprobs": None,
         "finish_reason": None}
    ]  # fmt: skip
    assert finish["choices"] == [
        {"index": 0, "delta": {"content": ""}, "logprobs": None, "finish_reason": "stop", "stop_reason": None}
    ]
    assert list(usage) == ["id", "object", "created", "model", "choices", "usage"]
    assert usage["choices"] == []
    assert list(usage["usage"]) == ["prompt_tokens", "total_tokens", "completion_tokens"]
    assert len({(e["id"], e["created"], e["model"]) for e in events[:-1]}) == 1


async def test_stream_iter_lines_alternate_data_and_blank(fake: FakeVllm, client: AsyncOpenAI) -> None:
    async with client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=ocr_messages(), stream=True
    ) as response:
        lines = [line async for line in response.iter_lines()]

    data_lines = [line for line in lines if line]
    assert all(line.startswith("data: ") for line in data_lines)
    assert data_lines[-1] == "data: [DONE]"
    # Without stream_options there is no usage chunk: role, 40 tokens, EOS/finish, [DONE].
    assert len(data_lines) == 1 + 40 + 1 + 1
    assert "usage" not in data_lines[-2]


async def test_x_request_id_becomes_the_completion_id(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model=MODEL, messages=ocr_messages(), stream=True, extra_headers={"X-Request-Id": "page-7"}
    )
    ids = {chunk.id async for chunk in stream}
    assert ids == {"chatcmpl-page-7"}


async def test_chunk_tokens_groups_tokens_per_delta(fake: FakeVllm, client: AsyncOpenAI) -> None:
    fake.set_default(tokens=10, chunk_tokens=4)
    stream = await client.chat.completions.create(model=MODEL, messages=ocr_messages(), stream=True)
    chunks = [chunk async for chunk in stream]
    # 10 text tokens + EOS = 11 tokens -> deltas of 4, 4, 3 (the last one ends with EOS).
    assert len(chunks) == 1 + 3
    assert chunks[-1].choices[0].finish_reason == "stop"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "".join(sample.document_tokens(10, grounded=False))


# --- non-streaming -------------------------------------------------------------------


async def test_non_stream_response_shape(fake: FakeVllm, client: AsyncOpenAI) -> None:
    fake.set_default(text=TEXT)
    raw = await client.chat.completions.with_raw_response.create(model=MODEL, messages=ocr_messages())
    body = json.loads(raw.content)
    assert list(body) == ["id", "object", "created", "model", "choices", "usage", "prompt_logprobs"]
    assert body["object"] == "chat.completion"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": TEXT, "tool_calls": []},
            "logprobs": None,
            "finish_reason": "stop",
            "stop_reason": None,
        }
    ]
    completion_tokens = len(sample.tokenize(TEXT)) + 1
    assert body["usage"] == {
        "prompt_tokens": expected_prompt_tokens(),
        "total_tokens": expected_prompt_tokens() + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None,
    }
    parsed = raw.parse()
    assert parsed.choices[0].message.content == TEXT


# --- validation errors ---------------------------------------------------------------


async def test_unknown_model_is_404(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="gpt-4o", messages=ocr_messages())
    assert caught.value.body == {
        "message": "The model `gpt-4o` does not exist.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }


async def test_context_overflow_message(client: AsyncOpenAI) -> None:
    prompt_tokens = expected_prompt_tokens()
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=MODEL, messages=ocr_messages(), max_tokens=8000)
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "BadRequestError"
    assert body["param"] == "max_tokens"
    assert body["code"] == 400
    assert body["message"] == (
        f"'max_tokens' or 'max_completion_tokens' is too large: 8000. This model's maximum context length is "
        f"8192 tokens and your request has {prompt_tokens} input tokens (8000 > 8192 - {prompt_tokens}). "
        f"(parameter=max_tokens, value=8000)"
    )


async def test_omitted_max_tokens_allows_rest_of_context(fake: FakeVllm, client: AsyncOpenAI) -> None:
    await client.chat.completions.create(model=MODEL, messages=ocr_messages())
    assert fake.requests[-1]["max_tokens"] == 8192 - expected_prompt_tokens()


@pytest.mark.parametrize(
    ("xargs", "message"),
    [
        ({"ngram_size": 0}, "`ngram_size` has to be a strictly positive integer, got 0."),
        ({"ngram_size": "30"}, "`ngram_size` has to be a strictly positive integer, got 30."),
        (
            {"ngram_size": 30, "window_size": -1},
            "`window_size` has to be a strictly positive integer, got -1.",
        ),
        (
            {"ngram_size": 30, "whitelist_token_ids": 5},
            "`whitelist_token_ids` has to be a sequence of integers, got 5.",
        ),
    ],
)
async def test_bad_ngram_xargs_are_400(client: AsyncOpenAI, xargs: dict[str, Any], message: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=MODEL, messages=ocr_messages(), extra_body={"vllm_xargs": xargs})
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["message"] == message


LIST_XARGS = {"ngram_size": 30, "window_size": 90, "whitelist_token_ids": [128821, 128822]}


async def test_list_xargs_accepted_by_current_servers(client: AsyncOpenAI) -> None:
    response = await client.chat.completions.create(
        model=MODEL, messages=ocr_messages(), extra_body={"vllm_xargs": LIST_XARGS}
    )
    assert response.choices[0].finish_reason == "stop"


async def test_list_xargs_rejected_like_old_servers() -> None:
    async with (
        FakeVllm(tokens=3, reject_list_xargs=True) as server,
        AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0) as c,
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            await c.chat.completions.create(model=MODEL, messages=ocr_messages(), extra_body={"vllm_xargs": LIST_XARGS})
        body = caught.value.body
        assert isinstance(body, dict)
        assert body["param"] == "body.vllm_xargs.whitelist_token_ids"
        assert body["message"].startswith("1 validation error:")
        # Scalars only, as old clients send them, still pass.
        response = await c.chat.completions.create(
            model=MODEL,
            messages=ocr_messages(),
            extra_body={"vllm_xargs": {"ngram_size": 30, "window_size": 90}},
        )
        assert response.choices[0].finish_reason == "stop"


async def test_api_key_guards_v1_only() -> None:
    async with FakeVllm(api_key="sekret") as server:
        async with AsyncOpenAI(base_url=server.base_url, api_key="wrong", max_retries=0) as bad:
            with pytest.raises(openai.AuthenticationError) as caught:
                await bad.chat.completions.create(model=MODEL, messages=ocr_messages())
        assert caught.value.status_code == 401
        assert caught.value.response.json() == {"error": "Unauthorized"}
        async with AsyncOpenAI(base_url=server.base_url, api_key="sekret", max_retries=0) as good:
            models = await good.models.list()
            assert [m.id for m in models.data] == [MODEL]
        status, _, body = await http("GET", f"{server.url}/health")
        assert (status, body) == (200, b"")
        status, _, _ = await http("GET", f"{server.url}/v1/models")
        assert status == 401
        assert server.stats["unauthorized"] == 2


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        (ocr_messages("<image>\n<image>\nFree OCR."), "Found more '<image>' placeholders in input prompt"),
        (
            [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
            "Conversation roles must alternate user/assistant/user/assistant/...",
        ),
        (ocr_messages(image="data:image/png;base64,bm90IGFuIGltYWdl"), "Failed to load image"),
        (ocr_messages(image="https://example.com/page.png"), "remote images disabled in fake"),
        (ocr_messages(image="data:image/png;base64,@@@"), "Failed to decode base64 image data"),
    ],
)
async def test_prompt_errors_are_400(
    fake: FakeVllm, client: AsyncOpenAI, messages: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["message"].startswith(message)
    assert caught.value.body["type"] == "BadRequestError"
    assert fake.stats["rejected"] == 1
    assert fake.requests[-1]["outcome"] == "rejected"


async def test_schema_errors_are_400_not_422(fake: FakeVllm) -> None:
    url = f"{fake.base_url}/chat/completions"
    status, _, body = await http("POST", url, data=b"{not json", headers={"Content-Type": "application/json"})
    assert status == 400
    assert json.loads(body)["error"]["type"] == "Bad Request"
    status, _, body = await http("POST", url, json={"model": MODEL})
    assert status == 400
    assert json.loads(body)["error"]["param"] == "body.messages"
    status, _, body = await http("POST", url, json={"messages": ocr_messages(), "stream_options": {"a": 1}})
    assert status == 400
    assert "Stream options can only be defined when `stream=True`." in json.loads(body)["error"]["message"]


async def test_unknown_fields_ignored_and_model_optional(fake: FakeVllm) -> None:
    body = {"messages": ocr_messages(), "frobnicate": {"x": 1}, "top_k": 3}
    status, _, raw = await http("POST", f"{fake.base_url}/chat/completions", json=body)
    assert status == 200
    assert json.loads(raw)["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("size", "tokens"),
    [((640, 640), 273), ((1280, 640), 483), ((640, 1280), 493), ((1280, 1280), 693), ((1920, 1280), 893),
     ((1280, 1920), 903), ((6000, 900), 883), ((900, 6000), 933), ((100, 50), 273)],
)  # fmt: skip
def test_image_token_count_matches_gundam_mode(size: tuple[int, int], tokens: int) -> None:
    assert image_token_count(*size) == tokens


async def test_usage_counts_tiled_image_tokens(client: AsyncOpenAI) -> None:
    response = await client.chat.completions.create(model=MODEL, messages=ocr_messages(image=data_url(1280, 640)))
    assert response.usage is not None
    assert response.usage.prompt_tokens == expected_prompt_tokens() - 273 + 483


# --- behaviour control ---------------------------------------------------------------


async def test_fail_status_returns_http_error_before_streaming(fake: FakeVllm, client: AsyncOpenAI) -> None:
    fake.push_script(Behaviour(fail_status=503, fail_message="engine sleeping"))
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model=MODEL, messages=ocr_messages(), stream=True)
    assert caught.value.status_code == 503
    assert caught.value.body == {
        "message": "engine sleeping",
        "type": "ServiceUnavailableError",
        "param": None,
        "code": 503,
    }
    assert fake.stats["failed"] == 1


async def test_error_after_sends_error_chunk_then_done(fake: FakeVllm, client: AsyncOpenAI) -> None:
    fake.push_script(Behaviour(error_after=3), Behaviour(error_after=3))
    async with client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=ocr_messages(), stream=True
    ) as response:
        events = parse_events(b"".join([part async for part in response.iter_bytes()]))
    assert len(events) == 1 + 3 + 2
    assert events[-2] == {
        "error": {
            "message": "Internal server error",
            "type": "InternalServerError",
            "param": None,
            "code": 500,
        }
    }
    assert events[-1] == "[DONE]"

    stream = await client.chat.completions.create(model=MODEL, messages=ocr_messages(), stream=True)
    seen: list[Any] = []
    with pytest.raises(openai.APIError, match="Internal server error"):
        await drain(stream, seen)
    assert len(seen) == 4
    assert fake.stats["failed"] == 2


async def test_drop_after_breaks_the_stream(fake: FakeVllm, client: AsyncOpenAI) -> None:
    fake.push_script(Behaviour(drop_after=5))
    stream = await client.chat.completions.create(model=MODEL, messages=ocr_messages(), stream=True)
    seen: list[Any] = []
    with pytest.raises(openai.APIConnectionError):
        await drain(stream, seen)
    assert len(seen) == 1 + 5
    stats = await fake.wait_for(lambda s: s["dropped"] == 1)
    assert stats["aborted"] == 0
    assert stats["in_flight"] == 0


async def test_non_stream_error_and_drop(fake: FakeVllm, client: AsyncOpenAI) -> None:
    fake.push_script(Behaviour(error_after=2), Behaviour(drop_after=2))
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model=MODEL, messages=ocr_messages())
    assert caught.value.status_code == 500
    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(model=MODEL, messages=ocr_messages())
    stats = await fake.wait_for(lambda s: s["dropped"] == 1)
    assert stats["failed"] == 1


async def test_stall_after_pauses_between_chunks(fake: FakeVllm, client: AsyncOpenAI) -> None:
    fake.push_script(Behaviour(tokens=6, stall_after=2, stall_seconds=0.4))
    stream = await client.chat.completions.create(model=MODEL, messages=ocr_messages(), stream=True)
    arrivals = []
    async for _ in stream:
        arrivals.append(time.monotonic())
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    # Chunks: role, c1, c2, <stall>, c3 ... The role chunk and c1 are written together. The stall is a lower
    # bound the fake guarantees; how fast the other chunks come is the machine's business.
    assert len(arrivals) == 8  # the role chunk, six content chunks, the final chunk
    assert gaps[2] >= 0.38


async def test_finish_reason_length_from_max_tokens_and_override(fake: FakeVllm, client: AsyncOpenAI) -> None:
    response = await client.chat.completions.create(model=MODEL, messages=ocr_messages(), max_tokens=10)
    assert response.choices[0].finish_reason == "length"
    assert response.usage is not None
    assert response.usage.completion_tokens == 10
    assert response.choices[0].message.content == "".join(sample.document_tokens(10, grounded=False))

    fake.push_script(Behaviour(tokens=12, finish_reason="length"))
    stream = await client.chat.completions.create(
        model=MODEL, messages=ocr_messages(), stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-2].choices[0].finish_reason == "length"
    # With "length" the last chunk carries the last token's text (no EOS step).
    assert chunks[-2].choices[0].delta.content
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 12


async def test_grounding_markup_only_without_skip_special_tokens(client: AsyncOpenAI) -> None:
    prompt = "<|grounding|>Convert the document to markdown."

    async def run(skip: bool) -> str:
        response = await client.chat.completions.create(
            model=MODEL, messages=ocr_messages(prompt), extra_body={"skip_special_tokens": skip}
        )
        return response.choices[0].message.content or ""

    raw, skipped = await run(False), await run(True)
    assert raw.startswith("<|ref|>title<|/ref|><|det|>[[")
    assert "<|/det|>\n# Regional Water Quality Report 2024\n\n<|ref|>text<|/ref|>" in raw
    assert "<|" not in skipped
    assert skipped.startswith("title[[")
    plain = await client.chat.completions.create(
        model=MODEL, messages=ocr_messages(), extra_body={"skip_special_tokens": False}
    )
    assert "<|ref|>" not in (plain.choices[0].message.content or "")


async def test_script_consumed_in_order_then_default(fake: FakeVllm, client: AsyncOpenAI) -> None:
    fake.set_default(text="default")
    fake.push_script(Behaviour(text="first"), {"text": "second"})
    # A request rejected by validation does not consume a script entry.
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="nope", messages=ocr_messages())
    texts = []
    for _ in range(3):
        response = await client.chat.completions.create(model=MODEL, messages=ocr_messages())
        texts.append(response.choices[0].message.content)
    assert texts == ["first", "second", "default"]
    assert fake.script == []


async def test_client_disconnect_counts_as_abort(fake: FakeVllm, client: AsyncOpenAI) -> None:
    fake.set_default(token_delay=0.05)
    stream = await client.chat.completions.create(model=MODEL, messages=ocr_messages(), stream=True)
    first = await stream.__anext__()
    assert first.choices[0].delta.role == "assistant"
    await stream.close()
    stats = await fake.wait_for(lambda s: s["aborted"] == 1)
    assert stats["in_flight"] == 0
    assert stats["completed"] == 0
    assert fake.requests[-1]["outcome"] == "aborted"
    families = await scrape(fake)
    assert sample_value(families, "vllm:request_success_total", finished_reason="abort") == 1


async def test_disconnect_while_queued_and_max_concurrency() -> None:
    async with (
        FakeVllm(max_concurrency=1, tokens=5, token_delay=0.05) as server,
        AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0) as c,
    ):
        running = asyncio.create_task(c.chat.completions.create(model=MODEL, messages=ocr_messages()))
        queued = asyncio.create_task(c.chat.completions.create(model=MODEL, messages=ocr_messages()))
        stats = await server.wait_for(lambda s: s["waiting"] == 1 and s["in_flight"] == 2)
        assert stats["max_in_flight"] == 2
        families = await scrape(server)
        assert sample_value(families, "vllm:num_requests_waiting") == 1
        assert sample_value(families, "vllm:num_requests_running") == 1
        queued.cancel()
        await server.wait_for(lambda s: s["aborted"] == 1 and s["waiting"] == 0)
        response = await running
        assert response.choices[0].finish_reason == "stop"
        assert server.stats["completed"] == 1


async def test_wait_for_times_out(fake: FakeVllm) -> None:
    with pytest.raises(TimeoutError, match="condition not met"):
        await fake.wait_for(lambda s: s["completed"] > 0, timeout=0.05)


def test_behaviour_rejects_bad_fields() -> None:
    with pytest.raises(ValueError, match="chunk_tokens"):
        Behaviour(chunk_tokens=0)
    with pytest.raises(ValueError, match="fail_status"):
        Behaviour(fail_status=200)
    with pytest.raises(ValueError, match="unknown Behaviour fields: bogus"):
        Behaviour.from_dict({"bogus": 1})


# --- control endpoints ---------------------------------------------------------------


async def test_control_endpoint_scripts_and_records(fake: FakeVllm, client: AsyncOpenAI) -> None:
    status, _, body = await http(
        "POST",
        f"{fake.url}/_fake/control",
        json={"reset": True, "default": {"text": "dflt"}, "script": [{"fail_status": 500}, {"tokens": 2}]},
    )
    assert status == 200
    state = json.loads(body)
    assert [b["fail_status"] for b in state["script"]] == [500, None]
    assert state["script"][1]["text"] == "dflt"  # script entries inherit from the default

    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model=MODEL, messages=ocr_messages())
    ok = await client.chat.completions.create(model=MODEL, messages=ocr_messages(), extra_headers={"X-Trace": "t1"})
    assert ok.choices[0].message.content == "dflt"

    status, _, body = await http("GET", f"{fake.url}/_fake/requests")
    records = json.loads(body)
    assert [r["outcome"] for r in records] == ["failed", "completed"]
    assert records[1]["headers"]["x-trace"] == "t1"
    assert records[1]["prompt"] == "<image>\nFree OCR."
    assert records[1]["images"][0]["width"] == 640
    url = records[1]["body"]["messages"][0]["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert url.endswith(" chars>")

    status, _, body = await http("GET", f"{fake.url}/_fake/stats")
    assert json.loads(body)["requests"] == 2

    status, _, body = await http("POST", f"{fake.url}/_fake/control", json={"script": [{"tokenz": 1}]})
    assert status == 400
    assert "tokenz" in json.loads(body)["error"]
    status, _, body = await http("POST", f"{fake.url}/_fake/control", json={"healthy": False})
    assert status == 200
    status, _, _ = await http("GET", f"{fake.url}/health")
    assert status == 503


# --- other endpoints -----------------------------------------------------------------


async def scrape(server: FakeVllm) -> dict[str, Any]:
    status, headers, body = await http("GET", f"{server.url}/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(body.decode())}


def sample_value(families: dict[str, Any], sample_name: str, **labels: str) -> float:
    for family in families.values():
        for s in family.samples:
            if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"no sample {sample_name} {labels}")


async def test_metrics_have_vllm_names_and_labels(fake: FakeVllm, client: AsyncOpenAI) -> None:
    fake.set_default(tokens=20)
    for _ in range(2):
        stream = await client.chat.completions.create(model=MODEL, messages=ocr_messages(), stream=True)
        assert len([chunk async for chunk in stream]) == 22
    await client.chat.completions.create(model=MODEL, messages=ocr_messages(), max_tokens=5)
    await fake.wait_for(lambda s: s["completed"] == 3)

    families = await scrape(fake)
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prompt_tokens",
        "vllm:generation_tokens",
        "vllm:request_success",
        "vllm:num_preemptions",
        "vllm:time_to_first_token_seconds",
        "vllm:inter_token_latency_seconds",
        "vllm:e2e_request_latency_seconds",
        "vllm:request_prompt_tokens",
        "vllm:request_generation_tokens",
        "vllm:request_queue_time_seconds",
        "vllm:request_prefill_time_seconds",
        "vllm:request_decode_time_seconds",
        "process_cpu_seconds",
    ):
        assert name in families, name
    labels = {"model_name": MODEL, "engine": "0"}
    assert sample_value(families, "vllm:request_success_total", finished_reason="stop", **labels) == 2
    assert sample_value(families, "vllm:request_success_total", finished_reason="length", **labels) == 1
    assert sample_value(families, "vllm:request_success_total", finished_reason="error", **labels) == 0
    assert sample_value(families, "vllm:prompt_tokens_total", **labels) == 3 * expected_prompt_tokens()
    assert sample_value(families, "vllm:generation_tokens_total", **labels) == 21 + 21 + 5
    assert sample_value(families, "vllm:e2e_request_latency_seconds_count", **labels) == 3
    assert sample_value(families, "vllm:time_to_first_token_seconds_count", **labels) == 3
    assert sample_value(families, "vllm:inter_token_latency_seconds_count", **labels) == 20 + 20 + 4
    assert sample_value(families, "vllm:request_generation_tokens_bucket", le="5.0", **labels) == 1
    assert sample_value(families, "vllm:num_requests_running", **labels) == 0


async def test_models_health_version(fake: FakeVllm) -> None:
    status, _, body = await http("GET", f"{fake.base_url}/models")
    assert status == 200
    listing = json.loads(body)
    assert listing["object"] == "list"
    (card,) = listing["data"]
    assert list(card) == [
        "id",
        "object",
        "created",
        "owned_by",
        "root",
        "parent",
        "max_model_len",
        "permission",
    ]
    assert (card["id"], card["object"], card["owned_by"], card["root"]) == (MODEL, "model", "vllm", MODEL)
    assert card["max_model_len"] == 8192
    (permission,) = card["permission"]
    assert permission["id"].startswith("modelperm-")
    assert permission["object"] == "model_permission"
    assert permission["allow_sampling"] is True
    assert permission["is_blocking"] is False

    status, _, body = await http("GET", f"{fake.url}/health")
    assert (status, body) == (200, b"")
    fake.healthy = False
    status, _, body = await http("GET", f"{fake.url}/health")
    assert (status, body) == (503, b"")
    status, _, body = await http("GET", f"{fake.url}/version")
    assert json.loads(body) == {"version": "0.13.0"}
    status, _, body = await http("GET", f"{fake.base_url}/nope")
    assert (status, json.loads(body)) == (404, {"detail": "Not Found"})


# --- thread wrapper and CLI ----------------------------------------------------------


def test_run_in_thread_with_sync_client() -> None:
    with FakeVllm.run_in_thread(tokens=5) as fake:
        fake.set_default(text="from another thread")
        with OpenAI(base_url=fake.base_url, api_key="k", max_retries=0, timeout=10) as c:
            response = c.chat.completions.create(model=MODEL, messages=ocr_messages())  # type: ignore[arg-type]
            assert response.choices[0].message.content == "from another thread"
            fake.push_script(Behaviour(token_delay=0.05, tokens=50))
            stream = c.chat.completions.create(model=MODEL, messages=ocr_messages(), stream=True)  # type: ignore[arg-type]
            next(iter(stream))
            stream.close()
        stats = fake.wait_for(lambda s: s["aborted"] == 1)
        assert stats["completed"] == 1
        assert fake.requests[0]["outcome"] == "completed"
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{fake.url}/health", timeout=1)


def test_cli_prints_url_and_stops_on_sigterm() -> None:
    command = [
        sys.executable,
        "-m",
        "testing.fake_vllm",
        "--port",
        "0",
        "--tokens",
        "3",
        "--first-token-delay",
        "0",
    ]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            assert line.startswith("fake vLLM listening on http://127.0.0.1:")
            base_url = line.rsplit(" ", 1)[1]
            with OpenAI(base_url=base_url, api_key="k", max_retries=0, timeout=10) as c:
                response = c.chat.completions.create(model=MODEL, messages=ocr_messages())  # type: ignore[arg-type]
            assert response.usage is not None
            assert response.usage.completion_tokens == 4
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
        finally:
            process.kill()


def test_sample_tokens_join_back_to_text() -> None:
    for grounded in (False, True):
        tokens = sample.document_tokens(700, grounded=grounded)
        assert len(tokens) == 700
        text = "".join(tokens)
        assert sample.tokenize(text) == list(tokens)
        assert max(len(t.strip()) for t in tokens if t not in sample.SPECIAL_TOKENS) <= 4
    assert math.isclose(estimate_text_tokens("abcdefg"), 3)
