"""A job's result as a searchable PDF: the original pages with an invisible, selectable text layer.

The text layer is drawn by reportlab (TrueType subset embedding with a ToUnicode map, so ``pdftotext`` and
viewers get the characters back, Chinese included) in text render mode 3 (neither filled nor stroked: invisible,
yet selectable and searchable, as OCRmyPDF does). For a PDF upload, pikepdf (qpdf) puts each text page over the
original page as a form XObject: the original content streams, images and fonts are copied as they are, never
decoded or re-encoded. For an image upload, the page is the image (a JPEG's own bytes, anything else lossless) with
the text over it.

Where the text goes: DeepSeek-OCR's grounding blocks, or the embedded engine's line boxes (both 0–999 of the page
as the engine saw it, i.e. as displayed: crop box, rotation applied); for a page without boxes, its whole text is
one block over the page. Each line is scaled to fill its box, so a selection matches the printed words, and the
lines are written in reading order, which is also the order ``pdftotext -raw`` and copy-and-paste give.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ocr.rendering import Box, plain_text, render_page

# A CJK-capable TrueType font first (WenQuanYi Micro Hei covers Latin too); DejaVu Sans when only it is there.
# reportlab embeds TrueType outlines only, not CFF-flavoured OpenType such as Noto Sans CJK.
FONT_CANDIDATES: tuple[tuple[str, int], ...] = (
    ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", 0),
    ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", 0),
)
FONT_ENV = "OCR_PDF_FONT"
FULL_PAGE: Box = (0, 0, 999, 999)
#: Pixels per inch assumed for an image that does not say (the CSS pixel).
DEFAULT_IMAGE_DPI = 96.0
# Glyphs take this share of a line's height, with the baseline this far above its bottom: the glyph boxes then
# stay inside the line's box (the font's ascent and descent are about 0.8 and 0.2 em).
FONT_SHARE = 0.8
BASELINE_SHARE = 0.18


class FontMissingError(RuntimeError):
    """No font to draw the text layer with (the export answers 503)."""


@dataclass(frozen=True, slots=True)
class TextBlock:
    """Text to place over a box (0–999 of the displayed page); its lines share the box's height."""

    box: Box
    lines: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PageText:
    """The text layer of one page: its blocks in reading order (none: the page gets no text layer)."""

    number: int
    blocks: tuple[TextBlock, ...]


def page_text(number: int, text: str, layout: object) -> PageText:
    """Where the text of one stored page goes: grounding blocks, else line boxes, else one block for the page."""
    rendered = render_page(text, layout)
    blocks: list[TextBlock] = []
    unplaced: list[str] = []
    if rendered.blocks:
        for block in rendered.blocks:
            lines = _lines(plain_text(block.text))
            if not lines:
                continue
            if block.boxes:
                blocks.append(TextBlock(box=_union(block.boxes), lines=lines))
            else:
                unplaced.extend(lines)
    elif rendered.overlays:
        for overlay in rendered.overlays:
            lines = _lines(overlay.text)
            if lines:
                blocks.append(TextBlock(box=overlay.box, lines=(" ".join(lines),)))
    else:
        unplaced.extend(_lines(rendered.plain))
    if unplaced:
        # Text with no box of its own: over the whole page, after the placed blocks, so no word is lost.
        blocks.append(TextBlock(box=FULL_PAGE, lines=tuple(unplaced)))
    return PageText(number=number, blocks=tuple(blocks))


