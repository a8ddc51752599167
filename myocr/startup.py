"""Work a server process does once at start, off the request path, and the readiness it reports."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

logger = logging.getLogger(__name__)
_started = False
#: Set once a warm-up that was started has finished (or failed). No warm-up started means nothing to wait for.
warm_up_done: threading.Event | None = None


def is_ready() -> bool:
    """Whether the process is ready for OCR work: ``/healthz`` answers 503 until then."""
    return warm_up_done is None or warm_up_done.is_set()


def start_background_tasks() -> None:
    """Warm the OCR engine up in a background thread, so the first request does not pay for model loading."""
    global _started, warm_up_done
    if _started:
        return
    _started = True
    from ocr.config import ocr_config
    from ocr.workers import start_heartbeat

    # Records this process as alive and marks the jobs of dead ones interrupted (at start, then periodically).
    start_heartbeat()
    if ocr_config().warmup:
        warm_up_done = threading.Event()
        threading.Thread(target=_warm_up, args=(warm_up_done,), name="ocr-warmup", daemon=True).start()


def _warm_up(done: threading.Event) -> None:
    from ocr.engines import get_engine

    try:
        engine = get_engine()
        asyncio.run(engine.warm_up())
        logger.info("OCR engine %s (%s) is warm", engine.name, engine.model)
    except Exception:
        logger.exception("OCR engine warm-up failed; the first request will try again")
    finally:
        done.set()


class ResumeOrphansAtFirstRequest:
    """ASGI wrapper: at the first request, hand the server's event loop to ``ocr.jobs`` so that, without a task
    queue, this process resumes the detached jobs a dead process left (and those recovery requeues later)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.armed = True

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.armed:
            self.armed = False
            from ocr.jobs import serve_orphans

            serve_orphans(asyncio.get_running_loop())
        await self.app(scope, receive, send)
