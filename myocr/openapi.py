"""The API's OpenAPI 3.1 document (``/api/openapi.json``) and its interactive page (``/api/docs``).

Written by hand, next to the contract it describes (``ARCHITECTURE.md``, "The wire contract"): the views are plain
async functions, so there is nothing to introspect, and the NDJSON frames need schemas of their own anyway. The
streaming responses are described as what a client reads: a sequence of JSON objects, one per line, so
``application/x-ndjson`` carries an array schema of the frames (OpenAPI 3.1 has no item schema for sequential
media types). ``tests/test_openapi.py`` keeps the document and the URL conf in step and validates real streams
against the frame schemas; ``tests/test_fuzz.py`` runs Schemathesis against a real server with it.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from typing import Any

import orjson
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt

from myocr.http import ApiError, error_response
from ocr import events
from ocr.events import ErrorCode
from ocr.prompts import MAX_PROMPT_CHARS
from ocr.statuses import JobKind, JobStatus, PageStatus

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1.0.0"
NDJSON = "application/x-ndjson"
STORED_JOB_STATUSES = [status.value for status in JobStatus]
STORED_PAGE_STATUSES = [status.value for status in PageStatus]
KINDS = [kind.value for kind in JobKind]

# --- schema helpers ---------------------------------------------------------------------------------------


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: dict[str, Any], *, required: list[str] | None = None, description: str = "") -> dict[str, Any]:
    """An object schema; ``required`` defaults to every property. Frames and records may gain fields later
    (the contract allows new fields), so other properties are allowed."""
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
    }
    if description:
        schema["description"] = description
    return schema


def const(value: str) -> dict[str, str]:
    return {"type": "string", "const": value}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


COUNT = {"type": "integer", "minimum": 0}
TEXT = {"type": "string"}
FLAG = {"type": "boolean"}
UUID = {"type": "string", "format": "uuid"}
TIMESTAMP = {"type": "string", "format": "date-time"}
PAGE_NUMBER = {"type": "integer", "minimum": 1}
TEXT_LAYER = {
    "enum": ["auto", "ocr"],
    "description": (
        "PDFs, embedded engine: `auto` reads a page from its text layer when that is usable (the page's `page_end` "
        "then says `source: text_layer`), `ocr` OCRs every page. Absent: the server's OCR_PDF_TEXT_LAYER."
    ),
}


def from_event(cls: type, *, omit: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The schema of one of ``ocr.events``' ``TypedDict``s: each field's ``Schema``, a nested ``TypedDict`` as a
    reference to its component, ``Literal`` as ``const``; required as the class says; its docstring as the
    description."""
    properties = {name: field_schema(hint) for name, hint in events.fields(cls).items() if name not in omit}
    required = [name for name in events.required_fields(cls) if name not in omit]
    return obj(properties, required=required, description=inspect.cleandoc(cls.__doc__ or ""))


def field_schema(hint: Any) -> dict[str, Any]:
    origin = typing.get_origin(hint)
    if origin is typing.NotRequired:
        return field_schema(typing.get_args(hint)[0])
    if origin is typing.Annotated:
        return dict(next(meta for meta in hint.__metadata__ if isinstance(meta, events.Schema)))
    if origin is typing.Literal:
        (value,) = typing.get_args(hint)
        return const(value)
    if origin in (types.UnionType, typing.Union):
        present = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        (only,) = present
        return nullable(field_schema(only))
    if typing.is_typeddict(hint):
        return ref(hint.__name__)
    raise TypeError(f"no schema for {hint!r}: annotate the field with ocr.events.Schema")


def with_kind(schema: dict[str, Any], kind: str) -> dict[str, Any]:
    """A start frame's schema for the stream of one ``kind``."""
    return {**schema, "properties": {**schema["properties"], "kind": const(kind)}}


