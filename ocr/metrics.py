"""Prometheus metrics of OCR jobs, fed by the pipeline at a few points of a job's life.

The pipeline calls these functions at job start and end and at each page's end; nothing here runs per text
delta (deltas and characters are counted per page, at its end), so a token stream costs no metric work.

Metric names and labels keep those of the original My OCR (``ocr_requests_total{kind}``,
``ocr_processing_seconds{kind}``, ``ocr_in_progress{kind}``, ``ocr_input_bytes_total{kind}``,
``image_requests_total``, ``pdf_requests_total``, ``prompt_tokens_total``, ``completion_tokens_total``,
``tokens_total``) and add what the original could not show: per-page time and status, engine errors by code,
``finish_reason`` counts, queue and in-flight gauges, time to first text. Every label has a small, fixed set of
values: never a user, a file name or a job id.

The usage counters are incremented from the same page outcomes, at the same moments, as the job totals the
ledger stores, so ``sum(increase(completion_tokens_total))`` matches the sum of ``OcrJob.completion_tokens``.

Under several server processes, prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``) sums the
counters and histograms; each gauge below names how its per-process values combine.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

from ocr.events import ErrorCode
from ocr.statuses import JobKind, JobStatus, PageStatus

if TYPE_CHECKING:
    from ocr.engines.base import EngineSlots
    from ocr.services import PageOutcome

KINDS = tuple(kind.value for kind in JobKind)
PAGE_STATUSES = tuple(status.value for status in PageStatus.final())
JOB_STATUSES = tuple(status.value for status in JobStatus.run_endings())
FINISH_REASONS = ("stop", "length")
ERROR_CODES = ErrorCode.page_errors()
OTHER = "other"

# A job runs from a fraction of a second (one image on vLLM) to an hour (a long PDF on the CPU engine).
JOB_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)
PAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 900)
FIRST_TEXT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 180)
QUEUE_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

# --- the original's metrics -------------------------------------------------------------------------------

OCR_REQUESTS = Counter("ocr_requests", "OCR jobs started, by kind.", ["kind"])
OCR_PROCESSING = Histogram(
    "ocr_processing_seconds",
    "Time from a job's start to its last frame (the whole stream), by kind.",
    ["kind"],
    buckets=JOB_BUCKETS,
)
OCR_IN_PROGRESS = Gauge("ocr_in_progress", "OCR jobs running now, by kind.", ["kind"], multiprocess_mode="livesum")
OCR_INPUT_BYTES = Counter("ocr_input_bytes", "Bytes of uploaded files that started a job, by kind.", ["kind"])
IMAGE_REQUESTS = Counter("image_requests", "Image OCR jobs started (same as ocr_requests_total{kind='image'}).")
PDF_REQUESTS = Counter("pdf_requests", "PDF OCR jobs started (same as ocr_requests_total{kind='pdf'}).")
PROMPT_TOKENS = Counter("prompt_tokens", "Prompt tokens spent, as recorded in the usage ledger.")
COMPLETION_TOKENS = Counter("completion_tokens", "Completion tokens spent, as recorded in the usage ledger.")
TOKENS = Counter("tokens", "Prompt plus completion tokens, as recorded in the usage ledger.")

# --- what the original could not show ---------------------------------------------------------------------

OCR_JOBS = Counter("ocr_jobs", "OCR jobs finished, by kind and final status.", ["kind", "status"])
OCR_FIRST_TEXT = Histogram(
    "ocr_time_to_first_text_seconds",
    "Time from a job's start to its first recognised text, by kind.",
    ["kind"],
    buckets=FIRST_TEXT_BUCKETS,
)
OCR_PAGES = Counter("ocr_pages", "Pages processed, by final status (done, truncated, failed, cancelled).", ["status"])
OCR_PAGE_SECONDS = Histogram(
    "ocr_page_processing_seconds",
    "Time one page spent with the engine (rendering and recognition), by final status.",
    ["status"],
    buckets=PAGE_BUCKETS,
)
OCR_PAGE_QUEUE = Histogram(
    "ocr_page_queue_seconds",
    "Time a page waited for one of the process's engine slots.",
    buckets=QUEUE_BUCKETS,
)
OCR_ENGINE_ERRORS = Counter("ocr_engine_errors", "Pages that ended with an error, by error code.", ["code"])
OCR_FINISH_REASONS = Counter(
    "ocr_finish_reasons",
    "Pages by the engine's finish_reason ('length': cut off by the token limit, often a repetition loop).",
    ["finish_reason"],
)
OCR_PAGES_WAITING = Gauge("ocr_pages_waiting", "Pages waiting for an engine slot now.", multiprocess_mode="livesum")
OCR_PAGES_IN_FLIGHT = Gauge("ocr_pages_in_flight", "Pages holding an engine slot now.", multiprocess_mode="livesum")
OCR_ENGINE_SLOTS = Gauge(
    "ocr_engine_slots", "Pages the server processes may have in flight at once.", multiprocess_mode="livesum"
)
OCR_COMPLETION_CHARS = Counter("ocr_completion_chars", "Characters of recognised text, as in the usage ledger.")
OCR_DELTAS = Counter("ocr_stream_deltas", "Text deltas the engine streamed (one per engine chunk).")
OCR_REJECTED = Counter(
    "ocr_requests_rejected",
    "OCR requests refused before a job started (validation, limits, engine not configured), by kind and code.",
    ["kind", "code"],
)

# Children bound once: ``labels()`` validates and hashes its arguments on every call.
_requests = {kind: OCR_REQUESTS.labels(kind) for kind in KINDS}
_processing = {kind: OCR_PROCESSING.labels(kind) for kind in KINDS}
_in_progress = {kind: OCR_IN_PROGRESS.labels(kind) for kind in KINDS}
_input_bytes = {kind: OCR_INPUT_BYTES.labels(kind) for kind in KINDS}
_first_text = {kind: OCR_FIRST_TEXT.labels(kind) for kind in KINDS}
_legacy = {"image": IMAGE_REQUESTS, "pdf": PDF_REQUESTS}
_page_seconds = {status: OCR_PAGE_SECONDS.labels(status) for status in PAGE_STATUSES}
_pages = {status: OCR_PAGES.labels(status) for status in PAGE_STATUSES}


def _known(value: str, allowed: tuple[str, ...]) -> str:
    return value if value in allowed else OTHER


def job_started(*, kind: str, input_bytes: int, engine_slots: int) -> None:
    """A job started streaming. ``kind`` is a job kind (``image`` or ``pdf``)."""
    _requests[kind].inc()
    _legacy[kind].inc()
    _input_bytes[kind].inc(input_bytes)
    _in_progress[kind].inc()
    OCR_ENGINE_SLOTS.set(engine_slots)


def job_finished(*, kind: str, status: str, seconds: float, first_text_seconds: float | None) -> None:
    """A job ended (any status); called exactly once per ``job_started``."""
    _in_progress[kind].dec()
    _processing[kind].observe(seconds)
    OCR_JOBS.labels(kind, _known(status, JOB_STATUSES)).inc()
    if first_text_seconds is not None:
        _first_text[kind].observe(first_text_seconds)


def page_finished(outcome: PageOutcome, *, deltas: int) -> None:
    """A page ended and its usage joined the job's totals (the figures the ledger records)."""
    status = _known(outcome.status, PAGE_STATUSES)
    _pages[status].inc()
    duration_ms = outcome.duration_ms
    if duration_ms is not None:
        _page_seconds[status].observe(duration_ms / 1000)
    if outcome.finish_reason:
        OCR_FINISH_REASONS.labels(_known(outcome.finish_reason, FINISH_REASONS)).inc()
    if outcome.error_code and outcome.error_code != ErrorCode.CANCELLED:
        OCR_ENGINE_ERRORS.labels(_known(outcome.error_code, ERROR_CODES)).inc()
    prompt, completion = outcome.prompt_tokens, outcome.completion_tokens
    if prompt:
        PROMPT_TOKENS.inc(prompt)
    if completion:
        COMPLETION_TOKENS.inc(completion)
    if prompt or completion:
        TOKENS.inc(prompt + completion)
    chars = outcome.completion_chars
    if chars:
        OCR_COMPLETION_CHARS.inc(chars)
    if deltas:
        OCR_DELTAS.inc(deltas)


