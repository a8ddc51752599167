"""Pending uploads: files the upload form has checked but no job has taken yet.

The preview of the upload form validates the chosen file and keeps its bytes here, and the form carries the
pending upload's id in a hidden field; Start then sends the id, not the file again, so every job costs one upload.
A form refused for another reason (its prompt, a limit) keeps its files the same way, with or without JavaScript.

Guarantees:

- A pending upload belongs to its owner (and, with authentication off, to the client address of the anonymous
  user's request): anyone else's id is as good as an unknown one.
- It is used once: ``pending_upload_claim`` takes it in one conditional UPDATE, so two submissions racing with one
  id make one job. A submission that fails (a limit, the queue) gives it back (``pending_upload_release``) so the
  form can offer it again; one that made its job deletes it (``pending_upload_consume``).
- It lives ``PENDING_LIFETIME``; ``expire_pending_uploads`` (housekeeping) deletes the older ones and their files.
  An owner keeps at most ``MAX_PENDING_PER_OWNER``: a new one removes the oldest beyond it, so previews alone
  cannot fill the disk.
- The bytes are checked by the intake before they are kept; the job's own intake checks them again when it is
  made, as for any upload.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta

from asgiref.sync import sync_to_async
from django.contrib.auth.models import AbstractBaseUser
from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from ocr.models import PendingUpload

logger = logging.getLogger(__name__)

PENDING_LIFETIME = timedelta(hours=1)
MAX_PENDING_PER_OWNER = 20
PENDING_FOLDER = "pending"  # the storage folder of their files (``models.pending_upload_path``)


def _owned(owner: AbstractBaseUser, *, now: datetime | None = None):
    from accounts.limits import limits_address

    now = now or timezone.now()
    return PendingUpload.objects.filter(
        owner=owner, client_address=limits_address(owner), created_at__gt=now - PENDING_LIFETIME
    )


def parse_ids(values: Iterable[str]) -> list[uuid.UUID]:
    """The well-formed ids among ``values`` (a form's hidden fields), in order, without repeats."""
    ids: list[uuid.UUID] = []
    for value in values:
        try:
            key = uuid.UUID(str(value))
        except ValueError:
            continue
        if key not in ids:
            ids.append(key)
    return ids


def _create(*, owner: AbstractBaseUser, data: bytes, file_name: str, kind: str, page_count: int) -> PendingUpload:
    """Keep ``data`` (already checked by the intake) for ``owner``; the oldest beyond the owner's cap go."""
    from accounts.limits import limits_address

    pending = PendingUpload(
        owner=owner,
        client_address=limits_address(owner),
        file_name=file_name,
        kind=kind,
        page_count=page_count,
        size=len(data),
    )
    pending.data.save("upload", ContentFile(data), save=False)
    pending.save(force_insert=True)
    surplus = list(
        PendingUpload.objects.filter(owner=owner, client_address=pending.client_address, claimed_at__isnull=True)
        .order_by("-created_at")
        .values_list("pk", flat=True)[MAX_PENDING_PER_OWNER:]
    )
    if surplus:
        delete_pending(PendingUpload.objects.filter(pk__in=surplus))
    return pending


pending_upload_create = sync_to_async(_create)


def _available(*, owner: AbstractBaseUser, ids: Iterable[uuid.UUID]) -> list[PendingUpload]:
    """The owner's live, untaken pending uploads among ``ids``, in the order of ``ids``."""
    ids = list(ids)
    found = {pending.pk: pending for pending in _owned(owner).filter(pk__in=ids, claimed_at__isnull=True)}
    return [found[key] for key in ids if key in found]


available_pending_uploads = _available
pending_uploads_available = sync_to_async(_available)


def _claim(*, owner: AbstractBaseUser, pending_id: uuid.UUID) -> PendingUpload | None:
    """Take the owner's pending upload for one job submission, or ``None`` (unknown, someone else's, expired or
    already taken)."""
    now = timezone.now()
    if not _owned(owner, now=now).filter(pk=pending_id, claimed_at__isnull=True).update(claimed_at=now):
        return None
    # Deleted in between (its owner discarded it from another tab, or the cap pushed it out): as good as unknown.
    return PendingUpload.objects.filter(pk=pending_id).first()


pending_upload_claim = sync_to_async(_claim)


def _read(pending: PendingUpload) -> bytes:
    with pending.data.open("rb") as file:
        return file.read()


pending_upload_read = sync_to_async(_read, thread_sensitive=False)


def _release(pending: PendingUpload) -> None:
    """Give back a claimed pending upload whose job was not made: the form may offer it again."""
    PendingUpload.objects.filter(pk=pending.pk).update(claimed_at=None)


pending_upload_release = sync_to_async(_release)


def _consume(pending: PendingUpload) -> None:
    """A job was made from it: delete it and its file."""
    delete_pending(PendingUpload.objects.filter(pk=pending.pk))


pending_upload_consume = sync_to_async(_consume)


def delete_pending(pendings: QuerySet[PendingUpload]) -> int:
    """Delete ``pendings`` and their files. Returns how many rows went.

    The delete keeps the query's own conditions (untaken, say), so a row another request claimed in between stays,
    and only the files of the rows that went are deleted."""
    names = dict(pendings.values_list("pk", "data"))
    with transaction.atomic():
        deleted, _ = pendings.filter(pk__in=list(names)).delete()
    kept = set(PendingUpload.objects.filter(pk__in=list(names)).values_list("pk", flat=True))
    storage = PendingUpload._meta.get_field("data").storage
    for pk, name in names.items():
        if name and pk not in kept:
            try:
                storage.delete(name)
            except OSError:
                logger.warning("could not delete the pending upload %s", name)
    return deleted


def expire_pending_uploads(now: datetime | None = None) -> int:
    """Delete the pending uploads older than ``PENDING_LIFETIME`` and their files, and the files older than that
    which no row names (their owner was deleted, or a process stopped between writing a file and its row).
    Returns how many uploads were deleted."""
    now = now or timezone.now()
    cutoff = now - PENDING_LIFETIME
    # A row taken for a job is deleted by that job's submission; one taken long ago is left from a process that
    # stopped on the way.
    expired = PendingUpload.objects.filter(created_at__lte=cutoff).exclude(claimed_at__gt=cutoff)
    deleted = delete_pending(expired)
    _delete_orphan_files(before=now - PENDING_LIFETIME)
    return deleted


def _delete_orphan_files(*, before: datetime) -> None:
    storage = PendingUpload._meta.get_field("data").storage
    try:
        _folders, names = storage.listdir(PENDING_FOLDER)
    except (FileNotFoundError, NotADirectoryError):
        return
    known = set(PendingUpload.objects.values_list("data", flat=True))
    for name in names:
        path = f"{PENDING_FOLDER}/{name}"
        if path in known:
            continue
        try:
            if storage.get_modified_time(path) < before:
                storage.delete(path)
        except OSError:
            logger.warning("could not delete the orphaned pending upload %s", path)


def _discard(*, owner: AbstractBaseUser, ids: Iterable[uuid.UUID]) -> int:
    """Delete the owner's untaken pending uploads among ``ids`` (the form chose other files instead)."""
    return delete_pending(_owned(owner).filter(pk__in=list(ids), claimed_at__isnull=True))


pending_uploads_discard = sync_to_async(_discard)
