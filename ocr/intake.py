"""Intake: turn uploaded bytes into a validated ``Document`` whose pages are rendered lazily, one at a time.

The type is sniffed from the bytes; the client's content type and file name are never trusted. Images are
checked for decompression bombs and absurd dimensions before their pixels are decoded. PDFs are opened with
pypdfium2; encrypted, empty, corrupt and over-long documents are refused. A PDF page is rendered only when the
pipeline asks for it, at the configured DPI, scaled down to a pixel cap, in a worker thread.
"""

from __future__ import annotations

import abc
import asyncio
import io
import math
import os
import re
import struct
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pypdfium2 as pdfium
from PIL import Image, ImageOps, UnidentifiedImageError
from zlib_ng import zlib_ng

from ocr.config import OcrConfig
from ocr.engines.base import PageImage
from ocr.engines.textlayer import read_text_layer
from ocr.errors import IntakeError
from ocr.events import ErrorCode
from ocr.statuses import JobKind

# PDFium is not thread-safe, not even across documents: every call into it goes through this one thread.
_pdfium_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pdfium")
# Decoding and encoding pixels is independent per page and releases the GIL for most of its work.
_pixel_threads = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1), thread_name_prefix="pixels")

ENCRYPT_MARKER = re.compile(rb"/Encrypt[\s<]")
EMPTY_PAGE_TREE = re.compile(rb"/Type\s*/Pages\b[^>]*?/Count\s+0\b|/Count\s+0\b[^>]*?/Type\s*/Pages\b")

MIN_IMAGE_SIDE = 8
MAX_IMAGE_SIDE = 30_000
MAX_ASPECT_RATIO = 40

PDF = "application/pdf"
# Formats Pillow decodes safely and that we accept. Only PNG, JPEG and WebP are passed to engines as they are;
# the others are converted to PNG once at intake.
IMAGE_FORMATS = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}
PASS_THROUGH = {"image/png", "image/jpeg", "image/webp"}
EXIF_ORIENTATION = 0x0112


def sniff(head: bytes) -> str | None:
    """The media type named by the file's leading bytes, or ``None`` for anything we do not accept."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:2] == b"BM" and len(head) >= 26:
        return "image/bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    # The PDF header may follow a little junk (the spec allows it within the first 1024 bytes).
    if b"%PDF-" in head[:1024]:
        return PDF
    return None


def job_kind(data: bytes) -> str:
    """The kind of job an upload makes, by its bytes: ``pdf`` for a PDF, ``image`` for anything else (which the
    intake then accepts or refuses as an image)."""
    return JobKind.PDF if sniff(data[:1024]) == PDF else JobKind.IMAGE


def clean_file_name(name: str | None) -> str:
    """A display name for the upload: no directories, no control characters, at most 200 characters."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C").strip()
    return base[:200] or "upload"


@dataclass(frozen=True, slots=True)
class Upload:
    data: bytes
    file_name: str


class Document(abc.ABC):
    kind: str
    content_type: str
    page_count: int
    size: int

    @abc.abstractmethod
    async def page(self, number: int, *, pixels: bool) -> PageImage:
        """Page ``number`` (from 1), decoded to pixels when ``pixels`` else encoded for an HTTP engine."""

    async def aclose(self) -> None:  # noqa: B027 - nothing to release by default
        """Release the document's resources."""


class ImageDocument(Document):
    kind = "image"
    page_count = 1

    def __init__(self, data: bytes, content_type: str, width: int, height: int) -> None:
        self.data = data
        self.content_type = content_type
        self.size = len(data)
        self.width = width
        self.height = height

    async def page(self, number: int, *, pixels: bool) -> PageImage:
        if number != 1:
            raise IndexError(number)
        page = PageImage(number=1, width=self.width, height=self.height, data=self.data, mime=self.content_type)
        if pixels:
            loop = asyncio.get_running_loop()
            page.pixels = await loop.run_in_executor(_pixel_threads, _decode_rgb, self.data)
        return page


