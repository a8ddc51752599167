"""Writes to the job ledger. Views, the pipeline and commands call these; nothing else writes jobs or pages."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from asgiref.sync import sync_to_async
from django.contrib.auth.models import AbstractBaseUser
from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from django.utils import timezone

from ocr.events import ErrorCode
from ocr.models import JobStatus, OcrJob, OcrJobEvents, OcrPage, PageStatus

#: Identifies this server process in ``OcrJob.worker``, so a restarted process can find the jobs it left.
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


@dataclass(slots=True)
class PageOutcome:
    number: int
    status: str
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False
    finish_reason: str = ""
    error_code: str = ""
    error_message: str = ""
    width: int | None = None
    height: int | None = None
    layout: list[dict] | None = None
    #: "ocr", or "text_layer": a PDF page read from its own text (the embedded engine, OCR_PDF_TEXT_LAYER).
    source: str = "ocr"
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def completion_chars(self) -> int:
        return len(self.text)

    @property
    def duration_ms(self) -> int | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return int((self.finished_at - self.started_at).total_seconds() * 1000)


@dataclass(slots=True)
class JobTotals:
    """Running usage totals of a job, the same figures the ``end`` frame and the ledger carry."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    completion_chars: int = 0
    prompt_chars: int = 0
    pages_done: int = 0
    pages_failed: int = 0
    estimated: bool = False
    statuses: dict[str, int] = field(default_factory=dict)

    def add(self, outcome: PageOutcome, prompt_chars: int) -> None:
        self.prompt_tokens += outcome.prompt_tokens
        self.completion_tokens += outcome.completion_tokens
        self.completion_chars += outcome.completion_chars
        if outcome.status != PageStatus.CANCELLED or outcome.completion_tokens:
            self.prompt_chars += prompt_chars
        self.estimated = self.estimated or outcome.estimated
        if outcome.status in (PageStatus.DONE, PageStatus.TRUNCATED):
            self.pages_done += 1
        elif outcome.status == PageStatus.FAILED:
            self.pages_failed += 1
        self.statuses[outcome.status] = self.statuses.get(outcome.status, 0) + 1


def _create_job(
    *,
    owner: AbstractBaseUser,
    kind: str,
    source: str,
    file_name: str,
    content_type: str,
    data: bytes,
    prompt: str,
    engine: str,
    model: str,
    page_count: int,
    keep_upload: bool,
    enforce_limits: bool = False,
    status: str = JobStatus.RUNNING,
    detached: bool = False,
    callback_url: str = "",
    text_layer: str = "",
) -> OcrJob:
    """Create a job, running or ``queued`` (and keep its upload). With ``enforce_limits`` the owner's per-user
    limits are checked in the transaction that inserts it (``accounts.limits.admit_job``), which raises
    ``LimitExceeded``. A ``detached`` job outlives the process that runs it (see ``ocr/jobs.py``)."""
    from accounts.limits import limits_address

    job = OcrJob(
        owner=owner,
        client_address=limits_address(owner),
        kind=kind,
        source=source,
        file_name=file_name,
        content_type=content_type,
        input_bytes=len(data),
        prompt=prompt,
        engine=engine,
        model=model,
        page_count=page_count,
        worker=WORKER_ID if status == JobStatus.RUNNING else "",
        status=status,
        detached=detached,
        callback_url=callback_url,
        text_layer=text_layer,
    )
    if keep_upload:
        # The name passed here is ignored by ``upload_path``: the client's file name never reaches the disk.
        job.upload.save("upload", ContentFile(data), save=False)
    if not enforce_limits:
        job.save(force_insert=True)
        return job
    from accounts.limits import admit_job

    try:
        with transaction.atomic():
            admit_job(owner=owner, pages=page_count)
            job.save(force_insert=True)
    except BaseException:
        if job.upload:
            job.upload.delete(save=False)
        raise
    return job


job_create = sync_to_async(_create_job)


