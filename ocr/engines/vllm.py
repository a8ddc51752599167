"""The production engine: vLLM serving DeepSeek-OCR through its OpenAI-compatible API.

The request is exactly what DeepSeek-OCR needs: one user message holding the page as a data URL and the prompt,
``temperature`` 0, ``skip_special_tokens`` false (the grounding markup is made of special tokens), the n-gram
logits-processor arguments in ``vllm_xargs`` and ``stream_options.include_usage`` for real token counts.

The request goes through the package's client (``post`` with a raw streaming response) and the stream is read as
raw SSE bytes whose ``data:`` lines are parsed with orjson: building the package's typed chunk objects costs
about 8× more CPU per token.

``LLM_BASE_URL`` may name several servers; each request goes to the one ``ocr.engines.servers`` chooses, and how
it ended (answered, failed transiently, timed out) is reported back so a failing server is left out for a while.

The model's profile (``ocr.engines.profiles``) sizes each request's ``max_tokens`` to what the context leaves
after that page's prompt. The text is watched for repetition loops (``ocr.engines.loops``): a looping request is
stopped early, its repeated tail cut, and the page asked once more with another strategy (stricter n-gram
arguments, or the model's plain prompt when the server runs without them); the better of the two texts is kept.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx2
import openai
import orjson

from ocr import metrics, pacing
from ocr.config import OcrConfig
from ocr.engines.base import Completion, DeltaCallback, Engine, PageImage
from ocr.engines.loops import Loop, LoopDetector
from ocr.engines.profiles import GENERIC, ModelProfile, choose_profile, profile_for_model
from ocr.engines.servers import Server, ServerPool, Ticket
from ocr.errors import EngineError
from ocr.events import ErrorCode

logger = logging.getLogger(__name__)

RETRY_DELAYS = (0.25, 1.0)  # before the first token only: the request never reached the GPU
#: The n-gram arguments of a retry after a loop: DeepSeek's PDF script's n-gram size, and a window that spans
#: several copies of the repeated unit, which the first request's window (90 tokens) may not have covered.
RETRY_NGRAM_SIZE = 20
RETRY_WINDOW_MAX = 1024


@dataclass(slots=True)
class Strategy:
    """How a retried page's request differs from the first one."""

    name: str  # "ngram" or "prompt"
    description: str
    prompt: str | None = None
    xargs: dict[str, Any] | None = None


@dataclass(slots=True)
class Attempt:
    """One request's result: its completion, its text and the loop found in it (if any)."""

    completion: Completion
    text: str
    loop: Loop | None

    @property
    def clean(self) -> str:
        return self.text if self.loop is None else self.loop.clean(self.text)


class SseStream:
    """Parses vLLM's ``text/event-stream`` bytes: ``data: {json}`` events, ending with ``data: [DONE]``.

    The content of all events in one read is handed to ``on_delta`` as one piece.
    """

    def __init__(self, on_delta: DeltaCallback) -> None:
        self.on_delta = on_delta
        self.buffer = b""
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.content_chunks = 0
        self.got_first = False
        self.done = False

    def feed(self, data: bytes) -> bool:
        """Consume received bytes; ``True`` once ``[DONE]`` arrived."""
        buffer = self.buffer + data
        if b"\n" not in data:
            self.buffer = buffer
            return False
        *lines, self.buffer = buffer.split(b"\n")
        pieces: list[str] = []
        try:
            for line in lines:
                if not line.startswith(b"data:"):
                    continue  # blank separators, comments
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    self.done = True
                    break
                self._event(orjson.loads(payload), pieces)
        except orjson.JSONDecodeError:
            raise EngineError("The engine sent a malformed stream.", code=ErrorCode.ENGINE_ERROR) from None
        finally:
            if pieces:
                self.got_first = True
                self.on_delta("".join(pieces))
        return self.done

    def _event(self, chunk: dict[str, Any], pieces: list[str]) -> None:
        error = chunk.get("error")
        if error is not None:
            raise EngineError(_stream_error_message(error), code=ErrorCode.ENGINE_ERROR)
        choices = chunk.get("choices")
        if choices:
            choice = choices[0]
            content = (choice.get("delta") or {}).get("content")
            if content:
                self.content_chunks += 1
                pieces.append(content)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        if chunk.get("usage"):
            self.usage = chunk["usage"]

    def completion(self) -> Completion:
        """How the page ended; raises ``EngineError`` for a stream that broke off or ended abnormally."""
        if not self.done or self.finish_reason is None:
            raise EngineError(
                "The engine closed the stream before finishing the page.", code=ErrorCode.ENGINE_ERROR, transient=True
            )
        if self.finish_reason not in ("stop", "length"):
            raise EngineError(f"The engine ended the page with '{self.finish_reason}'.", code=ErrorCode.ENGINE_ERROR)
        if self.usage is not None:
            return Completion(
                finish_reason=self.finish_reason,
                prompt_tokens=int(self.usage.get("prompt_tokens") or 0),
                completion_tokens=int(self.usage.get("completion_tokens") or 0),
            )
        # A server that ignores stream_options: every content chunk carries at least one token.
        return Completion(finish_reason=self.finish_reason, completion_tokens=self.content_chunks, estimated=True)


