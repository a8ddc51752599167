"""The job ledger: one ``OcrJob`` per upload, one ``OcrPage`` per page the engine worked on.

Usage figures live on these rows and are written on every path (done, partial, failed, cancelled,
interrupted), so the admin console and quotas read one consistent ledger.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django_prometheus.models import ExportModelOperationsMixin

# The status vocabulary lives in ocr/statuses.py (metrics, the OpenAPI document and the tests read it without the
# models); most callers import it from here, with the models.
from ocr import events
from ocr.statuses import JobKind, JobSource, JobStatus, PageStatus


def upload_path(job: OcrJob, filename: str) -> str:
    # The client's file name never reaches the file system: only the job's id and a known extension do.
    extension = {"application/pdf": ".pdf", "image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"}
    suffix = extension.get(job.content_type, ".bin")
    created = job.created_at or timezone.now()
    return f"uploads/{created:%Y/%m}/{job.id}{suffix}"


class UsageFields(models.Model):
    """Token and character counts; ``usage_estimated`` says the engine could not report real token counts."""

    prompt_tokens = models.PositiveIntegerField(_("prompt tokens"), default=0)
    completion_tokens = models.PositiveIntegerField(_("completion tokens"), default=0)
    completion_chars = models.PositiveIntegerField(_("completion characters"), default=0)
    usage_estimated = models.BooleanField(_("usage estimated"), default=False)

    class Meta:
        abstract = True


class OcrJob(ExportModelOperationsMixin("job"), UsageFields):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="ocr_jobs", verbose_name=_("owner")
    )
    kind = models.CharField(_("kind"), max_length=8, choices=JobKind.choices)
    source = models.CharField(_("source"), max_length=8, choices=JobSource.choices, default=JobSource.API)
    status = models.CharField(
        _("status"), max_length=16, choices=JobStatus.choices, default=JobStatus.RUNNING, db_index=True
    )
    file_name = models.CharField(_("file name"), max_length=255)
    content_type = models.CharField(_("detected type"), max_length=64)
    input_bytes = models.PositiveBigIntegerField(_("input bytes"), default=0)
    upload = models.FileField(_("uploaded file"), upload_to=upload_path, blank=True, max_length=255)
    prompt = models.TextField(_("prompt"), blank=True)
    prompt_chars = models.PositiveIntegerField(_("prompt characters"), default=0)
    engine = models.CharField(_("engine"), max_length=16)
    model = models.CharField(_("model"), max_length=200, blank=True)
    page_count = models.PositiveIntegerField(_("pages"), default=0)
    pages_done = models.PositiveIntegerField(_("pages done"), default=0)
    pages_failed = models.PositiveIntegerField(_("pages failed"), default=0)
    created_at = models.DateTimeField(_("created"), default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)
    first_delta_ms = models.PositiveIntegerField(_("time to first text (ms)"), null=True, blank=True)
    duration_ms = models.PositiveIntegerField(_("duration (ms)"), null=True, blank=True)
    error_code = models.CharField(_("error code"), max_length=64, blank=True)
    error_message = models.TextField(_("error"), blank=True)
    worker = models.CharField(
        _("worker"), max_length=128, blank=True, help_text=_("The server process that ran the job.")
    )
    deleted_at = models.DateTimeField(
        _("deleted"),
        null=True,
        blank=True,
        help_text=_("Removed from the owner's history: text and file are gone, the usage stays in the ledger."),
    )
    client_address = models.CharField(
        _("client address"),
        max_length=64,
        blank=True,
        default="",
        help_text=_("With authentication off: the address the job came from, which its limits are counted by."),
    )
    detached = models.BooleanField(
        _("detached"),
        default=False,
        help_text=_(
            "Runs apart from any request (browser uploads, the job API): a runner that dies hands it on to the "
            "next one, which runs the pages not stored yet."
        ),
    )
    cancel_requested_at = models.DateTimeField(_("cancel requested"), null=True, blank=True)
    upload_expired_at = models.DateTimeField(
        _("upload deleted"),
        null=True,
        blank=True,
        help_text=_("When the uploaded file was deleted after OCR_UPLOAD_RETENTION_DAYS (the text stays)."),
    )
    text_layer = models.CharField(
        _("text layer"),
        max_length=8,
        blank=True,
        help_text=_(
            "auto: PDF pages with a usable text layer are read from it; ocr: every page is OCRed; "
            "empty: the server's setting."
        ),
    )
    callback_url = models.CharField(
        _("callback URL"), max_length=2000, blank=True, help_text=_("Where the job's webhook goes when it ends.")
    )
    claimed_at = models.DateTimeField(
        _("taken"), null=True, blank=True, help_text=_("When the process in “worker” took the job (detached jobs).")
    )
    live_seq = models.PositiveBigIntegerField(
        _("stored up to event"),
        default=0,
        help_text=_("Live browser jobs: the stored pages reflect every event up to this sequence number."),
    )

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("OCR job")
        verbose_name_plural = _("OCR jobs")
        indexes = [
            models.Index(fields=["owner", "-created_at"], name="ocrjob_owner_created"),
            models.Index(fields=["status", "worker"], name="ocrjob_status_worker"),
            # A user's running jobs, counted by the per-user limit on every upload (accounts/limits.py).
            models.Index(fields=["owner", "status"], name="ocrjob_owner_status"),
            # With auth off, the anonymous user's limits count the jobs of one client address.
            models.Index(fields=["client_address", "created_at"], name="ocrjob_address_created"),
        ]

    def __str__(self) -> str:
        return f"{self.file_name} ({self.kind}, {self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in JobStatus.terminal()

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def usage(self) -> events.PdfUsage:
        """The job's usage as its ``end`` frame and its stored JSON say it."""
        return events.job_usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            prompt_chars=self.prompt_chars,
            completion_chars=self.completion_chars,
            input_bytes=self.input_bytes,
            pages=self.page_count,
            estimated=self.usage_estimated,
        )

    def error(self) -> events.ErrorDetail | None:
        return events.error_detail(self.error_code, self.error_message) if self.error_code else None