PAGE_RECORD_FIELDS = [
    "status",
    "text",
    "prompt_tokens",
    "completion_tokens",
    "completion_chars",
    "usage_estimated",
    "finish_reason",
    "error_code",
    "error_message",
    "width",
    "height",
    "layout",
    "source",
    "started_at",
    "finished_at",
    "duration_ms",
    "runner",
]


def _record_page(*, job_id: object, outcome: PageOutcome) -> None:
    """Write a finished page: one INSERT … ON CONFLICT UPDATE (a live job may already have a running row)."""
    page = OcrPage(
        job_id=job_id,
        number=outcome.number,
        status=outcome.status,
        text=outcome.text,
        prompt_tokens=outcome.prompt_tokens,
        completion_tokens=outcome.completion_tokens,
        completion_chars=outcome.completion_chars,
        usage_estimated=outcome.estimated,
        finish_reason=outcome.finish_reason,
        error_code=outcome.error_code,
        error_message=outcome.error_message,
        width=outcome.width,
        height=outcome.height,
        layout=outcome.layout,
        source=outcome.source,
        started_at=outcome.started_at,
        finished_at=outcome.finished_at,
        duration_ms=outcome.duration_ms,
        runner=WORKER_ID,
    )
    OcrPage.objects.bulk_create(
        [page], update_conflicts=True, unique_fields=["job", "number"], update_fields=PAGE_RECORD_FIELDS
    )


page_record = sync_to_async(_record_page)


#: Why a job ended when its pages did not decide it: the error code and message every closer uses.
CLOSE_REASONS: dict[str, tuple[str, str]] = {
    "cancelled_by_owner": (ErrorCode.CANCELLED, "The job was cancelled: cancelled by its owner."),
    "client_gone": (ErrorCode.CANCELLED, "The job was cancelled: the client went away."),
    "interrupted": (
        ErrorCode.INTERRUPTED,
        "The server stopped while the job ran; the pages that finished before are kept.",
    ),
    "crashed": (ErrorCode.INTERNAL_ERROR, "The job stopped unexpectedly."),
    "upload_unreadable": (
        ErrorCode.UPLOAD_UNREADABLE,
        "The uploaded file could not be read back from storage; nothing was run.",
    ),
}
INTERRUPTED_MESSAGE = CLOSE_REASONS["interrupted"][1]


def usage_of(pages: Iterable[OcrPage], prompt: str) -> JobTotals:
    """A job's usage: the fold of its stored pages (the one rule, ``JobTotals.add``, the ``end`` frame uses too)."""
    totals = JobTotals()
    for page in pages:
        totals.add(outcome_from_page(page), len(prompt))
    return totals


