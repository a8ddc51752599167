"""Test documents with known ground truth: rendered text images, text PDFs, scanned PDFs and bad uploads.

Everything here is deterministic: the same arguments give the same bytes, on one machine with the same
library versions (Pillow's and zlib's encoders are not promised to be stable across versions). The helpers
that take no arguments cache their result, so using them from many tests is cheap.

Fonts come from Debian packages at their Debian paths (see :data:`DEBIAN_FONT_PACKAGES`): DejaVu Sans for
Latin text and WenQuanYi Micro Hei, a TrueType font that reportlab can embed, for any line with CJK in it.
A missing font raises :class:`MissingFontError` naming the package to install.

Samples (:data:`SAMPLES`) are plain sentences that RapidOCR 3.10 reads back perfectly;
``tests/test_documents.py`` checks that. Bad uploads (:data:`BAD_INPUTS`) each carry the reason they must
be refused and which library check catches them; :data:`ODD_GOOD_INPUTS` are uploads that look unusual
but must be accepted.
"""

from __future__ import annotations

import functools
import io
import random
import struct
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

__all__ = [
    "A4",
    "BAD_INPUTS",
    "DEBIAN_FONT_PACKAGES",
    "ENCRYPTED_PDF_OWNER_PASSWORD",
    "ENCRYPTED_PDF_USER_PASSWORD",
    "FONTS",
    "NUMBERED_SENTENCES",
    "ODD_GOOD_INPUTS",
    "SAMPLES",
    "BadInput",
    "Check",
    "Endpoint",
    "FontFile",
    "GoodInput",
    "MissingFontError",
    "Sample",
    "empty_pdf",
    "font_file",
    "giant_page_pdf",
    "make_image_pdf",
    "make_numbered_pdf",
    "make_pdf",
    "many_pages_pdf",
    "needs_cjk_font",
    "numbered_page_lines",
    "numbered_page_text",
    "png_bomb",
    "render_text_image",
]

FontKind = Literal["sans", "cjk"]
Endpoint = Literal["image", "pdf", "both"]
Check = Literal[
    "empty",
    "unidentified",
    "decode",
    "verify",
    "pixels",
    "side",
    "pdf_open",
    "pdf_password",
    "pdf_page_count",
    "pdf_page_size",
]

A4 = (595.2755905511812, 841.8897637795277)  # reportlab.lib.pagesizes.A4, in points


# --------------------------------------------------------------------------------------------------- fonts


@dataclass(frozen=True)
class FontFile:
    """A font file at its Debian path; ``index`` is the face inside a ``.ttc`` collection."""

    path: Path
    index: int
    package: str
    family: str


