"""``ocr/intake.py``: uploaded bytes become a validated document, or a refusal with the status and code the API
answers with. The type is sniffed from the bytes, sizes and pixel counts are checked before pixels are decoded, and
PDFs are opened by PDFium with their page limit.

``tests/test_api_bad_input.py`` sends every bad input of ``testing.documents`` through the API; these tests pin
each check where it is made.
"""

from __future__ import annotations

import dataclasses
import io
import struct
import zlib

import pytest
from PIL import Image

from ocr import intake
from ocr.config import OcrConfig, ocr_config
from ocr.errors import IntakeError
from testing.documents import (
    BAD_INPUTS,
    ODD_GOOD_INPUTS,
    SAMPLES,
    empty_pdf,
    make_numbered_pdf,
    png_bomb,
    png_chunk,
)


def config(**changes: object) -> OcrConfig:
    return dataclasses.replace(ocr_config(), **changes)


async def refusal(data: bytes, kind: str, **changes: object) -> IntakeError:
    with pytest.raises(IntakeError) as refused:
        await intake.open_upload(
            intake.Upload(data=data, file_name="upload"), expected_kind=kind, config=config(**changes)
        )
    return refused.value


# --- the type, from the bytes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n....", "image/png"),
        (b"\xff\xd8\xff\xe0", "image/jpeg"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"GIF89a", "image/gif"),
        (b"%PDF-1.7", "application/pdf"),
        (b"\r\n%PDF-1.4", "application/pdf"),
        (b"<svg xmlns=", None),
        (b"PK\x03\x04", None),
    ],
)
def test_types_are_sniffed_from_the_bytes(head, expected):
    assert intake.sniff(head) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\x\\scan.png", "scan.png"),
        ("a\x00b\nc.png", "abc.png"),
        ("", "upload"),
    ],
)
def test_file_names_lose_directories_and_control_characters(name, expected):
    assert intake.clean_file_name(name) == expected


def _png(width: int, height: int, colour_type: int, bit_depth: int, interlace: int, raw: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, interlace)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            png_chunk(b"IHDR", header),
            png_chunk(b"IDAT", zlib.compress(raw)),
            png_chunk(b"IEND", b""),
        )
    )