def _close_job(
    *,
    job_id: object,
    status: str,
    reason: str = "",
    error_code: str = "",
    error_message: str = "",
    unrecorded: Iterable[PageOutcome] = (),
    running_pages: str = "",
    totals: JobTotals | None = None,
    first_delta_ms: int | None = None,
    duration_ms: int | None = None,
) -> bool:
    """The one way a job ends, whatever ended it: the pipeline at its end, a client that left before the first
    frame, a crashed runner, a dead process, a cancelled queued job, an unreadable upload.

    In one transaction: write the ``unrecorded`` outcomes; close the pages still ``running`` as ``running_pages``
    (a page that streamed text without its token counts makes the usage an estimate); set the job's usage, its
    status, its end and the error (``reason`` names one of ``CLOSE_REASONS``, or ``error_code``/``error_message``
    are given). The usage is ``JobTotals.add`` folded over the pages: the pipeline passes the ``totals`` it folded
    as its pages ended (the same figures, without reading them back: the streaming path's one query less); every
    other closer has them folded from the stored pages (``usage_of``). Only an open job is closed, so several
    closers racing are harmless. Returns whether this call closed it.
    """
    if reason:
        error_code, error_message = CLOSE_REASONS[reason]
    now = timezone.now()
    fold = totals is None or duration_ms is None
    with transaction.atomic():
        job = None
        if fold:
            # The job's row is locked first (the order every writer takes them in): a worker sharing the job
            # (``page_record_shared``) writes no page between this fold and the close.
            job = OcrJob.objects.select_for_update().filter(pk=job_id).only("pk", "prompt", "created_at").first()
            if job is None:
                return False
        for outcome in unrecorded:
            _record_page(job_id=job_id, outcome=outcome)
        if running_pages:
            left = OcrPage.objects.filter(job_id=job_id, status=PageStatus.RUNNING)
            left.exclude(text="").update(usage_estimated=True)
            left.update(status=running_pages, error_code=error_code, error_message=error_message, finished_at=now)
        if job is not None:
            pages = list(OcrPage.objects.filter(job_id=job_id))
            totals = totals or usage_of(pages, job.prompt)
            if duration_ms is None:
                ends = [page.finished_at for page in pages if page.finished_at is not None]
                duration_ms = max(0, int(((max(ends) if ends else now) - job.created_at).total_seconds() * 1000))
        assert totals is not None
        fields: dict[str, object] = {"first_delta_ms": first_delta_ms} if first_delta_ms is not None else {}
        return bool(
            OcrJob.objects.filter(pk=job_id, status__in=JobStatus.open()).update(
                status=status,
                prompt_tokens=totals.prompt_tokens,
                completion_tokens=totals.completion_tokens,
                completion_chars=totals.completion_chars,
                prompt_chars=totals.prompt_chars,
                usage_estimated=totals.estimated,
                pages_done=totals.pages_done,
                pages_failed=totals.pages_failed,
                duration_ms=duration_ms,
                finished_at=now,
                error_code=error_code,
                error_message=error_message[:2000],
                **fields,
            )
        )


job_close = sync_to_async(_close_job)


def _discard_job(*, job_id: object) -> None:
    """Remove a job that was recorded but could not be handed to the queue: as if it had never been submitted."""
    job = OcrJob.objects.filter(pk=job_id).first()
    if job is None:
        return
    if job.upload:
        job.upload.storage.delete(job.upload.name)
    job.delete()


job_discard = sync_to_async(_discard_job)


def _claim_job(*, job_id: object) -> tuple[OcrJob | None, bool]:
    """Take a detached job for this process: ``(job, resumed)``, or ``(None, False)`` when there is nothing to run
    (it ended, was deleted, or its owner cancelled it while it waited; such a queued job is closed here).

    A job already ``running`` is taken over: the queue hands a job on only when its previous runner is gone (its
    message was not acknowledged), and a restarted in-process server only resumes jobs requeued by recovery.
    ``resumed`` says a runner had started it before: its pages already stored are kept and not run again.
    """
    with transaction.atomic():
        job = OcrJob.objects.select_for_update().filter(pk=job_id).first()
        if job is None or job.status not in JobStatus.open() or job.deleted_at is not None:
            return None, False
        now = timezone.now()
        if job.cancel_requested_at is not None:
            _close_job(job_id=job_id, status=JobStatus.CANCELLED, reason="cancelled_by_owner")
            return None, False
        resumed = job.status == JobStatus.RUNNING or job.live_seq > 0 or job.pages.exists()
        job.status, job.worker, job.claimed_at = JobStatus.RUNNING, WORKER_ID, now
        OcrJob.objects.filter(pk=job_id).update(status=job.status, worker=job.worker, claimed_at=now)
        return job, resumed


job_claim = sync_to_async(_claim_job)


def outcome_from_page(page: OcrPage) -> PageOutcome:
    """A stored page as the outcome the pipeline would have produced for it."""
    return PageOutcome(
        number=page.number,
        status=page.status,
        text=page.text,
        prompt_tokens=page.prompt_tokens,
        completion_tokens=page.completion_tokens,
        estimated=page.usage_estimated,
        finish_reason=page.finish_reason,
        error_code=page.error_code,
        error_message=page.error_message,
        width=page.width,
        height=page.height,
        layout=page.layout,
        source=page.source,
        started_at=page.started_at,
        finished_at=page.finished_at,
    )