FONTS: dict[FontKind, FontFile] = {
    "sans": FontFile(Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"), 0, "fonts-dejavu-core", "DejaVu Sans"),
    # Noto Sans CJK (fonts-noto-cjk) is CFF-flavoured OpenType, which reportlab cannot embed; WenQuanYi Micro
    # Hei is TrueType, so one CJK font serves both the images and the PDFs.
    "cjk": FontFile(
        Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"), 0, "fonts-wqy-microhei", "WenQuanYi Micro Hei"
    ),
}
DEBIAN_FONT_PACKAGES: tuple[str, ...] = tuple(sorted({font.package for font in FONTS.values()}))


class MissingFontError(FileNotFoundError):
    """A font these generators need is not installed."""


def font_file(kind: FontKind) -> FontFile:
    """Return the font for ``kind``; raise :class:`MissingFontError` naming its package if it is missing."""
    font = FONTS[kind]
    if not font.path.is_file():
        raise MissingFontError(
            f"{font.family} is missing: {font.path} does not exist. Install the Debian package "
            f"{font.package!r} (apt-get install --no-install-recommends {' '.join(DEBIAN_FONT_PACKAGES)})."
        )
    return font


def needs_cjk_font(text: str) -> bool:
    """Whether ``text`` has a character at or above U+2E80 (CJK and later blocks), which DejaVu Sans lacks."""
    return any(ord(char) >= 0x2E80 for char in text)


@functools.cache
def _pil_font(kind: FontKind, size: int) -> ImageFont.FreeTypeFont:
    font = font_file(kind)
    return ImageFont.truetype(str(font.path), size, index=font.index)


@functools.cache
def _reportlab_font(kind: FontKind) -> str:
    """Register ``kind`` with reportlab once and return its reportlab name."""
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    font = font_file(kind)
    name = font.family.replace(" ", "")
    pdfmetrics.registerFont(TTFont(name, str(font.path), subfontIndex=font.index))
    return name


# -------------------------------------------------------------------------------------------------- images


def render_text_image(
    lines: Sequence[str],
    *,
    width: int = 1200,
    height: int | None = None,
    font_size: int = 32,
    font: FontKind = "sans",
    noise: bool = False,
    rotate: float = 0.0,
    fmt: str = "PNG",
    quality: int = 90,
    seed: int = 0,
) -> bytes:
    """Render ``lines`` as black text on a white RGB page and return the encoded image.

    The margin is twice the font size and lines are ``1.9 × font_size`` apart, so every line is its own
    OCR line. ``height`` defaults to two thirds of ``width``, or more if the lines need it: RapidOCR's
    detector scales the shorter side up to 736 px, so a wide, short strip would be slower to read than a
    page-shaped image. A line containing CJK (see :func:`needs_cjk_font`) is drawn in the CJK font whatever
    ``font`` says; ``font="cjk"`` draws every line in it.

    ``noise`` makes a poor scan: a paper-coloured gradient, a 0.8 px blur, grain and salt-and-pepper dots,
    all from a generator seeded with ``seed``. ``rotate`` turns the page that many degrees counter-clockwise
    (the canvas grows to fit, corners are white). ``fmt`` is any format Pillow writes (PNG, JPEG, WEBP,
    TIFF, BMP, GIF...); ``quality`` applies to JPEG and WEBP.

    Raises ``ValueError`` if a line is wider than the page or the lines do not fit ``height``, so a sample
    never loses text silently.
    """
    margin = 2 * font_size
    line_height = round(1.9 * font_size)
    needed = 2 * margin + max(len(lines), 1) * line_height
    if height is None:
        height = max(needed, width * 2 // 3)
    elif height < needed - (line_height - font_size):
        raise ValueError(f"{len(lines)} lines need a height of at least {needed} px, got {height}")
    page = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(page)
    for number, line in enumerate(lines):
        face = _pil_font("cjk" if font == "cjk" or needs_cjk_font(line) else "sans", font_size)
        if margin + face.getlength(line) > width - margin:
            raise ValueError(f"line {number + 1} is wider than the page at {font_size} px: {line!r}")
        draw.text((margin, margin + number * line_height), line, font=face, fill=0)
    if rotate:
        page = page.rotate(rotate, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=255)
    if noise:
        page = _degrade(page, random.Random(seed))
    return _encode(page.convert("RGB"), fmt, quality=quality)


def _degrade(page: Image.Image, rng: random.Random) -> Image.Image:
    """A cheap, deterministic imitation of a poor scan (without numpy)."""
    size = page.size
    pixels = size[0] * size[1]
    paper = Image.linear_gradient("L").rotate(90).resize(size).point(lambda v: 255 - v * 24 // 255)
    page = ImageChops.darker(page.filter(ImageFilter.GaussianBlur(0.8)), paper)
    # The mean of two uniform bytes is a triangular distribution; scaled to a standard deviation of about 18.
    uniform = [Image.frombytes("L", size, rng.randbytes(pixels)) for _ in range(2)]
    grain = ImageChops.add(*uniform, 2.0).point(lambda v: round((v - 128) * 0.35) + 128)
    page = ImageChops.add(page, grain, 1.0, -128)
    dots = Image.frombytes("L", size, rng.randbytes(pixels))
    page.paste(0, mask=dots.point(lambda v: 255 if v == 0 else 0))
    page.paste(255, mask=dots.point(lambda v: 255 if v == 255 else 0))
    return page


def _encode(image: Image.Image, fmt: str, *, quality: int = 90) -> bytes:
    fmt = fmt.upper()
    options: dict[str, object] = {}
    if fmt in {"JPEG", "JPG"}:
        fmt, options = "JPEG", {"quality": quality}
    elif fmt == "WEBP":
        options = {"quality": quality, "method": 4}
    elif fmt in {"TIFF", "TIF"}:
        fmt, options = "TIFF", {"compression": "tiff_lzw"}
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@dataclass(frozen=True)
class Sample:
    """A page of known text. ``text`` is the ground truth: the lines joined with ``"\\n"``."""

    name: str
    lines: tuple[str, ...]
    description: str
    font_size: int = 32
    width: int = 1200

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def render(
        self,
        *,
        fmt: str = "PNG",
        noise: bool = False,
        rotate: float = 0.0,
        quality: int = 90,
        height: int | None = None,
    ) -> bytes:
        """This sample through :func:`render_text_image`, at the sample's width and font size."""
        return _render_sample(self, fmt=fmt, noise=noise, rotate=rotate, quality=quality, height=height)

    def pdf(self) -> bytes:
        """This sample as a one-page text PDF (see :func:`make_pdf`)."""
        return make_pdf([list(self.lines)])


@functools.lru_cache(maxsize=64)
def _render_sample(sample: Sample, *, fmt: str, noise: bool, rotate: float, quality: int, height: int | None) -> bytes:
    return render_text_image(
        sample.lines,
        width=sample.width,
        height=height,
        font_size=sample.font_size,
        noise=noise,
        rotate=rotate,
        fmt=fmt,
        quality=quality,
    )


SAMPLES: dict[str, Sample] = {
    sample.name: sample
    for sample in (
        Sample(
            "english",
            (
                "Optical character recognition turns pictures of",
                "text into plain text that a computer can search.",
                "This page was drawn by a small test helper, so",
                "the exact words on it are known before it is read.",
                "Each line is short, the font is clear, and there",
                "is plenty of white space between the lines.",
                "When the engine reads every word back correctly,",
                "the character error rate for this page is zero.",
            ),
            "an English paragraph, eight lines",
        ),
        Sample(
            "chinese",
            (
                "光学字符识别是把图片中的文字转换成文本的技术。",
                "这一页由测试工具生成，因此每个字都是已知的。",
                "每一行都比较短，字体清晰，行与行之间留有空白。",
                "识别引擎读完整页之后，我们计算字符错误率。",
                "如果每个字都读对了，错误率就是零。",
                "这个样本用来检查中文识别是否正常工作。",
            ),
            "a Chinese paragraph, six lines",
        ),
        Sample(
            "mixed",
            (
                "月度报告 Monthly Report",
                "本文档同时包含中文和英文。",
                "The engine should read both languages.",
                "每一页的结果都会实时显示在浏览器中。",
                "Thank you for testing this service.",
            ),
            "a short document mixing Chinese and English lines",
        ),
        Sample(
            "short",
            (
                "Hello from the test suite.",
                "This is a short sample page.",
                "Three lines are enough here.",
            ),
            "three short English lines on a small 640 × 426 page, for fast tests",
            width=640,
        ),
    )
}


# ---------------------------------------------------------------------------------------------------- PDFs


def make_pdf(
    pages: Sequence[Sequence[str]],
    *,
    page_size: tuple[float, float] = A4,
    font_size: float = 14.0,
    margin: float = 72.0,
    user_password: str | None = None,
    owner_password: str | None = None,
) -> bytes:
    """Return a PDF with one page per item of ``pages``, each line drawn as real (extractable) text.

    Fonts are embedded TrueType subsets: DejaVu Sans, or WenQuanYi Micro Hei for a line with CJK in it.
    Lines start ``margin`` points from the top-left corner and are ``1.6 × font_size`` apart. An empty
    list of lines makes a blank page. pypdfium2 extracts a page's text as its lines joined with ``"\\r\\n"``.

    With ``user_password`` or ``owner_password`` the file is RC4-128 encrypted by reportlab; a user
    password of ``""`` with an owner password gives a file any reader opens without asking.

    Raises ``ValueError`` for no pages, or a line that does not fit the page.
    """
    from reportlab.lib.pdfencrypt import StandardEncryption
    from reportlab.pdfbase.pdfmetrics import stringWidth
    from reportlab.pdfgen.canvas import Canvas

    if not pages:
        raise ValueError("a PDF needs at least one page (use empty_pdf() for a PDF with none)")
    width, height = page_size
    line_height = 1.6 * font_size
    encrypt = None
    if user_password is not None or owner_password is not None:
        encrypt = StandardEncryption(user_password or "", owner_password, strength=128)
    buffer = io.BytesIO()
    canvas = Canvas(buffer, pagesize=page_size, invariant=True, encrypt=encrypt)
    for page_number, lines in enumerate(pages, start=1):
        if margin + len(lines) * line_height > height - margin + line_height:
            raise ValueError(f"page {page_number}: {len(lines)} lines do not fit at {font_size} pt")
        for number, line in enumerate(lines):
            font = _reportlab_font("cjk" if needs_cjk_font(line) else "sans")
            if stringWidth(line, font, font_size) > width - 2 * margin:
                raise ValueError(f"page {page_number}, line {number + 1} is wider than the page: {line!r}")
            canvas.setFont(font, font_size)
            canvas.drawString(margin, height - margin - font_size - number * line_height, line)
        canvas.showPage()
    canvas.save()
    return buffer.getvalue()


NUMBERED_SENTENCES: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "Every page of this document carries its own number.",
    "Large files are read one page at a time.",
    "The service streams each page as soon as it is ready.",
    "A long report should never exhaust the memory.",
    "Reading order follows the lines from top to bottom.",
    "Scanned pages and digital pages look the same here.",
    "Each sentence on this page ends with a full stop.",
    "Nothing on this page is hidden or encrypted.",
    "The number at the top tells the pages apart.",
    "Results are checked against the known text.",
    "This line was written by a test helper.",
)


def numbered_page_lines(page: int, n_pages: int, *, lines_per_page: int = 4) -> list[str]:
    """The lines of page ``page`` (counted from 1) of :func:`make_numbered_pdf`.

    The first line is ``"Page {page} of {n_pages}"``; the rest are :data:`NUMBERED_SENTENCES`, starting at
    a different sentence on each page.
    """
    if not 1 <= page <= n_pages:
        raise ValueError(f"page must be between 1 and {n_pages}, got {page}")
    count = len(NUMBERED_SENTENCES)
    sentences = [NUMBERED_SENTENCES[(page - 1 + k) % count] for k in range(lines_per_page - 1)]
    return [f"Page {page} of {n_pages}", *sentences]


def numbered_page_text(page: int, n_pages: int, *, lines_per_page: int = 4) -> str:
    """The ground truth of page ``page`` of :func:`make_numbered_pdf`: its lines joined by ``"\\n"``."""
    return "\n".join(numbered_page_lines(page, n_pages, lines_per_page=lines_per_page))


@functools.lru_cache(maxsize=8)
def make_numbered_pdf(n_pages: int, *, lines_per_page: int = 4) -> bytes:
    """A text PDF of ``n_pages`` A4 pages; page ``i`` holds :func:`numbered_page_lines` ``(i, n_pages)``.

    Made for large-document tests (hundreds of pages); the result is cached.
    """
    if n_pages < 1:
        raise ValueError("n_pages must be at least 1")
    if lines_per_page < 1:
        raise ValueError("lines_per_page must be at least 1")
    return make_pdf(
        [numbered_page_lines(page, n_pages, lines_per_page=lines_per_page) for page in range(1, n_pages + 1)]
    )


def make_image_pdf(images: Sequence[bytes], *, resolution: float = 144.0) -> bytes:
    """Return a PDF whose pages are the given images, like a scan: no text layer, one image per page.

    Each image is any format Pillow reads; it is converted to RGB and stored as JPEG (Pillow's PDF writer)
    at ``resolution`` DPI, so a 1200 px wide image makes a page 600 pt wide at 144 DPI. No dates are
    written, so the output is deterministic.
    """
    if not images:
        raise ValueError("a PDF needs at least one page")
    pages = [Image.open(io.BytesIO(data)).convert("RGB") for data in images]
    buffer = io.BytesIO()
    pages[0].save(
        buffer,
        format="PDF",
        save_all=True,
        append_images=pages[1:],
        resolution=resolution,
        quality=95,
        creationDate=None,
        modDate=None,
    )
    return buffer.getvalue()


def _raw_pdf(pages: Sequence[tuple[float, float, str]]) -> bytes:
    """A minimal hand-written PDF: one page per ``(width, height, text)``, text in Helvetica (not embedded).

    Faster than reportlab for thousands of pages, and able to write what reportlab will not (no pages).
    """
    font_size = 24
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"",  # the page tree, filled in below once the page numbers are known
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    kids = []
    for width, height, text in pages:
        escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)").encode("latin-1")
        stream = b"BT /F1 %d Tf 72 %.2f Td (%s) Tj ET" % (font_size, height - 72 - font_size, escaped)
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
        content = len(objects)
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %.2f %.2f] /Resources << /Font << /F1 3 0 R >> >>"
            b" /Contents %d 0 R >>" % (width, height, content)
        )
        kids.append(b"%d 0 R" % len(objects))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), len(kids))
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


