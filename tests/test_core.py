"""Small pieces with their own contracts: settings readers, intake helpers, the upload guard, readiness,
the management command and the migrations."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from PIL import Image

from myocr import env
from myocr.upload_limit import UploadLimitMiddleware
from ocr import intake
from ocr.config import ocr_config
from testing.documents import SAMPLES, make_pdf, png_chunk

from .contract import assert_contract


@pytest.mark.parametrize(
    ("raw", "expected"), [("52428800", 52428800), ("50M", 50 * 1024**2), ("1.5G", int(1.5 * 1024**3)), ("64k", 65536)]
)
def test_sizes_accept_plain_bytes_and_suffixes(monkeypatch, raw, expected):
    monkeypatch.setenv("SIZE", raw)

    assert env.env_bytes("SIZE", 1) == expected


@pytest.mark.parametrize(
    ("reader", "raw"),
    [
        (lambda: env.env_bool("VALUE", True), "maybe"),
        (lambda: env.env_int("VALUE", 1), "ten"),
        (lambda: env.env_int("VALUE", 1, minimum=2), "1"),
        (lambda: env.env_bytes("VALUE", 1), "lots"),
        (lambda: env.env_choice("VALUE", "a", ("a", "b")), "c"),
    ],
)
def test_a_wrong_setting_fails_loudly_with_its_name(monkeypatch, reader, raw):
    monkeypatch.setenv("VALUE", raw)

    with pytest.raises(ImproperlyConfigured, match="VALUE"):
        reader()


def test_dotenv_does_not_override_the_environment(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("# comment\nFROM_FILE='yes'\nexport ALREADY=file\n", encoding="utf-8")
    monkeypatch.setenv("ALREADY", "environment")
    monkeypatch.delenv("FROM_FILE", raising=False)

    env.load_dotenv(tmp_path / ".env")

    import os

    assert os.environ["FROM_FILE"] == "yes"
    assert os.environ["ALREADY"] == "environment"


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


async def test_the_upload_guard_answers_from_the_headers_without_calling_the_app():
    called = []

    async def app(scope, receive, send):
        called.append(scope["path"])

    guard = UploadLimitMiddleware(app, paths=("/api/ocr/",), max_bytes=lambda: 1000)
    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        raise AssertionError("the body must not be read")

    scope = {"type": "http", "method": "POST", "path": "/api/ocr/pdf", "headers": [(b"content-length", b"999999")]}
    await guard(scope, receive, send)

    assert called == []
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["code"] == "file_too_large"

    await guard({**scope, "headers": [(b"content-length", b"10")]}, receive, send)
    assert called == ["/api/ocr/pdf"]


async def test_healthz_reports_starting_until_the_engine_is_warm(monkeypatch, transactional_db):
    import threading

    from django.test import AsyncClient

    from myocr import startup

    warming = threading.Event()
    monkeypatch.setattr(startup, "warm_up_done", warming)
    response = await AsyncClient().get("/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "starting"

    warming.set()
    response = await AsyncClient().get("/healthz")
    assert response.status_code == 200


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("local_engine")
def test_the_ocr_command_prints_the_api_frames(tmp_path: Path, capsysbinary):
    pdf = tmp_path / "two.pdf"
    pdf.write_bytes(make_pdf([list(SAMPLES["short"].lines), ["The second page."]]))

    call_command("ocr", str(pdf))

    frames = [json.loads(line) for line in capsysbinary.readouterr().out.decode().splitlines()]
    end = assert_contract(frames, "pdf")
    assert end["status"] == "done"
    assert "second page" in "".join(f["delta"] for f in frames if f["type"] == "page_delta" and f["page"] == 2)


@pytest.mark.django_db
def test_models_and_migrations_agree():
    out = io.StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