def _kept_pages(*, job_id: object) -> list[PageOutcome]:
    """The pages of a job being resumed that are stored in their final state, as outcomes; the rows of pages that
    were still running when the previous runner stopped are removed (their pages run again from the start),
    except those another worker sharing the job still holds (``OcrPage.runner``; ``pages_release`` frees the
    ones of workers that are gone)."""
    OcrPage.objects.filter(job_id=job_id, status=PageStatus.RUNNING, runner="").delete()
    final = OcrPage.objects.filter(job_id=job_id).exclude(status=PageStatus.RUNNING).order_by("number")
    return [outcome_from_page(page) for page in final]


kept_pages = sync_to_async(_kept_pages)


def _fail_job(*, job_id: object, reason: str) -> None:
    """Close an open job that cannot run at all (its upload cannot be read): failed, with the reason."""
    _close_job(job_id=job_id, status=JobStatus.FAILED, reason=reason)


job_fail = sync_to_async(_fail_job)


def _request_cancel(*, job_id: object) -> str | None:
    """Record that the owner cancelled the job; a queued job is closed at once. Returns the job's status after,
    or ``None`` if it was not open. A running job's runner is told through the channel layer as well
    (``ocr.live.request_cancel``); the recorded request covers a runner that subscribes only after it."""
    now = timezone.now()
    with transaction.atomic():
        queued = OcrJob.objects.filter(pk=job_id, status=JobStatus.QUEUED).update(cancel_requested_at=now)
        if queued and _close_job(job_id=job_id, status=JobStatus.CANCELLED, reason="cancelled_by_owner"):
            return JobStatus.CANCELLED
        updated = OcrJob.objects.filter(pk=job_id, status=JobStatus.RUNNING).update(cancel_requested_at=now)
        return JobStatus.RUNNING if updated else None


job_request_cancel = sync_to_async(_request_cancel)


def _cancel_requested(*, job_id: object) -> bool:
    return OcrJob.objects.filter(pk=job_id, cancel_requested_at__isnull=False).exists()


cancel_requested = sync_to_async(_cancel_requested)


def _retry_failed_pages(*, job_id: object) -> int:
    """Queue a finished job again to re-run its failed pages (its other pages are kept). Returns how many pages
    will run again; 0 leaves the job as it was."""
    with transaction.atomic():
        job = OcrJob.objects.select_for_update().filter(pk=job_id, deleted_at__isnull=True).first()
        if job is None or job.status not in JobStatus.terminal() or not job.upload:
            return 0
        stored = dict(OcrPage.objects.filter(job_id=job_id).values_list("number", "status"))
        final = {number for number, status in stored.items() if status in (PageStatus.DONE, PageStatus.TRUNCATED)}
        again = job.page_count - len(final)
        if again == 0:
            return 0
        OcrPage.objects.filter(job_id=job_id).exclude(number__in=final).delete()
        # The event log starts again: its runner replays the kept pages after a new ``start``.
        OcrJobEvents.objects.filter(job_id=job_id).delete()
        OcrJob.objects.filter(pk=job_id).update(
            live_seq=0,
            status=JobStatus.QUEUED,
            detached=True,
            worker="",
            cancel_requested_at=None,
            finished_at=None,
            error_code="",
            error_message="",
        )
        return again


job_retry_failed_pages = sync_to_async(_retry_failed_pages)


def _abandon_job(*, job_id: object) -> None:
    """Close a streaming request's job that never started (its client left before the first frame)."""
    _close_job(job_id=job_id, status=JobStatus.CANCELLED, reason="client_gone")


job_abandon = _abandon_job