def schemas() -> dict[str, Any]:
    image_usage = from_event(events.PdfUsage, omit=events.IMAGE_USAGE_OMITTED)
    image_start = from_event(events.PdfStartFrame, omit=events.IMAGE_OMITTED[events.EventType.START])
    image_end = from_event(events.PdfEndFrame, omit=events.IMAGE_OMITTED[events.EventType.END])
    image_end["properties"]["usage"] = ref("ImageUsage")
    delta = from_event(events.PageDeltaFrame, omit=events.IMAGE_OMITTED[events.EventType.PAGE_DELTA])
    delta["properties"] = {"type": const(events.EventType.DELTA), **delta["properties"]}
    delta["required"] = ["type", *delta["required"]]
    return {
        "ErrorDetail": from_event(events.ErrorDetail),
        "Error": obj(
            {"error": ref("ErrorDetail")},
            description="Every failure before a stream starts, and every error of the other endpoints.",
        ),
        # --- NDJSON frames: generated from ``ocr.events`` ------------------------------------------------------
        "ImageUsage": image_usage,
        "PdfUsage": from_event(events.PdfUsage),
        "PageUsage": from_event(events.PageUsage),
        "ImageStartFrame": with_kind(image_start, JobKind.IMAGE),
        "DeltaFrame": {**delta, "description": "Recognised text, in order."},
        "ErrorFrame": from_event(events.ErrorFrame),
        "ImageEndFrame": {
            **image_end,
            "description": "Exactly one, always last. ``error`` is the first error of a job that did not succeed.",
        },
        "PdfStartFrame": with_kind(from_event(events.PdfStartFrame), JobKind.PDF),
        "PageStartFrame": from_event(events.PageStartFrame),
        "PageDeltaFrame": from_event(events.PageDeltaFrame),
        "PageEndFrame": from_event(events.PageEndFrame),
        "PdfEndFrame": from_event(events.PdfEndFrame),
        "ImageFrame": {
            "oneOf": [ref("ImageStartFrame"), ref("DeltaFrame"), ref("ErrorFrame"), ref("ImageEndFrame")],
            "description": "One line of the image stream.",
        },
        "PdfFrame": {
            "oneOf": [
                ref("PdfStartFrame"),
                ref("PageStartFrame"),
                ref("PageDeltaFrame"),
                ref("PageEndFrame"),
                ref("ErrorFrame"),
                ref("PdfEndFrame"),
            ],
            "description": "One line of the PDF stream; frames of different pages interleave.",
        },
        "ImageStream": {
            "type": "array",
            "items": ref("ImageFrame"),
            "minItems": 2,
            "description": "The NDJSON body as the sequence of its lines: start, deltas, (error,) end.",
        },
        "PdfStream": {
            "type": "array",
            "items": ref("PdfFrame"),
            "minItems": 2,
            "description": "The NDJSON body as the sequence of its lines: start, page frames, (error,) end.",
        },
        "OcrUpload": obj(
            {
                "file": {
                    "type": "string",
                    "format": "binary",
                    "description": "An image (PNG, JPEG, WebP, GIF, BMP, TIFF) or a PDF, recognised by its bytes.",
                },
                "prompt": {
                    "type": "string",
                    "maxLength": MAX_PROMPT_CHARS,
                    "description": "Empty: the server's LLM_PROMPT.",
                },
                "text_layer": TEXT_LAYER,
            },
            required=["file"],
        ),
        # --- stored jobs ------------------------------------------------------------------------------------
        "JobUsage": obj({**image_usage["properties"], "pages": COUNT}),
        "StoredPage": obj(
            {
                "page": PAGE_NUMBER,
                "status": {"enum": STORED_PAGE_STATUSES},
                "text": TEXT,
                "finish_reason": nullable(TEXT),
                "usage": ref("PageUsage"),
                "error": nullable(ref("ErrorDetail")),
                "width": nullable(COUNT),
                "height": nullable(COUNT),
                "layout": nullable({"type": "array", "items": {"type": "object"}}),
                "source": {"enum": ["ocr", "text_layer"]},
                "duration_ms": nullable(COUNT),
            }
        ),
        "JobSummary": obj(
            {
                "id": UUID,
                "kind": {"enum": KINDS},
                "status": {"enum": STORED_JOB_STATUSES},
                "source": {"enum": ["api", "web", "cli"]},
                "file_name": TEXT,
                "content_type": TEXT,
                "prompt": TEXT,
                "engine": TEXT,
                "model": TEXT,
                "pages": COUNT,
                "pages_done": COUNT,
                "pages_failed": COUNT,
                "created_at": TIMESTAMP,
                "finished_at": nullable(TIMESTAMP),
                "duration_ms": nullable(COUNT),
                "first_delta_ms": nullable(COUNT),
                "usage": ref("JobUsage"),
                "error": nullable(ref("ErrorDetail")),
            },
            description=(
                "A stored job (``queued``: waiting for a worker; ``interrupted``: the server stopped while it ran; "
                "usage is what was spent)."
            ),
        ),
        "Job": {
            "allOf": [
                ref("JobSummary"),
                obj(
                    {
                        "pages_detail": {"type": "array", "items": ref("StoredPage")},
                        "text": {"type": "string", "description": "The pages' text joined by blank lines."},
                        "webhook": nullable(ref("WebhookState")),
                    },
                    required=["pages_detail", "text"],
                ),
            ],
            "description": "A stored job with every page's text.",
        },
        **job_api_schemas(),
        # --- accounts ---------------------------------------------------------------------------------------
        "Credentials": obj(
            {
                "username": {"type": "string", "minLength": 1, "maxLength": 150},
                "password": {"type": "string", "minLength": 1},
                "email": {"type": "string"},
            },
            required=["username", "password"],
        ),
        "TokenRequest": obj(
            {
                "grant_type": {"enum": ["password"]},
                "username": {"type": "string", "minLength": 1},
                "password": {"type": "string", "minLength": 1},
            },
            required=["username", "password"],
            description="OAuth2 password grant.",
        ),
        "Token": obj(
            {
                "access_token": {"type": "string", "description": "Shown once; the server keeps only its digest."},
                "token_type": const("bearer"),
                "expires_in": COUNT,
                "expires_at": TIMESTAMP,
            }
        ),
        "User": obj(
            {
                "id": {"type": "integer"},
                "username": TEXT,
                "created_at": nullable(TIMESTAMP),
                "email": TEXT,
                "is_staff": FLAG,
                "date_joined": nullable(TIMESTAMP),
            }
        ),
        "Me": {
            "allOf": [ref("User"), obj({"auth_enabled": FLAG})],
            "description": "With ``AUTH_ENABLED=false`` every request is the shared ``anonymous`` user.",
        },
        "UsageEvent": obj(
            {
                "id": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": 2**53 - 1,
                    "description": "The original My OCR's integer id: the low 53 bits of ``job_id``.",
                },
                "meta": nullable({"type": "string", "description": "A JSON object: job id, file name, pages, status."}),
                "job_id": UUID,
                "kind": {"enum": KINDS},
                "status": {"enum": STORED_JOB_STATUSES},
                "created_at": TIMESTAMP,
                "file_name": TEXT,
                "engine": TEXT,
                "model": TEXT,
                "pages": COUNT,
                "input_bytes": COUNT,
                "prompt_tokens": COUNT,
                "completion_tokens": COUNT,
                "prompt_chars": COUNT,
                "completion_chars": COUNT,
                "estimated": FLAG,
                "duration_ms": nullable(COUNT),
            }
        ),
        "UsageSummary": obj(
            {
                "events": COUNT,
                "pages": COUNT,
                "pages_done": COUNT,
                "failed": COUNT,
                "input_bytes": COUNT,
                "prompt_tokens": COUNT,
                "completion_tokens": COUNT,
                "prompt_chars": COUNT,
                "completion_chars": COUNT,
                "total_tokens": COUNT,
                # The original My OCR's names.
                "total_events": COUNT,
                "total_input_bytes": COUNT,
                "total_prompt_tokens": COUNT,
                "total_completion_tokens": COUNT,
                "total_prompt_chars": COUNT,
                "total_completion_chars": COUNT,
            },
            description="Totals over all of the user's jobs, deleted, failed and cancelled ones included.",
        ),
    }


