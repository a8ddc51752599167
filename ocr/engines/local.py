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
import statistics
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

# Must be set before onnxruntime is imported: ORT >= 1.29 otherwise records and sends telemetry. The one place
# it is set: everything that loads onnxruntime (through rapidocr) imports this module first.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from PIL import Image, ImageDraw, ImageFont

from ocr.config import OcrConfig
from ocr.engines.base import Completion, DeltaCallback, Engine, PageImage
from ocr.engines.layout import analyse, to_markdown
from ocr.errors import EngineError
from ocr.events import ErrorCode

logger = logging.getLogger(__name__)

RAPIDOCR_PARAMS = {
    "Global.log_level": "error",
    "EngineConfig.onnxruntime.intra_op_num_threads": 1,
    "EngineConfig.onnxruntime.inter_op_num_threads": 1,
}

#: Lines recognised before the first text is sent, then per later batch: the first line of a page appears as soon
#: as it is read (under a second after the page starts), the later batches are large enough to keep RapidOCR's
#: batches of 6 full.
FIRST_BATCH = 1
BATCH = 24
#: How much higher (0-1) the recognition score of a line read upside down must be to believe the classifier.
FLIP_MARGIN = 0.1
#: The share of a page's line length the classifier must call upside down for the page to be turned round.
PAGE_FLIP_SHARE = 0.6
#: Lines read both ways to tell whether a page is upside down.
PAGE_SAMPLE = 6
#: Line heights of a line's start read both ways to check the classifier.
SLICE_IN_HEIGHTS = 8


