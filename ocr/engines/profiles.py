"""What differs between the OCR models the vLLM engine can talk to: one profile per model.

A profile knows how many prompt tokens vLLM counts for a page image (so each request can ask for as many output
tokens as the context leaves, instead of a fixed ``LLM_MAX_TOKENS`` that either wastes the context or overflows it),
the model's recommended prompts, and whether it knows the grounding markup. Facts from
``shared/reference/vllm-deepseek-ocr.md`` §4.2 (DeepSeek-OCR) and §4.7 (DeepSeek-OCR 2).

The model is chosen by ``LLM_MODEL_PROFILE``, or (``auto``) by the name in ``LLM_MODEL`` and, for a served model
name that says nothing (``--served-model-name ocr``), by the ``root`` that vLLM's ``/v1/models`` reports.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

#: vLLM's ``max_model_len`` for both DeepSeek-OCR models (the recipes' ``context_length``).
DEFAULT_CONTEXT = 8192
#: Tokens kept free besides the estimated prompt: the chat template's BOS and rounding of the text estimate.
MARGIN = 16
#: The prompts both DeepSeek-OCR models' cards and recipes recommend: deep document parsing (Markdown with the
#: grounding markup) and plain text. The upload form's presets use these (``ocr/forms.py``).
DOCUMENT_PROMPT = "<|grounding|>Convert the document to markdown."
PLAIN_PROMPT = "Free OCR."


@functools.cache
def _grids() -> tuple[tuple[int, int], ...]:
    grids = {(w, h) for w in range(1, 7) for h in range(1, 7) if 2 <= w * h <= 6}
    return tuple(sorted(grids, key=lambda g: g[0] * g[1]))


def closest_grid(width: int, height: int, tile: int) -> tuple[int, int]:
    """The (columns, rows) tiling DeepSeek-OCR's preprocessing picks: 2 to 6 tiles, closest aspect ratio,
    ties going to more tiles for a large image (both versions share this rule)."""
    aspect = width / height
    best, best_diff = (1, 1), math.inf
    for grid in _grids():
        diff = abs(aspect - grid[0] / grid[1])
        if diff < best_diff:
            best, best_diff = grid, diff
        elif diff == best_diff and width * height > 0.5 * tile * tile * grid[0] * grid[1]:
            best = grid
    return best


def deepseek_ocr_image_tokens(width: int, height: int) -> int:
    """DeepSeek-OCR ("Gundam" mode, which vLLM hard-codes): a 1024² global view of 16×(16+1) tokens and a
    separator; an image larger than 640 px either way adds a grid of 640² tiles of (10·rows)×(10·columns+1)."""
    if width <= 640 and height <= 640:
        return 273
    columns, rows = closest_grid(width, height, 640)
    return 273 + (10 * rows) * (10 * columns + 1)


def deepseek_ocr2_image_tokens(width: int, height: int) -> int:
    """DeepSeek-OCR 2: a 1024² global view of 16×16 tokens and a separator; an image larger than 768 px either way
    adds 2 to 6 tiles of 768² at 12×12 tokens each, without per-row newline tokens (257 to 1,121)."""
    if width <= 768 and height <= 768:
        return 257
    columns, rows = closest_grid(width, height, 768)
    return 257 + 144 * columns * rows


def generic_image_tokens(width: int, height: int) -> int:
    # Unknown model: assume the most any profile counts, so a fitted budget never overflows the context.
    return max(deepseek_ocr_image_tokens(width, height), deepseek_ocr2_image_tokens(width, height), 1121)


def text_tokens_bound(text: str) -> int:
    """An upper bound on the tokens of ``text``: a byte-level BPE never makes more tokens than UTF-8 bytes."""
    return len(text.encode("utf-8"))


@dataclass(frozen=True, slots=True)
class ModelProfile:
    #: The metric label and ``LLM_MODEL_PROFILE`` value: a small fixed set.
    name: str
    label: str
    image_tokens: Callable[[int, int], int]
    #: The model's recommended prompts: ``document`` (Markdown with grounding) and ``plain`` (text only).
    document_prompt: str
    plain_prompt: str
    grounding: bool = True
    context: int = DEFAULT_CONTEXT

    def prompt_tokens(self, width: int, height: int, prompt: str) -> int:
        """An upper estimate of the prompt tokens vLLM counts for one page: BOS, the image and the text."""
        return 1 + self.image_tokens(width, height) + text_tokens_bound(prompt)

    def max_tokens(self, upper: int, width: int, height: int, prompt: str, context: int | None = None) -> int:
        """The output budget for one page: ``upper`` (``LLM_MAX_TOKENS``) or what the context leaves, whichever
        is smaller, and at least 1 (a prompt that alone fills the context is vLLM's to refuse, with its reason)."""
        left = (context or self.context) - self.prompt_tokens(width, height, prompt) - MARGIN
        return max(1, min(upper, left))


DEEPSEEK_OCR = ModelProfile(
    name="deepseek-ocr",
    label="DeepSeek-OCR",
    image_tokens=deepseek_ocr_image_tokens,
    document_prompt=DOCUMENT_PROMPT,
    plain_prompt=PLAIN_PROMPT,
)
DEEPSEEK_OCR_2 = ModelProfile(
    name="deepseek-ocr-2",
    label="DeepSeek-OCR 2",
    image_tokens=deepseek_ocr2_image_tokens,
    document_prompt=DOCUMENT_PROMPT,
    # The model "works better with plain prompts than instruction formats" (the model card).
    plain_prompt=PLAIN_PROMPT,
)
GENERIC = ModelProfile(
    name="generic",
    label="an unknown model",
    image_tokens=generic_image_tokens,
    document_prompt=DOCUMENT_PROMPT,
    plain_prompt=PLAIN_PROMPT,
    grounding=False,
)
PROFILES = {profile.name: profile for profile in (DEEPSEEK_OCR, DEEPSEEK_OCR_2, GENERIC)}
PROFILE_CHOICES = ("auto", *PROFILES)


def profile_for_model(model: str) -> ModelProfile | None:
    """The profile a model name (``deepseek-ai/DeepSeek-OCR-2``, a local path, a served name) points to, if any."""
    name = model.lower().replace("_", "-").rstrip("/").rsplit("/", 1)[-1]
    if "deepseek-ocr-2" in name or "deepseek-ocr2" in name:
        return DEEPSEEK_OCR_2
    if "deepseek-ocr" in name:
        return DEEPSEEK_OCR
    return None


def choose_profile(choice: str, model: str) -> ModelProfile:
    """``LLM_MODEL_PROFILE`` (a profile name, or ``auto``: from ``model``; generic when the name says nothing)."""
    if choice != "auto":
        return PROFILES[choice]
    return profile_for_model(model) or GENERIC
