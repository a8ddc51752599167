"""The admin index's usage summary."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Any

from django import template
from django.utils import timezone
from django.utils.translation import gettext

from ocr.models import OcrJob
from ocr.selectors import usage_totals

register = template.Library()


@register.inclusion_tag("admin/ocr_usage_summary.html")
def ocr_usage_summary() -> dict[str, Any]:
    """Ledger totals for today and for the last 7 days (today included), in the current time zone."""
    today = timezone.localdate()

    def since(day: Any) -> dict[str, int]:
        start = timezone.make_aware(datetime.combine(day, time.min))
        return usage_totals(OcrJob.objects.filter(created_at__gte=start))

    return {"periods": [(gettext("Today"), since(today)), (gettext("Last 7 days"), since(today - timedelta(days=6)))]}
