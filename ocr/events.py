"""The wire contract in one place: the frames a job streams, their fields, and the error codes.

A job speaks in six events, in the vocabulary of the PDF stream (``ARCHITECTURE.md``): ``start``, then for each
page ``page_start``, zero or more ``page_delta`` and one ``page_end``, an ``error`` when the job failed as a whole,
and always one ``end`` last. Each event's fields are a ``TypedDict`` below, each field carrying the JSON Schema the
OpenAPI document shows for it (``myocr/openapi.py`` generates the frame schemas from these classes), and each event
has one constructor. An image job's stream is the same events seen through ``image_frame``: no page frames, the
deltas without a page number, no page counts.

A new frame field is added to its class and its constructor here; a new error code to ``ErrorCode``. Nothing else
needs to know.
"""

from __future__ import annotations

import typing
from enum import StrEnum
from typing import Annotated, Any, Literal, NotRequired, TypedDict

from ocr.statuses import JobKind, JobStatus, PageStatus

Event = dict[str, Any]


class Schema(dict[str, Any]):
    """A field's JSON Schema, as the OpenAPI document shows it."""

    def __hash__(self) -> int:  # typing hashes ``Annotated`` metadata; each schema is its own
        return id(self)


class EventType(StrEnum):
    START = "start"
    PAGE_START = "page_start"
    PAGE_DELTA = "page_delta"
    PAGE_END = "page_end"
    ERROR = "error"
    END = "end"
    DELTA = "delta"  # an image job's ``page_delta``

    @classmethod
    def page_events(cls) -> frozenset[str]:
        return frozenset({cls.PAGE_START, cls.PAGE_DELTA, cls.PAGE_END})


class ErrorCode(StrEnum):
    """Every machine-readable error code the server answers with. Published: scripts branch on them, so a code
    never changes meaning; new ones may appear."""

    # The request
    BAD_REQUEST = "bad_request"
    REQUEST_TOO_LARGE = "request_too_large"
    TOO_MANY_FIELDS = "too_many_fields"
    FORBIDDEN = "forbidden"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    NOT_FOUND = "not_found"
    INVALID_JSON = "invalid_json"
    INVALID_REQUEST = "invalid_request"
    INVALID_FILTER = "invalid_filter"
    INVALID_PROMPT = "invalid_prompt"
    INVALID_TEXT_LAYER = "invalid_text_layer"
    INVALID_CALLBACK_URL = "invalid_callback_url"
    MISSING_FILE = "missing_file"
    TOO_MANY_FILES = "too_many_files"
    # Accounts
    NOT_AUTHENTICATED = "not_authenticated"
    INVALID_CREDENTIALS = "invalid_credentials"
    UNSUPPORTED_GRANT_TYPE = "unsupported_grant_type"
    REGISTRATION_CLOSED = "registration_closed"
    INVALID_REGISTRATION = "invalid_registration"
    TOO_MANY_ATTEMPTS = "too_many_attempts"
    # Per-user limits
    TOO_MANY_JOBS = "too_many_jobs"
    DAILY_QUOTA_EXCEEDED = "daily_quota_exceeded"
    # The upload (``too_many_pages`` is also the daily quota's: a document with more pages than it allows)
    EMPTY_FILE = "empty_file"
    FILE_TOO_LARGE = "file_too_large"
    UNSUPPORTED_TYPE = "unsupported_type"
    WRONG_KIND = "wrong_kind"
    CORRUPT_FILE = "corrupt_file"
    BAD_DIMENSIONS = "bad_dimensions"
    IMAGE_TOO_LARGE = "image_too_large"
    ENCRYPTED_PDF = "encrypted_pdf"
    EMPTY_PDF = "empty_pdf"
    TOO_MANY_PAGES = "too_many_pages"
    # Stored jobs
    JOB_FINISHED = "job_finished"
    JOB_NOT_FINISHED = "job_not_finished"
    UPLOAD_GONE = "upload_gone"
    UPLOAD_UNREADABLE = "upload_unreadable"
    PENDING_UPLOAD_GONE = "pending_upload_gone"  # the page form named a checked upload no longer kept
    NOTHING_TO_RETRY = "nothing_to_retry"
    PDF_FONT_MISSING = "pdf_font_missing"
    # The server
    ENGINE_NOT_CONFIGURED = "engine_not_configured"
    QUEUE_UNAVAILABLE = "queue_unavailable"
    INTERNAL_ERROR = "internal_error"
    # A page or a job, in the stream
    ENGINE_UNAVAILABLE = "engine_unavailable"  # cannot connect, or the engine says it is not ready (503)
    ENGINE_TIMEOUT = "engine_timeout"  # no first token, no next token, or no end within the configured time
    ENGINE_BAD_REQUEST = "engine_bad_request"  # the engine refused the request (4xx)
    ENGINE_ERROR = "engine_error"  # 5xx, an error inside the stream, a dropped connection, a malformed stream
    ENGINE_CUT_OFF = "engine_cut_off"  # finish_reason "length": the text is incomplete (token budget or a loop)
    RENDER_FAILED = "render_failed"  # the PDF page could not be rendered to an image
    CANCELLED = "cancelled"  # the client went away, or the owner cancelled the job
    INTERRUPTED = "interrupted"  # the server stopped while the job ran

    @classmethod
    def page_errors(cls) -> tuple[str, ...]:
        """The codes a page can fail with (besides being cancelled)."""
        return (
            cls.ENGINE_UNAVAILABLE,
            cls.ENGINE_TIMEOUT,
            cls.ENGINE_BAD_REQUEST,
            cls.ENGINE_ERROR,
            cls.ENGINE_CUT_OFF,
            cls.RENDER_FAILED,
            cls.INTERNAL_ERROR,
        )


