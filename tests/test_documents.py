"""The test-document generators make what they promise: readable samples, exact PDFs, truly bad inputs."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
import pytest
from PIL import Image, ImageChops, ImageOps, ImageStat, UnidentifiedImageError

from testing import documents
from testing.cer import cer, normalise
from testing.documents import BAD_INPUTS, ODD_GOOD_INPUTS, SAMPLES, BadInput, GoodInput

# ------------------------------------------------------------------------------------------------ helpers


def open_image(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def pdf_page_texts(data: bytes, password: str | None = None) -> list[str]:
    document = pdfium.PdfDocument(data, password=password)
    try:
        return [page.get_textpage().get_text_range().replace("\r\n", "\n") for page in document]
    finally:
        document.close()


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference of two same-sized images, in grey levels (0-255)."""
    return ImageStat.Stat(ImageChops.difference(a.convert("L"), b.convert("L"))).mean[0]


def upright_rgb(image: Image.Image) -> Image.Image:
    """What a careful intake does with an upload: apply EXIF orientation, put transparency on white."""
    image = ImageOps.exif_transpose(image)
    if image.mode in {"RGBA", "LA", "PA"} or (image.mode == "P" and "transparency" in image.info):
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
    return image.convert("RGB")


@pytest.fixture(scope="module")
def ocr_engine():
    from rapidocr import RapidOCR

    import ocr.engines.local  # noqa: F401  (it keeps onnxruntime's telemetry off, before rapidocr loads it)

    return RapidOCR(params={"Global.log_level": "warning", "EngineConfig.onnxruntime.intra_op_num_threads": 1})


def read(engine, image) -> str:
    return "\n".join(engine(image).txts or ())


# -------------------------------------------------------------------------------------------------- fonts


@pytest.mark.parametrize("kind", ["sans", "cjk"])
def test_font_is_installed_at_its_debian_path(kind):
    font = documents.font_file(kind)
    assert font.path.is_file()
    assert font.package in documents.DEBIAN_FONT_PACKAGES


def test_missing_font_names_the_debian_package(monkeypatch):
    missing = documents.FontFile(Path("/nonexistent/Font.ttf"), 0, "fonts-example", "Example")
    monkeypatch.setitem(documents.FONTS, "cjk", missing)
    with pytest.raises(documents.MissingFontError, match="fonts-example"):
        documents.font_file("cjk")


# ---------------------------------------------------------------------------------------------------- CER


@pytest.mark.parametrize(
    ("hypothesis", "reference", "expected"),
    [
        ("hello world", "hello world", 0.0),
        ("hello wor1d", "hello world", 1 / 11),
        ("hello", "hello world", 6 / 11),
        ("", "abcd", 1.0),
        ("abcdefgh", "abcd", 1.0),
        ("", "", 0.0),
        ("x", "", 1.0),
        ("hello\n  world ", "hello world", 0.0),
        ("光学 字符 识别", "光学字符识别", 0.0),
        ("光学\n字符识别", "光学字符识别", 0.0),
        ("中文 English 文本", "中文English文本", 2 / 11),
        ("ＡＢＣ１２３", "ABC123", 0.0),
        ("你好，世界", "你好,世界", 0.0),
    ],
)
def test_cer_of_known_pairs(hypothesis, reference, expected):
    assert cer(hypothesis, reference) == pytest.approx(expected)


def test_cer_can_ignore_spaces():
    assert cer("helloworld", "hello world") == pytest.approx(1 / 11)
    assert cer("helloworld", "hello world", ignore_space=True) == 0.0


def test_normalise_collapses_whitespace_and_joins_cjk():
    assert normalise("  a\n\tb  c ") == "a b c"
    assert normalise("月度 报告 Monthly Report 中 文") == "月度报告 Monthly Report 中文"
    assert normalise("ｆｕｌｌ　ｗｉｄｔｈ") == "full width"


# ------------------------------------------------------------------------------------------------- images


def test_render_is_deterministic():
    lines = ["Hello from the test suite.", "你好，世界。"]
    assert documents.render_text_image(lines) == documents.render_text_image(lines)
    noisy = {"noise": True, "rotate": 2.0, "fmt": "JPEG", "seed": 3}
    assert documents.render_text_image(lines, **noisy) == documents.render_text_image(lines, **noisy)
    assert documents.render_text_image(lines, noise=True, seed=1) != documents.render_text_image(
        lines, noise=True, seed=2
    )


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF"])
def test_render_writes_the_requested_format(fmt):
    image = open_image(documents.render_text_image(["Hello"], width=400, fmt=fmt))
    assert image.format == fmt
    assert image.size == (400, 266)


