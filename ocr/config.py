"""The OCR settings as one typed, immutable object, built from Django settings.

Code reads ``ocr_config()`` rather than ``settings.OCR_*`` so each limit has one name and one type: the engine,
the task queue and its workers, webhooks, uploads and the per-user limits. (``myocr/settings.py`` reads and checks
the environment; nothing else reads ``settings.OCR_*``.) Tests that
override settings get a fresh object through the ``setting_changed`` signal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from functools import cache

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver


@dataclass(frozen=True, slots=True)
class OcrConfig:
    engine: str  # "local" or "openai", after resolving "auto"
    llm_base_url: str
    llm_api_key: str
    llm_model: str
    default_prompt: str
    max_tokens: int
    ngram_size: int
    ngram_window: int
    ngram_whitelist: tuple[int, ...]
    max_upload_bytes: int
    max_pdf_pages: int
    max_image_pixels: int
    pdf_dpi: int
    max_render_pixels: int
    page_format: str
    page_concurrency: int
    engine_concurrency: int
    local_threads: int
    connect_timeout: float
    first_token_timeout: float
    idle_timeout: float
    total_timeout: float
    warmup: bool
    keep_uploads: bool
    engine_retries: int = 2
    engine_retry_seconds: float = 1.0
    #: Every server of ``LLM_BASE_URL`` (comma-separated); ``llm_base_url`` is the first, or the only one.
    llm_base_urls: tuple[str, ...] = ()
    #: "auto": a PDF page with a trusted text layer is read from it; "ocr": every page is OCRed.
    pdf_text_layer: str = "auto"
    #: ``LLM_MODEL_PROFILE``: a profile of ``ocr.engines.profiles``, or "auto" (from the model's name).
    model_profile: str = "auto"
    #: ``LLM_LOOP_CHARS``: the length of a repeated tail that makes a repetition loop (0: no detection).
    loop_chars: int = 2000
    #: Sharing a queued PDF's pages between workers (``ocr/sharing.py``).
    pages_per_worker: int = 16
    max_workers_per_job: int = 4
    share_poll_seconds: float = 1.0
    #: Live jobs (``ocr/live.py``): how often a running job stores its partial text and publishes its events, and
    #: how often a follower with nothing arriving re-reads the job (and sends a keep-alive).
    live_flush_seconds: float = 1.0
    live_publish_seconds: float = 0.05
    live_poll_seconds: float = 10.0
    #: The task queue (``ocr/queue.py``) and its workers (``ocr/workers.py``): empty ``queue_url``, no queue.
    queue_url: str = ""
    queue_name: str = "ocr"
    worker_jobs: int = 2
    worker_heartbeat_seconds: float = 15.0
    #: Uploads are deleted this many days after their job (``ocr/housekeeping.py``; 0 keeps them).
    upload_retention_days: int = 30
    #: Webhooks (``ocr/webhooks.py``).
    webhook_allow_private: bool = False
    webhook_timeout_seconds: float = 10.0
    webhook_retry_seconds: float = 10.0
    webhook_max_attempts: int = 8
    #: Per-user limits (``accounts/limits.py``) and the sign-in rate limits (``accounts/ratelimit.py``).
    user_max_running_jobs: int = 8
    user_daily_pages: int = 2000
    login_max_failures: int = 10
    login_max_failures_per_ip: int = 50
    login_window_seconds: int = 15 * 60
    register_max_per_ip: int = 10
    register_window_seconds: int = 60 * 60


def resolve_engine_name(choice: str, base_url: str) -> str:
    """``auto`` means the vLLM engine when a base URL is configured and the embedded engine otherwise."""
    if choice == "auto":
        return "openai" if base_url else "local"
    return choice


def parse_base_urls(value: str) -> tuple[str, ...]:
    """``LLM_BASE_URL`` as a list: one URL, or several separated by commas (blanks and repeats ignored)."""
    urls: list[str] = []
    for part in value.split(","):
        url = part.strip()
        if not url or url in urls:
            continue
        if not url.startswith(("http://", "https://")):
            raise ImproperlyConfigured(f"LLM_BASE_URL: {url!r} is not an http(s) URL.")
        urls.append(url)
    return tuple(urls)


@cache
def ocr_config() -> OcrConfig:
    base_urls = parse_base_urls(settings.LLM_BASE_URL or "")
    engine = resolve_engine_name(settings.OCR_ENGINE, base_urls[0] if base_urls else "")
    cores = os.cpu_count() or 1
    local_threads = settings.OCR_LOCAL_THREADS or cores
    # vLLM schedules its own batch (256 sequences by default) and queues the rest; the limit only protects it
    # from a flood.
    default_concurrency = local_threads if engine == "local" else 256
    return OcrConfig(
        engine=engine,
        llm_base_url=base_urls[0] if base_urls else "",
        llm_base_urls=base_urls,
        llm_api_key=settings.LLM_API_KEY or "EMPTY",
        llm_model=settings.LLM_MODEL,
        default_prompt=settings.LLM_PROMPT,
        max_tokens=settings.LLM_MAX_TOKENS,
        ngram_size=settings.LLM_NGRAM_SIZE,
        ngram_window=settings.LLM_NGRAM_WINDOW,
        ngram_whitelist=tuple(settings.LLM_NGRAM_WHITELIST),
        max_upload_bytes=settings.OCR_MAX_UPLOAD_BYTES,
        max_pdf_pages=settings.OCR_MAX_PDF_PAGES,
        max_image_pixels=settings.OCR_MAX_IMAGE_PIXELS,
        pdf_dpi=settings.OCR_PDF_DPI,
        max_render_pixels=settings.OCR_MAX_RENDER_PIXELS,
        page_format=settings.OCR_PAGE_FORMAT,
        page_concurrency=settings.OCR_PAGE_CONCURRENCY,
        engine_concurrency=settings.OCR_ENGINE_CONCURRENCY or default_concurrency,
        local_threads=local_threads,
        connect_timeout=settings.OCR_ENGINE_CONNECT_TIMEOUT,
        first_token_timeout=settings.OCR_ENGINE_FIRST_TOKEN_TIMEOUT,
        idle_timeout=settings.OCR_ENGINE_IDLE_TIMEOUT,
        total_timeout=settings.OCR_ENGINE_TOTAL_TIMEOUT,
        warmup=settings.OCR_WARMUP,
        keep_uploads=settings.OCR_KEEP_UPLOADS,
        engine_retries=settings.OCR_ENGINE_RETRIES,
        engine_retry_seconds=settings.OCR_ENGINE_RETRY_SECONDS,
        pdf_text_layer=settings.OCR_PDF_TEXT_LAYER,
        model_profile=settings.LLM_MODEL_PROFILE,
        loop_chars=settings.LLM_LOOP_CHARS,
        pages_per_worker=settings.OCR_JOB_PAGES_PER_WORKER,
        max_workers_per_job=settings.OCR_JOB_MAX_WORKERS,
        share_poll_seconds=settings.OCR_JOB_SHARE_POLL_SECONDS,
        live_flush_seconds=settings.OCR_LIVE_FLUSH_SECONDS,
        live_publish_seconds=settings.OCR_LIVE_PUBLISH_SECONDS,
        live_poll_seconds=settings.OCR_LIVE_POLL_SECONDS,
        queue_url=settings.OCR_QUEUE_URL,
        queue_name=settings.OCR_QUEUE_NAME,
        worker_jobs=settings.OCR_WORKER_JOBS,
        worker_heartbeat_seconds=settings.OCR_WORKER_HEARTBEAT_SECONDS,
        upload_retention_days=settings.OCR_UPLOAD_RETENTION_DAYS,
        webhook_allow_private=settings.OCR_WEBHOOK_ALLOW_PRIVATE,
        webhook_timeout_seconds=settings.OCR_WEBHOOK_TIMEOUT_SECONDS,
        webhook_retry_seconds=settings.OCR_WEBHOOK_RETRY_SECONDS,
        webhook_max_attempts=settings.OCR_WEBHOOK_MAX_ATTEMPTS,
        user_max_running_jobs=settings.OCR_USER_MAX_RUNNING_JOBS,
        user_daily_pages=settings.OCR_USER_DAILY_PAGES,
        login_max_failures=settings.OCR_LOGIN_MAX_FAILURES,
        login_max_failures_per_ip=settings.OCR_LOGIN_MAX_FAILURES_PER_IP,
        login_window_seconds=settings.OCR_LOGIN_WINDOW_SECONDS,
        register_max_per_ip=settings.OCR_REGISTER_MAX_PER_IP,
        register_window_seconds=settings.OCR_REGISTER_WINDOW_SECONDS,
    )


TEXT_LAYER_CHOICES = ("auto", "ocr")


def config_for(*, text_layer: str = "") -> OcrConfig:
    """The configuration for one job: the server's, with the job's own text-layer choice ("": the server's)."""
    config = ocr_config()
    if text_layer and text_layer != config.pdf_text_layer:
        return replace(config, pdf_text_layer=text_layer)
    return config


@receiver(setting_changed)
def _forget_config(*, setting: str, **kwargs: object) -> None:
    if setting.startswith(("OCR_", "LLM_")):
        ocr_config.cache_clear()