def request_rejected(*, kind: str, code: str) -> None:
    # Codes come from the fixed set of intake and API errors, so they are safe as a label.
    OCR_REJECTED.labels(_known(kind, KINDS), code).inc()


class EngineSlot:
    """``async with EngineSlot(engine.slots()):`` holds an engine slot and keeps the queue gauges right,
    whether the page finishes, fails or is cancelled while it waits."""

    __slots__ = ("_queued_at", "_semaphore")

    def __init__(self, semaphore: EngineSlots) -> None:
        self._semaphore = semaphore
        self._queued_at = 0.0

    async def __aenter__(self) -> None:
        OCR_PAGES_WAITING.inc()
        self._queued_at = time.perf_counter()
        try:
            await self._semaphore.acquire()
        finally:
            OCR_PAGES_WAITING.dec()
        OCR_PAGE_QUEUE.observe(time.perf_counter() - self._queued_at)
        OCR_PAGES_IN_FLIGHT.inc()

    async def __aexit__(self, *exc_info: object) -> None:
        OCR_PAGES_IN_FLIGHT.dec()
        self._semaphore.release()


# --- The task queue and engine retries (ocr/queue.py, ocr/jobs.py) ---
QUEUE_EVENTS = ("submitted", "started", "resumed", "requeued", "finished", "refused", "helped", "pages_released")
OCR_ENGINE_RETRIES = Counter(
    "ocr_engine_retries", "Engine requests tried again after a transient failure, by error code.", ["code"]
)
OCR_QUEUE_JOBS = Counter(
    "ocr_queue_jobs",
    "Detached jobs by queue event: submitted, started by a runner, resumed after a runner died, requeued by "
    "recovery, finished, refused by the broker; helped by another worker (a long PDF's pages shared), its pages "
    "released when a helper was gone.",
    ["event"],
)
OCR_QUEUE_WAIT = Histogram(
    "ocr_queue_wait_seconds", "Time from a detached job's submission to a runner taking it.", buckets=QUEUE_BUCKETS
)
OCR_QUEUE_RUNNING = Gauge(
    "ocr_queue_running", "Detached jobs running in this process now.", multiprocess_mode="livesum"
)
OCR_QUEUE_DEPTH = Gauge(
    "ocr_queue_depth", "Detached jobs waiting for a runner (read from the ledger).", multiprocess_mode="max"
)
_queue_events = {event: OCR_QUEUE_JOBS.labels(event) for event in QUEUE_EVENTS}