class LocalEngine(Engine):
    name = "local"
    wants_pixels = True

    def __init__(self, config: OcrConfig) -> None:
        super().__init__(concurrency=config.engine_concurrency)
        self.model = "rapidocr-3.10-ppocrv6-small"
        self._threads = ThreadPoolExecutor(max_workers=config.local_threads, thread_name_prefix="rapidocr")
        self._timeout = config.total_timeout
        self._ocr: Any = None
        self._wide_ocr: Any = None
        self._build_lock = threading.Lock()
        self._cores = max(1, min(config.local_threads, os.cpu_count() or 1))
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()

    def _rapidocr(self) -> Any:
        if self._ocr is None:
            with self._build_lock:
                if self._ocr is None:
                    from rapidocr import RapidOCR

                    self._ocr = RapidOCR(params=RAPIDOCR_PARAMS)
        return self._ocr

    def _first_models(self, alone: bool) -> tuple[Any, Any]:
        """The text detector and the recogniser of the first line for one page: what the first text of a page
        waits for. A page read alone uses every core for them; pages read side by side keep one ONNX Runtime
        thread each (more threads than cores then would slow both)."""
        if not alone or self._cores < 2:
            ocr = self._rapidocr()
            return ocr._load_det_model(), ocr._load_rec_model()
        if self._wide_ocr is None:
            with self._build_lock:
                if self._wide_ocr is None:
                    from rapidocr import RapidOCR

                    params = {**RAPIDOCR_PARAMS, "EngineConfig.onnxruntime.intra_op_num_threads": self._cores}
                    self._wide_ocr = RapidOCR(params=params)
        return self._wide_ocr._load_det_model(), self._wide_ocr._load_rec_model()

    def read_lines(self, image: Image.Image) -> list[dict]:
        """Blocking: the page's lines in reading order, each ``{"text", "box", "score"}`` (box in pixels)."""
        return self.read_page(image).lines

    def read_page(self, image: Image.Image, emit: Callable[[str], bool] | None = None) -> PageReading:
        """Blocking: read one page the way a person does (see ``ocr.engines.layout``).

        Detection first; then the page's orientation from the line shapes and the angle classifier; then the
        reading order from the boxes; then recognition in that order, a few lines at a time, passing the text
        read so far (plain lines) to ``emit`` after each batch. ``emit`` returning False stops the work (the
        request was cancelled or timed out). The result carries the page as Markdown.
        """
        import numpy as np

        rgb = image if image.mode == "RGB" else image.convert("RGB")
        # RapidOCR expects OpenCV's BGR channel order for arrays.
        pixels = np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])
        ocr = self._rapidocr()
        with self._in_flight_lock:
            self._in_flight += 1
            alone = self._in_flight == 1
        try:
            det, first_rec = self._first_models(alone)
            return self._read(ocr, pixels, det, first_rec, emit)
        finally:
            with self._in_flight_lock:
                self._in_flight -= 1

    def _read(self, ocr: Any, pixels: Any, det: Any, first_rec: Any, emit: Callable[[str], bool] | None) -> PageReading:
        import numpy as np

        quads, crops = _detect(ocr, det, pixels)
        if not quads:
            return PageReading([], "", 0)
        flips, maybe = _classify(ocr, crops)
        quarter = page_rotation(quads, flips)
        if not quarter and _upside_down(first_rec, quads, crops, maybe):
            quarter = 2
        if quarter:
            pixels = np.ascontiguousarray(np.rot90(pixels, quarter))
            quads, crops = _detect(ocr, det, pixels)
            if not quads:
                return PageReading([], "", quarter)
            flips, _ = _classify(ocr, crops)
        layout = analyse(quads)
        order = layout.order
        texts = [""] * len(quads)
        scores = [0.0] * len(quads)
        rec = ocr._load_rec_model()
        start, size = 0, FIRST_BATCH
        batch_rec = first_rec
        streamed: list[str] = []
        while start < len(order):
            batch = order[start : start + size]
            start += size
            size = BATCH
            readings = _recognise(batch_rec, [crops[i] for i in batch], [flips[i] for i in batch])
            batch_rec = rec
            for index, (text, score) in zip(batch, readings, strict=True):
                # The same filter as RapidOCR's own pipeline: empty readings and low scores are dropped.
                if text.strip() and score >= ocr.text_score:
                    texts[index], scores[index] = text, score
            if emit is not None:
                lines = [texts[i].strip() for i in batch if texts[i].strip()]
                if lines and not emit("\n".join(lines) if not streamed else "\n" + "\n".join(lines)):
                    return PageReading([], "", quarter)
                streamed.extend(lines)
        # The structure again, from the boxes that held text: a speck of dirt detected in a gutter, dropped by
        # recognition, must not join the columns it separates.
        kept = [index for index in range(len(quads)) if texts[index]]
        if len(kept) < len(quads):
            layout = analyse([quads[index] for index in kept])
            order = [kept[position] for position in layout.order]
            markdown = to_markdown(layout, [texts[index] for index in kept])
        else:
            markdown = to_markdown(layout, texts)
        height, width = pixels.shape[:2]
        lines = []
        for index in order:
            if not texts[index]:
                continue
            points = [_unrotate(x, y, quarter, width, height) for x, y in quads[index]]
            xs = [point[0] for point in points]
            ys = [point[1] for point in points]
            lines.append({"text": texts[index], "box": [min(xs), min(ys), max(xs), max(ys)], "score": scores[index]})
        return PageReading(lines, markdown, quarter, "\n".join(streamed))

    async def recognise(self, page: PageImage, prompt: str, on_delta: DeltaCallback) -> Completion:
        if page.text_layer:
            return self._from_text_layer(page, on_delta)
        image = page.pixels
        if image is None:
            raise EngineError("The embedded engine needs decoded pixels.", code=ErrorCode.ENGINE_ERROR)
        loop = asyncio.get_running_loop()
        finished = threading.Event()

        def deliver(text: str) -> None:
            if not finished.is_set():
                on_delta(text)

        def emit(text: str) -> bool:
            # Called from the OCR thread; the callback belongs to the event loop.
            if finished.is_set():
                return False
            loop.call_soon_threadsafe(deliver, text)
            return True

        try:
            async with asyncio.timeout(self._timeout):
                # The thread keeps running if we are cancelled, up to the end of its current batch: ONNX Runtime
                # cannot be interrupted mid-call.
                reading = await loop.run_in_executor(self._threads, self.read_page, image, emit)
        except TimeoutError:
            raise EngineError(
                f"The embedded engine did not finish the page within {self._timeout:g} s.",
                code=ErrorCode.ENGINE_TIMEOUT,
            ) from None
        except Exception as exc:
            logger.exception("embedded OCR failed on page %s", page.number)
            raise EngineError(f"The embedded engine failed: {exc}", code=ErrorCode.ENGINE_ERROR) from exc
        finally:
            finished.set()
        # The streamed lines were plain and in reading order; the structured page replaces them once known.
        if reading.markdown != reading.streamed:
            on_delta(reading.markdown, reset=True)
        return Completion(
            finish_reason="stop",
            prompt_tokens=0,
            completion_tokens=estimate_tokens(reading.markdown),
            estimated=True,
            layout=normalise_layout(reading.lines, page.width, page.height),
        )

    def _from_text_layer(self, page: PageImage, on_delta: DeltaCallback) -> Completion:
        """A born-digital page: its own text, ordered and structured like OCR output, with nothing to recognise.
        Ordering a page's runs takes about a millisecond, so it runs on the event loop."""
        quads = [quad for quad, _ in page.text_layer or ()]
        texts = [text for _, text in page.text_layer or ()]
        layout = analyse(quads)
        markdown = to_markdown(layout, texts)
        if markdown:
            on_delta(markdown)
        lines = []
        for index in layout.order:
            xs = [x for x, _ in quads[index]]
            ys = [y for _, y in quads[index]]
            lines.append({"text": texts[index], "box": [min(xs), min(ys), max(xs), max(ys)], "score": 1.0})
        return Completion(
            finish_reason="stop",
            completion_tokens=estimate_tokens(markdown),
            estimated=True,
            layout=normalise_layout(lines, page.width, page.height),
            source="text_layer",
        )

    async def warm_up(self) -> None:
        """Load the models by recognising a small page with a line of text (a blank image would skip
        recognition). A page-shaped image: RapidOCR scales the short side up to 736 px, so a thin strip would
        become a huge image."""
        image = Image.new("RGB", (480, 360), "white")
        ImageDraw.Draw(image).text((24, 160), "Warm up 123", fill="black", font=ImageFont.load_default(28))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._threads, self.read_page, image)
        # That page was read alone, with the all-core models: load the ones pages share when read side by side.
        await loop.run_in_executor(self._threads, self._first_models, False)


