"""Errors with a stable machine-readable code, a human message and, before a stream starts, an HTTP status.

The codes are part of the published API contract: scripts branch on them, so existing codes never change
meaning.
"""

from __future__ import annotations

from myocr.http import ApiError


class OcrError(ApiError):
    """A failure that is reported to the client as ``{"error": {"code": ..., "message": ...}}``."""


class IntakeError(OcrError):
    """The upload cannot be processed: wrong type, too large, corrupt, encrypted, empty…"""


class EngineNotConfigured(OcrError):
    status = 503
    code = "engine_not_configured"


class QueueUnavailable(OcrError):
    """The task queue's broker could not take the job; nothing of it was kept."""

    status = 503
    code = "queue_unavailable"


class EngineError(OcrError):
    """The engine failed on one page. ``code`` is one of the ``ENGINE_*`` codes below.

    ``transient`` marks a failure that may well not happen again (the engine unreachable or overloaded, a stream
    that broke off): the pipeline retries such a page a few times, with backoff, before it fails.
    """

    status = 502
    code = "engine_error"

    def __init__(self, message: str, *, code: str | None = None, transient: bool = False) -> None:
        super().__init__(message, code=code)
        self.transient = transient


ENGINE_UNAVAILABLE = "engine_unavailable"  # cannot connect, or the engine says it is not ready (503)
ENGINE_TIMEOUT = "engine_timeout"  # no first token, no next token, or no end within the configured time
ENGINE_BAD_REQUEST = "engine_bad_request"  # the engine refused the request (4xx)
ENGINE_ERROR = "engine_error"  # 5xx, an error inside the stream, a dropped connection, a malformed stream
ENGINE_CUT_OFF = "engine_cut_off"  # finish_reason "length": the text is incomplete (token budget or a loop)
CANCELLED = "cancelled"  # the client went away, or the owner cancelled the job
INTERRUPTED = "interrupted"  # the server stopped while the job ran
