"""Run one OCR job: pages → engine with bounded concurrency → a stream of events.

Events are plain dicts in the vocabulary of the PDF frames (``start``, ``page_start``, ``page_delta``,
``page_end``, ``error``, ``end``); the transports turn them into NDJSON or SSE. Guarantees every consumer can
rely on, whatever fails:

- ``start`` comes first and exactly one ``end`` comes last;
- every ``page_start`` gets exactly one ``page_end`` (a failed page's carries ``status`` and ``error``);
- a job that failed as a whole sends ``error`` right before ``end``;
- pages are written to the ledger as they finish (the last one with the job's end), and the job's status and
  usage on every path, before the ``page_end`` or ``end`` that reports them;
- cancelling the consumer (a client that went away) cancels the engine requests in flight and records the job
  as cancelled, with the usage so far.

``JobRun.batches()`` yields lists of the events that are ready, so a transport can write them as one chunk:
one chunk per token would cost the server far more CPU than the relay itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

from ocr import engines, events, intake, metrics, pacing
from ocr.config import config_for, ocr_config
from ocr.engines.base import Completion, Engine
from ocr.errors import EngineError
from ocr.events import ErrorCode, Event, EventType
from ocr.intake import Document
from ocr.models import JobStatus, OcrJob, PageStatus
from ocr.services import JobTotals, PageOutcome, job_close, job_create, page_record, pages_usage

if TYPE_CHECKING:
    from ocr.sharing import HelperShare, LeadShare

logger = logging.getLogger(__name__)

END = EventType.END

#: Jobs of this process whose events are being consumed; sets how long text waits to be batched (ocr/pacing.py).
_consumed_runs = 0


async def prepare_job(
    *,
    owner: AbstractBaseUser,
    upload: intake.Upload,
    kind: str,
    source: str,
    prompt: str,
    enforce_limits: bool = True,
    detached: bool = False,
    callback_url: str = "",
    text_layer: str = "",
    queued: bool = False,
) -> JobRun:
    """The one way in for every door (API, browser, command): validate ``upload`` for ``kind``, record the job
    and return its run, ready to be consumed. A ``detached`` job outlives its request (``ocr/jobs.py``); a
    ``queued`` one is recorded for a worker of the task queue, its upload kept whatever ``OCR_KEEP_UPLOADS`` says
    (the worker reads it back, maybe on another machine).

    Raises before anything is recorded: ``IntakeError`` (the upload), ``EngineNotConfigured``, and with
    ``enforce_limits`` the owner's ``LimitExceeded``.
    """
    config = config_for(text_layer=text_layer)
    engine = engines.get_engine()
    document = await intake.open_upload(upload, expected_kind=kind, config=config)
    try:
        job = await job_create(
            owner=owner,
            kind=kind,
            source=source,
            file_name=upload.file_name,
            content_type=document.content_type,
            data=upload.data,
            prompt=prompt,
            engine=engine.name,
            model=engine.model,
            page_count=document.page_count,
            keep_upload=config.keep_uploads or queued,
            enforce_limits=enforce_limits,
            status=JobStatus.QUEUED if queued else JobStatus.RUNNING,
            detached=detached,
            callback_url=callback_url,
            text_layer=text_layer,
        )
    except BaseException:
        await document.aclose()
        raise
    return JobRun(job=job, document=document, engine=engine, prompt=prompt, page_concurrency=config.page_concurrency)


@dataclass(slots=True)
class Logged:
    """What a resumed job's event log already holds: its ``start``, and the pages it started and ended."""

    start: bool = False
    started: set[int] = field(default_factory=set)
    ended: set[int] = field(default_factory=set)


