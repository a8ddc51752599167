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
from urllib.parse import urlencode

from asgiref.sync import sync_to_async
from django.contrib import messages
from django.core.files.uploadedfile import UploadedFile
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
from django.urls import reverse
from django.utils import translation
from django.utils.http import content_disposition_header
from django.utils.translation import gettext as _
from django.utils.translation import ngettext
from django.views.decorators.http import require_GET, require_POST
from PIL import Image

from accounts.decorators import page_owner_required
from accounts.limits import LimitExceeded
from myocr import startup
from myocr.http import ApiError
from ocr import batches, intake, pending, selectors
from ocr.config import ocr_config
from ocr.error_texts import intake_message, limit_message
from ocr.errors import OcrError
from ocr.exports import ExportUnavailable, export_job, export_page
from ocr.forms import EMBEDDED_CANNOT, MAX_BATCH_FILES, PRESETS, JobOptionsForm, UploadForm
from ocr.fragments import LiveRenderer, page_view, progress_view, usage_view
from ocr.jobs import cancel_job, retry_failed_pages
from ocr.live import follow_job
from ocr.models import OcrJob, PendingUpload
from ocr.prompts import MAX_PROMPT_CHARS
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


def _home_context(request: HttpRequest, form: UploadForm, *, kept: list[PendingUpload] | None = None) -> dict[str, Any]:
    config = ocr_config()
    return {
        "form": form,
        "presets": PRESETS,
        "embedded_cannot": EMBEDDED_CANNOT,
        "engine": config.engine,
        "max_upload_bytes": config.max_upload_bytes,
        "max_prompt_chars": MAX_PROMPT_CHARS,
        "max_batch_files": MAX_BATCH_FILES,
        "kept": kept if kept is not None else form.kept,
        "recent_jobs": list(selectors.visible_jobs_for_owner(owner=request.owner).order_by("-created_at")[:5]),
    }


@require_GET
@page_owner_required
def home(request: HttpRequest) -> HttpResponse:
    # ``?kept=`` ids: files of a batch a limit refused, kept for a while; they come back ticked, ready to start.
    ids = pending.parse_ids(request.GET.get("kept", "").split(","))[:MAX_BATCH_FILES]
    kept = pending.available_pending_uploads(owner=request.owner, ids=ids) if ids else None
    return render(request, "ocr/home.html", _home_context(request, UploadForm(), kept=kept))


@require_POST
@page_owner_required
async def job_new(request: HttpRequest) -> HttpResponse:
    """Start one job per file of the upload form (files sent now, or kept by the preview: ``ocr/pending.py``),
    with the same prompt (``ocr.batches``); then show the job's live page, or the batch's page for several.

    A form refused as a whole (its prompt, no file) keeps its files as pending uploads and says so. A file refused
    on its own (the intake, a limit) is named; the others start."""
    post, files = await _parse_body(request)
    ids = pending.parse_ids(post.getlist("pending"))
    kept = await pending.pending_uploads_available(owner=request.owner, ids=ids)
    form = UploadForm(post, files, kept=kept, asked_for=len(ids))
    if not await sync_to_async(form.is_valid)():
        kept += await _keep_files(request, form, files.getlist("file")[: max(MAX_BATCH_FILES - len(kept), 0)])
        return await _upload_refused(request, form, kept=kept)
    outcome = await batches.batch_submit(
        owner=request.owner,
        files=[*kept, *batches.without_resent(kept, form.cleaned_data["file"])],
        prompt=form.cleaned_data["prompt"],
        text_layer=form.cleaned_data.get("text_layer") or "",
    )
    if not outcome.started:
        for refused in outcome.refused:
            form.add_error("file", _refusal_text(refused))
        first = outcome.refused[0].error
        response = await _upload_refused(request, form, kept=outcome.kept, status=first.status)
        for header, value in first.headers.items():
            response[header] = value
        return response
    if len(outcome.started) == 1 and not outcome.refused:
        return redirect("ocr:job", job_id=outcome.started[0].pk, permanent=False)
    for refused in outcome.refused:
        await sync_to_async(messages.error)(request, _refusal_text(refused))
    count = len(outcome.started)
    await sync_to_async(messages.success)(
        request, ngettext("%(count)s job started.", "%(count)s jobs started.", count) % {"count": count}
    )
    query = {"jobs": ",".join(str(job.pk) for job in outcome.started)}
    if outcome.kept:
        query["kept"] = ",".join(str(upload.pk) for upload in outcome.kept)
    return redirect(f"{reverse('ocr:job-batch')}?{urlencode(query, safe=',')}")


def _refusal_text(refused: batches.Refused) -> str:
    return _("“%(name)s” was not started: %(reason)s") % {
        "name": refused.file_name,
        "reason": _refusal_reason(refused.error),
    }


def _refusal_reason(error: ApiError) -> str:
    if isinstance(error, batches.PendingGone):
        return _("the file is no longer kept on the server: choose it again.")
    if isinstance(error, LimitExceeded):
        return limit_message(error)
    return intake_message(error)


async def _keep_files(request: HttpRequest, form: UploadForm, uploaded: list[UploadedFile]) -> list[PendingUpload]:
    """Keep the files of a refused form as pending uploads, so that they need not be chosen again; a file the
    intake refuses is named in the form's errors instead."""
    kept: list[PendingUpload] = []
    for file in uploaded:
        name = intake.clean_file_name(file.name)
        try:
            data = await batches.read_file(file)
            kept.append(await batches.keep_upload(owner=request.owner, data=data, file_name=name))
        except OcrError as error:
            form.add_error("file", _refusal_text(batches.Refused(name, error)))
    return kept


