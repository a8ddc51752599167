"""``ocr/live.py``: the live runner that numbers and publishes a job's events, and the feeds that resume from them.

Driven by hand with the in-memory channel layer and scripted runs, not the engine: ``tests/test_web_live.py``
covers the browser's path end to end.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from channels.layers import get_channel_layer

from ocr.live import (
    control_group,
    follow_events,
    job_frames,
    job_group,
    logged_summary,
    rebuilt_frames,
    start_live_job,
    stored_end_frame,
)
from ocr.models import OcrJob, OcrJobEvents, OcrPage

from .contract import assert_contract, streamed_text

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_channel_layer")]


async def new_job(owner: Any, **fields: Any) -> OcrJob:
    values = {"kind": "pdf", "file_name": "doc.pdf", "content_type": "application/pdf", "engine": "openai"}
    return await OcrJob.objects.acreate(owner=owner, **{**values, **fields})


async def log(job: OcrJob, *frames: dict[str, Any]) -> None:
    """Store ``frames`` (with their seq) as one row of the job's event log, as the runner does."""
    await OcrJobEvents.objects.acreate(
        job=job, first_seq=frames[0]["seq"], last_seq=frames[-1]["seq"], frames=list(frames)
    )


def numbered(first: int, *frames: dict[str, Any]) -> list[dict[str, Any]]:
    return [{**frame, "seq": seq} for seq, frame in enumerate(frames, start=first)]