class OcrPage(ExportModelOperationsMixin("page"), UsageFields):
    job = models.ForeignKey(OcrJob, on_delete=models.CASCADE, related_name="pages", verbose_name=_("job"))
    number = models.PositiveIntegerField(_("page"))
    status = models.CharField(_("status"), max_length=16, choices=PageStatus.choices)
    text = models.TextField(_("text"), blank=True)
    text_seq = models.PositiveBigIntegerField(
        _("text up to event"),
        default=0,
        help_text=_("For a running page: the text is complete up to this event sequence number."),
    )
    finish_reason = models.CharField(_("finish reason"), max_length=16, blank=True)
    error_code = models.CharField(_("error code"), max_length=64, blank=True)
    error_message = models.TextField(_("error"), blank=True)
    width = models.PositiveIntegerField(_("width"), null=True, blank=True)
    height = models.PositiveIntegerField(_("height"), null=True, blank=True)
    source = models.CharField(
        _("read from"),
        max_length=16,
        choices=[("ocr", _("OCR")), ("text_layer", _("the PDF's text layer"))],
        default="ocr",
    )
    layout = models.JSONField(
        _("layout"),
        null=True,
        blank=True,
        help_text=_("Boxes the engine reported, in 0–999 page coordinates."),
    )
    started_at = models.DateTimeField(_("started"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)
    duration_ms = models.PositiveIntegerField(_("duration (ms)"), null=True, blank=True)
    runner = models.CharField(
        _("read by"),
        max_length=128,
        blank=True,
        help_text=_(
            "The process (host:pid) that read the page; for a running page of a job shared by several workers, "
            "the one that holds it."
        ),
    )

    class Meta:
        ordering = ["job", "number"]
        verbose_name = _("OCR page")
        verbose_name_plural = _("OCR pages")
        constraints = [models.UniqueConstraint(fields=["job", "number"], name="ocrpage_unique_number")]

    def __str__(self) -> str:
        return f"page {self.number} of {self.job_id}"

    def usage(self) -> events.PageUsage:
        """The page's usage as its ``page_end`` frame and its stored JSON say it."""
        return events.page_usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            completion_chars=self.completion_chars,
            estimated=self.usage_estimated,
        )

    def error(self) -> events.ErrorDetail | None:
        return events.error_detail(self.error_code, self.error_message) if self.error_code else None


class OcrJobEvents(models.Model):
    """A stretch of a detached job's event log: the frames its runner published from ``first_seq`` to
    ``last_seq``, stored about once a second with the partial text of its pages (``ocr/live.py``). The job API's
    ``GET /api/jobs/<id>/events`` replays it, so a client can resume after any frame (``?after=SEQ``)."""

    job = models.ForeignKey(OcrJob, on_delete=models.CASCADE, related_name="event_log", verbose_name=_("job"))
    first_seq = models.PositiveBigIntegerField(_("first event"))
    last_seq = models.PositiveBigIntegerField(_("last event"))
    frames = models.JSONField(_("frames"))

    class Meta:
        ordering = ["job", "first_seq"]
        verbose_name = _("job event log")
        verbose_name_plural = _("job event logs")
        constraints = [models.UniqueConstraint(fields=["job", "first_seq"], name="ocrjobevents_unique_first")]

    def __str__(self) -> str:
        return f"events {self.first_seq}–{self.last_seq} of {self.job_id}"


class WebhookSecret(models.Model):
    """The key a user's webhooks are signed with (HMAC-SHA256). Kept as it is: the receiver needs the same."""

    owner = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_secret", verbose_name=_("owner")
    )
    secret = models.CharField(_("secret"), max_length=100)
    created_at = models.DateTimeField(_("created"), default=timezone.now)
    rotated_at = models.DateTimeField(_("rotated"), null=True, blank=True)

    class Meta:
        verbose_name = _("webhook secret")
        verbose_name_plural = _("webhook secrets")

    def __str__(self) -> str:
        return f"webhook secret of {self.owner_id}"