# --- field schemas ----------------------------------------------------------------------------------------------

Count = Annotated[int, Schema(type="integer", minimum=0)]
PageNumber = Annotated[int, Schema(type="integer", minimum=1)]
Text = Annotated[str, Schema(type="string")]
Uuid = Annotated[str, Schema(type="string", format="uuid")]
Flag = Annotated[bool, Schema(type="boolean")]
Reset = Annotated[
    bool,
    Schema(
        type="boolean",
        const=True,
        description="Present (true) when this text replaces the page's text so far instead of following it.",
    ),
]
Estimated = Annotated[
    bool,
    Schema(
        type="boolean",
        description="The engine reported no token counts (the embedded engine): token figures are estimates.",
    ),
]


class ErrorDetail(TypedDict):
    code: Annotated[str, Schema(type="string", description="Stable, machine-readable; scripts branch on it.")]
    message: Annotated[str, Schema(type="string", description="For people; may change.")]


class PageUsage(TypedDict):
    prompt_tokens: Count
    completion_tokens: Count
    completion_chars: Count
    estimated: NotRequired[Flag]


class PdfUsage(TypedDict):
    prompt_tokens: Count
    completion_tokens: Count
    prompt_chars: Count
    completion_chars: Count
    input_bytes: Count
    estimated: NotRequired[Estimated]
    pages: PageNumber


class PdfStartFrame(TypedDict):
    type: Literal["start"]
    kind: Annotated[str, Schema(enum=[kind.value for kind in JobKind])]
    job_id: Uuid
    pages: PageNumber
    file_name: NotRequired[Text]
    input_bytes: NotRequired[Count]
    engine: NotRequired[Annotated[str, Schema(type="string", examples=["openai", "local"])]]
    model: NotRequired[Text]


class PageStartFrame(TypedDict):
    type: Literal["page_start"]
    page: PageNumber


class PageDeltaFrame(TypedDict):
    type: Literal["page_delta"]
    page: PageNumber
    delta: Text
    reset: NotRequired[Reset]


class PageEndFrame(TypedDict):
    """Exactly one per page_start; a failed or cut-off page's carries ``error``."""

    type: Literal["page_end"]
    page: PageNumber
    status: Annotated[str, Schema(enum=list(PageStatus.final()))]
    usage: PageUsage
    finish_reason: NotRequired[
        Annotated[
            str | None,
            Schema(
                anyOf=[{"type": "string"}, {"type": "null"}],
                description="The engine's: ``stop``, or ``length`` (cut off at the token limit).",
            ),
        ]
    ]
    elapsed_ms: NotRequired[Count | None]
    error: NotRequired[ErrorDetail]
    layout: NotRequired[
        Annotated[
            list[dict[str, Any]],
            Schema(type="array", items={"type": "object"}, description="Boxes, 0–999 coordinates."),
        ]
    ]
    source: NotRequired[
        Annotated[
            str,
            Schema(
                enum=["text_layer"],
                description="Present when the page was read from the PDF's own text layer, not OCRed.",
            ),
        ]
    ]


class ErrorFrame(TypedDict):
    """A job that failed as a whole sends one right before its end frame."""

    type: Literal["error"]
    error: ErrorDetail


class PdfEndFrame(TypedDict):
    """Exactly one, always last."""

    type: Literal["end"]
    status: Annotated[str, Schema(enum=list(JobStatus.run_endings()))]
    job_id: Uuid
    usage: PdfUsage
    pages_done: Count
    pages_failed: Count
    elapsed_ms: NotRequired[Count]
    error: NotRequired[ErrorDetail]


