"""Per-user abuse limits on OCR jobs: jobs running at once and pages per day.

The server's defaults are ``OCR_USER_MAX_RUNNING_JOBS`` and ``OCR_USER_DAILY_PAGES``; staff can give one user
other figures in the admin (``UserLimits``; an empty field keeps the default, 0 means no limit).

``admit_job`` is called by ``ocr.services.job_create`` inside the transaction that inserts the job, so the check
and the insert are one step: on SQLite the transaction holds the database's write lock from its start
(``transaction_mode = IMMEDIATE``); on PostgreSQL a first statement locks the user's row (``FOR UPDATE``). Two
uploads of one user arriving together are therefore counted one after the other, and the limit holds exactly. The
check is one query (two on PostgreSQL, with the lock): the user's overrides, their running jobs and the pages of
their jobs created today, read through the ``ocrjob_status_worker`` and ``ocrjob_owner_created`` indexes.

With ``AUTH_ENABLED=false`` every request belongs to the one ``anonymous`` user, so per-user limits would be one
limit for the whole service. The anonymous user of a request is therefore given its client address
(``for_client_address``), its jobs record it (``OcrJob.client_address``) and its limits count only the jobs of that
address, the way the sign-in limits count failures per address. Behind a reverse proxy every client has the
proxy's address unless the proxy's own address is not what Daphne sees (see README, Deployment).

What counts towards the daily pages: every page of a job still running (they are about to be read) and the pages
the engine read (``pages_done``: done or cut off) of jobs that ended. Pages that failed or were never reached
because a job was cancelled or interrupted do not count.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from datetime import datetime, time, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.utils import timezone

from accounts.models import UserLimits
from myocr.http import ApiError
from ocr.config import ocr_config
from ocr.events import ErrorCode
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


#: The attribute that carries the client address on the anonymous user's instance of one request.
_ADDRESS_ATTRIBUTE = "limits_client_address"


def for_client_address(user: AbstractBaseUser, address: str) -> AbstractBaseUser:
    """Scope ``user`` (the shared anonymous user of one request) to its client's address for the job limits."""
    setattr(user, _ADDRESS_ATTRIBUTE, address)
    return user


def limits_address(owner: AbstractBaseUser) -> str:
    """The client address ``owner``'s limits are counted by, or ``""``: by the user."""
    return getattr(owner, _ADDRESS_ATTRIBUTE, "")


def job_allowance(
    *, owner: AbstractBaseUser, now: datetime | None = None, lock: bool = False, measure: bool = False
) -> JobAllowance:
    """The owner's limits and usage in one query (usage of one client address for an owner scoped to one, see
    ``for_client_address``). A usage whose limit is off (0) is not counted (reported as 0) unless ``measure``.
    ``lock`` (inside a transaction) first locks the user's row where the database can, so that concurrent
    admissions of one user queue."""
    if lock and connection.features.has_select_for_update:
        # A statement of its own: under READ COMMITTED the counting statement must start after the lock is held,
        # or its snapshot could miss the job that the previous holder of the lock inserted.
        with connection.cursor() as cursor:
            cursor.execute(_lock_sql(), [owner.pk])
    default_jobs, default_pages = ocr_config().user_max_running_jobs, ocr_config().user_daily_pages
    skip = 0 if measure else 1
    address = limits_address(owner)
    by_address = [address] if address else []
    params = [
        skip, default_jobs, JobStatus.RUNNING, *by_address,
        skip, default_pages, JobStatus.RUNNING, connection.ops.adapt_datetimefield_value(day_start(now)), *by_address,
        owner.pk,
    ]  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute(_allowance_sql(by_address=bool(address)), params)
        own_jobs, own_pages, running, pages = cursor.fetchone()
    return JobAllowance(
        max_running_jobs=_own_or_default(own_jobs, default_jobs),
        daily_pages=_own_or_default(own_pages, default_pages),
        running_jobs=int(running or 0),
        pages_today=int(pages or 0),
    )


@functools.cache
def _allowance_sql(*, by_address: bool) -> str:
    """Plain SQL, written once: the ORM would spend more time compiling this query than the database running it.
    ``CASE`` evaluates only the branch it takes, so a limit that is off costs no counting at all. ``by_address``
    counts only the jobs of one client address (an anonymous owner's, read through ``ocrjob_address_created``)."""
    quote = connection.ops.quote_name
    jobs, job = OcrJob._meta, {field.name: quote(field.column) for field in OcrJob._meta.concrete_fields}
    limits = UserLimits._meta
    limit = {field.name: quote(field.column) for field in limits.concrete_fields}
    users = get_user_model()._meta
    address = f" AND j.{job['client_address']} = %s" if by_address else ""
    # Identifiers come from the models' metadata; every value is a parameter.
    return (
        f"SELECT l.{limit['max_running_jobs']}, l.{limit['daily_pages']}, "  # noqa: S608
        f"CASE WHEN %s = 1 AND COALESCE(l.{limit['max_running_jobs']}, %s) = 0 THEN 0 ELSE "
        f"(SELECT COUNT(*) FROM {quote(jobs.db_table)} j WHERE j.{job['owner']} = u.{quote(users.pk.column)} "
        f"AND j.{job['status']} = %s{address}) END, "
        f"CASE WHEN %s = 1 AND COALESCE(l.{limit['daily_pages']}, %s) = 0 THEN 0 ELSE "
        f"(SELECT COALESCE(SUM(CASE WHEN j.{job['status']} = %s THEN j.{job['page_count']} "
        f"ELSE j.{job['pages_done']} END), 0) FROM {quote(jobs.db_table)} j "
        f"WHERE j.{job['owner']} = u.{quote(users.pk.column)} AND j.{job['created_at']} >= %s{address}) END "
        f"FROM {quote(users.db_table)} u LEFT JOIN {quote(limits.db_table)} l ON l.{limit['user']} = "
        f"u.{quote(users.pk.column)} WHERE u.{quote(users.pk.column)} = %s"
    )


@functools.cache
def _lock_sql() -> str:
    users = get_user_model()._meta
    quote = connection.ops.quote_name
    return f"SELECT 1 FROM {quote(users.db_table)} WHERE {quote(users.pk.column)} = %s FOR UPDATE"  # noqa: S608


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
            code=ErrorCode.TOO_MANY_JOBS,
            retry_after=RUNNING_JOBS_RETRY_AFTER,
        )
    if allowance.daily_pages:
        if pages > allowance.daily_pages:
            raise LimitExceeded(
                f"The document has {pages} pages, more than your daily quota of {allowance.daily_pages} pages.",
                code=ErrorCode.TOO_MANY_PAGES,
                retry_after=None,
                status=422,
            )
        if allowance.pages_today + pages > allowance.daily_pages:
            left = max(0, allowance.daily_pages - allowance.pages_today)
            raise LimitExceeded(
                f"Your daily quota is {allowance.daily_pages} pages and {left} are left today; this document has "
                f"{pages}. The quota starts again at midnight ({settings.TIME_ZONE}).",
                code=ErrorCode.DAILY_QUOTA_EXCEEDED,
                retry_after=seconds_until_tomorrow(now),
            )
    return allowance