# --- operations -------------------------------------------------------------------------------------------

ERROR_STATUSES = {
    400: "Bad request: see ``error.code``.",
    401: "No valid bearer token (missing, unknown, expired or revoked).",
    403: "Forbidden.",
    404: "Not found (another user's job is not found either).",
    411: "A chunked upload: send it with a Content-Length.",
    413: "The upload is larger than OCR_MAX_UPLOAD_BYTES (refused from its Content-Length).",
    415: "Not an image or a PDF, or the other endpoint's kind.",
    422: "The input was understood but refused: see ``error.code``.",
    429: "A limit: too many jobs running, the daily page quota, or too many sign-in or registration attempts.",
    503: "No OCR engine is configured (`engine_not_configured`), or the job queue is down (`queue_unavailable`).",
}


def error(status: int, description: str | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description or ERROR_STATUSES[status],
        "content": {"application/json": {"schema": ref("Error")}},
    }
    if status == 429:
        response["headers"] = {
            "Retry-After": {
                "description": "Seconds until the request may succeed.",
                "schema": {"type": "integer", "minimum": 1},
                "required": True,
            }
        }
    if status == 401:
        response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}}
    return response


def errors(*statuses: int) -> dict[str, Any]:
    return {str(status): error(status) for status in statuses}


def json_ok(schema: dict[str, Any], description: str, status: int = 200) -> dict[str, Any]:
    return {str(status): {"description": description, "content": {"application/json": {"schema": schema}}}}


