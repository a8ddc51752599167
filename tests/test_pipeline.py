"""The pipeline's guarantees with a small scripted engine (the one seam faked here)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from asgiref.sync import sync_to_async

from ocr.engines.base import Completion, Engine, PageImage
from ocr.errors import EngineError
from ocr.models import OcrJob, OcrPage
from ocr.pipeline import JobRun
from ocr.services import job_create

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]


class ScriptedEngine(Engine):
    """Emits ``pieces`` for each page; pages listed in ``fail`` raise, pages in ``hang`` never finish."""

    name = "scripted"
    model = "scripted-1"

    def __init__(self, *, pieces=("a", "b", "c"), fail=(), hang=(), crash=(), reset=None, concurrency=8):
        super().__init__(concurrency=concurrency)
        self.pieces, self.fail, self.hang, self.crash = pieces, set(fail), set(hang), set(crash)
        self.reset = reset  # text that replaces each page's text after the pieces
        self.cancelled: list[int] = []
        self.hanging = asyncio.Event()

    async def recognise(self, page: PageImage, prompt: str, on_delta) -> Completion:
        for piece in self.pieces:
            on_delta(piece)
            await asyncio.sleep(0)
        if self.reset is not None:
            on_delta(self.reset, reset=True)
        if page.number in self.fail:
            raise EngineError("boom", code="engine_error")
        if page.number in self.crash:
            raise RuntimeError("a bug")
        if page.number in self.hang:
            try:
                self.hanging.set()
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.append(page.number)
                raise
        return Completion(finish_reason="stop", prompt_tokens=10, completion_tokens=len(self.pieces))


class Pages:
    kind = "pdf"
    content_type = "application/pdf"
    size = 100

    def __init__(self, count: int) -> None:
        self.page_count = count
        self.closed = False

    async def page(self, number: int, *, pixels: bool) -> PageImage:
        return PageImage(number=number, width=10, height=10, data=b"x", mime="image/png")

    async def aclose(self) -> None:
        self.closed = True


async def new_run(user, engine, pages=3, concurrency=2):
    job = await job_create(
        owner=user,
        kind="pdf",
        source="api",
        file_name="f.pdf",
        content_type="application/pdf",
        data=b"x" * 100,
        prompt="Free OCR.",
        engine=engine.name,
        model=engine.model,
        page_count=pages,
        keep_upload=False,
    )
    document = Pages(pages)
    return JobRun(job=job, document=document, engine=engine, prompt="Free OCR.", page_concurrency=concurrency)


async def collect(run):
    return [event async for event in run.events()]


async def test_a_successful_job_is_written_to_the_ledger(alice):
    run = await new_run(alice, ScriptedEngine())

    events = await collect(run)

    assert events[-1]["status"] == "done" and run.document.closed
    job = await OcrJob.objects.aget(pk=run.job.pk)
    assert (job.status, job.pages_done, job.prompt_tokens, job.completion_tokens) == ("done", 3, 30, 9)
    assert job.completion_chars == 9 and job.prompt_chars == 3 * len("Free OCR.")
    assert job.finished_at is not None and job.duration_ms is not None
    texts = await sync_to_async(list)(OcrPage.objects.filter(job=job).values_list("text", flat=True))
    assert texts == ["abc", "abc", "abc"]


async def test_all_pages_failing_fails_the_job_with_an_error_event(alice):
    run = await new_run(alice, ScriptedEngine(fail={1, 2, 3}))

    events = await collect(run)

    assert [e["type"] for e in events[-2:]] == ["error", "end"]
    assert events[-1]["status"] == "failed"
    job = await OcrJob.objects.aget(pk=run.job.pk)
    assert (job.status, job.pages_failed, job.error_code) == ("failed", 3, "engine_error")
    assert job.completion_chars == 9, "text produced before each failure is still counted"


async def test_a_bug_in_the_engine_fails_the_page_not_the_stream(alice):
    run = await new_run(alice, ScriptedEngine(crash={2}))

    events = await collect(run)

    page_ends = {e["page"]: e for e in events if e["type"] == "page_end"}
    assert page_ends[2]["error"]["code"] == "internal_error"
    assert events[-1]["status"] == "partial"


async def test_cancelling_the_consumer_cancels_engine_work_and_records_the_job(alice):
    engine = ScriptedEngine(hang={1, 2})
    run = await new_run(alice, engine, pages=4, concurrency=2)

    async def consume():
        async for _ in run.batches():
            pass

    consumer = asyncio.create_task(consume())
    await engine.hanging.wait()
    consumer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await consumer

    assert sorted(engine.cancelled) == [1, 2]
    job = await OcrJob.objects.aget(pk=run.job.pk)
    assert job.status == "cancelled" and job.error_code == "cancelled"
    pages = {p.number: p async for p in OcrPage.objects.filter(job=job)}
    assert {pages[1].status, pages[2].status} == {"cancelled"}
    assert pages[1].text == "abc" and pages[1].usage_estimated
    assert 3 not in pages, "pages never started are not recorded"
    assert job.completion_chars == 6


async def test_an_engine_that_resets_a_pages_text_leaves_only_the_new_text(alice):
    run = await new_run(alice, ScriptedEngine(reset="clean"), pages=1)

    events = await collect(run)

    deltas = [event for event in events if event["type"] == "page_delta"]
    assert deltas[-1] == {"type": "page_delta", "page": 1, "delta": "clean", "reset": True}
    page = await OcrPage.objects.aget(job=run.job, number=1)
    assert page.text == "clean" and page.completion_chars == 5