class _Clients:
    """The OpenAI clients of one event loop, one per server (each connection pool belongs to that loop)."""

    __slots__ = ("by_label",)

    def __init__(self) -> None:
        self.by_label: dict[str, openai.AsyncOpenAI] = {}

    async def close(self) -> None:
        clients, self.by_label = list(self.by_label.values()), {}
        for client in clients:
            await client.close()


class VllmEngine(Engine):
    name = "openai"
    wants_pixels = False

    def __init__(self, config: OcrConfig) -> None:
        super().__init__(concurrency=config.engine_concurrency)
        self.model = config.llm_model
        self.config = config
        self.profile: ModelProfile = choose_profile(config.model_profile, config.llm_model)
        #: vLLM's ``max_model_len``: the profile's, until ``warm_up`` reads the server's own.
        self.context = self.profile.context
        if self.profile is GENERIC and config.model_profile == "auto":
            logger.warning(
                "LLM_MODEL=%s is not a model this app knows (DeepSeek-OCR, DeepSeek-OCR 2): using the generic "
                "profile (the largest known image token count, no grounding). If it is one of them under another "
                "name, set LLM_MODEL_PROFILE; with OCR_WARMUP the name vLLM reports is tried too.",
                config.llm_model,
            )
        metrics.engine_model(profile=self.profile.name, model=self.model)
        self.servers = ServerPool(config.llm_base_urls or (config.llm_base_url,))
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Clients] = weakref.WeakKeyDictionary()

    def client(self, server: Server | None = None) -> openai.AsyncOpenAI:
        """The OpenAI client of ``server`` (the first one by default) for the running event loop."""
        server = server or self.servers.servers[0]
        loop = asyncio.get_running_loop()
        clients = self._clients.get(loop)
        if clients is None:
            clients = self._clients[loop] = _Clients()
        client = clients.by_label.get(server.label)
        if client is None:
            config = self.config
            # aiohttp's transport costs about a third of the CPU per streamed chunk of httpx's own.
            http_client = openai.DefaultAioHttpClient(
                # Our own deadlines below govern the first token, the gaps and the total; httpx only bounds
                # connecting and acts as a backstop.
                timeout=httpx2.Timeout(None, connect=config.connect_timeout),
                limits=httpx2.Limits(
                    max_connections=self.concurrency + 8, max_keepalive_connections=self.concurrency + 8
                ),
            )
            client = clients.by_label[server.label] = openai.AsyncOpenAI(
                base_url=server.url,
                api_key=config.llm_api_key,
                max_retries=0,
                http_client=http_client,
            )
        return client

    def retry_delay(self, delay: float) -> float:
        # The server that failed is left out now: if another one takes requests, retry there at once.
        return 0.0 if len(self.servers.servers) > 1 and self.servers.has_available() else delay

    def request_body(self, page: PageImage, prompt: str, strategy: Strategy | None = None) -> dict[str, Any]:
        """The JSON body of the chat-completion request for one page (changed by a retry's ``strategy``)."""
        assert page.data is not None and page.mime is not None
        if strategy is not None and strategy.prompt is not None:
            prompt = strategy.prompt
        image_url = f"data:{page.mime};base64,{base64.b64encode(page.data).decode('ascii')}"
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": image_url}},
                        {"type": "text", "text": prompt},
                    ],
                }
            ],
            "temperature": 0.0,
            "max_tokens": self.max_tokens(page, prompt),
            "stream": True,
            "stream_options": {"include_usage": True},
            "skip_special_tokens": False,
        }
        if self.config.ngram_size:
            xargs: dict[str, Any] = {"ngram_size": self.config.ngram_size, "window_size": self.config.ngram_window}
            if self.config.ngram_whitelist:
                xargs["whitelist_token_ids"] = list(self.config.ngram_whitelist)
            body["vllm_xargs"] = xargs
        if strategy is not None and strategy.xargs is not None:
            body["vllm_xargs"] = strategy.xargs
        return body

    def max_tokens(self, page: PageImage, prompt: str) -> int:
        """``LLM_MAX_TOKENS``, or what the context leaves after this page's prompt if that is less."""
        return self.profile.max_tokens(self.config.max_tokens, page.width, page.height, prompt, self.context)

    def retry_strategy(self, prompt: str, loop: Loop) -> Strategy | None:
        """How to ask again for a page that looped: stricter n-gram arguments when the server runs DeepSeek's
        n-gram processor (same image, same prompt, so the same kind of text), else the model's plain prompt."""
        config = self.config
        if config.ngram_size:
            # The window must hold several copies of the unit for the ban to see it repeat; a unit of n
            # characters is at most n tokens.
            window = min(RETRY_WINDOW_MAX, max(3 * config.ngram_window, 2 * loop.period))
            xargs: dict[str, Any] = {"ngram_size": min(config.ngram_size, RETRY_NGRAM_SIZE), "window_size": window}
            if config.ngram_whitelist:
                xargs["whitelist_token_ids"] = list(config.ngram_whitelist)
            return Strategy(
                "ngram", f"a stricter repetition ban (n-gram {xargs['ngram_size']}, window {window})", xargs=xargs
            )
        plain = self.profile.plain_prompt
        if prompt.strip() != plain:
            return Strategy("prompt", f"the plain prompt “{plain}”", prompt=plain)
        return None

    @contextlib.asynccontextmanager
    async def open_stream(self, payload: bytes, server: Server | None = None) -> AsyncIterator[httpx2.Response]:
        """POST ``payload`` to ``server``'s ``/chat/completions`` and yield the response before its body is read.

        The package's generic ``post`` with ``httpx.Response`` as the result type: the client's auth, headers,
        base URL, connection pool and status-to-exception mapping, without ``chat.completions.create``'s
        coercion of every argument to its typed parameters and its own JSON encoding, which profiles of the
        relay benchmark showed among the largest costs of a request. The body is encoded once, with orjson.
        """
        response = await self.client(server).post(
            "/chat/completions",
            cast_to=httpx2.Response,
            content=payload,
            options={"headers": {"Content-Type": "application/json"}},
            stream=True,
        )
        try:
            yield response
        finally:
            await response.aclose()

    async def recognise(self, page: PageImage, prompt: str, on_delta: DeltaCallback) -> Completion:
        first = await self._attempt(page, prompt, on_delta)
        if first.loop is None:
            return first.completion
        loop = first.loop
        profile = self.profile.name
        found = f"The engine fell into a repetition loop ({loop.describe(first.text)})"
        stopped = "stopped early" if first.completion.finish_reason == "loop" else "at its token limit"
        on_delta(first.clean, reset=True)
        strategy = self.retry_strategy(prompt, loop)
        if strategy is None:
            metrics.engine_loop_retry(profile=profile, result="skipped")
            return _looped(first.completion, f"{found}, {stopped}; the repeated text was cut.")
        logger.info("page %s looped (%s); asking again with %s", page.number, loop, strategy.name)
        # The retry's text replaces the first's as it streams; the first is put back if it stays the better one.
        replaced = False

        def retry_delta(text: str, *, reset: bool = False) -> None:
            nonlocal replaced
            on_delta(text, reset=reset or not replaced)
            replaced = True

        try:
            second = await self._attempt(page, prompt, retry_delta, strategy)
        except EngineError as exc:
            metrics.engine_loop_retry(profile=profile, result="failed")
            if replaced:
                on_delta(first.clean, reset=True)
            return _looped(
                first.completion,
                f"{found}, {stopped}; the repeated text was cut. Asking again with {strategy.description} "
                f"failed: {exc.message}",
            )
        total = _sum(first.completion, second.completion)
        if second.loop is None and second.completion.finish_reason == "stop":
            metrics.engine_loop_retry(profile=profile, result="recovered")
            return total
        metrics.engine_loop_retry(profile=profile, result="looped")
        better = second if len(second.clean) > len(first.clean) else first
        on_delta(better.clean, reset=True)
        why = "looped again" if second.loop is not None else "ran to its token limit"
        return _looped(
            total,
            f"{found}, {stopped}; the repeated text was cut. Asked again with {strategy.description}, it {why}: "
            "the text of this page may be incomplete.",
        )

    async def _attempt(
        self, page: PageImage, prompt: str, on_delta: DeltaCallback, strategy: Strategy | None = None
    ) -> Attempt:
        """One request for the page, watched for a loop; the looping tail is not cut here (the caller does)."""
        detector = LoopDetector(self.config.loop_chars)

        def watch(text: str, *, reset: bool = False) -> None:
            on_delta(text, reset=reset)
            detector.feed(text)

        body = self.request_body(page, prompt, strategy)
        completion = await self._request(body, watch, detector)
        profile = self.profile.name
        loop = detector.loop
        if completion.finish_reason == "loop":
            # Stopped early, so vLLM sent no usage: the prompt is the profile's (upper) estimate.
            text_prompt = body["messages"][0]["content"][1]["text"]
            completion.prompt_tokens = self.profile.prompt_tokens(page.width, page.height, text_prompt)
            metrics.engine_loop(profile=profile, stage="stream")
        elif completion.finish_reason == "length":
            loop = detector.finish()
            if loop is not None:
                metrics.engine_loop(profile=profile, stage="length")
        else:
            loop = None  # the model ended the page itself: a repeat it chose to stop is its own text
        metrics.engine_completion(profile=profile, finish_reason=completion.finish_reason)
        return Attempt(completion=completion, text=detector.text, loop=loop)

    async def _request(self, body: dict[str, Any], on_delta: DeltaCallback, detector: LoopDetector) -> Completion:
        """Send one request and stream its text; ``finish_reason`` "loop" if ``detector`` found a loop and the
        request was stopped."""
        held: list[Ticket] = []  # the server request in flight (at most one), settled when it ends
        try:
            completion = await self._recognise(body, on_delta, held, detector)
        except EngineError as exc:
            for ticket in held:
                self._settle(ticket, exc)
            raise
        except BaseException as exc:
            result = ErrorCode.CANCELLED if isinstance(exc, asyncio.CancelledError) else ErrorCode.INTERNAL_ERROR
            for ticket in held:
                self.servers.release(ticket, result=result)
            raise
        # A request stopped in a loop was cancelled by us, not finished by the server.
        result = "cancelled" if completion.finish_reason == "loop" else "done"
        for ticket in held:
            self.servers.release(ticket, result=result)
        return completion

    def _settle(self, ticket: Ticket, error: EngineError) -> None:
        """Tell the pool how a request that failed with ``error`` ended, and release it."""
        if error.transient:
            self.servers.failed(ticket)
        elif error.code != ErrorCode.ENGINE_TIMEOUT:
            # An HTTP error or an error in the stream: the server answered. A timeout says nothing either way.
            self.servers.answered(ticket)
        self.servers.release(ticket, result=error.code)

    async def _recognise(
        self, body: dict[str, Any], on_delta: DeltaCallback, held: list[Ticket], detector: LoopDetector
    ) -> Completion:
        config = self.config
        loop = asyncio.get_running_loop()
        started = loop.time()
        total_deadline = started + config.total_timeout
        payload = orjson.dumps(body)
        stream = SseStream(on_delta)
        attempt = 0
        unavailable: openai.APIError | None = None
        idle = config.idle_timeout
        slack = idle * 0.05
        try:
            async with asyncio.timeout_at(min(total_deadline, started + config.first_token_timeout)) as deadline:
                while True:
                    ticket = self.servers.acquire()
                    held.append(ticket)
                    try:
                        async with self.open_stream(payload, ticket.server) as response:
                            self.servers.answered(ticket)
                            socket_transport = _socket_transport(response)
                            rescheduled_at = read_at = loop.time()
                            async for data in response.aiter_raw():
                                if stream.feed(data):
                                    break
                                if detector.loop is not None:
                                    # Closing the response aborts the request: vLLM frees the sequence's slot.
                                    break
                                if not stream.got_first:
                                    continue
                                now = loop.time()
                                # Moving the deadline costs a timer; do it only when it has drifted a bit.
                                if now - rescheduled_at > slack:
                                    deadline.reschedule(min(total_deadline, now + idle))
                                    rescheduled_at = now
                                # Let tokens pile up in the socket buffer for a moment: one read of several
                                # tokens costs little more than a read of one.
                                pause = pacing.interval(self.busy()) - (now - read_at)
                                if pause > 0:
                                    if socket_transport is not None:
                                        socket_transport.pause_reading()
                                    try:
                                        await asyncio.sleep(pause)
                                    finally:
                                        if socket_transport is not None and not socket_transport.is_closing():
                                            socket_transport.resume_reading()
                                read_at = loop.time()
                        break
                    except (openai.APIConnectionError, openai.InternalServerError) as exc:
                        retryable = isinstance(exc, openai.APIConnectionError) or exc.status_code == 503
                        if stream.got_first or not retryable or attempt >= len(RETRY_DELAYS):
                            raise
                        logger.info("engine server %s not reachable (%s); retrying", ticket.server.label, exc)
                        unavailable = exc
                        held.remove(ticket)
                        self._settle(ticket, _engine_error(exc))
                        # Nothing reached a GPU: another server that takes requests gets it at once.
                        if not (len(self.servers.servers) > 1 and self.servers.has_available()):
                            await asyncio.sleep(RETRY_DELAYS[attempt])
                        attempt += 1
        except TimeoutError:
            if unavailable is not None and not stream.got_first:
                # The deadline ran out while waiting to retry: the engine's refusal is the real story.
                raise _engine_error(unavailable) from None
            elapsed = loop.time() - started
            if not stream.got_first:
                message = f"The engine sent no text within {elapsed:.0f} s."
            elif loop.time() >= total_deadline:
                message = f"The engine did not finish the page within {config.total_timeout:g} s."
            else:
                message = f"The engine stalled: no text for {idle:g} s."
            raise EngineError(message, code=ErrorCode.ENGINE_TIMEOUT) from None
        except openai.APIError as exc:
            raise _engine_error(exc) from None
        except (httpx2.HTTPError, OSError) as exc:
            raise EngineError(
                f"The connection to the engine broke: {_cause(exc)}", code=ErrorCode.ENGINE_ERROR, transient=True
            ) from None
        if detector.loop is not None and not stream.done:
            # Stopped early: no usage chunk; each content chunk was at least one token.
            return Completion(finish_reason="loop", completion_tokens=stream.content_chunks, estimated=True)
        return stream.completion()

    async def warm_up(self) -> None:
        """Open a connection to each server and check the model is served; problems are logged, not raised."""
        for server in self.servers.servers:
            try:
                models = await self.client(server).models.list()
                served = [model.id for model in models.data]
                if self.model not in served:
                    logger.warning("engine server %s serves %s, not LLM_MODEL=%s", server.label, served, self.model)
                for card in models.data:
                    if card.id == self.model:
                        self._learn(card)
            except openai.APIError as exc:
                logger.warning("engine server %s not ready yet: %s", server.label, exc)

    def _learn(self, card: Any) -> None:
        """Take the served model's real name (``root``, under ``--served-model-name``) and ``max_model_len``."""
        extra = card.model_extra or {}
        root = extra.get("root") or ""
        if self.profile is GENERIC and self.config.model_profile == "auto" and root:
            profile = profile_for_model(str(root))
            if profile is not None:
                logger.info("LLM_MODEL=%s is %s (the server's root %s)", self.model, profile.label, root)
                self.profile = profile
                metrics.engine_model(profile=profile.name, model=self.model)
        context = extra.get("max_model_len")
        if isinstance(context, int) and context > 0:
            self.context = context

    async def aclose(self) -> None:
        """Close the clients of the running event loop (before that loop ends)."""
        clients = self._clients.pop(asyncio.get_running_loop(), None)
        if clients is not None:
            await clients.close()