class WebhookDelivery(models.Model):
    """The webhook of one end of a job (a job retried later ends again: a new delivery), and how it went."""

    class State(models.TextChoices):
        PENDING = "pending", _("Pending")
        DELIVERED = "delivered", _("Delivered")
        FAILED = "failed", _("Failed")

    job = models.ForeignKey(OcrJob, on_delete=models.CASCADE, related_name="webhooks", verbose_name=_("job"))
    job_finished_at = models.DateTimeField(_("job ended"))
    url = models.CharField(_("URL"), max_length=2000)
    state = models.CharField(_("state"), max_length=16, choices=State.choices, default=State.PENDING, db_index=True)
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    next_attempt_at = models.DateTimeField(_("next attempt"), db_index=True)
    last_status_code = models.PositiveIntegerField(_("last HTTP status"), null=True, blank=True)
    last_error = models.CharField(_("last error"), max_length=500, blank=True)
    created_at = models.DateTimeField(_("created"), default=timezone.now)
    delivered_at = models.DateTimeField(_("delivered"), null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("webhook delivery")
        verbose_name_plural = _("webhook deliveries")
        constraints = [
            models.UniqueConstraint(fields=["job", "job_finished_at"], name="webhookdelivery_one_per_job_end")
        ]

    def __str__(self) -> str:
        return f"webhook of {self.job_id} ({self.state})"


class WebhookAttempt(models.Model):
    delivery = models.ForeignKey(
        WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log", verbose_name=_("delivery")
    )
    at = models.DateTimeField(_("at"), default=timezone.now)
    status_code = models.PositiveIntegerField(_("HTTP status"), null=True, blank=True)
    error = models.CharField(_("error"), max_length=500, blank=True)
    duration_ms = models.PositiveIntegerField(_("duration (ms)"), default=0)

    class Meta:
        ordering = ["delivery", "at"]
        verbose_name = _("webhook attempt")
        verbose_name_plural = _("webhook attempts")

    def __str__(self) -> str:
        return f"attempt at {self.at:%Y-%m-%d %H:%M:%S}: {self.status_code or self.error}"


class Worker(models.Model):
    """A process that runs jobs (a server process, or ``manage.py ocr``), and when it last said it was alive.

    ``OcrJob.worker`` holds its ``id``. A process records a heartbeat every ``OCR_WORKER_HEARTBEAT_SECONDS``; the
    running jobs of a process that is gone are marked interrupted (see ``ocr/workers.py``).
    """

    id = models.CharField(_("id"), primary_key=True, max_length=128, help_text=_("host:pid, as in OcrJob.worker."))
    host = models.CharField(_("host"), max_length=255)
    pid = models.PositiveIntegerField(_("process id"))
    namespace = models.CharField(
        _("process namespace"),
        max_length=128,
        blank=True,
        help_text=_("Kernel boot and process-id namespace: processes with the same can check each other's pid."),
    )
    started_at = models.DateTimeField(_("started"))
    heartbeat_at = models.DateTimeField(_("last heartbeat"), db_index=True)

    class Meta:
        verbose_name = _("worker process")
        verbose_name_plural = _("worker processes")

    def __str__(self) -> str:
        return self.id


def pending_upload_path(pending: PendingUpload, filename: str) -> str:
    # As for jobs: the client's file name never reaches the file system.
    return f"pending/{pending.id}.bin"


class PendingUpload(models.Model):
    """A file the upload form's preview has checked, kept for a short while (``ocr/pending.py``) so that Start
    sends its id instead of the same bytes again, and so that a form refused for its prompt keeps the file."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="pending_uploads", verbose_name=_("owner")
    )
    client_address = models.CharField(
        _("client address"),
        max_length=64,
        blank=True,
        default="",
        help_text=_("With authentication off: the address of the client it belongs to."),
    )
    file_name = models.CharField(_("file name"), max_length=255)
    kind = models.CharField(_("kind"), max_length=8, choices=JobKind.choices)
    page_count = models.PositiveIntegerField(_("pages"), default=0)
    size = models.PositiveBigIntegerField(_("size"), default=0)
    data = models.FileField(_("file"), upload_to=pending_upload_path, max_length=255)
    created_at = models.DateTimeField(_("created"), default=timezone.now, db_index=True)
    claimed_at = models.DateTimeField(
        _("taken"), null=True, blank=True, help_text=_("When a job submission took it (it is used once).")
    )

    class Meta:
        ordering = ["created_at"]
        verbose_name = _("pending upload")
        verbose_name_plural = _("pending uploads")
        indexes = [models.Index(fields=["owner", "created_at"], name="pendingupload_owner_created")]

    def __str__(self) -> str:
        return f"{self.file_name} (pending)"
