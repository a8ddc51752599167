"""Sharing a job's pages between workers (``ocr/sharing.py``): claims in the ledger, and what the lead tells.

The real processes (two workers on one PDF, a helper killed, a cancel) are in ``tests/test_queue.py``; these check
the pieces on their own: page claims and conditional writes (on SQLite here, on PostgreSQL in the
``make test-postgres`` run), and the lead's forwarding of a helper's frames, with frames lost or a page restarted.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from ocr import services, sharing
from ocr.config import ocr_config
from ocr.models import JobStatus, OcrJob, OcrPage, Worker
from ocr.services import WORKER_ID, PageOutcome
from ocr.workers import runners_gone

from .conftest import make_user
from .contract import streamed_text

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]


def make_job(pages: int = 6, **fields: Any) -> OcrJob:
    fields.setdefault("status", JobStatus.RUNNING)
    return OcrJob.objects.create(
        owner=make_user(f"owner-{uuid.uuid4().hex[:6]}"),
        kind="pdf",
        file_name="long.pdf",
        content_type="application/pdf",
        engine="openai",
        page_count=pages,
        detached=True,
        **fields,
    )


def held_by(job: OcrJob, number: int, runner: str) -> None:
    OcrPage.objects.create(job=job, number=number, status="running", runner=runner, started_at=timezone.now())


def done(number: int, text: str = "") -> PageOutcome:
    now = timezone.now()
    return PageOutcome(
        number=number,
        status="done",
        text=text or f"page {number}",
        completion_tokens=3,
        started_at=now,
        finished_at=now,
    )


# --- claims -----------------------------------------------------------------------------------------------------


def test_each_claim_takes_the_lowest_page_nobody_holds() -> None:
    job = make_job()
    held_by(job, 1, "other-host:1")
    services._record_page(job_id=job.pk, outcome=done(2))
    assert services._claim_page(job_id=job.pk, numbers=range(1, 7)) == 3
    assert services._claim_page(job_id=job.pk, numbers=range(1, 7)) == 4
    row = OcrPage.objects.get(job=job, number=3)
    assert (row.status, row.runner) == ("running", WORKER_ID)


def test_no_page_is_claimed_of_a_job_that_no_longer_runs_or_was_cancelled() -> None:
    cancelled = make_job(cancel_requested_at=timezone.now())
    finished = make_job(status=JobStatus.DONE)
    assert services._claim_page(job_id=cancelled.pk, numbers=[1]) is None
    assert services._claim_page(job_id=finished.pk, numbers=[1]) is None
    assert not OcrPage.objects.exists()


def test_released_pages_are_claimed_again_with_their_partial_text_dropped() -> None:
    job = make_job(pages=2)
    held_by(job, 1, "gone-host:1")
    OcrPage.objects.filter(job=job, number=1).update(text="half a pa", completion_chars=9)
    held_by(job, 2, "live-host:2")
    assert services._claim_page(job_id=job.pk, numbers=[1, 2]) is None, "both pages are held"
    assert services._release_pages(job_id=job.pk, runners=["gone-host:1"]) == 1
    assert services._claim_page(job_id=job.pk, numbers=[1, 2]) == 1
    row = OcrPage.objects.get(job=job, number=1)
    assert (row.runner, row.text, row.completion_chars) == (WORKER_ID, "", 0)


def test_a_helper_s_page_is_written_only_while_the_job_runs_and_the_page_is_still_its_own() -> None:
    job = make_job(pages=3)
    assert services._claim_page(job_id=job.pk, numbers=[1, 2, 3]) == 1
    assert services._record_shared_page(job_id=job.pk, outcome=done(1)) is True
    assert OcrPage.objects.get(job=job, number=1).status == "done"
    held_by(job, 2, "other-host:2")  # the page moved to another runner
    assert services._record_shared_page(job_id=job.pk, outcome=done(2)) is False
    assert OcrPage.objects.get(job=job, number=2).status == "running"
    assert services._claim_page(job_id=job.pk, numbers=[3]) == 3
    services._close_job(
        job_id=job.pk, status=JobStatus.CANCELLED, reason="cancelled_by_owner", running_pages="cancelled"
    )
    assert services._record_shared_page(job_id=job.pk, outcome=done(3)) is False, "the job ended first"
    closed = OcrJob.objects.get(pk=job.pk)
    assert closed.completion_tokens == 3, "the usage is the page written before the close, once"
    assert OcrPage.objects.get(job=job, number=3).status == "cancelled"


def test_a_resumed_job_keeps_the_pages_other_workers_still_hold() -> None:
    job = make_job(pages=3)
    held_by(job, 1, "")  # partial text its previous runner stored
    held_by(job, 2, "other-host:7")
    services._record_page(job_id=job.pk, outcome=done(3))
    kept = services._kept_pages(job_id=job.pk)
    assert [outcome.number for outcome in kept] == [3]
    assert set(OcrPage.objects.filter(job=job).values_list("number", flat=True)) == {2, 3}


def test_runners_gone_by_the_rules_that_find_dead_processes() -> None:
    now = timezone.now()
    long_ago = now - timedelta(hours=1)
    Worker.objects.create(
        id="far-host:10", host="far-host", pid=10, namespace="elsewhere", started_at=long_ago, heartbeat_at=now
    )
    Worker.objects.create(
        id="far-host:11", host="far-host", pid=11, namespace="elsewhere", started_at=long_ago, heartbeat_at=long_ago
    )
    held = {WORKER_ID: now, "far-host:10": now, "far-host:11": now, "unknown-host:12": long_ago}
    assert runners_gone(held, now) == {"far-host:11", "unknown-host:12"}


def test_how_many_workers_a_job_asks_for() -> None:
    config = ocr_config()
    per_worker, most = config.pages_per_worker, config.max_workers_per_job
    assert sharing.helpers_wanted(per_worker, config) == 0
    assert sharing.helpers_wanted(per_worker + 1, config) == 1
    assert sharing.helpers_wanted(per_worker * 100, config) == most - 1


# --- the lead forwarding a helper's frames ------------------------------------------------------------------------


class Run:
    """What a ``LeadShare`` uses of its ``JobRun``: ``emit`` and the pages the stream has told."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.told_started: set[int] = set()
        self.told_ended: set[int] = set()

    def emit(self, event: dict[str, Any]) -> None:
        if event["type"] == "page_start":
            self.told_started.add(event["page"])
        elif event["type"] == "page_end":
            self.told_ended.add(event["page"])
        self.frames.append(event)