def _looped(completion: Completion, note: str) -> Completion:
    """A page that ends truncated by a loop: ``finish_reason`` "length" (what vLLM would have ended it with)."""
    return Completion(
        finish_reason="length",
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        estimated=completion.estimated,
        note=note,
    )


def _sum(first: Completion, second: Completion) -> Completion:
    """The second attempt's ending with the usage of both: the first one's tokens were spent too."""
    return Completion(
        finish_reason=second.finish_reason,
        prompt_tokens=first.prompt_tokens + second.prompt_tokens,
        completion_tokens=first.completion_tokens + second.completion_tokens,
        estimated=first.estimated or second.estimated,
    )


def _engine_error(exc: openai.APIError) -> EngineError:
    # aiohttp's "connection refused" reaches us mapped to a connect *timeout*: look at the real cause.
    if isinstance(exc, openai.APITimeoutError) and not _caused_by(exc, aiohttp.ClientConnectorError):
        return EngineError("Connecting to the engine timed out.", code=ErrorCode.ENGINE_TIMEOUT, transient=True)
    if isinstance(exc, openai.APIConnectionError):
        return EngineError(
            f"The engine is not reachable: {_cause(exc)}", code=ErrorCode.ENGINE_UNAVAILABLE, transient=True
        )
    if isinstance(exc, openai.APIStatusError):
        return _status_error(exc)
    return EngineError(f"The engine failed: {exc}", code=ErrorCode.ENGINE_ERROR)


