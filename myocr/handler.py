"""Django's ASGI handler with long-lived threads for a request's synchronous work.

Django runs each request in a fresh ``ThreadSensitiveContext``: the first synchronous call of the request (the
``request_started`` signal's receivers, at the latest ``response.close()``) starts a new thread, and the end of
the request starts another one to join it. Two thread starts per request cost about 1 ms of the event loop's
time on this project's machines, on every request, even ``/healthz``.

This handler gives every request a context bound to one of a few persistent single-thread executors instead
(round robin). A request's synchronous work still runs on one thread, as Django expects; the threads and their
database connections are reused. With SQLite there is one such thread (``DJANGO_SYNC_THREADS``): SQLite has one
writer at a time, and writers on several connections of one process would wait for each other in SQLite's busy
handler, which sleeps in steps of up to 100 ms.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler


class PooledThreadsASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        super().__init__()
        self._executors = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"django-sync-{index}")
            for index in range(max(1, settings.DJANGO_SYNC_THREADS))
        ]
        self._next = itertools.cycle(self._executors)

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        async with ThreadSensitiveContext(executor=next(self._next)):
            await self.handle(scope, receive, send)


def skip_twisted_form_parsing() -> None:
    """Stop Twisted from parsing every multipart body a second time.

    Twisted's ``Request`` decodes ``multipart/form-data`` bodies into ``request.args`` with the ``email`` module
    before Daphne sees the request: a full in-memory copy and parse of every upload (seconds and several copies
    for a 50 MB PDF) whose result Daphne never reads. Django parses the body itself.
    """
    try:
        from daphne.http_protocol import WebRequest
    except ImportError:
        return
    if getattr(WebRequest, "_myocr_no_form_parsing", False):
        return
    original_init = WebRequest.__init__

    def __init__(self, *args, **kwargs) -> None:
        original_init(self, *args, **kwargs)
        self._parsePOSTFormSubmission = False

    WebRequest.__init__ = __init__
    WebRequest._myocr_no_form_parsing = True