class PdfDocument(Document):
    kind = "pdf"
    content_type = PDF

    def __init__(self, pdf: pdfium.PdfDocument, size: int, config: OcrConfig) -> None:
        self._pdf = pdf
        self.size = size
        self.page_count = len(pdf)
        self._dpi = config.pdf_dpi
        self._max_pixels = config.max_render_pixels
        self._format = config.page_format
        # Only the embedded engine reads pages from their text layer so far; vLLM pages skip the extraction.
        self._text_layer = config.pdf_text_layer == "auto" and config.engine == "local"

    async def page(self, number: int, *, pixels: bool) -> PageImage:
        if not 1 <= number <= self.page_count:
            raise IndexError(number)
        loop = asyncio.get_running_loop()
        image, text_layer = await loop.run_in_executor(_pdfium_thread, self._render, number - 1)
        page = PageImage(number=number, width=image.width, height=image.height, text_layer=text_layer)
        if pixels:
            page.pixels = image
        else:
            page.data, page.mime = await loop.run_in_executor(_pixel_threads, encode_page, image, self._format)
        return page

    def _render(self, index: int) -> tuple[Image.Image, list | None]:
        """The page's pixels, and its text layer when that is wanted and can be trusted."""
        page = self._pdf[index]
        try:
            width_pt, height_pt = page.get_size()
            scale = render_scale(width_pt, height_pt, self._dpi, self._max_pixels)
            text_layer = read_text_layer(page, scale) if self._text_layer else None
            bitmap = page.render(scale=scale, may_draw_forms=True)
            try:
                # BGR bitmaps become an RGB copy, so the image outlives the bitmap.
                return bitmap.to_pil(), text_layer
            finally:
                bitmap.close()
        finally:
            page.close()

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(_pdfium_thread, self._pdf.close)


def render_scale(width_pt: float, height_pt: float, dpi: int, max_pixels: int) -> float:
    """The PDFium scale for ``dpi``, lowered so the rendered page has at most ``max_pixels`` pixels."""
    scale = dpi / 72
    area = max(width_pt, 1.0) * max(height_pt, 1.0) * scale * scale
    if area > max_pixels:
        scale *= math.sqrt(max_pixels / area)
    return scale


def encode_page(image: Image.Image, page_format: str) -> tuple[bytes, str]:
    buffer = io.BytesIO()
    if page_format == "jpeg":
        image.save(buffer, format="JPEG", quality=92)
        return buffer.getvalue(), "image/jpeg"
    # Level 1 costs a few times less CPU than the default and the bytes only travel over a local network.
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue(), "image/png"


