"""The status vocabulary of jobs and pages, in one place: the ledger's choices (``ocr/models.py``), the frames'
``status`` fields, the metrics' labels, the OpenAPI document's enums and the tests all read it from here. Plain
enumerations, importable before Django's apps are loaded."""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _


class JobKind(models.TextChoices):
    IMAGE = "image", _("Image")
    PDF = "pdf", _("PDF")


class JobStatus(models.TextChoices):
    QUEUED = "queued", _("Queued")
    RUNNING = "running", _("Running")
    DONE = "done", _("Done")
    PARTIAL = "partial", _("Partial")
    FAILED = "failed", _("Failed")
    CANCELLED = "cancelled", _("Cancelled")
    INTERRUPTED = "interrupted", _("Interrupted")

    @classmethod
    def terminal(cls) -> frozenset[str]:
        return frozenset({cls.DONE, cls.PARTIAL, cls.FAILED, cls.CANCELLED, cls.INTERRUPTED})

    @classmethod
    def open(cls) -> frozenset[str]:
        """Not ended yet: waiting for a runner, or being run."""
        return frozenset({cls.QUEUED, cls.RUNNING})

    @classmethod
    def run_endings(cls) -> tuple[str, ...]:
        """How a run ends, as its ``end`` frame says (``interrupted`` is only written by recovery)."""
        return (cls.DONE, cls.PARTIAL, cls.FAILED, cls.CANCELLED)


class PageStatus(models.TextChoices):
    RUNNING = "running", _("Running")
    DONE = "done", _("Done")
    TRUNCATED = "truncated", _("Cut off")
    FAILED = "failed", _("Failed")
    CANCELLED = "cancelled", _("Cancelled")

    @classmethod
    def final(cls) -> tuple[str, ...]:
        """How a page ends (``page_end``'s status)."""
        return (cls.DONE, cls.TRUNCATED, cls.FAILED, cls.CANCELLED)


class JobSource(models.TextChoices):
    API = "api", _("API")
    WEB = "web", _("Web")
    CLI = "cli", _("Command line")
