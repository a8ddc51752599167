"""One long PDF, several workers: the pages of a queued job shared by the workers of the task queue.

A detached job has one **lead**, the runner that claimed it (``ocr.jobs.run_detached_job``). The lead alone numbers
and publishes the job's events, writes its event log and closes it, as for any job. When the job has more pages
left than ``OCR_JOB_PAGES_PER_WORKER`` and runs on the task queue, the lead also sends **helper** messages
(``ocr.queue.run_pages``, one per further ``OCR_JOB_PAGES_PER_WORKER`` pages, up to ``OCR_JOB_MAX_WORKERS`` workers
in all). A worker that takes one opens the same upload (``STORAGES``) and runs pages with the same pipeline
(``JobRun`` with a ``HelperShare``); a worker that already runs the job, as lead or helper, lets the message go.

- **Claims are rows of the ledger.** A page is taken by inserting its ``running`` row with the runner's id
  (``OcrPage.runner``); the unique page number makes that atomic across machines. Every runner takes the lowest
  free page, stores each page it reads as the pipeline does, and a helper stops when no page is free.
- **Events go through the lead.** A helper sends its page frames to the lead over the channel layer (the job's
  ``-pages`` group), each numbered within its page (``part``); the lead forwards them into its own stream, so
  followers see one sequence of frames, as from one runner. A page whose frames did not all reach the lead (the
  layer dropped some, or they were sent while no lead listened) is told again from its stored row when it ends:
  one delta that resets its text, then its ``page_end``.
- **The ledger is the truth.** Every ``OCR_JOB_SHARE_POLL_SECONDS`` the lead reads which pages are stored and who
  holds the others: it tells the stored pages it has not heard end, and frees the pages of runners that are gone
  (``ocr.workers.runners_gone``, the rules that find dead processes), which any runner then claims again; a
  page's first frame from its new runner resets its text. The lead ends the job when every page has ended; its
  usage is the fold of the stored pages, as for any job.
- **Cancel** reaches the lead and every helper through the job's control group; a helper also stops claiming once
  the job is no longer running. A helper's page written after the job ended is dropped (``page_record_shared``
  locks the job against its close), so no page or usage counts twice. A lead killed mid-job is redelivered as
  usual; its successor keeps the pages living helpers still hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections.abc import Awaitable, Callable, Iterable
from contextlib import aclosing
from datetime import datetime
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.utils import timezone

from ocr import events, metrics
from ocr.config import OcrConfig
from ocr.events import EventType
from ocr.live import control_group, publish_interval
from ocr.services import (
    WORKER_ID,
    PageOutcome,
    page_claim,
    page_record,
    page_record_shared,
    page_states,
    pages_release,
    stored_pages,
)

if TYPE_CHECKING:
    from ocr.pipeline import JobRun

logger = logging.getLogger(__name__)

END = EventType.END


def pages_group(job_id: uuid.UUID | str) -> str:
    return f"ocr-job-{uuid.UUID(str(job_id)).hex}-pages"


def helpers_wanted(pages_left: int, config: OcrConfig) -> int:
    """How many workers besides the lead a job with ``pages_left`` pages to read asks for."""
    workers = min(config.max_workers_per_job, math.ceil(pages_left / config.pages_per_worker))
    return max(0, workers - 1)


async def release_gone_runners(job_id: uuid.UUID) -> int:
    """Free the running pages of ``job_id`` whose runners are gone (a resumed job's); returns how many."""
    states = await page_states(job_id=job_id)
    return await _release_gone(job_id, states.held.values())


async def _release_gone(job_id: uuid.UUID, held: Iterable[tuple[str, datetime | None]]) -> int:
    """Free the pages among ``held`` (runner, since when) whose runners are gone; returns how many."""
    from ocr.workers import runners_gone

    oldest: dict[str, datetime] = {}
    for runner, since in held:
        if runner:
            since = since or timezone.now()
            oldest[runner] = min(oldest.get(runner, since), since)
    gone = await sync_to_async(runners_gone, thread_sensitive=False)(oldest) if oldest else set()
    released = await pages_release(job_id=job_id, runners=gone) if gone else 0
    if released:
        logger.warning("job %s: pages of %s are read again, the worker is gone", job_id, ", ".join(sorted(gone)))
        metrics.queue_event("pages_released", released)
    return released


class LeadShare:
    """The lead's side: claims, the helpers' frames forwarded into the run's stream, and the ledger watched."""

    lead = True

    def __init__(
        self,
        *,
        job_id: uuid.UUID,
        page_count: int,
        helpers: int,
        dispatch: Callable[[uuid.UUID, int], Awaitable[None]],
        poll_seconds: float,
    ) -> None:
        self.job_id = job_id
        self.page_count = page_count
        self.helpers = helpers
        self._dispatch = dispatch
        self._poll = poll_seconds
        self._run: JobRun | None = None
        self._local: set[int] = set()  # pages this runner reads now
        self._parts: dict[int, int] = {}  # the next part expected of each page a helper reads
        self._broken: set[int] = set()  # pages whose frames did not all arrive: told from the ledger at their end
        self._reset_next: set[int] = set()  # pages started again by a new runner: their next delta resets them
        self._changed = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._channel: str | None = None
        self._layer = get_channel_layer()

    async def open(self, run: JobRun) -> None:
        """Listen to the helpers, then ask for them."""
        self._run = run
        self._channel = await self._layer.new_channel()
        await self._layer.group_add(pages_group(self.job_id), self._channel)
        self._watcher = asyncio.create_task(self._watch(), name=f"ocr-share-{self.job_id}")
        if self.helpers:
            try:
                await self._dispatch(self.job_id, self.helpers)
            except Exception as exc:  # the job still runs, on this worker alone
                logger.warning("job %s: could not ask other workers to help (%s)", self.job_id, exc)

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watcher
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await self._layer.group_discard(pages_group(self.job_id), self._channel)

    async def next(self) -> int | None:
        """The next page for this runner to read; waits while other runners hold the rest; ``None`` when every
        page has ended (or is read here)."""
        run = self._run
        assert run is not None
        while True:
            left = [
                number
                for number in range(1, self.page_count + 1)
                if number not in run.told_ended and number not in self._local
            ]
            if not left:
                return None
            self._changed.clear()
            number = await page_claim(job_id=self.job_id, numbers=left)
            if number is not None:
                self._local.add(number)
                return number
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._poll)

    def finished(self, number: int) -> None:
        self._local.discard(number)

    async def record(self, outcome: PageOutcome) -> bool:
        await page_record(job_id=self.job_id, outcome=outcome)
        return True

    # --- the helpers' frames and the ledger -----------------------------------------------------------------

    async def _watch(self) -> None:
        assert self._channel is not None
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def pump() -> None:
            while True:
                await inbox.put(await self._layer.receive(self._channel))

        reader = asyncio.create_task(pump(), name=f"ocr-share-inbox-{self.job_id}")
        next_sync = loop.time() + self._poll
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    message = await asyncio.wait_for(inbox.get(), max(0.0, next_sync - loop.time()))
                    if message.get("type") == "pages.batch":
                        await self._forward(message["events"])
                if loop.time() >= next_sync:
                    try:
                        await self._sync()
                    except Exception:
                        logger.exception("job %s: could not read the shared pages' state", self.job_id)
                    next_sync = loop.time() + self._poll
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _forward(self, frames: list[dict[str, Any]]) -> None:
        run = self._run
        assert run is not None
        untold: list[int] = []
        for frame in frames:
            number = frame["page"]
            part = frame.pop("part")
            if number in run.told_ended or number in self._local:
                continue  # already told from the ledger, or read here now
            kind = frame["type"]
            if part == 0:  # a runner starts the page (again: what was told of it is replaced)
                self._parts[number] = 1
                self._broken.discard(number)
                if number in run.told_started:
                    self._reset_next.add(number)
                else:
                    run.emit(frame)
                continue
            if number in self._broken or part != self._parts.get(number, 0):
                self._broken.add(number)
                if kind == "page_end":
                    untold.append(number)
                continue
            self._parts[number] = part + 1
            if kind == "page_delta" and number in self._reset_next:
                self._reset_next.discard(number)
                frame["reset"] = True
            run.emit(frame)
            if kind == "page_end":
                self._changed.set()
        if untold:
            await self._tell_stored(untold)

    async def _sync(self) -> None:
        run = self._run
        assert run is not None
        states = await page_states(job_id=self.job_id)
        untold = sorted(states.final - run.told_ended - self._local)
        if untold:
            await self._tell_stored(untold)
        others = [holder for number, holder in states.held.items() if number not in self._local]
        await _release_gone(self.job_id, others)
        self._changed.set()

    async def _tell_stored(self, numbers: list[int]) -> None:
        """Tell pages other runners stored, from their rows: their text as one delta that resets the page."""
        from ocr.pipeline import page_end_event

        run = self._run
        assert run is not None
        for outcome in sorted(await stored_pages(job_id=self.job_id, numbers=numbers), key=lambda o: o.number):
            number = outcome.number
            if number in run.told_ended or number in self._local:
                continue
            if number not in run.told_started:
                run.emit(events.page_start(number))
            elif not outcome.text:
                run.emit(events.page_delta(number, "", reset=True))
            if outcome.text:
                run.emit(events.page_delta(number, outcome.text, reset=True))
            run.emit(page_end_event(outcome))
            self._broken.discard(number)
        self._changed.set()