def test_render_defaults_to_a_page_shape_that_fits_the_lines():
    assert open_image(SAMPLES["english"].render()).size == (1200, 800)
    assert open_image(SAMPLES["short"].render()).size == (640, 426)
    many = [f"Line number {n}" for n in range(20)]
    assert open_image(documents.render_text_image(many)).size == (1200, 20 * 61 + 4 * 32)


def test_render_rotation_grows_the_canvas():
    upright = open_image(SAMPLES["short"].render())
    turned = open_image(SAMPLES["short"].render(rotate=2.0))
    assert turned.width > upright.width
    assert turned.height > upright.height


def test_render_refuses_text_that_does_not_fit():
    with pytest.raises(ValueError, match="wider than the page"):
        documents.render_text_image(["A line far too long for a narrow page of two hundred pixels"], width=200)
    with pytest.raises(ValueError, match="height"):
        documents.render_text_image(["one", "two", "three"], height=100)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_sample_text_is_its_lines(name):
    sample = SAMPLES[name]
    assert sample.text == "\n".join(sample.lines)
    assert len(sample.lines) >= 3


def test_samples_cover_english_chinese_and_mixed():
    assert len(SAMPLES["english"].lines) >= 8
    assert len(SAMPLES["chinese"].lines) >= 6
    assert all(documents.needs_cjk_font(line) for line in SAMPLES["chinese"].lines)
    mixed = SAMPLES["mixed"].lines
    assert any(documents.needs_cjk_font(line) for line in mixed)
    assert not all(documents.needs_cjk_font(line) for line in mixed)


@pytest.mark.parametrize("name", ["english", "chinese", "mixed", "short"])
def test_sample_reads_back_through_rapidocr(ocr_engine, name):
    sample = SAMPLES[name]
    assert cer(read(ocr_engine, sample.render()), sample.text) < 0.02


def test_noisy_rotated_jpeg_scan_still_reads_back(ocr_engine):
    sample = SAMPLES["chinese"]
    scan = sample.render(noise=True, rotate=2.0, fmt="JPEG", quality=55)
    assert cer(read(ocr_engine, scan), sample.text) < 0.02


def test_text_pdf_page_rendered_at_144_dpi_reads_back(ocr_engine):
    sample = SAMPLES["mixed"]
    document = pdfium.PdfDocument(sample.pdf())
    try:
        image = document[0].render(scale=144 / 72).to_pil()
    finally:
        document.close()
    assert cer(read(ocr_engine, image), sample.text) < 0.02


# --------------------------------------------------------------------------------------------------- PDFs


def test_make_pdf_has_one_page_per_item_with_exact_text():
    samples = list(SAMPLES.values())
    data = documents.make_pdf([list(sample.lines) for sample in samples])
    assert pdf_page_texts(data) == [sample.text for sample in samples]


def test_make_pdf_embeds_truetype_fonts():
    data = SAMPLES["mixed"].pdf()
    assert data.count(b"/FontFile2") == 2  # DejaVu Sans and WenQuanYi Micro Hei, as TrueType subsets


def test_make_pdf_is_deterministic():
    pages = [list(SAMPLES["mixed"].lines), []]
    assert documents.make_pdf(pages) == documents.make_pdf(pages)


def test_make_pdf_blank_page_has_no_text():
    assert pdf_page_texts(documents.make_pdf([["Before"], [], ["After"]])) == ["Before", "", "After"]


def test_make_pdf_refuses_what_does_not_fit():
    with pytest.raises(ValueError, match="wider"):
        documents.make_pdf([["word " * 40]])
    with pytest.raises(ValueError, match="do not fit"):
        documents.make_pdf([["line"] * 60])
    with pytest.raises(ValueError, match="at least one page"):
        documents.make_pdf([])


def test_make_pdf_with_user_password_needs_it():
    data = documents.make_pdf([["Locked"]], user_password="pw", owner_password="owner")
    with pytest.raises(pdfium.PdfiumError):
        pdfium.PdfDocument(data)
    assert pdf_page_texts(data, password="pw") == ["Locked"]


def test_numbered_page_text():
    assert documents.numbered_page_lines(3, 10, lines_per_page=3) == [
        "Page 3 of 10",
        documents.NUMBERED_SENTENCES[2],
        documents.NUMBERED_SENTENCES[3],
    ]
    assert documents.numbered_page_text(1, 1, lines_per_page=1) == "Page 1 of 1"
    with pytest.raises(ValueError, match="between 1 and 10"):
        documents.numbered_page_lines(11, 10)


