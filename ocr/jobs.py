"""Detached jobs: the ones that outlive the request that submitted them (browser uploads, the job API).

Life of a detached job, the same with or without a task queue:

1. ``submit_job`` validates the upload, records the job with its file kept in ``STORAGES`` and hands it to a
   runner. With ``OCR_QUEUE_URL`` the job is recorded ``queued`` and one message is sent to the task queue
   (``ocr/queue.py``); a worker process on any machine takes it. Without a queue, the web process that received
   the upload runs it at once, in the background (``ocr.live.start_live_job``).
2. ``run_detached_job`` is the runner's side: take the job (``ocr.services.job_claim``), read its upload back,
   and run the pipeline over the pages not stored yet, publishing its events live (``ocr/live.py``).
3. A runner that dies hands the job on: the queue redelivers its unacknowledged message, and recovery
   (``ocr/workers.py``) puts the job back to ``queued``; without a queue, the next server process to start resumes
   it (``wake_orphans``). Pages already stored are kept and not sent to the engine again.
4. The pipeline closes the job (status and usage from its pages) as it does for a streaming request.

On the task queue a long PDF is shared: its runner leads, and asks other workers to read some of its pages
(``help_detached_job``, ``ocr/sharing.py``).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import uuid

from asgiref.sync import sync_to_async
from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

from ocr import engines, intake, metrics, queue
from ocr.config import config_for
from ocr.errors import QueueUnavailable
from ocr.live import LiveJob, logged_summary, request_cancel, start_live_job
from ocr.models import JobKind, JobStatus, OcrJob
from ocr.pipeline import JobRun, prepare_job
from ocr.services import (
    WORKER_ID,
    job_claim,
    job_discard,
    job_fail,
    job_request_cancel,
    job_retry_failed_pages,
    kept_pages,
    page_states,
)
from ocr.sharing import HelperShare, LeadShare, help_with, helpers_wanted, release_gone_runners
from ocr.webhooks import deliver_in_background, job_ended, overdue_deliveries

logger = logging.getLogger(__name__)

#: A resumed job's first sequence number is this far past its stored one (see ``ocr.live.LiveJob``): a runner
#: publishes at most a few dozen batches a second, so its predecessor cannot have got this far unseen.
RESUME_SEQ_GAP = 1_000_000_000


async def submit_job(
    *,
    owner: AbstractBaseUser,
    upload: intake.Upload,
    kind: str,
    source: str,
    prompt: str,
    callback_url: str = "",
    text_layer: str = "",
) -> OcrJob:
    """Validate and record a detached job and hand it to a runner; returns the job (``queued`` or ``running``).

    Raises before anything is kept: ``IntakeError``, ``EngineNotConfigured``, ``LimitExceeded``, and
    ``QueueUnavailable`` when the broker does not take the job.
    """
    queued = queue.enabled()
    run = await prepare_job(
        owner=owner,
        upload=upload,
        kind=kind,
        source=source,
        prompt=prompt,
        detached=True,
        callback_url=callback_url,
        text_layer=text_layer,
        queued=queued,
    )
    if queued:
        await run.document.aclose()  # a worker opens it again
        await dispatch(run.job.pk, discard_on_failure=True)
        metrics.queue_event("submitted")
        return run.job
    start_live_job(run, on_end=job_ended)
    metrics.queue_event("submitted")
    metrics.queue_event("started")  # this process is its runner, at once
    metrics.OCR_QUEUE_WAIT.observe(max(0.0, (timezone.now() - run.job.created_at).total_seconds()))
    return run.job


async def dispatch(job_id: uuid.UUID, *, discard_on_failure: bool = False) -> None:
    """Hand a queued job to a runner: a message on the queue, or this process without one."""
    if not queue.enabled():
        await resume_orphans()
        return
    try:
        await sync_to_async(queue.enqueue, thread_sensitive=False)(job_id)
    except Exception as exc:
        logger.warning("the task queue did not take job %s: %s", job_id, exc)
        metrics.queue_event("refused")
        if discard_on_failure:
            await job_discard(job_id=job_id)
        raise QueueUnavailable(
            "The job queue is not available right now; nothing was kept. Try again in a moment.", code=None
        ) from exc


async def cancel_job(job: OcrJob) -> str | None:
    """Cancel a job for its owner: a queued one ends at once; a running one's runner is told, in whatever process
    it runs, and stops its engine requests. Returns the job's status after, or ``None`` if it had ended."""
    status = await job_request_cancel(job_id=job.pk)
    if status == JobStatus.RUNNING:
        await request_cancel(job.pk)
    elif status == JobStatus.CANCELLED:
        await job_ended(job.pk)  # it never reached a runner
    return status


