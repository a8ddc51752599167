"""The operators' console for the job ledger: jobs and pages with filters, read-only usage, CSV export."""

from __future__ import annotations

import csv
from collections.abc import Iterable

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from ocr.models import OcrJob, OcrPage, PendingUpload, WebhookAttempt, WebhookDelivery
from ocr.pending import delete_pending

USAGE_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "prompt_chars",
    "completion_chars",
    "input_bytes",
    "usage_estimated",
)
CSV_COLUMNS = (
    "created_at",
    "id",
    "owner",
    "kind",
    "source",
    "status",
    "engine",
    "model",
    "page_count",
    "pages_done",
    "pages_failed",
    "input_bytes",
    "prompt_tokens",
    "completion_tokens",
    "prompt_chars",
    "completion_chars",
    "usage_estimated",
    "duration_ms",
    "deleted_at",
)


def usage_csv(jobs: Iterable[OcrJob], *, filename: str) -> HttpResponse:
    """The usage ledger rows of ``jobs`` as a CSV download (one row per job)."""
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    writer = csv.writer(response)
    writer.writerow(CSV_COLUMNS)
    for job in jobs:
        row = []
        for column in CSV_COLUMNS:
            value = job.owner.get_username() if column == "owner" else getattr(job, column)
            row.append("" if value is None else (value.isoformat() if hasattr(value, "isoformat") else value))
        writer.writerow(row)
    return response


class OcrPageInline(admin.TabularInline):
    model = OcrPage
    extra = 0
    can_delete = False
    fields = (
        "number",
        "status",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "completion_chars",
        "error_code",
        "runner",
    )
    readonly_fields = fields
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(OcrJob)
class OcrJobAdmin(admin.ModelAdmin):
    list_display = (
        "created_at",
        "owner",
        "file_name",
        "kind",
        "status",
        "engine",
        "page_count",
        "prompt_tokens",
        "completion_tokens",
        "input_bytes",
        "duration_ms",
    )
    list_filter = (
        "status",
        "kind",
        "engine",
        "source",
        "created_at",
        ("owner", admin.RelatedOnlyFieldListFilter),
        ("deleted_at", admin.EmptyFieldListFilter),
    )
    list_select_related = ("owner",)
    search_fields = ("file_name", "owner__username", "=id", "error_code", "model")
    date_hierarchy = "created_at"
    readonly_fields = (
        *USAGE_FIELDS,
        "id",
        "owner",
        "kind",
        "source",
        "status",
        "file_name",
        "content_type",
        "upload",
        "prompt",
        "engine",
        "model",
        "page_count",
        "pages_done",
        "pages_failed",
        "created_at",
        "finished_at",
        "duration_ms",
        "first_delta_ms",
        "error_code",
        "error_message",
        "worker",
        "live_seq",
        "deleted_at",
    )
    fieldsets = (
        (None, {"fields": ("id", "owner", "file_name", "kind", "source", "status", "created_at", "finished_at")}),
        (_("Request"), {"fields": ("content_type", "upload", "prompt", "engine", "model", "worker")}),
        (_("Usage"), {"fields": (*USAGE_FIELDS, "page_count", "pages_done", "pages_failed")}),
        (_("Timing and errors"), {"fields": ("duration_ms", "first_delta_ms", "error_code", "error_message")}),
        (_("Live state"), {"fields": ("live_seq", "deleted_at"), "classes": ("collapse",)}),
    )
    inlines = [OcrPageInline]
    actions = ["export_usage_csv"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # jobs are created by uploads, never by hand

    @admin.action(description=_("Export the usage of the selected jobs as CSV"))
    def export_usage_csv(self, request: HttpRequest, queryset: QuerySet[OcrJob]) -> HttpResponse:
        jobs = queryset.select_related("owner").order_by("created_at")
        return usage_csv(jobs.iterator(), filename=f"ocr-usage-{timezone.localdate():%Y%m%d}.csv")


@admin.register(OcrPage)
class OcrPageAdmin(admin.ModelAdmin):
    list_display = ("job", "number", "status", "finish_reason", "prompt_tokens", "completion_tokens", "duration_ms")
    list_filter = (
        "status",
        "finish_reason",
        "job__kind",
        "job__engine",
        "job__created_at",
        ("job__owner", admin.RelatedOnlyFieldListFilter),
    )
    list_select_related = ("job",)
    search_fields = ("=job__id", "job__file_name", "job__owner__username", "error_code")
    readonly_fields = tuple(field.name for field in OcrPage._meta.fields)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


class WebhookAttemptInline(admin.TabularInline):
    model = WebhookAttempt
    extra = 0
    can_delete = False
    readonly_fields = ("at", "status_code", "error", "duration_ms")
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    """Every webhook sent and each of its attempts: the operators' answer to "did my callback arrive?"."""

    list_display = ("job", "url", "state", "attempts", "last_status_code", "created_at", "delivered_at")
    list_filter = ("state", "created_at")
    list_select_related = ("job",)
    search_fields = ("=job__id", "url", "job__owner__username")
    readonly_fields = tuple(field.name for field in WebhookDelivery._meta.fields)
    inlines = [WebhookAttemptInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(PendingUpload)
class PendingUploadAdmin(admin.ModelAdmin):
    """Files the upload form has checked and keeps for an hour until Start (``ocr/pending.py``). Read-only; deleting
    one deletes its file too."""

    list_display = ("file_name", "owner", "kind", "page_count", "size", "created_at", "claimed_at")
    list_filter = ("kind", "created_at", ("owner", admin.RelatedOnlyFieldListFilter))
    list_select_related = ("owner",)
    search_fields = ("file_name", "owner__username", "=id")
    readonly_fields = tuple(field.name for field in PendingUpload._meta.fields)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def delete_model(self, request: HttpRequest, obj: PendingUpload) -> None:
        delete_pending(PendingUpload.objects.filter(pk=obj.pk))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[PendingUpload]) -> None:
        delete_pending(queryset)