async def _parse_body(request: HttpRequest) -> tuple[Any, Any]:
    # Parsing a multipart body copies the file: off the event loop.
    return await sync_to_async(lambda: (request.POST, request.FILES), thread_sensitive=False)()


async def _upload_refused(
    request: HttpRequest, form: UploadForm, *, kept: list[PendingUpload] | None = None, status: int = 400
) -> HttpResponse:
    context = await sync_to_async(_home_context)(request, form, kept=kept)
    return await sync_to_async(render)(request, "ocr/home.html", context, status=status)


@require_POST
@page_owner_required
async def preview(request: HttpRequest) -> HttpResponse:
    """Check the chosen files and show their thumbnails (the image, or the first pages of a PDF) before Start.

    A file the intake accepts is kept as a pending upload (``ocr/pending.py``) and its id goes back in the
    fragment's hidden field, so that Start sends the id, not the bytes again. ``discard`` names the pending
    uploads of an earlier choice that the form no longer needs."""
    post, files = await _parse_body(request)
    discard = pending.parse_ids(post.getlist("discard"))
    if discard:
        await pending.pending_uploads_discard(owner=request.owner, ids=discard)
    items = [await _preview_item(request, file) for file in files.getlist("file")[:MAX_BATCH_FILES]]
    return await sync_to_async(render)(request, "ocr/preview.html", {"items": items})


async def _preview_item(request: HttpRequest, uploaded: UploadedFile) -> dict[str, Any]:
    name = intake.clean_file_name(uploaded.name)
    data = await sync_to_async(uploaded.read, thread_sensitive=False)()
    item: dict[str, Any] = {"file_name": name, "size": len(data), "thumbnails": [], "error": ""}
    kind = intake.job_kind(data)
    # Thumbnails need far fewer pixels than OCR: render PDF pages at a low resolution.
    config = replace(ocr_config(), pdf_dpi=36, page_format="jpeg")
    try:
        document = await intake.open_upload(intake.Upload(data=data, file_name=name), expected_kind=kind, config=config)
    except OcrError as error:
        item["error"] = intake_message(error)
        return item
    try:
        for number in range(1, min(document.page_count, THUMBNAIL_PAGES) + 1):
            page = await document.page(number, pixels=True)
            item["thumbnails"].append(
                {"number": number, "src": await sync_to_async(_thumbnail, thread_sensitive=False)(page.pixels)}
            )
    finally:
        await document.aclose()
    item.update(kind=kind, pages=document.page_count)
    item["pending"] = await pending.pending_upload_create(
        owner=request.owner, data=data, file_name=name, kind=kind, page_count=document.page_count
    )
    return item


@require_GET
@page_owner_required
def job_batch(request: HttpRequest) -> HttpResponse:
    """The jobs one upload form started together, with their live progress (``?jobs=`` their ids)."""
    ids = pending.parse_ids(request.GET.get("jobs", "").split(","))[:MAX_BATCH_FILES]
    jobs = selectors.batch_jobs_for_owner(owner=request.owner, job_ids=ids)
    kept_ids = pending.parse_ids(request.GET.get("kept", "").split(","))[:MAX_BATCH_FILES]
    kept = pending.available_pending_uploads(owner=request.owner, ids=kept_ids) if kept_ids else []
    context = {
        "jobs": jobs,
        "kept": kept,
        "kept_ids": ",".join(str(upload.pk) for upload in kept),
        "batch": True,
        "batch_ids": ",".join(str(job.pk) for job in jobs),
        "batch_open": any(not job.is_finished for job in jobs),
    }
    if request.htmx:
        return render(request, "ocr/history.html#batch-rows", context)
    return render(request, "ocr/history.html", context)


@require_POST
@page_owner_required
async def job_run_again(request: HttpRequest, job_id: uuid.UUID) -> HttpResponse:
    """A new job from an ended job's kept upload, with another preset or prompt: nothing is uploaded again.
    The old job stays as it is; the new one's page follows."""
    job = await _aowned_job(request, job_id)
    post, _files = await _parse_body(request)
    form = JobOptionsForm(post)
    if not job.is_finished or not job.upload:
        await sync_to_async(messages.error)(
            request, _("This job's file is no longer kept: upload it again to read it another way.")
        )
        return redirect("ocr:job", job_id=job.pk)
    if not await sync_to_async(form.is_valid)():
        problems = [str(error) for errors in form.errors.values() for error in errors]
        await sync_to_async(messages.error)(request, " ".join(problems))
        return redirect("ocr:job", job_id=job.pk)
    try:
        data = await sync_to_async(_read_upload, thread_sensitive=False)(job)
        again = await batches.job_from_bytes(
            owner=request.owner,
            data=data,
            file_name=job.file_name,
            prompt=form.cleaned_data["prompt"],
            text_layer=form.cleaned_data.get("text_layer") or "",
        )
    except OSError:
        await sync_to_async(messages.error)(
            request, _("This job's file is no longer kept: upload it again to read it another way.")
        )
        return redirect("ocr:job", job_id=job.pk)
    except LimitExceeded as error:
        await sync_to_async(messages.error)(request, limit_message(error))
        return redirect("ocr:job", job_id=job.pk)
    except OcrError as error:
        await sync_to_async(messages.error)(request, intake_message(error))
        return redirect("ocr:job", job_id=job.pk)
    return redirect("ocr:job", job_id=again.pk)


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