async def retry_failed_pages(job: OcrJob) -> int:
    """Run the failed (and cut off, cancelled or never run) pages of a finished job again; returns how many."""
    pages = await job_retry_failed_pages(job_id=job.pk)
    if pages:
        await dispatch(job.pk)
    return pages


#: Jobs this process runs now, as their lead or as a helper: it takes no second part in any of them.
_runners: set[uuid.UUID] = set()


async def run_detached_job(job_id: uuid.UUID | str) -> None:
    """Run a detached job to its end in this process (a queue worker, or the web process without a queue)."""
    job_id = uuid.UUID(str(job_id))
    job, resumed = await job_claim(job_id=job_id)
    if job is None:
        await job_ended(job_id)  # ended before (a duplicate delivery) or cancelled while it waited
        return
    metrics.queue_event("resumed" if resumed else "started")
    if not resumed:
        metrics.OCR_QUEUE_WAIT.observe(max(0.0, (timezone.now() - job.created_at).total_seconds()))
    _runners.add(job_id)
    try:
        run = await _open_run(job, resumed=resumed)
        if run is None:
            await job_ended(job_id)
            return
        live = LiveJob(run, seq=job.live_seq + RESUME_SEQ_GAP if resumed else 0, on_end=job_ended)
        task = asyncio.current_task()
        live.task = task
        try:
            await live.main()
        except asyncio.CancelledError:
            if not live.cancel_requested or task is None:
                raise
            task.uncancel()  # its owner cancelled it: the job is closed, this runner's work is done
    finally:
        _runners.discard(job_id)


async def help_detached_job(job_id: uuid.UUID | str) -> None:
    """Read pages of a job another worker runs (``ocr/sharing.py``), unless this process already takes part in it
    or the job no longer runs."""
    job_id = uuid.UUID(str(job_id))
    if job_id in _runners:
        return
    job = await sync_to_async(_job_to_help)(job_id)
    if job is None:
        return
    _runners.add(job_id)
    try:
        document = await _open_document(job)
        if document is None:
            return  # its lead reads the same upload and says what is wrong with it
        metrics.queue_event("helped")
        run = JobRun(
            job=job,
            document=document,
            engine=engines.get_engine(),
            prompt=job.prompt,
            page_concurrency=config_for(text_layer=job.text_layer).page_concurrency,
            share=HelperShare(job_id=job.pk, page_count=document.page_count),
        )
        await help_with(run)
    finally:
        _runners.discard(job_id)


def _job_to_help(job_id: uuid.UUID) -> OcrJob | None:
    return (
        OcrJob.objects.filter(
            pk=job_id, status=JobStatus.RUNNING, deleted_at__isnull=True, cancel_requested_at__isnull=True
        )
        .exclude(worker=WORKER_ID)
        .first()
    )


async def _ask_helpers(job_id: uuid.UUID, count: int) -> None:
    await sync_to_async(queue.enqueue_helpers, thread_sensitive=False)(job_id, count)


async def _open_document(job: OcrJob) -> intake.Document | None:
    """The job's upload, read back from storage and opened; ``None`` when it is gone or unreadable."""
    config = config_for(text_layer=job.text_layer)
    try:
        data = await sync_to_async(_read_upload, thread_sensitive=False)(job)
        return await intake.open_upload(
            intake.Upload(data=data, file_name=job.file_name), expected_kind=job.kind, config=config
        )
    except Exception as exc:
        logger.warning("job %s: its upload cannot be read (%s)", job.pk, exc)
        return None


