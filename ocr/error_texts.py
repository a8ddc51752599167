"""The error codes people meet in the browser, explained in their language: one table for the upload form, the
per-user limits and the job page. The API keeps the server's English ``message`` beside the stable ``code``
(``ocr.events.ErrorCode``); a code without an entry here shows that message."""

from __future__ import annotations

from django.template.defaultfilters import filesizeformat
from django.utils.translation import gettext as _

from accounts.limits import LimitExceeded
from ocr.config import ocr_config
from ocr.errors import OcrError
from ocr.events import ErrorCode


def _texts() -> dict[str, str]:
    # Built per call: the texts are translated into the active language, and two quote the server's limits.
    config = ocr_config()
    return {
        # The upload
        ErrorCode.EMPTY_FILE: _("The file is empty."),
        ErrorCode.FILE_TOO_LARGE: _("The file is larger than the limit of %(limit)s.")
        % {"limit": filesizeformat(config.max_upload_bytes)},
        ErrorCode.UNSUPPORTED_TYPE: _(
            "This is not a supported file. Upload a PNG, JPEG, WebP, GIF, BMP or TIFF image, or a PDF."
        ),
        ErrorCode.CORRUPT_FILE: _("The file is damaged and cannot be read."),
        ErrorCode.IMAGE_TOO_LARGE: _("The image has too many pixels."),
        ErrorCode.BAD_DIMENSIONS: _("The image is too small, too large or too narrow."),
        ErrorCode.ENCRYPTED_PDF: _("The PDF is protected by a password; remove the password and upload it again."),
        ErrorCode.EMPTY_PDF: _("The PDF has no pages."),
        ErrorCode.TOO_MANY_PAGES: _("The PDF has more pages than allowed (%(limit)s).")
        % {"limit": config.max_pdf_pages},
        # The server
        ErrorCode.ENGINE_NOT_CONFIGURED: _("No OCR engine is configured on this server."),
        ErrorCode.QUEUE_UNAVAILABLE: _(
            "The job queue is not available right now; nothing was kept. Try again in a moment."
        ),
        ErrorCode.INTERNAL_ERROR: _("Something went wrong on the server."),
        # Per-user limits
        ErrorCode.TOO_MANY_JOBS: _(
            "You have too many jobs running at once. Wait for one of them to end, then try again."
        ),
        ErrorCode.DAILY_QUOTA_EXCEEDED: _("You have used your pages for today. The quota starts again at midnight."),
        # A page or a job
        ErrorCode.CANCELLED: _("Cancelled."),
        ErrorCode.INTERRUPTED: _("The server stopped while this job was running."),
        ErrorCode.ENGINE_UNAVAILABLE: _("The OCR engine is not reachable."),
        ErrorCode.ENGINE_TIMEOUT: _("The OCR engine took too long to answer."),
        ErrorCode.ENGINE_CUT_OFF: _("The engine stopped at its length limit: the text of this page is incomplete."),
        ErrorCode.RENDER_FAILED: _("This page could not be rendered."),
    }


def error_text(code: str, message: str) -> str:
    """``code`` explained in the active language, or ``message`` when it has no explanation."""
    return _texts().get(code, message)


def intake_message(error: OcrError) -> str:
    """The upload's refusal in the user's language."""
    return error_text(error.code, error.message)


def limit_message(error: LimitExceeded) -> str:
    """A per-user limit's refusal in the user's language. ``too_many_pages`` here is the daily quota's."""
    if error.code == ErrorCode.TOO_MANY_PAGES:
        return _("This document has more pages than your daily quota.")
    return error_text(error.code, error.message)
