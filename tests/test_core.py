"""Small pieces with their own contracts: settings readers, the upload guard, readiness, the management command
and the migrations."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command

from myocr import env
from myocr.upload_limit import UploadLimitMiddleware
from testing.documents import SAMPLES, make_pdf

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