async def _open_run(job: OcrJob, *, resumed: bool) -> JobRun | None:
    """The pipeline run of a claimed job, or ``None`` (the job is closed as failed) when its upload is gone or
    unreadable. On the task queue, a PDF with many pages left is shared with other workers."""
    config = config_for(text_layer=job.text_layer)
    try:
        engine = engines.get_engine()
    except Exception:
        logger.exception("job %s cannot run: no engine", job.pk)
        await job_fail(job_id=job.pk, reason="crashed")
        return None
    document = await _open_document(job)
    if document is None:
        await job_fail(job_id=job.pk, reason="upload_unreadable")
        return None
    # Only a PDF on the task queue is shared with other workers.
    shareable = queue.enabled() and job.kind == JobKind.PDF
    if resumed and shareable:
        # The pages its previous runner (or a helper that is gone too) held are read again.
        await release_gone_runners(job.pk)
    kept = await kept_pages(job_id=job.pk) if resumed else []
    logged = await logged_summary(job.pk) if resumed else None
    share = None
    helpers = helpers_wanted(document.page_count - len(kept), config)
    # A resumed job whose pages other workers still hold stays shared, even with too few pages left to ask for more.
    if shareable and (helpers or (resumed and (await page_states(job_id=job.pk)).held)):
        share = LeadShare(
            job_id=job.pk,
            page_count=document.page_count,
            helpers=helpers,
            dispatch=_ask_helpers,
            poll_seconds=config.share_poll_seconds,
        )
    return JobRun(
        job=job,
        document=document,
        engine=engine,
        prompt=job.prompt,
        page_concurrency=config.page_concurrency,
        kept=kept,
        logged=logged,
        share=share,
    )


def _read_upload(job: OcrJob) -> bytes:
    if not job.upload:
        raise FileNotFoundError("no stored upload")
    with job.upload.open("rb") as stored:
        return stored.read()


# --- Without a queue: the web process resumes what was handed on ---------------------------------------------

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def serve_orphans(loop: asyncio.AbstractEventLoop) -> None:
    """Record the server's event loop (at its first request) and resume the jobs waiting for a runner."""
    global _loop
    with _loop_lock:
        if _loop is not None or queue.enabled():
            return
        _loop = loop
    loop.create_task(resume_orphans(), name="ocr-resume-orphans", context=contextvars.Context())


def serve_deliveries(loop: asyncio.AbstractEventLoop) -> None:
    """A queue worker's event loop, where overdue webhook deliveries are picked up (``wake_orphans``)."""
    global _loop
    with _loop_lock:
        _loop = loop


def wake_orphans() -> None:
    """From any thread (the heartbeat's, after recovery), on this process's event loop: resume the jobs waiting
    for a runner (without a queue) and pick up the webhook deliveries whose process went away."""
    loop = _loop
    if loop is not None and not loop.is_closed():
        asyncio.run_coroutine_threadsafe(_wake(), loop)


async def _wake() -> None:
    if not queue.enabled():
        await resume_orphans()
    for delivery_id in await sync_to_async(overdue_deliveries)():
        deliver_in_background(delivery_id)


_resuming: set[uuid.UUID] = set()


async def resume_orphans() -> None:
    """Without a queue, start every queued detached job in this process (claiming is atomic: with several web
    processes each job runs in one)."""
    job_ids = await sync_to_async(_queued_jobs)()
    for job_id in job_ids:
        if job_id in _resuming:
            continue
        _resuming.add(job_id)
        task = asyncio.get_running_loop().create_task(
            run_detached_job(job_id), name=f"ocr-resume-{job_id}", context=contextvars.Context()
        )
        task.add_done_callback(lambda _task, job_id=job_id: _resuming.discard(job_id))
        _keep.add(task)
        task.add_done_callback(_keep.discard)


_keep: set[asyncio.Task[None]] = set()


def _queued_jobs() -> list[uuid.UUID]:
    return list(
        OcrJob.objects.filter(status=JobStatus.QUEUED, detached=True, deleted_at__isnull=True)
        .order_by("created_at")
        .values_list("pk", flat=True)[:1000]
    )


def measure_queue() -> None:
    """Set the queue-depth gauge from the ledger (each process's heartbeat: the gauge takes the max)."""
    metrics.OCR_QUEUE_DEPTH.set(
        OcrJob.objects.filter(status=JobStatus.QUEUED, detached=True, deleted_at__isnull=True).count()
    )