@functools.cache
def empty_pdf() -> bytes:
    """A well-formed PDF with zero pages (pypdfium2 opens it; ``len(doc) == 0``)."""
    return _raw_pdf([])


@functools.lru_cache(maxsize=4)
def many_pages_pdf(n_pages: int) -> bytes:
    """A small, quickly made PDF of ``n_pages`` US Letter pages, page ``i`` saying ``"Page i of n"``.

    About 290 bytes per page; 10,000 pages take about 30 ms. For page-count limits.
    """
    return _raw_pdf([(612.0, 792.0, f"Page {page} of {n_pages}") for page in range(1, n_pages + 1)])


@functools.lru_cache(maxsize=4)
def giant_page_pdf(side: float = 14400.0) -> bytes:
    """A one-page PDF whose page is ``side × side`` points (14,400 pt, 200 inches, is the PDF maximum).

    Rendered at 144 DPI that is 28,800 × 28,800 px (829 megapixels); a renderer must cap the scale.
    """
    return _raw_pdf([(side, side, "A giant page")])


# ----------------------------------------------------------------------------------------------- bad input


@dataclass(frozen=True)
class BadInput:
    """An upload the app must refuse, with what is wrong and which check catches it.

    ``endpoint`` is where it is aimed: "image" for things that look like images, "pdf" for things that
    look like PDFs, "both" for things that are neither. ``check`` names the library check that catches it:

    - ``empty``: zero bytes.
    - ``unidentified``: ``PIL.Image.open`` raises ``UnidentifiedImageError`` (and pypdfium2 raises
      ``PdfiumError``, "Data format error").
    - ``decode``: ``Image.open`` succeeds (it reads only the header) but ``load()`` raises ``OSError``.
    - ``verify``: ``load()`` succeeds; only ``Image.verify()`` (on a fresh ``open``) raises ``SyntaxError``.
    - ``pixels``: the header declares more pixels than any sane cap (all but one are past Pillow's own
      ``2 × MAX_IMAGE_PIXELS``, so ``Image.open`` raises ``DecompressionBombError``).
    - ``side``: few pixels, but one side far longer than any sane cap; Pillow opens and loads it happily.
    - ``pdf_open``: ``pypdfium2.PdfDocument`` raises ``PdfiumError``.
    - ``pdf_password``: ``PdfDocument`` raises ``PdfiumError`` with ``err_code == FPDF_ERR_PASSWORD``.
    - ``pdf_page_count``: opens, with more pages than any sane limit.
    - ``pdf_page_size``: opens, with a page so large that rendering it at the usual DPI would need
      gigabytes; the renderer must cap the pixel count.
    """

    name: str
    factory: Callable[[], bytes] = field(repr=False)
    filename: str
    content_type: str
    endpoint: Endpoint
    check: Check
    reason: str

    @property
    def data(self) -> bytes:
        return self.factory()


@dataclass(frozen=True)
class GoodInput:
    """An upload that looks unusual but must be accepted; ``pages`` is the ground truth of each page."""

    name: str
    factory: Callable[[], bytes] = field(repr=False)
    filename: str
    content_type: str
    endpoint: Literal["image", "pdf"]
    pages: tuple[str, ...]
    note: str

    @property
    def data(self) -> bytes:
        return self.factory()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@functools.lru_cache(maxsize=8)