def test_every_page_of_a_500_page_numbered_pdf_is_right():
    data = documents.make_numbered_pdf(500)
    texts = pdf_page_texts(data)
    assert texts == [documents.numbered_page_text(page, 500) for page in range(1, 501)]


def test_numbered_pdf_honours_lines_per_page():
    texts = pdf_page_texts(documents.make_numbered_pdf(3, lines_per_page=8))
    assert texts[1] == documents.numbered_page_text(2, 3, lines_per_page=8)
    assert texts[1].count("\n") == 7


def test_image_pdf_is_a_scan_without_text():
    images = [SAMPLES["short"].render(), SAMPLES["english"].render(fmt="JPEG")]
    data = documents.make_image_pdf(images)
    assert data == documents.make_image_pdf(images)
    document = pdfium.PdfDocument(data)
    try:
        assert len(document) == 2
        assert document[0].get_size() == pytest.approx((320, 213))  # 640 × 426 px at 144 DPI
        assert document[1].get_size() == pytest.approx((600, 400))
        assert document[0].get_textpage().get_text_range() == ""
        rendered = document[0].render(scale=2).to_pil()
    finally:
        document.close()
    assert mean_difference(rendered, open_image(images[0])) < 3


def test_many_pages_pdf_is_counted_right():
    data = documents.many_pages_pdf(2000)
    document = pdfium.PdfDocument(data)
    try:
        assert len(document) == 2000
        assert document[1999].get_textpage().get_text_range() == "Page 2000 of 2000"
    finally:
        document.close()


# --------------------------------------------------------------------------------------------- bad inputs


def test_there_are_at_least_twenty_bad_inputs():
    assert len(BAD_INPUTS) >= 20
    assert {bad.endpoint for bad in BAD_INPUTS.values()} == {"image", "pdf", "both"}


def _refused_by_pillow(bad: BadInput) -> None:
    with pytest.raises(UnidentifiedImageError):
        open_image(bad.data)


def _refused_by_pdfium(bad: BadInput) -> None:
    with pytest.raises(pdfium.PdfiumError):
        pdfium.PdfDocument(bad.data)


def _check_empty(bad: BadInput) -> None:
    assert bad.data == b""
    _refused_by_pillow(bad)
    _refused_by_pdfium(bad)


def _check_unidentified(bad: BadInput) -> None:
    if bad.endpoint in {"image", "both"}:
        _refused_by_pillow(bad)
    if bad.endpoint in {"pdf", "both"}:
        _refused_by_pdfium(bad)


def _check_decode(bad: BadInput) -> None:
    image = open_image(bad.data)  # the header alone is fine
    with pytest.raises(OSError):  # noqa: PT011 - Pillow's messages vary by format
        image.load()


def _check_verify(bad: BadInput) -> None:
    open_image(bad.data).load()  # decodes without complaint
    with pytest.raises(SyntaxError, match="broken PNG"):
        open_image(bad.data).verify()


def _check_pixels(bad: BadInput) -> None:
    # Pillow refuses past 2 × MAX_IMAGE_PIXELS and warns past MAX_IMAGE_PIXELS: with the warning as an
    # error, every one of these is refused as soon as it is opened.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises((Image.DecompressionBombError, Image.DecompressionBombWarning)):
            open_image(bad.data)


def _check_side(bad: BadInput) -> None:
    image = open_image(bad.data)
    image.load()
    assert max(image.size) >= 100_000
    assert image.width * image.height < Image.MAX_IMAGE_PIXELS


def _check_pdf_open(bad: BadInput) -> None:
    _refused_by_pdfium(bad)


def _check_pdf_password(bad: BadInput) -> None:
    with pytest.raises(pdfium.PdfiumError) as refused:
        pdfium.PdfDocument(bad.data)
    assert refused.value.err_code == pdfium_c.FPDF_ERR_PASSWORD
    assert pdf_page_texts(bad.data, password=documents.ENCRYPTED_PDF_USER_PASSWORD) == [SAMPLES["short"].text]


def _check_pdf_page_count(bad: BadInput) -> None:
    document = pdfium.PdfDocument(bad.data)
    try:
        assert len(document) >= 10_000
    finally:
        document.close()


def _check_pdf_page_size(bad: BadInput) -> None:
    document = pdfium.PdfDocument(bad.data)
    try:
        width, height = document[0].get_size()
    finally:
        document.close()
    pixels_at_144_dpi = (width * 2) * (height * 2)
    assert pixels_at_144_dpi > 500_000_000


