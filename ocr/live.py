"""Browser jobs that outlive the request: a background runner publishes the pipeline's events, feeds follow them.

**Runner** (``start_live_job``). A browser upload starts the job as an asyncio task of the server process. The task
consumes ``JobRun.batches()``, numbers each batch with a per-job sequence number (``seq``) and publishes
``{"seq", "events"}`` to the job's Channels group. About once a second it stores the partial text of the pages
still running, with ``OcrJob.live_seq`` = the seq up to which the stored pages are complete, and announces that
with a ``live.flushed`` message. Jobs never depend on a browser connection: closing the tab changes nothing; the
Cancel button sends ``live.cancel`` to the job's control group, which reaches the runner in whichever process
holds it (Redis in production, memory in a single process).

**Feed** (``follow_job``). One SSE connection. It subscribes to the group *first*, then reads the stored snapshot,
so every batch published after the snapshot is either received or detectably missing:

- the client sends the seq it already has (``Last-Event-ID``); if the stored snapshot is newer, it gets the
  snapshot, otherwise nothing needs resending;
- live batches with a seq the client already has are skipped; the next expected seq is ``client + 1``;
- a *gap* (the first batch after subscribing is further ahead, or the layer dropped messages) buffers what
  arrives, asks the runner to flush now, and on the ``live.flushed`` that covers the gap re-reads the stored
  pages, sends them, and replays the buffered batches past the new snapshot. Nothing ever re-runs the engine;
- a finished job is replayed from the database and the feed ends; so does a job that ends while followed;
- while nothing arrives, the feed re-reads the job every ``poll`` seconds and yields an empty batch (the SSE view
  sends a keep-alive comment): pages finished by a job without a live runner (an API job opened in the browser)
  still appear, and a job that ended unseen still ends the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from ocr.models import JobStatus, OcrJob, OcrPage, PageStatus
from ocr.pipeline import Event, JobRun
from ocr.services import live_job_close, live_pages_store

logger = logging.getLogger(__name__)

#: Live jobs of this process. The event loop keeps only weak references to tasks: these keep them alive.
_jobs: dict[uuid.UUID, LiveJob] = {}


def job_group(job_id: uuid.UUID | str) -> str:
    return f"ocr-job-{uuid.UUID(str(job_id)).hex}"


def control_group(job_id: uuid.UUID | str) -> str:
    return f"ocr-job-{uuid.UUID(str(job_id)).hex}-control"


def flush_interval() -> float:
    return getattr(settings, "OCR_LIVE_FLUSH_SECONDS", 1.0)


def publish_interval() -> float:
    return getattr(settings, "OCR_LIVE_PUBLISH_SECONDS", 0.05)


# --- Runner ---------------------------------------------------------------------------------------------------


def start_live_job(run: JobRun) -> asyncio.Task[None]:
    """Run ``run`` in the background of this process and return its task (kept referenced until it ends)."""
    live = LiveJob(run)
    # A fresh context: the task must not keep the request's thread-sensitive executor (closed when the request
    # ends) nor anything else of the request that started it.
    task = asyncio.get_running_loop().create_task(
        live.main(), name=f"ocr-live-{run.job.pk}", context=contextvars.Context()
    )
    live.task = task
    _jobs[run.job.pk] = live
    task.add_done_callback(lambda _task: _jobs.pop(run.job.pk, None))
    return task


def live_task(job_id: uuid.UUID) -> asyncio.Task[None] | None:
    """The task running ``job_id`` in this process, if any."""
    live = _jobs.get(job_id)
    return live.task if live is not None else None


async def request_cancel(job_id: uuid.UUID) -> None:
    """Ask the runner of ``job_id`` to cancel it, in whatever process it runs."""
    live = _jobs.get(job_id)
    if live is not None:
        live.cancel()
        return
    await get_channel_layer().group_send(control_group(job_id), {"type": "live.cancel"})


class LiveJob:
    def __init__(self, run: JobRun) -> None:
        self.run = run
        self.job_id: uuid.UUID = run.job.pk
        self.task: asyncio.Task[None] | None = None
        self.seq = 0
        self.flushed_seq = 0
        self.ended = False
        self._started = False
        self._cancel_requested = False
        self._texts: dict[int, list[str]] = {}  # text of the pages running, as streamed so far
        self._dirty: set[int] = set()
        self._flush_now = asyncio.Event()
        self._layer = get_channel_layer()

    def cancel(self) -> None:
        """Stop the job; the pipeline records it as cancelled with the usage so far."""
        self._cancel_requested = True
        self.run.cancel_reason = "cancelled by its owner."
        if self._started and self.task is not None:
            self.task.cancel()

    async def main(self) -> None:
        layer = self._layer
        control = None
        helpers: list[asyncio.Task[None]] = []
        try:
            control = await layer.new_channel()
            await layer.group_add(control_group(self.job_id), control)
            helpers.append(asyncio.create_task(self._listen(control), name=f"ocr-live-control-{self.job_id}"))
            helpers.append(asyncio.create_task(self._flush_periodically(), name=f"ocr-live-flush-{self.job_id}"))
            self._started = True
            if self._cancel_requested:
                return
            async with aclosing(self.run.batches()) as batches:
                async for batch in batches:
                    self._apply(batch)
                    await self._publish({"type": "live.batch", "seq": self.seq, "events": batch})
                    if self.ended:
                        break
                    # Let the next events gather: one message per interval rather than one per token.
                    await asyncio.sleep(publish_interval())
        except Exception:
            logger.exception("live job %s failed outside the pipeline", self.job_id)
        finally:
            for helper in helpers:
                helper.cancel()
            for helper in helpers:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await helper
            if not self.run.started:  # cancelled before the pipeline, which would have closed it, began
                with contextlib.suppress(Exception):
                    await self.run.document.aclose()
            await self._close()
            if control is not None:
                with contextlib.suppress(Exception):
                    await layer.group_discard(control_group(self.job_id), control)

    def _apply(self, batch: list[Event]) -> None:
        self.seq += 1
        for event in batch:
            kind = event["type"]
            if kind == "page_delta":
                if event.get("reset"):
                    self._texts[event["page"]] = []
                self._texts.setdefault(event["page"], []).append(event["delta"])
                self._dirty.add(event["page"])
            elif kind == "page_start":
                self._texts[event["page"]] = []
                self._dirty.add(event["page"])
            elif kind == "page_end":
                # The pipeline stored the page before sending page_end: nothing of it is ours to write any more.
                self._texts.pop(event["page"], None)
                self._dirty.discard(event["page"])
            elif kind == "end":
                self.ended = True

    async def _publish(self, message: dict[str, Any]) -> None:
        try:
            await self._layer.group_send(job_group(self.job_id), message)
        except Exception:
            # Followers notice the missing seq and catch up from the database.
            logger.exception("could not publish to the followers of job %s", self.job_id)

    async def _listen(self, channel: str) -> None:
        while True:
            message = await self._layer.receive(channel)
            if message.get("type") == "live.cancel":
                self.cancel()
            elif message.get("type") == "live.flush":
                self._flush_now.set()

    async def _flush_periodically(self) -> None:
        while True:
            requested = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush_now.wait(), flush_interval())
                requested = True
            self._flush_now.clear()
            await self._flush(announce=requested)

    async def _flush(self, *, announce: bool) -> None:
        seq = self.seq
        if seq == self.flushed_seq and not announce:
            return
        texts = {number: "".join(self._texts[number]) for number in self._dirty if number in self._texts}
        self._dirty.clear()
        try:
            await live_pages_store(job_id=self.job_id, seq=seq, texts=texts)
        except Exception:
            logger.exception("could not store the partial text of job %s", self.job_id)
            self._dirty.update(texts)
            return
        self.flushed_seq = seq
        await self._publish({"type": "live.flushed", "seq": seq})

    async def _close(self) -> None:
        """After the pipeline: record the final seq, or, if the job did not end normally (a crash, or a
        cancellation before the pipeline started), close it and tell the followers, who would otherwise wait for
        an ``end`` that was never published."""
        cancelled = self._cancel_requested or (self.task is not None and self.task.cancelling() > 0)
        final_seq = self.seq if self.ended else self.seq + 1
        try:
            status = await live_job_close(
                job_id=self.job_id,
                seq=final_seq,
                status_if_running=JobStatus.CANCELLED if cancelled else JobStatus.FAILED,
            )
        except Exception:
            logger.exception("could not close live job %s", self.job_id)
            status = JobStatus.FAILED
        if not self.ended:
            self.seq, self.ended = final_seq, True
            await self._publish({"type": "live.batch", "seq": self.seq, "events": [{"type": "end", "status": status}]})


# --- Feed -----------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Snapshot:
    """The stored state: replace what the client shows. ``final`` when the job has ended."""

    job: OcrJob
    pages: list[OcrPage]
    seq: int
    final: bool = False


@dataclass(slots=True)
class Batch:
    """Live events the client has not seen, with the stored pages that ended in them."""

    seq: int
    events: list[Event]
    ended_pages: dict[int, OcrPage] = field(default_factory=dict)


Update = Snapshot | Batch


@sync_to_async
def load_job(job_id: uuid.UUID) -> tuple[OcrJob | None, list[OcrPage]]:
    job = OcrJob.objects.filter(pk=job_id).first()
    if job is None:
        return None, []
    return job, list(job.pages.order_by("number"))


@sync_to_async
def load_pages(job_id: uuid.UUID, numbers: list[int]) -> dict[int, OcrPage]:
    return {page.number: page for page in OcrPage.objects.filter(job_id=job_id, number__in=numbers)}


async def follow_job(job_id: uuid.UUID, *, since: int | None, poll: float = 10.0) -> AsyncIterator[Update]:
    """The updates a client that has seen events up to ``since`` needs, until the job ends (see module doc)."""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(job_group(job_id), channel)
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def pump() -> None:
        while True:
            await inbox.put(await layer.receive(channel))

    # One reader owns the channel; the loop below waits on a local queue, which is safe to time out.
    reader = asyncio.create_task(pump(), name=f"ocr-feed-{job_id}")
    try:
        job, pages = await load_job(job_id)
        if job is None:
            return
        if job.is_finished:
            yield Snapshot(job, pages, job.live_seq, final=True)
            return
        client = since or 0
        sent_final: set[int] = set()  # pages the client already shows in their final state
        if since is None or since < job.live_seq:
            yield Snapshot(job, pages, job.live_seq)
            client = job.live_seq
            sent_final = {page.number for page in pages if page.status != PageStatus.RUNNING}
        buffered: list[dict[str, Any]] = []
        while True:
            try:
                message = await asyncio.wait_for(inbox.get(), poll)
            except TimeoutError:
                job, pages = await load_job(job_id)
                if job is None:
                    return
                if job.is_finished:
                    yield Snapshot(job, pages, job.live_seq, final=True)
                    return
                ended = {
                    page.number: page
                    for page in pages
                    if page.status != PageStatus.RUNNING and page.number not in sent_final and not buffered
                }
                sent_final.update(ended)
                # Also a keep-alive: an empty batch becomes an SSE comment, and writing to a vanished client fails.
                yield Batch(client, [], ended)
                continue
            kind = message.get("type")
            if kind == "live.batch":
                if message["seq"] <= client:
                    continue
                if buffered or message["seq"] != client + 1:
                    if not buffered:
                        await layer.group_send(control_group(job_id), {"type": "live.flush"})
                    buffered.append(message)
                    if _has_end(message["events"]):
                        break
                    continue
                client = message["seq"]
                yield await _batch(job_id, message, sent_final)
                if _has_end(message["events"]):
                    break
            elif kind == "live.flushed" and buffered and message["seq"] >= buffered[0]["seq"] - 1:
                job, pages = await load_job(job_id)
                if job is None:
                    return
                if job.is_finished:
                    break
                yield Snapshot(job, pages, job.live_seq)
                client = job.live_seq
                sent_final = {page.number for page in pages if page.status != PageStatus.RUNNING}
                pending, buffered = buffered, []
                for item in pending:
                    if item["seq"] > client:
                        client = item["seq"]
                        yield await _batch(job_id, item, sent_final)
        # The job ended: the stored result is complete.
        job, pages = await load_job(job_id)
        if job is not None:
            yield Snapshot(job, pages, max(job.live_seq, client), final=True)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        with contextlib.suppress(Exception):
            await layer.group_discard(job_group(job_id), channel)


def _has_end(events: list[Event]) -> bool:
    return any(event["type"] == "end" for event in events)


async def _batch(job_id: uuid.UUID, message: dict[str, Any], sent_final: set[int]) -> Batch:
    """The message as a ``Batch``, without events of pages the client already shows final (a snapshot can be
    ahead of buffered events), with the stored pages that end in it; ``sent_final`` is updated."""
    events = [
        event
        for event in message["events"]
        if event["type"] not in ("page_start", "page_delta", "page_end") or event["page"] not in sent_final
    ]
    ended = [event["page"] for event in events if event["type"] == "page_end"]
    pages = await load_pages(job_id, ended) if ended else {}
    sent_final.update(pages)
    return Batch(message["seq"], events, pages)
