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
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer

from ocr import events, metrics
from ocr.config import ocr_config
from ocr.events import Event
from ocr.models import JobStatus, OcrJob, OcrJobEvents, OcrPage, PageStatus
from ocr.pipeline import JobRun, Logged, page_end_event
from ocr.services import cancel_requested, live_job_close, live_pages_store, outcome_from_page

logger = logging.getLogger(__name__)

#: Live jobs of this process. The event loop keeps only weak references to tasks: these keep them alive.
_jobs: dict[uuid.UUID, LiveJob] = {}


def job_group(job_id: uuid.UUID | str) -> str:
    return f"ocr-job-{uuid.UUID(str(job_id)).hex}"


def control_group(job_id: uuid.UUID | str) -> str:
    return f"ocr-job-{uuid.UUID(str(job_id)).hex}-control"


def flush_interval() -> float:
    return ocr_config().live_flush_seconds


def publish_interval() -> float:
    return ocr_config().live_publish_seconds


# --- Runner ---------------------------------------------------------------------------------------------------


def start_live_job(
    run: JobRun, *, seq: int = 0, on_end: Callable[[uuid.UUID], Awaitable[None]] | None = None
) -> asyncio.Task[None]:
    """Run ``run`` in the background of this process and return its task (kept referenced until it ends)."""
    live = LiveJob(run, seq=seq, on_end=on_end)
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
    """``seq`` is the sequence number before the first batch: 0 for a new job; a resumed job starts far past
    what its previous runner could have published (``ocr.jobs.RESUME_SEQ_GAP``), so its followers see a gap and
    catch up from the stored pages instead of skipping the new batches as already seen."""

    def __init__(
        self, run: JobRun, *, seq: int = 0, on_end: Callable[[uuid.UUID], Awaitable[None]] | None = None
    ) -> None:
        self.run = run
        self._on_end = on_end
        self.job_id: uuid.UUID = run.job.pk
        self.task: asyncio.Task[None] | None = None
        self.seq = seq
        self.flushed_seq = seq
        self.ended = False
        self._started = False
        self._cancel_requested = False
        self._texts: dict[int, list[str]] = {}  # text of the pages running, as streamed so far
        self._dirty: set[int] = set()
        self._unlogged: list[Event] = []  # frames published since the last store of the event log
        self._flush_now = asyncio.Event()
        self._flush_lock = asyncio.Lock()  # stores in seq order: a reader of the log never finds a hole
        self._layer = get_channel_layer()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested

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
        metrics.OCR_QUEUE_RUNNING.inc()
        try:
            control = await layer.new_channel()
            await layer.group_add(control_group(self.job_id), control)
            helpers.append(asyncio.create_task(self._listen(control), name=f"ocr-live-control-{self.job_id}"))
            helpers.append(asyncio.create_task(self._flush_periodically(), name=f"ocr-live-flush-{self.job_id}"))
            self._started = True
            if self.run.job.detached and await cancel_requested(job_id=self.job_id):
                # Cancelled by its owner before this runner listened to the control group.
                self._cancel_requested = True
                self.run.cancel_reason = "cancelled by its owner."
            if self._cancel_requested:
                return
            async with aclosing(self.run.batches()) as batches:
                async for batch in batches:
                    first = self._apply(batch)
                    if any(event["type"] != "page_delta" for event in batch):
                        # A page's start and end and the job's end are in the log before anyone sees them: a
                        # runner that takes the job over continues from the log, and must not tell them twice.
                        await self._flush(announce=False)
                    await self._publish({"type": "live.batch", "seq": self.seq, "first": first, "events": batch})
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

    def _apply(self, batch: list[Event]) -> int:
        """Number the frames of ``batch`` (each gets its ``seq``) and note what they change; returns the first
        seq. A batch's message carries its first and last seq."""
        first = self.seq + 1
        for event in batch:
            self.seq += 1
            event["seq"] = self.seq
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
        self._unlogged.extend(batch)
        return first

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
        async with self._flush_lock:
            await self._store(announce=announce)

    async def _store(self, *, announce: bool) -> None:
        seq = self.seq
        if seq == self.flushed_seq and not announce:
            return
        texts = {number: "".join(self._texts[number]) for number in self._dirty if number in self._texts}
        frames, self._unlogged = self._unlogged, []
        self._dirty.clear()
        try:
            await live_pages_store(job_id=self.job_id, seq=seq, texts=texts, frames=frames)
        except Exception:
            logger.exception("could not store the partial text of job %s", self.job_id)
            self._dirty.update(texts)
            self._unlogged[:0] = frames
            return
        self.flushed_seq = seq
        await self._publish({"type": "live.flushed", "seq": seq})

    async def _close(self) -> None:
        """After the pipeline: record the final seq, or, if the job did not end normally (a crash, or a
        cancellation before the pipeline started), close it and tell the followers, who would otherwise wait for
        an ``end`` that was never published."""
        cancelled = self._cancel_requested or (self.task is not None and self.task.cancelling() > 0)
        # The rest of the event log (with the end frame), before the job's final seq says it is complete.
        with contextlib.suppress(Exception):
            await asyncio.shield(self._flush(announce=False))
        final_seq = self.seq if self.ended else self.seq + 1
        try:
            status = await asyncio.shield(
                live_job_close(
                    job_id=self.job_id,
                    seq=final_seq,
                    status_if_running=JobStatus.CANCELLED if cancelled else JobStatus.FAILED,
                )
            )
        except Exception:
            logger.exception("could not close live job %s", self.job_id)
            status = JobStatus.FAILED
        if not self.ended:
            end = await self._closing_end(status, final_seq)
            self.seq, self.ended = final_seq, True
            with contextlib.suppress(Exception):
                await live_pages_store(job_id=self.job_id, seq=final_seq, texts={}, frames=[end])
            await self._publish({"type": "live.batch", "seq": final_seq, "first": final_seq, "events": [end]})
        metrics.OCR_QUEUE_RUNNING.dec()
        metrics.queue_event("finished")
        if self._on_end is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._on_end(self.job_id))

    async def _closing_end(self, status: str, seq: int) -> Event:
        """The ``end`` of a job whose pipeline never sent one, from its closed ledger row (usage included)."""
        with contextlib.suppress(Exception):
            stored, _ = await load_job(self.job_id)
            if stored is not None:
                return stored_end_frame(stored, seq=seq)
        empty = events.job_usage(
            prompt_tokens=0,
            completion_tokens=0,
            prompt_chars=0,
            completion_chars=0,
            input_bytes=0,
            pages=0,
            estimated=False,
        )
        frame: Event = events.end(
            status=status, job_id=str(self.job_id), usage=empty, pages_done=0, pages_failed=0, elapsed_ms=0
        )
        frame["seq"] = seq
        return frame


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