@dataclass(slots=True)
class PageReading:
    """One page read: its lines in reading order (boxes in the page's own pixels), as Markdown, the quarter
    turns (counter-clockwise) that made it upright, and the plain text streamed while it was read."""

    lines: list[dict]
    markdown: str
    quarter_turns: int
    streamed: str = ""


def _detect(ocr: Any, det: Any, pixels: Any) -> tuple[list[list[tuple[float, float]]], list[Any]]:
    """RapidOCR's detection stage alone: the line quads in ``pixels`` coordinates and their upright crops.

    The stages are RapidOCR 3.10's own methods (pinned in pyproject.toml), called one by one so that the order
    is known before recognition starts and the angle classifier's verdicts can be checked.
    """
    from rapidocr.utils.process_img import map_boxes_to_original

    image, record = ocr.preprocess_img(pixels)
    if ocr.cfg.Global.use_vertical_padding:
        from rapidocr.utils.process_img import apply_vertical_padding

        image, record = apply_vertical_padding(image, record, ocr.width_height_ratio, ocr.min_height)
    else:
        record["padding_1"] = {"top": 0, "left": 0}
    result = det(image)
    if result.boxes is None or not len(result.boxes):
        return [], []
    crops = ocr.crop_text_regions(image, result.boxes)
    height, width = pixels.shape[:2]
    boxes = map_boxes_to_original(result.boxes.copy(), record, height, width)
    quads = [[(float(x), float(y)) for x, y in quad] for quad in boxes]
    return quads, crops


def _classify(ocr: Any, crops: list[Any]) -> tuple[list[bool], list[bool]]:
    """Whether the angle classifier thinks each crop is upside down: with RapidOCR's own threshold, and at all."""
    cls = ocr._load_cls_model()
    result = cls(crops)
    threshold = ocr.cfg.Cls.cls_thresh
    sure = [("180" in label and score > threshold) for label, score in result.cls_res]
    maybe = ["180" in label for label, _ in result.cls_res]
    return sure, maybe