def _lines(text: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def _union(boxes: Sequence[Box]) -> Box:
    return (
        min(box[0] for box in boxes),
        min(box[1] for box in boxes),
        max(box[2] for box in boxes),
        max(box[3] for box in boxes),
    )


@functools.cache
def text_font() -> str:
    """Register the text layer's font with reportlab once and return its name."""
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    configured = os.environ.get(FONT_ENV, "").strip()
    candidates = [(configured, 0)] if configured else list(FONT_CANDIDATES)
    for path, index in candidates:
        if Path(path).is_file():
            pdfmetrics.registerFont(TTFont("OcrTextLayer", path, subfontIndex=index))
            return "OcrTextLayer"
    raise FontMissingError(
        "No font for the PDF text layer: install fonts-wqy-microhei (or set OCR_PDF_FONT to a TrueType font)."
    )


def _draw_text(canvas, page: PageText, width: float, height: float) -> None:
    """Draw ``page``'s blocks invisibly on a ``width`` × ``height`` pt page (origin bottom left)."""
    from reportlab.pdfbase.pdfmetrics import stringWidth

    font = text_font()
    for block in page.blocks:
        x1, y1, x2, y2 = block.box
        left, right = x1 / 999 * width, max(x2, x1 + 1) / 999 * width
        top, bottom = height - y1 / 999 * height, height - max(y2, y1 + 1) / 999 * height
        line_height = (top - bottom) / len(block.lines)
        if block.box == FULL_PAGE:
            # Text without boxes: lines of a readable size from the top, not a few giant lines filling the page
            # (pdftotext and viewers lose the spaces between words squeezed that hard).
            line_height = min(line_height, height / 40)
        size = max(line_height * FONT_SHARE, 0.5)
        for index, line in enumerate(block.lines):
            natural = stringWidth(line, font, size)
            text = canvas.beginText()
            text.setTextRenderMode(3)
            text.setFont(font, size)
            # Horizontal scaling makes the line exactly as wide as its box, whatever the font's metrics.
            text.setHorizScale(100 * (right - left) / natural if natural > 0 else 100)
            text.setTextOrigin(left, top - (index + 1) * line_height + line_height * BASELINE_SHARE)
            text.textOut(line)
            canvas.drawText(text)


def _text_pages(pages: Iterable[tuple[PageText, float, float]]) -> bytes:
    """A PDF with one page per ``(text, width, height)``: only the invisible text."""
    from reportlab.pdfgen.canvas import Canvas

    buffer = io.BytesIO()
    canvas = Canvas(buffer, invariant=True, pageCompression=1)
    for page, width, height in pages:
        canvas.setPageSize((width, height))
        _draw_text(canvas, page, width, height)
        canvas.showPage()
    canvas.save()
    return buffer.getvalue()


def searchable_pdf_from_pdf(original: bytes, texts: Sequence[PageText]) -> bytes:
    """``original`` with each page of ``texts`` laid over its page as invisible text (pages keep their bytes)."""
    import pikepdf

    by_number = {page.number: page for page in texts if page.blocks}
    with pikepdf.open(io.BytesIO(original)) as pdf:
        targets = []
        for number, page in enumerate(pdf.pages, start=1):
            if number in by_number:
                crop = page.cropbox
                rotate = int(page.obj.get("/Rotate", 0)) % 360
                width, height = abs(float(crop[2]) - float(crop[0])), abs(float(crop[3]) - float(crop[1]))
                if rotate in (90, 270):
                    width, height = height, width
                targets.append((number, page, width, height))
        if not targets:
            return _saved(pdf)
        overlay_bytes = _text_pages((by_number[number], width, height) for number, _page, width, height in targets)
        with pikepdf.open(io.BytesIO(overlay_bytes)) as overlay:
            for (_number, page, _width, _height), text_page in zip(targets, overlay.pages, strict=True):
                form = pdf.copy_foreign(text_page.as_form_xobject())
                name = page.add_resource(form, pikepdf.Name.XObject, prefix="OcrText")
                # qpdf's placement undoes the page's /Rotate, so the text sits upright on the page as displayed.
                placement = page.calc_form_xobject_placement(
                    form, name, pikepdf.Rectangle(page.cropbox), allow_shrink=True, allow_expand=True
                )
                # The original content is wrapped in q … Q as extra streams around it, not rewritten: whatever
                # graphics state it leaves behind does not move the text.
                page.contents_add(b"q\n", prepend=True)
                page.contents_add(b"\nQ\n" + placement)
            return _saved(pdf)


def _saved(pdf) -> bytes:
    buffer = io.BytesIO()
    pdf.save(buffer, deterministic_id=True)
    return buffer.getvalue()


def searchable_pdf_from_image(data: bytes, text: PageText | None) -> bytes:
    """A one-page PDF: the image at its resolution (96 dpi when it has none) with the text over it."""
    import zlib

    import pikepdf
    from PIL import Image, ImageOps

    from ocr.intake import flatten

    with Image.open(io.BytesIO(data)) as image:
        dpi = image.info.get("dpi") or (DEFAULT_IMAGE_DPI, DEFAULT_IMAGE_DPI)
        dpi_x, dpi_y = (float(value) if 30 <= float(value) <= 4800 else DEFAULT_IMAGE_DPI for value in dpi[:2])
        rotated = image.getexif().get(0x0112, 1) not in (0, 1)
        if image.format == "JPEG" and not rotated and image.mode in ("RGB", "L"):
            # A JPEG's own bytes become the image (DCTDecode): the page shows exactly the uploaded image.
            encoded, codec, colours = data, pikepdf.Name.DCTDecode, "RGB" if image.mode == "RGB" else "Gray"
            pixels_x, pixels_y = image.size
        else:
            # What the engine saw (intake.py): upright, transparency on white; stored losslessly.
            upright = flatten(ImageOps.exif_transpose(image) if rotated else image)
            encoded, codec, colours = zlib.compress(upright.tobytes(), 6), pikepdf.Name.FlateDecode, "RGB"
            pixels_x, pixels_y = upright.size
    width, height = pixels_x / dpi_x * 72, pixels_y / dpi_y * 72
    layer = _text_pages([(text or PageText(number=1, blocks=()), width, height)])
    with pikepdf.open(io.BytesIO(layer)) as pdf:
        page = pdf.pages[0]
        picture = pikepdf.Stream(pdf, encoded)
        picture.Type, picture.Subtype = pikepdf.Name.XObject, pikepdf.Name.Image
        picture.Width, picture.Height, picture.BitsPerComponent = pixels_x, pixels_y, 8
        picture.ColorSpace = pikepdf.Name("/Device" + colours)
        picture.Filter = codec
        name = page.add_resource(picture, pikepdf.Name.XObject, prefix="Im")
        page.contents_add(f"q {width:.4f} 0 0 {height:.4f} 0 0 cm {name} Do Q\n".encode(), prepend=True)
        return _saved(pdf)