def _store_live_pages(*, job_id: object, seq: int, texts: dict[int, str], frames: list[dict] | None = None) -> None:
    """Store the partial text of a live job's running pages, complete up to event ``seq``, and the ``frames``
    published since the last store (the job's event log, ``OcrJobEvents``).

    Only rows still ``running`` are written: the pipeline's own record of a finished page always wins, whichever
    write comes first (a missing row is inserted with ``ignore_conflicts``; the update is conditional).
    """
    now = timezone.now()
    with transaction.atomic():
        # The job's row first, then its pages: the order every writer locks them in (``page_record_shared``).
        OcrJob.objects.filter(pk=job_id, live_seq__lt=seq).update(live_seq=seq)
        if texts:
            OcrPage.objects.bulk_create(
                [OcrPage(job_id=job_id, number=number, status=PageStatus.RUNNING, started_at=now) for number in texts],
                ignore_conflicts=True,
            )
            for number, text in texts.items():
                OcrPage.objects.filter(job_id=job_id, number=number, status=PageStatus.RUNNING).update(
                    text=text, text_seq=seq, completion_chars=len(text)
                )
        if frames:
            OcrJobEvents.objects.create(
                job_id=job_id, first_seq=frames[0]["seq"], last_seq=frames[-1]["seq"], frames=frames
            )


live_pages_store = sync_to_async(_store_live_pages)


def _close_live_job(*, job_id: object, seq: int, status_if_running: str) -> str:
    """Record a live job's last event ``seq``; if the pipeline did not close the job (it never started, or it
    crashed), close it and its running pages with ``status_if_running``. Returns the job's final status."""
    cancelled = status_if_running == JobStatus.CANCELLED
    with transaction.atomic():
        _close_job(
            job_id=job_id,
            status=status_if_running,
            reason="cancelled_by_owner" if cancelled else "crashed",
            running_pages=PageStatus.CANCELLED if cancelled else PageStatus.FAILED,
        )
        OcrJob.objects.filter(pk=job_id, live_seq__lt=seq).update(live_seq=seq)
        return OcrJob.objects.filter(pk=job_id).values_list("status", flat=True).first() or status_if_running


live_job_close = sync_to_async(_close_live_job)


class JobNotFinished(Exception):
    """The job is queued or running: cancel it before deleting it."""


def job_delete(*, job: OcrJob) -> None:
    """Remove a finished job from its owner's history: its pages (the text) and its uploaded file are deleted.

    The job row stays, marked deleted, because it is the usage ledger that quotas and the admin console read.
    Raises ``JobNotFinished`` for a job still queued or running (its runner would write the pages again).
    """
    with transaction.atomic():
        if (
            not OcrJob.objects.filter(pk=job.pk)
            .exclude(status__in=JobStatus.open())
            .update(deleted_at=timezone.now(), upload="")
        ):
            raise JobNotFinished
        OcrPage.objects.filter(job=job).delete()
        OcrJobEvents.objects.filter(job=job).delete()
    if job.upload:
        job.upload.storage.delete(job.upload.name)


def jobs_interrupt(*, job_ids: list[object]) -> int:
    """Close running jobs whose process is gone (``ocr/workers.py`` decides which): each becomes ``interrupted``
    with the usage of the pages it recorded so far, and its pages still running fail with ``interrupted``.

    The tokens of a page that was still running are unknown (vLLM reports them when a page ends): such a page
    keeps the text it stored and the job's usage is marked estimated. A job that already ended is left alone, so
    several processes may recover the same jobs at once. Returns the number of jobs closed.
    """
    return sum(
        _close_job(job_id=job_id, status=JobStatus.INTERRUPTED, reason="interrupted", running_pages=PageStatus.FAILED)
        for job_id in job_ids
    )


def jobs_requeue(*, worker_id: str, job_ids: list[object]) -> int:
    """Hand the detached jobs of a process that is gone on to the next runner: ``queued`` again, keeping the pages
    they stored (``ocr/workers.py`` decides which process is gone). Only jobs still held by ``worker_id`` move, so
    a runner that already took one over keeps it. Returns the number of jobs requeued."""
    return OcrJob.objects.filter(pk__in=job_ids, status=JobStatus.RUNNING, worker=worker_id).update(
        status=JobStatus.QUEUED, worker=""
    )