#: Each event's fields (a PDF job's; an image job's are ``image_frame``'s view of them).
FRAMES: dict[str, type] = {
    EventType.START: PdfStartFrame,
    EventType.PAGE_START: PageStartFrame,
    EventType.PAGE_DELTA: PageDeltaFrame,
    EventType.PAGE_END: PageEndFrame,
    EventType.ERROR: ErrorFrame,
    EventType.END: PdfEndFrame,
}


def fields(frame: type) -> dict[str, Any]:
    """A frame class's fields and their annotations (``Schema`` in ``Annotated``, ``NotRequired`` kept)."""
    return typing.get_type_hints(frame, include_extras=True)


def required_fields(frame: type) -> tuple[str, ...]:
    # Read from the hints: with postponed annotations ``__required_keys__`` cannot see ``NotRequired``.
    return tuple(name for name, hint in fields(frame).items() if typing.get_origin(hint) is not NotRequired)


# An image job's frames: its events without what only documents have (``image_frame``).
IMAGE_OMITTED: dict[str, frozenset[str]] = {
    EventType.START: frozenset({"pages"}),
    EventType.PAGE_DELTA: frozenset({"type", "page"}),
    EventType.END: frozenset({"pages_done", "pages_failed"}),
}
IMAGE_USAGE_OMITTED = frozenset({"pages"})
IMAGE_HIDDEN = frozenset({EventType.PAGE_START, EventType.PAGE_END})


# --- constructors -------------------------------------------------------------------------------------------


def error_detail(code: str, message: str) -> ErrorDetail:
    return {"code": str(code), "message": message}


def start(
    *, kind: str, job_id: str, pages: int, file_name: str, input_bytes: int, engine: str, model: str
) -> PdfStartFrame:
    return {
        "type": "start",
        "kind": str(kind),
        "job_id": job_id,
        "pages": pages,
        "file_name": file_name,
        "input_bytes": input_bytes,
        "engine": engine,
        "model": model,
    }


def page_start(page: int) -> PageStartFrame:
    return {"type": "page_start", "page": page}


def page_delta(page: int, delta: str, *, reset: bool = False) -> PageDeltaFrame:
    event: PageDeltaFrame = {"type": "page_delta", "page": page, "delta": delta}
    if reset:
        event["reset"] = True
    return event


def page_usage(*, prompt_tokens: int, completion_tokens: int, completion_chars: int, estimated: bool) -> PageUsage:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "completion_chars": completion_chars,
        "estimated": estimated,
    }


def page_end(
    *,
    page: int,
    status: str,
    usage: PageUsage,
    finish_reason: str | None,
    elapsed_ms: int | None,
    error: ErrorDetail | None = None,
    layout: list[dict[str, Any]] | None = None,
    from_text_layer: bool = False,
) -> PageEndFrame:
    event: PageEndFrame = {
        "type": "page_end",
        "page": page,
        "status": str(status),
        "usage": usage,
        "finish_reason": finish_reason or None,
        "elapsed_ms": elapsed_ms,
    }
    if error is not None:
        event["error"] = error
    if layout:
        event["layout"] = layout
    if from_text_layer:
        event["source"] = "text_layer"
    return event


def error(code: str, message: str) -> ErrorFrame:
    return {"type": "error", "error": error_detail(code, message)}


def job_usage(
    *,
    prompt_tokens: int,
    completion_tokens: int,
    prompt_chars: int,
    completion_chars: int,
    input_bytes: int,
    pages: int,
    estimated: bool,
) -> PdfUsage:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "prompt_chars": prompt_chars,
        "completion_chars": completion_chars,
        "input_bytes": input_bytes,
        "pages": pages,
        "estimated": estimated,
    }


def end(
    *,
    status: str,
    job_id: str,
    usage: PdfUsage,
    pages_done: int,
    pages_failed: int,
    elapsed_ms: int,
    error: ErrorDetail | None = None,
) -> PdfEndFrame:
    event: PdfEndFrame = {
        "type": "end",
        "status": str(status),
        "job_id": job_id,
        "usage": usage,
        "pages_done": pages_done,
        "pages_failed": pages_failed,
        "elapsed_ms": elapsed_ms,
    }
    if error is not None:
        event["error"] = error
    return event


def image_frame(event: Event) -> Event | None:
    """What a client of ``/api/ocr/image`` sees of ``event``, or ``None`` when an image job has no such frame."""
    event_type = event["type"]
    if event_type in IMAGE_HIDDEN:
        return None
    omitted = IMAGE_OMITTED.get(event_type)
    if omitted is None:
        return event
    frame = {key: value for key, value in event.items() if key not in omitted}
    if event_type == EventType.PAGE_DELTA:
        return {"type": EventType.DELTA.value, **frame}
    if event_type == EventType.END:
        frame["usage"] = {key: value for key, value in event["usage"].items() if key not in IMAGE_USAGE_OMITTED}
    return frame
