"""A faithful fake of vLLM's OpenAI-compatible server serving DeepSeek-OCR.

It speaks the wire format of ``vllm serve deepseek-ai/DeepSeek-OCR`` (vLLM 0.13-era, see
``shared/reference/vllm-deepseek-ocr.md``) closely enough that the real ``openai``
client cannot tell the difference, and it can be told to misbehave (slow prefill, slow or
stalled decoding, HTTP errors, mid-stream error chunks, dropped connections, repetition
loops that end with ``finish_reason="length"``, busy GPU queues).

Endpoints (the same paths and shapes as vLLM):

- ``POST /v1/chat/completions``: streamed (SSE) and non-streamed completions.
- ``GET /v1/models``: one ModelCard with ``max_model_len``.
- ``GET /health`` (200, empty body; 503 when made unhealthy), ``GET /version``.
- ``GET /metrics``: Prometheus text with the vLLM V1 metric names and labels
  ``model_name`` and ``engine="0"``, plus process/python metrics.

Control endpoints for out-of-process use (not part of vLLM, never behind the API key):

- ``POST /_fake/control`` with ``{"reset": true, "default": {...}, "script": [{...}],
  "healthy": bool, "reject_list_xargs": bool}`` (all keys optional, applied in that
  order; behaviour objects use the field names of :class:`Behaviour`). ``GET`` returns the
  current default, the pending script and the flags.
- ``GET /_fake/requests``: the recorded chat requests (oldest first, at most
  ``record_limit``); ``GET /_fake/stats``: the counters of :attr:`FakeVllm.stats`.

Deliberate simplifications (each documented where it is implemented):

- Text tokens are estimated as ``ceil(len(text) / 3)``; image tokens are exact (Gundam
  mode, as upstream vLLM hard-codes it; DeepSeek-OCR 2's own count when the served
  model's ``root`` names it, e.g. ``FakeVllm(model="deepseek-ai/DeepSeek-OCR-2")``).
- Only ``data:image/...;base64,`` image URLs are accepted; ``http(s)`` URLs are rejected
  with 400 "remote images disabled in fake", so tests never reach the network.
- ``logprobs``, ``n``, ``stop``, ``continuous_usage_stats`` and sampling parameters are
  accepted and ignored, like any unknown field.

Streams follow vLLM exactly: headers as soon as the request is accepted, then (after the
simulated prefill) the role chunk, content chunks, a final chunk carrying
``finish_reason`` and ``stop_reason: null`` (empty content when the request ends on EOS;
the last tokens' text when it ends on ``"length"``), an optional usage chunk with
``choices: []``, and ``data: [DONE]``. ``completion_tokens`` counts the EOS token.

Use it from synchronous code with :meth:`FakeVllm.run_in_thread`, from async code with
``async with FakeVllm(...) as fake``, or as a process:
``python -m testing.fake_vllm --port 8001``. A pytest fixture::

    @pytest.fixture
    def fake_vllm():
        with FakeVllm.run_in_thread(tokens=50) as fake:
            yield fake  # fake.base_url, fake.push_script(...), fake.wait_for(...)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import dataclasses
import functools
import hashlib
import io
import math
import secrets
import signal
import threading
import time
import uuid
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http import HttpVersion11
from PIL import Image
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from testing import fake_vllm_text as sample

__all__ = [
    "DEFAULT_MAX_MODEL_LEN",
    "DEFAULT_MODEL",
    "VLLM_VERSION",
    "Behaviour",
    "FakeVllm",
    "FakeVllmThread",
    "estimate_text_tokens",
    "image_token_count",
    "is_ocr2",
    "main",
    "ocr2_image_token_count",
]

DEFAULT_MODEL = "deepseek-ai/DeepSeek-OCR"
DEFAULT_MAX_MODEL_LEN = 8192
VLLM_VERSION = "0.13.0"
IMAGE_PLACEHOLDER = "<image>"

_GUARDED_PREFIXES = ("/v1", "/v2", "/inference", "/cohere")
_FINISHED_REASONS = ("stop", "length", "abort", "error")
_WRITE_BUFFER_LIMIT = 256 * 1024
_DONE = b"data: [DONE]\n\n"
_CONTENT_CLOSE = b'"},"logprobs":null,"finish_reason":null}]}\n\n'
_ROLE_CHOICES = (
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n'
)
_USAGE_CHOICES = b'"choices":[],"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}}\n\n'
_MAX_BODY_BYTES = 256 * 1024 * 1024
_TOO_MANY_PLACEHOLDERS = (
    f"Found more '{IMAGE_PLACEHOLDER}' placeholders in input prompt than actual multimodal data items."
)


# ---------------------------------------------------------------------------------------
# Token accounting


def image_token_count(width: int, height: int, model: str = DEFAULT_MODEL) -> int:
    """Prompt tokens vLLM counts for one image of ``width`` x ``height`` pixels (for DeepSeek-OCR 2 when
    ``model`` names it, see :func:`ocr2_image_token_count`).

    Upstream vLLM hard-codes DeepSeek-OCR's "Gundam" mode: a 1024x1024 global view gives
    16 x (16 + 1) = 272 tokens plus one view separator; an image larger than 640 pixels in
    either dimension is also tiled into a (w, h) grid of 640x640 crops, 2 <= w*h <= 6,
    chosen by closest aspect ratio, adding (10h) x (10w + 1) tokens. Totals range from 273
    to 933.
    """
    if is_ocr2(model):
        return ocr2_image_token_count(width, height)
    if width <= 640 and height <= 640:
        return 273
    tiles_w, tiles_h = _closest_grid(width, height)
    return 273 + (10 * tiles_h) * (10 * tiles_w + 1)


def ocr2_image_token_count(width: int, height: int) -> int:
    """DeepSeek-OCR 2 (official ``DeepSeek-OCR2-vllm/process/image_process.py``): a 1024x1024
    global view of 16 x 16 = 256 tokens plus one separator; an image larger than 768 pixels
    in either dimension adds 2 to 6 tiles of 768x768 (grid by closest aspect ratio, as v1)
    of 12 x 12 = 144 tokens each, with no per-row newline tokens: 257 to 1,121.
    """
    if width <= 768 and height <= 768:
        return 257
    tiles_w, tiles_h = _closest_grid(width, height, tile=768)
    return 257 + 144 * tiles_w * tiles_h


def is_ocr2(model: str) -> bool:
    """Whether a model name or path (``deepseek-ai/DeepSeek-OCR-2``) is DeepSeek-OCR 2."""
    name = model.lower().replace("_", "-")
    return "deepseek-ocr-2" in name or "deepseek-ocr2" in name


@functools.cache
def _grids() -> tuple[tuple[int, int], ...]:
    grids = {(w, h) for w in range(1, 7) for h in range(1, 7) if 2 <= w * h <= 6}
    return tuple(sorted(grids, key=lambda g: g[0] * g[1]))


def _closest_grid(width: int, height: int, tile: int = 640) -> tuple[int, int]:
    aspect = width / height
    best, best_diff = (1, 1), math.inf
    for grid in _grids():
        diff = abs(aspect - grid[0] / grid[1])
        if diff < best_diff:
            best, best_diff = grid, diff
        elif diff == best_diff and width * height > 0.5 * tile * tile * grid[0] * grid[1]:
            # Same tie-break as DeepSeek-OCR's preprocessing: large images prefer more tiles.
            best = grid
    return best


def estimate_text_tokens(text: str) -> int:
    """The fake's estimate of the tokens in ``text`` (no real tokenizer): ``ceil(len / 3)``."""
    return -(-len(text) // 3)


# ---------------------------------------------------------------------------------------
# Behaviour


@dataclasses.dataclass(frozen=True)
class Behaviour:
    """How the fake engine answers one chat request.

    Counting convention: a *content chunk* is one SSE event with a ``delta.content``
    (the role chunk is not one); ``error_after``, ``drop_after`` and ``stall_after`` count
    content chunks already sent, so ``0`` acts before the role chunk.
    """

    #: Text tokens generated before EOS (ignored when ``text`` is set or for Locate prompts).
    tokens: int = 120
    #: Seconds between consecutive content chunks (decode speed).
    token_delay: float = 0.0
    #: Seconds from the start of processing to the role chunk (image preprocessing + prefill).
    first_token_delay: float = 0.0
    #: Tokens per content chunk, like vLLM's ``--stream-interval``.
    chunk_tokens: int = 1
    #: Fixed output text instead of the generated sample report.
    text: str | None = None
    #: Forced ``finish_reason``; ``"length"`` simulates a repetition loop hitting max_tokens.
    finish_reason: str | None = None
    #: Answer with this HTTP status instead of generating (before any streaming).
    fail_status: int | None = None
    fail_message: str | None = None
    fail_type: str | None = None
    #: After this many content chunks send ``data: {"error": ...}`` then ``data: [DONE]``.
    error_after: int | None = None
    error_message: str = "Internal server error"
    #: After this many content chunks close the TCP connection without ``[DONE]``.
    drop_after: int | None = None
    #: After this many content chunks pause for ``stall_seconds``, then continue normally.
    stall_after: int | None = None
    stall_seconds: float = 0.0
    #: Overrides the request's ``stream_options.include_usage`` (``False``: never send usage).
    include_usage: bool | None = None
    #: A repetition loop: after the text (``text`` or the sample of ``tokens``), this text
    #: repeats until ``max_tokens``, which ends the request with ``"length"``.
    loop: str | None = None

    def __post_init__(self) -> None:
        for name in ("tokens", "chunk_tokens", "error_after", "drop_after", "stall_after", "fail_status"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"Behaviour.{name} must be a non-negative integer, got {value!r}")
        for name in ("token_delay", "first_token_delay", "stall_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"Behaviour.{name} must be a non-negative number, got {value!r}")
        if self.chunk_tokens < 1:
            raise ValueError("Behaviour.chunk_tokens must be at least 1")
        if self.fail_status is not None and not 400 <= self.fail_status <= 599:
            raise ValueError(f"Behaviour.fail_status must be an HTTP error status, got {self.fail_status}")
        for name in ("text", "finish_reason", "fail_message", "fail_type", "loop"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"Behaviour.{name} must be a string or None, got {value!r}")
        if self.include_usage is not None and not isinstance(self.include_usage, bool):
            raise ValueError(f"Behaviour.include_usage must be a bool or None, got {self.include_usage!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: Behaviour | None = None) -> Behaviour:
        """Build from JSON-like data; unknown keys raise ``ValueError``. Missing keys come
        from ``base`` (or the dataclass defaults)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown Behaviour fields: {', '.join(unknown)}")
        return dataclasses.replace(base or cls(), **data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------
# Errors


def _error_type(status: int) -> str:
    named = {400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError"}
    if status in named:
        return named[status]
    try:
        return HTTPStatus(status).phrase.replace(" ", "").replace("-", "") + "Error"
    except ValueError:
        return "Error"


class _ApiError(Exception):
    """An error answered with vLLM's ``{"error": {message, type, param, code}}`` body."""

    def __init__(self, status: int, message: str, type_: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_ or _error_type(status)
        self.param = param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.status}}

    def response(self) -> web.Response:
        return _json_response(self.body(), status=self.status)


def _schema_error(loc: tuple[str | int, ...], msg: str, kind: str, value: Any) -> _ApiError:
    """A 400 shaped like vLLM's handler for pydantic ``RequestValidationError``."""
    shown = repr(value)
    if len(shown) > 200:
        shown = shown[:200] + "..."
    full_loc = ("body", *loc)
    detail = f"{{'type': {kind!r}, 'loc': {full_loc!r}, 'msg': {msg!r}, 'input': {shown}}}"
    param = ".".join(str(p) for p in full_loc)
    return _ApiError(400, f"1 validation error:\n  {detail}", HTTPStatus.BAD_REQUEST.phrase, param)


def _json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


# ---------------------------------------------------------------------------------------
# Request parsing (vLLM's validation, prompt rendering and token accounting)


@dataclasses.dataclass(slots=True)
class _Chat:
    request_id: str
    stream: bool
    include_usage: bool
    prompt: str
    prompt_tokens: int
    max_tokens: int
    skip_special_tokens: bool
    images: list[dict[str, Any]]


def _check_type(value: Any, loc: tuple[str | int, ...], *types: type, kind: str, msg: str) -> None:
    """Accept ``None`` or an instance of ``types`` (a bool is not an int here)."""
    if value is None:
        return
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        raise _schema_error(loc, msg, kind, value)


def _optional_int(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _schema_error((key,), "Input should be a valid integer", "int_type", value)
    return value


def _optional_bool(body: Mapping[str, Any], key: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _schema_error((key,), "Input should be a valid boolean", "bool_type", value)
    return value


def _load_image(url: str, model: str = DEFAULT_MODEL) -> dict[str, Any]:
    """Decode a data URL the way vLLM's MediaConnector does and measure the image."""
    if url.startswith(("http://", "https://")):
        # The fake never fetches remote media: tests must not depend on the network.
        raise _ApiError(400, "remote images disabled in fake")
    if not url.startswith("data:"):
        raise _ApiError(400, "The URL must be either a HTTP, data or file URL.")
    header, sep, payload = url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    if not sep or encoding != "base64":
        raise _ApiError(400, "Only base64 data URLs are supported for now.")
    if not media_type.startswith("image/"):
        raise _ApiError(400, f"Unsupported media type {media_type!r} for an image_url part.")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _ApiError(400, f"Failed to decode base64 image data: {exc}") from exc
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            fmt = image.format
    except Exception as exc:
        raise _ApiError(400, f"Failed to load image: {exc}") from exc
    return {
        "width": width,
        "height": height,
        "format": fmt,
        "media_type": media_type,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "tokens": image_token_count(width, height, model),
    }


def _render_content(
    content: Any, loc: tuple[str | int, ...], images: list[dict[str, Any]], model: str = DEFAULT_MODEL
) -> str:
    """One message's text as vLLM's "string" content format renders it for DeepSeek-OCR.

    Text parts are joined with newlines; for each image without a ``<image>`` in the text
    a placeholder is prepended, and more placeholders than images is an error.
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _schema_error((*loc, "content"), "Input should be a valid string or list", "type_error", content)
    texts: list[str] = []
    message_images = 0
    for index, part in enumerate(content):
        part_loc = (*loc, "content", index)
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict):
            raise _schema_error(part_loc, "Input should be a valid dictionary", "dict_type", part)
        part_type = part.get("type")
        if part_type is None:
            raise _ApiError(400, "Missing 'type' field in multimodal part.")
        if part_type in ("text", "input_text"):
            text = part.get("text")
            if not isinstance(text, str):
                raise _schema_error((*part_loc, "text"), "Input should be a valid string", "string_type", text)
            texts.append(text)
        elif part_type == "image_url":
            image_url = part.get("image_url")
            url = image_url.get("url") if isinstance(image_url, dict) else image_url
            if not isinstance(url, str):
                raise _schema_error((*part_loc, "image_url", "url"), "Field required", "missing", image_url)
            images.append(_load_image(url, model))
            message_images += 1
        elif part_type in ("audio_url", "input_audio", "video_url", "image_embeds", "image_pil"):
            raise _ApiError(400, "Only image modality is supported")
        else:
            raise _ApiError(400, f"Unknown part type: {part_type}")
    text_prompt = "\n".join(texts)
    if message_images:
        missing = message_images - text_prompt.count(IMAGE_PLACEHOLDER)
        if missing < 0:
            raise _ApiError(400, _TOO_MANY_PLACEHOLDERS)
        text_prompt = "\n".join([IMAGE_PLACEHOLDER] * missing + [text_prompt])
    return text_prompt


def _check_xargs_schema(value: Any, allow_lists: bool) -> None:
    """``vllm_xargs: dict[str, str | int | float | list[str | int | float]] | None``."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise _schema_error(("vllm_xargs",), "Input should be a valid dictionary", "dict_type", value)
    scalar = (str, int, float)
    for key, item in value.items():
        if isinstance(item, list) and allow_lists:
            for i, element in enumerate(item):
                if not isinstance(element, scalar):
                    raise _schema_error(
                        ("vllm_xargs", key, i), "Input should be a valid string", "string_type", element
                    )
        elif isinstance(item, list):
            # Servers before vllm-project/vllm#27560 typed the values as str | int | float.
            raise _schema_error(("vllm_xargs", key), "Input should be a valid string", "string_type", item)
        elif not isinstance(item, scalar):
            raise _schema_error(("vllm_xargs", key), "Input should be a valid string", "string_type", item)


def _check_ngram_args(value: dict[str, Any]) -> None:
    """``NGramPerReqLogitsProcessor.validate_params`` (the server runs with that processor)."""
    ngram_size = value.get("ngram_size")
    if ngram_size is None:
        return
    window_size = value.get("window_size", 100)
    whitelist = value.get("whitelist_token_ids")
    if not isinstance(ngram_size, int) or ngram_size <= 0:
        raise _ApiError(400, f"`ngram_size` has to be a strictly positive integer, got {ngram_size}.")
    if not isinstance(window_size, int) or window_size <= 0:
        raise _ApiError(400, f"`window_size` has to be a strictly positive integer, got {window_size}.")
    if whitelist is not None and not isinstance(whitelist, Iterable):
        raise _ApiError(400, f"`whitelist_token_ids` has to be a sequence of integers, got {whitelist}.")


# ---------------------------------------------------------------------------------------
# Output planning


@dataclasses.dataclass(frozen=True, slots=True)
class _Output:
    #: JSON-escaped (without quotes) content of each content chunk; the last one carries
    #: the finish_reason.
    deltas: tuple[bytes, ...]
    #: Tokens generated for each chunk (the EOS token counts but has no text).
    delta_tokens: tuple[int, ...]
    text: str
    finish_reason: str
    completion_tokens: int


@functools.lru_cache(maxsize=64)
def _text_tokens(text: str) -> tuple[str, ...]:
    return tuple(sample.tokenize(text))


@functools.lru_cache(maxsize=512)
def _plan_output(
    source: tuple[str, ...], n_text: int, eos: bool, chunk_tokens: int, skip_special: bool, finish_reason: str
) -> _Output:
    steps = [sample.visible(token, skip_special) for token in source[:n_text]]
    if eos:
        # The EOS step produces a token but no text (vLLM does not detokenize it).
        steps.append("")
    if not steps:
        steps.append("")
    pieces = ["".join(steps[i : i + chunk_tokens]) for i in range(0, len(steps), chunk_tokens)]
    completion_tokens = n_text + int(eos)
    counts = [chunk_tokens] * len(pieces)
    counts[-1] = completion_tokens - chunk_tokens * (len(pieces) - 1)
    return _Output(
        deltas=tuple(orjson.dumps(piece)[1:-1] for piece in pieces),
        delta_tokens=tuple(max(0, c) for c in counts),
        text="".join(pieces),
        finish_reason=finish_reason,
        completion_tokens=completion_tokens,
    )


def _output_for(chat: _Chat, behaviour: Behaviour) -> _Output:
    """What the engine "generates" for ``chat`` under ``behaviour``.

    Ends on EOS (``finish_reason="stop"``, EOS counted in ``completion_tokens``) when the
    text plus EOS fits in ``max_tokens``, else stops after ``max_tokens`` tokens with
    ``"length"``. A forced ``finish_reason`` keeps the text and drops the EOS unless it is
    ``"stop"``.
    """
    if behaviour.text is not None:
        source = _text_tokens(behaviour.text)
    elif (phrase := sample.locate_phrase(chat.prompt)) is not None:
        source = sample.locate_tokens(phrase)
    else:
        grounded = sample.GROUNDING in chat.prompt
        source = sample.document_tokens(behaviour.tokens, grounded=grounded)
    limit = chat.max_tokens
    if behaviour.loop:
        unit = _text_tokens(behaviour.loop)
        source = source + unit * (max(0, limit - len(source)) // len(unit) + 1)
    available = len(source)
    reason = behaviour.finish_reason
    if reason is None:
        if available + 1 <= limit:
            n_text, eos, reason = available, True, "stop"
        else:
            n_text, eos, reason = min(available, limit), False, "length"
    elif reason == "stop":
        n_text, eos = min(available, limit - 1), True
    else:
        n_text, eos = min(available, limit), False
    return _plan_output(source, n_text, eos, behaviour.chunk_tokens, chat.skip_special_tokens, reason)


# ---------------------------------------------------------------------------------------
# Metrics


class _Histogram:
    """A label-less histogram cheap enough to observe once per streamed chunk."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Iterable[float]):
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def family(self, name: str, doc: str, labels: list[str], values: list[str]) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, doc, labels=labels)
        buckets, running = [], 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            buckets.append((floatToGoString(bound), running))
        buckets.append(("+Inf", running + self.counts[-1]))
        family.add_metric(values, buckets, self.total)
        return family


def _one_two_five(limit: int) -> list[int]:
    bounds, exponent = [], 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > limit:
                return bounds
            bounds.append(value)
        exponent += 1


_REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
_TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
_ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0,
)  # fmt: skip


class _Metrics(Collector):
    """vLLM V1 engine metrics (names, types, labels and buckets of ``PrometheusStatLogger``)."""

    def __init__(self, server: FakeVllm):
        self._server = server
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.preemptions = 0
        self.success = dict.fromkeys(_FINISHED_REASONS, 0)
        token_buckets = _one_two_five(server.max_model_len)
        self.histograms: dict[str, tuple[str, _Histogram]] = {
            "time_to_first_token_seconds": (
                "Histogram of time to first token in seconds.",
                _Histogram(_TTFT_BUCKETS),
            ),
            "inter_token_latency_seconds": (
                "Histogram of inter-token latency in seconds.",
                _Histogram(_ITL_BUCKETS),
            ),
            "e2e_request_latency_seconds": (
                "Histogram of e2e request latency in seconds.",
                _Histogram(_REQUEST_LATENCY_BUCKETS),
            ),
            "request_queue_time_seconds": (
                "Histogram of time spent in WAITING phase for request.",
                _Histogram(_REQUEST_LATENCY_BUCKETS),
            ),
            "request_inference_time_seconds": (
                "Histogram of time spent in RUNNING phase for request.",
                _Histogram(_REQUEST_LATENCY_BUCKETS),
            ),
            "request_prefill_time_seconds": (
                "Histogram of time spent in PREFILL phase for request.",
                _Histogram(_REQUEST_LATENCY_BUCKETS),
            ),
            "request_decode_time_seconds": (
                "Histogram of time spent in DECODE phase for request.",
                _Histogram(_REQUEST_LATENCY_BUCKETS),
            ),
            "request_prompt_tokens": ("Number of prefill tokens processed.", _Histogram(token_buckets)),
            "request_generation_tokens": (
                "Number of generation tokens processed.",
                _Histogram(token_buckets),
            ),
            "request_params_max_tokens": (
                "Histogram of the max_tokens request parameter.",
                _Histogram(token_buckets),
            ),
        }
        self.ttft = self.histograms["time_to_first_token_seconds"][1]
        self.itl = self.histograms["inter_token_latency_seconds"][1]

    def observe(self, name: str, value: float) -> None:
        self.histograms[name][1].observe(value)

    def collect(self) -> Iterator[Metric]:
        server = self._server
        labels, values = ["model_name", "engine"], [server.model, "0"]
        running, waiting, kv_tokens = server._scheduler_state()

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=labels)
            family.add_metric(values, value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=labels)
            family.add_metric(values, value)
            return family

        yield gauge("vllm:num_requests_running", "Number of requests in model execution batches.", running)
        yield gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", waiting)
        yield gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            min(1.0, kv_tokens / server.kv_cache_tokens),
        )
        yield counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.", self.preemptions)
        yield counter("vllm:prompt_tokens", "Number of prefill tokens processed.", self.prompt_tokens)
        yield counter("vllm:generation_tokens", "Number of generation tokens processed.", self.generation_tokens)
        success = CounterMetricFamily(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labels=[*labels, "finished_reason"],
        )
        for reason, count in self.success.items():
            success.add_metric([*values, reason], count)
        yield success
        for name, (doc, histogram) in self.histograms.items():
            yield histogram.family(f"vllm:{name}", doc, labels, values)


# ---------------------------------------------------------------------------------------
# Request jobs


class _Job:
    """One accepted chat request as the fake engine sees it (timings and progress)."""

    __slots__ = (
        "arrived",
        "behaviour",
        "chat",
        "first_at",
        "generated",
        "last_at",
        "outcome",
        "output",
        "record",
        "started",
        "transport",
    )

    def __init__(
        self,
        chat: _Chat,
        behaviour: Behaviour,
        output: _Output,
        record: dict[str, Any],
        transport: asyncio.Transport | None,
        arrived: float,
    ):
        self.chat = chat
        self.behaviour = behaviour
        self.output = output
        self.record = record
        self.transport = transport
        self.arrived = arrived
        self.started: float | None = None
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.generated = 0
        self.outcome: str | None = None

    def close_connection(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class _Ticker:
    """Runs scheduled steps in one loop timer per millisecond instead of one per step.

    With hundreds of concurrent streams, asyncio's timer heap (compared in Python) costs
    more than the writes themselves; grouping due steps by millisecond keeps that cost
    per millisecond instead of per chunk. Steps run at most one millisecond late.
    """

    __slots__ = ("_buckets", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._buckets: dict[int, list[_StreamJob]] = {}

    def schedule(self, when: float, job: _StreamJob) -> None:
        key = math.ceil(when * 1000)
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = [job]
            self._loop.call_at(key / 1000, self._fire, key)
        else:
            bucket.append(job)

    def _fire(self, key: int) -> None:
        for job in self._buckets.pop(key, ()):
            job.step()


class _StreamJob(_Job):
    """Writes one SSE stream from event-loop timer callbacks.

    Each step writes every chunk that is due straight to the transport as one HTTP/1.1
    chunk and schedules the next step on the :class:`_Ticker` along an absolute timeline,
    so a streamed token costs a list append and one ``write`` instead of a task wake-up
    and an ``await`` (the fake must sustain hundreds of concurrent streams on two cores).
    The bytes of each chunk are the per-request prefix, the pre-escaped content and a
    constant suffix: no dict or JSON encoding per token.
    """

    __slots__ = (
        "_chunked",
        "_due",
        "_final",
        "_head",
        "_index",
        "_loop",
        "_metrics",
        "_open",
        "_scheduled",
        "_stalled",
        "_tail",
        "_ticker",
        "future",
    )

    def __init__(
        self,
        chat: _Chat,
        behaviour: Behaviour,
        output: _Output,
        record: dict[str, Any],
        transport: asyncio.Transport | None,
        arrived: float,
        *,
        loop: asyncio.AbstractEventLoop,
        ticker: _Ticker,
        metrics: _Metrics,
        model_json: bytes,
        chunked: bool,
    ):
        super().__init__(chat, behaviour, output, record, transport, arrived)
        self._loop = loop
        self._ticker = ticker
        self._metrics = metrics
        self._chunked = chunked
        self._index = 0
        self._due = 0.0
        self._stalled = False
        self._scheduled = False
        self.future: asyncio.Future[str] = loop.create_future()
        created = str(int(time.time())).encode()
        id_json = orjson.dumps(f"chatcmpl-{chat.request_id}")
        self._head = b'data: {"id":%b,"object":"chat.completion.chunk","created":%b,"model":%b,' % (
            id_json,
            created,
            model_json,
        )
        self._open = self._head + b'"choices":[{"index":0,"delta":{"content":"'
        self._final = b'"},"logprobs":null,"finish_reason":%b,"stop_reason":null}]}\n\n' % orjson.dumps(
            output.finish_reason
        )
        include_usage = chat.include_usage if behaviour.include_usage is None else behaviour.include_usage
        tail = b""
        if include_usage:
            prompt, completion = chat.prompt_tokens, output.completion_tokens
            tail = self._head + _USAGE_CHOICES % (prompt, prompt + completion, completion)
        self._tail = tail + _DONE

    def start(self, now: float) -> None:
        self.started = now
        self._due = now + self.behaviour.first_token_delay
        self._schedule(self._due)

    def _schedule(self, when: float) -> None:
        self._scheduled = True
        self._ticker.schedule(when, self)

    def cancel(self) -> None:
        """Stop streaming: a pending step becomes a no-op."""
        self._scheduled = False

    def _write(self, data: bytes) -> None:
        assert self.transport is not None
        if self._chunked:
            self.transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.transport.write(data)

    def _finish(self, outcome: str) -> None:
        self.outcome = outcome
        if not self.future.done():
            self.future.set_result(outcome)

    def step(self) -> None:
        """Write every chunk that is due, then schedule the next step (ticker callback)."""
        if not self._scheduled:
            return
        self._scheduled = False
        transport = self.transport
        if transport is None or transport.is_closing():
            self._finish("aborted")
            return
        loop = self._loop
        if transport.get_write_buffer_size() > _WRITE_BUFFER_LIMIT:
            # The client reads slower than we generate: wait instead of buffering without bound.
            self._schedule(loop.time() + 0.01)
            return
        now = loop.time()
        behaviour = self.behaviour
        output = self.output
        deltas = output.deltas
        last = len(deltas) - 1
        metrics = self._metrics
        parts: list[bytes] = []
        outcome: str | None = None
        while True:
            index = self._index
            if index == behaviour.error_after:
                parts.append(
                    b'data: {"error":{"message":%b,"type":"InternalServerError","param":null,"code":500}}\n\n'
                    % orjson.dumps(behaviour.error_message)
                )
                parts.append(_DONE)
                outcome = "failed"
                break
            if index == behaviour.drop_after:
                outcome = "dropped"
                break
            if index == behaviour.stall_after and not self._stalled:
                self._stalled = True
                self._due += behaviour.stall_seconds
                if self._due > now:
                    self._schedule(self._due)
                    break
            if index == 0:
                parts.append(self._head + _ROLE_CHOICES)
                self.first_at = now
                metrics.prompt_tokens += self.chat.prompt_tokens
                metrics.ttft.observe(now - self.arrived)
            elif self.last_at is not None:
                metrics.itl.observe(now - self.last_at)
            self.last_at = now
            tokens = output.delta_tokens[index]
            self.generated += tokens
            metrics.generation_tokens += tokens
            self._index = index + 1
            if index == last:
                parts.append(self._open + deltas[index] + self._final)
                parts.append(self._tail)
                outcome = "completed"
                break
            parts.append(self._open + deltas[index] + _CONTENT_CLOSE)
            self._due += behaviour.token_delay
            if self._due > now:
                self._schedule(self._due)
                break
        if parts:
            self._write(parts[0] if len(parts) == 1 else b"".join(parts))
        if outcome == "dropped":
            transport.close()
        if outcome is not None:
            self._finish(outcome)


# ---------------------------------------------------------------------------------------
# The server


Predicate = Callable[[dict[str, int]], bool]


class FakeVllm:
    """A fake vLLM OpenAI-compatible server for DeepSeek-OCR, driven by :class:`Behaviour`.

    Every accepted chat request takes the next :class:`Behaviour` from the FIFO script
    (:meth:`push_script`), or the default (:meth:`set_default`) when the script is empty.
    Requests rejected by validation (4xx, 401) do not consume a script entry. The
    behaviour-changing methods and the ``stats``/``requests`` properties are thread-safe.

    Keyword arguments other than the ones below are :class:`Behaviour` fields for the
    default behaviour (``FakeVllm(tokens=50, token_delay=0.01)``).
    """

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        root: str | None = None,
        api_key: str | None = None,
        max_model_len: int = DEFAULT_MAX_MODEL_LEN,
        reject_list_xargs: bool = False,
        max_concurrency: int | None = None,
        healthy: bool = True,
        version: str = VLLM_VERSION,
        kv_cache_tokens: int = 131_072,
        record_limit: int = 1000,
        record_full_bodies: bool = False,
        default: Behaviour | None = None,
        **behaviour_fields: Any,
    ):
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.model = model
        self.root = root or model
        self.api_key = api_key
        self.max_model_len = max_model_len
        self.reject_list_xargs = reject_list_xargs
        self.max_concurrency = max_concurrency
        self.healthy = healthy
        self.version = version
        self.kv_cache_tokens = kv_cache_tokens
        self.record_full_bodies = record_full_bodies
        self.host = "127.0.0.1"
        self.port: int | None = None
        self._initial_default = Behaviour.from_dict(behaviour_fields, default)
        self._default = self._initial_default
        self._script: deque[Behaviour] = deque()
        self._lock = threading.Lock()
        self._records: deque[dict[str, Any]] = deque(maxlen=record_limit)
        self._stats = self._zero_stats()
        self._active: set[_Job] = set()
        self._waiters: list[asyncio.Future[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._slots: asyncio.Semaphore | None = None
        self._ticker: _Ticker | None = None
        self._created = int(time.time())
        self._model_json = orjson.dumps(model)
        self._metrics = _Metrics(self)
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self._metrics)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (0 picks a free port, see :attr:`port`)."""
        if self._runner is not None:
            raise RuntimeError("FakeVllm is already running")
        self._loop = asyncio.get_running_loop()
        self._ticker = _Ticker(self._loop)
        self._slots = asyncio.Semaphore(self.max_concurrency) if self.max_concurrency else None
        app = web.Application(
            client_max_size=_MAX_BODY_BYTES, middlewares=[self._errors_middleware, self._auth_middleware]
        )
        app.router.add_post("/v1/chat/completions", self._handle_chat)
        app.router.add_get("/v1/models", self._handle_models)
        app.router.add_get("/health", self._handle_health)
        app.router.add_get("/version", self._handle_version)
        app.router.add_get("/metrics", self._handle_metrics)
        app.router.add_get("/_fake/control", self._handle_control)
        app.router.add_post("/_fake/control", self._handle_control)
        app.router.add_get("/_fake/requests", self._handle_requests)
        app.router.add_get("/_fake/stats", self._handle_stats)
        app.on_response_prepare.append(self._server_header)
        # handler_cancellation: a client disconnect cancels the handler at once, which is how
        # the fake notices aborts even while a request is queued, in prefill or stalled.
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=2048)
        await site.start()
        self._runner = runner
        self.host = host
        self.port = runner.addresses[0][1]

    async def stop(self) -> None:
        """Close all connections (in-flight requests count as aborted) and stop listening."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for job in list(self._active):
            job.close_connection()
        await runner.cleanup()

    async def __aenter__(self) -> FakeVllm:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        if self.port is None:
            raise RuntimeError("FakeVllm is not running")
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI ``base_url``: ``http://host:port/v1``."""
        return f"{self.url}/v1"

    @classmethod
    def run_in_thread(cls, host: str = "127.0.0.1", port: int = 0, **config: Any) -> FakeVllmThread:
        """Start a server with ``config`` on its own event loop in a daemon thread."""
        return FakeVllmThread(cls(**config), host=host, port=port)

    # -- behaviour control (thread-safe) -------------------------------------------------

    @property
    def default(self) -> Behaviour:
        return self._default

    @property
    def script(self) -> list[Behaviour]:
        with self._lock:
            return list(self._script)

    def set_default(self, **fields: Any) -> Behaviour:
        """Change fields of the default behaviour; returns the new default."""
        with self._lock:
            self._default = Behaviour.from_dict(fields, self._default)
            return self._default

    def push_script(self, *behaviours: Behaviour | Mapping[str, Any]) -> None:
        """Queue behaviours for the next accepted chat requests, in arrival order.

        Dicts are applied on top of the current default behaviour.
        """
        with self._lock:
            for item in behaviours:
                self._script.append(item if isinstance(item, Behaviour) else Behaviour.from_dict(item, self._default))

    def reset(self) -> None:
        """Restore the initial default, clear the script, the recorded requests and the
        counters (live ``in_flight``/``waiting`` are kept), and become healthy again."""
        with self._lock:
            self._default = self._initial_default
            self._script.clear()
            self._records.clear()
            live = {k: self._stats[k] for k in ("in_flight", "waiting")}
            self._stats = self._zero_stats() | live
            self._stats["max_in_flight"] = live["in_flight"]
            self.healthy = True
        self._notify_threadsafe()

    def control(self, command: Mapping[str, Any]) -> dict[str, Any]:
        """Apply a ``/_fake/control`` command and return the resulting control state.

        Keys (all optional, applied in this order): ``reset`` (bool), ``default`` (fields
        changed on the default behaviour), ``script`` (behaviours to queue; fields they omit
        come from the default), ``healthy`` (bool), ``reject_list_xargs`` (bool). Raises
        ``ValueError`` and changes nothing if any part is invalid.
        """
        if not isinstance(command, Mapping):
            raise ValueError("the control command must be a JSON object")
        unknown = set(command) - {"reset", "default", "script", "healthy", "reject_list_xargs"}
        if unknown:
            raise ValueError(f"unknown control keys: {', '.join(sorted(unknown))}")
        fields = command.get("default") or {}
        script = command.get("script") or []
        if not isinstance(fields, Mapping) or not isinstance(script, list):
            raise ValueError("'default' must be an object and 'script' a list of objects")
        if any(not isinstance(item, Mapping) for item in script):
            raise ValueError("'script' must be a list of objects")
        with self._lock:
            base = self._initial_default if command.get("reset") else self._default
        default = Behaviour.from_dict(fields, base)
        behaviours = [Behaviour.from_dict(item, default) for item in script]
        if command.get("reset"):
            self.reset()
        with self._lock:
            self._default = default
            self._script.extend(behaviours)
        if "healthy" in command:
            self.healthy = bool(command["healthy"])
        if "reject_list_xargs" in command:
            self.reject_list_xargs = bool(command["reject_list_xargs"])
        return {
            "default": self.default.to_dict(),
            "script": [b.to_dict() for b in self.script],
            "healthy": self.healthy,
            "reject_list_xargs": self.reject_list_xargs,
        }

    def _take_behaviour(self) -> Behaviour:
        with self._lock:
            return self._script.popleft() if self._script else self._default

    # -- observation ---------------------------------------------------------------------

    @staticmethod
    def _zero_stats() -> dict[str, int]:
        keys = ("requests", "rejected", "unauthorized", "completed", "aborted", "failed", "dropped")
        return dict.fromkeys((*keys, "in_flight", "waiting", "max_in_flight"), 0)

    @property
    def stats(self) -> dict[str, int]:
        """Counters: ``requests`` (chat requests past the API key check), ``rejected``
        (failed validation), ``unauthorized``, ``completed``, ``aborted`` (the client
        disconnected), ``failed`` (``fail_status``/``error_after``), ``dropped``
        (``drop_after``), ``in_flight`` (accepted, not finished), ``waiting`` (queued by
        ``max_concurrency``), ``max_in_flight``."""
        with self._lock:
            return dict(self._stats)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Recorded chat requests, oldest first: ``path``, ``method``, ``headers`` (names
        in lower case), ``body`` (data URLs shortened unless ``record_full_bodies``),
        ``images`` (size, sha256 and token count of each decoded image), ``prompt``,
        ``prompt_tokens``, ``max_tokens``, ``request_id``, ``behaviour``, ``status``,
        ``outcome``, ``finish_reason``, ``completion_tokens``, ``received_at``. Rejected
        requests carry ``error`` instead of the prompt fields."""
        with self._lock:
            return list(self._records)

    async def wait_for(self, predicate: Predicate, timeout: float = 5.0) -> dict[str, int]:  # noqa: ASYNC109
        """Wait until ``predicate(stats)`` is true; returns those stats.

        Must be awaited on the server's event loop. Raises ``TimeoutError`` (with the last
        stats in the message) after ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            stats = self.stats
            if predicate(stats):
                return stats
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"condition not met within {timeout} s; stats: {stats}")
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                pass
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _notify_threadsafe(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._notify()
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._notify)

    def _bump(self, key: str, delta: int = 1) -> None:
        with self._lock:
            stats = self._stats
            stats[key] += delta
            if key == "in_flight" and stats["in_flight"] > stats["max_in_flight"]:
                stats["max_in_flight"] = stats["in_flight"]
        self._notify()

    def _scheduler_state(self) -> tuple[int, int, int]:
        with self._lock:
            waiting = self._stats["waiting"]
            running = self._stats["in_flight"] - waiting
        kv_tokens = sum(job.chat.prompt_tokens + job.generated for job in self._active if job.started is not None)
        return running, waiting, kv_tokens

    # -- middlewares and small endpoints -------------------------------------------------

    @web.middleware
    async def _errors_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status in (404, 405):
                # FastAPI's default body for unknown routes and wrong methods.
                return _json_response({"detail": exc.reason}, status=exc.status)
            raise

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if (
            self.api_key is not None
            and request.method != "OPTIONS"
            and request.path.startswith(_GUARDED_PREFIXES)
            and not self._authorized(request.headers.get("Authorization"))
        ):
            self._bump("unauthorized")
            return _json_response({"error": "Unauthorized"}, status=401)
        return await handler(request)

    def _authorized(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, token = header.partition(" ")
        assert self.api_key is not None
        return scheme.lower() == "bearer" and secrets.compare_digest(token.encode(), self.api_key.encode())

    @staticmethod
    async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Server"] = "uvicorn"

    async def _handle_models(self, request: web.Request) -> web.Response:
        card = {
            "id": self.model,
            "object": "model",
            "created": self._created,
            "owned_by": "vllm",
            "root": self.root,
            "parent": None,
            "max_model_len": self.max_model_len,
            "permission": [
                {
                    "id": f"modelperm-{uuid.uuid4().hex}",
                    "object": "model_permission",
                    "created": self._created,
                    "allow_create_engine": False,
                    "allow_sampling": True,
                    "allow_logprobs": True,
                    "allow_search_indices": False,
                    "allow_view": True,
                    "allow_fine_tuning": False,
                    "organization": "*",
                    "group": None,
                    "is_blocking": False,
                }
            ],
        }
        return _json_response({"object": "list", "data": [card]})

    async def _handle_health(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.healthy else 503)

    async def _handle_version(self, request: web.Request) -> web.Response:
        return _json_response({"version": self.version})

    async def _handle_metrics(self, request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(self.registry))
        response.headers["Content-Type"] = CONTENT_TYPE_PLAIN_0_0_4
        return response

    async def _handle_stats(self, request: web.Request) -> web.Response:
        return _json_response(self.stats)

    async def _handle_requests(self, request: web.Request) -> web.Response:
        return _json_response(self.requests)

    async def _handle_control(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            try:
                command = orjson.loads(await request.read())
                return _json_response(self.control(command))
            except (ValueError, TypeError) as exc:
                return _json_response({"error": str(exc)}, status=400)
        return _json_response(self.control({}))

    # -- chat completions ----------------------------------------------------------------

    def _parse_chat(self, request: web.Request, raw: bytes, body: Any) -> _Chat:
        """Validate like vLLM (schema, model, messages, images, context, xargs) in its order."""
        if request.content_type != "application/json":
            raise _ApiError(
                400,
                "Unsupported Media Type: Only 'application/json' is allowed",
                HTTPStatus.BAD_REQUEST.phrase,
            )
        if body is None and raw.strip() != b"null":
            raise _schema_error((0,), "JSON decode error", "json_invalid", {})
        if not isinstance(body, dict):
            raise _schema_error(
                (),
                "Input should be a valid dictionary or object to extract fields from",
                "model_attributes_type",
                body,
            )
        model = body.get("model")
        _check_type(model, ("model",), str, kind="string_type", msg="Input should be a valid string")
        messages = body.get("messages")
        if messages is None:
            raise _schema_error(("messages",), "Field required", "missing", body)
        if not isinstance(messages, list):
            raise _schema_error(("messages",), "Input should be a valid list", "list_type", messages)
        for index, message in enumerate(messages):
            if not isinstance(message, dict):
                raise _schema_error(("messages", index), "Input should be a valid dictionary", "dict_type", message)
            if not isinstance(message.get("role"), str):
                raise _schema_error(("messages", index, "role"), "Field required", "missing", message)
        stream = _optional_bool(body, "stream", False)
        stream_options = body.get("stream_options")
        _check_type(
            stream_options,
            ("stream_options",),
            dict,
            kind="dict_type",
            msg="Input should be a valid dictionary",
        )
        if stream_options and not stream:
            raise _ApiError(
                400,
                "1 validation error:\n  Value error, Stream options can only be defined when `stream=True`.",
                HTTPStatus.BAD_REQUEST.phrase,
                "stream_options",
            )
        include_usage = False
        if stream_options is not None:
            include_usage = _optional_bool(stream_options, "include_usage", True)
        max_tokens = _optional_int(body, "max_tokens")
        max_completion_tokens = _optional_int(body, "max_completion_tokens")
        skip_special = _optional_bool(body, "skip_special_tokens", True)
        request_id = body.get("request_id")
        _check_type(request_id, ("request_id",), str, kind="string_type", msg="Input should be a valid string")
        xargs = body.get("vllm_xargs")
        _check_xargs_schema(xargs, allow_lists=not self.reject_list_xargs)

        if model and model != self.model:
            raise _ApiError(404, f"The model `{model}` does not exist.", "NotFoundError", "model")

        # DeepSeek-OCR's chat template: optional leading system message, then strictly
        # alternating user/assistant contents concatenated after BOS with no separators.
        images: list[dict[str, Any]] = []
        # The image token count is the served model's: ``root`` is its real name under --served-model-name.
        rendered = [
            _render_content(m.get("content"), ("messages", i), images, self.root) for i, m in enumerate(messages)
        ]
        turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
        for index, message in enumerate(turns):
            if (message["role"] == "user") != (index % 2 == 0):
                raise _ApiError(400, "Conversation roles must alternate user/assistant/user/assistant/...")
        prompt = "".join(rendered)
        if prompt.count(IMAGE_PLACEHOLDER) > len(images):
            raise _ApiError(400, _TOO_MANY_PLACEHOLDERS)
        text_tokens = estimate_text_tokens(prompt.replace(IMAGE_PLACEHOLDER, ""))
        prompt_tokens = 1 + sum(image["tokens"] for image in images) + text_tokens

        limit = self.max_model_len
        if prompt_tokens >= limit:
            raise _ApiError(
                400,
                f"This model's maximum context length is {limit} tokens. However, your request has "
                f"{prompt_tokens} input tokens. Please reduce the length of the input messages. "
                f"(parameter=input_tokens, value={prompt_tokens})",
                param="input_tokens",
            )
        requested = max_completion_tokens or max_tokens
        if requested is not None and prompt_tokens + requested > limit:
            raise _ApiError(
                400,
                f"'max_tokens' or 'max_completion_tokens' is too large: {requested}. This model's maximum "
                f"context length is {limit} tokens and your request has {prompt_tokens} input tokens "
                f"({requested} > {limit} - {prompt_tokens}). (parameter=max_tokens, value={requested})",
                param="max_tokens",
            )
        if requested is not None and requested < 1:
            raise _ApiError(400, f"max_tokens must be at least 1, got {requested}.")
        # vLLM's NGram processor validates at engine admission, after the prompt checks.
        if xargs:
            _check_ngram_args(xargs)
        return _Chat(
            request_id=request.headers.get("X-Request-Id") or request_id or uuid.uuid4().hex,
            stream=stream,
            include_usage=include_usage,
            prompt=prompt,
            prompt_tokens=prompt_tokens,
            max_tokens=requested if requested is not None else limit - prompt_tokens,
            skip_special_tokens=skip_special,
            images=images,
        )

    def _redact(self, body: Any) -> Any:
        """The body to record: long data URLs shortened (recording 1000 page images would
        hold gigabytes), unless ``record_full_bodies``."""
        if self.record_full_bodies or not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return body

        def shorten(url: str) -> str:
            return url if len(url) <= 96 else f"{url[:64]}...<{len(url)} chars>"

        messages = []
        for message in body["messages"]:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list):
                parts = []
                for part in content:
                    image_url = part.get("image_url") if isinstance(part, dict) else None
                    if isinstance(image_url, dict) and isinstance(image_url.get("url"), str):
                        part = {**part, "image_url": {**image_url, "url": shorten(image_url["url"])}}
                    elif isinstance(image_url, str):
                        part = {**part, "image_url": shorten(image_url)}
                    parts.append(part)
                message = {**message, "content": parts}
            messages.append(message)
        return {**body, "messages": messages}

    async def _handle_chat(self, request: web.Request) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        self._bump("requests")
        raw = await request.read()
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        record: dict[str, Any] = {
            "path": request.path,
            "method": request.method,
            "headers": {name.lower(): value for name, value in request.headers.items()},
            "body": self._redact(body) if body is not None else raw[:2000].decode("utf-8", "replace"),
            "received_at": time.time(),
            "status": None,
            "outcome": None,
        }
        with self._lock:
            self._records.append(record)
        try:
            chat = self._parse_chat(request, raw, body)
        except _ApiError as exc:
            record.update(status=exc.status, outcome="rejected", error=exc.message)
            self._bump("rejected")
            return exc.response()
        behaviour = self._take_behaviour()
        record.update(
            images=chat.images,
            prompt=chat.prompt,
            prompt_tokens=chat.prompt_tokens,
            max_tokens=chat.max_tokens,
            request_id=chat.request_id,
            stream=chat.stream,
            behaviour=behaviour.to_dict(),
        )
        if behaviour.fail_status is not None:
            error = _ApiError(
                behaviour.fail_status,
                behaviour.fail_message or HTTPStatus(behaviour.fail_status).phrase,
                behaviour.fail_type,
            )
            record.update(status=error.status, outcome="failed", error=error.message)
            self._bump("failed")
            return error.response()
        output = _output_for(chat, behaviour)
        if chat.stream:
            return await self._stream(request, chat, behaviour, output, record, arrived)
        return await self._complete(request, chat, behaviour, output, record, arrived)

    async def _acquire_slot(self) -> None:
        if self._slots is None:
            return
        self._bump("waiting")
        try:
            await self._slots.acquire()
        finally:
            self._bump("waiting", -1)

    def _release_slot(self) -> None:
        if self._slots is not None:
            self._slots.release()

    async def _stream(
        self,
        request: web.Request,
        chat: _Chat,
        behaviour: Behaviour,
        output: _Output,
        record: dict[str, Any],
        arrived: float,
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        if request.version >= HttpVersion11:
            response.enable_chunked_encoding()
        # vLLM sends the headers as soon as the request is accepted; prefill comes after.
        writer = await response.prepare(request)
        loop = asyncio.get_running_loop()
        job = _StreamJob(
            chat,
            behaviour,
            output,
            record,
            request.transport,
            arrived,
            loop=loop,
            ticker=self._ticker,
            metrics=self._metrics,
            model_json=self._model_json,
            chunked=bool(getattr(writer, "chunked", False)),
        )
        record["status"] = 200
        outcome = await self._run_job(job)
        if outcome in ("completed", "failed"):
            with contextlib.suppress(ConnectionError):
                await response.write_eof()
        return response

    async def _complete(
        self,
        request: web.Request,
        chat: _Chat,
        behaviour: Behaviour,
        output: _Output,
        record: dict[str, Any],
        arrived: float,
    ) -> web.StreamResponse:
        job = _Job(chat, behaviour, output, record, request.transport, arrived)
        outcome = await self._run_job(job)
        if outcome == "failed":
            error = _ApiError(500, behaviour.error_message, "InternalServerError")
            record.update(status=500, error=error.message)
            return error.response()
        if outcome == "dropped":
            record["status"] = None
            job.close_connection()
            return web.Response()
        record["status"] = 200
        message = {"role": "assistant", "content": output.text, "tool_calls": []}
        completion = output.completion_tokens
        body = {
            "id": f"chatcmpl-{chat.request_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": output.finish_reason,
                    "stop_reason": None,
                }
            ],
            "usage": {
                "prompt_tokens": chat.prompt_tokens,
                "total_tokens": chat.prompt_tokens + completion,
                "completion_tokens": completion,
                "prompt_tokens_details": None,
            },
            "prompt_logprobs": None,
        }
        return _json_response(body)

    async def _generate_quietly(self, job: _Job) -> str:
        """Non-streamed generation: sleep for as long as the stream would take."""
        loop = asyncio.get_running_loop()
        behaviour, output, metrics = job.behaviour, job.output, self._metrics
        assert job.started is not None
        steps = len(output.deltas)
        stop_at = min(s for s in (behaviour.error_after, behaviour.drop_after, steps) if s is not None)
        stall = behaviour.stall_seconds if behaviour.stall_after is not None and behaviour.stall_after < stop_at else 0
        await asyncio.sleep(behaviour.first_token_delay)
        if stop_at > 0:
            job.first_at = job.last_at = loop.time()
            metrics.prompt_tokens += job.chat.prompt_tokens
            metrics.ttft.observe(job.first_at - job.arrived)
            decode = stall + behaviour.token_delay * (stop_at - 1)
            await asyncio.sleep(decode)
            job.last_at = loop.time()
            job.generated = sum(output.delta_tokens[:stop_at])
            metrics.generation_tokens += job.generated
            if stop_at > 1:
                # One observation per token gap, at the mean gap (the fake does not track each).
                gap = decode / (stop_at - 1)
                for _ in range(stop_at - 1):
                    metrics.itl.observe(gap)
        if stop_at == steps:
            return "completed"
        return "failed" if stop_at == behaviour.error_after else "dropped"

    async def _run_job(self, job: _Job) -> str:
        """Queue, run and account one accepted request; returns its outcome.

        A client disconnect cancels the handler (``handler_cancellation``); that is counted
        as an abort, like vLLM aborting the engine request.
        """
        self._active.add(job)
        self._bump("in_flight")
        holds_slot = False
        outcome = "aborted"
        try:
            await self._acquire_slot()
            holds_slot = True
            now = asyncio.get_running_loop().time()
            if isinstance(job, _StreamJob):
                job.start(now)
                outcome = await job.future
            else:
                job.started = now
                outcome = await self._generate_quietly(job)
        except asyncio.CancelledError:
            if isinstance(job, _StreamJob):
                job.cancel()
            # A deliberate drop also ends in a cancelled handler; keep its own outcome.
            outcome = job.outcome if job.outcome == "dropped" else "aborted"
            raise
        finally:
            if holds_slot:
                self._release_slot()
            self._active.discard(job)
            self._account(job, outcome)
        return outcome

    def _account(self, job: _Job, outcome: str) -> None:
        job.outcome = outcome
        metrics = self._metrics
        end = asyncio.get_running_loop().time()
        reason = {"completed": job.output.finish_reason, "failed": "error"}.get(outcome, "abort")
        metrics.success[reason] = metrics.success.get(reason, 0) + 1
        metrics.observe("e2e_request_latency_seconds", end - job.arrived)
        metrics.observe("request_params_max_tokens", job.chat.max_tokens)
        if job.started is not None:
            metrics.observe("request_queue_time_seconds", job.started - job.arrived)
            metrics.observe("request_prompt_tokens", job.chat.prompt_tokens)
            metrics.observe("request_generation_tokens", job.generated)
            if job.first_at is not None and job.last_at is not None:
                metrics.observe("request_prefill_time_seconds", job.first_at - job.started)
                metrics.observe("request_decode_time_seconds", job.last_at - job.first_at)
                metrics.observe("request_inference_time_seconds", job.last_at - job.started)
        job.record.update(
            outcome=outcome,
            finish_reason=job.output.finish_reason if outcome == "completed" else None,
            completion_tokens=job.generated,
        )
        with self._lock:
            self._stats[outcome] += 1
            self._stats["in_flight"] -= 1
        self._notify()


# ---------------------------------------------------------------------------------------
# Running in a thread


class FakeVllmThread:
    """A :class:`FakeVllm` serving from its own event loop in a daemon thread.

    A context manager for synchronous tests; ``stop()`` is idempotent. Behaviour control
    and observation are forwarded to :attr:`server` (all thread-safe).
    """

    def __init__(self, server: FakeVllm, host: str = "127.0.0.1", port: int = 0):
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._run, args=(host, port), name="fake-vllm", daemon=True)
        self._thread.start()
        if not self._started.wait(30):
            raise TimeoutError("fake vLLM did not start within 30 s")
        if self._error is not None:
            raise self._error

    def _run(self, host: str, port: int) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.server.start(host, port))
        except BaseException as exc:
            self._error = exc
            self._started.set()
            self._loop.close()
            return
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run ``fn()`` on the server's loop and return its result."""

        async def invoke() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(invoke(), self._loop).result(timeout)

    def stop(self) -> None:
        """Stop the server and join its thread."""
        if self._stopped:
            return
        self._stopped = True
        try:
            asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)

    def __enter__(self) -> FakeVllmThread:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait_for(self, predicate: Predicate, timeout: float = 5.0) -> dict[str, int]:
        """Block until ``predicate(stats)`` is true (see :meth:`FakeVllm.wait_for`)."""
        future = asyncio.run_coroutine_threadsafe(self.server.wait_for(predicate, timeout), self._loop)
        return future.result(timeout + 5)

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def stats(self) -> dict[str, int]:
        return self.server.stats

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self.server.requests

    def set_default(self, **fields: Any) -> Behaviour:
        return self.server.set_default(**fields)

    def push_script(self, *behaviours: Behaviour | Mapping[str, Any]) -> None:
        self.server.push_script(*behaviours)

    def reset(self) -> None:
        self.server.reset()


