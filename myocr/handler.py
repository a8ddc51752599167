"""Django's ASGI handler with long-lived threads for a request's synchronous work.

Django runs each request in a fresh ``ThreadSensitiveContext``: the first synchronous call of the request (the
``request_started`` signal's receivers, at the latest ``response.close()``) starts a new thread, and the end of
the request starts another one to join it. Two thread starts per request cost about 1 ms of the event loop's
time on this project's machines, on every request, even ``/healthz``.

This handler gives every request a context bound to one of a few persistent single-thread executors instead
(round robin). A request's synchronous work still runs on one thread, as Django expects; the threads and their
database connections are reused.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext
from django.core.handlers.asgi import ASGIHandler

SYNC_THREADS = int(os.environ.get("DJANGO_SYNC_THREADS", "4"))


class PooledThreadsASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        super().__init__()
        self._executors = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"django-sync-{index}")
            for index in range(max(1, SYNC_THREADS))
        ]
        self._next = itertools.cycle(self._executors)

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        async with ThreadSensitiveContext(executor=next(self._next)):
            await self.handle(scope, receive, send)
