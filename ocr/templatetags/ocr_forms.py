"""Forms placed inside fragments that the live job page re-renders (its header), which carry no form context."""

from __future__ import annotations

from typing import Any

from django import template

from ocr.config import ocr_config
from ocr.forms import PRESETS
from ocr.models import OcrJob

register = template.Library()


@register.inclusion_tag("ocr/_run_again.html", takes_context=True)
def run_again_form(context: template.Context, job: OcrJob) -> dict[str, Any]:
    """The "Run again" form of an ended job whose upload is kept: another preset or prompt, the same file."""
    engine = ocr_config().engine
    presets = [preset for preset in PRESETS if engine != "local" or preset.embedded]
    return {"job": job, "presets": presets, "csrf_token": context.get("csrf_token"), "engine": engine}