@contextlib.asynccontextmanager
async def subscribed(job_id: uuid.UUID) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
    """The messages published to the job's group from now on, in a local queue: one reader owns the channel, and
    waiting on the queue is safe to time out. Subscribe before reading the stored state, so nothing falls between.
    """
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(job_group(job_id), channel)
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def pump() -> None:
        while True:
            await inbox.put(await layer.receive(channel))

    reader = asyncio.create_task(pump(), name=f"ocr-feed-{job_id}")
    try:
        yield inbox
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
        with contextlib.suppress(Exception):
            await layer.group_discard(job_group(job_id), channel)


async def follow_job(job_id: uuid.UUID, *, since: int | None, poll: float = 10.0) -> AsyncIterator[Update]:
    """The updates a client that has seen events up to ``since`` needs, until the job ends (see module doc)."""
    layer = get_channel_layer()
    async with subscribed(job_id) as inbox:
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
                if buffered or message.get("first", message["seq"]) > client + 1:
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


# --- Event log feed (the job API) -----------------------------------------------------------------------------


@sync_to_async
def load_log(job_id: uuid.UUID, *, after: int) -> tuple[list[Event], OcrJob | None]:
    """The logged frames of ``job_id`` with a seq past ``after``, in order, and the job as stored now."""
    job = OcrJob.objects.filter(pk=job_id).first()
    frames: list[Event] = []
    for row in OcrJobEvents.objects.filter(job_id=job_id, last_seq__gt=after).order_by("first_seq"):
        frames.extend(frame for frame in row.frames if frame["seq"] > after)
    return frames, job


@sync_to_async
def logged_summary(job_id: uuid.UUID) -> Logged:
    """What the event log of ``job_id`` holds, for the runner that resumes it."""
    logged = Logged()
    for frames in OcrJobEvents.objects.filter(job_id=job_id).values_list("frames", flat=True).iterator():
        for frame in frames:
            kind = frame["type"]
            if kind == "start":
                logged.start = True
            elif kind == "page_start":
                logged.started.add(frame["page"])
            elif kind == "page_end":
                logged.ended.add(frame["page"])
    return logged


