"""Reads of the job ledger, always scoped to an owner: a user never sees another user's jobs."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from ocr.models import OcrJob, OcrPage, PageStatus

USAGE_FIELDS = ("input_bytes", "prompt_tokens", "completion_tokens", "prompt_chars", "completion_chars")


def jobs_for_owner(*, owner: AbstractBaseUser) -> QuerySet[OcrJob]:
    """All of the owner's jobs, deleted ones included: the usage ledger."""
    return OcrJob.objects.filter(owner=owner)


def visible_jobs_for_owner(*, owner: AbstractBaseUser) -> QuerySet[OcrJob]:
    """The owner's history: jobs they have not deleted."""
    return OcrJob.objects.filter(owner=owner, deleted_at__isnull=True)


def batch_jobs_for_owner(*, owner: AbstractBaseUser, job_ids: list[uuid.UUID]) -> list[OcrJob]:
    """The owner's jobs among ``job_ids`` (a batch the upload form started), in that order, each with
    ``pages_read``: its pages read so far (a running job's ``pages_done`` is written only when it ends)."""
    jobs = visible_jobs_for_owner(owner=owner).filter(pk__in=job_ids)
    found = {
        job.pk: job
        for job in jobs.annotate(
            pages_read=Count("pages", filter=Q(pages__status__in=[PageStatus.DONE, PageStatus.TRUNCATED]))
        )
    }
    return [found[key] for key in job_ids if key in found]


async def ajob_for_owner(*, owner: AbstractBaseUser, job_id: str | uuid.UUID) -> OcrJob | None:
    """The job with ``job_id`` if ``owner`` owns it, else ``None`` (callers answer 404, never 403)."""
    try:
        key = job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(str(job_id))
    except ValueError:
        return None
    return await visible_jobs_for_owner(owner=owner).filter(pk=key).afirst()


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
        "usage": job.usage(),
        "error": job.error(),
    }
    if pages is not None:
        data["pages_detail"] = [
            {
                "page": page.number,
                "status": page.status,
                "text": page.text,
                "finish_reason": page.finish_reason or None,
                "usage": page.usage(),
                "error": page.error(),
                "width": page.width,
                "height": page.height,
                "layout": page.layout,
                "source": page.source,
                "duration_ms": page.duration_ms,
            }
            for page in pages
        ]
        data["text"] = "\n\n".join(page.text for page in pages)
    return data


async def ajob_detail(job: OcrJob) -> dict[str, Any]:
    pages = [page async for page in job.pages.order_by("number")]
    return job_as_dict(job, pages=pages)


#: Usage event ids are the low 53 bits of the job's UUID (random bits of a version 4 UUID): an integer as in the
#: original My OCR, stable for the job's lifetime, exact in JavaScript's numbers, and needing no extra column.
#: Two of a user's jobs share one with a probability of about n²/2⁵⁴ (one in 70,000 for a million jobs); the
#: job's own id is ``job_id``.
EVENT_ID_MASK = (1 << 53) - 1


def usage_event_id(job: OcrJob) -> int:
    return job.pk.int & EVENT_ID_MASK


def usage_event_meta(job: OcrJob) -> str:
    """The original's free-text ``meta`` (a string): here a JSON object naming the job, its file and outcome."""
    return json.dumps(
        {"job_id": str(job.pk), "file_name": job.file_name, "pages": job.page_count, "status": job.status},
        ensure_ascii=False,
    )


async def ausage_events(*, owner: AbstractBaseUser, limit: int = 200) -> list[dict[str, Any]]:
    """The owner's latest jobs as usage events, newest first: the original My OCR's fields (``id``, ``kind``,
    the four usage figures, ``input_bytes``, ``meta``, ``created_at``) and ours."""
    jobs = jobs_for_owner(owner=owner).order_by("-created_at")[:limit]
    return [
        {
            "id": usage_event_id(job),
            "meta": usage_event_meta(job),
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
    # The original My OCR's names, which its front end reads.
    totals["total_events"] = totals["events"]
    for name in USAGE_FIELDS:
        totals[f"total_{name}"] = totals[name]
    return totals


def usage_totals(jobs: QuerySet[OcrJob]) -> dict[str, int]:
    """Totals over ``jobs``: jobs, pages, tokens, characters, bytes, failed jobs."""
    sums = {name: Sum(name, default=0) for name in USAGE_FIELDS}
    totals = jobs.aggregate(
        jobs=Count("pk"),
        pages=Sum("page_count", default=0),
        pages_done=Sum("pages_done", default=0),
        failed=Count("pk", filter=Q(status="failed")),
        **sums,
    )
    totals["total_tokens"] = totals["prompt_tokens"] + totals["completion_tokens"]
    return totals


@dataclass(frozen=True, slots=True)
class DayUsage:
    day: date
    jobs: int
    pages: int
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def usage_by_day(*, owner: AbstractBaseUser, days: int = 30) -> list[DayUsage]:
    """The owner's usage for each of the last ``days`` days (today included, in the current time zone), oldest
    first; days without jobs are present with zeros. Deleted jobs count: their usage was spent."""
    today = timezone.localdate()
    first = today - timedelta(days=days - 1)
    start = timezone.make_aware(datetime.combine(first, time.min))
    rows = (
        jobs_for_owner(owner=owner)
        .filter(created_at__gte=start)
        .annotate(day=TruncDate("created_at", tzinfo=timezone.get_current_timezone()))
        .values("day")
        .annotate(
            jobs=Count("pk"),
            pages=Sum("page_count", default=0),
            prompt_tokens=Sum("prompt_tokens", default=0),
            completion_tokens=Sum("completion_tokens", default=0),
        )
    )
    by_day = {row["day"]: row for row in rows}
    series = []
    for offset in range(days):
        day = first + timedelta(days=offset)
        row = by_day.get(day, {})
        series.append(
            DayUsage(
                day=day,
                jobs=row.get("jobs", 0),
                pages=row.get("pages", 0),
                prompt_tokens=row.get("prompt_tokens", 0),
                completion_tokens=row.get("completion_tokens", 0),
            )
        )
    return series


def job_pages(job: OcrJob) -> list[OcrPage]:
    """All pages of ``job`` for display: stored ones, and a ``queued`` stand-in for each page not started yet."""
    stored = {page.number: page for page in job.pages.order_by("number")}
    pages = []
    for number in range(1, max(job.page_count, max(stored, default=0)) + 1):
        page = stored.get(number)
        if page is None:
            page = OcrPage(job=job, number=number, status="")
        pages.append(page)
    return pages
