"""The production engine: vLLM serving DeepSeek-OCR through its OpenAI-compatible API.

The request is exactly what DeepSeek-OCR needs: one user message holding the page as a data URL and the prompt,
``temperature`` 0, ``skip_special_tokens`` false (the grounding markup is made of special tokens), the n-gram
logits-processor arguments in ``vllm_xargs`` and ``stream_options.include_usage`` for real token counts.

The request goes through the package's client (``post`` with a raw streaming response) and the stream is read as
raw SSE bytes whose ``data:`` lines are parsed with orjson: building the package's typed chunk objects costs
about 8× more CPU per token.

``LLM_BASE_URL`` may name several servers; each request goes to the one ``ocr.engines.servers`` chooses, and how
it ended (answered, failed transiently, timed out) is reported back so a failing server is left out for a while.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx2
import openai
import orjson

from ocr import pacing
from ocr.config import OcrConfig
from ocr.engines.base import Completion, DeltaCallback, Engine, PageImage
from ocr.engines.servers import Server, ServerPool, Ticket
from ocr.errors import (
    ENGINE_BAD_REQUEST,
    ENGINE_ERROR,
    ENGINE_TIMEOUT,
    ENGINE_UNAVAILABLE,
    EngineError,
)

logger = logging.getLogger(__name__)

RETRY_DELAYS = (0.25, 1.0)  # before the first token only: the request never reached the GPU


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
            raise EngineError("The engine sent a malformed stream.", code=ENGINE_ERROR) from None
        finally:
            if pieces:
                self.got_first = True
                self.on_delta("".join(pieces))
        return self.done

    def _event(self, chunk: dict[str, Any], pieces: list[str]) -> None:
        error = chunk.get("error")
        if error is not None:
            raise EngineError(_stream_error_message(error), code=ENGINE_ERROR)
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
                "The engine closed the stream before finishing the page.", code=ENGINE_ERROR, transient=True
            )
        if self.finish_reason not in ("stop", "length"):
            raise EngineError(f"The engine ended the page with '{self.finish_reason}'.", code=ENGINE_ERROR)
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

    def request_body(self, page: PageImage, prompt: str) -> dict[str, Any]:
        """The JSON body of the chat-completion request for one page."""
        assert page.data is not None and page.mime is not None
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
            "max_tokens": self.config.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            "skip_special_tokens": False,
        }
        if self.config.ngram_size:
            xargs: dict[str, Any] = {"ngram_size": self.config.ngram_size, "window_size": self.config.ngram_window}
            if self.config.ngram_whitelist:
                xargs["whitelist_token_ids"] = list(self.config.ngram_whitelist)
            body["vllm_xargs"] = xargs
        return body

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
        held: list[Ticket] = []  # the server request in flight (at most one), settled when it ends
        try:
            completion = await self._recognise(page, prompt, on_delta, held)
        except EngineError as exc:
            for ticket in held:
                self._settle(ticket, exc)
            raise
        except BaseException as exc:
            result = "cancelled" if isinstance(exc, asyncio.CancelledError) else "internal_error"
            for ticket in held:
                self.servers.release(ticket, result=result)
            raise
        for ticket in held:
            self.servers.release(ticket, result="done")
        return completion

    def _settle(self, ticket: Ticket, error: EngineError) -> None:
        """Tell the pool how a request that failed with ``error`` ended, and release it."""
        if error.transient:
            self.servers.failed(ticket)
        elif error.code != ENGINE_TIMEOUT:
            # An HTTP error or an error in the stream: the server answered. A timeout says nothing either way.
            self.servers.answered(ticket)
        self.servers.release(ticket, result=error.code)

    async def _recognise(self, page: PageImage, prompt: str, on_delta: DeltaCallback, held: list[Ticket]) -> Completion:
        config = self.config
        loop = asyncio.get_running_loop()
        started = loop.time()
        total_deadline = started + config.total_timeout
        payload = orjson.dumps(self.request_body(page, prompt))
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
            raise EngineError(message, code=ENGINE_TIMEOUT) from None
        except openai.APIError as exc:
            raise _engine_error(exc) from None
        except (httpx2.HTTPError, OSError) as exc:
            raise EngineError(
                f"The connection to the engine broke: {_cause(exc)}", code=ENGINE_ERROR, transient=True
            ) from None
        return stream.completion()

    async def warm_up(self) -> None:
        """Open a connection to each server and check the model is served; problems are logged, not raised."""
        for server in self.servers.servers:
            try:
                models = await self.client(server).models.list()
                served = [model.id for model in models.data]
                if self.model not in served:
                    logger.warning("engine server %s serves %s, not LLM_MODEL=%s", server.label, served, self.model)
            except openai.APIError as exc:
                logger.warning("engine server %s not ready yet: %s", server.label, exc)

    async def aclose(self) -> None:
        """Close the clients of the running event loop (before that loop ends)."""
        clients = self._clients.pop(asyncio.get_running_loop(), None)
        if clients is not None:
            await clients.close()


def _engine_error(exc: openai.APIError) -> EngineError:
    # aiohttp's "connection refused" reaches us mapped to a connect *timeout*: look at the real cause.
    if isinstance(exc, openai.APITimeoutError) and not _caused_by(exc, aiohttp.ClientConnectorError):
        return EngineError("Connecting to the engine timed out.", code=ENGINE_TIMEOUT, transient=True)
    if isinstance(exc, openai.APIConnectionError):
        return EngineError(f"The engine is not reachable: {_cause(exc)}", code=ENGINE_UNAVAILABLE, transient=True)
    if isinstance(exc, openai.APIStatusError):
        return _status_error(exc)
    return EngineError(f"The engine failed: {exc}", code=ENGINE_ERROR)


def _status_error(exc: openai.APIStatusError) -> EngineError:
    status = exc.status_code
    message = f"The engine answered HTTP {status}: {exc.message}"
    if status in (401, 403):
        return EngineError(
            f"The engine refused our credentials (check LLM_API_KEY): HTTP {status}.", code=ENGINE_UNAVAILABLE
        )
    if status in (429, 502, 503, 504):
        return EngineError(message, code=ENGINE_UNAVAILABLE, transient=True)
    if 400 <= status < 500:
        return EngineError(message, code=ENGINE_BAD_REQUEST)
    return EngineError(message, code=ENGINE_ERROR)


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