def lead(job: OcrJob) -> tuple[sharing.LeadShare, Run]:
    share = sharing.LeadShare(job_id=job.pk, page_count=job.page_count, helpers=0, dispatch=None, poll_seconds=1)  # type: ignore[arg-type]
    run = Run()
    share._run = run  # type: ignore[assignment]
    return share, run


def relayed(number: int, *deltas: str, end: bool = True, first_part: int = 0) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = [{"type": "page_start", "page": number}]
    frames += [{"type": "page_delta", "page": number, "delta": delta} for delta in deltas]
    if end:
        frames.append({"type": "page_end", "page": number, "status": "done"})
    return [{**frame, "part": first_part + index} for index, frame in enumerate(frames)]


async def test_a_helper_s_frames_in_order_are_forwarded_as_they_came() -> None:
    job = await sync_to_async(make_job)()
    share, run = lead(job)
    await share._forward(relayed(2, "Hello ", "world"))
    assert [frame["type"] for frame in run.frames] == ["page_start", "page_delta", "page_delta", "page_end"]
    assert "part" not in run.frames[0] and streamed_text(run.frames, 2) == "Hello world"


async def test_a_page_with_a_lost_frame_is_told_whole_from_the_ledger_when_it_ends() -> None:
    job = await sync_to_async(make_job)()
    share, run = lead(job)
    frames = relayed(3, "one ", "two ", "three")
    await share._forward(frames[:2])
    await sync_to_async(services._record_page)(job_id=job.pk, outcome=done(3, "one two three"))
    await share._forward(frames[3:])  # the frame with "two " was lost
    assert streamed_text(run.frames, 3) == "one two three"
    assert [frame["type"] for frame in run.frames].count("page_end") == 1
    assert [frame["type"] for frame in run.frames].count("page_start") == 1


async def test_a_page_started_again_by_another_runner_starts_its_text_again() -> None:
    job = await sync_to_async(make_job)()
    share, run = lead(job)
    await share._forward(relayed(4, "stale ", end=False))  # its first runner is gone
    await share._forward(relayed(4, "fresh ", "text"))
    assert [frame["type"] for frame in run.frames].count("page_start") == 1
    assert streamed_text(run.frames, 4) == "fresh text"


async def test_the_ledger_tells_pages_whose_frames_never_arrived_and_frees_those_of_gone_workers() -> None:
    job = await sync_to_async(make_job)(pages=3)
    share, run = lead(job)
    await sync_to_async(services._record_page)(job_id=job.pk, outcome=done(1, "stored by a helper"))
    await sync_to_async(held_by)(job, 2, "unknown-host:99")
    await sync_to_async(OcrPage.objects.filter(job=job, number=2).update)(
        started_at=timezone.now() - timedelta(hours=1)
    )
    await share._sync()
    assert streamed_text(run.frames, 1) == "stored by a helper" and run.told_ended == {1}
    assert await sync_to_async(lambda: OcrPage.objects.get(job=job, number=2).runner)() == ""
    assert await share.next() == 2, "the lead reads the page the gone worker held"