def engine_retried(*, code: str) -> None:
    OCR_ENGINE_RETRIES.labels(_known(code, ERROR_CODES)).inc()


def queue_event(event: str, count: int = 1) -> None:
    _queue_events[event].inc(count)


# --- Engine servers (ocr/engines/servers.py) ---
# ``server`` is the host:port of one of the configured LLM_BASE_URL entries: a fixed, small set per deployment.
ENGINE_RESULTS = ("done", "cancelled", *ERROR_CODES)
OCR_ENGINE_REQUESTS = Counter(
    "ocr_engine_requests",
    "Requests sent to the engine, by server (host:port) and result: done, cancelled or an error code. A page "
    "retried on another server counts once on each.",
    ["server", "result"],
)
OCR_ENGINE_SERVER_IN_FLIGHT = Gauge(
    "ocr_engine_server_in_flight", "Engine requests in flight now, by server.", ["server"], multiprocess_mode="livesum"
)
OCR_ENGINE_SERVER_UP = Gauge(
    "ocr_engine_server_up",
    "1 while a server takes requests, 0 while it is left out after a failure (the lowest over processes).",
    ["server"],
    multiprocess_mode="livemin",
)
OCR_ENGINE_SERVER_EJECTIONS = Counter(
    "ocr_engine_server_ejections", "Times a server was left out after a transient failure, by server.", ["server"]
)


