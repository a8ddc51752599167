"""Live browser jobs: the background runner, the SSE feed, replay and reconnect without re-running the engine."""

from __future__ import annotations

import asyncio
import re
import uuid

import pytest
from channels.layers import get_channel_layer
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import AsyncClient

from ocr.live import follow_job, live_task
from ocr.models import OcrJob, OcrPage
from testing.documents import SAMPLES, make_numbered_pdf

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.postgres,
    pytest.mark.usefixtures("fresh_channel_layer"),
]


@pytest.fixture
async def web(alice):
    client = AsyncClient()
    await client.aforce_login(alice)
    return client


async def start_job(client: AsyncClient, data: bytes, name: str = "page.png", preset: str = "default", text: str = ""):
    response = await client.post("/jobs/new", {"file": SimpleUploadedFile(name, data), "preset": preset, "text": text})
    assert response.status_code == 302, response.content[:500]
    job_id = uuid.UUID(re.search(r"/jobs/([0-9a-f-]{36})/", response["Location"]).group(1))
    return job_id


async def read_events(client: AsyncClient, job_id: uuid.UUID, *, last_event_id: int | None = None) -> list[dict]:
    """The whole SSE stream of the job page, parsed into events."""
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    response = await client.get(f"/jobs/{job_id}/events", headers=headers)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/event-stream")
    body = b"".join([chunk async for chunk in response.streaming_content]).decode()
    return parse_sse(body)


def parse_sse(body: str) -> list[dict]:
    events = []
    for block in body.split("\n\n"):
        event: dict = {"data": []}
        for line in block.split("\n"):
            if line.startswith("data: "):
                event["data"].append(line[6:])
            elif line.startswith("id: "):
                event["id"] = int(line[4:])
            elif line.startswith("event: "):
                event["event"] = line[7:]
        if "event" in event:
            event["data"] = "\n".join(event["data"])
            events.append(event)
    return events


async def wait_for_job(job_id: uuid.UUID) -> OcrJob:
    task = live_task(job_id)
    if task is not None:
        done, _pending = await asyncio.wait({task}, timeout=30)
        assert done, "the job did not finish"
    return await OcrJob.objects.aget(pk=job_id)


async def test_an_upload_runs_in_the_background_and_the_stream_ends_with_the_stored_result(web, fake_vllm):
    fake_vllm.set_default(text="Hello **world** from the engine.", token_delay=0.01)
    job_id = await start_job(web, SAMPLES["short"].render())

    events = await read_events(web, job_id)

    assert events[-1]["event"] == "close"
    job = await wait_for_job(job_id)
    assert job.status == "done" and job.source == "web"
    page = await OcrPage.objects.aget(job=job)
    assert page.text == "Hello **world** from the engine."
    html = "\n".join(event["data"] for event in events)
    assert "<strong>world</strong>" in html  # the finished page is rendered Markdown
    assert re.search(r'<section id="usage"[^>]*hx-swap-oob="true"', html)


async def test_text_streams_into_the_page_before_the_job_ends(web, fake_vllm):
    fake_vllm.set_default(tokens=60, token_delay=0.02)
    job_id = await start_job(web, SAMPLES["short"].render())
    response = await web.get(f"/jobs/{job_id}/events")
    appended = None
    async for chunk in response.streaming_content:
        if b'hx-swap-oob="beforeend"' in chunk:
            appended = chunk
            break
    assert appended is not None
    job = await OcrJob.objects.aget(pk=job_id)
    assert job.status == "running", "text arrived while the engine was still generating"
    await wait_for_job(job_id)


async def test_closing_the_stream_does_not_cancel_the_job(web, fake_vllm):
    fake_vllm.set_default(tokens=40, token_delay=0.01)
    job_id = await start_job(web, SAMPLES["short"].render())
    response = await web.get(f"/jobs/{job_id}/events")
    async for _chunk in response.streaming_content:
        break  # the web tab closes after the first chunk
    await response.streaming_content.aclose()

    job = await wait_for_job(job_id)
    assert job.status == "done"
    assert fake_vllm.stats["completed"] == 1


async def test_a_reconnect_replays_the_stored_result_without_running_the_engine_again(web, fake_vllm):
    fake_vllm.set_default(text="Stored once.", token_delay=0.005)
    job_id = await start_job(web, SAMPLES["short"].render())
    first = await read_events(web, job_id)
    await wait_for_job(job_id)
    requests_before = fake_vllm.stats["requests"]

    again = await read_events(web, job_id, last_event_id=first[-2]["id"])

    assert fake_vllm.stats["requests"] == requests_before == 1
    assert "Stored once." in again[0]["data"]
    assert again[-1]["event"] == "close"