# --- A job shared by several workers (ocr/sharing.py) ----------------------------------------------------------


def _claim_page(*, job_id: object, numbers: Iterable[int]) -> int | None:
    """Take the first page of ``numbers`` nobody holds for this process: insert its ``running`` row with this
    runner (the unique page number makes it atomic across machines), or take over a running row left by a worker
    that is gone (``runner`` emptied by ``pages_release``). ``None``: none is free, or the job is no longer
    running or its owner cancelled it."""
    if not OcrJob.objects.filter(pk=job_id, status=JobStatus.RUNNING, cancel_requested_at__isnull=True).exists():
        return None
    rows = dict(
        (
            (number, (status, runner))
            for number, status, runner in OcrPage.objects.filter(job_id=job_id).values_list(
                "number", "status", "runner"
            )
        )
    )
    now = timezone.now()
    for number in numbers:
        row = rows.get(number)
        if row is None:
            try:
                with transaction.atomic():
                    OcrPage.objects.create(
                        job_id=job_id, number=number, status=PageStatus.RUNNING, runner=WORKER_ID, started_at=now
                    )
            except IntegrityError:
                continue  # another worker took it first
            return number
        if row == (PageStatus.RUNNING, ""):
            taken = OcrPage.objects.filter(job_id=job_id, number=number, status=PageStatus.RUNNING, runner="").update(
                runner=WORKER_ID, started_at=now, text="", text_seq=0, completion_chars=0
            )
            if taken:
                return number
    return None


page_claim = sync_to_async(_claim_page)


def _record_shared_page(*, job_id: object, outcome: PageOutcome) -> bool:
    """Write a page read by a worker that helps another run the job: only while the job runs and the page is still
    this worker's (its lead may have judged it gone and given the page to another). Returns whether it was written.
    """
    with transaction.atomic():
        if not OcrJob.objects.select_for_update().filter(pk=job_id, status=JobStatus.RUNNING).values("pk").first():
            return False
        mine = OcrPage.objects.filter(job_id=job_id, number=outcome.number, status=PageStatus.RUNNING, runner=WORKER_ID)
        if not mine.exists():
            return False
        _record_page(job_id=job_id, outcome=outcome)
        return True


page_record_shared = sync_to_async(_record_shared_page)


@dataclass(slots=True)
class PageStates:
    """Who holds what in a shared job: the pages stored final, and the running ones by runner (since when)."""

    final: set[int] = field(default_factory=set)
    held: dict[int, tuple[str, datetime | None]] = field(default_factory=dict)


def _page_states(*, job_id: object) -> PageStates:
    states = PageStates()
    for number, status, runner, started_at in OcrPage.objects.filter(job_id=job_id).values_list(
        "number", "status", "runner", "started_at"
    ):
        if status == PageStatus.RUNNING:
            states.held[number] = (runner, started_at)
        else:
            states.final.add(number)
    return states


page_states = sync_to_async(_page_states)


def _stored_pages(*, job_id: object, numbers: Iterable[int]) -> list[PageOutcome]:
    return [
        outcome_from_page(page)
        for page in OcrPage.objects.filter(job_id=job_id, number__in=list(numbers)).exclude(status=PageStatus.RUNNING)
    ]


stored_pages = sync_to_async(_stored_pages)


def _release_pages(*, job_id: object, runners: Iterable[str]) -> int:
    """Free the running pages that workers now gone held, for any runner of the job to claim again."""
    return OcrPage.objects.filter(job_id=job_id, status=PageStatus.RUNNING, runner__in=list(runners)).update(runner="")


pages_release = sync_to_async(_release_pages)


def _pages_usage(*, job_id: object, prompt: str) -> JobTotals:
    return usage_of(OcrPage.objects.filter(job_id=job_id), prompt)


pages_usage = sync_to_async(_pages_usage)
