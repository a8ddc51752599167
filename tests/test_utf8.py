"""JSON answers and downloads write non-ASCII text as UTF-8 (``会议``), not as ``\\u4f1a\\u8bae`` escapes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from ocr.models import OcrJob, OcrPage

pytestmark = pytest.mark.django_db(transaction=True)
TEXT = "会议纪要：第一季度 — naïve café"


def utf8_json(response: Any) -> Any:
    assert response.status_code in (200, 201), response.content[:300]
    assert b"\\u" not in response.content
    return json.loads(response.content.decode("utf-8"))


def test_the_json_download_writes_utf8(alice: Any) -> None:
    job = OcrJob.objects.create(
        owner=alice, kind="image", file_name="会议.png", content_type="image/png", engine="openai", status="done"
    )
    OcrPage.objects.create(job=job, number=1, status="done", text=TEXT)
    client = Client()
    client.force_login(alice)
    response = client.get(f"/jobs/{job.pk}/result.json")
    assert response["Content-Type"] == "application/json; charset=utf-8"
    assert TEXT.encode() in response.content
    assert utf8_json(response)["text"] == TEXT


def test_the_account_answers_write_utf8(transactional_db: None) -> None:
    client = Client()
    user = utf8_json(
        client.post(
            "/api/auth/register",
            {"username": "会议", "password": "correct horse battery"},
            content_type="application/json",
        )
    )
    assert user["username"] == "会议"
    token = utf8_json(client.post("/api/auth/token", {"username": "会议", "password": "correct horse battery"}))
    me = utf8_json(client.get("/api/users/me", headers={"Authorization": f"Bearer {token['access_token']}"}))
    assert me["username"] == "会议"