async def follow_events(job_id: uuid.UUID, *, after: int, poll: float = 10.0) -> AsyncIterator[list[Event]]:
    """The frames of a detached job after seq ``after``: the logged ones first, then live ones as its runner
    publishes them, until ``end``; without duplicates or gaps, whichever process runs it and however often
    that changes. Yields an empty list while nothing happens for ``poll`` seconds (a keep-alive).

    Like ``follow_job``: subscribe first, then read the log; a live batch that does not follow on from what was
    sent (the layer dropped messages, or a new runner took over) waits for the runner's next store of the log,
    which is then read instead. A job whose log already holds its end is replayed without subscribing.
    """
    frames, job = await load_log(job_id, after=after)
    if job is None or _has_end(frames) or (job.is_finished and job.live_seq <= after):
        if frames:
            yield frames
        return
    layer = get_channel_layer()
    client = after

    async def from_log() -> tuple[list[Event], bool]:
        """Logged frames past ``client``, and whether the stream is over."""
        nonlocal client
        frames, job = await load_log(job_id, after=client)
        if frames:
            client = frames[-1]["seq"]
        over = job is None or _has_end(frames) or (job.is_finished and job.live_seq <= client)
        return frames, over

    async with subscribed(job_id) as inbox:
        frames, over = await from_log()
        if frames:
            yield frames
        if over:
            return
        buffered: list[dict[str, Any]] = []
        while True:
            try:
                message = await asyncio.wait_for(inbox.get(), poll)
            except TimeoutError:
                frames, over = await from_log()
                buffered = [item for item in buffered if item["seq"] > client]
                yield frames
                if over:
                    return
                continue
            kind = message.get("type")
            if kind == "live.batch":
                if message["seq"] <= client:
                    continue
                if buffered or message.get("first", message["seq"]) > client + 1:
                    if not buffered:
                        await layer.group_send(control_group(job_id), {"type": "live.flush"})
                    buffered.append(message)
                    continue
                frames = [frame for frame in message["events"] if frame["seq"] > client]
                client = message["seq"]
                yield frames
                if _has_end(frames):
                    return
            elif kind == "live.flushed" and buffered and message["seq"] >= buffered[0].get("first", 0) - 1:
                frames, over = await from_log()
                if frames:
                    yield frames
                if over:
                    return
                pending, buffered = buffered, []
                for item in pending:
                    if item["seq"] > client and item.get("first", item["seq"]) <= client + 1:
                        frames = [frame for frame in item["events"] if frame["seq"] > client]
                        client = item["seq"]
                        yield frames
                        if _has_end(frames):
                            return
                    elif item["seq"] > client:
                        buffered.append(item)  # still ahead: wait for the next store


async def job_frames(job: OcrJob, *, after: int, poll: float = 10.0) -> AsyncIterator[list[Event]]:
    """Every frame of ``job`` past ``after``, ending with ``end``: from its event log for a detached job; for a
    streaming request's job (which keeps no log: its client had the frames), rebuilt from its stored pages once
    it has ended."""
    if job.detached:
        last = after
        async with aclosing(follow_events(job.pk, after=after, poll=poll)) as frames:
            async for batch in frames:
                if batch:
                    last = batch[-1]["seq"]
                yield batch
                if _has_end(batch):
                    return
        # Ended without an end frame in its log (cancelled while queued, say): say how it ended.
        stored, _pages = await load_job(job.pk)
        if stored is not None:
            yield [stored_end_frame(stored, seq=last + 1)]
        return
    while True:
        stored, pages = await load_job(job.pk)
        if stored is None:
            return
        if stored.is_finished:
            frames = [frame for frame in rebuilt_frames(stored, pages) if frame["seq"] > after]
            yield frames
            return
        yield []
        await asyncio.sleep(poll)  # a streaming request's job is followed by polling its stored state


def stored_end_frame(job: OcrJob, *, seq: int) -> Event:
    frame: Event = events.end(  # type: ignore[assignment]
        status=job.status,
        job_id=str(job.pk),
        usage=job.usage(),
        pages_done=job.pages_done,
        pages_failed=job.pages_failed,
        elapsed_ms=job.duration_ms,
        error=job.error(),
    )
    frame["seq"] = seq
    return frame


def rebuilt_frames(job: OcrJob, pages: list[OcrPage]) -> list[Event]:
    """The frames of an ended job, rebuilt from its ledger in page order, numbered from 1."""
    frames: list[Event] = [
        events.start(
            kind=job.kind,
            job_id=str(job.pk),
            pages=job.page_count,
            file_name=job.file_name,
            input_bytes=job.input_bytes,
            engine=job.engine,
            model=job.model,
        )
    ]
    for page in pages:
        frames.append(events.page_start(page.number))
        if page.text:
            frames.append(events.page_delta(page.number, page.text))
        frames.append(page_end_event(outcome_from_page(page)))
    if job.status == JobStatus.FAILED and job.error_code:
        frames.append(events.error(job.error_code, job.error_message))
    frames.append(stored_end_frame(job, seq=0))
    for seq, frame in enumerate(frames, start=1):
        frame["seq"] = seq
    return frames
