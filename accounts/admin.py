"""Accounts in the operators' console: users with their usage totals, API tokens."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.db.models import Count, QuerySet, Sum
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from accounts.limits import job_allowance
from accounts.models import ApiToken, UserLimits
from ocr.admin import usage_csv
from ocr.models import OcrJob

User = get_user_model()


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("name", "user", "kind", "prefix", "created_at", "expires_at", "last_used_at", "revoked_at")
    list_filter = ("kind", ("revoked_at", admin.EmptyFieldListFilter), "created_at")
    search_fields = ("name", "prefix", "user__username")
    readonly_fields = ("prefix", "created_at", "last_used_at")
    raw_id_fields = ("user",)


@admin.register(UserLimits)
class UserLimitsAdmin(admin.ModelAdmin):
    """Per-user overrides of OCR_USER_MAX_RUNNING_JOBS and OCR_USER_DAILY_PAGES (empty: the default, 0: none)."""

    list_display = ("user", "max_running_jobs", "daily_pages", "note", "updated_at", "usage_now")
    search_fields = ("user__username", "note")
    raw_id_fields = ("user",)
    readonly_fields = ("updated_at", "usage_now")

    @admin.display(description=_("now"))
    def usage_now(self, limits: UserLimits) -> str:
        if not limits.user_id:
            return "—"
        allowance = job_allowance(owner=limits.user, measure=True)
        return _("%(running)s of %(max_running)s jobs running, %(pages)s of %(daily)s pages today") % {
            "running": allowance.running_jobs,
            "max_running": allowance.max_running_jobs or "∞",
            "pages": allowance.pages_today,
            "daily": allowance.daily_pages or "∞",
        }


class UserLimitsInline(admin.StackedInline):
    model = UserLimits
    can_delete = True
    extra = 0
    max_num = 1
    fields = ("max_running_jobs", "daily_pages", "note")
    verbose_name = verbose_name_plural = _("OCR limits (empty: the server's defaults)")


admin.site.unregister(User)


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    """Django's user admin plus usage totals from the job ledger (sortable) and a link to the user's jobs."""

    list_display = (
        "username",
        "email",
        "is_active",
        "is_staff",
        "date_joined",
        "job_count",
        "page_total",
        "prompt_token_total",
        "completion_token_total",
        "input_byte_total",
        "jobs_link",
    )
    actions = ["export_usage_csv"]
    inlines = [*DjangoUserAdmin.inlines, UserLimitsInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # One join to the ledger; the sums never multiply because no other relation is joined.
        return (
            super()
            .get_queryset(request)
            .annotate(
                job_count=Count("ocr_jobs"),
                page_total=Sum("ocr_jobs__page_count", default=0),
                prompt_token_total=Sum("ocr_jobs__prompt_tokens", default=0),
                completion_token_total=Sum("ocr_jobs__completion_tokens", default=0),
                input_byte_total=Sum("ocr_jobs__input_bytes", default=0),
            )
        )

    @admin.display(description=_("jobs"), ordering="job_count")
    def job_count(self, user: object) -> int:
        return user.job_count

    @admin.display(description=_("pages"), ordering="page_total")
    def page_total(self, user: object) -> int:
        return user.page_total

    @admin.display(description=_("prompt tokens"), ordering="prompt_token_total")
    def prompt_token_total(self, user: object) -> int:
        return user.prompt_token_total

    @admin.display(description=_("completion tokens"), ordering="completion_token_total")
    def completion_token_total(self, user: object) -> int:
        return user.completion_token_total

    @admin.display(description=_("input bytes"), ordering="input_byte_total")
    def input_byte_total(self, user: object) -> int:
        return user.input_byte_total

    @admin.display(description=_("OCR jobs"))
    def jobs_link(self, user: object) -> str:
        url = reverse("admin:ocr_ocrjob_changelist") + f"?owner__id__exact={user.pk}"
        return format_html('<a href="{}">{}</a>', url, _("Jobs"))

    @admin.action(description=_("Export the usage of the selected users' jobs as CSV"))
    def export_usage_csv(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse:
        jobs = OcrJob.objects.filter(owner__in=queryset.values("pk")).select_related("owner").order_by("created_at")
        return usage_csv(jobs.iterator(), filename=f"ocr-usage-users-{timezone.localdate():%Y%m%d}.csv")