def _decode_rgb(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return flatten(image)


def flatten(image: Image.Image) -> Image.Image:
    """RGB pixels with any transparency composited on white, as vLLM does (a plain convert turns it black)."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if "A" in image.getbands():
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


async def open_upload(upload: Upload, *, expected_kind: str, config: OcrConfig) -> Document:
    """Validate ``upload`` for the ``image`` or ``pdf`` endpoint and open it as a ``Document``.

    Raises ``IntakeError`` with the HTTP status and code the API answers with.
    """
    data = upload.data
    if not data:
        raise IntakeError("The uploaded file is empty.", code=ErrorCode.EMPTY_FILE, status=400)
    if len(data) > config.max_upload_bytes:
        raise IntakeError(
            f"The file is {len(data)} bytes; the limit is {config.max_upload_bytes} bytes.",
            code=ErrorCode.FILE_TOO_LARGE,
            status=413,
        )
    content_type = sniff(data[:1024])
    if content_type is None:
        raise IntakeError(
            "Unsupported file type. Upload a PNG, JPEG, WebP, GIF, BMP or TIFF image, or a PDF.",
            code=ErrorCode.UNSUPPORTED_TYPE,
            status=415,
        )
    kind = "pdf" if content_type == PDF else "image"
    if kind != expected_kind:
        other = "/api/ocr/pdf" if kind == "pdf" else "/api/ocr/image"
        raise IntakeError(
            f"This file is {'a PDF' if kind == 'pdf' else 'an image'}; send it to {other}.",
            code=ErrorCode.WRONG_KIND,
            status=415,
        )
    loop = asyncio.get_running_loop()
    if kind == "pdf":
        return await loop.run_in_executor(_pdfium_thread, _open_pdf, data, config)
    return await loop.run_in_executor(_pixel_threads, _open_image, data, content_type, config)


def _open_image(data: bytes, content_type: str, config: OcrConfig) -> ImageDocument:
    pillow_format = next(name for name, mime in IMAGE_FORMATS.items() if mime == content_type)
    try:
        with Image.open(io.BytesIO(data), formats=[pillow_format]) as probe:
            width, height = probe.size
            check_dimensions(width, height, config.max_image_pixels)
            probe.verify()  # checksums (a PNG with a bad CRC still decodes)
        with Image.open(io.BytesIO(data), formats=[pillow_format]) as image:
            rotated = _exif_rotated(image, data)
            passed_through = content_type in PASS_THROUGH and not rotated and image.mode in ("RGB", "RGBA", "L", "LA")
            # Every byte of the image data is checked now, so a truncated or corrupt file fails here with a
            # clear error, not mid-job; an image sent on as it is gets the cheapest check that reads it all.
            if passed_through and content_type == "image/png":
                check_png_data(data)
            elif passed_through and content_type == "image/jpeg":
                image.draft(image.mode, (1, 1))  # decode at 1/8 scale: all entropy-coded data, an eighth of the IDCT
                image.load()
            else:
                image.load()
            if not passed_through:
                upright = ImageOps.exif_transpose(image) if rotated else image
                converted = flatten(upright)
                buffer = io.BytesIO()
                converted.save(buffer, format="PNG", compress_level=1)
                data, content_type = buffer.getvalue(), "image/png"
                width, height = converted.size
    except IntakeError:
        raise
    except Image.DecompressionBombError:
        raise _too_many_pixels(config.max_image_pixels) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, zlib_ng.error, struct.error) as exc:
        raise IntakeError(
            f"The image could not be decoded; the file is damaged or not really a {pillow_format} image.",
            code=ErrorCode.CORRUPT_FILE,
            status=422,
        ) from exc
    return ImageDocument(data, content_type, width, height)


def _exif_rotated(image: Image.Image, data: bytes) -> bool:
    """Whether the image's EXIF orientation asks for a rotation or a flip, read without decoding the pixels
    where the format allows it (Pillow reads a PNG's ``eXIf`` chunk by decoding the whole image)."""
    if image.format == "PNG" and b"eXIf" not in data:
        return False
    return image.getexif().get(EXIF_ORIENTATION, 1) not in (0, 1)


# Adam7 passes of an interlaced PNG: first column, first row, column step, row step.
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def check_png_data(data: bytes) -> None:
    """Inflate a PNG's image data and check it has exactly the bytes its header promises; raise ``ValueError``
    for a corrupt or short stream.

    A twentieth of the cost of decoding with Pillow: zlib-ng inflates about five times faster than zlib, the rows
    are not unfiltered into pixels, and the inflated bytes are counted and dropped a block at a time instead of
    being kept. Chunk framing and CRCs are ``verify()``'s job.
    """
    width, height, bit_depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    bits_per_pixel = bit_depth * _PNG_CHANNELS.get(colour_type, 0)
    if not bits_per_pixel:
        raise ValueError(f"unknown PNG colour type {colour_type}")
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    expected = 0
    for first_column, first_row, column_step, row_step in passes:
        columns = max(0, -(-(width - first_column) // column_step))
        rows = max(0, -(-(height - first_row) // row_step))
        if columns and rows:
            expected += rows * (1 + -(-columns * bits_per_pixel // 8))
    inflater = zlib_ng.decompressobj()
    inflated = 0
    position = 8
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        if kind == b"IDAT":
            chunk = data[position + 8 : position + 8 + length]
            # Bounded: a stream that inflates past what the header promises stops here (a bomb in disguise).
            while chunk and not inflater.eof and inflated <= expected:
                inflated += len(inflater.decompress(chunk, 1 << 18))
                chunk = inflater.unconsumed_tail
        elif kind == b"IEND":
            break
        position += 12 + length
    if not inflater.eof or inflated != expected:
        raise ValueError(f"the PNG image data holds {inflated} bytes; its header promises {expected}")


def check_dimensions(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise _too_many_pixels(max_pixels)
    if min(width, height) < MIN_IMAGE_SIDE or max(width, height) > MAX_IMAGE_SIDE:
        raise IntakeError(
            f"The image is {width}×{height} pixels; each side must be between {MIN_IMAGE_SIDE} and "
            f"{MAX_IMAGE_SIDE} pixels.",
            code=ErrorCode.BAD_DIMENSIONS,
            status=422,
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise IntakeError(
            f"The image is {width}×{height} pixels; its sides may differ by at most {MAX_ASPECT_RATIO}×.",
            code=ErrorCode.BAD_DIMENSIONS,
            status=422,
        )


def _too_many_pixels(max_pixels: int) -> IntakeError:
    return IntakeError(
        f"The image has more than {max_pixels} pixels (a possible decompression bomb).",
        code=ErrorCode.IMAGE_TOO_LARGE,
        status=422,
    )


def _open_pdf(data: bytes, config: OcrConfig) -> PdfDocument:
    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError:
        # PDFium's error code can be stale from an earlier document, so look at the file itself too.
        if ENCRYPT_MARKER.search(data):
            raise IntakeError(
                "The PDF is encrypted with a password; remove the password and upload it again.",
                code=ErrorCode.ENCRYPTED_PDF,
                status=422,
            ) from None
        if EMPTY_PAGE_TREE.search(data):
            raise IntakeError("The PDF has no pages.", code=ErrorCode.EMPTY_PDF, status=422) from None
        raise IntakeError(
            "The PDF could not be opened; the file is damaged or not a PDF.", code=ErrorCode.CORRUPT_FILE, status=422
        ) from None
    pages = len(pdf)
    if pages == 0:
        pdf.close()
        raise IntakeError("The PDF has no pages.", code=ErrorCode.EMPTY_PDF, status=422)
    if pages > config.max_pdf_pages:
        pdf.close()
        raise IntakeError(
            f"The PDF has {pages} pages; the limit is {config.max_pdf_pages}.",
            code=ErrorCode.TOO_MANY_PAGES,
            status=422,
        )
    return PdfDocument(pdf, len(data), config)
