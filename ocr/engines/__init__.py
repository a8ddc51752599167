"""Engine selection: one engine instance per process, built lazily from the OCR settings."""

from __future__ import annotations

import threading

from ocr.config import OcrConfig, ocr_config
from ocr.engines.base import Completion, Engine, PageImage
from ocr.errors import EngineNotConfigured

__all__ = ["Completion", "Engine", "PageImage", "build_engine", "get_engine"]

# Engines built for each configuration seen; in production there is exactly one. Tests switch settings and
# must not pay for loading the embedded models again each time.
_engines: dict[OcrConfig, Engine] = {}
_lock = threading.Lock()


def build_engine(config: OcrConfig) -> Engine:
    if config.engine == "openai":
        if not config.llm_base_url:
            raise EngineNotConfigured("OCR_ENGINE is 'openai' but LLM_BASE_URL is not set.")
        from ocr.engines.vllm import VllmEngine

        return VllmEngine(config)
    from ocr.engines.local import LocalEngine

    return LocalEngine(config)


def get_engine() -> Engine:
    """The process's engine for the current settings, built on first use."""
    config = ocr_config()
    engine = _engines.get(config)
    if engine is None:
        with _lock:
            engine = _engines.get(config)
            if engine is None:
                engine = _engines[config] = build_engine(config)
    return engine