async def test_a_reconnect_during_the_job_resumes_from_the_stored_text_and_follows(web, fake_vllm, settings):
    settings.OCR_LIVE_FLUSH_SECONDS = 0.05
    fake_vllm.set_default(tokens=80, token_delay=0.01)
    job_id = await start_job(web, SAMPLES["short"].render())
    response = await web.get(f"/jobs/{job_id}/events")
    seen = 0
    async for chunk in response.streaming_content:
        seen = max([seen, *map(int, re.findall(rb"^id: (\d+)$", chunk, re.MULTILINE))])
        if seen >= 3:
            break
    await response.streaming_content.aclose()

    events = await read_events(web, job_id, last_event_id=seen)

    job = await wait_for_job(job_id)
    page = await OcrPage.objects.aget(job=job)
    assert fake_vllm.stats["requests"] == 1
    assert job.status == "done"
    assert events[-1]["event"] == "close"
    # The final event carries the whole page, exactly as stored.
    assert page.text.split()[0] in events[-2]["data"]


async def test_a_late_subscriber_catches_up_from_the_database(alice, fake_vllm, settings, web):
    """Events published before the follower subscribed are recovered from the stored snapshot, never lost."""
    settings.OCR_LIVE_FLUSH_SECONDS = 0.05
    fake_vllm.set_default(tokens=60, token_delay=0.01)
    job_id = await start_job(web, SAMPLES["short"].render())
    await fake_vllm_started(fake_vllm)

    updates = [update async for update in follow_job(job_id, since=1, poll=5)]

    job = await wait_for_job(job_id)
    page = await OcrPage.objects.aget(job=job)
    assert updates[-1].final and updates[-1].pages[0].text == page.text
    assert job.status == "done"


async def fake_vllm_started(fake) -> None:
    """Wait (off this event loop, which runs the job) until the fake engine has received the job's request."""
    await asyncio.to_thread(fake.wait_for, lambda stats: stats["requests"] > 0, 10.0)


async def test_cancel_stops_the_engine_and_records_the_job_as_cancelled(web, fake_vllm):
    fake_vllm.set_default(tokens=2000, token_delay=0.01)
    job_id = await start_job(web, SAMPLES["short"].render())
    await fake_vllm_started(fake_vllm)

    response = await web.post(f"/jobs/{job_id}/cancel")

    assert response.status_code == 302
    job = await wait_for_job(job_id)
    assert job.status == "cancelled"
    assert job.error_message == "The job was cancelled: cancelled by its owner.", "the ledger says who cancelled"
    events = await read_events(web, job_id)
    assert "This job was cancelled" in events[0]["data"]


async def test_a_three_page_pdf_fills_three_panes(web, fake_vllm):
    fake_vllm.set_default(text="Page text.", token_delay=0.005)
    job_id = await start_job(web, make_numbered_pdf(3), name="three.pdf")

    events = await read_events(web, job_id)

    job = await wait_for_job(job_id)
    assert job.kind == "pdf" and job.page_count == 3 and job.status == "done"
    html = "\n".join(event["data"] for event in events)
    for number in (1, 2, 3):
        assert f'id="page-{number}"' in html
    assert await OcrPage.objects.filter(job=job, status="done").acount() == 3


