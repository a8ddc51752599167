"""Periodic work: deleting uploads past ``OCR_UPLOAD_RETENTION_DAYS``, and the upload form's stale pending uploads.

Every process that runs jobs (web processes and queue workers) calls ``run_due`` from its heartbeat thread; a task
runs at most once per its interval across all of them, whoever comes first (an atomic ``cache.add``: Redis with
several processes, which production needs anyway). Each task is idempotent, so a process that dies in the middle
only leaves the rest to the next run.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from ocr.config import ocr_config
from ocr.models import JobStatus, OcrJob

logger = logging.getLogger(__name__)

#: How often the clean-up of old uploads runs, and how many files one run deletes at most.
UPLOAD_SWEEP_SECONDS = 3600
UPLOAD_SWEEP_BATCH = 500
#: How often the upload form's pending uploads past their short lifetime are deleted (``ocr/pending.py``).
PENDING_SWEEP_SECONDS = 600


def expire_uploads(now: datetime | None = None, *, batch: int = UPLOAD_SWEEP_BATCH) -> int:
    """Delete the uploaded files of jobs that ended more than ``OCR_UPLOAD_RETENTION_DAYS`` ago (0: keep them).
    The jobs, their pages' text and their usage stay; the job page says the file is gone. Returns how many."""
    days = ocr_config().upload_retention_days
    if days <= 0:
        return 0
    now = now or timezone.now()
    cutoff = now - timedelta(days=days)
    jobs = list(
        OcrJob.objects.filter(status__in=JobStatus.terminal(), finished_at__lt=cutoff)
        .exclude(upload="")
        .only("pk", "upload")[:batch]
    )
    for job in jobs:
        name = job.upload.name
        with transaction.atomic():
            # The row first: a job page never links to a file that is no longer there.
            OcrJob.objects.filter(pk=job.pk, upload=name).update(upload="", upload_expired_at=now)
        try:
            job.upload.storage.delete(name)
        except OSError:
            logger.warning("could not delete the expired upload %s", name)
    if jobs:
        logger.info("deleted %d upload(s) older than %d days", len(jobs), days)
    return len(jobs)


def run_due() -> None:
    """Run the periodic tasks whose interval has passed (in any process)."""
    if cache.add("ocr:housekeeping:uploads", "1", timeout=UPLOAD_SWEEP_SECONDS):
        expire_uploads()
    if cache.add("ocr:housekeeping:pending", "1", timeout=PENDING_SWEEP_SECONDS):
        from ocr.pending import expire_pending_uploads

        expire_pending_uploads()
