"""The OpenAPI document: valid OpenAPI 3.1, in step with the URL conf, served with its docs page, and true to what
the API really sends (every NDJSON frame of real streams, every JSON body, validated against its schema)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from django.test import AsyncClient
from django.urls import URLPattern, URLResolver, get_resolver
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from myocr.openapi import document
from testing.documents import SAMPLES, make_numbered_pdf

from .conftest import Api, parse_ndjson
from .contract import assert_contract

ROOT = Path(__file__).resolve().parent.parent
PNG = SAMPLES["short"].render()
BASE = "urn:myocr:openapi"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def schema_validator(name: str) -> Draft202012Validator:
    registry = Registry().with_resource(BASE, Resource(contents=document(), specification=DRAFT202012))
    return Draft202012Validator(
        {"$ref": f"{BASE}#/components/schemas/{name}"}, registry=registry, format_checker=FormatChecker()
    )


def assert_matches(instance: Any, name: str) -> None:
    errors = sorted(schema_validator(name).iter_errors(instance), key=lambda error: list(error.absolute_path))
    assert not errors, f"{name}: " + "; ".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])


def api_routes() -> dict[str, Any]:
    """Every URL pattern under /api/ as an OpenAPI path template, with its view."""
    found: dict[str, Any] = {}

    def walk(patterns: list[Any], prefix: str) -> None:
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, route)
            elif isinstance(pattern, URLPattern) and route.startswith("api/"):
                found["/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)] = pattern.callback

    walk(get_resolver().url_patterns, "")
    return found


# --- the document itself ----------------------------------------------------------------------------------


def test_the_document_is_valid_openapi_3_1():
    from schemathesis.specs.openapi.definitions import OPENAPI_31  # the official meta-schema, bundled

    spec = document()

    assert spec["openapi"].startswith("3.1.")
    Draft202012Validator(OPENAPI_31).validate(spec)
    for name, schema in spec["components"]["schemas"].items():
        assert Draft202012Validator.check_schema(schema) is None, name
    references = set(re.findall(r'"\$ref": ?"#/components/schemas/(\w+)"', json.dumps(spec)))
    assert references <= set(spec["components"]["schemas"]), references - set(spec["components"]["schemas"])


def test_every_api_route_is_documented_and_every_documented_path_exists():
    documented = set(document()["paths"])
    routed = set(api_routes())

    assert routed - documented == set(), "API routes missing from myocr/openapi.py"
    assert documented - routed == set(), "documented paths with no route"


@pytest.mark.django_db
async def test_each_path_answers_exactly_its_documented_methods():
    client = AsyncClient()
    for path, item in document()["paths"].items():
        documented = {method.upper() for method in item if method in METHODS}
        url = path.replace("{job_id}", "00000000-0000-0000-0000-000000000000")

        response = await client.generic("PATCH", url)

        assert response.status_code == 405, path
        allowed = {method.strip() for method in response["Allow"].split(",")} - {"HEAD"}
        assert allowed == documented, path


def test_operations_that_need_no_token_say_so_and_the_others_use_bearer_auth():
    spec = document()
    public = {"register", "issue_token", "openapi", "docs"}
    assert spec["security"] == [{"bearerAuth": []}]
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    for item in spec["paths"].values():
        for operation in item.values():
            if operation["operationId"] in public:
                assert operation["security"] == [], operation["operationId"]
            elif operation["operationId"] != "metrics":
                assert "security" not in operation, operation["operationId"]
                assert "401" in operation["responses"], operation["operationId"]


def test_every_error_response_has_the_error_body_and_429s_carry_retry_after():
    for item in document()["paths"].values():
        for operation in item.values():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
                if status == "429":
                    assert response["headers"]["Retry-After"]["required"] is True


# --- served -----------------------------------------------------------------------------------------------


async def test_the_document_is_served_at_api_openapi_json():
    response = await AsyncClient().get("/api/openapi.json")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert json.loads(response.content) == json.loads(json.dumps(document()))


async def test_the_docs_page_uses_vendored_assets_only():
    response = await AsyncClient().get("/api/docs")
    html = response.content.decode()

    assert response.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and all(asset.startswith(("/static/", "/api/")) for asset in assets), assets
    for asset in assets:
        if asset.startswith("/static/"):
            assert (ROOT / "static" / asset.removeprefix("/static/")).is_file(), asset
    vendor = ROOT / "static" / "vendor" / "swagger-ui"
    assert (
        (vendor / "LICENSE-swagger-ui.txt").read_text().startswith("\n                                 Apache License")
    )
    assert "<script>" not in html and " style=" not in html, "the CSP allows no inline script or style"
    assert "swagger" in (ROOT / "static" / "js" / "api-docs.js").read_text().lower()
    assert "validatorUrl: null" in (ROOT / "static" / "js" / "api-docs.js").read_text()


# --- what the API really sends ----------------------------------------------------------------------------


def assert_stream_matches(frames: list[dict[str, Any]], kind: str) -> None:
    frame_schema = "ImageFrame" if kind == "image" else "PdfFrame"
    for frame in frames:
        assert_matches(frame, frame_schema)
    assert_matches(frames, "ImageStream" if kind == "image" else "PdfStream")


@pytest.mark.django_db(transaction=True)
async def test_image_streams_match_the_frame_schemas(fake_vllm, api):
    fake_vllm.push_script({}, {"fail_status": 500})
    for _ in range(2):
        response, frames = await api.ocr("image", PNG, name="page.png")
        assert response.status_code == 200
        assert_contract(frames, "image")
        assert_stream_matches(frames, "image")
    assert {frame["type"] for frame in frames} >= {"start", "error", "end"}


@pytest.mark.django_db(transaction=True)
async def test_pdf_streams_match_the_frame_schemas_whatever_happens_to_the_pages(fake_vllm, api):
    fake_vllm.push_script({}, {"fail_status": 500}, {"finish_reason": "length"}, {"error_after": 2})
    response, frames = await api.ocr("pdf", make_numbered_pdf(4), name="book.pdf")

    assert response.status_code == 200
    end = assert_contract(frames, "pdf")
    assert_stream_matches(frames, "pdf")
    statuses = sorted(frame["status"] for frame in frames if frame["type"] == "page_end")
    assert statuses == ["done", "failed", "failed", "truncated"] and end["status"] == "partial"

    fake_vllm.set_default(fail_status=500)
    response, frames = await api.ocr("pdf", make_numbered_pdf(2), name="down.pdf")
    assert_contract(frames, "pdf")
    assert_stream_matches(frames, "pdf")
    assert frames[-2]["type"] == "error" and frames[-1]["status"] == "failed"


@pytest.mark.django_db(transaction=True)
async def test_pages_with_layout_boxes_match_the_schema(local_engine, api):
    _, frames = await api.ocr("pdf", SAMPLES["short"].pdf(), name="page.pdf")

    assert_stream_matches(frames, "pdf")
    page_end = next(frame for frame in frames if frame["type"] == "page_end")
    assert page_end.get("layout"), "the embedded engine reports a box per line"


@pytest.mark.django_db(transaction=True)
async def test_json_answers_match_their_schemas(fake_vllm, api, alice):
    _, frames = await api.ocr("pdf", make_numbered_pdf(2), name="book.pdf")
    job_id = frames[0]["job_id"]
    client = AsyncClient()

    bodies = {
        "Job": await api.get(f"/api/jobs/{job_id}"),
        "Me": await api.get("/api/users/me"),
        "UsageSummary": await api.get("/api/users/me/usage/summary"),
        "Token": await client.post(
            "/api/auth/token", {"username": "alice", "password": "correct horse battery staple"}
        ),
        "User": await client.post(
            "/api/auth/register",
            {"username": "zoe", "password": "a long enough password"},
            content_type="application/json",
        ),
    }
    usage = await api.get("/api/users/me/usage")

    for name, response in bodies.items():
        assert response.status_code in (200, 201), name
        assert_matches(json.loads(response.content), name)
    for event in json.loads(usage.content):
        assert_matches(event, "UsageEvent")


@pytest.mark.django_db(transaction=True)
async def test_errors_match_the_error_schema(fake_vllm, api):
    responses = [
        await Api(None).get("/api/users/me"),
        await api.get("/api/jobs/not-a-job"),
        await api.post_file("image", b"not an image", name="x.png"),
        await api.post_file("pdf", PNG, name="x.png"),
        await AsyncClient().post("/api/auth/token", {"username": "nobody", "password": "x"}),
    ]

    for response in responses:
        assert response.status_code >= 400
        assert_matches(json.loads(response.content), "Error")


def test_a_stream_body_parses_as_the_documented_array():
    job = "9b2f1c1e-7d7b-4c55-9a55-6a3e8f1b8c11"
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "prompt_chars": 3, "completion_chars": 4, "input_bytes": 5}
    lines = [
        {"type": "start", "kind": "image", "job_id": job},
        {"type": "end", "status": "done", "job_id": job, "usage": usage},
    ]
    body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)

    assert_matches(parse_ndjson(body), "ImageStream")
    assert list(schema_validator("ImageStream").iter_errors([{"type": "delta"}]))
