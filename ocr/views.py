"""Browser pages of the OCR app."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse

from ocr.config import ocr_config


async def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness for load balancers and compose health checks: the process answers and knows its engine."""
    config = ocr_config()
    return JsonResponse({"status": "ok", "engine": config.engine})


def home(request: HttpRequest) -> HttpResponse:
    from django.shortcuts import render

    return render(request, "ocr/home.html", {"engine": ocr_config().engine})
