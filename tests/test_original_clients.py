"""The original My OCR's clients, replayed against a real server: every call its React front end and its demo
script make, checking each field they read with its type (``shared/reference/original-my-ocr.md``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from testing.documents import SAMPLES, make_numbered_pdf
from testing.servers import AppServer

from .conftest import AppServers

pytestmark = pytest.mark.slow
PASSWORD = "original-client-password"


@pytest.fixture(scope="module")
def server(fake_vllm_server: Any, module_app_server: AppServers) -> Iterator[AppServer]:
    fake_vllm_server.reset()
    fake_vllm_server.set_default(tokens=8)
    app = module_app_server(
        {"OCR_ENGINE": "openai", "LLM_BASE_URL": fake_vllm_server.base_url}, name="original-clients"
    )
    yield app
    app.stop()
    fake_vllm_server.reset()


def is_timestamp(value: Any) -> bool:
    return isinstance(value, str) and datetime.fromisoformat(value).tzinfo is not None


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_ndjson(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """As the front end reads the stream: line by line as it arrives."""
    for line in response.iter_lines():
        if line.strip():
            yield json.loads(line)


def upload(url: str, token: str, name: str, data: bytes, mime: str, prompt: str = "") -> list[dict[str, Any]]:
    """The front end's upload: ``file`` (and ``prompt`` when not empty), ``Authorization: Bearer``."""
    kind = "pdf" if mime == "application/pdf" else "image"
    form = {"prompt": prompt} if prompt else {}
    with httpx.stream(
        "POST",
        f"{url}/api/ocr/{kind}",
        files={"file": (name, data, mime)},
        data=form,
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"] == "application/x-ndjson; charset=utf-8"
        return list(read_ndjson(response))


def test_the_original_front_end_and_demo_script_work_unchanged(server: AppServer, tmp_path: Path) -> None:
    url = server.url
    registered = httpx.post(f"{url}/api/auth/register", json={"username": "original", "password": PASSWORD})
    assert registered.status_code in (200, 201), registered.text
    user = registered.json()
    assert is_int(user["id"]) and user["username"] == "original" and is_timestamp(user["created_at"])

    wrong = httpx.post(f"{url}/api/auth/token", data={"username": "original", "password": "wrong"})
    assert wrong.status_code == 401
    issued = httpx.post(f"{url}/api/auth/token", data={"username": "original", "password": PASSWORD})
    assert issued.status_code == 200
    assert isinstance(issued.json()["access_token"], str) and issued.json()["token_type"] == "bearer"
    token = issued.json()["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}

    me = httpx.get(f"{url}/api/users/me", headers=bearer).json()
    assert me["id"] == user["id"] and me["username"] == "original" and me["created_at"] == user["created_at"]

    png = SAMPLES["short"].render()
    for prompt in ("", "Free OCR, output markdown.", "<|grounding|>Convert the document to markdown."):
        frames = upload(url, token, "page.png", png, "image/png", prompt)
        text = "".join(frame.get("delta") or frame.get("content") or frame.get("text") or "" for frame in frames)
        assert text, frames
    frames = upload(url, token, "doc.pdf", make_numbered_pdf(2), "application/pdf")
    start = next(frame for frame in frames if frame["type"] == "start")
    assert is_int(start["pages"]) and start["pages"] == 2
    started = [frame["page"] for frame in frames if frame["type"] == "page_start"]
    assert sorted(started) == [1, 2] and all(is_int(page) for page in started)
    deltas = [frame for frame in frames if frame["type"] == "page_delta"]
    assert {frame["page"] for frame in deltas} == {1, 2}
    assert all(is_int(frame["page"]) and isinstance(frame["delta"], str) for frame in deltas)

    events = httpx.get(f"{url}/api/users/me/usage", headers=bearer).json()
    assert isinstance(events, list) and len(events) == 4
    assert [event["kind"] for event in events] == ["pdf", "image", "image", "image"]  # newest first
    for event in events:
        assert is_int(event["id"])
        assert event["kind"] in ("image", "pdf")
        for name in ("prompt_chars", "completion_chars", "prompt_tokens", "completion_tokens", "input_bytes"):
            assert is_int(event[name]), name
        assert event["meta"] is None or isinstance(event["meta"], str)
        assert is_timestamp(event["created_at"])
    assert len({event["id"] for event in events}) == 4
    assert events[0]["input_bytes"] > 0 and events[0]["completion_tokens"] > 0

    summary = httpx.get(f"{url}/api/users/me/usage/summary", headers=bearer).json()
    names = ("input_bytes", "prompt_tokens", "completion_tokens", "prompt_chars", "completion_chars")
    assert summary["total_events"] == 4
    for name in names:
        assert is_int(summary[f"total_{name}"]), name
        assert summary[f"total_{name}"] == sum(event[name] for event in events), name

    for path in ("/metrics", "/api/metrics"):
        scraped = httpx.get(f"{url}{path}")
        assert scraped.status_code == 200 and "ocr_requests_total" in scraped.text
    assert httpx.get(f"{url}/api/docs").status_code == 200


def test_usage_event_ids_do_not_change_between_reads(server: AppServer) -> None:
    token = server.register_and_login("steady")
    bearer = {"Authorization": f"Bearer {token}"}
    upload(server.url, token, "page.png", SAMPLES["short"].render(), "image/png")
    first = httpx.get(f"{server.url}/api/users/me/usage", headers=bearer).json()
    upload(server.url, token, "page.png", SAMPLES["short"].render(), "image/png")
    second = httpx.get(f"{server.url}/api/users/me/usage", headers=bearer).json()
    assert second[1]["id"] == first[0]["id"] and second[0]["id"] != first[0]["id"]
    assert json.loads(second[1]["meta"])["job_id"] == second[1]["job_id"]
