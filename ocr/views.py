"""Browser pages of the OCR app: upload, the live job page, history, downloads, page images, usage.

Thin views: they check access (``page_owner_required``; another user's job is a 404), validate with a form, call
intake, the services, the live runner or the selectors, and render. Every page works as plain links and forms;
htmx and the SSE stream only enhance it.
"""

from __future__ import annotations

import base64
import io
import uuid
from contextlib import aclosing
from dataclasses import replace
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotModified,
    HttpResponsePermanentRedirect,
    JsonResponse,
    StreamingHttpResponse,
)
from django.middleware.csrf import get_token
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.utils import translation
from django.utils.http import content_disposition_header
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST
from PIL import Image

from accounts.decorators import page_owner_required
from accounts.limits import LimitExceeded
from myocr import startup
from ocr import intake, selectors
from ocr.config import ocr_config
from ocr.error_texts import intake_message, limit_message
from ocr.errors import OcrError
from ocr.exports import ExportUnavailable, export_job, export_page
from ocr.forms import EMBEDDED_CANNOT, PRESETS, UploadForm
from ocr.fragments import LiveRenderer, page_view, progress_view, usage_view
from ocr.jobs import cancel_job, retry_failed_pages, submit_job
from ocr.live import follow_job
from ocr.models import JobSource, OcrJob
from ocr.services import JobNotFinished, job_delete
from ocr.transports import sse_event
from ocr.usage_chart import usage_chart

PAGE_SIZE = 20
THUMBNAIL_PAGES = 4
THUMBNAIL_WIDTH = 240
PAGE_IMAGE_DPI = 110


async def healthz(request: HttpRequest) -> HttpResponse:
    """Readiness for load balancers and compose health checks: 200 once the OCR engine is warm, 503 while
    it is still loading (the embedded engine's models take a second or two after start)."""
    config = ocr_config()
    if not startup.is_ready():
        return JsonResponse({"status": "starting", "engine": config.engine}, status=503)
    return JsonResponse({"status": "ok", "engine": config.engine})


async def favicon(request: HttpRequest) -> HttpResponse:
    """Browsers ask for /favicon.ico on pages that name no icon (the admin's): the app's icon."""
    return HttpResponsePermanentRedirect(static("img/icon.svg"))


# --- Upload ---------------------------------------------------------------------------------------------------


def _home_context(request: HttpRequest, form: UploadForm) -> dict[str, Any]:
    config = ocr_config()
    return {
        "form": form,
        "presets": PRESETS,
        "embedded_cannot": EMBEDDED_CANNOT,
        "engine": config.engine,
        "max_upload_bytes": config.max_upload_bytes,
        "recent_jobs": list(selectors.visible_jobs_for_owner(owner=request.owner).order_by("-created_at")[:5]),
    }


@require_GET
@page_owner_required
def home(request: HttpRequest) -> HttpResponse:
    return render(request, "ocr/home.html", _home_context(request, UploadForm()))


@require_POST
@page_owner_required
async def job_new(request: HttpRequest) -> HttpResponse:
    """Create a job from the upload form and start it in the background; then show its live page."""
    post, files = await _parse_body(request)
    form = UploadForm(post, files)
    if not await sync_to_async(form.is_valid)():
        return await _upload_refused(request, form)
    uploaded = form.cleaned_data["file"]
    data = await sync_to_async(uploaded.read, thread_sensitive=False)()
    upload = intake.Upload(data=data, file_name=intake.clean_file_name(uploaded.name))
    kind = "pdf" if intake.sniff(data[:1024]) == intake.PDF else "image"
    try:
        job = await submit_job(
            owner=request.owner,
            upload=upload,
            kind=kind,
            source=JobSource.WEB,
            prompt=form.cleaned_data["prompt"],
            text_layer=form.cleaned_data.get("text_layer") or "",
        )
    except LimitExceeded as error:
        form.add_error("file", limit_message(error))
        response = await _upload_refused(request, form, status=error.status)
        for name, value in error.headers.items():
            response[name] = value
        return response
    except OcrError as error:
        form.add_error("file", intake_message(error))
        return await _upload_refused(request, form, status=error.status)
    return redirect("ocr:job", job_id=job.pk, permanent=False)


async def _parse_body(request: HttpRequest) -> tuple[Any, Any]:
    # Parsing a multipart body copies the file: off the event loop.
    return await sync_to_async(lambda: (request.POST, request.FILES), thread_sensitive=False)()