CHECKS = {
    "empty": _check_empty,
    "unidentified": _check_unidentified,
    "decode": _check_decode,
    "verify": _check_verify,
    "pixels": _check_pixels,
    "side": _check_side,
    "pdf_open": _check_pdf_open,
    "pdf_password": _check_pdf_password,
    "pdf_page_count": _check_pdf_page_count,
    "pdf_page_size": _check_pdf_page_size,
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_is_refused_by_the_check_it_targets(name):
    bad = BAD_INPUTS[name]
    assert bad.name == name
    assert bad.filename
    assert "/" in bad.content_type
    assert bad.reason
    CHECKS[bad.check](bad)


def test_empty_pdf_is_well_formed_but_pdfium_refuses_it():
    from pypdf import PdfReader

    assert len(PdfReader(io.BytesIO(documents.empty_pdf())).pages) == 0
    with pytest.raises(pdfium.PdfiumError):
        pdfium.PdfDocument(documents.empty_pdf())


def test_png_bomb_is_small_but_really_decompresses_to_its_full_size():
    data = documents.png_bomb()
    assert len(data) < 200_000
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (30_000, 30_000)
    idat_length = struct.unpack(">I", data[33:37])[0]
    assert data[37:41] == b"IDAT"
    inflater, total, pending = zlib.decompressobj(), 0, data[41 : 41 + idat_length]
    while pending:
        total += len(inflater.decompress(pending, 1 << 24))
        pending = inflater.unconsumed_tail
    assert total == height * (1 + width // 8)


def test_png_bomb_writer_makes_valid_pngs():
    image = open_image(documents.png_bomb.__wrapped__(2001, 300))
    image.load()
    assert image.size == (2001, 300)
    assert image.getextrema() == (0, 0)


def test_bad_input_generators_are_deterministic():
    assert documents.png_bomb.__wrapped__(3000, 3000) == documents.png_bomb.__wrapped__(3000, 3000)
    assert documents.many_pages_pdf.__wrapped__(50) == documents.many_pages_pdf.__wrapped__(50)
    assert documents.giant_page_pdf.__wrapped__() == documents.giant_page_pdf.__wrapped__()
    pages = [list(SAMPLES["short"].lines)]
    assert documents.make_pdf(pages, user_password="a", owner_password="b") == documents.make_pdf(
        pages, user_password="a", owner_password="b"
    )


# -------------------------------------------------------------------------------------- odd good inputs


@pytest.mark.parametrize("name", sorted(name for name, good in ODD_GOOD_INPUTS.items() if good.endpoint == "pdf"))
def test_odd_good_pdf_opens_without_a_password(name):
    good: GoodInput = ODD_GOOD_INPUTS[name]
    document = pdfium.PdfDocument(good.data)
    try:
        assert len(document) == len(good.pages)
        rendered = document[0].render(scale=2).to_pil()
    finally:
        document.close()
    assert rendered.size[0] > 0
    texts = pdf_page_texts(good.data)
    if name == "scanned_pdf":
        assert texts == [""]  # the text is only in the picture
        assert mean_difference(rendered, open_image(SAMPLES["short"].render())) < 3
    else:
        assert texts == list(good.pages)


@pytest.mark.parametrize("name", sorted(name for name, good in ODD_GOOD_INPUTS.items() if good.endpoint == "image"))
def test_odd_good_image_handled_with_care_equals_the_plain_render(name):
    good: GoodInput = ODD_GOOD_INPUTS[name]
    assert good.pages == (SAMPLES["short"].text,)
    image = upright_rgb(open_image(good.data))
    assert mean_difference(image, open_image(SAMPLES["short"].render())) < 3


def test_transparent_png_converted_naively_is_black_on_black():
    naive = open_image(ODD_GOOD_INPUTS["rgba_transparent_png"].data).convert("RGB")
    assert naive.convert("L").getextrema() == (0, 0)


def test_exif_rotated_jpeg_is_stored_sideways():
    stored = open_image(ODD_GOOD_INPUTS["exif_rotated_jpeg"].data)
    assert stored.size == (426, 640)
    assert stored.getexif()[0x0112] == 6


def test_jpeg_named_png_is_sniffed_as_jpeg():
    good = ODD_GOOD_INPUTS["jpeg_named_png"]
    assert good.filename.endswith(".png")
    assert open_image(good.data).format == "JPEG"
