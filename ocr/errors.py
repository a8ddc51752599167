"""Errors with a stable machine-readable code, a human message and, before a stream starts, an HTTP status.

The codes (``ocr.events.ErrorCode``) are part of the published API contract: scripts branch on them, so existing
codes never change meaning.
"""

from __future__ import annotations

from myocr.http import ApiError
from ocr.events import ErrorCode


class OcrError(ApiError):
    """A failure that is reported to the client as ``{"error": {"code": ..., "message": ...}}``."""


class IntakeError(OcrError):
    """The upload cannot be processed: wrong type, too large, corrupt, encrypted, empty…"""


class EngineNotConfigured(OcrError):
    status = 503
    code = ErrorCode.ENGINE_NOT_CONFIGURED


class QueueUnavailable(OcrError):
    """The task queue's broker could not take the job; nothing of it was kept."""

    status = 503
    code = ErrorCode.QUEUE_UNAVAILABLE


class EngineError(OcrError):
    """The engine failed on one page. ``code`` is one of ``ErrorCode``'s ``ENGINE_*``.

    ``transient`` marks a failure that may well not happen again (the engine unreachable or overloaded, a stream
    that broke off): the pipeline retries such a page a few times, with backoff, before it fails.
    """

    status = 502
    code = ErrorCode.ENGINE_ERROR

    def __init__(self, message: str, *, code: str | None = None, transient: bool = False) -> None:
        super().__init__(message, code=code)
        self.transient = transient