async def _upload_refused(request: HttpRequest, form: UploadForm, *, status: int = 400) -> HttpResponse:
    context = await sync_to_async(_home_context)(request, form)
    return await sync_to_async(render)(request, "ocr/home.html", context, status=status)


@require_POST
@page_owner_required
async def preview(request: HttpRequest) -> HttpResponse:
    """Thumbnails of the chosen file before it is submitted: the image, or the first pages of a PDF."""
    _post, files = await _parse_body(request)
    uploaded = files.get("file")
    context: dict[str, Any] = {"thumbnails": [], "error": ""}
    if uploaded is None:
        return render(request, "ocr/preview.html", context)
    data = await sync_to_async(uploaded.read, thread_sensitive=False)()
    kind = "pdf" if intake.sniff(data[:1024]) == intake.PDF else "image"
    # Thumbnails need far fewer pixels than OCR: render PDF pages at a low resolution.
    config = replace(ocr_config(), pdf_dpi=36, page_format="jpeg")
    try:
        document = await intake.open_upload(
            intake.Upload(data=data, file_name=intake.clean_file_name(uploaded.name)), expected_kind=kind, config=config
        )
    except OcrError as error:
        context["error"] = intake_message(error)
        return await sync_to_async(render)(request, "ocr/preview.html", context)
    try:
        for number in range(1, min(document.page_count, THUMBNAIL_PAGES) + 1):
            page = await document.page(number, pixels=True)
            context["thumbnails"].append(
                {"number": number, "src": await sync_to_async(_thumbnail, thread_sensitive=False)(page.pixels)}
            )
    finally:
        await document.aclose()
    context.update(kind=kind, pages=document.page_count, file_name=intake.clean_file_name(uploaded.name))
    context["size"] = len(data)
    return await sync_to_async(render)(request, "ocr/preview.html", context)


def _thumbnail(image: Image.Image) -> str:
    image = image.copy()
    image.thumbnail((THUMBNAIL_WIDTH, THUMBNAIL_WIDTH * 2))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# --- One job --------------------------------------------------------------------------------------------------


def _owned_job(request: HttpRequest, job_id: uuid.UUID) -> OcrJob:
    job = selectors.visible_jobs_for_owner(owner=request.owner).filter(pk=job_id).first()
    if job is None:
        raise Http404
    return job


async def _aowned_job(request: HttpRequest, job_id: uuid.UUID) -> OcrJob:
    job = await selectors.visible_jobs_for_owner(owner=request.owner).filter(pk=job_id).afirst()
    if job is None:
        raise Http404
    return job


@require_GET
@page_owner_required
def job_detail(request: HttpRequest, job_id: uuid.UUID) -> HttpResponse:
    job = _owned_job(request, job_id)
    pages = selectors.job_pages(job)
    stored = [page for page in pages if page.pk]
    context = {
        "job": job,
        "pages": [page_view(page, job) for page in pages],
        "usage": usage_view(job, stored),
        "progress": progress_view(job, stored),
        "has_text": any(page.text for page in stored),
        "live_since": job.live_seq,
    }
    return render(request, "ocr/job_detail.html", context)