def _adam7_size(width: int, height: int, bits_per_pixel: int) -> int:
    """The raw size of an interlaced image, counted pixel by pixel (independently of intake's arithmetic)."""
    starts = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
    size = 0
    for x0, y0, dx, dy in starts:
        columns = len(range(x0, width, dx))
        rows = len(range(y0, height, dy))
        if columns and rows:
            size += rows * (1 + (columns * bits_per_pixel + 7) // 8)
    return size


@pytest.mark.parametrize(
    ("width", "height", "colour_type", "bit_depth", "interlace"),
    [(37, 11, 2, 8, 0), (37, 11, 6, 16, 0), (13, 9, 0, 1, 0), (37, 11, 2, 8, 1), (5, 3, 4, 8, 1), (1, 1, 0, 8, 1)],
)
def test_the_png_data_check_agrees_with_a_full_decode(width, height, colour_type, bit_depth, interlace):
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    if interlace:
        size = _adam7_size(width, height, channels * bit_depth)
    else:
        size = height * (1 + (width * channels * bit_depth + 7) // 8)
    whole = _png(width, height, colour_type, bit_depth, interlace, b"\0" * size)
    intake.check_png_data(whole)
    Image.open(io.BytesIO(whole)).load()  # Pillow agrees that the image is whole

    short = _png(width, height, colour_type, bit_depth, interlace, b"\0" * (size - 1))
    with pytest.raises(ValueError, match="promises"):
        intake.check_png_data(short)
    with pytest.raises(OSError, match="truncated"):
        Image.open(io.BytesIO(short)).load()

    with pytest.raises(ValueError, match="promises"):
        intake.check_png_data(_png(width, height, colour_type, bit_depth, interlace, b"\0" * (size + 1)))


def test_the_png_data_check_stops_at_what_the_header_promises():
    # 8×8 pixels whose data inflates to 100 MB: refused after about a megabyte, not inflated to the end.
    bomb = _png(8, 8, 0, 8, 0, b"\0" * 100_000_000)
    with pytest.raises(ValueError, match="promises"):
        intake.check_png_data(bomb)


def test_a_passed_through_image_is_sent_on_byte_for_byte():
    data = SAMPLES["short"].render()
    document = intake._open_image(data, "image/png", ocr_config())
    assert document.data is data
    assert (document.width, document.height) == Image.open(io.BytesIO(data)).size


def test_render_scale_honours_the_dpi_and_caps_the_pixels():
    a4 = (595.0, 842.0)
    assert intake.render_scale(*a4, 144, 10_000_000) == 2.0
    capped = intake.render_scale(14400.0, 14400.0, 144, 6_000_000)
    assert (14400 * capped) ** 2 <= 6_000_000 * 1.0001


# --- sizes and kinds --------------------------------------------------------------------------------------


async def test_an_empty_upload_is_refused_before_anything_else():
    error = await refusal(b"", "image", max_upload_bytes=0)

    assert (error.status, error.code) == (400, "empty_file")


async def test_an_upload_over_the_size_limit_is_refused_with_both_sizes_and_one_byte_less_is_not():
    data = SAMPLES["short"].render()

    error = await refusal(data, "image", max_upload_bytes=len(data) - 1)
    document = await intake.open_upload(
        intake.Upload(data=data, file_name="a.png"), expected_kind="image", config=config(max_upload_bytes=len(data))
    )

    assert (error.status, error.code) == (413, "file_too_large")
    assert str(len(data)) in str(error) and str(len(data) - 1) in str(error)
    assert document.kind == "image"


async def test_an_unknown_type_is_refused_whatever_the_file_is_called():
    error = await refusal(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image")

    assert (error.status, error.code) == (415, "unsupported_type")


@pytest.mark.parametrize(
    ("data", "sent_to", "belongs_to"), [("pdf", "image", "/api/ocr/pdf"), ("png", "pdf", "/api/ocr/image")]
)
async def test_a_file_sent_to_the_other_endpoint_is_told_where_it_belongs(data, sent_to, belongs_to):
    upload = make_numbered_pdf(1) if data == "pdf" else SAMPLES["short"].render()

    error = await refusal(upload, sent_to)

    assert (error.status, error.code) == (415, "wrong_kind")
    assert belongs_to in str(error)


async def test_the_client_s_file_name_does_not_decide_the_type():
    upload = intake.Upload(data=make_numbered_pdf(2), file_name="holiday.png")

    document = await intake.open_upload(upload, expected_kind="pdf", config=config())
    try:
        assert (document.kind, document.content_type, document.page_count) == ("pdf", "application/pdf", 2)
    finally:
        await document.aclose()


# --- images -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["truncated_png", "png_corrupt_idat", "png_bad_crc", "truncated_jpeg"])
async def test_a_damaged_image_is_refused_at_intake_not_mid_job(name):
    error = await refusal(BAD_INPUTS[name].data, "image")

    assert (error.status, error.code) == (422, "corrupt_file")


@pytest.mark.parametrize(
    "name", ["png_bomb", "png_100_megapixels", "gif_huge_canvas", "tiff_bomb", "jpeg_huge_dimensions"]
)
async def test_a_decompression_bomb_is_refused_from_its_header(name):
    error = await refusal(BAD_INPUTS[name].data, "image")

    assert (error.status, error.code) == (422, "image_too_large")


async def test_the_pixel_cap_is_the_configured_one():
    small_bomb = png_bomb(100, 100)

    error = await refusal(small_bomb, "image", max_image_pixels=100 * 100 - 1)

    assert error.code == "image_too_large" and str(100 * 100 - 1) in str(error)


@pytest.mark.parametrize(
    ("width", "height"), [(intake.MIN_IMAGE_SIDE - 1, 100), (100, intake.MAX_IMAGE_SIDE + 1), (10, 10 * 41)]
)
def test_sides_too_short_too_long_or_too_unequal_are_refused(width, height):
    with pytest.raises(IntakeError) as refused:
        intake.check_dimensions(width, height, max_pixels=10**12)

    assert refused.value.code == "bad_dimensions"


def test_the_limits_themselves_are_allowed():
    intake.check_dimensions(intake.MIN_IMAGE_SIDE, intake.MIN_IMAGE_SIDE, max_pixels=10**12)
    intake.check_dimensions(100, 100 * intake.MAX_ASPECT_RATIO, max_pixels=10**12)


async def test_a_format_engines_do_not_take_is_converted_to_png_once():
    image = Image.new("RGB", (64, 48), (10, 20, 30))
    buffer = io.BytesIO()
    image.save(buffer, format="BMP")

    document = await intake.open_upload(
        intake.Upload(data=buffer.getvalue(), file_name="a.bmp"), expected_kind="image", config=config()
    )

    assert document.content_type == "image/png" and document.data.startswith(b"\x89PNG")
    assert (document.width, document.height) == (64, 48)
    assert Image.open(io.BytesIO(document.data)).getpixel((0, 0)) == (10, 20, 30)


async def test_an_exif_rotated_photo_is_turned_upright_before_the_engine_sees_it():
    data = ODD_GOOD_INPUTS["exif_rotated_jpeg"].data
    with Image.open(io.BytesIO(data)) as original:
        stored_size = original.size

    document = await intake.open_upload(
        intake.Upload(data=data, file_name="photo.jpg"), expected_kind="image", config=config()
    )

    assert document.content_type == "image/png"
    assert (document.width, document.height) == stored_size[::-1], "a quarter turn swaps the sides"


def test_transparency_is_composited_on_white_not_black():
    image = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    image.putpixel((1, 0), (255, 0, 0, 255))

    flat = intake.flatten(image)

    assert flat.mode == "RGB"
    assert flat.getpixel((0, 0)) == (255, 255, 255) and flat.getpixel((1, 0)) == (255, 0, 0)


async def test_an_image_has_one_page_and_gives_its_pixels_only_when_asked():
    data = SAMPLES["short"].render()
    document = await intake.open_upload(
        intake.Upload(data=data, file_name="a.png"), expected_kind="image", config=config()
    )

    encoded = await document.page(1, pixels=False)
    decoded = await document.page(1, pixels=True)

    assert encoded.data is data and encoded.pixels is None
    assert decoded.pixels is not None and decoded.pixels.size == (document.width, document.height)
    with pytest.raises(IndexError):
        await document.page(2, pixels=False)


# --- PDFs -------------------------------------------------------------------------------------------------


async def test_an_encrypted_pdf_is_refused_with_its_own_code():
    error = await refusal(BAD_INPUTS["encrypted_pdf"].data, "pdf")

    assert (error.status, error.code) == (422, "encrypted_pdf")


async def test_a_pdf_without_pages_is_refused():
    error = await refusal(empty_pdf(), "pdf")

    assert (error.status, error.code) == (422, "empty_pdf")


@pytest.mark.parametrize("name", ["truncated_pdf", "corrupt_pdf"])
async def test_a_damaged_pdf_is_refused(name):
    error = await refusal(BAD_INPUTS[name].data, "pdf")

    assert (error.status, error.code) == (422, "corrupt_file")


async def test_the_page_limit_allows_exactly_the_limit():
    error = await refusal(make_numbered_pdf(3), "pdf", max_pdf_pages=2)
    document = await intake.open_upload(
        intake.Upload(data=make_numbered_pdf(2), file_name="b.pdf"), expected_kind="pdf", config=config(max_pdf_pages=2)
    )
    await document.aclose()

    assert (error.status, error.code) == (422, "too_many_pages")
    assert "3 pages" in str(error) and "limit is 2" in str(error)
    assert document.page_count == 2


async def test_a_pdf_page_is_rendered_on_request_at_the_configured_dpi_and_format():
    document = await intake.open_upload(
        intake.Upload(data=make_numbered_pdf(2), file_name="a.pdf"),
        expected_kind="pdf",
        config=config(pdf_dpi=72, page_format="jpeg"),
    )
    try:
        page = await document.page(2, pixels=False)
        with pytest.raises(IndexError):
            await document.page(3, pixels=False)
        with pytest.raises(IndexError):
            await document.page(0, pixels=False)
    finally:
        await document.aclose()

    assert page.number == 2 and page.mime == "image/jpeg" and page.data.startswith(b"\xff\xd8\xff")
    assert (page.width, page.height) == Image.open(io.BytesIO(page.data)).size
    assert abs(page.width - 595) <= 1 and abs(page.height - 842) <= 1, "72 dpi: one pixel per point of an A4 page"


async def test_a_giant_pdf_page_is_rendered_within_the_pixel_cap():
    document = await intake.open_upload(
        intake.Upload(data=BAD_INPUTS["pdf_giant_page"].data, file_name="big.pdf"),
        expected_kind="pdf",
        config=config(max_render_pixels=1_000_000),
    )
    try:
        page = await document.page(1, pixels=True)
    finally:
        await document.aclose()

    assert page.width * page.height <= 1_000_000 * 1.01
