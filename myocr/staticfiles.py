"""WhiteNoise for ASGI: the same lookup, headers and compressed variants, with an async response body.

``WhiteNoiseMiddleware`` answers with a ``FileResponse`` over a synchronous file iterator. Under ASGI Django must
then read the whole file in a thread before sending it, and warns "StreamingHttpResponse must consume synchronous
iterators in order to serve them asynchronously" for every static file; being sync-only, the middleware also
makes every request (SSE streams included) hop to a thread and back. This subclass is async-only: it finds the
file as WhiteNoise does and streams it through an async generator that reads chunks in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import IO, Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from whitenoise.middleware import WhiteNoiseMiddleware

CHUNK_SIZE = 64 * 1024


class AsyncWhiteNoiseMiddleware(WhiteNoiseMiddleware):
    sync_capable = False
    async_capable = True

    def __init__(self, get_response: Any = None, **kwargs: Any) -> None:
        super().__init__(get_response, **kwargs)
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponse:  # type: ignore[override]
        if self.autorefresh:
            static_file = await sync_to_async(self.find_file, thread_sensitive=False)(request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is None:
            return await self.get_response(request)
        return await sync_to_async(self.serve_async, thread_sensitive=False)(static_file, request)

    @staticmethod
    def serve_async(static_file: Any, request: HttpRequest) -> HttpResponse:
        served = static_file.get_response(request.method, request.META)
        if served.file is None:  # HEAD, 304 Not Modified, 405
            response: HttpResponse = HttpResponse(status=int(served.status))
        else:
            response = StreamingHttpResponse(read_chunks(served.file), status=int(served.status))
        del response["Content-Type"]
        for key, value in served.headers:
            response[key] = value
        return response


async def read_chunks(file: IO[bytes]) -> AsyncIterator[bytes]:
    try:
        while chunk := await asyncio.to_thread(file.read, CHUNK_SIZE):
            yield chunk
    finally:
        await asyncio.to_thread(file.close)
