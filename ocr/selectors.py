"""Reads of the job ledger, always scoped to an owner: a user never sees another user's jobs."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, Q, QuerySet, Sum

from ocr.models import OcrJob

USAGE_FIELDS = ("input_bytes", "prompt_tokens", "completion_tokens", "prompt_chars", "completion_chars")


def jobs_for_owner(*, owner: AbstractBaseUser) -> QuerySet[OcrJob]:
    return OcrJob.objects.filter(owner=owner)


async def ajob_for_owner(*, owner: AbstractBaseUser, job_id: str | uuid.UUID) -> OcrJob | None:
    """The job with ``job_id`` if ``owner`` owns it, else ``None`` (callers answer 404, never 403)."""
    try:
        key = job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(str(job_id))
    except ValueError:
        return None
    return await jobs_for_owner(owner=owner).filter(pk=key).afirst()


def job_as_dict(job: OcrJob, *, pages: list | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": str(job.pk),
        "kind": job.kind,
        "status": job.status,
        "source": job.source,
        "file_name": job.file_name,
        "content_type": job.content_type,
        "prompt": job.prompt,
        "engine": job.engine,
        "model": job.model,
        "pages": job.page_count,
        "pages_done": job.pages_done,
        "pages_failed": job.pages_failed,
        "created_at": job.created_at.isoformat(),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "duration_ms": job.duration_ms,
        "first_delta_ms": job.first_delta_ms,
        "usage": {
            "prompt_tokens": job.prompt_tokens,
            "completion_tokens": job.completion_tokens,
            "prompt_chars": job.prompt_chars,
            "completion_chars": job.completion_chars,
            "input_bytes": job.input_bytes,
            "pages": job.page_count,
            "estimated": job.usage_estimated,
        },
        "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None,
    }
    if pages is not None:
        data["pages_detail"] = [
            {
                "page": page.number,
                "status": page.status,
                "text": page.text,
                "finish_reason": page.finish_reason or None,
                "usage": {
                    "prompt_tokens": page.prompt_tokens,
                    "completion_tokens": page.completion_tokens,
                    "completion_chars": page.completion_chars,
                    "estimated": page.usage_estimated,
                },
                "error": {"code": page.error_code, "message": page.error_message} if page.error_code else None,
                "width": page.width,
                "height": page.height,
                "layout": page.layout,
                "duration_ms": page.duration_ms,
            }
            for page in pages
        ]
        data["text"] = "\n\n".join(page.text for page in pages)
    return data


async def ajob_detail(job: OcrJob) -> dict[str, Any]:
    pages = [page async for page in job.pages.order_by("number")]
    return job_as_dict(job, pages=pages)


async def ausage_events(*, owner: AbstractBaseUser, limit: int = 200) -> list[dict[str, Any]]:
    """The owner's latest jobs as usage events, newest first."""
    jobs = jobs_for_owner(owner=owner).order_by("-created_at")[:limit]
    return [
        {
            "job_id": str(job.pk),
            "kind": job.kind,
            "status": job.status,
            "created_at": job.created_at.isoformat(),
            "file_name": job.file_name,
            "engine": job.engine,
            "model": job.model,
            "pages": job.page_count,
            "input_bytes": job.input_bytes,
            "prompt_tokens": job.prompt_tokens,
            "completion_tokens": job.completion_tokens,
            "prompt_chars": job.prompt_chars,
            "completion_chars": job.completion_chars,
            "estimated": job.usage_estimated,
            "duration_ms": job.duration_ms,
        }
        async for job in jobs
    ]


async def ausage_summary(*, owner: AbstractBaseUser) -> dict[str, Any]:
    """The owner's totals over all jobs (failed and cancelled jobs included: their usage was spent)."""
    sums = {name: Sum(name, default=0) for name in USAGE_FIELDS}
    totals = await jobs_for_owner(owner=owner).aaggregate(
        events=Count("pk"),
        pages=Sum("page_count", default=0),
        pages_done=Sum("pages_done", default=0),
        failed=Count("pk", filter=Q(status="failed")),
        **sums,
    )
    totals["total_tokens"] = totals["prompt_tokens"] + totals["completion_tokens"]
    return totals
