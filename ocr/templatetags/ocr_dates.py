"""One date format on every page: day, abbreviated month and year, a 24-hour time and the time zone
("2 Dec 2026, 19:49 UTC"), in the current language and time zone. Numeric dates such as 12/02/2026 are read
differently in different countries; a named month and the zone are not. The format itself is a translatable
string, so each language orders the parts its own way."""

from __future__ import annotations

from datetime import date, datetime

from django import template
from django.utils import dateformat, timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import pgettext

register = template.Library()


def _format(value: date | datetime, kind: str) -> tuple[str, str]:
    if isinstance(value, datetime):
        if timezone.is_aware(value):
            value = timezone.localtime(value)
        value = value.replace(microsecond=0)
        if kind != "date":
            # Translators: a date and time in PHP date() syntax (Django's "date" filter), e.g. 2 Dec 2026, 19:49 UTC.
            return value.isoformat(), dateformat.format(value, pgettext("date and time format", "j M Y, H:i T"))
        value = value.date()
    if kind == "day":
        # Translators: a day of the month and its month in PHP date() syntax, e.g. 2 Dec (the usage chart's axis).
        return value.isoformat(), dateformat.format(value, pgettext("day and month format", "j M"))
    # Translators: a date in PHP date() syntax (Django's "date" filter), e.g. 2 Dec 2026.
    return value.isoformat(), dateformat.format(value, pgettext("date format", "j M Y"))


@register.filter
def when(value: date | datetime | None, kind: str = "datetime") -> SafeString | str:
    """A ``<time>`` element in the one format (``kind`` "date": the date only; "day": day and month); empty for
    ``None``."""
    if not value:
        return ""
    machine, text = _format(value, kind)
    return format_html('<time datetime="{}">{}</time>', machine, text)


@register.filter
def when_text(value: date | datetime | None, kind: str = "datetime") -> str:
    """The same words as ``when``, without the element (for SVG titles and attributes)."""
    if not value:
        return ""
    return _format(value, kind)[1]