def _upside_down(rec: Any, quads: list[list[tuple[float, float]]], crops: list[Any], maybe: list[bool]) -> bool:
    """Whether a page of wide lines is upside down. The classifier alone is unsure on whole pages turned round
    (it calls a third of their lines upright), so when it leans that way at all, the longest lines are read
    both ways and the recognition scores decide."""
    lengths = [math.hypot(quad[1][0] - quad[0][0], quad[1][1] - quad[0][1]) for quad in quads]
    total = sum(lengths)
    if not total or sum(length for length, flipped in zip(lengths, maybe, strict=True) if flipped) < 0.3 * total:
        return False
    longest = sorted(range(len(crops)), key=lambda k: -lengths[k])[:PAGE_SAMPLE]
    upright, turned = _slice_scores(rec, [crops[k] for k in longest])
    return statistics.mean(turned) > statistics.mean(upright) + FLIP_MARGIN


def page_rotation(quads: list[list[tuple[float, float]]], flips: list[bool]) -> int:
    """Quarter turns (counter-clockwise, as ``numpy.rot90``) that make the page upright, from its lines.

    A page turned by 90° has mostly tall boxes; RapidOCR's crops of tall boxes are turned a quarter
    counter-clockwise, so the classifier says which way. A page upside down has mostly wide boxes that the
    classifier calls flipped. Lengths weigh the votes, so a few short misread boxes cannot turn a page.
    """
    tall = wide = tall_flipped = wide_flipped = 0.0
    for quad, flipped in zip(quads, flips, strict=True):
        (x0, y0), (x1, y1), _, (x3, y3) = quad
        across = math.hypot(x1 - x0, y1 - y0)
        down = math.hypot(x3 - x0, y3 - y0)
        if down >= 1.5 * across:
            tall += down
            tall_flipped += down if flipped else 0.0
        else:
            wide += across
            wide_flipped += across if flipped else 0.0
    if tall > 2 * wide:
        return -1 if tall_flipped > tall / 2 else 1
    if wide and wide_flipped > PAGE_FLIP_SHARE * wide:
        return 2
    return 0


def _slice_scores(rec: Any, crops: list[Any]) -> tuple[list[float], list[float]]:
    """Recognition scores of the start of each crop (at most ``SLICE_IN_HEIGHTS`` line heights of it) read as
    it is and turned round: the same pixels both ways, at a fraction of the cost of whole lines."""
    import numpy as np
    from rapidocr.ch_ppocr_rec import TextRecInput

    slices = [crop[:, : max(1, min(crop.shape[1], SLICE_IN_HEIGHTS * crop.shape[0]))] for crop in crops]
    images = slices + [np.ascontiguousarray(np.rot90(piece, 2)) for piece in slices]
    scores = [float(score) for score in rec(TextRecInput(img=images)).scores]
    return scores[: len(crops)], scores[len(crops) :]


def _recognise(rec: Any, crops: list[Any], flips: list[bool]) -> list[tuple[str, float]]:
    """Recognise crops. A crop the classifier calls upside down is turned only when the turned reading of its
    start scores clearly better: the classifier alone turns some upright lines into garbage."""
    import numpy as np
    from rapidocr.ch_ppocr_rec import TextRecInput

    images = list(crops)
    flagged = [k for k, flipped in enumerate(flips) if flipped]
    if flagged:
        upright, turned = _slice_scores(rec, [crops[k] for k in flagged])
        for k, up, down in zip(flagged, upright, turned, strict=True):
            if down > up + FLIP_MARGIN:
                images[k] = np.ascontiguousarray(np.rot90(crops[k], 2))
    result = rec(TextRecInput(img=images))
    return list(zip(result.txts or ("",) * len(images), (float(score) for score in result.scores), strict=True))


def _unrotate(x: float, y: float, quarter: int, width: int, height: int) -> tuple[float, float]:
    """A point of the image turned by ``numpy.rot90(k=quarter)`` (size ``width × height``) back in the
    original image."""
    if quarter == 1:
        return height - y, x
    if quarter == -1:
        return y, width - x
    if quarter == 2:
        return width - x, height - y
    return x, y


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
