"""Per-user abuse limits on OCR jobs: jobs running at once and pages per day.

The server's defaults are ``OCR_USER_MAX_RUNNING_JOBS`` and ``OCR_USER_DAILY_PAGES``; staff can give one user
other figures in the admin (``UserLimits``; an empty field keeps the default, 0 means no limit).

``admit_job`` is called by ``ocr.services.job_create`` inside the transaction that inserts the job, so the check
and the insert are one step: on SQLite the transaction holds the database's write lock from its start
(``transaction_mode = IMMEDIATE``); on PostgreSQL a first statement locks the user's row (``FOR UPDATE``). Two
uploads of one user arriving together are therefore counted one after the other, and the limit holds exactly. The
check is one query (two on PostgreSQL, with the lock): the user's overrides, their running jobs and the pages of
their jobs created today, read through the ``ocrjob_status_worker`` and ``ocrjob_owner_created`` indexes.

What counts towards the daily pages: every page of a job still running (they are about to be read) and the pages
the engine read (``pages_done``: done or cut off) of jobs that ended. Pages that failed or were never reached
because a job was cancelled or interrupted do not count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, time, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.db.models import Case, Count, F, IntegerField, OuterRef, Subquery, Sum, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from myocr.http import ApiError
from ocr.models import JobStatus, OcrJob

#: Retry-After for a user at their running-jobs limit: about the time a short job takes.
RUNNING_JOBS_RETRY_AFTER = 5


class LimitExceeded(ApiError):
    """A job refused by a per-user limit: 429 with ``Retry-After`` (422 for a document over the whole quota)."""

    status = 429

    def __init__(self, message: str, *, code: str, retry_after: int | None, status: int = 429) -> None:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        super().__init__(message, code=code, status=status, headers=headers)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class JobAllowance:
    """A user's limits (0: none) and what they use now."""

    max_running_jobs: int
    daily_pages: int
    running_jobs: int
    pages_today: int


def day_start(now: datetime | None = None) -> datetime:
    """Midnight of today in the server's time zone, when the daily page quota starts again."""
    today = timezone.localdate(now)
    return timezone.make_aware(datetime.combine(today, time.min))


def seconds_until_tomorrow(now: datetime | None = None) -> int:
    now = now or timezone.now()
    tomorrow = day_start(now) + timedelta(days=1)
    return max(1, math.ceil((tomorrow - now).total_seconds()))


def job_allowance(*, owner: AbstractBaseUser, now: datetime | None = None, lock: bool = False) -> JobAllowance:
    """The owner's limits and usage in one query; ``lock`` (inside a transaction) locks the user's row where the
    database can, so that concurrent admissions of one user queue."""
    jobs = OcrJob.objects.filter(owner=OuterRef("pk")).order_by().values("owner")
    running = jobs.filter(status=JobStatus.RUNNING).annotate(n=Count("pk")).values("n")
    counted_pages = Case(
        When(status=JobStatus.RUNNING, then=F("page_count")), default=F("pages_done"), output_field=IntegerField()
    )
    pages = jobs.filter(created_at__gte=day_start(now)).annotate(n=Sum(counted_pages)).values("n")
    query = (
        get_user_model()
        .objects.filter(pk=owner.pk)
        .only("pk")
        .annotate(
            running_jobs=Coalesce(Subquery(running, output_field=IntegerField()), Value(0)),
            pages_today=Coalesce(Subquery(pages, output_field=IntegerField()), Value(0)),
            own_max_running_jobs=F("ocr_limits__max_running_jobs"),
            own_daily_pages=F("ocr_limits__daily_pages"),
        )
    )
    if lock and connection.features.has_select_for_update:
        # A statement of its own: under READ COMMITTED the counting statement must start after the lock is held,
        # or its snapshot could miss the job that the previous holder of the lock inserted.
        list(get_user_model().objects.select_for_update().filter(pk=owner.pk).values_list("pk"))
    row = query.get()
    return JobAllowance(
        max_running_jobs=_own_or_default(row.own_max_running_jobs, settings.OCR_USER_MAX_RUNNING_JOBS),
        daily_pages=_own_or_default(row.own_daily_pages, settings.OCR_USER_DAILY_PAGES),
        running_jobs=row.running_jobs,
        pages_today=row.pages_today,
    )


def _own_or_default(own: int | None, default: int) -> int:
    return default if own is None else own


def admit_job(*, owner: AbstractBaseUser, pages: int) -> JobAllowance:
    """Raise ``LimitExceeded`` unless ``owner`` may start a job of ``pages`` pages now. Call it inside the
    transaction that creates the job (see the module docstring)."""
    now = timezone.now()
    allowance = job_allowance(owner=owner, now=now, lock=True)
    if allowance.max_running_jobs and allowance.running_jobs >= allowance.max_running_jobs:
        raise LimitExceeded(
            f"You have {allowance.running_jobs} jobs running, the most allowed at once is "
            f"{allowance.max_running_jobs}. Try again when one of them has ended.",
            code="too_many_jobs",
            retry_after=RUNNING_JOBS_RETRY_AFTER,
        )
    if allowance.daily_pages:
        if pages > allowance.daily_pages:
            raise LimitExceeded(
                f"The document has {pages} pages, more than your daily quota of {allowance.daily_pages} pages.",
                code="too_many_pages",
                retry_after=None,
                status=422,
            )
        if allowance.pages_today + pages > allowance.daily_pages:
            left = max(0, allowance.daily_pages - allowance.pages_today)
            raise LimitExceeded(
                f"Your daily quota is {allowance.daily_pages} pages and {left} are left today; this document has "
                f"{pages}. The quota starts again at midnight ({settings.TIME_ZONE}).",
                code="daily_quota_exceeded",
                retry_after=seconds_until_tomorrow(now),
            )
    return allowance