class HelperShare:
    """A helper's side: claim free pages until there are none, and write each only while it is still ours."""

    lead = False

    def __init__(self, *, job_id: uuid.UUID, page_count: int) -> None:
        self.job_id = job_id
        self.page_count = page_count
        self._tried: set[int] = set()

    async def next(self) -> int | None:
        numbers = [number for number in range(1, self.page_count + 1) if number not in self._tried]
        number = await page_claim(job_id=self.job_id, numbers=numbers) if numbers else None
        if number is not None:
            self._tried.add(number)
        return number

    def finished(self, number: int) -> None:
        pass

    async def record(self, outcome: PageOutcome) -> bool:
        """Write the page if it is still ours; ``False``: the job ended or the page moved (no ``page_end`` then)."""
        try:
            if await page_record_shared(job_id=self.job_id, outcome=outcome):
                return True
        except Exception:  # the page stays held until this helper ends and gives it back
            logger.exception("job %s: could not store page %s", self.job_id, outcome.number)
            return False
        logger.info("job %s: page %s was not kept (the job ended or the page moved)", self.job_id, outcome.number)
        return False

    async def release(self) -> None:
        """Give back the pages this helper still holds (it was stopped), for the other runners."""
        with contextlib.suppress(Exception):
            await pages_release(job_id=self.job_id, runners=[WORKER_ID])