async def test_a_gap_in_the_live_events_is_filled_from_the_database_and_nothing_is_applied_twice(alice):
    """Driven by hand: the follower sees seq 5 after a snapshot at 2, asks for a flush, waits for the stored
    state that covers the gap, then replays only the buffered events past it."""
    from ocr.live import Batch, Snapshot, control_group, job_group

    layer = get_channel_layer()
    job = await OcrJob.objects.acreate(
        owner=alice, kind="image", file_name="a.png", content_type="image/png", engine="openai", live_seq=2
    )
    await OcrPage.objects.acreate(job=job, number=1, status="running", text="ab", text_seq=2)
    control = await layer.new_channel()
    await layer.group_add(control_group(job.pk), control)
    follower = aiter(follow_job(job.pk, since=None, poll=30))

    first = await anext(follower)
    assert isinstance(first, Snapshot) and first.seq == 2 and first.pages[0].text == "ab"

    def batch(seq: int, *events: dict) -> dict:
        return {"type": "live.batch", "seq": seq, "events": list(events)}

    delta = {"type": "page_delta", "page": 1}
    await layer.group_send(job_group(job.pk), batch(2, {**delta, "delta": "b"}))  # already in the snapshot
    await layer.group_send(job_group(job.pk), batch(5, {**delta, "delta": "ef"}))  # 3 and 4 never arrived
    pending = asyncio.ensure_future(anext(follower))
    assert (await layer.receive(control))["type"] == "live.flush"
    assert not pending.done()

    await OcrPage.objects.filter(job=job).aupdate(text="abcde", text_seq=4)
    await OcrJob.objects.filter(pk=job.pk).aupdate(live_seq=4)
    await layer.group_send(job_group(job.pk), {"type": "live.flushed", "seq": 4})

    refreshed = await pending
    assert isinstance(refreshed, Snapshot) and refreshed.seq == 4 and refreshed.pages[0].text == "abcde"
    replayed = await anext(follower)
    assert isinstance(replayed, Batch) and replayed.seq == 5 and replayed.events[0]["delta"] == "ef"

    await OcrPage.objects.filter(job=job).aupdate(status="done", text="abcdefg")
    await OcrJob.objects.filter(pk=job.pk).aupdate(status="done")
    await layer.group_send(
        job_group(job.pk),
        batch(6, {**delta, "delta": "g"}, {"type": "page_end", "page": 1}, {"type": "end", "status": "done"}),
    )
    last_batch = await anext(follower)
    assert last_batch.seq == 6 and last_batch.ended_pages[1].text == "abcdefg"
    final = await anext(follower)
    assert isinstance(final, Snapshot) and final.final
    with pytest.raises(StopAsyncIteration):
        await anext(follower)


async def test_an_idle_stream_sends_keep_alives_and_shows_pages_finished_without_a_live_runner(alice, settings):
    """An API job opened in the browser has no live events: the stream re-reads it and ends when it does."""
    settings.OCR_LIVE_POLL_SECONDS = 0.1
    job = await OcrJob.objects.acreate(
        owner=alice, kind="pdf", file_name="api.pdf", content_type="application/pdf", engine="openai", page_count=2
    )
    client = AsyncClient()
    await client.aforce_login(alice)
    response = await client.get(f"/jobs/{job.pk}/events")
    stream = aiter(response.streaming_content)
    assert b": connected" in await anext(stream)
    assert b'id="page-1"' in await anext(stream)  # the snapshot

    assert await anext(stream) == b": ping\n\n"
    await OcrPage.objects.acreate(job=job, number=1, status="done", text="first page")
    chunk = await anext(stream)
    while chunk == b": ping\n\n":
        chunk = await anext(stream)
    assert b"first page" in chunk and b'id="page-2"' not in chunk

    await OcrJob.objects.filter(pk=job.pk).aupdate(status="done")
    rest = b"".join([chunk async for chunk in stream])
    assert rest.endswith(b"event: close\ndata: \n\n")


async def test_a_job_cancelled_before_its_pipeline_started_is_closed_and_its_followers_told(alice):
    from ocr.live import job_group, request_cancel, start_live_job

    class Document:
        page_count = 1
        closed = False

        async def aclose(self):
            Document.closed = True

    class Run:
        started = False
        document = Document()

        def __init__(self, job):
            self.job = job

        def batches(self):
            raise AssertionError("the pipeline must not start")

    job = await OcrJob.objects.acreate(
        owner=alice, kind="image", file_name="a.png", content_type="image/png", engine="openai"
    )
    layer = get_channel_layer()
    follower = await layer.new_channel()
    await layer.group_add(job_group(job.pk), follower)
    task = start_live_job(Run(job))
    await request_cancel(job.pk)  # the Cancel button, before the task ran at all

    done, _pending = await asyncio.wait({task}, timeout=10)

    assert done
    await job.arefresh_from_db()
    assert job.status == "cancelled" and job.error_code == "cancelled"
    assert Document.closed
    message = await layer.receive(follower)
    [end] = message["events"]
    assert (end["type"], end["status"], end["seq"]) == ("end", "cancelled", message["seq"])


async def test_the_live_stream_updates_each_pages_entry_in_the_page_list_and_the_progress_bar(web, fake_vllm):
    fake_vllm.set_default(text="Page text.", token_delay=0.005)
    job_id = await start_job(web, make_numbered_pdf(3), name="three.pdf")

    events = await read_events(web, job_id)

    await wait_for_job(job_id)
    html = "\n".join(event["data"] for event in events)
    for number in (1, 2, 3):
        assert f'<li id="page-link-{number}" class="strip__item" hx-swap-oob="true">' in html
    assert '<section id="progress" class="progress"' in html and 'hx-swap-oob="true"' in html
    assert 'value="3"' in html.rsplit('id="progress"', 1)[1].split("</section>", 1)[0], "the last one is full"
