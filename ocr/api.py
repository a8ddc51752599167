"""The NDJSON streaming API for scripts and the job API (submit, list, follow, cancel, retry, results, delete).
Thin: validate, call, respond."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import reverse

from myocr.http import ApiError, api_endpoint, closing_content
from ocr import intake, metrics, webhooks
from ocr.api_forms import read_ocr_request
from ocr.config import ocr_config
from ocr.errors import IntakeError
from ocr.events import ErrorCode
from ocr.exports import export_job
from ocr.jobs import cancel_job, retry_failed_pages, submit_job
from ocr.live import job_frames
from ocr.models import JobKind, JobSource, JobStatus, OcrJob
from ocr.pipeline import prepare_job
from ocr.selectors import ajob_detail, ajob_for_owner, job_as_dict, visible_jobs_for_owner
from ocr.services import JobNotFinished, job_abandon, job_delete
from ocr.transports import NDJSON_CONTENT_TYPE, ndjson_frames_stream, ndjson_stream


@api_endpoint(methods=("POST",))
async def ocr_image(request: HttpRequest) -> HttpResponse:
    return await start_ocr(request, kind="image")


@api_endpoint(methods=("POST",))
async def ocr_pdf(request: HttpRequest) -> HttpResponse:
    return await start_ocr(request, kind="pdf")


async def start_ocr(request: HttpRequest, *, kind: str) -> HttpResponse:
    try:
        return await _start_job(request, kind=kind)
    except ApiError as error:
        metrics.request_rejected(kind=kind, code=error.code)
        raise


async def _start_job(request: HttpRequest, *, kind: str) -> HttpResponse:
    (upload,), form = await read_ocr_request(request, batch=False)
    run = await prepare_job(
        owner=request.owner,
        upload=upload,
        kind=kind,
        source=JobSource.API,
        prompt=form.cleaned_data["prompt"],
        text_layer=form.cleaned_data["text_layer"],
    )
    job = run.job

    def close_if_never_started() -> None:
        # The client can leave before the first chunk; the stream then never runs and must not stay "running".
        if not run.started:
            job_abandon(job_id=job.pk)

    body = closing_content(ndjson_stream(run.batches(), kind), close_if_never_started)
    response = StreamingHttpResponse(body, content_type=NDJSON_CONTENT_TYPE)
    response["Cache-Control"] = "no-store"
    response["X-Accel-Buffering"] = "no"
    response["X-Job-Id"] = str(job.pk)
    return response


# --- The job API ----------------------------------------------------------------------------------------------

#: Files one ``POST /api/jobs`` may carry.
JOBS_PAGE_SIZE = 50
MAX_JOBS_PAGE_SIZE = 200


def _json(data: Any, *, status: int = 200) -> JsonResponse:
    return JsonResponse(data, status=status, json_dumps_params={"ensure_ascii": False})


async def _owned(request: HttpRequest, job_id: str) -> OcrJob:
    job = await ajob_for_owner(owner=request.owner, job_id=job_id)
    if job is None:
        raise ApiError("No such job.", code=ErrorCode.NOT_FOUND, status=404)
    return job


def job_links(job_id: object) -> dict[str, str]:
    return {
        "url": reverse("api:job-detail", args=[str(job_id)]),
        "events_url": reverse("api:job-events", args=[str(job_id)]),
    }


@api_endpoint(methods=("GET", "POST"))
async def jobs(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return await _submit_jobs(request)
    return await _list_jobs(request)


async def _submit_jobs(request: HttpRequest) -> HttpResponse:
    uploads, form = await read_ocr_request(request, batch=True)
    prompt, text_layer = form.cleaned_data["prompt"], form.cleaned_data["text_layer"]
    callback_url = form.cleaned_data["callback_url"]
    if callback_url:
        callback_url = await sync_to_async(webhooks.validate_callback_url, thread_sensitive=False)(callback_url)
    config = ocr_config()
    kinds: list[str] = []
    # Every file is checked before anything is kept: one bad file refuses the whole batch, naming it.
    for upload in uploads:
        kind = intake.job_kind(upload.data)
        try:
            document = await intake.open_upload(upload, expected_kind=kind, config=config)
        except IntakeError as error:
            prefix = f"{upload.file_name}: " if len(uploads) > 1 else ""
            raise IntakeError(f"{prefix}{error.message}", code=error.code, status=error.status) from None
        await document.aclose()
        kinds.append(kind)
    entries = []
    for upload, kind in zip(uploads, kinds, strict=True):
        job = await submit_job(
            owner=request.owner,
            upload=upload,
            kind=kind,
            source=JobSource.API,
            prompt=prompt,
            callback_url=callback_url,
            text_layer=text_layer,
        )
        entries.append(
            {
                "job_id": str(job.pk),
                "status": job.status,
                "kind": job.kind,
                "file_name": job.file_name,
                "pages": job.page_count,
                **job_links(job.pk),
            }
        )
    return _json({"jobs": entries}, status=202)


def refuse_unknown_parameters(request: HttpRequest, known: tuple[str, ...]) -> None:
    """A misspelt filter must not silently return everything."""
    unknown = sorted(set(request.GET) - set(known))
    if unknown:
        raise ApiError(
            f"Unknown query parameter {unknown[0]!r}; this endpoint takes {', '.join(known)}.",
            code=ErrorCode.INVALID_FILTER,
        )


async def _list_jobs(request: HttpRequest) -> HttpResponse:
    refuse_unknown_parameters(request, ("status", "kind", "page", "page_size"))
    query = visible_jobs_for_owner(owner=request.owner).order_by("-created_at")
    status = request.GET.get("status")
    if status:
        if status not in JobStatus.values:
            raise ApiError(f"Unknown status; use one of {', '.join(JobStatus.values)}.", code=ErrorCode.INVALID_FILTER)
        query = query.filter(status=status)
    kind = request.GET.get("kind")
    if kind:
        if kind not in JobKind.values:
            raise ApiError(f"Unknown kind; use one of {', '.join(JobKind.values)}.", code=ErrorCode.INVALID_FILTER)
        query = query.filter(kind=kind)
    try:
        page = int(request.GET.get("page", "1"))
        page_size = int(request.GET.get("page_size", str(JOBS_PAGE_SIZE)))
    except ValueError:
        page = page_size = 0
    if page < 1 or not 1 <= page_size <= MAX_JOBS_PAGE_SIZE:
        raise ApiError(
            f"page is a positive integer and page_size one from 1 to {MAX_JOBS_PAGE_SIZE}.",
            code=ErrorCode.INVALID_FILTER,
        )
    offset = (page - 1) * page_size
    total = await query.acount()
    rows = [job async for job in query[offset : offset + page_size + 1]] if offset < total else []
    items = [{**job_as_dict(job), **job_links(job.pk)} for job in rows[:page_size]]
    return _json(
        {"jobs": items, "page": page, "page_size": page_size, "total": total, "has_next": len(rows) > page_size}
    )


@api_endpoint(methods=("GET", "DELETE"))
async def job_detail(request: HttpRequest, job_id: str) -> HttpResponse:
    job = await _owned(request, job_id)
    if request.method == "DELETE":
        try:
            await sync_to_async(job_delete)(job=job)
        except JobNotFinished:
            raise ApiError(
                "The job has not ended: cancel it first.", code=ErrorCode.JOB_NOT_FINISHED, status=409
            ) from None
        return HttpResponse(status=204)
    data: dict[str, Any] = await ajob_detail(job)
    webhook = await sync_to_async(webhooks.delivery_summary)(job.pk) if job.callback_url else None
    return _json({**data, "webhook": webhook, **job_links(job.pk)})


@api_endpoint(methods=("POST",))
async def job_cancel(request: HttpRequest, job_id: str) -> HttpResponse:
    job = await _owned(request, job_id)
    status = await cancel_job(job) if not job.is_finished else None
    if status is None:
        raise ApiError("The job has already ended.", code=ErrorCode.JOB_FINISHED, status=409)
    return _json({"job_id": str(job.pk), "status": status, "cancel_requested": True, **job_links(job.pk)}, status=202)


@api_endpoint(methods=("POST",))
async def job_retry(request: HttpRequest, job_id: str) -> HttpResponse:
    job = await _owned(request, job_id)
    if not job.is_finished:
        raise ApiError("The job has not ended yet.", code=ErrorCode.JOB_NOT_FINISHED, status=409)
    if not job.upload:
        raise ApiError("The uploaded file is no longer kept: upload it again.", code=ErrorCode.UPLOAD_GONE, status=409)
    pages = await retry_failed_pages(job)
    if not pages:
        raise ApiError("Every page of the job is done: nothing to retry.", code=ErrorCode.NOTHING_TO_RETRY, status=409)
    return _json({"job_id": str(job.pk), "status": "queued", "pages": pages, **job_links(job.pk)}, status=202)


@api_endpoint(methods=("GET",))
async def job_events(request: HttpRequest, job_id: str) -> HttpResponse:
    """The job's frames as NDJSON, each with its ``seq``: the stored part first, then live until ``end``."""
    refuse_unknown_parameters(request, ("after",))
    job = await _owned(request, job_id)
    raw_after = request.GET.get("after", "0")
    if not raw_after.isdigit():
        raise ApiError(
            "after is the seq of the last frame you have (a non-negative integer).", code=ErrorCode.INVALID_FILTER
        )
    frames = job_frames(job, after=int(raw_after), poll=ocr_config().live_poll_seconds)
    response = StreamingHttpResponse(ndjson_frames_stream(frames, job.kind), content_type=NDJSON_CONTENT_TYPE)
    response["Cache-Control"] = "no-store"
    response["X-Accel-Buffering"] = "no"
    response["X-Job-Id"] = str(job.pk)
    return response


@api_endpoint(methods=("GET",))
async def my_webhook(request: HttpRequest) -> HttpResponse:
    """The key your webhooks are signed with."""
    secret = await sync_to_async(webhooks.secret_for)(request.owner)
    return _json({"secret": secret, "signature_header": webhooks.SIGNATURE_HEADER})


@api_endpoint(methods=("POST",))
async def my_webhook_rotate(request: HttpRequest) -> HttpResponse:
    """Replace the key: webhooks from now on are signed with the new one."""
    secret = await sync_to_async(webhooks.rotate_secret)(request.owner)
    return _json({"secret": secret, "signature_header": webhooks.SIGNATURE_HEADER})


@api_endpoint(methods=("GET",))
async def job_result(request: HttpRequest, job_id: str, fmt: str) -> HttpResponse:
    job = await _owned(request, job_id)
    return (await sync_to_async(export_job)(job, fmt)).response()
