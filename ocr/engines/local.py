"""The embedded CPU engine: RapidOCR 3.x on ONNX Runtime with the models bundled in its wheel.

One RapidOCR instance per process, built lazily and shared by a thread pool with one thread per core; each
inference uses one ONNX Runtime thread, the fastest arrangement on a small machine (two threads sharing one
engine beat one engine using two threads). No network access, no downloads. RapidOCR has no notion of a prompt
or of tokens: the prompt is ignored and token counts are estimates, flagged as such.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

# Must be set before onnxruntime is imported: ORT >= 1.29 otherwise records and sends telemetry.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from PIL import Image, ImageDraw, ImageFont

from ocr.config import OcrConfig
from ocr.engines.base import Completion, DeltaCallback, Engine, PageImage
from ocr.errors import ENGINE_ERROR, ENGINE_TIMEOUT, EngineError

logger = logging.getLogger(__name__)

RAPIDOCR_PARAMS = {
    "Global.log_level": "error",
    "EngineConfig.onnxruntime.intra_op_num_threads": 1,
    "EngineConfig.onnxruntime.inter_op_num_threads": 1,
}


class LocalEngine(Engine):
    name = "local"
    wants_pixels = True

    def __init__(self, config: OcrConfig) -> None:
        super().__init__(concurrency=config.engine_concurrency)
        self.model = "rapidocr-3.10-ppocrv6-small"
        self._threads = ThreadPoolExecutor(max_workers=config.local_threads, thread_name_prefix="rapidocr")
        self._timeout = config.total_timeout
        self._ocr: Any = None
        self._build_lock = threading.Lock()

    def _rapidocr(self) -> Any:
        if self._ocr is None:
            with self._build_lock:
                if self._ocr is None:
                    from rapidocr import RapidOCR

                    self._ocr = RapidOCR(params=RAPIDOCR_PARAMS)
        return self._ocr

    def read_lines(self, image: Image.Image) -> list[dict]:
        """Blocking: the page's lines in reading order, each ``{"text", "box", "score"}`` (box in pixels)."""
        import numpy as np

        rgb = image if image.mode == "RGB" else image.convert("RGB")
        # RapidOCR expects OpenCV's BGR channel order for arrays.
        result = self._rapidocr()(np.asarray(rgb)[:, :, ::-1])
        if not result.txts:
            return []
        lines = []
        for quad, text, score in zip(result.boxes, result.txts, result.scores, strict=True):
            xs = [float(point[0]) for point in quad]
            ys = [float(point[1]) for point in quad]
            lines.append({"text": text, "box": [min(xs), min(ys), max(xs), max(ys)], "score": float(score)})
        return reading_order(lines)

    async def recognise(self, page: PageImage, prompt: str, on_delta: DeltaCallback) -> Completion:
        image = page.pixels
        if image is None:
            raise EngineError("The embedded engine needs decoded pixels.", code=ENGINE_ERROR)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout):
                # The thread keeps running if we are cancelled; ONNX Runtime cannot be interrupted mid-call.
                lines = await loop.run_in_executor(self._threads, self.read_lines, image)
        except TimeoutError:
            raise EngineError(
                f"The embedded engine did not finish the page within {self._timeout:g} s.",
                code=ENGINE_TIMEOUT,
            ) from None
        except Exception as exc:
            logger.exception("embedded OCR failed on page %s", page.number)
            raise EngineError(f"The embedded engine failed: {exc}", code=ENGINE_ERROR) from exc
        text_parts = []
        for index, row in enumerate(join_rows(lines)):
            delta = row if index == 0 else "\n" + row
            text_parts.append(delta)
            on_delta(delta)
        text = "".join(text_parts)
        return Completion(
            finish_reason="stop",
            prompt_tokens=0,
            completion_tokens=estimate_tokens(text),
            estimated=True,
            layout=normalise_layout(lines, page.width, page.height),
        )

    async def warm_up(self) -> None:
        """Load the models by recognising a small page with a line of text (a blank image would skip
        recognition). A page-shaped image: RapidOCR scales the short side up to 736 px, so a thin strip would
        become a huge image."""
        image = Image.new("RGB", (480, 360), "white")
        ImageDraw.Draw(image).text((24, 160), "Warm up 123", fill="black", font=ImageFont.load_default(28))
        await asyncio.get_running_loop().run_in_executor(self._threads, self.read_lines, image)


def reading_order(lines: list[dict]) -> list[dict]:
    """Sort lines top to bottom, and left to right within a row (boxes overlapping vertically by half)."""
    rows: list[list[dict]] = []
    for line in sorted(lines, key=lambda item: (item["box"][1] + item["box"][3]) / 2):
        _, y1, _, y2 = line["box"]
        centre = (y1 + y2) / 2
        if rows:
            last = rows[-1]
            top = min(item["box"][1] for item in last)
            bottom = max(item["box"][3] for item in last)
            if top <= centre <= bottom:
                last.append(line)
                continue
        rows.append([line])
    ordered = []
    for row_index, row in enumerate(rows):
        for line in sorted(row, key=lambda item: item["box"][0]):
            line["row"] = row_index
            ordered.append(line)
    return ordered


def join_rows(lines: list[dict]) -> list[str]:
    """One text line per row; cells of a table row are separated by a space."""
    rows: list[list[str]] = []
    current = None
    for line in lines:
        if line.get("row") != current:
            rows.append([])
            current = line.get("row")
        rows[-1].append(line["text"])
    return [" ".join(cells) for cells in rows]


def normalise_layout(lines: list[dict], width: int, height: int) -> list[dict]:
    """Boxes in DeepSeek-OCR's 0–999 page coordinates, so one drawing code serves both engines."""
    if not width or not height:
        return []

    def scale(value: float, size: int) -> int:
        return max(0, min(999, round(value / size * 999)))

    return [
        {
            "label": "text",
            "text": line["text"],
            "score": round(line["score"], 3),
            "box": [
                scale(line["box"][0], width),
                scale(line["box"][1], height),
                scale(line["box"][2], width),
                scale(line["box"][3], height),
            ],
        }
        for line in lines
    ]


def estimate_tokens(text: str) -> int:
    """A rough token count for text no tokenizer saw: about 4 Latin characters or 1 CJK character a token."""
    ascii_chars = sum(1 for ch in text if ch.isascii())
    return math.ceil(ascii_chars / 4) + (len(text) - ascii_chars)
