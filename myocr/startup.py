"""Work a server process does once at start, off the request path, and the readiness it reports."""

from __future__ import annotations

import asyncio
import logging
import threading

logger = logging.getLogger(__name__)
_started = False
#: Set once the OCR engine is warm (or warming up failed or is turned off): ``/healthz`` answers 200 from then.
engine_ready = threading.Event()


def start_background_tasks() -> None:
    """Warm the OCR engine up in a background thread, so the first request does not pay for model loading."""
    global _started
    if _started:
        return
    _started = True
    from ocr.config import ocr_config

    if ocr_config().warmup:
        threading.Thread(target=_warm_up, name="ocr-warmup", daemon=True).start()
    else:
        engine_ready.set()


def _warm_up() -> None:
    from ocr.engines import get_engine

    try:
        engine = get_engine()
        asyncio.run(engine.warm_up())
        logger.info("OCR engine %s (%s) is warm", engine.name, engine.model)
    except Exception:
        logger.exception("OCR engine warm-up failed; the first request will try again")
    finally:
        engine_ready.set()