@require_GET
@page_owner_required
async def job_events(request: HttpRequest, job_id: uuid.UUID) -> HttpResponse:
    """The job's live updates as Server-Sent Events (see ``ocr.live.follow_job``)."""
    job = await _aowned_job(request, job_id)
    since = _last_event_id(request)
    stored = [page async for page in job.pages.order_by("number")]
    renderer = LiveRenderer(job=job, csrf_token=get_token(request), pages=stored)
    language = translation.get_language()

    async def stream():
        # Something at once, so that the headers go out and the browser knows the stream is open.
        yield b"retry: 2000\n: connected\n\n"
        async with aclosing(follow_job(job.pk, since=since, poll=ocr_config().live_poll_seconds)) as updates:
            async for update in updates:
                with translation.override(language):
                    html = renderer.render(update)
                if html:
                    yield sse_event(html, event_id=update.seq)
                else:
                    yield b": ping\n\n"
        yield sse_event("", event="close")

    response = StreamingHttpResponse(stream(), content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache, no-store"
    response["X-Accel-Buffering"] = "no"
    # Keeps compressing middleware from buffering the stream (django-browser-reload does the same).
    response["Content-Encoding"] = ""
    return response


def _last_event_id(request: HttpRequest) -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.GET.get("since") or ""
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if value >= 0 else None


@require_POST
@page_owner_required
async def job_cancel(request: HttpRequest, job_id: uuid.UUID) -> HttpResponse:
    job = await _aowned_job(request, job_id)
    if not job.is_finished:
        # No flash message: the job's header says "Cancelling the job…" while it stops, and goes on to say it ended.
        await cancel_job(job)
    return redirect("ocr:job", job_id=job.pk)


@require_POST
@page_owner_required
async def job_retry(request: HttpRequest, job_id: uuid.UUID) -> HttpResponse:
    """Run the failed, cut-off and cancelled pages of an ended job again, keeping the others."""
    job = await _aowned_job(request, job_id)
    if job.is_finished and job.upload:
        pages = await retry_failed_pages(job)
        if pages:
            await sync_to_async(messages.info)(request, _("The pages that did not succeed are read again."))
    return redirect("ocr:job", job_id=job.pk)


@require_POST
@page_owner_required
def job_remove(request: HttpRequest, job_id: uuid.UUID) -> HttpResponse:
    job = _owned_job(request, job_id)
    try:
        job_delete(job=job)
    except JobNotFinished:
        messages.error(request, _("Cancel the job before deleting it."))
        return redirect("ocr:job", job_id=job.pk)
    if request.htmx and request.POST.get("from") == "history":
        return HttpResponse("")
    messages.success(request, _("The job “%(name)s” was deleted.") % {"name": job.file_name})
    return redirect("ocr:history")


@require_GET
@page_owner_required
def job_download(request: HttpRequest, job_id: uuid.UUID, fmt: str) -> HttpResponse:
    job = _owned_job(request, job_id)
    try:
        return export_job(job, fmt).response()
    except ExportUnavailable as error:
        messages.error(request, error.user_message)
        return redirect("ocr:job", job.pk)


@require_GET
@page_owner_required
def page_download(request: HttpRequest, job_id: uuid.UUID, number: int) -> HttpResponse:
    """One page's Markdown (the viewer's per-page Copy and Download); a page without text is a 404."""
    job = _owned_job(request, job_id)
    page = job.pages.filter(number=number).first()
    if page is None:
        raise Http404
    export = export_page(job, page)
    if export is None:
        raise Http404
    return export.response()


@require_GET
@page_owner_required
async def page_image(request: HttpRequest, job_id: uuid.UUID, number: int) -> HttpResponse:
    """The image of one page as the engine saw it (a PDF page rendered on demand), for the page view's boxes."""
    job = await _aowned_job(request, job_id)
    if not job.upload or not 1 <= number <= max(job.page_count, 1):
        raise Http404
    etag = f'"{job.pk.hex}-{number}"'
    if etag in request.headers.get("If-None-Match", ""):
        return HttpResponseNotModified(headers={"ETag": etag})
    try:
        data = await sync_to_async(_read_upload, thread_sensitive=False)(job)
    except OSError:
        raise Http404 from None
    config = replace(ocr_config(), pdf_dpi=min(PAGE_IMAGE_DPI, ocr_config().pdf_dpi), page_format="jpeg")
    try:
        document = await intake.open_upload(
            intake.Upload(data=data, file_name="upload"), expected_kind=job.kind, config=config
        )
    except OcrError:
        raise Http404 from None
    try:
        if number > document.page_count:
            raise Http404
        page = await document.page(number, pixels=False)
    finally:
        await document.aclose()
    response = HttpResponse(page.data, content_type=page.mime)
    response["Cache-Control"] = "private, max-age=86400"
    response["ETag"] = etag
    response["Content-Disposition"] = content_disposition_header(False, f"page-{number}.{page.mime.rsplit('/')[-1]}")
    response["X-Content-Type-Options"] = "nosniff"
    return response


def _read_upload(job: OcrJob) -> bytes:
    with job.upload.open("rb") as file:
        return file.read()


# --- History and usage ----------------------------------------------------------------------------------------


@require_GET
@page_owner_required
def history(request: HttpRequest) -> HttpResponse:
    jobs = selectors.visible_jobs_for_owner(owner=request.owner).order_by("-created_at")
    page = Paginator(jobs, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "ocr/history.html", {"page_obj": page, "jobs": page.object_list})


@require_GET
@page_owner_required
def usage(request: HttpRequest) -> HttpResponse:
    days = selectors.usage_by_day(owner=request.owner, days=30)
    totals = selectors.usage_totals(selectors.jobs_for_owner(owner=request.owner))
    return render(request, "ocr/usage.html", {"totals": totals, "days": days, "chart": usage_chart(days)})