async def help_with(run: JobRun) -> None:
    """Run a helper's ``run`` to its end: its page frames go to the lead; Cancel stops it."""
    job_id = run.job.pk
    layer = get_channel_layer()
    control = await layer.new_channel()
    await layer.group_add(control_group(job_id), control)
    relay = asyncio.create_task(_relay(run), name=f"ocr-help-{job_id}")

    async def listen() -> None:
        while True:
            message = await layer.receive(control)
            if message.get("type") == "live.cancel":
                run.cancel_reason = "cancelled by its owner."
                relay.cancel()

    listener = asyncio.create_task(listen(), name=f"ocr-help-control-{job_id}")
    try:
        await asyncio.wait({relay})
        if not relay.cancelled() and relay.exception() is not None:
            logger.error("job %s: helping failed", job_id, exc_info=relay.exception())
    finally:
        if not relay.done():  # this worker is stopping
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await relay
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await listener
        with contextlib.suppress(Exception):
            await layer.group_discard(control_group(job_id), control)


async def _relay(run: JobRun) -> None:
    layer = get_channel_layer()
    group = pages_group(run.job.pk)
    parts: dict[int, int] = {}
    share = run.share
    try:
        async with aclosing(run.batches()) as batches:
            async for batch in batches:
                frames = []
                for event in batch:
                    if event["type"] == END:
                        continue
                    number = event["page"]
                    part = 0 if event["type"] == "page_start" else parts.get(number, 1)
                    parts[number] = part + 1
                    frames.append({**event, "part": part})
                if frames:
                    try:
                        await layer.group_send(group, {"type": "pages.batch", "events": frames})
                    except Exception:
                        # The lead tells the pages from the ledger when they end.
                        logger.exception("job %s: could not send page events to its lead", run.job.pk)
                if batch and batch[-1]["type"] == END:
                    return
                await asyncio.sleep(publish_interval())
    finally:
        if isinstance(share, HelperShare):
            await asyncio.shield(share.release())