def ocr_operation(kind: str) -> dict[str, Any]:
    stream = "ImageStream" if kind == "image" else "PdfStream"
    frame = "ImageFrame" if kind == "image" else "PdfFrame"
    what = "an image" if kind == "image" else "a PDF (pages in parallel)"
    return {
        "operationId": f"ocr_{kind}",
        "tags": ["ocr"],
        "summary": f"Read {what}, streaming the text as NDJSON",
        "description": (
            "Answers `application/x-ndjson; charset=utf-8`: one JSON object per line, sent as soon as it is "
            f"produced (each line is a `{frame}`). Every stream that started ends with exactly one `end` frame"
            + (", and every `page_start` gets exactly one `page_end`" if kind == "pdf" else "")
            + ". Failures after the stream started are frames, not HTTP errors. A client that disconnects "
            "cancels the job (its usage so far is recorded)."
        ),
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": ref("OcrUpload")}},
        },
        "responses": {
            "200": {
                "description": "The stream of frames.",
                "headers": {"X-Job-Id": {"description": "The job's id.", "schema": UUID}},
                "content": {NDJSON: {"schema": ref(stream)}},
            },
            **errors(400, 401, 411, 413, 415, 422, 429, 503),
        },
    }


def job_api_schemas() -> dict[str, Any]:
    links = {
        "url": {"type": "string", "description": "The job: `GET /api/jobs/{job_id}`."},
        "events_url": {"type": "string", "description": "Its frames: `GET /api/jobs/{job_id}/events`."},
    }
    return {
        "JobBatch": obj(
            {
                "file": {
                    "type": "array",
                    "items": {"type": "string", "format": "binary"},
                    "description": "One or more files (`file` repeated), each an image or a PDF: one job each.",
                },
                "prompt": {"type": "string", "maxLength": MAX_PROMPT_CHARS},
                "text_layer": TEXT_LAYER,
                "callback_url": {
                    "type": "string",
                    "maxLength": 2000,
                    "description": (
                        "An http(s) URL that gets each job's JSON when it ends, signed (see `/api/users/me/webhook`); "
                        "loopback, private and link-local addresses are refused (`invalid_callback_url`)."
                    ),
                },
            },
            required=["file"],
        ),
        "WebhookSecret": obj(
            {
                "secret": {"type": "string"},
                "signature_header": {"type": "string", "description": "`t=<unix time>,v1=<hex HMAC-SHA256>`."},
            },
            description="The key of your webhooks' signatures: HMAC-SHA256 over `<t>.<raw body>`.",
        ),
        "WebhookState": obj(
            {
                "url": {"type": "string"},
                "state": {"enum": ["pending", "delivered", "failed"]},
                "attempts": COUNT,
                "last_status_code": nullable(COUNT),
            },
            description="How the job's latest webhook went.",
        ),
        "QueuedJob": obj(
            {
                "job_id": UUID,
                "status": {"enum": [JobStatus.QUEUED.value, JobStatus.RUNNING.value]},
                "kind": {"enum": KINDS},
                "file_name": TEXT,
                "pages": COUNT,
                **links,
            },
            description="A submitted job: `queued` for a worker (`running` at once on a server without a queue).",
        ),
        "QueuedJobs": obj({"jobs": {"type": "array", "items": ref("QueuedJob")}}),
        "JobPage": obj(
            {
                "jobs": {"type": "array", "items": ref("JobSummary")},
                "page": PAGE_NUMBER,
                "page_size": PAGE_NUMBER,
                "total": COUNT,
                "has_next": FLAG,
            },
            description="Your jobs, newest first, without their pages' text.",
        ),
        "JobAction": obj(
            {"job_id": UUID, "status": {"enum": STORED_JOB_STATUSES}, **links},
            description="What a cancel or retry did (``pages``: the pages that will run again).",
        ),
        "JobEvent": {
            "description": (
                "A frame of `/api/ocr/image` (image jobs) or `/api/ocr/pdf` (PDF jobs), plus `seq`: it increases "
                "along the stream and is the resume point of `?after=`. After a hand-over to another runner a "
                "running page starts again: its first delta carries `reset: true`."
            ),
            "allOf": [
                {"anyOf": [ref("ImageFrame"), ref("PdfFrame")]},
                obj({"seq": {"type": "integer", "minimum": 1}}),
            ],
        },
    }