async def collect(batches: AsyncIterator[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    return [batch async for batch in batches]


END = {"type": "end", "status": "done"}


# --- groups -----------------------------------------------------------------------------------------------


def test_a_job_has_one_group_name_however_its_id_is_written_and_a_separate_control_group():
    job_id = uuid.uuid4()

    assert job_group(job_id) == job_group(str(job_id)) == job_group(job_id.hex) == f"ocr-job-{job_id.hex}"
    assert control_group(job_id) == control_group(job_id.hex) != job_group(job_id)


# --- frames rebuilt from the ledger -----------------------------------------------------------------------


async def test_an_ended_streaming_job_is_rebuilt_from_its_pages_in_order_and_numbered_from_one(alice):
    job = await new_job(
        alice, status="partial", page_count=2, pages_done=1, pages_failed=1, prompt_tokens=30, completion_tokens=7
    )
    second = await OcrPage.objects.acreate(
        job=job, number=2, status="failed", error_code="engine_error", error_message="The engine failed."
    )
    first = await OcrPage.objects.acreate(job=job, number=1, status="done", text="Page one.", prompt_tokens=30)

    frames = rebuilt_frames(job, [first, second])

    assert [frame["type"] for frame in frames] == [
        "start",
        "page_start",
        "page_delta",
        "page_end",
        "page_start",  # a page without text has no delta
        "page_end",
        "end",
    ]
    assert [frame["seq"] for frame in frames] == list(range(1, 8))
    assert assert_contract(frames, "pdf")["status"] == "partial"
    assert streamed_text(frames, 1) == "Page one." and streamed_text(frames, 2) == ""
    assert frames[5]["error"]["code"] == "engine_error"
    end = frames[-1]
    assert (end["pages_done"], end["pages_failed"]) == (1, 1)
    assert end["usage"]["prompt_tokens"] == 30 and end["usage"]["completion_tokens"] == 7
    assert end["job_id"] == frames[0]["job_id"] == str(job.pk)


async def test_a_failed_job_is_rebuilt_with_its_error_right_before_the_end(alice):
    job = await new_job(alice, status="failed", page_count=1, error_code="unreadable_file", error_message="Not a PDF.")

    frames = rebuilt_frames(job, [])

    assert [frame["type"] for frame in frames] == ["start", "error", "end"]
    assert frames[1]["error"] == {"code": "unreadable_file", "message": "Not a PDF."}
    assert frames[2]["error"] == frames[1]["error"]
    assert_contract(frames, "pdf")


async def test_the_stored_end_frame_names_an_error_only_when_the_job_has_one(alice):
    done = await new_job(alice, status="done")
    cancelled = await new_job(alice, status="cancelled", error_code="cancelled", error_message="Cancelled.")

    assert "error" not in stored_end_frame(done, seq=4)
    assert stored_end_frame(done, seq=4)["seq"] == 4
    assert stored_end_frame(cancelled, seq=1)["error"] == {"code": "cancelled", "message": "Cancelled."}


async def test_job_frames_of_an_ended_streaming_job_resume_after_the_given_seq(alice):
    job = await new_job(alice, status="done", page_count=1, pages_done=1)
    await OcrPage.objects.acreate(job=job, number=1, status="done", text="All of it.")

    everything = await collect(job_frames(job, after=0))
    resumed = await collect(job_frames(job, after=3))

    assert len(everything) == 1 and [frame["seq"] for frame in everything[0]] == [1, 2, 3, 4, 5]
    assert resumed == [everything[0][3:]], "only the frames past seq 3: the page's end and the job's"


async def test_job_frames_of_a_running_streaming_job_wait_for_its_end_then_send_it(alice):
    job = await new_job(alice, status="running", page_count=1)
    frames = aiter(job_frames(job, after=0, poll=0))

    assert await anext(frames) == [], "a keep-alive while the job runs"
    await OcrPage.objects.acreate(job=job, number=1, status="done", text="Late.")
    await OcrJob.objects.filter(pk=job.pk).aupdate(status="done", pages_done=1)
    [*_, end] = await anext(frames)

    assert end["type"] == "end" and end["status"] == "done"
    with pytest.raises(StopAsyncIteration):
        await anext(frames)


# --- the event log of a detached job ----------------------------------------------------------------------


async def test_a_logged_job_is_replayed_after_the_given_seq_and_ends_at_its_end_frame(alice):
    job = await new_job(alice, status="done", detached=True, live_seq=6)
    frames = numbered(
        1,
        {"type": "start", "kind": "pdf", "pages": 1},
        {"type": "page_start", "page": 1},
        {"type": "page_delta", "page": 1, "delta": "ab"},
        {"type": "page_delta", "page": 1, "delta": "c"},
        {"type": "page_end", "page": 1, "status": "done"},
        END,
    )
    await log(job, *frames[:3])
    await log(job, *frames[3:])

    assert await collect(follow_events(job.pk, after=0)) == [frames]
    assert await collect(follow_events(job.pk, after=2)) == [frames[2:]], "resumes inside a stored row"
    assert await collect(follow_events(job.pk, after=6)) == [], "nothing after the end"


async def test_the_log_summary_says_what_a_resuming_runner_must_not_tell_again(alice):
    job = await new_job(alice, detached=True)
    await log(
        job,
        *numbered(
            1,
            {"type": "start"},
            {"type": "page_start", "page": 1},
            {"type": "page_start", "page": 2},
            {"type": "page_end", "page": 2},
        ),
    )

    summary = await logged_summary(job.pk)

    assert summary.start is True
    assert summary.started == {1, 2} and summary.ended == {2}


async def test_a_detached_job_that_ended_without_an_end_frame_is_closed_with_its_stored_end(alice):
    job = await new_job(alice, status="cancelled", detached=True, error_code="cancelled", error_message="Gone.")
    await log(job, *numbered(1, {"type": "start"}))

    batches = await collect(job_frames(job, after=0))

    assert batches[0] == numbered(1, {"type": "start"})
    [[end]] = batches[1:]
    assert end["type"] == "end" and end["status"] == "cancelled" and end["seq"] == 2
    assert end["error"]["code"] == "cancelled"


async def test_live_batches_follow_the_log_and_the_feed_ends_with_the_end_frame(alice):
    job = await new_job(alice, status="running", detached=True, live_seq=1)
    await log(job, *numbered(1, {"type": "start"}))
    layer = get_channel_layer()
    feed = aiter(follow_events(job.pk, after=0, poll=30))

    assert await anext(feed) == numbered(1, {"type": "start"})
    live = numbered(2, {"type": "page_start", "page": 1}, {"type": "page_delta", "page": 1, "delta": "x"})
    await layer.group_send(job_group(job.pk), {"type": "live.batch", "seq": 1, "first": 1, "events": []})  # old
    await layer.group_send(job_group(job.pk), {"type": "live.batch", "seq": 3, "first": 2, "events": live})
    assert await anext(feed) == live
    ending = numbered(4, {"type": "page_end", "page": 1}, END)
    await layer.group_send(job_group(job.pk), {"type": "live.batch", "seq": 5, "first": 4, "events": ending})
    assert await anext(feed) == ending
    with pytest.raises(StopAsyncIteration):
        await anext(feed)


async def test_a_gap_in_the_live_batches_asks_for_a_flush_and_is_filled_from_the_log(alice):
    """Seq 2 never arrived: the feed buffers seq 3, asks the runner to store its log, reads 2 (and 3) from it, and
    sends each frame once."""
    job = await new_job(alice, status="running", detached=True, live_seq=1)
    await log(job, *numbered(1, {"type": "start"}))
    layer = get_channel_layer()
    control = await layer.new_channel()
    await layer.group_add(control_group(job.pk), control)
    feed = aiter(follow_events(job.pk, after=0, poll=30))
    assert await anext(feed) == numbered(1, {"type": "start"})

    missed = numbered(2, {"type": "page_start", "page": 1})
    arrived = numbered(3, {"type": "page_delta", "page": 1, "delta": "y"})
    await layer.group_send(job_group(job.pk), {"type": "live.batch", "seq": 3, "first": 3, "events": arrived})
    pending = asyncio.ensure_future(anext(feed))
    assert (await layer.receive(control))["type"] == "live.flush"
    assert not pending.done()
    await log(job, *missed, *arrived)
    await layer.group_send(job_group(job.pk), {"type": "live.flushed", "seq": 3})

    assert await pending == missed + arrived
    ending = numbered(4, END)
    await layer.group_send(job_group(job.pk), {"type": "live.batch", "seq": 4, "first": 4, "events": ending})
    assert await anext(feed) == ending
    with pytest.raises(StopAsyncIteration):
        await anext(feed)


# --- the runner -------------------------------------------------------------------------------------------


class ScriptedRun:
    """A ``JobRun`` stand-in that yields scripted batches; before the end it closes the job as the pipeline would."""

    def __init__(self, job: OcrJob, batches: list[list[dict[str, Any]]]) -> None:
        self.job = job
        self.started = False
        self.cancel_reason = ""
        self.document = None
        self._batches = batches

    async def batches(self) -> AsyncIterator[list[dict[str, Any]]]:
        self.started = True
        for batch in self._batches:
            if any(event["type"] == "end" for event in batch):
                await OcrJob.objects.filter(pk=self.job.pk).aupdate(status="done", pages_done=1)
            yield [dict(event) for event in batch]


async def test_the_runner_numbers_every_frame_publishes_each_batch_and_logs_them_in_order(alice, settings):
    settings.OCR_LIVE_PUBLISH_SECONDS = 0
    settings.OCR_LIVE_FLUSH_SECONDS = 60  # only the flushes the events themselves cause
    job = await new_job(alice, status="running", detached=True, page_count=1)
    script = [
        [{"type": "start", "kind": "pdf", "pages": 1}],
        [{"type": "page_start", "page": 1}, {"type": "page_delta", "page": 1, "delta": "draft"}],
        [
            {"type": "page_delta", "page": 1, "delta": "Fin", "reset": True},
            {"type": "page_delta", "page": 1, "delta": "al"},
        ],
        [{"type": "page_end", "page": 1, "status": "done"}, END],
    ]
    layer = get_channel_layer()
    follower = await layer.new_channel()
    await layer.group_add(job_group(job.pk), follower)

    task = start_live_job(ScriptedRun(job, script))
    done, _pending = await asyncio.wait({task}, timeout=30)

    assert done
    batches = []
    while len(batches) < len(script):
        message = await layer.receive(follower)
        if message["type"] == "live.batch":
            batches.append(message)
    assert [(message["first"], message["seq"]) for message in batches] == [(1, 1), (2, 3), (4, 5), (6, 7)]
    published = [event for message in batches for event in message["events"]]
    assert [event["seq"] for event in published] == list(range(1, 8))
    stored = [frame async for row in OcrJobEvents.objects.filter(job=job).order_by("first_seq") for frame in row.frames]
    assert stored == published, "the log holds every published frame once, in order"
    assert streamed_text(stored, 1) == "Final"
    await job.arefresh_from_db()
    assert job.status == "done" and job.live_seq == 7
    assert await collect(follow_events(job.pk, after=5)) == [published[5:]], "a client resumes from the log"


async def test_a_page_s_partial_text_is_stored_with_the_seq_it_is_complete_to(alice, settings):
    """The runner stores a running page's text when a batch starts or ends a page; a reset replaces it."""
    settings.OCR_LIVE_PUBLISH_SECONDS = 0
    settings.OCR_LIVE_FLUSH_SECONDS = 60
    job = await new_job(alice, status="running", page_count=2)
    script = [
        [{"type": "start", "kind": "pdf", "pages": 2}],
        [{"type": "page_start", "page": 1}, {"type": "page_delta", "page": 1, "delta": "one"}],
        [{"type": "page_delta", "page": 1, "delta": "One", "reset": True}, {"type": "page_start", "page": 2}],
        [END],
    ]

    task = start_live_job(ScriptedRun(job, script))
    done, _pending = await asyncio.wait({task}, timeout=30)

    assert done
    pages = [
        (page.number, page.text, page.text_seq) async for page in OcrPage.objects.filter(job=job).order_by("number")
    ]
    assert pages == [(1, "One", 5), (2, "", 5)]