def _status_error(exc: openai.APIStatusError) -> EngineError:
    status = exc.status_code
    message = f"The engine answered HTTP {status}: {exc.message}"
    if status in (401, 403):
        return EngineError(
            f"The engine refused our credentials (check LLM_API_KEY): HTTP {status}.", code=ErrorCode.ENGINE_UNAVAILABLE
        )
    if status in (429, 502, 503, 504):
        return EngineError(message, code=ErrorCode.ENGINE_UNAVAILABLE, transient=True)
    if 400 <= status < 500:
        return EngineError(message, code=ErrorCode.ENGINE_BAD_REQUEST)
    return EngineError(message, code=ErrorCode.ENGINE_ERROR)


def _stream_error_message(error: Any) -> str:
    if isinstance(error, dict):
        return f"The engine failed while streaming: {error.get('message') or error.get('type') or 'unknown error'}"
    return f"The engine failed while streaming: {error}"


def _socket_transport(http_response: httpx2.Response) -> asyncio.ReadTransport | None:
    stream = http_response.stream
    stream = getattr(stream, "_stream", stream)
    aiohttp_response = getattr(stream, "_aiohttp_response", None)
    connection = getattr(aiohttp_response, "connection", None)
    return getattr(connection, "transport", None)


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    return str(cause or exc) or type(cause or exc).__name__