def job_id_parameter() -> dict[str, Any]:
    return {"name": "job_id", "in": "path", "required": True, "schema": UUID, "description": "From `start`."}


def job_api_paths() -> dict[str, Any]:
    job_id = [job_id_parameter()]
    return {
        "/api/jobs": {
            "post": {
                "operationId": "job_submit",
                "tags": ["jobs"],
                "summary": "Submit files to read in the background; follow, poll or collect them later",
                "description": (
                    "Every file is checked before anything is kept: one bad file refuses the whole request, "
                    "naming it. `503 queue_unavailable`: the job queue could not take the jobs, nothing was kept."
                ),
                "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": ref("JobBatch")}}},
                "responses": {
                    **json_ok(ref("QueuedJobs"), "The jobs, one per file.", status=202),
                    **errors(400, 401, 411, 413, 415, 422, 429, 503),
                },
            },
            "get": {
                "operationId": "job_list",
                "tags": ["jobs"],
                "summary": "Your jobs, newest first",
                "parameters": [
                    {"name": "status", "in": "query", "schema": {"enum": STORED_JOB_STATUSES}},
                    {"name": "kind", "in": "query", "schema": {"enum": KINDS}},
                    {"name": "page", "in": "query", "schema": PAGE_NUMBER},
                    {"name": "page_size", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200}},
                ],
                "responses": {**json_ok(ref("JobPage"), "A page of jobs."), **errors(400, 401)},
            },
        },
        "/api/jobs/{job_id}": {
            "get": {
                "operationId": "job_detail",
                "tags": ["jobs"],
                "summary": "A stored job of yours, with every page's text",
                "parameters": job_id,
                "responses": {**json_ok(ref("Job"), "The job."), **errors(401, 404)},
            },
            "delete": {
                "operationId": "job_delete",
                "tags": ["jobs"],
                "summary": "Remove an ended job's text and file (its usage stays in the ledger)",
                "parameters": job_id,
                "responses": {
                    "204": {"description": "Removed."},
                    **errors(401, 404),
                    "409": error(409, "The job has not ended (`job_not_finished`): cancel it first."),
                },
            },
        },
        "/api/users/me/webhook": {
            "get": {
                "operationId": "my_webhook",
                "tags": ["jobs"],
                "summary": "The secret your webhooks are signed with",
                "responses": {**json_ok(ref("WebhookSecret"), "The secret."), **errors(401)},
            }
        },
        "/api/users/me/webhook/rotate": {
            "post": {
                "operationId": "my_webhook_rotate",
                "tags": ["jobs"],
                "summary": "Replace your webhook secret",
                "responses": {**json_ok(ref("WebhookSecret"), "The new secret."), **errors(401)},
            }
        },
        "/api/jobs/{job_id}/events": {
            "get": {
                "operationId": "job_events",
                "tags": ["jobs"],
                "summary": "The job's frames: the stored part first, then live until `end`",
                "parameters": [
                    *job_id,
                    {
                        "name": "after",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 0},
                        "description": "The `seq` of the last frame you have: the stream resumes after it.",
                    },
                ],
                "responses": {
                    "200": {
                        "description": "NDJSON frames; an empty line is a keep-alive.",
                        "content": {NDJSON: {"schema": {"type": "array", "items": ref("JobEvent")}}},
                    },
                    **errors(400, 401, 404),
                },
            }
        },
        "/api/jobs/{job_id}/cancel": {
            "post": {
                "operationId": "job_cancel",
                "tags": ["jobs"],
                "summary": "Cancel a job: a queued one ends at once, a running one within two seconds",
                "parameters": job_id,
                "responses": {
                    **json_ok(ref("JobAction"), "Cancelling.", status=202),
                    **errors(401, 404),
                    "409": error(409, "The job has already ended (`job_finished`)."),
                },
            }
        },
        "/api/jobs/{job_id}/retry": {
            "post": {
                "operationId": "job_retry",
                "tags": ["jobs"],
                "summary": "Run an ended job's failed, cut-off and cancelled pages again (the others are kept)",
                "parameters": job_id,
                "responses": {
                    **json_ok(ref("JobAction"), "Queued again.", status=202),
                    **errors(401, 404, 503),
                    "409": error(
                        409, "Not ended (`job_not_finished`), every page done (`nothing_to_retry`) or file gone."
                    ),
                },
            }
        },
        **{
            f"/api/jobs/{{job_id}}/result.{fmt}": {
                "get": {
                    "operationId": f"job_result_{fmt}",
                    "tags": ["jobs"],
                    "summary": f"The job's result as {label}",
                    "parameters": job_id,
                    "responses": {
                        "200": {"description": label, "content": {media: {"schema": schema}}},
                        **errors(401, 404),
                    },
                }
            }
            for fmt, label, media, schema in (
                ("md", "Markdown", "text/markdown", {"type": "string"}),
                ("txt", "plain text", "text/plain", {"type": "string"}),
                ("json", "JSON (the job with its pages)", "application/json", {"type": "string"}),
                (
                    "docx",
                    "a Word document (headings, paragraphs, lists and tables from the Markdown; a page per page)",
                    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                    {"type": "string", "format": "binary"},
                ),
            )
        },
        "/api/jobs/{job_id}/result.pdf": {
            "get": {
                "operationId": "job_result_pdf",
                "tags": ["jobs"],
                "summary": "The job's result as a searchable PDF",
                "description": (
                    "The uploaded pages (a PDF's own pages, not re-encoded; an image as one page) with the recognised "
                    "text as an invisible, selectable and searchable layer, placed on the recognised boxes (the "
                    "embedded engine's lines, DeepSeek-OCR's grounding blocks, or one block per page)."
                ),
                "parameters": job_id,
                "responses": {
                    "200": {
                        "description": "A PDF.",
                        "content": {"application/pdf": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    **errors(401, 404),
                    "409": error(
                        409, "The uploaded file was deleted, so there are no pages to put the text on (`upload_gone`)."
                    ),
                    "503": error(503, "The server has no font for the text layer (`pdf_font_missing`)."),
                },
            }
        },
    }


def paths() -> dict[str, Any]:
    public: list[dict[str, list[str]]] = []
    return {
        "/api/ocr/image": {"post": ocr_operation("image")},
        "/api/ocr/pdf": {"post": ocr_operation("pdf")},
        **job_api_paths(),
        "/api/auth/register": {
            "post": {
                "operationId": "register",
                "tags": ["accounts"],
                "summary": "Create an account (when REGISTRATION_OPEN)",
                "security": public,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": ref("Credentials")},
                        "application/x-www-form-urlencoded": {"schema": ref("Credentials")},
                    },
                },
                "responses": {
                    **json_ok(ref("User"), "The new account.", status=201),
                    **errors(400, 422, 429),
                    "403": error(403, "Registration is closed on this server (`registration_closed`)."),
                },
            }
        },
        "/api/auth/token": {
            "post": {
                "operationId": "issue_token",
                "tags": ["accounts"],
                "summary": "Sign in: a bearer token for ACCESS_TOKEN_EXPIRE_MINUTES",
                "security": public,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/x-www-form-urlencoded": {"schema": ref("TokenRequest")},
                        "application/json": {"schema": ref("TokenRequest")},
                    },
                },
                "responses": {
                    **json_ok(ref("Token"), "A new token."),
                    **errors(400, 422, 429),
                    "401": error(401, "Wrong user name or password (`invalid_credentials`)."),
                },
            }
        },
        "/api/users/me": {
            "get": {
                "operationId": "me",
                "tags": ["accounts"],
                "summary": "The account the token belongs to",
                "responses": {**json_ok(ref("Me"), "The account."), **errors(401)},
            }
        },
        "/api/users/me/usage": {
            "get": {
                "operationId": "my_usage",
                "tags": ["accounts"],
                "summary": "Your latest 200 jobs as usage records, newest first",
                "responses": {
                    **json_ok({"type": "array", "items": ref("UsageEvent"), "maxItems": 200}, "Usage records."),
                    **errors(401),
                },
            }
        },
        "/api/users/me/usage/summary": {
            "get": {
                "operationId": "my_usage_summary",
                "tags": ["accounts"],
                "summary": "Your usage totals",
                "responses": {**json_ok(ref("UsageSummary"), "Totals."), **errors(401)},
            }
        },
        "/api/metrics": {
            "get": {
                "operationId": "metrics",
                "tags": ["meta"],
                "summary": "Prometheus metrics (also at /metrics)",
                "description": "Needs `Authorization: Bearer <METRICS_TOKEN>` when METRICS_TOKEN is set, and a "
                "client address in METRICS_ALLOWED_IPS when that is set.",
                "security": [{}, {"metricsToken": []}],
                "responses": {
                    "200": {
                        "description": "The Prometheus text format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": error(401, "METRICS_TOKEN is set and the request does not carry it."),
                    "403": error(403, "The client address is not in METRICS_ALLOWED_IPS."),
                },
            }
        },
        "/api/openapi.json": {
            "get": {
                "operationId": "openapi",
                "tags": ["meta"],
                "summary": "This document",
                "security": public,
                "responses": json_ok({"type": "object", "required": ["openapi", "paths"]}, "OpenAPI 3.1."),
            }
        },
        "/api/docs": {
            "get": {
                "operationId": "docs",
                "tags": ["meta"],
                "summary": "This document as an interactive page",
                "security": public,
                "responses": {
                    "200": {"description": "An HTML page.", "content": {"text/html": {"schema": {"type": "string"}}}}
                },
            }
        },
    }