def png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid, all-black 1-bit greyscale PNG of ``width × height``, written chunk by chunk with zlib.

    The image is never built in memory: the rows of zeros are compressed in blocks. 30,000² (900
    megapixels, 112 MB of raw 1-bit rows and 900 MB once decoded as 8-bit) compresses to about 110 kB.
    """
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte "None", then the packed pixels
    rows_per_block = max(1, (1 << 20) // len(row))
    block = row * rows_per_block
    compressor = zlib.compressobj(9)
    parts = []
    for start in range(0, height, rows_per_block):
        parts.append(compressor.compress(block[: min(rows_per_block, height - start) * len(row)]))
    parts.append(compressor.flush())
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)),
            png_chunk(b"IDAT", b"".join(parts)),
            png_chunk(b"IEND", b""),
        )
    )


def _png_chunks(data: bytes) -> list[tuple[int, bytes]]:
    """The (offset, type) of every chunk of a PNG."""
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        chunks.append((offset, data[offset + 4 : offset + 8]))
        offset += 12 + length
    return chunks


@functools.cache
def _short_png() -> bytes:
    return SAMPLES["short"].render()


@functools.cache
def _short_jpeg() -> bytes:
    return SAMPLES["short"].render(fmt="JPEG")


@functools.cache
def _short_pdf() -> bytes:
    return SAMPLES["short"].pdf()


@functools.cache
def _png_bad_crc() -> bytes:
    data = bytearray(_short_png())
    offset = next(offset for offset, kind in _png_chunks(data) if kind == b"IDAT")
    (length,) = struct.unpack(">I", data[offset : offset + 4])
    crc = offset + 8 + length
    data[crc : crc + 4] = bytes(b ^ 0xFF for b in data[crc : crc + 4])
    return bytes(data)


@functools.cache
def _png_corrupt_idat() -> bytes:
    # After the two-byte zlib header, 0xFF bytes start a deflate block of the reserved type 3, which every
    # inflater rejects; the chunk's CRC is recomputed, so only decompression notices.
    data = bytearray(_short_png())
    offset = next(offset for offset, kind in _png_chunks(data) if kind == b"IDAT")
    (length,) = struct.unpack(">I", data[offset : offset + 4])
    body = offset + 8
    data[body + 2 : body + 66] = b"\xff" * 64
    data[body + length : body + length + 4] = struct.pack(">I", zlib.crc32(data[offset + 4 : body + length]))
    return bytes(data)


@functools.cache
def _gif_huge_canvas() -> bytes:
    # A 65,535 × 65,535 logical screen (the GIF maximum) holding one 1 × 1 frame.
    return b"".join(
        (
            b"GIF89a",
            struct.pack("<HHBBB", 65535, 65535, 0x80, 0, 0),  # global colour table of 2 entries
            b"\x00\x00\x00\xff\xff\xff",
            b",",
            struct.pack("<HHHHB", 0, 0, 1, 1, 0),
            b"\x02\x02\x44\x01\x00",  # LZW minimum code size 2; codes: clear, pixel 0, end
            b";",
        )
    )


@functools.cache
def _tiff_bomb() -> bytes:
    # Little-endian baseline TIFF: 100,000 × 100,000 1-bit pixels, one uncompressed strip of 16 bytes.
    side, data_offset = 100_000, 8 + 2 + 9 * 12 + 4
    short, long_ = 3, 4
    entries = [
        (256, long_, side),  # ImageWidth
        (257, long_, side),  # ImageLength
        (258, short, 1),  # BitsPerSample
        (259, short, 1),  # Compression: none
        (262, short, 1),  # PhotometricInterpretation: black is zero
        (273, long_, data_offset),  # StripOffsets
        (277, short, 1),  # SamplesPerPixel
        (278, long_, side),  # RowsPerStrip
        (279, long_, 16),  # StripByteCounts
    ]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHIHH", tag, kind, 1, value, 0) if kind == short else struct.pack("<HHII", tag, kind, 1, value)
        for tag, kind, value in entries
    )
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + b"\0" * 16


@functools.cache
def _jpeg_huge_dimensions() -> bytes:
    # The short sample's JPEG with its frame header patched to 65,500 × 65,500 (JPEG allows up to 65,535).
    data = bytearray(_short_jpeg())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 65_500, 65_500)
    return bytes(data)


@functools.cache
def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(zipfile.ZipInfo("scan.png", date_time=(2024, 1, 1, 0, 0, 0)), _short_png())
    return buffer.getvalue()


_SVG = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<svg xmlns="http://www.w3.org/2000/svg" width="600" height="200" viewBox="0 0 600 200">\n'
    b'  <rect width="600" height="200" fill="white"/>\n'
    b'  <text x="20" y="100" font-family="sans-serif" font-size="32">Hello from the test suite.</text>\n'
    b"</svg>\n"
)
_HTML = b"<!DOCTYPE html>\n<html><head><title>Not an image</title></head><body><p>Hello</p></body></html>\n"


def _encrypted_pdf() -> bytes:
    return _cached_pdf("encrypted")


# Test data, not secrets.
ENCRYPTED_PDF_USER_PASSWORD = "open sesame"  # noqa: S105
ENCRYPTED_PDF_OWNER_PASSWORD = "owner secret"  # noqa: S105


@functools.cache
def _cached_pdf(kind: str) -> bytes:
    lines = [list(SAMPLES["short"].lines)]
    user = {"encrypted": ENCRYPTED_PDF_USER_PASSWORD, "owner_only": ""}[kind]
    return make_pdf(lines, user_password=user, owner_password=ENCRYPTED_PDF_OWNER_PASSWORD)


def _truncated(factory: Callable[[], bytes]) -> Callable[[], bytes]:
    return functools.cache(lambda: (data := factory())[: len(data) // 2])


def _seeded_bytes(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


_BAD: tuple[BadInput, ...] = (
    BadInput(
        "empty",
        lambda: b"",
        "empty.png",
        "image/png",
        "both",
        "empty",
        "A zero-byte file. Pillow raises UnidentifiedImageError; pypdfium2 raises PdfiumError (Data format error).",
    ),
    BadInput(
        "one_byte",
        lambda: b"\x89",
        "tiny.png",
        "image/png",
        "both",
        "unidentified",
        "A single byte (the first byte of the PNG signature). UnidentifiedImageError; PdfiumError.",
    ),
    BadInput(
        "plain_text",
        lambda: b"Hello, this is a plain text file, not a picture.\n",
        "notes.png",
        "image/png",
        "both",
        "unidentified",
        "Plain text named .png and claiming image/png: the name and Content-Type lie, only the bytes count.",
    ),
    BadInput(
        "html",
        lambda: _HTML,
        "page.png",
        "image/png",
        "both",
        "unidentified",
        "An HTML page claiming image/png; must never be stored or served back as if it were an image.",
    ),
    BadInput(
        "svg",
        lambda: _SVG,
        "drawing.svg",
        "image/svg+xml",
        "image",
        "unidentified",
        "A valid SVG: a vector format we do not accept (it can carry scripts and external references). "
        "Pillow has no SVG reader: UnidentifiedImageError.",
    ),
    BadInput(
        "zip",
        _zip,
        "scans.zip",
        "application/zip",
        "both",
        "unidentified",
        "A ZIP archive holding a PNG. Archives are not unpacked: UnidentifiedImageError; PdfiumError.",
    ),
    BadInput(
        "random_bytes_jpg",
        lambda: _seeded_bytes(1, 4096),
        "photo.jpg",
        "image/jpeg",
        "both",
        "unidentified",
        "4 KiB of random bytes named .jpg. UnidentifiedImageError; PdfiumError.",
    ),
    BadInput(
        "png_magic_jpeg_body",
        lambda: b"\x89PNG\r\n\x1a\n" + _short_jpeg(),
        "scan.png",
        "image/png",
        "image",
        "unidentified",
        "The 8-byte PNG signature followed by a JPEG. A sniffer that trusts the magic alone says PNG; "
        "Pillow's PNG reader fails on the first chunk and no other reader accepts it: "
        "UnidentifiedImageError.",
    ),
    BadInput(
        "truncated_png",
        _truncated(_short_png),
        "scan.png",
        "image/png",
        "image",
        "decode",
        "The first half of a valid PNG. Image.open succeeds and reports the full size; load() raises "
        "OSError ('image file is truncated') unless ImageFile.LOAD_TRUNCATED_IMAGES is set, which the app "
        "must never do. verify() raises OSError ('Truncated File Read') too.",
    ),
    BadInput(
        "png_corrupt_idat",
        _png_corrupt_idat,
        "scan.png",
        "image/png",
        "image",
        "decode",
        "A PNG whose compressed image data is garbage (with a correct chunk CRC). Image.open succeeds; "
        "load() raises OSError ('broken data stream when reading image file'). verify() does NOT catch it: "
        "it only checks chunk CRCs.",
    ),
    BadInput(
        "png_bad_crc",
        _png_bad_crc,
        "scan.png",
        "image/png",
        "image",
        "verify",
        "A PNG whose IDAT chunk CRC is wrong but whose data is intact. Image.open and load() both succeed "
        "(Pillow does not check the CRC of image data while decoding); only Image.verify() on a freshly "
        "opened image raises SyntaxError ('broken PNG file'), which is not an OSError. libpng-based viewers "
        "refuse such a file, so the history page could not show it: refuse it too.",
    ),
    BadInput(
        "truncated_jpeg",
        _truncated(_short_jpeg),
        "photo.jpg",
        "image/jpeg",
        "image",
        "decode",
        "The first half of a valid JPEG. Image.open succeeds; load() raises OSError ('image file is "
        "truncated'). verify() does NOT catch it (JPEG verify is a no-op).",
    ),
    BadInput(
        "png_bomb",
        png_bomb,
        "bomb.png",
        "image/png",
        "image",
        "pixels",
        "A valid 30,000 × 30,000 1-bit PNG of 110 kB that decodes to 900 megapixels. Image.open raises "
        "DecompressionBombError, which is NOT an OSError subclass: catch it explicitly.",
    ),
    BadInput(
        "png_100_megapixels",
        lambda: png_bomb(10_000, 10_000),
        "large.png",
        "image/png",
        "image",
        "pixels",
        "A valid 10,000 × 10,000 PNG (100 megapixels, 12 kB). Between MAX_IMAGE_PIXELS and twice it, so "
        "Pillow only emits a DecompressionBombWarning and opens it; the app needs its own pixel cap (or "
        "must turn that warning into an error).",
    ),
    BadInput(
        "png_1x200000",
        lambda: png_bomb(1, 200_000),
        "strip.png",
        "image/png",
        "image",
        "side",
        "A valid 1 × 200,000 PNG: only 200,000 pixels, so no pixel cap catches it, and Pillow opens and "
        "loads it. Scaling it for OCR would make a degenerate page; the app must cap each side (or the "
        "aspect ratio).",
    ),
    BadInput(
        "gif_huge_canvas",
        _gif_huge_canvas,
        "anim.gif",
        "image/gif",
        "image",
        "pixels",
        "A 35-byte GIF whose logical screen is 65,535 × 65,535 (4.3 gigapixels) around a 1 × 1 frame. "
        "Image.open raises DecompressionBombError.",
    ),
    BadInput(
        "tiff_bomb",
        _tiff_bomb,
        "scan.tiff",
        "image/tiff",
        "image",
        "pixels",
        "A 138-byte TIFF declaring 100,000 × 100,000 1-bit pixels in one 16-byte strip. Image.open raises "
        "DecompressionBombError.",
    ),
    BadInput(
        "jpeg_huge_dimensions",
        _jpeg_huge_dimensions,
        "photo.jpg",
        "image/jpeg",
        "image",
        "pixels",
        "A small JPEG whose frame header claims 65,500 × 65,500. Image.open raises DecompressionBombError.",
    ),
    BadInput(
        "pdf_sent_as_image",
        _short_pdf,
        "document.pdf",
        "application/pdf",
        "image",
        "unidentified",
        "A valid PDF sent to the image endpoint (wrong kind). Pillow writes PDFs but cannot read them: "
        "UnidentifiedImageError.",
    ),
    BadInput(
        "image_sent_as_pdf",
        _short_png,
        "scan.png",
        "image/png",
        "pdf",
        "pdf_open",
        "A valid PNG sent to the PDF endpoint (wrong kind). pypdfium2 raises PdfiumError (Data format error).",
    ),
    BadInput(
        "encrypted_pdf",
        _encrypted_pdf,
        "secret.pdf",
        "application/pdf",
        "pdf",
        "pdf_password",
        "A PDF encrypted with a user password (RC4-128). PdfDocument(data) raises PdfiumError "
        "('Incorrect password error', err_code FPDF_ERR_PASSWORD); with ENCRYPTED_PDF_USER_PASSWORD it "
        "opens. The app has no way to ask for a password, so it refuses it with a clear message.",
    ),
    BadInput(
        "empty_pdf",
        empty_pdf,
        "empty.pdf",
        "application/pdf",
        "pdf",
        "pdf_open",
        "A well-formed PDF with zero pages (pypdf reads it: 0 pages). PDFium refuses to load any PDF without "
        "pages: PdfiumError, and its err_code is stale (FPDF_GetLastError is not set for this failure, so it "
        "reports whatever the previous failure on the thread was, e.g. 'Success' or even 'Incorrect "
        "password'). Do not trust err_code alone to tell the user why; a len(doc) == 0 check is only a "
        "second line of defence.",
    ),
    BadInput(
        "truncated_pdf",
        _truncated(_short_pdf),
        "document.pdf",
        "application/pdf",
        "pdf",
        "pdf_open",
        "The first half of a valid one-page PDF (cut inside the embedded font, before the page tree and "
        "xref). pypdfium2 raises PdfiumError.",
    ),
    BadInput(
        "corrupt_pdf",
        lambda: b"%PDF-1.7\n" + _seeded_bytes(2, 4096),
        "document.pdf",
        "application/pdf",
        "pdf",
        "pdf_open",
        "A %PDF-1.7 header followed by 4 KiB of random bytes: it passes a magic-number sniff. PdfiumError.",
    ),
    BadInput(
        "pdf_too_many_pages",
        lambda: many_pages_pdf(10_000),
        "huge-report.pdf",
        "application/pdf",
        "pdf",
        "pdf_page_count",
        "A valid 10,000-page PDF (2.9 MB, made in about 30 ms). pypdfium2 opens it instantly; the app must "
        "check len(doc) against its page limit before queueing any work.",
    ),
    BadInput(
        "pdf_giant_page",
        giant_page_pdf,
        "poster.pdf",
        "application/pdf",
        "pdf",
        "pdf_page_size",
        "A valid PDF with one 14,400 × 14,400 pt page (the PDF maximum, 200 inches square). pypdfium2 opens "
        "it; rendering it at 144 DPI would be 28,800 × 28,800 px (about 2.5 GB as RGB). The renderer must "
        "lower the scale to cap the pixel count (or refuse the page).",
    ),
)
BAD_INPUTS: dict[str, BadInput] = {bad.name: bad for bad in _BAD}


@functools.cache
def _rgba_png() -> bytes:
    # Black text on a fully transparent background: converted with .convert("RGB") it is black on black.
    text = Image.open(io.BytesIO(_short_png())).convert("L")
    page = Image.new("RGBA", text.size, (0, 0, 0, 0))
    page.putalpha(ImageChops.invert(text))
    buffer = io.BytesIO()
    page.save(buffer, format="PNG")
    return buffer.getvalue()


@functools.cache
def _exif_rotated_jpeg() -> bytes:
    # Pixels stored a quarter-turn anticlockwise, with EXIF Orientation 6 ("rotate 90° clockwise to view"),
    # as phone cameras do.
    upright = Image.open(io.BytesIO(_short_png()))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buffer, format="JPEG", quality=90, exif=exif.tobytes())
    return buffer.getvalue()


@functools.cache
def _cmyk_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(_short_png())).convert("CMYK").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@functools.cache
def _scanned_pdf() -> bytes:
    return make_image_pdf([_short_png()])


@functools.cache
def _pdf_without_xref() -> bytes:
    data = _short_pdf()
    return data[: data.rindex(b"xref")]


_SHORT = (SAMPLES["short"].text,)
_ODD: tuple[GoodInput, ...] = (
    GoodInput(
        "owner_password_pdf",
        lambda: _cached_pdf("owner_only"),
        "protected.pdf",
        "application/pdf",
        "pdf",
        _SHORT,
        "Encrypted with an owner password only (the user password is empty), as many 'protected' PDFs are. "
        "pypdfium2 opens it without a password and extracts and renders it; accept it.",
    ),
    GoodInput(
        "scanned_pdf",
        _scanned_pdf,
        "scan.pdf",
        "application/pdf",
        "pdf",
        _SHORT,
        "A PDF whose page is only an image (no text layer): the text must come from OCR of the render.",
    ),
    GoodInput(
        "pdf_without_xref",
        _pdf_without_xref,
        "damaged.pdf",
        "application/pdf",
        "pdf",
        _SHORT,
        "A PDF cut just before its cross-reference table and trailer, as an interrupted download leaves it. "
        "PDFium rebuilds the table by scanning the objects and reads the page normally; a stricter parser "
        "would refuse it, so do not pre-validate PDFs with one.",
    ),
    GoodInput(
        "jpeg_named_png",
        _short_jpeg,
        "scan.png",
        "image/png",
        "image",
        _SHORT,
        "A valid JPEG named .png and claiming image/png. The bytes decide the type; accept it as a JPEG.",
    ),
    GoodInput(
        "rgba_transparent_png",
        _rgba_png,
        "transparent.png",
        "image/png",
        "image",
        _SHORT,
        "Black text on a fully transparent background. Image.convert('RGB') drops the alpha and gives black "
        "on black; it must be composited onto white first.",
    ),
    GoodInput(
        "exif_rotated_jpeg",
        _exif_rotated_jpeg,
        "phone.jpg",
        "image/jpeg",
        "image",
        _SHORT,
        "Pixels stored sideways with EXIF Orientation 6, as phone cameras do. ImageOps.exif_transpose() "
        "makes it upright; without it the OCR reads a sideways page.",
    ),
    GoodInput(
        "cmyk_jpeg",
        _cmyk_jpeg,
        "print.jpg",
        "image/jpeg",
        "image",
        _SHORT,
        "A CMYK JPEG, as print workflows produce. Pillow opens it in mode 'CMYK'; convert it to RGB.",
    ),
)
ODD_GOOD_INPUTS: dict[str, GoodInput] = {good.name: good for good in _ODD}


# ------------------------------------------------------------------------------------------- accuracy set
#
# Realistic page layouts with their ground truth in reading order, for ``bench/accuracy.py`` and
# ``tests/test_accuracy.py``: columns, skew, turned pages, small text, headings, tables, forms, receipts,
# Chinese, and PDFs (born-digital and scanned). The truth has one line per printed line, a blank line between
# blocks, and table cells separated by spaces, row by row.

PROSE: tuple[str, ...] = (
    "The archive holds letters, maps and ledgers from three centuries of trade along the river.",
    "Most of the documents were written by hand, and many of them have faded or torn at the edges.",
    "Volunteers scan each page at a fixed resolution before the images are read by the software.",
    "A reader expects the text to follow the columns of the page rather than run straight across.",
    "Numbers such as 1847, 12.5 percent and 3,200 tonnes appear in the shipping records.",
    "When a page is slightly turned on the glass, every line runs a little uphill or downhill.",
    "Good software finds the angle of the lines first and reads them as if the page were straight.",
    "Tables keep their rows together, so that a price stays next to the item it belongs to.",
    "The committee met on Tuesday morning to discuss the budget for the coming year.",
    "Headings are printed in a larger type, which tells the reader where a new section begins.",
    "Each section ends with a short summary that repeats the most important figures.",
    "The final report will be published in the spring, together with the full data set.",
    "Small print at the foot of a page is easy to miss but often carries the conditions.",
    "Careful readers check the totals against the individual lines before they sign.",
    "Weather delayed the delivery by two days, but the goods arrived in good condition.",
    "Please keep this document for your records and bring it with you to the next meeting.",
)
CHINESE_PROSE: tuple[str, ...] = (
    "档案馆保存着三百年来沿河贸易的信件、地图和账簿。",
    "大部分文件是手写的，其中许多已经褪色或者边缘破损。",
    "志愿者以固定的分辨率扫描每一页，然后由软件识别图像。",
    "读者希望文字按照页面的栏目顺序排列，而不是横向贯穿。",
    "当页面在玻璃上稍微倾斜时，每一行文字都会略微向上或向下。",
    "好的软件会先找出文字的角度，再像页面是正的一样去读。",
    "表格要让每一行保持完整，价格才能紧挨着它所属的项目。",
    "委员会在星期二上午开会，讨论明年的预算安排。",
)


@dataclass(frozen=True)
class AccuracyPage:
    """One page of the accuracy set: ``data`` is a PNG (``kind="image"``) or a one-page PDF (``kind="pdf"``)."""

    name: str
    kind: Literal["image", "pdf"]
    data: bytes = field(repr=False)
    truth: str = field(repr=False)
    description: str = ""


class _Canvas:
    """A white page that records, in reading order, the text drawn on it."""

    def __init__(self, width: int, height: int) -> None:
        self.image = Image.new("L", (width, height), 255)
        self.draw = ImageDraw.Draw(self.image)
        self.blocks: list[str] = []

    def face(self, text: str, size: int) -> ImageFont.FreeTypeFont:
        return _pil_font("cjk" if needs_cjk_font(text) else "sans", size)

    def line(self, x: float, y: float, text: str, size: int) -> None:
        self.draw.text((x, y), text, font=self.face(text, size), fill=0)

    def paragraph(self, x: float, y: float, width: float, text: str, size: int, *, spacing: float = 1.55) -> float:
        """Draw ``text`` wrapped to ``width``; record it as one block; return the y below it."""
        lines = _wrap(text, self.face(text, size), width)
        for number, line in enumerate(lines):
            self.line(x, y + number * size * spacing, line, size)
        self.blocks.append("\n".join(lines))
        return y + len(lines) * size * spacing

    def truth(self) -> str:
        return "\n\n".join(self.blocks)


def _wrap(text: str, face: ImageFont.FreeTypeFont, width: float) -> list[str]:
    """Greedy wrap at spaces (at any character for CJK text)."""
    cjk = needs_cjk_font(text) and " " not in text
    tokens = list(text) if cjk else text.split(" ")
    lines: list[str] = []
    current = ""
    for token in tokens:
        candidate = token if not current else current + ("" if cjk else " ") + token
        if current and face.getlength(candidate) > width:
            lines.append(current)
            current = token
        else:
            current = candidate
    if current:
        lines.append(current)
    return lines


def _png(image: Image.Image) -> bytes:
    return _encode(image.convert("RGB"), "PNG")


def _prose(start: int, count: int, pool: Sequence[str] = PROSE) -> str:
    return " ".join(pool[(start + k) % len(pool)] for k in range(count))


def _columns_page(n_columns: int, *, width: int = 1100, height: int = 1400, size: int = 20) -> _Canvas:
    canvas = _Canvas(width, height)
    margin = 70
    canvas.line(margin, 50, "Annual Report of the River Archive", 40)
    canvas.blocks.append("Annual Report of the River Archive")
    gutter = 50
    column_width = (width - 2 * margin - (n_columns - 1) * gutter) / n_columns
    for column in range(n_columns):
        x = margin + column * (column_width + gutter)
        y = 140.0
        for paragraph in range(3 if n_columns < 3 else 2):
            y = canvas.paragraph(x, y, column_width, _prose(column * 5 + paragraph * 2, 2), size) + size
    canvas.line(margin, height - 60, "Page 4 of 12", 18)
    canvas.blocks.append("Page 4 of 12")
    return canvas


def _one_column_page(*, width: int = 1100, height: int = 1000, size: int = 24, start: int = 0) -> _Canvas:
    canvas = _Canvas(width, height)
    margin = 70
    canvas.line(margin, 50, "Notes on the Shipping Records", 38)
    canvas.blocks.append("Notes on the Shipping Records")
    y = 130.0
    for paragraph in range(3):
        y = canvas.paragraph(margin, y, width - 2 * margin, _prose(start + paragraph * 2, 2), size) + size
    return canvas


def _headings_page() -> _Canvas:
    canvas = _Canvas(1100, 1300)
    margin, y = 70, 50.0
    for number, (title, size) in enumerate(
        (("Chapter One: The River", 44), ("Trade in the early years", 32), ("Records and ledgers", 32))
    ):
        canvas.line(margin, y, title, size)
        canvas.blocks.append(title)
        y += size * 1.8
        y = canvas.paragraph(margin, y, 1100 - 2 * margin, _prose(number * 3 + 1, 2), 22) + 30
    return canvas


def _small_text_page() -> _Canvas:
    canvas = _Canvas(1000, 800)
    y = 40.0
    for paragraph in range(4):
        y = canvas.paragraph(50, y, 900, _prose(paragraph * 3, 3), 14) + 14
    return canvas


def _table_page(*, ruled: bool) -> _Canvas:
    canvas = _Canvas(1100, 800)
    title = "Monthly deliveries by port" if ruled else "Stock levels at the end of March"
    canvas.line(70, 50, title, 32)
    canvas.blocks.append(title)
    header = ("Port", "Cargo", "Tonnes", "Value")
    rows = (
        ("Riverside", "Timber", "1,250", "18,400"),
        ("North Quay", "Grain", "980", "7,350"),
        ("Old Harbour", "Coal", "2,100", "12,600"),
        ("East Dock", "Wool", "340", "9,900"),
        ("Mill Bend", "Salt", "615", "2,460"),
    )
    if not ruled:
        header = ("Item", "Shelf", "Count", "Price")
        rows = (
            ("Lamp oil", "A3", "42", "3.20"),
            ("Rope, 10 m", "B1", "17", "8.75"),
            ("Nails, box", "C4", "230", "1.10"),
            ("Canvas sheet", "B2", "9", "14.00"),
            ("Tar, barrel", "D1", "5", "22.50"),
        )
    xs = (90, 400, 650, 880)
    y0, pitch = 150, 70
    size = 24
    for number, row in enumerate((header, *rows)):
        y = y0 + number * pitch
        for x, cell in zip(xs, row, strict=True):
            canvas.line(x, y + 18, cell, size)
        canvas.blocks.append(" ".join(row))
    if ruled:
        bottom = y0 + (len(rows) + 1) * pitch
        for number in range(len(rows) + 2):
            canvas.draw.line((70, y0 + number * pitch, 1040, y0 + number * pitch), fill=0, width=2)
        for x in (70, 380, 630, 860, 1040):
            canvas.draw.line((x, y0, x, bottom), fill=0, width=2)
    return canvas


def _form_page() -> _Canvas:
    canvas = _Canvas(1100, 800)
    canvas.line(70, 50, "Application for a Reading Room Card", 34)
    canvas.blocks.append("Application for a Reading Room Card")
    fields = (
        ("Surname: Hartley", "First name: Margaret"),
        ("Date of birth: 14/02/1968", "Card number: 20931"),
        ("Street: 12 Mill Lane", "Town: Riverside"),
        ("Telephone: 0161 555 0142", "Signed: M. Hartley"),
    )
    for number, (left, right) in enumerate(fields):
        y = 160 + number * 90
        canvas.line(80, y, left, 24)
        canvas.line(600, y, right, 24)
        canvas.draw.line((80, y + 40, 540, y + 40), fill=120, width=1)
        canvas.draw.line((600, y + 40, 1040, y + 40), fill=120, width=1)
        canvas.blocks.append(f"{left} {right}")
    canvas.paragraph(80, 560, 940, "I agree to handle every document with care and to follow the rules.", 20)
    return canvas


def _receipt_page() -> _Canvas:
    canvas = _Canvas(640, 960)
    face = canvas.face("A", 26)

    def centred(y: float, text: str, size: int) -> None:
        canvas.line((640 - canvas.face(text, size).getlength(text)) / 2, y, text, size)
        canvas.blocks.append(text)

    centred(40, "RIVERSIDE GROCERY", 34)
    centred(90, "12 Mill Lane, Riverside", 22)
    items = (("Bread", "2.40"), ("Milk 2 L", "1.85"), ("Apples 1 kg", "3.10"), ("Coffee beans", "7.95"))
    y = 170
    for name, price in (*items, ("TOTAL", "15.30"), ("Card payment", "15.30")):
        canvas.line(60, y, name, 26)
        canvas.line(580 - face.getlength(price), y, price, 26)
        canvas.blocks.append(f"{name} {price}")
        y += 60
    centred(y + 40, "Thank you for shopping with us", 22)
    return canvas


def _chinese_page() -> _Canvas:
    canvas = _Canvas(1100, 900)
    canvas.line(70, 50, "河流档案馆年度报告", 40)
    canvas.blocks.append("河流档案馆年度报告")
    y = 140.0
    for paragraph in range(3):
        y = canvas.paragraph(70, y, 960, _prose(paragraph * 2, 3, CHINESE_PROSE), 26) + 26
    return canvas


def _mixed_page() -> _Canvas:
    canvas = _Canvas(1100, 900)
    canvas.line(70, 50, "月度报告 Monthly Report", 38)
    canvas.blocks.append("月度报告 Monthly Report")
    y = 140.0
    for paragraph in range(4):
        pool = CHINESE_PROSE if paragraph % 2 == 0 else PROSE
        y = canvas.paragraph(70, y, 960, _prose(paragraph, 2, pool), 24) + 24
    return canvas


def _turned(canvas: _Canvas, *, angle: float = 0.0, quarter: int = 0, noise: bool = False, seed: int = 0) -> bytes:
    image = canvas.image
    if angle:
        image = image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=255)
    if quarter:
        image = image.transpose(
            {1: Image.Transpose.ROTATE_90, 2: Image.Transpose.ROTATE_180, 3: Image.Transpose.ROTATE_270}[quarter]
        )
    if noise:
        image = _degrade(image, random.Random(seed))
    return _png(image)


def _born_digital_pdf() -> tuple[bytes, str]:
    lines = [PROSE[k] for k in range(6)]
    shorter = [line[: len(line) // 2].rsplit(" ", 1)[0] for line in lines]
    rest = [line[len(head) + 1 :] for line, head in zip(lines, shorter, strict=True)]
    text = [part for pair in zip(shorter, rest, strict=True) for part in pair]
    return make_pdf([["Notes on the Shipping Records", *text]], font_size=13), "\n".join(
        ["Notes on the Shipping Records", *text]
    )


@functools.lru_cache(maxsize=2)
def accuracy_set(*, fast: bool = False) -> tuple[AccuracyPage, ...]:
    """The pages of the accuracy benchmark. ``fast`` keeps one page of each kind of difficulty (for tests)."""
    pages: list[AccuracyPage] = []

    def add(name: str, canvas: _Canvas, description: str, **turn: object) -> None:
        pages.append(AccuracyPage(name, "image", _turned(canvas, **turn), canvas.truth(), description))

    add("one_column", _one_column_page(), "a heading over three paragraphs")
    add("two_columns", _columns_page(2), "a title, two columns of three paragraphs, a footer")
    add("three_columns", _columns_page(3, width=1300, size=18), "a title, three columns, a footer")
    skews = (-5.0, 2.0, 5.0) if fast else (-5.0, -3.0, -2.0, -1.0, 1.0, 2.0, 3.0, 5.0)
    for angle in skews:
        add(f"skew_{angle:+.0f}", _one_column_page(start=3), f"one column turned {angle:+g}°", angle=angle)
    add("skew_two_columns_+3", _columns_page(2), "two columns turned +3°", angle=3.0)
    for quarter in (1, 2, 3):
        add(f"rotated_{quarter * 90}", _one_column_page(start=5), f"a page turned {quarter * 90}°", quarter=quarter)
    add("small_text", _small_text_page(), "four paragraphs at 14 px")
    add("headings", _headings_page(), "three headings of two sizes over body text")
    add("table_ruled", _table_page(ruled=True), "a ruled table, 4 columns × 6 rows")
    add("table_unruled", _table_page(ruled=False), "an unruled table, 4 columns × 6 rows")
    add("form", _form_page(), "a form: label-value pairs side by side")
    add("receipt", _receipt_page(), "a receipt: items and right-aligned prices")
    add("chinese", _chinese_page(), "a Chinese heading over three paragraphs")
    add("mixed", _mixed_page(), "Chinese and English paragraphs in turn")
    if not fast:
        add("scan_two_columns", _columns_page(2), "a noisy scan of two columns, turned -2°", angle=-2.0, noise=True)
        add("scan_chinese", _chinese_page(), "a noisy Chinese scan turned 1.5°", angle=1.5, noise=True, seed=2)
    pdf, truth = _born_digital_pdf()
    pages.append(AccuracyPage("pdf_born_digital", "pdf", pdf, truth, "a text PDF (reportlab, embedded fonts)"))
    scan = _columns_page(2)
    pages.append(
        AccuracyPage(
            "pdf_scanned",
            "pdf",
            make_image_pdf([_turned(scan, angle=1.0, noise=True, seed=3)], resolution=150),
            scan.truth(),
            "a scanned PDF: two columns, noisy, turned 1°",
        )
    )
    return tuple(pages)
