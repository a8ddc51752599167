"""Batches of the upload form: one job per file, with the same prompt, each through the one way in
(``ocr.jobs.submit_job``, hence ``ocr.pipeline.prepare_job``).

Guarantees:

- Every file is its own job, checked by the intake and admitted by the owner's limits on its own
  (``accounts.limits.admit_job`` runs once per job): a batch is never a way around a limit.
- A file refused (the intake, a limit, a pending upload gone) does not stop the others; the outcome names it.
- A file refused by a limit is not lost: a pending upload is given back, a file sent with the form is kept as one
  (``ocr/pending.py``), so the form can offer it again without choosing it again.
- A pending upload makes at most one job (it is claimed first), and is deleted once its job is recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from asgiref.sync import sync_to_async
from django.contrib.auth.models import AbstractBaseUser
from django.core.files import File

from accounts.limits import LimitExceeded
from myocr.http import ApiError
from ocr import intake, pending
from ocr.config import ocr_config
from ocr.errors import QueueUnavailable
from ocr.events import ErrorCode
from ocr.jobs import submit_job
from ocr.models import JobSource, OcrJob, PendingUpload


class PendingGone(ApiError):
    """The form named a pending upload that is no longer there (expired, or used by another submission)."""

    code = ErrorCode.PENDING_UPLOAD_GONE


@dataclass(slots=True)
class Refused:
    file_name: str
    #: ``IntakeError`` and the other ``OcrError``s, ``LimitExceeded`` or ``PendingGone``.
    error: ApiError


@dataclass(slots=True)
class BatchOutcome:
    started: list[OcrJob] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    #: The refused files kept for the form to offer again (refused by a limit).
    kept: list[PendingUpload] = field(default_factory=list)


async def job_from_bytes(
    *, owner: AbstractBaseUser, data: bytes, file_name: str, prompt: str, text_layer: str = ""
) -> OcrJob:
    """One browser job from ``data``. Raises as ``submit_job`` does."""
    return await submit_job(
        owner=owner,
        upload=intake.Upload(data=data, file_name=file_name),
        kind=intake.job_kind(data),
        source=JobSource.WEB,
        prompt=prompt,
        text_layer=text_layer,
    )


async def job_from_pending(
    *, owner: AbstractBaseUser, upload: PendingUpload, prompt: str, text_layer: str = ""
) -> OcrJob:
    """One job from the owner's pending upload, taken for it once and given back if the job is refused. Raises
    ``PendingGone`` and as ``submit_job`` does."""
    claimed = await pending.pending_upload_claim(owner=owner, pending_id=upload.pk)
    if claimed is None:
        raise PendingGone("The pending upload is no longer kept.")
    try:
        data = await pending.pending_upload_read(claimed)
        job = await job_from_bytes(
            owner=owner, data=data, file_name=claimed.file_name, prompt=prompt, text_layer=text_layer
        )
    except OSError:
        await pending.pending_upload_release(claimed)
        raise PendingGone("The pending upload's file cannot be read.") from None
    except BaseException:
        await pending.pending_upload_release(claimed)
        raise
    await pending.pending_upload_consume(claimed)
    return job


async def keep_upload(*, owner: AbstractBaseUser, data: bytes, file_name: str) -> PendingUpload:
    """Check ``data`` with the intake and keep it as the owner's pending upload. Raises ``OcrError``."""
    kind = intake.job_kind(data)
    document = await intake.open_upload(
        intake.Upload(data=data, file_name=file_name), expected_kind=kind, config=ocr_config()
    )
    page_count = document.page_count
    await document.aclose()
    return await pending.pending_upload_create(
        owner=owner, data=data, file_name=file_name, kind=kind, page_count=page_count
    )


async def read_file(file: File) -> bytes:
    file.seek(0)
    return await sync_to_async(file.read, thread_sensitive=False)()


def without_resent(kept: Sequence[PendingUpload], files: Sequence[File]) -> list[File]:
    """``files`` without those the form also names as kept (same name and size): a browser that could not leave
    out the bytes of files it had already sent to the preview must not start their jobs twice."""
    known = {(upload.file_name, upload.size) for upload in kept}
    return [file for file in files if (intake.clean_file_name(file.name), file.size) not in known]


async def batch_submit(
    *, owner: AbstractBaseUser, files: Sequence[PendingUpload | File], prompt: str, text_layer: str = ""
) -> BatchOutcome:
    """One job per file (pending uploads, or files sent with the form, read one at a time), in order."""
    outcome = BatchOutcome()
    for source in files:
        is_pending = isinstance(source, PendingUpload)
        name = source.file_name if is_pending else intake.clean_file_name(source.name)
        try:
            if is_pending:
                job = await job_from_pending(owner=owner, upload=source, prompt=prompt, text_layer=text_layer)
            else:
                data = await read_file(source)
                job = await job_from_bytes(owner=owner, data=data, file_name=name, prompt=prompt, text_layer=text_layer)
        except (LimitExceeded, QueueUnavailable) as error:
            # Refused for now, not for what the file is: it is kept, so that it can be offered again.
            outcome.refused.append(Refused(name, error))
            outcome.kept.append(
                source if is_pending else await keep_upload(owner=owner, data=await read_file(source), file_name=name)
            )
        except ApiError as error:
            outcome.refused.append(Refused(name, error))
        else:
            outcome.started.append(job)
    return outcome