DESCRIPTION = """\
Read images and PDFs with DeepSeek-OCR (vLLM) or the embedded engine, streaming the text as NDJSON.

Authenticate with `Authorization: Bearer <token>`: a token from `POST /api/auth/token` or one created on the
"API tokens" page. The API never accepts the browser's session cookie.

Errors before a stream starts have the body `{"error": {"code": …, "message": …}}` and the status listed for each
operation; limits answer 429 with `Retry-After`.
"""


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI document (built once per process)."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "My OCR API",
            "version": API_VERSION,
            "description": DESCRIPTION,
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "tags": [
            {"name": "ocr", "description": "Streaming OCR."},
            {"name": "jobs", "description": "Stored results."},
            {"name": "accounts", "description": "Registration, tokens, identity and usage."},
            {"name": "meta", "description": "Metrics and this documentation."},
        ],
        "security": [{"bearerAuth": []}],
        "paths": paths(),
        "components": {
            "schemas": schemas(),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from /api/auth/token or the API tokens page (`mocr_…`).",
                },
                "metricsToken": {"type": "http", "scheme": "bearer", "description": "The server's METRICS_TOKEN."},
            },
        },
    }


@functools.cache
def document_bytes() -> bytes:
    return orjson.dumps(document())


@csrf_exempt  # read-only, and answers other methods with 405 rather than a CSRF failure
async def openapi_json(request: HttpRequest) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        return method_not_allowed()
    response = HttpResponse(document_bytes(), content_type="application/json")
    response["Cache-Control"] = "public, max-age=300"
    return response


@csrf_exempt
async def api_docs(request: HttpRequest) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        return method_not_allowed()
    return render(request, "api/docs.html")


def method_not_allowed() -> HttpResponse:
    return error_response(
        ApiError("Use GET.", code=ErrorCode.METHOD_NOT_ALLOWED, status=405, headers={"Allow": "GET, HEAD"})
    )