# ---------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m testing.fake_vllm",
        description="Fake vLLM OpenAI-compatible server for DeepSeek-OCR (tests, benchmarks, demos).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001, help="0 picks a free port (default: %(default)s)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="served model name (default: %(default)s)")
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/*")
    parser.add_argument("--max-model-len", type=int, default=DEFAULT_MAX_MODEL_LEN)
    parser.add_argument("--max-concurrency", type=int, default=None, help="requests beyond it wait (busy GPU)")
    parser.add_argument("--reject-list-xargs", action="store_true", help="reject list values in vllm_xargs")
    parser.add_argument("--tokens", type=int, default=400, help="text tokens per answer (default: %(default)s)")
    parser.add_argument("--token-delay", type=float, default=0.02, help="seconds between chunks (default: %(default)s)")
    parser.add_argument(
        "--first-token-delay",
        type=float,
        default=0.5,
        help="seconds of simulated prefill (default: %(default)s)",
    )
    parser.add_argument("--chunk-tokens", type=int, default=1, help="tokens per chunk, like --stream-interval")
    parser.add_argument("--text-file", default=None, help="answer with this file's text instead of the sample")
    parser.add_argument("--finish-reason", default=None, help="force a finish_reason, e.g. length")
    parser.add_argument("--record-full-bodies", action="store_true", help="keep image data URLs in /_fake/requests")
    return parser


async def _serve(args: argparse.Namespace, text: str | None) -> None:
    server = FakeVllm(
        model=args.model,
        api_key=args.api_key,
        max_model_len=args.max_model_len,
        max_concurrency=args.max_concurrency,
        reject_list_xargs=args.reject_list_xargs,
        record_full_bodies=args.record_full_bodies,
        tokens=args.tokens,
        token_delay=args.token_delay,
        first_token_delay=args.first_token_delay,
        chunk_tokens=args.chunk_tokens,
        text=text,
        finish_reason=args.finish_reason,
    )
    await server.start(args.host, args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"fake vLLM listening on {server.base_url}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    """Run the fake server until SIGTERM or SIGINT."""
    args = _parser().parse_args(argv)
    text = None
    if args.text_file:
        with open(args.text_file, encoding="utf-8") as handle:
            text = handle.read()
    asyncio.run(_serve(args, text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
