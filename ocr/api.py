"""The NDJSON streaming API for scripts and the job read endpoint. Thin: validate, call, respond."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.multipartparser import MultiPartParserError

from myocr.http import ApiError, api_endpoint
from ocr import intake, metrics
from ocr.config import ocr_config
from ocr.errors import IntakeError
from ocr.models import JobSource
from ocr.pipeline import prepare_job
from ocr.selectors import ajob_detail, ajob_for_owner
from ocr.services import job_abandon
from ocr.transports import NDJSON_CONTENT_TYPE, ndjson_stream


@api_endpoint(methods=("POST",))
async def ocr_image(request: HttpRequest) -> HttpResponse:
    return await start_ocr(request, kind="image")


@api_endpoint(methods=("POST",))
async def ocr_pdf(request: HttpRequest) -> HttpResponse:
    return await start_ocr(request, kind="pdf")


async def read_upload(request: HttpRequest) -> tuple[intake.Upload, str]:
    """The uploaded ``file`` and the ``prompt`` field of a multipart request."""
    content_type = request.content_type or ""
    if content_type != "multipart/form-data":
        raise IntakeError(
            "Send the file as multipart/form-data in a field named 'file'.", code="missing_file", status=400
        )

    def parse() -> tuple[intake.Upload | None, str]:
        upload = request.FILES.get("file")
        prompt = request.POST.get("prompt", "")
        if upload is None:
            return None, prompt
        return intake.Upload(data=upload.read(), file_name=intake.clean_file_name(upload.name)), prompt

    try:
        # Django's multipart parser is pure Python and copies the file: off the event loop, which under a burst
        # of uploads is the bottleneck for everyone's first frame.
        upload, prompt = await sync_to_async(parse, thread_sensitive=False)()
    except MultiPartParserError:
        raise IntakeError("The multipart/form-data body could not be read.", code="bad_request", status=400) from None
    if upload is None:
        raise IntakeError("No file in the request: send it in a field named 'file'.", code="missing_file")
    return upload, prompt


def clean_prompt(raw: str | None) -> str:
    config = ocr_config()
    prompt = (raw or "").strip()
    if not prompt:
        return config.default_prompt
    if len(prompt) > config.max_prompt_chars:
        raise ApiError(f"The prompt is longer than {config.max_prompt_chars} characters.", code="invalid_prompt")
    if "\x00" in prompt:
        raise ApiError("The prompt contains a NUL character.", code="invalid_prompt")
    return prompt


async def start_ocr(request: HttpRequest, *, kind: str) -> HttpResponse:
    try:
        return await _start_job(request, kind=kind)
    except ApiError as error:
        metrics.request_rejected(kind=kind, code=error.code)
        raise


async def _start_job(request: HttpRequest, *, kind: str) -> HttpResponse:
    upload, raw_prompt = await read_upload(request)
    run = await prepare_job(
        owner=request.user, upload=upload, kind=kind, source=JobSource.API, prompt=clean_prompt(raw_prompt)
    )
    job = run.job
    response = StreamingHttpResponse(ndjson_stream(run.batches(), kind), content_type=NDJSON_CONTENT_TYPE)
    response["Cache-Control"] = "no-store"
    response["X-Accel-Buffering"] = "no"
    response["X-Job-Id"] = str(job.pk)

    def close_if_never_started() -> None:
        # The client can leave before the first chunk; the stream then never runs and must not stay "running".
        if not run.started:
            job_abandon(job_id=job.pk, error_code="cancelled", error_message="The client went away.")

    response._resource_closers.append(close_if_never_started)
    return response


@api_endpoint(methods=("GET",))
async def job_detail(request: HttpRequest, job_id: str) -> HttpResponse:
    job = await ajob_for_owner(owner=request.user, job_id=job_id)
    if job is None:
        raise ApiError("No such job.", code="not_found", status=404)
    data: dict[str, Any] = await ajob_detail(job)
    return JsonResponse(data, json_dumps_params={"ensure_ascii": False})
