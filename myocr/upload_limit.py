"""ASGI middleware that refuses oversized or unsized uploads before Django reads the body.

Under ASGI Django reads the whole request body (spooling it to disk) before the view runs, so a view can only
complain about a 2 GB upload after receiving it. This wrapper answers from the headers alone: ``413`` when the
declared length is over the limit and ``411`` for chunked uploads, which Django cannot parse as files anyway.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Room for the multipart boundaries, headers and the prompt field around the file itself.
MULTIPART_OVERHEAD = 64 * 1024


class UploadLimitMiddleware:
    def __init__(self, app: ASGIApp, *, paths: tuple[str, ...], max_bytes: Callable[[], int]) -> None:
        self.app = app
        self.paths = paths
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith(self.paths):
            headers = dict(scope["headers"])
            length = headers.get(b"content-length")
            limit = self.max_bytes()
            if length is None:
                if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
                    await _refuse(send, 411, "length_required", "Send the upload with a Content-Length header.")
                    return
            else:
                try:
                    declared = int(length)
                except ValueError:
                    await _refuse(send, 400, "bad_request", "The Content-Length header is not a number.")
                    return
                if declared > limit + MULTIPART_OVERHEAD:
                    await _refuse(
                        send,
                        413,
                        "file_too_large",
                        f"The upload is {declared} bytes; the limit is {limit} bytes.",
                    )
                    return
        await self.app(scope, receive, send)


async def _refuse(send: Send, status: int, code: str, message: str) -> None:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
