"""Text layers of born-digital PDF pages: the exact text and its boxes, read with pypdfium2 instead of OCR.

A page's text layer is used only when it is worth trusting: it has printable text, that text is not mostly
replacement or private-use characters (a font without a usable ToUnicode map extracts as garbage), the page is
not turned (its rectangles would be in unturned coordinates), and no image covers a large part of the page (a scan
with an invisible OCR layer, or text that lives in a picture, is read from its pixels). The lines come back as the
same quads the detector gives, in the rendered page's pixels, so ``ocr.engines.layout`` orders and structures
them exactly as it does OCR output.
"""

from __future__ import annotations

import unicodedata
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pypdfium2 as pdfium

TextLine = tuple[list[tuple[float, float]], str]

#: Pages whose images cover more than this share of the page are read from their pixels.
MAX_IMAGE_SHARE = 0.3
#: At least this share of the layer's visible characters must be real text.
MIN_CLEAN_SHARE = 0.9


def clean_share(text: str) -> float:
    """The share of visible characters that are printable text (not U+FFFD, private-use or control)."""
    visible = [char for char in text if not char.isspace()]
    if not visible:
        return 0.0
    good = sum(1 for char in visible if char != "\ufffd" and unicodedata.category(char) not in {"Co", "Cc", "Cs", "Cn"})
    return good / len(visible)


def image_share(page: pdfium.PdfPage) -> float:
    """How much of the page its image objects cover (their bounding boxes, summed, at most 1)."""
    import pypdfium2.raw as pdfium_c

    width, height = page.get_size()
    area = max(width * height, 1.0)
    covered = 0.0
    for image in page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE], max_depth=2):
        left, bottom, right, top = image.get_bounds()
        covered += max(0.0, right - left) * max(0.0, top - bottom)
    return min(1.0, covered / area)


def read_text_layer(page: pdfium.PdfPage, scale: float) -> list[TextLine] | None:
    """The page's text runs as ``(quad, text)`` in pixels of the page rendered at ``scale``, or None when the
    layer is missing or not to be trusted (see the module's docstring)."""
    if page.get_rotation() % 360 or image_share(page) > MAX_IMAGE_SHARE:
        return None
    textpage = page.get_textpage()
    try:
        if not textpage.count_chars():
            return None
        if clean_share(textpage.get_text_range()) < MIN_CLEAN_SHARE:
            return None
        _, height = page.get_size()
        lines: list[TextLine] = []
        for index in range(textpage.count_rects()):
            left, bottom, right, top = textpage.get_rect(index)
            text = textpage.get_text_bounded(left, bottom, right, top).replace("\r", " ").replace("\n", " ").strip()
            if not text:
                continue
            x1, x2 = left * scale, right * scale
            y1, y2 = (height - top) * scale, (height - bottom) * scale
            lines.append(([(x1, y1), (x2, y1), (x2, y2), (x1, y2)], text))
        return lines or None
    finally:
        textpage.close()