class JobRun:
    """One job in flight. Iterate ``batches()`` once; stopping early cancels the job."""

    def __init__(
        self,
        *,
        job: OcrJob,
        document: Document,
        engine: Engine,
        prompt: str,
        page_concurrency: int,
        observer: Callable[[Event], None] | None = None,
        kept: Sequence[PageOutcome] = (),
        logged: Logged | None = None,
        share: LeadShare | HelperShare | None = None,
    ) -> None:
        self.job = job
        self.document = document
        self.engine = engine
        self.prompt = prompt
        # A resumed job runs only the pages it has not stored yet; the usage of the ``kept`` ones is its own.
        kept_numbers = {outcome.number for outcome in kept}
        self.numbers = [number for number in range(1, document.page_count + 1) if number not in kept_numbers]
        self.page_concurrency = max(1, min(page_concurrency, len(self.numbers)))
        self.totals = JobTotals()
        for outcome in kept:
            self.totals.add(outcome, len(prompt))
        # A resumed job (another runner started it, ``logged`` says what its event log holds) continues that log:
        # no second ``start`` or ``page_start``; the kept pages whose ``page_end`` the log lacks are told again
        # (their text as one delta that resets the page); the first delta of each page it runs resets the page's
        # text, which the previous runner may have streamed in part.
        self.resumed = logged is not None
        self._logged = logged or Logged()
        self._replay = [outcome for outcome in kept if outcome.number not in self._logged.ended]
        #: The pages whose ``page_start`` / ``page_end`` this run's stream holds (with what its log held before).
        self.told_started = set(self._logged.started)
        self.told_ended = set(self._logged.ended)
        #: Pages shared with other workers (``ocr/sharing.py``): this run as their lead or as a helper.
        self.share = share
        config = ocr_config()
        self.engine_retries = config.engine_retries
        self.engine_retry_seconds = config.engine_retry_seconds
        self.status: str | None = None
        self._observer = observer
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._in_flight: dict[int, PageOutcome] = {}
        self._pages_left = len(self.numbers)
        self._last_page: PageOutcome | None = None
        self._first_error: dict[str, str] | None = None
        self._started = 0.0
        self._first_delta_ms: int | None = None
        self.error: dict[str, str] | None = None
        #: Why a cancellation happened, for the ledger: a consumer that cancels on purpose says so first.
        self.cancel_reason = "the client went away."
        self.started = False

    # --- consumer side ------------------------------------------------------------------------------------

    async def batches(self) -> AsyncIterator[list[Event]]:
        """Yield the events that are ready, in order, as lists; the last list ends with the ``end`` event.

        Text that arrives sooner after the previous batch than ``pacing.interval`` allows waits for the rest of
        that interval, so a stream of tokens becomes a few chunks a second instead of one per token; the first
        text of a quiet stream and every other event go out at once.
        """
        global _consumed_runs
        self.started = True
        runner = asyncio.create_task(self._run(), name=f"ocr-job-{self.job.pk}")
        queue = self._queue
        loop = asyncio.get_running_loop()
        last_yield = 0.0
        _consumed_runs += 1
        try:
            while True:
                batch = [await queue.get()]
                if batch[0]["type"] == "page_delta":
                    wait = last_yield + pacing.interval(_consumed_runs) - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                while not queue.empty():
                    batch.append(queue.get_nowait())
                last_yield = loop.time()
                yield batch
                if batch[-1]["type"] == END:
                    return
        finally:
            _consumed_runs -= 1
            if not runner.done():
                runner.cancel()
            # Let the runner record the cancellation, even though our own task is being cancelled.
            with contextlib.suppress(asyncio.CancelledError):
                await runner

    async def events(self) -> AsyncIterator[Event]:
        """The same events one by one (for consumers that do not batch)."""
        async for batch in self.batches():
            for event in batch:
                yield event

    # --- producer side ------------------------------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        kind = event["type"]
        if kind == "page_start":
            self.told_started.add(event["page"])
        elif kind == "page_end":
            self.told_ended.add(event["page"])
        self._queue.put_nowait(event)
        if self._observer is not None:
            self._observer(event)

    #: For a ``LeadShare``, which forwards the frames of the pages other workers read.
    emit = _emit

    async def _read_pages(self) -> None:
        """Read pages with ``page_concurrency`` workers: this run's own pages, or the ones its share hands out."""
        share = self.share
        numbers = iter(self.numbers)

        async def worker() -> None:
            if share is None:
                for number in numbers:
                    await self._page(number)
                return
            while (number := await share.next()) is not None:
                try:
                    await self._page(number)
                finally:
                    share.finished(number)

        async with asyncio.TaskGroup() as group:
            for _ in range(self.page_concurrency):
                group.create_task(worker())

    async def _help(self) -> None:
        """A helper's run: pages only; the lead tells the job's start and end."""
        try:
            await self._read_pages()
        finally:
            with contextlib.suppress(Exception):
                await self.document.aclose()
            self._emit({"type": END})  # ends ``batches()``; not a frame of the job

    async def _run(self) -> None:
        job = self.job
        self._started = time.monotonic()
        share = self.share
        if share is not None and not share.lead:
            await self._help()
            return
        if not self._logged.start:
            self._emit_start()
        self._emit_replay()
        metrics.job_started(kind=job.kind, input_bytes=job.input_bytes, engine_slots=self.engine.concurrency)
        status = JobStatus.FAILED
        try:
            if share is not None:
                await share.open(self)
            await self._read_pages()
            if share is not None:
                # Pages other workers read are in the ledger, not in this run's totals.
                self.totals = await pages_usage(job_id=job.pk, prompt=self.prompt)
            status = self._final_status()
        except asyncio.CancelledError:
            status = JobStatus.CANCELLED
            raise
        except Exception as exc:  # a bug, not an engine failure: still end the stream properly
            logger.exception("job %s failed unexpectedly", job.pk)
            self._first_error = events.error_detail(ErrorCode.INTERNAL_ERROR, f"Internal error: {type(exc).__name__}")
            status = JobStatus.FAILED
        finally:
            if share is not None:
                await share.close()
            await self._finish(status)

    def _emit_start(self) -> None:
        job = self.job
        self._emit(
            events.start(
                kind=job.kind,
                job_id=str(job.pk),
                pages=self.document.page_count,
                file_name=job.file_name,
                input_bytes=job.input_bytes,
                engine=self.engine.name,
                model=self.engine.model,
            )
        )

    def _emit_replay(self) -> None:
        for outcome in self._replay:
            if outcome.number not in self.told_started:
                self._emit(events.page_start(outcome.number))
            if outcome.text:
                self._emit(events.page_delta(outcome.number, outcome.text, reset=True))
            self._emit(page_end_event(outcome))

    def _final_status(self) -> str:
        totals = self.totals
        if totals.pages_done == 0:
            return JobStatus.FAILED
        if totals.statuses.get(PageStatus.DONE, 0) == self.document.page_count:
            return JobStatus.DONE
        return JobStatus.PARTIAL

    async def _page(self, number: int) -> None:
        engine = self.engine
        outcome = PageOutcome(number=number, status=PageStatus.FAILED)
        parts: list[str] = []
        emit = self._emit
        first_delta = self._first_delta_ms is None
        retrying = False  # the next delta starts the page's text again (a new engine attempt)
        # A previous runner (of a resumed job, or another worker of a shared one) may have streamed some of it.
        restarted = self.resumed or number in self.told_started

        def on_delta(text: str, *, reset: bool = False) -> None:
            nonlocal first_delta, retrying, restarted
            if retrying:
                retrying, reset = False, bool(parts)
            if restarted:
                restarted, reset = False, True
            if reset:
                parts.clear()
                parts.append(text)
                emit(events.page_delta(number, text, reset=True))
                return
            parts.append(text)
            emit(events.page_delta(number, text))
            if first_delta:
                first_delta = False
                if self._first_delta_ms is None:
                    self._first_delta_ms = int((time.monotonic() - self._started) * 1000)

        async with metrics.EngineSlot(engine.slots()):
            outcome.started_at = timezone.now()
            self._in_flight[number] = outcome
            if number not in self.told_started:
                emit(events.page_start(number))
            try:
                page = await self.document.page(number, pixels=engine.wants_pixels)
                outcome.width, outcome.height = page.width, page.height
                attempt = 0
                while True:
                    try:
                        completion = await engine.recognise(page, self.prompt, on_delta)
                        break
                    except EngineError as exc:
                        if not exc.transient or attempt >= self.engine_retries:
                            raise
                        # Unreachable, overloaded or dropped: wait and ask again; what it streamed is replaced.
                        await asyncio.sleep(engine.retry_delay(self.engine_retry_seconds * 2**attempt))
                        attempt += 1
                        retrying = True
                        metrics.engine_retried(code=exc.code)
                del page
                self._complete(outcome, completion)
            except EngineError as exc:
                outcome.error_code, outcome.error_message = exc.code, exc.message
            except asyncio.CancelledError:
                outcome.status = PageStatus.CANCELLED
                outcome.error_code = ErrorCode.CANCELLED
                outcome.error_message = f"The job was cancelled: {self.cancel_reason}"
                outcome.text = "".join(parts)
                # Tokens already streamed were spent on the GPU: count them, flagged as an estimate.
                outcome.completion_tokens, outcome.estimated = len(parts), True
                raise
            except Exception as exc:
                if isinstance(exc, IndexError | OSError | ValueError):
                    outcome.error_code = ErrorCode.RENDER_FAILED
                    outcome.error_message = f"Page {number} could not be rendered."
                else:
                    outcome.error_code = ErrorCode.INTERNAL_ERROR
                    outcome.error_message = f"Internal error on page {number}: {type(exc).__name__}"
                logger.exception("page %s of job %s failed", number, self.job.pk)
            outcome.text = "".join(parts)
            outcome.finished_at = timezone.now()
            del self._in_flight[number]
            self.totals.add(outcome, len(self.prompt))
            metrics.page_finished(outcome, deltas=len(parts))
            if outcome.error_code and self._first_error is None:
                self._first_error = events.error_detail(outcome.error_code, outcome.error_message)
        self._pages_left -= 1
        if self.share is not None:
            if await self.share.record(outcome):
                emit(page_end_event(outcome))
            return
        if self._pages_left == 0:
            # The last page is written with the job's end, in one transaction (``_finish``): one trip to the
            # database thread less per job (an image's job makes one after its start instead of two).
            self._last_page = outcome
            return
        await page_record(job_id=self.job.pk, outcome=outcome)
        emit(page_end_event(outcome))

    @staticmethod
    def _complete(outcome: PageOutcome, completion: Completion) -> None:
        outcome.prompt_tokens = completion.prompt_tokens
        outcome.completion_tokens = completion.completion_tokens
        outcome.estimated = completion.estimated
        outcome.finish_reason = completion.finish_reason
        outcome.layout = completion.layout
        outcome.source = completion.source
        if completion.finish_reason == "length":
            outcome.status = PageStatus.TRUNCATED
            outcome.error_code = ErrorCode.ENGINE_CUT_OFF
            outcome.error_message = completion.note or (
                f"The engine stopped at its token limit after {completion.completion_tokens} tokens; the "
                "text of this page is incomplete (often a repetition loop)."
            )
        else:
            outcome.status = PageStatus.DONE

    async def _finish(self, status: str) -> None:
        """Write the job's final state (with its last page), then send that page's ``page_end``, ``error`` (for a
        failed job) and ``end``.

        ``end`` and the ledger carry the first page error of a job that did not fully succeed.
        """
        self.status = status
        unrecorded = list(self._in_flight.values())
        for outcome in unrecorded:
            outcome.finished_at = timezone.now()
            self.totals.add(outcome, len(self.prompt))
            metrics.page_finished(outcome, deltas=0)
        self._in_flight.clear()
        last_page = self._last_page
        if last_page is not None:
            unrecorded.append(last_page)
        error = None if status == JobStatus.DONE else self._first_error
        if status == JobStatus.CANCELLED:
            error = events.error_detail(ErrorCode.CANCELLED, f"The job was cancelled: {self.cancel_reason}")
        elif status == JobStatus.FAILED and error is None:
            error = events.error_detail(ErrorCode.INTERNAL_ERROR, "The job failed.")
        self.error = error
        elapsed = time.monotonic() - self._started
        duration_ms = int(elapsed * 1000)
        first_text = None if self._first_delta_ms is None else self._first_delta_ms / 1000
        metrics.job_finished(kind=self.job.kind, status=status, seconds=elapsed, first_text_seconds=first_text)
        shared = self.share is not None
        # A shared job's pages other workers still hold end as this one's.
        left_running = PageStatus.CANCELLED if status == JobStatus.CANCELLED else PageStatus.FAILED
        try:
            # Shielded: a client that leaves must not stop the ledger from being written.
            await asyncio.shield(
                job_close(
                    job_id=self.job.pk,
                    status=status,
                    # A shared job's usage is folded from its stored pages.
                    totals=None if shared else self.totals,
                    running_pages=left_running if shared else "",
                    unrecorded=unrecorded,
                    first_delta_ms=self._first_delta_ms,
                    duration_ms=duration_ms,
                    error_code=error["code"] if error else "",
                    error_message=error["message"] if error else "",
                )
            )
            if shared:
                self.totals = await asyncio.shield(pages_usage(job_id=self.job.pk, prompt=self.prompt))
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("could not record the end of job %s", self.job.pk)
        finally:
            with contextlib.suppress(Exception):
                await self.document.aclose()
        if last_page is not None:
            self._emit(page_end_event(last_page))
        if status == JobStatus.FAILED:
            self._emit(events.error(error["code"], error["message"]))
        self._emit(self.end_event(duration_ms))

    def end_event(self, duration_ms: int) -> Event:
        totals = self.totals
        job = self.job
        return events.end(
            status=self.status,
            job_id=str(job.pk),
            usage=events.job_usage(
                prompt_tokens=totals.prompt_tokens,
                completion_tokens=totals.completion_tokens,
                prompt_chars=totals.prompt_chars,
                completion_chars=totals.completion_chars,
                input_bytes=job.input_bytes,
                pages=self.document.page_count,
                estimated=totals.estimated,
            ),
            pages_done=totals.pages_done,
            pages_failed=totals.pages_failed,
            elapsed_ms=duration_ms,
            error=self.error,
        )


def page_end_event(outcome: PageOutcome) -> Event:
    return events.page_end(
        page=outcome.number,
        status=outcome.status,
        usage=events.page_usage(
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            completion_chars=outcome.completion_chars,
            estimated=outcome.estimated,
        ),
        finish_reason=outcome.finish_reason,
        elapsed_ms=outcome.duration_ms,
        error=events.error_detail(outcome.error_code, outcome.error_message) if outcome.error_code else None,
        layout=outcome.layout,
        from_text_layer=outcome.source == "text_layer",
    )
