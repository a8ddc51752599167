"""API tokens. Users are Django's own user model."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django_prometheus.models import ExportModelOperationsMixin


class ApiToken(ExportModelOperationsMixin("token"), models.Model):
    """A bearer token for scripts. Only a SHA-256 digest of the secret is stored; the secret is shown once."""

    class Kind(models.TextChoices):
        LOGIN = "login", _("Issued by /api/auth/token")
        PERSONAL = "personal", _("Created on the API tokens page")

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(_("name"), max_length=100)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.PERSONAL)
    prefix = models.CharField(
        _("prefix"), max_length=16, help_text=_("The first characters of the token, to recognise it.")
    )
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(_("created"), default=timezone.now)
    expires_at = models.DateTimeField(_("expires"), null=True, blank=True)
    last_used_at = models.DateTimeField(_("last used"), null=True, blank=True)
    revoked_at = models.DateTimeField(_("revoked"), null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("API token")
        verbose_name_plural = _("API tokens")
        indexes = [models.Index(fields=["user", "-created_at"], name="apitoken_user_created")]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def is_active(self, now=None) -> bool:
        now = now or timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class UserLimits(models.Model):
    """One user's own abuse limits, set by staff in the admin; an empty field means the server's default."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="ocr_limits", verbose_name=_("user")
    )
    max_running_jobs = models.PositiveIntegerField(
        _("jobs running at once"),
        null=True,
        blank=True,
        help_text=_("Empty: the server's OCR_USER_MAX_RUNNING_JOBS. 0: no limit."),
    )
    daily_pages = models.PositiveIntegerField(
        _("pages per day"),
        null=True,
        blank=True,
        help_text=_("Empty: the server's OCR_USER_DAILY_PAGES. 0: no limit."),
    )
    note = models.CharField(_("note"), max_length=200, blank=True, help_text=_("Why this user has other limits."))
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("user limits")
        verbose_name_plural = _("user limits")

    def __str__(self) -> str:
        return f"limits of {self.user}"
