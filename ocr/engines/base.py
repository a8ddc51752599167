"""The engine contract: one page image and a prompt in, a stream of text deltas and a ``Completion`` out.

An engine owns its client, its timeouts and its concurrency limit. The pipeline sees only this module.

The deltas are handed to a plain callback rather than yielded from an async generator: an engine enforces its
deadlines with ``asyncio.timeout`` around the whole exchange, and a generator suspended at ``yield`` inside such
a scope would let the timeout cancel its consumer instead of itself.
"""

from __future__ import annotations

import abc
import asyncio
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from PIL import Image


@dataclass(slots=True)
class PageImage:
    """One page ready for an engine: encoded bytes (``data``/``mime``) and/or decoded RGB ``pixels``."""

    number: int
    width: int
    height: int
    data: bytes | None = None
    mime: str | None = None
    pixels: Image.Image | None = None
    #: A born-digital PDF page's trusted text layer: ``(quad, text)`` runs in this page's pixels
    #: (``ocr.engines.textlayer``). An engine that can use it reads the page from it instead of its pixels.
    text_layer: list[tuple[list[tuple[float, float]], str]] | None = None


@dataclass(slots=True)
class Completion:
    """How a page's generation ended. Token counts are the engine's own unless ``estimated`` is true."""

    finish_reason: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False
    layout: list[dict] | None = field(default=None)
    #: How the text was read: "ocr", or "text_layer" for a PDF page read from its own text.
    source: str = "ocr"
    #: Why a page that ended at ``"length"`` is incomplete, when the engine knows better than "the token limit"
    #: (a repetition loop it stopped and cut); shown as the page's error message.
    note: str = ""


class DeltaCallback(Protocol):
    """Receives a page's text as it is recognised.

    ``reset`` replaces the page's text so far with ``text`` instead of appending to it: an engine that retries a
    page, or cuts a repeated tail, says so rather than leaving its consumers with text that is no longer true.
    """

    def __call__(self, text: str, *, reset: bool = False) -> None: ...


class EngineSlots:
    """An engine's limit on pages at once (for one event loop), knowing how many pages hold a slot."""

    __slots__ = ("_semaphore", "held")

    def __init__(self, limit: int) -> None:
        self._semaphore = asyncio.Semaphore(limit)
        self.held = 0

    async def acquire(self) -> None:
        await self._semaphore.acquire()
        self.held += 1

    def release(self) -> None:
        self.held -= 1
        self._semaphore.release()


class Engine(abc.ABC):
    """Base class for engines. ``recognise`` passes text deltas to ``on_delta`` as they arrive and returns a
    ``Completion``; failures raise ``ocr.errors.EngineError`` with one of ``ErrorCode``'s ``ENGINE_*`` codes. Cancelling
    the calling task stops the work (and the HTTP request) in flight."""

    name: str
    model: str
    #: Whether ``stream`` wants decoded pixels (True) or encoded image bytes (False).
    wants_pixels: bool = False

    def __init__(self, *, concurrency: int) -> None:
        self.concurrency = concurrency
        # asyncio primitives belong to one event loop; tests and commands may run several loops in turn.
        self._slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, EngineSlots] = weakref.WeakKeyDictionary()

    def slots(self) -> EngineSlots:
        """The process-wide limit on pages this engine works on at once (for the running event loop)."""
        loop = asyncio.get_running_loop()
        semaphore = self._slots.get(loop)
        if semaphore is None:
            semaphore = self._slots[loop] = EngineSlots(self.concurrency)
        return semaphore

    def busy(self) -> int:
        """Pages in flight in this engine for the running event loop."""
        semaphore = self._slots.get(asyncio.get_running_loop())
        return 0 if semaphore is None else semaphore.held

    @abc.abstractmethod
    async def recognise(self, page: PageImage, prompt: str, on_delta: DeltaCallback) -> Completion:
        """Recognise one page, calling ``on_delta`` (synchronously, never awaited) with each piece of text."""

    def retry_delay(self, delay: float) -> float:
        """How long to wait before asking again for a page that failed transiently, given the caller's backoff
        ``delay``: an engine with another server to send it to needs no wait."""
        return delay

    async def warm_up(self) -> None:  # noqa: B027 - optional hook
        """Load models or open connections ahead of the first request."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release what belongs to the running event loop (clients, connections) before the loop ends."""
