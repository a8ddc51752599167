"""Every error under /api/ is the JSON error body ``{"error": {"code", "message"}}``, whatever layer raised it:
Django's request parsing, its URL resolver, a crash, with DEBUG on (the test settings) and off."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient
from django.urls import include, path

from myocr.urls import urlpatterns as app_patterns

from .test_metrics import Meter

pytestmark = pytest.mark.django_db(transaction=True)


def json_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == "application/json", response.content[:300]
    body = json.loads(response.content)
    assert body["error"]["code"] == code and body["error"]["message"]
    return body


@pytest.fixture(params=[True, False], ids=["debug", "production"])
def debug(request: Any, settings: Any) -> bool:
    settings.DEBUG = request.param
    return request.param


FIELDS = {f"field{index}": "x" for index in range(5000)}


async def test_five_thousand_form_fields_get_a_json_400(debug: bool) -> None:
    response = await AsyncClient().post("/api/auth/token", FIELDS)
    json_error(response, 400, "too_many_fields")


async def test_five_thousand_fields_beside_an_upload_get_a_json_400(debug: bool, alice_token: str) -> None:
    response = await AsyncClient().post(
        "/api/ocr/image",
        {**FIELDS, "file": SimpleUploadedFile("page.png", b"\x89PNG")},
        headers={"Authorization": f"Bearer {alice_token}"},
    )
    json_error(response, 400, "too_many_fields")


async def test_a_body_over_djangos_limit_gets_a_json_413(debug: bool) -> None:
    body = json.dumps({"username": "x" * (2 * 1024 * 1024), "password": "x"})
    response = await AsyncClient().post("/api/auth/register", body, content_type="application/json")
    json_error(response, 413, "request_too_large")


async def test_an_unknown_api_path_gets_a_json_404(debug: bool) -> None:
    json_error(await AsyncClient().get("/api/no/such/endpoint"), 404, "not_found")
    json_error(await AsyncClient().post("/api/no/such/endpoint", FIELDS), 404, "not_found")


async def test_pages_outside_the_api_keep_their_html_errors(debug: bool) -> None:
    response = await AsyncClient().get("/no/such/page")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


async def _crash(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("a bug")


urlpatterns = [path("api/test/crash", _crash, name="crash"), path("", include(app_patterns))]


@pytest.mark.urls("tests.test_api_errors")
async def test_a_crash_in_an_api_view_gets_a_json_500_and_is_counted(debug: bool) -> None:
    meter = Meter()
    response = await AsyncClient(raise_request_exception=False).get("/api/test/crash")
    json_error(response, 500, "internal_error")
    assert meter.delta("django_http_exceptions_total_by_type_total", type="RuntimeError") == 1
    assert meter.delta("django_http_exceptions_total_by_view_total", view="crash") == 1
    assert meter.delta("http_requests_total", method="GET", path="/api/test/crash", status="500") == 1