_server_in_flight: dict[str, Gauge] = {}


def engine_request_started(*, server: str) -> None:
    # Bound once per server (the set is fixed by the configuration), as the children above.
    gauge = _server_in_flight.get(server)
    if gauge is None:
        gauge = _server_in_flight[server] = OCR_ENGINE_SERVER_IN_FLIGHT.labels(server)
    gauge.inc()


def engine_request_finished(*, server: str, result: str) -> None:
    _server_in_flight[server].dec()
    OCR_ENGINE_REQUESTS.labels(server, _known(result, ENGINE_RESULTS)).inc()


def engine_server_state(*, server: str, up: bool, ejected: bool = False) -> None:
    OCR_ENGINE_SERVER_UP.labels(server).set(1 if up else 0)
    if ejected:
        OCR_ENGINE_SERVER_EJECTIONS.labels(server).inc()


# --- Model profiles and repetition loops (ocr/engines/profiles.py, ocr/engines/loops.py) ---
# ``profile`` is one of the fixed profile names (deepseek-ocr, deepseek-ocr-2, generic), never the raw model name.
PROFILES = ("deepseek-ocr", "deepseek-ocr-2", "generic")
ENGINE_ENDINGS = ("stop", "length", "loop")
LOOP_STAGES = ("stream", "length")
LOOP_RETRY_RESULTS = ("recovered", "looped", "failed", "skipped")
OCR_ENGINE_MODEL = Gauge(
    "ocr_engine_model_info",
    "1 for the model profile the vLLM engine uses, with LLM_MODEL as configured.",
    ["profile", "model"],
    multiprocess_mode="max",
)
OCR_ENGINE_COMPLETIONS = Counter(
    "ocr_engine_completions",
    "vLLM requests that produced a page's text, by model profile and how they ended: stop, length (the token "
    "limit) or loop (stopped early in a repetition loop). A retried page counts each request.",
    ["profile", "finish_reason"],
)
OCR_ENGINE_LOOPS = Counter(
    "ocr_engine_loops",
    "Repetition loops found, by model profile and where: stream (the request was stopped early) or length (found "
    "in the text of a request that ran to its token limit).",
    ["profile", "stage"],
)
OCR_ENGINE_LOOP_RETRIES = Counter(
    "ocr_engine_loop_retries",
    "Pages asked again after a repetition loop, by model profile and result: recovered, looped (again: the page "
    "ends truncated), failed (the retry failed: the first text is kept), skipped (no other strategy to try).",
    ["profile", "result"],
)


# Every child exists from the start at 0: a loop is rare, and the dashboard's rates should read 0, not "no data".
for _profile in PROFILES:
    for _ending in ENGINE_ENDINGS:
        OCR_ENGINE_COMPLETIONS.labels(_profile, _ending)
    for _stage in LOOP_STAGES:
        OCR_ENGINE_LOOPS.labels(_profile, _stage)
    for _result in LOOP_RETRY_RESULTS:
        OCR_ENGINE_LOOP_RETRIES.labels(_profile, _result)


def engine_model(*, profile: str, model: str) -> None:
    OCR_ENGINE_MODEL.clear()
    OCR_ENGINE_MODEL.labels(_known(profile, PROFILES), model).set(1)


def engine_completion(*, profile: str, finish_reason: str) -> None:
    OCR_ENGINE_COMPLETIONS.labels(_known(profile, PROFILES), _known(finish_reason, ENGINE_ENDINGS)).inc()


def engine_loop(*, profile: str, stage: str) -> None:
    OCR_ENGINE_LOOPS.labels(_known(profile, PROFILES), _known(stage, LOOP_STAGES)).inc()


def engine_loop_retry(*, profile: str, result: str) -> None:
    OCR_ENGINE_LOOP_RETRIES.labels(_known(profile, PROFILES), _known(result, LOOP_RETRY_RESULTS)).inc()
