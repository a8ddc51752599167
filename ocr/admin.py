from django.contrib import admin

from ocr.models import OcrJob, OcrPage

USAGE_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "prompt_chars",
    "completion_chars",
    "input_bytes",
    "usage_estimated",
)


class OcrPageInline(admin.TabularInline):
    model = OcrPage
    extra = 0
    can_delete = False
    fields = ("number", "status", "finish_reason", "prompt_tokens", "completion_tokens", "error_code")
    readonly_fields = fields
    show_change_link = True


@admin.register(OcrJob)
class OcrJobAdmin(admin.ModelAdmin):
    list_display = (
        "created_at",
        "owner",
        "kind",
        "status",
        "file_name",
        "page_count",
        "prompt_tokens",
        "completion_tokens",
        "engine",
        "duration_ms",
    )
    list_filter = ("status", "kind", "engine", "source", "created_at")
    search_fields = ("file_name", "owner__username", "id", "error_code")
    date_hierarchy = "created_at"
    readonly_fields = (
        *USAGE_FIELDS,
        "id",
        "created_at",
        "finished_at",
        "duration_ms",
        "first_delta_ms",
        "worker",
    )
    raw_id_fields = ("owner",)
    inlines = [OcrPageInline]


@admin.register(OcrPage)
class OcrPageAdmin(admin.ModelAdmin):
    list_display = ("job", "number", "status", "finish_reason", "prompt_tokens", "completion_tokens")
    list_filter = ("status", "finish_reason")
    search_fields = ("job__id", "job__file_name", "text")
    readonly_fields = ("prompt_tokens", "completion_tokens", "completion_chars", "usage_estimated")
    raw_id_fields = ("job",)
